//! Packs: content larger than [`INLINE_MAX`](super::INLINE_MAX) is appended
//! to this process's open pack, and a pack of about [`PACK_TARGET`] bytes is
//! one object, `packs/<id>`; each content is a byte range of one pack
//! (its row's `pack` and `pack_offset`). A 1 GiB file is then 64 PUTs, not
//! 16,000 (one per chunk), and a burst of 1 MiB files one PUT per 16 of them.
//!
//! Writing a pack (one protocol for every process):
//! 1. each content's row was upserted with `touched = now()` before it was
//!    appended (so no process removes it for a grace);
//! 2. the pack's row goes into `packs` (committed), so that a pack whose
//!    PUT or row updates never finish is still known to the collector;
//! 3. PUT the pack;
//! 4. in one transaction, every member's row (locked in hash order) is set
//!    `stored`, pointing at its range of the pack.
//!
//! Content appended is [`Durability::Pending`]: the pack is sealed and
//! written when it is full, or when [`ContentStore::ensure_durable`] names
//! content it holds (the journal does, once per group commit, before any
//! metadata refers to it). `ensure_durable` fails if the pack of any named
//! content failed: such content is remembered as failed (for a grace) so
//! that every upload that counted on it hears so.
//!
//! Content of at most [`INLINE_MAX`](super::INLINE_MAX) bytes goes into its
//! row instead, by group commit: one task writes the open batch of rows
//! with one upsert (one transaction) while the next batch gathers what
//! arrives meanwhile; `ensure_durable` waits for the batch of each named
//! content. A burst of small files then costs the database a commit per
//! batch for their content, not one each, and nobody waits for a batch
//! to fill.
//!
//! A pack is removed ([`BucketContent::collect_packs`]) once no row points
//! into it and it is older than the grace: nothing points into a pack
//! after its own step 4, so a pack that old with no rows never gains one.
//! Space of removed content inside a live pack stays until every content
//! of the pack goes (no repacking yet).

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, Mutex, MutexGuard, atomic::Ordering},
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use object_store::{ObjectStoreExt, path::Path};
use syncstore::{ContentHash, chunks::ChunkRef};
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::{BucketContent, ContentStore, pg_error};
use crate::error::{Error, Result};

/// A pack is sealed and written once it holds this many bytes: 64 PUTs
/// for a 1 GiB file.
pub(super) const PACK_TARGET: usize = 16 * 1024 * 1024;

/// Packs written at once by one process (each held in memory until its PUT
/// ends): appending waits when this many are on their way, so a fast
/// upload holds at most about `(PACKS_IN_FLIGHT + 1) × PACK_TARGET` bytes.
pub(super) const PACKS_IN_FLIGHT: usize = 4;

/// Where packs live in the bucket.
const PACK_PREFIX: &str = "packs";

/// The object of pack `id`.
pub(super) fn pack_object(id: &str) -> Path {
    Path::from(format!("{PACK_PREFIX}/{id}"))
}

/// Where a pack is on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Content is still being appended.
    Open,
    /// Sealed: waiting for its turn or being written.
    Writing,
    /// Written, and its members' rows point into it.
    Durable,
    /// Writing it failed, for this reason: its members are not stored.
    Failed(String),
}

/// One pack, or one batch of inline rows, as the content appended to it
/// waits for it.
#[derive(Debug)]
struct Pack {
    id: String,
    outcome: watch::Sender<Outcome>,
}

impl Pack {
    fn new() -> Arc<Pack> {
        let id = format!("{:032x}", rand::random::<u128>());
        Arc::new(Pack { id, outcome: watch::Sender::new(Outcome::Open) })
    }

    fn failed(&self) -> bool {
        matches!(*self.outcome.borrow(), Outcome::Failed(_))
    }
}

/// The pack content is appended to, not sealed yet.
#[derive(Debug)]
struct OpenPack {
    pack: Arc<Pack>,
    data: BytesMut,
    /// Each member's hash and where it starts.
    members: Vec<(ContentHash, u64)>,
    opened: Instant,
}

/// The batch of inline rows content is appended to, not written yet.
#[derive(Debug)]
struct OpenRows {
    batch: Arc<Pack>,
    rows: Vec<(ContentHash, Bytes)>,
}

/// Content appended to a pack that is not written yet, or whose writing
/// failed (kept for a grace, so that whoever counted on it hears so).
#[derive(Debug)]
struct Member {
    pack: Arc<Pack>,
    since: Instant,
}

/// This process's packing: the open pack, and the content on its way.
#[derive(Debug)]
pub(super) struct Packer {
    state: Mutex<State>,
    /// One permit per pack being written ([`PACKS_IN_FLIGHT`]).
    slots: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Default)]
struct State {
    open: Option<OpenPack>,
    open_rows: Option<OpenRows>,
    /// Whether the task writing batches of rows runs.
    writing_rows: bool,
    members: HashMap<ContentHash, Member>,
}

impl Default for Packer {
    fn default() -> Self {
        Packer { state: Mutex::default(), slots: Arc::new(tokio::sync::Semaphore::new(PACKS_IN_FLIGHT)) }
    }
}

impl Packer {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether content `hash` is on its way in a pack that has not failed.
    pub(super) fn is_on_its_way(&self, hash: &ContentHash) -> bool {
        self.lock().members.get(hash).is_some_and(|m| !m.pack.failed())
    }
}

impl BucketContent {
    /// Appends verified content (its row upserted and touched) to this
    /// process's open pack; writes the pack once it is full. The content
    /// is [`Durability::Pending`](super::Durability::Pending) until then.
    pub(super) async fn append(&self, hash: ContentHash, data: &[u8]) -> Result<()> {
        let full = {
            let mut state = self.inner.packer.lock();
            if state.members.get(&hash).is_some_and(|m| !m.pack.failed()) {
                return Ok(()); // On its way already.
            }
            let open = state.open.get_or_insert_with(|| OpenPack {
                pack: Pack::new(),
                data: BytesMut::with_capacity(PACK_TARGET + syncstore::chunks::WHOLE_MAX as usize),
                members: Vec::new(),
                opened: Instant::now(),
            });
            open.members.push((hash, open.data.len() as u64));
            open.data.extend_from_slice(data);
            let member = Member { pack: open.pack.clone(), since: Instant::now() };
            let full = open.data.len() >= PACK_TARGET;
            state.members.insert(hash, member);
            if full { state.open.take() } else { None }
        };
        if let Some(pack) = full {
            self.seal(pack).await;
        }
        Ok(())
    }

    /// Appends verified small content to this process's open batch of
    /// inline rows, and starts the task writing batches unless it runs.
    /// The content is [`Durability::Pending`](super::Durability::Pending)
    /// until its batch is written.
    pub(super) fn append_row(&self, hash: ContentHash, data: Bytes) {
        {
            let mut state = self.inner.packer.lock();
            if state.members.get(&hash).is_some_and(|m| !m.pack.failed()) {
                return; // On its way already.
            }
            let open =
                state.open_rows.get_or_insert_with(|| OpenRows { batch: Pack::new(), rows: Vec::new() });
            open.rows.push((hash, data));
            let member = Member { pack: open.batch.clone(), since: Instant::now() };
            state.members.insert(hash, member);
            if std::mem::replace(&mut state.writing_rows, true) {
                return; // The running task takes this batch next.
            }
        }
        let store = self.clone();
        tokio::spawn(async move { store.write_rows().await });
    }

    /// Writes batches of rows, one after the other, until none is open.
    async fn write_rows(&self) {
        loop {
            let OpenRows { batch, rows } = {
                let mut state = self.inner.packer.lock();
                match state.open_rows.take() {
                    Some(open) => open,
                    None => {
                        state.writing_rows = false;
                        return;
                    }
                }
            };
            batch.outcome.send_replace(Outcome::Writing);
            let result = self.put_rows(&rows).await;
            self.written(&batch, rows.iter().map(|(h, _)| h), result, "a batch of inline rows");
        }
    }

    /// Waits until the content `hashes` names that is on its way in a pack
    /// or a batch of rows is durable (sealing the open pack if it holds
    /// any): `UNAVAILABLE` when the pack or batch of one of them failed.
    pub(super) async fn wait_for_packs(&self, hashes: &[ContentHash]) -> Result<()> {
        let (packs, open) = {
            let mut state = self.inner.packer.lock();
            let mut packs: Vec<Arc<Pack>> = Vec::new();
            for hash in hashes {
                if let Some(m) = state.members.get(hash)
                    && !packs.iter().any(|p| Arc::ptr_eq(p, &m.pack))
                {
                    packs.push(m.pack.clone());
                }
            }
            let open_named =
                state.open.as_ref().is_some_and(|o| packs.iter().any(|p| Arc::ptr_eq(p, &o.pack)));
            (packs, if open_named { state.open.take() } else { None })
        };
        if let Some(open) = open {
            self.seal(open).await;
        }
        for pack in packs {
            let mut outcome = pack.outcome.subscribe();
            let done = outcome
                .wait_for(|o| matches!(o, Outcome::Durable | Outcome::Failed(_)))
                .await
                .map_err(|_| Error::Internal("a pack's writer went away".into()))?
                .clone();
            if let Outcome::Failed(why) = done {
                return Err(Error::Unavailable(format!("content could not be stored in the bucket: {why}")));
            }
        }
        Ok(())
    }

    /// Writes the open pack now, whatever it holds (the sweep's call: an
    /// idle process keeps nothing in memory for long).
    pub(super) async fn seal_open_pack(&self, older_than: std::time::Duration) {
        let open = {
            let mut state = self.inner.packer.lock();
            if state.open.as_ref().is_some_and(|o| o.opened.elapsed() >= older_than) {
                state.open.take()
            } else {
                None
            }
        };
        if let Some(open) = open {
            self.seal(open).await;
        }
    }

    /// Seals `open`: waits for a writing slot, then writes it in the
    /// background.
    async fn seal(&self, open: OpenPack) {
        open.pack.outcome.send_replace(Outcome::Writing);
        let permit = self.inner.packer.slots.clone().acquire_owned().await;
        let store = self.clone();
        tokio::spawn(async move { store.write_pack(open, permit.ok()).await });
    }

    /// Writes a sealed pack (the module's protocol) and tells those
    /// waiting for it.
    async fn write_pack(&self, open: OpenPack, _permit: Option<OwnedSemaphorePermit>) {
        let OpenPack { pack, data, members, .. } = open;
        let result = self.put_pack(&pack.id, data.freeze(), &members).await;
        self.written(&pack, members.iter().map(|(h, _)| h), result, "a pack");
    }

    /// Tells those waiting for `pack` (of `members`) how writing it went.
    fn written<'a>(
        &self,
        pack: &Arc<Pack>,
        members: impl ExactSizeIterator<Item = &'a ContentHash>,
        result: Result<()>,
        what: &str,
    ) {
        let mut state = self.inner.packer.lock();
        match &result {
            Ok(()) => {
                for hash in members {
                    if state.members.get(hash).is_some_and(|m| Arc::ptr_eq(&m.pack, pack)) {
                        state.members.remove(hash);
                    }
                }
                pack.outcome.send_replace(Outcome::Durable);
            }
            Err(e) => {
                tracing::warn!(id = %pack.id, contents = members.len(), error = %e, "could not write {what}");
                pack.outcome.send_replace(Outcome::Failed(e.to_string()));
            }
        }
        // Failures are remembered for a grace, no longer.
        let grace = self.inner.grace;
        state.members.retain(|_, m| !m.pack.failed() || m.since.elapsed() < grace);
    }

    /// Writes small contents into their rows with one statement: each row
    /// is the copy (a copy there already is written again with the same
    /// verified bytes, which heals one that went bad), touched now.
    async fn put_rows(&self, rows: &[(ContentHash, Bytes)]) -> Result<()> {
        let mut sorted: Vec<(&[u8], i64, &[u8])> =
            rows.iter().map(|(h, d)| (h.as_bytes().as_slice(), d.len() as i64, d.as_ref())).collect();
        // In hash order, as every writer of many rows locks them.
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let mut hashes = Vec::with_capacity(sorted.len());
        let mut sizes = Vec::with_capacity(sorted.len());
        let mut data = Vec::with_capacity(sorted.len());
        for (h, s, d) in sorted {
            hashes.push(h);
            sizes.push(s);
            data.push(d);
        }
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "WITH m AS (SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[]) AS m(h, s, d)),
                      was AS (SELECT c.hash FROM contents c JOIN m ON c.hash = m.h WHERE c.damaged),
                      up AS (INSERT INTO contents (hash, size, data, stored, touched, damaged)
                             SELECT h, s, d, true, now(), false FROM m ORDER BY h
                             ON CONFLICT (hash) DO UPDATE
                                 SET size = excluded.size, data = excluded.data, stored = true,
                                     damaged = false, touched = now()
                             RETURNING 1)
                 SELECT hash FROM was",
            )
            .await
            .map_err(pg_error)?;
        let healed = client.query(&statement, &[&hashes, &sizes, &data]).await.map_err(pg_error)?;
        drop(client);
        for row in &healed {
            if let Ok(hash) = ContentHash::try_from(row.get::<_, &[u8]>(0)) {
                self.healed(&hash, false).await;
            }
        }
        Ok(())
    }

    /// Steps 2 to 4 of the module's protocol.
    async fn put_pack(&self, id: &str, data: Bytes, members: &[(ContentHash, u64)]) -> Result<()> {
        let size = i64::try_from(data.len()).map_err(|_| Error::Internal("a pack beyond i64".into()))?;
        self.execute("INSERT INTO packs (id, size, created) VALUES ($1, $2, now())", &[&id, &size]).await?;
        self.inner.bucket.put(&pack_object(id), data.into()).await.map_err(|e| self.bucket_error(e))?;
        let mut sorted: Vec<(&[u8], i64)> = members
            .iter()
            .map(|(h, at)| (h.as_bytes().as_slice(), i64::try_from(*at).unwrap_or(i64::MAX)))
            .collect();
        sorted.sort_unstable();
        let (hashes, offsets): (Vec<&[u8]>, Vec<i64>) = sorted.into_iter().unzip();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let locked = tx
            .query(
                "SELECT hash, damaged, data IS NULL AND pack IS NULL FROM contents
                 WHERE hash = ANY($1) ORDER BY hash FOR UPDATE",
                &[&hashes],
            )
            .await
            .map_err(pg_error)?;
        if locked.len() < members.len() {
            // Removed since it was touched: its grace passed meanwhile.
            return Err(Error::Internal(format!(
                "{} of the pack's contents were removed while they were placed",
                members.len() - locked.len()
            )));
        }
        tx.execute(
            "UPDATE contents c SET stored = true, damaged = false, data = NULL, pack = $1, pack_offset = m.o
             FROM unnest($2::bytea[], $3::bigint[]) AS m(h, o) WHERE c.hash = m.h",
            &[&id, &hashes, &offsets],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        for row in locked.iter().filter(|r| r.get::<_, bool>(1)) {
            let bytes: &[u8] = row.get(0);
            if let Ok(hash) = ContentHash::try_from(bytes) {
                self.healed(&hash, row.get(2)).await;
            }
        }
        Ok(())
    }

    /// Removes the packs no content points into any more that are older
    /// than the grace: the object, then its row.
    pub(super) async fn collect_packs(&self) -> Result<usize> {
        let client = self.client().await?;
        let dead = client
            .query(
                "SELECT id FROM packs p WHERE created < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM contents c WHERE c.pack = p.id)",
                &[&self.inner.grace.as_secs_f64()],
            )
            .await
            .map_err(pg_error)?;
        drop(client);
        for row in &dead {
            let id: &str = row.get(0);
            match self.inner.bucket.delete(&pack_object(id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.bucket_error(e)),
            }
            self.execute("DELETE FROM packs WHERE id = $1", &[&id]).await?;
        }
        if !dead.is_empty() {
            tracing::info!(packs = dead.len(), "removed packs no content refers to");
        }
        Ok(dead.len())
    }
}

/// Bytes between two chunks of one read that are fetched and dropped
/// rather than split into two GETs: chunks placed at once are appended in
/// the order their placing finished, so a content's neighbours lie close
/// together in a pack but not always side by side (one average chunk: a
/// span of 64 chunks fetches at most 4 MiB it drops).
const READ_GAP_MAX: u64 = 64 * 1024;

/// One request of [`BucketContent::read_packed`]: chunks of `pack` within
/// `range`, each as its index in the batch and where it starts, or one
/// chunk read on its own.
enum Fetch {
    Span { pack: String, range: Range<u64>, members: Vec<(usize, u64)> },
    One(usize),
}

impl BucketContent {
    /// Reads chunks whole and verified, those close together in a pack
    /// (in any order) with one ranged GET; a chunk stored otherwise, or
    /// whose bytes do not match, is read on its own (which sets damage
    /// aside).
    pub(super) async fn read_packed(&self, chunks: &[ChunkRef]) -> Result<Vec<Option<Vec<u8>>>> {
        let hashes: Vec<&[u8]> = chunks.iter().map(|c| c.hash.as_bytes().as_slice()).collect();
        let rows = {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(
                    "SELECT hash, pack, pack_offset FROM contents
                     WHERE hash = ANY($1) AND stored AND NOT damaged AND pack IS NOT NULL",
                )
                .await
                .map_err(pg_error)?;
            client.query(&statement, &[&hashes]).await.map_err(pg_error)?
        };
        let mut at: HashMap<ContentHash, (String, u64)> = HashMap::with_capacity(rows.len());
        for row in &rows {
            if let Ok(hash) = ContentHash::try_from(row.get::<_, &[u8]>(0)) {
                at.insert(hash, (row.get(1), u64::try_from(row.get::<_, i64>(2)).unwrap_or(u64::MAX)));
            }
        }
        let mut fetches = Vec::new();
        let mut located = Vec::with_capacity(chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            match at.get(&c.hash) {
                Some((pack, start)) => located.push((pack.as_str(), *start, i)),
                None => fetches.push(Fetch::One(i)),
            }
        }
        // In pack order: each span gathers what lies close together.
        located.sort_unstable();
        let mut spans: Vec<Fetch> = Vec::new();
        for (pack, start, i) in located {
            let end = start.saturating_add(u64::from(chunks[i].size));
            match spans.last_mut() {
                Some(Fetch::Span { pack: p, range, members })
                    if p == pack && start <= range.end.saturating_add(READ_GAP_MAX) =>
                {
                    range.end = range.end.max(end);
                    members.push((i, start));
                }
                _ => spans.push(Fetch::Span {
                    pack: pack.to_owned(),
                    range: start..end,
                    members: vec![(i, start)],
                }),
            }
        }
        fetches.extend(spans);
        let read = futures::future::try_join_all(fetches.into_iter().map(|f| self.fetch(chunks, f))).await?;
        let mut out = vec![None; chunks.len()];
        for (i, data) in read.into_iter().flatten() {
            out[i] = data;
        }
        Ok(out)
    }

    /// One [`Fetch`]: each of its chunks, by its index in the batch.
    async fn fetch(&self, chunks: &[ChunkRef], fetch: Fetch) -> Result<Vec<(usize, Option<Vec<u8>>)>> {
        let (pack, range, members) = match fetch {
            Fetch::One(i) => {
                let c = chunks[i];
                return Ok(vec![(i, self.read_whole(&c.hash, u64::from(c.size)).await?)]);
            }
            Fetch::Span { pack, range, members } => (pack, range, members),
        };
        let (first, len) = (range.start, range.end - range.start);
        self.inner.pack_reads.fetch_add(1, Ordering::Relaxed);
        let data = match self.inner.bucket.get_range(&pack_object(&pack), range).await {
            Ok(data) if data.len() as u64 == len => Some(data),
            // Gone or short: each chunk on its own says what it is.
            Ok(_) | Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(self.bucket_error(e)),
        };
        let mut out = Vec::with_capacity(members.len());
        for (i, start) in members {
            let c = chunks[i];
            let from = usize::try_from(start - first).unwrap_or(usize::MAX);
            let piece = data.as_ref().and_then(|d| d.get(from..from.saturating_add(c.size as usize)));
            match piece {
                Some(piece) if ContentHash::of(piece) == c.hash => out.push((i, Some(piece.to_vec()))),
                _ => out.push((i, self.read_whole(&c.hash, u64::from(c.size)).await?)),
            }
        }
        Ok(out)
    }
}
