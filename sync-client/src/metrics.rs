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
