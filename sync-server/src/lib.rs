//! The syncstore server: stores every file durably and pushes every change
//! to subscribed clients.
//!
//! # Layout
//! - [`storage`]: the data folder (SQLite metadata + content-addressed
//!   blobs), sequence numbers, the change log and its broadcast.
//! - [`service`]: `syncstore.v1.FileSync` over the store.
//! - [`history`]: `syncstore.v1.History`: versions, the trash, restores,
//!   rewinds, labels and pins over the store's history.
//! - [`context`]: what the services of one server share.
//! - [`replication`]: the primary's fan-out to its replica and the
//!   replica's `syncstore.v1.Replication` service; the write gate.
//! - [`admin`]: `syncstore.v1.Admin` (status, digest, manifest) and `compare`.
//! - [`scrub`]: reading stored content back, healing it from a peer.
//! - [`auth`]: bearer tokens, the token file, and what each token may do.
//! - [`metrics`]: the Prometheus metrics.
//! - [`pruning`]: the history collector, which prunes each namespace's
//!   history by its retention.
//! - `guard`: the mass-change guard (rewrites and deletions en masse
//!   trip it; it labels the state just before).
//! - [`clock`]: the one clock commit times and retention read (with a
//!   test hook that moves it).
//! - `feed`: following committed changes from a cursor (log, then live).
//! - `transfer`: content on the wire, both ways: the verified reader that
//!   Download and the replication sender stream from, and the receiver
//!   that Upload and the replica write into.
//! - `runs`: content as runs against a base both sides know, both ways
//!   (Upload's `base_hash`, Download's `have_hash`).
//! - `wire`: every conversion of storage's changes and locks to and from
//!   their `pb` messages.
//! - [`error`]: the error type and its mapping to gRPC status codes.
//! - `web`: the web dashboard, a client of the services above called in
//!   process.
//! - [`Server`] and [`run`]: open the store, then serve everything (plus
//!   health and reflection) on a listener until a shutdown signal.

pub mod admin;
pub mod auth;
pub mod clock;
pub mod context;
pub mod error;
mod feed;
mod guard;
pub mod history;
pub mod metrics;
pub mod pruning;
pub mod replication;
mod runs;
pub mod scrub;
pub mod service;
pub mod storage;
#[doc(hidden)]
pub mod testing;
mod transfer;
mod web;
mod wire;

use std::{path::PathBuf, time::Duration};

use syncstore::pb::{
    self, admin_server::AdminServer, file_sync_server::FileSyncServer, history_server::HistoryServer,
    replication_server::ReplicationServer,
};
use syncstore::{Reason, limits::MAX_MESSAGE};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig, server::TcpIncoming};

pub use auth::Authenticator;

pub use admin::{AdminService, Comparison, compare};
pub use context::ServiceContext;
pub use error::{Error, Result};
pub use history::HistoryService;
pub use metrics::ServerMetrics;
pub use replication::{
    Mode, OnTimeout, ReplicaConfig, WriteGate, primary::ReplicationHandle, replica::ReplicationService,
};
pub use service::{FileSyncService, UPLOAD_SLOT_WAIT, UploadLimits};
pub use storage::{Store, StoreOptions};
pub use web::DEFAULT_WEB_LISTEN;

/// How long in-flight requests may take to finish once shutdown starts;
/// connections still open after that are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default largest file the server accepts: 1 TiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;

/// Default longest silence between two messages of an upload (the header
/// included) before it is ended with `DEADLINE_EXCEEDED`. A message is at
/// most a 1 MiB chunk, so this also asks for about 35 KB/s at least; a
/// client that stalls holds a temp file, a writer task and an upload
/// slot only this long.
pub const DEFAULT_UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default slowest pace of an upload, in bytes a second, once
/// [`DEFAULT_UPLOAD_IDLE_TIMEOUT`] has passed since it took its slot: 32 KiB/s
/// (about the 35 KB/s the idle timeout asks of full chunks). A slow link
/// (a phone's upload, a hotel's wifi) still gets through; a stream that
/// sends a byte now and then to keep its slot is ended after the grace.
pub const DEFAULT_UPLOAD_MIN_RATE: u64 = 32 * 1024;

/// Default number of uploads received at once. Each running upload holds a
/// writer task (which takes one of tokio's 512 blocking threads, shared
/// with SQLite, for each chunk it writes), a temp file and up to 5 MiB of
/// buffered chunks; 32 keeps that under about 160 MiB and leaves the pool
/// to the rest. A client's full sync runs
/// up to 16 transfers at once, so this is two full syncs, or 32 clients
/// each saving a file, at the same moment. More wait up to
/// [`UPLOAD_SLOT_WAIT`], then get `RESOURCE_EXHAUSTED`.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: usize = 32;

/// Default number of uploads received at once for one namespace: one of its
/// clients running a full sync (up to 16 transfers at once) and half as
/// much again for the others, while leaving a quarter of
/// [`DEFAULT_MAX_CONCURRENT_UPLOADS`] to the other namespaces.
pub const DEFAULT_MAX_UPLOADS_PER_NAMESPACE: usize = 24;

/// Default number of uploads received at once over one connection: a sync
/// client runs up to 16 transfers at once over its one connection, and
/// 16 leaves a third of [`DEFAULT_MAX_UPLOADS_PER_NAMESPACE`] to the
/// namespace's other connections, so that one connection (stalled, or
/// hostile) cannot keep its namespace's other clients from uploading.
pub const DEFAULT_MAX_UPLOADS_PER_CONNECTION: usize = 16;

/// Most HTTP/2 streams (calls) one connection may have open at once. A sync
/// client keeps one subscription and runs at most 16 transfers at once
/// (plus 4 in its large lane), and a primary keeps one stream to its
/// replica, so 128 is far above honest use
/// while bounding what one connection can make the server hold (tonic's own
/// default is no limit).
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Largest header list (decoded HTTP/2 headers plus gRPC metadata) a call
/// may send. syncstore's calls carry a handful of short headers; 8 KiB
/// leaves room for proxies and tracing while refusing header floods early.
pub const MAX_HEADER_LIST_SIZE: u32 = 8 * 1024;

/// How often the server pings an HTTP/2 connection, so a peer that vanished
/// without closing (a laptop that slept, a cut link) is noticed on an idle
/// subscription and its streams are freed. Clients ping every 10 s
/// themselves; this is the server's own, slower check.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Oldest a connection may get: then the server asks the client to
/// reconnect (HTTP/2 GOAWAY). Bounds what one long-lived connection can
/// accumulate, and moves a client to a new connection, which sees the
/// server's current certificate. A sync client reconnects and rescans, so
/// once a day costs nothing noticeable.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long calls still running on a connection past its age may finish
/// (a subscription never does; it is cut then, and its client resubscribes).
pub const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10 * 60);

/// Idle time before the kernel starts TCP keepalive probes on an accepted
/// socket: finds dead peers even below HTTP/2 (e.g. before a connection's
/// first frame) and keeps NAT and firewall state alive.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Time between TCP keepalive probes once they start.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Unanswered TCP keepalive probes before the kernel drops the connection:
/// with [`TCP_KEEPALIVE`] and [`TCP_KEEPALIVE_INTERVAL`], a dead peer is
/// dropped about two minutes after it went silent.
pub const TCP_KEEPALIVE_RETRIES: u32 = 4;

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data folder (created if missing).
    pub data_dir: PathBuf,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Longest silence between two messages of an upload.
    pub upload_idle_timeout: Duration,
    /// Slowest pace of an upload in bytes a second, after the idle
    /// timeout's grace (0: no minimum).
    pub upload_min_rate: u64,
    /// Uploads received at once; more wait briefly, then are refused.
    pub max_concurrent_uploads: usize,
    /// Uploads received at once for one namespace.
    pub max_uploads_per_namespace: usize,
    /// Uploads received at once over one connection.
    pub max_uploads_per_connection: usize,
    /// Store settings.
    pub store: StoreOptions,
    /// Primary or replica.
    pub role: Role,
    /// On a primary: the replica to fan changes out to.
    pub replica: Option<ReplicaConfig>,
    /// The URL clients reach this server at, announced to the replica
    /// (default: `http://` + the listening address).
    pub advertise: Option<String>,
    /// The token file; without one the server is open (see
    /// [`Config::insecure_no_auth`]).
    pub tokens: Option<PathBuf>,
    /// Serve without tokens on a non-loopback address too.
    pub insecure_no_auth: bool,
    /// Serve TLS with this certificate.
    pub tls: Option<TlsConfig>,
    /// Time between background scrub passes (`None`: no background scrub).
    pub scrub_interval: Option<Duration>,
    /// The background scrub's pace, in bytes per second.
    pub scrub_rate: u64,
    /// The retention of history, per namespace, as configured (an admin's
    /// `SetRetention` overrides it at run time).
    pub retention: storage::retention::RetentionConfig,
    /// Time between two passes of the history collector.
    pub history_prune_interval: Duration,
    /// Where the metadata and the content live.
    pub backend: Backend,
}

/// Where a server keeps its metadata and its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// SQLite and a blob folder in the data folder: one process owns them
    /// (the default; nothing else to run).
    #[default]
    Embedded,
    /// PostgreSQL (`postgres://…`) and an S3-compatible bucket
    /// (`s3://BUCKET?endpoint=…&region=…`), shared by any number of server
    /// processes. Credentials come from the environment (`PGPASSWORD` or a
    /// password file; `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    Shared { meta: String, content: String },
}

impl Backend {
    /// The backend's name, as status shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Shared { .. } => "postgres+s3",
        }
    }
}

/// The server's TLS settings (PEM files).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Ask every client for a certificate signed by this CA, and refuse
    /// those without one.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    fn server_config(&self) -> Result<ServerTlsConfig> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p)
                .map_err(|e| Error::Config(format!("cannot read the TLS {what} {}: {e}", p.display())))
        };
        let mut tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert, "certificate")?, read(&self.key, "key")?));
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca, "client CA")?));
        }
        Ok(tls)
    }
}

/// What a server does with writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes and fans them out.
    Primary,
    /// Applies the primary's stream; serves reads only.
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl Config {
    /// A primary with default settings on `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            upload_idle_timeout: DEFAULT_UPLOAD_IDLE_TIMEOUT,
            upload_min_rate: DEFAULT_UPLOAD_MIN_RATE,
            max_concurrent_uploads: DEFAULT_MAX_CONCURRENT_UPLOADS,
            max_uploads_per_namespace: DEFAULT_MAX_UPLOADS_PER_NAMESPACE,
            max_uploads_per_connection: DEFAULT_MAX_UPLOADS_PER_CONNECTION,
            store: StoreOptions::default(),
            role: Role::Primary,
            replica: None,
            advertise: None,
            tokens: None,
            insecure_no_auth: false,
            tls: None,
            scrub_interval: Some(scrub::DEFAULT_SCRUB_INTERVAL),
            scrub_rate: scrub::DEFAULT_SCRUB_RATE,
            retention: Default::default(),
            history_prune_interval: pruning::PRUNE_INTERVAL,
            backend: Backend::Embedded,
        }
    }

    /// A replica with default settings on `data_dir`.
    pub fn replica(data_dir: impl Into<PathBuf>) -> Self {
        Self { role: Role::Replica, ..Self::new(data_dir) }
    }
}

/// Why a shared backend takes no replica (`--replica`, or a replica role).
pub const SHARED_REPLICA_REFUSED: &str = "a server over PostgreSQL and a bucket takes no --replica: \
    PostgreSQL's own replication (a streaming standby) and the object store's durability keep the \
    copies, and every server process takes writes; see the README's \"Scaling out\"";

/// Promotes a (stopped) replica's data folder: the next epoch, so that its
/// old primary is refused from now on. Returns history id, epoch and head.
pub async fn promote(data_dir: &std::path::Path) -> Result<(String, u64, u64)> {
    if !data_dir.join("meta.db").is_file() {
        return Err(Error::NotFound(format!("{} holds no syncstore data", data_dir.display())));
    }
    let store = Store::open(data_dir, StoreOptions::default()).await?;
    let epoch = store.epoch() + 1;
    store.set_epoch(epoch).await?;
    tracing::warn!(epoch, history = %store.history_id(), head = store.head(), "promoted to primary");
    Ok((store.history_id(), epoch, store.head()))
}

/// Scrubs a (stopped) server's data folder (see [`scrub::scrub`]), healing
/// from `peer` if given; returns the report and the lost files
/// (`NAMESPACE:PATH` outside the default namespace) with their content
/// hash.
pub async fn scrub_offline(
    data_dir: &std::path::Path,
    peer: Option<scrub::Peer>,
) -> Result<(scrub::ScrubReport, Vec<(String, syncstore::ContentHash)>)> {
    if !data_dir.join("meta.db").is_file() {
        return Err(Error::NotFound(format!("{} holds no syncstore data", data_dir.display())));
    }
    let store = Store::open(data_dir, StoreOptions::default()).await?;
    let report = scrub::scrub(&store, peer.as_ref(), None, None, &CancellationToken::new()).await?;
    let mut lost = Vec::new();
    for hash in &report.lost {
        for (ns, path) in store.paths_of(hash).await? {
            let shown = if ns == storage::DEFAULT_NAMESPACE { path } else { format!("{ns}:{path}") };
            lost.push((shown, *hash));
        }
    }
    Ok((report, lost))
}

/// Opens the data folder and serves on `listener` until `shutdown` is
/// cancelled: [`Server::open`] then [`Server::serve`].
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    Server::open(config).await?.serve(listener, shutdown).await
}

/// A server whose data folder is open, ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    store: Store,
    metrics: ServerMetrics,
    replication: Option<ReplicationHandle>,
    auth: Authenticator,
    tls: Option<ServerTlsConfig>,
    /// Where the web dashboard serves (`None`: no dashboard).
    web: Option<TcpListener>,
}

impl Server {
    /// Reads the token file and TLS files, opens (initializing if new) the
    /// data folder and sweeps what a crash left behind.
    pub async fn open(config: Config) -> Result<Self> {
        let auth = match &config.tokens {
            Some(path) => Authenticator::from_file(path)?,
            None => Authenticator::open(),
        };
        let tls = config.tls.as_ref().map(TlsConfig::server_config).transpose()?;
        let store = match &config.backend {
            Backend::Embedded => Store::open(&config.data_dir, config.store.clone()).await?,
            Backend::Shared { meta, content } => {
                if config.role == Role::Replica || config.replica.is_some() {
                    return Err(Error::Config(SHARED_REPLICA_REFUSED.into()));
                }
                let mut options = config.store.clone();
                options.process_address = options.process_address.or_else(|| config.advertise.clone());
                Store::open_shared(meta, content, options).await?
            }
        };
        let metrics = ServerMetrics::new();
        let replication = match config.role {
            Role::Primary => config
                .replica
                .clone()
                .map(|r| ReplicationHandle::with_metrics(r, metrics.replication.clone())),
            Role::Replica => None,
        };
        Ok(Self { config, store, metrics, replication, auth, tls, web: None })
    }

    /// Also serves the web dashboard on `listener`; refused beyond loopback
    /// on a server without tokens (as for the gRPC listener).
    pub fn with_web(mut self, listener: TcpListener) -> Result<Self> {
        web::check_address(
            listener.local_addr()?,
            &self.auth,
            self.config.insecure_no_auth,
            self.config.tls.is_some(),
        )?;
        self.web = Some(listener);
        Ok(self)
    }

    /// Refuses a listener this server must not serve on: beyond loopback
    /// without tokens, unless [`Config::insecure_no_auth`].
    pub fn check_listener(&self, listener: &TcpListener) -> Result<()> {
        check_exposure(&self.config, &self.auth, listener.local_addr()?)
    }

    /// The Prometheus endpoint of this server, to run beside [`Server::serve`].
    pub fn metrics_server(&self) -> MetricsServer {
        MetricsServer {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            replication: self.replication.clone(),
        }
    }

    /// Serves on `listener` until `shutdown` is cancelled; then stops
    /// accepting, ends subscriptions, lets in-flight requests finish (for
    /// up to [`SHUTDOWN_GRACE`]), and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        serve(self, listener, shutdown).await
    }
}

/// Serves a server's metrics (see [`Server::metrics_server`]).
#[derive(Debug)]
pub struct MetricsServer {
    store: Store,
    metrics: ServerMetrics,
    replication: Option<ReplicationHandle>,
}

impl MetricsServer {
    /// Serves `GET /metrics` on `listener` until `shutdown`.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self { store, metrics, replication } = self;
        let registry = metrics.registry.clone();
        let refresh: syncstore::metrics::Refresh = std::sync::Arc::new(move || {
            let head = store.head();
            metrics.head_seq.set(head as i64);
            let (damaged, found) = store.damaged_blobs();
            metrics.damaged_blobs.set(damaged as i64);
            metrics.damaged_blobs_found.inc_by(found.saturating_sub(metrics.damaged_blobs_found.get()));
            let (stored, deduplicated) = store.chunk_counts();
            metrics.chunks_stored.inc_by(stored.saturating_sub(metrics.chunks_stored.get()));
            metrics
                .chunks_deduplicated
                .inc_by(deduplicated.saturating_sub(metrics.chunks_deduplicated.get()));
            if let Some(r) = &replication {
                metrics.replica_lag_changes.set(head.saturating_sub(r.acked()) as i64);
                metrics.replica_lag_seconds.set(r.lag_seconds(head));
            }
        });
        syncstore::metrics::serve(listener, registry, refresh, async move { shutdown.cancelled().await })
            .await
    }
}

/// How often a primary looks for locks past their expiry. An expired lock
/// stops counting at once; this only bounds how late its unlock change
/// reaches subscribers.
const LOCK_SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Ends expired locks with an unlock change, while this server takes writes.
async fn expire_locks(store: Store, gate: WriteGate, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(LOCK_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if gate.check().is_err() {
            continue; // A replica: its primary's unlock changes arrive.
        }
        match store.expire_locks(syncstore::lock::now_ms()).await {
            Ok(ended) => {
                for c in ended {
                    tracing::info!(path = c.path().map_or("", |p| p.as_str()), seq = c.seq, "lock expired");
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not expire locks"),
        }
    }
}

/// How often a server over a shared backend checks that it reaches the
/// database and the bucket.
const BACKEND_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Reports every service NOT_SERVING while the database or the bucket
/// cannot be reached (writes fail with UNAVAILABLE meanwhile), and SERVING
/// again once both answer.
async fn probe_backend(
    store: Store,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(BACKEND_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serving = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = tokio::time::timeout(BACKEND_PROBE_INTERVAL * 3, store.ping()).await;
        let now = match probe {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                if serving {
                    tracing::error!(error = %e, "the backend cannot be reached: not serving");
                }
                false
            }
            Err(_) => {
                if serving {
                    tracing::error!("the backend does not answer: not serving");
                }
                false
            }
        };
        if now == serving {
            continue;
        }
        serving = now;
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        if serving {
            tracing::info!("the backend answers again: serving");
        }
        for name in [
            "",
            <FileSyncServer<FileSyncService> as tonic::server::NamedService>::NAME,
            <AdminServer<AdminService> as tonic::server::NamedService>::NAME,
            <HistoryServer<HistoryService> as tonic::server::NamedService>::NAME,
        ] {
            health.set_service_status(name, status).await;
        }
    }
}

/// Refuses to serve an open server (no tokens) beyond loopback unless told
/// to, and warns when tokens would cross a network in clear text.
fn check_exposure(config: &Config, auth: &Authenticator, addr: std::net::SocketAddr) -> Result<()> {
    let local = addr.ip().is_loopback();
    if auth.is_open() && !local {
        if !config.insecure_no_auth {
            return Err(Error::Config(format!(
                "refusing to serve {addr} without authentication: anyone who can reach it could read and \
                 change every file. Give --tokens FILE (see `sync-server token add`), listen on a loopback \
                 address, or accept the risk with --insecure-no-auth"
            )));
        }
        tracing::warn!(%addr, "serving WITHOUT authentication on a non-loopback address (--insecure-no-auth)");
    }
    if !auth.is_open() && config.tls.is_none() && !local {
        tracing::warn!(%addr, "tokens are checked but travel in clear text: give --tls-cert and --tls-key");
    }
    Ok(())
}

async fn serve(server: Server, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    server.check_listener(&listener)?;
    let Server { config, store, metrics, replication, auth, tls, web } = server;
    let addr = listener.local_addr()?;
    let gate = WriteGate::default();
    if config.role == Role::Replica {
        let primary = store.primary_url();
        let named = primary.clone().unwrap_or_else(|| "(not connected yet)".into());
        gate.refuse(
            Reason::Replica,
            format!("this server is a replica: write to the primary at {named}"),
            primary,
        );
    }
    let tasks = TaskTracker::new();
    if let (Role::Primary, Some(handle)) = (config.role, &replication) {
        let advertised = config.advertise.clone().unwrap_or_else(|| format!("http://{addr}"));
        tasks.spawn(replication::primary::run(
            store.clone(),
            handle.clone(),
            gate.clone(),
            advertised,
            shutdown.clone(),
        ));
    }
    tasks.spawn(expire_locks(store.clone(), gate.clone(), shutdown.clone()));
    // A primary heals from its replica; a replica's damage is healed by the
    // primary's next copy of that content, or `scrub --from`.
    let peer = replication
        .as_ref()
        .map(|r| scrub::Peer { url: r.config().url.clone(), security: r.config().security.clone() });
    if let Some(peer) = &peer {
        tasks.spawn(scrub::run_healer(store.clone(), peer.clone(), shutdown.clone()));
    }
    if let Some(interval) = config.scrub_interval {
        tasks.spawn(scrub::run_background(
            store.clone(),
            peer,
            interval,
            config.scrub_rate,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tasks.spawn(auth.clone().watch(shutdown.clone()));
    let retention = std::sync::Arc::new(config.retention.clone());
    let pruner = pruning::Pruner::new(store.clone(), retention.clone(), metrics.clone());
    tasks.spawn(pruner.clone().run(config.history_prune_interval, gate.clone(), shutdown.clone()));
    tasks.spawn(guard::run(store.clone(), retention, gate.clone(), metrics.clone(), shutdown.clone()));
    let ctx = ServiceContext {
        store,
        role: config.role,
        gate,
        replication,
        metrics,
        auth: auth.clone(),
        shutdown: shutdown.clone(),
        pruner,
        subscribers: Default::default(),
    };
    let file_sync = std::sync::Arc::new(FileSyncService::new(
        ctx.clone(),
        UploadLimits {
            max_file_size: config.max_file_size,
            idle_timeout: config.upload_idle_timeout,
            min_rate: config.upload_min_rate,
            max_concurrent: config.max_concurrent_uploads,
            per_namespace: config.max_uploads_per_namespace,
            per_connection: config.max_uploads_per_connection,
        },
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // Every service answers health checks by its name ("" is the server).
    health_reporter.set_serving::<FileSyncServer<FileSyncService>>().await;
    health_reporter.set_serving::<AdminServer<AdminService>>().await;
    health_reporter.set_serving::<HistoryServer<HistoryService>>().await;
    health_reporter.set_serving::<ReplicationServer<ReplicationService>>().await;
    let replication_service = ReplicationService::new(&ctx, health_reporter.clone());
    if ctx.store.is_shared() {
        tasks.spawn(probe_backend(ctx.store.clone(), health_reporter.clone(), shutdown.clone()));
    }
    // One instance of each service, behind the authenticator, for the
    // gRPC listener and the dashboard alike: limits and counters are shared.
    let services = web::Services {
        files: InterceptedService::new(
            FileSyncServer::from_arc(file_sync.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            auth.clone(),
        ),
        shared_files: FileSyncServer::from_arc(file_sync)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        history: InterceptedService::new(
            HistoryServer::new(HistoryService::new(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            auth.clone(),
        ),
        admin: InterceptedService::new(AdminServer::new(AdminService::new(&ctx)), auth.clone()),
        metrics: ctx.metrics.clone(),
    };
    if let Some(listener) = web {
        let spool = config.data_dir.join("web-uploads");
        let dashboard = web::Dashboard::new(
            services.clone(),
            ctx.store.clone(),
            auth.clone(),
            config.tls.as_ref(),
            spool,
            config.max_file_size,
            shutdown.clone(),
        )?;
        tasks.spawn(async move {
            if let Err(e) = dashboard.serve(listener).await {
                tracing::error!(error = %e, "the web dashboard stopped");
            }
        });
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    tracing::info!(
        %addr,
        role = config.role.as_str(),
        data = %config.data_dir.display(),
        tokens = config.tokens.is_some(),
        tls = tls.is_some(),
        "serving"
    );
    // Small messages (a download's entry, then its content) must not wait
    // for the peer's delayed ACK. The builder's TCP options do not apply to
    // an incoming stream, so keepalive is set here.
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .with_keepalive_retries(Some(TCP_KEEPALIVE_RETRIES));
    let stopping = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing in-flight requests");
            health_reporter.set_not_serving::<FileSyncServer<FileSyncService>>().await;
            health_reporter.set_not_serving::<AdminServer<AdminService>>().await;
            health_reporter.set_not_serving::<HistoryServer<HistoryService>>().await;
            health_reporter.set_not_serving::<ReplicationServer<ReplicationService>>().await;
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| Error::Config(format!("TLS: {e}")))?;
    }
    // Health and reflection stay open: probes and grpcurl need no token.
    let serve = builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .add_service(services.files)
        .add_service(InterceptedService::new(
            ReplicationServer::new(replication_service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            auth,
        ))
        .add_service(services.history)
        .add_service(services.admin)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stopping);
    // A peer that never closes its connection must not hold the shutdown.
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = serve => r.map_err(|e| Error::Internal(format!("transport: {e}")))?,
        () = grace_over => tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open after the grace period; closing them"),
    }
    tasks.close();
    tasks.wait().await;
    tracing::info!("stopped");
    Ok(())
}
