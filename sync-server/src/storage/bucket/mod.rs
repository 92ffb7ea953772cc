//! The shared content backend: an S3-compatible bucket, with small content
//! inline in PostgreSQL. [`BucketContent`] is a [`ContentStore`] that any
//! number of server processes use at once.
//!
//! Every content has a row in the `contents` table ([`SCHEMA`]), in the
//! database the metadata lives in. Content of at most [`INLINE_MAX`] bytes
//! is kept in its row (a burst of small files costs no object requests);
//! larger content is a byte range of a pack, an object of about 16 MiB
//! holding many contents ([`pack`]). Content stored by earlier releases as
//! one object, `content/<hex hash>`, is still read, checked and removed.
//!
//! Placing content (one protocol for every process):
//! 0. content of at most [`INLINE_MAX`] bytes joins this process's open
//!    batch of rows; batch after batch is upserted, each in one statement
//!    (`touched = now()`, the bytes in each row), as soon as the one
//!    before is written ([`pack`]). Larger content:
//! 1. upsert its row with `touched = now()` (committed at once);
//! 2. unless the row says a copy is `stored` and that copy reads back
//!    good, append it to this process's open pack; the pack's PUT and the
//!    rows' update follow ([`pack`]; never a conditional PUT: not every
//!    S3-compatible store has one, and a pack's key is never reused).
//!
//! Removing it ([`ContentStore::delete`], called by the journal for content
//! nothing refers to) takes the row `FOR UPDATE` and gives up if it was
//! touched within the grace ([`DEFAULT_GRACE`]): another process that
//! placed the same content meanwhile, for an upload not committed yet,
//! keeps it. Only then is the row removed (with the object of a content
//! stored whole, first); a pack goes once no row points into it
//! ([`ContentStore::collect_garbage`]). The database's clock times both
//! sides.
//!
//! Reads are verified as [`ContentStore`] documents: bytes are hashed as
//! they arrive and the last piece is handed out only once all of it matched
//! its name. Damaged content is set aside: its row is marked `damaged` and
//! no longer points into its pack (an object stored whole is moved to
//! `damaged/<hex hash>`; an inline copy stays in its row), checked under
//! the row lock so that a good copy that replaced it meanwhile stays. The
//! next verified copy placed heals it.
//!
//! Content placed is durable once [`ContentStore::ensure_durable`]
//! returned for it: its batch of rows was committed, or its pack's PUT was
//! acknowledged and the rows point into it. A bucket
//! that cannot be reached, and a database connection that is
//! refused or lost, are [`Error::Unavailable`]; the object client's own
//! retries are bounded ([`MAX_RETRIES`], [`RETRY_TIMEOUT`]) and only repeat
//! requests that are safe to repeat (every write here is idempotent: a key
//! is named by its bytes' hash).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use deadpool_postgres::{Pool, PoolError};
use futures::{StreamExt, stream::BoxStream};
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path,
};
use syncstore::ContentHash;
use tokio_postgres::error::SqlState;

use super::content::{ContentReader, ContentStore, ContentUpload, Durability, StagedContent, Verdict};
use crate::error::{Error, Result, StorageError, StorageErrorKind};

mod pack;
#[cfg(test)]
pub(super) mod tests;

/// The `contents` table, created by the shared database's first migration
/// (with the metadata's tables, so there is one schema version).
pub(crate) const SCHEMA: &str = "
-- Every content of the shared backend, by hash: inline (data) when small,
-- else one object content/<hex hash> in the bucket.
CREATE TABLE contents (
    hash    bytea       PRIMARY KEY,
    size    bigint      NOT NULL,
    data    bytea,                         -- inline content; NULL: an object
    stored  boolean     NOT NULL,          -- a copy is in place
    touched timestamptz NOT NULL,          -- last placed; removal waits a grace after it
    damaged boolean     NOT NULL DEFAULT false  -- found damaged and set aside
);
-- What a store counts when it opens (few rows, if any).
CREATE INDEX contents_damaged ON contents (hash) WHERE damaged;
";

/// Packs ([`pack`]), added by the shared database's third migration:
/// where in which pack a content is, and every pack written.
pub(crate) const PACKS_SCHEMA: &str = "
ALTER TABLE contents ADD COLUMN pack text, ADD COLUMN pack_offset bigint;
-- What the collector asks of each pack: does any content point into it?
CREATE INDEX contents_by_pack ON contents (pack) WHERE pack IS NOT NULL;
-- Every pack, recorded before its PUT: one whose writer died is known too.
CREATE TABLE packs (
    id      text        PRIMARY KEY,
    size    bigint      NOT NULL,
    created timestamptz NOT NULL           -- removal waits a grace after it
);
";

/// Content of at most this many bytes is kept in its row, not in the
/// bucket: 10,000 small files cost 10,000 row writes, not 10,000 PUTs.
pub(crate) const INLINE_MAX: u64 = 16 * 1024;

/// Chunks of one content placed at once: placing costs a database round
/// trip (the row's upsert) before the chunk is appended to a pack, so a
/// large file's upload keeps this many in flight (at most 16 × 256 KiB
/// held beyond the packs, 1 MiB on average).
const WRITES_IN_FLIGHT: usize = 16;

/// Reads of one content's chunks running ahead at once, each of up to
/// [`READ_BATCH`] chunks (those close together in a pack are one ranged
/// GET): a GET costs about 40 ms where the store leaves Nagle's algorithm
/// on and the ACK is delayed, so several are in flight (each of at most
/// [`CHUNK_READ_BYTES`](crate::storage::chunked::CHUNK_READ_BYTES): about
/// 32 MiB held).
const READS_IN_FLIGHT: usize = 8;

/// Chunks one read of a content asks for (see [`READS_IN_FLIGHT`]): 4 MiB
/// on average. Measured against 16, 32 and 128 with 4, 8 and 16 reads in
/// flight, 8 × 64 downloaded fastest from s3s-fs; what is left in the way
/// is mostly the bucket server's own cost per byte.
const READ_BATCH: usize = 64;

/// The most one upload takes: content given to a content store is at most
/// one chunk (the journal cuts larger files), so an upload is held in
/// memory until it is appended to a pack.
const UPLOAD_MAX: u64 = syncstore::chunks::WHOLE_MAX;

/// How long after content was last placed it cannot be removed: longer
/// than any upload takes from placing its content to committing the entry
/// that refers to it, in any process.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(60 * 60);

/// The sweep writes the open pack out when it was opened this long ago
/// (content appended for an upload that was given up).
const OPEN_PACK_MAX_AGE: Duration = Duration::from_secs(10);

/// Where content objects live in the bucket (stored whole by earlier
/// releases).
const CONTENT_PREFIX: &str = "content";

/// Where damaged objects are set aside.
const DAMAGED_PREFIX: &str = "damaged";

/// The prefix [`ContentStore::ping`] lists: nothing is stored under it, so
/// the listing is one cheap request whatever the bucket holds.
const PING_PREFIX: &str = "ping";

/// How long connecting to the bucket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one bucket request may take (an object is at most a pack,
/// about 17 MiB).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times the object client repeats a request that failed on the
/// way (refused, reset, a 5xx): few, so that an unreachable bucket is
/// reported within about a second rather than after minutes.
const MAX_RETRIES: usize = 3;

/// No request is repeated once this long has passed since its first try.
const RETRY_TIMEOUT: Duration = Duration::from_secs(10);

/// Damaged contents waiting for a healer at most; more are left to the
/// next scrub pass.
const MAX_HEAL_QUEUE: usize = 1024;

/// Bytes asked for at a time while verifying a whole content.
const VERIFY_BUFFER: usize = 1024 * 1024;

/// The shared content store: a bucket, and the `contents` table.
#[derive(Debug, Clone)]
pub(crate) struct BucketContent {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bucket: AmazonS3,
    /// The bucket's name, for messages.
    name: String,
    pool: Pool,
    /// See [`DEFAULT_GRACE`].
    grace: Duration,
    /// Contents set aside as damaged: counted at open (by an index) and by
    /// [`ContentStore::usage`], kept up to date with what this process
    /// sets aside, heals and removes (another process's show at the next
    /// count).
    damaged_now: AtomicU64,
    /// Damaged contents found by this process since it opened the store.
    found_damaged: AtomicU64,
    /// Damaged contents (hash, size) set aside and not yet offered to a
    /// healer; bounded by [`MAX_HEAL_QUEUE`].
    to_heal: Mutex<Vec<(ContentHash, u64)>>,
    /// Woken when `to_heal` gets one.
    found: tokio::sync::Notify,
    /// This process's open pack and the content on its way.
    packer: pack::Packer,
    /// Ranged GETs of packs this process made to read chunks (tests).
    pack_reads: AtomicU64,
}

/// Where a content URL points: `s3://BUCKET?endpoint=URL&region=REGION`.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    bucket: String,
    endpoint: Option<String>,
    region: Option<String>,
}

/// Parses a content URL.
fn parse_url(url: &str) -> Result<Target> {
    let bad = |why: &str| {
        Error::Config(format!(
            "the content URL {url:?} {why} (expected s3://BUCKET?endpoint=URL&region=REGION)"
        ))
    };
    let rest = url.strip_prefix("s3://").ok_or_else(|| bad("is not an s3:// URL"))?;
    let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains('/') {
        return Err(bad("names no bucket (or a path inside one)"));
    }
    let mut target = Target { bucket: bucket.to_owned(), endpoint: None, region: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad("has a parameter without a value"))?;
        let slot = match key {
            "endpoint" => &mut target.endpoint,
            "region" => &mut target.region,
            _ => return Err(bad(&format!("has an unknown parameter {key:?}"))),
        };
        if value.is_empty() || slot.replace(value.to_owned()).is_some() {
            return Err(bad(&format!("gives {key} twice or empty")));
        }
    }
    Ok(target)
}

impl BucketContent {
    /// Opens the bucket of content URL `url`, with the credentials of the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, and what
    /// else the object client reads there; the URL's endpoint and region
    /// win), and the `contents` table in `pool`'s database.
    #[cfg_attr(test, allow(dead_code))]
    pub(crate) async fn open(url: &str, pool: Pool) -> Result<BucketContent> {
        Self::open_with(AmazonS3Builder::from_env(), url, pool).await
    }

    /// [`BucketContent::open`] with the credentials `builder` holds.
    pub(crate) async fn open_with(builder: AmazonS3Builder, url: &str, pool: Pool) -> Result<BucketContent> {
        let target = parse_url(url)?;
        let mut builder = builder
            .with_bucket_name(&target.bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: MAX_RETRIES,
                retry_timeout: RETRY_TIMEOUT,
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new().with_connect_timeout(CONNECT_TIMEOUT).with_timeout(REQUEST_TIMEOUT),
            );
        if let Some(endpoint) = &target.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(region) = &target.region {
            builder = builder.with_region(region);
        }
        let bucket = builder
            .build()
            .map_err(|e| Error::Config(format!("the content URL {url:?} cannot be used: {e}")))?;
        let store = BucketContent {
            inner: Arc::new(Inner {
                bucket,
                name: target.bucket,
                pool,
                grace: DEFAULT_GRACE,
                damaged_now: AtomicU64::new(0),
                found_damaged: AtomicU64::new(0),
                to_heal: Mutex::default(),
                found: tokio::sync::Notify::new(),
                packer: pack::Packer::default(),
                pack_reads: AtomicU64::new(0),
            }),
        };
        let damaged = store
            .query_opt("SELECT count(*) FROM contents WHERE damaged", &[])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0));
        store.inner.damaged_now.store(u64::try_from(damaged).unwrap_or(0), Ordering::Relaxed);
        Ok(store)
    }

    /// The same store with another grace (tests: one that passes at once).
    #[cfg(test)]
    pub(crate) fn with_grace(self, grace: Duration) -> BucketContent {
        let inner = Arc::into_inner(self.inner).expect("the grace is set before the store is shared");
        BucketContent { inner: Arc::new(Inner { grace, ..inner }) }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }

    /// Runs `sql` and returns its row, if any.
    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query_opt(&statement, params).await.map_err(pg_error)
    }

    /// Runs `sql` and returns how many rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.execute(&statement, params).await.map_err(pg_error)
    }

    /// The row of content `hash`.
    async fn row(&self, hash: &ContentHash) -> Result<Option<Row>> {
        let row = self
            .query_opt(
                "SELECT data, stored, damaged, pack, pack_offset FROM contents WHERE hash = $1",
                &[&hash.as_bytes().as_slice()],
            )
            .await?;
        Ok(row.map(|r| Row {
            data: r.get::<_, Option<Vec<u8>>>(0).map(Bytes::from),
            stored: r.get(1),
            damaged: r.get(2),
            pack: r
                .get::<_, Option<String>>(3)
                .map(|p| (p, u64::try_from(r.get::<_, i64>(4)).unwrap_or(u64::MAX))),
        }))
    }

    /// Opens a verified read of content `hash` of `size` bytes as its row
    /// says it is stored: `None` when it is not.
    async fn open_read(&self, hash: &ContentHash, size: u64) -> Result<Option<Opened>> {
        let Some(row) = self.row(hash).await? else { return Ok(None) };
        if row.damaged {
            return Ok(Some(Opened::SetAside));
        }
        if !row.stored {
            return Ok(None);
        }
        if let Some(data) = row.data {
            if data.len() as u64 != size || ContentHash::of(&data) != *hash {
                let why = if data.len() as u64 == size {
                    "its bytes do not hash to its name"
                } else {
                    "its length is not its content's"
                };
                self.set_aside(hash, size, Seen::Inline, why).await;
                return Ok(Some(Opened::FoundDamaged));
            }
            return Ok(Some(Opened::Reader(Box::new(InlineReader { data }))));
        }
        if let Some((pack, offset)) = row.pack {
            return self.open_packed(hash, size, pack, offset).await;
        }
        let got = match self.inner.bucket.get(&object(hash)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                self.forget_missing(hash).await?;
                return Ok(None);
            }
            Err(e) => return Err(self.bucket_error(e)),
        };
        let e_tag = got.meta.e_tag.clone();
        if got.meta.size != size {
            self.set_aside(hash, size, Seen::Object(e_tag), "its length is not its content's").await;
            return Ok(Some(Opened::FoundDamaged));
        }
        Ok(Some(Opened::Reader(Box::new(ObjectReader {
            store: self.clone(),
            hash: *hash,
            size,
            e_tag,
            stream: got.into_stream(),
            pending: BytesMut::new(),
            received: 0,
            handed_out: 0,
            hasher: blake3::Hasher::new(),
            ended: false,
            failed: false,
        }))))
    }

    /// Reads content `hash` of `size` bytes from its range of `pack`
    /// whole (at most a chunk, [`UPLOAD_MAX`]), and checks it.
    async fn open_packed(
        &self,
        hash: &ContentHash,
        size: u64,
        pack: String,
        offset: u64,
    ) -> Result<Option<Opened>> {
        let Some(end) = offset.checked_add(size) else {
            self.set_aside(hash, size, Seen::Packed(pack, offset), "its place in its pack is out of range")
                .await;
            return Ok(Some(Opened::FoundDamaged));
        };
        self.inner.pack_reads.fetch_add(1, Ordering::Relaxed);
        let data = match self.inner.bucket.get_range(&pack::pack_object(&pack), offset..end).await {
            Ok(data) => data,
            Err(object_store::Error::NotFound { .. }) => {
                self.forget_missing_pack(hash, &pack).await?;
                return Ok(None);
            }
            Err(e) => return Err(self.bucket_error(e)),
        };
        if data.len() as u64 != size || ContentHash::of(&data) != *hash {
            let why = if data.len() as u64 == size {
                "its bytes do not hash to its name"
            } else {
                "its pack ends before it does"
            };
            self.set_aside(hash, size, Seen::Packed(pack, offset), why).await;
            return Ok(Some(Opened::FoundDamaged));
        }
        Ok(Some(Opened::Reader(Box::new(InlineReader { data }))))
    }

    /// Puts verified content `data` of `hash` in place (see the module's
    /// protocol): `None` when a good copy was stored already and was kept,
    /// else how durable it is (content appended to a pack is pending).
    async fn place(&self, hash: ContentHash, data: Bytes) -> Result<Option<Durability>> {
        let size = data.len() as u64;
        let key = hash.as_bytes().as_slice();
        let size_param = i64::try_from(size).map_err(|_| Error::Internal("content beyond i64".into()))?;
        if size <= INLINE_MAX {
            // Into its row with the rest of its batch, when a commit needs it.
            self.append_row(hash, data);
            return Ok(Some(Durability::Pending));
        }
        if self.inner.packer.is_on_its_way(&hash) {
            return Ok(Some(Durability::Pending));
        }
        // Touched first and committed: from now on no process removes it
        // for a grace.
        let row = self
            .query_opt(
                "INSERT INTO contents (hash, size, data, stored, touched, damaged)
                 VALUES ($1, $2, NULL, false, now(), false)
                 ON CONFLICT (hash) DO UPDATE SET touched = now()
                 RETURNING stored, damaged",
                &[&key, &size_param],
            )
            .await?
            .ok_or_else(|| Error::Internal("an upsert returned no row".into()))?;
        let (stored, damaged): (bool, bool) = (row.get(0), row.get(1));
        if stored && !damaged && self.verify(&hash, size).await? == Verdict::Good {
            return Ok(None);
        }
        self.append(hash, &data).await?;
        Ok(Some(Durability::Pending))
    }

    /// A verified copy took a damaged one's place.
    async fn healed(&self, hash: &ContentHash, object: bool) {
        let _ =
            self.inner.damaged_now.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if object && let Err(e) = self.inner.bucket.delete(&damaged_object(hash)).await {
            tracing::warn!(%hash, error = %e, "could not remove a healed content's damaged copy");
        }
        tracing::warn!(%hash, "damaged content healed: a verified copy took its place");
    }

    /// Sets damaged content aside, unless a good copy replaced what was
    /// read meanwhile: under its row lock, an object is moved to
    /// [`DAMAGED_PREFIX`] only if it is still the one read (same ETag), a
    /// packed copy only if the row still points at the range read, and an
    /// inline copy is checked again. Logged once, where it happens;
    /// failing to set it aside is logged too (the read still fails).
    async fn set_aside(&self, hash: &ContentHash, size: u64, seen: Seen, why: &str) {
        match self.try_set_aside(hash, &seen).await {
            Ok(false) => {}
            Ok(true) => {
                self.inner.damaged_now.fetch_add(1, Ordering::Relaxed);
                self.inner.found_damaged.fetch_add(1, Ordering::Relaxed);
                {
                    let mut queue = self.inner.to_heal.lock().unwrap_or_else(|p| p.into_inner());
                    if queue.len() < MAX_HEAL_QUEUE {
                        queue.push((*hash, size));
                    }
                }
                self.inner.found.notify_one();
                tracing::error!(
                    %hash,
                    why,
                    bucket = %self.inner.name,
                    "DAMAGED CONTENT: stored content no longer matches its hash; it was set aside and is \
                     served as lost until a good copy comes (an upload of the same content, or a scrub)"
                );
            }
            Err(e) => tracing::error!(%hash, why, error = %e, "could not set damaged content aside"),
        }
    }

    /// [`BucketContent::set_aside`]'s work: whether it set it aside.
    async fn try_set_aside(&self, hash: &ContentHash, seen: &Seen) -> Result<bool> {
        let key = hash.as_bytes().as_slice();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let Some(row) = tx
            .query_opt(
                "SELECT data, pack, pack_offset FROM contents WHERE hash = $1 AND stored AND NOT damaged FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(false); // Set aside, healed or removed meanwhile.
        };
        match (seen, row.get::<_, Option<Vec<u8>>>(0)) {
            (Seen::Inline, Some(data)) if ContentHash::of(&data) == *hash => return Ok(false),
            (Seen::Inline, _) => {}
            (Seen::Packed(pack, offset), _) => {
                let now: (Option<String>, Option<i64>) = (row.get(1), row.get(2));
                if now.0.as_deref() != Some(pack.as_str()) || now.1 != i64::try_from(*offset).ok() {
                    return Ok(false); // A new copy replaced it.
                }
            }
            (Seen::Object(e_tag), _) => {
                let from = object(hash);
                match self.inner.bucket.head(&from).await {
                    Ok(now) if now.e_tag == *e_tag => {}
                    Ok(_) => return Ok(false), // A new copy replaced it.
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(e) => return Err(self.bucket_error(e)),
                }
                self.inner
                    .bucket
                    .copy(&from, &damaged_object(hash))
                    .await
                    .map_err(|e| self.bucket_error(e))?;
                self.inner.bucket.delete(&from).await.map_err(|e| self.bucket_error(e))?;
            }
        }
        tx.execute(
            "UPDATE contents SET stored = false, damaged = true, pack = NULL, pack_offset = NULL WHERE hash = $1",
            &[&key],
        )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(true)
    }

    /// Content whose row says it is stored had no object: the row says so
    /// too from now on (checked again under the row lock: a placing may
    /// have put it there since), so that `head` does not count it and the
    /// next placing PUTs it.
    async fn forget_missing(&self, hash: &ContentHash) -> Result<()> {
        let key = hash.as_bytes().as_slice();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let locked = tx
            .query_opt(
                "SELECT 1 FROM contents WHERE hash = $1 AND stored AND data IS NULL FOR UPDATE",
                &[&key],
            )
            .await
            .map_err(pg_error)?;
        if locked.is_none() {
            return Ok(());
        }
        match self.inner.bucket.head(&object(hash)).await {
            Ok(_) => return Ok(()),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.bucket_error(e)),
        }
        tx.execute("UPDATE contents SET stored = false WHERE hash = $1", &[&key]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::warn!(%hash, bucket = %self.inner.name, "stored content has no object in the bucket");
        Ok(())
    }

    /// Content whose row points into a pack that is not in the bucket: the
    /// row says it is not stored from now on (unless a placing pointed it
    /// elsewhere meanwhile).
    async fn forget_missing_pack(&self, hash: &ContentHash, pack: &str) -> Result<()> {
        let forgotten = self
            .execute(
                "UPDATE contents SET stored = false, pack = NULL, pack_offset = NULL WHERE hash = $1 AND pack = $2",
                &[&hash.as_bytes().as_slice(), &pack],
            )
            .await?;
        if forgotten > 0 {
            tracing::warn!(%hash, pack, bucket = %self.inner.name, "stored content's pack is not in the bucket");
        }
        Ok(())
    }

    /// An error of the bucket (other than a missing object).
    fn bucket_error(&self, e: object_store::Error) -> Error {
        let name = &self.inner.name;
        match e {
            object_store::Error::NotFound { .. } => {
                Error::Unavailable(format!("the bucket {name} cannot be reached: it does not exist ({e})"))
            }
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Error::Unavailable(format!("the bucket {name} refused the server's credentials: {e}"))
            }
            object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
                Error::Unavailable(format!("the bucket {name} cannot be reached: {e}"))
            }
            e => Error::Internal(format!("the bucket {name}: {e}")),
        }
    }
}

/// What a verified read was opened on.
enum Opened {
    Reader(Box<dyn ContentReader>),
    /// Set aside as damaged before.
    SetAside,
    /// Found damaged as it was opened (and set aside).
    FoundDamaged,
}

/// A `contents` row.
#[derive(Debug)]
struct Row {
    data: Option<Bytes>,
    stored: bool,
    damaged: bool,
    /// The pack it is in, and where in it.
    pack: Option<(String, u64)>,
}

/// Which copy a read found damaged.
#[derive(Debug)]
enum Seen {
    /// The row's inline bytes.
    Inline,
    /// The object with this ETag.
    Object(Option<String>),
    /// The range of this pack starting at this offset.
    Packed(String, u64),
}

/// The object of content `hash`.
fn object(hash: &ContentHash) -> Path {
    Path::from(format!("{CONTENT_PREFIX}/{}", hash.to_hex()))
}

/// Where the object of damaged content `hash` is set aside.
fn damaged_object(hash: &ContentHash) -> Path {
    Path::from(format!("{DAMAGED_PREFIX}/{}", hash.to_hex()))
}

/// Content `hash` is stored but damaged.
fn damaged(hash: &ContentHash) -> Error {
    Error::DataLoss(format!(
        "the server's copy of content {hash} is damaged (it no longer matches its hash); \
         upload the file again or restore it from the replica"
    ))
}

/// A database error: a refused, lost or closed connection (or a server
/// shutting down) is `UNAVAILABLE`; a full disk is `DiskFull`; anything
/// else (a constraint, SQL) is a storage error.
fn pg_error(e: tokio_postgres::Error) -> Error {
    if let Some(code) = e.code() {
        if *code == SqlState::DISK_FULL {
            return StorageError::new(StorageErrorKind::DiskFull, e).into();
        }
        let unavailable = [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ];
        if unavailable.contains(code) {
            return Error::Unavailable(format!("the database cannot serve the content store now: {e}"));
        }
        return StorageError::new(StorageErrorKind::Other, e).into();
    }
    let lost = e.is_closed()
        || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout");
    if lost {
        Error::Unavailable(format!("the database cannot be reached: {e}"))
    } else {
        StorageError::new(StorageErrorKind::Other, e).into()
    }
}

/// A pool error: no connection could be had.
fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg_error(e),
        PoolError::Timeout(_) | PoolError::Closed => {
            Error::Unavailable(format!("the database cannot be reached: {e}"))
        }
        e => Error::Internal(format!("the database pool: {e}")),
    }
}

#[async_trait]
impl ContentStore for BucketContent {
    async fn upload(&self) -> Result<Box<dyn ContentUpload>> {
        Ok(Box::new(BucketUpload { store: self.clone(), data: BytesMut::new() }))
    }

    async fn get(&self, hash: &ContentHash, size: u64) -> Result<Option<Box<dyn ContentReader>>> {
        match self.open_read(hash, size).await? {
            None => Ok(None),
            Some(Opened::SetAside | Opened::FoundDamaged) => Err(damaged(hash)),
            Some(Opened::Reader(reader)) => Ok(Some(reader)),
        }
    }

    fn chunk_writes_in_flight(&self) -> usize {
        WRITES_IN_FLIGHT
    }

    fn chunk_reads_in_flight(&self) -> usize {
        READS_IN_FLIGHT
    }

    fn chunk_read_batch(&self) -> usize {
        READ_BATCH
    }

    async fn read_chunks(&self, chunks: &[syncstore::chunks::ChunkRef]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read_packed(chunks).await
    }

    async fn put_whole(&self, hash: ContentHash, data: Vec<u8>) -> Result<Option<Durability>> {
        check(&hash, data.len() as u64, &data)?;
        if data.len() as u64 <= INLINE_MAX {
            // A good copy in its row is kept, touched (no process removes
            // it for a grace), and nothing is written.
            let kept = self
                .query_opt(
                    "UPDATE contents SET touched = now()
                     WHERE hash = $1 AND stored AND NOT damaged AND data = $2 RETURNING 1",
                    &[&hash.as_bytes().as_slice(), &data.as_slice()],
                )
                .await?;
            if kept.is_some() {
                return Ok(None);
            }
        }
        self.place(hash, Bytes::from(data)).await
    }

    async fn head(&self, hash: &ContentHash) -> Result<Option<u64>> {
        let row = self
            .query_opt(
                "SELECT size FROM contents WHERE hash = $1 AND stored AND NOT damaged",
                &[&hash.as_bytes().as_slice()],
            )
            .await?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    async fn delete(&self, hash: &ContentHash) -> Result<()> {
        let key = hash.as_bytes().as_slice();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let select = tx
            .prepare_cached(
                "SELECT data IS NULL AND pack IS NULL, damaged, touched > now() - make_interval(secs => $2) FROM contents
                 WHERE hash = $1 FOR UPDATE",
            )
            .await
            .map_err(pg_error)?;
        let Some(row) =
            tx.query_opt(&select, &[&key, &self.inner.grace.as_secs_f64()]).await.map_err(pg_error)?
        else {
            // No row, no object: a placing inserts the row before its PUT.
            return Ok(());
        };
        let (in_bucket, damaged, young): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if young {
            tracing::debug!(%hash, "kept content placed within its grace");
            return Ok(());
        }
        for (path, there) in [(object(hash), in_bucket), (damaged_object(hash), damaged)] {
            if !there {
                continue;
            }
            match self.inner.bucket.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.bucket_error(e)),
            }
        }
        let remove = tx.prepare_cached("DELETE FROM contents WHERE hash = $1").await.map_err(pg_error)?;
        tx.execute(&remove, &[&key]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        if damaged {
            let _ = self
                .inner
                .damaged_now
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContentHash>> {
        let client = self.client().await?;
        let rows = client.query("SELECT hash FROM contents", &[]).await.map_err(pg_error)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let bytes: &[u8] = row.get(0);
            match ContentHash::try_from(bytes) {
                Ok(hash) => out.push(hash),
                Err(_) => {
                    tracing::warn!(len = bytes.len(), "ignoring a contents row whose hash is not 32 bytes")
                }
            }
        }
        Ok(out)
    }

    async fn usage(&self) -> Result<(u64, u64)> {
        let row = self
            .query_opt(
                "SELECT count(*) FILTER (WHERE stored AND NOT damaged),
                        coalesce(sum(size) FILTER (WHERE stored AND NOT damaged), 0)::bigint,
                        count(*) FILTER (WHERE damaged)
                 FROM contents",
                &[],
            )
            .await?
            .ok_or_else(|| Error::Internal("an aggregate returned no row".into()))?;
        let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
        self.inner.damaged_now.store(count(2), Ordering::Relaxed);
        Ok((count(0), count(1)))
    }

    async fn ensure_durable(&self, hashes: &[ContentHash]) -> Result<()> {
        // Content waits for its batch of rows or its pack.
        self.wait_for_packs(hashes).await
    }

    fn durable_each(&self) -> bool {
        true
    }

    async fn collect_garbage(&self) -> Result<()> {
        // Content appended a while ago that nobody asked to be durable
        // (an upload given up) is not kept in memory for ever.
        self.seal_open_pack(OPEN_PACK_MAX_AGE).await;
        self.collect_packs().await.map(|_| ())
    }

    async fn verify(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        let mut reader = match self.open_read(hash, size).await? {
            // Set aside before (not by this call): it is not stored.
            None | Some(Opened::SetAside) => return Ok(Verdict::Missing),
            Some(Opened::FoundDamaged) => return Ok(Verdict::Damaged),
            Some(Opened::Reader(reader)) => reader,
        };
        loop {
            match reader.next_chunk(VERIFY_BUFFER).await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(Verdict::Good),
                Err(Error::DataLoss(_)) => return Ok(Verdict::Damaged),
                Err(e) => return Err(e),
            }
        }
    }

    async fn verified_size(&self, hash: &ContentHash) -> Result<Option<u64>> {
        let Some(size) = self.head(hash).await? else { return Ok(None) };
        Ok((self.verify(hash, size).await? == Verdict::Good).then_some(size))
    }

    async fn is_damaged(&self, hash: &ContentHash) -> Result<bool> {
        let row = self
            .query_opt("SELECT damaged FROM contents WHERE hash = $1", &[&hash.as_bytes().as_slice()])
            .await?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    fn damage_counts(&self) -> (u64, u64) {
        (self.inner.damaged_now.load(Ordering::Relaxed), self.inner.found_damaged.load(Ordering::Relaxed))
    }

    fn take_found(&self) -> Vec<(ContentHash, u64)> {
        std::mem::take(&mut *self.inner.to_heal.lock().unwrap_or_else(|p| p.into_inner()))
    }

    async fn found(&self) {
        self.inner.found.notified().await;
    }

    async fn ping(&self) -> Result<()> {
        self.inner
            .bucket
            .list_with_delimiter(Some(&Path::from(PING_PREFIX)))
            .await
            .map(|_| ())
            .map_err(|e| self.bucket_error(e))
    }
}

/// Checks received content against its announced hash and size.
fn check(hash: &ContentHash, size: u64, data: &[u8]) -> Result<()> {
    if data.len() as u64 != size {
        return Err(Error::ContentMismatch(format!(
            "received {} bytes but the header announced {size}",
            data.len()
        )));
    }
    let got = ContentHash::of(data);
    if got != *hash {
        return Err(Error::ContentMismatch(format!(
            "content hash mismatch: the header announced {hash}, the content hashes to {got}"
        )));
    }
    Ok(())
}

/// An upload, held in memory (at most [`UPLOAD_MAX`] bytes) until it is
/// placed; dropped, it leaves nothing.
#[derive(Debug)]
struct BucketUpload {
    store: BucketContent,
    data: BytesMut,
}

#[async_trait]
impl ContentUpload for BucketUpload {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        if (self.data.len() + chunk.len()) as u64 > UPLOAD_MAX {
            return Err(Error::ContentMismatch(format!(
                "received more than {UPLOAD_MAX} bytes for content stored whole"
            )));
        }
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn complete(self: Box<Self>, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>> {
        check(&hash, size, &self.data)?;
        Ok(Box::new(BucketStaged { store: self.store, hash, data: self.data.freeze() }))
    }
}

/// Checked content waiting to be placed.
#[derive(Debug)]
struct BucketStaged {
    store: BucketContent,
    hash: ContentHash,
    data: Bytes,
}

#[async_trait]
impl StagedContent for BucketStaged {
    fn hash(&self) -> ContentHash {
        self.hash
    }

    async fn read_prefix(&self, max: u64) -> Result<Vec<u8>> {
        let end = usize::try_from(max).unwrap_or(usize::MAX).min(self.data.len());
        Ok(self.data[..end].to_vec())
    }

    async fn place(self: Box<Self>) -> Result<Durability> {
        Ok(self.store.place(self.hash, self.data).await?.unwrap_or(Durability::Durable))
    }
}

/// A read of inline content, checked whole when it was opened.
#[derive(Debug)]
struct InlineReader {
    /// Not handed out yet.
    data: Bytes,
}

#[async_trait]
impl ContentReader for InlineReader {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let piece = self.data.split_to(max.max(1).min(self.data.len()));
        Ok(Some(piece.to_vec()))
    }
}

/// A verified read of an object as it streams in: the bytes are hashed as
/// they arrive, and the piece that ends the content is handed out only once
/// the stream ended and all of it hashed to its name. A mismatch (or an
/// object longer or shorter than its content) sets it aside and ends the
/// read with `DATA_LOSS`; a failure on the way is `UNAVAILABLE`.
struct ObjectReader {
    store: BucketContent,
    hash: ContentHash,
    size: u64,
    /// The object's ETag, to set aside only the copy that was read.
    e_tag: Option<String>,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// Received and not handed out yet.
    pending: BytesMut,
    received: u64,
    handed_out: u64,
    hasher: blake3::Hasher,
    ended: bool,
    /// A read failed: the reader is done.
    failed: bool,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("received", &self.received)
            .field("handed_out", &self.handed_out)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// Sets the object aside and returns the `DATA_LOSS` to end the read
    /// with.
    async fn damaged(&mut self, why: &str) -> Error {
        self.failed = true;
        self.store.set_aside(&self.hash, self.size, Seen::Object(self.e_tag.clone()), why).await;
        damaged(&self.hash)
    }
}

#[async_trait]
impl ContentReader for ObjectReader {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.failed {
            return Err(Error::Internal("a read failed before".into()));
        }
        if self.handed_out == self.size {
            return Ok(None);
        }
        let want = usize::try_from(self.size - self.handed_out).unwrap_or(usize::MAX).min(max.max(1));
        let last = self.handed_out + want as u64 == self.size;
        while self.pending.len() < want || (last && !self.ended) {
            match self.stream.next().await {
                Some(Ok(bytes)) => {
                    self.received += bytes.len() as u64;
                    if self.received > self.size {
                        return Err(self.damaged("it is too long").await);
                    }
                    self.hasher.update(&bytes);
                    self.pending.extend_from_slice(&bytes);
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(self.store.bucket_error(e));
                }
                None => {
                    self.ended = true;
                    if self.received < self.size {
                        return Err(self.damaged("it is too short").await);
                    }
                    if ContentHash::from(self.hasher.finalize()) != self.hash {
                        return Err(self.damaged("its bytes do not hash to its name").await);
                    }
                }
            }
        }
        self.handed_out += want as u64;
        Ok(Some(self.pending.split_to(want).to_vec()))
    }
}
