//! The shared backend's locks: lock changes in the change log and the live
//! locks in the `locks` table, exactly as the embedded backend keeps them
//! (`storage/sqlite/locks.rs` states the invariants; the decisions are
//! `rules.rs`'s).

use syncstore::{Lock, RelPath};
use tokio_postgres::Row;

use super::{Conn, now_ms};
use crate::error::{Error, Result};
use crate::storage::{Actor, Change, LockEnd, What};

/// The change log's `kind` of a lock grant or refresh (as SQLite's).
const KIND_LOCK: i64 = 1;
/// The change log's `kind` of a lock's end.
const KIND_UNLOCK: i64 = 2;

/// The change log's `lock_end` of a lock its holder released.
const END_RELEASED: i64 = 1;
/// The change log's `lock_end` of a lock that was not refreshed in time.
const END_EXPIRED: i64 = 2;
/// The change log's `lock_end` of a lock someone else broke.
const END_BROKEN: i64 = 3;

/// Whether a change-log `kind` is a lock change's.
pub(super) fn is_lock_kind(kind: i64) -> bool {
    kind == KIND_LOCK || kind == KIND_UNLOCK
}

/// Decodes a lock change from a change-log row (columns read by name).
pub(super) fn lock_change_from_row(r: &Row) -> Result<Change> {
    let seq = r.try_get::<_, i64>("seq")? as u64;
    let namespace: String = r.try_get("namespace")?;
    let kind: i64 = r.try_get("kind")?;
    let path: String = r.try_get("path")?;
    let end: Option<i64> = r.try_get("lock_end")?;
    let by = Actor::new(
        r.try_get::<_, Option<String>>("lock_ended_by_principal")?.unwrap_or_default(),
        r.try_get::<_, Option<String>>("lock_ended_by_client_id")?.unwrap_or_default(),
    );
    let text = |col: &str| -> Result<String> { Ok(r.try_get::<_, Option<String>>(col)?.unwrap_or_default()) };
    let num = |col: &str| -> Result<i64> { Ok(r.try_get::<_, Option<i64>>(col)?.unwrap_or_default()) };
    let lock = Lock {
        lock_id: text("lock_id")?,
        path: RelPath::new(path)
            .map_err(|e| Error::Internal(format!("change {seq}: a stored lock's path: {e}")))?,
        client_id: text("lock_client_id")?,
        principal: text("lock_principal")?,
        holder: text("lock_holder")?,
        note: text("lock_note")?,
        acquired_ms: num("lock_acquired_ms")?,
        expires_ms: num("lock_expires_ms")?,
        ttl_seconds: u32::try_from(num("lock_ttl_seconds")?)
            .map_err(|_| Error::Internal(format!("change {seq}: a stored lock's ttl is out of range")))?,
        token: num("lock_token")? as u64,
    };
    let what = match (kind, end) {
        (KIND_LOCK, None) => What::Lock(lock),
        (KIND_UNLOCK, Some(END_RELEASED)) => What::Unlock { lock, ended: LockEnd::Released, by },
        (KIND_UNLOCK, Some(END_EXPIRED)) => What::Unlock { lock, ended: LockEnd::Expired, by },
        (KIND_UNLOCK, Some(END_BROKEN)) => What::Unlock { lock, ended: LockEnd::Broken, by },
        _ => {
            return Err(Error::Internal(format!(
                "change {seq}: a lock change of kind {kind} with end {end:?}"
            )));
        }
    };
    Ok(Change { seq, namespace, what })
}

/// Appends a lock change to the log and applies it to the `locks` table.
pub(super) async fn write_lock_change(c: &Conn, change: &Change) -> Result<()> {
    let (kind, lock, end) = match &change.what {
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
    let insert = c
        .prepare_cached(
            "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                                  committed_ms, kind, lock_id, lock_client_id, lock_principal, lock_holder,
                                  lock_note, lock_acquired_ms, lock_expires_ms, lock_ttl_seconds, lock_token,
                                  lock_end, lock_ended_by_client_id, lock_ended_by_principal)
             VALUES ($1, $2, $3, false, 0, NULL, 0, false, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                     $16, $17, $18)",
        )
        .await?;
    let path = change.path().map(RelPath::as_str).unwrap_or_default();
    c.execute(
        &insert,
        &[
            &(change.seq as i64),
            &change.namespace,
            &path,
            &change.client_id(),
            &now_ms(),
            &kind,
            &lock.lock_id,
            &lock.client_id,
            &lock.principal,
            &lock.holder,
            &lock.note,
            &lock.acquired_ms,
            &lock.expires_ms,
            &i64::from(lock.ttl_seconds),
            &(lock.token as i64),
            &end.map(|(code, _)| code),
            &end.map(|(_, by)| by.client_id.as_str()),
            &end.map(|(_, by)| by.principal.as_str()),
        ],
    )
    .await?;
    match &change.what {
        What::Lock(l) => put_lock(c, &change.namespace, l).await?,
        What::Unlock { lock, .. } => {
            let delete = c.prepare_cached("DELETE FROM locks WHERE namespace = $1 AND lock_id = $2").await?;
            c.execute(&delete, &[&change.namespace, &lock.lock_id]).await?;
        }
        What::File(..) | What::History(_) => unreachable!("not a lock change"),
    }
    Ok(())
}

async fn put_lock(c: &Conn, ns: &str, l: &Lock) -> Result<()> {
    let upsert = c
        .prepare_cached(
            "INSERT INTO locks (namespace, path, lock_id, client_id, holder, note, acquired_ms, expires_ms,
                                ttl_seconds, token, principal)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (namespace, path) DO UPDATE SET
               lock_id = excluded.lock_id, client_id = excluded.client_id, holder = excluded.holder,
               note = excluded.note, acquired_ms = excluded.acquired_ms, expires_ms = excluded.expires_ms,
               ttl_seconds = excluded.ttl_seconds, token = excluded.token, principal = excluded.principal",
        )
        .await?;
    c.execute(
        &upsert,
        &[
            &ns,
            &l.path.as_str(),
            &l.lock_id,
            &l.client_id,
            &l.holder,
            &l.note,
            &l.acquired_ms,
            &l.expires_ms,
            &i64::from(l.ttl_seconds),
            &(l.token as i64),
            &l.principal,
        ],
    )
    .await?;
    Ok(())
}

const LOCK_COLUMNS: &str = "path, lock_id, client_id, holder, note, acquired_ms, expires_ms, ttl_seconds, token, namespace, principal";

/// How many columns [`LOCK_COLUMNS`] has.
pub(super) const LOCK_WIDTH: usize = 11;

fn lock_from_row(r: &Row) -> Result<(String, Lock)> {
    lock_from_row_at(r, 0)
}

/// Decodes a lock of [`LOCK_COLUMNS`] starting at column `at`, and its
/// namespace.
pub(super) fn lock_from_row_at(r: &Row, at: usize) -> Result<(String, Lock)> {
    let path: String = r.try_get(at)?;
    let ns: String = r.try_get(at + 9)?;
    let lock = Lock {
        lock_id: r.try_get(at + 1)?,
        path: RelPath::new(path).map_err(|e| Error::Internal(format!("a stored lock's path: {e}")))?,
        client_id: r.try_get(at + 2)?,
        principal: r.try_get(at + 10)?,
        holder: r.try_get(at + 3)?,
        note: r.try_get(at + 4)?,
        acquired_ms: r.try_get(at + 5)?,
        expires_ms: r.try_get(at + 6)?,
        ttl_seconds: u32::try_from(r.try_get::<_, i64>(at + 7)?)
            .map_err(|_| Error::Internal("a stored lock's ttl is out of range".into()))?,
        token: r.try_get::<_, i64>(at + 8)? as u64,
    };
    Ok((ns, lock))
}

/// The lock row with id `lock_id`, if any.
pub(super) async fn get_lock_by_id(c: &Conn, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
    let stmt = c
        .prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE namespace = $1 AND lock_id = $2"))
        .await?;
    c.query_opt(&stmt, &[&ns, &lock_id]).await?.map(|r| lock_from_row(&r).map(|(_, l)| l)).transpose()
}

/// The live locks of `ns` at `now` on `prefix` or below, in path order,
/// after the path `after`, up to `limit`.
pub(super) async fn list_locks_page(
    c: &Conn,
    ns: &str,
    prefix: &str,
    after: Option<&str>,
    now: i64,
    limit: usize,
) -> Result<Vec<Lock>> {
    // A folder's paths are those from "prefix/" up to "prefix0" ('/' + 1).
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {LOCK_COLUMNS} FROM locks
             WHERE namespace = $1 AND expires_ms > $2 AND ($3::text IS NULL OR path > $3)
               AND ($4 = '' OR path = $4 OR (path >= $4 || '/' AND path < $4 || '0'))
             ORDER BY path LIMIT $5"
        ))
        .await?;
    let rows = c.query(&stmt, &[&ns, &now, &after, &prefix, &(limit as i64)]).await?;
    rows.iter().map(|r| Ok(lock_from_row(r)?.1)).collect()
}

/// Every lock row (all namespaces), in (namespace, path) order.
pub(super) async fn all_locks(c: &Conn) -> Result<Vec<(String, Lock)>> {
    let stmt =
        c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks ORDER BY namespace, path")).await?;
    c.query(&stmt, &[]).await?.iter().map(lock_from_row).collect()
}

/// Every lock row past its expiry at `now`.
pub(super) async fn expired_locks(c: &Conn, now: i64) -> Result<Vec<(String, Lock)>> {
    let stmt = c.prepare_cached(&format!("SELECT {LOCK_COLUMNS} FROM locks WHERE expires_ms <= $1")).await?;
    c.query(&stmt, &[&now]).await?.iter().map(lock_from_row).collect()
}
