//! The SQLite schema of a data folder and its connection settings.

use rusqlite::Connection;

use crate::error::{Error, Result, StorageError, StorageErrorKind};

/// Bumped whenever the schema changes; a newer one is refused at open.
pub(crate) const SCHEMA_VERSION: i64 = 5;

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
    symlink    INTEGER NOT NULL DEFAULT 0,  -- 1: a symbolic link, its target the content
    folder     INTEGER NOT NULL DEFAULT 0,  -- 1: a folder (no content)
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
    committed_ms INTEGER NOT NULL,
    kind         INTEGER NOT NULL DEFAULT 0,  -- 0 file change, 4 lock, 5 unlock
    lock         BLOB,                        -- the lock (a syncstore.v1.Lock)
    symlink      INTEGER NOT NULL DEFAULT 0,
    folder       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS changes_by_namespace ON changes (namespace, seq);

-- Live locks: at most one per path. A row past its expiry is no longer in
-- force; the primary's sweeper removes it with an unlock change.
CREATE TABLE IF NOT EXISTS locks (
    namespace   TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    lock_id     TEXT    NOT NULL UNIQUE,
    client_id   TEXT    NOT NULL,
    holder      TEXT    NOT NULL,
    note        TEXT    NOT NULL,
    acquired_ms INTEGER NOT NULL,
    expires_ms  INTEGER NOT NULL,
    ttl_seconds INTEGER NOT NULL,
    token       INTEGER NOT NULL,    -- seq of the granting change
    principal   TEXT    NOT NULL DEFAULT '',  -- the holder's token name ('' before version 5)
    PRIMARY KEY (namespace, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locks_by_expiry ON locks (expires_ms);
";

/// How long a connection waits for another connection's lock on the
/// database before its statement fails with `SQLITE_BUSY`. In WAL mode
/// readers and the one writer do not block each other, so a wait is rare
/// and short; this only bounds one that never ends.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens a connection with the settings every connection uses: WAL so
/// readers never block the writer, and `synchronous = FULL` so that a
/// commit is on disk before it is acknowledged.
pub(crate) fn connect(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Creates the tables if needed, and brings older data folders up to date
/// (version 1 lacked the lock columns, version 2 the symlink ones, version 3
/// the folder ones, version 4 a lock's principal).
pub(crate) fn init(conn: &Connection) -> Result<()> {
    let has_changes: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'changes')",
        [],
        |r| r.get(0),
    )?;
    if has_changes {
        // Each step: the column whose absence marks the old version, and
        // what brings it to the next.
        const STEPS: [(&str, &str, &str); 4] = [
            (
                "changes",
                "kind",
                "ALTER TABLE changes ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE changes ADD COLUMN lock BLOB;
                 UPDATE meta SET value = '2' WHERE key = 'schema_version';",
            ),
            (
                "files",
                "symlink",
                "ALTER TABLE files ADD COLUMN symlink INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE changes ADD COLUMN symlink INTEGER NOT NULL DEFAULT 0;
                 UPDATE meta SET value = '3' WHERE key = 'schema_version';",
            ),
            (
                "files",
                "folder",
                "ALTER TABLE files ADD COLUMN folder INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE changes ADD COLUMN folder INTEGER NOT NULL DEFAULT 0;
                 UPDATE meta SET value = '4' WHERE key = 'schema_version';",
            ),
            (
                "locks",
                "principal",
                "ALTER TABLE locks ADD COLUMN principal TEXT NOT NULL DEFAULT '';
                 UPDATE meta SET value = '5' WHERE key = 'schema_version';",
            ),
        ];
        for (table, column, upgrade) in STEPS {
            // A table that does not exist yet (version 1 had no `locks`)
            // is created whole below.
            if has_table(conn, table)? && !has_column(conn, table, column)? {
                conn.execute_batch(&format!("BEGIN; {upgrade} COMMIT;"))?;
            }
        }
    }
    conn.execute_batch(SCHEMA)?;
    Ok(())
}

/// Whether the table `table` exists.
fn has_table(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?)
}

/// Whether `table` has a column named `column`.
pub(crate) fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
        [table, column],
        |r| r.get(0),
    )?)
}

/// SQLite's errors become the backend-neutral [`StorageError`]; its "database
/// or disk is full" (`SQLITE_FULL`) is the disk being full.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        let kind = match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageErrorKind::DiskFull,
            _ => StorageErrorKind::Other,
        };
        Error::Storage(StorageError::new(kind, e))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_full_database_is_a_full_disk_and_other_failures_are_internal() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("meta.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); PRAGMA max_page_count = 16;").unwrap();
        let full = (0..1000)
            .find_map(|_| conn.execute("INSERT INTO t VALUES (zeroblob(4096))", []).err())
            .expect("the database fills up");
        let full = Error::from(full);
        assert!(matches!(&full, Error::Storage(e) if e.kind() == StorageErrorKind::DiskFull), "{full:?}");
        assert_eq!(tonic::Status::from(full).code(), Code::ResourceExhausted);

        let missing = conn.execute("INSERT INTO absent VALUES (1)", []).unwrap_err();
        let other = Error::from(missing);
        assert!(matches!(&other, Error::Storage(e) if e.kind() == StorageErrorKind::Other));
        assert_eq!(tonic::Status::from(other).code(), Code::Internal);
    }
}
