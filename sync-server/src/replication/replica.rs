//! The replica's side of replication: `syncstore.v1.Replication`. It checks
//! the primary's history and epoch, applies every change durably in
//! sequence order (content first, then metadata, as the primary does),
//! acknowledges the highest seq it holds, and sends heartbeats so that the
//! primary can tell a silent network from an idle link.
//!
//! Content sent as runs against the path's previous content is rebuilt
//! from this replica's own stored chunks of that content and the new
//! chunks' bytes ([`RunsReceiver`], as an Upload against a base), then cut
//! and checked whole like any received content. Content sent by its chunk
//! list is answered with the chunks this replica lacks (`ChunkWants`) and
//! rebuilt the same way, the chunks it holds as the base. A replica that cannot
//! rebuild it (no chunk list of the base, a base chunk missing or damaged,
//! a rebuilt whole that does not match) applies nothing of that change and
//! refuses the stream with `unknown-base`: the primary sends it again
//! plain.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::FutureExt;

use syncstore::{
    ContentHash, Entry,
    chunks::{ChunkRef, MAX_RUNS_PER_MESSAGE, Run},
    limits::MAX_CHUNK,
    pb::{self, replicate_request, replicate_response, replication_server::Replication},
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::WriteGate;
use crate::{
    Role, ServerMetrics,
    context::ServiceContext,
    error::{Error, Result},
    runs::RunsReceiver,
    storage::{Change, Replicated, Store, What},
    transfer::ContentReceiver,
    wire,
};

/// Most changes applied in one transaction.
const MAX_BATCH: usize = 256;
/// How often a replica tells its primary it is there (announced in
/// `ReplicaReady`), whatever it is doing: the primary takes a replica
/// silent for a few of these as gone.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a new stream waits for the one it replaces to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// Messages (acks, heartbeats) buffered toward the primary. The apply loop
/// sends one ack per batch and the heartbeats one a second, so this fills
/// only when the primary stops reading: then acks wait and heartbeats are
/// dropped.
const RESPONSE_BUFFER: usize = 16;

/// The `Replication` service of a replica (on a primary it refuses).
#[derive(Debug, Clone)]
pub struct ReplicationService {
    store: Store,
    gate: WriteGate,
    is_replica: bool,
    /// Counts the content bytes that came on the link, and those content
    /// sent as runs took from its base instead.
    metrics: ServerMetrics,
    /// One primary stream at a time; a reconnecting primary waits for its
    /// previous stream to end.
    active: Arc<Mutex<()>>,
    /// Ends the current stream: a primary reconnecting (after a network
    /// that went silent, say) replaces the stream it left behind.
    current: Arc<std::sync::Mutex<CancellationToken>>,
    /// Turned to NOT_SERVING while a full resync is being received.
    health: HealthReporter,
    shutdown: CancellationToken,
}

impl ReplicationService {
    /// The service over `ctx`, reporting a full resync through `health`.
    pub fn new(ctx: &ServiceContext, health: HealthReporter) -> Self {
        Self {
            store: ctx.store.clone(),
            gate: ctx.gate.clone(),
            is_replica: ctx.role == Role::Replica,
            metrics: ctx.metrics.clone(),
            active: Arc::new(Mutex::new(())),
            current: Arc::default(),
            health,
            shutdown: ctx.shutdown.clone(),
        }
    }

    /// Whether `hello` comes from the primary this replica follows (its
    /// history, its epoch or a newer one): only that one may replace the
    /// current stream.
    fn follows(&self, hello: &pb::ReplicaHello) -> bool {
        let id = self.store.identity();
        self.is_replica && hello.history_id == id.history_id && hello.epoch >= id.epoch
    }

    /// Checks the primary's hello; adopts its history on a fresh replica.
    async fn accept(&self, hello: &pb::ReplicaHello) -> Result<()> {
        let epoch = self.store.epoch();
        if !self.is_replica {
            return Err(Error::FailedPrecondition(format!(
                "this server is a primary (history {}, epoch {epoch}); it does not take a replication stream",
                self.store.history_id()
            )));
        }
        if hello.epoch < epoch {
            return Err(Error::FailedPrecondition(format!(
                "this replica follows epoch {epoch}; a primary of epoch {} is out of date",
                hello.epoch
            )));
        }
        if hello.history_id != self.store.history_id() {
            // Only a replica that holds nothing may take another history.
            self.store.adopt_history(&hello.history_id).await?;
            tracing::info!(history = %hello.history_id, "seeded: adopted the primary's history");
        }
        if hello.epoch > epoch {
            self.store.set_epoch(hello.epoch).await?;
        }
        self.store.set_primary_url(&hello.primary_url).await?;
        Ok(())
    }
}

/// The health-checked name of the file service.
const FILE_SYNC: &str = "syncstore.v1.FileSync";

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ReplicateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ReplicateStream = ResponseStream;

    #[tracing::instrument(skip_all)]
    async fn replicate(
        &self,
        request: Request<Streaming<pb::ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStream>, Status> {
        crate::auth::caller(&request, crate::auth::Need::Replication)?;
        let mut incoming = request.into_inner();
        let hello = match incoming.message().await? {
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Hello(h)) }) => h,
            _ => return Err(Error::invalid("a replication stream starts with a hello").into()),
        };
        if self.follows(&hello) {
            // The primary has one stream; one still open here is one it left.
            self.current.lock().unwrap_or_else(|p| p.into_inner()).cancel();
        }
        let guard = tokio::time::timeout(TAKEOVER_WAIT, self.active.clone().lock_owned())
            .await
            .map_err(|_| Status::aborted("another replication stream is active"))?;
        let stop = self.shutdown.child_token();
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = stop.clone();
        self.accept(&hello).await?;
        self.gate.refuse(
            syncstore::Reason::Replica,
            format!("this server is a replica: write to the primary at {}", hello.primary_url),
            Some(hello.primary_url.clone()),
        );

        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let ready = pb::ReplicaReady {
            history_id: self.store.history_id(),
            applied_seq: self.store.head(),
            epoch: self.store.epoch(),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u64,
            takes_chunks: true,
        };
        tracing::info!(primary = %hello.primary_url, applied = ready.applied_seq, "primary connected");
        tx.send(Ok(response(replicate_response::Msg::Ready(ready)))).await.expect("receiver alive");
        let (store, health, metrics) = (self.store.clone(), self.health.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let result = tokio::select! {
                r = apply_stream(&store, &metrics, &mut incoming, &tx, &health) => r,
                () = heartbeats(&tx) => Ok(()),
                // Shutting down, or replaced by a new stream: end this one
                // (a change being applied is a task of its own and
                // completes).
                () = stop.cancelled() => {
                    tracing::info!("the stream was replaced or the server is stopping; ending it");
                    Ok(())
                }
            };
            // An unfinished resync left the manifest as it was: still
            // consistent, so serving again.
            set_health(&health, ServingStatus::Serving).await;
            if let Err(e) = result {
                tracing::warn!(error = %e, "replication stream ended");
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Sends a heartbeat every [`HEARTBEAT_INTERVAL`] until the primary is
/// gone. A heartbeat that finds the queue full is dropped: the primary is
/// not reading, and its own silence check decides.
async fn heartbeats(tx: &Acks) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beat = response(replicate_response::Msg::Heartbeat(pb::ReplicaHeartbeat {}));
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(beat)) {
            return;
        }
    }
}

fn response(m: replicate_response::Msg) -> pb::ReplicateResponse {
    pb::ReplicateResponse { msg: Some(m) }
}

type Acks = mpsc::Sender<Result<pb::ReplicateResponse, Status>>;

/// Applies changes (and snapshots) as they arrive, acknowledging each.
async fn apply_stream(
    store: &Store,
    metrics: &ServerMetrics,
    incoming: &mut Streaming<pb::ReplicateRequest>,
    acks: &Acks,
    health: &HealthReporter,
) -> Result<()> {
    let mut snapshot: Option<u64> = None;
    let mut processed = 0u64;
    // A message read ahead while gathering a batch, handled next.
    let mut pending: Option<pb::ReplicateRequest> = None;
    loop {
        let req = match pending.take() {
            Some(req) => req,
            None => match incoming.message().await.map_err(broken)? {
                Some(req) => req,
                None => return Ok(()),
            },
        };
        match req.msg {
            Some(replicate_request::Msg::Change(c)) => {
                let first = receive_change(store, metrics, acks, c, incoming).await?;
                let n = if snapshot.is_some() {
                    let Replicated { change, staged, content_gone } = first;
                    match &change.what {
                        What::File(entry, _) => {
                            store.snapshot_put(&change.namespace, entry, staged, content_gone).await?
                        }
                        What::Lock(lock) => store.snapshot_put_lock(&change.namespace, lock).await?,
                        What::Unlock { .. } => return Err(Error::invalid("an unlock in a snapshot")),
                        What::History(_) => return Err(Error::invalid("a history change in a snapshot")),
                    }
                    1
                } else {
                    // Group commit: the changes that already arrived are
                    // applied in one transaction.
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match incoming.message().now_or_never() {
                            Some(Ok(Some(pb::ReplicateRequest {
                                msg: Some(replicate_request::Msg::Change(c)),
                            }))) if c.runs_base.is_empty() && !c.by_list => {
                                batch.push(receive_change(store, metrics, acks, c, incoming).await?);
                            }
                            // Content sent as runs or by its list may be
                            // rebuilt from content this batch brings: it
                            // starts the next batch, once this one is
                            // applied.
                            Some(Ok(Some(other))) => {
                                pending = Some(other);
                                break;
                            }
                            Some(Err(s)) => return Err(broken(s)),
                            Some(Ok(None)) | None => break,
                        }
                    }
                    let n = batch.len() as u64;
                    store.apply_replicated_batch(batch).await?;
                    n
                };
                processed += n;
                if !send_ack(acks, store.head(), processed).await {
                    return Ok(());
                }
            }
            Some(replicate_request::Msg::SnapshotStart(s)) => {
                tracing::warn!(head = s.head_seq, "full resync from the primary");
                store.snapshot_begin().await?;
                snapshot = Some(s.head_seq);
                set_health(health, ServingStatus::NotServing).await;
            }
            Some(replicate_request::Msg::SnapshotEnd(s)) => {
                if snapshot != Some(s.head_seq) {
                    return Err(Error::invalid("a snapshot end without its start"));
                }
                let head = s.head_seq;
                store.snapshot_end(head).await?;
                snapshot = None;
                set_health(health, ServingStatus::Serving).await;
                tracing::info!(head, "full resync complete");
                if !send_ack(acks, head, processed).await {
                    return Ok(());
                }
            }
            _ => return Err(Error::invalid("unexpected message in a replication stream")),
        }
    }
}

/// Receives one change message's entry and, if it follows, its content.
async fn receive_change(
    store: &Store,
    metrics: &ServerMetrics,
    acks: &Acks,
    c: pb::ReplicatedChange,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<Replicated> {
    use pb::change_event::Kind;
    if let Some(history) = c.history {
        let what = What::History(wire::history_from_pb(history)?);
        let change = Change { seq: c.seq, namespace: c.namespace, what };
        return Ok(Replicated { change, staged: None, content_gone: false });
    }
    if matches!(Kind::try_from(c.kind), Ok(Kind::Lock | Kind::Unlock)) {
        let lock = c.lock.ok_or_else(|| Error::invalid("a lock change without its lock"))?;
        let change = wire::lock_change(c.seq, c.namespace, c.kind, lock)?;
        return Ok(Replicated { change, staged: None, content_gone: false });
    }
    let entry = Entry::try_from(c.entry.clone().ok_or_else(|| Error::invalid("a change without entry"))?)?;
    let note = wire::note_of(&c, &entry)?;
    let received = match c.runs_base.is_empty() {
        _ if !c.content_follows => None,
        true if c.by_list => Some(receive_by_list(store, metrics, acks, c.seq, &entry, incoming).await?),
        true => Some(receive_content(store, metrics, &entry, incoming).await?),
        false => {
            let base = ContentHash::try_from(&c.runs_base[..])?;
            let Some(recipe) = store.recipe(&base).await? else {
                return Err(Error::UnknownBase(format!(
                    "cannot rebuild the content of {} against {base}: this replica keeps no chunk list \
                     of it; send it plain",
                    entry.path
                )));
            };
            let runs = Runs::Base(recipe.list);
            Some(receive_runs(store, metrics, &entry, runs, incoming).await?)
        }
    };
    let (staged, lost) = match received {
        Some(received) => match received {
            Received::Whole(staged) => (Some(staged), None),
            Received::Lost(why) => (None, Some(why)),
        },
        None => (None, c.content_lost.then(|| "missing".to_owned())),
    };
    if let (Some(why), Some(content)) = (lost, entry.content) {
        // The primary cannot supply it; the entry is applied all the same
        // so that what follows is not held up.
        let here = store.has_blob(&content.hash).await?;
        tracing::error!(
            seq = c.seq, namespace = %c.namespace, path = %entry.path, reason = %why, held_here = here,
            "content lost on the primary: applying the change without it"
        );
    }
    let change = Change { seq: c.seq, namespace: c.namespace, what: What::File(entry, note) };
    // Without content (a later change replaced it, or it is lost), the
    // entry goes in as it is.
    let content_gone = staged.is_none();
    Ok(Replicated { change, staged, content_gone })
}

/// Sets the health of the server as a whole ("") and of `FileSync`.
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(FILE_SYNC, status).await;
}

/// Reports progress; false once the primary has gone.
async fn send_ack(acks: &Acks, acked_seq: u64, processed: u64) -> bool {
    let ack = pb::ReplicaAck { acked_seq, processed };
    acks.send(Ok(response(replicate_response::Msg::Ack(ack)))).await.is_ok()
}

/// A change's content as received.
enum Received {
    /// Verified, in a durable temp blob.
    Whole(Box<dyn crate::storage::StagedContent>),
    /// The primary cut it short with `ContentLost`: nothing is kept.
    Lost(String),
}

/// Receives a change's content (exactly its entry's size, in chunks) into a
/// verified, durable temp blob.
async fn receive_content(
    store: &Store,
    metrics: &ServerMetrics,
    entry: &Entry,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<Received> {
    let content = entry.content.ok_or_else(|| Error::invalid("content for a tombstone"))?;
    // Dropping the receiver (an early return) removes its temp file.
    let receiver = ContentReceiver::start(store, content.size)?;
    let mut received = 0u64;
    while received < content.size {
        let chunk = match incoming.message().await.map_err(broken)? {
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Chunk(c)) })
                if c.len() <= MAX_CHUNK =>
            {
                c
            }
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::ContentLost(l)) }) => {
                receiver.abort().await;
                return Ok(Received::Lost(l.reason));
            }
            _ => return Err(Error::invalid(format!("the content of {} was cut short", entry.path))),
        };
        received += chunk.len() as u64;
        metrics.content_received_bytes.inc_by(chunk.len() as u64);
        if !receiver.write(chunk).await {
            break; // The writer failed; finishing says why.
        }
    }
    // (The primary holds the last chunk back until its copy checked out; a
    // copy found corrupt comes with `ContentLost` in its place, above.)
    let staged = receiver.finish(content.hash, content.size).await?;
    Ok(Received::Whole(staged))
}

/// How content sent against what a replica holds comes.
enum Runs {
    /// As runs against a base whose chunk list this is; the runs follow.
    Base(Vec<ChunkRef>),
    /// By its list: these runs against these chunks this replica holds;
    /// only the new chunks' bytes follow.
    Held { held: Vec<ChunkRef>, runs: Vec<Run> },
}

/// Receives a change's content sent by its chunk list: answers the chunks
/// this replica lacks, then rebuilds it from the others ([`receive_runs`]).
async fn receive_by_list(
    store: &Store,
    metrics: &ServerMetrics,
    acks: &Acks,
    seq: u64,
    entry: &Entry,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<Received> {
    let content = entry.content.ok_or_else(|| Error::invalid("content for a tombstone"))?;
    let list = match read_list(entry, content.size, incoming).await {
        Ok(Ok(list)) => list,
        Ok(Err(why)) => return Ok(Received::Lost(why)),
        // A list that does not describe the content: the content plain
        // settles it.
        Err(Error::Unavailable(why)) => return Err(Error::Unavailable(why)),
        Err(e) => {
            return Err(Error::UnknownBase(format!(
                "cannot rebuild the content of {} from its chunk list: {e}; send it plain",
                entry.path
            )));
        }
    };
    // Each chunk held here is read and checked as it is copied: one found
    // missing or damaged then makes this replica refuse the content.
    let (mut held, mut runs, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    let mut index = std::collections::HashMap::new();
    for (i, c) in list.iter().enumerate() {
        let at = match index.get(&c.hash) {
            Some(at) => Some(*at),
            None if store.has_blob(&c.hash).await? => {
                let at = held.len() as u32;
                held.push(*c);
                index.insert(c.hash, at);
                Some(at)
            }
            None => None,
        };
        match (at, runs.last_mut()) {
            (Some(at), Some(Run::Base { first, count })) if *first + *count == at => *count += 1,
            (Some(at), _) => runs.push(Run::Base { first: at, count: 1 }),
            (None, _) => {
                missing.push(i as u32);
                runs.push(Run::New(*c));
            }
        }
    }
    let wants = pb::ChunkWants { seq, missing };
    if acks.send(Ok(response(replicate_response::Msg::Wants(wants)))).await.is_err() {
        return Err(Error::Unavailable("the primary has gone".into()));
    }
    receive_runs(store, metrics, entry, Runs::Held { held, runs }, incoming).await
}

/// Reads a chunk list adding up to `size` bytes (of `entry`'s content), or
/// the reason the primary cut it short (`ContentLost`).
async fn read_list(
    entry: &Entry,
    size: u64,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<std::result::Result<Vec<ChunkRef>, String>> {
    let mut list = Vec::new();
    let mut listed = 0u64;
    while listed < size {
        let runs = match incoming.message().await.map_err(broken)? {
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Runs(r)) })
                if r.runs.len() <= MAX_RUNS_PER_MESSAGE =>
            {
                r.runs
            }
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::ContentLost(l)) }) => {
                return Ok(Err(l.reason));
            }
            _ => return Err(Error::invalid(format!("the chunk list of {} was cut short", entry.path))),
        };
        for run in runs {
            let Run::New(c) = Run::try_from(run)? else {
                return Err(Error::invalid("a chunk list names base chunks"));
            };
            listed += u64::from(c.size);
            list.push(c);
        }
    }
    if listed != size {
        return Err(Error::invalid(format!(
            "the chunk list of {} adds up to {listed} bytes, not {size}",
            entry.path
        )));
    }
    Ok(Ok(list))
}

/// Receives a change's content sent against what this replica holds,
/// rebuilt from its stored chunks and the new chunks' bytes, into a
/// verified, durable temp blob. `UNKNOWN_BASE` when it cannot be rebuilt
/// here; nothing is kept then.
async fn receive_runs(
    store: &Store,
    metrics: &ServerMetrics,
    entry: &Entry,
    how: Runs,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<Received> {
    let content = entry.content.ok_or_else(|| Error::invalid("content for a tombstone"))?;
    let unknown = |why: String| {
        Error::UnknownBase(format!(
            "cannot rebuild the content of {} from what this replica holds: {why}; send it plain",
            entry.path
        ))
    };
    let (base, mut known) = match how {
        Runs::Base(list) => (list, None),
        Runs::Held { held, runs } => (held, Some(Known::new(runs))),
    };
    // Dropping the receiver (an early return) removes its temp file.
    let receiver = ContentReceiver::start(store, content.size)?;
    let mut runs = RunsReceiver::new(store.clone(), base, content.size, metrics.clone());
    let rebuilt = async {
        if let Some(known) = &mut known
            && !known.feed(&mut runs, &receiver).await?
        {
            return Ok(None);
        }
        while !runs.complete() {
            let written = match incoming.message().await.map_err(broken)? {
                Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Runs(r)) })
                    if known.is_none() =>
                {
                    runs.runs(r, &receiver).await?
                }
                Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Chunk(c)) })
                    if c.len() <= MAX_CHUNK =>
                {
                    match &mut known {
                        Some(known) => known.bytes(c, &mut runs, &receiver).await?,
                        None => runs.bytes(c, &receiver).await?,
                    }
                }
                Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::ContentLost(l)) }) => {
                    return Ok(Some(l.reason));
                }
                _ => return Err(Error::invalid(format!("the content of {} was cut short", entry.path))),
            };
            if !written {
                break; // The writer failed; finishing says why.
            }
        }
        Ok(None)
    };
    // A base chunk missing or damaged here, runs that do not fit this
    // replica's list of the base, a whole that does not match (a base cut
    // otherwise): whatever the cause, the content plain settles it, so the
    // primary is told to send it so rather than retry the same runs.
    let base_failed = |e: Error| match e {
        Error::UnknownBase(why)
        | Error::DataLoss(why)
        | Error::ContentMismatch(why)
        | Error::InvalidArgument(why) => unknown(why),
        e => e,
    };
    // Whatever ends it early, the new chunks it wrote go before the
    // primary hears why.
    match rebuilt.await {
        Ok(None) => {}
        Ok(Some(why)) => {
            receiver.abort().await;
            return Ok(Received::Lost(why));
        }
        Err(e) => {
            receiver.abort().await;
            return Err(base_failed(e));
        }
    }
    let staged = receiver.finish(content.hash, content.size).await.map_err(base_failed)?;
    Ok(Received::Whole(staged))
}

/// Runs this replica made itself (from a chunk list), fed to a
/// [`RunsReceiver`] a message's worth at a time, the new chunks' bytes cut
/// at the end of each message's worth.
struct Known {
    /// Runs not fed yet, in order.
    rest: std::collections::VecDeque<Run>,
    /// Bytes of new chunks the runs fed so far still wait for.
    due: u64,
}

impl Known {
    fn new(runs: Vec<Run>) -> Self {
        Self { rest: runs.into(), due: 0 }
    }

    /// Feeds runs until some wait for bytes or none are left. False once
    /// the receiver's writer has failed.
    async fn feed(&mut self, runs: &mut RunsReceiver, receiver: &ContentReceiver) -> Result<bool> {
        while self.due == 0 && !self.rest.is_empty() {
            let n = self.rest.len().min(MAX_RUNS_PER_MESSAGE);
            let batch: Vec<Run> = self.rest.drain(..n).collect();
            self.due = batch.iter().map(|r| if let Run::New(c) = r { u64::from(c.size) } else { 0 }).sum();
            let message = pb::ChunkRuns { runs: batch.into_iter().map(pb::ChunkRun::from).collect() };
            if !runs.runs(message, receiver).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes new chunks' bytes from the wire. False once the receiver's
    /// writer has failed.
    async fn bytes(
        &mut self,
        mut data: Vec<u8>,
        runs: &mut RunsReceiver,
        receiver: &ContentReceiver,
    ) -> Result<bool> {
        while !data.is_empty() {
            if self.due == 0 {
                return Err(Error::invalid("more chunk bytes than the chunks this replica asked for"));
            }
            let rest = data.split_off(data.len().min(usize::try_from(self.due).unwrap_or(usize::MAX)));
            self.due -= data.len() as u64;
            if !runs.bytes(data, receiver).await? || !self.feed(runs, receiver).await? {
                return Ok(false);
            }
            data = rest;
        }
        Ok(true)
    }
}

fn broken(s: Status) -> Error {
    Error::Unavailable(format!("the replication stream broke: {}", s.message()))
}
