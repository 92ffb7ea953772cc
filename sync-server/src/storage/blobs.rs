//! Content-addressed blob files: `blobs/ab/abcdef…` named by the BLAKE3 hash
//! of what they hold, written through a temp file in `tmp/` that is hashed,
//! checked, and renamed into place; durable before any commit refers to it.
//!
//! A large blob is fsynced before its rename and its folder after. A small
//! one (up to [`DEFER_SYNC_MAX`]) is renamed without either and comes back
//! as [`Durability::Pending`]: the commit that refers to it first makes the
//! whole file system durable with one `syncfs` ([`BlobStore::sync`]), for
//! every small blob of its batch at once. Per-file fsyncs cost more than
//! everything else for small files (10,000 files of 4 KiB: about 3,000
//! files/s with two fsyncs each, several times that with one `syncfs` per
//! batch). A crash before the commit leaves at worst a torn blob that no
//! entry refers to, which the start-up sweep removes.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use syncstore::ContentHash;
use tempfile::NamedTempFile;

use crate::error::{Error, Result};

/// Largest blob whose durability is left to the commit's [`BlobStore::sync`]
/// (where `syncfs` exists); larger ones are fsynced one by one, their cost
/// being the data itself.
pub(crate) const DEFER_SYNC_MAX: u64 = 256 * 1024;

/// Whether [`BlobStore::sync`] can make deferred blobs durable (`syncfs`);
/// elsewhere every blob, empty ones included, is fsynced on its own.
const CAN_DEFER: bool = cfg!(target_os = "linux");

/// Whether a blob put in place is durable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Durability {
    /// Its data and its name are on disk.
    Durable,
    /// Call [`BlobStore::sync`] before committing anything that refers to it.
    Pending,
}

/// The blob folder of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    /// The blob folder, held open for `syncfs`.
    handle: Arc<File>,
    /// How many times [`BlobStore::sync`] ran.
    syncs: Arc<AtomicU64>,
}

impl BlobStore {
    /// Opens (creating if needed) the blob folders under `data`, and removes
    /// temp files that an earlier run left behind when it crashed.
    pub(crate) fn open(data: &Path) -> Result<Self> {
        let (blobs, tmp) = (data.join("blobs"), data.join("tmp"));
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&tmp)?;
        let store = Self { handle: Arc::new(File::open(&blobs)?), syncs: Arc::default(), blobs, tmp };
        let mut removed = 0usize;
        for entry in fs::read_dir(&store.tmp)? {
            let entry = entry?;
            fs::remove_file(entry.path())?;
            removed += 1;
        }
        if removed > 0 {
            tracing::info!(removed, "removed temp files of interrupted uploads");
        }
        Ok(store)
    }

    fn path_of(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.blobs.join(&hex[..2]).join(&hex)
    }

    pub(crate) fn contains(&self, hash: &ContentHash) -> bool {
        self.path_of(hash).is_file()
    }

    pub(crate) fn open_blob(&self, hash: &ContentHash) -> io::Result<File> {
        File::open(self.path_of(hash))
    }

    /// Starts writing new content to a temp file.
    pub(crate) fn writer(&self) -> Result<BlobWriter> {
        Ok(BlobWriter { file: NamedTempFile::new_in(&self.tmp)?, hasher: blake3::Hasher::new(), size: 0 })
    }

    /// Moves a staged blob into place (a no-op when the same content is
    /// already stored). The rename of a fsynced blob is made durable here;
    /// a small blob's is [`Durability::Pending`].
    pub(crate) fn persist(&self, staged: StagedBlob) -> Result<Durability> {
        let target = self.path_of(&staged.hash);
        if target.is_file() {
            // Same hash, same content: keep the stored copy, drop the temp.
            // That copy may be another upload's pending one.
            return Ok(if staged.synced { Durability::Durable } else { Durability::Pending });
        }
        let dir = target.parent().expect("blob paths have a parent");
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            sync_dir(&self.blobs)?;
        }
        staged.file.persist(&target).map_err(|e| Error::Io(e.error))?;
        if !staged.synced {
            return Ok(Durability::Pending);
        }
        sync_dir(dir)?;
        Ok(Durability::Durable)
    }

    /// Makes every blob put in place so far durable, data and names: one
    /// `syncfs` of the data folder's file system.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        #[cfg(target_os = "linux")]
        {
            rustix::fs::syncfs(&*self.handle)?;
        }
        Ok(())
    }

    /// Removes a blob nothing refers to any more.
    pub(crate) fn remove(&self, hash: &ContentHash) -> io::Result<()> {
        match fs::remove_file(self.path_of(hash)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// How many times [`BlobStore::sync`] ran.
    #[cfg(test)]
    pub(crate) fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Every stored blob's hash, for the start-up sweep of orphans.
    pub(crate) fn all(&self) -> Result<Vec<ContentHash>> {
        let mut out = Vec::new();
        for dir in fs::read_dir(&self.blobs)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path())? {
                let name = file?.file_name();
                match name.to_str().map(ContentHash::from_hex) {
                    Some(Ok(hash)) => out.push(hash),
                    _ => tracing::warn!(?name, "ignoring a stray file in the blob folder"),
                }
            }
        }
        Ok(out)
    }
}

/// A blob being received: a temp file plus the running hash and size. It
/// is deleted if dropped before [`BlobWriter::finish`].
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
}

impl BlobWriter {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hasher.update(chunk);
        self.file.write_all(chunk)?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Checks the content against what the header promised and, beyond
    /// [`DEFER_SYNC_MAX`], makes it durable. The temp file is deleted on a
    /// mismatch.
    pub(crate) fn finish(self, hash: ContentHash, size: u64) -> Result<StagedBlob> {
        if self.size != size {
            return Err(Error::ContentMismatch(format!(
                "received {} bytes but the header announced {size}",
                self.size
            )));
        }
        let got = ContentHash::from(self.hasher.finalize());
        if got != hash {
            return Err(Error::ContentMismatch(format!(
                "content hash mismatch: the header announced {hash}, the content hashes to {got}"
            )));
        }
        let synced = !CAN_DEFER || size > DEFER_SYNC_MAX;
        if synced {
            self.file.as_file().sync_all()?;
        }
        Ok(StagedBlob { file: self.file, hash, synced })
    }
}

/// Verified content waiting in `tmp/` to be moved into place.
#[derive(Debug)]
pub(crate) struct StagedBlob {
    file: NamedTempFile,
    hash: ContentHash,
    /// Its data is durable already (a large blob).
    synced: bool,
}

impl StagedBlob {
    pub(crate) fn hash(&self) -> ContentHash {
        self.hash
    }

    /// The staged content, read from its start.
    pub(crate) fn reopen(&self) -> io::Result<File> {
        self.file.reopen()
    }
}

/// fsyncs a directory so that a rename or create inside it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_verify_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        let hash = ContentHash::of(b"hello world");
        let staged = w.finish(hash, 11).unwrap();
        // A small blob waits for the commit's sync; so does one found in
        // place (it may be another upload's pending one).
        let pending = if cfg!(target_os = "linux") { Durability::Pending } else { Durability::Durable };
        assert_eq!(store.persist(staged).unwrap(), pending);
        let mut again = store.writer().unwrap();
        again.write(b"hello world").unwrap();
        assert_eq!(store.persist(again.finish(hash, 11).unwrap()).unwrap(), pending);
        store.sync().unwrap();
        assert!(store.contains(&hash));
        // A large one is durable at once.
        let big = vec![7u8; DEFER_SYNC_MAX as usize + 1];
        let mut w = store.writer().unwrap();
        w.write(&big).unwrap();
        let big_hash = ContentHash::of(&big);
        assert_eq!(
            store.persist(w.finish(big_hash, big.len() as u64).unwrap()).unwrap(),
            Durability::Durable
        );
        store.remove(&big_hash).unwrap();
        assert_eq!(store.all().unwrap(), vec![hash]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn mismatches_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.finish(ContentHash::of(b"abd"), 3), Err(Error::ContentMismatch(_))));
        let mut w = store.writer().unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.finish(ContentHash::of(b"abc"), 4), Err(Error::ContentMismatch(_))));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.all().unwrap().is_empty());
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/.tmpXYZ"), b"half an upload").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
