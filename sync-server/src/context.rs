//! `ServiceContext`: what the services of one server share (the store, its
//! role, the write gate, the replication link, the metrics, the tokens and
//! the shutdown signal, the history pruner), built once when the server starts serving.

use tokio_util::sync::CancellationToken;

use crate::{
    Authenticator, Result, Role, ServerMetrics, Store, WriteGate, pruning::Pruner,
    replication::primary::ReplicationHandle,
};

/// What every service of one server shares. Cheap to clone: each part is a
/// handle.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// The data folder.
    pub store: Store,
    /// Whether this server was started as a primary or a replica.
    pub role: Role,
    /// Whether this server takes writes now, and if not, why.
    pub gate: WriteGate,
    /// A primary's link to its replica (`None`: no replica, or a replica).
    pub replication: Option<ReplicationHandle>,
    pub metrics: ServerMetrics,
    /// The tokens: a subscription ends when its token is removed.
    pub auth: Authenticator,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Prunes history (the collector and `Admin/PruneHistory`).
    pub pruner: Pruner,
}

impl ServiceContext {
    /// Refuses a write on a server that takes none now (a replica, a
    /// fenced primary), or while a sync-mode replica that must confirm it
    /// is known to be away: before anything is written.
    pub(crate) fn admit_write(&self) -> Result<()> {
        self.gate.check()?;
        self.replication.as_ref().map_or(Ok(()), ReplicationHandle::admit)
    }

    /// In sync mode, waits until the replica holds `seq` durably.
    pub(crate) async fn replicated(&self, seq: u64) -> Result<()> {
        match &self.replication {
            Some(r) => {
                r.committed(seq);
                r.wait_replicated(seq).await
            }
            None => Ok(()),
        }
    }
}
