//! The syncstore server: stores every file durably and pushes every change
//! to subscribed clients.
//!
//! # Layout
//! - [`storage`]: the data folder (SQLite metadata + content-addressed
//!   blobs), sequence numbers, the change log and its broadcast.
//! - [`service`]: `syncstore.v1.FileSync` over the store.
//! - [`error`]: the error type and its mapping to gRPC status codes.
//! - [`Server`] and [`run`]: open the store, then serve everything (plus
//!   health and reflection) on a listener until a shutdown signal.

pub mod error;
pub mod service;
pub mod storage;

use std::{path::PathBuf, time::Duration};

use syncstore::limits::MAX_MESSAGE;
use syncstore::pb::{self, file_sync_server::FileSyncServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};
pub use service::FileSyncService;
pub use storage::{Store, StoreOptions};

/// How long in-flight requests may take to finish once shutdown starts;
/// connections still open after that are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default largest file the server accepts: 1 TiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 1 << 40;

/// Everything a server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data folder (created if missing).
    pub data_dir: PathBuf,
    /// Largest file accepted, in bytes.
    pub max_file_size: u64,
    /// Store settings.
    pub store: StoreOptions,
}

impl Config {
    /// A primary with default settings on `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            store: StoreOptions::default(),
        }
    }
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
}

impl Server {
    /// Opens (initializing if new) the data folder and sweeps what a crash
    /// left behind.
    pub async fn open(config: Config) -> Result<Self> {
        let (dir, options) = (config.data_dir.clone(), config.store.clone());
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, options)).await??;
        Ok(Self { config, store })
    }

    /// Serves on `listener` until `shutdown` is cancelled; then stops
    /// accepting, ends subscriptions, lets in-flight requests finish (for
    /// up to [`SHUTDOWN_GRACE`]), and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        let Self { config, store } = self;
        serve(config, store, listener, shutdown).await
    }
}

async fn serve(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let file_sync = FileSyncService::new(store, config.max_file_size, shutdown.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<FileSyncServer<FileSyncService>>().await;

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

    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %config.data_dir.display(), "serving");
    let incoming = TcpListenerStream::new(listener);
    let stopping = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: finishing in-flight requests");
            health_reporter.set_not_serving::<FileSyncServer<FileSyncService>>().await;
        }
    };
    let serve = tonic::transport::Server::builder()
        .add_service(
            FileSyncServer::new(file_sync)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
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
    tracing::info!("stopped");
    Ok(())
}
