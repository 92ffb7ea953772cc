//! The primary's side of replication: one task keeps a `Replicate` stream
//! open to the replica, sends it every change after the replica's position
//! (a full snapshot when that position is no longer in the log), and
//! publishes the replica's acknowledgements for sync-mode writes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use syncstore::connect::Credentials;
use syncstore::{
    limits::{MAX_CHUNK, MAX_MESSAGE},
    pb::{self, replicate_request, replicate_response, replication_client::ReplicationClient},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::{Mode, OnTimeout, ReplicaConfig, WriteGate};
use crate::{
    error::{Error, Result},
    feed::{self, Item},
    storage::{BlobReader, Change, PAGE_SIZE, Store, What},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages buffered toward the replica.
const SEND_BUFFER: usize = 16;
/// Changes sent but not yet handled by the replica. Bounds what waits in
/// buffers (HTTP/2 servers also refuse a flood of small unread frames).
const MAX_IN_FLIGHT: u64 = 64;

/// Shared view of the replication link, for writes and `Admin/Status`.
#[derive(Debug, Clone)]
pub struct ReplicationHandle {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ReplicaConfig,
    acked: watch::Sender<u64>,
    connected: AtomicBool,
    degraded: AtomicBool,
    /// When the oldest change the replica lacks was committed.
    behind_since: Mutex<Option<Instant>>,
}

impl ReplicationHandle {
    pub fn new(config: ReplicaConfig) -> Self {
        Self {
            inner: Arc::new(Shared {
                config,
                acked: watch::Sender::new(0),
                connected: AtomicBool::new(false),
                degraded: AtomicBool::new(false),
                behind_since: Mutex::new(None),
            }),
        }
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.inner.config
    }

    pub fn acked(&self) -> u64 {
        *self.inner.acked.borrow()
    }

    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub fn degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed)
    }

    /// Seconds since the oldest change the replica lacks was committed.
    pub fn lag_seconds(&self, head: u64) -> f64 {
        if self.acked() >= head {
            return 0.0;
        }
        let since = *self.inner.behind_since.lock().unwrap_or_else(|p| p.into_inner());
        since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Notes a commit: starts the lag clock if the replica was current.
    pub fn committed(&self, seq: u64) {
        let mut since = self.inner.behind_since.lock().unwrap_or_else(|p| p.into_inner());
        if since.is_none() && self.acked() < seq {
            *since = Some(Instant::now());
        }
    }

    fn ack(&self, seq: u64, head: u64) {
        self.inner.acked.send_if_modified(|a| {
            let moved = seq > *a;
            *a = (*a).max(seq);
            moved
        });
        if seq >= head {
            *self.inner.behind_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if self.inner.degraded.swap(false, Ordering::Relaxed) {
                tracing::warn!("replication restored: the replica caught up; writes wait for it again");
            }
        }
    }

    /// Waits, in sync mode, until the replica has change `seq` durably.
    pub async fn wait_replicated(&self, seq: u64) -> Result<()> {
        let config = &self.inner.config;
        if config.mode == Mode::Async || self.degraded() {
            return Ok(());
        }
        let mut acked = self.inner.acked.subscribe();
        match tokio::time::timeout(config.timeout, acked.wait_for(|a| *a >= seq)).await {
            Ok(_) => Ok(()),
            Err(_) => match config.on_timeout {
                OnTimeout::Fail => Err(Error::Unavailable(format!(
                    "change {seq} is committed on the primary but the replica did not confirm it within {:?}; \
                     it will be replicated when the replica is back",
                    config.timeout
                ))),
                OnTimeout::Degrade => {
                    if !self.inner.degraded.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            seq,
                            replica = %config.url,
                            "REPLICATION DEGRADED: the replica did not confirm within {:?}; \
                             acknowledging writes without it until it catches up",
                            config.timeout
                        );
                    }
                    Ok(())
                }
            },
        }
    }
}

/// Keeps the replica fed until `shutdown`, reconnecting with backoff.
pub async fn run(
    store: Store,
    handle: ReplicationHandle,
    gate: WriteGate,
    advertised: String,
    shutdown: CancellationToken,
) {
    let url = handle.config().url.clone();
    let security = &handle.config().security;
    let link = security.endpoint(&url).and_then(|e| Ok((e, security.credentials()?)));
    let (endpoint, credentials) = match link {
        Ok((e, c)) => (e.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true), c),
        Err(e) => {
            tracing::error!(%url, error = %e, "cannot set up the link to the replica; not replicating");
            return;
        }
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let connected_before = handle.acked();
        let session = stream_once(&store, &handle, &gate, &advertised, (&endpoint, &credentials), &shutdown);
        let result = tokio::select! {
            r = session => r,
            () = shutdown.cancelled() => return,
        };
        // A session that got anywhere resets the backoff.
        if handle.connected() || handle.acked() > connected_before {
            backoff = BACKOFF_MIN;
        }
        handle.inner.connected.store(false, Ordering::Relaxed);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(replica = %url, error = %e, "replication stream down; reconnecting");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One replication session: handshake, then changes until an error.
async fn stream_once(
    store: &Store,
    handle: &ReplicationHandle,
    gate: &WriteGate,
    advertised: &str,
    (endpoint, credentials): (&Endpoint, &Credentials),
    shutdown: &CancellationToken,
) -> Result<()> {
    let channel = endpoint.connect().await.map_err(|e| Error::Unavailable(format!("cannot connect: {e}")))?;
    let mut client = ReplicationClient::with_interceptor(channel, credentials.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel(SEND_BUFFER);
    let epoch = store.meta_u64("epoch")?;
    let hello = pb::ReplicaHello {
        history_id: store.history_id(),
        epoch,
        primary_url: advertised.to_owned(),
        head_seq: store.head(),
    };
    tx.send(msg(replicate_request::Msg::Hello(hello))).await.expect("receiver alive");
    let mut responses = match client.replicate(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            // Another primary took over, or the replica holds another history.
            gate.refuse(
                syncstore::Reason::Fenced,
                format!("the replica at {} refused this primary: {}", handle.config().url, s.message()),
                None,
            );
            return Err(Error::FailedPrecondition(s.message().to_owned()));
        }
        Err(s) => return Err(Error::Unavailable(s.to_string())),
    };
    let ready = match responses.message().await.map_err(|s| Error::Unavailable(s.to_string()))? {
        Some(pb::ReplicateResponse { msg: Some(replicate_response::Msg::Ready(r)) }) => r,
        _ => return Err(Error::Internal("the replica did not answer Ready".into())),
    };
    let head = store.head();
    if ready.applied_seq > head {
        let why = format!(
            "the replica at {} holds history {} up to change {}, but this primary only up to {head}: \
             re-seed this data folder from the replica (or start this server as a replica)",
            handle.config().url,
            ready.history_id,
            ready.applied_seq
        );
        gate.refuse(syncstore::Reason::Fenced, why.clone(), None);
        return Err(Error::FailedPrecondition(why));
    }
    gate.allow();
    handle.inner.connected.store(true, Ordering::Relaxed);
    handle.ack(ready.applied_seq, head);
    tracing::info!(replica = %handle.config().url, applied = ready.applied_seq, head, "replication stream up");

    // Acknowledgements come back on their own task.
    let (processed_tx, processed) = watch::channel(0u64);
    let acks = {
        let (handle, store) = (handle.clone(), store.clone());
        async move {
            while let Some(resp) = responses.message().await.map_err(|s| Error::Unavailable(s.to_string()))? {
                if let Some(replicate_response::Msg::Ack(ack)) = resp.msg {
                    handle.ack(ack.acked_seq, store.head());
                    let _ = processed_tx.send(ack.processed);
                }
            }
            Err::<(), _>(Error::Unavailable("the replica closed the stream".into()))
        }
    };
    let stop = shutdown.child_token();
    let window = Window { sent: Arc::new(std::sync::atomic::AtomicU64::new(0)), processed };
    let send = async {
        let failed = Arc::new(Mutex::new(None));
        feed::follow(store, ready.applied_seq, None, &stop, |item| {
            let (tx, store, failed, window) = (tx.clone(), store.clone(), failed.clone(), window.clone());
            async move {
                let sent = match item {
                    Item::Change(change) => send_change(&store, &tx, &window, *change).await,
                    Item::Reset { head } => send_snapshot(&store, &tx, &window, head).await,
                };
                match sent {
                    Ok(()) => true,
                    Err(e) => {
                        *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        false
                    }
                }
            }
        })
        .await?;
        let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        Err(failed.unwrap_or_else(|| Error::Unavailable("replication stopped".into())))
    };
    let result = tokio::select! {
        r = acks => r,
        r = send => r,
    };
    stop.cancel();
    result
}

fn msg(m: replicate_request::Msg) -> pb::ReplicateRequest {
    pb::ReplicateRequest { msg: Some(m) }
}

type Sender = mpsc::Sender<pb::ReplicateRequest>;

/// Counts changes sent on a stream against those the replica handled.
#[derive(Debug, Clone)]
struct Window {
    sent: Arc<std::sync::atomic::AtomicU64>,
    processed: watch::Receiver<u64>,
}

impl Window {
    /// Waits for room for one more change in flight, and takes it.
    async fn take(&self) -> Result<()> {
        let sent = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut processed = self.processed.clone();
        processed.wait_for(|p| sent <= p + MAX_IN_FLIGHT).await.map_err(|_| closed())?;
        Ok(())
    }
}

/// Sends one change and, for a live file whose content is still kept, the
/// content right after it.
async fn send_change(store: &Store, tx: &Sender, window: &Window, change: Change) -> Result<()> {
    window.take().await?;
    let (kind, lock) = (change.kind().into(), change.lock_pb());
    let Change { seq, namespace, what } = change;
    let What::File(entry) = what else {
        // A lock change: no content.
        let header = pb::ReplicatedChange { seq, namespace, entry: None, content_follows: false, kind, lock };
        return tx.send(msg(replicate_request::Msg::Change(header))).await.map_err(|_| closed());
    };
    // Replaced by a later change, which follows (`None`): send the
    // metadata. Damaged content is DATA_LOSS, never sent.
    let file = match entry.content {
        Some(c) => store.blob_reader(&c.hash, c.size)?,
        None => None,
    };
    let header = pb::ReplicatedChange {
        seq,
        namespace,
        entry: Some(entry.into()),
        content_follows: file.is_some(),
        kind,
        lock: None,
    };
    tx.send(msg(replicate_request::Msg::Change(header))).await.map_err(|_| closed())?;
    if let Some(reader) = file {
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || send_content(reader, &tx)).await??;
    }
    Ok(())
}

/// Sends content as it is read and verified: its last chunk goes only
/// once all of it matched its hash.
fn send_content(mut reader: BlobReader, tx: &Sender) -> Result<()> {
    while let Some(chunk) = reader.next_chunk(MAX_CHUNK)? {
        tx.blocking_send(msg(replicate_request::Msg::Chunk(chunk))).map_err(|_| closed())?;
    }
    Ok(())
}

/// Sends the whole manifest (all namespaces, tombstones included) with the
/// content of every live file, then the locks: the replica is behind the
/// kept log.
async fn send_snapshot(store: &Store, tx: &Sender, window: &Window, head: u64) -> Result<()> {
    tracing::warn!(head, "the replica is behind the kept change log: sending a full snapshot");
    tx.send(msg(replicate_request::Msg::SnapshotStart(pb::SnapshotStart { head_seq: head })))
        .await
        .map_err(|_| closed())?;
    let mut after: Option<(String, String)> = None;
    loop {
        let (s, a) = (store.clone(), after.clone());
        let page = tokio::task::spawn_blocking(move || {
            s.manifest_page(a.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE)
        })
        .await??;
        let done = page.len() < PAGE_SIZE;
        after = page.last().map(|(ns, e)| (ns.clone(), e.path.to_string()));
        for (namespace, entry) in page {
            send_change(store, tx, window, Change { seq: entry.version, namespace, what: What::File(entry) })
                .await?;
        }
        if done {
            break;
        }
    }
    // Then the locks, each as a lock change whose seq is its token.
    let s = store.clone();
    for (namespace, lock) in tokio::task::spawn_blocking(move || s.all_locks()).await?? {
        send_change(store, tx, window, Change { seq: lock.token, namespace, what: What::Lock(lock) }).await?;
    }
    tx.send(msg(replicate_request::Msg::SnapshotEnd(pb::SnapshotEnd { head_seq: head })))
        .await
        .map_err(|_| closed())?;
    Ok(())
}

fn closed() -> Error {
    Error::Unavailable("the replication stream closed".into())
}
