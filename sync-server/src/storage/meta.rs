//! `MetaStore`: the metadata of a data folder (the manifest, the change
//! log, the live locks, the server's identity) behind an async trait. A
//! backend fetches and writes rows; the journal ([`super::Store`]) decides,
//! with the pure rules of `rules.rs`, and is the only writer: it serialises
//! transactions itself, so a backend needs no writer lock of its own.
//!
//! A transaction ([`MetaTx`]) buffers its writes and sends them with its
//! next read or its commit; its reads see its own earlier writes.
//! [`MetaTx::decide_each`] fetches, decides and writes a whole group with
//! the transaction's next trip, so a group commit costs one trip to a
//! blocking backend (decide and commit), whatever the number of puts and
//! checks.

use std::fmt::Debug;

use async_trait::async_trait;
use syncstore::{
    ContentHash, Entry, Lock, RelPath,
    chunks::{ChunkRef, Run},
};

use super::{Change, Identity, Label, Version, retention::Retention};
use crate::error::Result;

/// What a transaction's [`MetaTx::facts`] should look up besides the
/// path's entry and lock row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Want {
    /// The rows the path-clash rule needs, for a file (`Some(false)`) or a
    /// folder (`Some(true)`).
    pub(crate) clash: Option<bool>,
    /// Whether an entry or a kept version of the namespace refers to this
    /// content (a header-only upload may reuse it).
    pub(crate) refers: Option<ContentHash>,
    /// The chunk list of the path's current content, if it has one.
    pub(crate) current_recipe: bool,
    /// For a put that says it is the file moved from this path: the
    /// newest content that path had (its live entry's, or, deleted, the
    /// one before its deletion).
    pub(crate) moved_from: Option<RelPath>,
    /// For a deletion: where a move committed after the path's current
    /// version took the file.
    pub(crate) moved_away: bool,
}

/// How content larger than one chunk is stored: its chunk list (each chunk
/// a content of its own in the content store), keyed by the whole
/// content's hash. Content without one is stored whole, as one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipe {
    /// The whole content's hash.
    pub(crate) hash: ContentHash,
    /// The whole content's size.
    pub(crate) size: u64,
    /// Its chunks, in order.
    pub(crate) list: Vec<ChunkRef>,
    /// The content this one replaced at a path when it was committed, and
    /// this list as runs against that one's: a client holding the previous
    /// version gets the new one as a few runs, even once the previous
    /// version's own recipe is gone.
    pub(crate) prev: Option<(ContentHash, Vec<Run>)>,
}

/// The facts a write is decided on, fetched in one trip.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// The path's entry (live or tombstone).
    pub(crate) current: Option<Entry>,
    /// The path's lock row, in force or not.
    pub(crate) lock: Option<Lock>,
    /// The first live file at a folder of the path ([`Want::clash`]).
    pub(crate) file_above: Option<String>,
    /// A live entry below the path, looked up for a file when no file is
    /// above it ([`Want::clash`]).
    pub(crate) live_below: Option<String>,
    /// [`Want::refers`]'s answer (false when not asked).
    pub(crate) refers: bool,
    /// [`Want::current_recipe`]'s answer: the current live entry's
    /// content's chunk list, if it has one.
    pub(crate) current_recipe: Option<Vec<ChunkRef>>,
    /// [`Want::moved_from`]'s answer.
    pub(crate) moved_from_hash: Option<ContentHash>,
    /// [`Want::moved_away`]'s answer: the path the file moved to.
    pub(crate) moved_to: Option<RelPath>,
}

/// The metadata store of one data folder.
#[async_trait]
pub(crate) trait MetaStore: Send + Sync + Debug + 'static {
    /// The sequence number of the last committed change (after a full
    /// resync with an empty log, the snapshot's head).
    async fn head(&self) -> Result<u64>;

    /// The server's identity as stored.
    async fn load_identity(&self) -> Result<Identity>;

    /// Stores the server's identity, durably.
    async fn save_identity(&self, identity: &Identity) -> Result<()>;

    /// Starts a transaction. The journal runs one at a time.
    fn begin(&self) -> Box<dyn MetaTx>;

    /// The facts of a write, outside any transaction: a pre-check before
    /// content is received (the commit checks again).
    async fn facts(&self, ns: &str, path: &RelPath, want: Want) -> Result<Facts>;

    /// The entry `path` had at `version` (kept in the change log), if any.
    async fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>>;

    /// The last file change of `path` before seq `before`: its seq and
    /// whether it was a deletion.
    async fn previous_file_change(
        &self,
        ns: &str,
        path: &RelPath,
        before: u64,
    ) -> Result<Option<(u64, bool)>>;

    /// Up to `limit` entries of `ns` at `prefix` or below (a whole
    /// component), in path order, after `after`.
    async fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// The whole manifest (all namespaces, tombstones included) in
    /// (namespace, path) order after `after`, up to `limit`.
    async fn manifest_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, Entry)>>;

    /// Up to `limit` logged changes after `after` (of namespace `ns`, or of
    /// all), in seq order.
    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>>;

    /// The oldest seq in the change log, if it holds any.
    async fn oldest_logged(&self) -> Result<Option<u64>>;

    /// Removes the logged changes up to `keep_from` (never the one at
    /// `head`); returns how many went.
    async fn trim_log(&self, keep_from: u64, head: u64) -> Result<usize>;

    /// Those of `hashes` that no live entry and no kept version (of any
    /// namespace) refers to and that are no chunk of any recipe, each with whether it has a
    /// recipe of its own (looked up in the same trip).
    async fn unreferenced(&self, hashes: Vec<ContentHash>) -> Result<Vec<(ContentHash, bool)>>;

    /// The recipe of content `hash`, if one is kept.
    async fn recipe(&self, hash: &ContentHash) -> Result<Option<Recipe>>;

    /// Removes the recipes of `hashes` (those that have one), in one
    /// transaction; returns the distinct chunks they listed. The journal
    /// calls it under its writer lock, only for content no live entry
    /// refers to.
    async fn drop_recipes(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>>;

    /// The contents whose recipe is kept though no live entry or kept
    /// version refers to them (what a crash or a full resync can leave).
    async fn orphan_recipes(&self) -> Result<Vec<ContentHash>>;

    /// Stores a recipe outside any commit (a repair's, a snapshot's),
    /// keeping one that is there. The journal calls it under its writer
    /// lock, as every write.
    async fn put_recipe(&self, recipe: Recipe) -> Result<()>;

    /// The live files (namespace, path) whose content is `hash`.
    async fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>>;

    /// Every distinct content live entries refer to, with its size, after
    /// `after` in hash order, up to `limit`.
    async fn referenced_contents(
        &self,
        after: Option<ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>>;

    /// Up to `limit` locks of `ns` in force at `now` on `prefix` or below,
    /// in path order, after the path `after`.
    async fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Lock>>;

    /// Every lock row (all namespaces), in (namespace, path) order.
    async fn all_locks(&self) -> Result<Vec<(String, Lock)>>;

    /// Every lock row past its expiry at `now` (all namespaces).
    async fn expired_locks(&self, now: i64) -> Result<Vec<(String, Lock)>>;

    /// Receiving a full snapshot from a primary, if this backend replicates
    /// through the journal (see [`SnapshotSink`]).
    fn snapshots(&self) -> Option<&dyn SnapshotSink>;

    /// What several processes writing this metadata need, if it is shared
    /// (see [`SharedMeta`]); `None` for a backend one process owns.
    fn shared(&self) -> Option<&dyn SharedMeta> {
        None
    }

    // Version history: every file change writes its version (see
    // [`MetaTx::write`]); these read them.

    /// Up to `limit` kept versions of `path` with a seq below `below`,
    /// newest first (moves not followed).
    async fn versions(&self, ns: &str, path: &RelPath, below: u64, limit: usize) -> Result<Vec<Version>>;

    /// The version of `path` with seq `seq`, if kept.
    async fn version(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>>;

    /// The newest kept version of `path` at or below `seq`.
    async fn version_at(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>>;

    /// The commit time of the namespace's oldest kept version (its lowest
    /// seq), and the highest seq of its versions committed at or before
    /// `at_ms`.
    async fn seq_at_ms(&self, ns: &str, at_ms: i64) -> Result<(Option<i64>, Option<u64>)>;

    /// When the newest kept version of `ns` at or below `seq` was
    /// committed.
    async fn committed_ms_at(&self, ns: &str, seq: u64) -> Result<Option<i64>>;

    /// Each path's newest kept version at or below `seq` (tombstones
    /// included), for the paths of `ns` at `prefix` or below (a whole
    /// component), in path order after `after`, up to `limit`.
    async fn state_at(
        &self,
        ns: &str,
        prefix: &str,
        seq: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Version>>;

    /// The kept versions of `ns` in (path, seq) order after `after`, up to
    /// `limit`: what retention walks.
    async fn versions_page(&self, ns: &str, after: Option<(&str, u64)>, limit: usize)
    -> Result<Vec<Version>>;

    /// The deleted files of `ns` at `prefix` or below whose deletion (a
    /// plain `Delete` version, not a move away, and no move from the path
    /// since) was committed at or after `since_ms`, newest deletion first:
    /// each deletion with the path's last version that had content (none
    /// if no such version is kept). One trip.
    async fn trash(&self, ns: &str, prefix: &str, since_ms: i64) -> Result<Vec<(Version, Option<Version>)>>;

    /// The labels of `ns`, oldest (lowest seq) first.
    async fn labels(&self, ns: &str) -> Result<Vec<Label>>;

    /// The label `name` of `ns`.
    async fn label(&self, ns: &str, name: &str) -> Result<Option<Label>>;

    /// The retention set at run time, per namespace.
    async fn retentions(&self) -> Result<Vec<(String, Retention)>>;

    // Pruning and the mass-change guard (`storage/prune.rs`).

    /// The namespaces that keep versions.
    async fn history_namespaces(&self) -> Result<Vec<String>>;

    /// Those of `hashes` a live entry (of any namespace) refers to.
    async fn live_contents(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>>;

    /// How many live files (not folders) `ns` has.
    async fn live_files(&self, ns: &str) -> Result<u64>;

    /// The history `ns` keeps (every namespace's with `None`): the versions
    /// that are not their path's newest, and the bytes of the distinct
    /// content they refer to that no live entry refers to.
    async fn history_usage(&self, ns: Option<&str>) -> Result<super::retention::Usage>;

    /// Records a share link (see [`super::Share`]).
    async fn put_share(&self, share: super::Share) -> Result<()>;

    /// The share link `id`.
    async fn share(&self, id: &str) -> Result<Option<super::Share>>;

    /// The share links of `ns`, newest first.
    async fn shares(&self, ns: &str) -> Result<Vec<super::Share>>;

    /// Marks the share link `id` of `ns` revoked at `at_ms` (unless it was
    /// already); false if `ns` has no link `id`.
    async fn revoke_share(&self, ns: &str, id: &str, at_ms: i64) -> Result<bool>;
}

/// Decides one item of [`MetaTx::decide_each`] (its index, its facts):
/// the change to write, if any, and the recipe of its content to store with
/// it (a stored recipe is kept, its `prev` replaced if the new one has one).
pub(crate) type Decide = Box<dyn FnMut(usize, Facts) -> Option<(Change, Option<Recipe>)> + Send>;

/// One transaction. Dropped without [`MetaTx::commit`], nothing of it is
/// kept.
#[async_trait]
pub(crate) trait MetaTx: Send + Debug {
    /// The facts of a write to `path` of `ns`, seeing this transaction's
    /// own writes.
    async fn facts(&mut self, ns: &str, path: &RelPath, want: Want) -> Result<Facts>;

    /// For each item in order: fetches its facts (seeing the writes of the
    /// items before it), asks `decide`, and writes the change it returns.
    /// The decisions are the caller's (the journal runs the rules); the
    /// backend only fetches and writes. Queued like a write: it runs with
    /// the transaction's next trip (at the latest its commit), so the
    /// closure's decisions are known once that has returned.
    fn decide_each(&mut self, items: Vec<(String, RelPath, Want)>, decide: Decide);

    /// The lock row with id `lock_id`, in force or not.
    async fn lock_by_id(&mut self, ns: &str, lock_id: &str) -> Result<Option<Lock>>;

    /// Appends the change to the log and applies it (a file entry becomes
    /// the path's entry and a new version of it; a lock change sets or
    /// removes the path's lock; a history-only change sets or removes a
    /// label, a pin, a namespace's retention, or pruned versions).
    /// Buffered: sent with the next read or the commit.
    fn write(&mut self, change: Change);

    /// Runs the queued writes and decisions now (in the transaction, not
    /// committed), so that the caller knows the decisions before it
    /// commits or drops the transaction.
    async fn flush(&mut self) -> Result<()>;

    /// Makes every write durable at once.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Takes the right to append to the change log, before anything else of
    /// the transaction: `None` for a backend one process owns (the journal's
    /// head is the authority); for a shared backend, the head as committed
    /// by any process, under a lock held until the commit or the drop of
    /// this transaction, so that writers of every process append one after
    /// the other and seqs become visible in seq order (never a later seq
    /// committed before an earlier one).
    async fn claim_head(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// A process seen by a shared backend (see [`SharedMeta::processes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessSeen {
    /// The process's id (random, chosen at start).
    pub(crate) id: String,
    /// The address it advertises (its gRPC URL), may be empty.
    pub(crate) address: String,
    /// The head it had published (broadcast to its subscribers) when it
    /// was last seen.
    pub(crate) head: u64,
    /// When it was last seen (ms since the epoch, the database's clock).
    pub(crate) seen_ms: i64,
}

/// What the journal of one of several processes over the same metadata
/// needs beyond [`MetaStore`]: a wake-up when another process committed,
/// liveness, and a health probe.
#[async_trait]
pub(crate) trait SharedMeta: Send + Sync {
    /// Resolves when another process may have committed since the last
    /// call (at most one announcement per committed transaction), or after
    /// `poll` at the latest: the log (`seq > cursor`) stays the source of
    /// truth, the wake-up only makes it fast. Returns the highest head the
    /// announcements carried, or `None` when the head must be read (woken
    /// by the poll, or something may have been missed).
    async fn changed(&self, poll: std::time::Duration) -> Option<u64>;

    /// Records that process `id` (advertising `address`) is alive and has
    /// published `head`.
    async fn heartbeat(&self, id: &str, address: &str, head: u64) -> Result<()>;

    /// The processes seen within the last `within`, this one included.
    async fn processes(&self, within: std::time::Duration) -> Result<Vec<ProcessSeen>>;

    /// One round trip to the database: `UNAVAILABLE` when it cannot be
    /// reached.
    async fn ping(&self) -> Result<()>;

    /// Refreshes the query planner's statistics of the tables that changed
    /// much since they were last analyzed, and returns their names. Tables
    /// start empty, and until the database's own autovacuum analyzes them
    /// (a minute or more later) their plans assume they still are: a first
    /// upload of many files would scan what it already wrote for every
    /// file it adds.
    async fn refresh_statistics(&self) -> Result<Vec<String>>;

    /// Takes `duty` for this process if no other process holds it: `None`
    /// when one does. A duty is held until the [`HeldDuty`] is dropped or
    /// its [`HeldDuty::lost`] resolves (this process's hold on it ended,
    /// and another one may take it).
    async fn take_duty(&self, duty: Duty) -> Result<Option<Box<dyn HeldDuty>>>;
}

/// Work that one process at a time does for all the processes of a shared
/// backend (see [`SharedMeta::take_duty`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Duty {
    /// Watching the whole change feed for mass changes (`crate::guard`):
    /// one process labels each burst once, and the others do not each
    /// read back every change's previous version.
    MassChangeGuard,
}

/// A [`Duty`] this process holds.
#[async_trait]
pub(crate) trait HeldDuty: Send + Sync {
    /// Resolves when this process no longer holds the duty (its hold was
    /// lost with the database connection that kept it).
    async fn lost(&self);
}

/// The replication capability of a backend that a primary feeds through
/// the journal: a full resync's snapshot is collected beside the live
/// metadata and replaces it at its end. (Changes with given seqs go
/// through [`MetaTx`] like any others.) A backend that replicates itself
/// offers none.
#[async_trait]
pub(crate) trait SnapshotSink: Send + Sync {
    /// Starts collecting a snapshot (dropping an unfinished one).
    async fn snapshot_begin(&self) -> Result<()>;

    /// Adds one manifest entry to the snapshot.
    async fn snapshot_put(&self, ns: &str, entry: &Entry) -> Result<()>;

    /// Adds one lock to the snapshot.
    async fn snapshot_put_lock(&self, ns: &str, lock: &Lock) -> Result<()>;

    /// Adds one kept version to the snapshot (replacing the plain one a
    /// manifest entry gives its path's current version).
    async fn snapshot_put_version(&self, ns: &str, version: &Version) -> Result<()>;

    /// Adds one label to the snapshot.
    async fn snapshot_put_label(&self, ns: &str, label: &Label) -> Result<()>;

    /// Adds a namespace's run-time retention to the snapshot.
    async fn snapshot_put_retention(&self, ns: &str, retention: &Retention) -> Result<()>;

    /// In one transaction the snapshot becomes the manifest, the locks and
    /// the history (a path's current entry with no version sent is its one
    /// version), and the log restarts empty at `head`.
    async fn snapshot_end(&self, head: u64) -> Result<()>;
}

/// Where one page of a listing starts and ends in path order, as bounds an
/// index on (namespace, path) seeks to: a page after `after` starts right
/// after it (not at the prefix, which would walk every earlier page's rows
/// again), and a listing under a prefix ends before `prefix0` ('0' follows
/// '/'). Paths between the prefix and `prefix/` (`prefix.txt`) are in the
/// range but not below the prefix: the query keeps the prefix itself and
/// paths from `prefix/` on ([`ListBounds::below`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ListBounds {
    /// The first path that may be listed.
    pub(crate) from: String,
    /// Whether `from` itself may be listed (not when it is `after`).
    pub(crate) inclusive: bool,
    /// The end of the range (exclusive), under a prefix.
    pub(crate) until: Option<String>,
    /// The prefix, and the start of the paths below it (`prefix/`); `None`
    /// for the whole namespace.
    pub(crate) below: Option<(String, String)>,
}

impl ListBounds {
    pub(crate) fn new(prefix: &str, after: Option<&str>) -> Self {
        let prefix = prefix.trim_end_matches('/');
        let (from, inclusive) = match after {
            Some(a) if a >= prefix => (a.to_owned(), false),
            _ => (prefix.to_owned(), true),
        };
        if prefix.is_empty() {
            return Self { from, inclusive, until: None, below: None };
        }
        Self {
            from,
            inclusive,
            until: Some(format!("{prefix}0")),
            below: Some((prefix.to_owned(), format!("{prefix}/"))),
        }
    }

    /// The range's comparison on its first path, `>=` or `>`.
    pub(crate) fn start_op(&self) -> &'static str {
        if self.inclusive { ">=" } else { ">" }
    }
}
