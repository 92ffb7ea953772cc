//! `ChangeFeed`: the committed changes as a follower reads them: the live
//! broadcast, the kept log after a cursor, and where the log starts.
//! `crate::feed::follow` (Subscribe and replication) needs only these.

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::Change;
use crate::error::Result;

/// A source of committed changes, in seq order.
#[async_trait]
pub(crate) trait ChangeFeed: Send + Sync {
    /// The seq of the last committed change this process has published.
    fn head(&self) -> u64;

    /// The head once every change committed so far is published: on a
    /// shared backend other processes may have committed past
    /// [`head`](Self::head), and a client failing over brings a cursor from
    /// one of them. Where one process owns the store it is `head`.
    async fn current_head(&self) -> Result<u64> {
        Ok(self.head())
    }

    /// A receiver of every change committed from now on.
    fn subscribe(&self) -> broadcast::Receiver<Change>;

    /// Up to `limit` kept changes after `after` (of namespace `ns`, or of
    /// all), in order.
    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>>;

    /// The lowest seq from which on every change is kept: the log's oldest,
    /// or the head + 1 when it is empty (0 on a new store).
    async fn oldest_seq(&self) -> Result<u64>;
}
