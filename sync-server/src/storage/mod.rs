//! Durable storage of one data folder: metadata in SQLite (`meta.db`, WAL),
//! content in content-addressed blob files ([`blobs`]).
//!
//! Invariants:
//! - A change is committed in one transaction that updates the manifest
//!   (`files`) and appends to the change log (`changes`), and only after its
//!   blob is durable and in place. A crash at any point leaves either the old
//!   or the new state, never a half.
//! - Sequence numbers are assigned under the writer lock, so they are
//!   gap-free and the broadcast of committed changes is in sequence order.
//! - A blob is removed only under the writer lock and the `placing` lock,
//!   once no manifest row refers to it and no upload holds it. An upload
//!   registers its hold before it moves its blob in (outside the writer
//!   lock, so commits wait only for each other's database work), so it can
//!   never lose a race with the removal.
//!
//! All methods block: call them from `spawn_blocking`.

mod blobs;
mod identity;
mod locks;
mod retry;
pub(crate) mod rules;
mod schema;

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use rusqlite::{Connection, OptionalExtension, Row, params};
use syncstore::{Content, ContentHash, Entry, Lock, RelPath};
use tokio::sync::broadcast;

pub(crate) use blobs::{BlobReader, BlobWriter, StagedBlob, Verdict};
use blobs::{BlobStore, Durability};
pub use identity::Identity;
use identity::MetaKey;
pub use locks::Actor;
pub(crate) use locks::LockRequest;

use crate::error::{Error, Result};

/// The namespace of an open server's callers (no token file); with tokens,
/// each read-only or read-write token names its own, which may be this one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Committed changes buffered for live subscribers; a subscriber that falls
/// further behind catches up from the change log.
const BROADCAST_CAPACITY: usize = 4096;

/// Rows read per page by `List` and by change-log replays.
pub(crate) const PAGE_SIZE: usize = 1000;

/// How often (in commits) the change log is trimmed to its retention.
const PRUNE_EVERY: u64 = 1000;

pub use locks::LockEnd;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub namespace: String,
    pub what: What,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A file was written or deleted: the path's new state (a tombstone for
    /// a deletion).
    File(Entry),
    /// A lock was granted or refreshed: its new state.
    Lock(Lock),
    /// A lock ended, why, and by whom (no one for an expiry).
    Unlock { lock: Lock, ended: LockEnd, by: Actor },
}

impl Change {
    /// The file entry, for a file change.
    pub fn entry(&self) -> Option<&Entry> {
        match &self.what {
            What::File(e) => Some(e),
            _ => None,
        }
    }

    /// The file entry of a change known to be a file change.
    pub(crate) fn into_entry(self) -> Entry {
        match self.what {
            What::File(e) => e,
            other => unreachable!("not a file change: {other:?}"),
        }
    }

    /// The path the change is about.
    pub fn path(&self) -> &RelPath {
        match &self.what {
            What::File(e) => &e.path,
            What::Lock(l) | What::Unlock { lock: l, .. } => &l.path,
        }
    }

    /// The client that made the change.
    pub fn client_id(&self) -> &str {
        match &self.what {
            What::File(e) => &e.client_id,
            What::Lock(l) => &l.client_id,
            What::Unlock { by, .. } => &by.client_id,
        }
    }
}

/// A change received from the primary, with its content if it came along.
#[derive(Debug)]
pub(crate) struct Replicated {
    pub(crate) change: Change,
    pub(crate) staged: Option<StagedBlob>,
    /// The primary no longer kept the content (a later change replaced it).
    pub(crate) content_gone: bool,
}

/// What an upload wants to become.
#[derive(Debug, Clone)]
pub(crate) struct Put {
    pub(crate) path: RelPath,
    pub(crate) content: Content,
    pub(crate) base_version: u64,
    /// Who writes: the entry records its client id.
    pub(crate) who: Actor,
    /// The token of the writer's lock on the path (0 for none).
    pub(crate) lock_token: u64,
}

/// What a deletion wants.
#[derive(Debug, Clone)]
pub(crate) struct Delete {
    pub(crate) path: RelPath,
    pub(crate) base_version: u64,
    /// Who deletes: the tombstone records its client id.
    pub(crate) who: Actor,
    /// The token of the writer's lock on the path (0 for none).
    pub(crate) lock_token: u64,
}

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many changes the log keeps; older ones are trimmed, and a
    /// subscriber whose cursor is older gets a RESET.
    pub log_retention: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { log_retention: 1_000_000 }
    }
}

/// A handle to a data folder; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Held (locked) for the life of the store: one server per data folder.
    _lock: File,
    db_path: PathBuf,
    blobs: BlobStore,
    writer: Mutex<Writer>,
    /// The head as last committed, published for readers (status, metrics,
    /// acknowledgements) that must not wait for the writer lock, which a
    /// commit holds across its fsyncs. `Writer::head` is the authority.
    head: AtomicU64,
    readers: Mutex<Vec<Connection>>,
    /// Blobs put in place by uploads that have not committed yet (with how
    /// many hold each): garbage collection leaves them alone.
    placing: Mutex<std::collections::HashMap<ContentHash, usize>>,
    /// Uploads waiting to commit: whoever takes the writer lock next
    /// commits all of them in one transaction (group commit).
    queued: Mutex<Vec<QueuedPut>>,
    events: broadcast::Sender<Change>,
    /// Read at open; changed only through its setters, under the writer lock.
    identity: Mutex<Identity>,
    options: StoreOptions,
}

#[derive(Debug)]
struct Writer {
    conn: Connection,
    head: u64,
    commits_since_prune: u64,
}

impl Store {
    /// Opens the data folder at `dir`, initializing it (with a new history
    /// id) if it is empty, and sweeps what a crash may have left behind.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = File::options().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::FailedPrecondition(format!(
                    "another sync-server is using the data folder {}",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let blobs = BlobStore::open(dir)?;
        let db_path = dir.join("meta.db");
        let mut conn = schema::connect(&db_path)?;
        schema::init(&conn)?;
        identity::init_meta(&mut conn)?;
        let identity = Identity::load(&conn)?;
        let logged: u64 = conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?;
        // After a full resync the log starts empty at the snapshot's head.
        let head = logged.max(identity::meta_u64(&conn, MetaKey::HeadFloor)?);
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let store = Self {
            inner: Arc::new(Inner {
                _lock: lock,
                db_path,
                blobs,
                writer: Mutex::new(Writer { conn, head, commits_since_prune: 0 }),
                head: AtomicU64::new(head),
                readers: Mutex::new(Vec::new()),
                placing: Mutex::new(std::collections::HashMap::new()),
                queued: Mutex::new(Vec::new()),
                events,
                identity: Mutex::new(identity),
                options,
            }),
        };
        store.sweep_orphan_blobs()?;
        tracing::info!(dir = %dir.display(), head, history_id = %store.history_id(), "store opened");
        Ok(store)
    }

    /// The sequence number of the last committed change.
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// The lowest sequence number from which on every change is in the log:
    /// its oldest row, or the head + 1 when the log is empty (0 on a new
    /// store, where nothing is missing).
    pub fn oldest_seq(&self) -> Result<u64> {
        let head = self.head();
        let min: Option<u64> =
            self.read(|c| Ok(c.query_row("SELECT MIN(seq) FROM changes", [], |r| r.get(0))?))?;
        Ok(match min {
            Some(m) => m,
            None if head == 0 => 0,
            None => head + 1,
        })
    }

    /// Every change (all namespaces) after `after_seq`, up to `limit`, for
    /// replication.
    pub fn all_changes_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after_seq as i64, limit as i64], change_from_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// The whole manifest (all namespaces, tombstones included) in
    /// (namespace, path) order after `after`, up to `limit`: a resync's
    /// snapshot, and the digest's input.
    pub fn manifest_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, Entry)>> {
        let (ans, apath) = after.unzip();
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, namespace, symlink, folder
                 FROM files WHERE ?1 IS NULL OR (namespace, path) > (?1, ?2)
                 ORDER BY namespace, path LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![ans, apath, limit as i64], |r| {
                let entry = entry_from_row(r, 0)?;
                let namespace: String = r.get(8)?;
                Ok(entry.map(|e| (namespace, e)))
            })?;
            rows.map(|r| r?).collect()
        })
    }

    /// Applies changes replicated from the primary, with their sequence
    /// numbers, in one transaction (group commit: one durable commit for
    /// the lot). A change already applied (a redelivery) is skipped; a gap
    /// is refused. A change's content is `staged`; without it a live
    /// entry's content must be stored already, unless `content_gone` (the
    /// primary no longer kept it because a later change, which follows,
    /// replaced it). Returns how many changes were new.
    pub(crate) fn apply_replicated_batch(&self, batch: Vec<Replicated>) -> Result<usize> {
        let mut w = self.writer();
        let mut head = w.head;
        let tx = w.conn.transaction()?;
        let mut applied = Vec::with_capacity(batch.len());
        let mut pending = false;
        for Replicated { change, staged, content_gone } in batch {
            if change.seq <= head {
                continue;
            }
            if change.seq != head + 1 {
                return Err(Error::FailedPrecondition(format!(
                    "replication gap: expected change {}, got {}",
                    head + 1,
                    change.seq
                )));
            }
            let current = match &change.what {
                What::File(entry) => {
                    if entry.version != change.seq {
                        return Err(Error::invalid("a replicated entry's version must be its change's seq"));
                    }
                    let current = get_entry(&tx, &change.namespace, &entry.path)?;
                    if self.place_content(entry, staged, content_gone)? == Durability::Pending {
                        pending = true;
                    }
                    write_change(&tx, &change.namespace, entry)?;
                    current
                }
                _ => {
                    locks::write_lock_change(&tx, &change)?;
                    None
                }
            };
            head = change.seq;
            applied.push((change, current));
        }
        if pending {
            self.inner.blobs.sync()?;
        }
        tx.commit()?;
        let n = applied.len();
        for (change, current) in applied {
            self.after_commit(&mut w, change, current);
        }
        Ok(n)
    }

    /// Moves received content into place, or checks it is there.
    fn place_content(
        &self,
        entry: &Entry,
        staged: Option<StagedBlob>,
        content_gone: bool,
    ) -> Result<Durability> {
        match (staged, entry.content) {
            (Some(s), _) => self.inner.blobs.persist(s),
            (None, Some(c)) if !content_gone && !self.inner.blobs.contains(&c.hash) => {
                Err(Error::FailedPrecondition(format!("no content with hash {} for {}", c.hash, entry.path)))
            }
            // Stored content is referred to by a committed entry: durable.
            _ => Ok(Durability::Durable),
        }
    }

    /// Starts a full resync: the snapshot is collected beside the manifest.
    pub(crate) fn snapshot_begin(&self) -> Result<()> {
        let w = self.writer();
        w.conn.execute_batch(
            "DROP TABLE IF EXISTS snapshot_files;
             CREATE TABLE snapshot_files AS SELECT * FROM files WHERE 0;
             DROP TABLE IF EXISTS snapshot_locks;
             CREATE TABLE snapshot_locks AS SELECT * FROM locks WHERE 0;",
        )?;
        Ok(())
    }

    /// Adds one manifest entry to the snapshot being received.
    pub(crate) fn snapshot_put(
        &self,
        ns: &str,
        entry: &Entry,
        staged: Option<StagedBlob>,
        content_gone: bool,
    ) -> Result<()> {
        let w = self.writer();
        // Made durable, whatever it is, by `snapshot_end`'s sync.
        let _ = self.place_content(entry, staged, content_gone)?;
        let (size, hash, mtime, exec, link, folder) = content_columns(entry);
        w.conn.execute(
            "INSERT INTO snapshot_files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![ns, entry.path.as_str(), entry.version as i64, entry.is_deleted(), size, hash, mtime, exec, entry.client_id, link, folder],
        )?;
        Ok(())
    }

    /// Completes a full resync: in one transaction the snapshot becomes the
    /// manifest, the log restarts empty at `head`; then unreferenced blobs go.
    pub(crate) fn snapshot_end(&self, head: u64) -> Result<()> {
        {
            let mut w = self.writer();
            self.inner.blobs.sync()?;
            let tx = w.conn.transaction()?;
            tx.execute_batch(
                "DELETE FROM files;
                 INSERT INTO files SELECT * FROM snapshot_files;
                 DROP TABLE snapshot_files;
                 DELETE FROM locks;
                 INSERT INTO locks SELECT * FROM snapshot_locks;
                 DROP TABLE snapshot_locks;
                 DELETE FROM changes;",
            )?;
            identity::set_meta(&tx, MetaKey::HeadFloor, &head.to_string())?;
            tx.commit()?;
            w.head = head;
            self.inner.head.store(head, Ordering::Release);
        }
        self.sweep_orphan_blobs()
    }

    /// A receiver of every change committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.events.subscribe()
    }

    /// The entry of `path` (live or tombstone), if it was ever written.
    pub fn stat(&self, ns: &str, path: &RelPath) -> Result<Option<Entry>> {
        self.read(|c| get_entry(c, ns, path))
    }

    /// Up to `limit` entries under `prefix`, in path order, after `after`.
    pub fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let prefix = prefix.trim_end_matches('/');
        // Paths below "p" sort between "p/" and "p0" ('0' follows '/').
        let (lo, hi) = (format!("{prefix}/"), format!("{prefix}0"));
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
                 FROM files
                 WHERE namespace = ?1
                   AND (?2 = '' OR path = ?2 OR (path >= ?3 AND path < ?4))
                   AND (?5 IS NULL OR path > ?5)
                   AND (?6 OR deleted = 0)
                 ORDER BY path LIMIT ?7",
            )?;
            let rows = stmt
                .query_map(params![ns, prefix, lo, hi, after, include_deleted, limit as i64], |r| {
                    entry_from_row(r, 0)
                })?;
            rows.map(|r| r?).collect()
        })
    }

    /// Up to `limit` changes of namespace `ns` after `after_seq`, in order.
    pub fn changes_after(&self, ns: &str, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {CHANGE_COLUMNS} FROM changes WHERE namespace = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![ns, after_seq as i64, limit as i64], change_from_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// The entry `path` had at `version` (kept in the change log), if any.
    pub fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>> {
        self.read(|c| {
            c.query_row(
                "SELECT path, seq, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
                 FROM changes WHERE namespace = ?1 AND path = ?2 AND seq = ?3 AND kind = 0",
                params![ns, path.as_str(), version as i64],
                |r| entry_from_row(r, 0),
            )
            .optional()?
            .transpose()
        })
    }

    /// Whether content with this hash is stored.
    pub fn has_blob(&self, hash: &ContentHash) -> bool {
        self.inner.blobs.contains(hash)
    }

    /// The size of content `hash` if namespace `ns` may reuse it without
    /// sending it: it is stored, one of the namespace's entries refers to
    /// it, and it still matches its hash (it is read and hashed: damaged
    /// content must not gain new entries, the caller holds a good copy to
    /// send instead). Content only other namespaces hold is as good as
    /// absent, so a caller cannot probe for it.
    pub fn reusable_size(&self, ns: &str, hash: &ContentHash) -> Result<Option<u64>> {
        if !self.read(|c| refers_to(c, ns, hash))? {
            return Ok(None);
        }
        let size = match std::fs::metadata(self.inner.blobs.path_of(hash)) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok((self.inner.blobs.verify(hash, size)? == Verdict::Good).then_some(size))
    }

    /// Opens stored content `hash` of `size` bytes for a verified read
    /// ([`BlobReader`]): `None` when it is no longer kept, `DATA_LOSS` when
    /// it was found damaged.
    pub(crate) fn blob_reader(&self, hash: &ContentHash, size: u64) -> Result<Option<BlobReader>> {
        self.inner.blobs.reader(hash, size)
    }

    /// Reads stored content `hash` of `size` bytes whole and checks it,
    /// setting it aside if damaged.
    pub(crate) fn verify_blob(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        self.inner.blobs.verify(hash, size)
    }

    /// Puts verified content in place (healing a damaged copy), durably,
    /// outside any commit: a scrub's repair.
    pub(crate) fn restore_blob(&self, staged: StagedBlob) -> Result<()> {
        if self.inner.blobs.persist(staged)? == Durability::Pending {
            self.inner.blobs.sync()?;
        }
        Ok(())
    }

    /// Whether content `hash` was found damaged and not healed since.
    pub fn is_damaged(&self, hash: &ContentHash) -> bool {
        self.inner.blobs.is_damaged(hash)
    }

    /// The live files (namespace, path) whose content is `hash`.
    pub fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT namespace, path FROM files WHERE hash = ?1 AND deleted = 0 ORDER BY namespace, path",
            )?;
            let rows = stmt.query_map([&hash.as_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
    }

    /// Takes the damaged contents (hash, size) found by reads since the
    /// last call, for a healer.
    pub(crate) fn take_found_damaged(&self) -> Vec<(ContentHash, u64)> {
        self.inner.blobs.take_found()
    }

    /// Resolves when a read found damaged content (see
    /// [`Store::take_found_damaged`]).
    pub(crate) async fn damage_found(&self) {
        self.inner.blobs.found().await;
    }

    /// How many stored contents are set aside as damaged now, and how many
    /// were found since the store was opened.
    pub fn damaged_blobs(&self) -> (u64, u64) {
        (self.inner.blobs.damaged_count(), self.inner.blobs.found_damaged())
    }

    /// How many contents are stored, and their total size in bytes: what
    /// `Admin/Status` reports when asked. Lists the whole content store.
    pub fn stored_blobs(&self) -> Result<(u64, u64)> {
        self.inner.blobs.usage()
    }

    /// Every distinct content live entries refer to, with its size, after
    /// `after` in hash order, up to `limit`: what a scrub walks.
    pub(crate) fn referenced_blobs(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let after = after.map(|h| h.as_bytes().to_vec());
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT hash, MAX(size) FROM files WHERE deleted = 0 AND hash IS NOT NULL
                   AND (?1 IS NULL OR hash > ?1)
                 GROUP BY hash ORDER BY hash LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })?;
            rows.map(|r| {
                let (hash, size) = r?;
                Ok((ContentHash::try_from(&hash[..])?, size as u64))
            })
            .collect()
        })
    }

    /// Starts receiving new content into a temp file.
    pub(crate) fn blob_writer(&self) -> Result<BlobWriter> {
        self.inner.blobs.writer()
    }

    /// What a write of `path` (a folder entry with `folder`) is checked
    /// against before its content is received, read on one connection in
    /// one go (the commit checks again under the writer lock).
    pub(crate) fn path_facts(&self, ns: &str, path: &RelPath, folder: bool) -> Result<PathFacts> {
        self.read(|c| {
            let (file_above, live_below) = clash_rows(c, ns, path, folder)?;
            Ok(PathFacts {
                entry: get_entry(c, ns, path)?,
                lock: locks::get_lock(c, ns, path)?,
                file_above,
                live_below,
            })
        })
    }

    /// Commits an upload. `staged` is the received content; `None` means the
    /// content must already be stored (a header-only upload).
    pub(crate) fn commit_put(&self, ns: &str, put: Put, staged: Option<StagedBlob>) -> Result<Change> {
        let hash = put.content.hash;
        if let Some(s) = &staged {
            debug_assert_eq!(s.hash(), hash);
        }
        if put.content.symlink {
            self.check_link_target(&put, staged.as_ref())?;
        }
        // The content is put in place (renamed; a large blob's folder
        // fsynced) before the writer lock is taken, so that commits wait
        // only for each other's database work and one sync of the batch;
        // the hold keeps garbage collection off it until this commit is
        // done.
        let (placed, durability) = match staged {
            Some(staged) => {
                let hold = self.hold_blob(hash);
                let durability = self.inner.blobs.persist(staged)?;
                (Some(hold), durability)
            }
            None => (None, Durability::Durable),
        };
        let needs_sync = durability == Durability::Pending;
        let result = self.commit_put_placed(ns, put, placed.is_some(), needs_sync);
        drop(placed);
        if result.is_err() {
            self.drop_if_unreferenced(&hash);
        }
        result
    }

    /// Queues the put, then takes the writer lock: by then an earlier
    /// holder may have committed it with its own batch; if not, this thread
    /// commits every queued put in one transaction. Each put's checks run in
    /// order inside that transaction, so a refused one writes nothing and
    /// later ones see the earlier ones.
    fn commit_put_placed(&self, ns: &str, put: Put, placed: bool, needs_sync: bool) -> Result<Change> {
        let slot: Slot = Arc::new(Mutex::new(None));
        self.inner.queued.lock().unwrap_or_else(|p| p.into_inner()).push(QueuedPut {
            ns: ns.to_owned(),
            put,
            placed,
            needs_sync,
            slot: slot.clone(),
        });
        let mut w = self.writer();
        if let Some(done) = slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return done;
        }
        let batch = std::mem::take(&mut *self.inner.queued.lock().unwrap_or_else(|p| p.into_inner()));
        self.commit_batch(&mut w, batch);
        let done = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        done.expect("this thread's put was in the batch it committed")
    }

    /// Commits queued puts in one transaction and fills their slots.
    fn commit_batch(&self, w: &mut Writer, batch: Vec<QueuedPut>) {
        let slots: Vec<Slot> = batch.iter().map(|j| j.slot.clone()).collect();
        let mut seq = w.head;
        let mut committed = Vec::new();
        let outcome = (|| -> Result<()> {
            // Blob before metadata: one sync for the batch's small blobs.
            if batch.iter().any(|j| j.needs_sync) {
                self.inner.blobs.sync()?;
            }
            let tx = w.conn.transaction()?;
            for job in batch {
                match Self::check_put(&tx, &self.inner.blobs, &job) {
                    Ok(current) => {
                        seq += 1;
                        let QueuedPut { ns, put, slot, .. } = job;
                        let entry = Entry {
                            path: put.path,
                            version: seq,
                            content: Some(put.content),
                            client_id: put.who.client_id,
                        };
                        write_change(&tx, &ns, &entry)?;
                        committed.push((file_change(&ns, entry), current, slot));
                    }
                    Err(e) => *job.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e)),
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                for (change, current, slot) in committed {
                    let change = self.after_commit(w, change, current);
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(change));
                }
            }
            Err(e) => {
                // Nothing of the batch was committed: every put not refused
                // on its own fails with the batch.
                tracing::error!(error = %e, "a batch commit failed");
                drop(committed);
                let full = e.is_disk_full();
                for slot in slots {
                    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                    if !matches!(*slot, Some(Err(_))) {
                        let message = format!("the commit failed: {e}");
                        *slot =
                            Some(Err(if full { Error::DiskFull(message) } else { Error::Internal(message) }));
                    }
                }
            }
        }
    }

    /// The checks of one queued put, inside the batch's transaction; returns
    /// the path's current entry.
    fn check_put(c: &Connection, blobs: &BlobStore, job: &QueuedPut) -> Result<Option<Entry>> {
        let put = &job.put;
        let current = get_entry(c, &job.ns, &put.path)?;
        rules::check_base(&put.path, current.as_ref(), put.base_version)?;
        locks::check_write(c, &job.ns, &put.path, &put.who, put.lock_token, now_ms())?;
        check_clash(c, &job.ns, &put.path, put.content.folder)?;
        let hash = &put.content.hash;
        let present = job.placed || (blobs.contains(hash) && refers_to(c, &job.ns, hash)?);
        if !present {
            return Err(Error::no_content(&put.content.hash));
        }
        Ok(current)
    }

    /// Checks a link's target (the staged content, or for a header-only
    /// upload the stored content of that hash) as every client would use
    /// it: [`syncstore::limits::check_link_target`].
    fn check_link_target(&self, put: &Put, staged: Option<&StagedBlob>) -> Result<()> {
        use std::io::Read;
        let size = put.content.size;
        if size > syncstore::limits::MAX_PATH_BYTES as u64 {
            return Err(Error::BadSymlink(format!(
                "{} is a symbolic link with a {size}-byte target; the limit is {}",
                put.path,
                syncstore::limits::MAX_PATH_BYTES
            )));
        }
        let mut target = Vec::with_capacity(size as usize);
        match staged {
            Some(s) => {
                s.reopen()?.take(size).read_to_end(&mut target)?;
            }
            // Stored content, verified as it is read; unknown content is
            // refused as such by the commit's checks.
            None => match self.blob_reader(&put.content.hash, size)? {
                Some(mut reader) => {
                    while let Some(chunk) = reader.next_chunk(syncstore::limits::MAX_CHUNK)? {
                        target.extend_from_slice(&chunk);
                    }
                }
                None => return Ok(()),
            },
        }
        syncstore::limits::check_link_target(&target)
            .map_err(|why| Error::BadSymlink(format!("{} is a symbolic link whose target {why}", put.path)))
    }

    /// Keeps garbage collection off `hash` while the hold lives.
    fn hold_blob(&self, hash: ContentHash) -> BlobHold {
        *self.inner.placing.lock().unwrap_or_else(|p| p.into_inner()).entry(hash).or_insert(0) += 1;
        BlobHold { store: self.clone(), hash }
    }

    /// Removes a blob that no entry refers to and no upload holds (content of
    /// a refused upload). Failing here only leaves it for the start-up sweep.
    fn drop_if_unreferenced(&self, hash: &ContentHash) {
        let w = self.writer();
        let placing = self.inner.placing.lock().unwrap_or_else(|p| p.into_inner());
        if !placing.contains_key(hash) && matches!(blob_referenced(&w.conn, hash), Ok(false)) {
            let _ = self.inner.blobs.remove(hash);
        }
    }

    /// Commits a deletion, leaving a tombstone.
    pub(crate) fn commit_delete(&self, ns: &str, del: Delete) -> Result<Change> {
        let Delete { path, base_version, who, lock_token } = del;
        let mut w = self.writer();
        let seq = w.head + 1;
        let tx = w.conn.transaction()?;
        let current = get_entry(&tx, ns, &path)?;
        if current.as_ref().is_none_or(Entry::is_deleted) {
            return Err(Error::NotFound(format!("{path} does not exist")));
        }
        rules::check_base(&path, current.as_ref(), base_version)?;
        locks::check_write(&tx, ns, &path, &who, lock_token, now_ms())?;
        let entry = Entry { path, version: seq, content: None, client_id: who.client_id };
        write_change(&tx, ns, &entry)?;
        tx.commit()?;
        Ok(self.after_commit(&mut w, file_change(ns, entry), current))
    }

    /// Bookkeeping once a change is durable, still under the writer lock:
    /// advance the head, tell subscribers, drop a blob nothing refers to any
    /// more, trim the log. The change is committed whatever happens here, so
    /// nothing after the broadcast may fail the call.
    fn after_commit(&self, w: &mut Writer, change: Change, previous: Option<Entry>) -> Change {
        w.head = change.seq;
        self.inner.head.store(change.seq, Ordering::Release);
        // No receiver is fine: nobody is subscribed.
        let _ = self.inner.events.send(change.clone());

        let old_hash = previous.and_then(|p| p.content).map(|c| c.hash);
        let new_hash = change.entry().and_then(|e| e.content).map(|c| c.hash);
        if let Some(old) = old_hash.filter(|h| Some(*h) != new_hash) {
            // Harmless if it fails: the start-up sweep removes it next time.
            // An upload about to commit the same content holds it.
            let placing = self.inner.placing.lock().unwrap_or_else(|p| p.into_inner());
            match blob_referenced(&w.conn, &old) {
                Ok(_) if placing.contains_key(&old) => {}
                Ok(true) => {}
                Ok(false) => {
                    if let Err(e) = self.inner.blobs.remove(&old) {
                        tracing::warn!(hash = %old, error = %e, "could not remove an unreferenced blob");
                    }
                }
                Err(e) => tracing::warn!(hash = %old, error = %e, "could not check a blob's references"),
            }
        }
        w.commits_since_prune += 1;
        let retention = self.inner.options.log_retention.max(1);
        if w.commits_since_prune >= PRUNE_EVERY.min(retention) {
            w.commits_since_prune = 0;
            let keep_from = w.head.saturating_sub(retention);
            // The latest change is always kept, so MAX(seq) stays the head.
            match w.conn.execute(
                "DELETE FROM changes WHERE seq <= ?1 AND seq < ?2",
                params![keep_from as i64, w.head as i64],
            ) {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, keep_from, "trimmed the change log"),
                Err(e) => tracing::warn!(error = %e, "could not trim the change log"),
            }
        }
        change
    }

    /// Removes blobs that no manifest row refers to: content of a crash
    /// between the blob's rename and the metadata commit.
    fn sweep_orphan_blobs(&self) -> Result<()> {
        let w = self.writer();
        let mut removed = 0usize;
        for hash in self.inner.blobs.all()?.into_iter().chain(self.inner.blobs.all_damaged()?) {
            if !blob_referenced(&w.conn, &hash)? {
                self.inner.blobs.remove(&hash)?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unreferenced blobs");
        }
        Ok(())
    }

    fn identity_guard(&self) -> MutexGuard<'_, Identity> {
        self.inner.identity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (the transaction rolls back), so a poisoned lock is still usable.
        self.inner.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a pooled read-only connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::connect(&self.inner.db_path)?,
        };
        let out = f(&conn);
        self.inner.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
        out
    }
}

/// Whether a live entry of namespace `ns` refers to content `hash`.
fn refers_to(c: &Connection, ns: &str, hash: &ContentHash) -> Result<bool> {
    Ok(c.prepare_cached("SELECT 1 FROM files WHERE hash = ?1 AND namespace = ?2 LIMIT 1")?
        .exists(params![hash.as_bytes().as_slice(), ns])?)
}

fn get_entry(c: &Connection, ns: &str, path: &RelPath) -> Result<Option<Entry>> {
    c.prepare_cached(
        "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
         FROM files WHERE namespace = ?1 AND path = ?2",
    )?
    .query_row(params![ns, path.as_str()], |r| entry_from_row(r, 0))
    .optional()?
    .transpose()
}

/// Appends the change to the log and makes it the path's current entry.
fn write_change(c: &Connection, ns: &str, e: &Entry) -> Result<()> {
    let (size, hash, mtime, exec, link, folder) = content_columns(e);
    let deleted = e.content.is_none();
    c.prepare_cached(
        "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id, committed_ms, symlink, folder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![e.version as i64, ns, e.path.as_str(), deleted, size, hash, mtime, exec, e.client_id, now_ms(), link, folder])?;
    c.prepare_cached(
        "INSERT INTO files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (namespace, path) DO UPDATE SET
           version = excluded.version, deleted = excluded.deleted, size = excluded.size,
           hash = excluded.hash, mtime_ns = excluded.mtime_ns, executable = excluded.executable,
           client_id = excluded.client_id, symlink = excluded.symlink, folder = excluded.folder",
    )?
    .execute(params![
        ns,
        e.path.as_str(),
        e.version as i64,
        deleted,
        size,
        hash,
        mtime,
        exec,
        e.client_id,
        link,
        folder
    ])?;
    Ok(())
}

/// An entry's content as the columns size, hash, mtime_ns, executable,
/// symlink and folder (zeros and no hash for a tombstone).
fn content_columns(e: &Entry) -> (i64, Option<Vec<u8>>, i64, bool, bool, bool) {
    match &e.content {
        Some(c) => {
            (c.size as i64, Some(c.hash.as_bytes().to_vec()), c.mtime_ns, c.executable, c.symlink, c.folder)
        }
        None => (0, None, 0, false, false, false),
    }
}

/// Checks, against the live entries above and below it, that `path` can be
/// a file (or a folder): [`rules::check_clash`].
fn check_clash(c: &Connection, ns: &str, path: &RelPath, folder: bool) -> Result<()> {
    let (file_above, live_below) = clash_rows(c, ns, path, folder)?;
    rules::check_clash(path, folder, file_above.as_deref(), live_below.as_deref())
}

/// What [`rules::check_clash`] needs of `path`: the first of its folders
/// that is a live file, and (only looked up for a file with none) a live
/// entry below it.
fn clash_rows(
    c: &Connection,
    ns: &str,
    path: &RelPath,
    folder: bool,
) -> Result<(Option<String>, Option<String>)> {
    let mut live_file = c.prepare_cached(
        "SELECT 1 FROM files WHERE namespace = ?1 AND path = ?2 AND deleted = 0 AND folder = 0",
    )?;
    let mut file_above = None;
    for f in rules::folders_of(path) {
        if live_file.exists(params![ns, f])? {
            file_above = Some(f.to_owned());
            break;
        }
    }
    let live_below: Option<String> = if folder || file_above.is_some() {
        None
    } else {
        // Paths below "p" sort between "p/" and "p0" ('0' follows '/').
        let p = path.as_str();
        c.prepare_cached(
            "SELECT path FROM files WHERE namespace = ?1 AND path > ?2 AND path < ?3 AND deleted = 0 LIMIT 1",
        )?
        .query_row(params![ns, format!("{p}/"), format!("{p}0")], |r| r.get(0))
        .optional()?
    };
    Ok((file_above, live_below))
}

fn file_change(ns: &str, entry: Entry) -> Change {
    Change { seq: entry.version, namespace: ns.to_owned(), what: What::File(entry) }
}

/// What the pre-check of a write reads of its path ([`Store::path_facts`]),
/// for the rules of `rules.rs`: the base version check, the lock write
/// check and the path-clash rule.
#[derive(Debug)]
pub(crate) struct PathFacts {
    /// The path's entry (live or tombstone), if it was ever written.
    pub(crate) entry: Option<Entry>,
    /// The path's lock row, in force or past its expiry.
    pub(crate) lock: Option<Lock>,
    /// The first of the path's folders that is a live file.
    pub(crate) file_above: Option<String>,
    /// For a file with no file above it: a live entry below it.
    pub(crate) live_below: Option<String>,
}

/// Where a queued put's outcome is left for the thread that queued it.
type Slot = Arc<Mutex<Option<Result<Change>>>>;

/// A put waiting for the next batch commit.
#[derive(Debug)]
struct QueuedPut {
    ns: String,
    put: Put,
    /// Its content is in place already (else it must be stored).
    placed: bool,
    /// Its content is not durable yet ([`Durability::Pending`]).
    needs_sync: bool,
    slot: Slot,
}

/// A blob put in place for a commit that has not happened yet.
#[derive(Debug)]
struct BlobHold {
    store: Store,
    hash: ContentHash,
}

impl Drop for BlobHold {
    fn drop(&mut self) {
        let mut placing = self.store.inner.placing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = placing.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                placing.remove(&self.hash);
            }
        }
    }
}

/// The columns [`change_from_row`] decodes: a file change's in order, a
/// lock change's ([`locks::LOCK_CHANGE_COLUMNS`]) by name.
const CHANGE_COLUMNS: &str = "path, seq, deleted, size, hash, mtime_ns, executable, client_id, namespace, kind, \
     symlink, folder, lock_id, lock_client_id, lock_principal, lock_holder, lock_note, lock_acquired_ms, \
     lock_expires_ms, lock_ttl_seconds, lock_token, lock_end, lock_ended_by_client_id, lock_ended_by_principal";

/// Decodes a change-log row of [`CHANGE_COLUMNS`].
fn change_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Change>> {
    let namespace: String = r.get(8)?;
    let kind: i64 = r.get(9)?;
    if kind == 0 {
        return Ok(entry_from_row(r, 0)?.map(|entry| file_change(&namespace, entry)));
    }
    locks::lock_change_from_row(r)
}

fn blob_referenced(c: &Connection, hash: &ContentHash) -> Result<bool> {
    Ok(c.prepare_cached("SELECT EXISTS (SELECT 1 FROM files WHERE hash = ?1)")?
        .query_row([&hash.as_bytes()[..]], |r| r.get(0))?)
}

/// Decodes the columns path, version, deleted, size, hash, mtime_ns,
/// executable, client_id starting at `at`, and the columns `symlink` and
/// `folder`. The outer result is SQLite's,
/// the inner one a row whose stored values no longer validate.
fn entry_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Result<Entry>> {
    let path: String = r.get(at)?;
    let version: i64 = r.get(at + 1)?;
    let deleted: bool = r.get(at + 2)?;
    let size: i64 = r.get(at + 3)?;
    let hash: Option<Vec<u8>> = r.get(at + 4)?;
    let mtime_ns: i64 = r.get(at + 5)?;
    let executable: bool = r.get(at + 6)?;
    let client_id: String = r.get(at + 7)?;
    let symlink: bool = r.get("symlink")?;
    let folder: bool = r.get("folder")?;
    Ok((|| {
        let content = match (deleted, hash) {
            (true, _) => None,
            (false, Some(h)) => Some(Content {
                hash: ContentHash::try_from(&h[..])?,
                size: size as u64,
                mtime_ns,
                executable,
                symlink,
                folder,
            }),
            (false, None) => return Err(Error::Internal(format!("live entry {path:?} has no hash"))),
        };
        Ok(Entry { path: RelPath::new(path)?, version: version as u64, content, client_id })
    })())
}

fn now_ms() -> i64 {
    syncstore::lock::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many threads put at once, two per path: group commits give every
    /// path exactly one winner, and the seqs stay gap-free.
    /// A plain file's content of `size` bytes hashing to `hash`.
    fn file_content(hash: ContentHash, size: u64) -> Content {
        Content { hash, size, mtime_ns: 0, executable: false, symlink: false, folder: false }
    }

    #[test]
    fn a_small_blob_is_synced_before_its_commit_and_a_large_or_known_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let put = |path: &str, data: &[u8], send: bool| {
            let hash = ContentHash::of(data);
            let staged = send.then(|| {
                let mut w = store.blob_writer().unwrap();
                w.write(data).unwrap();
                w.finish(hash, data.len() as u64).unwrap()
            });
            let content = file_content(hash, data.len() as u64);
            let put = Put {
                path: RelPath::new(path).unwrap(),
                content,
                base_version: 0,
                who: Actor::new("p", "c"),
                lock_token: 0,
            };
            let before = store.inner.blobs.sync_count();
            store.commit_put(DEFAULT_NAMESPACE, put, staged).unwrap();
            store.inner.blobs.sync_count() - before
        };
        let linux = u64::from(cfg!(target_os = "linux"));
        assert_eq!(put("small", b"small", true), linux, "one sync before the commit");
        assert_eq!(put("copy", b"small", false), 0, "reused content is durable already");
        let large = vec![1u8; blobs::DEFER_SYNC_MAX as usize + 1];
        assert_eq!(put("large", &large, true), 0, "a large blob was fsynced on its own");
    }

    #[test]
    fn concurrent_puts_commit_in_groups_without_gaps_or_double_winners() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let data = format!("content {i}");
                    let hash = ContentHash::of(data.as_bytes());
                    let mut w = store.blob_writer().unwrap();
                    w.write(data.as_bytes()).unwrap();
                    let staged = w.finish(hash, data.len() as u64).unwrap();
                    let put = Put {
                        path: RelPath::new(format!("f{}", i / 2)).unwrap(),
                        content: file_content(hash, data.len() as u64),
                        base_version: 0,
                        who: Actor::new("p", format!("c{i}")),
                        lock_token: 0,
                    };
                    store.commit_put(DEFAULT_NAMESPACE, put, Some(staged))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<&Change> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 16, "one winner per path");
        assert!(
            results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, Error::VersionConflict { .. }))
        );
        let mut seqs: Vec<u64> = won.iter().map(|c| c.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
        assert_eq!(store.head(), 16);
        // Every small blob was synced before its commit, in as many syncs
        // as batches at most (at least one).
        let syncs = store.inner.blobs.sync_count();
        if cfg!(target_os = "linux") {
            assert!((1..=32).contains(&syncs), "{syncs} syncs");
        }
        // The losers' content is not kept.
        let mut kept = store.inner.blobs.all().unwrap();
        kept.sort();
        let mut winners: Vec<ContentHash> =
            won.iter().map(|c| c.entry().unwrap().content.unwrap().hash).collect();
        winners.sort();
        assert_eq!(kept, winners);
    }
}
