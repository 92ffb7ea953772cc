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

use prost::Message;
use rusqlite::{Connection, OptionalExtension, Row, params};
use syncstore::{Lock, RelPath, pb};

use super::now_ms;
use crate::error::{Error, Result};
use crate::storage::{Change, What};
use crate::wire;

/// The change log's `kind` of a lock grant or refresh: the store's own
/// code, fixed on disk (a file change is 0).
const KIND_LOCK: i64 = 4;
/// The change log's `kind` of a lock's end.
const KIND_UNLOCK: i64 = 5;

/// Decodes a lock change stored in the change log. Its `lock` column holds
/// the lock in the wire's encoding (a `LockInfo`, with why and by whom it
/// ended), as schema version 5 defined it.
pub(super) fn decode_lock_change(
    seq: u64,
    namespace: String,
    kind: i64,
    blob: Option<&[u8]>,
) -> Result<Change> {
    let lock = pb::LockInfo::decode(blob.unwrap_or_default())
        .map_err(|e| Error::Internal(format!("change {seq}: undecodable lock: {e}")))?;
    let unlock = match kind {
        KIND_LOCK => false,
        KIND_UNLOCK => true,
        _ => return Err(Error::Internal(format!("change {seq}: a lock change of kind {kind}"))),
    };
    let what = wire::lock_what(unlock, lock)
        .map_err(|e| Error::Internal(format!("change {seq}: an undecodable lock: {e}")))?;
    Ok(Change { seq, namespace, what })
}

/// Appends a lock change to the log and applies it to the `locks` table.
pub(super) fn write_lock_change(c: &Connection, change: &Change) -> Result<()> {
    let kind = match change.what {
        What::Lock(_) => KIND_LOCK,
        What::Unlock { .. } => KIND_UNLOCK,
        What::File(_) => unreachable!("not a lock change"),
    };
    let lock = wire::lock_info(change).expect("a lock change has a lock");
    c.prepare_cached(
        "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                              committed_ms, kind, lock)
         VALUES (?1, ?2, ?3, 0, 0, NULL, 0, 0, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        change.seq as i64,
        change.namespace,
        lock.path,
        change.client_id(),
        now_ms(),
        kind,
        lock.encode_to_vec()
    ])?;
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
