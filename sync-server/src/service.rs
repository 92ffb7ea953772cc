//! `syncstore.v1.FileSync`: the gRPC face of the [`Store`](crate::storage::Store).

use std::{
    collections::HashMap,
    hash::Hash,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use syncstore::{
    Content, ContentHash, Entry, Reason, RelPath, limits,
    limits::{MAX_CHUNK, MAX_PATH_BYTES},
    pb::{self, download_response, file_sync_server::FileSync, upload_request},
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Access, Need, caller, principal};
use crate::{
    ServerMetrics,
    context::ServiceContext,
    error::{Error, Result, refusal},
    feed::{self, Item},
    replication::primary::ReplicationHandle,
    runs::{self, RunsReceiver},
    storage::{
        Actor, Change, ContentReader, Delete, LockRequest, PAGE_SIZE, Put, StagedContent, What, rules,
    },
    transfer::{self, ContentReceiver},
    wire,
};

/// Messages buffered per server stream before the producer waits.
const STREAM_BUFFER: usize = 16;
/// How long an upload waits for a free slot when [`UploadLimits::max_concurrent`]
/// uploads are already running, before it is refused with
/// `RESOURCE_EXHAUSTED`: long enough to ride out a burst of small files,
/// short enough that a client soon hears the server is saturated (it
/// retries the path later).
pub const UPLOAD_SLOT_WAIT: Duration = Duration::from_secs(2);

/// What uploads may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Longest wait for an upload's next message (the header included);
    /// a stream silent for longer is ended with `DEADLINE_EXCEEDED` and its
    /// temp file removed.
    pub idle_timeout: Duration,
    /// Slowest pace an upload may keep, in bytes a second: once
    /// `idle_timeout` has passed since it took its slot, the content
    /// received must keep up with this rate, or the upload is ended with
    /// `DEADLINE_EXCEEDED` (0: no minimum). Without it, a stream that sends
    /// a byte now and then would hold a slot for as long as it liked.
    pub min_rate: u64,
    /// Uploads received at once. Each holds a temp file, a writer task
    /// and a few buffered chunks (`transfer::RECEIVE_PIPELINE`).
    pub max_concurrent: usize,
    /// Uploads received at once for one namespace, so that one tenant
    /// cannot take every slot.
    pub per_namespace: usize,
    /// Uploads received at once over one connection, so that one
    /// connection cannot take all of its namespace's slots.
    pub per_connection: usize,
}

/// The `FileSync` service of one server.
#[derive(Debug, Clone)]
pub struct FileSyncService {
    ctx: ServiceContext,
    limits: UploadLimits,
    upload_slots: Arc<Semaphore>,
    namespace_slots: Arc<KeyedSlots<String>>,
    connection_slots: Arc<KeyedSlots<SocketAddr>>,
}

impl FileSyncService {
    /// The service over `ctx`, taking uploads within `limits`.
    pub fn new(ctx: ServiceContext, limits: UploadLimits) -> Self {
        Self {
            ctx,
            limits,
            upload_slots: Arc::new(Semaphore::new(limits.max_concurrent)),
            namespace_slots: KeyedSlots::new(limits.per_namespace),
            connection_slots: KeyedSlots::new(limits.per_connection),
        }
    }

    /// Counts a failed call by its code.
    fn counted<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        if let Err(s) = &r {
            self.ctx.metrics.error(s);
        }
        r
    }

    /// Refuses a write before anything is written while a sync-mode
    /// replica (failing on timeout) is known to be away.
    fn admit(&self) -> Result<()> {
        self.ctx.replication.as_ref().map_or(Ok(()), ReplicationHandle::admit)
    }

    /// An upload sent again that is committed already (see
    /// `storage/retry.rs`): its entry, once the replica holds it.
    async fn retried_put(&self, ns: &str, put: &Put) -> Result<Option<Change>> {
        let Some(entry) = self.ctx.store.committed_put(ns, put).await? else { return Ok(None) };
        self.answer_retry(ns, entry).await.map(Some)
    }

    /// A delete sent again that is committed already: its tombstone, once
    /// the replica holds it.
    async fn retried_delete(&self, ns: &str, del: &Delete) -> Result<Option<Change>> {
        let Some(entry) = self.ctx.store.committed_delete(ns, del).await? else { return Ok(None) };
        self.answer_retry(ns, entry).await.map(Some)
    }

    async fn answer_retry(&self, ns: &str, entry: Entry) -> Result<Change> {
        tracing::info!(path = %entry.path, version = entry.version, "the same write again: answering with its committed entry");
        self.replicated(entry.version).await?;
        // The note as kept (a plain one if retention removed it since).
        let point = crate::storage::Point::Version(entry.version);
        let note = match self.ctx.store.version_at(ns, &entry.path, &point).await {
            Ok(v) => v.note,
            Err(_) => crate::storage::VersionNote::plain(&entry, "", 0),
        };
        Ok(Change { seq: entry.version, namespace: ns.to_owned(), what: What::File(entry, note) })
    }

    /// See [`ServiceContext::replicated`].
    async fn replicated(&self, seq: u64) -> Result<()> {
        self.ctx.replicated(seq).await
    }

    /// Takes one of connection `peer`'s [`UploadLimits::per_connection`]
    /// upload slots (when the peer is known), one of namespace `ns`'s
    /// [`UploadLimits::per_namespace`], then one of the server's
    /// [`UploadLimits::max_concurrent`], waiting up to [`UPLOAD_SLOT_WAIT`]
    /// in all.
    async fn upload_slot(&self, ns: &str, peer: Option<SocketAddr>) -> Result<UploadSlot> {
        let deadline = Instant::now() + UPLOAD_SLOT_WAIT;
        let closed = |_| Error::Unavailable("the server is shutting down".into());
        let connection = match peer {
            Some(peer) => Some(
                tokio::time::timeout_at(deadline, self.connection_slots.acquire(peer))
                    .await
                    .map_err(|_elapsed| {
                        Error::ResourceExhausted(format!(
                            "this connection is already sending {} uploads, the most one connection may; \
                             try again once one of them is done",
                            self.limits.per_connection
                        ))
                    })?
                    .map_err(closed)?,
            ),
            None => None,
        };
        let namespace = tokio::time::timeout_at(deadline, self.namespace_slots.acquire(ns.to_owned()))
            .await
            .map_err(|_elapsed| {
                Error::ResourceExhausted(format!(
                    "this namespace is already sending {} uploads, the most it may at once; try again later",
                    self.limits.per_namespace
                ))
            })?
            .map_err(closed)?;
        let server = tokio::time::timeout_at(deadline, self.upload_slots.clone().acquire_owned())
            .await
            .map_err(|_elapsed| {
                Error::ResourceExhausted(format!(
                    "the server is receiving as many uploads as it takes ({} at once); try again later",
                    self.limits.max_concurrent
                ))
            })?
            .map_err(closed)?;
        Ok(UploadSlot { _server: server, _namespace: namespace, _connection: connection })
    }

    /// The upload's next message, or `DEADLINE_EXCEEDED` once the client
    /// has been silent for [`UploadLimits::idle_timeout`] or fell behind
    /// [`UploadLimits::min_rate`] (see [`Pace`]).
    async fn next_message(
        &self,
        stream: &mut Streaming<pb::UploadRequest>,
        pace: &mut Pace,
    ) -> Result<Option<pb::UploadRequest>> {
        let (due, behind) = pace.due();
        match tokio::time::timeout_at(due, stream.message()).await {
            Ok(msg) => {
                pace.last = Instant::now();
                msg.map_err(aborted_by_client)
            }
            Err(_elapsed) if behind => Err(Error::DeadlineExceeded(format!(
                "the upload sent {} bytes in {}, below the minimum of {} bytes a second; giving up on it",
                pace.received,
                humantime::format_duration(Duration::from_millis(pace.started.elapsed().as_millis() as u64)),
                self.limits.min_rate
            ))),
            Err(_elapsed) => Err(Error::DeadlineExceeded(format!(
                "the upload sent nothing for {}; giving up on it",
                humantime::format_duration(self.limits.idle_timeout)
            ))),
        }
    }

    /// The one write path of Upload, Delete, Lock, RefreshLock and Unlock:
    /// the write gate, the request's own checks (`decode`), the retry of a
    /// write committed already, an upload's content, admission, the store
    /// operation, the replica's acknowledgement (sync mode), and then the
    /// metrics and the log line of the outcome.
    async fn write(
        &self,
        ns: &str,
        op: Op,
        decode: impl FnOnce() -> Result<Write>,
    ) -> Result<Change, Status> {
        let result = async {
            self.ctx.gate.check()?;
            // An upload holds its slot until it is committed (and
            // replicated) or refused, and its temp file gone.
            let (commit, _slot) = match decode()? {
                Write::Upload(upload) => match self.receive_upload(ns, *upload).await? {
                    Received::Again(change) => return Ok(change),
                    Received::Staged(commit, slot) => (commit, Some(slot)),
                },
                Write::Commit(Commit::Delete(del)) => match self.retried_delete(ns, &del).await? {
                    Some(change) => return Ok(change),
                    None => (Commit::Delete(del), None),
                },
                Write::Commit(commit) => (commit, None),
            };
            // For an upload: the replica may have gone while the content came.
            self.admit()?;
            let change = self.commit(ns, commit).await?;
            self.replicated(change.seq).await?;
            Ok(change)
        }
        .await;
        match result {
            Ok(change) => {
                self.written(op, &change);
                Ok(change)
            }
            Err(e) => Err(self.refused(op, e)),
        }
    }

    /// Runs a write's store operation.
    async fn commit(&self, ns: &str, commit: Commit) -> Result<Change> {
        let store = &self.ctx.store;
        match commit {
            Commit::Put(put, staged) => {
                let timer = self.ctx.metrics.commit_seconds.start_timer();
                let change = match staged {
                    Some(staged) => store.commit_put(ns, put, Some(staged)).await?,
                    // Header only: receive_upload found the content good.
                    None => store.commit_reused(ns, put).await?,
                };
                timer.observe_duration();
                Ok(change)
            }
            Commit::Delete(del) => store.commit_delete(ns, del).await,
            Commit::Lock(req) => store.lock(ns, req).await,
            Commit::RefreshLock { lock_id, who, ttl_seconds } => {
                store.refresh_lock(ns, &lock_id, &who, ttl_seconds).await
            }
            Commit::Unlock { lock_id, who, force } => store.unlock(ns, &lock_id, &who, force).await,
        }
    }

    /// Counts and logs a write that went through.
    fn written(&self, op: Op, change: &Change) {
        let metrics = &self.ctx.metrics;
        match (op, &change.what) {
            (Op::Upload, What::File(entry, _)) => {
                metrics.uploads.inc();
                metrics.upload_bytes.inc_by(entry.content.map_or(0, |c| c.size));
                tracing::info!(path = %entry.path, seq = entry.version, client = %entry.client_id, "stored");
            }
            (Op::Delete, What::File(entry, _)) => {
                metrics.deletes.inc();
                tracing::info!(path = %entry.path, seq = entry.version, client = %entry.client_id, "deleted");
            }
            (Op::Lock, What::Lock(lock)) => {
                tracing::info!(lock_id = %lock.lock_id, token = lock.token, expires = %syncstore::lock::format_ms(lock.expires_ms), "locked");
            }
            (Op::Unlock, What::Unlock { lock, ended, .. }) => {
                tracing::info!(path = %lock.path, ended = ?ended, "unlocked");
            }
            _ => {}
        }
    }

    /// Counts and logs a write refused (or failed), and says why to the
    /// caller.
    fn refused(&self, op: Op, e: Error) -> Status {
        tracing::info!(error = %e, "{} refused", op.as_str());
        let status = Status::from(e);
        self.ctx.metrics.error(&status);
        status
    }

    /// An upload's put, from its header: the header's own checks.
    fn decode_upload(&self, header: pb::UploadHeader, principal: String, content: Incoming) -> Result<Write> {
        check_header_fields(&header)?;
        let path = RelPath::new(header.path)?;
        let hash = ContentHash::try_from(&header.hash[..])?;
        let size = header.size;
        let base = match header.base_hash.is_empty() {
            true => None,
            false => Some(ContentHash::try_from(&header.base_hash[..])?),
        };
        // Only a hint (see `Put::moved_from`), but never an invalid path.
        let moved_from = match header.moved_from.is_empty() {
            true => None,
            false => Some(RelPath::new(header.moved_from)?),
        };
        if header.folder && (size != 0 || header.symlink) {
            return Err(Error::invalid(format!(
                "{path} is a folder: it has no content (size 0, not a link)"
            )));
        }
        if header.symlink && size > MAX_PATH_BYTES as u64 {
            return Err(Error::BadSymlink(format!(
                "{path} is a symbolic link with a {size}-byte target; the limit is {MAX_PATH_BYTES}"
            )));
        }
        if size > self.limits.max_file_size {
            return Err(Error::TooLarge(format!(
                "{path} is {size} bytes; this server takes files up to {} bytes",
                self.limits.max_file_size
            )));
        }
        let put = Put {
            path,
            content: Content {
                hash,
                size,
                mtime_ns: header.mtime_ns,
                executable: header.executable,
                symlink: header.symlink,
                folder: header.folder,
            },
            base_version: header.base_version,
            who: Actor::new(principal, header.client_id),
            lock_token: header.lock_token,
            moved_from,
        };
        Ok(Write::Upload(Box::new(Upload { put, base, content })))
    }

    /// Receives an upload's content once its pre-check passed: the put
    /// with its content staged, and the upload slot it holds; or, for the
    /// same upload sent again, its committed entry.
    async fn receive_upload(&self, ns: &str, upload: Upload) -> Result<Received> {
        let Upload { put, base, content: Incoming { mut stream, peer } } = upload;
        let (path, hash, size) = (put.path.clone(), put.content.hash, put.content.size);

        // Refuse a locked path, a path clash or a stale base before
        // receiving any content, from one read of the path; the commit
        // checks again under the writer lock.
        let folder = put.content.folder;
        let facts = self.ctx.store.path_facts(ns, &path, folder, Some(&hash)).await?;
        rules::check_write(&path, facts.lock.as_ref(), &put.who, put.lock_token, syncstore::lock::now_ms())?;
        rules::check_clash(&path, folder, facts.file_above.as_deref(), facts.live_below.as_deref())?;
        if let Err(conflict) = rules::check_base(&path, facts.entry.as_ref(), put.base_version) {
            return self.retried_put(ns, &put).await?.map(Received::Again).ok_or(conflict);
        }
        // Content sent as runs needs a base this namespace refers to and
        // whose chunk list the server keeps.
        let base = match base {
            Some(base) => Some(runs::upload_base(&self.ctx.store, ns, &path, &base).await?),
            None => None,
        };
        self.admit()?;

        // Only a header that passed its checks takes a slot: a stream that
        // sends none (or a bad one) holds nothing that others wait for.
        let slot = self.upload_slot(ns, peer).await?;
        let mut pace = Pace::new(&self.limits);

        let receiver = ContentReceiver::start(&self.ctx.store, size)?;
        let received = match base {
            Some(base) => {
                let runs = RunsReceiver::new(self.ctx.store.clone(), base, size, self.ctx.metrics.clone());
                // Never header-only: the runs say what the content is.
                self.receive_runs(&mut stream, runs, &receiver, &mut pace).await.map(|()| false)
            }
            None => {
                let chunks = self.receive_chunks(&mut stream, size, &receiver, &mut pace).await;
                chunks.map(|chunks| chunks == 0 && size > 0)
            }
        };
        let header_only = match received {
            Ok(header_only) => header_only,
            Err(e) => {
                // Nothing received is kept by the time the client hears why.
                receiver.abort().await;
                return Err(e);
            }
        };
        let staged = if header_only {
            // Header only: reuse content this namespace already refers to
            // (checked again at commit). Content of other namespaces is
            // never offered: reusing it would tell the caller it exists.
            // Content is named by its hash, so stored content of a
            // different size means the header is wrong.
            receiver.abort().await;
            if !facts.refers {
                return Err(Error::no_content(&hash));
            }
            match self.ctx.store.verified_size(&hash, size).await? {
                None => return Err(Error::no_content(&hash)),
                Some(stored) if stored != size => {
                    return Err(Error::ContentMismatch(format!(
                        "the header announced {size} bytes, but the content with hash {hash} is {stored} bytes"
                    )));
                }
                Some(_) => {}
            }
            None
        } else {
            Some(receiver.finish(hash, size).await?)
        };
        Ok(Received::Staged(Commit::Put(put, staged), slot))
    }
}

/// Which write call a write came through, as its log lines name it.
#[derive(Debug, Clone, Copy)]
enum Op {
    Upload,
    Delete,
    Lock,
    RefreshLock,
    Unlock,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Upload => "upload",
            Op::Delete => "delete",
            Op::Lock => "lock",
            Op::RefreshLock => "lock refresh",
            Op::Unlock => "unlock",
        }
    }
}

/// A write decoded from its request: an upload whose content is still to
/// come, or a store operation ready to run.
enum Write {
    Upload(Box<Upload>),
    Commit(Commit),
}

/// An upload whose header passed its own checks.
struct Upload {
    put: Put,
    /// The content it is sent against as runs, if any.
    base: Option<ContentHash>,
    content: Incoming,
}

/// Where an upload's content comes from.
struct Incoming {
    /// The call's stream, past the header.
    stream: Streaming<pb::UploadRequest>,
    /// The peer's address and port: they name its connection while it is open.
    peer: Option<SocketAddr>,
}

/// A store operation of the write path.
enum Commit {
    /// A put with its received content (`None`: a header-only upload of
    /// content already stored).
    Put(Put, Option<Box<dyn StagedContent>>),
    Delete(Delete),
    Lock(LockRequest),
    RefreshLock {
        lock_id: String,
        who: Actor,
        ttl_seconds: u32,
    },
    Unlock {
        lock_id: String,
        who: Actor,
        force: bool,
    },
}

/// What receiving an upload came to.
enum Received {
    /// Its content is staged; the slot is held until the write is done.
    Staged(Commit, UploadSlot),
    /// The same upload, committed already: its change.
    Again(Change),
}

impl FileSyncService {
    /// Receives an upload's chunks into `receiver` up to its end marker, checking
    /// each against the limits and the announced `size`; returns how many
    /// chunks came. A stream that ends without the end marker is refused:
    /// the client gave up or broke off, whatever it sent so far.
    async fn receive_chunks(
        &self,
        stream: &mut Streaming<pb::UploadRequest>,
        size: u64,
        receiver: &ContentReceiver,
        pace: &mut Pace,
    ) -> Result<u64> {
        let mut received = 0u64;
        let mut chunks = 0u64;
        loop {
            let Some(msg) = self.next_message(stream, pace).await? else {
                return Err(Error::UploadIncomplete(format!(
                    "the upload ended after {received} of {size} bytes without its end marker \
                     (UploadEnd); nothing was stored"
                )));
            };
            let chunk = match msg.msg {
                Some(upload_request::Msg::Chunk(c)) => c,
                Some(upload_request::Msg::End(_)) => break,
                Some(upload_request::Msg::Runs(_)) => {
                    return Err(Error::invalid(
                        "an upload sends runs only against the base its header names (base_hash)",
                    ));
                }
                _ => {
                    return Err(Error::invalid(
                        "after its header, an upload sends only chunks and then its end marker",
                    ));
                }
            };
            if chunk.len() > MAX_CHUNK {
                return Err(Error::invalid(format!(
                    "a chunk of {} bytes is over the {MAX_CHUNK}-byte limit",
                    chunk.len()
                )));
            }
            received += chunk.len() as u64;
            pace.received = received;
            chunks += 1;
            self.ctx.metrics.content_received_bytes.inc_by(chunk.len() as u64);
            if received > size {
                return Err(Error::invalid(format!(
                    "received more than the {size} bytes the header announced"
                )));
            }
            if !receiver.write(chunk).await {
                // The writer failed; finishing the content says why.
                return Ok(chunks);
            }
        }
        // The client closes its side right after the end marker.
        match self.next_message(stream, pace).await? {
            None => Ok(chunks),
            Some(_) => Err(Error::invalid("nothing may follow an upload's end marker")),
        }
    }
}

impl FileSyncService {
    /// Receives an upload sent as runs against its base up to its end
    /// marker ([`RunsReceiver`]), with the limits of a plain upload.
    async fn receive_runs(
        &self,
        stream: &mut Streaming<pb::UploadRequest>,
        mut runs: RunsReceiver,
        receiver: &ContentReceiver,
        pace: &mut Pace,
    ) -> Result<()> {
        let mut received = 0u64;
        loop {
            let Some(msg) = self.next_message(stream, pace).await? else {
                return Err(Error::UploadIncomplete(format!(
                    "the upload ended after {received} bytes without its end marker (UploadEnd); \
                     nothing was stored"
                )));
            };
            let written = match msg.msg {
                Some(upload_request::Msg::Runs(r)) => runs.runs(r, receiver).await?,
                Some(upload_request::Msg::Chunk(c)) => {
                    if c.len() > MAX_CHUNK {
                        return Err(Error::invalid(format!(
                            "a chunk of {} bytes is over the {MAX_CHUNK}-byte limit",
                            c.len()
                        )));
                    }
                    received += c.len() as u64;
                    runs.bytes(c, receiver).await?
                }
                Some(upload_request::Msg::End(_)) => {
                    runs.end()?;
                    break;
                }
                _ => {
                    return Err(Error::invalid(
                        "after its header, an upload against a base sends runs, their new chunks' bytes \
                         and then its end marker",
                    ));
                }
            };
            if !written {
                // The writer failed; finishing the content says why.
                return Ok(());
            }
            // Copying base chunks is progress too, and its time is not
            // the client's silence.
            pace.received = runs.rebuilt();
            pace.last = Instant::now();
        }
        match self.next_message(stream, pace).await? {
            None => Ok(()),
            Some(_) => Err(Error::invalid("nothing may follow an upload's end marker")),
        }
    }
}

/// When an upload's next message is due: within
/// [`UploadLimits::idle_timeout`] of the last one, and, once that long has
/// passed since the upload took its slot, soon enough that the content
/// received keeps up with [`UploadLimits::min_rate`]. A message is only
/// seen once whole (up to a 1 MiB chunk), hence the idle timeout's grace
/// before the rate counts.
#[derive(Debug)]
struct Pace {
    started: Instant,
    last: Instant,
    received: u64,
    idle: Duration,
    min_rate: u64,
}

impl Pace {
    fn new(limits: &UploadLimits) -> Self {
        let now = Instant::now();
        Self { started: now, last: now, received: 0, idle: limits.idle_timeout, min_rate: limits.min_rate }
    }

    /// When the next message is due, and whether it is the rate (not the
    /// silence) that sets that time.
    fn due(&self) -> (Instant, bool) {
        let silent = self.last + self.idle;
        if self.min_rate == 0 {
            return (silent, false);
        }
        let allowed = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        match (self.started + self.idle).checked_add(allowed) {
            Some(behind) if behind < silent => (behind, true),
            _ => (silent, false),
        }
    }
}

/// An upload's slots: the server's, its namespace's and its connection's.
/// Dropping it gives them all back.
#[derive(Debug)]
struct UploadSlot {
    _server: OwnedSemaphorePermit,
    _namespace: KeyedSlot<String>,
    _connection: Option<KeyedSlot<SocketAddr>>,
}

/// Slots by key (a namespace, a connection): `limit` per key, created on
/// first use and forgotten once nobody holds or waits for one, so that
/// keys that come and go (connections) do not pile up.
#[derive(Debug)]
struct KeyedSlots<K> {
    limit: usize,
    by_key: Mutex<HashMap<K, Arc<Semaphore>>>,
}

impl<K: Hash + Eq + Clone> KeyedSlots<K> {
    fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, by_key: Mutex::default() })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Semaphore>>> {
        self.by_key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for one of `key`'s slots. Dropping the future while it waits
    /// leaves nothing behind.
    async fn acquire(self: &Arc<Self>, key: K) -> Result<KeyedSlot<K>, tokio::sync::AcquireError> {
        let semaphore =
            self.map().entry(key.clone()).or_insert_with(|| Arc::new(Semaphore::new(self.limit))).clone();
        let mut slot = KeyedSlot { slots: self.clone(), key, semaphore: Some(semaphore), held: false };
        let semaphore = slot.semaphore.as_ref().expect("set above");
        // The permit is given back by hand (in `drop`), so that every use
        // of the semaphore ends under the map's lock.
        semaphore.acquire().await?.forget();
        slot.held = true;
        Ok(slot)
    }
}

/// One slot of a [`KeyedSlots`], or a wait for one.
#[derive(Debug)]
struct KeyedSlot<K: Hash + Eq> {
    slots: Arc<KeyedSlots<K>>,
    key: K,
    semaphore: Option<Arc<Semaphore>>,
    held: bool,
}

impl<K: Hash + Eq> Drop for KeyedSlot<K> {
    fn drop(&mut self) {
        let mut map = self.slots.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(semaphore) = self.semaphore.take() {
            if self.held {
                semaphore.add_permits(1);
            }
            drop(semaphore);
        }
        // Only the map's own handle left: nobody holds or waits for a slot.
        if map.get(&self.key).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(&self.key);
        }
    }
}

/// An error reading the upload stream: a message over the size limit is the
/// client's mistake; anything else means it cancelled or its stream broke.
fn aborted_by_client(status: Status) -> Error {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
            Error::invalid(format!("an upload message was refused: {}", status.message()))
        }
        _ => Error::Unavailable(format!("the upload stream broke: {}", status.message())),
    }
}

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl FileSync for FileSyncService {
    #[tracing::instrument(skip_all)]
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        let who = self.counted(caller(&request, Need::Write))?;
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        // An upload's request is its header, read before anything else.
        let header = match self.next_message(&mut stream, &mut Pace::new(&self.limits)).await {
            Ok(Some(pb::UploadRequest { msg: Some(upload_request::Msg::Header(h)) })) => h,
            Ok(_) => {
                let e = Error::invalid("the first message of an upload must be a header");
                return Err(self.refused(Op::Upload, e));
            }
            Err(e) => return Err(self.refused(Op::Upload, e)),
        };
        let content = Incoming { stream, peer };
        let change =
            self.write(&who.namespace, Op::Upload, || self.decode_upload(header, who.name, content)).await?;
        Ok(Response::new(pb::UploadResponse { entry: Some(change.into_entry().into()) }))
    }

    type DownloadStream = ServerStream<pb::DownloadResponse>;

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let ns = self.counted(caller(&request, Need::Read))?.namespace;
        let req = request.into_inner();
        let path = self.counted(RelPath::new(req.path).map_err(|e| Status::from(Error::from(e))))?;
        let have = match req.have_hash.is_empty() {
            true => None,
            false => Some(self.counted(
                ContentHash::try_from(&req.have_hash[..]).map_err(|e| Status::from(Error::from(e))),
            )?),
        };
        let s = &self.ctx.store;
        let found = async {
            let current = s.stat(&ns, &path).await?;
            let entry = match current {
                Some(e) if req.version == 0 || e.version == req.version => Some(e),
                _ if req.version != 0 => s.entry_at(&ns, &path, req.version).await?,
                other => other,
            };
            let Some(content) = entry.as_ref().and_then(|e| e.content) else {
                return Err(Error::NotFound(match req.version {
                    0 => format!("{path} does not exist"),
                    v => format!("{path} has no file at version {v}"),
                }));
            };
            if let Some(have) = &have
                && let Some(runs) = runs::download_runs(s, &ns, &path, &content, have).await?
            {
                return Ok((entry.expect("checked above"), Body::Runs(runs)));
            }
            let Some(reader) = s.content_reader(&content.hash, content.size).await? else {
                return Err(Error::NotFound(format!(
                    "the content of {path} at version {} is no longer kept",
                    entry.as_ref().map_or(0, |e| e.version)
                )));
            };
            Ok((entry.expect("checked above"), Body::Plain(reader)))
        }
        .await;
        let (entry, body) = self.counted(found.map_err(Status::from))?;
        self.ctx.metrics.downloads.inc();
        self.ctx.metrics.download_bytes.inc_by(entry.content.map_or(0, |c| c.size));

        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(send_file(self.ctx.store.clone(), entry, body, tx, self.ctx.metrics.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let who = self.counted(caller(&request, Need::Write))?;
        let req = request.into_inner();
        let change = self
            .write(&who.namespace, Op::Delete, || {
                field(limits::check_client_id(&req.client_id))?;
                Ok(Write::Commit(Commit::Delete(Delete {
                    path: RelPath::new(req.path)?,
                    base_version: req.base_version,
                    who: Actor::new(who.name, req.client_id),
                    lock_token: req.lock_token,
                })))
            })
            .await?;
        Ok(Response::new(pb::DeleteResponse { entry: Some(change.into_entry().into()) }))
    }

    type ListStream = ServerStream<pb::ListResponse>;

    #[tracing::instrument(skip_all)]
    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = self.counted(caller(&request, Need::Read))?.namespace;
        let req = request.into_inner();
        let prefix = req.prefix.trim_end_matches('/').to_owned();
        if !prefix.is_empty() {
            RelPath::new(prefix.as_str()).map_err(Error::from)?;
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        // Every page is read after this: the listing reflects every change
        // up to it (and maybe later ones), the seam with Subscribe.
        let head_seq = self.ctx.store.head();
        tokio::spawn(async move {
            if tx.send(Ok(pb::ListResponse { entry: None, head_seq, cursor: String::new() })).await.is_err() {
                return;
            }
            let mut after = Some(req.after).filter(|a| !a.is_empty());
            let mut left = match req.limit {
                0 => usize::MAX,
                n => n as usize,
            };
            loop {
                let want = PAGE_SIZE.min(left);
                let store = &this.ctx.store;
                let page = if req.one_level {
                    store.list_level(&ns, &prefix, after.as_deref(), req.include_deleted, want).await
                } else {
                    store.list_page(&ns, &prefix, after.as_deref(), req.include_deleted, want).await.map(
                        |page| {
                            page.into_iter()
                                .map(|e| {
                                    let cursor = e.path.as_str().to_owned();
                                    (e, cursor)
                                })
                                .collect()
                        },
                    )
                };
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let last = page.len() < want;
                left -= page.len();
                after = page.last().map(|(_, cursor)| cursor.clone());
                for (entry, cursor) in page {
                    let message = pb::ListResponse { entry: Some(entry.into()), head_seq, cursor };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // The caller went away.
                    }
                }
                if last || left == 0 {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn stat(&self, request: Request<pb::StatRequest>) -> Result<Response<pb::StatResponse>, Status> {
        let ns = self.counted(caller(&request, Need::Read))?.namespace;
        let path = RelPath::new(request.into_inner().path).map_err(Error::from)?;
        let entry = self
            .ctx
            .store
            .stat(&ns, &path)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{path} was never written")))?;
        Ok(Response::new(pb::StatResponse { entry: Some(entry.into()) }))
    }

    type SubscribeStream = ServerStream<pb::SubscribeResponse>;

    #[tracing::instrument(skip_all, fields(client = %request.get_ref().client_id, after = request.get_ref().after_seq))]
    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let who = self.counted(caller(&request, Need::Read))?;
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let req = request.into_inner();
        if !req.client_id.is_empty() {
            self.counted(field(limits::check_client_id(&req.client_id)).map_err(Status::from))?;
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (store, shutdown, auth) =
            (self.ctx.store.clone(), self.ctx.shutdown.clone(), self.ctx.auth.clone());
        let subscribers = self.ctx.metrics.subscribers.clone();
        let listed = self.ctx.subscribers.clone();
        tokio::spawn(async move {
            subscribers.inc();
            let entry = listed.add(
                crate::context::Subscriber {
                    client_id: req.client_id.clone(),
                    principal: who.name.clone(),
                    namespace: who.namespace.clone(),
                    connected_ms: crate::clock::now_ms(),
                    peer,
                },
                req.after_seq,
            );
            let cursor = entry.cursor.clone();
            tracing::debug!("subscriber connected");
            // Stop on server shutdown, or as soon as the subscriber leaves.
            let stop = shutdown.child_token();
            let gone = {
                let (tx, stop) = (tx.clone(), stop.clone());
                async move {
                    tx.closed().await;
                    stop.cancel();
                }
            };
            let watcher = tokio::spawn(gone);
            let follow = feed::follow(&store, req.after_seq, Some(&who.namespace), &stop, |item| {
                let tx = tx.clone();
                cursor.store(
                    match &item {
                        Item::Reset { head } => *head,
                        Item::Change(c) => c.seq,
                    },
                    std::sync::atomic::Ordering::Relaxed,
                );
                async move {
                    // Clients see file and lock changes only; history-only
                    // changes (labels, pins, retention, prunes) are the
                    // replica's.
                    if let Item::Change(c) = &item
                        && !c.for_clients()
                    {
                        return true;
                    }
                    tx.send(Ok(pb::SubscribeResponse { event: Some(event(item)) })).await.is_ok()
                }
            });
            let result = tokio::select! {
                r = follow => r.map_err(Status::from),
                () = auth.revoked(&who) => {
                    tracing::info!(token = %who.name, "ending a subscription: its token was removed");
                    Err(refusal(tonic::Code::Unauthenticated, Reason::Unauthenticated, "the token was removed"))
                }
            };
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
            }
            watcher.abort();
            drop(entry);
            subscribers.dec();
            tracing::debug!("subscriber gone");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn server_info(
        &self,
        request: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        // Any token may ask: a client learns here whom the server takes it for.
        let who = principal(&request)?;
        let (head, oldest) = (self.ctx.store.head(), self.ctx.store.oldest_seq().await?);
        // What the caller may do here: a server that refuses writes (a
        // replica) takes a read-write token's reads only.
        let access = match who.access {
            Access::ReadWrite if self.ctx.gate.check().is_err() => Access::ReadOnly,
            a => a,
        };
        Ok(Response::new(pb::ServerInfoResponse {
            history_id: self.ctx.store.history_id(),
            head_seq: head,
            oldest_seq: oldest,
            role: self.ctx.role.as_str().to_owned(),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            namespace: who.namespace,
            principal: who.name,
            access: access.as_str().to_owned(),
        }))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path, client = %request.get_ref().client_id))]
    async fn lock(&self, request: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        let who = self.counted(caller(&request, Need::Write))?;
        let req = request.into_inner();
        let change = self
            .write(&who.namespace, Op::Lock, || {
                check_lock_fields(&req)?;
                Ok(Write::Commit(Commit::Lock(LockRequest {
                    path: RelPath::new(req.path)?,
                    ttl_seconds: req.ttl_seconds,
                    note: req.note,
                    who: Actor::new(who.name, req.client_id),
                    holder: req.holder,
                })))
            })
            .await?;
        Ok(Response::new(pb::LockResponse { lock: wire::lock_info(&change) }))
    }

    #[tracing::instrument(skip_all, fields(lock_id = %request.get_ref().lock_id))]
    async fn refresh_lock(
        &self,
        request: Request<pb::RefreshLockRequest>,
    ) -> Result<Response<pb::RefreshLockResponse>, Status> {
        let who = self.counted(caller(&request, Need::Write))?;
        let req = request.into_inner();
        let change = self
            .write(&who.namespace, Op::RefreshLock, || {
                field(limits::check_lock_id(&req.lock_id))?;
                field(limits::check_client_id(&req.client_id))?;
                Ok(Write::Commit(Commit::RefreshLock {
                    lock_id: req.lock_id,
                    who: Actor::new(who.name, req.client_id),
                    ttl_seconds: req.ttl_seconds,
                }))
            })
            .await?;
        Ok(Response::new(pb::RefreshLockResponse { lock: wire::lock_info(&change) }))
    }

    #[tracing::instrument(skip_all, fields(lock_id = %request.get_ref().lock_id, client = %request.get_ref().client_id))]
    async fn unlock(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Result<Response<pb::UnlockResponse>, Status> {
        let who = self.counted(caller(&request, Need::Write))?;
        let req = request.into_inner();
        if req.force && !who.break_locks {
            let denied = refusal(
                tonic::Code::PermissionDenied,
                Reason::PermissionDenied,
                format!(
                    "the token {:?} may not break locks (unlock with force): that needs a token with the \
                     break-locks right (`sync-server token add --break-locks`)",
                    who.name
                ),
            );
            self.ctx.metrics.error(&denied);
            return Err(denied);
        }
        let change = self
            .write(&who.namespace, Op::Unlock, || {
                field(limits::check_lock_id(&req.lock_id))?;
                field(limits::check_client_id(&req.client_id))?;
                Ok(Write::Commit(Commit::Unlock {
                    lock_id: req.lock_id,
                    who: Actor::new(who.name, req.client_id),
                    force: req.force,
                }))
            })
            .await?;
        Ok(Response::new(pb::UnlockResponse { lock: wire::lock_info(&change) }))
    }

    type ListLocksStream = ServerStream<pb::ListLocksResponse>;

    async fn list_locks(
        &self,
        request: Request<pb::ListLocksRequest>,
    ) -> Result<Response<Self::ListLocksStream>, Status> {
        let ns = self.counted(caller(&request, Need::Read))?.namespace;
        let prefix = request.into_inner().prefix.trim_end_matches('/').to_owned();
        if !prefix.is_empty() {
            RelPath::new(prefix.as_str()).map_err(Error::from)?;
        }
        // One lock per message, read a page at a time: no number of locks
        // makes a message too large or fills the server's memory.
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        tokio::spawn(async move {
            let mut after: Option<String> = None;
            loop {
                let page =
                    match this.ctx.store.list_locks_page(&ns, &prefix, after.as_deref(), PAGE_SIZE).await {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                let last = page.len() < PAGE_SIZE;
                after = page.last().map(|l| l.path.as_str().to_owned());
                for lock in page {
                    if tx.send(Ok(pb::ListLocksResponse { lock: Some(lock.into()) })).await.is_err() {
                        return; // The caller went away.
                    }
                }
                if last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A field out of its bounds (see [`syncstore::limits`]).
fn field(checked: Result<(), String>) -> Result<()> {
    checked.map_err(Error::InvalidField)
}

/// The bounded fields of an upload's header (the path, hash and size are
/// checked on their own; a link's target once it has arrived).
pub(crate) fn check_header_fields(header: &pb::UploadHeader) -> Result<()> {
    field(limits::check_client_id(&header.client_id))
}

/// The bounded fields of a lock request (the path is checked on its own).
pub(crate) fn check_lock_fields(req: &pb::LockRequest) -> Result<()> {
    field(limits::check_client_id(&req.client_id))?;
    field(limits::check_holder(&req.holder))?;
    field(limits::check_note(&req.note))
}

fn event(item: Item) -> pb::ChangeEvent {
    match item {
        Item::Reset { head } => {
            pb::ChangeEvent { seq: head, kind: pb::change_event::Kind::Reset.into(), ..Default::default() }
        }
        Item::Change(change) => wire::event(&change),
    }
}

/// What a download sends after its entry.
enum Body {
    /// The whole content, read verified.
    Plain(Box<dyn ContentReader>),
    /// Runs against the client's copy, with the new chunks' bytes.
    Runs(Vec<syncstore::chunks::Run>),
}

/// Sends a download's entry and then its content, verified as it is read
/// ([`transfer::send_content`]): damaged content ends the stream with
/// `DATA_LOSS` before its last chunk, so a client never gets it whole.
async fn send_file(
    store: crate::storage::Store,
    entry: Entry,
    body: Body,
    tx: mpsc::Sender<Result<pb::DownloadResponse, Status>>,
    metrics: ServerMetrics,
) {
    let first = pb::DownloadResponse { msg: Some(download_response::Msg::Entry(entry.into())) };
    if tx.send(Ok(first)).await.is_err() {
        return;
    }
    let sent = match body {
        Body::Plain(reader) => {
            let counter = metrics.content_sent_bytes.clone();
            let chunk = move |c: Vec<u8>| {
                counter.inc_by(c.len() as u64);
                Ok(pb::DownloadResponse { msg: Some(download_response::Msg::Chunk(c)) })
            };
            transfer::send_content(reader, tx.clone(), chunk).await
        }
        Body::Runs(runs) => runs::send_runs(&store, runs, &tx, &metrics).await,
    };
    if let Err(e) = sent {
        let status = Status::from(e);
        metrics.error(&status);
        let _ = tx.send(Err(status)).await;
    }
}

#[cfg(test)]
mod tests {
    //! Whatever the server accepts fits in every message it sends for it.

    use std::sync::atomic::{AtomicU64, Ordering};

    use proptest::{prelude::*, test_runner::TestRunner};
    use prost::Message;
    use syncstore::limits::{MAX_ERROR_MESSAGE_BYTES, MAX_MESSAGE};

    use super::*;
    use crate::storage::{LockEnd, Store, StoreOptions};

    /// Strings of lengths around every bound and far beyond, in 1-, 2- and
    /// 4-byte characters, sometimes with a control character.
    fn text() -> impl Strategy<Value = String> {
        let len = prop_oneof![
            1 => 0..300usize,
            1 => 1000..1100usize,
            1 => 2000..2100usize,
            1 => 4090..4200usize,
            3 => Just(MAX_MESSAGE),
        ];
        let unit = prop_oneof![Just("a"), Just("é"), Just("😀"), Just("a/"), Just("\n"), Just("\0")];
        (len, unit).prop_map(|(n, u)| u.repeat(n / u.len() + 1).chars().take(n).collect())
    }

    #[derive(Debug, Clone)]
    struct Input {
        path: String,
        client_id: String,
        target: String,
        holder: String,
        note: String,
    }

    /// Valid paths up to the longest, in 2-byte characters.
    fn long_path() -> impl Strategy<Value = String> {
        (1..=16usize, 1..=127usize).prop_map(|(k, n)| {
            let name = "é".repeat(n);
            let mut p = vec![name.as_str(); k].join("/");
            p.truncate(p.floor_char_boundary(syncstore::limits::MAX_PATH_BYTES));
            p.trim_end_matches('/').to_owned()
        })
    }

    /// Valid text of up to `max` bytes, in 1-, 2- and 4-byte characters.
    fn valid(max: usize) -> impl Strategy<Value = String> {
        (1..=max, prop_oneof![Just('a'), Just('é'), Just('😀')])
            .prop_map(|(n, c)| std::iter::repeat_n(c, n / c.len_utf8()).collect())
    }

    fn input() -> impl Strategy<Value = Input> {
        use syncstore::limits::{MAX_CLIENT_ID_BYTES, MAX_HOLDER_BYTES, MAX_NOTE_BYTES, MAX_PATH_BYTES};
        let path = prop_oneof![text(), long_path()];
        let client_id = prop_oneof![text(), valid(MAX_CLIENT_ID_BYTES)];
        let target = prop_oneof![text(), valid(MAX_PATH_BYTES)];
        let holder = prop_oneof![text(), valid(MAX_HOLDER_BYTES)];
        let note = prop_oneof![text(), valid(MAX_NOTE_BYTES)];
        (path, client_id, target, holder, note).prop_map(|(path, client_id, target, holder, note)| Input {
            path,
            client_id,
            target,
            holder,
            note,
        })
    }

    /// The largest a message may be: a bound every peer accepts.
    fn fits(what: &str, m: &impl Message) -> Result<(), TestCaseError> {
        let len = m.encoded_len();
        prop_assert!(len <= MAX_MESSAGE, "{what} is {len} bytes; the limit is {MAX_MESSAGE}");
        Ok(())
    }

    fn replicated(change: &Change) -> pb::ReplicateRequest {
        let header = pb::ReplicatedChange {
            seq: change.seq,
            namespace: change.namespace.clone(),
            entry: change.entry().map(|e| e.clone().into()),
            content_follows: change.entry().is_some(),
            kind: wire::kind(change).into(),
            lock: wire::lock_info(change),
            content_lost: false,
            // At its largest: a file's content sent against a base.
            runs_base: change.entry().map(|_| vec![0; 32]).unwrap_or_default(),
            by_list: change.entry().is_some(),
            ..Default::default()
        };
        let header = match change.note() {
            Some(note) => wire::with_note(header, note),
            None => header,
        };
        pb::ReplicateRequest { msg: Some(pb::replicate_request::Msg::Change(header)) }
    }

    /// Every message a change goes out in: its event, its replication, and
    /// (for a file) its listing, stat and admin manifest.
    fn every_message(change: &Change) -> Result<(), TestCaseError> {
        let event = pb::SubscribeResponse { event: Some(wire::event(change)) };
        fits("an event", &event)?;
        fits("a replicated change", &replicated(change))?;
        if let Some(entry) = change.entry() {
            let e: pb::FileEntry = entry.clone().into();
            fits(
                "a listing",
                &pb::ListResponse { entry: Some(e.clone()), head_seq: u64::MAX, cursor: e.path.clone() },
            )?;
            fits("a stat", &pb::StatResponse { entry: Some(e.clone()) })?;
            fits("an upload's answer", &pb::UploadResponse { entry: Some(e.clone()) })?;
            fits(
                "a manifest entry",
                &pb::ManifestResponse { namespace: change.namespace.clone(), entry: Some(e) },
            )?;
        }
        if let Some(lock) = wire::lock_info(change) {
            fits("a lock listing", &pb::ListLocksResponse { lock: Some(lock.clone()) })?;
            fits("a lock's answer", &pb::LockResponse { lock: Some(lock.clone()) })?;
            fits("an unlock's answer", &pb::UnlockResponse { lock: Some(lock) })?;
        }
        Ok(())
    }

    /// A file `path` of `data`, written by client "c" over `base`.
    async fn put(store: &Store, path: &str, data: &[u8], base: u64) -> Change {
        let hash = ContentHash::of(data);
        let mut writer = store.upload(data.len() as u64).await.unwrap();
        writer.write(data.to_vec()).await.unwrap();
        let staged = writer.complete(hash, data.len() as u64).await.unwrap();
        let content = Content {
            hash,
            size: data.len() as u64,
            mtime_ns: 0,
            executable: false,
            symlink: false,
            folder: false,
        };
        let put = Put {
            path: RelPath::new(path).unwrap(),
            content,
            base_version: base,
            who: Actor::new("p", "c"),
            lock_token: 0,
            moved_from: None,
        };
        store.commit_put("ns", put, Some(staged)).await.unwrap()
    }

    #[tokio::test]
    async fn one_read_of_a_path_gives_the_pre_check_every_rule_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let path = |p: &str| RelPath::new(p).unwrap();
        let now = syncstore::lock::now_ms();

        // Nothing there yet: every rule passes a new file.
        let facts = store.path_facts("ns", &path("f"), false, None).await.unwrap();
        assert!(facts.entry.is_none() && facts.lock.is_none());
        assert!(rules::check_base(&path("f"), facts.entry.as_ref(), 0).is_ok());

        // The path's entry, for the base version check.
        let v = put(&store, "f", b"one", 0).await.seq;
        let facts = store.path_facts("ns", &path("f"), false, None).await.unwrap();
        assert_eq!(facts.entry.as_ref().map(|e| e.version), Some(v));
        assert!(matches!(
            rules::check_base(&path("f"), facts.entry.as_ref(), 0),
            Err(Error::VersionConflict { current, .. }) if current == v
        ));

        // Its lock row, for the write check: someone else's lock refuses.
        let lock = LockRequest {
            path: path("f"),
            ttl_seconds: 0,
            note: String::new(),
            who: Actor::new("p", "holder"),
            holder: String::new(),
        };
        store.lock("ns", lock).await.unwrap();
        let facts = store.path_facts("ns", &path("f"), false, None).await.unwrap();
        let other = Actor::new("p", "other");
        assert!(matches!(
            rules::check_write(&path("f"), facts.lock.as_ref(), &other, 0, now),
            Err(Error::Locked(_))
        ));

        // A live file above the path, and a live entry below it.
        let above = store.path_facts("ns", &path("f/g"), false, None).await.unwrap();
        assert_eq!(above.file_above.as_deref(), Some("f"));
        assert!(matches!(rules::check_clash(&path("f/g"), false, Some("f"), None), Err(Error::PathClash(_))));
        put(&store, "d/e", b"two", 0).await;
        let below = store.path_facts("ns", &path("d"), false, None).await.unwrap();
        assert_eq!((below.file_above, below.live_below.as_deref()), (None, Some("d/e")));
        // A folder entry holds what lies below it: not looked up.
        assert_eq!(store.path_facts("ns", &path("d"), true, None).await.unwrap().live_below, None);
        // Other namespaces are not seen.
        let elsewhere = store.path_facts("other", &path("f/g"), false, None).await.unwrap();
        assert!(elsewhere.file_above.is_none() && elsewhere.lock.is_none() && elsewhere.entry.is_none());

        // Given an upload's hash, the same read says whether the namespace
        // refers to that content (a header-only upload may reuse it), and
        // only for that namespace.
        let hash = ContentHash::of(b"two");
        assert!(store.path_facts("ns", &path("x"), false, Some(&hash)).await.unwrap().refers);
        assert!(!store.path_facts("other", &path("x"), false, Some(&hash)).await.unwrap().refers);
        assert!(!store.path_facts("ns", &path("x"), false, None).await.unwrap().refers);
    }

    #[test]
    fn whatever_the_server_accepts_fits_in_every_message_it_sends() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt.block_on(Store::open(dir.path(), StoreOptions::default())).unwrap();
        let case = AtomicU64::new(0);
        // The longest token name a principal can have is the operator's
        // choice, not a client's; a generous one here.
        let principal = "p".repeat(256);
        let mut runner = TestRunner::new(ProptestConfig { cases: 256, ..ProptestConfig::default() });
        runner
            .run(&input(), |i| {
                let ns = format!("ns{}", case.fetch_add(1, Ordering::Relaxed));
                let header = pb::UploadHeader { client_id: i.client_id.clone(), ..Default::default() };
                let Ok(path) = RelPath::new(i.path.clone()) else { return Ok(()) };
                if check_header_fields(&header).is_ok() {
                    // A link whose target is the client's text, when its
                    // target passes too.
                    let target = i.target.as_bytes();
                    let hash = ContentHash::of(target);
                    let staged = rt
                        .block_on(async {
                            let mut writer = store.upload(target.len() as u64).await?;
                            writer.write(target.to_vec()).await?;
                            writer.complete(hash, target.len() as u64).await
                        })
                        .unwrap();
                    let put = Put {
                        path: path.clone(),
                        content: Content {
                            hash,
                            size: target.len() as u64,
                            mtime_ns: i64::MIN,
                            executable: true,
                            symlink: true,
                            folder: false,
                        },
                        base_version: 0,
                        who: Actor::new(principal.clone(), i.client_id.clone()),
                        lock_token: 0,
                        moved_from: None,
                    };
                    if let Ok(change) = rt.block_on(store.commit_put(&ns, put, Some(staged))) {
                        every_message(&change)?;
                        let del = Delete {
                            path: path.clone(),
                            base_version: change.seq,
                            who: Actor::new(principal.clone(), i.client_id.clone()),
                            lock_token: 0,
                        };
                        every_message(&rt.block_on(store.commit_delete(&ns, del)).unwrap())?;
                    }
                }
                let req = pb::LockRequest {
                    path: path.to_string(),
                    ttl_seconds: 0,
                    note: i.note.clone(),
                    client_id: i.client_id.clone(),
                    holder: i.holder.clone(),
                };
                if check_lock_fields(&req).is_ok() {
                    let who = Actor::new(principal.clone(), i.client_id.clone());
                    let lock = LockRequest {
                        path,
                        ttl_seconds: 0,
                        note: i.note,
                        who: who.clone(),
                        holder: i.holder,
                    };
                    let granted = rt.block_on(store.lock(&ns, lock.clone())).unwrap();
                    every_message(&granted)?;
                    // Someone else is refused with a message that names the
                    // holder, short enough for a header.
                    let other = LockRequest { who: Actor::new(principal.clone(), "other"), ..lock };
                    let refused = Status::from(rt.block_on(store.lock(&ns, other)).unwrap_err());
                    prop_assert!(refused.message().len() <= MAX_ERROR_MESSAGE_BYTES);
                    let listed = rt.block_on(store.list_locks(&ns, "")).unwrap();
                    prop_assert_eq!(listed.len(), 1);
                    let lock_id = listed[0].lock_id.clone();
                    let breaker =
                        Actor::new(principal.clone(), "x".repeat(syncstore::limits::MAX_CLIENT_ID_BYTES));
                    let broken = rt.block_on(store.unlock(&ns, &lock_id, &breaker, true)).unwrap();
                    let is_broken =
                        matches!(broken.what, crate::storage::What::Unlock { ended: LockEnd::Broken, .. });
                    prop_assert!(is_broken);
                    every_message(&broken)?;
                }
                Ok(())
            })
            .unwrap();
    }
}
