//! The journal's test suite: written once against [`Store`] and run over
//! every backend, the embedded one (SQLite and a blob folder in a temp
//! folder), the in-memory one, and the shared metadata (PostgreSQL, one
//! database per test) for what it offers, with in-memory content and with
//! the bucket (a fresh s3s-fs bucket per test). What it proves holds for any backend
//! that passes it: racing puts get gap-free seqs and one winner per path,
//! refused or abandoned uploads leave no content, locks admit only their
//! holder with its token (fencing), the change feed replays after a
//! cursor, the path-clash rule, tombstones, retries, and identity.

use std::sync::Arc;

use syncstore::{Content, ContentHash, Lock, RelPath, pb};
use tempfile::TempDir;

use super::{
    Actor, Change, ChangeFeed, DEFAULT_NAMESPACE as NS, Delete, HistoryBatch, HistoryChange, HistoryWrite,
    Label, LockEnd, LockRequest, Point, Put, StagedContent, Store, StoreOptions, Version, VersionKind, What,
    blobdir::BlobDir,
    content::ContentStore,
    memory::{MemoryContent, MemoryMeta},
    meta::MetaStore,
    postgres::PgMeta,
    sqlite::SqliteMeta,
};
use crate::{error::Error, wire};

/// Which backend a suite test runs over.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Embedded,
    Memory,
    /// PostgreSQL metadata (a fresh database of the test process's
    /// cluster) over in-memory content.
    Postgres,
    /// The whole shared backend: PostgreSQL metadata and a fresh bucket of
    /// the test process's s3s-fs, small content inline in the database;
    /// the bucket's own grace off (the journal's is what the suite tests).
    Shared,
}

/// A backend's two halves, kept so that a store can be opened again over
/// them (a restart).
struct Fixture {
    meta: Arc<dyn MetaStore>,
    content: Arc<dyn ContentStore>,
    options: StoreOptions,
    _dir: Option<TempDir>,
}

impl Backend {
    async fn fixture(self, options: StoreOptions) -> Fixture {
        match self {
            Backend::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                Fixture {
                    meta: Arc::new(SqliteMeta::open(dir.path()).await.unwrap()),
                    content: Arc::new(BlobDir::open(dir.path()).await.unwrap()),
                    options,
                    _dir: Some(dir),
                }
            }
            Backend::Memory => Fixture {
                meta: Arc::new(MemoryMeta::new()),
                content: Arc::new(MemoryContent::default()),
                options,
                _dir: None,
            },
            Backend::Postgres => Fixture {
                meta: Arc::new(PgMeta::connect(&super::postgres::tests::fresh_database()).await.unwrap()),
                content: Arc::new(MemoryContent::default()),
                options,
                _dir: None,
            },
            Backend::Shared => {
                let meta = PgMeta::connect(&super::postgres::tests::fresh_database()).await.unwrap();
                let content = super::bucket::tests::open_fresh_bucket(meta.pool()).await;
                Fixture {
                    meta: Arc::new(meta),
                    content: Arc::new(content.with_grace(std::time::Duration::ZERO)),
                    options,
                    _dir: None,
                }
            }
        }
    }

    async fn store(self) -> (Fixture, Store) {
        let f = self.fixture(StoreOptions::default()).await;
        let s = f.open().await;
        (f, s)
    }
}

impl Fixture {
    /// A store over the fixture's backends (again: a restart).
    async fn open(&self) -> Store {
        Store::with_backends(self.meta.clone(), self.content.clone(), self.options.clone()).await.unwrap()
    }
}

fn path(p: &str) -> RelPath {
    RelPath::new(p).unwrap()
}

/// Client `client` of the principal "alice".
fn who(client: &str) -> Actor {
    Actor::new("alice", client)
}

fn content(data: &[u8]) -> Content {
    Content {
        hash: ContentHash::of(data),
        size: data.len() as u64,
        mtime_ns: 7,
        executable: false,
        symlink: false,
        folder: false,
    }
}

/// A file change as a primary replicates it: a plain version by "p".
fn replicated_file(entry: syncstore::Entry) -> Change {
    let note = super::VersionNote::plain(&entry, "p", 1_000 + entry.version as i64);
    Change::file(NS, entry, note)
}

fn put(p: &str, data: &[u8], base_version: u64, client: &str, lock_token: u64) -> Put {
    Put {
        path: path(p),
        content: content(data),
        base_version,
        who: who(client),
        lock_token,
        moved_from: None,
    }
}

fn delete(p: &str, base_version: u64, client: &str, lock_token: u64) -> Delete {
    Delete { path: path(p), base_version, who: who(client), lock_token }
}

/// `data` received and checked, not in place yet.
async fn stage(s: &Store, data: &[u8]) -> Box<dyn StagedContent> {
    let mut up = s.upload(data.len() as u64).await.unwrap();
    up.write(data.to_vec()).await.unwrap();
    up.complete(ContentHash::of(data), data.len() as u64).await.unwrap()
}

/// Puts `p` in namespace `ns` with its content sent along.
async fn send_to(s: &Store, ns: &str, p: Put, data: &[u8]) -> Change {
    let staged = stage(s, data).await;
    s.commit_put(ns, p, Some(staged)).await.unwrap()
}

/// Puts `p` with its content sent along.
async fn send(s: &Store, p: Put, data: &[u8]) -> crate::Result<Change> {
    let staged = stage(s, data).await;
    s.commit_put(NS, p, Some(staged)).await
}

async fn stored(s: &Store) -> Vec<ContentHash> {
    let mut all = s.stored_contents().await.unwrap();
    all.sort();
    all
}

fn request(p: &str, client: &str, ttl_seconds: u32) -> LockRequest {
    LockRequest {
        path: path(p),
        ttl_seconds,
        note: "editing".into(),
        who: who(client),
        holder: format!("{client}@host"),
    }
}

fn lock_of(c: &Change) -> Lock {
    match &c.what {
        What::Lock(l) => l.clone(),
        other => panic!("not a lock change: {other:?}"),
    }
}

/// Many tasks put at once, two per path: group commits give every path
/// exactly one winner (the second of a group sees the first), the seqs
/// stay gap-free, and the losers' content is not kept.
async fn racing_puts_get_gap_free_seqs_and_one_winner_per_path(b: Backend) {
    let (_f, s) = b.store().await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let data = format!("content {i}");
                send(
                    &s,
                    put(&format!("f{}", i / 2), data.as_bytes(), 0, &format!("c{i}"), 0),
                    data.as_bytes(),
                )
                .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let won: Vec<&Change> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 16, "one winner per path");
    assert!(
        results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, Error::VersionConflict { .. })),
        "{results:?}"
    );
    let mut seqs: Vec<u64> = won.iter().map(|c| c.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=16).collect::<Vec<_>>());
    assert_eq!(s.head(), 16);
    let mut winners: Vec<ContentHash> =
        won.iter().map(|c| c.entry().unwrap().content.unwrap().hash).collect();
    winners.sort();
    assert_eq!(stored(&s).await, winners, "only the winners' content is kept");
}

/// A refused upload's content goes, an abandoned upload leaves nothing,
/// and replaced content goes once nothing refers to it.
async fn refused_and_abandoned_uploads_leave_no_content(b: Backend) {
    let (_f, s) = b.store().await;
    let v1 = send(&s, put("a", b"one", 0, "c", 0), b"one").await.unwrap().seq;
    // A stale base: refused, its content not kept.
    let stale = send(&s, put("a", b"two", 0, "c", 0), b"two").await;
    assert!(matches!(stale, Err(Error::VersionConflict { current, .. }) if current == v1));
    assert_eq!(stored(&s).await, vec![ContentHash::of(b"one")]);
    // An upload dropped half-way, and one staged but never committed.
    let mut up = s.upload(4).await.unwrap();
    up.write(b"half".to_vec()).await.unwrap();
    drop(up);
    drop(stage(&s, b"staged").await);
    // A wrong hash is refused with nothing kept.
    let mut up = s.upload(3).await.unwrap();
    up.write(b"abc".to_vec()).await.unwrap();
    assert!(matches!(up.complete(ContentHash::of(b"abd"), 3).await, Err(Error::ContentMismatch(_))));
    assert_eq!(stored(&s).await, vec![ContentHash::of(b"one")]);
    // Replacing the file drops the old content; content two paths share stays.
    send(&s, put("b", b"one", 0, "c", 0), b"one").await.unwrap();
    send(&s, put("a", b"three", v1, "c", 0), b"three").await.unwrap();
    let mut want = vec![ContentHash::of(b"one"), ContentHash::of(b"three")];
    want.sort();
    assert_eq!(stored(&s).await, want);
    // A header-only put of content the namespace holds commits; of other
    // content it is refused as unknown.
    s.commit_put(NS, put("c", b"three", 0, "c", 0), None).await.unwrap();
    let unknown = s.commit_put(NS, put("d", b"never sent", 0, "c", 0), None).await;
    assert!(matches!(unknown, Err(Error::UnknownContent(_))), "{unknown:?}");
    let other_ns = s.commit_put("other", put("d", b"three", 0, "c", 0), None).await;
    assert!(matches!(other_ns, Err(Error::UnknownContent(_))), "{other_ns:?}");
}

async fn a_lock_admits_only_its_holder_with_its_token(b: Backend) {
    let (_f, s) = b.store().await;
    send(&s, put("seed", b"", 0, "x", 0), b"").await.unwrap();
    let a = lock_of(&s.lock(NS, request("f", "A", 60)).await.unwrap());
    assert_eq!(a.token, s.head(), "the token is the granting change's seq");

    // B can neither lock nor write nor delete it.
    assert!(matches!(s.lock(NS, request("f", "B", 60)).await, Err(Error::Locked(m)) if m.contains("A@host")));
    assert!(matches!(s.commit_put(NS, put("f", b"", 0, "B", 0), None).await, Err(Error::Locked(_))));
    // A without its token, or with a wrong one, is refused too.
    assert!(matches!(s.commit_put(NS, put("f", b"", 0, "A", 0), None).await, Err(Error::StaleLock(_))));
    assert!(matches!(
        s.commit_put(NS, put("f", b"", 0, "A", a.token + 1), None).await,
        Err(Error::StaleLock(_))
    ));
    // A with its token writes.
    let v = s.commit_put(NS, put("f", b"", 0, "A", a.token), None).await.unwrap().seq;
    assert!(matches!(s.commit_delete(NS, delete("f", v, "B", 0)).await, Err(Error::Locked(_))));

    // Re-locking refreshes: same id and token.
    let again = lock_of(&s.lock(NS, request("f", "A", 120)).await.unwrap());
    assert_eq!((again.lock_id.as_str(), again.token, again.ttl_seconds), (a.lock_id.as_str(), a.token, 120));

    // B cannot unlock it without force; with force it is broken.
    assert!(matches!(s.unlock(NS, &a.lock_id, &who("B"), false).await, Err(Error::Locked(_))));
    let broken = s.unlock(NS, &a.lock_id, &who("B"), true).await.unwrap();
    assert!(matches!(broken.what, What::Unlock { ended: LockEnd::Broken, ref by, .. } if *by == who("B")));
    assert!(s.list_locks(NS, "").await.unwrap().is_empty());

    // Fencing: A's old token is refused now that the lock is gone ...
    assert!(matches!(s.commit_delete(NS, delete("f", v, "A", a.token)).await, Err(Error::StaleLock(_))));
    // ... and once B holds a new lock, B's token is larger.
    let b_lock = lock_of(&s.lock(NS, request("f", "B", 60)).await.unwrap());
    assert!(b_lock.token > a.token);
    assert!(matches!(s.commit_delete(NS, delete("f", v, "A", a.token)).await, Err(Error::Locked(_))));
    s.commit_delete(NS, delete("f", v, "B", b_lock.token)).await.unwrap();
}

async fn a_lock_is_bound_to_its_principal_and_client_together(b: Backend) {
    let (_f, s) = b.store().await;
    send(&s, put("seed", b"", 0, "x", 0), b"").await.unwrap();
    let a = lock_of(&s.lock(NS, request("f", "A", 60)).await.unwrap());
    assert_eq!(a.principal, "alice");
    // Bob sends alice's client id: refused for every operation.
    let bob = Actor::new("bob", "A");
    let mut as_bob = put("f", b"", 0, "A", a.token);
    as_bob.who = bob.clone();
    assert!(matches!(s.commit_put(NS, as_bob, None).await, Err(Error::Locked(_))));
    let relock = LockRequest { who: bob.clone(), ..request("f", "A", 60) };
    assert!(matches!(s.lock(NS, relock).await, Err(Error::Locked(_))));
    assert!(matches!(s.refresh_lock(NS, &a.lock_id, &bob, 60).await, Err(Error::Locked(_))));
    assert!(matches!(s.unlock(NS, &a.lock_id, &bob, false).await, Err(Error::Locked(_))));
    // With force (the service checks the right), it is broken by bob.
    let broken = s.unlock(NS, &a.lock_id, &bob, true).await.unwrap();
    assert!(matches!(broken.what, What::Unlock { ended: LockEnd::Broken, ref by, .. } if *by == bob));
    let info = wire::lock_info(&broken).unwrap();
    assert_eq!((info.ended_by.as_str(), info.ended_by_principal.as_str()), ("A", "bob"));
    // The holder itself refreshes and releases.
    let g = lock_of(&s.lock(NS, request("g", "A", 60)).await.unwrap());
    s.refresh_lock(NS, &g.lock_id, &who("A"), 120).await.unwrap();
    let released = s.unlock(NS, &g.lock_id, &who("A"), false).await.unwrap();
    assert!(matches!(released.what, What::Unlock { ended: LockEnd::Released, .. }));
}

async fn lock_listings_page_in_path_order_under_a_prefix(b: Backend) {
    let (_f, s) = b.store().await;
    for p in ["d", "d/a", "d/b", "d-x", "d0", "e", "d/c/d"] {
        s.lock(NS, request(p, "A", 60)).await.unwrap();
    }
    let paths = |v: Vec<Lock>| v.into_iter().map(|l| l.path.as_str().to_owned()).collect::<Vec<_>>();
    assert_eq!(paths(s.list_locks(NS, "d").await.unwrap()), ["d", "d/a", "d/b", "d/c/d"]);
    assert_eq!(paths(s.list_locks_page(NS, "d", Some("d/a"), 2).await.unwrap()), ["d/b", "d/c/d"]);
    assert_eq!(paths(s.list_locks_page(NS, "", None, 3).await.unwrap()), ["d", "d-x", "d/a"]);
    assert_eq!(s.list_locks(NS, "").await.unwrap().len(), 7);
}

async fn locks_expire_survive_a_restart_and_reserve_missing_names(b: Backend) {
    let f = b.fixture(StoreOptions::default()).await;
    let (id, token) = {
        let s = f.open().await;
        let l = lock_of(&s.lock(NS, request("new/name.txt", "A", 60)).await.unwrap());
        assert!(s.stat(NS, &path("new/name.txt")).await.unwrap().is_none(), "a lock writes no file");
        (l.lock_id, l.token)
    };
    let s = f.open().await;
    let listed = s.list_locks(NS, "new").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].lock_id.as_str(), listed[0].token), (id.as_str(), token));
    assert!(s.list_locks(NS, "ne").await.unwrap().is_empty(), "prefixes match whole names");

    // Nothing expires before its time; at it, one unlock change.
    assert!(s.expire_locks(listed[0].expires_ms - 1).await.unwrap().is_empty());
    let ended = s.expire_locks(listed[0].expires_ms).await.unwrap();
    assert!(matches!(&ended[..], [Change { what: What::Unlock { ended: LockEnd::Expired, .. }, .. }]));
    assert!(s.list_locks(NS, "").await.unwrap().is_empty());
    assert!(matches!(s.refresh_lock(NS, &id, &who("A"), 60).await, Err(Error::LockNotHeld(_))));

    // The log holds the grant and the expiry, in order.
    let log = s.changes_after(NS, 0, 10).await.unwrap();
    let kinds: Vec<i32> = log.iter().map(|c| wire::kind(c) as i32).collect();
    assert_eq!(kinds, [pb::change_event::Kind::Lock as i32, pb::change_event::Kind::Unlock as i32]);
}

/// The feed replays the kept log after a cursor, per namespace or for all,
/// broadcasts what commits later, and says where the trimmed log starts.
async fn the_change_feed_replays_after_a_cursor(b: Backend) {
    let f = b.fixture(StoreOptions { log_retention: 3, ..StoreOptions::default() }).await;
    let s = f.open().await;
    assert_eq!(s.oldest_seq().await.unwrap(), 0, "nothing is missing from a new store");
    let mut live = s.subscribe();
    for i in 0..3u8 {
        send(&s, put(&format!("f{i}"), &[i], 0, "c", 0), &[i]).await.unwrap();
    }
    s.commit_put("other", put("g", b"", 0, "c", 0), Some(stage(&s, b"").await)).await.unwrap();
    for want in 1..=4 {
        assert_eq!(live.recv().await.unwrap().seq, want, "broadcast in seq order");
    }
    let feed: &dyn ChangeFeed = &s;
    let seqs = |v: Vec<Change>| v.iter().map(|c| c.seq).collect::<Vec<_>>();
    assert_eq!(seqs(feed.changes_after(Some(NS), 1, 10).await.unwrap()), [2, 3]);
    assert_eq!(seqs(feed.changes_after(None, 1, 10).await.unwrap()), [2, 3, 4]);
    assert_eq!(seqs(feed.changes_after(None, 0, 2).await.unwrap()), [1, 2]);
    assert_eq!(feed.head(), 4);
    assert_eq!(feed.oldest_seq().await.unwrap(), 1);
    // Retention 3: once the log is trimmed, it starts later.
    for i in 0..3u8 {
        send(&s, put(&format!("h{i}"), &[i, i], 0, "c", 0), &[i, i]).await.unwrap();
    }
    let oldest = feed.oldest_seq().await.unwrap();
    assert!(oldest > 1 && oldest <= 7 - 2, "oldest kept {oldest}");
    assert_eq!(feed.changes_after(None, 6, 10).await.unwrap().len(), 1, "the head is always kept");
}

/// A file cannot sit below a file, nor a file where live entries lie below;
/// a folder can hold what lies below it.
async fn the_path_clash_rule_holds(b: Backend) {
    let (_f, s) = b.store().await;
    send(&s, put("a", b"x", 0, "c", 0), b"x").await.unwrap();
    let below = s.commit_put(NS, put("a/b", b"x", 0, "c", 0), None).await;
    assert!(matches!(below, Err(Error::PathClash(m)) if m.contains("a is a file")));
    s.commit_put(NS, put("d/e", b"x", 0, "c", 0), None).await.unwrap();
    let over = s.commit_put(NS, put("d", b"x", 0, "c", 0), None).await;
    assert!(matches!(over, Err(Error::PathClash(m)) if m.contains("holds d/e")));
    let mut folder = put("d", b"", 0, "c", 0);
    folder.content.folder = true;
    s.commit_put(NS, folder, Some(stage(&s, b"").await)).await.unwrap();
    // The pre-check reads the same rows before any content is received.
    let facts = s.path_facts(NS, &path("a/b"), false, None).await.unwrap();
    assert_eq!(facts.file_above.as_deref(), Some("a"));
    // Once "a" is deleted, "a/b" may be a file.
    let v = s.stat(NS, &path("a")).await.unwrap().unwrap().version;
    s.commit_delete(NS, delete("a", v, "c", 0)).await.unwrap();
    s.commit_put(NS, put("a/b", b"x", 0, "c", 0), None).await.unwrap();
}

/// A deletion leaves a tombstone; deleting it again is NOT_FOUND; a new
/// file over it is based on 0 or on the tombstone.
async fn deletions_leave_tombstones(b: Backend) {
    let (_f, s) = b.store().await;
    let v1 = send(&s, put("a", b"one", 0, "c", 0), b"one").await.unwrap().seq;
    assert!(matches!(
        s.commit_delete(NS, delete("a", v1 + 5, "c", 0)).await,
        Err(Error::VersionConflict { .. })
    ));
    let gone = s.commit_delete(NS, delete("a", v1, "c", 0)).await.unwrap();
    let tomb = s.stat(NS, &path("a")).await.unwrap().unwrap();
    assert!(tomb.is_deleted());
    assert_eq!(tomb.version, gone.seq);
    assert_eq!(stored(&s).await, vec![ContentHash::of(b"one")], "the deleted file's last version keeps it");
    s.prune(NS, vec![(path("a"), v1)]).await.unwrap();
    assert!(stored(&s).await.is_empty(), "content nothing refers to goes with its last version");
    assert!(matches!(s.commit_delete(NS, delete("a", gone.seq, "c", 0)).await, Err(Error::NotFound(_))));
    assert!(matches!(s.commit_delete(NS, delete("never", 0, "c", 0)).await, Err(Error::NotFound(_))));
    let listed = s.list_page(NS, "", None, true, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(s.list_page(NS, "", None, false, 10).await.unwrap().is_empty());
    send(&s, put("a", b"two", gone.seq, "c", 0), b"two").await.unwrap();
    assert_eq!(s.entry_at(NS, &path("a"), v1).await.unwrap().unwrap().content, Some(content(b"one")));
}

async fn only_the_very_same_write_is_recognised_as_a_retry(b: Backend) {
    let (_f, s) = b.store().await;
    let first = put("a", b"one", 0, "c1", 0);
    let v1 = send(&s, first.clone(), b"one").await.unwrap().seq;
    assert_eq!(s.committed_put(NS, &first).await.unwrap().map(|e| e.version), Some(v1));
    // Another client, other bytes, another mtime, another base: not it.
    assert_eq!(s.committed_put(NS, &put("a", b"one", 0, "c2", 0)).await.unwrap(), None);
    assert_eq!(s.committed_put(NS, &put("a", b"two", 0, "c1", 0)).await.unwrap(), None);
    let mut later = first.clone();
    later.content.mtime_ns = 8;
    assert_eq!(s.committed_put(NS, &later).await.unwrap(), None);
    assert_eq!(s.committed_put(NS, &put("a", b"one", v1, "c1", 0)).await.unwrap(), None);

    let second = put("a", b"two", v1, "c1", 0);
    let v2 = send(&s, second.clone(), b"two").await.unwrap().seq;
    assert_eq!(s.committed_put(NS, &second).await.unwrap().map(|e| e.version), Some(v2));
    assert_eq!(s.committed_put(NS, &put("a", b"two", 0, "c1", 0)).await.unwrap(), None);

    let del = delete("a", v2, "c1", 0);
    let v3 = s.commit_delete(NS, del.clone()).await.unwrap().seq;
    assert_eq!(s.committed_delete(NS, &del).await.unwrap().map(|e| e.version), Some(v3));
    assert_eq!(s.committed_delete(NS, &delete("a", v2, "c2", 0)).await.unwrap(), None);
    assert_eq!(s.committed_delete(NS, &delete("a", v1, "c1", 0)).await.unwrap(), None);
    let again = put("a", b"three", 0, "c1", 0);
    send(&s, again.clone(), b"three").await.unwrap();
    assert!(s.committed_put(NS, &again).await.unwrap().is_some());
    assert!(s.committed_put(NS, &put("a", b"three", v3, "c1", 0)).await.unwrap().is_some());
}

async fn a_creation_whose_history_was_trimmed_is_not_recognised(b: Backend) {
    let f = b.fixture(StoreOptions { log_retention: 1, ..StoreOptions::default() }).await;
    let s = f.open().await;
    let old = put("old", b"old", 0, "c1", 0);
    send(&s, old.clone(), b"old").await.unwrap();
    for i in 0..3 {
        send(&s, put(&format!("other{i}"), b"x", 0, "c1", 0), b"x").await.unwrap();
    }
    assert!(s.oldest_seq().await.unwrap() > 1, "the log was trimmed");
    send(&s, put("new", b"new", 0, "c1", 0), b"new").await.unwrap();
    assert_eq!(s.committed_put(NS, &old).await.unwrap(), None);
}

async fn the_identity_is_created_once_and_kept_across_a_restart(b: Backend) {
    let f = b.fixture(StoreOptions::default()).await;
    let first = {
        let s = f.open().await;
        let id = s.identity();
        assert_eq!(id.history_id.len(), 32);
        assert_eq!((id.epoch, id.primary_url.as_deref()), (0, None));
        s.set_epoch(3).await.unwrap();
        s.set_primary_url("http://primary:7000").await.unwrap();
        s.identity()
    };
    assert_eq!((first.epoch, first.primary_url.as_deref()), (3, Some("http://primary:7000")));
    assert_eq!(f.open().await.identity(), first);
}

async fn only_a_store_that_holds_nothing_adopts_another_history(b: Backend) {
    let f = b.fixture(StoreOptions::default()).await;
    let s = f.open().await;
    s.adopt_history("0123").await.unwrap();
    assert_eq!(s.history_id(), "0123");
    s.lock(NS, request("f", "c", 0)).await.unwrap();
    assert!(matches!(s.adopt_history("4567").await, Err(Error::FailedPrecondition(_))));
    drop(s);
    assert_eq!(f.open().await.history_id(), "0123");
}

/// Replicated changes apply with their seqs; a redelivery is skipped, a gap
/// refused; a snapshot replaces the manifest and restarts the log.
async fn replicated_changes_and_snapshots_apply_in_order(b: Backend) {
    use super::Replicated;
    let (_f, s) = b.store().await;
    let file = |seq: u64, p: &str, data: &[u8]| {
        let entry = syncstore::Entry {
            path: path(p),
            version: seq,
            content: Some(content(data)),
            client_id: "c".into(),
        };
        replicated_file(entry)
    };
    let batch = vec![
        Replicated {
            change: file(1, "a", b"one"),
            staged: Some(stage(&s, b"one").await),
            content_gone: false,
        },
        Replicated {
            change: file(2, "b", b"two"),
            staged: Some(stage(&s, b"two").await),
            content_gone: false,
        },
    ];
    assert_eq!(s.apply_replicated_batch(batch).await.unwrap(), 2);
    let again = vec![Replicated { change: file(2, "b", b"two"), staged: None, content_gone: false }];
    assert_eq!(s.apply_replicated_batch(again).await.unwrap(), 0, "a redelivery is skipped");
    let gap = vec![Replicated { change: file(4, "c", b"x"), staged: None, content_gone: true }];
    assert!(matches!(s.apply_replicated_batch(gap).await, Err(Error::FailedPrecondition(_))));
    let missing = vec![Replicated { change: file(3, "c", b"never"), staged: None, content_gone: false }];
    assert!(matches!(s.apply_replicated_batch(missing).await, Err(Error::FailedPrecondition(_))));
    assert_eq!(s.head(), 2);

    s.snapshot_begin().await.unwrap();
    let entry = file(9, "z", b"zed").into_entry();
    s.snapshot_put(NS, &entry, Some(stage(&s, b"zed").await), false).await.unwrap();
    s.snapshot_end(10).await.unwrap();
    assert_eq!(s.head(), 10);
    assert_eq!(s.oldest_seq().await.unwrap(), 11, "the log restarts empty at the snapshot's head");
    assert!(s.stat(NS, &path("a")).await.unwrap().is_none());
    assert_eq!(stored(&s).await, vec![ContentHash::of(b"zed")], "what the snapshot dropped goes");
}

/// With a grace period, content a prune stopped referring to stays until
/// the grace has passed and then goes in the background, unless an entry
/// refers to it again by then.
async fn replaced_content_goes_once_its_grace_has_passed(b: Backend) {
    let grace = std::time::Duration::from_millis(300);
    let f = b.fixture(StoreOptions { gc_grace: grace, ..StoreOptions::default() }).await;
    let s = f.open().await;
    let v1 = send(&s, put("a", b"one", 0, "c", 0), b"one").await.unwrap().seq;
    let v2 = send(&s, put("a", b"two", v1, "c", 0), b"two").await.unwrap().seq;
    let both = {
        let mut v = vec![ContentHash::of(b"one"), ContentHash::of(b"two")];
        v.sort();
        v
    };
    assert_eq!(stored(&s).await, both, "replaced content is kept through its grace");
    // "one" is referred to again within its grace: it must stay.
    send(&s, put("b", b"one", 0, "c", 0), b"one").await.unwrap();
    send(&s, put("a", b"three", v2, "c", 0), b"three").await.unwrap();
    // A refused upload's content waits for its grace too.
    let stale = send(&s, put("a", b"four", v1, "c", 0), b"four").await;
    assert!(matches!(stale, Err(Error::VersionConflict { .. })), "{stale:?}");
    assert!(stored(&s).await.contains(&ContentHash::of(b"four")));
    // Replaced content is kept by its version until a prune.
    s.prune(NS, vec![(path("a"), v1), (path("a"), v2)]).await.unwrap();
    // "two" and "four", queued after "one", go: the collector has been
    // through "one" by then.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored(&s).await.iter().any(|h| [ContentHash::of(b"two"), ContentHash::of(b"four")].contains(h)) {
        assert!(tokio::time::Instant::now() < deadline, "replaced content was never collected");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut want = vec![ContentHash::of(b"one"), ContentHash::of(b"three")];
    want.sort();
    assert_eq!(stored(&s).await, want);
}

/// `n` bytes that look random, different for each `seed`.
fn noise(n: usize, seed: &str) -> Vec<u8> {
    let mut data = vec![0; n];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut data);
    data
}

/// The chunk hashes of `data` as both sides cut it.
fn chunks_of(data: &[u8]) -> Vec<ContentHash> {
    syncstore::chunks::chunk_list(data, data.len() as u64).unwrap().2.into_iter().map(|c| c.hash).collect()
}

/// Distinct hashes, sorted.
fn distinct<'a>(lists: impl IntoIterator<Item = &'a [ContentHash]>) -> Vec<ContentHash> {
    let mut all: Vec<ContentHash> = lists.into_iter().flatten().copied().collect();
    all.sort();
    all.dedup();
    all
}

/// Reads stored content back whole.
async fn read_back(s: &Store, hash: &ContentHash, size: u64) -> Vec<u8> {
    let mut reader = s.content_reader(hash, size).await.unwrap().expect("stored");
    let mut out = Vec::new();
    while let Some(piece) = reader.next_chunk(syncstore::limits::MAX_CHUNK).await.unwrap() {
        out.extend_from_slice(&piece);
    }
    out
}

/// Waits (bounded) until the stored contents are `want`.
async fn stored_becomes(s: &Store, want: &[ContentHash]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored(s).await != want {
        let now = stored(s).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored contents never became {} blobs: {} more, {} missing",
            want.len(),
            now.iter().filter(|h| !want.contains(h)).count(),
            want.iter().filter(|h| !now.contains(h)).count(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Large content is stored as chunk blobs plus its recipe; chunks two
/// files share are stored once; pruning one file's replaced version
/// removes only its own chunks (and its recipe), and the new recipe keeps runs against the old;
/// an abandoned large upload leaves none of its chunks.
async fn large_files_store_shared_chunks_once_and_lose_only_their_own(b: Backend) {
    let (_f, s) = b.store().await;
    let a = noise(3 * 1024 * 1024, "a");
    let mut b2 = a.clone();
    b2[1_500_000..1_600_000].copy_from_slice(&noise(100_000, "edit"));
    let (ca, cb) = (chunks_of(&a), chunks_of(&b2));
    send(&s, put("a", &a, 0, "c", 0), &a).await.unwrap();
    let vb = send(&s, put("b", &b2, 0, "c", 0), &b2).await.unwrap().seq;
    let both = distinct([&ca[..], &cb[..]]);
    assert!(both.len() < ca.len() + cb.len() - 20, "{} of {} chunks shared", both.len(), ca.len() + cb.len());
    assert_eq!(stored(&s).await, both, "only chunks are stored, each once");
    assert_eq!(read_back(&s, &ContentHash::of(&b2), b2.len() as u64).await, b2);
    let (chunks_stored, deduplicated) = s.chunk_counts();
    assert_eq!((chunks_stored, deduplicated), (both.len() as u64, (ca.len() + cb.len() - both.len()) as u64));

    // Replaced, b's content is kept by its version; pruned, b's own chunks
    // go, a's stay.
    let c = noise(2 * 1024 * 1024 + 5, "c");
    let mut edited = c.clone();
    edited.extend_from_slice(&noise(50_000, "tail"));
    let vc = send(&s, put("b", &c, vb, "c", 0), &c).await.unwrap().seq;
    assert!(
        s.recipe(&ContentHash::of(&b2)).await.unwrap().is_some(),
        "the replaced version keeps its recipe"
    );
    assert_eq!(stored(&s).await, distinct([&ca[..], &cb[..], &chunks_of(&c)[..]]));
    s.prune(NS, vec![(path("b"), vb)]).await.unwrap();
    assert!(s.recipe(&ContentHash::of(&b2)).await.unwrap().is_none(), "the pruned version's recipe went");
    assert_eq!(stored(&s).await, distinct([&ca[..], &chunks_of(&c)[..]]));
    // The next version keeps runs against this one.
    send(&s, put("b", &edited, vc, "c", 0), &edited).await.unwrap();
    let recipe = s.recipe(&ContentHash::of(&edited)).await.unwrap().unwrap();
    let (prev, runs) = recipe.prev.expect("runs against the replaced version");
    assert_eq!(prev, ContentHash::of(&c));
    let old = syncstore::chunks::chunk_list(&c[..], c.len() as u64).unwrap().2;
    assert_eq!(syncstore::chunks::apply(&old, &runs).unwrap(), recipe.list);
    assert!(runs.len() <= 4, "{runs:?}");
    // c's version keeps c's chunks until it is pruned.
    let kept = distinct([&ca[..], &chunks_of(&c)[..], &chunks_of(&edited)[..]]);
    assert_eq!(stored(&s).await, kept);

    // Abandoned half-way, or refused at its end: none of its chunks stay.
    let other = noise(2 * 1024 * 1024, "other");
    let mut up = s.upload(other.len() as u64).await.unwrap();
    up.write(other[..1_500_000].to_vec()).await.unwrap();
    drop(up);
    let mut up = s.upload(other.len() as u64).await.unwrap();
    up.write(other.clone()).await.unwrap();
    assert!(matches!(
        up.complete(ContentHash::of(b"not it"), other.len() as u64).await,
        Err(Error::ContentMismatch(_))
    ));
    stored_becomes(&s, &kept).await;
    // Removing the last file that refers to chunks removes them.
    let va = s.stat(NS, &path("a")).await.unwrap().unwrap().version;
    s.commit_delete(NS, delete("a", va, "c", 0)).await.unwrap();
    s.prune(NS, vec![(path("a"), va), (path("b"), vc)]).await.unwrap();
    assert_eq!(stored(&s).await, distinct([&chunks_of(&edited)[..]]));
}

/// A chunk an upload holds is not removed with the last entry that referred
/// to it: the upload commits and its content reads back whole.
async fn a_chunk_an_upload_holds_survives_a_concurrent_removal(b: Backend) {
    let (_f, s) = b.store().await;
    let a = noise(2 * 1024 * 1024, "a");
    let mut b2 = a.clone();
    b2.extend_from_slice(b"and a little more");
    let va = send(&s, put("a", &a, 0, "c", 0), &a).await.unwrap().seq;
    // b is received (sharing most chunks with a), not committed yet ...
    let mut up = s.upload(b2.len() as u64).await.unwrap();
    up.write(b2.clone()).await.unwrap();
    let staged = up.complete(ContentHash::of(&b2), b2.len() as u64).await.unwrap();
    // ... when a goes (deleted, its version pruned), and with it every
    // chunk nothing holds.
    s.commit_delete(NS, delete("a", va, "c", 0)).await.unwrap();
    s.prune(NS, vec![(path("a"), va)]).await.unwrap();
    assert!(s.recipe(&ContentHash::of(&a)).await.unwrap().is_none());
    s.commit_put(NS, put("b", &b2, 0, "c", 0), Some(staged)).await.unwrap();
    assert_eq!(read_back(&s, &ContentHash::of(&b2), b2.len() as u64).await, b2);
    assert_eq!(stored(&s).await, distinct([&chunks_of(&b2)[..]]));
}

/// Content stored as chunks survives a restart's sweep, and reaches a
/// replica as chunks with its recipe, by replicated changes and by a full
/// resync's snapshot; what the snapshot drops goes with its recipe.
async fn chunked_content_survives_restarts_replication_and_snapshots(b: Backend) {
    use super::Replicated;
    let (f, s) = b.store().await;
    let big = noise(3 * 1024 * 1024, "big");
    send(&s, put("big", &big, 0, "c", 0), &big).await.unwrap();
    let s = f.open().await;
    assert_eq!(stored(&s).await, distinct([&chunks_of(&big)[..]]), "the sweep keeps every chunk");
    assert!(s.has_blob(&ContentHash::of(&big)).await.unwrap());
    assert_eq!(read_back(&s, &ContentHash::of(&big), big.len() as u64).await, big);

    let (rf, r) = b.store().await;
    let entry = |seq: u64, p: &str, data: &[u8]| syncstore::Entry {
        path: path(p),
        version: seq,
        content: Some(content(data)),
        client_id: "c".into(),
    };
    let change = replicated_file(entry(1, "big", &big));
    let batch = vec![Replicated { change, staged: Some(stage(&r, &big).await), content_gone: false }];
    assert_eq!(r.apply_replicated_batch(batch).await.unwrap(), 1);
    let r = rf.open().await;
    assert_eq!(read_back(&r, &ContentHash::of(&big), big.len() as u64).await, big);

    let other = noise(2 * 1024 * 1024, "other");
    r.snapshot_begin().await.unwrap();
    r.snapshot_put(NS, &entry(5, "other", &other), Some(stage(&r, &other).await), false).await.unwrap();
    r.snapshot_end(5).await.unwrap();
    assert!(r.recipe(&ContentHash::of(&big)).await.unwrap().is_none(), "the dropped file's recipe went");
    assert_eq!(stored(&r).await, distinct([&chunks_of(&other)[..]]));
    let r = rf.open().await;
    assert_eq!(read_back(&r, &ContentHash::of(&other), other.len() as u64).await, other);
}

/// Large content stored whole, as releases before chunk storage did (a
/// blob named by the file hash, no recipe), keeps working: it reads back
/// and verifies, a header-only upload may reuse it, it is no base for runs
/// (it has no recipe), and once replaced and pruned its blob goes.
async fn large_content_stored_whole_by_an_earlier_release_keeps_working(b: Backend) {
    use super::Replicated;
    let (f, s) = b.store().await;
    let old = noise(3 * 1024 * 1024, "old release");
    let hash = ContentHash::of(&old);
    // The blob as the earlier release wrote it, and its entry.
    let mut up = f.content.upload().await.unwrap();
    up.write(old.clone()).await.unwrap();
    let _ = up.complete(hash, old.len() as u64).await.unwrap().place().await.unwrap();
    let entry = syncstore::Entry {
        path: path("vm.img"),
        version: 1,
        content: Some(content(&old)),
        client_id: "c".into(),
    };
    let change = replicated_file(entry);
    s.apply_replicated_batch(vec![Replicated { change, staged: None, content_gone: false }]).await.unwrap();
    let s = f.open().await;
    assert_eq!(stored(&s).await, vec![hash], "the whole blob is kept as it is");
    assert!(s.recipe(&hash).await.unwrap().is_none());
    assert_eq!(read_back(&s, &hash, old.len() as u64).await, old);
    assert_eq!(s.verify_blob(&hash, old.len() as u64).await.unwrap(), super::Verdict::Good);
    assert_eq!(s.verified_size(&hash, old.len() as u64).await.unwrap(), Some(old.len() as u64));
    assert!(s.has_blob(&hash).await.unwrap());
    s.commit_reused(NS, put("copy.img", &old, 0, "c", 0)).await.unwrap();

    // Replaced at both paths by new content: stored as chunks, and the
    // whole blob goes.
    let new = noise(3 * 1024 * 1024, "new release");
    let v1 = s.stat(NS, &path("vm.img")).await.unwrap().unwrap().version;
    let v2 = s.stat(NS, &path("copy.img")).await.unwrap().unwrap().version;
    send(&s, put("vm.img", &new, v1, "c", 0), &new).await.unwrap();
    assert!(stored(&s).await.contains(&hash), "still referred to by copy.img");
    s.commit_delete(NS, delete("copy.img", v2, "c", 0)).await.unwrap();
    assert!(stored(&s).await.contains(&hash), "still referred to by both paths' history");
    s.prune(NS, vec![(path("vm.img"), v1), (path("copy.img"), v2)]).await.unwrap();
    assert_eq!(stored(&s).await, distinct([&chunks_of(&new)[..]]));
}

// Version history.

/// The kinds of a path's versions, newest first.
fn kinds(versions: &[Version]) -> Vec<VersionKind> {
    versions.iter().map(|v| v.note.kind).collect()
}

/// The seqs of versions, in their order.
fn seqs_of(versions: &[Version]) -> Vec<u64> {
    versions.iter().map(Version::seq).collect()
}

/// Every write, the writer's own included, is kept as a version with who
/// made it and when; replaced and deleted content stays stored (and reads
/// back) until its version is pruned, and a pruned version is unknown.
async fn every_write_keeps_a_version_and_its_content_until_a_prune(b: Backend) {
    let (f, s) = b.store().await;
    let v1 = send(&s, put("a", b"one", 0, "c", 0), b"one").await.unwrap().seq;
    let v2 = send(&s, put("a", b"two", v1, "d", 0), b"two").await.unwrap().seq;
    let v3 = s.commit_delete(NS, delete("a", v2, "c", 0)).await.unwrap().seq;
    let v4 = send(&s, put("a", b"four", v3, "c", 0), b"four").await.unwrap().seq;
    let s = f.open().await;
    let all = s.versions(NS, &path("a"), 0).await.unwrap();
    assert_eq!(seqs_of(&all), [v4, v3, v2, v1], "newest first, kept across a restart");
    use VersionKind::{Delete as Del, Write};
    assert_eq!(kinds(&all), [Write, Del, Write, Write]);
    assert!(all.iter().all(|v| v.note.principal == "alice" && v.note.committed_ms > 0 && !v.pinned));
    assert_eq!(all[2].entry.client_id, "d");
    assert!(all.windows(2).all(|w| w[0].note.committed_ms >= w[1].note.committed_ms));
    assert_eq!(seqs_of(&s.versions(NS, &path("a"), 2).await.unwrap()), [v4, v3], "a limit");
    // Replaced content is kept, and reads back.
    assert_eq!(read_back(&s, &ContentHash::of(b"one"), 3).await, b"one");
    assert_eq!(read_back(&s, &ContentHash::of(b"two"), 3).await, b"two");
    // The log says the same as the versions.
    let logged = s.changes_after(NS, 0, 10).await.unwrap();
    assert_eq!(
        logged.iter().map(|c| c.note().unwrap().clone()).collect::<Vec<_>>(),
        all.iter().rev().map(|v| v.note.clone()).collect::<Vec<_>>()
    );

    let removed = s.prune(NS, vec![(path("a"), v1), (path("a"), v4), (path("a"), 999)]).await.unwrap();
    assert_eq!(seqs_of(&removed), [v1], "never the current version, nor one not kept");
    assert!(!stored(&s).await.contains(&ContentHash::of(b"one")), "its content went with it");
    assert!(stored(&s).await.contains(&ContentHash::of(b"two")));
    assert!(matches!(s.version_at(NS, &path("a"), &Point::Version(v1)).await, Err(Error::UnknownVersion(_))));
    assert_eq!(s.version_at(NS, &path("a"), &Point::Version(v2)).await.unwrap().seq(), v2);
    assert_eq!(seqs_of(&s.versions(NS, &path("a"), 0).await.unwrap()), [v4, v3, v2]);
    // A prune is a logged change of its own.
    let last = s.changes_after(NS, v4, 10).await.unwrap();
    assert!(
        matches!(&last[..], [Change { what: What::History(HistoryChange::Prune(p)), .. }] if p == &vec![(path("a"), v1)])
    );
    assert!(!last[0].for_clients());
}

/// A put that says it is the file moved from another path is a move when
/// that path's content is the same (else a plain write); the former path's
/// deletion after it is a move away, not in the trash; the new path's
/// history continues with the former one's below the move.
async fn history_follows_a_move(b: Backend) {
    let (_f, s) = b.store().await;
    let o1 = send(&s, put("old", b"first", 0, "c", 0), b"first").await.unwrap().seq;
    let o2 = send(&s, put("old", b"second", o1, "c", 0), b"second").await.unwrap().seq;
    let moved = Put { moved_from: Some(path("old")), ..put("dir/new", b"second", 0, "c", 0) };
    let m = s.commit_put(NS, moved, None).await.unwrap();
    assert_eq!(m.note().unwrap().kind, VersionKind::Move);
    assert_eq!(m.note().unwrap().moved_from, Some(path("old")));
    let gone = s.commit_delete(NS, delete("old", o2, "c", 0)).await.unwrap();
    assert_eq!(gone.note().unwrap().kind, VersionKind::MovedAway);
    assert_eq!(gone.note().unwrap().moved_to, Some(path("dir/new")));
    let history = s.versions(NS, &path("dir/new"), 0).await.unwrap();
    assert_eq!(seqs_of(&history), [m.seq, o2, o1], "the move, then the former path's versions below it");
    assert_eq!(history[1].entry.path, path("old"));
    assert_eq!(seqs_of(&s.versions(NS, &path("dir/new"), 2).await.unwrap()), [m.seq, o2]);
    assert!(s.trash(NS, "", 0, None, 10).await.unwrap().is_empty(), "a file moved away is not deleted");

    // A wrong hint (other content) is a plain write; the hinted path's
    // later deletion is a deletion, in the trash.
    send(&s, put("x", b"x", 0, "c", 0), b"x").await.unwrap();
    let lie = Put { moved_from: Some(path("x")), ..put("y", b"not x", 0, "c", 0) };
    let y = s.commit_put(NS, lie, Some(stage(&s, b"not x").await)).await.unwrap();
    assert_eq!((y.note().unwrap().kind, y.note().unwrap().moved_from.clone()), (VersionKind::Write, None));
    let xv = s.stat(NS, &path("x")).await.unwrap().unwrap().version;
    let xd = s.commit_delete(NS, delete("x", xv, "c", 0)).await.unwrap();
    assert_eq!(xd.note().unwrap().kind, VersionKind::Delete);
    let trash = s.trash(NS, "", 0, None, 10).await.unwrap();
    assert_eq!(trash.len(), 1);
    assert_eq!((trash[0].0.seq(), trash[0].1.seq()), (xd.seq, xv), "the deletion and the content before it");

    // Deleted first, then uploaded under its new name with the hint: a
    // move too, and not in the trash.
    let pv = send(&s, put("p.txt", b"pee", 0, "c", 0), b"pee").await.unwrap().seq;
    s.commit_delete(NS, delete("p.txt", pv, "c", 0)).await.unwrap();
    assert_eq!(s.trash(NS, "", 0, None, 10).await.unwrap().len(), 2);
    let q = s
        .commit_put(NS, Put { moved_from: Some(path("p.txt")), ..put("q.txt", b"pee", 0, "c", 0) }, None)
        .await;
    assert_eq!(q.unwrap().note().unwrap().kind, VersionKind::Move);
    let trash = s.trash(NS, "", 0, None, 10).await.unwrap();
    assert_eq!(trash.iter().map(|(t, _)| t.entry.path.as_str()).collect::<Vec<_>>(), ["x"]);

    // The trash by folder, time and name.
    let zv = send(&s, put("d/z.txt", b"zed", 0, "c", 0), b"zed").await.unwrap().seq;
    let zd = s.commit_delete(NS, delete("d/z.txt", zv, "c", 0)).await.unwrap();
    let since = zd.note().unwrap().committed_ms;
    let names =
        |t: Vec<(Version, Version)>| t.iter().map(|(d, _)| d.entry.path.to_string()).collect::<Vec<_>>();
    assert_eq!(names(s.trash(NS, "", 0, None, 10).await.unwrap()), ["d/z.txt", "x"], "newest deletion first");
    assert_eq!(names(s.trash(NS, "", 0, None, 1).await.unwrap()), ["d/z.txt"]);
    assert_eq!(names(s.trash(NS, "d", 0, None, 10).await.unwrap()), ["d/z.txt"]);
    assert_eq!(names(s.trash(NS, "", since + 1, None, 10).await.unwrap()), Vec::<String>::new());
    let glob = super::Glob::new("*.txt").unwrap();
    assert_eq!(names(s.trash(NS, "", 0, Some(&glob), 10).await.unwrap()), ["d/z.txt"]);
}

/// A folder's state at a seq: each path's newest version at or below it,
/// deletions included; points by time, version and label resolve to seqs,
/// and a time before the oldest kept version is refused.
async fn state_at_a_point_is_each_paths_newest_version_then(b: Backend) {
    let (_f, s) = b.store().await;
    let a1 = send(&s, put("d/a", b"a1", 0, "c", 0), b"a1").await.unwrap();
    let b1 = send(&s, put("d/b", b"b1", 0, "c", 0), b"b1").await.unwrap().seq;
    send(&s, put("e", b"e", 0, "c", 0), b"e").await.unwrap();
    let mid = s.head();
    let a2 = send(&s, put("d/a", b"a2", a1.seq, "c", 0), b"a2").await.unwrap().seq;
    let bd = s.commit_delete(NS, delete("d/b", b1, "c", 0)).await.unwrap().seq;
    send(&s, put("d/c", b"c", 0, "c", 0), b"c").await.unwrap();

    let at_mid = s.state_at(NS, "d", mid, None, 10).await.unwrap();
    assert_eq!(seqs_of(&at_mid), [a1.seq, b1], "d/c did not exist then, e is not below d");
    let now = s.state_at(NS, "d/", s.head(), None, 10).await.unwrap();
    assert_eq!(now.iter().map(|v| v.entry.path.as_str()).collect::<Vec<_>>(), ["d/a", "d/b", "d/c"]);
    assert_eq!(now[0].seq(), a2);
    assert!(now[1].is_deleted() && now[1].seq() == bd, "a deletion is listed as such");
    let paged = s.state_at(NS, "", s.head(), Some("d/a"), 2).await.unwrap();
    assert_eq!(paged.iter().map(|v| v.entry.path.as_str()).collect::<Vec<_>>(), ["d/b", "d/c"]);

    // Points.
    let t1 = a1.note().unwrap().committed_ms;
    assert!(matches!(s.point_seq(NS, &Point::AtMs(t1 - 1)).await, Err(Error::BeforeHistory(_))));
    assert!(s.point_seq(NS, &Point::AtMs(t1)).await.unwrap() >= a1.seq);
    assert_eq!(s.point_seq(NS, &Point::AtMs(i64::MAX)).await.unwrap(), s.head());
    assert_eq!(s.point_seq(NS, &Point::Version(mid)).await.unwrap(), mid);
    assert!(matches!(s.point_seq(NS, &Point::Label("none".into())).await, Err(Error::UnknownLabel(_))));
    s.set_label(NS, "mid", mid, "before the edits", &who("c")).await.unwrap();
    assert_eq!(s.point_seq(NS, &Point::Label("mid".into())).await.unwrap(), mid);
    let a_then = s.version_at(NS, &path("d/a"), &Point::Label("mid".into())).await.unwrap();
    assert_eq!(a_then.entry.content, a1.entry().unwrap().content);
    assert!(matches!(
        s.version_at(NS, &path("d/c"), &Point::Version(mid)).await,
        Err(Error::UnknownVersion(_))
    ));
    assert!(matches!(
        s.version_at(NS, &path("d/c"), &Point::Label("mid".into())).await,
        Err(Error::NotFound(_))
    ));
    // Another namespace's history is its own.
    assert!(s.state_at("other", "", s.head(), None, 10).await.unwrap().is_empty());
    assert!(matches!(
        s.version_at("other", &path("d/a"), &Point::Version(a2)).await,
        Err(Error::UnknownVersion(_))
    ));
}

/// A batch of 1,000 restores is one transaction: its changes take
/// consecutive seqs with one commit time, every one is broadcast, and one
/// refused write (not skipped) leaves everything as it was.
async fn a_thousand_restores_commit_as_one_transaction_and_are_all_broadcast(b: Backend) {
    let (_f, s) = b.store().await;
    let n = 1000;
    let mut deleted = Vec::new();
    for i in 0..n {
        let data = format!("content {i}");
        let p = format!("d/f{i:04}");
        let v = send(&s, put(&p, data.as_bytes(), 0, "c", 0), data.as_bytes()).await.unwrap().seq;
        s.commit_delete(NS, delete(&p, v, "c", 0)).await.unwrap();
        deleted.push((path(&p), v));
    }
    let restore = |(p, v): &(RelPath, u64)| {
        let s = s.clone();
        let (p, v) = (p.clone(), *v);
        async move {
            let to = s.version_at(NS, &p, &Point::Version(v)).await.unwrap();
            HistoryWrite { path: p, to: Some(to), base_version: None, lock_token: 0 }
        }
    };
    let mut writes = Vec::new();
    for d in &deleted {
        writes.push(restore(d).await);
    }
    // One write that cannot pass (a deletion of a path that never was):
    // without skipping, nothing of the batch is written.
    let head = s.head();
    let mut bad = writes.clone();
    bad.push(HistoryWrite { path: path("never"), to: None, base_version: None, lock_token: 0 });
    let batch = |writes, label: Option<&str>, skip_refused| HistoryBatch {
        who: who("r"),
        writes,
        label: label.map(str::to_owned),
        skip_refused,
    };
    let refused = s.commit_history(NS, batch(bad, Some("before-rewind"), false)).await;
    assert!(matches!(refused, Err(Error::NotFound(_))), "{refused:?}");
    assert_eq!(s.head(), head, "nothing was written");
    assert!(s.labels(NS).await.unwrap().is_empty(), "not even the label");

    let mut live = s.subscribe();
    let out = s.commit_history(NS, batch(writes, Some("before-rewind"), false)).await.unwrap();
    assert_eq!((out.changes.len(), out.skipped), (n, 0));
    let label = out.label.expect("the label is written first");
    assert_eq!((label.seq, label.automatic), (head, true));
    assert_eq!(s.head(), head + 1 + n as u64);
    let first = out.changes[0].seq;
    assert_eq!(first, head + 2, "the label's change comes first");
    let when = out.changes[0].note().unwrap().committed_ms;
    for (i, c) in out.changes.iter().enumerate() {
        assert_eq!(c.seq, first + i as u64, "consecutive seqs");
        let note = c.note().unwrap();
        assert_eq!(
            (note.kind, note.restored_from, note.committed_ms),
            (VersionKind::Restore, Some(deleted[i].1), when)
        );
    }
    // Every change is broadcast, the label's first.
    let label_change = live.recv().await.unwrap();
    assert!(!label_change.for_clients());
    for (i, (p, _)) in deleted.iter().enumerate() {
        let c = live.recv().await.unwrap();
        assert_eq!((c.seq, c.path()), (first + i as u64, Some(p)));
    }
    // Each file is back with its content, and its history tells how.
    let p = &deleted[7].0;
    let back = s.stat(NS, p).await.unwrap().unwrap();
    assert_eq!(back.content.unwrap().hash, ContentHash::of(b"content 7"));
    assert_eq!(
        kinds(&s.versions(NS, p, 0).await.unwrap()),
        [VersionKind::Restore, VersionKind::Delete, VersionKind::Write]
    );
    assert!(s.trash(NS, "d", 0, None, 10).await.unwrap().is_empty());
}

/// In a batch that skips refusals, a locked path and a stale base version
/// are skipped and counted; the rest is written. A batch of which nothing
/// passes writes nothing, not even its label.
async fn a_refused_write_in_a_skipping_batch_is_skipped_and_counted(b: Backend) {
    let (_f, s) = b.store().await;
    let a1 = send(&s, put("a", b"a1", 0, "c", 0), b"a1").await.unwrap().seq;
    let a2 = send(&s, put("a", b"a2", a1, "c", 0), b"a2").await.unwrap().seq;
    let b1 = send(&s, put("b", b"b1", 0, "c", 0), b"b1").await.unwrap().seq;
    send(&s, put("b", b"b2", b1, "c", 0), b"b2").await.unwrap();
    let c1 = send(&s, put("c", b"c1", 0, "c", 0), b"c1").await.unwrap().seq;
    send(&s, put("c", b"c2", c1, "c", 0), b"c2").await.unwrap();
    s.lock(NS, LockRequest { who: Actor::new("bob", "B"), ..request("b", "B", 60) }).await.unwrap();
    let old = |p: &str, v: u64| {
        let s = s.clone();
        let p = path(p);
        async move { s.version_at(NS, &p, &Point::Version(v)).await.unwrap() }
    };
    let writes = vec![
        HistoryWrite { path: path("a"), to: Some(old("a", a1).await), base_version: Some(a2), lock_token: 0 },
        HistoryWrite { path: path("b"), to: Some(old("b", b1).await), base_version: None, lock_token: 0 },
        HistoryWrite { path: path("c"), to: Some(old("c", c1).await), base_version: Some(c1), lock_token: 0 },
    ];
    let out = s
        .commit_history(
            NS,
            HistoryBatch { who: who("r"), writes: writes.clone(), label: None, skip_refused: true },
        )
        .await
        .unwrap();
    assert_eq!(out.skipped, 2, "b is locked by bob, c's base is stale");
    assert_eq!(out.changes.iter().map(|c| c.path().unwrap().as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(s.stat(NS, &path("a")).await.unwrap().unwrap().content.unwrap().hash, ContentHash::of(b"a1"));
    assert_eq!(s.stat(NS, &path("b")).await.unwrap().unwrap().content.unwrap().hash, ContentHash::of(b"b2"));
    let head = s.head();
    let none = s
        .commit_history(
            NS,
            HistoryBatch {
                who: who("r"),
                writes: writes[1..].to_vec(),
                label: Some("l".into()),
                skip_refused: true,
            },
        )
        .await
        .unwrap();
    assert_eq!((none.changes.len(), none.skipped, none.label), (0, 2, None));
    assert_eq!(s.head(), head);
    // Content only another namespace holds is not this one's to bring back.
    let theirs = send_to(&s, "other", put("t", b"theirs", 0, "c", 0), b"theirs").await;
    let stolen = s.version_at("other", &path("t"), &Point::Version(theirs.seq)).await.unwrap();
    let steal = HistoryWrite { path: path("t"), to: Some(stolen), base_version: None, lock_token: 0 };
    let refused = s
        .commit_history(
            NS,
            HistoryBatch { who: who("r"), writes: vec![steal], label: None, skip_refused: false },
        )
        .await;
    assert!(matches!(refused, Err(Error::UnknownContent(_))), "{refused:?}");
    assert!(s.stat(NS, &path("t")).await.unwrap().is_none());
    // Not skipping, the lock refuses the batch.
    let locked = s
        .commit_history(
            NS,
            HistoryBatch { who: who("r"), writes: writes[1..2].to_vec(), label: None, skip_refused: false },
        )
        .await;
    assert!(matches!(locked, Err(Error::Locked(_))), "{locked:?}");
}

/// Labels and pins are logged changes: they round-trip, survive a restart,
/// and reach a replica through the replicated batch; a label's name is
/// taken once.
async fn labels_and_pins_round_trip_and_replicate(b: Backend) {
    let (f, s) = b.store().await;
    let v1 = send(&s, put("a", b"a1", 0, "c", 0), b"a1").await.unwrap();
    let v2 = send(&s, put("a", b"a2", v1.seq, "c", 0), b"a2").await.unwrap().seq;
    let l = s.set_label(NS, "first", v1.seq, "n", &who("c")).await.unwrap();
    assert_eq!(
        (l.seq, l.committed_ms, l.principal.as_str(), l.automatic),
        (v1.seq, v1.note().unwrap().committed_ms, "alice", false)
    );
    assert!(matches!(s.set_label(NS, "first", v2, "", &who("c")).await, Err(Error::LabelExists(_))));
    assert!(matches!(s.set_label(NS, "", v2, "", &who("c")).await, Err(Error::InvalidField(_))));
    s.set_label(NS, "second", v2, "", &who("c")).await.unwrap();
    let pinned = s.pin(NS, &path("a"), v1.seq, true).await.unwrap();
    assert!(pinned.pinned);
    assert!(matches!(s.pin(NS, &path("a"), 999, true).await, Err(Error::UnknownVersion(_))));
    let s = f.open().await;
    let names = |ls: Vec<Label>| ls.into_iter().map(|l| l.name).collect::<Vec<_>>();
    assert_eq!(names(s.labels(NS).await.unwrap()), ["first", "second"]);
    assert!(s.versions(NS, &path("a"), 0).await.unwrap()[1].pinned);
    s.delete_label(NS, "first").await.unwrap();
    assert!(matches!(s.delete_label(NS, "first").await, Err(Error::UnknownLabel(_))));
    assert_eq!(names(s.labels(NS).await.unwrap()), ["second"]);
    s.pin(NS, &path("a"), v1.seq, false).await.unwrap();

    // The whole log, replayed on a replica, gives it the same history.
    let (_rf, r) = b.store().await;
    let log = s.changes_after(NS, 0, 100).await.unwrap();
    let batch = log.into_iter().map(|change| {
        let content_gone = change.entry().is_none_or(|e| e.content.is_none());
        super::Replicated { change, staged: None, content_gone }
    });
    let mut staged_batch = Vec::new();
    for mut r_change in batch {
        if let Some(c) = r_change.change.entry().and_then(|e| e.content) {
            let data = read_back(&s, &c.hash, c.size).await;
            r_change.staged = Some(stage(&r, &data).await);
        }
        staged_batch.push(r_change);
    }
    r.apply_replicated_batch(staged_batch).await.unwrap();
    assert_eq!(r.head(), s.head());
    assert_eq!(r.labels(NS).await.unwrap(), s.labels(NS).await.unwrap());
    assert_eq!(r.versions(NS, &path("a"), 0).await.unwrap(), s.versions(NS, &path("a"), 0).await.unwrap());

    // A full resync brings the same history: the manifest, then every
    // version (with its content once), the labels and the retention.
    let retention = super::retention::Retention { keep_last: 3, ..Default::default() };
    s.set_retention(NS, retention).await.unwrap();
    let (_nf, n) = b.store().await;
    send(&n, put("stale", b"stale", 0, "c", 0), b"stale").await.unwrap();
    n.snapshot_begin().await.unwrap();
    let mut sent = std::collections::HashSet::new();
    for (ns, e) in s.manifest_page(None, 100).await.unwrap() {
        let data = read_back(&s, &e.content.unwrap().hash, e.content.unwrap().size).await;
        sent.insert(e.content.unwrap().hash);
        n.snapshot_put(&ns, &e, Some(stage(&n, &data).await), false).await.unwrap();
    }
    for v in s.versions_page(NS, None, 100).await.unwrap() {
        let c = v.entry.content.unwrap();
        let staged = match sent.insert(c.hash) {
            true => Some(stage(&n, &read_back(&s, &c.hash, c.size).await).await),
            false => None,
        };
        let content_gone = staged.is_none();
        n.snapshot_put_version(NS, v, staged, content_gone).await.unwrap();
    }
    for l in s.labels(NS).await.unwrap() {
        n.snapshot_put_history(NS, HistoryChange::LabelSet(l)).await.unwrap();
    }
    n.snapshot_put_history(NS, HistoryChange::Retention(retention)).await.unwrap();
    n.snapshot_end(s.head()).await.unwrap();
    assert_eq!(n.versions_page(NS, None, 100).await.unwrap(), s.versions_page(NS, None, 100).await.unwrap());
    assert_eq!(n.labels(NS).await.unwrap(), s.labels(NS).await.unwrap());
    assert_eq!(n.retentions().await.unwrap(), vec![(NS.to_owned(), retention)]);
    assert_eq!(read_back(&n, &ContentHash::of(b"a1"), 2).await, b"a1", "an old version's content came along");
    assert!(!stored(&n).await.contains(&ContentHash::of(b"stale")), "what the snapshot dropped goes");
}

/// A transaction's `decide_each` decides every item on facts that see the
/// writes of the items before it, also when a backend fetches many items'
/// facts at once: a file above, a file below, the same path again, a move's
/// source, content the namespace came to refer to, across more items than
/// one fetch takes.
async fn listings_page_under_a_prefix_without_its_look_alikes(b: Backend) {
    let (_f, s) = b.store().await;
    for p in ["a", "a.txt", "a-b/x", "a/1", "a/2", "a/3", "a0", "b"] {
        // "a" is a file and a folder's name at once only across namespaces;
        // here "a" is written in another namespace's stead.
        let ns = if p == "a" { "other" } else { NS };
        send_to(&s, ns, put(p, p.as_bytes(), 0, "c", 0), p.as_bytes()).await;
    }
    let page = |prefix: &'static str, after: Option<&'static str>| {
        let s = s.clone();
        async move {
            s.list_page(NS, prefix, after, false, 2)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.path.as_str().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page("a", None).await, ["a/1", "a/2"]);
    assert_eq!(page("a", Some("a/2")).await, ["a/3"]);
    assert!(page("a", Some("a/3")).await.is_empty());
    // A cursor before the folder's paths (its own name, a look-alike).
    assert_eq!(page("a", Some("a")).await, ["a/1", "a/2"]);
    assert_eq!(page("a", Some("a.txt")).await, ["a/1", "a/2"]);
    assert_eq!(page("a.txt", None).await, ["a.txt"]);
    assert_eq!(page("", Some("a/3")).await, ["a0", "b"]);
    assert_eq!(page("", None).await, ["a-b/x", "a.txt"]);
}

/// A one-level listing: a folder's own entries and its subfolders (with an
/// entry or made up), in path order, paged by its cursors without a gap or
/// a repeat, whatever the page size; nothing below a subfolder, of another
/// namespace, or deleted (unless asked).
async fn a_folder_lists_one_level_paged_by_its_cursors(b: Backend) {
    let (_f, s) = b.store().await;
    let mkdir = |p: &'static str| {
        let s = s.clone();
        async move {
            let mut folder = put(p, b"", 0, "c", 0);
            folder.content.folder = true;
            s.commit_put(NS, folder, Some(stage(&s, b"").await)).await.unwrap();
        }
    };
    mkdir("d").await;
    mkdir("d/sub").await;
    let mut files: Vec<String> =
        ["d/a", "d/big.zip", "d/gone", "d/sub.txt", "d/sub/1", "d/sub/2", "d/z", "e"]
            .map(String::from)
            .to_vec();
    files.extend((0..40).map(|i| format!("d/big/{i:02}")));
    files.push("d/big/deep/x".into());
    for p in &files {
        send(&s, put(p, p.as_bytes(), 0, "c", 0), p.as_bytes()).await.unwrap();
    }
    send_to(&s, "other", put("d/q", b"q", 0, "c", 0), b"q").await;
    let v = s.stat(NS, &path("d/gone")).await.unwrap().unwrap().version;
    s.commit_delete(NS, delete("d/gone", v, "c", 0)).await.unwrap();

    let walk = |dir: &'static str, deleted: bool, limit: usize| {
        let s = s.clone();
        async move {
            let (mut seen, mut after) = (Vec::new(), None::<String>);
            loop {
                let page = s.list_level(NS, dir, after.as_deref(), deleted, limit).await.unwrap();
                assert!(page.len() <= limit);
                let Some((_, last)) = page.last() else { break };
                after = Some(last.clone());
                seen.extend(page.into_iter().map(|(e, _)| {
                    let folder = e.content.is_some_and(|c| c.folder);
                    format!("{}{}", e.path.as_str(), if folder { "/" } else { "" })
                }));
            }
            seen
        }
    };
    // "d/big" has no entry: made up where its first path is, after
    // "d/big.zip"; "d/sub" has one, and is listed there.
    let level = ["d/a", "d/big.zip", "d/big/", "d/sub/", "d/sub.txt", "d/z"];
    for limit in [1, 2, 3, 100] {
        assert_eq!(walk("d", false, limit).await, level, "pages of {limit}");
    }
    let with_deleted = ["d/a", "d/big.zip", "d/big/", "d/gone", "d/sub/", "d/sub.txt", "d/z"];
    assert_eq!(walk("d", true, 2).await, with_deleted);
    assert_eq!(walk("", false, 1).await, ["d/", "e"]);
    assert_eq!(walk("d/big", false, 100).await.len(), 41);
    assert_eq!(walk("d/big/deep", false, 100).await, ["d/big/deep/x"]);
    assert!(walk("d/nothing", false, 10).await.is_empty());
    let made_up = s.list_level(NS, "d", Some("d/big.zip"), false, 1).await.unwrap();
    assert_eq!((made_up[0].0.path.as_str(), made_up[0].0.version), ("d/big", 0));
}

async fn share_links_are_kept_listed_per_namespace_and_revoked_in_place(b: Backend) {
    let f = b.fixture(StoreOptions::default()).await;
    let link = |id: &str, ns: &str, created_ms: i64| super::Share {
        id: id.into(),
        namespace: ns.into(),
        path: "docs/report.txt".into(),
        folder: false,
        created_by: "alice".into(),
        created_ms,
        expires_ms: 5_000,
        password: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        revoked_ms: 0,
    };
    {
        let s = f.open().await;
        s.put_share(link("a1", NS, 1_000)).await.unwrap();
        s.put_share(link("a2", NS, 2_000)).await.unwrap();
        s.put_share(super::Share { folder: true, path: "docs".into(), ..link("b1", "other", 3_000) })
            .await
            .unwrap();
    }
    // Kept across a restart, newest first, each namespace its own.
    let s = f.open().await;
    let ids = |v: Vec<super::Share>| v.into_iter().map(|l| l.id).collect::<Vec<_>>();
    assert_eq!(ids(s.shares(NS).await.unwrap()), ["a2", "a1"]);
    assert_eq!(s.share("a1").await.unwrap(), Some(link("a1", NS, 1_000)));
    assert!(s.share("b1").await.unwrap().is_some_and(|l| l.folder && l.namespace == "other"));
    assert_eq!(s.share("nope").await.unwrap(), None);
    // Another namespace cannot revoke a link; revoking twice keeps the
    // first time.
    assert!(!s.revoke_share("other", "a1", 4_000).await.unwrap());
    assert!(s.share("a1").await.unwrap().unwrap().live_at(4_000));
    assert!(s.revoke_share(NS, "a1", 4_000).await.unwrap());
    assert!(s.revoke_share(NS, "a1", 4_500).await.unwrap());
    let revoked = s.share("a1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_ms, 4_000);
    assert!(!revoked.live_at(4_001));
    assert!(!s.revoke_share(NS, "nope", 4_000).await.unwrap());
    // Expiry: live before it, not at it.
    let a2 = s.share("a2").await.unwrap().unwrap();
    assert!(a2.live_at(4_999) && !a2.live_at(5_000));
}

async fn each_decision_sees_the_writes_decided_before_it(b: Backend) {
    use super::meta::{Decide, Facts, Want};
    let f = b.fixture(StoreOptions::default()).await;
    let file = |p: &str, seq: u64, data: &str| {
        let entry = syncstore::Entry {
            path: path(p),
            version: seq,
            content: Some(Content { mtime_ns: 1, ..content(data.as_bytes()) }),
            client_id: "c".into(),
        };
        let note = super::VersionNote::plain(&entry, "p", 1_000);
        Change::file(NS, entry, note)
    };
    // (path, what the item asks for, whether it is written, its content)
    let clash = || Want { clash: Some(false), ..Want::default() };
    let mut plan: Vec<(String, Want, bool, String)> = vec![
        ("a".into(), clash(), true, "a".into()),
        ("a/b".into(), clash(), false, String::new()),
        ("c".into(), clash(), true, "c1".into()),
        ("c".into(), clash(), true, "c2".into()),
        ("d/e".into(), clash(), true, "e".into()),
        ("d".into(), clash(), false, String::new()),
        ("m".into(), Want { moved_from: Some(path("c")), ..clash() }, false, String::new()),
        ("r".into(), Want { refers: Some(ContentHash::of(b"e")), ..clash() }, false, String::new()),
    ];
    // Past the first fetch of many: fillers, then "c" once more.
    for i in 0..100 {
        plan.push((format!("filler/{i}"), clash(), true, format!("x{i}")));
    }
    plan.push(("c".into(), clash(), true, "c3".into()));
    let seen: Arc<std::sync::Mutex<Vec<Facts>>> = Arc::default();
    let (out, todo) = (seen.clone(), plan.clone());
    let mut seq = 0;
    let decide: Decide = Box::new(move |i, facts| {
        out.lock().unwrap().push(facts);
        let (p, _, write, data) = &todo[i];
        write.then(|| {
            seq += 1;
            (file(p, seq, data), None)
        })
    });
    let mut tx = f.meta.begin();
    let _ = tx.claim_head().await.unwrap();
    tx.decide_each(
        plan.iter().map(|(p, want, _, _)| (NS.to_owned(), path(p), want.clone())).collect(),
        decide,
    );
    tx.commit().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), plan.len(), "every item was decided");
    let version = |i: usize| seen[i].current.as_ref().map(|e| e.version);
    assert_eq!(seen[1].file_above.as_deref(), Some("a"), "the file written above");
    assert_eq!(version(3), Some(2), "the same path, written just before");
    assert_eq!(seen[5].live_below.as_deref(), Some("d/e"), "the file written below");
    assert_eq!(seen[6].moved_from_hash, Some(ContentHash::of(b"c2")), "a move's source as written");
    assert!(seen[7].refers, "content the namespace came to refer to");
    let last = plan.len() - 1;
    assert_eq!(version(last), Some(3), "the same path after a full fetch of others");
    assert_eq!(seen[last].current.as_ref().unwrap().content.unwrap().hash, ContentHash::of(b"c2"));
}

/// Instantiates every suite test for each backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Embedded).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await
                }
            )*
        }
    };
}

/// Instantiates suite tests over the shared metadata (PostgreSQL).
macro_rules! suite_postgres {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await
                }
            )*
        }
    };
}

/// Instantiates suite tests over the whole shared backend (PostgreSQL and
/// the bucket).
macro_rules! suite_shared {
    ($($name:ident),* $(,)?) => {
        mod shared {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::Backend::Shared).await
                }
            )*
        }
    };
}

suite!(
    listings_page_under_a_prefix_without_its_look_alikes,
    a_folder_lists_one_level_paged_by_its_cursors,
    share_links_are_kept_listed_per_namespace_and_revoked_in_place,
    each_decision_sees_the_writes_decided_before_it,
    racing_puts_get_gap_free_seqs_and_one_winner_per_path,
    refused_and_abandoned_uploads_leave_no_content,
    a_lock_admits_only_its_holder_with_its_token,
    a_lock_is_bound_to_its_principal_and_client_together,
    lock_listings_page_in_path_order_under_a_prefix,
    locks_expire_survive_a_restart_and_reserve_missing_names,
    the_change_feed_replays_after_a_cursor,
    the_path_clash_rule_holds,
    deletions_leave_tombstones,
    only_the_very_same_write_is_recognised_as_a_retry,
    a_creation_whose_history_was_trimmed_is_not_recognised,
    the_identity_is_created_once_and_kept_across_a_restart,
    only_a_store_that_holds_nothing_adopts_another_history,
    replicated_changes_and_snapshots_apply_in_order,
    replaced_content_goes_once_its_grace_has_passed,
    large_files_store_shared_chunks_once_and_lose_only_their_own,
    a_chunk_an_upload_holds_survives_a_concurrent_removal,
    chunked_content_survives_restarts_replication_and_snapshots,
    large_content_stored_whole_by_an_earlier_release_keeps_working,
    every_write_keeps_a_version_and_its_content_until_a_prune,
    history_follows_a_move,
    state_at_a_point_is_each_paths_newest_version_then,
    a_thousand_restores_commit_as_one_transaction_and_are_all_broadcast,
    a_refused_write_in_a_skipping_batch_is_skipped_and_counted,
    labels_and_pins_round_trip_and_replicate,
);

// The whole suite but the snapshot parts of replication: processes over
// one shared database never receive a full resync through the journal
// (`snapshots()` is `None`).
suite_postgres!(
    listings_page_under_a_prefix_without_its_look_alikes,
    a_folder_lists_one_level_paged_by_its_cursors,
    share_links_are_kept_listed_per_namespace_and_revoked_in_place,
    each_decision_sees_the_writes_decided_before_it,
    racing_puts_get_gap_free_seqs_and_one_winner_per_path,
    refused_and_abandoned_uploads_leave_no_content,
    a_lock_admits_only_its_holder_with_its_token,
    a_lock_is_bound_to_its_principal_and_client_together,
    lock_listings_page_in_path_order_under_a_prefix,
    locks_expire_survive_a_restart_and_reserve_missing_names,
    the_change_feed_replays_after_a_cursor,
    the_path_clash_rule_holds,
    deletions_leave_tombstones,
    only_the_very_same_write_is_recognised_as_a_retry,
    a_creation_whose_history_was_trimmed_is_not_recognised,
    the_identity_is_created_once_and_kept_across_a_restart,
    only_a_store_that_holds_nothing_adopts_another_history,
    replaced_content_goes_once_its_grace_has_passed,
    large_files_store_shared_chunks_once_and_lose_only_their_own,
    a_chunk_an_upload_holds_survives_a_concurrent_removal,
    large_content_stored_whole_by_an_earlier_release_keeps_working,
    every_write_keeps_a_version_and_its_content_until_a_prune,
    history_follows_a_move,
    state_at_a_point_is_each_paths_newest_version_then,
    a_thousand_restores_commit_as_one_transaction_and_are_all_broadcast,
    a_refused_write_in_a_skipping_batch_is_skipped_and_counted,
);

// As over the shared metadata alone, and without large content stored
// whole: no earlier release wrote to a bucket, and the bucket takes at most
// one chunk's worth of content whole.
suite_shared!(
    listings_page_under_a_prefix_without_its_look_alikes,
    a_folder_lists_one_level_paged_by_its_cursors,
    share_links_are_kept_listed_per_namespace_and_revoked_in_place,
    racing_puts_get_gap_free_seqs_and_one_winner_per_path,
    refused_and_abandoned_uploads_leave_no_content,
    a_lock_admits_only_its_holder_with_its_token,
    a_lock_is_bound_to_its_principal_and_client_together,
    lock_listings_page_in_path_order_under_a_prefix,
    locks_expire_survive_a_restart_and_reserve_missing_names,
    the_change_feed_replays_after_a_cursor,
    the_path_clash_rule_holds,
    deletions_leave_tombstones,
    only_the_very_same_write_is_recognised_as_a_retry,
    a_creation_whose_history_was_trimmed_is_not_recognised,
    the_identity_is_created_once_and_kept_across_a_restart,
    only_a_store_that_holds_nothing_adopts_another_history,
    replaced_content_goes_once_its_grace_has_passed,
    large_files_store_shared_chunks_once_and_lose_only_their_own,
    a_chunk_an_upload_holds_survives_a_concurrent_removal,
    every_write_keeps_a_version_and_its_content_until_a_prune,
    history_follows_a_move,
    state_at_a_point_is_each_paths_newest_version_then,
    a_thousand_restores_commit_as_one_transaction_and_are_all_broadcast,
    a_refused_write_in_a_skipping_batch_is_skipped_and_counted,
);

/// A large content's upload and read ask for as many chunks at once as
/// the content store wants written and read in flight (an object store's
/// PUT and GET cost a round trip per chunk), and the content still reads
/// back exactly, in order.
#[tokio::test]
async fn chunked_writes_and_reads_keep_the_stores_chunks_in_flight() {
    for (writes, reads) in [(1, 1), (8, 12), (6, 3)] {
        let content = MemoryContent::with_chunks_in_flight(writes, reads);
        let meta = Arc::new(MemoryMeta::new());
        let s = Store::with_backends(meta, Arc::new(content.clone()), StoreOptions::default()).await.unwrap();
        let data = noise(3 * 1024 * 1024, "ahead");
        send(&s, put("big", &data, 0, "c", 0), &data).await.unwrap();
        // Every chunk the recipe names was written by the commit.
        let recipe = s.recipe(&ContentHash::of(&data)).await.unwrap().unwrap();
        let have = stored(&s).await;
        assert!(recipe.list.iter().all(|c| have.contains(&c.hash)), "every chunk of the recipe is stored");
        assert_eq!(content.most_writes_at_once(), writes, "writes in flight at once, {writes} wanted");
        assert_eq!(read_back(&s, &ContentHash::of(&data), data.len() as u64).await, data);
        assert_eq!(content.most_reads_at_once(), reads, "reads in flight at once, {reads} wanted");
    }
}

/// The embedded backend's own: a small blob is synced (one `syncfs`) before
/// its commit, a large or known one is not; a data folder takes one server.
mod embedded_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_blob_is_synced_before_its_commit_and_a_large_or_known_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobDir::open(dir.path()).await.unwrap();
        let meta = Arc::new(SqliteMeta::open(dir.path()).await.unwrap());
        let s = Store::with_backends(meta, Arc::new(blobs.clone()), StoreOptions::default()).await.unwrap();
        let syncs_for = |p: &'static str, data: Vec<u8>, send_it: bool| {
            let (s, blobs) = (s.clone(), blobs.clone());
            async move {
                let staged = if send_it { Some(stage(&s, &data).await) } else { None };
                let before = blobs.sync_count();
                s.commit_put(NS, put(p, &data, 0, "c", 0), staged).await.unwrap();
                blobs.sync_count() - before
            }
        };
        let linux = u64::from(cfg!(target_os = "linux"));
        assert_eq!(syncs_for("small", b"small".to_vec(), true).await, linux, "one sync before the commit");
        assert_eq!(syncs_for("copy", b"small".to_vec(), false).await, 0, "reused content is durable already");
        let large = vec![1u8; super::super::blobdir::DEFER_SYNC_MAX as usize + 1];
        assert_eq!(syncs_for("large", large, true).await, 0, "a large blob was fsynced on its own");
    }

    #[tokio::test]
    async fn a_data_folder_takes_one_server_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let second = Store::open(dir.path(), StoreOptions::default()).await;
        assert!(matches!(second, Err(Error::FailedPrecondition(m)) if m.contains("another sync-server")));
        drop(first);
        Store::open(dir.path(), StoreOptions::default()).await.unwrap();
    }
}
