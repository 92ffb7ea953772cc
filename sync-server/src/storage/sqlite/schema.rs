//! The SQLite schema of a data folder and its connection settings.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::locks::{LOCK_CHANGE_COLUMNS, lock_change_columns};
use crate::error::{Error, Result, StorageError, StorageErrorKind};

/// Bumped whenever the schema changes; a newer one is refused at open.
pub(crate) const SCHEMA_VERSION: i64 = 8;

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
    kind         INTEGER NOT NULL DEFAULT 0,  -- 0 file change, 1 lock granted or refreshed, 2 lock ended
    symlink      INTEGER NOT NULL DEFAULT 0,
    folder       INTEGER NOT NULL DEFAULT 0,
    -- A lock change (NULL for a file change): the lock as it is after the
    -- change, its path in `path` ...
    lock_id          TEXT,
    lock_client_id   TEXT,     -- the holder's client id
    lock_principal   TEXT,     -- the holder's principal ('' before version 5)
    lock_holder      TEXT,     -- the holder's readable name
    lock_note        TEXT,
    lock_acquired_ms INTEGER,
    lock_expires_ms  INTEGER,
    lock_ttl_seconds INTEGER,
    lock_token       INTEGER,  -- seq of the granting change
    -- ... and, for an end, why (1 released, 2 expired, 3 broken) and who
    -- ended it ('' for an expiry).
    lock_end                INTEGER,
    lock_ended_by_client_id TEXT,
    lock_ended_by_principal TEXT,
    -- Since version 8, a file change's version note (see `versions`) ...
    principal     TEXT    NOT NULL DEFAULT '',
    version_kind  INTEGER NOT NULL DEFAULT 0,
    moved_from    TEXT,
    moved_to      TEXT,
    restored_from INTEGER,
    -- ... and a history-only change's content (kind 3 to 6, see
    -- `history.rs`), as JSON.
    detail        TEXT
);
CREATE INDEX IF NOT EXISTS changes_by_namespace ON changes (namespace, seq);

-- Version history (since version 8): every file change still kept by
-- retention, written with the change. A path's current entry is always
-- one of its versions.
CREATE TABLE IF NOT EXISTS versions (
    namespace     TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    seq           INTEGER NOT NULL,   -- the version number
    deleted       INTEGER NOT NULL,
    size          INTEGER NOT NULL,
    hash          BLOB,               -- NULL for a deletion
    mtime_ns      INTEGER NOT NULL,
    executable    INTEGER NOT NULL,
    symlink       INTEGER NOT NULL DEFAULT 0,
    folder        INTEGER NOT NULL DEFAULT 0,
    client_id     TEXT    NOT NULL,
    principal     TEXT    NOT NULL,   -- '' for a version older than history
    committed_ms  INTEGER NOT NULL,   -- the primary's clock
    kind          INTEGER NOT NULL,   -- 1 write, 2 delete, 3 move, 4 moved away, 5 restore
    moved_from    TEXT,
    moved_to      TEXT,
    restored_from INTEGER,
    pinned        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, path, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS versions_by_seq ON versions (namespace, seq);
CREATE INDEX IF NOT EXISTS versions_by_hash ON versions (hash) WHERE hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS versions_by_moved_from ON versions (namespace, moved_from)
    WHERE moved_from IS NOT NULL;

-- Named states of a namespace (since version 8).
CREATE TABLE IF NOT EXISTS labels (
    namespace    TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    seq          INTEGER NOT NULL,   -- the state after this change
    committed_ms INTEGER NOT NULL,
    note         TEXT    NOT NULL,
    automatic    INTEGER NOT NULL,
    principal    TEXT    NOT NULL,
    PRIMARY KEY (namespace, name)
) WITHOUT ROWID;

-- Retention set at run time (since version 8), as JSON; a namespace
-- without a row has the config file's.
CREATE TABLE IF NOT EXISTS retention (
    namespace TEXT PRIMARY KEY,
    policy    TEXT NOT NULL
) WITHOUT ROWID;

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

-- Content larger than one chunk (since version 7): its chunk list, each
-- chunk a blob of its own. Content without a row here is one whole blob.
CREATE TABLE IF NOT EXISTS recipes (
    hash      BLOB    PRIMARY KEY,  -- the whole content's BLAKE3
    size      INTEGER NOT NULL,
    list      BLOB    NOT NULL,     -- the chunks: 32-byte hash + 4-byte LE size each
    prev      BLOB,                 -- the content it replaced at a path, if that had a recipe
    prev_runs BLOB                  -- this list as runs against prev's
) WITHOUT ROWID;

-- Which recipes list which chunk: whether anything still refers to a chunk
-- is one lookup.
CREATE TABLE IF NOT EXISTS recipe_chunks (
    chunk  BLOB NOT NULL,
    recipe BLOB NOT NULL,
    PRIMARY KEY (chunk, recipe)
) WITHOUT ROWID;

-- Share links (see storage/share.rs); a table an older server ignores.
CREATE TABLE IF NOT EXISTS shares (
    id         TEXT    PRIMARY KEY,
    namespace  TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    folder     INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,  -- 0: never
    password   TEXT    NOT NULL,  -- Argon2id PHC string, '' for none
    revoked_ms INTEGER NOT NULL   -- 0: not revoked
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shares_by_namespace ON shares (namespace, created_ms);
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
/// the folder ones, version 4 a lock's principal, version 5 stored lock
/// changes in the wire's encoding, version 6 had no recipes: its
/// content is all whole blobs, which version 7 reads as they are, and
/// version 7 kept no version history).
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
        if !has_column(conn, "changes", "lock_id")? {
            lock_changes_to_columns(conn)?;
        }
        if !has_column(conn, "changes", "version_kind")? {
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE changes ADD COLUMN principal TEXT NOT NULL DEFAULT '';
                 ALTER TABLE changes ADD COLUMN version_kind INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE changes ADD COLUMN moved_from TEXT;
                 ALTER TABLE changes ADD COLUMN moved_to TEXT;
                 ALTER TABLE changes ADD COLUMN restored_from INTEGER;
                 ALTER TABLE changes ADD COLUMN detail TEXT;
                 COMMIT;",
            )?;
        }
    }
    conn.execute_batch(SCHEMA)?;
    // Version 7 only adds tables (created above, empty: every content of
    // an older folder is a whole blob).
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version' AND value = '6'", [])?;
    versions_from_log(conn)?;
    Ok(())
}

/// Brings a version 7 data folder to version 8: its history starts with
/// the file changes still in the log and, for a path whose current entry
/// the log no longer holds, that entry; each a plain write or deletion
/// with no principal, committed when the log says (or now). Version 7
/// removed replaced content at once, so a logged write whose content no
/// live entry refers to any more has nothing left to keep: it is not a
/// version (a version always has its content, unless lost). One
/// transaction, and it may run again (a crash before its commit).
fn versions_from_log(conn: &Connection) -> Result<()> {
    let version: Option<String> =
        conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional()?;
    if version.as_deref() != Some("7") {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let from_log = tx.execute(
        "INSERT OR IGNORE INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable,
                                         symlink, folder, client_id, principal, committed_ms, kind)
         SELECT namespace, path, seq, deleted, size, hash, mtime_ns, executable, symlink, folder, client_id,
                '', committed_ms, CASE WHEN deleted THEN 2 ELSE 1 END
         FROM changes
         WHERE kind = 0
           AND (deleted OR EXISTS (SELECT 1 FROM files WHERE files.hash = changes.hash AND files.deleted = 0))",
        [],
    )?;
    let from_files = tx.execute(
        "INSERT OR IGNORE INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable,
                                         symlink, folder, client_id, principal, committed_ms, kind)
         SELECT namespace, path, version, deleted, size, hash, mtime_ns, executable, symlink, folder,
                client_id, '', ?1, CASE WHEN deleted THEN 2 ELSE 1 END
         FROM files",
        [crate::clock::now_ms()],
    )?;
    tx.execute_batch(
        "UPDATE changes SET version_kind = CASE WHEN deleted THEN 2 ELSE 1 END WHERE kind = 0;
         UPDATE meta SET value = '8' WHERE key = 'schema_version';",
    )?;
    tx.commit()?;
    tracing::info!(from_log, from_files, "version history starts with the kept log (schema version 8)");
    Ok(())
}

/// How many lock changes the migration to version 6 reads at a time.
const MIGRATION_PAGE: i64 = 1000;

/// Brings the change log to version 6: each lock change in columns of its
/// own with the store's kind codes, in place of the wire's encoding and enum
/// numbers in the `lock` column, which goes. One transaction: every lock
/// change is converted and the version recorded, or (an unreadable row)
/// nothing changes and the data folder does not open.
fn lock_changes_to_columns(conn: &Connection) -> Result<()> {
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "ALTER TABLE changes ADD COLUMN lock_id TEXT;
         ALTER TABLE changes ADD COLUMN lock_client_id TEXT;
         ALTER TABLE changes ADD COLUMN lock_principal TEXT;
         ALTER TABLE changes ADD COLUMN lock_holder TEXT;
         ALTER TABLE changes ADD COLUMN lock_note TEXT;
         ALTER TABLE changes ADD COLUMN lock_acquired_ms INTEGER;
         ALTER TABLE changes ADD COLUMN lock_expires_ms INTEGER;
         ALTER TABLE changes ADD COLUMN lock_ttl_seconds INTEGER;
         ALTER TABLE changes ADD COLUMN lock_token INTEGER;
         ALTER TABLE changes ADD COLUMN lock_end INTEGER;
         ALTER TABLE changes ADD COLUMN lock_ended_by_client_id TEXT;
         ALTER TABLE changes ADD COLUMN lock_ended_by_principal TEXT;",
    )?;
    let sets: Vec<String> =
        LOCK_CHANGE_COLUMNS.iter().enumerate().map(|(i, c)| format!("{c} = ?{}", i + 2)).collect();
    let mut update = tx.prepare(&format!(
        "UPDATE changes SET kind = ?1, {} WHERE seq = ?{}",
        sets.join(", "),
        LOCK_CHANGE_COLUMNS.len() + 2
    ))?;
    let mut page =
        tx.prepare("SELECT seq, kind, lock FROM changes WHERE seq > ?1 AND kind <> 0 ORDER BY seq LIMIT ?2")?;
    let (mut after, mut converted) = (0_i64, 0_u64);
    loop {
        let rows: Vec<(i64, i64, Option<Vec<u8>>)> = page
            .query_map(params![after, MIGRATION_PAGE], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let Some(&(last, _, _)) = rows.last() else { break };
        for (seq, kind, lock) in rows {
            let what = v5::lock_change(seq, kind, lock.as_deref())?;
            let (kind, values) = lock_change_columns(&what);
            let values = std::iter::once(Value::Integer(kind))
                .chain(values)
                .chain(std::iter::once(Value::Integer(seq)));
            update.execute(params_from_iter(values))?;
            converted += 1;
        }
        after = last;
    }
    drop((page, update));
    tx.execute_batch(
        "ALTER TABLE changes DROP COLUMN lock;
         UPDATE meta SET value = '6' WHERE key = 'schema_version';",
    )?;
    tx.commit()?;
    tracing::info!(
        converted,
        "the change log's lock changes now have columns of their own (schema version 6)"
    );
    Ok(())
}

/// The change log's lock changes as schema versions 2 to 5 stored them, read
/// only by the migration to version 6: the `kind` was the wire's event kind
/// (4 a grant or refresh, 5 an end) and the `lock` column held a
/// `syncstore.v1.LockInfo` in protobuf encoding. The message is copied here
/// as it was, so that the wire can change without changing how old data
/// folders read.
mod v5 {
    use syncstore::{Lock, RelPath};

    use crate::error::{Error, Result};
    use crate::storage::{Actor, LockEnd, What};

    /// The `kind` of a lock grant or refresh.
    const KIND_LOCK: i64 = 4;
    /// The `kind` of a lock's end.
    const KIND_UNLOCK: i64 = 5;

    /// `syncstore.v1.LockInfo` as versions 2 to 5 wrote it (the principals
    /// only since version 5; missing, they read as empty).
    #[derive(Clone, PartialEq, prost::Message)]
    struct LockInfo {
        #[prost(string, tag = "1")]
        lock_id: String,
        #[prost(string, tag = "2")]
        path: String,
        #[prost(string, tag = "3")]
        client_id: String,
        #[prost(string, tag = "4")]
        holder: String,
        #[prost(string, tag = "5")]
        note: String,
        #[prost(int64, tag = "6")]
        acquired_ms: i64,
        #[prost(int64, tag = "7")]
        expires_ms: i64,
        #[prost(uint32, tag = "8")]
        ttl_seconds: u32,
        #[prost(uint64, tag = "9")]
        token: u64,
        /// `syncstore.v1.LockEnd`: 1 released, 2 expired, 3 broken.
        #[prost(int32, tag = "10")]
        ended: i32,
        #[prost(string, tag = "11")]
        ended_by: String,
        #[prost(string, tag = "12")]
        principal: String,
        #[prost(string, tag = "13")]
        ended_by_principal: String,
    }

    /// What the lock change `seq` of `kind`, its `lock` column holding
    /// `blob`, did.
    pub(super) fn lock_change(seq: i64, kind: i64, blob: Option<&[u8]>) -> Result<What> {
        use prost::Message;

        let bad = |why: String| Error::Internal(format!("change {seq} of the version 5 log: {why}"));
        let info =
            LockInfo::decode(blob.unwrap_or_default()).map_err(|e| bad(format!("undecodable lock: {e}")))?;
        let lock = Lock {
            path: RelPath::new(info.path).map_err(|e| bad(format!("the lock's path: {e}")))?,
            lock_id: info.lock_id,
            client_id: info.client_id,
            principal: info.principal,
            holder: info.holder,
            note: info.note,
            acquired_ms: info.acquired_ms,
            expires_ms: info.expires_ms,
            ttl_seconds: info.ttl_seconds,
            token: info.token,
        };
        let ended = match (kind, info.ended) {
            (KIND_LOCK, _) => return Ok(What::Lock(lock)),
            (KIND_UNLOCK, 1) => LockEnd::Released,
            (KIND_UNLOCK, 2) => LockEnd::Expired,
            (KIND_UNLOCK, 3) => LockEnd::Broken,
            (kind, end) => return Err(bad(format!("a lock change of kind {kind} with end {end}"))),
        };
        let by = Actor::new(info.ended_by_principal, info.ended_by);
        Ok(What::Unlock { lock, ended, by })
    }
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
    use prost::Message;
    use syncstore::{ContentHash, Lock, RelPath};
    use tonic::Code;

    use super::*;
    use crate::storage::{Actor, Change, ChangeFeed, LockEnd, Store, StoreOptions, What};
    use crate::wire;

    /// The tables of a version 5 data folder that version 6 changes, as that
    /// release created them.
    const SCHEMA_V5: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('schema_version', '5'), ('history_id', 'h5');
        CREATE TABLE changes (
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
        CREATE INDEX changes_by_namespace ON changes (namespace, seq);";

    /// A version 5 data folder in `dir` whose change log holds `changes`,
    /// each written as that release wrote it: a file change in its columns,
    /// a lock change as the wire's `LockInfo` with the wire's event kind.
    fn version_5(dir: &std::path::Path, changes: &[Change]) {
        let conn = connect(&dir.join("meta.db")).unwrap();
        conn.execute_batch(SCHEMA_V5).unwrap();
        for (i, c) in changes.iter().enumerate() {
            let committed_ms = 1_000 + i as i64;
            match &c.what {
                What::File(e, _) => conn.execute(
                    "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable,
                                          client_id, committed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 7, 0, ?7, ?8)",
                    params![
                        c.seq as i64,
                        c.namespace,
                        e.path.as_str(),
                        e.is_deleted(),
                        e.content.as_ref().map_or(0, |x| x.size as i64),
                        e.content.as_ref().map(|x| x.hash.as_bytes().to_vec()),
                        e.client_id,
                        committed_ms
                    ],
                ),
                _ => conn.execute(
                    "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable,
                                          client_id, committed_ms, kind, lock)
                     VALUES (?1, ?2, ?3, 0, 0, NULL, 0, 0, ?4, ?5, ?6, ?7)",
                    params![
                        c.seq as i64,
                        c.namespace,
                        c.path().unwrap().as_str(),
                        c.client_id(),
                        committed_ms,
                        wire::kind(c) as i32,
                        wire::lock_info(c).unwrap().encode_to_vec()
                    ],
                ),
            }
            .unwrap();
        }
    }

    fn lock(path: &str, id: &str, client: &str, principal: &str, token: u64) -> Lock {
        Lock {
            lock_id: id.into(),
            path: RelPath::new(path).unwrap(),
            client_id: client.into(),
            principal: principal.into(),
            holder: format!("{client}@host"),
            note: format!("note of {id}"),
            acquired_ms: 10 * token as i64,
            expires_ms: 10 * token as i64 + 60_000,
            ttl_seconds: 60,
            token,
        }
    }

    /// A log of every kind of change a version 5 server wrote: files, a
    /// tombstone, and locks granted, refreshed, released, broken, expired
    /// and (written before locks had principals) held by a client id alone.
    fn a_version_5_log() -> Vec<Change> {
        let file = |seq: u64, path: &str, content: Option<&[u8]>| {
            let content = content.map(|data| syncstore::Content {
                hash: ContentHash::of(data),
                size: data.len() as u64,
                mtime_ns: 7,
                executable: false,
                symlink: false,
                folder: false,
            });
            let entry = syncstore::Entry {
                path: RelPath::new(path).unwrap(),
                version: seq,
                content,
                client_id: "A".into(),
            };
            // As the upgrade to version 8 reads it: a plain version with no
            // principal, committed when the log says (`version_5`).
            let note = crate::storage::VersionNote::plain(&entry, "", 999 + seq as i64);
            What::File(entry, note)
        };
        let f = lock("docs/f", "L1", "A", "alice", 3);
        let g = lock("g", "L2", "B", "bob", 6);
        let old = lock("old", "L3", "A", "", 8);
        [
            file(1, "docs/f", Some(b"one")),
            file(2, "gone", None),
            What::Lock(f.clone()),
            What::Lock(Lock { expires_ms: f.expires_ms + 5, ttl_seconds: 120, ..f.clone() }),
            What::Unlock { lock: f, ended: LockEnd::Released, by: Actor::new("alice", "A") },
            What::Lock(g.clone()),
            What::Unlock { lock: g, ended: LockEnd::Broken, by: Actor::new("admin", "C") },
            What::Lock(old.clone()),
            What::Unlock { lock: old, ended: LockEnd::Expired, by: Actor::default() },
        ]
        .into_iter()
        .zip(1..)
        .map(|(what, seq)| Change { seq, namespace: "default".into(), what })
        .collect()
    }

    impl Store {
        /// Every kept change (all namespaces) after `after`, up to `limit`.
        async fn changes_after_all(&self, after: u64, limit: usize) -> Vec<Change> {
            ChangeFeed::changes_after(self, None, after, limit).await.unwrap()
        }
    }

    fn meta_version(conn: &Connection) -> String {
        conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap()
    }

    /// The `changes` table's columns: name and declared type, by name.
    fn change_columns(conn: &Connection) -> Vec<(String, String)> {
        let mut stmt =
            conn.prepare("SELECT name, type FROM pragma_table_info('changes') ORDER BY name").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(|r| r.unwrap()).collect()
    }

    #[tokio::test]
    async fn a_version_5_change_log_upgrades_in_place_to_lock_columns() {
        let dir = tempfile::tempdir().unwrap();
        let log = a_version_5_log();
        version_5(dir.path(), &log);

        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        assert_eq!(store.changes_after_all(0, 100).await, log, "every change reads back as it was");
        assert_eq!(store.history_id(), "h5");
        let conn = connect(&dir.path().join("meta.db")).unwrap();
        assert_eq!(meta_version(&conn), SCHEMA_VERSION.to_string());
        let kinds: Vec<(i64, i64)> = conn
            .prepare("SELECT kind, committed_ms FROM changes ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let (kinds, committed): (Vec<i64>, Vec<i64>) = kinds.into_iter().unzip();
        assert_eq!(kinds, [0, 0, 1, 1, 2, 1, 2, 1, 2], "the store's own kind codes");
        assert_eq!(committed, (1_000..1_009).collect::<Vec<_>>(), "rows are converted in place");

        // The upgraded table is the one a new data folder has, without the
        // wire's encoding.
        let fresh = tempfile::tempdir().unwrap();
        drop(Store::open(fresh.path(), StoreOptions::default()).await.unwrap());
        let fresh_conn = connect(&fresh.path().join("meta.db")).unwrap();
        assert_eq!(change_columns(&conn), change_columns(&fresh_conn));
        assert!(!has_column(&conn, "changes", "lock").unwrap());
        drop(conn);

        // The log goes on from there, and a reopened store reads it all.
        let next = store
            .lock(
                "default",
                crate::storage::LockRequest {
                    path: RelPath::new("docs/f").unwrap(),
                    ttl_seconds: 60,
                    note: "again".into(),
                    who: Actor::new("alice", "A"),
                    holder: "A@host".into(),
                },
            )
            .await;
        let next = next.unwrap();
        assert_eq!(next.seq, 10);
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let mut all = log;
        all.push(next);
        assert_eq!(store.changes_after_all(0, 100).await, all);
    }

    /// Makes the data folder in `dir` look as version 7 left it: no
    /// versions, and the version 7 schema number.
    fn back_to_version_7(dir: &std::path::Path) {
        let conn = connect(&dir.join("meta.db")).unwrap();
        conn.execute_batch(
            "DELETE FROM versions; UPDATE changes SET version_kind = 0, principal = '';
             UPDATE meta SET value = '7' WHERE key = 'schema_version';",
        )
        .unwrap();
    }

    #[tokio::test]
    async fn a_version_7_data_folder_gets_the_history_its_log_and_manifest_hold() {
        use crate::storage::{Delete, Put, VersionKind};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let who = Actor::new("alice", "A");
        let content = |data: &[u8]| syncstore::Content {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
        };
        let mut seq = 0;
        for (p, data) in [("a", &b"one"[..]), ("a", b"two"), ("b", b"bee")] {
            let mut up = store.upload(data.len() as u64).await.unwrap();
            up.write(data.to_vec()).await.unwrap();
            let staged = up.complete(ContentHash::of(data), data.len() as u64).await.unwrap();
            let base = if p == "a" { seq } else { 0 };
            let put = Put {
                path: RelPath::new(p).unwrap(),
                content: content(data),
                base_version: base,
                who: who.clone(),
                lock_token: 0,
                moved_from: None,
            };
            seq = store.commit_put("default", put, Some(staged)).await.unwrap().seq;
        }
        let b = RelPath::new("b").unwrap();
        let del = Delete { path: b.clone(), base_version: 3, who: who.clone(), lock_token: 0 };
        store.commit_delete("default", del).await.unwrap();
        drop(store);
        back_to_version_7(dir.path());
        // "two" (seq 2) is in the manifest only: the log lost it.
        let conn = connect(&dir.path().join("meta.db")).unwrap();
        conn.execute("DELETE FROM changes WHERE seq = 2", []).unwrap();
        drop(conn);

        for round in 0..2 {
            let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
            let a = store.versions("default", &RelPath::new("a").unwrap(), 0).await.unwrap();
            // Seq 1's content ("one") no live entry refers to: gone in
            // version 7, not a version.
            assert_eq!(a.iter().map(|v| v.seq()).collect::<Vec<_>>(), [2], "round {round}");
            assert_eq!((a[0].note.kind, a[0].note.principal.as_str()), (VersionKind::Write, ""));
            assert!(a[0].note.committed_ms > 0, "the manifest's entry: the upgrade's time");
            let b = store.versions("default", &b, 0).await.unwrap();
            assert_eq!(
                b.iter().map(|v| (v.seq(), v.note.kind)).collect::<Vec<_>>(),
                [(4, VersionKind::Delete)]
            );
            let logged = store.changes_after("default", 0, 10).await.unwrap();
            assert!(logged.iter().all(|c| c.note().is_some_and(|n| n.kind != VersionKind::Restore)));
            drop(store);
            let conn = connect(&dir.path().join("meta.db")).unwrap();
            assert_eq!(meta_version(&conn), "8");
            // Again from version 7 (a crash before the upgrade's commit, or
            // a second run): the same history.
            conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'", []).unwrap();
        }
    }

    #[tokio::test]
    async fn an_unreadable_version_5_lock_change_leaves_the_data_folder_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        version_5(dir.path(), &a_version_5_log());
        let conn = connect(&dir.path().join("meta.db")).unwrap();
        conn.execute(
            "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                                  committed_ms, kind, lock)
             VALUES (10, 'default', 'x', 0, 0, NULL, 0, 0, 'A', 0, 4, x'ffff')",
            [],
        )
        .unwrap();
        drop(conn);

        let refused = Store::open(dir.path(), StoreOptions::default()).await;
        assert!(
            matches!(&refused, Err(Error::Internal(m)) if m.contains("change 10") && m.contains("undecodable")),
            "{refused:?}"
        );
        let conn = connect(&dir.path().join("meta.db")).unwrap();
        assert_eq!(meta_version(&conn), "5");
        assert!(has_column(&conn, "changes", "lock").unwrap());
        assert!(!has_column(&conn, "changes", "lock_id").unwrap());
        let kind: i64 = conn.query_row("SELECT kind FROM changes WHERE seq = 3", [], |r| r.get(0)).unwrap();
        assert_eq!(kind, 4, "no row was converted");
    }

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
