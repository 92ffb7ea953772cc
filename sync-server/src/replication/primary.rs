//! The primary's side of replication: one task keeps a `Replicate` stream
//! open to the replica, sends it every change after the replica's position
//! (a full snapshot when that position is no longer in the log), and
//! publishes the replica's acknowledgements for sync-mode writes.
//!
//! Content larger than one chunk that replaced the path's previous content
//! goes as runs against that content when the replica holds it
//! ([`delta_base`]); other content larger than one chunk goes by its chunk
//! list, the replica answering which chunks it lacks ([`by_list`]): either
//! way only the chunks it lacks cross the link. A replica that cannot
//! rebuild it refuses the stream with `unknown-base`; the changes sent so
//! far as runs or lists then go plain when they are sent again.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus::IntCounter;
use syncstore::connect::Credentials;
use syncstore::{
    Backoff, ContentHash, Reason,
    chunks::{ChunkRef, MAX_RUNS_PER_MESSAGE, Run, WHOLE_MAX},
    limits::MAX_MESSAGE,
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
    runs,
    storage::{Change, ContentReader, PAGE_SIZE, Store, VersionNote, What},
    transfer::{self, Sent},
    wire,
};

/// How long the TCP connection to the replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a stream may take, from connecting to the replica's
/// Ready: a replica (or a network) that accepts connections but answers
/// nothing must not hold the link forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First wait before reconnecting after a failed session. Each failed
/// session without progress doubles it, up to [`BACKOFF_MAX`], so that a
/// change the replica keeps refusing (its disk is full, say) is retried a
/// few times a minute, not ten times a second.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnection attempts: also the longest a replica
/// that comes back waits to be reconnected.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A session that stayed up this long was a working link, however it
/// ended: the backoff starts over.
const STABLE_SESSION: Duration = BACKOFF_MAX;
/// Heartbeat intervals a replica may miss before the primary takes it as
/// gone: with a replica's 1 s heartbeat, a silent network is noticed
/// within 3 s.
const MISSED_HEARTBEATS: u32 = 3;
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
    link: Mutex<Link>,
    metrics: ReplicationMetrics,
    /// The highest seq whose content went as runs or by its list.
    last_runs: std::sync::atomic::AtomicU64,
}

/// What the primary knows of its link, beyond the acknowledged seq.
#[derive(Debug, Default)]
struct Link {
    /// Whether a first attempt to open the stream has ended: until then
    /// the replica is not known to be away (the primary just started).
    tried: bool,
    /// When the current session's stream came up.
    up_since: Option<Instant>,
    /// When the oldest change the replica lacks was committed.
    behind_since: Option<Instant>,
    /// While the replica lacks changes: since when it has confirmed
    /// nothing (the later of the first missing commit and its last ack).
    waiting_since: Option<Instant>,
    /// Why the last session or attempt failed.
    error: String,
    /// The change the last session that was up failed on without getting
    /// past it (0: none): a second such failure makes it `blocked`. (One
    /// is a replica that restarted, or a network that went silent.)
    failed_at: u64,
    /// The change sessions keep failing on (0: none).
    blocked: u64,
    /// The last change sent without its content, and how many were.
    last_lost_seq: u64,
    last_lost: String,
    lost: u64,
    /// Changes up to this seq go with plain content: the replica refused a
    /// change sent as runs or by its list at or before it (it could not
    /// rebuild it from what it holds).
    plain_through: u64,
}

/// The link's counters, also exported as Prometheus metrics.
#[derive(Debug, Clone)]
pub struct ReplicationMetrics {
    /// Changes sent without their content (missing or corrupt here).
    pub lost: IntCounter,
    /// Attempts to open the replication stream.
    pub connect_attempts: IntCounter,
    /// Content bytes sent on the link: whole content, or the new chunks'
    /// bytes of content sent as runs against the replica's copy.
    pub content_sent: IntCounter,
}

impl Default for ReplicationMetrics {
    fn default() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            lost: counter("replication_lost_total", "Changes replicated without their content"),
            connect_attempts: counter(
                "replica_connect_attempts_total",
                "Attempts to open the replication stream",
            ),
            content_sent: counter(
                "replication_content_sent_bytes_total",
                "Content bytes sent to the replica (whole content, or only the new chunks of content \
                 sent as runs)",
            ),
        }
    }
}

/// The replication part of `Admin/Status`.
#[derive(Debug, Clone, Default)]
pub struct LinkStatus {
    pub blocked_seq: u64,
    pub error: String,
    pub lost: u64,
    pub last_lost: String,
    pub connect_attempts: u64,
}

impl ReplicationHandle {
    pub fn new(config: ReplicaConfig) -> Self {
        Self::with_metrics(config, ReplicationMetrics::default())
    }

    /// A handle counting into `metrics`.
    pub fn with_metrics(config: ReplicaConfig, metrics: ReplicationMetrics) -> Self {
        Self {
            inner: Arc::new(Shared {
                config,
                acked: watch::Sender::new(0),
                connected: AtomicBool::new(false),
                degraded: AtomicBool::new(false),
                link: Mutex::default(),
                metrics,
                last_runs: std::sync::atomic::AtomicU64::new(0),
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

    fn link(&self) -> MutexGuard<'_, Link> {
        self.inner.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Seconds since the oldest change the replica lacks was committed.
    pub fn lag_seconds(&self, head: u64) -> f64 {
        if self.acked() >= head {
            return 0.0;
        }
        self.link().behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// The link's state for `Admin/Status`.
    pub fn link_status(&self) -> LinkStatus {
        let link = self.link();
        LinkStatus {
            blocked_seq: link.blocked,
            error: if self.connected() && link.blocked == 0 { String::new() } else { link.error.clone() },
            lost: link.lost,
            last_lost: link.last_lost.clone(),
            connect_attempts: self.inner.metrics.connect_attempts.get(),
        }
    }

    /// Notes a commit: starts the lag clock if the replica was current.
    pub fn committed(&self, seq: u64) {
        let mut link = self.link();
        if self.acked() < seq {
            let now = Instant::now();
            link.behind_since.get_or_insert(now);
            link.waiting_since.get_or_insert(now);
        }
    }

    fn ack(&self, seq: u64, head: u64) {
        let moved = self.inner.acked.send_if_modified(|a| {
            let moved = seq > *a;
            *a = (*a).max(seq);
            moved
        });
        let mut link = self.link();
        if moved {
            link.failed_at = 0;
            if link.blocked != 0 && seq >= link.blocked {
                tracing::info!(seq = link.blocked, "replication got past the change it was stuck on");
                link.blocked = 0;
            }
        }
        if seq >= head {
            link.behind_since = None;
            link.waiting_since = None;
            if self.inner.degraded.swap(false, Ordering::Relaxed) {
                tracing::warn!("replication restored: the replica caught up; writes wait for it again");
            }
        } else if moved {
            link.waiting_since = Some(Instant::now());
        }
    }

    /// Why the replica is known to be away, if it is: the stream is down
    /// (after a first attempt), replication is stuck on a change, or the
    /// replica has confirmed nothing for the sync timeout while it lacks
    /// changes.
    fn away(&self) -> Option<String> {
        let link = self.link();
        if link.blocked != 0 {
            return Some(format!("does not get past change {} ({})", link.blocked, link.error));
        }
        if !self.connected() {
            return link.tried.then(|| format!("is not connected ({})", link.error));
        }
        let timeout = self.inner.config.timeout;
        match link.waiting_since {
            Some(t) if t.elapsed() > timeout => Some(format!(
                "has confirmed nothing for {} while changes wait for it",
                humantime::format_duration(Duration::from_millis(t.elapsed().as_millis() as u64))
            )),
            _ => None,
        }
    }

    /// Admits a write, or, in sync mode failing on timeout while the
    /// replica is known to be away, refuses it at once, before anything
    /// is written.
    pub fn admit(&self) -> Result<()> {
        let config = &self.inner.config;
        if config.mode != Mode::Sync || config.on_timeout != OnTimeout::Fail {
            return Ok(());
        }
        match self.away() {
            None => Ok(()),
            Some(why) => Err(Error::ReplicaUnavailable {
                replica: config.url.clone(),
                why: format!(
                    "the replica at {} {why}: this primary takes no writes until it is back \
                     (nothing was written; try again later)",
                    config.url
                ),
            }),
        }
    }

    /// Waits, in sync mode, until the replica has change `seq` durably.
    /// Gives up at once if the replica is known to be away, else after
    /// the timeout: with `Fail`, the write (committed here) is answered
    /// [`Error::Unconfirmed`]; with `Degrade`, it is acknowledged.
    pub async fn wait_replicated(&self, seq: u64) -> Result<()> {
        let config = &self.inner.config;
        if config.mode == Mode::Async || self.degraded() || self.acked() >= seq {
            return Ok(());
        }
        if let Some(why) = self.away() {
            return self.unconfirmed(seq, &why);
        }
        let mut acked = self.inner.acked.subscribe();
        match tokio::time::timeout(config.timeout, acked.wait_for(|a| *a >= seq)).await {
            Ok(_) => Ok(()),
            Err(_) => self.unconfirmed(
                seq,
                &format!("did not confirm it within {}", humantime::format_duration(config.timeout)),
            ),
        }
    }

    /// A sync-mode write the replica did not confirm: fail or degrade.
    fn unconfirmed(&self, seq: u64, why: &str) -> Result<()> {
        let config = &self.inner.config;
        match config.on_timeout {
            OnTimeout::Fail => Err(Error::Unconfirmed {
                replica: config.url.clone(),
                seq,
                why: format!(
                    "change {seq} is committed on the primary, but the replica at {} {why}; \
                     it reaches the replica when it is back (sending the same write again \
                     answers OK once the replica has it)",
                    config.url
                ),
            }),
            OnTimeout::Degrade => {
                if !self.inner.degraded.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        seq,
                        replica = %config.url,
                        "REPLICATION DEGRADED: the replica {why}; acknowledging writes without it \
                         until it catches up"
                    );
                }
                Ok(())
            }
        }
    }

    /// The stream is up.
    fn up(&self, applied: u64, head: u64) {
        {
            let mut link = self.link();
            let now = Instant::now();
            link.tried = true;
            link.up_since = Some(now);
            // What it confirms from now on counts, not the time it was away.
            if applied < head {
                link.waiting_since = Some(now);
            }
        }
        self.inner.connected.store(true, Ordering::Relaxed);
        self.ack(applied, head);
    }

    /// A session (or an attempt to open one) ended with `error`. Returns
    /// whether it was a working link (up long enough, or it got the replica
    /// further), which resets the backoff. Two sessions in a row that took
    /// the stream but got nowhere while changes wait are stuck on the next
    /// one: that is logged once per change, not at every retry.
    fn session_ended(&self, error: &Error, acked_before: u64, head: u64) -> bool {
        let was_connected = self.inner.connected.swap(false, Ordering::Relaxed);
        let replica = &self.inner.config.url;
        let acked = self.acked();
        let progressed = acked > acked_before;
        let mut link = self.link();
        let stable = link.up_since.take().is_some_and(|t| t.elapsed() >= STABLE_SESSION);
        let message = error.to_string();
        let stuck_at = (was_connected && !progressed && acked < head).then_some(acked + 1);
        if let Some(seq) = stuck_at.filter(|seq| link.failed_at == *seq) {
            if link.blocked != seq {
                tracing::error!(
                    seq, %replica, %error,
                    "replication is stuck: the replica does not get past change {seq}; retrying with backoff"
                );
                link.blocked = seq;
            }
        } else if was_connected || link.error != message {
            tracing::warn!(%replica, %error, "replication stream down; reconnecting with backoff");
        } else {
            tracing::debug!(%replica, %error, "replica still unreachable");
        }
        if let Some(seq) = stuck_at {
            link.failed_at = seq;
        }
        link.tried = true;
        link.error = message;
        progressed || stable
    }

    /// The replica refused the stream with `status`: if because it cannot
    /// rebuild content sent as runs or by its list (`unknown-base`), every
    /// change sent so so far goes plain from the next session on.
    fn refused(&self, status: &tonic::Status) -> Error {
        if Reason::of(status) == Some(Reason::UnknownBase) {
            let through = self.inner.last_runs.load(Ordering::Relaxed);
            let mut link = self.link();
            if through > link.plain_through {
                tracing::info!(
                    through,
                    reason = status.message(),
                    "the replica cannot rebuild content sent as runs; sending it plain"
                );
                link.plain_through = through;
            }
        }
        Error::Unavailable(status.to_string())
    }

    /// Whether change `seq` must go with plain content.
    fn plain(&self, seq: u64) -> bool {
        seq <= self.link().plain_through
    }

    /// Reports change `seq` of `path` as replicated without its content,
    /// once per change.
    fn lost(&self, seq: u64, namespace: &str, path: &str, why: &str) {
        let mut link = self.link();
        if seq <= link.last_lost_seq {
            return;
        }
        tracing::error!(
            seq,
            namespace,
            path,
            reason = why,
            "content lost: this primary's copy is {why}; the change is replicated without it"
        );
        self.inner.metrics.lost.inc();
        link.lost += 1;
        link.last_lost_seq = seq;
        link.last_lost = format!("change {seq}: {path} (the primary's copy is {why})");
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
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    loop {
        handle.inner.metrics.connect_attempts.inc();
        let acked_before = handle.acked();
        let session = stream_once(&store, &handle, &gate, &advertised, (&endpoint, &credentials), &shutdown);
        let result = tokio::select! {
            r = session => r,
            () = shutdown.cancelled() => return,
        };
        let error = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        if handle.session_ended(&error, acked_before, store.head()) {
            backoff.reset();
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One replication session: handshake, then changes until an error.
async fn stream_once(
    store: &Store,
    handle: &ReplicationHandle,
    gate: &WriteGate,
    advertised: &str,
    link: (&Endpoint, &Credentials),
    shutdown: &CancellationToken,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(SEND_BUFFER);
    let handshake = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(store, handle, gate, advertised, link, tx.clone(), rx),
    );
    let (mut responses, ready) = handshake.await.map_err(|_| {
        Error::Unavailable(format!(
            "the replica did not answer within {}",
            humantime::format_duration(HANDSHAKE_TIMEOUT)
        ))
    })??;
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
    handle.up(ready.applied_seq, head);
    tracing::info!(replica = %handle.config().url, applied = ready.applied_seq, head, "replication stream up");

    // A replica that sends heartbeats and falls silent for a few of them
    // is gone, even if the connection looks open (a silent network).
    let silence_limit = (ready.heartbeat_interval_ms > 0)
        .then(|| Duration::from_millis(ready.heartbeat_interval_ms) * MISSED_HEARTBEATS);
    // Acknowledgements come back on their own task, and the chunks a
    // replica wants of a change sent by its list.
    let (processed_tx, processed) = watch::channel(0u64);
    let (wants_tx, wants) = mpsc::channel(1);
    let acks = {
        let (handle, store) = (handle.clone(), store.clone());
        async move {
            loop {
                let next = responses.message();
                let resp = match silence_limit {
                    Some(limit) => tokio::time::timeout(limit, next).await.map_err(|_| {
                        Error::Unavailable(format!(
                            "the replica sent nothing for {} (no heartbeat): taking it as gone",
                            humantime::format_duration(limit)
                        ))
                    })?,
                    None => next.await,
                };
                let Some(resp) = resp.map_err(|s| handle.refused(&s))? else {
                    return Err::<(), _>(Error::Unavailable("the replica closed the stream".into()));
                };
                match resp.msg {
                    Some(replicate_response::Msg::Ack(ack)) => {
                        handle.ack(ack.acked_seq, store.head());
                        let _ = processed_tx.send(ack.processed);
                    }
                    // The sender waits for it: one at a time.
                    Some(replicate_response::Msg::Wants(w)) => wants_tx.try_send(w).map_err(|_| {
                        Error::Unavailable("the replica named chunks it wants unasked".into())
                    })?,
                    _ => {}
                }
            }
        }
    };
    let stop = shutdown.child_token();
    let window = Window { sent: Arc::new(std::sync::atomic::AtomicU64::new(0)), processed };
    let copies = Copies {
        since: Arc::new(ready.applied_seq.into()),
        hollow: Arc::default(),
        wants: Arc::new(tokio::sync::Mutex::new(wants)),
    };
    let takes_chunks = ready.takes_chunks;
    let send = async {
        let failed = Arc::new(Mutex::new(None));
        feed::follow(store, ready.applied_seq, None, &stop, |item| {
            let (tx, store, failed, window, handle, copies) =
                (tx.clone(), store.clone(), failed.clone(), window.clone(), handle.clone(), copies.clone());
            async move {
                let sent = match item {
                    Item::Change(change) => {
                        // An older replica takes every content plain.
                        let copies = takes_chunks.then_some(&copies);
                        send_change(&store, &handle, &tx, &window, *change, copies).await
                    }
                    Item::Reset { head } => {
                        let sent = send_snapshot(&store, &handle, &tx, &window, head).await;
                        copies.resynced(head);
                        sent
                    }
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

/// Connects, says hello and waits for the replica's Ready.
async fn handshake(
    store: &Store,
    handle: &ReplicationHandle,
    gate: &WriteGate,
    advertised: &str,
    (endpoint, credentials): (&Endpoint, &Credentials),
    tx: Sender,
    rx: mpsc::Receiver<pb::ReplicateRequest>,
) -> Result<(tonic::Streaming<pb::ReplicateResponse>, pb::ReplicaReady)> {
    let channel = endpoint.connect().await.map_err(|e| Error::Unavailable(format!("cannot connect: {e}")))?;
    let mut client = ReplicationClient::with_interceptor(channel, credentials.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let epoch = store.epoch();
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
    match responses.message().await.map_err(|s| Error::Unavailable(s.to_string()))? {
        Some(pb::ReplicateResponse { msg: Some(replicate_response::Msg::Ready(r)) }) => Ok((responses, r)),
        _ => Err(Error::Internal("the replica did not answer Ready".into())),
    }
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

/// What a session knows of the copies the replica holds, to send content
/// as runs against them. Cheap to clone.
#[derive(Debug, Clone)]
struct Copies {
    /// The replica holds the content of the changes up to this seq (where
    /// it stood when the session began, or the head of a full resync), as
    /// far as this primary can tell: one it took without its content
    /// refuses runs against it, and the change goes plain next time.
    since: Arc<std::sync::atomic::AtomicU64>,
    /// The files (namespace, path) whose last put sent in this session
    /// went without its content (replaced or lost by then): the replica
    /// holds no copy of it to rebuild from.
    hollow: Arc<Mutex<HashSet<(String, String)>>>,
    /// The replica's answers to changes sent by their list.
    wants: Arc<tokio::sync::Mutex<mpsc::Receiver<pb::ChunkWants>>>,
}

impl Copies {
    /// Whether the replica holds the content of change `seq` of `path`,
    /// the last change of that file before the one being sent.
    fn held(&self, namespace: &str, path: &str, seq: u64) -> bool {
        seq <= self.since.load(Ordering::Relaxed)
            || !self.hollow().contains(&(namespace.to_owned(), path.to_owned()))
    }

    /// A put of `path` was sent, with its content or not.
    fn sent(&self, namespace: &str, path: &str, with_content: bool) {
        let key = (namespace.to_owned(), path.to_owned());
        match with_content {
            true => self.hollow().remove(&key),
            false => self.hollow().insert(key),
        };
    }

    /// A full resync up to `head` was sent.
    fn resynced(&self, head: u64) {
        self.since.store(head, Ordering::Relaxed);
        self.hollow().clear();
    }

    fn hollow(&self) -> MutexGuard<'_, HashSet<(String, String)>> {
        self.hollow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chunks of `list` (change `seq`'s) the replica wants, once it
    /// answers.
    async fn wanted(&self, seq: u64, list: &[ChunkRef]) -> Result<Vec<ChunkRef>> {
        let wants = self.wants.lock().await.recv().await.ok_or_else(closed)?;
        let bad =
            || Error::Unavailable(format!("the replica's answer to change {seq}'s chunk list is malformed"));
        if wants.seq != seq || !wants.missing.is_sorted_by(|a, b| a < b) {
            return Err(bad());
        }
        wants.missing.iter().map(|&i| list.get(i as usize).copied().ok_or_else(bad)).collect()
    }
}

/// Where a change's content comes from.
enum Source {
    /// No content: a tombstone or a lock.
    None,
    /// The stored content, verified as it is read (boxed: a reader holds
    /// its hasher's state).
    Blob(Box<dyn ContentReader>),
    /// Replaced by a later change, which follows: the metadata alone.
    Replaced,
    /// The entry is current but its content cannot be had here.
    Lost(String),
}

/// Opens a change's content. A blob that is gone although the entry is
/// still current is lost, not replaced; one found damaged is lost too.
async fn open_content(store: &Store, namespace: &str, entry: &syncstore::Entry) -> Result<Source> {
    let Some(c) = entry.content else { return Ok(Source::None) };
    match store.content_reader(&c.hash, c.size).await {
        Ok(Some(reader)) => Ok(Source::Blob(reader)),
        Ok(None) => {
            let current = store.stat(namespace, &entry.path).await?;
            Ok(match current {
                Some(now) if now.version == entry.version => Source::Lost("missing".into()),
                _ => Source::Replaced,
            })
        }
        Err(Error::DataLoss(_)) => Ok(Source::Lost("damaged (it no longer matches its hash)".into())),
        Err(e) => Err(e),
    }
}

/// The base to send a put's content against, and the runs against it, if
/// it can go so: content larger than one chunk, not refused as runs
/// before, whose recipe keeps runs against the content it replaced
/// (`prev`), when that is the content of the path's previous file change
/// and the replica holds it ([`Copies::held`]).
async fn delta_base(
    store: &Store,
    handle: &ReplicationHandle,
    copies: &Copies,
    namespace: &str,
    entry: &syncstore::Entry,
    seq: u64,
) -> Result<Option<(ContentHash, Vec<Run>)>> {
    let Some(content) = entry.content else { return Ok(None) };
    if content.size <= WHOLE_MAX || handle.plain(seq) {
        return Ok(None);
    }
    let Some((base, runs)) = store.recipe(&content.hash).await?.and_then(|r| r.prev) else {
        return Ok(None);
    };
    let Some((prev_seq, false)) = store.previous_file_change(namespace, &entry.path, seq).await? else {
        return Ok(None);
    };
    let held = store.entry_at(namespace, &entry.path, prev_seq).await?.and_then(|e| e.content);
    if held.map(|c| c.hash) != Some(base) || !copies.held(namespace, entry.path.as_str(), prev_seq) {
        return Ok(None);
    }
    Ok(Some((base, runs)))
}

/// The chunk list to send a put's content by, if it can go so: content
/// larger than one chunk, not refused as runs or a list before, stored as
/// chunks here. The replica then names the chunks it lacks: those of an
/// earlier version it still holds, or of any other content, do not cross
/// the link.
async fn by_list(
    store: &Store,
    handle: &ReplicationHandle,
    entry: &syncstore::Entry,
    seq: u64,
) -> Result<Option<Vec<ChunkRef>>> {
    let Some(content) = entry.content else { return Ok(None) };
    if content.size <= WHOLE_MAX || handle.plain(seq) {
        return Ok(None);
    }
    Ok(store.recipe(&content.hash).await?.map(|r| r.list))
}

/// Sends one change and, for a live file whose content is still kept, the
/// content right after it: as runs against the replica's copy of the
/// path's previous content when it can ([`delta_base`]; `copies` is `None`
/// during a full resync, which sends everything plain), else whole.
/// Content this primary has lost (missing, or found corrupt while sending
/// it) is reported and the change goes without it, so that it does not
/// hold up the changes behind it.
async fn send_change(
    store: &Store,
    handle: &ReplicationHandle,
    tx: &Sender,
    window: &Window,
    change: Change,
    copies: Option<&Copies>,
) -> Result<()> {
    window.take().await?;
    let (kind, lock) = (wire::kind(&change).into(), wire::lock_info(&change));
    let Change { seq, namespace, what } = change;
    let (entry, note) = match what {
        What::File(entry, note) => (entry, note),
        // A lock or history-only change: no content.
        other => {
            let history = match &other {
                What::History(h) => Some(wire::history_to_pb(h)),
                _ => None,
            };
            let header = pb::ReplicatedChange { seq, namespace, kind, lock, history, ..Default::default() };
            return tx.send(msg(replicate_request::Msg::Change(header))).await.map_err(|_| closed());
        }
    };
    let source = open_content(store, &namespace, &entry).await?;
    let (path, entry_content) = (entry.path.to_string(), entry.content);
    if let Source::Lost(why) = &source {
        handle.lost(seq, &namespace, &path, why);
    }
    let delta = match (&source, copies) {
        (Source::Blob(_), Some(copies)) => delta_base(store, handle, copies, &namespace, &entry, seq).await?,
        _ => None,
    };
    let list = match (&source, copies, &delta) {
        (Source::Blob(_), Some(_), None) => by_list(store, handle, &entry, seq).await?,
        _ => None,
    };
    let header = pb::ReplicatedChange {
        seq,
        namespace: namespace.clone(),
        entry: Some(entry.into()),
        content_follows: matches!(source, Source::Blob(..)),
        kind,
        lock: None,
        content_lost: matches!(source, Source::Lost(_)),
        runs_base: delta.as_ref().map(|(base, _)| base.as_bytes().to_vec()).unwrap_or_default(),
        by_list: list.is_some(),
        ..Default::default()
    };
    let header = wire::with_note(header, &note);
    tx.send(msg(replicate_request::Msg::Change(header))).await.map_err(|_| closed())?;
    let with_content = matches!(source, Source::Blob(_));
    if let Source::Blob(reader) = source {
        let counter = &handle.inner.metrics.content_sent;
        let chunk_msg = |c| msg(replicate_request::Msg::Chunk(c));
        let sent = match (delta, list, copies) {
            (Some((_, runs)), _, _) => {
                handle.inner.last_runs.fetch_max(seq, Ordering::Relaxed);
                let framing = (|r| msg(replicate_request::Msg::Runs(r)), chunk_msg);
                runs::send_runs_as(store, runs, tx, framing, counter).await
            }
            (None, Some(list), Some(copies)) => {
                handle.inner.last_runs.fetch_max(seq, Ordering::Relaxed);
                for batch in list.chunks(MAX_RUNS_PER_MESSAGE) {
                    let runs = batch.iter().map(|c| pb::ChunkRun::from(Run::New(*c))).collect();
                    let runs = msg(replicate_request::Msg::Runs(pb::ChunkRuns { runs }));
                    tx.send(runs).await.map_err(|_| closed())?;
                }
                let wanted = copies.wanted(seq, &list).await?;
                runs::send_chunks_as(store, &wanted, tx, &chunk_msg, counter).await
            }
            _ => {
                let counter = counter.clone();
                let chunk = move |c: Vec<u8>| {
                    counter.inc_by(c.len() as u64);
                    msg(replicate_request::Msg::Chunk(c))
                };
                transfer::send_content(reader, tx.clone(), chunk).await
            }
        };
        // Content found damaged on the way is never sent as good: the
        // replica gets `ContentLost` in place of its last chunk.
        match sent {
            Ok(Sent::Whole) => {}
            Ok(Sent::Closed) => return Err(closed()),
            Err(Error::DataLoss(why)) => {
                let lost = pb::ContentLost { reason: why };
                tx.send(msg(replicate_request::Msg::ContentLost(lost))).await.map_err(|_| closed())?;
                handle.lost(seq, &namespace, &path, "damaged (it no longer matches its hash)");
                if let Some(copies) = copies {
                    copies.sent(&namespace, &path, false);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    if let (Some(copies), Some(_)) = (copies, entry_content) {
        copies.sent(&namespace, &path, with_content);
    }
    Ok(())
}

/// Sends the whole manifest (all namespaces, tombstones included) with the
/// content of every live file, then the locks: the replica is behind the
/// kept log.
async fn send_snapshot(
    store: &Store,
    handle: &ReplicationHandle,
    tx: &Sender,
    window: &Window,
    head: u64,
) -> Result<()> {
    tracing::warn!(head, "the replica is behind the kept change log: sending a full snapshot");
    tx.send(msg(replicate_request::Msg::SnapshotStart(pb::SnapshotStart { head_seq: head })))
        .await
        .map_err(|_| closed())?;
    let mut after: Option<(String, String)> = None;
    loop {
        let page =
            store.manifest_page(after.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE).await?;
        let done = page.len() < PAGE_SIZE;
        after = page.last().map(|(ns, e)| (ns.clone(), e.path.to_string()));
        for (namespace, entry) in page {
            // The replica's history restarts at a full resync: the entry
            // goes as a plain version.
            let note = VersionNote::plain(&entry, "", crate::clock::now_ms());
            let change = Change { seq: entry.version, namespace, what: What::File(entry, note) };
            send_change(store, handle, tx, window, change, None).await?;
        }
        if done {
            break;
        }
    }
    // Then the locks, each as a lock change whose seq is its token.
    for (namespace, lock) in store.all_locks().await? {
        let change = Change { seq: lock.token, namespace, what: What::Lock(lock) };
        send_change(store, handle, tx, window, change, None).await?;
    }
    tx.send(msg(replicate_request::Msg::SnapshotEnd(pb::SnapshotEnd { head_seq: head })))
        .await
        .map_err(|_| closed())?;
    Ok(())
}

fn closed() -> Error {
    Error::Unavailable("the replication stream closed".into())
}
