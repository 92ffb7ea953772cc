//! An in-memory backend, for tests: [`MemoryMeta`] (a [`MetaStore`]) and
//! [`MemoryContent`] (a [`ContentStore`]). It is the second implementation
//! that keeps the seams honest: the journal suite runs over it and over the
//! embedded backend alike. Nothing is durable; a transaction's writes are
//! applied to a copy for its reads and to the state at its commit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
};

use async_trait::async_trait;
use syncstore::{ContentHash, Entry, Lock, RelPath};

use super::{
    Change, HistoryChange, Identity, Label, Version, What,
    content::{ContentReader, ContentStore, ContentUpload, Durability, StagedContent, Verdict},
    meta::{Decide, Facts, MetaStore, MetaTx, Recipe, SnapshotSink, Want},
    retention::Retention,
    rules,
};
use crate::error::{Error, Result};

/// The metadata, in maps.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryMeta {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// The manifest by (namespace, path).
    files: BTreeMap<(String, String), Entry>,
    /// The change log by seq.
    log: BTreeMap<u64, Change>,
    /// The lock rows by (namespace, path).
    locks: BTreeMap<(String, String), Lock>,
    identity: Identity,
    /// After a full resync, the head the (empty) log starts at.
    head_floor: u64,
    /// A snapshot being received.
    snapshot: Option<Snapshot>,
    /// The recipes by content hash.
    recipes: BTreeMap<ContentHash, Recipe>,
    /// The kept versions by (namespace, path, seq).
    versions: BTreeMap<(String, String, u64), Version>,
    /// The labels by (namespace, name).
    labels: BTreeMap<(String, String), Label>,
    /// The retention set at run time, by namespace.
    retention: BTreeMap<String, Retention>,
    /// The share links by id.
    shares: BTreeMap<String, super::Share>,
}

impl MemoryMeta {
    /// Empty metadata with a new history id.
    pub(crate) fn new() -> Self {
        let meta = Self::default();
        meta.state().identity.history_id = format!("{:032x}", rand::random::<u128>());
        meta
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A snapshot being received.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// The manifest by (namespace, path).
    files: BTreeMap<(String, String), Entry>,
    /// The locks by (namespace, path).
    locks: BTreeMap<(String, String), Lock>,
    /// The versions by (namespace, path, seq).
    versions: BTreeMap<(String, String, u64), Version>,
    /// The labels by (namespace, name).
    labels: BTreeMap<(String, String), Label>,
    /// The run-time retention by namespace.
    retention: BTreeMap<String, Retention>,
}

fn key(ns: &str, path: &str) -> (String, String) {
    (ns.to_owned(), path.to_owned())
}

impl State {
    fn apply(&mut self, change: &Change) {
        let ns = &change.namespace;
        match &change.what {
            What::File(e, note) => {
                self.files.insert(key(ns, e.path.as_str()), e.clone());
                let version = Version { entry: e.clone(), note: note.clone(), pinned: false };
                self.versions.insert((ns.clone(), e.path.as_str().to_owned(), e.version), version);
            }
            What::History(h) => self.apply_history(ns, h),
            What::Lock(l) => {
                self.locks.insert(key(ns, l.path.as_str()), l.clone());
            }
            What::Unlock { lock, .. } => {
                self.locks.retain(|(n, _), l| !(n == ns && l.lock_id == lock.lock_id));
            }
        }
        self.log.insert(change.seq, change.clone());
    }

    fn facts(&self, ns: &str, path: &RelPath, want: Want) -> Facts {
        let live_file =
            |p: &str| self.files.get(&key(ns, p)).is_some_and(|e| e.content.is_some_and(|c| !c.folder));
        let mut out = Facts {
            current: self.files.get(&key(ns, path.as_str())).cloned(),
            lock: self.locks.get(&key(ns, path.as_str())).cloned(),
            ..Facts::default()
        };
        if let Some(folder) = want.clash {
            out.file_above = rules::folders_of(path).find(|f| live_file(f)).map(str::to_owned);
            if !folder && out.file_above.is_none() {
                let below = format!("{}/", path.as_str());
                out.live_below = self
                    .files
                    .range(key(ns, &below)..)
                    .take_while(|((n, p), _)| n == ns && p.starts_with(&below))
                    .find(|(_, e)| !e.is_deleted())
                    .map(|((_, p), _)| p.clone());
            }
        }
        if let Some(hash) = want.refers {
            out.refers =
                self.files.iter().any(|((n, _), e)| n == ns && e.content.is_some_and(|c| c.hash == hash))
                    || self
                        .versions
                        .iter()
                        .any(|((n, _, _), v)| n == ns && v.entry.content.is_some_and(|c| c.hash == hash));
        }
        if want.current_recipe
            && let Some(current) = out.current.as_ref().and_then(|e| e.content)
        {
            out.current_recipe = self.recipes.get(&current.hash).map(|r| r.list.clone());
        }
        if let Some(from) = &want.moved_from {
            out.moved_from_hash =
                self.path_versions(ns, from.as_str()).rev().find_map(|v| v.entry.content.map(|c| c.hash));
        }
        if want.moved_away
            && let Some(current) = &out.current
        {
            out.moved_to = self
                .versions
                .iter()
                .filter(|((n, _, seq), v)| {
                    n == ns
                        && *seq > current.version
                        && v.note.kind == super::VersionKind::Move
                        && v.note.moved_from.as_ref() == Some(path)
                })
                .max_by_key(|((_, _, seq), _)| *seq)
                .map(|(_, v)| v.entry.path.clone());
        }
        out
    }

    fn apply_history(&mut self, ns: &str, h: &HistoryChange) {
        match h {
            HistoryChange::LabelSet(l) => {
                self.labels.insert(key(ns, &l.name), l.clone());
            }
            HistoryChange::LabelRemoved(name) => {
                self.labels.remove(&key(ns, name));
            }
            HistoryChange::Pin { path, seq, pinned } => {
                if let Some(v) = self.versions.get_mut(&(ns.to_owned(), path.as_str().to_owned(), *seq)) {
                    v.pinned = *pinned;
                }
            }
            HistoryChange::Retention(r) => {
                self.retention.insert(ns.to_owned(), *r);
            }
            HistoryChange::Prune(removed) => {
                for (path, seq) in removed {
                    self.versions.remove(&(ns.to_owned(), path.as_str().to_owned(), *seq));
                }
            }
        }
    }

    /// The versions of `path` of `ns`, oldest first.
    fn path_versions<'a>(
        &'a self,
        ns: &str,
        path: &str,
    ) -> impl DoubleEndedIterator<Item = &'a Version> + 'a {
        let (ns, path) = (ns.to_owned(), path.to_owned());
        self.versions.range((ns.clone(), path.clone(), 0)..=(ns, path, u64::MAX)).map(|(_, v)| v)
    }

    fn referenced(&self, hash: &ContentHash) -> bool {
        self.files.values().any(|e| e.content.is_some_and(|c| c.hash == *hash))
            || self.versions.values().any(|v| v.entry.content.is_some_and(|c| c.hash == *hash))
            || self.recipes.values().any(|r| r.list.iter().any(|c| c.hash == *hash))
    }

    /// Stores a recipe, keeping one that is there (its `prev` replaced by
    /// a new one).
    fn put_recipe(&mut self, recipe: Recipe) {
        match self.recipes.get_mut(&recipe.hash) {
            Some(kept) => {
                if recipe.prev.is_some() {
                    kept.prev = recipe.prev;
                }
            }
            None => {
                self.recipes.insert(recipe.hash, recipe);
            }
        }
    }
}

/// Whether `path` is `prefix` or lies below it (`prefix` "" holds all).
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|r| r.starts_with('/'))
}

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn head(&self) -> Result<u64> {
        let s = self.state();
        Ok(s.log.keys().next_back().copied().unwrap_or(0).max(s.head_floor))
    }

    async fn load_identity(&self) -> Result<Identity> {
        Ok(self.state().identity.clone())
    }

    async fn save_identity(&self, identity: &Identity) -> Result<()> {
        self.state().identity = identity.clone();
        Ok(())
    }

    fn begin(&self) -> Box<dyn MetaTx> {
        Box::new(MemoryTx { meta: self.clone(), pending: Vec::new() })
    }

    async fn facts(&self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        Ok(self.state().facts(ns, path, want))
    }

    async fn entry_at(&self, ns: &str, path: &RelPath, version: u64) -> Result<Option<Entry>> {
        Ok(self
            .state()
            .log
            .get(&version)
            .filter(|c| c.namespace == ns && c.path() == Some(path))
            .and_then(|c| c.entry().cloned()))
    }

    async fn previous_file_change(
        &self,
        ns: &str,
        path: &RelPath,
        before: u64,
    ) -> Result<Option<(u64, bool)>> {
        Ok(self
            .state()
            .log
            .range(..before)
            .rev()
            .filter_map(|(_, c)| {
                c.entry().filter(|e| c.namespace == ns && e.path == *path).map(|e| (c.seq, e.is_deleted()))
            })
            .next())
    }

    async fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        include_deleted: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let prefix = prefix.trim_end_matches('/');
        Ok(self
            .state()
            .files
            .iter()
            .filter(|((n, p), e)| {
                n == ns
                    && under(p, prefix)
                    && after.is_none_or(|a| p.as_str() > a)
                    && (include_deleted || !e.is_deleted())
            })
            .take(limit)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn manifest_page(&self, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<(String, Entry)>> {
        Ok(self
            .state()
            .files
            .iter()
            .filter(|((n, p), _)| after.is_none_or(|(an, ap)| (n.as_str(), p.as_str()) > (an, ap)))
            .take(limit)
            .map(|((n, _), e)| (n.clone(), e.clone()))
            .collect())
    }

    async fn changes_after(&self, ns: Option<&str>, after: u64, limit: usize) -> Result<Vec<Change>> {
        Ok(self
            .state()
            .log
            .range(after + 1..)
            .map(|(_, c)| c)
            .filter(|c| ns.is_none_or(|ns| c.namespace == ns))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn oldest_logged(&self) -> Result<Option<u64>> {
        Ok(self.state().log.keys().next().copied())
    }

    async fn trim_log(&self, keep_from: u64, head: u64) -> Result<usize> {
        let mut s = self.state();
        let before = s.log.len();
        s.log.retain(|&seq, _| seq > keep_from || seq >= head);
        Ok(before - s.log.len())
    }

    async fn unreferenced(&self, hashes: Vec<ContentHash>) -> Result<Vec<(ContentHash, bool)>> {
        let s = self.state();
        Ok(hashes.into_iter().filter(|h| !s.referenced(h)).map(|h| (h, s.recipes.contains_key(&h))).collect())
    }

    async fn recipe(&self, hash: &ContentHash) -> Result<Option<Recipe>> {
        Ok(self.state().recipes.get(hash).cloned())
    }

    async fn drop_recipes(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        let mut s = self.state();
        let mut chunks = std::collections::BTreeSet::new();
        for hash in hashes {
            if let Some(r) = s.recipes.remove(&hash) {
                chunks.extend(r.list.iter().map(|c| c.hash));
            }
        }
        Ok(chunks.into_iter().collect())
    }

    async fn orphan_recipes(&self) -> Result<Vec<ContentHash>> {
        let s = self.state();
        let live = |h: &ContentHash| {
            s.files.values().any(|e| e.content.is_some_and(|c| c.hash == *h))
                || s.versions.values().any(|v| v.entry.content.is_some_and(|c| c.hash == *h))
        };
        Ok(s.recipes.keys().filter(|h| !live(h)).copied().collect())
    }

    async fn put_recipe(&self, recipe: Recipe) -> Result<()> {
        self.state().put_recipe(recipe);
        Ok(())
    }

    async fn paths_of(&self, hash: &ContentHash) -> Result<Vec<(String, String)>> {
        Ok(self
            .state()
            .files
            .iter()
            .filter(|(_, e)| e.content.is_some_and(|c| c.hash == *hash))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn referenced_contents(
        &self,
        after: Option<ContentHash>,
        limit: usize,
    ) -> Result<Vec<(ContentHash, u64)>> {
        let mut all: BTreeMap<ContentHash, u64> = BTreeMap::new();
        for c in self.state().versions.values().filter_map(|v| v.entry.content) {
            let size = all.entry(c.hash).or_default();
            *size = (*size).max(c.size);
        }
        Ok(all.into_iter().filter(|(h, _)| after.is_none_or(|a| *h > a)).take(limit).collect())
    }

    async fn list_locks_page(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        now: i64,
        limit: usize,
    ) -> Result<Vec<Lock>> {
        Ok(self
            .state()
            .locks
            .iter()
            .filter(|((n, p), l)| {
                n == ns && under(p, prefix) && after.is_none_or(|a| p.as_str() > a) && !l.expired_at(now)
            })
            .take(limit)
            .map(|(_, l)| l.clone())
            .collect())
    }

    async fn all_locks(&self) -> Result<Vec<(String, Lock)>> {
        Ok(self.state().locks.iter().map(|((n, _), l)| (n.clone(), l.clone())).collect())
    }

    async fn expired_locks(&self, now: i64) -> Result<Vec<(String, Lock)>> {
        Ok(self
            .state()
            .locks
            .iter()
            .filter(|(_, l)| l.expired_at(now))
            .map(|((n, _), l)| (n.clone(), l.clone()))
            .collect())
    }

    fn snapshots(&self) -> Option<&dyn SnapshotSink> {
        Some(self)
    }

    async fn versions(&self, ns: &str, path: &RelPath, below: u64, limit: usize) -> Result<Vec<Version>> {
        let s = self.state();
        Ok(s.path_versions(ns, path.as_str())
            .rev()
            .filter(|v| v.seq() < below)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn version(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        Ok(self.state().versions.get(&(ns.to_owned(), path.as_str().to_owned(), seq)).cloned())
    }

    async fn version_at(&self, ns: &str, path: &RelPath, seq: u64) -> Result<Option<Version>> {
        let s = self.state();
        Ok(s.path_versions(ns, path.as_str()).rev().find(|v| v.seq() <= seq).cloned())
    }

    async fn seq_at_ms(&self, ns: &str, at_ms: i64) -> Result<(Option<i64>, Option<u64>)> {
        let s = self.state();
        let of_ns = || s.versions.iter().filter(|((n, _, _), _)| n == ns).map(|(_, v)| v);
        let oldest = of_ns().min_by_key(|v| v.seq()).map(|v| v.note.committed_ms);
        let seq = of_ns().filter(|v| v.note.committed_ms <= at_ms).map(Version::seq).max();
        Ok((oldest, seq))
    }

    async fn committed_ms_at(&self, ns: &str, seq: u64) -> Result<Option<i64>> {
        let s = self.state();
        let of_ns = s.versions.iter().filter(|((n, _, _), v)| n == ns && v.seq() <= seq).map(|(_, v)| v);
        Ok(of_ns.max_by_key(|v| v.seq()).map(|v| v.note.committed_ms))
    }

    async fn state_at(
        &self,
        ns: &str,
        prefix: &str,
        seq: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let prefix = prefix.trim_end_matches('/');
        let s = self.state();
        let mut out: Vec<Version> = Vec::new();
        for ((n, p, _), v) in &s.versions {
            if n != ns || !under(p, prefix) || after.is_some_and(|a| p.as_str() <= a) || v.seq() > seq {
                continue;
            }
            // Versions of a path come in seq order: the last one wins.
            let same = out.last().is_some_and(|last| last.entry.path.as_str() == p);
            if same {
                *out.last_mut().expect("checked") = v.clone();
            } else if out.len() == limit {
                break;
            } else {
                out.push(v.clone());
            }
        }
        Ok(out)
    }

    async fn versions_page(
        &self,
        ns: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        Ok(self
            .state()
            .versions
            .iter()
            .filter(|((n, p, seq), _)| {
                n == ns && after.is_none_or(|(ap, aseq)| (p.as_str(), *seq) > (ap, aseq))
            })
            .take(limit)
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn trash(&self, ns: &str, prefix: &str, since_ms: i64) -> Result<Vec<(Version, Option<Version>)>> {
        let prefix = prefix.trim_end_matches('/');
        let s = self.state();
        let mut out = Vec::new();
        for ((n, p), e) in &s.files {
            if n != ns || !e.is_deleted() || !under(p, prefix) {
                continue;
            }
            let Some(tomb) = s.versions.get(&(n.clone(), p.clone(), e.version)) else { continue };
            let moved_since = s.versions.values().any(|m| {
                m.seq() > e.version
                    && m.note.kind == super::VersionKind::Move
                    && m.note.moved_from.as_ref().is_some_and(|f| f.as_str() == p)
                    && m.entry.path.as_str() != p
            });
            if tomb.note.kind != super::VersionKind::Delete
                || tomb.note.committed_ms < since_ms
                || moved_since
            {
                continue;
            }
            let before =
                s.path_versions(ns, p).rev().find(|v| v.seq() < e.version && !v.is_deleted()).cloned();
            out.push((tomb.clone(), before));
        }
        out.sort_by_key(|(t, _)| std::cmp::Reverse(t.seq()));
        Ok(out)
    }

    async fn labels(&self, ns: &str) -> Result<Vec<Label>> {
        let mut out: Vec<Label> =
            self.state().labels.iter().filter(|((n, _), _)| n == ns).map(|(_, l)| l.clone()).collect();
        out.sort_by(|a, b| (a.seq, &a.name).cmp(&(b.seq, &b.name)));
        Ok(out)
    }

    async fn label(&self, ns: &str, name: &str) -> Result<Option<Label>> {
        Ok(self.state().labels.get(&key(ns, name)).cloned())
    }

    async fn retentions(&self) -> Result<Vec<(String, Retention)>> {
        Ok(self.state().retention.iter().map(|(n, r)| (n.clone(), *r)).collect())
    }

    async fn history_namespaces(&self) -> Result<Vec<String>> {
        let s = self.state();
        let names: std::collections::BTreeSet<String> =
            s.versions.keys().map(|(n, _, _)| n.clone()).collect();
        Ok(names.into_iter().collect())
    }

    async fn live_contents(&self, hashes: Vec<ContentHash>) -> Result<Vec<ContentHash>> {
        let s = self.state();
        let live = |h: &ContentHash| s.files.values().any(|e| e.content.is_some_and(|c| c.hash == *h));
        Ok(hashes.into_iter().filter(|h| live(h)).collect())
    }

    async fn live_files(&self, ns: &str) -> Result<u64> {
        let s = self.state();
        let of_ns = s.files.iter().filter(|((n, _), e)| n == ns && e.content.is_some_and(|c| !c.folder));
        Ok(of_ns.count() as u64)
    }

    async fn history_usage(&self, ns: Option<&str>) -> Result<super::retention::Usage> {
        let s = self.state();
        let live = |h: &ContentHash| s.files.values().any(|e| e.content.is_some_and(|c| c.hash == *h));
        let mut usage = super::retention::Usage::default();
        let mut bytes: BTreeMap<ContentHash, u64> = BTreeMap::new();
        let mut versions = s.versions.iter().filter(|((n, _, _), _)| ns.is_none_or(|ns| n == ns)).peekable();
        while let Some(((n, p, _), v)) = versions.next() {
            // Versions are in (namespace, path, seq) order: the last of a
            // path is its current one.
            let newer = versions.peek().is_some_and(|((n2, p2, _), _)| n2 == n && p2 == p);
            if !newer {
                continue;
            }
            usage.versions += 1;
            if let Some(c) = v.entry.content.filter(|c| !live(&c.hash)) {
                bytes.insert(c.hash, c.size);
            }
        }
        usage.bytes = bytes.values().sum();
        Ok(usage)
    }

    async fn put_share(&self, share: super::Share) -> Result<()> {
        self.state().shares.insert(share.id.clone(), share);
        Ok(())
    }

    async fn share(&self, id: &str) -> Result<Option<super::Share>> {
        Ok(self.state().shares.get(id).cloned())
    }

    async fn shares(&self, ns: &str) -> Result<Vec<super::Share>> {
        let mut out: Vec<_> = self.state().shares.values().filter(|s| s.namespace == ns).cloned().collect();
        out.sort_by(|a, b| (b.created_ms, &b.id).cmp(&(a.created_ms, &a.id)));
        Ok(out)
    }

    async fn revoke_share(&self, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
        let mut s = self.state();
        match s.shares.get_mut(id).filter(|s| s.namespace == ns) {
            Some(share) => {
                if share.revoked_ms == 0 {
                    share.revoked_ms = at_ms;
                }
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait]
impl SnapshotSink for MemoryMeta {
    async fn snapshot_begin(&self) -> Result<()> {
        self.state().snapshot = Some(Default::default());
        Ok(())
    }

    async fn snapshot_put(&self, ns: &str, entry: &Entry) -> Result<()> {
        let mut s = self.state();
        let snapshot = s.snapshot.as_mut().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        snapshot.files.insert(key(ns, entry.path.as_str()), entry.clone());
        Ok(())
    }

    async fn snapshot_put_lock(&self, ns: &str, lock: &Lock) -> Result<()> {
        let mut s = self.state();
        let snapshot = s.snapshot.as_mut().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        snapshot.locks.insert(key(ns, lock.path.as_str()), lock.clone());
        Ok(())
    }

    async fn snapshot_put_version(&self, ns: &str, version: &Version) -> Result<()> {
        let mut s = self.state();
        let snapshot = s.snapshot.as_mut().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        let k = (ns.to_owned(), version.entry.path.as_str().to_owned(), version.seq());
        snapshot.versions.insert(k, version.clone());
        Ok(())
    }

    async fn snapshot_put_label(&self, ns: &str, label: &Label) -> Result<()> {
        let mut s = self.state();
        let snapshot = s.snapshot.as_mut().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        snapshot.labels.insert(key(ns, &label.name), label.clone());
        Ok(())
    }

    async fn snapshot_put_retention(&self, ns: &str, retention: &Retention) -> Result<()> {
        let mut s = self.state();
        let snapshot = s.snapshot.as_mut().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        snapshot.retention.insert(ns.to_owned(), *retention);
        Ok(())
    }

    async fn snapshot_end(&self, head: u64) -> Result<()> {
        let mut s = self.state();
        let Snapshot { files, locks, mut versions, labels, retention } =
            s.snapshot.take().ok_or_else(|| Error::Internal("no snapshot begun".into()))?;
        // A current entry whose version was not sent is its one version.
        let now = crate::clock::now_ms();
        for ((n, p), e) in &files {
            versions.entry((n.clone(), p.clone(), e.version)).or_insert_with(|| Version {
                entry: e.clone(),
                note: super::VersionNote::plain(e, "", now),
                pinned: false,
            });
        }
        s.versions = versions;
        s.labels = labels;
        s.retention = retention;
        s.files = files;
        s.locks = locks;
        s.log.clear();
        s.head_floor = head;
        Ok(())
    }
}

/// A transaction: its writes, applied at its commit.
#[derive(Debug)]
struct MemoryTx {
    meta: MemoryMeta,
    pending: Vec<(Change, Option<Recipe>)>,
}

impl State {
    fn apply_write(&mut self, (change, recipe): &(Change, Option<Recipe>)) {
        if let Some(recipe) = recipe {
            self.put_recipe(recipe.clone());
        }
        self.apply(change);
    }
}

impl MemoryTx {
    /// The state as this transaction sees it.
    fn view(&self) -> State {
        let mut state = self.meta.state().clone();
        for write in &self.pending {
            state.apply_write(write);
        }
        state
    }
}

#[async_trait]
impl MetaTx for MemoryTx {
    async fn facts(&mut self, ns: &str, path: &RelPath, want: Want) -> Result<Facts> {
        Ok(self.view().facts(ns, path, want))
    }

    fn decide_each(&mut self, items: Vec<(String, RelPath, Want)>, mut decide: Decide) {
        let mut view = self.view();
        for (i, (ns, path, want)) in items.into_iter().enumerate() {
            if let Some(write) = decide(i, view.facts(&ns, &path, want)) {
                view.apply_write(&write);
                self.pending.push(write);
            }
        }
    }

    async fn lock_by_id(&mut self, ns: &str, lock_id: &str) -> Result<Option<Lock>> {
        Ok(self
            .view()
            .locks
            .iter()
            .find(|((n, _), l)| n == ns && l.lock_id == lock_id)
            .map(|(_, l)| l.clone()))
    }

    fn write(&mut self, change: Change) {
        self.pending.push((change, None));
    }

    async fn flush(&mut self) -> Result<()> {
        // Decisions run when queued; writes wait for the commit.
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let mut state = self.meta.state();
        for write in &self.pending {
            state.apply_write(write);
        }
        Ok(())
    }
}

/// Content, in a map by hash.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryContent {
    blobs: Arc<Mutex<HashMap<ContentHash, Arc<Vec<u8>>>>>,
    flight: Arc<Flight>,
}

/// The chunks in flight a [`MemoryContent`] asks for, and how many of its
/// reads and of its whole writes were in flight at once at most.
#[derive(Debug, Default)]
struct Flight {
    write_depth: usize,
    read_depth: usize,
    reads: InFlight,
    writes: InFlight,
}

/// Requests in flight now, and the most at once.
#[derive(Debug, Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl InFlight {
    /// One request, in flight across one yield as a real one would be.
    async fn request(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.most.fetch_max(now, Relaxed);
        tokio::task::yield_now().await;
        self.now.fetch_sub(1, Relaxed);
    }

    fn most(&self) -> usize {
        self.most.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl MemoryContent {
    fn blobs(&self) -> MutexGuard<'_, HashMap<ContentHash, Arc<Vec<u8>>>> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Empty content that asks for `writes` chunks written and `reads`
    /// read at once, as an object store does.
    pub(crate) fn with_chunks_in_flight(writes: usize, reads: usize) -> Self {
        let flight = Flight { write_depth: writes, read_depth: reads, ..Flight::default() };
        Self { flight: Arc::new(flight), ..Self::default() }
    }

    /// The most reads that were in flight at once.
    pub(crate) fn most_reads_at_once(&self) -> usize {
        self.flight.reads.most()
    }

    /// The most whole writes (chunks) that were in flight at once.
    pub(crate) fn most_writes_at_once(&self) -> usize {
        self.flight.writes.most()
    }
}

#[async_trait]
impl ContentStore for MemoryContent {
    async fn upload(&self) -> Result<Box<dyn ContentUpload>> {
        Ok(Box::new(MemoryUpload { store: self.clone(), data: Vec::new() }))
    }

    fn chunk_writes_in_flight(&self) -> usize {
        self.flight.write_depth.max(1)
    }

    fn chunk_reads_in_flight(&self) -> usize {
        self.flight.read_depth.max(1)
    }

    async fn put_whole(&self, hash: ContentHash, data: Vec<u8>) -> Result<Option<Durability>> {
        self.flight.writes.request().await;
        super::content::put_whole_by_upload(self, hash, data).await
    }

    async fn get(&self, hash: &ContentHash, size: u64) -> Result<Option<Box<dyn ContentReader>>> {
        self.flight.reads.request().await;
        Ok(self
            .blobs()
            .get(hash)
            .cloned()
            .map(|data| Box::new(MemoryReader { data, hash: *hash, size, at: 0 }) as Box<dyn ContentReader>))
    }

    async fn head(&self, hash: &ContentHash) -> Result<Option<u64>> {
        Ok(self.blobs().get(hash).map(|d| d.len() as u64))
    }

    async fn delete(&self, hash: &ContentHash) -> Result<()> {
        self.blobs().remove(hash);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ContentHash>> {
        Ok(self.blobs().keys().copied().collect())
    }

    async fn usage(&self) -> Result<(u64, u64)> {
        let blobs = self.blobs();
        Ok((blobs.len() as u64, blobs.values().map(|d| d.len() as u64).sum()))
    }

    async fn ensure_durable(&self, _hashes: &[ContentHash]) -> Result<()> {
        Ok(())
    }

    async fn verify(&self, hash: &ContentHash, size: u64) -> Result<Verdict> {
        Ok(match self.blobs().get(hash) {
            Some(d) if d.len() as u64 == size && ContentHash::of(d) == *hash => Verdict::Good,
            Some(_) => Verdict::Damaged,
            None => Verdict::Missing,
        })
    }

    async fn verified_size(&self, hash: &ContentHash) -> Result<Option<u64>> {
        Ok(self.blobs().get(hash).filter(|d| ContentHash::of(d) == *hash).map(|d| d.len() as u64))
    }

    async fn is_damaged(&self, _hash: &ContentHash) -> Result<bool> {
        Ok(false)
    }

    fn damage_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    fn take_found(&self) -> Vec<(ContentHash, u64)> {
        Vec::new()
    }

    async fn found(&self) {
        std::future::pending().await
    }
}

#[derive(Debug)]
struct MemoryUpload {
    store: MemoryContent,
    data: Vec<u8>,
}

#[async_trait]
impl ContentUpload for MemoryUpload {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn complete(self: Box<Self>, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>> {
        if self.data.len() as u64 != size {
            return Err(Error::ContentMismatch(format!(
                "received {} bytes but the header announced {size}",
                self.data.len()
            )));
        }
        let got = ContentHash::of(&self.data);
        if got != hash {
            return Err(Error::ContentMismatch(format!(
                "content hash mismatch: the header announced {hash}, the content hashes to {got}"
            )));
        }
        Ok(Box::new(MemoryStaged { store: self.store, data: self.data, hash }))
    }
}

#[derive(Debug)]
struct MemoryStaged {
    store: MemoryContent,
    data: Vec<u8>,
    hash: ContentHash,
}

#[async_trait]
impl StagedContent for MemoryStaged {
    fn hash(&self) -> ContentHash {
        self.hash
    }

    async fn read_prefix(&self, max: u64) -> Result<Vec<u8>> {
        Ok(self.data[..self.data.len().min(max as usize)].to_vec())
    }

    async fn place(self: Box<Self>) -> Result<Durability> {
        let MemoryStaged { store, data, hash } = *self;
        store.blobs().entry(hash).or_insert_with(|| Arc::new(data));
        Ok(Durability::Durable)
    }
}

#[derive(Debug)]
struct MemoryReader {
    data: Arc<Vec<u8>>,
    hash: ContentHash,
    size: u64,
    at: usize,
}

#[async_trait]
impl ContentReader for MemoryReader {
    async fn next_chunk(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.data.len() as u64 != self.size || ContentHash::of(&self.data) != self.hash {
            return Err(Error::DataLoss(format!("content {} is damaged", self.hash)));
        }
        if self.at == self.data.len() {
            return Ok(None);
        }
        let end = self.data.len().min(self.at + max);
        let chunk = self.data[self.at..end].to_vec();
        self.at = end;
        Ok(Some(chunk))
    }
}
