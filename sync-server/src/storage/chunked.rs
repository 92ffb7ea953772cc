//! Content larger than one chunk ([`WHOLE_MAX`]) as the journal stores it:
//! cut by [`Chunker`] as it is received, each chunk an ordinary content of
//! the [`ContentStore`](super::content::ContentStore) named by its own hash (stored once, whoever sends
//! it), and the chunk list (the recipe) kept in the metadata with the entry
//! that first refers to it. The server always cuts what it stores itself,
//! from the bytes: a client's list is never trusted.
//!
//! - [`ChunkedUpload`] cuts, writes each chunk that is not already stored
//!   good and only holds the others, and checks the whole at `complete`.
//!   It stores each chunk as it is cut (no temp file per chunk waits for
//!   the commit: a 1 GiB file is 16,000 chunks), with as many writes
//!   running at once as the content store asks for (one on a local disk,
//!   16 on an object store, where each is a request), so it holds at most
//!   that many chunks' bytes beyond what it was handed. Every
//!   chunk it refers to is held from its check until the commit (or the
//!   upload's end); when it ends unused, its chunks are handed to garbage
//!   collection, which removes those nothing refers to.
//! - [`ChunkedReader`] reads a recipe's chunks in order, each verified by
//!   the content store, and hands out its last piece only once the whole
//!   content matched its hash.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
};

use async_trait::async_trait;
use futures::stream::{FuturesOrdered, StreamExt};
use syncstore::{
    ContentHash,
    chunks::{Chunk, ChunkRef, Chunker, WHOLE_MAX},
};

use super::{
    Store,
    content::{ContentReader, ContentUpload, Durability, StagedContent},
    journal::ContentHold,
};
use crate::error::{Error, Result};

/// Whether content of `size` bytes is stored as chunks (when it is stored
/// by this release).
pub(crate) fn is_chunked(size: u64) -> bool {
    size > WHOLE_MAX
}

/// The chunks an upload refers to, each held.
#[derive(Debug)]
struct Chunks {
    store: Store,
    list: Vec<ChunkRef>,
    /// One hold per distinct chunk of `list`.
    holds: Vec<ContentHold>,
    held: HashSet<ContentHash>,
    /// Chunk writes running, oldest first: up to the content store's
    /// [`chunk_writes_in_flight`](super::content::ContentStore::chunk_writes_in_flight)
    /// (each holds its chunk, at most [`syncstore::chunks::CDC_MAX`] bytes).
    writes: VecDeque<tokio::task::JoinHandle<Result<Option<Durability>>>>,
    /// Some chunk put in place is not durable yet.
    pending: bool,
    /// Put in place for a commit: the commit's caller took over the holds
    /// and the cleanup.
    kept: bool,
}

impl Drop for Chunks {
    fn drop(&mut self) {
        for write in &self.writes {
            write.abort();
        }
        if self.kept {
            return;
        }
        // Holds first: the collection below must find the chunks unheld.
        self.holds.clear();
        // Every chunk it held, not only those it wrote: one it found stored
        // may have been written by another upload that ended unused while
        // this one held it.
        let held: Vec<ContentHash> = self.held.drain().collect();
        if held.is_empty() {
            return;
        }
        // Without a runtime (shutting down), the start-up sweep removes them.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move { store.drop_if_unreferenced(held).await });
        }
    }
}

impl Chunks {
    /// Gives the chunks up: the holds go and the chunks go to garbage
    /// collection, which has removed those nothing refers to once this
    /// returns (with no grace).
    async fn release(&mut self) {
        self.kept = true;
        // Every write has stopped before the collection looks at its chunk.
        for write in self.writes.drain(..) {
            write.abort();
            let _ = write.await;
        }
        self.holds.clear();
        let held: Vec<ContentHash> = self.held.drain().collect();
        if !held.is_empty() {
            self.store.drop_if_unreferenced(held).await;
        }
    }

    /// Adds `chunk` to the list: held, and written unless it is stored good
    /// already.
    async fn take(&mut self, chunk: Chunk) -> Result<()> {
        let c = chunk.chunk;
        self.list.push(c);
        if !self.held.insert(c.hash) {
            self.store.counted_deduplicated();
            return Ok(());
        }
        self.holds.push(self.store.hold(c.hash).await);
        // A stored copy is read and hashed: a damaged one (set aside by the
        // check) is written again, which heals it.
        let content = self.store.content_store().clone();
        if content.chunk_writes_in_flight() <= 1 {
            let written = content.put_whole(c.hash, chunk.data).await?;
            self.count(written);
            return Ok(());
        }
        while self.writes.len() >= content.chunk_writes_in_flight() {
            self.finish_oldest().await?;
        }
        self.writes.push_back(tokio::spawn(async move { content.put_whole(c.hash, chunk.data).await }));
        Ok(())
    }

    /// Waits for every chunk write still running.
    async fn finish_writes(&mut self) -> Result<()> {
        while !self.writes.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<()> {
        let Some(write) = self.writes.pop_front() else { return Ok(()) };
        let written = write.await??;
        self.count(written);
        Ok(())
    }

    /// Counts one chunk's write: `None` when a good copy was there.
    fn count(&mut self, written: Option<Durability>) {
        match written {
            None => self.store.counted_deduplicated(),
            Some(durability) => {
                self.pending |= durability == Durability::Pending;
                self.store.counted_stored();
            }
        }
    }
}

/// Content larger than one chunk being received.
#[derive(Debug)]
pub(crate) struct ChunkedUpload {
    chunker: Chunker,
    chunks: Chunks,
}

impl ChunkedUpload {
    /// An upload of content announced as `size` bytes into `store`.
    pub(crate) fn new(store: Store, size: u64) -> Self {
        let chunks = Chunks {
            store,
            list: Vec::new(),
            holds: Vec::new(),
            held: HashSet::new(),
            writes: VecDeque::new(),
            pending: false,
            kept: false,
        };
        Self { chunker: Chunker::new(size), chunks }
    }
}

#[async_trait]
impl ContentUpload for ChunkedUpload {
    async fn write(&mut self, data: Vec<u8>) -> Result<()> {
        for chunk in self.cut(Some(data)).await? {
            self.chunks.take(chunk).await?;
        }
        Ok(())
    }

    async fn complete(mut self: Box<Self>, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>> {
        if let Err(e) = self.check(hash, size).await {
            // Nothing is kept by the time the caller hears why.
            self.chunks.release().await;
            return Err(e);
        }
        let ChunkedUpload { chunks, .. } = *self;
        Ok(Box::new(ChunkedStaged { hash, size, chunks }))
    }

    async fn abort(mut self: Box<Self>) {
        self.chunks.release().await;
    }
}

impl ChunkedUpload {
    /// Pushes `data` (or, with `None`, the end of the content) through the
    /// chunker and returns the chunks it completed. Cutting and hashing a
    /// message's worth of content takes a millisecond or more of CPU, so it
    /// runs on a blocking thread, never on an async worker.
    async fn cut(&mut self, data: Option<Vec<u8>>) -> Result<Vec<Chunk>> {
        let mut chunker = std::mem::replace(&mut self.chunker, Chunker::new(0));
        let (chunker, chunks) = tokio::task::spawn_blocking(move || {
            match data {
                Some(data) => chunker.push(&data),
                None => chunker.finish(),
            }
            let chunks: Vec<Chunk> = std::iter::from_fn(|| chunker.next_chunk()).collect();
            (chunker, chunks)
        })
        .await?;
        self.chunker = chunker;
        Ok(chunks)
    }

    /// Takes the last chunks and checks the whole against `hash` and
    /// `size`.
    async fn check(&mut self, hash: ContentHash, size: u64) -> Result<()> {
        for chunk in self.cut(None).await? {
            self.chunks.take(chunk).await?;
        }
        self.chunks.finish_writes().await?;
        let (got, len) = self.chunker.content();
        if len != size {
            return Err(Error::ContentMismatch(format!(
                "received {len} bytes but the header announced {size}"
            )));
        }
        if got != hash {
            return Err(Error::ContentMismatch(format!(
                "content hash mismatch: the header announced {hash}, the content hashes to {got}"
            )));
        }
        Ok(())
    }
}

/// Received content larger than one chunk: its chunks are in place and
/// held; placing it only hands them over.
#[derive(Debug)]
struct ChunkedStaged {
    hash: ContentHash,
    size: u64,
    chunks: Chunks,
}

#[async_trait]
impl StagedContent for ChunkedStaged {
    fn hash(&self) -> ContentHash {
        self.hash
    }

    fn recipe(&self) -> Option<&[ChunkRef]> {
        Some(&self.chunks.list)
    }

    async fn read_prefix(&self, max: u64) -> Result<Vec<u8>> {
        let mut reader =
            ChunkedReader::new(self.chunks.store.clone(), self.hash, self.size, self.chunks.list.clone());
        let mut out = Vec::new();
        while (out.len() as u64) < max {
            let want = usize::try_from(max - out.len() as u64).unwrap_or(usize::MAX);
            let Some(piece) = reader.read_piece(want).await? else { break };
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }

    async fn place(mut self: Box<Self>) -> Result<Durability> {
        // The caller holds every chunk (taken before this) until its commit.
        self.chunks.kept = true;
        Ok(if self.chunks.pending { Durability::Pending } else { Durability::Durable })
    }
}

/// A read of one or more chunks, one after another, running ahead of the
/// pieces handed out.
type ChunkRead = Pin<Box<dyn Future<Output = Result<Vec<Option<Vec<u8>>>>> + Send>>;

/// The most bytes of chunks one read of [`ChunkedReader`] asks for (one
/// chunk at least), whatever the content store's batch: a batch of the
/// largest chunks holds no more than one of average chunks.
pub(crate) const CHUNK_READ_BYTES: u64 = 4 * 1024 * 1024;

/// Where the read of `list` from `next` ends: after at most `batch`
/// chunks and [`CHUNK_READ_BYTES`], one chunk at least.
fn batch_end(list: &[ChunkRef], next: usize, batch: usize) -> usize {
    let (mut end, mut bytes) = (next, 0u64);
    while end < list.len().min(next + batch) {
        bytes += u64::from(list[end].size);
        if end > next && bytes > CHUNK_READ_BYTES {
            break;
        }
        end += 1;
    }
    end
}

/// A verified read of content stored as chunks, with up to the content
/// store's [`chunk_reads_in_flight`](super::content::ContentStore::chunk_reads_in_flight)
/// reads in flight, each of up to its
/// [`chunk_read_batch`](super::content::ContentStore::chunk_read_batch) chunks and
/// [`CHUNK_READ_BYTES`] (in order).
pub(crate) struct ChunkedReader {
    store: Store,
    hash: ContentHash,
    size: u64,
    list: Vec<ChunkRef>,
    /// The next chunk of `list` to ask for.
    next: usize,
    /// The reads asked for and not taken yet: with `ready`,
    /// `list[taken..next]`.
    reads: FuturesOrdered<ChunkRead>,
    /// Chunks read and not taken yet, in order.
    ready: VecDeque<Option<Vec<u8>>>,
    taken: usize,
    /// The chunk being handed out (read whole and verified), and how much
    /// of it went.
    current: Vec<u8>,
    at: usize,
    whole: blake3::Hasher,
    read: u64,
    /// A piece read and not handed out yet: the last piece waits for the
    /// whole content's check.
    held: Option<Vec<u8>>,
    done: bool,
}

impl ChunkedReader {
    /// A read of content `hash` of `size` bytes stored as `list`.
    pub(crate) fn new(store: Store, hash: ContentHash, size: u64, list: Vec<ChunkRef>) -> Self {
        Self {
            store,
            hash,
            size,
            list,
            next: 0,
            reads: FuturesOrdered::new(),
            ready: VecDeque::new(),
            taken: 0,
            current: Vec::new(),
            at: 0,
            whole: blake3::Hasher::new(),
            read: 0,
            held: None,
            done: false,
        }
    }

    /// The next piece of at most `max` bytes, within one chunk; each chunk
    /// is read whole (at most [`syncstore::chunks::CDC_MAX`] bytes) and
    /// verified by the content store, in one trip. `None` after the last.
    async fn read_piece(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        while self.at == self.current.len() {
            self.ask_ahead();
            if self.ready.is_empty() {
                let Some(read) = self.reads.next().await else { return Ok(None) };
                self.ready.extend(read?);
                continue;
            }
            let read = self.ready.pop_front().flatten();
            let c = self.list[self.taken];
            self.taken += 1;
            let Some(data) = read else {
                return Err(Error::DataLoss(format!(
                    "chunk {} of the content {} is missing from the store",
                    c.hash, self.hash
                )));
            };
            (self.current, self.at) = (data, 0);
        }
        let piece = if self.at == 0 && self.current.len() <= max {
            std::mem::take(&mut self.current)
        } else {
            let end = self.current.len().min(self.at + max);
            let piece = self.current[self.at..end].to_vec();
            self.at = end;
            piece
        };
        if self.current.is_empty() {
            self.at = 0;
        }
        self.whole.update(&piece);
        self.read += piece.len() as u64;
        Ok(Some(piece))
    }
}

impl ChunkedReader {
    /// Asks for the next chunks, up to the store's read-ahead in flight.
    fn ask_ahead(&mut self) {
        let content = self.store.content_store();
        let (depth, batch) = (content.chunk_reads_in_flight().max(1), content.chunk_read_batch().max(1));
        while self.reads.len() < depth && self.next < self.list.len() {
            let end = batch_end(&self.list, self.next, batch);
            let chunks = self.list[self.next..end].to_vec();
            self.next = end;
            let content = content.clone();
            // A task of its own: it goes on while the reader hands out
            // pieces (a future in `reads` moves only while it is polled),
            // and stops when the reader is dropped.
            let read = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                match chunks.as_slice() {
                    [c] => Ok(vec![content.read_whole(&c.hash, u64::from(c.size)).await?]),
                    _ => content.read_chunks(&chunks).await,
                }
            }));
            self.reads.push_back(Box::pin(async move { read.await? }));
        }
    }
}

impl std::fmt::Debug for ChunkedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkedReader")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("chunks", &self.list.len())
            .field("taken", &self.taken)
            .field("in_flight", &self.reads.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ContentReader for ChunkedReader {
    /// Pieces of `max` bytes across chunk boundaries; one piece is read
    /// ahead, so the last goes only once the whole content matched.
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(self.held.take());
        }
        let mut out = self.held.take().unwrap_or_default();
        while out.len() < max {
            match self.read_piece(max - out.len()).await? {
                Some(piece) if out.is_empty() => out = piece,
                Some(piece) => out.extend_from_slice(&piece),
                None => return self.end(out),
            }
        }
        match self.read_piece(max).await? {
            Some(next) => {
                self.held = Some(next);
                Ok(Some(out))
            }
            None => self.end(out),
        }
    }
}

impl ChunkedReader {
    /// Everything was read: `last` goes if the whole matched its hash.
    fn end(&mut self, last: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.done = true;
        let got = ContentHash::from(self.whole.finalize());
        if got != self.hash || self.read != self.size {
            return Err(Error::DataLoss(format!(
                "the chunks of content {} add up to {} bytes hashing to {got}",
                self.hash, self.read
            )));
        }
        Ok((!last.is_empty()).then_some(last))
    }
}

#[cfg(test)]
mod tests {
    use syncstore::{ContentHash, chunks::ChunkRef};

    use super::{CHUNK_READ_BYTES, batch_end};

    fn list(sizes: &[u32]) -> Vec<ChunkRef> {
        sizes.iter().map(|&size| ChunkRef { hash: ContentHash::of(&size.to_le_bytes()), size }).collect()
    }

    #[test]
    fn a_read_of_chunks_stops_at_the_batch_or_the_byte_cap_whichever_comes_first() {
        const KIB: u32 = 1024;
        // Average chunks: the batch ends it.
        let average = list(&[64 * KIB; 100]);
        assert_eq!(batch_end(&average, 0, 64), 64);
        assert_eq!(batch_end(&average, 64, 64), 100, "the rest of the list");
        // The largest chunks: 4 MiB ends it, not 64 of them (16 MiB).
        let largest = list(&[256 * KIB; 100]);
        let end = batch_end(&largest, 10, 64);
        assert_eq!(end, 26);
        assert_eq!(largest[10..end].iter().map(|c| u64::from(c.size)).sum::<u64>(), CHUNK_READ_BYTES);
        // One chunk at least, whatever its size; a batch of one is one.
        assert_eq!(batch_end(&list(&[8 * 1024 * KIB, 1]), 0, 64), 1);
        assert_eq!(batch_end(&average, 3, 1), 4);
    }
}
