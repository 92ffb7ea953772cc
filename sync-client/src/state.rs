//! The client's own state in `DIR/.syncstore/state.db` (SQLite): the base
//! of every synced path, the chunk list of the large contents they hold,
//! the subscription cursor, the server history it belongs to, this
//! client's id, and the files it made read-only because someone else
//! locked them. A lock file keeps a second client off
//! the same folder. The folder's own handles are [`crate::folder::Folder`]'s.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
};

use rusqlite::{Connection, OptionalExtension, params};
use syncstore::{
    ContentHash, RelPath,
    chunks::{self, ChunkRef},
    limits::STATE_DIR_NAME,
};

use crate::{
    error::{Error, Result},
    folder::Folder,
    plan::Base,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS base (
    path       TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    hash       BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    executable INTEGER NOT NULL,
    stamp      INTEGER NOT NULL DEFAULT 0,
    symlink    INTEGER NOT NULL DEFAULT 0,
    folder     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS base_by_hash ON base (hash);
-- Files this client made read-only because someone else locked them.
CREATE TABLE IF NOT EXISTS read_only (
    path TEXT PRIMARY KEY
) WITHOUT ROWID;
-- Content this client sent for a path since it last recorded an upload of
-- it: a server version by this client with one of these hashes is its own,
-- even if the server's OK never arrived.
CREATE TABLE IF NOT EXISTS sent (
    path TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (path, hash)
) WITHOUT ROWID;
-- The chunk list (`chunks::pack_list`) of content larger than one chunk
-- that some base holds: an edit of it is sent as runs against it, and a
-- new version of it received as runs. Kept only while a base refers to
-- the hash; a state from before chunk lists has none (the next transfer
-- of each file goes plain and records one).
CREATE TABLE IF NOT EXISTS chunk_list (
    hash BLOB PRIMARY KEY,
    list BLOB NOT NULL
) WITHOUT ROWID;
";

/// Drops the chunk lists no base refers to any more.
const PRUNE_CHUNK_LISTS: &str = "DELETE FROM chunk_list WHERE hash NOT IN (SELECT hash FROM base)";

/// Handle to the state database; cheap to clone. Calls block briefly
/// (single-row SQLite statements); bulk reads happen on blocking threads.
#[derive(Debug, Clone)]
pub struct State {
    conn: Arc<Mutex<Connection>>,
    /// What this process noted as sent and has not cleared: noting it
    /// again costs no write.
    noted: Arc<Mutex<HashSet<(RelPath, ContentHash)>>>,
    /// Held open for the life of the client: the folder's lock.
    _lock: Arc<File>,
}

impl State {
    /// Opens (creating) `root/.syncstore/` for syncing, taking its lock,
    /// and clears what downloads a crash interrupted.
    pub fn open(root: &Path) -> Result<Self> {
        // Creates the state folder through the folder's handle, never
        // through a link.
        let folder = Folder::open(root)?;
        let dir = root.join(STATE_DIR_NAME);
        let lock = File::create(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Busy(root.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        folder.clear_interrupted()?;
        let state = Self::connect(&dir, lock)?;
        // Bases removed since the last large transfer may have left lists.
        state.with(|c| c.execute(PRUNE_CHUNK_LISTS, []).map(drop))?;
        Ok(state)
    }

    /// Opens the state for reading beside a running client (`status`),
    /// without its lock. The caller must not write through it.
    pub fn open_shared(root: &Path) -> Result<Self> {
        Folder::open(root)?;
        let dir = root.join(STATE_DIR_NAME);
        let lock = File::options().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        Self::connect(&dir, lock)
    }

    fn connect(dir: &Path, lock: File) -> Result<Self> {
        let conn = Connection::open(dir.join("state.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        // State folders from before the stamp, symlink and folder columns.
        for column in ["stamp", "symlink", "folder"] {
            let present: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('base') WHERE name = ?1)",
                [column],
                |r| r.get(0),
            )?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE base ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                ))?;
            }
        }
        Ok(Self { conn: Arc::new(Mutex::new(conn)), noted: Arc::default(), _lock: Arc::new(lock) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        Ok(f(&conn)?)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0)).optional())
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map(drop)
        })
    }

    /// Notes that this client made `path` read-only (or no longer holds it
    /// so).
    pub fn set_read_only(&self, path: &RelPath, read_only: bool) -> Result<()> {
        self.with(|c| {
            if read_only {
                c.execute("INSERT OR IGNORE INTO read_only (path) VALUES (?1)", [path.as_str()])
            } else {
                c.execute("DELETE FROM read_only WHERE path = ?1", [path.as_str()])
            }
            .map(drop)
        })
    }

    /// The files this client made read-only.
    pub fn read_only_paths(&self) -> Result<Vec<RelPath>> {
        let paths: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare("SELECT path FROM read_only")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        // A stored path that no longer validates is dropped.
        Ok(paths.into_iter().filter_map(|p| RelPath::new(p).ok()).collect())
    }

    /// This client's id, created on first use.
    pub fn client_id(&self) -> Result<String> {
        if let Some(id) = self.get_meta("client_id")? {
            return Ok(id);
        }
        let id = format!("{:016x}", rand::random::<u64>());
        self.set_meta("client_id", &id)?;
        Ok(id)
    }

    /// The last server sequence number whose change has been applied.
    pub fn cursor(&self) -> Result<u64> {
        Ok(self.get_meta("cursor")?.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    pub fn set_cursor(&self, seq: u64) -> Result<()> {
        self.set_meta("cursor", &seq.to_string())
    }

    /// Forgets every base and the cursor: used when the server's history
    /// changed, so that nothing is deleted on the strength of versions that
    /// mean nothing to the new server.
    pub fn reset_history(&self, history_id: &str) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM base", [])?;
        tx.execute("DELETE FROM sent", [])?;
        tx.execute("DELETE FROM chunk_list", [])?;
        tx.execute("DELETE FROM meta WHERE key = 'cursor'", [])?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('history_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [history_id],
        )?;
        tx.commit()?;
        self.noted().clear();
        Ok(())
    }

    pub fn base(&self, path: &RelPath) -> Result<Option<Base>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT version, hash, size, mtime_ns, executable, stamp, symlink, folder FROM base WHERE path = ?1",
            )?
            .query_row([path.as_str()], base_from_row)
            .optional()
        })
        .map(Option::flatten)
    }

    pub fn set_base(&self, path: &RelPath, b: &Base) -> Result<()> {
        self.with(|c| write_base(c, path, b))
    }

    pub fn remove_base(&self, path: &RelPath) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM base WHERE path = ?1")?.execute([path.as_str()]).map(drop)
        })
    }

    /// Every base, for a full reconciliation.
    pub fn all_bases(&self) -> Result<HashMap<RelPath, Base>> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT path, version, hash, size, mtime_ns, executable, stamp, symlink, folder FROM base",
            )?;
            let rows = stmt.query_map([], |r| {
                let path: String = r.get(0)?;
                Ok((path, base_from_row_at(r, 1)?))
            })?;
            let mut out = HashMap::new();
            for row in rows {
                let (path, base) = row?;
                if let (Ok(path), Some(base)) = (RelPath::new(path), base) {
                    out.insert(path, base);
                }
            }
            Ok(out)
        })
    }

    /// Synced paths strictly below the folder `dir`.
    pub fn paths_below(&self, dir: &RelPath) -> Result<Vec<RelPath>> {
        // Paths below "d" sort between "d/" and "d0" ('0' follows '/').
        let (lo, hi) = (format!("{dir}/"), format!("{dir}0"));
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT path FROM base WHERE path >= ?1 AND path < ?2")?;
            let rows = stmt.query_map([lo, hi], |r| r.get::<_, String>(0))?;
            rows.filter_map(|r| r.map(|p| RelPath::new(p).ok()).transpose()).collect()
        })
    }

    /// Notes that content `hash` is about to be sent for `path` (before the
    /// upload starts, so that a crash cannot hide it). Free when it was
    /// noted already (see [`State::note_sent_all`]).
    pub fn note_sent(&self, path: &RelPath, hash: &ContentHash) -> Result<()> {
        self.note_sent_all(&[(path.clone(), *hash)])
    }

    /// [`State::note_sent`] of many in one transaction: what a sync is about
    /// to upload, before the first upload starts. Noting content that is
    /// then not sent is harmless: a server entry counts as this client's
    /// own upload only if it also carries this client's id.
    pub fn note_sent_all(&self, items: &[(RelPath, ContentHash)]) -> Result<()> {
        let new: Vec<_> = {
            let noted = self.noted();
            items.iter().filter(|item| !noted.contains(item)).cloned().collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO sent (path, hash) VALUES (?1, ?2)")?;
            for (path, hash) in &new {
                insert.execute(params![path.as_str(), &hash.as_bytes()[..]])?;
            }
        }
        tx.commit()?;
        self.noted().extend(new);
        Ok(())
    }

    fn noted(&self) -> MutexGuard<'_, HashSet<(RelPath, ContentHash)>> {
        self.noted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this client sent content `hash` for `path` since it last
    /// recorded an upload of it.
    pub fn was_sent(&self, path: &RelPath, hash: &ContentHash) -> Result<bool> {
        self.with(|c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM sent WHERE path = ?1 AND hash = ?2)")?
                .query_row(params![path.as_str(), &hash.as_bytes()[..]], |r| r.get(0))
        })
    }

    /// Records an upload of `path` in one transaction: its new base, the
    /// chunk list of its content if one was made (dropping `replaced`'s as
    /// [`State::set_chunk_list`] does), and that nothing sent for it is
    /// pending any more.
    pub fn record_upload(
        &self,
        path: &RelPath,
        base: &Base,
        list: Option<&[ChunkRef]>,
        replaced: Option<&ContentHash>,
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        write_base(&tx, path, base)?;
        if let Some(list) = list {
            write_chunk_list(&tx, &base.hash, list, replaced)?;
        }
        tx.prepare_cached("DELETE FROM sent WHERE path = ?1")?.execute([path.as_str()])?;
        tx.commit()?;
        drop(conn);
        self.noted().retain(|(p, _)| p != path);
        Ok(())
    }

    /// The chunk list of content `hash`, if this client recorded one (a
    /// list stored damaged reads as none).
    pub fn chunk_list(&self, hash: &ContentHash) -> Result<Option<Vec<ChunkRef>>> {
        let packed: Option<Vec<u8>> = self.with(|c| {
            c.prepare_cached("SELECT list FROM chunk_list WHERE hash = ?1")?
                .query_row([&hash.as_bytes()[..]], |r| r.get(0))
                .optional()
        })?;
        Ok(packed.and_then(|p| chunks::unpack_list(&p)))
    }

    /// Records the chunk list of content `hash`, once a base refers to it,
    /// and drops the list of `replaced` (the content the path held before)
    /// if no base refers to that any more. (Lists left by other changes,
    /// deletions say, go when the folder is opened again: pruning them all
    /// at each transfer would cost a look at every list.)
    pub fn set_chunk_list(
        &self,
        hash: &ContentHash,
        list: &[ChunkRef],
        replaced: Option<&ContentHash>,
    ) -> Result<()> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        write_chunk_list(&tx, hash, list, replaced)?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the chunk list of content `hash` (the server did not take
    /// runs made from it).
    pub fn forget_chunk_list(&self, hash: &ContentHash) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM chunk_list WHERE hash = ?1")?
                .execute([&hash.as_bytes()[..]])
                .map(drop)
        })
    }

    /// Up to `limit` synced paths whose base is content `hash`, in path
    /// order.
    pub fn paths_holding(&self, hash: &ContentHash, limit: usize) -> Result<Vec<RelPath>> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached("SELECT path FROM base WHERE hash = ?1 ORDER BY path LIMIT ?2")?;
            let rows =
                stmt.query_map(params![&hash.as_bytes()[..], limit as i64], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for path in rows {
                // A row whose path no longer parses is skipped, not fatal.
                if let Ok(p) = RelPath::new(&path?) {
                    out.push(p);
                }
            }
            Ok(out)
        })
    }

    /// Whether some synced path holds this content, so the server has it.
    pub fn knows_hash(&self, hash: &ContentHash) -> Result<bool> {
        self.with(|c| {
            c.prepare_cached("SELECT EXISTS (SELECT 1 FROM base WHERE hash = ?1)")?
                .query_row([&hash.as_bytes()[..]], |r| r.get(0))
        })
    }
}

/// Writes `path`'s base.
fn write_base(c: &Connection, path: &RelPath, b: &Base) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO base (path, version, hash, size, mtime_ns, executable, stamp, symlink, folder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (path) DO UPDATE SET version = excluded.version, hash = excluded.hash,
           size = excluded.size, mtime_ns = excluded.mtime_ns, executable = excluded.executable,
           stamp = excluded.stamp, symlink = excluded.symlink, folder = excluded.folder",
    )?
    .execute(params![
        path.as_str(),
        b.version as i64,
        &b.hash.as_bytes()[..],
        b.size as i64,
        b.mtime_ns,
        b.executable,
        b.stamp as i64,
        b.symlink,
        b.folder
    ])
    .map(drop)
}

/// Writes the chunk list of content `hash`, and drops `replaced`'s if no
/// base refers to it (see [`State::set_chunk_list`]).
fn write_chunk_list(
    c: &Connection,
    hash: &ContentHash,
    list: &[ChunkRef],
    replaced: Option<&ContentHash>,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO chunk_list (hash, list) VALUES (?1, ?2)
         ON CONFLICT (hash) DO UPDATE SET list = excluded.list",
    )?
    .execute(params![&hash.as_bytes()[..], chunks::pack_list(list)])?;
    if let Some(old) = replaced.filter(|old| *old != hash) {
        c.prepare_cached(
            "DELETE FROM chunk_list WHERE hash = ?1
             AND NOT EXISTS (SELECT 1 FROM base WHERE hash = ?1)",
        )?
        .execute([&old.as_bytes()[..]])?;
    }
    Ok(())
}

fn base_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<Base>> {
    base_from_row_at(r, 0)
}

/// Decodes version, hash, size, mtime_ns, executable, stamp, symlink, folder
/// from column `at`; a
/// row with a malformed hash reads as no base (the path is then treated as
/// met for the first time, which never deletes anything).
fn base_from_row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Option<Base>> {
    let hash: Vec<u8> = r.get(at + 1)?;
    let Ok(hash) = ContentHash::try_from(&hash[..]) else { return Ok(None) };
    Ok(Some(Base {
        version: r.get::<_, i64>(at)? as u64,
        hash,
        size: r.get::<_, i64>(at + 2)? as u64,
        mtime_ns: r.get(at + 3)?,
        executable: r.get(at + 4)?,
        stamp: r.get::<_, i64>(at + 5)? as u64,
        symlink: r.get(at + 6)?,
        folder: r.get(at + 7)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_and_meta_persist_and_the_folder_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = RelPath::new("a/b").unwrap();
        let base = Base {
            version: 3,
            hash: ContentHash::of(b"x"),
            size: 1,
            mtime_ns: 9,
            executable: true,
            symlink: false,
            folder: false,
            stamp: 7,
        };
        {
            let state = State::open(dir.path()).unwrap();
            assert!(matches!(State::open(dir.path()), Err(Error::Busy(_))));
            state.set_base(&path, &base).unwrap();
            state.set_base(&RelPath::new("a0").unwrap(), &base).unwrap();
            state.set_base(&RelPath::new("a/b/c").unwrap(), &base).unwrap();
            let below: Vec<String> = state
                .paths_below(&RelPath::new("a").unwrap())
                .unwrap()
                .iter()
                .map(|p| p.to_string())
                .collect();
            assert_eq!(below, ["a/b", "a/b/c"]);
            state.set_cursor(42).unwrap();
            assert!(state.knows_hash(&base.hash).unwrap());
        }
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.base(&path).unwrap(), Some(base));
        assert_eq!(state.cursor().unwrap(), 42);
        state.reset_history("h2").unwrap();
        assert_eq!(state.base(&path).unwrap(), None);
        assert_eq!(state.cursor().unwrap(), 0);
        assert_eq!(state.get_meta("history_id").unwrap().as_deref(), Some("h2"));
    }

    #[test]
    fn chunk_lists_are_kept_while_a_base_holds_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RelPath::new("a").unwrap(), RelPath::new("b").unwrap());
        let base_of = |data: &[u8]| Base {
            version: 1,
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 0,
            executable: false,
            symlink: false,
            folder: false,
            stamp: 0,
        };
        let (one, two) = (base_of(b"1"), base_of(b"2"));
        let list = |n: u32| vec![ChunkRef { hash: ContentHash::of(&n.to_le_bytes()), size: n }];
        {
            let state = State::open(dir.path()).unwrap();
            assert_eq!(state.chunk_list(&one.hash).unwrap(), None);
            state.set_base(&a, &one).unwrap();
            state.set_chunk_list(&one.hash, &list(1), None).unwrap();
            state.set_base(&b, &one).unwrap();
            // `a` moves on to new content: `b` still holds the old one.
            state.set_base(&a, &two).unwrap();
            state.set_chunk_list(&two.hash, &list(2), Some(&one.hash)).unwrap();
            assert_eq!(state.chunk_list(&one.hash).unwrap(), Some(list(1)));
            assert_eq!(state.chunk_list(&two.hash).unwrap(), Some(list(2)));
            // `b` moves on too: nothing holds the old content.
            state.set_base(&b, &two).unwrap();
            state.set_chunk_list(&two.hash, &list(2), Some(&one.hash)).unwrap();
            assert_eq!(state.chunk_list(&one.hash).unwrap(), None);
            state.set_base(&b, &one).unwrap();
            state.set_chunk_list(&one.hash, &list(1), Some(&two.hash)).unwrap();
            state.remove_base(&b).unwrap();
            assert_eq!(state.chunk_list(&one.hash).unwrap(), Some(list(1)), "kept until the next open");
        }
        // Pruned when the state is opened again.
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.chunk_list(&one.hash).unwrap(), None);
        assert_eq!(state.chunk_list(&two.hash).unwrap(), Some(list(2)));
        state.forget_chunk_list(&two.hash).unwrap();
        assert_eq!(state.chunk_list(&two.hash).unwrap(), None);
        state.set_chunk_list(&two.hash, &list(2), None).unwrap();
        state.reset_history("other").unwrap();
        assert_eq!(state.chunk_list(&two.hash).unwrap(), None);
    }

    #[test]
    fn content_sent_is_kept_until_an_upload_is_recorded_or_the_history_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (RelPath::new("a").unwrap(), RelPath::new("b").unwrap());
        let (one, two) = (ContentHash::of(b"1"), ContentHash::of(b"2"));
        {
            let state = State::open(dir.path()).unwrap();
            state.note_sent(&a, &one).unwrap();
            state.note_sent_all(&[(a.clone(), two), (b.clone(), one)]).unwrap();
            state.note_sent(&a, &two).unwrap();
        }
        // Across a restart (a crash after the upload went out).
        let state = State::open(dir.path()).unwrap();
        assert!(state.was_sent(&a, &one).unwrap() && state.was_sent(&a, &two).unwrap());
        assert!(!state.was_sent(&b, &two).unwrap(), "per path");
        // Noted by this process too (as a sync does before its uploads), so
        // that recording the upload has to forget what this process noted.
        state.note_sent_all(&[(a.clone(), two), (b.clone(), one)]).unwrap();
        let base = Base {
            version: 7,
            hash: two,
            size: 1,
            mtime_ns: 0,
            executable: false,
            symlink: false,
            folder: false,
            stamp: 0,
        };
        state.record_upload(&a, &base, None, None).unwrap();
        assert!(!state.was_sent(&a, &one).unwrap() && !state.was_sent(&a, &two).unwrap());
        assert_eq!(state.base(&a).unwrap(), Some(base));
        assert!(state.was_sent(&b, &one).unwrap());
        // Noted again after it was recorded: written again, not taken as
        // noted already.
        state.note_sent(&a, &two).unwrap();
        assert!(state.was_sent(&a, &two).unwrap());
        state.reset_history("other").unwrap();
        assert!(!state.was_sent(&b, &one).unwrap());
        state.note_sent(&b, &one).unwrap();
        assert!(state.was_sent(&b, &one).unwrap(), "noted again after the history changed");
    }
}
