//! [`Entry`]: one path's state in a manifest (a live file or a tombstone),
//! and its conversion from and to the wire's `FileEntry`.

use crate::{ContentHash, HashError, PathError, RelPath, pb};

/// One path's state on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    /// Sequence number of the change that produced this state.
    pub version: u64,
    /// `None` for a tombstone (the file was deleted by change `version`).
    pub content: Option<Content>,
    /// Id of the client whose change produced this state.
    pub client_id: String,
}

/// What a live file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Content {
    pub hash: ContentHash,
    pub size: u64,
    pub mtime_ns: i64,
    pub executable: bool,
    /// A symbolic link; the content is its target.
    pub symlink: bool,
    /// A folder; no content.
    pub folder: bool,
}

/// A `FileEntry` from the wire that does not describe a valid entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Hash(#[from] HashError),
}

impl Entry {
    /// Whether this is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

impl TryFrom<pb::FileEntry> for Entry {
    type Error = EntryError;

    fn try_from(e: pb::FileEntry) -> Result<Self, EntryError> {
        let content = if e.deleted {
            None
        } else {
            Some(Content {
                hash: ContentHash::try_from(&e.hash[..])?,
                size: e.size,
                mtime_ns: e.mtime_ns,
                executable: e.executable,
                symlink: e.symlink,
                folder: e.folder,
            })
        };
        Ok(Entry { path: RelPath::new(e.path)?, version: e.version, content, client_id: e.client_id })
    }
}

impl From<Entry> for pb::FileEntry {
    fn from(e: Entry) -> Self {
        let c = e.content;
        pb::FileEntry {
            path: e.path.as_str().to_owned(),
            version: e.version,
            deleted: c.is_none(),
            size: c.map_or(0, |c| c.size),
            hash: c.map_or_else(Vec::new, |c| c.hash.as_bytes().to_vec()),
            mtime_ns: c.map_or(0, |c| c.mtime_ns),
            executable: c.is_some_and(|c| c.executable),
            client_id: e.client_id,
            symlink: c.is_some_and(|c| c.symlink),
            folder: c.is_some_and(|c| c.folder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire_type() {
        let live = Entry {
            path: RelPath::new("a/b").unwrap(),
            version: 7,
            content: Some(Content {
                hash: ContentHash::of(b"x"),
                size: 1,
                mtime_ns: 42,
                executable: true,
                symlink: true,
                folder: false,
            }),
            client_id: "c1".into(),
        };
        let tomb = Entry { content: None, ..live.clone() };
        for e in [live, tomb] {
            assert_eq!(Entry::try_from(pb::FileEntry::from(e.clone())).unwrap(), e);
        }
    }

    #[test]
    fn refuses_bad_hash_and_path() {
        let bad_hash = pb::FileEntry { path: "a".into(), hash: vec![1, 2], ..Default::default() };
        assert!(matches!(Entry::try_from(bad_hash), Err(EntryError::Hash(_))));
        let bad_path = pb::FileEntry { path: "../a".into(), deleted: true, ..Default::default() };
        assert!(matches!(Entry::try_from(bad_path), Err(EntryError::Path(_))));
    }
}
