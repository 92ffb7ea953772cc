//! PLACEHOLDER until the version-history half of the PostgreSQL backend is
//! merged (that branch owns this file and replaces it whole): the
//! `versions` table and the writes and lookups the rest of the backend
//! needs (a file change's version, its note, the facts read from versions);
//! every history read and history-only change is refused.

use syncstore::{ContentHash, Entry, RelPath};
use tokio_postgres::{Client, Row};

use super::content_columns;
use crate::error::{Error, Result};
use crate::storage::{
    Change, HistoryChange, Label, Version, VersionKind, VersionNote,
    retention::{Retention, Usage},
};

/// The history tables.
pub(super) const SCHEMA: &str = "
CREATE TABLE versions (
    namespace     text    NOT NULL,
    path          text    COLLATE \"C\" NOT NULL,
    seq           bigint  NOT NULL,
    deleted       boolean NOT NULL,
    size          bigint  NOT NULL,
    hash          bytea,
    mtime_ns      bigint  NOT NULL,
    executable    boolean NOT NULL,
    symlink       boolean NOT NULL DEFAULT false,
    folder        boolean NOT NULL DEFAULT false,
    client_id     text    NOT NULL,
    principal     text    NOT NULL,
    committed_ms  bigint  NOT NULL,
    kind          bigint  NOT NULL,
    moved_from    text,
    moved_to      text,
    restored_from bigint,
    pinned        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, path, seq)
);
CREATE INDEX versions_by_hash ON versions (hash) WHERE hash IS NOT NULL;
";

fn not_here() -> Error {
    Error::Internal("version history is not available on this backend yet".into())
}

/// Whether a change-log `kind` is a history-only change's.
pub(super) fn is_history_kind(kind: i64) -> bool {
    (3..=7).contains(&kind)
}

/// Writes the version a file change makes.
pub(super) async fn write_version(c: &Client, ns: &str, e: &Entry, note: &VersionNote) -> Result<()> {
    let (size, hash, mtime, exec, link, folder) = content_columns(e);
    c.execute(
        "INSERT INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable, symlink, folder,
                               client_id, principal, committed_ms, kind, moved_from, moved_to, restored_from)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &[
            &ns,
            &e.path.as_str(),
            &(e.version as i64),
            &e.is_deleted(),
            &size,
            &hash,
            &mtime,
            &exec,
            &link,
            &folder,
            &e.client_id,
            &note.principal,
            &note.committed_ms,
            &note.kind.code(),
            &note.moved_from.as_ref().map(RelPath::as_str),
            &note.moved_to.as_ref().map(RelPath::as_str),
            &note.restored_from.map(|v| v as i64),
        ],
    )
    .await?;
    Ok(())
}

/// Decodes a version note from a change-log row.
pub(super) fn note_from_row(r: &Row) -> Result<VersionNote> {
    let kind: i64 = r.try_get("version_kind")?;
    let kind = VersionKind::from_code(kind)
        .ok_or_else(|| Error::Internal(format!("a stored version of kind {kind}")))?;
    Ok(VersionNote {
        principal: r.try_get("principal")?,
        committed_ms: r.try_get("committed_ms")?,
        kind,
        moved_from: r.try_get::<_, Option<String>>("moved_from")?.map(RelPath::new).transpose()?,
        moved_to: r.try_get::<_, Option<String>>("moved_to")?.map(RelPath::new).transpose()?,
        restored_from: r.try_get::<_, Option<i64>>("restored_from")?.map(|v| v as u64),
    })
}

pub(super) async fn write_history_change(_c: &Client, _change: &Change, _h: &HistoryChange) -> Result<()> {
    Err(not_here())
}

pub(super) fn history_change_from_row(_r: &Row) -> Result<Change> {
    Err(not_here())
}

/// The content of the newest version of `path` that has content.
pub(super) async fn newest_content(c: &Client, ns: &str, path: &str) -> Result<Option<ContentHash>> {
    let row = c
        .query_opt(
            "SELECT hash FROM versions WHERE namespace = $1 AND path = $2 AND NOT deleted ORDER BY seq DESC LIMIT 1",
            &[&ns, &path],
        )
        .await?;
    Ok(row.map(|r| ContentHash::try_from(&r.get::<_, Vec<u8>>(0)[..])).transpose()?)
}

/// The path of the newest move from `path` committed after `after`.
pub(super) async fn moved_to(c: &Client, ns: &str, path: &str, after: u64) -> Result<Option<RelPath>> {
    let row = c
        .query_opt(
            "SELECT path FROM versions WHERE namespace = $1 AND moved_from = $2 AND kind = $3 AND seq > $4
             ORDER BY seq DESC LIMIT 1",
            &[&ns, &path, &VersionKind::Move.code(), &(after as i64)],
        )
        .await?;
    Ok(row.map(|r| RelPath::new(r.get::<_, String>(0))).transpose()?)
}

pub(super) async fn versions(
    _c: &Client,
    _ns: &str,
    _p: &str,
    _below: u64,
    _limit: usize,
) -> Result<Vec<Version>> {
    Err(not_here())
}

pub(super) async fn version(
    _c: &Client,
    _ns: &str,
    _p: &str,
    _seq: u64,
    _exact: bool,
) -> Result<Option<Version>> {
    Err(not_here())
}

pub(super) async fn seq_at_ms(_c: &Client, _ns: &str, _at_ms: i64) -> Result<(Option<i64>, Option<u64>)> {
    Err(not_here())
}

pub(super) async fn committed_ms_at(_c: &Client, _ns: &str, _seq: u64) -> Result<Option<i64>> {
    Err(not_here())
}

pub(super) async fn state_at(
    _c: &Client,
    _ns: &str,
    _prefix: &str,
    _seq: u64,
    _after: Option<&str>,
    _limit: usize,
) -> Result<Vec<Version>> {
    Err(not_here())
}

pub(super) async fn versions_page(
    _c: &Client,
    _ns: &str,
    _after: Option<(&str, u64)>,
    _limit: usize,
) -> Result<Vec<Version>> {
    Err(not_here())
}

pub(super) async fn trash(
    _c: &Client,
    _ns: &str,
    _prefix: &str,
    _since_ms: i64,
) -> Result<Vec<(Version, Option<Version>)>> {
    Err(not_here())
}

pub(super) async fn labels(_c: &Client, _ns: &str) -> Result<Vec<Label>> {
    Ok(Vec::new())
}

pub(super) async fn label(_c: &Client, _ns: &str, _name: &str) -> Result<Option<Label>> {
    Ok(None)
}

pub(super) async fn retentions(_c: &Client) -> Result<Vec<(String, Retention)>> {
    Ok(Vec::new())
}

pub(super) async fn history_namespaces(_c: &Client) -> Result<Vec<String>> {
    Ok(Vec::new())
}

pub(super) async fn live_contents(_c: &Client, _hashes: &[ContentHash]) -> Result<Vec<ContentHash>> {
    Err(not_here())
}

pub(super) async fn live_files(_c: &Client, _ns: &str) -> Result<u64> {
    Err(not_here())
}

pub(super) async fn history_usage(_c: &Client, _ns: Option<&str>) -> Result<Usage> {
    Err(not_here())
}
