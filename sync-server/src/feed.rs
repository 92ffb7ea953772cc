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
        // A cursor past this process's head may come from another process
        // of a shared backend that committed first: publish what it did
        // before judging the cursor.
        let head = if cursor > store.head() { store.current_head().await? } else { store.head() };
        let oldest = store.oldest_seq().await?;
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

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    };

    use async_trait::async_trait;

    use super::*;
    use crate::storage::{HistoryChange, What};

    /// A process of a shared backend: the log holds changes another process
    /// committed after this one's published head, which it publishes only
    /// when asked for the current head.
    struct Lagging {
        log: Mutex<Vec<Change>>,
        published: AtomicU64,
        live: broadcast::Sender<Change>,
    }

    impl Lagging {
        fn new(committed: u64, published: u64) -> Self {
            let log = (1..=committed)
                .map(|seq| Change {
                    seq,
                    namespace: "ns".into(),
                    what: What::History(HistoryChange::LabelRemoved(format!("l{seq}"))),
                })
                .collect();
            Lagging {
                log: Mutex::new(log),
                published: AtomicU64::new(published),
                live: broadcast::channel(16).0,
            }
        }
    }

    #[async_trait]
    impl ChangeFeed for Lagging {
        fn head(&self) -> u64 {
            self.published.load(Ordering::SeqCst)
        }

        async fn current_head(&self) -> Result<u64> {
            let committed = self.log.lock().unwrap().len() as u64;
            self.published.store(committed, Ordering::SeqCst);
            Ok(committed)
        }

        fn subscribe(&self) -> broadcast::Receiver<Change> {
            self.live.subscribe()
        }

        async fn changes_after(&self, _: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>> {
            let log = self.log.lock().unwrap();
            Ok(log.iter().filter(|c| c.seq > after).take(limit).cloned().collect())
        }

        async fn oldest_seq(&self) -> Result<u64> {
            Ok(1)
        }
    }

    /// Follows `feed` from `cursor` and returns the first item.
    async fn first_item(feed: &Lagging, cursor: u64) -> Item {
        let stop = CancellationToken::new();
        let mut first = None;
        follow(feed, cursor, None, &stop, |item| {
            first = Some(item);
            async { false }
        })
        .await
        .unwrap();
        first.unwrap()
    }

    #[tokio::test]
    async fn a_cursor_another_process_gave_out_is_followed_not_reset() {
        // Seqs 1..=10 are committed; this process has published up to 8. A
        // client that failed over from the process that committed 9 and 10
        // resumes after 9 and gets 10, with no reset.
        let feed = Lagging::new(10, 8);
        match first_item(&feed, 9).await {
            Item::Change(c) => assert_eq!(c.seq, 10),
            Item::Reset { head } => panic!("reset at {head} instead of seq 10"),
        }
        // A cursor past every committed change is still reset, to the head.
        let feed = Lagging::new(10, 8);
        assert!(matches!(first_item(&feed, 12).await, Item::Reset { head: 10 }));
    }
}
