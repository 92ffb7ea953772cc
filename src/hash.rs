//! [`ContentHash`]: the BLAKE3 hash that names a file's content.

use std::fmt;

/// BLAKE3 hash of a file's content. Content is stored and compared by it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash([u8; 32]);

/// A hash that is not 32 bytes (or 64 hex digits).
#[derive(Debug, thiserror::Error)]
#[error("a content hash is 32 bytes of BLAKE3, got {0} bytes")]
pub struct HashError(usize);

impl ContentHash {
    /// Hash of the empty file.
    pub fn empty() -> Self {
        Self::of(&[])
    }

    /// Hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as used in blob file names.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, HashError> {
        blake3::Hash::from_hex(s).map(|h| Self(*h.as_bytes())).map_err(|_| HashError(s.len() / 2))
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl TryFrom<&[u8]> for ContentHash {
    type Error = HashError;

    fn try_from(bytes: &[u8]) -> Result<Self, HashError> {
        <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| HashError(bytes.len()))
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Twelve digits identify content in logs without drowning them.
        write!(f, "ContentHash({})", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = ContentHash::of(b"hello");
        assert_eq!(ContentHash::from_hex(&h.to_hex()).unwrap(), h);
        assert_ne!(h, ContentHash::empty());
    }

    #[test]
    fn wrong_length_is_refused() {
        assert!(ContentHash::try_from(&[0u8; 31][..]).is_err());
        assert!(ContentHash::from_hex("abcd").is_err());
    }
}
