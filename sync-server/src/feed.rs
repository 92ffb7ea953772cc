//! Following the stream of committed changes from a cursor: first the
//! change log, then live changes from the store's broadcast, with neither
//! gap nor duplicate across the seam. `Subscribe` and replication both
//! read changes this way.

use std::future::Future;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    error::Result,
    storage::{Change, ChangeFeed, PAGE_SIZE},
};

/// What a follower is handed.
#[derive(Debug)]
pub(crate) enum Item {
    /// The changes right after the cursor are no longer kept (or the cursor
    /// is beyond the head): the follower must start over from the whole
    /// manifest, at this head.
    Reset {
        head: u64,
    },
    Change(Box<Change>),
}

/// Feeds `on` every change after `cursor` (of namespace `ns`, or of all
/// namespaces), in order, until `on` returns false or `stop` is cancelled.
///
/// The receiver is taken before the log is read, so a change committed in
/// between arrives twice and is skipped by its seq; a receiver that lags
/// behind the broadcast goes back to the log.
pub(crate) async fn follow<F, Fut>(
    store: &dyn ChangeFeed,
    mut cursor: u64,
    ns: Option<&str>,
    stop: &CancellationToken,
    mut on: F,
) -> Result<()>
where
    F: FnMut(Item) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut live: broadcast::Receiver<Change> = store.subscribe();
    loop {
        let (head, oldest) = (store.head(), store.oldest_seq().await?);
        if cursor > head || (cursor < head && oldest > cursor + 1) {
            tracing::info!(cursor, oldest, head, "cursor outside the kept log: reset");
            if !on(Item::Reset { head }).await {
                return Ok(());
            }
            cursor = head;
        }
        // Catch up from the log.
        loop {
            let page = store.changes_after(ns, cursor, PAGE_SIZE).await?;
            let done = page.len() < PAGE_SIZE;
            for change in page {
                cursor = change.seq;
                if !on(Item::Change(Box::new(change))).await {
                    return Ok(());
                }
            }
            if done {
                break;
            }
        }
        // Then follow live changes.
        loop {
            let received = tokio::select! {
                r = live.recv() => r,
                () = stop.cancelled() => return Ok(()),
            };
            match received {
                Ok(change) if change.seq > cursor => {
                    let wanted = ns.is_none_or(|ns| change.namespace == ns);
                    // A namespace's follower moves past other namespaces'
                    // changes only when it sees one of its own.
                    if wanted {
                        cursor = change.seq;
                        if !on(Item::Change(Box::new(change))).await {
                            return Ok(());
                        }
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "follower lagged; catching up from the log");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}
