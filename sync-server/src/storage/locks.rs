//! Locks: granted, refreshed, released and expired as changes in the log
//! (so that `Subscribe` and replication carry them in order with file
//! changes), and kept live in the `locks` table, which writes are checked
//! against in the same transaction as their commit.
//!
//! Invariants:
//! - A path has at most one lock row. A row past its expiry is no longer in
//!   force for any check, whether or not the sweeper has removed it yet.
//! - A lock's token is the sequence number of the change that granted it,
//!   so tokens only grow, on the primary and on a promoted replica alike.
//! - A lock belongs to its holder: the principal (token name) and the
//!   client id that took it. A write to a locked path passes only from its
//!   holder with the lock's current token, and only its holder refreshes or
//!   releases it; a write that carries a token when the path
//!   holds no lock with that token is refused (fencing).

use std::sync::LazyLock;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use syncstore::{Lock, RelPath};

use super::{Change, Store, What, now_ms, rules};
use crate::error::{Error, Result};

/// Why a lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEnd {
    Released,
    Expired,
    Broken,
}

/// Who makes a write or a lock change: the caller's principal (the name of
/// its token, "anonymous" on a server without tokens) and the client id it
/// sent. Together they name a lock's holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    pub client_id: String,
}

impl Actor {
    pub fn new(principal: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self { principal: principal.into(), client_id: client_id.into() }
    }

    /// Whether this is the holder of `lock`. A lock stored before locks
    /// recorded their principal (an empty one) is held by its client id
    /// alone, until it ends.
    pub fn holds(&self, lock: &Lock) -> bool {
        lock.client_id == self.client_id && (lock.principal.is_empty() || lock.principal == self.principal)
    }
}

/// The change log's `kind` of a lock grant or refresh: the store's own
/// code, fixed on disk since schema version 6 (a file change is 0).
pub(super) const KIND_LOCK: i64 = 1;
/// The change log's `kind` of a lock's end.
pub(super) const KIND_UNLOCK: i64 = 2;

/// The change log's `lock_end` of a lock its holder released.
const END_RELEASED: i64 = 1;
/// The change log's `lock_end` of a lock that was not refreshed in time.
const END_EXPIRED: i64 = 2;
/// The change log's `lock_end` of a lock someone else broke.
const END_BROKEN: i64 = 3;

/// The change log's columns that hold a lock change, besides its `kind` and
/// `path`, in the order of [`lock_change_columns`]'s values. The ended-by
/// pair is set for an end only (empty for an expiry, which no one made).
pub(super) const LOCK_CHANGE_COLUMNS: [&str; 12] = [
    "lock_id",
    "lock_client_id",
    "lock_principal",
    "lock_holder",
    "lock_note",
    "lock_acquired_ms",
    "lock_expires_ms",
    "lock_ttl_seconds",
    "lock_token",
    "lock_end",
    "lock_ended_by_client_id",
    "lock_ended_by_principal",
];

/// How the change log lays out a lock change: its `kind`, and the values of
/// [`LOCK_CHANGE_COLUMNS`]. The one layout, for writing a change and for
/// the migration that brought older logs to it.
pub(super) fn lock_change_columns(what: &What) -> (i64, [Value; LOCK_CHANGE_COLUMNS.len()]) {
    let (kind, lock, end) = match what {
        What::Lock(l) => (KIND_LOCK, l, None),
        What::Unlock { lock, ended, by } => {
            let code = match ended {
                LockEnd::Released => END_RELEASED,
                LockEnd::Expired => END_EXPIRED,
                LockEnd::Broken => END_BROKEN,
            };
            (KIND_UNLOCK, lock, Some((code, by)))
        }
        What::File(_) => unreachable!("not a lock change"),
    };
    let text = |s: &str| Value::Text(s.to_owned());
    let values = [
        text(&lock.lock_id),
        text(&lock.client_id),
        text(&lock.principal),
        text(&lock.holder),
        text(&lock.note),
        Value::Integer(lock.acquired_ms),
        Value::Integer(lock.expires_ms),
        Value::Integer(lock.ttl_seconds.into()),
        Value::Integer(lock.token as i64),
        end.map_or(Value::Null, |(code, _)| Value::Integer(code)),
        end.map_or(Value::Null, |(_, by)| text(&by.client_id)),
        end.map_or(Value::Null, |(_, by)| text(&by.principal)),
    ];
    (kind, values)
}

/// Decodes a lock change from a change-log row that has the columns `seq`,
/// `namespace`, `path`, `kind` and [`LOCK_CHANGE_COLUMNS`] (read by name).
/// The outer result is SQLite's, the inner one a row whose stored values no
/// longer make a lock change.
pub(super) fn lock_change_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Change>> {
    let seq = r.get::<_, i64>("seq")? as u64;
    let namespace: String = r.get("namespace")?;
    let kind: i64 = r.get("kind")?;
    let path: String = r.get("path")?;
    let token: i64 = r.get("lock_token")?;
    let end: Option<i64> = r.get("lock_end")?;
    let by = Actor::new(
        r.get::<_, Option<String>>("lock_ended_by_principal")?.unwrap_or_default(),
        r.get::<_, Option<String>>("lock_ended_by_client_id")?.unwrap_or_default(),
    );
    let lock = Lock {
        lock_id: r.get("lock_id")?,
        path: match RelPath::new(path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Error::Internal(format!("change {seq}: a stored lock's path: {e}")))),
        },
        client_id: r.get("lock_client_id")?,
        principal: r.get("lock_principal")?,
        holder: r.get("lock_holder")?,
        note: r.get("lock_note")?,
        acquired_ms: r.get("lock_acquired_ms")?,
        expires_ms: r.get("lock_expires_ms")?,
        ttl_seconds: r.get("lock_ttl_seconds")?,
        token: token as u64,
    };
    let what = match (kind, end) {
        (KIND_LOCK, None) => What::Lock(lock),
        (KIND_UNLOCK, Some(END_RELEASED)) => What::Unlock { lock, ended: LockEnd::Released, by },
        (KIND_UNLOCK, Some(END_EXPIRED)) => What::Unlock { lock, ended: LockEnd::Expired, by },
        (KIND_UNLOCK, Some(END_BROKEN)) => What::Unlock { lock, ended: LockEnd::Broken, by },
        _ => {
            return Ok(Err(Error::Internal(format!(
                "change {seq}: a lock change of kind {kind} with end {end:?}"
            ))));
        }
    };
    Ok(Ok(Change { seq, namespace, what }))
}

/// `INSERT INTO changes` of a lock change: seq, namespace, path, client id
/// and commit time (?1 to ?5), then `kind` and [`LOCK_CHANGE_COLUMNS`].
static INSERT_LOCK_CHANGE: LazyLock<String> = LazyLock::new(|| {
    let columns = LOCK_CHANGE_COLUMNS.join(", ");
    let values: Vec<String> = (7..7 + LOCK_CHANGE_COLUMNS.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                              committed_ms, kind, {columns})
         VALUES (?1, ?2, ?3, 0, 0, NULL, 0, 0, ?4, ?5, ?6, {})",
        values.join(", ")
    )
});

/// Appends a lock change to the log and applies it to the `locks` table.
pub(super) fn write_lock_change(c: &Connection, change: &Change) -> Result<()> {
    let (kind, values) = lock_change_columns(&change.what);
    let head = [
        Value::Integer(change.seq as i64),
        Value::Text(change.namespace.clone()),
        Value::Text(change.path().as_str().to_owned()),
        Value::Text(change.client_id().to_owned()),
        Value::Integer(now_ms()),
        Value::Integer(kind),
    ];
    c.prepare_cached(&INSERT_LOCK_CHANGE)?.execute(params_from_iter(head.into_iter().chain(values)))?;
    match &change.what {
        What::Lock(l) => put_lock(c, &change.namespace, l)?,
        What::Unlock { lock, .. } => {
            c.prepare_cached("DELETE FROM locks WHERE namespace = ?1 AND lock_id = ?2")?
                .execute(params![change.namespace, lock.lock_id])?;
        }
        What::File(_) => unreachable!("not a lock change"),
    }
    Ok(())
}

fn put_lock(c: &Connection, ns: &str, l: &Lock) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO locks (namespace, path, lock_id, client_id, holder, note, acquired_ms, expires_ms,
                            ttl_seconds, token, principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (namespace, path) DO UPDATE SET
           lock_id = excluded.lock_id, client_id = excluded.client_id, holder = excluded.holder,
           note = excluded.note, acquired_ms = excluded.acquired_ms, expires_ms = excluded.expires_ms,
           ttl_seconds = excluded.ttl_seconds, token = excluded.token, principal = excluded.principal",
    )?
    .execute(params![
        ns,
        l.path.as_str(),
        l.lock_id,
        l.client_id,
        l.holder,
        l.note,
        l.acquired_ms,
        l.expires_ms,
        l.ttl_seconds,
        l.token as i64,
        l.principal
    ])?;
    Ok(())
}

const LOCK_COLUMNS: &str = "path, lock_id, client_id, holder, note, acquired_ms, expires_ms, ttl_seconds, token, namespace, principal";

fn lock_from_row(r: &Row<'_>) -> rusqlite::Result<Result<(String, Lock)>> {
    let path: String = r.get(0)?;
    let token: i64 = r.get(8)?;
    let ns: String = r.get(9)?;
    let lock = Lock {
        lock_id: r.get(1)?,
        path: match RelPath::new(path) {
            Ok(p) => p,
            Err(e) => return Ok(Err(Error::Internal(format!("a stored lock's path: {e}")))),
        },
        client_id: r.get(2)?,
        principal: r.get(10)?,
        holder: r.get(3)?,
        note: r.get(4)?,
        acquired_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        ttl_seconds: r.get(7)?,
        token: token as u64,
    };
    Ok(Ok((ns, lock)))
}

/// The lock row of `path` (live or past its expiry), if any.
pub(super) fn get_lock(c: &Connection, ns: &str, path: &RelPath) -> Result<Option<Lock>> {
    c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE namespace = ?1 AND path = ?2"))?
        .query_row(params![ns, path.as_str()], lock_from_row)
        .optional()?
        .transpose()
        .map(|o| o.map(|(_, l)| l))
}

fn get_lock_by_id(c: &Connection, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
    c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE namespace = ?1 AND lock_id = ?2"))?
        .query_row(params![ns, lock_id], lock_from_row)
        .optional()?
        .transpose()
        .map(|o| o.map(|(_, l)| l))
}

/// Checks, against the path's lock row, that a write of `path` by `who`
/// carrying `token` may pass ([`rules::check_write`]).
pub(super) fn check_write(
    c: &Connection,
    ns: &str,
    path: &RelPath,
    who: &Actor,
    token: u64,
    now: i64,
) -> Result<()> {
    rules::check_write(path, get_lock(c, ns, path)?.as_ref(), who, token, now)
}

/// What a `Lock` call asks for.
#[derive(Debug, Clone)]
pub(crate) struct LockRequest {
    pub(crate) path: RelPath,
    pub(crate) ttl_seconds: u32,
    pub(crate) note: String,
    pub(crate) who: Actor,
    pub(crate) holder: String,
}

impl Store {
    /// Grants a lock on a path (or refreshes the caller's own).
    pub(crate) fn lock(&self, ns: &str, req: LockRequest) -> Result<Change> {
        let ttl_seconds = rules::lock_ttl(req.ttl_seconds)?;
        let now = now_ms();
        self.commit_lock_change(|c, seq| {
            let current = get_lock(c, ns, &req.path)?;
            let lock = rules::grant_lock(current, req, ttl_seconds, now, seq, || {
                format!("{:016x}", rand::random::<u64>())
            })?;
            Ok(Change { seq, namespace: ns.to_owned(), what: What::Lock(lock) })
        })
    }

    /// Pushes a live lock's expiry to now + ttl; only its holder may.
    pub(crate) fn refresh_lock(
        &self,
        ns: &str,
        lock_id: &str,
        who: &Actor,
        ttl_seconds: u32,
    ) -> Result<Change> {
        let ttl_seconds = rules::lock_ttl(ttl_seconds)?;
        let now = now_ms();
        self.commit_lock_change(|c, seq| {
            let current = get_lock_by_id(c, ns, lock_id)?;
            let lock = rules::refresh_lock(lock_id, current, who, ttl_seconds, now)?;
            Ok(Change { seq, namespace: ns.to_owned(), what: What::Lock(lock) })
        })
    }

    /// Releases a lock; someone else's only with `force` (whether the caller
    /// may use it is checked before).
    pub(crate) fn unlock(&self, ns: &str, lock_id: &str, who: &Actor, force: bool) -> Result<Change> {
        let now = now_ms();
        self.commit_lock_change(|c, seq| {
            let current = get_lock_by_id(c, ns, lock_id)?;
            let ended = rules::end_lock(lock_id, current.as_ref(), who, force, now)?;
            let lock = current.expect("a lock that ends exists");
            Ok(Change { seq, namespace: ns.to_owned(), what: What::Unlock { lock, ended, by: who.clone() } })
        })
    }

    /// Ends every lock past its expiry (all namespaces), one unlock change
    /// each, in one transaction.
    pub(crate) fn expire_locks(&self, now: i64) -> Result<Vec<Change>> {
        let mut w = self.writer();
        let expired: Vec<(String, Lock)> = {
            let mut stmt =
                w.conn.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE expires_ms <= ?1"))?;
            let rows = stmt.query_map([now], lock_from_row)?;
            rows.map(|r| r?).collect::<Result<_>>()?
        };
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let first = w.head + 1;
        let tx = w.conn.transaction()?;
        let mut changes = Vec::with_capacity(expired.len());
        for (seq, (namespace, lock)) in (first..).zip(expired) {
            let change = Change {
                seq,
                namespace,
                what: What::Unlock { lock, ended: LockEnd::Expired, by: Actor::default() },
            };
            write_lock_change(&tx, &change)?;
            changes.push(change);
        }
        tx.commit()?;
        Ok(changes.into_iter().map(|c| self.after_commit(&mut w, c, None)).collect())
    }

    /// Commits the lock change `make` builds (from the connection, inside
    /// the transaction, and the change's seq).
    fn commit_lock_change(&self, make: impl FnOnce(&Connection, u64) -> Result<Change>) -> Result<Change> {
        let mut w = self.writer();
        let seq = w.head + 1;
        let tx = w.conn.transaction()?;
        let change = make(&tx, seq)?;
        write_lock_change(&tx, &change)?;
        tx.commit()?;
        Ok(self.after_commit(&mut w, change, None))
    }

    /// The live locks of namespace `ns` on `prefix` or below, in path order.
    pub fn list_locks(&self, ns: &str, prefix: &str) -> Result<Vec<Lock>> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map(|l: &Lock| l.path.as_str().to_owned());
            let page = self.list_locks_page(ns, prefix, after.as_deref(), super::PAGE_SIZE)?;
            let last = page.len() < super::PAGE_SIZE;
            out.extend(page);
            if last {
                return Ok(out);
            }
        }
    }

    /// Up to `limit` live locks of namespace `ns` on `prefix` or below, in
    /// path order, after the path `after` (from the start if `None`).
    pub fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Lock>> {
        let now = now_ms();
        // A folder's paths are those from "prefix/" up to "prefix0" ('/' + 1).
        let rows: Vec<(String, Lock)> = self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LOCK_COLUMNS} FROM locks
                 WHERE namespace = ?1 AND expires_ms > ?2 AND (?3 IS NULL OR path > ?3)
                   AND (?4 = '' OR path = ?4 OR (path >= ?4 || '/' AND path < ?4 || '0'))
                 ORDER BY path LIMIT ?5"
            ))?;
            let rows = stmt.query_map(params![ns, now, after, prefix, limit as i64], lock_from_row)?;
            rows.map(|r| r?).collect()
        })?;
        Ok(rows.into_iter().map(|(_, l)| l).collect())
    }

    /// Every lock row (all namespaces), for a resync's snapshot.
    pub(crate) fn all_locks(&self) -> Result<Vec<(String, Lock)>> {
        self.read(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks ORDER BY namespace, path"))?;
            let rows = stmt.query_map([], lock_from_row)?;
            rows.map(|r| r?).collect()
        })
    }

    /// Adds one lock to the snapshot being received.
    pub(crate) fn snapshot_put_lock(&self, ns: &str, lock: &Lock) -> Result<()> {
        let w = self.writer();
        w.conn.execute(
            "INSERT INTO snapshot_locks (namespace, path, lock_id, client_id, holder, note, acquired_ms,
                                         expires_ms, ttl_seconds, token, principal)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                ns,
                lock.path.as_str(),
                lock.lock_id,
                lock.client_id,
                lock.holder,
                lock.note,
                lock.acquired_ms,
                lock.expires_ms,
                lock.ttl_seconds,
                lock.token as i64,
                lock.principal
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use syncstore::{Content, ContentHash, pb};

    use super::*;
    use crate::storage::{Delete, Put, StoreOptions};
    use crate::wire;

    const NS: &str = "default";

    /// Client `client` of the principal "alice".
    fn who(client: &str) -> Actor {
        Actor::new("alice", client)
    }

    fn path(p: &str) -> RelPath {
        RelPath::new(p).unwrap()
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

    /// A header-only put of empty content (which needs no blob).
    fn put(p: &str, client: &str, base_version: u64, lock_token: u64) -> Put {
        Put {
            path: path(p),
            content: Content {
                hash: ContentHash::of(b""),
                size: 0,
                mtime_ns: 0,
                executable: false,
                symlink: false,
                folder: false,
            },
            base_version,
            who: who(client),
            lock_token,
        }
    }

    fn lock_of(c: &Change) -> Lock {
        match &c.what {
            What::Lock(l) => l.clone(),
            other => panic!("not a lock change: {other:?}"),
        }
    }

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, StoreOptions::default()).unwrap()
    }

    /// Stores the empty content so that header-only puts of it commit.
    fn with_empty_blob(s: &Store) {
        let w = s.blob_writer().unwrap();
        let staged = w.finish(ContentHash::of(b""), 0).unwrap();
        s.commit_put(NS, put("seed", "x", 0, 0), Some(staged)).unwrap();
    }

    #[test]
    fn a_lock_admits_only_its_holder_with_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        with_empty_blob(&s);
        let a = lock_of(&s.lock(NS, request("f", "A", 60)).unwrap());
        assert_eq!(a.token, s.head(), "the token is the granting change's seq");

        // B can neither lock nor write nor delete it.
        assert!(matches!(s.lock(NS, request("f", "B", 60)), Err(Error::Locked(m)) if m.contains("A@host")));
        assert!(matches!(s.commit_put(NS, put("f", "B", 0, 0), None), Err(Error::Locked(_))));
        // A without its token, or with a wrong one, is refused too.
        assert!(matches!(s.commit_put(NS, put("f", "A", 0, 0), None), Err(Error::StaleLock(_))));
        assert!(matches!(s.commit_put(NS, put("f", "A", 0, a.token + 1), None), Err(Error::StaleLock(_))));
        // A with its token writes.
        let v = s.commit_put(NS, put("f", "A", 0, a.token), None).unwrap().seq;
        let del = |client: &str, token| Delete {
            path: path("f"),
            base_version: v,
            who: who(client),
            lock_token: token,
        };
        assert!(matches!(s.commit_delete(NS, del("B", 0)), Err(Error::Locked(_))));

        // Re-locking refreshes: same id and token.
        let again = lock_of(&s.lock(NS, request("f", "A", 120)).unwrap());
        assert_eq!(
            (again.lock_id.as_str(), again.token, again.ttl_seconds),
            (a.lock_id.as_str(), a.token, 120)
        );

        // B cannot unlock it without force; with force it is broken.
        assert!(matches!(s.unlock(NS, &a.lock_id, &who("B"), false), Err(Error::Locked(_))));
        let broken = s.unlock(NS, &a.lock_id, &who("B"), true).unwrap();
        assert!(
            matches!(broken.what, What::Unlock { ended: LockEnd::Broken, ref by, .. } if *by == who("B"))
        );
        assert!(s.list_locks(NS, "").unwrap().is_empty());

        // Fencing: A's old token is refused now that the lock is gone ...
        assert!(matches!(s.commit_delete(NS, del("A", a.token)), Err(Error::StaleLock(_))));
        // ... and once B holds a new lock, B's token is larger.
        let b = lock_of(&s.lock(NS, request("f", "B", 60)).unwrap());
        assert!(b.token > a.token);
        assert!(matches!(s.commit_delete(NS, del("A", a.token)), Err(Error::Locked(_))));
        s.commit_delete(NS, del("B", b.token)).unwrap();
    }

    #[test]
    fn a_lock_is_bound_to_its_principal_and_client_together() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        with_empty_blob(&s);
        let a = lock_of(&s.lock(NS, request("f", "A", 60)).unwrap());
        assert_eq!(a.principal, "alice");
        // Bob sends alice's client id and the public token: refused for
        // every operation, and nothing is recorded as hers.
        let bob = Actor::new("bob", "A");
        let mut as_bob = put("f", "A", 0, a.token);
        as_bob.who = bob.clone();
        assert!(matches!(s.commit_put(NS, as_bob, None), Err(Error::Locked(_))));
        let relock = LockRequest { who: bob.clone(), ..request("f", "A", 60) };
        assert!(matches!(s.lock(NS, relock), Err(Error::Locked(_))));
        assert!(matches!(s.refresh_lock(NS, &a.lock_id, &bob, 60), Err(Error::Locked(_))));
        assert!(matches!(s.unlock(NS, &a.lock_id, &bob, false), Err(Error::Locked(_))));
        // With force (the service checks the right), it is broken by bob.
        let broken = s.unlock(NS, &a.lock_id, &bob, true).unwrap();
        assert!(matches!(broken.what, What::Unlock { ended: LockEnd::Broken, ref by, .. } if *by == bob));
        let wire = wire::lock_info(&broken).unwrap();
        assert_eq!((wire.ended_by.as_str(), wire.ended_by_principal.as_str()), ("A", "bob"));
        // The holder itself refreshes and releases.
        let b = lock_of(&s.lock(NS, request("g", "A", 60)).unwrap());
        s.refresh_lock(NS, &b.lock_id, &who("A"), 120).unwrap();
        let released = s.unlock(NS, &b.lock_id, &who("A"), false).unwrap();
        assert!(matches!(released.what, What::Unlock { ended: LockEnd::Released, .. }));
    }

    #[test]
    fn lock_listings_page_in_path_order_under_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for p in ["d", "d/a", "d/b", "d-x", "d0", "e", "d/c/d"] {
            s.lock(NS, request(p, "A", 60)).unwrap();
        }
        let paths = |v: Vec<Lock>| v.into_iter().map(|l| l.path.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(paths(s.list_locks(NS, "d").unwrap()), ["d", "d/a", "d/b", "d/c/d"]);
        assert_eq!(paths(s.list_locks_page(NS, "d", Some("d/a"), 2).unwrap()), ["d/b", "d/c/d"]);
        assert_eq!(paths(s.list_locks_page(NS, "", None, 3).unwrap()), ["d", "d-x", "d/a"]);
        assert_eq!(s.list_locks(NS, "").unwrap().len(), 7);
    }

    #[test]
    fn locks_expire_survive_a_restart_and_reserve_missing_names() {
        let dir = tempfile::tempdir().unwrap();
        let (id, token) = {
            let s = store(dir.path());
            let l = lock_of(&s.lock(NS, request("new/name.txt", "A", 60)).unwrap());
            assert!(s.stat(NS, &path("new/name.txt")).unwrap().is_none(), "a lock writes no file");
            (l.lock_id, l.token)
        };
        let s = store(dir.path());
        let listed = s.list_locks(NS, "new").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].lock_id.as_str(), listed[0].token), (id.as_str(), token));
        assert!(s.list_locks(NS, "ne").unwrap().is_empty(), "prefixes match whole names");

        // Nothing expires before its time; at it, one unlock change.
        assert!(s.expire_locks(listed[0].expires_ms - 1).unwrap().is_empty());
        let ended = s.expire_locks(listed[0].expires_ms).unwrap();
        assert!(matches!(&ended[..], [Change { what: What::Unlock { ended: LockEnd::Expired, .. }, .. }]));
        assert!(s.list_locks(NS, "").unwrap().is_empty());
        assert!(matches!(s.refresh_lock(NS, &id, &who("A"), 60), Err(Error::LockNotHeld(_))));

        // The log holds the grant and the expiry, in order.
        let log = s.changes_after(NS, 0, 10).unwrap();
        let kinds: Vec<i32> = log.iter().map(|c| wire::kind(c) as i32).collect();
        assert_eq!(kinds, [pb::change_event::Kind::Lock as i32, pb::change_event::Kind::Unlock as i32]);
    }

    #[test]
    fn a_data_folder_takes_one_server_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(dir.path());
        let second = Store::open(dir.path(), StoreOptions::default());
        assert!(matches!(second, Err(Error::FailedPrecondition(m)) if m.contains("another sync-server")));
        drop(first);
        store(dir.path());
    }
}
