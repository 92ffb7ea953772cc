//! The journal: [`Store`], the one handle to a data folder, and the commit
//! protocol every backend shares. It assigns sequence numbers, groups
//! concurrent puts into one transaction (group commit), puts content in
//! place and makes it durable before any metadata refers to it, keeps
//! garbage collection off content an upload holds, runs the domain rules
//! (`rules.rs`) on the facts the metadata backend fetches, and broadcasts
//! committed changes in order. It names no backend type: it talks to a
//! [`MetaStore`] and a [`ContentStore`].
//!
//! Invariants:
//! - A change is committed in one metadata transaction that updates the
//!   manifest and appends to the change log, and only after its content is
//!   durable and in place. A crash at any point leaves either the old or
//!   the new state, never a half.
//! - Sequence numbers are assigned under the writer lock, so they are
//!   gap-free and the broadcast of committed changes is in sequence order.
//! - Content is removed only under the writer lock, once no live entry
//!   refers to it and no upload holds it. An upload registers its hold
//!   before it puts its content in place (outside the writer lock, so
//!   commits wait only for each other's metadata work), and a hold waits
//!   for a removal of the same content in progress, so an upload never
//!   loses a race with the removal.
//! - A commit runs to its end even when its caller goes away (it is a task
//!   of its own): a group's leader commits for the whole group.
//!
//! Content larger than one chunk is stored as chunk blobs plus its recipe
//! (`chunked.rs`), written with the entry that first refers to it.
//!
//! Garbage collection works over a reference set (every live entry's
//! content, every kept version's, and every chunk of their recipes). Every
//! file change is kept as a version, so a commit that replaces content
//! leaves it referenced: only a prune (which removes version rows) makes
//! content unreferenced. Content that stopped being referred to (with its
//! recipe, then its chunks nothing else refers to) is removed once
//! [`StoreOptions::gc_grace`] has passed, by a background collector, if
//! nothing refers to it or holds it by then; with no grace (the embedded
//! default) it is removed right away, under the writer lock. The start-up
//! sweep removes whatever a crash left unreferenced.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    path::Path,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use syncstore::{
    ContentHash, Entry, Lock, RelPath,
    chunks::{self, ChunkRef},
};
use tokio::{
    sync::{Notify, broadcast},
    time::Instant,
};

use super::{
    Actor, Change, Delete, HistoryBatch, HistoryChange, HistoryOutcome, HistoryWrite, Identity, LEVEL_PROBE,
    Label, LockEnd, LockRequest, PAGE_SIZE, Put, Replicated, Version, VersionKind, VersionNote, What,
    blobdir::BlobDir,
    chunked::{ChunkedReader, ChunkedUpload, is_chunked},
    content::{ContentReader, ContentStore, ContentUpload, Durability, StagedContent, Verdict},
    feed::ChangeFeed,
    meta::{Decide, Facts, MetaStore, MetaTx, Recipe, Want},
    rules,
    sqlite::SqliteMeta,
};
use crate::error::{Error, Result};

/// Committed changes buffered for live subscribers; a subscriber that falls
/// further behind catches up from the change log.
const BROADCAST_CAPACITY: usize = 4096;

/// How often (in commits) the change log is trimmed to its retention.
const PRUNE_EVERY: u64 = 1000;

/// Settings of a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How many changes the log keeps; older ones are trimmed, and a
    /// subscriber whose cursor is older gets a RESET.
    pub log_retention: u64,
    /// How long content a commit stopped referring to is kept before the
    /// background collector removes it (if nothing refers to it or holds it
    /// by then). Zero, the default: the commit removes it before it
    /// answers, as a local blob folder can at no cost. Object storage, or
    /// readers that must finish a download of a replaced version, want
    /// minutes.
    pub gc_grace: Duration,
    /// The address (gRPC URL) this process advertises to the others of a
    /// shared backend, shown in their status.
    pub process_address: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { log_retention: 1_000_000, gc_grace: Duration::ZERO, process_address: None }
    }
}

/// A handle to a data folder; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    meta: Arc<dyn MetaStore>,
    content: Arc<dyn ContentStore>,
    writer: tokio::sync::Mutex<Writer>,
    /// The head as last committed, published for readers (status, metrics,
    /// acknowledgements) that must not wait for the writer lock, which a
    /// commit holds across its syncs. `Writer::head` is the authority.
    head: AtomicU64,
    /// Content put in place by uploads that have not committed yet, and
    /// content being removed.
    holds: Mutex<Holds>,
    /// Woken when a removal of content ends.
    removed: Notify,
    /// Uploads waiting to commit: whoever takes the writer lock next
    /// commits all of them in one transaction (group commit).
    queued: Mutex<Vec<QueuedPut>>,
    events: broadcast::Sender<Change>,
    /// Read at open; changed only through its setters, under the writer lock.
    identity: Mutex<Identity>,
    /// Content waiting for its grace to pass, in due order.
    collectable: Mutex<VecDeque<(Instant, ContentHash)>>,
    /// Wakes the collector: new content to collect, or the store is gone.
    collector: Arc<Notify>,
    options: StoreOptions,
    /// Chunk blobs written by uploads since the store was opened.
    chunks_stored: AtomicU64,
    /// Chunks of received content that were stored already.
    chunks_deduplicated: AtomicU64,
    /// For the last [`RECENT_WRITES`] file changes committed here, in seq
    /// order: whether each replaced a live file. The guard asks it for
    /// every change it follows, so that a write costs it no metadata trip
    /// (it falls back to one for an older change).
    recent_writes: Mutex<VecDeque<(u64, bool)>>,
    /// This process's id among the processes of a shared backend.
    process_id: String,
}

/// How many committed file changes [`Store::replaced_live`] remembers.
const RECENT_WRITES: usize = 1 << 16;

/// How often a process of a shared backend looks for other processes'
/// commits when no wake-up came (the wake-up makes it fast; this bounds a
/// lost one).
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// How often a process of a shared backend sweeps content nothing refers
/// to: what a process that died between putting content in place and
/// committing left, and content the bucket kept because an upload touched
/// it within its grace (the bucket removes only content untouched for its
/// grace, so a sweep never takes what an upload in any process placed).
const SHARED_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// How often a process of a shared backend records that it is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often a process of a shared backend refreshes the statistics of the
/// tables that changed much ([`SharedMeta::refresh_statistics`]).
const STATISTICS_INTERVAL: Duration = Duration::from_secs(5);

impl Drop for Inner {
    fn drop(&mut self) {
        // The collector holds the store weakly: woken, it finds it gone.
        self.collector.notify_one();
    }
}

#[derive(Debug)]
struct Writer {
    head: u64,
    commits_since_prune: u64,
    /// Content a snapshot being received put in place, not yet durable.
    snapshot_pending: Vec<ContentHash>,
}

#[derive(Debug, Default)]
struct Holds {
    /// Content held by uploads (with how many hold each): garbage
    /// collection leaves it alone.
    placing: HashMap<ContentHash, usize>,
    /// Content being removed: a new hold waits for the removal to end.
    removing: HashSet<ContentHash>,
}

impl Store {
    /// Opens the data folder at `dir` with the embedded backend (SQLite
    /// metadata, a blob folder), initializing it (with a new history id)
    /// if it is empty, and sweeps what a crash may have left behind.
    pub async fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        let meta = SqliteMeta::open(dir).await?;
        let content = BlobDir::open(dir).await?;
        let store = Self::with_backends(Arc::new(meta), Arc::new(content), options).await?;
        tracing::info!(dir = %dir.display(), head = store.head(), history_id = %store.history_id(), "store opened");
        Ok(store)
    }

    /// Opens the shared backend: metadata in PostgreSQL at `meta_url`,
    /// content in the S3-compatible bucket at `content_url` (small content
    /// inline in the database), written by any number of processes.
    pub async fn open_shared(meta_url: &str, content_url: &str, options: StoreOptions) -> Result<Self> {
        let meta = super::postgres::PgMeta::connect(meta_url).await?;
        let content = super::bucket::BucketContent::open(content_url, meta.pool()).await?;
        let store = Self::with_backends(Arc::new(meta), Arc::new(content), options).await?;
        tracing::info!(head = store.head(), history_id = %store.history_id(), process = store.process_id(), "shared store opened");
        Ok(store)
    }

    /// A store over the given backends; sweeps content nothing refers to.
    pub(crate) async fn with_backends(
        meta: Arc<dyn MetaStore>,
        content: Arc<dyn ContentStore>,
        options: StoreOptions,
    ) -> Result<Self> {
        let head = meta.head().await?;
        let identity = meta.load_identity().await?;
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let store = Self {
            inner: Arc::new(Inner {
                meta,
                content,
                writer: tokio::sync::Mutex::new(Writer {
                    head,
                    commits_since_prune: 0,
                    snapshot_pending: Vec::new(),
                }),
                head: AtomicU64::new(head),
                holds: Mutex::default(),
                removed: Notify::new(),
                queued: Mutex::new(Vec::new()),
                events,
                identity: Mutex::new(identity),
                collectable: Mutex::default(),
                collector: Arc::new(Notify::new()),
                options,
                chunks_stored: AtomicU64::new(0),
                chunks_deduplicated: AtomicU64::new(0),
                recent_writes: Mutex::default(),
                process_id: format!("{:016x}", rand::random::<u64>()),
            }),
        };
        store.sweep_unreferenced().await?;
        if !store.inner.options.gc_grace.is_zero() {
            store.spawn_collector();
        }
        if store.is_shared() {
            store.spawn_follower();
        }
        Ok(store)
    }

    /// Whether the file change `seq`, committed here recently, replaced a
    /// live file (`None`: not remembered, or not a file change).
    pub(crate) fn replaced_live(&self, seq: u64) -> Option<bool> {
        let recent = lock(&self.inner.recent_writes);
        recent.binary_search_by_key(&seq, |(s, _)| *s).ok().map(|i| recent[i].1)
    }

    /// The sequence number of the last committed change.
    pub fn head(&self) -> u64 {
        self.inner.head.load(Ordering::Acquire)
    }

    /// The lowest sequence number from which on every change is in the log:
    /// its oldest row, or the head + 1 when the log is empty (0 on a new
    /// store, where nothing is missing).
    pub async fn oldest_seq(&self) -> Result<u64> {
        let head = self.head();
        Ok(match self.inner.meta.oldest_logged().await? {
            Some(m) => m,
            None if head == 0 => 0,
            None => head + 1,
        })
    }

    /// A receiver of every change committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.events.subscribe()
    }

    /// Up to `limit` changes of namespace `ns` after `after_seq`, in order.
    pub async fn changes_after(&self, ns: &str, after_seq: u64, limit: usize) -> Result<Vec<Change>> {
        self.inner.meta.changes_after(Some(ns), after_seq, limit).await
    }

    /// The whole manifest (all namespaces, tombstones included) in
    /// (namespace, path) order after `after`, up to `limit`: a resync's
    /// snapshot, and the digest's input.
    pub async fn manifest_page(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>> {
        self.inner.meta.manifest_page(after, limit).await
    }

    /// The entry of `path` (live or tombstone), if it was ever written.
    pub async fn stat(&self, ns: &str, path: &RelPath) -> Result<Option<Entry>> {
        Ok(self.inner.meta.facts(ns, path, Want::default()).await?.current)
    }

    /// Up to `limit` entries under `prefix`, in path order, after `after`.
    pub async fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        self.inner.meta.list_page(ns, prefix, after, include_deleted, limit).await
    }

    /// Up to `limit` entries one level below the folder `dir` ("" for the
    /// top), in path order after the cursor `after`, each with the cursor
    /// to pass to continue after it. A subfolder with no entry of its own
    /// (only paths below it) is listed as a made-up entry (a folder,
    /// version 0) where its first path below is, that is after a
    /// look-alike such as `dir/sub.txt`; a subfolder with an entry is that
    /// entry, where it is.
    ///
    /// It skip-scans the index: on the first path below a subfolder it
    /// seeks past the whole subfolder, so a page reads about `limit` rows
    /// and one seek per subfolder, however many paths are below them.
    pub async fn list_level(
        &self,
        ns: &str,
        dir: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<(Entry, String)>> {
        let dir = dir.trim_end_matches('/');
        let below = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let mut out: Vec<(Entry, String)> = Vec::new();
        let mut cursor = after.map(str::to_owned);
        let mut batch = limit;
        while out.len() < limit {
            let want = batch.min(limit - out.len()).max(1);
            let rows = self.list_page(ns, dir, cursor.as_deref(), include_deleted, want).await?;
            let read = rows.len();
            let mut sought = false;
            for e in rows {
                let path = e.path.as_str().to_owned();
                cursor = Some(path.clone());
                let Some(rel) = path.strip_prefix(below.as_str()).filter(|r| !r.is_empty()) else {
                    continue; // The folder's own entry.
                };
                let Some((name, _)) = rel.split_once('/') else {
                    out.push((e, path));
                    if out.len() == limit {
                        break;
                    }
                    continue;
                };
                let folder = format!("{below}{name}");
                // Past every path below the folder: none sorts after this.
                let past = format!("{folder}/{}", char::MAX);
                if !self.level_listed(ns, &folder, after, &out).await? {
                    let made_up = Entry {
                        path: RelPath::new(folder.as_str())?,
                        version: 0,
                        content: Some(syncstore::Content {
                            hash: ContentHash::empty(),
                            size: 0,
                            mtime_ns: 0,
                            executable: false,
                            symlink: false,
                            folder: true,
                        }),
                        client_id: String::new(),
                    };
                    out.push((made_up, past.clone()));
                }
                cursor = Some(past);
                sought = true;
                break;
            }
            if sought {
                batch = LEVEL_PROBE;
            } else if read < want {
                break; // The end of the folder.
            } else {
                batch = batch.saturating_mul(2);
            }
        }
        Ok(out)
    }

    /// Whether a one-level listing that started after `after` has listed
    /// the subfolder `folder` already (its own entry, or a made-up one).
    async fn level_listed(
        &self,
        ns: &str,
        folder: &str,
        after: Option<&str>,
        out: &[(Entry, String)],
    ) -> Result<bool> {
        if out.iter().any(|(e, _)| e.path.as_str() == folder && !e.is_deleted()) {
            return Ok(true);
        }
        let Some(after) = after else { return Ok(false) };
        if after.strip_prefix(folder).is_some_and(|rest| rest.starts_with('/')) {
            return Ok(true); // An earlier page sought past it.
        }
        if folder > after {
            return Ok(false); // This page read its place and found no entry.
        }
        // An earlier page passed its place: listed if it has a live entry.
        let entry = self.stat(ns, &RelPath::new(folder)?).await?;
        Ok(entry.is_some_and(|e| !e.is_deleted()))
    }

    /// The entry `path` had at `version` (kept in the change log), if any.
    pub async fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>> {
        self.inner.meta.entry_at(ns, path, version).await
    }

    /// The last file change of `path` before `before`: its seq and whether
    /// it was a deletion.
    pub(crate) async fn previous_file_change(
        &self,
        ns: &str,
        path: &RelPath,
        before: u64,
    ) -> Result<Option<(u64, bool)>> {
        self.inner.meta.previous_file_change(ns, path, before).await
    }

    /// Whether content with this hash is stored: as one blob, or as a
    /// recipe whose every chunk is stored.
    pub async fn has_blob(&self, hash: &ContentHash) -> Result<bool> {
        if self.inner.content.head(hash).await?.is_some() {
            return Ok(true);
        }
        let Some(recipe) = self.inner.meta.recipe(hash).await? else { return Ok(false) };
        for c in &recipe.list {
            if self.inner.content.head(&c.hash).await?.is_none() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// One chunk of content stored as chunks, read whole and verified in
    /// one go: `None` when it is not stored, `DATA_LOSS` when it was found
    /// damaged (and set aside).
    pub(crate) async fn read_chunk(&self, chunk: &ChunkRef) -> Result<Option<Vec<u8>>> {
        self.inner.content.read_whole(&chunk.hash, u64::from(chunk.size)).await
    }

    /// The recipe of content `hash`, if it is stored as chunks.
    pub(crate) async fn recipe(&self, hash: &ContentHash) -> Result<Option<Recipe>> {
        self.inner.meta.recipe(hash).await
    }

    /// How many chunk blobs uploads wrote, and how many chunks of received
    /// content were stored already, since the store was opened.
    pub fn chunk_counts(&self) -> (u64, u64) {
        (
            self.inner.chunks_stored.load(Ordering::Relaxed),
            self.inner.chunks_deduplicated.load(Ordering::Relaxed),
        )
    }

    pub(super) fn counted_stored(&self) {
        self.inner.chunks_stored.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn counted_deduplicated(&self) {
        self.inner.chunks_deduplicated.fetch_add(1, Ordering::Relaxed);
    }

    /// The content store, for the chunked content's upload and reader.
    pub(super) fn content_store(&self) -> &Arc<dyn ContentStore> {
        &self.inner.content
    }

    /// Every stored content (damaged copies set aside included).
    #[cfg(test)]
    pub(crate) async fn stored_contents(&self) -> Result<Vec<ContentHash>> {
        self.inner.content.list().await
    }

    /// Opens stored content `hash` of `size` bytes for a verified read:
    /// `None` when it is no longer kept, `DATA_LOSS` when it was found
    /// damaged.
    /// Content larger than one chunk is read from its recipe when it has
    /// one (chunk by chunk, each verified), else from its whole blob.
    pub(crate) async fn content_reader(
        &self,
        hash: &ContentHash,
        size: u64,
    ) -> Result<Option<Box<dyn ContentReader>>> {
        if is_chunked(size)
            && let Some(recipe) = self.inner.meta.recipe(hash).await?
        {
            return Ok(Some(Box::new(ChunkedReader::new(self.clone(), *hash, recipe.size, recipe.list))));
        }
        self.inner.content.get(hash, size).await
    }

    /// Reads stored content `hash` of `size` bytes whole and checks it,
    /// setting it aside if damaged (content stored as chunks: each chunk;
    /// a damaged chunk is set aside and the content is damaged).
    pub(crate) async fn verify_blob(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        if is_chunked(size)
            && let Some(recipe) = self.inner.meta.recipe(hash).await?
        {
            let mut verdict = Verdict::Good;
            for c in &recipe.list {
                match self.inner.content.verify(&c.hash, u64::from(c.size)).await? {
                    Verdict::Good => {}
                    Verdict::Damaged => verdict = Verdict::Damaged,
                    Verdict::Missing if verdict == Verdict::Good => verdict = Verdict::Missing,
                    Verdict::Missing => {}
                }
            }
            return Ok(verdict);
        }
        self.inner.content.verify(hash, size).await
    }

    /// Puts verified content in place (healing a damaged copy), durably,
    /// outside any commit: a scrub's repair. Content received as chunks
    /// gets its recipe stored if it had none.
    pub(crate) async fn restore_blob(&self, staged: Box<dyn StagedContent>) -> Result<()> {
        let hash = staged.hash();
        let recipe = staged.recipe().map(<[ChunkRef]>::to_vec);
        let _holds = self.hold_content(hash, recipe.as_deref()).await;
        if staged.place().await? == Durability::Pending {
            let pending: Vec<ContentHash> = pending_names(hash, recipe.as_deref()).collect();
            self.inner.content.ensure_durable(&pending).await?;
        }
        if let Some(list) = recipe {
            let size = list.iter().map(|c| u64::from(c.size)).sum();
            // Metadata is written under the writer lock, never beside a
            // commit's open transaction.
            let _w = self.inner.writer.lock().await;
            self.inner.meta.put_recipe(Recipe { hash, size, list, prev: None }).await?;
        }
        Ok(())
    }

    /// Whether content `hash` was found damaged and not healed since.
    pub async fn is_damaged(&self, hash: &ContentHash) -> Result<bool> {
        self.inner.content.is_damaged(hash).await
    }

    /// The live files (namespace, path) whose content is `hash`.
    pub async fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>> {
        self.inner.meta.paths_of(hash).await
    }

    /// Takes the damaged contents (hash, size) found by reads since the
    /// last call, for a healer.
    pub(crate) fn take_found_damaged(&self) -> Vec<(ContentHash, u64)> {
        self.inner.content.take_found()
    }

    /// Resolves when a read found damaged content (see
    /// [`Store::take_found_damaged`]).
    pub(crate) async fn damage_found(&self) {
        self.inner.content.found().await;
    }

    /// How many stored contents are set aside as damaged now, and how many
    /// were found since the store was opened.
    pub fn damaged_blobs(&self) -> (u64, u64) {
        self.inner.content.damage_counts()
    }

    /// Every distinct content live entries refer to, with its size, after
    /// `after` in hash order, up to `limit`: what a scrub walks.
    pub(crate) async fn referenced_blobs(
        &self,
        after: Option<&ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        self.inner.meta.referenced_contents(after.copied(), limit).await
    }

    /// Starts receiving new content announced as `size` bytes: content
    /// larger than one chunk is cut into chunk blobs as it arrives.
    pub(crate) async fn upload(&self, size: u64) -> Result<Box<dyn ContentUpload>> {
        if is_chunked(size) {
            return Ok(Box::new(ChunkedUpload::new(self.clone(), size)));
        }
        self.inner.content.upload().await
    }

    /// What a write of `path` (a folder entry with `folder`) is checked
    /// against before its content is received, read in one trip (the commit
    /// checks again under the writer lock); for an upload of content
    /// `hash`, also whether an entry or a kept version of the namespace
    /// refers to that content (whether a header-only upload may reuse it).
    pub(crate) async fn path_facts(
        &self,
        ns: &str,
        path: &RelPath,
        folder: bool,
        hash: Option<&ContentHash>,
    ) -> Result<PathFacts> {
        let want = Want { clash: Some(folder), refers: hash.copied(), ..Want::default() };
        let facts = self.inner.meta.facts(ns, path, want).await?;
        Ok(PathFacts {
            entry: facts.current,
            lock: facts.lock,
            file_above: facts.file_above,
            live_below: facts.live_below,
            refers: facts.refers,
        })
    }

    /// The size of stored content `hash` if it still matches its hash. It
    /// is read and hashed: damaged content must not gain new entries (it is
    /// set aside, and a header-only upload's caller holds a good copy to
    /// send instead). A namespace may reuse content without sending it only
    /// if one of its entries or versions refers to it ([`Store::path_facts`]) and
    /// this finds it good; content only other namespaces hold is as good as
    /// absent, so a caller cannot probe for it.
    /// `size` is the caller's announced size: larger than one chunk, the
    /// content's recipe is looked for first (each chunk read and hashed).
    pub(crate) async fn verified_size(&self, hash: &ContentHash, size: u64) -> Result<Option<u64>> {
        if is_chunked(size)
            && let Some(recipe) = self.inner.meta.recipe(hash).await?
        {
            return Ok((self.verify_blob(hash, recipe.size).await? == Verdict::Good).then_some(recipe.size));
        }
        self.inner.content.verified_size(hash).await
    }

    /// How many contents are stored, and their total size in bytes: what
    /// `Admin/Status` reports when asked. Lists the whole content store.
    pub async fn stored_blobs(&self) -> Result<(u64, u64)> {
        self.inner.content.usage().await
    }

    /// Commits an upload. `staged` is the received content; `None` means the
    /// content must already be stored (a header-only upload).
    pub(crate) async fn commit_put(
        &self,
        ns: &str,
        put: Put,
        staged: Option<Box<dyn StagedContent>>,
    ) -> Result<Change> {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move { this.commit_put_now(&ns, put, staged, false).await }).await
    }

    /// Commits a header-only upload whose content the caller found stored
    /// and good a moment ago ([`Store::verified_size`]): as
    /// [`Store::commit_put`] without staged content, but without looking
    /// the content up again. The commit still checks that the namespace
    /// refers to it, and content a live entry refers to is not removed.
    pub(crate) async fn commit_reused(&self, ns: &str, put: Put) -> Result<Change> {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move { this.commit_put_now(&ns, put, None, true).await }).await
    }

    async fn commit_put_now(
        &self,
        ns: &str,
        put: Put,
        staged: Option<Box<dyn StagedContent>>,
        verified: bool,
    ) -> Result<Change> {
        let hash = put.content.hash;
        if let Some(s) = &staged {
            debug_assert_eq!(s.hash(), hash);
        }
        if put.content.symlink {
            self.check_link_target(&put, staged.as_deref()).await?;
        }
        // The content is put in place (a large one's folder synced) before
        // the writer lock is taken, so that commits wait only for each
        // other's metadata work and one sync of the group; the hold keeps
        // garbage collection off it until this commit is done. Stored
        // content is looked up here too, outside the lock; the commit
        // checks that the namespace refers to it.
        let mut recipe = None;
        let (placed, stored, durability) = match staged {
            Some(staged) => {
                recipe = staged.recipe().map(<[ChunkRef]>::to_vec);
                let holds = self.hold_content(hash, recipe.as_deref()).await;
                let durability = staged.place().await?;
                (Some(holds), true, durability)
            }
            None if verified => (None, true, Durability::Durable),
            None => (None, self.has_blob(&hash).await?, Durability::Durable),
        };
        let mut chunks: Vec<ContentHash> = recipe.iter().flatten().map(|c| c.hash).collect();
        let job = Job {
            put,
            placed: placed.is_some(),
            stored,
            needs_sync: durability == Durability::Pending,
            recipe,
        };
        let result = self.commit_put_placed(ns, job).await;
        drop(placed);
        if result.is_err() {
            chunks.push(hash);
            self.drop_if_unreferenced(chunks).await;
        }
        result
    }

    /// Holds content `hash` and, when it is stored as `chunks`, each of
    /// them.
    async fn hold_content(&self, hash: ContentHash, chunks: Option<&[ChunkRef]>) -> Vec<ContentHold> {
        let mut holds = vec![self.hold(hash).await];
        let mut seen = HashSet::new();
        for c in chunks.unwrap_or_default() {
            if seen.insert(c.hash) {
                holds.push(self.hold(c.hash).await);
            }
        }
        holds
    }

    /// Queues the put, then takes the writer lock: by then an earlier
    /// holder may have committed it with its own group; if not, this task
    /// commits every queued put in one transaction. Each put's checks run
    /// in order inside that transaction, so a refused one writes nothing
    /// and later ones see the earlier ones.
    async fn commit_put_placed(&self, ns: &str, mut job: Job) -> Result<Change> {
        if job.needs_sync && self.inner.content.durable_each() {
            // Its own content's requests, side by side with other puts',
            // not the group's under the writer lock.
            let names: Vec<ContentHash> =
                pending_names(job.put.content.hash, job.recipe.as_deref()).collect();
            self.inner.content.ensure_durable(&names).await?;
            job.needs_sync = false;
        }
        let slot: Slot = Arc::new(Mutex::new(None));
        lock(&self.inner.queued).push(QueuedPut { ns: ns.to_owned(), job, slot: slot.clone() });
        let mut w = self.inner.writer.lock().await;
        if let Some(done) = lock(&slot).take() {
            return done;
        }
        let batch = std::mem::take(&mut *lock(&self.inner.queued));
        self.commit_batch(&mut w, batch).await;
        let done = lock(&slot).take();
        done.expect("this task's put was in the group it committed")
    }

    /// Commits queued puts in one transaction and fills their slots: one
    /// trip decides the whole group (each put's facts fetched after the
    /// writes of the puts before it, checked here, written if it passes),
    /// one commits it.
    async fn commit_batch(&self, w: &mut Writer, batch: Vec<QueuedPut>) {
        let (jobs, slots): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| ((q.ns, q.job), q.slot)).unzip();
        // Each put's outcome, in order: its change and the entry it
        // replaced, or why it was refused.
        let decided: Arc<Mutex<Vec<Decided>>> = Arc::default();
        let outcome = async {
            // Content before metadata: one sync for the group's pending content.
            let pending: Vec<ContentHash> = jobs
                .iter()
                .filter(|(_, j)| j.needs_sync)
                .flat_map(|(_, j)| pending_names(j.put.content.hash, j.recipe.as_deref()))
                .collect();
            self.inner.content.ensure_durable(&pending).await?;
            let mut tx = self.begin_write(w).await?;
            let items = jobs
                .iter()
                .map(|(ns, job)| {
                    let put = &job.put;
                    let want = Want {
                        clash: Some(put.content.folder),
                        refers: (!job.placed).then_some(put.content.hash),
                        current_recipe: job.recipe.is_some(),
                        moved_from: put.moved_from.clone().filter(|from| *from != put.path),
                        moved_away: false,
                    };
                    (ns.clone(), put.path.clone(), want)
                })
                .collect();
            let (mut seq, now, out) = (w.head, now_ms(), decided.clone());
            let committed_ms = crate::clock::now_ms();
            let decide: Decide = Box::new(move |i, facts| {
                let (ns, job) = &jobs[i];
                match check_put(job, &facts, now) {
                    Ok(()) => {
                        seq += 1;
                        let put = &job.put;
                        let entry = Entry {
                            path: put.path.clone(),
                            version: seq,
                            content: Some(put.content),
                            client_id: put.who.client_id.clone(),
                        };
                        // A move only when the former path's content is this
                        // content: the client's hint is never trusted blindly.
                        let moved_from = put.moved_from.clone().filter(|from| {
                            *from != put.path && facts.moved_from_hash == Some(put.content.hash)
                        });
                        let note = VersionNote {
                            principal: put.who.principal.clone(),
                            committed_ms,
                            kind: if moved_from.is_some() { VersionKind::Move } else { VersionKind::Write },
                            moved_from,
                            moved_to: None,
                            restored_from: None,
                        };
                        let change = Change::file(ns, entry, note);
                        let recipe = job.recipe.as_ref().map(|list| new_recipe(&put.content, list, &facts));
                        lock(&out).push(Ok((change.clone(), facts.current)));
                        Some((change, recipe))
                    }
                    Err(e) => {
                        lock(&out).push(Err(e));
                        None
                    }
                }
            });
            tx.decide_each(items, decide);
            tx.commit().await
        }
        .await;
        let decided = std::mem::take(&mut *lock(&decided));
        match outcome {
            Ok(()) => {
                let mut committed = Vec::new();
                let mut committed_slots = Vec::new();
                for (slot, d) in slots.into_iter().zip(decided) {
                    match d {
                        Ok(c) => {
                            committed.push(c);
                            committed_slots.push(slot);
                        }
                        Err(e) => *lock(&slot) = Some(Err(e)),
                    }
                }
                let changes = self.after_commit(w, committed).await;
                for (change, slot) in changes.into_iter().zip(committed_slots) {
                    *lock(&slot) = Some(Ok(change));
                }
            }
            Err(e) => {
                // Nothing of the group was committed: every put not refused
                // on its own fails with the group.
                tracing::error!(error = %e, "a group commit failed");
                let full = e.is_disk_full();
                let unavailable = matches!(e, Error::Unavailable(_));
                let mut decided = decided.into_iter();
                for slot in slots {
                    *lock(&slot) = Some(match decided.next() {
                        Some(Err(refused)) => Err(refused),
                        _ => {
                            let message = format!("the commit failed: {e}");
                            Err(if full {
                                Error::DiskFull(message)
                            } else if unavailable {
                                Error::Unavailable(message)
                            } else {
                                Error::Internal(message)
                            })
                        }
                    });
                }
            }
        }
    }

    /// Checks a link's target (the staged content, or for a header-only
    /// upload the stored content of that hash) as every client would use
    /// it: [`syncstore::limits::check_link_target`].
    async fn check_link_target(&self, put: &Put, staged: Option<&dyn StagedContent>) -> Result<()> {
        let size = put.content.size;
        if size > syncstore::limits::MAX_PATH_BYTES as u64 {
            return Err(Error::BadSymlink(format!(
                "{} is a symbolic link with a {size}-byte target; the limit is {}",
                put.path,
                syncstore::limits::MAX_PATH_BYTES
            )));
        }
        let target = match staged {
            Some(s) => s.read_prefix(size).await?,
            // Stored content, verified as it is read; unknown content is
            // refused as such by the commit's checks.
            None => match self.content_reader(&put.content.hash, size).await? {
                Some(mut reader) => {
                    let mut target = Vec::with_capacity(size as usize);
                    while let Some(chunk) = reader.next_chunk(syncstore::limits::MAX_CHUNK).await? {
                        target.extend_from_slice(&chunk);
                    }
                    target
                }
                None => return Ok(()),
            },
        };
        syncstore::limits::check_link_target(&target)
            .map_err(|why| Error::BadSymlink(format!("{} is a symbolic link whose target {why}", put.path)))
    }

    /// Keeps garbage collection off `hash` while the hold lives; waits for
    /// a removal of it in progress to end first.
    pub(super) async fn hold(&self, hash: ContentHash) -> ContentHold {
        loop {
            // Made before the check: a removal that ends after it wakes it.
            let removed = self.inner.removed.notified();
            {
                let mut holds = lock(&self.inner.holds);
                if !holds.removing.contains(&hash) {
                    *holds.placing.entry(hash).or_insert(0) += 1;
                    return ContentHold { store: self.clone(), hash };
                }
            }
            removed.await;
        }
    }

    /// Hands content of a refused upload (and chunks an upload wrote) to
    /// garbage collection: removed now if no entry or recipe refers to it
    /// and no upload holds it (with no grace), or once its grace has passed
    /// (the same content may be replaced content a reader still needs).
    /// Failing here only leaves it for the start-up sweep.
    pub(super) async fn drop_if_unreferenced(&self, hashes: Vec<ContentHash>) {
        let _w = self.inner.writer.lock().await;
        self.collect(hashes).await;
    }

    /// Removes those of `hashes` that no live entry refers to, that no
    /// recipe lists and that no upload holds; content stored as chunks
    /// loses its recipe, then each of its chunks that nothing else refers
    /// to goes too. Called under the writer lock, so no commit adds a
    /// reference meanwhile. Harmless if it fails: the start-up sweep
    /// removes them.
    async fn remove_unreferenced(&self, hashes: Vec<ContentHash>) {
        if let Err(e) = self.try_remove_unreferenced(hashes).await {
            tracing::warn!(error = %e, "could not remove unreferenced content");
        }
    }

    async fn try_remove_unreferenced(&self, mut hashes: Vec<ContentHash>) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        hashes.sort_unstable();
        hashes.dedup();
        let unreferenced = self.inner.meta.unreferenced(hashes).await?;
        // A held content keeps its recipe: the upload holding it commits
        // the same content, and holds its chunks too. Content stored whole
        // (every small file) costs no further trip.
        let with_recipes: Vec<ContentHash> = {
            let holds = lock(&self.inner.holds);
            let unheld = unreferenced.iter().filter(|(h, _)| !holds.placing.contains_key(h));
            unheld.filter(|(_, recipe)| *recipe).map(|(h, _)| *h).collect()
        };
        let chunks = match with_recipes.is_empty() {
            true => Vec::new(),
            false => self.inner.meta.drop_recipes(with_recipes).await?,
        };
        for (hash, _) in unreferenced {
            if let Err(e) = self.remove_content(hash).await {
                tracing::warn!(%hash, error = %e, "could not remove unreferenced content");
            }
        }
        if chunks.is_empty() {
            return Ok(());
        }
        let mut removed = 0usize;
        for page in chunks.chunks(PAGE_SIZE) {
            for (hash, _) in self.inner.meta.unreferenced(page.to_vec()).await? {
                if self.remove_content(hash).await? {
                    removed += 1;
                }
            }
        }
        tracing::debug!(removed, "removed chunks nothing refers to any more");
        Ok(())
    }

    /// Removes content unless an upload holds it; `Ok(false)` if one does.
    async fn remove_content(&self, hash: ContentHash) -> Result<bool> {
        {
            let mut holds = lock(&self.inner.holds);
            if holds.placing.contains_key(&hash) {
                return Ok(false);
            }
            holds.removing.insert(hash);
        }
        let _removing = Removing { store: self, hash };
        self.inner.content.delete(&hash).await?;
        Ok(true)
    }

    /// Commits a deletion, leaving a tombstone.
    pub(crate) async fn commit_delete(&self, ns: &str, del: Delete) -> Result<Change> {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move {
            let Delete { path, base_version, who, lock_token } = del;
            let mut w = this.inner.writer.lock().await;
            let mut tx = this.begin_write(&mut w).await?;
            let seq = w.head + 1;
            let facts = tx.facts(&ns, &path, Want { moved_away: true, ..Want::default() }).await?;
            let current = facts.current;
            if current.as_ref().is_none_or(Entry::is_deleted) {
                return Err(Error::NotFound(format!("{path} does not exist")));
            }
            rules::check_base(&path, current.as_ref(), base_version)?;
            rules::check_write(&path, facts.lock.as_ref(), &who, lock_token, now_ms())?;
            let entry = Entry { path, version: seq, content: None, client_id: who.client_id };
            let mut note = VersionNote::plain(&entry, who.principal, crate::clock::now_ms());
            // The file lives on where a move since its current version
            // took it: not a deletion the trash lists.
            if let Some(to) = facts.moved_to {
                note.kind = VersionKind::MovedAway;
                note.moved_to = Some(to);
            }
            let change = Change::file(&ns, entry, note);
            tx.write(change.clone());
            tx.commit().await?;
            Ok(this.after_commit(&mut w, vec![(change, current)]).await.remove(0))
        })
        .await
    }

    /// Grants a lock on a path (or refreshes the caller's own).
    pub(crate) async fn lock(&self, ns: &str, req: LockRequest) -> Result<Change> {
        let ttl_seconds = rules::lock_ttl(req.ttl_seconds)?;
        let now = now_ms();
        self.commit_lock_change(ns, move |tx, ns, seq| {
            Box::pin(async move {
                let current = tx.facts(&ns, &req.path, Want::default()).await?.lock;
                let lock = rules::grant_lock(current, req, ttl_seconds, now, seq, || {
                    format!("{:016x}", rand::random::<u64>())
                })?;
                Ok(Change { seq, namespace: ns, what: What::Lock(lock) })
            })
        })
        .await
    }

    /// Pushes a live lock's expiry to now + ttl; only its holder may.
    pub(crate) async fn refresh_lock(
        &self,
        ns: &str,
        lock_id: &str,
        who: &Actor,
        ttl_seconds: u32,
    ) -> Result<Change> {
        let ttl_seconds = rules::lock_ttl(ttl_seconds)?;
        let now = now_ms();
        let (lock_id, who) = (lock_id.to_owned(), who.clone());
        self.commit_lock_change(ns, move |tx, ns, seq| {
            Box::pin(async move {
                let current = tx.lock_by_id(&ns, &lock_id).await?;
                let lock = rules::refresh_lock(&lock_id, current, &who, ttl_seconds, now)?;
                Ok(Change { seq, namespace: ns, what: What::Lock(lock) })
            })
        })
        .await
    }

    /// Releases a lock; someone else's only with `force` (whether the caller
    /// may use it is checked before).
    pub(crate) async fn unlock(&self, ns: &str, lock_id: &str, who: &Actor, force: bool) -> Result<Change> {
        let now = now_ms();
        let (lock_id, who) = (lock_id.to_owned(), who.clone());
        self.commit_lock_change(ns, move |tx, ns, seq| {
            Box::pin(async move {
                let current = tx.lock_by_id(&ns, &lock_id).await?;
                let ended = rules::end_lock(&lock_id, current.as_ref(), &who, force, now)?;
                let lock = current.expect("a lock that ends exists");
                Ok(Change { seq, namespace: ns, what: What::Unlock { lock, ended, by: who } })
            })
        })
        .await
    }

    /// Commits the lock change `make` builds (from the transaction, the
    /// namespace and the change's seq).
    async fn commit_lock_change<F>(&self, ns: &str, make: F) -> Result<Change>
    where
        F: for<'t> FnOnce(
                &'t mut dyn MetaTx,
                String,
                u64,
            ) -> std::pin::Pin<Box<dyn Future<Output = Result<Change>> + Send + 't>>
            + Send
            + 'static,
    {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            let mut tx = this.begin_write(&mut w).await?;
            let seq = w.head + 1;
            let change = make(&mut *tx, ns, seq).await?;
            tx.write(change.clone());
            tx.commit().await?;
            Ok(this.after_commit(&mut w, vec![(change, None)]).await.remove(0))
        })
        .await
    }

    /// The metadata store, for the history reads (`history.rs`).
    pub(super) fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.inner.meta
    }

    /// Commits the history-only changes of namespace `ns` that `make`
    /// decides under the writer lock (given the store and the head; its
    /// reads see every commit so far and none can happen meanwhile), in one
    /// transaction; then hands the content `make` names (of versions it
    /// pruned) to garbage collection, which removes what nothing refers to
    /// any more. Nothing is written when `make` returns no change.
    pub(super) async fn commit_history_only<F, Fut>(&self, ns: &str, make: F) -> Result<Vec<Change>>
    where
        F: FnOnce(Store, u64) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(Vec<HistoryChange>, Vec<ContentHash>)>> + Send,
    {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            let mut tx = this.begin_write(&mut w).await?;
            let (whats, unreferenced) = make(this.clone(), w.head).await?;
            if whats.is_empty() {
                return Ok(Vec::new());
            }
            let changes: Vec<(Change, Option<Entry>)> = (w.head + 1..)
                .zip(whats)
                .map(|(seq, h)| (Change { seq, namespace: ns.clone(), what: What::History(h) }, None))
                .collect();
            for (change, _) in &changes {
                tx.write(change.clone());
            }
            tx.commit().await?;
            let changes = this.after_commit(&mut w, changes).await;
            this.collect(unreferenced).await;
            Ok(changes)
        })
        .await
    }

    /// Commits a history write (restore, undelete, rewind): every write in
    /// one metadata transaction through the writer lock, after holding
    /// the content each brings back (it is stored already: no upload) so
    /// that no removal takes it meanwhile. Each write is checked like a
    /// put or a delete (base version when given, the lock write check, the
    /// path clash for content); one refused fails the whole batch unless
    /// `skip_refused`, which skips and counts it. With `label`, the
    /// automatic label of the state before (the head) is written first, in
    /// the same transaction, when anything is written.
    pub(super) async fn commit_history_batch(&self, ns: &str, batch: HistoryBatch) -> Result<HistoryOutcome> {
        let HistoryBatch { who, writes, label, skip_refused } = batch;
        // Holds first, then the check that the content is there: a removal
        // that ran before the hold shows as missing content, none can
        // after it.
        let mut holds = Vec::new();
        let mut present: HashMap<ContentHash, bool> = HashMap::new();
        for c in writes.iter().filter_map(|w| w.to.as_ref().and_then(|v| v.entry.content)) {
            if present.contains_key(&c.hash) {
                continue;
            }
            let list = self.inner.meta.recipe(&c.hash).await?.map(|r| r.list);
            holds.extend(self.hold_content(c.hash, list.as_deref()).await);
            present.insert(c.hash, self.has_blob(&c.hash).await?);
        }
        let (this, ns) = (self.clone(), ns.to_owned());
        let outcome = detached(async move {
            let mut w = this.inner.writer.lock().await;
            let mut tx = this.begin_write(&mut w).await?;
            let head = w.head;
            let label = match label {
                Some(name) => {
                    if this.inner.meta.label(&ns, &name).await?.is_some_and(|l| l.seq != head) {
                        return Err(Error::LabelExists(format!("a label {name:?} exists")));
                    }
                    let committed_ms = this.inner.meta.committed_ms_at(&ns, head).await?.unwrap_or(0);
                    let principal = super::SERVER_PRINCIPAL.to_owned();
                    let note = "the state before a rewind".to_owned();
                    Some(Label { name, seq: head, committed_ms, note, automatic: true, principal })
                }
                None => None,
            };
            let first = head + 1 + u64::from(label.is_some());
            if let Some(l) = &label {
                tx.write(Change {
                    seq: head + 1,
                    namespace: ns.clone(),
                    what: What::History(HistoryChange::LabelSet(l.clone())),
                });
            }
            let items = writes
                .iter()
                .map(|hw| {
                    let content = hw.to.as_ref().and_then(|v| v.entry.content);
                    let want = Want {
                        clash: content.map(|c| c.folder),
                        refers: content.map(|c| c.hash),
                        ..Want::default()
                    };
                    (ns.clone(), hw.path.clone(), want)
                })
                .collect();
            let decided: Arc<Mutex<Vec<Decided>>> = Arc::default();
            let (out, now, committed_ms) = (decided.clone(), now_ms(), crate::clock::now_ms());
            let (ns_c, who_c) = (ns.clone(), who.clone());
            let mut seq = first - 1;
            let decide: Decide = Box::new(move |i, facts| {
                let hw = &writes[i];
                let checked = check_history_write(hw, &facts, &who_c, now, &present);
                match checked {
                    Ok(()) => {
                        seq += 1;
                        let entry = Entry {
                            path: hw.path.clone(),
                            version: seq,
                            content: hw.to.as_ref().and_then(|v| v.entry.content),
                            client_id: who_c.client_id.clone(),
                        };
                        let note = match &hw.to {
                            Some(v) => VersionNote {
                                principal: who_c.principal.clone(),
                                committed_ms,
                                kind: VersionKind::Restore,
                                moved_from: None,
                                moved_to: None,
                                restored_from: Some(v.seq()),
                            },
                            None => VersionNote::plain(&entry, who_c.principal.clone(), committed_ms),
                        };
                        let change = Change::file(&ns_c, entry, note);
                        lock(&out).push(Ok((change.clone(), facts.current)));
                        Some((change, None))
                    }
                    Err(e) => {
                        lock(&out).push(Err(e));
                        None
                    }
                }
            });
            tx.decide_each(items, decide);
            // One trip runs the decisions (the commit would too): whether
            // anything passed decides whether to commit at all.
            tx.flush().await?;
            let decided = std::mem::take(&mut *lock(&decided));
            let mut applied = Vec::new();
            let mut skipped = 0;
            for d in decided {
                match d {
                    Ok(c) => applied.push(c),
                    Err(e) if skip_refused => {
                        tracing::info!(error = %e, "a history write was refused; skipped");
                        skipped += 1;
                    }
                    // Dropped uncommitted: nothing of the batch is kept.
                    Err(e) => return Err(e),
                }
            }
            if applied.is_empty() {
                return Ok(HistoryOutcome { changes: Vec::new(), skipped, label: None });
            }
            tx.commit().await?;
            let mut all = Vec::with_capacity(applied.len() + 1);
            if let Some(l) = &label {
                let change = Change {
                    seq: head + 1,
                    namespace: ns.clone(),
                    what: What::History(HistoryChange::LabelSet(l.clone())),
                };
                all.push((change, None));
            }
            all.extend(applied);
            let mut changes = this.after_commit(&mut w, all).await;
            if label.is_some() {
                changes.remove(0);
            }
            Ok(HistoryOutcome { changes, skipped, label })
        })
        .await;
        drop(holds);
        outcome
    }

    /// Ends every lock past its expiry (all namespaces), one unlock change
    /// each, in one transaction.
    pub(crate) async fn expire_locks(&self, now: i64) -> Result<Vec<Change>> {
        let this = self.clone();
        detached(async move {
            // Looked up before the log is claimed (most sweeps find
            // nothing), and again after: another process may have ended
            // them meanwhile.
            if this.inner.meta.expired_locks(now).await?.is_empty() {
                return Ok(Vec::new());
            }
            let mut w = this.inner.writer.lock().await;
            let mut tx = this.begin_write(&mut w).await?;
            let expired = this.inner.meta.expired_locks(now).await?;
            if expired.is_empty() {
                return Ok(Vec::new());
            }
            let first = w.head + 1;
            let mut changes = Vec::with_capacity(expired.len());
            for (seq, (namespace, lock)) in (first..).zip(expired) {
                let change = Change {
                    seq,
                    namespace,
                    what: What::Unlock { lock, ended: LockEnd::Expired, by: Actor::default() },
                };
                tx.write(change.clone());
                changes.push((change, None));
            }
            tx.commit().await?;
            Ok(this.after_commit(&mut w, changes).await)
        })
        .await
    }

    /// The live locks of namespace `ns` on `prefix` or below, in path order.
    pub async fn list_locks(&self, ns: &str, prefix: &str) -> Result<Vec<Lock>> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map(|l: &Lock| l.path.as_str().to_owned());
            let page = self.list_locks_page(ns, prefix, after.as_deref(), PAGE_SIZE).await?;
            let last = page.len() < PAGE_SIZE;
            out.extend(page);
            if last {
                return Ok(out);
            }
        }
    }

    /// Up to `limit` live locks of namespace `ns` on `prefix` or below, in
    /// path order, after the path `after` (from the start if `None`).
    pub async fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Lock>> {
        self.inner.meta.list_locks_page(ns, prefix, after, now_ms(), limit).await
    }

    /// Every lock row (all namespaces), for a resync's snapshot.
    pub(crate) async fn all_locks(&self) -> Result<Vec<(String, Lock)>> {
        self.inner.meta.all_locks().await
    }

    /// Applies changes replicated from the primary, with their sequence
    /// numbers, in one transaction (group commit: one durable commit for
    /// the lot). A change already applied (a redelivery) is skipped; a gap
    /// is refused. A change's content is `staged`; without it a live
    /// entry's content must be stored already, unless `content_gone` (the
    /// primary no longer kept it because a later change, which follows,
    /// replaced it). Returns how many changes were new.
    pub(crate) async fn apply_replicated_batch(&self, batch: Vec<Replicated>) -> Result<usize> {
        let this = self.clone();
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            let mut head = w.head;
            let mut todo = Vec::with_capacity(batch.len());
            for r in batch {
                if r.change.seq <= head {
                    continue;
                }
                if r.change.seq != head + 1 {
                    return Err(Error::FailedPrecondition(format!(
                        "replication gap: expected change {}, got {}",
                        head + 1,
                        r.change.seq
                    )));
                }
                if let What::File(entry, _) = &r.change.what
                    && entry.version != r.change.seq
                {
                    return Err(Error::invalid("a replicated entry's version must be its change's seq"));
                }
                head = r.change.seq;
                todo.push(r);
            }
            // Content first (under the writer lock: no removal runs), made
            // durable at once; then the metadata.
            let mut pending = Vec::new();
            let mut recipes = Vec::with_capacity(todo.len());
            for r in &mut todo {
                let mut recipe = None;
                if let What::File(entry, _) = &r.change.what {
                    let staged = r.staged.take();
                    recipe = staged.as_ref().and_then(|s| s.recipe().map(<[ChunkRef]>::to_vec));
                    let placed = this.place_content(entry, staged, r.content_gone).await?;
                    if let (Durability::Pending, Some(c)) = (placed, entry.content) {
                        pending.extend(pending_names(c.hash, recipe.as_deref()));
                    }
                }
                recipes.push(recipe);
            }
            this.inner.content.ensure_durable(&pending).await?;
            // One trip: each change written in order (with the recipe of
            // content received as chunks), with the entry a file change
            // replaces (for garbage collection).
            let changes: Vec<Change> = todo.into_iter().map(|r| r.change).collect();
            let replaced: Arc<Mutex<Vec<Option<Entry>>>> = Arc::new(Mutex::new(vec![None; changes.len()]));
            let recipes = Arc::new(recipes);
            let mut tx = this.inner.meta.begin();
            // A history-only change is written as it is; each run of file
            // and lock changes between them is one `decide_each`.
            let mut start = 0;
            while start < changes.len() {
                if changes[start].path().is_none() {
                    tx.write(changes[start].clone());
                    start += 1;
                    continue;
                }
                let end =
                    (start..changes.len()).find(|&i| changes[i].path().is_none()).unwrap_or(changes.len());
                let items = (start..end)
                    .map(|i| {
                        let c = &changes[i];
                        let want = Want { current_recipe: recipes[i].is_some(), ..Want::default() };
                        (c.namespace.clone(), c.path().expect("a file or lock change").clone(), want)
                    })
                    .collect();
                let (out, to_write, recipes) =
                    (replaced.clone(), changes[start..end].to_vec(), recipes.clone());
                let decide: Decide = Box::new(move |i, facts| {
                    let change = to_write[i].clone();
                    let recipe = match (change.entry().and_then(|e| e.content), &recipes[start + i]) {
                        (Some(content), Some(list)) => Some(new_recipe(&content, list, &facts)),
                        _ => None,
                    };
                    lock(&out)[start + i] = facts.current.filter(|_| change.entry().is_some());
                    Some((change, recipe))
                });
                tx.decide_each(items, decide);
                start = end;
            }
            tx.commit().await?;
            let replaced = std::mem::take(&mut *lock(&replaced));
            let applied: Vec<(Change, Option<Entry>)> = changes.into_iter().zip(replaced).collect();
            let n = applied.len();
            this.after_commit(&mut w, applied).await;
            Ok(n)
        })
        .await
    }

    /// Puts received content in place, or checks it is there.
    async fn place_content(
        &self,
        entry: &Entry,
        staged: Option<Box<dyn StagedContent>>,
        content_gone: bool,
    ) -> Result<Durability> {
        match (staged, entry.content) {
            (Some(s), _) => s.place().await,
            (None, Some(c)) if !content_gone && !self.has_blob(&c.hash).await? => {
                Err(Error::FailedPrecondition(format!("no content with hash {} for {}", c.hash, entry.path)))
            }
            // Stored content is referred to by a committed entry: durable.
            _ => Ok(Durability::Durable),
        }
    }

    /// Starts a full resync: the snapshot is collected beside the manifest.
    pub(crate) async fn snapshot_begin(&self) -> Result<()> {
        let this = self.clone();
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            w.snapshot_pending.clear();
            this.snapshots()?.snapshot_begin().await
        })
        .await
    }

    /// Adds one manifest entry to the snapshot being received.
    pub(crate) async fn snapshot_put(
        &self,
        ns: &str,
        entry: &Entry,
        staged: Option<Box<dyn StagedContent>>,
        content_gone: bool,
    ) -> Result<()> {
        let (this, ns, entry) = (self.clone(), ns.to_owned(), entry.clone());
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            this.place_snapshot_content(&mut w, &entry, staged, content_gone).await?;
            this.snapshots()?.snapshot_put(&ns, &entry).await
        })
        .await
    }

    /// Adds one kept version (with its content, unless the snapshot brought
    /// it already) to the snapshot being received.
    pub(crate) async fn snapshot_put_version(
        &self,
        ns: &str,
        version: Version,
        staged: Option<Box<dyn StagedContent>>,
        content_gone: bool,
    ) -> Result<()> {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move {
            let mut w = this.inner.writer.lock().await;
            this.place_snapshot_content(&mut w, &version.entry, staged, content_gone).await?;
            this.snapshots()?.snapshot_put_version(&ns, &version).await
        })
        .await
    }

    /// Adds a label or the run-time retention of a namespace to the
    /// snapshot being received (no other history change is one).
    pub(crate) async fn snapshot_put_history(&self, ns: &str, change: HistoryChange) -> Result<()> {
        let (this, ns) = (self.clone(), ns.to_owned());
        detached(async move {
            let _w = this.inner.writer.lock().await;
            match change {
                HistoryChange::LabelSet(l) => this.snapshots()?.snapshot_put_label(&ns, &l).await,
                HistoryChange::Retention(r) => this.snapshots()?.snapshot_put_retention(&ns, &r).await,
                other => Err(Error::invalid(format!("a snapshot holds labels and retention, not {other:?}"))),
            }
        })
        .await
    }

    /// Puts a snapshot entry's content in place (made durable, whatever it
    /// is, by `snapshot_end`), with its recipe when it came as chunks: kept
    /// beside the live metadata, a recipe the snapshot does not come to
    /// refer to goes with the sweep at its end.
    async fn place_snapshot_content(
        &self,
        w: &mut Writer,
        entry: &Entry,
        staged: Option<Box<dyn StagedContent>>,
        content_gone: bool,
    ) -> Result<()> {
        let recipe = staged.as_ref().and_then(|s| s.recipe().map(<[ChunkRef]>::to_vec));
        if let Some(c) = entry.content
            && self.place_content(entry, staged, content_gone).await? == Durability::Pending
        {
            w.snapshot_pending.extend(pending_names(c.hash, recipe.as_deref()));
        }
        if let (Some(c), Some(list)) = (entry.content, recipe) {
            self.inner.meta.put_recipe(Recipe { hash: c.hash, size: c.size, list, prev: None }).await?;
        }
        Ok(())
    }

    /// Adds one lock to the snapshot being received.
    pub(crate) async fn snapshot_put_lock(&self, ns: &str, lock: &Lock) -> Result<()> {
        let (this, ns, lock) = (self.clone(), ns.to_owned(), lock.clone());
        detached(async move {
            let _w = this.inner.writer.lock().await;
            this.snapshots()?.snapshot_put_lock(&ns, &lock).await
        })
        .await
    }

    /// Completes a full resync: in one transaction the snapshot becomes the
    /// manifest, the log restarts empty at `head`; then unreferenced
    /// content goes.
    pub(crate) async fn snapshot_end(&self, head: u64) -> Result<()> {
        let this = self.clone();
        detached(async move {
            {
                let mut w = this.inner.writer.lock().await;
                let pending = std::mem::take(&mut w.snapshot_pending);
                this.inner.content.ensure_durable(&pending).await?;
                this.snapshots()?.snapshot_end(head).await?;
                w.head = head;
                this.inner.head.store(head, Ordering::Release);
            }
            this.sweep_unreferenced().await
        })
        .await
    }

    fn snapshots(&self) -> Result<&dyn super::meta::SnapshotSink> {
        self.inner
            .meta
            .snapshots()
            .ok_or_else(|| Error::FailedPrecondition("this server's storage does not take snapshots".into()))
    }

    /// Begins a write transaction under the writer lock `w`. On a shared
    /// backend it first claims the log ([`MetaTx::claim_head`]: writers of
    /// every process append one after the other) and publishes, in order,
    /// what other processes committed since this one last looked, so that
    /// the seqs this transaction assigns from `w.head` follow the log's
    /// head and this process's broadcast stays gap-free.
    async fn begin_write(&self, w: &mut Writer) -> Result<Box<dyn MetaTx>> {
        let mut tx = self.inner.meta.begin();
        if let Some(head) = tx.claim_head().await? {
            self.catch_up(w, head).await?;
        }
        Ok(tx)
    }

    /// Publishes the changes other processes committed after `w.head`, up
    /// to `to`: the head advances and subscribers hear of them, in order.
    /// Content they stopped referring to is their committers' to collect.
    async fn catch_up(&self, w: &mut Writer, to: u64) -> Result<()> {
        while w.head < to {
            let page = self.inner.meta.changes_after(None, w.head, PAGE_SIZE).await?;
            let Some(first) = page.first().map(|c| c.seq) else {
                return Err(Error::Internal(format!(
                    "the change log holds nothing after {} though its head is {to}",
                    w.head
                )));
            };
            if first != w.head + 1 {
                // Trimmed by another process past this one's head: a
                // follower whose cursor is that old starts over (RESET).
                tracing::warn!(head = w.head, first, "the change log was trimmed past this process's head");
            }
            for change in page {
                w.head = change.seq;
                self.inner.head.store(change.seq, Ordering::Release);
                // No receiver is fine: nobody is subscribed.
                let _ = self.inner.events.send(change);
            }
        }
        Ok(())
    }

    /// On a shared backend: publishes what other processes committed
    /// (woken by them, or polling every [`FOLLOW_POLL`]), tells the others
    /// this process is alive, and sweeps unreferenced content now and
    /// then, until the store is dropped.
    fn spawn_follower(&self) {
        let meta = self.inner.meta.clone();
        let weak = Arc::downgrade(&self.inner);
        let id = self.inner.process_id.clone();
        tokio::spawn(async move {
            let Some(shared) = meta.shared() else { return };
            let mut last_beat: Option<Instant> = None;
            let mut last_sweep = Instant::now();
            let mut last_statistics = Instant::now();
            loop {
                let announced = shared.changed(FOLLOW_POLL).await;
                let Some(inner) = weak.upgrade() else { return };
                let store = Store { inner };
                if let Err(e) = store.follow_others(announced).await {
                    tracing::warn!(error = %e, "could not read other processes' commits");
                }
                if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT_INTERVAL) {
                    let address = store.inner.options.process_address.clone().unwrap_or_default();
                    match shared.heartbeat(&id, &address, store.head()).await {
                        Ok(()) => last_beat = Some(Instant::now()),
                        Err(e) => tracing::warn!(error = %e, "could not record this process's heartbeat"),
                    }
                }
                if last_statistics.elapsed() >= STATISTICS_INTERVAL {
                    last_statistics = Instant::now();
                    if let Err(e) = shared.refresh_statistics().await {
                        tracing::warn!(error = %e, "could not refresh the database's statistics");
                    }
                }
                if last_sweep.elapsed() >= SHARED_SWEEP_INTERVAL {
                    last_sweep = Instant::now();
                    if let Err(e) = store.sweep_unreferenced().await {
                        tracing::warn!(error = %e, "could not sweep unreferenced content");
                    }
                }
            }
        });
    }

    /// Publishes the changes other processes committed, if any, up to
    /// `announced` (a head a commit announced) or else the log's head.
    async fn follow_others(&self, announced: Option<u64>) -> Result<()> {
        let head = match announced {
            Some(head) => head,
            None => self.inner.meta.head().await?,
        };
        if head <= self.head() {
            return Ok(());
        }
        let mut w = self.inner.writer.lock().await;
        self.catch_up(&mut w, head).await
    }

    /// This process's id among the processes of a shared backend.
    pub(crate) fn process_id(&self) -> &str {
        &self.inner.process_id
    }

    /// Takes `duty` for this process (see [`super::meta::SharedMeta::take_duty`]);
    /// on a backend one process owns, that process always holds it, and
    /// never loses it.
    pub(crate) async fn take_duty(&self, duty: super::Duty) -> Result<Option<Box<dyn super::HeldDuty>>> {
        match self.inner.meta.shared() {
            Some(shared) => shared.take_duty(duty).await,
            None => Ok(Some(Box::new(Owned))),
        }
    }

    /// The processes of a shared backend seen within the last `within`
    /// (empty on a backend one process owns).
    pub(crate) async fn processes(&self, within: Duration) -> Result<Vec<super::meta::ProcessSeen>> {
        match self.inner.meta.shared() {
            Some(shared) => shared.processes(within).await,
            None => Ok(Vec::new()),
        }
    }

    /// Whether other processes write the same metadata.
    pub fn is_shared(&self) -> bool {
        self.inner.meta.shared().is_some()
    }

    /// One round trip to the metadata and to the content: `UNAVAILABLE`
    /// naming the one that cannot be reached.
    pub async fn ping(&self) -> Result<()> {
        if let Some(shared) = self.inner.meta.shared() {
            shared.ping().await?;
        }
        self.inner.content.ping().await
    }

    /// Bookkeeping once changes are durable, still under the writer lock:
    /// advance the head, tell subscribers, drop content nothing refers to
    /// any more, trim the log. The changes are committed whatever happens
    /// here, so nothing after the broadcast may fail the call.
    async fn after_commit(&self, w: &mut Writer, changes: Vec<(Change, Option<Entry>)>) -> Vec<Change> {
        let mut replaced = Vec::new();
        let mut out = Vec::with_capacity(changes.len());
        {
            let mut recent = lock(&self.inner.recent_writes);
            for (change, previous) in changes.iter().filter(|(c, _)| c.entry().is_some()) {
                recent.push_back((change.seq, previous.as_ref().is_some_and(|p| !p.is_deleted())));
            }
            let over = recent.len().saturating_sub(RECENT_WRITES);
            recent.drain(..over);
        }
        for (change, previous) in changes {
            w.head = change.seq;
            self.inner.head.store(change.seq, Ordering::Release);
            // No receiver is fine: nobody is subscribed.
            let _ = self.inner.events.send(change.clone());
            let old_hash = previous.and_then(|p| p.content).map(|c| c.hash);
            let new_hash = change.entry().and_then(|e| e.content).map(|c| c.hash);
            if let Some(old) = old_hash.filter(|h| Some(*h) != new_hash) {
                replaced.push(old);
            }
            w.commits_since_prune += 1;
            out.push(change);
        }
        self.collect(replaced).await;
        let retention = self.inner.options.log_retention.max(1);
        if w.commits_since_prune >= PRUNE_EVERY.min(retention) {
            w.commits_since_prune = 0;
            let keep_from = w.head.saturating_sub(retention);
            // The latest change is always kept, so the log's last seq stays the head.
            match self.inner.meta.trim_log(keep_from, w.head).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(removed, keep_from, "trimmed the change log"),
                Err(e) => tracing::warn!(error = %e, "could not trim the change log"),
            }
        }
        out
    }

    /// Content the changes just committed stopped referring to: removed now
    /// (no grace; the caller holds the writer lock), or queued for the
    /// collector. An upload about to commit the same content holds it.
    async fn collect(&self, replaced: Vec<ContentHash>) {
        if replaced.is_empty() {
            return;
        }
        let grace = self.inner.options.gc_grace;
        if grace.is_zero() {
            return self.remove_unreferenced(replaced).await;
        }
        let due = Instant::now() + grace;
        lock(&self.inner.collectable).extend(replaced.into_iter().map(|h| (due, h)));
        self.inner.collector.notify_one();
    }

    /// Starts the background collector: it removes queued content once its
    /// grace has passed, and ends with the store.
    fn spawn_collector(&self) {
        let (store, wake) = (Arc::downgrade(&self.inner), self.inner.collector.clone());
        tokio::spawn(async move {
            loop {
                let next = match Weak::upgrade(&store) {
                    Some(inner) => lock(&inner.collectable).front().map(|(due, _)| *due),
                    None => return,
                };
                match next {
                    Some(due) => tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = wake.notified() => continue,
                    },
                    None => {
                        wake.notified().await;
                        continue;
                    }
                }
                let Some(inner) = Weak::upgrade(&store) else { return };
                Store { inner }.collect_due().await;
            }
        });
    }

    /// Removes the queued content whose grace has passed, under the writer
    /// lock, if nothing refers to it or holds it now.
    async fn collect_due(&self) {
        let now = Instant::now();
        let due: Vec<ContentHash> = {
            let mut queue = lock(&self.inner.collectable);
            let ready = queue.iter().take_while(|(at, _)| *at <= now).count();
            queue.drain(..ready).map(|(_, h)| h).collect()
        };
        if due.is_empty() {
            return;
        }
        let _w = self.inner.writer.lock().await;
        self.remove_unreferenced(due).await;
    }

    /// Removes content that no live entry refers to: content of a crash
    /// between putting it in place and the metadata commit.
    async fn sweep_unreferenced(&self) -> Result<()> {
        let _w = self.inner.writer.lock().await;
        let orphans = self.inner.meta.orphan_recipes().await?;
        if !orphans.is_empty() {
            tracing::info!(recipes = orphans.len(), "removing recipes no entry refers to");
            self.inner.meta.drop_recipes(orphans).await?;
        }
        let mut removed = 0usize;
        let all = self.inner.content.list().await?;
        for page in all.chunks(PAGE_SIZE) {
            for (hash, _) in self.inner.meta.unreferenced(page.to_vec()).await? {
                if self.remove_content(hash).await? {
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unreferenced content");
        }
        self.inner.content.collect_garbage().await
    }

    pub(super) fn identity_guard(&self) -> MutexGuard<'_, Identity> {
        lock(&self.inner.identity)
    }

    /// Changes the identity under the writer lock and stores it durably.
    /// `change` may refuse, given the head.
    pub(super) async fn update_identity(
        &self,
        change: impl FnOnce(&mut Identity, u64) -> Result<()> + Send,
    ) -> Result<()> {
        let w = self.inner.writer.lock().await;
        let mut identity = self.identity();
        change(&mut identity, w.head)?;
        self.inner.meta.save_identity(&identity).await?;
        *self.identity_guard() = identity;
        Ok(())
    }
}

#[async_trait]
impl ChangeFeed for Store {
    fn head(&self) -> u64 {
        Store::head(self)
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        Store::subscribe(self)
    }

    async fn current_head(&self) -> Result<u64> {
        if self.is_shared() {
            self.follow_others(None).await?;
        }
        Ok(self.head())
    }

    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>> {
        self.inner.meta.changes_after(ns, after, limit).await
    }

    async fn oldest_seq(&self) -> Result<u64> {
        Store::oldest_seq(self).await
    }
}

/// The checks of one queued put, on the facts fetched in its group's
/// transaction, in the order a caller hears about them.
fn check_put(job: &Job, facts: &Facts, now: i64) -> Result<()> {
    let put = &job.put;
    rules::check_base(&put.path, facts.current.as_ref(), put.base_version)?;
    rules::check_write(&put.path, facts.lock.as_ref(), &put.who, put.lock_token, now)?;
    check_clash(&put.path, put.content.folder, facts)?;
    if !(job.placed || (job.stored && facts.refers)) {
        return Err(Error::no_content(&put.content.hash));
    }
    Ok(())
}

/// The checks of one history write, on its facts: its base version (when
/// given), the lock write check, for content that the namespace refers to
/// it and it is stored, and the path clash; a deletion needs a live file.
fn check_history_write(
    hw: &HistoryWrite,
    facts: &Facts,
    who: &Actor,
    now: i64,
    present: &HashMap<ContentHash, bool>,
) -> Result<()> {
    if let Some(base) = hw.base_version {
        rules::check_base(&hw.path, facts.current.as_ref(), base)?;
    }
    rules::check_write(&hw.path, facts.lock.as_ref(), who, hw.lock_token, now)?;
    match hw.to.as_ref().and_then(|v| v.entry.content) {
        Some(c) => {
            // Only content this namespace's entries or history refer to:
            // never another namespace's.
            if !facts.refers {
                return Err(Error::no_content(&c.hash));
            }
            if !present.get(&c.hash).copied().unwrap_or(false) {
                return Err(Error::NotFound(format!(
                    "the content of {} is no longer stored",
                    hw.to.as_ref().map_or(0, |v| v.seq())
                )));
            }
            check_clash(&hw.path, c.folder, facts)
        }
        None if hw.to.is_some() => {
            Err(Error::NotFound(format!("{} is a deletion: it has no content", hw.path)))
        }
        None if facts.current.as_ref().is_none_or(Entry::is_deleted) => {
            Err(Error::NotFound(format!("{} does not exist", hw.path)))
        }
        None => Ok(()),
    }
}

/// [`rules::check_clash`] on fetched facts.
fn check_clash(path: &RelPath, folder: bool, facts: &Facts) -> Result<()> {
    rules::check_clash(path, folder, facts.file_above.as_deref(), facts.live_below.as_deref())
}

/// Runs `work` as a task of its own, so that it completes even if the
/// caller goes away (a client that cancels its call mid-commit).
async fn detached<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(work).await?
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can be left half-done by a panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_ms() -> i64 {
    syncstore::lock::now_ms()
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
    /// Whether an entry or kept version of the namespace refers to the upload's content
    /// (when [`Store::path_facts`] was given its hash).
    pub(crate) refers: bool,
}

/// A put of a group, decided: its change and the entry it replaced, or why
/// it was refused.
type Decided = Result<(Change, Option<Entry>)>;

/// Where a queued put's outcome is left for the task that queued it.
type Slot = Arc<Mutex<Option<Result<Change>>>>;

/// A put ready to commit.
/// What [`ContentStore::ensure_durable`](super::content::ContentStore::ensure_durable)
/// names for content `hash` put in place as pending: it, and its chunks
/// when it was received as `recipe`.
fn pending_names(hash: ContentHash, recipe: Option<&[ChunkRef]>) -> impl Iterator<Item = ContentHash> + '_ {
    std::iter::once(hash).chain(recipe.unwrap_or_default().iter().map(|c| c.hash))
}

#[derive(Debug)]
struct Job {
    put: Put,
    /// Its content was put in place for it (else it must be stored).
    placed: bool,
    /// Its content was found stored (a header-only put).
    stored: bool,
    /// Its content is not durable yet ([`Durability::Pending`]).
    needs_sync: bool,
    /// The chunk list of its content, received as chunks (stored with the
    /// entry).
    recipe: Option<Vec<ChunkRef>>,
}

/// The recipe of content received as `list`, committed at a path whose
/// facts are `facts`: with its runs against the replaced content's list
/// when that had one.
fn new_recipe(content: &syncstore::Content, list: &[ChunkRef], facts: &Facts) -> Recipe {
    let old = facts.current.as_ref().and_then(|e| e.content).map(|c| c.hash);
    let prev = match (old, &facts.current_recipe) {
        (Some(old), Some(old_list)) if old != content.hash => Some((old, chunks::diff(old_list, list))),
        _ => None,
    };
    Recipe { hash: content.hash, size: content.size, list: list.to_vec(), prev }
}

/// A put waiting for the next group commit.
#[derive(Debug)]
struct QueuedPut {
    ns: String,
    job: Job,
    slot: Slot,
}

/// Content put in place for a commit that has not happened yet.
#[derive(Debug)]
pub(super) struct ContentHold {
    store: Store,
    hash: ContentHash,
}

impl Drop for ContentHold {
    fn drop(&mut self) {
        let mut holds = lock(&self.store.inner.holds);
        if let Some(n) = holds.placing.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                holds.placing.remove(&self.hash);
            }
        }
    }
}

/// A removal in progress; its end (however it ends) lets holds in.
struct Removing<'a> {
    store: &'a Store,
    hash: ContentHash,
}

impl Drop for Removing<'_> {
    fn drop(&mut self) {
        lock(&self.store.inner.holds).removing.remove(&self.hash);
        self.store.inner.removed.notify_waiters();
    }
}

/// A duty of the one process that owns its backend: never lost.
struct Owned;

#[async_trait::async_trait]
impl super::HeldDuty for Owned {
    async fn lost(&self) {
        std::future::pending().await
    }
}
