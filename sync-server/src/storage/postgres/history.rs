//! The shared backend's version history: the `versions` row every file
//! change writes beside its log row, the history-only changes (labels,
//! pins, retention, prunes) and the tables they apply to, the history
//! reads, and the facts a write takes from the history. The PostgreSQL
//! mirror of `storage/sqlite/history.rs`: the same functions with the same
//! meaning, async, each taking the connection to run on (one inside the
//! transaction for a write, a pooled one for a read).
//!
//! Every statement is one round trip (`query_typed`: the parameters' types
//! are given, so nothing is prepared first), and each seeks to its bounds
//! in an index (a test checks PostgreSQL's plans on a namespace of
//! 100,000 files): a page of a 100,000-file browse, a deletion's
//! "moved since?" or a trash listing never walks a namespace's history
//! from its start.
//!
//! Paths (and label names) are `text COLLATE "C"`: they sort by their
//! bytes, as in SQLite, whatever the database's locale, so that "the paths
//! below `p`" is the range from `p/` to `p0` and pages end and start where
//! SQLite's would. The manifest's paths (`files.path`), joined with these,
//! have the same collation, and namespaces the database's default on both
//! sides, so that every join and comparison can use its index.
//!
//! A history-only change is a change-log row of its own `kind` (3 to 7)
//! whose `detail` holds its content as JSON (the store's own layout, never
//! the wire's), the same as the embedded backend writes.

use serde::{Deserialize, Serialize};
use syncstore::{Content, ContentHash, Entry, RelPath};
use tokio_postgres::{Client, Row, types::ToSql, types::Type};

use crate::error::{Error, Result};
use crate::storage::{
    Change, HistoryChange, Label, Version, VersionKind, VersionNote, What, retention::Retention,
};

/// The history tables and their indexes, created by the schema's first
/// migration (in its transaction, beside the other tables). Columns as in
/// the embedded backend's schema 8, with PostgreSQL's types: `bigint` for
/// seqs, sizes, times and kinds, `bytea` for hashes, `boolean` for flags.
pub(super) const SCHEMA: &str = r#"
-- Version history: every file change still kept by retention, written
-- with the change. A path's current entry is always one of its versions.
CREATE TABLE IF NOT EXISTS versions (
    namespace     text    NOT NULL,
    path          text COLLATE "C" NOT NULL,
    seq           bigint  NOT NULL,          -- the version number
    deleted       boolean NOT NULL,
    size          bigint  NOT NULL,
    hash          bytea,                     -- NULL for a deletion
    mtime_ns      bigint  NOT NULL,
    executable    boolean NOT NULL,
    symlink       boolean NOT NULL DEFAULT false,
    folder        boolean NOT NULL DEFAULT false,
    client_id     text    NOT NULL,
    principal     text    NOT NULL,          -- '' for a version older than history
    committed_ms  bigint  NOT NULL,          -- the committing process's clock
    kind          bigint  NOT NULL,          -- 1 write, 2 delete, 3 move, 4 moved away, 5 restore
    moved_from    text COLLATE "C",
    moved_to      text COLLATE "C",
    restored_from bigint,
    pinned        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, path, seq)
);
-- A namespace's versions by seq: a point in time, the oldest version.
CREATE INDEX IF NOT EXISTS versions_by_seq ON versions (namespace, seq);
-- Whether anything keeps a content (garbage collection, reuse).
CREATE INDEX IF NOT EXISTS versions_by_hash ON versions (hash) WHERE hash IS NOT NULL;
-- The moves from a path, newest last: a deletion's "moved since?" and the
-- trash's, without walking every later version.
CREATE INDEX IF NOT EXISTS versions_by_moved_from ON versions (namespace, moved_from, seq)
    WHERE moved_from IS NOT NULL;

-- Named states of a namespace.
CREATE TABLE IF NOT EXISTS labels (
    namespace    text    NOT NULL,
    name         text COLLATE "C" NOT NULL,
    seq          bigint  NOT NULL,           -- the state after this change
    committed_ms bigint  NOT NULL,
    note         text    NOT NULL,
    automatic    boolean NOT NULL,
    principal    text    NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Retention set at run time, as JSON; a namespace without a row has the
-- config file's.
CREATE TABLE IF NOT EXISTS retention (
    namespace text PRIMARY KEY,
    policy    text NOT NULL
);
"#;

/// The change log's `kind` of a label set.
const KIND_LABEL_SET: i64 = 3;
/// The change log's `kind` of a label removed.
const KIND_LABEL_REMOVED: i64 = 4;
/// The change log's `kind` of a version pinned or unpinned.
const KIND_PIN: i64 = 5;
/// The change log's `kind` of a namespace's retention set.
const KIND_RETENTION: i64 = 6;
/// The change log's `kind` of versions pruned.
const KIND_PRUNE: i64 = 7;

/// Whether a change-log `kind` is a history-only change's.
pub(super) fn is_history_kind(kind: i64) -> bool {
    (KIND_LABEL_SET..=KIND_PRUNE).contains(&kind)
}

/// The columns a version is read from, in [`version_from_columns`]'s order.
pub(super) const VERSION_COLUMNS: &str = "path, seq, deleted, size, hash, mtime_ns, executable, client_id, \
     symlink, folder, principal, committed_ms, kind, moved_from, moved_to, restored_from, pinned";

/// How many columns [`VERSION_COLUMNS`] has.
const VERSION_WIDTH: usize = 17;

/// A parameter of a statement with its PostgreSQL type.
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A seq or a version number as PostgreSQL's `bigint` (a bound above its
/// range is its largest value: nothing is stored above it).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row limit as `bigint` (`usize::MAX`, "no limit", is the largest).
fn limit_of(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A label as `detail` stores it.
#[derive(Serialize, Deserialize)]
struct LabelDetail {
    name: String,
    seq: u64,
    committed_ms: i64,
    note: String,
    automatic: bool,
    principal: String,
}

/// A pin as `detail` stores it.
#[derive(Serialize, Deserialize)]
struct PinDetail {
    path: String,
    seq: u64,
    pinned: bool,
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("encoding a history change: {e}")))
}

fn from_json<T: for<'de> Deserialize<'de>>(seq: u64, s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| Error::Internal(format!("change {seq}: a stored history change: {e}")))
}

/// Writes the versions file changes make (in the same transaction as their
/// log rows and manifest rows): one statement.
pub(super) async fn write_versions(c: &Client, rows: &super::FileRows<'_>) -> Result<()> {
    let (text, int, flag) = (Type::TEXT_ARRAY, Type::INT8_ARRAY, Type::BOOL_ARRAY);
    let params: [Param<'_>; 17] = [
        (&rows.namespace, text.clone()),
        (&rows.path, text.clone()),
        (&rows.seq, int.clone()),
        (&rows.deleted, flag.clone()),
        (&rows.size, int.clone()),
        (&rows.hash, Type::BYTEA_ARRAY),
        (&rows.mtime_ns, int.clone()),
        (&rows.executable, flag.clone()),
        (&rows.symlink, flag.clone()),
        (&rows.folder, flag),
        (&rows.client_id, text.clone()),
        (&rows.principal, text.clone()),
        (&rows.committed_ms, int.clone()),
        (&rows.kind, int.clone()),
        (&rows.moved_from, text.clone()),
        (&rows.moved_to, text),
        (&rows.restored_from, int),
    ];
    c.execute_typed(
        "INSERT INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable, symlink,
                               folder, client_id, principal, committed_ms, kind, moved_from, moved_to,
                               restored_from)
         SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &params,
    )
    .await?;
    Ok(())
}

/// Decodes a version of [`VERSION_COLUMNS`] starting at column `at`.
fn version_from_columns(r: &Row, at: usize) -> Result<Version> {
    let path: String = r.try_get(at)?;
    let version: i64 = r.try_get(at + 1)?;
    let deleted: bool = r.try_get(at + 2)?;
    let hash: Option<Vec<u8>> = r.try_get(at + 4)?;
    let content = match (deleted, hash) {
        (true, _) => None,
        (false, Some(h)) => Some(Content {
            hash: ContentHash::try_from(&h[..])?,
            size: r.try_get::<_, i64>(at + 3)? as u64,
            mtime_ns: r.try_get(at + 5)?,
            executable: r.try_get(at + 6)?,
            symlink: r.try_get(at + 8)?,
            folder: r.try_get(at + 9)?,
        }),
        (false, None) => return Err(Error::Internal(format!("live version {path:?} has no hash"))),
    };
    let entry =
        Entry { path: RelPath::new(path)?, version: version as u64, content, client_id: r.try_get(at + 7)? };
    let note = note_of(
        r.try_get(at + 12)?,
        r.try_get(at + 10)?,
        r.try_get(at + 11)?,
        r.try_get(at + 13)?,
        r.try_get(at + 14)?,
        r.try_get(at + 15)?,
    )?;
    Ok(Version { entry, note, pinned: r.try_get(at + 16)? })
}

/// Decodes a version of [`VERSION_COLUMNS`].
fn version_from_row(r: &Row) -> Result<Version> {
    version_from_columns(r, 0)
}

/// Decodes a version note from the columns principal, committed_ms, the
/// kind (`version_kind` in the change log, else `kind`), moved_from,
/// moved_to and restored_from, read by name: a file change's row of the
/// change log carries its note in these.
pub(super) fn note_from_row(r: &Row) -> Result<VersionNote> {
    let kind_column =
        if r.columns().iter().any(|c| c.name() == "version_kind") { "version_kind" } else { "kind" };
    note_of(
        r.try_get(kind_column)?,
        r.try_get("principal")?,
        r.try_get("committed_ms")?,
        r.try_get("moved_from")?,
        r.try_get("moved_to")?,
        r.try_get("restored_from")?,
    )
}

fn note_of(
    kind: i64,
    principal: String,
    committed_ms: i64,
    moved_from: Option<String>,
    moved_to: Option<String>,
    restored_from: Option<i64>,
) -> Result<VersionNote> {
    let kind = VersionKind::from_code(kind)
        .ok_or_else(|| Error::Internal(format!("a stored version of kind {kind}")))?;
    Ok(VersionNote {
        principal,
        committed_ms,
        kind,
        moved_from: moved_from.map(RelPath::new).transpose()?,
        moved_to: moved_to.map(RelPath::new).transpose()?,
        restored_from: restored_from.map(|v| v as u64),
    })
}

/// What the change-log row of a history-only change holds: its `kind`, its
/// `path` (a label's name, a pin's path, else empty) and its `detail`.
pub(super) fn history_log_row(h: &HistoryChange) -> Result<(i64, String, String)> {
    Ok(match h {
        HistoryChange::LabelSet(l) => {
            let detail = LabelDetail {
                name: l.name.clone(),
                seq: l.seq,
                committed_ms: l.committed_ms,
                note: l.note.clone(),
                automatic: l.automatic,
                principal: l.principal.clone(),
            };
            (KIND_LABEL_SET, l.name.clone(), to_json(&detail)?)
        }
        HistoryChange::LabelRemoved(name) => (KIND_LABEL_REMOVED, name.clone(), to_json(name)?),
        HistoryChange::Pin { path, seq, pinned } => {
            let detail = PinDetail { path: path.as_str().to_owned(), seq: *seq, pinned: *pinned };
            (KIND_PIN, path.as_str().to_owned(), to_json(&detail)?)
        }
        HistoryChange::Retention(r) => (KIND_RETENTION, String::new(), to_json(r)?),
        HistoryChange::Prune(removed) => {
            let detail: Vec<(&str, u64)> = removed.iter().map(|(p, s)| (p.as_str(), *s)).collect();
            (KIND_PRUNE, String::new(), to_json(&detail)?)
        }
    })
}

/// Appends a history-only change to the log and applies it: two
/// statements (a prune's removals are one).
pub(super) async fn write_history_change(c: &Client, change: &Change, h: &HistoryChange) -> Result<()> {
    apply_history_change(c, &change.namespace, h).await?;
    let (kind, path, detail) = history_log_row(h)?;
    let (seq, ns, now) = (big(change.seq), change.namespace.as_str(), crate::clock::now_ms());
    c.execute_typed(
        "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                              committed_ms, kind, detail)
         VALUES ($1, $2, $3, false, 0, NULL, 0, false, '', $4, $5, $6)",
        &[
            (&seq, Type::INT8),
            (&ns, Type::TEXT),
            (&path, Type::TEXT),
            (&now, Type::INT8),
            (&kind, Type::INT8),
            (&detail, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Applies a history-only change of `ns` to the history tables (the log
/// row is [`write_history_change`]'s).
pub(super) async fn apply_history_change(c: &Client, ns: &str, h: &HistoryChange) -> Result<()> {
    match h {
        HistoryChange::LabelSet(l) => {
            let seq = big(l.seq);
            c.execute_typed(
                "INSERT INTO labels (namespace, name, seq, committed_ms, note, automatic, principal)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (namespace, name) DO UPDATE SET
                   seq = excluded.seq, committed_ms = excluded.committed_ms, note = excluded.note,
                   automatic = excluded.automatic, principal = excluded.principal",
                &[
                    (&ns, Type::TEXT),
                    (&l.name, Type::TEXT),
                    (&seq, Type::INT8),
                    (&l.committed_ms, Type::INT8),
                    (&l.note, Type::TEXT),
                    (&l.automatic, Type::BOOL),
                    (&l.principal, Type::TEXT),
                ],
            )
            .await?;
        }
        HistoryChange::LabelRemoved(name) => {
            c.execute_typed(
                "DELETE FROM labels WHERE namespace = $1 AND name = $2",
                &[(&ns, Type::TEXT), (name, Type::TEXT)],
            )
            .await?;
        }
        HistoryChange::Pin { path, seq, pinned } => {
            let seq = big(*seq);
            c.execute_typed(
                "UPDATE versions SET pinned = $4 WHERE namespace = $1 AND path = $2 AND seq = $3",
                &[(&ns, Type::TEXT), (&path.as_str(), Type::TEXT), (&seq, Type::INT8), (pinned, Type::BOOL)],
            )
            .await?;
        }
        HistoryChange::Retention(r) => {
            let policy = to_json(r)?;
            c.execute_typed(
                "INSERT INTO retention (namespace, policy) VALUES ($1, $2)
                 ON CONFLICT (namespace) DO UPDATE SET policy = excluded.policy",
                &[(&ns, Type::TEXT), (&policy, Type::TEXT)],
            )
            .await?;
        }
        HistoryChange::Prune(removed) => {
            // One statement for the whole list (at most
            // `MAX_PRUNED_PER_CHANGE`), each removal by its key.
            let paths: Vec<&str> = removed.iter().map(|(p, _)| p.as_str()).collect();
            let seqs: Vec<i64> = removed.iter().map(|(_, s)| big(*s)).collect();
            c.execute_typed(
                "DELETE FROM versions v USING unnest($2::text[], $3::bigint[]) AS gone (path, seq)
                 WHERE v.namespace = $1 AND v.path = gone.path AND v.seq = gone.seq",
                &[(&ns, Type::TEXT), (&paths, Type::TEXT_ARRAY), (&seqs, Type::INT8_ARRAY)],
            )
            .await?;
        }
    }
    Ok(())
}

/// Decodes a history-only change from its change-log row's seq,
/// namespace, `kind` and `detail`.
pub(super) fn history_change_from_log(
    seq: u64,
    namespace: String,
    kind: i64,
    detail: Option<&str>,
) -> Result<Change> {
    let detail =
        detail.ok_or_else(|| Error::Internal(format!("change {seq}: a history change without detail")))?;
    let h = match kind {
        KIND_LABEL_SET => {
            let l: LabelDetail = from_json(seq, detail)?;
            HistoryChange::LabelSet(Label {
                name: l.name,
                seq: l.seq,
                committed_ms: l.committed_ms,
                note: l.note,
                automatic: l.automatic,
                principal: l.principal,
            })
        }
        KIND_LABEL_REMOVED => HistoryChange::LabelRemoved(from_json(seq, detail)?),
        KIND_PIN => {
            let p: PinDetail = from_json(seq, detail)?;
            HistoryChange::Pin { path: RelPath::new(p.path)?, seq: p.seq, pinned: p.pinned }
        }
        KIND_RETENTION => HistoryChange::Retention(from_json::<Retention>(seq, detail)?),
        KIND_PRUNE => {
            let removed: Vec<(String, u64)> = from_json(seq, detail)?;
            let removed =
                removed.into_iter().map(|(p, s)| Ok((RelPath::new(p)?, s))).collect::<Result<_>>()?;
            HistoryChange::Prune(removed)
        }
        other => return Err(Error::Internal(format!("change {seq}: a change of kind {other}"))),
    };
    Ok(Change { seq, namespace, what: What::History(h) })
}

/// Decodes a history-only change from a change-log row (columns `seq`,
/// `namespace`, `kind`, `detail`, read by name).
pub(super) fn history_change_from_row(r: &Row) -> Result<Change> {
    let seq: i64 = r.try_get("seq")?;
    let detail: Option<&str> = r.try_get("detail")?;
    history_change_from_log(seq as u64, r.try_get("namespace")?, r.try_get("kind")?, detail)
}

/// The content of the newest version of `path` that has content
/// ([`crate::storage::meta::Want::moved_from`]).
pub(super) async fn newest_content(c: &Client, ns: &str, path: &str) -> Result<Option<ContentHash>> {
    let row = c
        .query_typed_opt(
            "SELECT hash FROM versions WHERE namespace = $1 AND path = $2 AND NOT deleted
             ORDER BY seq DESC LIMIT 1",
            &[(&ns, Type::TEXT), (&path, Type::TEXT)],
        )
        .await?;
    let hash: Option<Vec<u8>> = row.map(|r| r.try_get(0)).transpose()?.flatten();
    Ok(hash.map(|h| ContentHash::try_from(&h[..])).transpose()?)
}

/// [`moved_to`]'s query: by the moves index, newest first.
const MOVED_TO_SQL: &str = "SELECT path FROM versions
     WHERE namespace = $1 AND moved_from = $2 AND kind = $3 AND seq > $4
     ORDER BY seq DESC LIMIT 1";

/// The path of the newest move from `path` committed after `after`
/// ([`crate::storage::meta::Want::moved_away`]: the journal then records
/// the deletion as `MovedAway` to that path).
pub(super) async fn moved_to(c: &Client, ns: &str, path: &str, after: u64) -> Result<Option<RelPath>> {
    let (kind, after) = (VersionKind::Move.code(), big(after));
    let row = c
        .query_typed_opt(
            MOVED_TO_SQL,
            &[(&ns, Type::TEXT), (&path, Type::TEXT), (&kind, Type::INT8), (&after, Type::INT8)],
        )
        .await?;
    Ok(row.map(|r| r.try_get::<_, String>(0)).transpose()?.map(RelPath::new).transpose()?)
}

/// Runs a query whose rows are versions of [`VERSION_COLUMNS`].
async fn versions_of(c: &Client, sql: &str, params: &[Param<'_>]) -> Result<Vec<Version>> {
    c.query_typed(sql, params).await?.iter().map(version_from_row).collect()
}

/// Up to `limit` versions of `path` below `below`, newest first.
pub(super) async fn versions(
    c: &Client,
    ns: &str,
    path: &str,
    below: u64,
    limit: usize,
) -> Result<Vec<Version>> {
    let (below, limit) = (big(below), limit_of(limit));
    versions_of(
        c,
        &format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE namespace = $1 AND path = $2 AND seq < $3
             ORDER BY seq DESC LIMIT $4"
        ),
        &[(&ns, Type::TEXT), (&path, Type::TEXT), (&below, Type::INT8), (&limit, Type::INT8)],
    )
    .await
}

/// The version of `path` at exactly `seq` (`exact`) or the newest at or
/// below it.
pub(super) async fn version(
    c: &Client,
    ns: &str,
    path: &str,
    seq: u64,
    exact: bool,
) -> Result<Option<Version>> {
    let sql = if exact {
        format!("SELECT {VERSION_COLUMNS} FROM versions WHERE namespace = $1 AND path = $2 AND seq = $3")
    } else {
        format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE namespace = $1 AND path = $2 AND seq <= $3
             ORDER BY seq DESC LIMIT 1"
        )
    };
    let seq = big(seq);
    let row = c.query_typed_opt(&sql, &[(&ns, Type::TEXT), (&path, Type::TEXT), (&seq, Type::INT8)]).await?;
    row.as_ref().map(version_from_row).transpose()
}

/// [`seq_at_ms`]'s query.
const SEQ_AT_MS_SQL: &str =
    "SELECT (SELECT committed_ms FROM versions WHERE namespace = $1 ORDER BY seq LIMIT 1),
            (SELECT seq FROM versions WHERE namespace = $1 AND committed_ms <= $2 ORDER BY seq DESC LIMIT 1)";

/// The oldest kept version's commit time in `ns` (the lowest seq's), and
/// the highest seq committed at or before `at_ms`.
pub(super) async fn seq_at_ms(c: &Client, ns: &str, at_ms: i64) -> Result<(Option<i64>, Option<u64>)> {
    // Both walk the (namespace, seq) index, from its ends: commit times
    // grow with seqs, so the oldest version is the lowest seq's and the
    // search from the newest stops at the first one early enough.
    let row = c.query_typed_one(SEQ_AT_MS_SQL, &[(&ns, Type::TEXT), (&at_ms, Type::INT8)]).await?;
    Ok((row.try_get(0)?, row.try_get::<_, Option<i64>>(1)?.map(|s| s as u64)))
}

/// When the newest version of `ns` at or below `seq` was committed.
pub(super) async fn committed_ms_at(c: &Client, ns: &str, seq: u64) -> Result<Option<i64>> {
    let seq = big(seq);
    let row = c
        .query_typed_opt(
            "SELECT committed_ms FROM versions WHERE namespace = $1 AND seq <= $2 ORDER BY seq DESC LIMIT 1",
            &[(&ns, Type::TEXT), (&seq, Type::INT8)],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Each path's newest version at or below `seq`, under `prefix`.
pub(super) async fn state_at(
    c: &Client,
    ns: &str,
    prefix: &str,
    seq: u64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<Version>> {
    let prefix = prefix.trim_end_matches('/');
    // Every bound is a plain range on the (namespace, path, seq) key, so a
    // page starts where the last one ended. A path holds no control
    // character (and PostgreSQL's text no NUL), so `after` + U+0001 is the
    // smallest path above `after`.
    let after = after.map(|a| format!("{a}\u{1}"));
    let (seq, limit) = (big(seq), limit_of(limit));
    if prefix.is_empty() {
        let lo = after.unwrap_or_default();
        versions_of(
            c,
            &state_at_sql(false),
            &[(&ns, Type::TEXT), (&lo, Type::TEXT), (&seq, Type::INT8), (&limit, Type::INT8)],
        )
        .await
    } else {
        // The path itself, and the paths below it: those sort between
        // "p/" and "p0" ('0' follows '/'); "p-x" sorts between "p" and
        // "p/" and is not below it.
        let (below, hi) = (format!("{prefix}/"), format!("{prefix}0"));
        let lo = after.filter(|a| a.as_str() > prefix).unwrap_or_else(|| prefix.to_owned());
        versions_of(
            c,
            &state_at_sql(true),
            &[
                (&ns, Type::TEXT),
                (&lo, Type::TEXT),
                (&hi, Type::TEXT),
                (&prefix, Type::TEXT),
                (&below, Type::TEXT),
                (&seq, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await
    }
}

/// [`state_at`]'s query, for the whole namespace or `under` a folder.
fn state_at_sql(under: bool) -> String {
    // The primary key gives the rows in path order; each path's few
    // versions are sorted newest first on the way (an incremental sort)
    // and the first of each kept, so a page reads its own paths' versions
    // and stops: no sort of the namespace's history.
    if under {
        format!(
            "SELECT DISTINCT ON (path) {VERSION_COLUMNS} FROM versions
             WHERE namespace = $1 AND path >= $2 AND path < $3 AND (path = $4 OR path >= $5) AND seq <= $6
             ORDER BY path, seq DESC LIMIT $7"
        )
    } else {
        format!(
            "SELECT DISTINCT ON (path) {VERSION_COLUMNS} FROM versions
             WHERE namespace = $1 AND path >= $2 AND seq <= $3
             ORDER BY path, seq DESC LIMIT $4"
        )
    }
}

/// The versions of `ns` in (path, seq) order after `after`.
pub(super) async fn versions_page(
    c: &Client,
    ns: &str,
    after: Option<(&str, u64)>,
    limit: usize,
) -> Result<Vec<Version>> {
    let limit = limit_of(limit);
    match after {
        None => {
            versions_of(
                c,
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions WHERE namespace = $1 ORDER BY path, seq LIMIT $2"
                ),
                &[(&ns, Type::TEXT), (&limit, Type::INT8)],
            )
            .await
        }
        Some((path, seq)) => {
            // A row comparison on the key's columns: the index scan starts
            // at the bound.
            let seq = big(seq);
            versions_of(
                c,
                &format!(
                    "SELECT {VERSION_COLUMNS} FROM versions
                     WHERE namespace = $1 AND (path, seq) > ($2, $3)
                     ORDER BY path, seq LIMIT $4"
                ),
                &[(&ns, Type::TEXT), (&path, Type::TEXT), (&seq, Type::INT8), (&limit, Type::INT8)],
            )
            .await
        }
    }
}

/// [`trash`]'s query: each deletion with the version before it that had
/// content, in one statement. A deletion that a later move took from is
/// found by the moves index, not by walking every later version.
fn trash_sql() -> String {
    let of =
        |t: &str| VERSION_COLUMNS.split(", ").map(|col| format!("{t}.{col}")).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT {}, {} FROM files f
         JOIN versions v ON v.namespace = f.namespace AND v.path = f.path AND v.seq = f.version
         LEFT JOIN LATERAL (
             SELECT {VERSION_COLUMNS} FROM versions b
             WHERE b.namespace = f.namespace AND b.path = f.path AND b.seq < f.version AND NOT b.deleted
             ORDER BY b.seq DESC LIMIT 1) l ON true
         WHERE f.namespace = $1 AND f.deleted
           AND ($2 = '' OR f.path = $2 OR (f.path >= $3 AND f.path < $4))
           AND v.kind = $5 AND v.committed_ms >= $6
           AND NOT EXISTS (SELECT 1 FROM versions m
                           WHERE m.namespace = f.namespace AND m.moved_from = f.path
                             AND m.kind = $7 AND m.seq > f.version)
         ORDER BY v.seq DESC",
        of("v"),
        of("l")
    )
}

/// The deletions of `ns` under `prefix` since `since_ms` that the trash
/// lists, newest first, each with the last version that had content.
pub(super) async fn trash(
    c: &Client,
    ns: &str,
    prefix: &str,
    since_ms: i64,
) -> Result<Vec<(Version, Option<Version>)>> {
    let prefix = prefix.trim_end_matches('/');
    let (lo, hi) = (format!("{prefix}/"), format!("{prefix}0"));
    let (delete, moved) = (VersionKind::Delete.code(), VersionKind::Move.code());
    let rows = c
        .query_typed(
            &trash_sql(),
            &[
                (&ns, Type::TEXT),
                (&prefix, Type::TEXT),
                (&lo, Type::TEXT),
                (&hi, Type::TEXT),
                (&delete, Type::INT8),
                (&since_ms, Type::INT8),
                (&moved, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let before = match r.try_get::<_, Option<String>>(VERSION_WIDTH)? {
                Some(_) => Some(version_from_columns(r, VERSION_WIDTH)?),
                None => None,
            };
            Ok((version_from_columns(r, 0)?, before))
        })
        .collect()
}

const LABEL_COLUMNS: &str = "name, seq, committed_ms, note, automatic, principal";

fn label_from_row(r: &Row) -> Result<Label> {
    Ok(Label {
        name: r.try_get(0)?,
        seq: r.try_get::<_, i64>(1)? as u64,
        committed_ms: r.try_get(2)?,
        note: r.try_get(3)?,
        automatic: r.try_get(4)?,
        principal: r.try_get(5)?,
    })
}

/// The labels of `ns`, lowest seq first.
pub(super) async fn labels(c: &Client, ns: &str) -> Result<Vec<Label>> {
    let rows = c
        .query_typed(
            &format!("SELECT {LABEL_COLUMNS} FROM labels WHERE namespace = $1 ORDER BY seq, name"),
            &[(&ns, Type::TEXT)],
        )
        .await?;
    rows.iter().map(label_from_row).collect()
}

/// The label `name` of `ns`.
pub(super) async fn label(c: &Client, ns: &str, name: &str) -> Result<Option<Label>> {
    let row = c
        .query_typed_opt(
            &format!("SELECT {LABEL_COLUMNS} FROM labels WHERE namespace = $1 AND name = $2"),
            &[(&ns, Type::TEXT), (&name, Type::TEXT)],
        )
        .await?;
    row.as_ref().map(label_from_row).transpose()
}

/// The retention set at run time, per namespace.
pub(super) async fn retentions(c: &Client) -> Result<Vec<(String, Retention)>> {
    let rows = c.query_typed("SELECT namespace, policy FROM retention ORDER BY namespace", &[]).await?;
    rows.iter()
        .map(|r| {
            let (ns, policy): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            let detail: Retention = serde_json::from_str(&policy)
                .map_err(|e| Error::Internal(format!("the stored retention of {ns}: {e}")))?;
            Ok((ns, detail))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::testing::postgres::Postgres;

    /// One cluster for this test process (its watcher stops it when the
    /// process ends), a fresh database per test, with the metadata schema.
    async fn database() -> Client {
        static CLUSTER: OnceLock<Postgres> = OnceLock::new();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let pg = CLUSTER.get_or_init(Postgres::start);
        let url = pg.create_database(&format!("history_{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        super::super::schema::migrate(&mut client).await.unwrap();
        client
    }

    fn path(p: &str) -> RelPath {
        RelPath::new(p).unwrap()
    }

    fn hash(data: &str) -> ContentHash {
        ContentHash::of(data.as_bytes())
    }

    fn entry(p: &str, seq: u64, data: Option<&str>) -> Entry {
        let content = data.map(|d| Content {
            hash: hash(d),
            size: d.len() as u64,
            mtime_ns: 7,
            executable: false,
            symlink: false,
            folder: false,
        });
        Entry { path: path(p), version: seq, content, client_id: "laptop".into() }
    }

    /// Commits a file change the way the metadata backend does: its
    /// version, and the path's manifest row.
    async fn commit(c: &Client, e: &Entry, note: VersionNote) -> Version {
        let mut rows = crate::storage::postgres::FileRows::default();
        rows.push("ns", e, &note);
        write_versions(c, &rows).await.unwrap();
        let hash = e.content.map(|c| c.hash.as_bytes().to_vec());
        let (seq, deleted) = (big(e.version), e.is_deleted());
        c.execute_typed(
            "INSERT INTO files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id)
             VALUES ('ns', $1, $2, $3, 0, $4, 0, false, '')
             ON CONFLICT (namespace, path) DO UPDATE SET
               version = excluded.version, deleted = excluded.deleted, hash = excluded.hash",
            &[(&e.path.as_str(), Type::TEXT), (&seq, Type::INT8), (&deleted, Type::BOOL), (&hash, Type::BYTEA)],
        )
        .await
        .unwrap();
        Version { entry: e.clone(), note, pinned: false }
    }

    fn note(e: &Entry, ms: i64) -> VersionNote {
        VersionNote::plain(e, "alice", ms)
    }

    // Every read and write of the history, on a real database: a write, a
    // move and the deletion it ends, a plain deletion (the trash), a
    // folder's state at a point, labels, a pin, a retention, a prune, and
    // what pruning reads.
    #[tokio::test]
    async fn history_round_trips_through_postgres() {
        let c = database().await;
        let a1 =
            commit(&c, &entry("docs/a", 1, Some("one")), note(&entry("docs/a", 1, Some("one")), 100)).await;
        let a2e = entry("docs/a", 2, Some("two"));
        let a2 = commit(&c, &a2e, note(&a2e, 200)).await;
        // docs/a moves to docs/b: the move, then the deletion it ends.
        let b3e = entry("docs/b", 3, Some("two"));
        let mut moved = note(&b3e, 300);
        moved.kind = VersionKind::Move;
        moved.moved_from = Some(path("docs/a"));
        let b3 = commit(&c, &b3e, moved).await;
        assert_eq!(moved_to(&c, "ns", "docs/a", 2).await.unwrap(), Some(path("docs/b")));
        assert_eq!(moved_to(&c, "ns", "docs/a", 3).await.unwrap(), None, "no move after seq 3");
        let a4e = entry("docs/a", 4, None);
        let mut away = note(&a4e, 400);
        away.kind = VersionKind::MovedAway;
        away.moved_to = Some(path("docs/b"));
        let a4 = commit(&c, &a4e, away).await;
        // A plain deletion, and a file of another folder.
        let c5e = entry("docs/c", 5, Some("three"));
        let c5 = commit(&c, &c5e, note(&c5e, 500)).await;
        let c6e = entry("docs/c", 6, None);
        let c6 = commit(&c, &c6e, note(&c6e, 600)).await;
        let x7e = entry("docs-x", 7, Some("four"));
        let x7 = commit(&c, &x7e, note(&x7e, 700)).await;

        assert_eq!(
            versions(&c, "ns", "docs/a", u64::MAX, usize::MAX).await.unwrap(),
            [a4.clone(), a2.clone(), a1]
        );
        assert_eq!(versions(&c, "ns", "docs/a", 4, 1).await.unwrap(), std::slice::from_ref(&a2));
        assert_eq!(version(&c, "ns", "docs/a", 2, true).await.unwrap(), Some(a2.clone()));
        assert_eq!(version(&c, "ns", "docs/a", 3, true).await.unwrap(), None);
        assert_eq!(version(&c, "ns", "docs/a", 3, false).await.unwrap(), Some(a2.clone()));
        assert_eq!(newest_content(&c, "ns", "docs/a").await.unwrap(), Some(hash("two")));
        assert!(refers_to(&c, "ns", &hash("one")).await.unwrap(), "a kept version refers to it");
        assert!(!refers_to(&c, "other", &hash("one")).await.unwrap());

        assert_eq!(seq_at_ms(&c, "ns", 450).await.unwrap(), (Some(100), Some(4)));
        assert_eq!(seq_at_ms(&c, "ns", 50).await.unwrap(), (Some(100), None));
        assert_eq!(committed_ms_at(&c, "ns", 5).await.unwrap(), Some(500));

        // The state after seq 3: "docs" and below, not "docs-x"; paged.
        let at3 = state_at(&c, "ns", "docs/", 3, None, 10).await.unwrap();
        assert_eq!(at3, [a2.clone(), b3.clone()]);
        assert_eq!(
            state_at(&c, "ns", "docs", 3, Some("docs/a"), 10).await.unwrap(),
            std::slice::from_ref(&b3)
        );
        let now = state_at(&c, "ns", "", u64::MAX, None, usize::MAX).await.unwrap();
        assert_eq!(now, [x7.clone(), a4.clone(), b3.clone(), c6.clone()]);
        assert_eq!(
            state_at(&c, "ns", "", u64::MAX, Some("docs/a"), 1).await.unwrap(),
            std::slice::from_ref(&b3)
        );

        let page = versions_page(&c, "ns", None, 3).await.unwrap();
        assert_eq!(seqs(&page), [7, 1, 2]);
        assert_eq!(seqs(&versions_page(&c, "ns", Some(("docs/a", 2)), 3).await.unwrap()), [4, 3, 5]);

        // The trash: the plain deletion with the content before it; the
        // move away is not in it.
        assert_eq!(trash(&c, "ns", "docs", 0).await.unwrap(), [(c6.clone(), Some(c5.clone()))]);
        assert_eq!(trash(&c, "ns", "", 601).await.unwrap(), []);

        // Labels, a pin, a retention: applied and logged, and the log
        // decodes back to the change.
        let label = Label {
            name: "before".into(),
            seq: 3,
            committed_ms: 300,
            note: "n".into(),
            automatic: false,
            principal: "alice".into(),
        };
        let retention = Retention::default();
        let changes = [
            HistoryChange::LabelSet(label.clone()),
            HistoryChange::Pin { path: path("docs/a"), seq: 2, pinned: true },
            HistoryChange::Retention(retention),
            HistoryChange::Prune(vec![(path("docs/c"), 5)]),
        ];
        for (i, h) in changes.iter().enumerate() {
            let change =
                Change { seq: 10 + i as u64, namespace: "ns".into(), what: What::History(h.clone()) };
            write_history_change(&c, &change, h).await.unwrap();
        }
        let logged = c
            .query_typed("SELECT seq, namespace, kind, detail FROM changes ORDER BY seq", &[])
            .await
            .unwrap();
        for (row, h) in logged.iter().zip(&changes) {
            assert!(is_history_kind(row.get("kind")));
            assert_eq!(history_change_from_row(row).unwrap().what, What::History(h.clone()));
        }
        assert_eq!(labels(&c, "ns").await.unwrap(), std::slice::from_ref(&label));
        assert_eq!(label_of(&c, "before").await, Some(label));
        assert!(version(&c, "ns", "docs/a", 2, true).await.unwrap().unwrap().pinned);
        assert_eq!(retentions(&c).await.unwrap(), [("ns".to_owned(), retention)]);
        assert_eq!(version(&c, "ns", "docs/c", 5, true).await.unwrap(), None, "pruned");
        apply_history_change(&c, "ns", &HistoryChange::LabelRemoved("before".into())).await.unwrap();
        assert_eq!(label_of(&c, "before").await, None);

        // What pruning reads.
        use super::super::history_prune::*;
        assert_eq!(history_namespaces(&c).await.unwrap(), ["ns"]);
        let asked = [hash("four"), hash("one"), hash("two")];
        assert_eq!(live_contents(&c, &asked).await.unwrap(), [hash("four"), hash("two")]);
        assert_eq!(live_files(&c, "ns").await.unwrap(), 2);
        // Not newest: docs/a 1 and 2 (a4 is newest), docs/b none; "one"
        // is no live entry's content, "two" is docs/b's.
        let usage = history_usage(&c, Some("ns")).await.unwrap();
        assert_eq!((usage.versions, usage.bytes), (2, 3));
        assert_eq!(history_usage(&c, Some("other")).await.unwrap().versions, 0);
        assert_eq!(history_usage(&c, None).await.unwrap().versions, 2);
    }

    /// A namespace of 100,000 files (two versions each), 1,000 of them
    /// moved to another folder (a move version from them) and 1,000
    /// deleted, as statistics see it.
    const HISTORY_AT_SCALE: &str = r#"
        INSERT INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable, client_id,
                              principal, committed_ms, kind)
        SELECT 'ns', 'big/f' || i, 2 * i + k, false, 1, sha256(int8send(2 * i + k)), 0, false, 'c', 'p',
               2 * i + k, 1
        FROM generate_series(1, 100000) i, generate_series(0, 1) k;
        INSERT INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable, client_id,
                              principal, committed_ms, kind, moved_from)
        SELECT 'ns', 'moved/f' || i, 300000 + i, false, 1, sha256(int8send(2 * i + 1)), 0, false, 'c', 'p',
               300000 + i, 3, 'big/f' || i
        FROM generate_series(1, 1000) i;
        INSERT INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable, client_id,
                              principal, committed_ms, kind)
        SELECT 'ns', 'big/f' || i, 400000 + i, true, 0, NULL, 0, false, 'c', 'p', 400000 + i, 2
        FROM generate_series(1001, 2000) i;
        INSERT INTO files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id)
        SELECT namespace, path, max(seq), bool_or(deleted), 1, NULL, 0, false, 'c'
        FROM versions GROUP BY namespace, path;
        ANALYZE;"#;

    /// PostgreSQL's plan of `sql` with `params`, one line per step.
    async fn plan(c: &Client, sql: &str, params: &[Param<'_>]) -> String {
        let rows = c.query_typed(&format!("EXPLAIN {sql}"), params).await.unwrap();
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
    }

    /// Whether an entry or a kept version of namespace `ns` refers to
    /// `hash`, as the facts of a write read it.
    async fn refers_to(c: &Client, ns: &str, hash: &ContentHash) -> Result<bool> {
        let h = hash.as_bytes().as_slice();
        let row = c.query_typed_one(super::super::FACTS_SQL, &facts_params(&ns, &h)).await?;
        Ok(row.try_get(super::super::FACTS_LOCK_AT + super::super::locks::LOCK_WIDTH + 2)?)
    }

    /// [`super::super::FACTS_SQL`]'s parameters when only whether `ns`
    /// refers to `hash` is wanted.
    fn facts_params<'a>(ns: &'a &'a str, hash: &'a &'a [u8]) -> Vec<Param<'a>> {
        const NONE: Option<&str> = None;
        const NO_FOLDERS: &[&str] = &[];
        vec![
            (ns, Type::TEXT),
            (&"a-path-never-written", Type::TEXT),
            (&NO_FOLDERS, Type::TEXT_ARRAY),
            (&NONE, Type::TEXT),
            (&NONE, Type::TEXT),
            (hash, Type::BYTEA),
        ]
    }

    /// Whether a plan sorts rows it read (an incremental sort of each
    /// path's few versions, already in path order, is no such sort) or
    /// reads a table whole.
    fn scans(plan: &str) -> bool {
        plan.lines().any(|l| {
            let step = l.trim_start().trim_start_matches("->").trim_start();
            step.starts_with("Sort  (")
                || step.starts_with("Seq Scan")
                || step.starts_with("Parallel Seq Scan")
        })
    }

    // The history queries run per page, per deletion or per trash entry:
    // each must seek to its bound in an index and read about what it
    // returns, never walk or sort the namespace's versions from the start
    // (what made a 100,000-file browse take 7.6 s on SQLite). PostgreSQL
    // plans by the data, so the plans are taken on a namespace of that
    // size, with the parameters of a page in its middle.
    #[tokio::test]
    async fn history_queries_seek_to_their_bounds() {
        let c = database().await;
        c.batch_execute(HISTORY_AT_SCALE).await.unwrap();
        let (seq, limit) = (i64::MAX, 1000i64);
        let whole: [Param<'_>; 4] =
            [(&"ns", Type::TEXT), (&"big/f5", Type::TEXT), (&seq, Type::INT8), (&limit, Type::INT8)];
        let p = plan(&c, &state_at_sql(false), &whole).await;
        assert!(p.contains("versions_pkey") && !scans(&p), "state_at: {p}");
        let under: [Param<'_>; 7] = [
            (&"ns", Type::TEXT),
            (&"big/f5", Type::TEXT),
            (&"big0", Type::TEXT),
            (&"big", Type::TEXT),
            (&"big/", Type::TEXT),
            (&seq, Type::INT8),
            (&limit, Type::INT8),
        ];
        let p = plan(&c, &state_at_sql(true), &under).await;
        assert!(p.contains("versions_pkey") && !scans(&p), "state_at under a folder: {p}");

        let (kind, after) = (VersionKind::Move.code(), 5i64);
        let p = plan(
            &c,
            MOVED_TO_SQL,
            &[(&"ns", Type::TEXT), (&"big/f5", Type::TEXT), (&kind, Type::INT8), (&after, Type::INT8)],
        )
        .await;
        assert!(p.contains("versions_by_moved_from") && !scans(&p), "moved_to: {p}");

        let (delete, since) = (VersionKind::Delete.code(), 0i64);
        let p = plan(
            &c,
            &trash_sql(),
            &[
                (&"ns", Type::TEXT),
                (&"big", Type::TEXT),
                (&"big/", Type::TEXT),
                (&"big0", Type::TEXT),
                (&delete, Type::INT8),
                (&since, Type::INT8),
                (&kind, Type::INT8),
            ],
        )
        .await;
        // It reads the folder's manifest rows (as the embedded backend
        // does); per deletion, the moves since and the version before are
        // seeks.
        let anti = p.lines().skip_while(|l| !l.contains("Anti Join")).collect::<Vec<_>>().join("\n");
        assert!(anti.contains("Index Scan using versions_by_moved_from on versions m"), "trash: {p}");
        assert!(p.contains("Index Scan Backward using versions_pkey on versions b"), "trash: {p}");

        // The facts of a write and the pruning reads: by their indexes.
        let h: Vec<u8> = c.query_one("SELECT hash FROM versions WHERE seq = 154", &[]).await.unwrap().get(0);
        // (The facts' one sort is of the path's own folders' rows; the
        // empty locks table is read whole.)
        let p = plan(&c, super::super::FACTS_SQL, &facts_params(&"ns", &h.as_slice())).await;
        assert!(
            p.contains("files_by_hash")
                && p.contains("versions_by_hash")
                && !p.contains("Seq Scan on files")
                && !p.contains("Seq Scan on versions"),
            "refers_to: {p}"
        );
        let list = vec![h.as_slice()];
        let p = plan(&c, super::super::history_prune::LIVE_CONTENTS_SQL, &[(&list, Type::BYTEA_ARRAY)]).await;
        assert!(p.contains("files_by_hash") && !scans(&p), "live_contents: {p}");
        let p = plan(&c, super::super::history_prune::HISTORY_NAMESPACES_SQL, &[]).await;
        assert!(!scans(&p), "history_namespaces: {p}");
        let at = 1000i64;
        let p = plan(&c, SEQ_AT_MS_SQL, &[(&"ns", Type::TEXT), (&at, Type::INT8)]).await;
        assert!(p.contains("versions_by_seq") && !scans(&p), "seq_at_ms: {p}");
    }

    fn seqs(versions: &[Version]) -> Vec<u64> {
        versions.iter().map(Version::seq).collect()
    }

    async fn label_of(c: &Client, name: &str) -> Option<Label> {
        label(c, "ns", name).await.unwrap()
    }
}
