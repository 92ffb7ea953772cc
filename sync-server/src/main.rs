//! `sync-server`: parses flags, sets up logging and signals, binds, and
//! hands over to [`sync_server::run`].

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The syncstore server: stores files durably and pushes every change to
/// every subscribed client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The server's role. Only the primary exists so far.
    #[arg(long, value_enum, default_value_t = Role::Primary)]
    role: Role,
    /// Address to serve gRPC on; port 0 picks a free port. The address is
    /// printed as `listening on ADDR` once the server serves.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Data folder: metadata database and content blobs.
    #[arg(long, default_value = "./sync-data")]
    data: PathBuf,
    /// Largest file accepted, in bytes.
    #[arg(long, default_value_t = sync_server::DEFAULT_MAX_FILE_SIZE)]
    max_file_size: u64,
    /// How many changes the log keeps for subscribers that catch up; an
    /// older cursor gets a RESET and a full listing.
    #[arg(long, default_value_t = sync_server::StoreOptions::default().log_retention)]
    log_retention: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Primary,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let Role::Primary = args.role;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));

    let mut config = sync_server::Config::new(args.data);
    config.max_file_size = args.max_file_size;
    config.store.log_retention = args.log_retention;
    let server = sync_server::Server::open(config).await.context("cannot open the data folder")?;
    // Scripts wait for this line: the store is open and the socket bound.
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    server.serve(listener, shutdown).await.context("server failed")?;
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
