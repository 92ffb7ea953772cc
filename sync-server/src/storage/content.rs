//! `ContentStore`: where file content lives, named by its BLAKE3 hash.
//! Shaped like the `object_store` crate's `ObjectStore`: a staged upload
//! (write chunks, `complete` with the announced hash and size, or abort), a
//! verified read, `head`, `delete`, `list`, plus `ensure_durable`, which the
//! journal calls once per group commit before any metadata refers to new
//! content (one `syncfs` on a local folder, nothing on object storage).
//!
//! A backend never decides whether content may go: the journal does, over
//! the references the metadata holds and the uploads in flight.

use std::fmt::Debug;

use async_trait::async_trait;
use syncstore::{ContentHash, chunks::ChunkRef};

use crate::error::Result;

/// Whether content put in place is durable yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Durability {
    /// Its data and its name are durable.
    Durable,
    /// Call [`ContentStore::ensure_durable`] before committing anything
    /// that refers to it.
    Pending,
}

/// What reading a whole stored content found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its bytes hash to its name.
    Good,
    /// It was damaged and is now set aside.
    Damaged,
    /// No such content is stored (set aside earlier, or never stored).
    Missing,
}

/// A content store. Every method may block on I/O; a blocking backend does
/// its own `spawn_blocking`.
#[async_trait]
pub(crate) trait ContentStore: Send + Sync + Debug + 'static {
    /// Starts receiving new content. Dropping the upload aborts it.
    async fn upload(&self) -> Result<Box<dyn ContentUpload>>;

    /// Opens stored content `hash` of `size` bytes for a verified read:
    /// `None` when it is not stored, `DATA_LOSS` when it was set aside as
    /// damaged.
    async fn get(&self, hash: &ContentHash, size: u64) -> Result<Option<Box<dyn ContentReader>>>;

    /// Stores small content given whole (a chunk of larger content) unless
    /// a good copy is stored already: `None` when one was (nothing is
    /// written; a damaged copy is set aside and replaced), else how durable
    /// the new copy is. A blocking backend does it in one trip.
    async fn put_whole(&self, hash: ContentHash, data: Vec<u8>) -> Result<Option<Durability>> {
        put_whole_by_upload(self, hash, data).await
    }

    /// How many chunks of one content are written at once: 1 where each is
    /// a local file's, more where each is a request with its own round trip
    /// (an object store), so that a large file streams at the store's
    /// throughput rather than one latency per chunk.
    fn chunk_writes_in_flight(&self) -> usize {
        1
    }

    /// How many reads of chunks of one content run ahead at once (as
    /// [`chunk_writes_in_flight`](Self::chunk_writes_in_flight), for
    /// reads), each of up to [`chunk_read_batch`](Self::chunk_read_batch)
    /// chunks.
    fn chunk_reads_in_flight(&self) -> usize {
        1
    }

    /// How many chunks, one after another in a content, one read asks for
    /// ([`read_chunks`](Self::read_chunks)): 1 where each is a file of its
    /// own, more where neighbours are stored side by side and one request
    /// can fetch them together.
    fn chunk_read_batch(&self) -> usize {
        1
    }

    /// Reads chunks (small stored contents) whole and verified, as
    /// [`read_whole`](Self::read_whole) each: `None` for one not stored.
    async fn read_chunks(&self, chunks: &[ChunkRef]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            out.push(self.read_whole(&c.hash, u64::from(c.size)).await?);
        }
        Ok(out)
    }

    /// Reads small stored content (a chunk of larger content) whole and
    /// verified: `None` when it is not stored, `DATA_LOSS` when it was
    /// found damaged (and set aside). A blocking backend does it in one
    /// trip.
    async fn read_whole(&self, hash: &ContentHash, size: u64) -> Result<Option<Vec<u8>>> {
        let Some(mut reader) = self.get(hash, size).await? else { return Ok(None) };
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(piece) = reader.next_chunk(usize::try_from(size).unwrap_or(usize::MAX).max(1)).await? {
            out.extend_from_slice(&piece);
        }
        Ok(Some(out))
    }

    /// The stored size of content `hash`, if it is stored (and not set
    /// aside as damaged).
    async fn head(&self, hash: &ContentHash) -> Result<Option<u64>>;

    /// Removes content (and a damaged copy of it); absent content is fine.
    async fn delete(&self, hash: &ContentHash) -> Result<()>;

    /// Every stored content, damaged copies included: what a sweep of
    /// unreferenced content walks.
    async fn list(&self) -> Result<Vec<ContentHash>>;

    /// How many contents are stored, and their total size in bytes (damaged
    /// copies set aside not included). May walk the whole store.
    async fn usage(&self) -> Result<(u64, u64)>;

    /// Makes content put in place as [`Durability::Pending`] durable:
    /// `hashes` names each such content (for content received as chunks,
    /// its chunks too), though a store may make more durable.
    async fn ensure_durable(&self, hashes: &[ContentHash]) -> Result<()>;

    /// Whether [`ContentStore::ensure_durable`] costs each content requests
    /// of its own, which run side by side (a bucket), rather than one sync
    /// for everything pending (a local folder). Then each put waits for its
    /// own content before it queues for the group commit, instead of the
    /// group waiting for all of it under the writer lock.
    fn durable_each(&self) -> bool {
        false
    }

    /// Removes what the store keeps beside its contents that no content
    /// needs any more (the bucket's packs no content points into); the
    /// journal's sweep calls it after removing unreferenced content.
    async fn collect_garbage(&self) -> Result<()> {
        Ok(())
    }

    /// Reads all of content `hash` and checks it against its name (and
    /// `size`); damaged content is set aside.
    async fn verify(&self, hash: &ContentHash, size: u64) -> Result<Verdict>;

    /// The size of stored content `hash` once it was read whole and
    /// matched its name: `None` when it is not stored, or was found damaged
    /// (and set aside).
    async fn verified_size(&self, hash: &ContentHash) -> Result<Option<u64>>;

    /// Whether content `hash` was found damaged and no good copy has come
    /// since.
    async fn is_damaged(&self, hash: &ContentHash) -> Result<bool>;

    /// How many contents are set aside as damaged now, and how many were
    /// found damaged since the store was opened. Cheap: for status and
    /// metrics.
    fn damage_counts(&self) -> (u64, u64);

    /// Takes the damaged contents (hash, size) found since the last call,
    /// for a healer.
    fn take_found(&self) -> Vec<(ContentHash, u64)>;

    /// Resolves when damaged content was found since the last
    /// [`ContentStore::take_found`] (or will be).
    async fn found(&self);

    /// One round trip to where the content lives: `UNAVAILABLE` when it
    /// cannot be reached (a local folder always can).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// [`ContentStore::put_whole`] as an upload of one piece, unless a good
/// copy is stored already.
pub(crate) async fn put_whole_by_upload<S: ContentStore + ?Sized>(
    store: &S,
    hash: ContentHash,
    data: Vec<u8>,
) -> Result<Option<Durability>> {
    let size = data.len() as u64;
    if store.verified_size(&hash).await? == Some(size) {
        return Ok(None);
    }
    let mut upload = store.upload().await?;
    upload.write(data).await?;
    Ok(Some(upload.complete(hash, size).await?.place().await?))
}

/// Content being received. Dropped before `complete`, it leaves nothing.
#[async_trait]
pub(crate) trait ContentUpload: Send + Debug {
    /// Appends a chunk.
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()>;

    /// Checks what was written against the announced `hash` and `size`
    /// (`CONTENT_MISMATCH` otherwise, and nothing is kept): the content is
    /// staged, not yet visible.
    async fn complete(self: Box<Self>, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>>;

    /// Gives the upload up, leaving nothing once this returns (dropping it
    /// leaves nothing too, but may finish the cleanup in the background).
    async fn abort(self: Box<Self>) {}
}

/// Checked content waiting to be put in place. Dropped, it is discarded.
#[async_trait]
pub(crate) trait StagedContent: Send + Sync + Debug {
    /// The content's hash.
    fn hash(&self) -> ContentHash;

    /// Its chunk list, when it was received as chunks (each a content of
    /// its own, in place already; the journal stores the list with the
    /// entry that refers to it).
    fn recipe(&self) -> Option<&[ChunkRef]> {
        None
    }

    /// Up to `max` bytes of the content from its start (a link's target).
    async fn read_prefix(&self, max: u64) -> Result<Vec<u8>>;

    /// Makes the content visible under its hash. Stored content of the same
    /// hash that is good is kept; a damaged copy is replaced (healed).
    async fn place(self: Box<Self>) -> Result<Durability>;
}

/// A verified read of stored content: the last chunk is handed out only
/// once all of it hashed to its name; a mismatch sets the content aside
/// and ends the read with `DATA_LOSS`.
#[async_trait]
pub(crate) trait ContentReader: Send + Debug {
    /// The next chunk of at most `max` bytes, or `None` at the end.
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>>;
}
