//! The SQLite schema of a data folder and its connection settings.

use rusqlite::Connection;

use crate::error::Result;

/// Bumped whenever the schema changes; a newer one is refused at open.
pub(crate) const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- The manifest: one row per path per namespace, live or tombstone.
CREATE TABLE IF NOT EXISTS files (
    namespace  TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    version    INTEGER NOT NULL,   -- seq of the change that produced this row
    deleted    INTEGER NOT NULL,   -- 1 for a tombstone
    size       INTEGER NOT NULL,
    hash       BLOB,               -- NULL for a tombstone
    mtime_ns   INTEGER NOT NULL,
    executable INTEGER NOT NULL,
    client_id  TEXT    NOT NULL,
    PRIMARY KEY (namespace, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_by_hash ON files (hash) WHERE hash IS NOT NULL;

-- The change log, source of Subscribe and of replica catch-up. Rows keep
-- the full new state of the path, so it doubles as version history.
CREATE TABLE IF NOT EXISTS changes (
    seq          INTEGER PRIMARY KEY,
    namespace    TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    deleted      INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    hash         BLOB,
    mtime_ns     INTEGER NOT NULL,
    executable   INTEGER NOT NULL,
    client_id    TEXT    NOT NULL,
    committed_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_namespace ON changes (namespace, seq);
";

/// Opens a connection with the settings every connection uses: WAL so
/// readers never block the writer, and `synchronous = FULL` so that a
/// commit is on disk before it is acknowledged.
pub(crate) fn connect(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// Creates the tables if needed.
pub(crate) fn init(conn: &Connection) -> Result<()> {
    conn.execute_batch(SCHEMA)?;
    Ok(())
}
