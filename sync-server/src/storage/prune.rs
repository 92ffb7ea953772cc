//! Pruning a namespace's history by its retention, the store's side: the
//! retention in force (set at run time, else the config file's), the plan
//! ([`super::retention::Planner`] over the namespace's versions, labels
//! and pins), and its removal as logged prune changes (so the replica
//! removes the same versions), whose content then goes to garbage
//! collection (which keeps what a live entry, another version or an
//! upload still refers to). Also what the mass-change guard asks of the
//! store.

use std::collections::HashSet;

use syncstore::{ContentHash, RelPath};

use super::{
    HistoryChange, MAX_PRUNED_PER_CHANGE, PAGE_SIZE, Store, Version, VersionKind, What,
    meta::Want,
    retention::{Plan, PlanOptions, Planner, Retention, RetentionConfig, Usage, VersionFacts},
};
use crate::error::Result;

impl Store {
    /// The retention in force for `ns`, and whether an admin set it at
    /// run time (else it is `config`'s).
    pub async fn retention(&self, ns: &str, config: &RetentionConfig) -> Result<(Retention, bool)> {
        let set = self.meta().retentions().await?;
        Ok(match set.into_iter().find(|(n, _)| n == ns) {
            Some((_, r)) => (r, true),
            None => (config.of(ns), false),
        })
    }

    /// The namespaces that keep history.
    pub async fn history_namespaces(&self) -> Result<Vec<String>> {
        self.meta().history_namespaces().await
    }

    /// How much history `ns` keeps (every namespace's with `None`).
    pub async fn history_usage(&self, ns: Option<&str>) -> Result<Usage> {
        self.meta().history_usage(ns).await
    }

    /// What pruning `ns` now would remove (nothing is changed).
    pub(crate) async fn plan_prune(&self, ns: &str, opts: PlanOptions) -> Result<Plan<Version>> {
        let labels = self.meta().labels(ns).await?.into_iter().map(|l| l.seq).collect();
        let mut planner = Planner::new(opts, labels);
        let mut path: Vec<Version> = Vec::new();
        let mut after: Option<(String, u64)> = None;
        loop {
            let page = self
                .meta()
                .versions_page(ns, after.as_ref().map(|(p, s)| (p.as_str(), *s)), PAGE_SIZE)
                .await?;
            let done = page.len() < PAGE_SIZE;
            after = page.last().map(|v| (v.entry.path.as_str().to_owned(), v.seq()));
            for v in page {
                if path.first().is_some_and(|p| p.entry.path != v.entry.path) {
                    add_path(&mut planner, std::mem::take(&mut path));
                }
                path.push(v);
            }
            if done {
                break;
            }
        }
        if !path.is_empty() {
            add_path(&mut planner, path);
        }
        let content: Vec<ContentHash> = planner.history_content().copied().collect();
        let mut live = HashSet::new();
        for page in content.chunks(PAGE_SIZE) {
            live.extend(self.meta().live_contents(page.to_vec()).await?);
        }
        Ok(planner.finish(&live))
    }

    /// Removes the versions `plan` lists, at most [`MAX_PRUNED_PER_CHANGE`]
    /// a logged change, and hands their content to garbage collection.
    /// Under the writer lock each is checked again: a version pinned, or
    /// needed by a label set, since the plan was made stays. Returns the
    /// versions removed.
    pub(crate) async fn apply_prune(&self, ns: &str, plan: &Plan<Version>) -> Result<Vec<Version>> {
        let mut removed = Vec::new();
        for batch in plan.remove.chunks(MAX_PRUNED_PER_CHANGE) {
            let todo: Vec<(Version, u64)> = batch.iter().map(|r| (r.item.clone(), r.next_seq)).collect();
            let ns_owned = ns.to_owned();
            let changes = self
                .commit_history_only(ns, move |store, _| async move {
                    let labels: Vec<u64> =
                        store.meta().labels(&ns_owned).await?.into_iter().map(|l| l.seq).collect();
                    let mut gone = Vec::new();
                    let mut content = Vec::new();
                    for (v, next_seq) in todo {
                        let Some(now) = store.meta().version(&ns_owned, &v.entry.path, v.seq()).await? else {
                            continue;
                        };
                        if now.pinned || labels.iter().any(|l| (v.seq()..next_seq).contains(l)) {
                            continue;
                        }
                        let current =
                            store.meta().facts(&ns_owned, &v.entry.path, Want::default()).await?.current;
                        if current.is_some_and(|c| c.version == v.seq()) {
                            continue;
                        }
                        content.extend(now.entry.content.map(|c| c.hash));
                        gone.push((now.entry.path.clone(), now.seq()));
                    }
                    if gone.is_empty() {
                        return Ok((Vec::new(), Vec::new()));
                    }
                    Ok((vec![HistoryChange::Prune(gone)], content))
                })
                .await?;
            for c in changes {
                if let What::History(HistoryChange::Prune(gone)) = c.what {
                    let kept: HashSet<(RelPath, u64)> = gone.into_iter().collect();
                    removed.extend(
                        batch
                            .iter()
                            .filter(|r| kept.contains(&(r.path.clone(), r.version.seq)))
                            .map(|r| r.item.clone()),
                    );
                }
            }
        }
        Ok(removed)
    }

    /// For the mass-change guard: whether a committed change counts (a
    /// rewrite of a live file or a deletion of one; not a creation, a
    /// move, or a restore), and when it was committed. `None` for a change
    /// that is no file change.
    pub(crate) async fn guard_counts(&self, change: &super::Change) -> Result<Option<(bool, i64)>> {
        let (Some(entry), Some(note)) = (change.entry(), change.note()) else { return Ok(None) };
        let counted = match note.kind {
            VersionKind::Delete => true,
            VersionKind::Write if let Some(live) = self.replaced_live(change.seq) => live,
            VersionKind::Write => {
                let before = self
                    .meta()
                    .version_at(&change.namespace, &entry.path, change.seq.saturating_sub(1))
                    .await?;
                before.is_some_and(|v| !v.is_deleted())
            }
            VersionKind::Move | VersionKind::MovedAway | VersionKind::Restore => false,
        };
        Ok(Some((counted, note.committed_ms)))
    }

    /// The live files of `ns` just before `change` (a deletion's file is
    /// counted back).
    pub(crate) async fn live_files_before(&self, change: &super::Change) -> Result<u64> {
        let now = self.meta().live_files(&change.namespace).await?;
        let deleted = change.entry().is_some_and(|e| e.is_deleted());
        Ok(now + u64::from(deleted))
    }
}

/// Plans one path from its versions, oldest first.
fn add_path(planner: &mut Planner<Version>, mut versions: Vec<Version>) {
    versions.reverse();
    let facts: Vec<VersionFacts> = versions
        .iter()
        .map(|v| VersionFacts {
            seq: v.seq(),
            committed_ms: v.note.committed_ms,
            pinned: v.pinned,
            content: v.entry.content.map(|c| (c.hash, c.size)),
        })
        .collect();
    let path = versions[0].entry.path.clone();
    planner.add_path(&path, &facts, versions);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use syncstore::{Content, ContentHash, RelPath};

    use super::super::{
        Actor, Put, Store, StoreOptions, blobdir::BlobDir, memory::MemoryContent, memory::MemoryMeta,
        sqlite::SqliteMeta,
    };
    use super::*;

    const NS: &str = "ns";
    const DAY_MS: i64 = 24 * 3600 * 1000;

    async fn put(s: &Store, p: &str, data: &[u8], base_version: u64) -> u64 {
        let mut up = s.upload(data.len() as u64).await.unwrap();
        up.write(data.to_vec()).await.unwrap();
        let staged = up.complete(ContentHash::of(data), data.len() as u64).await.unwrap();
        let content = Content {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
        };
        let put = Put {
            path: RelPath::new(p).unwrap(),
            content,
            base_version,
            who: Actor::new("alice", "c"),
            lock_token: 0,
            moved_from: None,
        };
        s.commit_put(NS, put, Some(staged)).await.unwrap().seq
    }

    /// The store's side of pruning, over `s`: usage, the plan, and its
    /// application, which keeps a version pinned since the plan and hands
    /// only unreferenced content to garbage collection.
    async fn prunes_what_it_planned_unless_pinned_since(s: Store) {
        let a1 = put(&s, "a", b"one", 0).await;
        let a2 = put(&s, "a", b"two", a1).await;
        let a3 = put(&s, "a", b"three", a2).await;
        put(&s, "b", b"one", 0).await; // "one" is live again, at b
        let usage = Usage { versions: 2, bytes: 3 }; // a1, a2; only "two" costs history
        assert_eq!(s.history_usage(Some(NS)).await.unwrap(), usage);
        assert_eq!(s.history_usage(None).await.unwrap(), usage);
        assert_eq!(s.history_usage(Some("other")).await.unwrap(), Usage::default());
        assert_eq!(s.history_namespaces().await.unwrap(), [NS]);
        assert_eq!(s.meta().live_files(NS).await.unwrap(), 2);

        // A year later, the defaults keep only current versions.
        let now_ms = crate::clock::now_ms() + 400 * DAY_MS;
        let opts = PlanOptions { policy: Retention::default(), now_ms, include_immutable: false };
        let plan = s.plan_prune(NS, opts).await.unwrap();
        let planned: Vec<u64> = plan.remove.iter().map(|r| r.version.seq).collect();
        assert_eq!(planned, [a1, a2]);
        assert_eq!((plan.before, plan.after), (usage, Usage::default()));

        // Pinned after the plan was made: kept.
        s.pin(NS, &RelPath::new("a").unwrap(), a1, true).await.unwrap();
        let removed: Vec<u64> = s.apply_prune(NS, &plan).await.unwrap().iter().map(|v| v.seq()).collect();
        assert_eq!(removed, [a2]);
        let kept: Vec<u64> =
            s.versions(NS, &RelPath::new("a").unwrap(), 10).await.unwrap().iter().map(|v| v.seq()).collect();
        assert_eq!(kept, [a3, a1]);
        let mut stored = s.stored_contents().await.unwrap();
        stored.sort();
        let mut want = vec![ContentHash::of(b"one"), ContentHash::of(b"three")];
        want.sort();
        assert_eq!(stored, want, "only the pruned version's own content went");
        assert_eq!(s.history_usage(Some(NS)).await.unwrap(), Usage { versions: 1, bytes: 0 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_prunes_what_it_planned_unless_pinned_since() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(SqliteMeta::open(dir.path()).await.unwrap());
        let content = Arc::new(BlobDir::open(dir.path()).await.unwrap());
        let s = Store::with_backends(meta, content, StoreOptions::default()).await.unwrap();
        prunes_what_it_planned_unless_pinned_since(s).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_prunes_what_it_planned_unless_pinned_since() {
        let meta = Arc::new(MemoryMeta::new());
        let s = Store::with_backends(meta, Arc::new(MemoryContent::default()), StoreOptions::default())
            .await
            .unwrap();
        prunes_what_it_planned_unless_pinned_since(s).await;
    }
}
