//! Version history on [`Store`]: reading the versions the backends keep
//! (a path's history following its moves, one version at a point, a
//! folder's state at a point, the trash), and the history-only changes
//! (labels, pins), committed through the journal's writer like any change.
//!
//! A point in time is resolved to a seq ([`Store::point_seq`]); the state
//! of a path at a seq is its newest kept version at or below it, and a
//! path whose version then is a deletion did not exist then.

use syncstore::RelPath;

use super::{
    Actor, HistoryBatch, HistoryChange, HistoryOutcome, Label, MAX_PRUNED_PER_CHANGE, PAGE_SIZE, Point,
    Store, Version, VersionKind, What, meta::Want, retention::Retention, version::Glob,
};
use crate::error::{Error, Result};

/// How many moves a path's history follows back at most (a file renamed
/// back and forth forever must not make a read endless).
pub const MAX_MOVE_HOPS: usize = 64;

/// The longest label name, in bytes.
pub const MAX_LABEL_BYTES: usize = 200;

/// The principal of a label the server sets itself.
pub const SERVER_PRINCIPAL: &str = "server";

impl Store {
    /// The kept versions of `path`, newest first, at most `limit` (0: all).
    /// Past a version that moved the file here, the versions the file had
    /// under its former name (below that move) follow.
    pub async fn versions(&self, ns: &str, path: &RelPath, limit: usize) -> Result<Vec<Version>> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        let mut out: Vec<Version> = Vec::new();
        let (mut path, mut below) = (path.clone(), u64::MAX);
        for _ in 0..=MAX_MOVE_HOPS {
            let page = self.meta().versions(ns, &path, below, limit - out.len()).await?;
            let Some(moved) = page.iter().position(|v| v.note.kind == VersionKind::Move) else {
                out.extend(page);
                return Ok(out);
            };
            let next = page[moved].note.moved_from.clone();
            below = page[moved].seq();
            out.extend(page.into_iter().take(moved + 1));
            match next {
                Some(from) if out.len() < limit => path = from,
                _ => return Ok(out),
            }
        }
        Ok(out)
    }

    /// The version of `path` at `point`: exactly that version for
    /// [`Point::Version`], else the path's newest version at or below the
    /// point's seq (which may be a deletion). `UnknownVersion`, `NotFound`
    /// (no version then), or [`Store::point_seq`]'s errors.
    pub async fn version_at(&self, ns: &str, path: &RelPath, point: &Point) -> Result<Version> {
        if let Point::Version(v) = point {
            return self
                .meta()
                .version(ns, path, *v)
                .await?
                .ok_or_else(|| Error::UnknownVersion(format!("{path} has no version {v} kept")));
        }
        let seq = self.point_seq(ns, point).await?;
        self.meta()
            .version_at(ns, path, seq)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{path} has no version at that point")))
    }

    /// The seq a point names for a folder: the state after that change.
    /// `BeforeHistory` for a time before the namespace's oldest kept
    /// version, `UnknownLabel`.
    pub async fn point_seq(&self, ns: &str, point: &Point) -> Result<u64> {
        match point {
            Point::Version(v) => Ok(*v),
            Point::Label(name) => self
                .meta()
                .label(ns, name)
                .await?
                .map(|l| l.seq)
                .ok_or_else(|| Error::UnknownLabel(format!("no label {name:?}"))),
            Point::AtMs(at) => match self.meta().seq_at_ms(ns, *at).await? {
                (Some(oldest), _) if *at < oldest => Err(Error::BeforeHistory(format!(
                    "{} is before the oldest version kept ({})",
                    syncstore::lock::format_ms(*at),
                    syncstore::lock::format_ms(oldest)
                ))),
                (_, seq) => Ok(seq.unwrap_or(0)),
            },
        }
    }

    /// The paths at `under` or below (a whole component; "" for all), in
    /// path order after `after`, up to `limit`: each with its newest kept
    /// version at or below `seq`, deletions included (the caller skips
    /// them as it needs).
    pub async fn state_at(
        &self,
        ns: &str,
        under: &str,
        seq: u64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        self.meta().state_at(ns, under, seq, after, limit).await
    }

    /// The kept versions of `ns` in (path, seq) order after `after`, up to
    /// `limit`: what retention walks.
    pub async fn versions_page(
        &self,
        ns: &str,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        self.meta().versions_page(ns, after, limit).await
    }

    /// The deleted files at `under` or below whose deletion was committed
    /// at or after `since_ms` (and that match `glob`), newest deletion
    /// first, up to `limit`: each deletion with the last version that had
    /// content. Files moved away are not in it.
    pub async fn trash(
        &self,
        ns: &str,
        under: &str,
        since_ms: i64,
        glob: Option<&Glob>,
        limit: usize,
    ) -> Result<Vec<(Version, Version)>> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.meta().list_page(ns, under, after.as_deref(), true, PAGE_SIZE).await?;
            let done = page.len() < PAGE_SIZE;
            after = page.last().map(|e| e.path.as_str().to_owned());
            for entry in page.into_iter().filter(|e| e.is_deleted()) {
                if glob.is_some_and(|g| !g.matches(entry.path.as_str())) {
                    continue;
                }
                let Some(tomb) = self.meta().version(ns, &entry.path, entry.version).await? else { continue };
                if tomb.note.kind == VersionKind::MovedAway || tomb.note.committed_ms < since_ms {
                    continue;
                }
                let before = self.meta().versions(ns, &entry.path, tomb.seq(), usize::MAX).await?;
                if let Some(last) = before.into_iter().find(|v| !v.is_deleted()) {
                    found.push((tomb, last));
                }
            }
            if done {
                break;
            }
        }
        found.sort_by_key(|(tomb, _)| std::cmp::Reverse(tomb.seq()));
        found.truncate(limit);
        Ok(found)
    }

    /// Commits a history write (restore, undelete, rewind) in one
    /// transaction through the writer.
    ///
    /// Each write with `to` brings back that version's content (a
    /// `Restore` version recording `restored_from`), each without deletes
    /// the path. Content is held during the commit; the checks are a
    /// put's (base version when given, lock, path clash) and a deletion
    /// needs a live file. A refused write fails the batch (nothing
    /// written) unless `skip_refused`, which skips and counts it. With
    /// `label`, the automatic label of the state just before (the head) is
    /// written first, in the same transaction, if anything is written.
    /// The changes are broadcast like any; waiting for a sync replica is
    /// the caller's, as for a put.
    pub async fn commit_history(&self, ns: &str, batch: HistoryBatch) -> Result<HistoryOutcome> {
        if let Some(name) = &batch.label {
            check_label_name(name)?;
        }
        self.commit_history_batch(ns, batch).await
    }

    /// Names the state after change `seq` of `ns`: a logged change, so the
    /// replica has it too. `LabelExists` if the name is taken.
    pub async fn set_label(&self, ns: &str, name: &str, seq: u64, note: &str, who: &Actor) -> Result<Label> {
        self.put_label(ns, name, seq, note, false, &who.principal).await
    }

    /// Sets the automatic label `name` (the server's own: before a rewind,
    /// by the mass-change guard).
    pub async fn set_automatic_label(&self, ns: &str, name: &str, seq: u64, note: &str) -> Result<Label> {
        self.put_label(ns, name, seq, note, true, SERVER_PRINCIPAL).await
    }

    async fn put_label(
        &self,
        ns: &str,
        name: &str,
        seq: u64,
        note: &str,
        automatic: bool,
        principal: &str,
    ) -> Result<Label> {
        check_label_name(name)?;
        syncstore::limits::check_note(note).map_err(Error::InvalidField)?;
        let (ns_owned, name, note, principal) =
            (ns.to_owned(), name.to_owned(), note.to_owned(), principal.to_owned());
        let changes = self
            .commit_history_only(ns, move |store, head| async move {
                if store.meta().label(&ns_owned, &name).await?.is_some() {
                    return Err(Error::LabelExists(format!("a label {name:?} exists")));
                }
                let seq = seq.min(head);
                let committed_ms = store.meta().committed_ms_at(&ns_owned, seq).await?.unwrap_or(0);
                let label = Label { name, seq, committed_ms, note, automatic, principal };
                Ok((vec![HistoryChange::LabelSet(label)], Vec::new()))
            })
            .await?;
        match changes.into_iter().next().map(|c| c.what) {
            Some(What::History(HistoryChange::LabelSet(l))) => Ok(l),
            other => Err(Error::Internal(format!("a label commit wrote {other:?}"))),
        }
    }

    /// The labels of `ns`, oldest first.
    pub async fn labels(&self, ns: &str) -> Result<Vec<Label>> {
        self.meta().labels(ns).await
    }

    /// Removes the label `name` of `ns` (`UnknownLabel`).
    pub async fn delete_label(&self, ns: &str, name: &str) -> Result<()> {
        let (ns_owned, name) = (ns.to_owned(), name.to_owned());
        self.commit_history_only(ns, move |store, _| async move {
            if store.meta().label(&ns_owned, &name).await?.is_none() {
                return Err(Error::UnknownLabel(format!("no label {name:?}")));
            }
            Ok((vec![HistoryChange::LabelRemoved(name)], Vec::new()))
        })
        .await?;
        Ok(())
    }

    /// Pins (or unpins) version `seq` of `path`: retention never removes a
    /// pinned version. `UnknownVersion`.
    pub async fn pin(&self, ns: &str, path: &RelPath, seq: u64, pinned: bool) -> Result<Version> {
        let (ns_owned, path) = (ns.to_owned(), path.clone());
        let at = path.clone();
        self.commit_history_only(ns, move |store, _| async move {
            if store.meta().version(&ns_owned, &path, seq).await?.is_none() {
                return Err(Error::UnknownVersion(format!("{path} has no version {seq} kept")));
            }
            Ok((vec![HistoryChange::Pin { path, seq, pinned }], Vec::new()))
        })
        .await?;
        self.meta()
            .version(ns, &at, seq)
            .await?
            .ok_or_else(|| Error::UnknownVersion(format!("{at} has no version {seq} kept")))
    }
}

impl Store {
    /// The retention set at run time ([`Store::set_retention`]), per
    /// namespace; a namespace without one has the config file's.
    pub async fn retentions(&self) -> Result<Vec<(String, Retention)>> {
        self.meta().retentions().await
    }

    /// Sets the retention of `ns` at run time: a logged change, so it
    /// survives a restart and reaches the replica. The policy's checks are
    /// the caller's.
    pub async fn set_retention(&self, ns: &str, retention: Retention) -> Result<()> {
        self.commit_history_only(ns, move |_, _| async move {
            Ok((vec![HistoryChange::Retention(retention)], Vec::new()))
        })
        .await?;
        Ok(())
    }

    /// Removes versions of `ns` (retention's decision), as logged prune
    /// changes of at most [`MAX_PRUNED_PER_CHANGE`] versions each, in one
    /// transaction; then hands their content to garbage collection, which
    /// removes what nothing else refers to. A path's current version is
    /// never removed (skipped, whatever the caller says), nor is one
    /// already gone. Returns the versions removed.
    pub async fn prune(&self, ns: &str, versions: Vec<(RelPath, u64)>) -> Result<Vec<Version>> {
        let ns_owned = ns.to_owned();
        let removed: std::sync::Arc<std::sync::Mutex<Vec<Version>>> = std::sync::Arc::default();
        let out = removed.clone();
        self.commit_history_only(ns, move |store, _| async move {
            let mut gone = Vec::new();
            for (path, seq) in versions {
                let Some(v) = store.meta().version(&ns_owned, &path, seq).await? else { continue };
                let current = store.meta().facts(&ns_owned, &path, Want::default()).await?.current;
                if current.is_some_and(|c| c.version == seq) {
                    tracing::warn!(%path, seq, "not pruning a file's current version");
                    continue;
                }
                gone.push(v);
            }
            let hashes = gone.iter().filter_map(|v| v.entry.content.map(|c| c.hash)).collect();
            let changes = gone
                .chunks(MAX_PRUNED_PER_CHANGE)
                .map(|page| {
                    HistoryChange::Prune(page.iter().map(|v| (v.entry.path.clone(), v.seq())).collect())
                })
                .collect();
            *out.lock().unwrap_or_else(|p| p.into_inner()) = gone;
            Ok((changes, hashes))
        })
        .await?;
        let removed = std::mem::take(&mut *removed.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(removed)
    }
}

/// Whether `name` may name a label: 1 to [`MAX_LABEL_BYTES`] bytes, no
/// control character.
pub fn check_label_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_LABEL_BYTES || name.chars().any(char::is_control) {
        return Err(Error::InvalidField(format!(
            "a label name must have 1 to {MAX_LABEL_BYTES} bytes and no control character"
        )));
    }
    Ok(())
}
