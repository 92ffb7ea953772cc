//! The embedded backend's content, a [`ContentStore`]: content-addressed
//! blob files, `blobs/ab/abcdef…` named by the BLAKE3 hash of what they hold, written through a temp file in `tmp/` that is hashed,
//! checked, and renamed into place; durable before any commit refers to it.
//!
//! A large blob is fsynced before its rename and its folder after. A small
//! one (up to [`DEFER_SYNC_MAX`]) is renamed without either and comes back
//! as [`Durability::Pending`]: the commit that refers to it first makes the
//! whole file system durable with one `syncfs` ([`BlobDir::sync`]), for
//! every small blob of its batch at once. Per-file fsyncs cost more than
//! everything else for small files (10,000 files of 4 KiB: about 3,000
//! files/s with two fsyncs each, several times that with one `syncfs` per
//! batch). A crash before the commit leaves at worst a torn blob that no
//! entry refers to, which the start-up sweep removes.
//!
//! Content is verified as it is read ([`BlobReader`]): a blob whose bytes no
//! longer hash to its name (bit rot, a damaged disk, a hand edit) is never
//! handed out as good. Its last chunk is held back until the hash is
//! checked, and a damaged blob is moved aside to `corrupt/` (see
//! [`BlobDir::quarantine`]), where it counts as absent: a header-only
//! upload must send the bytes again, and the next verified copy of that
//! content (an upload, a replicated change, a scrub's fetch) takes its
//! place and heals it.
//!
//! Runs of zeros are kept as holes ([`HOLE_BLOCK`]): a sparse file costs
//! the server only the blocks that hold data.

use std::{
    fs::{self, File},
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use syncstore::ContentHash;
use tempfile::NamedTempFile;

use super::content::{ContentReader, ContentStore, ContentUpload, Durability, StagedContent, Verdict};
use crate::error::{Error, Result};

/// Largest blob whose durability is left to the commit's [`BlobDir::sync`]
/// (where `syncfs` exists); larger ones are fsynced one by one, their cost
/// being the data itself.
pub(crate) const DEFER_SYNC_MAX: u64 = 256 * 1024;

/// Whether [`BlobDir::sync`] can make deferred blobs durable (`syncfs`);
/// elsewhere every blob, empty ones included, is fsynced on its own.
const CAN_DEFER: bool = cfg!(target_os = "linux");

/// Name of the folder (beside `blobs/`) where damaged content is set aside.
const QUARANTINE_DIR: &str = "corrupt";

/// Size of the aligned blocks the blob writer checks for zeros: an all-zero
/// block is skipped (left a hole) instead of written. The usual file system
/// block, so that a hole frees a whole block.
pub(crate) const HOLE_BLOCK: usize = 4096;

/// Damaged blobs waiting for a healer at most; more are left to the next
/// scrub pass.
const MAX_HEAL_QUEUE: usize = 1024;

/// Bytes read at a time while verifying a whole blob.
const VERIFY_BUFFER: usize = 1024 * 1024;

/// The blob folder of a data directory.
#[derive(Debug, Clone)]
pub(crate) struct BlobDir {
    blobs: PathBuf,
    tmp: PathBuf,
    /// Where damaged blobs are set aside, under their names.
    quarantine: PathBuf,
    /// The blob folder, held open for `syncfs`.
    handle: Arc<File>,
    /// How many times [`BlobDir::sync`] ran.
    syncs: Arc<AtomicU64>,
    /// Taken to set a damaged blob aside (written) and to put one in place
    /// (read: puts do not wait for each other), so that setting a damaged
    /// copy aside never moves a good one that replaced it meanwhile.
    naming: Arc<RwLock<()>>,
    /// Damaged blobs found since the store was opened.
    found_damaged: Arc<AtomicU64>,
    /// Damaged blobs (hash, size) set aside and not yet offered to a
    /// healer ([`BlobDir::take_found`]); bounded by [`MAX_HEAL_QUEUE`].
    to_heal: Arc<Mutex<Vec<(ContentHash, u64)>>>,
    /// Woken when `to_heal` gets one.
    found: Arc<tokio::sync::Notify>,
}

impl BlobDir {
    /// Opens (creating if needed) the blob folders under `data`, and removes
    /// temp files that an earlier run left behind when it crashed.
    pub(crate) async fn open(data: &Path) -> Result<Self> {
        let data = data.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data)).await?
    }

    fn open_blocking(data: &Path) -> Result<Self> {
        let (blobs, tmp) = (data.join("blobs"), data.join("tmp"));
        fs::create_dir_all(&blobs)?;
        fs::create_dir_all(&tmp)?;
        let store = Self {
            handle: Arc::new(File::open(&blobs)?),
            syncs: Arc::default(),
            quarantine: data.join(QUARANTINE_DIR),
            naming: Arc::default(),
            found_damaged: Arc::default(),
            to_heal: Arc::default(),
            found: Arc::default(),
            blobs,
            tmp,
        };
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

    pub(crate) fn path_of(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.blobs.join(&hex[..2]).join(&hex)
    }

    pub(crate) fn contains(&self, hash: &ContentHash) -> bool {
        self.path_of(hash).is_file()
    }

    fn quarantined_path(&self, hash: &ContentHash) -> PathBuf {
        self.quarantine.join(hash.to_hex())
    }

    /// Whether this content was found damaged and no good copy has come
    /// since.
    pub(crate) fn is_damaged(&self, hash: &ContentHash) -> bool {
        self.quarantined_path(hash).is_file()
    }

    /// How many blobs are set aside as damaged now.
    pub(crate) fn damaged_count(&self) -> u64 {
        fs::read_dir(&self.quarantine).map_or(0, |d| d.count() as u64)
    }

    /// Takes the damaged blobs (hash, size) set aside since the last call.
    pub(crate) fn take_found(&self) -> Vec<(ContentHash, u64)> {
        std::mem::take(&mut *self.to_heal.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Resolves when a damaged blob was set aside since the last
    /// [`BlobDir::take_found`] (or will be).
    pub(crate) async fn found(&self) {
        self.found.notified().await;
    }

    /// How many damaged blobs were found since the store was opened.
    pub(crate) fn found_damaged(&self) -> u64 {
        self.found_damaged.load(Ordering::Relaxed)
    }

    /// Opens stored content `hash` of `size` bytes for a verified read:
    /// `None` when it is not stored, `DATA_LOSS` when it was set aside as
    /// damaged.
    pub(crate) fn reader(&self, hash: &ContentHash, size: u64) -> Result<Option<BlobReader>> {
        let file = match File::open(self.path_of(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.is_damaged(hash) {
                    return Err(damaged(hash));
                }
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let reader = BlobReader {
            store: self.clone(),
            file,
            hash: *hash,
            size,
            left: size,
            hasher: blake3::Hasher::new(),
        };
        if reader.file.metadata()?.len() != size {
            return Err(reader.damaged("its length is not its content's"));
        }
        Ok(Some(reader))
    }

    /// Reads all of blob `hash` and checks it against its name (and the
    /// `size` its entries give it); a damaged blob is set aside.
    pub(crate) fn verify(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        if !self.contains(hash) {
            return Ok(Verdict::Missing); // Never stored, or set aside before.
        }
        let mut reader = match self.reader(hash, size) {
            Ok(Some(reader)) => reader,
            Ok(None) => return Ok(Verdict::Missing),
            Err(Error::DataLoss(_)) => return Ok(Verdict::Damaged),
            Err(e) => return Err(e),
        };
        loop {
            match reader.next_chunk(VERIFY_BUFFER) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    // A healed copy's damaged one may be back after a crash
                    // (its removal is not synced): it is stale.
                    let _ = fs::remove_file(self.quarantined_path(hash));
                    return Ok(Verdict::Good);
                }
                Err(Error::DataLoss(_)) => return Ok(Verdict::Damaged),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets a damaged blob aside (moves it to the quarantine folder), if
    /// `file` is still the blob under its name (a good copy may have
    /// replaced it since it was opened). Logged once, where it happens.
    fn quarantine(&self, hash: &ContentHash, size: u64, file: &File, why: &str) -> Result<()> {
        let _naming = self.naming.write().unwrap_or_else(|p| p.into_inner());
        let path = self.path_of(hash);
        let same = match fs::metadata(&path) {
            Ok(now) => same_file(&now, &file.metadata()?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if !same {
            return Ok(());
        }
        fs::create_dir_all(&self.quarantine)?;
        fs::rename(&path, self.quarantined_path(hash))?;
        self.found_damaged.fetch_add(1, Ordering::Relaxed);
        {
            let mut queue = self.to_heal.lock().unwrap_or_else(|p| p.into_inner());
            if queue.len() < MAX_HEAL_QUEUE {
                queue.push((*hash, size));
            }
        }
        self.found.notify_one();
        tracing::error!(
            %hash,
            why,
            "DAMAGED CONTENT: a stored blob no longer matches its hash; it was moved to {} and is \
             served as lost until a good copy comes (an upload of the same content, the replica, or a scrub)",
            self.quarantine.display()
        );
        Ok(())
    }

    /// Starts writing new content to a temp file.
    pub(crate) fn writer(&self) -> Result<BlobWriter> {
        Ok(BlobWriter {
            file: NamedTempFile::new_in(&self.tmp)?,
            hasher: blake3::Hasher::new(),
            size: 0,
            at: 0,
        })
    }

    /// Moves a staged blob into place. When the same content is stored
    /// already, a good stored copy is kept and a damaged one replaced: a
    /// large staged blob (durable already) simply replaces it; a small one
    /// is checked against it (cheap) and made durable before it replaces a
    /// damaged one, which committed entries refer to. The rename of a
    /// fsynced blob is made durable here; a new small blob's is
    /// [`Durability::Pending`]. A copy set aside as damaged is healed.
    pub(crate) fn persist(&self, staged: StagedBlob) -> Result<Durability> {
        let target = self.path_of(&staged.hash);
        let hash = staged.hash;
        let _naming = self.naming.read().unwrap_or_else(|p| p.into_inner());
        let durability = if target.is_file() && !staged.synced && self.stored_copy_good(&staged)? {
            // Same hash, same content: keep the stored copy, drop the temp.
            // That copy may be another upload's pending one.
            Durability::Pending
        } else {
            let replacing = target.is_file();
            let dir = target.parent().expect("blob paths have a parent");
            if !dir.is_dir() {
                fs::create_dir_all(dir)?;
                sync_dir(&self.blobs)?;
            }
            // A replaced copy is referred to by committed entries: its
            // successor must be durable before it takes the name.
            let synced = staged.synced || replacing;
            if !staged.synced && replacing {
                staged.file.as_file().sync_all()?;
            }
            staged.file.persist(&target).map_err(|e| Error::Io(e.error))?;
            if replacing {
                tracing::info!(%hash, "replaced a stored copy with a verified one");
            }
            if synced {
                sync_dir(dir)?;
                Durability::Durable
            } else {
                Durability::Pending
            }
        };
        match fs::remove_file(self.quarantined_path(&hash)) {
            Ok(()) => tracing::warn!(%hash, "damaged content healed: a verified copy took its place"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%hash, error = %e, "could not remove a healed blob's damaged copy"),
        }
        Ok(durability)
    }

    /// Whether the stored copy of a small staged blob's content is good
    /// (read and hashed; at most [`DEFER_SYNC_MAX`] bytes).
    fn stored_copy_good(&self, staged: &StagedBlob) -> Result<bool> {
        let mut file = match File::open(self.path_of(&staged.hash)) {
            Ok(f) => f,
            // Removed meanwhile (unreferenced): the staged copy takes its place.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = blake3::Hasher::new();
        let copied = io::copy(&mut (&mut file).take(DEFER_SYNC_MAX + 1), &mut hasher)?;
        Ok(copied == staged.size && ContentHash::from(hasher.finalize()) == staged.hash)
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

    /// Removes a blob nothing refers to any more (and its damaged copy).
    pub(crate) fn remove(&self, hash: &ContentHash) -> io::Result<()> {
        for path in [self.path_of(hash), self.quarantined_path(hash)] {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every blob set aside as damaged, for the start-up sweep.
    pub(crate) fn all_damaged(&self) -> Result<Vec<ContentHash>> {
        let dir = match fs::read_dir(&self.quarantine) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for file in dir {
            if let Some(Ok(hash)) = file?.file_name().to_str().map(ContentHash::from_hex) {
                out.push(hash);
            }
        }
        Ok(out)
    }

    /// How many times [`BlobDir::sync`] ran.
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

    /// How many blobs are stored, and their total size in bytes (set-aside
    /// damaged ones not included). Lists the whole blob folder.
    pub(crate) fn usage(&self) -> Result<(u64, u64)> {
        let (mut count, mut bytes) = (0, 0);
        for dir in fs::read_dir(&self.blobs)? {
            let dir = dir?;
            if !dir.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(dir.path())? {
                let file = file?;
                if file.file_name().to_str().is_some_and(|n| ContentHash::from_hex(n).is_ok()) {
                    count += 1;
                    bytes += file.metadata()?.len();
                }
            }
        }
        Ok((count, bytes))
    }
}

/// Content `hash` is stored but damaged.
fn damaged(hash: &ContentHash) -> Error {
    Error::DataLoss(format!(
        "the server's copy of content {hash} is damaged (it no longer matches its hash); \
         upload the file again or restore it from the replica"
    ))
}

/// Whether two metadata describe the same file (not just the same name).
fn same_file(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    }
    #[cfg(not(unix))]
    {
        (a.len(), a.modified().ok()) == (b.len(), b.modified().ok())
    }
}

/// A verified read of stored content: the bytes are hashed as they are
/// read, and the last chunk is handed out only once the whole content
/// hashed to its name. A mismatch (or a blob shorter or longer than its
/// entries say) sets the blob aside and ends the read with `DATA_LOSS`.
#[derive(Debug)]
pub(crate) struct BlobReader {
    store: BlobDir,
    file: File,
    hash: ContentHash,
    /// The size its entries give it.
    size: u64,
    /// Bytes not read yet.
    left: u64,
    hasher: blake3::Hasher,
}

impl BlobReader {
    /// The next chunk of at most `max` bytes, or `None` once all of it was
    /// handed out.
    pub(crate) fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.left == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; self.left.min(max as u64) as usize];
        match self.file.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(self.damaged("it is too short")),
            Err(e) => return Err(e.into()),
        }
        self.hasher.update(&buf);
        self.left -= buf.len() as u64;
        if self.left == 0 {
            // The last chunk: hand it out only if everything checks.
            let mut probe = [0u8; 1];
            if self.file.read(&mut probe)? != 0 {
                return Err(self.damaged("it is too long"));
            }
            if ContentHash::from(self.hasher.finalize()) != self.hash {
                return Err(self.damaged("its bytes do not hash to its name"));
            }
        }
        Ok(Some(buf))
    }

    /// Sets the blob aside and returns the `DATA_LOSS` to end the read with.
    fn damaged(&self, why: &str) -> Error {
        if let Err(e) = self.store.quarantine(&self.hash, self.size, &self.file, why) {
            tracing::error!(hash = %self.hash, error = %e, "could not set a damaged blob aside");
        }
        damaged(&self.hash)
    }
}

/// A blob being received: a temp file plus the running hash and size. It
/// is deleted if dropped before [`BlobWriter::finish`]. Aligned blocks of
/// zeros are skipped, left as holes.
#[derive(Debug)]
pub(crate) struct BlobWriter {
    file: NamedTempFile,
    hasher: blake3::Hasher,
    size: u64,
    /// The file's write position (behind `size` after skipped zeros).
    at: u64,
}

impl BlobWriter {
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.hasher.update(chunk);
        // Cut the chunk at block boundaries of the file; write each run of
        // blocks that hold data in one go and skip all-zero blocks.
        let mut offset = self.size;
        let mut rest = chunk;
        let mut run: (u64, usize) = (offset, 0);
        while !rest.is_empty() {
            let to_boundary = HOLE_BLOCK - (offset % HOLE_BLOCK as u64) as usize;
            let n = to_boundary.min(rest.len());
            let consumed = chunk.len() - rest.len();
            let hole = n == HOLE_BLOCK && is_zero(&rest[..n]);
            if hole {
                self.write_run(run.0, &chunk[consumed - run.1..consumed])?;
                run = (offset + n as u64, 0);
            } else {
                run.1 += n;
            }
            offset += n as u64;
            rest = &rest[n..];
        }
        self.write_run(run.0, &chunk[chunk.len() - run.1..])?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    /// Writes `data` at `offset`, seeking over a hole first if needed.
    fn write_run(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if offset != self.at {
            self.file.seek(SeekFrom::Start(offset))?;
        }
        self.file.write_all(data)?;
        self.at = offset + data.len() as u64;
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
        if self.at != size {
            // Trailing zeros: the file's length without writing them.
            self.file.as_file().set_len(size)?;
        }
        let synced = !CAN_DEFER || size > DEFER_SYNC_MAX;
        if synced {
            self.file.as_file().sync_all()?;
        }
        Ok(StagedBlob { file: self.file, hash, size, synced })
    }
}

/// Verified content waiting in `tmp/` to be moved into place.
#[derive(Debug)]
pub(crate) struct StagedBlob {
    file: NamedTempFile,
    hash: ContentHash,
    size: u64,
    /// Its data is durable already (a large blob).
    synced: bool,
}

impl StagedBlob {
    /// The staged content, read from its start.
    pub(crate) fn reopen(&self) -> io::Result<File> {
        self.file.reopen()
    }
}

/// Whether every byte is zero.
fn is_zero(block: &[u8]) -> bool {
    let (words, tail) = block.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && tail.iter().all(|&b| b == 0)
}

/// fsyncs a directory so that a rename or create inside it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl ContentStore for BlobDir {
    async fn upload(&self) -> Result<Box<dyn ContentUpload>> {
        // Making the temp file is one quick create, not worth a trip to a
        // blocking thread; every write and the finish take one.
        Ok(Box::new(BlobUpload { dir: self.clone(), writer: Some(self.writer()?), behind: Vec::new() }))
    }

    async fn get(&self, hash: &ContentHash, size: u64) -> Result<Option<Box<dyn ContentReader>>> {
        let (this, hash) = (self.clone(), *hash);
        let get = tokio::task::spawn_blocking(move || {
            let Some(mut reader) = this.reader(&hash, size)? else { return Ok(None) };
            // A small blob is read (and checked) whole in the same trip.
            let ahead =
                if size <= READ_AHEAD_MAX { reader.next_chunk(size as usize).transpose() } else { None };
            Ok::<_, Error>(Some(BlobGet { reader: Some(reader), ahead }))
        })
        .await??;
        Ok(get.map(|g| Box::new(g) as Box<dyn ContentReader>))
    }

    async fn put_whole(&self, hash: ContentHash, data: Vec<u8>) -> Result<Option<Durability>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let size = data.len() as u64;
            if this.contains(&hash) && this.verify(&hash, size)? == Verdict::Good {
                return Ok(None);
            }
            let mut writer = this.writer()?;
            writer.write(&data)?;
            Ok(Some(this.persist(writer.finish(hash, size)?)?))
        })
        .await?
    }

    async fn read_whole(&self, hash: &ContentHash, size: u64) -> Result<Option<Vec<u8>>> {
        let (this, hash) = (self.clone(), *hash);
        tokio::task::spawn_blocking(move || {
            let Some(mut reader) = this.reader(&hash, size)? else { return Ok(None) };
            let whole = usize::try_from(size).map_err(|_| Error::Internal("a chunk beyond memory".into()))?;
            Ok(Some(reader.next_chunk(whole)?.unwrap_or_default()))
        })
        .await?
    }

    async fn head(&self, hash: &ContentHash) -> Result<Option<u64>> {
        let path = self.path_of(hash);
        tokio::task::spawn_blocking(move || match fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?
    }

    async fn delete(&self, hash: &ContentHash) -> Result<()> {
        let (this, hash) = (self.clone(), *hash);
        Ok(tokio::task::spawn_blocking(move || this.remove(&hash)).await??)
    }

    async fn list(&self) -> Result<Vec<ContentHash>> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = this.all()?;
            all.extend(this.all_damaged()?);
            Ok(all)
        })
        .await?
    }

    async fn usage(&self) -> Result<(u64, u64)> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.usage()).await?
    }

    async fn ensure_durable(&self, hashes: &[ContentHash]) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        Ok(tokio::task::spawn_blocking(move || this.sync()).await??)
    }

    async fn verify(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        let (this, hash) = (self.clone(), *hash);
        tokio::task::spawn_blocking(move || this.verify(&hash, size)).await?
    }

    async fn verified_size(&self, hash: &ContentHash) -> Result<Option<u64>> {
        let (this, hash) = (self.clone(), *hash);
        tokio::task::spawn_blocking(move || {
            let size = match fs::metadata(this.path_of(&hash)) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok((this.verify(&hash, size)? == Verdict::Good).then_some(size))
        })
        .await?
    }

    async fn is_damaged(&self, hash: &ContentHash) -> Result<bool> {
        let (this, hash) = (self.clone(), *hash);
        Ok(tokio::task::spawn_blocking(move || this.is_damaged(&hash)).await?)
    }

    fn damage_counts(&self) -> (u64, u64) {
        (self.damaged_count(), self.found_damaged())
    }

    fn take_found(&self) -> Vec<(ContentHash, u64)> {
        BlobDir::take_found(self)
    }

    async fn found(&self) {
        BlobDir::found(self).await;
    }
}

/// Received bytes an upload keeps in memory before it writes them out: up
/// to this many go to the temp file together, in one trip to a blocking
/// thread (a small file's content in the trip that completes it).
const WRITE_BEHIND_MAX: usize = 64 * 1024;

/// An upload into a temp file of the blob folder (made when the upload
/// starts), written on blocking threads.
#[derive(Debug)]
struct BlobUpload {
    dir: BlobDir,
    /// Out while a write runs (a dropped upload drops it there); `None`
    /// after a failed write.
    writer: Option<BlobWriter>,
    /// Received and not written yet (at most [`WRITE_BEHIND_MAX`] bytes).
    behind: Vec<u8>,
}

#[async_trait]
impl ContentUpload for BlobUpload {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        if self.behind.len() + chunk.len() <= WRITE_BEHIND_MAX {
            self.behind.extend_from_slice(&chunk);
            return Ok(());
        }
        let mut writer = self.writer.take().ok_or_else(failed_before)?;
        let behind = std::mem::take(&mut self.behind);
        self.writer = Some(
            tokio::task::spawn_blocking(move || {
                writer.write(&behind)?;
                writer.write(&chunk).map(|()| writer)
            })
            .await??,
        );
        Ok(())
    }

    async fn complete(self: Box<Self>, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>> {
        let mut writer = self.writer.ok_or_else(failed_before)?;
        let behind = self.behind;
        let staged = tokio::task::spawn_blocking(move || {
            writer.write(&behind)?;
            writer.finish(hash, size)
        })
        .await??;
        Ok(Box::new(BlobStaged { dir: self.dir, staged }))
    }
}

/// An upload used again after one of its writes failed.
fn failed_before() -> Error {
    Error::Internal("an upload whose write failed was used again".into())
}

/// Checked content in a temp file of the blob folder.
#[derive(Debug)]
struct BlobStaged {
    dir: BlobDir,
    staged: StagedBlob,
}

#[async_trait]
impl StagedContent for BlobStaged {
    fn hash(&self) -> ContentHash {
        self.staged.hash
    }

    async fn read_prefix(&self, max: u64) -> Result<Vec<u8>> {
        let file = self.staged.reopen()?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            file.take(max).read_to_end(&mut out)?;
            Ok(out)
        })
        .await?
    }

    async fn place(self: Box<Self>) -> Result<Durability> {
        let BlobStaged { dir, staged } = *self;
        tokio::task::spawn_blocking(move || dir.persist(staged)).await?
    }
}

/// Blobs up to this size are read whole, and checked, in the trip that
/// opens them: a small file's download is one trip to a blocking thread.
const READ_AHEAD_MAX: u64 = 64 * 1024;

/// A verified read, a chunk per trip to a blocking thread (a small blob's
/// whole content read with its opening).
#[derive(Debug)]
struct BlobGet {
    /// Out while a read runs.
    reader: Option<BlobReader>,
    /// What was read ahead and not handed out yet (or why that read failed).
    ahead: Option<Result<Vec<u8>>>,
}

#[async_trait]
impl ContentReader for BlobGet {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if let Some(ahead) = self.ahead.take() {
            let mut chunk = ahead?;
            if chunk.len() > max {
                self.ahead = Some(Ok(chunk.split_off(max)));
            }
            return Ok(Some(chunk));
        }
        let mut reader = self.reader.take().ok_or_else(|| Error::Internal("a read failed before".into()))?;
        if reader.left == 0 {
            // All of it was handed out: nothing to read.
            self.reader = Some(reader);
            return Ok(None);
        }
        let (reader, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = reader.next_chunk(max);
            (reader, chunk)
        })
        .await?;
        self.reader = Some(reader);
        chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_verify_persist() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
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
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        let mut w = store.writer().unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.finish(ContentHash::of(b"abd"), 3), Err(Error::ContentMismatch(_))));
        let mut w = store.writer().unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.finish(ContentHash::of(b"abc"), 4), Err(Error::ContentMismatch(_))));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.all().unwrap().is_empty());
    }

    /// Stores `data` and returns its hash.
    fn put(store: &BlobDir, data: &[u8]) -> ContentHash {
        let hash = ContentHash::of(data);
        let mut w = store.writer().unwrap();
        w.write(data).unwrap();
        let _ = store.persist(w.finish(hash, data.len() as u64).unwrap()).unwrap();
        hash
    }

    /// Flips one byte of a stored blob in place.
    fn flip(store: &BlobDir, hash: &ContentHash, at: u64) {
        use std::os::unix::fs::FileExt;
        let file = File::options().read(true).write(true).open(store.path_of(hash)).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    }

    #[tokio::test]
    async fn an_upload_kept_behind_in_memory_writes_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        // Small pieces kept behind, then one that overflows, then more.
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let mut upload = store.upload().await.unwrap();
        for piece in [&data[..1000], &data[1000..40_000], &data[40_000..150_000], &data[150_000..]] {
            upload.write(piece.to_vec()).await.unwrap();
        }
        let hash = ContentHash::of(&data);
        let staged = upload.complete(hash, data.len() as u64).await.unwrap();
        let _ = staged.place().await.unwrap();
        assert_eq!(std::fs::read(store.path_of(&hash)).unwrap(), data);
        // A small content kept behind whole still has to match its header.
        let mut upload = store.upload().await.unwrap();
        upload.write(b"small".to_vec()).await.unwrap();
        assert!(upload.complete(ContentHash::of(b"other"), 5).await.is_err());
    }

    #[tokio::test]
    async fn a_small_blob_read_with_its_opening_comes_out_in_the_callers_pieces_and_only_if_good() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let hash = put(&store, &data);
        let mut get = store.get(&hash, data.len() as u64).await.unwrap().unwrap();
        let mut read = Vec::new();
        while let Some(chunk) = get.next_chunk(4096).await.unwrap() {
            assert!(chunk.len() <= 4096, "a piece of {} bytes", chunk.len());
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, data);
        assert_eq!(get.next_chunk(4096).await.unwrap(), None, "still the end");

        // Damaged: nothing is handed out, and it is set aside.
        flip(&store, &hash, 7);
        let mut get = store.get(&hash, data.len() as u64).await.unwrap().unwrap();
        assert!(matches!(get.next_chunk(4096).await, Err(Error::DataLoss(_))));
        assert!(store.is_damaged(&hash));
    }

    #[test]
    fn a_damaged_blob_is_never_read_whole_and_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
        let hash = put(&store, &data);
        // A good read hands out everything.
        let mut reader = store.reader(&hash, data.len() as u64).unwrap().unwrap();
        let mut read = Vec::new();
        while let Some(chunk) = reader.next_chunk(1024 * 1024).unwrap() {
            read.extend_from_slice(&chunk);
        }
        assert_eq!(read, data);

        flip(&store, &hash, data.len() as u64 - 5);
        let mut reader = store.reader(&hash, data.len() as u64).unwrap().unwrap();
        let mut handed_out = 0usize;
        let err = loop {
            match reader.next_chunk(1024 * 1024) {
                Ok(Some(chunk)) => handed_out += chunk.len(),
                Ok(None) => panic!("damaged content was read to its end"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::DataLoss(_)), "{err:?}");
        assert!(handed_out < data.len(), "the last chunk was held back");
        assert!(!store.contains(&hash) && store.is_damaged(&hash));
        assert_eq!((store.damaged_count(), store.found_damaged()), (1, 1));
        // From now on it is DATA_LOSS at once, and a whole-read says so.
        assert!(matches!(store.reader(&hash, data.len() as u64), Err(Error::DataLoss(_))));
        assert_eq!(store.verify(&hash, data.len() as u64).unwrap(), Verdict::Missing);

        // A good copy heals it.
        put(&store, &data);
        assert!(store.contains(&hash) && !store.is_damaged(&hash));
        assert_eq!(store.damaged_count(), 0);
        assert_eq!(store.verify(&hash, data.len() as u64).unwrap(), Verdict::Good);
    }

    #[test]
    fn a_blob_of_the_wrong_length_is_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        let hash = put(&store, b"twelve bytes");
        let path = store.path_of(&hash);
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"!").unwrap();
        assert_eq!(store.verify(&hash, 12).unwrap(), Verdict::Damaged);
        let empty = put(&store, b"");
        fs::write(store.path_of(&empty), b"x").unwrap();
        assert_eq!(store.verify(&empty, 0).unwrap(), Verdict::Damaged);
        let hash = put(&store, b"short");
        File::options().write(true).open(store.path_of(&hash)).unwrap().set_len(3).unwrap();
        assert_eq!(store.verify(&hash, 5).unwrap(), Verdict::Damaged);
    }

    #[test]
    fn a_good_copy_replaces_a_damaged_one_small_or_large() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        for len in [100usize, DEFER_SYNC_MAX as usize + 100] {
            let data: Vec<u8> = (0..len).map(|i| (i % 7) as u8 + 1).collect();
            let hash = put(&store, &data);
            flip(&store, &hash, 3);
            // Not found yet (no one read it): the upload of the same
            // content must still replace it.
            put(&store, &data);
            assert_eq!(store.verify(&hash, len as u64).unwrap(), Verdict::Good, "{len} bytes");
            assert_eq!(fs::read(store.path_of(&hash)).unwrap(), data);
        }
    }

    #[test]
    fn runs_of_zeros_are_kept_as_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = BlobDir::open_blocking(dir.path()).unwrap();
        // 64 MiB: data at the start, in the middle (unaligned) and zeros
        // to the end, sent in chunks that do not fall on block boundaries.
        let len = 64 * 1024 * 1024;
        let mut data = vec![0u8; len];
        data[..10].copy_from_slice(b"0123456789");
        data[len / 2 + 100..len / 2 + 5000].fill(9);
        let hash = ContentHash::of(&data);
        let mut w = store.writer().unwrap();
        for chunk in data.chunks(1_000_003) {
            w.write(chunk).unwrap();
        }
        let _ = store.persist(w.finish(hash, len as u64).unwrap()).unwrap();
        let meta = fs::metadata(store.path_of(&hash)).unwrap();
        assert_eq!(meta.len(), len as u64);
        let allocated = meta.blocks() * 512;
        assert!(allocated <= 1024 * 1024, "{allocated} bytes allocated for a 64 MiB file of zeros");
        assert_eq!(fs::read(store.path_of(&hash)).unwrap(), data);
        assert_eq!(store.verify(&hash, len as u64).unwrap(), Verdict::Good);
    }

    #[test]
    fn leftover_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/.tmpXYZ"), b"half an upload").unwrap();
        BlobDir::open_blocking(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
