//! The replica's side of replication: `syncstore.v1.Replication`. It checks
//! the primary's history and epoch, applies every change durably in
//! sequence order (content first, then metadata, as the primary does) and
//! acknowledges the highest seq it holds.

use std::{pin::Pin, sync::Arc};

use futures::FutureExt;

use syncstore::{
    ContentHash, Entry,
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
    error::{Error, Result},
    storage::{Change, Replicated, Store, What, lock_change_from_pb},
};

/// Most changes applied in one transaction.
const MAX_BATCH: usize = 256;

/// The `Replication` service of a replica (on a primary it refuses).
#[derive(Debug, Clone)]
pub struct ReplicationService {
    store: Store,
    gate: WriteGate,
    is_replica: bool,
    /// One primary stream at a time; a reconnecting primary waits for its
    /// previous stream to end.
    active: Arc<Mutex<()>>,
    /// Turned to NOT_SERVING while a full resync is being received.
    health: HealthReporter,
    shutdown: CancellationToken,
}

impl ReplicationService {
    pub fn new(
        store: Store,
        gate: WriteGate,
        is_replica: bool,
        health: HealthReporter,
        shutdown: CancellationToken,
    ) -> Self {
        Self { store, gate, is_replica, active: Arc::new(Mutex::new(())), health, shutdown }
    }

    /// Checks the primary's hello; adopts its history on a fresh replica.
    fn accept(&self, hello: &pb::ReplicaHello) -> Result<()> {
        let epoch = self.store.meta_u64("epoch")?;
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
            self.store.adopt_history(&hello.history_id)?;
            tracing::info!(history = %hello.history_id, "seeded: adopted the primary's history");
        }
        if hello.epoch > epoch {
            self.store.set_meta("epoch", &hello.epoch.to_string())?;
        }
        self.store.set_meta("primary_url", &hello.primary_url)?;
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
        let guard =
            tokio::time::timeout(std::time::Duration::from_secs(10), self.active.clone().lock_owned())
                .await
                .map_err(|_| Status::aborted("another replication stream is active"))?;
        let this = self.clone();
        let h = hello.clone();
        tokio::task::spawn_blocking(move || this.accept(&h)).await.map_err(Error::from)??;
        self.gate.refuse(
            syncstore::Reason::Replica,
            format!("this server is a replica: write to the primary at {}", hello.primary_url),
            Some(hello.primary_url.clone()),
        );

        let (tx, rx) = mpsc::channel(16);
        let ready = pb::ReplicaReady {
            history_id: self.store.history_id(),
            applied_seq: self.store.head(),
            epoch: self.store.meta_u64("epoch").map_err(Status::from)?,
        };
        tracing::info!(primary = %hello.primary_url, applied = ready.applied_seq, "primary connected");
        tx.send(Ok(response(replicate_response::Msg::Ready(ready)))).await.expect("receiver alive");
        let (store, shutdown, health) = (self.store.clone(), self.shutdown.clone(), self.health.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let result = tokio::select! {
                r = apply_stream(&store, &mut incoming, &tx, &health) => r,
                // Shutting down: end the stream (a change being applied is
                // on a blocking thread and completes).
                () = shutdown.cancelled() => Ok(()),
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

fn response(m: replicate_response::Msg) -> pb::ReplicateResponse {
    pb::ReplicateResponse { msg: Some(m) }
}

type Acks = mpsc::Sender<Result<pb::ReplicateResponse, Status>>;

/// Applies changes (and snapshots) as they arrive, acknowledging each.
async fn apply_stream(
    store: &Store,
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
                let first = receive_change(store, c, incoming).await?;
                let s = store.clone();
                let n = if snapshot.is_some() {
                    let Replicated { change, staged, content_gone } = first;
                    tokio::task::spawn_blocking(move || match &change.what {
                        What::File(entry) => s.snapshot_put(&change.namespace, entry, staged, content_gone),
                        What::Lock(lock) => s.snapshot_put_lock(&change.namespace, lock),
                        What::Unlock { .. } => Err(Error::invalid("an unlock in a snapshot")),
                    })
                    .await??;
                    1
                } else {
                    // Group commit: the changes that already arrived are
                    // applied in one transaction.
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match incoming.message().now_or_never() {
                            Some(Ok(Some(pb::ReplicateRequest {
                                msg: Some(replicate_request::Msg::Change(c)),
                            }))) => {
                                batch.push(receive_change(store, c, incoming).await?);
                            }
                            Some(Ok(Some(other))) => {
                                pending = Some(other);
                                break;
                            }
                            Some(Err(s)) => return Err(broken(s)),
                            Some(Ok(None)) | None => break,
                        }
                    }
                    let n = batch.len() as u64;
                    tokio::task::spawn_blocking(move || s.apply_replicated_batch(batch)).await??;
                    n
                };
                processed += n;
                if !send_ack(acks, store.head(), processed).await {
                    return Ok(());
                }
            }
            Some(replicate_request::Msg::SnapshotStart(s)) => {
                tracing::warn!(head = s.head_seq, "full resync from the primary");
                let st = store.clone();
                tokio::task::spawn_blocking(move || st.snapshot_begin()).await??;
                snapshot = Some(s.head_seq);
                set_health(health, ServingStatus::NotServing).await;
            }
            Some(replicate_request::Msg::SnapshotEnd(s)) => {
                if snapshot != Some(s.head_seq) {
                    return Err(Error::invalid("a snapshot end without its start"));
                }
                let st = store.clone();
                let head = s.head_seq;
                tokio::task::spawn_blocking(move || st.snapshot_end(head)).await??;
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
    c: pb::ReplicatedChange,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<Replicated> {
    use pb::change_event::Kind;
    if matches!(Kind::try_from(c.kind), Ok(Kind::Lock | Kind::Unlock)) {
        let lock = c.lock.ok_or_else(|| Error::invalid("a lock change without its lock"))?;
        let change = lock_change_from_pb(c.seq, c.namespace, c.kind, lock)?;
        return Ok(Replicated { change, staged: None, content_gone: false });
    }
    let entry = Entry::try_from(c.entry.ok_or_else(|| Error::invalid("a change without entry"))?)?;
    let staged = if c.content_follows { Some(receive_content(store, &entry, incoming).await?) } else { None };
    let change = Change { seq: c.seq, namespace: c.namespace, what: What::File(entry) };
    Ok(Replicated { change, staged, content_gone: !c.content_follows })
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

/// Receives a change's content (exactly its entry's size, in chunks) into a
/// verified, durable temp blob.
async fn receive_content(
    store: &Store,
    entry: &Entry,
    incoming: &mut Streaming<pb::ReplicateRequest>,
) -> Result<crate::storage::StagedBlob> {
    let content = entry.content.ok_or_else(|| Error::invalid("content for a tombstone"))?;
    let mut writer = store.blob_writer()?;
    let mut received = 0u64;
    while received < content.size {
        let chunk = match incoming.message().await.map_err(broken)? {
            Some(pb::ReplicateRequest { msg: Some(replicate_request::Msg::Chunk(c)) })
                if c.len() <= MAX_CHUNK =>
            {
                c
            }
            _ => return Err(Error::invalid(format!("the content of {} was cut short", entry.path))),
        };
        received += chunk.len() as u64;
        writer = tokio::task::spawn_blocking(move || writer.write(&chunk).map(|()| writer)).await??;
    }
    let hash: ContentHash = content.hash;
    tokio::task::spawn_blocking(move || writer.finish(hash, content.size)).await?
}

fn broken(s: Status) -> Error {
    Error::Unavailable(format!("the replication stream broke: {}", s.message()))
}
