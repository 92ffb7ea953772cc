//! The history collector: prunes every namespace's history by its
//! retention, on the primary, every `--history-prune-interval` (default
//! [`PRUNE_INTERVAL`]) and at once after an
//! admin's `SetRetention`; and the one entry point an admin's
//! `PruneHistory` shares with it ([`Pruner::prune`]), so that two prunes
//! never run at once. A replica prunes nothing itself: it removes what the
//! primary's logged prune changes list.

use std::{sync::Arc, time::Duration};

use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    ServerMetrics, WriteGate,
    error::Result,
    storage::{
        Store, Version,
        retention::{PlanOptions, RetentionConfig, Usage},
    },
};

/// Default time between two pruning passes over every namespace. Retention works
/// in hours and days; a minute bounds how long a version outlives its
/// rule, at the cost of one walk of the versions a minute.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What one prune of a namespace did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The versions removed (or that would be), in (path, seq) order.
    pub removed: Vec<Version>,
    /// History before and after.
    pub before: Usage,
    pub after: Usage,
}

/// Prunes history; shared by the collector and the Admin service.
#[derive(Debug, Clone)]
pub struct Pruner {
    store: Store,
    config: Arc<RetentionConfig>,
    metrics: ServerMetrics,
    /// Held while a prune runs: one at a time.
    running: Arc<Mutex<()>>,
    /// Wakes the collector (a retention was set).
    wake: Arc<Notify>,
}

impl Pruner {
    /// A pruner of `store`'s history with the configured retention.
    pub fn new(store: Store, config: Arc<RetentionConfig>, metrics: ServerMetrics) -> Self {
        Self { store, config, metrics, running: Arc::default(), wake: Arc::default() }
    }

    /// The configured retention (an admin's overrides it per namespace).
    pub fn config(&self) -> &RetentionConfig {
        &self.config
    }

    /// Asks the collector for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Prunes `ns` by its retention now (or, `dry_run`, only plans it).
    /// `include_immutable`: versions inside the immutable window may go
    /// too (an admin's call).
    pub async fn prune(&self, ns: &str, dry_run: bool, include_immutable: bool) -> Result<Pruned> {
        let _one = self.running.lock().await;
        let (policy, _) = self.store.retention(ns, &self.config).await?;
        let opts = PlanOptions { policy, now_ms: crate::clock::now_ms(), include_immutable };
        let plan = self.store.plan_prune(ns, opts).await?;
        if dry_run {
            let removed = plan.remove.into_iter().map(|r| r.item).collect();
            return Ok(Pruned { removed, before: plan.before, after: plan.after });
        }
        let removed = self.store.apply_prune(ns, &plan).await?;
        self.metrics.history_pruned_versions.inc_by(removed.len() as u64);
        let after = if removed.len() == plan.remove.len() {
            plan.after
        } else {
            self.store.history_usage(Some(ns)).await?
        };
        if !removed.is_empty() {
            tracing::info!(
                namespace = ns,
                versions = removed.len(),
                bytes = plan.before.bytes.saturating_sub(after.bytes),
                "pruned history"
            );
        }
        Ok(Pruned { removed, before: plan.before, after })
    }

    /// One pass: prunes every namespace (one that fails is logged and
    /// left for the next pass), then updates the history gauges.
    async fn pass(&self) -> Result<()> {
        for ns in self.store.history_namespaces().await? {
            if let Err(e) = self.prune(&ns, false, false).await {
                tracing::warn!(namespace = %ns, error = %e, "could not prune history");
            }
        }
        let usage = self.store.history_usage(None).await?;
        self.metrics.history_versions.set(usage.versions as i64);
        self.metrics.history_bytes.set(usage.bytes as i64);
        Ok(())
    }

    /// The collector: a pass every `interval` or when woken, while this
    /// server takes writes, until `shutdown`.
    pub async fn run(self, interval: Duration, gate: WriteGate, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                () = self.wake.notified() => {}
            }
            if gate.check().is_err() {
                // A replica: it follows its primary's prunes. Its gauges
                // still say what it keeps.
                if let Ok(usage) = self.store.history_usage(None).await {
                    self.metrics.history_versions.set(usage.versions as i64);
                    self.metrics.history_bytes.set(usage.bytes as i64);
                }
                continue;
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "could not prune history");
            }
        }
    }
}
