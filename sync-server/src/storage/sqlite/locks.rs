//! The embedded backend's locks: lock changes in the change log (so that
//! `Subscribe` and replication carry them in order with file changes), and
//! the live locks in the `locks` table, which writes are checked against in
//! the same transaction as their commit (the decisions are `rules.rs`'s).
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

use super::now_ms;
use crate::error::{Error, Result};
use crate::storage::{Actor, Change, LockEnd, What};

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
        What::File(..) | What::History(_) => unreachable!("not a lock change"),
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
        Value::Text(change.path().map(RelPath::as_str).unwrap_or_default().to_owned()),
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
        What::File(..) | What::History(_) => unreachable!("not a lock change"),
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

pub(super) fn get_lock_by_id(c: &Connection, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
    c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE namespace = ?1 AND lock_id = ?2"))?
        .query_row(params![ns, lock_id], lock_from_row)
        .optional()?
        .transpose()
        .map(|o| o.map(|(_, l)| l))
}

/// The live locks of `ns` at `now` on `prefix` or below, in path order,
/// after the path `after`, up to `limit`.
pub(super) fn list_locks_page(
    c: &Connection,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    now: i64,
    limit: usize,
) -> Result<Vec<Lock>> {
    // A folder's paths are those from "prefix/" up to "prefix0" ('/' + 1).
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {LOCK_COLUMNS} FROM locks
         WHERE namespace = ?1 AND expires_ms > ?2 AND (?3 IS NULL OR path > ?3)
           AND (?4 = '' OR path = ?4 OR (path >= ?4 || '/' AND path < ?4 || '0'))
         ORDER BY path LIMIT ?5"
    ))?;
    let rows = stmt.query_map(params![ns, now, after, prefix, limit as i64], lock_from_row)?;
    rows.map(|r| Ok(r??.1)).collect()
}

/// Every lock row (all namespaces), in (namespace, path) order.
pub(super) fn all_locks(c: &Connection) -> Result<Vec<(String, Lock)>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks ORDER BY namespace, path"))?;
    let rows = stmt.query_map([], lock_from_row)?;
    rows.map(|r| r?).collect()
}

/// Every lock row past its expiry at `now`.
pub(super) fn expired_locks(c: &Connection, now: i64) -> Result<Vec<(String, Lock)>> {
    let mut stmt = c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE expires_ms <= ?1"))?;
    let rows = stmt.query_map([now], lock_from_row)?;
    rows.map(|r| r?).collect()
}

/// Adds one lock to the snapshot being received.
pub(super) fn snapshot_put_lock(c: &Connection, ns: &str, lock: &Lock) -> Result<()> {
    c.execute(
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
