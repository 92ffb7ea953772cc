//! The client's Prometheus metrics.

use prometheus::{IntCounter, IntGauge, Registry};

/// Every metric the client exports; cheap to clone (the metrics are shared).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    pub registry: Registry,
    pub uploads: IntCounter,
    pub upload_bytes: IntCounter,
    pub downloads: IntCounter,
    pub download_bytes: IntCounter,
    /// Content bytes put on the wire by uploads (new chunks only, for an
    /// upload sent as runs).
    pub content_sent_bytes: IntCounter,
    /// Content bytes that came over the wire in downloads.
    pub content_received_bytes: IntCounter,
    /// Chunks downloads copied from a local file instead of the wire.
    pub chunks_reused: IntCounter,
    /// Their bytes.
    pub reused_bytes: IntCounter,
    pub local_deletes: IntCounter,
    pub remote_deletes: IntCounter,
    pub conflicts: IntCounter,
    /// Attempts on a path that failed (it is retried).
    pub errors: IntCounter,
    /// Paths waiting for a retry.
    pub pending: IntGauge,
}

impl ClientMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("syncstore_client".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let pending = IntGauge::new("pending_paths", "Paths waiting for a retry").expect("valid metric");
        registry.register(Box::new(pending.clone())).expect("unique metric");
        Self {
            uploads: counter("uploads_total", "Files uploaded"),
            upload_bytes: counter(
                "upload_bytes_total",
                "Bytes of files uploaded (content the server reused by hash included)",
            ),
            downloads: counter("downloads_total", "Files downloaded"),
            download_bytes: counter("download_bytes_total", "Bytes of files downloaded"),
            content_sent_bytes: counter(
                "content_sent_bytes_total",
                "Content bytes uploads put on the wire (for an upload sent as runs, its new chunks only)",
            ),
            content_received_bytes: counter(
                "content_received_bytes_total",
                "Content bytes downloads received over the wire",
            ),
            chunks_reused: counter(
                "chunks_reused_total",
                "Chunks downloads copied from a local file instead of the wire",
            ),
            reused_bytes: counter(
                "reused_bytes_total",
                "Bytes downloads copied from a local file instead of the wire",
            ),
            local_deletes: counter(
                "local_deletes_total",
                "Files deleted here because the server deleted them",
            ),
            remote_deletes: counter(
                "remote_deletes_total",
                "Files deleted on the server because they went here",
            ),
            conflicts: counter("conflicts_total", "Conflict copies made"),
            errors: counter("errors_total", "Failed attempts to sync a path"),
            pending,
            registry,
        }
    }
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self::new()
    }
}
