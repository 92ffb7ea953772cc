//! The embedded backend's metadata: SQLite (`meta.db`, WAL) as a
//! [`MetaStore`]. It does its own `spawn_blocking`: every call is one trip
//! to a blocking thread, on the one writer connection (transactions, which
//! the journal runs one at a time) or on a pooled reader (everything else;
//! WAL readers never wait for the writer).
//!
//! Nothing outside this folder names `rusqlite`.

mod history;
mod history_prune;
mod identity;
mod locks;
mod schema;
mod shares;

use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use syncstore::{Content, ContentHash, Entry, Lock, RelPath, chunks};

use super::meta::{Decide, Facts, MetaStore, MetaTx, Recipe, SnapshotSink, Want};
use super::{
    Change, Identity, Label, Version, VersionNote, What,
    retention::{Retention, Usage},
    rules,
};
use crate::error::{Error, Result};
use identity::MetaKey;

/// The SQLite metadata of one data folder.
#[derive(Debug, Clone)]
pub(crate) struct SqliteMeta {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Held (locked) for the life of the store: one server per data folder.
    _lock: File,
    db_path: PathBuf,
    /// The one connection that writes.
    writer: Arc<Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteMeta {
    /// Opens (creating and upgrading as needed) `meta.db` in `dir`, after
    /// taking the data folder's lock.
    pub(crate) async fn open(dir: &Path) -> Result<Self> {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir)).await?
    }

    fn open_blocking(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = File::options().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::FailedPrecondition(format!(
                    "another sync-server is using the data folder {}",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        let db_path = dir.join("meta.db");
        let mut conn = schema::connect(&db_path)?;
        schema::init(&conn)?;
        identity::init_meta(&mut conn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                _lock: lock,
                db_path,
                writer: Arc::new(Mutex::new(conn)),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` on a pooled read-only connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => schema::connect(&inner.db_path)?,
            };
            let out = f(&conn);
            inner.readers.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            out
        })
        .await?
    }

    /// Runs `f` on the writer connection, on a blocking thread.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = self.inner.writer.clone();
        tokio::task::spawn_blocking(move || f(&mut lock_writer(&writer))).await?
    }
}

/// The writer connection, with any transaction a dropped [`SqliteTx`] left
/// open rolled back.
fn lock_writer(writer: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave SQLite half-written (the
    // transaction rolls back below), so a poisoned lock is still usable.
    let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::warn!(error = %e, "could not roll back an abandoned transaction");
    }
    conn
}

#[async_trait]
impl MetaStore for SqliteMeta {
    async fn head(&self) -> Result<u64> {
        self.read(|c| {
            let logged: u64 = c.query_row("SELECT COALESCE(MAX(seq), 0) FROM changes", [], |r| r.get(0))?;
            // After a full resync the log starts empty at the snapshot's head.
            Ok(logged.max(identity::meta_u64(c, MetaKey::HeadFloor)?))
        })
        .await
    }

    async fn load_identity(&self) -> Result<Identity> {
        self.read(identity::load).await
    }

    async fn save_identity(&self, id: &Identity) -> Result<()> {
        let id = id.clone();
        self.write(move |c| identity::save(c, &id)).await
    }

    fn begin(&self) -> Box<dyn MetaTx> {
        Box::new(SqliteTx { writer: self.inner.writer.clone(), pending: Vec::new(), open: false })
    }

    async fn facts(&self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| facts(c, &ns, &path, want)).await
    }

    async fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| {
            c.query_row(
                "SELECT path, seq, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
                 FROM changes WHERE namespace = ?1 AND path = ?2 AND seq = ?3 AND kind = 0",
                params![ns, path.as_str(), version as i64],
                |r| entry_from_row(r, 0),
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn previous_file_change(
        &self,
        ns: &str,
        path: &RelPath,
        before: u64,
    ) -> Result<Option<(u64, bool)>> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT seq, deleted FROM changes
                 WHERE namespace = ?1 AND path = ?2 AND seq < ?3 AND kind = 0
                 ORDER BY seq DESC LIMIT 1",
                params![ns, path.as_str(), before as i64],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let bounds = super::meta::ListBounds::new(prefix, after);
        let ns = ns.to_owned();
        self.read(move |c| {
            let sql = format!(
                "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
                 FROM files
                 WHERE namespace = ?1 AND path {} ?2{}{}
                   AND (?5 OR deleted = 0)
                 ORDER BY path LIMIT ?6",
                bounds.start_op(),
                if bounds.until.is_some() { " AND path < ?3" } else { "" },
                if bounds.below.is_some() { " AND (path = ?4 OR path >= ?7)" } else { "" },
            );
            let mut stmt = c.prepare_cached(&sql)?;
            use rusqlite::types::Value;
            let text = |s: Option<String>| s.map_or(Value::Null, Value::Text);
            let (prefix, below) = bounds.below.clone().unzip();
            let mut values = vec![
                Value::Text(ns.clone()),
                Value::Text(bounds.from.clone()),
                text(bounds.until.clone()),
                text(prefix),
                Value::Integer(include_deleted as i64),
                Value::Integer(limit as i64),
                text(below),
            ];
            // The parameters this variant names (up to the highest).
            values.truncate(stmt.parameter_count());
            let rows = stmt.query_map(rusqlite::params_from_iter(values), |r| entry_from_row(r, 0))?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn manifest_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, Entry)>> {
        let (ans, apath) = after.map(|(n, p)| (n.to_owned(), p.to_owned())).unzip();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, namespace, symlink, folder
                 FROM files WHERE ?1 IS NULL OR (namespace, path) > (?1, ?2)
                 ORDER BY namespace, path LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![ans, apath, limit as i64], |r| {
                let entry = entry_from_row(r, 0)?;
                let namespace: String = r.get(8)?;
                Ok(entry.map(|e| (namespace, e)))
            })?;
            rows.map(|r| r?).collect()
        })
        .await
    }

    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>> {
        let ns = ns.map(str::to_owned);
        self.read(move |c| {
            // Two statements: a namespace's follower reads its own index.
            let rows = match &ns {
                Some(ns) => {
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM changes WHERE namespace = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                    ))?;
                    let rows = stmt.query_map(params![ns, after as i64, limit as i64], change_from_row)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
                None => {
                    let mut stmt = c.prepare_cached(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2"
                    ))?;
                    let rows = stmt.query_map(params![after as i64, limit as i64], change_from_row)?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                }
            };
            rows.into_iter().collect()
        })
        .await
    }

    async fn oldest_logged(&self) -> Result<Option<u64>> {
        self.read(|c| Ok(c.query_row("SELECT MIN(seq) FROM changes", [], |r| r.get(0))?)).await
    }

    async fn trim_log(&self, keep_from: u64, head: u64) -> Result<usize> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM changes WHERE seq <= ?1 AND seq < ?2",
                params![keep_from as i64, head as i64],
            )?)
        })
        .await
    }

    async fn unreferenced(&self, hashes: Vec<ContentHash>) -> Result<Vec<(ContentHash, bool)>> {
        self.read(move |c| {
            let mut out = Vec::new();
            let mut has_recipe = c.prepare_cached("SELECT 1 FROM recipes WHERE hash = ?1")?;
            for hash in hashes {
                if !content_referenced(c, &hash)? {
                    out.push((hash, has_recipe.exists([hash.as_bytes().as_slice()])?));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn recipe(&self, hash: &ContentHash) -> Result<Option<Recipe>> {
        let hash = *hash;
        self.read(move |c| get_recipe(c, &hash)).await
    }

    async fn drop_recipes(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        self.write(move |c| {
            // Looked up first, outside a transaction: content stored whole
            // (every small file) costs no write and no sync.
            let mut recipes = Vec::new();
            for hash in hashes {
                recipes.extend(get_recipe(c, &hash)?);
            }
            if recipes.is_empty() {
                return Ok(Vec::new());
            }
            let tx = c.transaction()?;
            let mut chunks = std::collections::BTreeSet::new();
            for recipe in recipes {
                let hash = recipe.hash.as_bytes().as_slice();
                let mut unlink =
                    tx.prepare_cached("DELETE FROM recipe_chunks WHERE chunk = ?1 AND recipe = ?2")?;
                for chunk in &recipe.list {
                    // A chunk listed twice is unlinked with the first.
                    unlink.execute(params![chunk.hash.as_bytes().as_slice(), hash])?;
                    chunks.insert(chunk.hash);
                }
                tx.prepare_cached("DELETE FROM recipes WHERE hash = ?1")?.execute([hash])?;
            }
            tx.commit()?;
            Ok(chunks.into_iter().collect())
        })
        .await
    }

    async fn orphan_recipes(&self) -> Result<Vec<ContentHash>> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT hash FROM recipes
                 WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.hash = recipes.hash AND deleted = 0)
                   AND NOT EXISTS (SELECT 1 FROM versions WHERE versions.hash = recipes.hash)",
            )?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.map(|r| Ok(ContentHash::try_from(&r?[..])?)).collect()
        })
        .await
    }

    async fn put_recipe(&self, recipe: Recipe) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            write_recipe(&tx, &recipe)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>> {
        let hash = *hash;
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT namespace, path FROM files WHERE hash = ?1 AND deleted = 0 ORDER BY namespace, path",
            )?;
            let rows = stmt.query_map([&hash.as_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn referenced_contents(
        &self,
        after: Option<ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let after = after.map(|h| h.as_bytes().to_vec());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                // Every live entry is a kept version of its path, so the
                // versions hold every referenced content.
                "SELECT hash, MAX(size) FROM versions WHERE hash IS NOT NULL
                   AND (?1 IS NULL OR hash > ?1)
                 GROUP BY hash ORDER BY hash LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
            })?;
            rows.map(|r| {
                let (hash, size) = r?;
                Ok((ContentHash::try_from(&hash[..])?, size as u64))
            })
            .collect()
        })
        .await
    }

    async fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Lock>> {
        let (ns, prefix, after) = (ns.to_owned(), prefix.to_owned(), after.map(str::to_owned));
        self.read(move |c| locks::list_locks_page(c, &ns, &prefix, after.as_deref(), now, limit)).await
    }

    async fn all_locks(&self) -> Result<Vec<(String, Lock)>> {
        self.read(locks::all_locks).await
    }

    async fn expired_locks(&self, now: i64) -> Result<Vec<(String, Lock)>> {
        self.read(move |c| locks::expired_locks(c, now)).await
    }

    fn snapshots(&self) -> Option<&dyn SnapshotSink> {
        Some(self)
    }

    async fn versions(&self, ns: &str, path: &RelPath, below: u64, limit: usize) -> Result<Vec<Version>> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| history::versions(c, &ns, path.as_str(), below, limit)).await
    }

    async fn version(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| history::version(c, &ns, path.as_str(), seq, true)).await
    }

    async fn version_at(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.read(move |c| history::version(c, &ns, path.as_str(), seq, false)).await
    }

    async fn seq_at_ms(&self, ns: &str, at_ms: i64) -> Result<(Option<i64>, Option<u64>)> {
        let ns = ns.to_owned();
        self.read(move |c| history::seq_at_ms(c, &ns, at_ms)).await
    }

    async fn committed_ms_at(&self, ns: &str, seq: u64) -> Result<Option<i64>> {
        let ns = ns.to_owned();
        self.read(move |c| history::committed_ms_at(c, &ns, seq)).await
    }

    async fn state_at(
        &self,
        ns: &str,
        prefix: &str,
        seq: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let (ns, prefix, after) = (ns.to_owned(), prefix.to_owned(), after.map(str::to_owned));
        self.read(move |c| history::state_at(c, &ns, &prefix, seq, after.as_deref(), limit)).await
    }

    async fn versions_page(
        &self,
        ns: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let (ns, after) = (ns.to_owned(), after.map(|(p, s)| (p.to_owned(), s)));
        self.read(move |c| {
            history::versions_page(c, &ns, after.as_ref().map(|(p, s)| (p.as_str(), *s)), limit)
        })
        .await
    }

    async fn trash(&self, ns: &str, prefix: &str, since_ms: i64) -> Result<Vec<(Version, Option<Version>)>> {
        let (ns, prefix) = (ns.to_owned(), prefix.to_owned());
        self.read(move |c| history::trash(c, &ns, &prefix, since_ms)).await
    }

    async fn labels(&self, ns: &str) -> Result<Vec<Label>> {
        let ns = ns.to_owned();
        self.read(move |c| history::labels(c, &ns)).await
    }

    async fn label(&self, ns: &str, name: &str) -> Result<Option<Label>> {
        let (ns, name) = (ns.to_owned(), name.to_owned());
        self.read(move |c| history::label(c, &ns, &name)).await
    }

    async fn retentions(&self) -> Result<Vec<(String, Retention)>> {
        self.read(history::retentions).await
    }

    async fn history_namespaces(&self) -> Result<Vec<String>> {
        self.read(history_prune::history_namespaces).await
    }

    async fn live_contents(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        self.read(move |c| history_prune::live_contents(c, &hashes)).await
    }

    async fn live_files(&self, ns: &str) -> Result<u64> {
        let ns = ns.to_owned();
        self.read(move |c| history_prune::live_files(c, &ns)).await
    }

    async fn history_usage(&self, ns: Option<&str>) -> Result<Usage> {
        let ns = ns.map(str::to_owned);
        self.read(move |c| history_prune::history_usage(c, ns.as_deref())).await
    }

    async fn put_share(&self, share: crate::storage::Share) -> Result<()> {
        self.write(move |c| shares::put(c, &share)).await
    }

    async fn share(&self, id: &str) -> Result<Option<crate::storage::Share>> {
        let id = id.to_owned();
        self.read(move |c| shares::get(c, &id)).await
    }

    async fn shares(&self, ns: &str) -> Result<Vec<crate::storage::Share>> {
        let ns = ns.to_owned();
        self.read(move |c| shares::of_namespace(c, &ns)).await
    }

    async fn revoke_share(&self, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
        let (ns, id) = (ns.to_owned(), id.to_owned());
        self.write(move |c| shares::revoke(c, &ns, &id, at_ms)).await
    }
}

#[async_trait]
impl SnapshotSink for SqliteMeta {
    async fn snapshot_begin(&self) -> Result<()> {
        self.write(|c| {
            c.execute_batch(
                "DROP TABLE IF EXISTS snapshot_files;
                 CREATE TABLE snapshot_files AS SELECT * FROM files WHERE 0;
                 DROP TABLE IF EXISTS snapshot_locks;
                 CREATE TABLE snapshot_locks AS SELECT * FROM locks WHERE 0;
                 DROP TABLE IF EXISTS snapshot_versions;
                 CREATE TABLE snapshot_versions AS SELECT * FROM versions WHERE 0;
                 CREATE UNIQUE INDEX snapshot_versions_key ON snapshot_versions (namespace, path, seq);
                 DROP TABLE IF EXISTS snapshot_labels;
                 CREATE TABLE snapshot_labels AS SELECT * FROM labels WHERE 0;
                 CREATE UNIQUE INDEX snapshot_labels_key ON snapshot_labels (namespace, name);
                 DROP TABLE IF EXISTS snapshot_retention;
                 CREATE TABLE snapshot_retention AS SELECT * FROM retention WHERE 0;
                 CREATE UNIQUE INDEX snapshot_retention_key ON snapshot_retention (namespace);",
            )?;
            Ok(())
        })
        .await
    }

    async fn snapshot_put(&self, ns: &str, entry: &Entry) -> Result<()> {
        let (ns, entry) = (ns.to_owned(), entry.clone());
        self.write(move |c| {
            let (size, hash, mtime, exec, link, folder) = content_columns(&entry);
            c.execute(
                "INSERT INTO snapshot_files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![ns, entry.path.as_str(), entry.version as i64, entry.is_deleted(), size, hash, mtime, exec, entry.client_id, link, folder],
            )?;
            Ok(())
        })
        .await
    }

    async fn snapshot_put_lock(&self, ns: &str, lock: &Lock) -> Result<()> {
        let (ns, lock) = (ns.to_owned(), lock.clone());
        self.write(move |c| locks::snapshot_put_lock(c, &ns, &lock)).await
    }

    async fn snapshot_put_version(&self, ns: &str, version: &Version) -> Result<()> {
        let (ns, version) = (ns.to_owned(), version.clone());
        self.write(move |c| history::snapshot_put_version(c, &ns, &version)).await
    }

    async fn snapshot_put_label(&self, ns: &str, label: &Label) -> Result<()> {
        let (ns, label) = (ns.to_owned(), label.clone());
        self.write(move |c| history::snapshot_put_label(c, &ns, &label)).await
    }

    async fn snapshot_put_retention(&self, ns: &str, retention: &Retention) -> Result<()> {
        let (ns, retention) = (ns.to_owned(), *retention);
        self.write(move |c| history::snapshot_put_retention(c, &ns, &retention)).await
    }

    async fn snapshot_end(&self, head: u64) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            tx.execute_batch(
                "DELETE FROM files;
                 INSERT INTO files SELECT * FROM snapshot_files;
                 DROP TABLE snapshot_files;
                 DELETE FROM locks;
                 INSERT INTO locks SELECT * FROM snapshot_locks;
                 DROP TABLE snapshot_locks;
                 DELETE FROM changes;
                 DELETE FROM versions;
                 INSERT INTO versions SELECT * FROM snapshot_versions;
                 DROP TABLE snapshot_versions;
                 DELETE FROM labels;
                 INSERT INTO labels SELECT * FROM snapshot_labels;
                 DROP TABLE snapshot_labels;
                 DELETE FROM retention;
                 INSERT INTO retention SELECT * FROM snapshot_retention;
                 DROP TABLE snapshot_retention;",
            )?;
            // A current entry whose version was not sent (a primary older
            // than history) is its one version.
            tx.execute(
                "INSERT OR IGNORE INTO versions (namespace, path, seq, deleted, size, hash, mtime_ns, executable,
                                       symlink, folder, client_id, principal, committed_ms, kind)
                 SELECT namespace, path, version, deleted, size, hash, mtime_ns, executable, symlink, folder,
                        client_id, '', ?1, CASE WHEN deleted THEN 2 ELSE 1 END
                 FROM files",
                [crate::clock::now_ms()],
            )?;
            identity::set_meta(&tx, MetaKey::HeadFloor, &head.to_string())?;
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

/// A transaction on the writer connection. `BEGIN` goes with its first
/// trip; writes and decisions wait in `pending` for the next trip (at the
/// latest the commit). Dropped while open, it is rolled back.
struct SqliteTx {
    writer: Arc<Mutex<Connection>>,
    pending: Vec<Pending>,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` since.
    open: bool,
}

/// Work a transaction sends with its next trip, in order.
enum Pending {
    Write(Box<Change>),
    /// [`MetaTx::decide_each`]'s items and the closure that decides them.
    Decide(Vec<(String, RelPath, Want)>, Decide),
}

impl std::fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTx").field("pending", &self.pending.len()).field("open", &self.open).finish()
    }
}

impl Pending {
    fn run(self, c: &Connection) -> Result<()> {
        match self {
            Pending::Write(change) => write_change(c, &change),
            Pending::Decide(items, mut decide) => {
                for (i, (ns, path, want)) in items.into_iter().enumerate() {
                    if let Some((change, recipe)) = decide(i, facts(c, &ns, &path, want)?) {
                        if let Some(recipe) = recipe {
                            write_recipe(c, &recipe)?;
                        }
                        write_change(c, &change)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl SqliteTx {
    /// One trip: opens the transaction if needed, runs the pending work,
    /// then `f`.
    async fn trip<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (writer, pending, open) = (self.writer.clone(), std::mem::take(&mut self.pending), self.open);
        self.open = true;
        tokio::task::spawn_blocking(move || {
            let conn =
                if open { writer.lock().unwrap_or_else(|p| p.into_inner()) } else { lock_writer(&writer) };
            if !open {
                conn.execute_batch("BEGIN")?;
            }
            for work in pending {
                work.run(&conn)?;
            }
            f(&conn)
        })
        .await?
    }
}

#[async_trait]
impl MetaTx for SqliteTx {
    async fn facts(&mut self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        let (ns, path) = (ns.to_owned(), path.clone());
        self.trip(move |c| facts(c, &ns, &path, want)).await
    }

    fn decide_each(&mut self, items: Vec<(String, RelPath, Want)>, decide: Decide) {
        self.pending.push(Pending::Decide(items, decide));
    }

    async fn lock_by_id(&mut self, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
        let (ns, lock_id) = (ns.to_owned(), lock_id.to_owned());
        self.trip(move |c| locks::get_lock_by_id(c, &ns, &lock_id)).await
    }

    fn write(&mut self, change: Change) {
        self.pending.push(Pending::Write(Box::new(change)));
    }

    async fn flush(&mut self) -> Result<()> {
        self.trip(|_| Ok(())).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if !self.open && self.pending.is_empty() {
            return Ok(());
        }
        self.trip(|c| Ok(c.execute_batch("COMMIT")?)).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            // Quick (nothing to sync); the next use of the writer would
            // roll it back anyway.
            drop(lock_writer(&self.writer));
        }
    }
}

/// The facts of a write to `path` (see [`Facts`]).
fn facts(c: &Connection, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
    let mut out =
        Facts { current: get_entry(c, ns, path)?, lock: locks::get_lock(c, ns, path)?, ..Facts::default() };
    if let Some(folder) = want.clash {
        let mut live_file = c.prepare_cached(
            "SELECT 1 FROM files WHERE namespace = ?1 AND path = ?2 AND deleted = 0 AND folder = 0",
        )?;
        for f in rules::folders_of(path) {
            if live_file.exists(params![ns, f])? {
                out.file_above = Some(f.to_owned());
                break;
            }
        }
        if !folder && out.file_above.is_none() {
            // Paths below "p" sort between "p/" and "p0" ('0' follows '/').
            let p = path.as_str();
            out.live_below = c
                .prepare_cached(
                    "SELECT path FROM files WHERE namespace = ?1 AND path > ?2 AND path < ?3 AND deleted = 0 LIMIT 1",
                )?
                .query_row(params![ns, format!("{p}/"), format!("{p}0")], |r| r.get(0))
                .optional()?;
        }
    }
    if let Some(hash) = want.refers {
        out.refers = refers_to(c, ns, &hash)?;
    }
    if want.current_recipe
        && let Some(current) = out.current.as_ref().and_then(|e| e.content)
    {
        out.current_recipe = get_recipe(c, &current.hash)?.map(|r| r.list);
    }
    if let Some(from) = &want.moved_from {
        out.moved_from_hash = history::newest_content(c, ns, from.as_str())?;
    }
    if want.moved_away
        && let Some(current) = &out.current
    {
        out.moved_to = history::moved_to(c, ns, path.as_str(), current.version)?;
    }
    Ok(out)
}

/// The recipe of content `hash`, if one is kept.
fn get_recipe(c: &Connection, hash: &ContentHash) -> Result<Option<Recipe>> {
    let row = c
        .prepare_cached("SELECT size, list, prev, prev_runs FROM recipes WHERE hash = ?1")?
        .query_row([hash.as_bytes().as_slice()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })
        .optional()?;
    let Some((size, list, prev, prev_runs)) = row else { return Ok(None) };
    let bad = || Error::Internal(format!("the stored chunk list of {hash} does not read"));
    let list = chunks::unpack_list(&list).ok_or_else(bad)?;
    let prev = match (prev, prev_runs) {
        (Some(p), Some(runs)) => {
            Some((ContentHash::try_from(&p[..])?, chunks::unpack_runs(&runs).ok_or_else(bad)?))
        }
        _ => None,
    };
    Ok(Some(Recipe { hash: *hash, size: size as u64, list, prev }))
}

/// Stores a recipe and its chunk references; a stored one is kept (the
/// same content cuts into the same list), its `prev` replaced by a new one.
fn write_recipe(c: &Connection, r: &Recipe) -> Result<()> {
    let hash = r.hash.as_bytes().as_slice();
    let (prev, prev_runs) = match &r.prev {
        Some((p, runs)) => (Some(p.as_bytes().to_vec()), Some(chunks::pack_runs(runs))),
        None => (None, None),
    };
    c.prepare_cached(
        "INSERT INTO recipes (hash, size, list, prev, prev_runs) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (hash) DO UPDATE SET
           prev = COALESCE(excluded.prev, prev), prev_runs = COALESCE(excluded.prev_runs, prev_runs)",
    )?
    .execute(params![hash, r.size as i64, chunks::pack_list(&r.list), prev, prev_runs])?;
    let mut link = c.prepare_cached("INSERT OR IGNORE INTO recipe_chunks (chunk, recipe) VALUES (?1, ?2)")?;
    for chunk in &r.list {
        link.execute(params![chunk.hash.as_bytes().as_slice(), hash])?;
    }
    Ok(())
}

/// Whether an entry or a kept version of namespace `ns` refers to content
/// `hash` (content its own history keeps is the namespace's to reuse).
fn refers_to(c: &Connection, ns: &str, hash: &ContentHash) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM files WHERE hash = ?1 AND namespace = ?2)
             OR EXISTS (SELECT 1 FROM versions WHERE hash = ?1 AND namespace = ?2)",
    )?
    .query_row(params![hash.as_bytes().as_slice(), ns], |r| r.get(0))?)
}

/// Whether any live entry or kept version refers to content `hash`, or
/// any recipe lists it as a chunk.
fn content_referenced(c: &Connection, hash: &ContentHash) -> Result<bool> {
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM files WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM versions WHERE hash = ?1)
             OR EXISTS (SELECT 1 FROM recipe_chunks WHERE chunk = ?1)",
    )?
    .query_row([&hash.as_bytes()[..]], |r| r.get(0))?)
}

fn get_entry(c: &Connection, ns: &str, path: &RelPath) -> Result<Option<Entry>> {
    c.prepare_cached(
        "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
         FROM files WHERE namespace = ?1 AND path = ?2",
    )?
    .query_row(params![ns, path.as_str()], |r| entry_from_row(r, 0))
    .optional()?
    .transpose()
}

/// Appends a change to the log and applies it.
fn write_change(c: &Connection, change: &Change) -> Result<()> {
    match &change.what {
        What::File(e, note) => write_file_change(c, &change.namespace, e, note),
        What::History(h) => history::write_history_change(c, change, h),
        What::Lock(_) | What::Unlock { .. } => locks::write_lock_change(c, change),
    }
}

/// Appends a file change to the log, makes it the path's current entry and
/// keeps it as a version of the path.
fn write_file_change(c: &Connection, ns: &str, e: &Entry, note: &VersionNote) -> Result<()> {
    let (size, hash, mtime, exec, link, folder) = content_columns(e);
    let deleted = e.content.is_none();
    c.prepare_cached(
        "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id, committed_ms,
                              symlink, folder, principal, version_kind, moved_from, moved_to, restored_from)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    )?
    .execute(params![
        e.version as i64,
        ns,
        e.path.as_str(),
        deleted,
        size,
        &hash,
        mtime,
        exec,
        e.client_id,
        note.committed_ms,
        link,
        folder,
        note.principal,
        note.kind.code(),
        note.moved_from.as_ref().map(RelPath::as_str),
        note.moved_to.as_ref().map(RelPath::as_str),
        note.restored_from.map(|v| v as i64),
    ])?;
    history::write_version(c, ns, e, note)?;
    c.prepare_cached(
        "INSERT INTO files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (namespace, path) DO UPDATE SET
           version = excluded.version, deleted = excluded.deleted, size = excluded.size,
           hash = excluded.hash, mtime_ns = excluded.mtime_ns, executable = excluded.executable,
           client_id = excluded.client_id, symlink = excluded.symlink, folder = excluded.folder",
    )?
    .execute(params![
        ns,
        e.path.as_str(),
        e.version as i64,
        deleted,
        size,
        hash,
        mtime,
        exec,
        e.client_id,
        link,
        folder
    ])?;
    Ok(())
}

/// An entry's content as the columns size, hash, mtime_ns, executable,
/// symlink and folder (zeros and no hash for a tombstone).
fn content_columns(e: &Entry) -> (i64, Option<Vec<u8>>, i64, bool, bool, bool) {
    match &e.content {
        Some(c) => {
            (c.size as i64, Some(c.hash.as_bytes().to_vec()), c.mtime_ns, c.executable, c.symlink, c.folder)
        }
        None => (0, None, 0, false, false, false),
    }
}

/// The columns [`change_from_row`] decodes: a file change's in order, a
/// lock change's ([`locks::LOCK_CHANGE_COLUMNS`]) by name.
const CHANGE_COLUMNS: &str = "path, seq, deleted, size, hash, mtime_ns, executable, client_id, namespace, kind, \
     symlink, folder, lock_id, lock_client_id, lock_principal, lock_holder, lock_note, lock_acquired_ms, \
     lock_expires_ms, lock_ttl_seconds, lock_token, lock_end, lock_ended_by_client_id, lock_ended_by_principal, \
     principal, committed_ms, version_kind, moved_from, moved_to, restored_from, detail";

/// Decodes a change-log row of [`CHANGE_COLUMNS`].
fn change_from_row(r: &Row<'_>) -> rusqlite::Result<Result<Change>> {
    let namespace: String = r.get(8)?;
    let kind: i64 = r.get(9)?;
    if kind == 0 {
        let entry = entry_from_row(r, 0)?;
        let note = history::note_from_row(r)?;
        return Ok(entry.and_then(|entry| Ok(Change::file(&namespace, entry, note?))));
    }
    if history::is_history_kind(kind) {
        return history::history_change_from_row(r);
    }
    locks::lock_change_from_row(r)
}

/// Decodes the columns path, version, deleted, size, hash, mtime_ns,
/// executable, client_id starting at `at`, and the columns `symlink` and
/// `folder`. The outer result is SQLite's,
/// the inner one a row whose stored values no longer validate.
fn entry_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<Result<Entry>> {
    let path: String = r.get(at)?;
    let version: i64 = r.get(at + 1)?;
    let deleted: bool = r.get(at + 2)?;
    let size: i64 = r.get(at + 3)?;
    let hash: Option<Vec<u8>> = r.get(at + 4)?;
    let mtime_ns: i64 = r.get(at + 5)?;
    let executable: bool = r.get(at + 6)?;
    let client_id: String = r.get(at + 7)?;
    let symlink: bool = r.get("symlink")?;
    let folder: bool = r.get("folder")?;
    Ok((|| {
        let content = match (deleted, hash) {
            (true, _) => None,
            (false, Some(h)) => Some(Content {
                hash: ContentHash::try_from(&h[..])?,
                size: size as u64,
                mtime_ns,
                executable,
                symlink,
                folder,
            }),
            (false, None) => return Err(Error::Internal(format!("live entry {path:?} has no hash"))),
        };
        Ok(Entry { path: RelPath::new(path)?, version: version as u64, content, client_id })
    })())
}

fn now_ms() -> i64 {
    syncstore::lock::now_ms()
}
