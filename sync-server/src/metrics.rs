//! The server's Prometheus metrics.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::replication::primary::ReplicationMetrics;

/// Every metric the server exports; cheap to clone (the metrics are shared).
#[derive(Debug, Clone)]
pub struct ServerMetrics {
    pub registry: Registry,
    pub uploads: IntCounter,
    pub upload_bytes: IntCounter,
    pub downloads: IntCounter,
    pub download_bytes: IntCounter,
    pub deletes: IntCounter,
    /// Refused or failed calls, by gRPC code.
    pub errors: IntCounterVec,
    pub subscribers: IntGauge,
    pub head_seq: IntGauge,
    pub replica_lag_changes: IntGauge,
    pub replica_lag_seconds: Gauge,
    /// Time from taking the writer lock to a durable commit.
    pub commit_seconds: Histogram,
    /// The replication link's counters (a primary's).
    pub replication: ReplicationMetrics,
    /// Stored contents set aside as damaged and not healed yet.
    pub damaged_blobs: IntGauge,
    /// Damaged stored contents found (by reads and scrubs) since start.
    pub damaged_blobs_found: IntCounter,
    /// Bytes of stored content the scrub read and verified since start.
    pub scrub_bytes: IntCounter,
    /// Content bytes that arrived in Upload `chunk` messages.
    pub content_received_bytes: IntCounter,
    /// Content bytes sent in Download `chunk` messages.
    pub content_sent_bytes: IntCounter,
    /// New chunk blobs written (mirrors the store's count at each scrape).
    pub chunks_stored: IntCounter,
    /// Chunks of received content that were stored already, not written
    /// again (mirrors the store's count at each scrape).
    pub chunks_deduplicated: IntCounter,
    /// Bytes uploads took from their base instead of the wire.
    pub base_reused_bytes: IntCounter,
    /// Versions kept that are not a file's current one, all namespaces (as
    /// of the last pruning pass).
    pub history_versions: IntGauge,
    /// Bytes of content only those versions refer to (as of the last
    /// pruning pass).
    pub history_bytes: IntGauge,
    /// Versions pruning removed since start.
    pub history_pruned_versions: IntCounter,
    /// Times the mass-change guard tripped since start.
    pub history_guard_trips: IntCounter,
}

impl ServerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("syncstore".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let errors =
            IntCounterVec::new(Opts::new("errors_total", "Refused or failed calls by gRPC code"), &["code"])
                .expect("valid metric");
        registry.register(Box::new(errors.clone())).expect("unique metric");
        let lag_seconds = Gauge::new("replica_lag_seconds", "Age of the oldest change the replica lacks")
            .expect("valid metric");
        registry.register(Box::new(lag_seconds.clone())).expect("unique metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new("commit_seconds", "Time to commit a change durably")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(commit_seconds.clone())).expect("unique metric");
        let replication = ReplicationMetrics::default();
        for c in [&replication.lost, &replication.connect_attempts, &replication.content_sent] {
            registry.register(Box::new(c.clone())).expect("unique metric");
        }
        Self {
            uploads: counter("uploads_total", "Files stored"),
            upload_bytes: counter("upload_bytes_total", "Bytes of files stored"),
            downloads: counter("downloads_total", "Files sent"),
            download_bytes: counter("download_bytes_total", "Bytes of files sent"),
            deletes: counter("deletes_total", "Files deleted"),
            subscribers: gauge("subscribers", "Open Subscribe streams"),
            head_seq: gauge("head_seq", "Sequence number of the last committed change"),
            replica_lag_changes: gauge("replica_lag_changes", "Changes the replica does not hold yet"),
            replica_lag_seconds: lag_seconds,
            damaged_blobs: gauge("damaged_blobs", "Stored contents found damaged and not healed yet"),
            damaged_blobs_found: counter("damaged_blobs_found_total", "Damaged stored contents found"),
            scrub_bytes: counter("scrub_bytes_total", "Bytes of stored content the scrub verified"),
            content_received_bytes: counter(
                "content_received_bytes_total",
                "Content bytes that arrived in upload chunk messages",
            ),
            content_sent_bytes: counter(
                "content_sent_bytes_total",
                "Content bytes sent in download chunk messages",
            ),
            chunks_stored: counter("chunks_stored_total", "New chunk blobs written"),
            chunks_deduplicated: counter(
                "chunks_deduplicated_total",
                "Chunks of received content already stored, not written again",
            ),
            base_reused_bytes: counter(
                "base_reused_bytes_total",
                "Bytes uploads took from their base instead of the wire",
            ),
            history_versions: gauge("history_versions", "Versions kept that are not a file's current one"),
            history_bytes: gauge("history_bytes", "Bytes of content only kept versions refer to"),
            history_pruned_versions: counter("history_pruned_versions_total", "Versions pruning removed"),
            history_guard_trips: counter("history_guard_trips_total", "Times the mass-change guard tripped"),
            errors,
            commit_seconds,
            replication,
            registry,
        }
    }

    /// Refused or failed calls since start, every code together.
    pub fn errors_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.errors
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Counts a call that ended with `status`.
    pub fn error(&self, status: &tonic::Status) {
        self.errors.with_label_values(&[&format!("{:?}", status.code())]).inc();
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
