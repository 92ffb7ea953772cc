//! The queries pruning and the history usage need (see `storage::prune`):
//! which namespaces keep history, which content live entries refer to,
//! how many live files a namespace has, and how much history it keeps.

use rusqlite::{Connection, params_from_iter};
use syncstore::ContentHash;

use crate::error::Result;
use crate::storage::retention::Usage;

/// The namespaces that keep versions.
pub(super) fn history_namespaces(c: &Connection) -> Result<Vec<String>> {
    let mut stmt = c.prepare_cached("SELECT DISTINCT namespace FROM versions ORDER BY namespace")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Those of `hashes` a live entry (of any namespace) refers to.
pub(super) fn live_contents(c: &Connection, hashes: &[ContentHash]) -> Result<Vec<ContentHash>> {
    let mut out = Vec::new();
    let mut stmt = c.prepare_cached("SELECT 1 FROM files WHERE hash = ?1 AND deleted = 0 LIMIT 1")?;
    for h in hashes {
        if stmt.exists([h.as_bytes().as_slice()])? {
            out.push(*h);
        }
    }
    Ok(out)
}

/// The live files (not folders) of `ns`.
pub(super) fn live_files(c: &Connection, ns: &str) -> Result<u64> {
    let n: i64 = c
        .prepare_cached("SELECT count(*) FROM files WHERE namespace = ?1 AND deleted = 0 AND folder = 0")?
        .query_row([ns], |r| r.get(0))?;
    Ok(n as u64)
}

/// The history `ns` keeps (every namespace's with `None`): versions that
/// are not their path's newest, and the bytes of the distinct content
/// they refer to that no live entry refers to.
pub(super) fn history_usage(c: &Connection, ns: Option<&str>) -> Result<Usage> {
    let versions: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM versions v WHERE (?1 IS NULL OR v.namespace = ?1)
               AND EXISTS (SELECT 1 FROM versions n
                           WHERE n.namespace = v.namespace AND n.path = v.path AND n.seq > v.seq)",
        )?
        .query_row(params_from_iter([ns]), |r| r.get(0))?;
    let bytes: i64 = c
        .prepare_cached(
            "SELECT coalesce(sum(size), 0) FROM (
               SELECT max(v.size) AS size FROM versions v
               WHERE v.hash IS NOT NULL AND (?1 IS NULL OR v.namespace = ?1)
                 AND EXISTS (SELECT 1 FROM versions n
                             WHERE n.namespace = v.namespace AND n.path = v.path AND n.seq > v.seq)
                 AND NOT EXISTS (SELECT 1 FROM files f WHERE f.hash = v.hash AND f.deleted = 0)
               GROUP BY v.hash)",
        )?
        .query_row(params_from_iter([ns]), |r| r.get(0))?;
    Ok(Usage { versions: versions as u64, bytes: bytes as u64 })
}
