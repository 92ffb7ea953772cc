//! The queries pruning and the history usage need (see `storage::prune`):
//! which namespaces keep history, which content live entries refer to,
//! how many live files a namespace has, and how much history it keeps. The
//! PostgreSQL mirror of `storage/sqlite/history_prune.rs`; they read
//! `files (namespace, path, deleted, folder, hash)` beside the history.

use std::collections::HashSet;

use syncstore::ContentHash;
use tokio_postgres::{Client, types::Type};

use crate::error::Result;
use crate::storage::retention::Usage;

/// [`history_namespaces`]'s query: a skip scan of the (namespace, seq)
/// index, one seek per namespace, not a read of every version.
pub(super) const HISTORY_NAMESPACES_SQL: &str = "WITH RECURSIVE ns (namespace) AS (
         (SELECT namespace FROM versions ORDER BY namespace LIMIT 1)
         UNION ALL
         SELECT (SELECT v.namespace FROM versions v WHERE v.namespace > ns.namespace ORDER BY v.namespace LIMIT 1)
         FROM ns WHERE ns.namespace IS NOT NULL)
     SELECT namespace FROM ns WHERE namespace IS NOT NULL";

/// The namespaces that keep versions.
pub(super) async fn history_namespaces(c: &Client) -> Result<Vec<String>> {
    let rows = c.query_typed(HISTORY_NAMESPACES_SQL, &[]).await?;
    Ok(rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?)
}

/// [`live_contents`]'s query: by the manifest's hash index.
pub(super) const LIVE_CONTENTS_SQL: &str =
    "SELECT DISTINCT hash FROM files WHERE hash = ANY($1) AND NOT deleted";

/// Those of `hashes` a live entry (of any namespace) refers to, in their
/// order: one statement for the whole list.
pub(super) async fn live_contents(c: &Client, hashes: &[ContentHash]) -> Result<Vec<ContentHash>> {
    let list: Vec<&[u8]> = hashes.iter().map(|h| h.as_bytes().as_slice()).collect();
    let rows = c.query_typed(LIVE_CONTENTS_SQL, &[(&list, Type::BYTEA_ARRAY)]).await?;
    let live: HashSet<Vec<u8>> = rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?;
    Ok(hashes.iter().filter(|h| live.contains(h.as_bytes().as_slice())).copied().collect())
}

/// The live files (not folders) of `ns`.
pub(super) async fn live_files(c: &Client, ns: &str) -> Result<u64> {
    let row = c
        .query_typed_one(
            "SELECT count(*) FROM files WHERE namespace = $1 AND NOT deleted AND NOT folder",
            &[(&ns, Type::TEXT)],
        )
        .await?;
    Ok(row.try_get::<_, i64>(0)? as u64)
}

/// The history `ns` keeps (every namespace's with `None`): versions that
/// are not their path's newest, and the bytes of the distinct content
/// they refer to that no live entry refers to.
pub(super) async fn history_usage(c: &Client, ns: Option<&str>) -> Result<Usage> {
    let versions: i64 = c
        .query_typed_one(
            "SELECT count(*) FROM versions v WHERE ($1::text IS NULL OR v.namespace = $1)
               AND EXISTS (SELECT 1 FROM versions n
                           WHERE n.namespace = v.namespace AND n.path = v.path AND n.seq > v.seq)",
            &[(&ns, Type::TEXT)],
        )
        .await?
        .try_get(0)?;
    let bytes: i64 = c
        .query_typed_one(
            "SELECT coalesce(sum(size), 0)::bigint FROM (
               SELECT max(v.size) AS size FROM versions v
               WHERE v.hash IS NOT NULL AND ($1::text IS NULL OR v.namespace = $1)
                 AND EXISTS (SELECT 1 FROM versions n
                             WHERE n.namespace = v.namespace AND n.path = v.path AND n.seq > v.seq)
                 AND NOT EXISTS (SELECT 1 FROM files f WHERE f.hash = v.hash AND NOT f.deleted)
               GROUP BY v.hash) AS kept",
            &[(&ns, Type::TEXT)],
        )
        .await?
        .try_get(0)?;
    Ok(Usage { versions: versions as u64, bytes: bytes as u64 })
}
