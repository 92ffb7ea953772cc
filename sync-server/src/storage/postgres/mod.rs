//! The shared metadata backend: PostgreSQL, written by any number of
//! server processes at once (see [`super::meta::SharedMeta`]).
//!
//! The rows each write touches are the embedded backend's
//! (`storage/sqlite/`), table for table; what differs is what sharing
//! needs:
//! - Seq order is commit order: every write transaction first locks the one
//!   `feed_head` row ([`MetaTx::claim_head`]) and its commit sets it, so the
//!   writers of all processes append one after the other and a reader
//!   following the log by `seq > cursor` never sees a later seq before an
//!   earlier one.
//! - A commit that wrote changes sends one `NOTIFY syncstore_feed` carrying
//!   the head it set; each process LISTENs on a connection of its own
//!   ([`SharedMeta::changed`]) and reads the log up to that head without
//!   asking for it.
//! - Liveness: each process upserts its row of `processes`.
//!
//! Calls run on pooled connections (deadpool); statements are prepared once
//! per connection. A lost or refused connection, or no pooled connection in
//! time, is [`Error::Unavailable`]; nothing is retried here.
//!
//! Nothing outside this folder names `tokio_postgres`, except the test
//! cluster of `testing::postgres`.

// Reached from the server through `Store::open_shared`, which the server's
// configuration wires; until then only the tests use it.

mod history;
mod history_prune;
mod identity;
mod locks;
mod schema;
mod shares;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use deadpool_postgres::{
    ClientWrapper, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures::{StreamExt, TryFutureExt};
use syncstore::{Content, ContentHash, Entry, Lock, RelPath, chunks};
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls, Row, types::ToSql};
use tokio_util::sync::CancellationToken;

use super::meta::{
    Decide, Duty, Facts, HeldDuty, MetaStore, MetaTx, ProcessSeen, Recipe, SharedMeta, SnapshotSink, Want,
};
use super::{
    Change, Identity, Label, Version, VersionNote, What,
    retention::{Retention, Usage},
    rules,
};
use crate::error::{Error, Result, StorageError, StorageErrorKind};

/// A pooled connection (statements prepared on it are cached).
pub(super) type Conn = ClientWrapper;

/// The most connections one process holds in its pool.
const POOL_SIZE: usize = 16;

/// The most connections of the pool kept for write transactions. A process
/// runs them one at a time (under the journal's writer lock), and with
/// their own connections they never wait for one behind the reads and
/// content placings of the uploads they commit: a write transaction holds
/// the feed's lock, which the writers of every process wait for.
const WRITER_POOL_SIZE: usize = 2;

/// How long a call waits for a pooled connection before it is refused as
/// unavailable.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// The tables whose plans depend on how many rows they hold, and when
/// [`SharedMeta::refresh_statistics`] analyzes one: after more than
/// `ANALYZE_THRESHOLD + ANALYZE_SCALE × its rows` inserted, updated or
/// deleted rows since it was last analyzed.
const ANALYZED_TABLES: &[&str] =
    &["files", "versions", "changes", "contents", "recipes", "recipe_chunks", "locks"];
const ANALYZE_THRESHOLD: f64 = 500.0;
const ANALYZE_SCALE: f64 = 0.2;
/// The advisory lock key one process at a time refreshes statistics under.
const ANALYZE_LOCK: i64 = 0x7379_6e63_616e_6c7a;

/// The advisory lock key the process watching for mass changes holds
/// (a session lock: see [`SharedMeta::take_duty`]).
const GUARD_DUTY_LOCK: i64 = 0x7379_6e63_6775_6172;

/// How often a held duty's connection is checked.
const DUTY_CHECK: Duration = Duration::from_secs(2);

/// A duty held by a session advisory lock on a connection of its own.
struct PgDuty {
    client: Conn,
}

#[async_trait]
impl HeldDuty for PgDuty {
    async fn lost(&self) {
        loop {
            tokio::time::sleep(DUTY_CHECK).await;
            if self.client.is_closed() || self.client.simple_query("SELECT 1").await.is_err() {
                tracing::warn!("lost the database connection that held a duty");
                return;
            }
        }
    }
}

/// How long connecting to PostgreSQL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel a commit that wrote changes notifies.
const FEED_CHANNEL: &str = "syncstore_feed";

/// The first and the longest wait before the LISTEN connection is made
/// again after it dropped (doubling in between).
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The shared metadata of a scaled-out server.
#[derive(Debug, Clone)]
pub(crate) struct PgMeta {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    /// Write transactions' own connections.
    writers: Pool,
    /// What the LISTEN connection heard.
    feed: Arc<Feed>,
    /// Stops the LISTEN task when the store goes.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PgMeta {
    /// Connects to the database at `url` (`postgres://user@host:port/db`;
    /// a password from the URL, `PGPASSWORD`, or the password file
    /// `PGPASSFILE` / `~/.pgpass`), brings its schema up to date and starts
    /// listening for other processes' commits.
    pub(crate) async fn connect(url: &str) -> Result<PgMeta> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| Error::Config(format!("the metadata URL {url:?}: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_password().is_none()
            && let Some(password) = password_from_env(&config)
        {
            config.password(password);
        }
        // Every statement is prepared once per connection and run many
        // times: planned once (a generic plan), not again at each run,
        // which cost more than running it (the facts of a write took a
        // millisecond of planning). ANALYZE ([`SharedMeta::refresh_statistics`])
        // has them planned again as the tables grow.
        let options = match config.get_options() {
            Some(given) => format!("{given} -c plan_cache_mode=force_generic_plan"),
            None => "-c plan_cache_mode=force_generic_plan".to_owned(),
        };
        config.options(&options);
        let build = |size: usize| {
            let manager = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(POOL_WAIT))
                .create_timeout(Some(CONNECT_TIMEOUT))
                .build()
                .map_err(|e| Error::Config(format!("the metadata connection pool: {e}")))
        };
        let (pool, writers) = (build(POOL_SIZE)?, build(WRITER_POOL_SIZE)?);
        let mut conn = pool.get().await?;
        schema::migrate(&mut conn).await?;
        identity::init(&conn).await?;
        drop(conn);
        let feed = Arc::new(Feed::default());
        let stop = CancellationToken::new();
        tokio::spawn(listen(config, feed.clone(), stop.clone()));
        Ok(PgMeta { inner: Arc::new(Inner { pool, writers, feed, stop }) })
    }

    /// The connection pool (the bucket keeps its inline content in the same
    /// database).
    pub(crate) fn pool(&self) -> Pool {
        self.inner.pool.clone()
    }

    async fn conn(&self) -> Result<Object> {
        Ok(self.inner.pool.get().await?)
    }

    fn tx(&self) -> PgTx {
        PgTx {
            pool: self.inner.writers.clone(),
            conn: None,
            pending: Vec::new(),
            open: false,
            last_seq: None,
        }
    }
}

/// The password for `config` from `PGPASSWORD`, else from the password file
/// (`PGPASSFILE`, else `~/.pgpass`): its first line
/// `host:port:database:user:password` that matches (`*` matches anything).
fn password_from_env(config: &tokio_postgres::Config) -> Option<String> {
    if let Ok(p) = std::env::var("PGPASSWORD") {
        return Some(p);
    }
    let file = std::env::var_os("PGPASSFILE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(file).ok()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432).to_string();
    let db = config.get_dbname().unwrap_or_default().to_owned();
    let user = config.get_user().unwrap_or_default().to_owned();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields: Vec<&str> = line.splitn(5, ':').collect();
        let [h, p, d, u, password] = fields[..] else { return None };
        let fits = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        (fits(h, &host) && fits(p, &port) && fits(d, &db) && fits(u, &user)).then(|| password.to_owned())
    })
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        let code = e.code().map(|c| c.code().to_owned());
        let lost = e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
            // Connection exceptions, operator intervention (a shutdown),
            // too many connections.
            || code.as_deref().is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c == "53300");
        if lost {
            return Error::Unavailable(format!("the metadata database (PostgreSQL) cannot be reached: {e}"));
        }
        let kind = if code.as_deref() == Some("53100") {
            StorageErrorKind::DiskFull
        } else {
            StorageErrorKind::Other
        };
        // The driver's own errors name their cause only as their source.
        let detail = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => db.to_string(),
            (None, Some(cause)) => format!("{e}: {cause}"),
            (None, None) => e.to_string(),
        };
        Error::Storage(StorageError::new(kind, format!("PostgreSQL: {detail}")))
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(_) => Error::Unavailable(format!(
                "the metadata database (PostgreSQL): no connection within {POOL_WAIT:?}"
            )),
            other => Error::Unavailable(format!("the metadata database (PostgreSQL): {other}")),
        }
    }
}

/// What the LISTEN connection heard since the follower last looked: each
/// commit's notification carries the head it set, so the process that
/// wakes needs no query to learn it.
#[derive(Debug, Default)]
struct Feed {
    /// Woken by each notification (and after a reconnect).
    wake: Notify,
    /// The highest head a notification announced.
    head: AtomicU64,
    /// Something may have been missed (a reconnect, a notification without
    /// a head): the head must be read from the database.
    unknown: AtomicBool,
}

impl Feed {
    fn heard(&self, payload: &str) {
        match payload.parse::<u64>() {
            Ok(head) => {
                self.head.fetch_max(head, Ordering::AcqRel);
            }
            Err(_) => self.unknown.store(true, Ordering::Release),
        }
        self.wake.notify_one();
    }

    fn missed(&self) {
        self.unknown.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Keeps a connection LISTENing on [`FEED_CHANNEL`] until `stop`, waking
/// `feed` on each notification; connects again with backoff when it drops.
async fn listen(config: tokio_postgres::Config, feed: Arc<Feed>, stop: CancellationToken) {
    let mut backoff = LISTEN_BACKOFF.0;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen_once(&config, &feed) => r,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "the metadata database's notification connection dropped; connecting again");
        }
        // Something may have been committed while it was down.
        feed.missed();
        if started.elapsed() > LISTEN_BACKOFF.1 {
            backoff = LISTEN_BACKOFF.0;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(LISTEN_BACKOFF.1);
    }
}

/// One LISTEN connection, until it fails.
async fn listen_once(config: &tokio_postgres::Config, feed: &Feed) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listen = format!("LISTEN {FEED_CHANNEL}");
    let listening = client.batch_execute(&listen);
    tokio::pin!(listening);
    // The connection only makes progress while its messages are polled.
    loop {
        tokio::select! {
            r = &mut listening => { r?; break; }
            m = messages.next() => match m {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    feed.missed();
    while let Some(m) = messages.next().await {
        if let AsyncMessage::Notification(n) = m? {
            feed.heard(n.payload());
        }
    }
    Ok(())
}

#[async_trait]
impl MetaStore for PgMeta {
    async fn head(&self) -> Result<u64> {
        let c = self.conn().await?;
        let stmt = c.prepare_cached("SELECT head FROM feed_head").await?;
        Ok(c.query_one(&stmt, &[]).await?.get::<_, i64>(0) as u64)
    }

    async fn load_identity(&self) -> Result<Identity> {
        identity::load(&*self.conn().await?).await
    }

    async fn save_identity(&self, id: &Identity) -> Result<()> {
        let mut tx = Box::new(self.tx());
        identity::save(tx.trip().await?, id).await?;
        tx.commit().await
    }

    fn begin(&self) -> Box<dyn MetaTx> {
        Box::new(self.tx())
    }

    async fn facts(&self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        facts(&*self.conn().await?, ns, path, want).await
    }

    async fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT path, seq, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
                 FROM changes WHERE namespace = $1 AND path = $2 AND seq = $3 AND kind = 0",
            )
            .await?;
        c.query_opt(&stmt, &[&ns, &path.as_str(), &(version as i64)])
            .await?
            .map(|r| entry_from_row(&r, 0))
            .transpose()
    }

    async fn previous_file_change(
        &self,
        ns: &str,
        path: &RelPath,
        before: u64,
    ) -> Result<Option<(u64, bool)>> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT seq, deleted FROM changes
                 WHERE namespace = $1 AND path = $2 AND seq < $3 AND kind = 0
                 ORDER BY seq DESC LIMIT 1",
            )
            .await?;
        let row = c.query_opt(&stmt, &[&ns, &path.as_str(), &(before as i64)]).await?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get(1))))
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
        let sql = format!(
            "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, symlink, folder
             FROM files
             WHERE namespace = $1 AND path {} $2{}
               AND ($5 OR NOT deleted)
             ORDER BY path LIMIT $6",
            bounds.start_op(),
            // Every parameter is named, so that each variant prepares.
            match bounds.below {
                Some(_) => " AND path < $3 AND (path = $4 OR path >= $7)",
                None => " AND $3::text IS NULL AND $4::text IS NULL AND $7::text IS NULL",
            },
        );
        let c = self.conn().await?;
        let stmt = c.prepare_cached(&sql).await?;
        let (prefix, below) = bounds.below.clone().unzip();
        let rows = c
            .query(
                &stmt,
                &[&ns, &bounds.from, &bounds.until, &prefix, &include_deleted, &(limit as i64), &below],
            )
            .await?;
        rows.iter().map(|r| entry_from_row(r, 0)).collect()
    }

    async fn manifest_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, Entry)>> {
        let (ans, apath) = after.unzip();
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT path, version, deleted, size, hash, mtime_ns, executable, client_id, namespace, symlink, folder
                 FROM files WHERE $1::text IS NULL OR (namespace, path) > ($1, $2::text COLLATE \"C\")
                 ORDER BY namespace, path LIMIT $3",
            )
            .await?;
        let rows = c.query(&stmt, &[&ans, &apath, &(limit as i64)]).await?;
        rows.iter().map(|r| Ok((r.try_get(8)?, entry_from_row(r, 0)?))).collect()
    }

    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>> {
        let c = self.conn().await?;
        // Two statements: a namespace's follower reads its own index.
        let rows = match ns {
            Some(ns) => {
                let stmt = c
                    .prepare_cached(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM changes WHERE namespace = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                    ))
                    .await?;
                c.query(&stmt, &[&ns, &(after as i64), &(limit as i64)]).await?
            }
            None => {
                let stmt = c
                    .prepare_cached(&format!(
                        "SELECT {CHANGE_COLUMNS} FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .await?;
                c.query(&stmt, &[&(after as i64), &(limit as i64)]).await?
            }
        };
        rows.iter().map(change_from_row).collect()
    }

    async fn oldest_logged(&self) -> Result<Option<u64>> {
        let c = self.conn().await?;
        let row = c.query_one("SELECT MIN(seq) FROM changes", &[]).await?;
        Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
    }

    async fn trim_log(&self, keep_from: u64, head: u64) -> Result<usize> {
        let c = self.conn().await?;
        let n = c
            .execute(
                "DELETE FROM changes WHERE seq <= $1 AND seq < $2",
                &[&(keep_from as i64), &(head as i64)],
            )
            .await?;
        Ok(n as usize)
    }

    async fn unreferenced(&self, hashes: Vec<ContentHash>) -> Result<Vec<(ContentHash, bool)>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT h, EXISTS (SELECT 1 FROM recipes WHERE recipes.hash = h)
                 FROM unnest($1::bytea[]) WITH ORDINALITY AS t (h, i)
                 WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.hash = h)
                   AND NOT EXISTS (SELECT 1 FROM versions WHERE versions.hash = h)
                   AND NOT EXISTS (SELECT 1 FROM recipe_chunks WHERE chunk = h)
                 ORDER BY i",
            )
            .await?;
        let rows = c.query(&stmt, &[&hash_params(&hashes)]).await?;
        rows.iter().map(|r| Ok((hash_of(&r.try_get::<_, Vec<u8>>(0)?)?, r.try_get(1)?))).collect()
    }

    async fn recipe(&self, hash: &ContentHash) -> Result<Option<Recipe>> {
        get_recipe(&*self.conn().await?, hash).await
    }

    async fn drop_recipes(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        // Looked up first, outside a transaction: content stored whole
        // (every small file) costs no write.
        let mut recipes = Vec::new();
        {
            let c = self.conn().await?;
            for hash in &hashes {
                recipes.extend(get_recipe(&c, hash).await?);
            }
        }
        if recipes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = Box::new(self.tx());
        let c = tx.trip().await?;
        let mut chunks = std::collections::BTreeSet::new();
        let unlink = c.prepare_cached("DELETE FROM recipe_chunks WHERE recipe = $1").await?;
        let delete = c.prepare_cached("DELETE FROM recipes WHERE hash = $1").await?;
        for recipe in recipes {
            let hash = recipe.hash.as_bytes().as_slice();
            c.execute(&unlink, &[&hash]).await?;
            c.execute(&delete, &[&hash]).await?;
            chunks.extend(recipe.list.iter().map(|chunk| chunk.hash));
        }
        tx.commit().await?;
        Ok(chunks.into_iter().collect())
    }

    async fn orphan_recipes(&self) -> Result<Vec<ContentHash>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT hash FROM recipes
                 WHERE NOT EXISTS (SELECT 1 FROM files WHERE files.hash = recipes.hash AND NOT deleted)
                   AND NOT EXISTS (SELECT 1 FROM versions WHERE versions.hash = recipes.hash)",
                &[],
            )
            .await?;
        rows.iter().map(|r| hash_of(&r.try_get::<_, Vec<u8>>(0)?)).collect()
    }

    async fn put_recipe(&self, recipe: Recipe) -> Result<()> {
        let mut tx = Box::new(self.tx());
        write_recipe(tx.trip().await?, &recipe).await?;
        tx.commit().await
    }

    async fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT namespace, path FROM files WHERE hash = $1 AND NOT deleted ORDER BY namespace, path",
            )
            .await?;
        let rows = c.query(&stmt, &[&hash.as_bytes().as_slice()]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn referenced_contents(
        &self,
        after: Option<ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let after = after.map(|h| h.as_bytes().to_vec());
        let c = self.conn().await?;
        // Every live entry is a kept version of its path, so the versions
        // hold every referenced content.
        let stmt = c
            .prepare_cached(
                "SELECT hash, MAX(size) FROM versions WHERE hash IS NOT NULL AND ($1::bytea IS NULL OR hash > $1)
                 GROUP BY hash ORDER BY hash LIMIT $2",
            )
            .await?;
        let rows = c.query(&stmt, &[&after, &(limit as i64)]).await?;
        rows.iter()
            .map(|r| Ok((hash_of(&r.try_get::<_, Vec<u8>>(0)?)?, r.try_get::<_, i64>(1)? as u64)))
            .collect()
    }

    async fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Lock>> {
        locks::list_locks_page(&*self.conn().await?, ns, prefix, after, now, limit).await
    }

    async fn all_locks(&self) -> Result<Vec<(String, Lock)>> {
        locks::all_locks(&*self.conn().await?).await
    }

    async fn expired_locks(&self, now: i64) -> Result<Vec<(String, Lock)>> {
        locks::expired_locks(&*self.conn().await?, now).await
    }

    fn snapshots(&self) -> Option<&dyn SnapshotSink> {
        // Every process shares the one database: nothing replicates into it
        // through the journal.
        None
    }

    fn shared(&self) -> Option<&dyn SharedMeta> {
        Some(self)
    }

    async fn versions(&self, ns: &str, path: &RelPath, below: u64, limit: usize) -> Result<Vec<Version>> {
        history::versions(&*self.conn().await?, ns, path.as_str(), below, limit).await
    }

    async fn version(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        history::version(&*self.conn().await?, ns, path.as_str(), seq, true).await
    }

    async fn version_at(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        history::version(&*self.conn().await?, ns, path.as_str(), seq, false).await
    }

    async fn seq_at_ms(&self, ns: &str, at_ms: i64) -> Result<(Option<i64>, Option<u64>)> {
        history::seq_at_ms(&*self.conn().await?, ns, at_ms).await
    }

    async fn committed_ms_at(&self, ns: &str, seq: u64) -> Result<Option<i64>> {
        history::committed_ms_at(&*self.conn().await?, ns, seq).await
    }

    async fn state_at(
        &self,
        ns: &str,
        prefix: &str,
        seq: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        history::state_at(&*self.conn().await?, ns, prefix, seq, after, limit).await
    }

    async fn versions_page(
        &self,
        ns: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        history::versions_page(&*self.conn().await?, ns, after, limit).await
    }

    async fn trash(&self, ns: &str, prefix: &str, since_ms: i64) -> Result<Vec<(Version, Option<Version>)>> {
        history::trash(&*self.conn().await?, ns, prefix, since_ms).await
    }

    async fn labels(&self, ns: &str) -> Result<Vec<Label>> {
        history::labels(&*self.conn().await?, ns).await
    }

    async fn label(&self, ns: &str, name: &str) -> Result<Option<Label>> {
        history::label(&*self.conn().await?, ns, name).await
    }

    async fn retentions(&self) -> Result<Vec<(String, Retention)>> {
        history::retentions(&*self.conn().await?).await
    }

    async fn history_namespaces(&self) -> Result<Vec<String>> {
        history_prune::history_namespaces(&*self.conn().await?).await
    }

    async fn live_contents(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        history_prune::live_contents(&*self.conn().await?, &hashes).await
    }

    async fn live_files(&self, ns: &str) -> Result<u64> {
        history_prune::live_files(&*self.conn().await?, ns).await
    }

    async fn history_usage(&self, ns: Option<&str>) -> Result<Usage> {
        history_prune::history_usage(&*self.conn().await?, ns).await
    }

    async fn put_share(&self, share: crate::storage::Share) -> Result<()> {
        shares::put(&*self.conn().await?, &share).await
    }

    async fn share(&self, id: &str) -> Result<Option<crate::storage::Share>> {
        shares::get(&*self.conn().await?, id).await
    }

    async fn shares(&self, ns: &str) -> Result<Vec<crate::storage::Share>> {
        shares::of_namespace(&*self.conn().await?, ns).await
    }

    async fn revoke_share(&self, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
        shares::revoke(&*self.conn().await?, ns, id, at_ms).await
    }
}

#[async_trait]
impl SharedMeta for PgMeta {
    async fn take_duty(&self, duty: Duty) -> Result<Option<Box<dyn HeldDuty>>> {
        let conn = self.conn().await?;
        let key = match duty {
            Duty::MassChangeGuard => GUARD_DUTY_LOCK,
        };
        let held: bool = conn.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?.get(0);
        if !held {
            return Ok(None);
        }
        // A session's advisory lock lasts as long as its connection: this
        // one leaves the pool, and closes when the duty is dropped.
        Ok(Some(Box::new(PgDuty { client: Object::take(conn) })))
    }

    async fn refresh_statistics(&self) -> Result<Vec<String>> {
        let mut c = self.conn().await?;
        // As autovacuum decides, with a lower threshold; one process at a
        // time (another one's ANALYZE is as good), in one transaction.
        let tx = c.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "SELECT s.relid::regclass::text FROM pg_stat_user_tables s
                 WHERE s.schemaname = current_schema() AND s.relname::text = ANY($1::text[])
                   AND s.n_mod_since_analyze > $2::float8 + s.n_live_tup * $3::float8
                   AND pg_try_advisory_xact_lock($4)",
            )
            .await?;
        let tables: Vec<String> = tx
            .query(&stmt, &[&ANALYZED_TABLES, &ANALYZE_THRESHOLD, &ANALYZE_SCALE, &ANALYZE_LOCK])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for table in &tables {
            tracing::debug!(table, "analyzing");
            tx.batch_execute(&format!("ANALYZE {table}")).await?;
        }
        tx.commit().await?;
        Ok(tables)
    }

    async fn changed(&self, poll: Duration) -> Option<u64> {
        let feed = &self.inner.feed;
        tokio::time::timeout(poll, feed.wake.notified()).await.ok()?;
        if feed.unknown.swap(false, Ordering::AcqRel) {
            return None;
        }
        Some(feed.head.load(Ordering::Acquire))
    }

    async fn heartbeat(&self, id: &str, address: &str, head: u64) -> Result<()> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "INSERT INTO processes (id, address, head, seen) VALUES ($1, $2, $3, now())
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address, head = excluded.head, seen = now()",
            )
            .await?;
        c.execute(&stmt, &[&id, &address, &(head as i64)]).await?;
        Ok(())
    }

    async fn processes(&self, within: Duration) -> Result<Vec<ProcessSeen>> {
        let c = self.conn().await?;
        let stmt = c
            .prepare_cached(
                "SELECT id, address, head, (extract(epoch FROM seen) * 1000)::bigint FROM processes
                 WHERE seen > now() - make_interval(secs => $1) ORDER BY id",
            )
            .await?;
        let rows = c.query(&stmt, &[&within.as_secs_f64()]).await?;
        rows.iter()
            .map(|r| {
                Ok(ProcessSeen {
                    id: r.try_get(0)?,
                    address: r.try_get(1)?,
                    head: r.try_get::<_, i64>(2)? as u64,
                    seen_ms: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        self.conn().await?.simple_query("SELECT 1").await?;
        Ok(())
    }
}

/// A transaction on a pooled connection, taken at its first trip with
/// `BEGIN`; writes and decisions wait in `pending` for the next trip (at
/// the latest the commit). Dropped while open, it is rolled back before its
/// connection goes back to the pool (or the connection is discarded).
pub(super) struct PgTx {
    pool: Pool,
    conn: Option<Object>,
    pending: Vec<Pending>,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` since.
    open: bool,
    /// The highest seq this transaction wrote, if it wrote a change.
    last_seq: Option<u64>,
}

/// Work a transaction sends with its next trip, in order.
enum Pending {
    Write(Box<Change>),
    /// [`MetaTx::decide_each`]'s items and the closure that decides them.
    Decide(Vec<(String, RelPath, Want)>, Decide),
}

impl std::fmt::Debug for PgTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTx").field("pending", &self.pending.len()).field("open", &self.open).finish()
    }
}

impl Pending {
    /// Runs the work; returns the highest seq it wrote.
    async fn run(self, c: &Conn) -> Result<Option<u64>> {
        match self {
            Pending::Write(change) => {
                write_change(c, &change).await?;
                Ok(Some(change.seq))
            }
            Pending::Decide(items, decide) => decide_in_windows(c, items, decide).await,
        }
    }
}

/// How many items of a [`MetaTx::decide_each`] have their facts fetched at
/// once.
const DECIDE_WINDOW: usize = 64;

/// Runs a [`MetaTx::decide_each`] in few round trips: the facts of a window
/// of items are fetched at once, the items are decided in order, and their
/// writes are sent together (pipelined on the connection; each statement
/// runs in the order sent). An item whose facts an earlier decision of its
/// window may have changed (see [`affects`]) first has the writes before
/// it run and its facts fetched again, so every item is decided on facts
/// that see the writes of the items before it, as one at a time would.
/// Returns the highest seq written.
async fn decide_in_windows(
    c: &Conn,
    items: Vec<(String, RelPath, Want)>,
    mut decide: Decide,
) -> Result<Option<u64>> {
    let mut last = None;
    for (w, window) in items.chunks(DECIDE_WINDOW).enumerate() {
        let fetched = futures::future::try_join_all(
            window.iter().map(|(ns, path, want)| facts(c, ns, path, want.clone())),
        )
        .await?;
        // This window's decisions, and those of them not written yet.
        let mut decided: Vec<Change> = Vec::new();
        let mut unwritten: Vec<(Change, Option<Recipe>)> = Vec::new();
        for (k, ((ns, path, want), mut item_facts)) in window.iter().zip(fetched).enumerate() {
            if decided.iter().any(|earlier| affects(earlier, ns, path, want)) {
                write_all(c, std::mem::take(&mut unwritten)).await?;
                item_facts = facts(c, ns, path, want.clone()).await?;
            }
            if let Some((change, recipe)) = decide(w * DECIDE_WINDOW + k, item_facts) {
                last = last.max(Some(change.seq));
                decided.push(change.clone());
                unwritten.push((change, recipe));
            }
        }
        write_all(c, unwritten).await?;
    }
    Ok(last)
}

/// Writes decided changes (each with its recipe first), pipelined.
async fn write_all(c: &Conn, changes: Vec<(Change, Option<Recipe>)>) -> Result<()> {
    let recipes = futures::future::try_join_all(
        changes.iter().filter_map(|(_, r)| r.as_ref()).map(|r| write_recipe(c, r)),
    );
    // In order: each run of file changes as one set of rows (a path written
    // again starts a new run, so that no statement touches a row twice),
    // each run of other changes pipelined.
    let in_order = async {
        let mut rows = FileRows::default();
        let mut others = Vec::new();
        for (change, _) in &changes {
            match &change.what {
                What::File(e, note) => {
                    if !others.is_empty() {
                        futures::future::try_join_all(others.drain(..).map(|o| write_change(c, o))).await?;
                    }
                    if rows.holds(&change.namespace, &e.path) {
                        std::mem::take(&mut rows).write(c).await?;
                    }
                    rows.push(&change.namespace, e, note);
                }
                _ => {
                    std::mem::take(&mut rows).write(c).await?;
                    others.push(change);
                }
            }
        }
        rows.write(c).await?;
        futures::future::try_join_all(others.into_iter().map(|o| write_change(c, o))).await?;
        Ok::<_, Error>(())
    };
    futures::try_join!(recipes, in_order)?;
    Ok(())
}

/// Whether writing `earlier` may change the facts of a later item for
/// `path` of `ns` wanting `want` (conservatively: when in doubt, yes). A
/// change is about one path of one namespace; it changes that path's entry
/// and lock, what lies above and below it, what a move from it finds, and
/// whether the namespace refers to its content. A history-only change (a
/// prune) may change any of that.
fn affects(earlier: &Change, ns: &str, path: &RelPath, want: &Want) -> bool {
    if earlier.namespace != ns {
        return false;
    }
    let Some(at) = earlier.path() else { return true };
    // The same path, or one of them a folder the other lies under.
    if path.is_under(at.as_str()) || at.is_under(path.as_str()) {
        return true;
    }
    if want.moved_from.as_ref() == Some(at) {
        return true;
    }
    match &earlier.what {
        What::File(e, note) => {
            note.moved_from.as_ref().is_some_and(|from| from == path)
                || want.refers.is_some_and(|h| e.content.is_some_and(|c| c.hash == h))
        }
        _ => false,
    }
}

impl PgTx {
    /// One trip: takes a connection and opens the transaction if needed,
    /// then runs the pending work; returns the connection for what follows.
    async fn trip(&mut self) -> Result<&Conn> {
        if self.conn.is_none() {
            self.conn = Some(self.pool.get().await?);
        }
        let Some(c) = self.conn.as_deref() else { unreachable!("taken above") };
        if !self.open {
            c.batch_execute("BEGIN").await?;
            self.open = true;
        }
        for work in std::mem::take(&mut self.pending) {
            let wrote = work.run(c).await?;
            self.last_seq = self.last_seq.max(wrote);
        }
        Ok(c)
    }
}

#[async_trait]
impl MetaTx for PgTx {
    async fn facts(&mut self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        let c = self.trip().await?;
        facts(c, ns, path, want).await
    }

    fn decide_each(&mut self, items: Vec<(String, RelPath, Want)>, decide: Decide) {
        self.pending.push(Pending::Decide(items, decide));
    }

    async fn lock_by_id(&mut self, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
        let c = self.trip().await?;
        locks::get_lock_by_id(c, ns, lock_id).await
    }

    fn write(&mut self, change: Change) {
        self.pending.push(Pending::Write(Box::new(change)));
    }

    async fn flush(&mut self) -> Result<()> {
        self.trip().await.map(|_| ())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.conn.is_none() && self.pending.is_empty() {
            return Ok(());
        }
        self.trip().await?;
        let finish = match self.last_seq {
            // One trip: the head moves to the last seq written, and the
            // other processes hear of it once the commit is visible.
            Some(seq) => format!(
                "UPDATE feed_head SET head = GREATEST(head, {seq}); NOTIFY {FEED_CHANNEL}, '{seq}'; COMMIT",
                seq = seq as i64
            ),
            None => "COMMIT".to_owned(),
        };
        let Some(c) = self.conn.as_deref() else { unreachable!("taken by the trip") };
        c.batch_execute(&finish).await?;
        self.open = false;
        Ok(())
    }

    async fn claim_head(&mut self) -> Result<Option<u64>> {
        let c = self.trip().await?;
        let stmt = c.prepare_cached("SELECT head FROM feed_head FOR UPDATE").await?;
        Ok(Some(c.query_one(&stmt, &[]).await?.get::<_, i64>(0) as u64))
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.open {
            return; // back to the pool
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = conn.batch_execute("ROLLBACK").await {
                        tracing::warn!(error = %e, "could not roll back an abandoned transaction");
                        drop(Object::take(conn));
                    }
                });
            }
            // No runtime to roll back on: the connection is closed instead
            // (which rolls back), never pooled with the transaction open.
            Err(_) => drop(Object::take(conn)),
        }
    }
}

/// The facts of a write to `path` (see [`Facts`]): the path's entry, its
/// lock, a file above it, a live entry below it and whether the namespace
/// refers to the content come from one statement ([`FACTS_SQL`]; a group
/// commit runs it once per put, under the feed's lock), a move's source
/// with it; the current content's recipe or a later move, when wanted,
/// take a second trip.
async fn facts(c: &Conn, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
    let folders: Vec<&str> = match want.clash {
        Some(_) => rules::folders_of(path).collect(),
        None => Vec::new(),
    };
    // Paths below "p" sort between "p/" and "p0" ('0' follows '/').
    let p = path.as_str();
    let below = (want.clash == Some(false)).then(|| (format!("{p}/"), format!("{p}0")));
    let (below_from, below_to) = match &below {
        Some((from, to)) => (Some(from.as_str()), Some(to.as_str())),
        None => (None, None),
    };
    let refers = want.refers.as_ref().map(|h| h.as_bytes().as_slice());
    let row = async {
        let stmt = c.prepare_cached(FACTS_SQL).await?;
        Ok::<_, Error>(c.query_one(&stmt, &[&ns, &p, &folders, &below_from, &below_to, &refers]).await?)
    };
    let moved_from_hash = async {
        match &want.moved_from {
            Some(from) => history::newest_content(c, ns, from.as_str()).await,
            None => Ok(None),
        }
    };
    let (row, moved_from_hash) = futures::try_join!(row, moved_from_hash)?;
    let current = match row.try_get::<_, Option<&str>>(0)? {
        Some(_) => Some(entry_from_row(&row, 0)?),
        None => None,
    };
    let lock = match row.try_get::<_, Option<&str>>(FACTS_LOCK_AT)? {
        Some(_) => Some(locks::lock_from_row_at(&row, FACTS_LOCK_AT)?.1),
        None => None,
    };
    let file_above: Option<String> = row.try_get(FACTS_LOCK_AT + locks::LOCK_WIDTH)?;
    let live_below: Option<String> = row.try_get(FACTS_LOCK_AT + locks::LOCK_WIDTH + 1)?;
    let refers: bool = row.try_get(FACTS_LOCK_AT + locks::LOCK_WIDTH + 2)?;
    // What lies below matters only when no folder above is a file.
    let live_below = if file_above.is_none() { live_below } else { None };
    let mut out =
        Facts { current, lock, file_above, live_below, refers, moved_from_hash, ..Facts::default() };
    if want.current_recipe
        && let Some(current) = out.current.as_ref().and_then(|e| e.content)
    {
        out.current_recipe = get_recipe(c, &current.hash).await?.map(|r| r.list);
    }
    if want.moved_away
        && let Some(current) = &out.current
    {
        out.moved_to = history::moved_to(c, ns, path.as_str(), current.version).await?;
    }
    Ok(out)
}

/// [`facts`]'s statement: $1 the namespace, $2 the path, $3 its folders
/// (empty: no file above is wanted), $4 and $5 the bounds of the paths
/// below it (NULL: not wanted), $6 the content whose references are
/// wanted (NULL: not wanted). One row: the entry's columns (NULL: none),
/// the lock's from [`FACTS_LOCK_AT`] (NULL: none), then the file above,
/// the live entry below and whether the namespace refers to the content.
const FACTS_SQL: &str = "
SELECT f.path, f.version, f.deleted, f.size, f.hash, f.mtime_ns, f.executable, f.client_id, f.symlink, f.folder,
       l.path, l.lock_id, l.client_id, l.holder, l.note, l.acquired_ms, l.expires_ms, l.ttl_seconds, l.token,
       l.namespace, l.principal,
       (SELECT a.path FROM files a
         WHERE a.namespace = $1 AND a.path = ANY($3::text[]) AND NOT a.deleted AND NOT a.folder
         ORDER BY length(a.path) LIMIT 1),
       CASE WHEN $4::text IS NOT NULL THEN
           (SELECT b.path FROM files b
             WHERE b.namespace = $1 AND b.path > $4::text AND b.path < $5::text AND NOT b.deleted LIMIT 1)
       END,
       CASE WHEN $6::bytea IS NOT NULL THEN
           EXISTS (SELECT 1 FROM files r WHERE r.hash = $6::bytea AND r.namespace = $1)
           OR EXISTS (SELECT 1 FROM versions v WHERE v.hash = $6::bytea AND v.namespace = $1)
       ELSE false END
FROM (VALUES (1)) AS one (x)
LEFT JOIN files f ON f.namespace = $1 AND f.path = $2
LEFT JOIN locks l ON l.namespace = $1 AND l.path = $2";

/// Where the lock's columns start in [`FACTS_SQL`]'s row.
const FACTS_LOCK_AT: usize = 10;

/// The hashes as `bytea[]` parameter values.
fn hash_params(hashes: &[ContentHash]) -> Vec<&[u8]> {
    hashes.iter().map(|h| h.as_bytes().as_slice()).collect()
}

fn hash_of(bytes: &[u8]) -> Result<ContentHash> {
    Ok(ContentHash::try_from(bytes)?)
}

/// The recipe of content `hash`, if one is kept.
async fn get_recipe(c: &Conn, hash: &ContentHash) -> Result<Option<Recipe>> {
    let stmt = c.prepare_cached("SELECT size, list, prev, prev_runs FROM recipes WHERE hash = $1").await?;
    let Some(row) = c.query_opt(&stmt, &[&hash.as_bytes().as_slice()]).await? else { return Ok(None) };
    let size: i64 = row.try_get(0)?;
    let list: Vec<u8> = row.try_get(1)?;
    let prev: Option<Vec<u8>> = row.try_get(2)?;
    let prev_runs: Option<Vec<u8>> = row.try_get(3)?;
    let bad = || Error::Internal(format!("the stored chunk list of {hash} does not read"));
    let list = chunks::unpack_list(&list).ok_or_else(bad)?;
    let prev = match (prev, prev_runs) {
        (Some(p), Some(runs)) => Some((hash_of(&p)?, chunks::unpack_runs(&runs).ok_or_else(bad)?)),
        _ => None,
    };
    Ok(Some(Recipe { hash: *hash, size: size as u64, list, prev }))
}

/// Stores a recipe and its chunk references; a stored one is kept (the
/// same content cuts into the same list), its `prev` replaced by a new one.
async fn write_recipe(c: &Conn, r: &Recipe) -> Result<()> {
    let hash = r.hash.as_bytes().as_slice();
    let (prev, prev_runs) = match &r.prev {
        Some((p, runs)) => (Some(p.as_bytes().to_vec()), Some(chunks::pack_runs(runs))),
        None => (None, None),
    };
    let upsert = c
        .prepare_cached(
            "INSERT INTO recipes (hash, size, list, prev, prev_runs) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hash) DO UPDATE SET
               prev = COALESCE(excluded.prev, recipes.prev),
               prev_runs = COALESCE(excluded.prev_runs, recipes.prev_runs)",
        )
        .await?;
    c.execute(&upsert, &[&hash, &(r.size as i64), &chunks::pack_list(&r.list), &prev, &prev_runs]).await?;
    // One statement for the whole list (a chunk listed twice is linked once).
    let chunks: Vec<&[u8]> = r.list.iter().map(|chunk| chunk.hash.as_bytes().as_slice()).collect();
    let link = c
        .prepare_cached(
            "INSERT INTO recipe_chunks (chunk, recipe) SELECT DISTINCT chunk, $2::bytea FROM unnest($1::bytea[]) AS chunk
             ON CONFLICT DO NOTHING",
        )
        .await?;
    c.execute(&link, &[&chunks, &hash]).await?;
    Ok(())
}

/// Appends a change to the log and applies it.
async fn write_change(c: &Conn, change: &Change) -> Result<()> {
    match &change.what {
        What::File(e, note) => {
            let mut rows = FileRows::default();
            rows.push(&change.namespace, e, note);
            rows.write(c).await
        }
        What::History(h) => history::write_history_change(c, change, h).await,
        What::Lock(_) | What::Unlock { .. } => locks::write_lock_change(c, change).await,
    }
}

/// File changes of one write as columns, each path at most once, so that
/// their log rows, versions and manifest rows cost one statement each
/// however many there are.
#[derive(Default)]
pub(super) struct FileRows<'a> {
    paths: std::collections::HashSet<(&'a str, &'a str)>,
    pub(super) namespace: Vec<&'a str>,
    pub(super) path: Vec<&'a str>,
    pub(super) seq: Vec<i64>,
    pub(super) deleted: Vec<bool>,
    pub(super) size: Vec<i64>,
    pub(super) hash: Vec<Option<&'a [u8]>>,
    pub(super) mtime_ns: Vec<i64>,
    pub(super) executable: Vec<bool>,
    pub(super) symlink: Vec<bool>,
    pub(super) folder: Vec<bool>,
    pub(super) client_id: Vec<&'a str>,
    pub(super) principal: Vec<&'a str>,
    pub(super) committed_ms: Vec<i64>,
    pub(super) kind: Vec<i64>,
    pub(super) moved_from: Vec<Option<&'a str>>,
    pub(super) moved_to: Vec<Option<&'a str>>,
    pub(super) restored_from: Vec<Option<i64>>,
}

impl<'a> FileRows<'a> {
    /// Whether a change of `path` of `ns` is among the rows.
    fn holds(&self, ns: &str, path: &RelPath) -> bool {
        self.paths.contains(&(ns, path.as_str()))
    }

    fn push(&mut self, ns: &'a str, e: &'a Entry, note: &'a VersionNote) {
        let content = e.content.as_ref();
        let flag = |f: fn(&Content) -> bool| content.is_some_and(f);
        self.paths.insert((ns, e.path.as_str()));
        self.namespace.push(ns);
        self.path.push(e.path.as_str());
        self.seq.push(e.version as i64);
        self.deleted.push(content.is_none());
        self.size.push(content.map_or(0, |c| c.size as i64));
        self.hash.push(content.map(|c| c.hash.as_bytes().as_slice()));
        self.mtime_ns.push(content.map_or(0, |c| c.mtime_ns));
        self.executable.push(flag(|c| c.executable));
        self.symlink.push(flag(|c| c.symlink));
        self.folder.push(flag(|c| c.folder));
        self.client_id.push(&e.client_id);
        self.principal.push(&note.principal);
        self.committed_ms.push(note.committed_ms);
        self.kind.push(note.kind.code());
        self.moved_from.push(note.moved_from.as_ref().map(RelPath::as_str));
        self.moved_to.push(note.moved_to.as_ref().map(RelPath::as_str));
        self.restored_from.push(note.restored_from.map(|v| v as i64));
    }

    /// Appends the changes to the log, makes each its path's current entry
    /// and keeps it as a version of the path: three statements, pipelined
    /// on the connection (one round trip).
    async fn write(&self, c: &Conn) -> Result<()> {
        if self.seq.is_empty() {
            return Ok(());
        }
        let log = c
            .prepare_cached(
                "INSERT INTO changes (seq, namespace, path, deleted, size, hash, mtime_ns, executable, client_id,
                                      committed_ms, symlink, folder, principal, version_kind, moved_from, moved_to,
                                      restored_from)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::boolean[], $5::bigint[],
                                      $6::bytea[], $7::bigint[], $8::boolean[], $9::text[], $10::bigint[],
                                      $11::boolean[], $12::boolean[], $13::text[], $14::bigint[], $15::text[],
                                      $16::text[], $17::bigint[])",
            )
            .await?;
        let manifest = c
            .prepare_cached(
                "INSERT INTO files (namespace, path, version, deleted, size, hash, mtime_ns, executable, client_id,
                                    symlink, folder)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::boolean[], $5::bigint[],
                                      $6::bytea[], $7::bigint[], $8::boolean[], $9::text[], $10::boolean[],
                                      $11::boolean[])
                 ON CONFLICT (namespace, path) DO UPDATE SET
                   version = excluded.version, deleted = excluded.deleted, size = excluded.size,
                   hash = excluded.hash, mtime_ns = excluded.mtime_ns, executable = excluded.executable,
                   client_id = excluded.client_id, symlink = excluded.symlink, folder = excluded.folder",
            )
            .await?;
        let log_params: [&(dyn ToSql + Sync); 17] = [
            &self.seq,
            &self.namespace,
            &self.path,
            &self.deleted,
            &self.size,
            &self.hash,
            &self.mtime_ns,
            &self.executable,
            &self.client_id,
            &self.committed_ms,
            &self.symlink,
            &self.folder,
            &self.principal,
            &self.kind,
            &self.moved_from,
            &self.moved_to,
            &self.restored_from,
        ];
        let manifest_params: [&(dyn ToSql + Sync); 11] = [
            &self.namespace,
            &self.path,
            &self.seq,
            &self.deleted,
            &self.size,
            &self.hash,
            &self.mtime_ns,
            &self.executable,
            &self.client_id,
            &self.symlink,
            &self.folder,
        ];
        futures::try_join!(
            c.execute(&log, &log_params).map_err(Error::from),
            history::write_versions(c, self),
            c.execute(&manifest, &manifest_params).map_err(Error::from),
        )?;
        Ok(())
    }
}

/// The columns [`change_from_row`] decodes: a file change's in order, the
/// rest by name.
const CHANGE_COLUMNS: &str = "path, seq, deleted, size, hash, mtime_ns, executable, client_id, namespace, kind, \
     symlink, folder, lock_id, lock_client_id, lock_principal, lock_holder, lock_note, lock_acquired_ms, \
     lock_expires_ms, lock_ttl_seconds, lock_token, lock_end, lock_ended_by_client_id, lock_ended_by_principal, \
     principal, committed_ms, version_kind, moved_from, moved_to, restored_from, detail";

/// Decodes a change-log row of [`CHANGE_COLUMNS`].
fn change_from_row(r: &Row) -> Result<Change> {
    let namespace: String = r.try_get(8)?;
    let kind: i64 = r.try_get(9)?;
    if kind == 0 {
        let entry = entry_from_row(r, 0)?;
        let note = history::note_from_row(r)?;
        return Ok(Change::file(&namespace, entry, note));
    }
    if history::is_history_kind(kind) {
        return history::history_change_from_row(r);
    }
    if locks::is_lock_kind(kind) {
        return locks::lock_change_from_row(r);
    }
    let seq: i64 = r.try_get(1)?;
    Err(Error::Internal(format!("change {seq}: a change of kind {kind}")))
}

/// Decodes the columns path, version, deleted, size, hash, mtime_ns,
/// executable, client_id starting at `at`, and the columns `symlink` and
/// `folder` by name.
pub(super) fn entry_from_row(r: &Row, at: usize) -> Result<Entry> {
    let path: String = r.try_get(at)?;
    let version: i64 = r.try_get(at + 1)?;
    let deleted: bool = r.try_get(at + 2)?;
    let size: i64 = r.try_get(at + 3)?;
    let hash: Option<Vec<u8>> = r.try_get(at + 4)?;
    let mtime_ns: i64 = r.try_get(at + 5)?;
    let executable: bool = r.try_get(at + 6)?;
    let client_id: String = r.try_get(at + 7)?;
    let symlink: bool = r.try_get("symlink")?;
    let folder: bool = r.try_get("folder")?;
    let content = match (deleted, hash) {
        (true, _) => None,
        (false, Some(h)) => {
            Some(Content { hash: hash_of(&h)?, size: size as u64, mtime_ns, executable, symlink, folder })
        }
        (false, None) => return Err(Error::Internal(format!("live entry {path:?} has no hash"))),
    };
    Ok(Entry { path: RelPath::new(path)?, version: version as u64, content, client_id })
}

fn now_ms() -> i64 {
    syncstore::lock::now_ms()
}

#[cfg(test)]
pub(super) mod tests;
