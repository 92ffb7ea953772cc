//! `ServiceContext`: what the services of one server share (the store, its
//! role, the write gate, the replication link, the metrics, the tokens and
//! the shutdown signal, the history pruner), built once when the server starts serving.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

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
    /// The subscriptions this process feeds, for `Admin/Status`.
    pub subscribers: Subscribers,
}

/// The subscriptions a server process feeds now, each with its cursor.
#[derive(Debug, Clone, Default)]
pub struct Subscribers(Arc<Mutex<SubscriberTable>>);

#[derive(Debug, Default)]
struct SubscriberTable {
    next: u64,
    live: BTreeMap<u64, (Subscriber, Arc<AtomicU64>)>,
}

/// One subscription, as `Admin/Status` shows it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub client_id: String,
    pub principal: String,
    pub namespace: String,
    pub connected_ms: i64,
    pub peer: String,
}

/// A subscription's place in [`Subscribers`]: its cursor, moved as changes
/// are sent; dropping it removes the subscription.
#[derive(Debug)]
pub struct SubscriberEntry {
    table: Subscribers,
    id: u64,
    pub cursor: Arc<AtomicU64>,
}

impl Subscribers {
    /// Adds a subscription starting after `cursor`.
    pub fn add(&self, subscriber: Subscriber, cursor: u64) -> SubscriberEntry {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.next += 1;
        let (id, cursor) = (t.next, Arc::new(AtomicU64::new(cursor)));
        t.live.insert(id, (subscriber, cursor.clone()));
        SubscriberEntry { table: self.clone(), id, cursor }
    }

    /// Every live subscription with its cursor, oldest first.
    pub fn list(&self) -> Vec<(Subscriber, u64)> {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.live.values().map(|(s, c)| (s.clone(), c.load(Ordering::Relaxed))).collect()
    }
}

impl Drop for SubscriberEntry {
    fn drop(&mut self) {
        self.table.0.lock().unwrap_or_else(|p| p.into_inner()).live.remove(&self.id);
    }
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
