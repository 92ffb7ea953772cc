//! The Prometheus endpoint both programs serve with `--metrics-listen`:
//! `GET /metrics` in the text exposition format.

use std::{future::Future, sync::Arc};

use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Called before each scrape, to bring gauges up to date.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Serves `registry` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    refresh: Refresh,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (registry, refresh) = (registry.clone(), refresh.clone());
            async move {
                refresh();
                let mut body = Vec::new();
                let encoder = TextEncoder::new();
                match encoder.encode(&registry.gather(), &mut body) {
                    Ok(()) => ([("content-type", encoder.format_type().to_owned())], body),
                    Err(e) => ([("content-type", "text/plain".to_owned())], e.to_string().into_bytes()),
                }
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
