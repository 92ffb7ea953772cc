//! The sync engine: applies the planner's decisions to one path at a time,
//! and runs full reconciliations, local rescans and remote change events
//! through the same per-path step.
//!
//! Invariants:
//! - A base is written only after the action it records is durable on both
//!   sides (after the server acknowledged, or after the rename into place).
//! - A local file is replaced or deleted only if it still has the size and
//!   mtime the plan was made from; otherwise the path is planned again.
//! - Work is done by one task, one path at a time, so a change event about
//!   a path is never applied while that path is being uploaded. The one
//!   exception, in `watch`, is the large lane: a plain transfer of at least
//!   [`LARGE_LANE_MIN`] bytes runs beside the loop, so that small changes
//!   either way do not wait behind it; until it ends, nothing else is done
//!   about its path (events for it are left, and the path is planned again
//!   from fresh facts when the transfer ends).

use std::{
    collections::{BTreeSet, HashSet},
    path::PathBuf,
    sync::Arc,
};

use futures::StreamExt;
use syncstore::{Entry, Lock, RelPath};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::{Error, Result},
    folder::Folder,
    fsmeta::{Kind, Meta},
    fsroot::{self, Dir, Root},
    local::{self, HardLinks, IGNORE_FILE, Ignore, LocalView},
    locks::Locks,
    metrics::ClientMetrics,
    plan::{self, Action, Base, Local},
    progress::Progress,
    refusal::Refusal,
    remote::{Remote, RemoteEvent, ServerInfo},
    state::State,
    transfer::{self, UploadBase},
};

/// Times one path is planned again after a race (a version conflict, or a
/// file that changed under our feet) before it is left for the next retry.
const MAX_ATTEMPTS: usize = 4;
/// Uploads and downloads a full sync runs at once. Many small files in
/// flight let the server commit them in large batches (one sync each);
/// the server takes 24 uploads per namespace at once, so two clients of a
/// namespace still rarely wait for a slot.
const PARALLEL_TRANSFERS: usize = 16;
/// Of those, transfers of files above [`SMALL_TRANSFER`]: each holds a few
/// 1 MiB chunks in its pipeline, so this bounds the memory they take.
const PARALLEL_LARGE_TRANSFERS: usize = 8;
/// Largest file counted as small for [`PARALLEL_LARGE_TRANSFERS`].
const SMALL_TRANSFER: u64 = 256 * 1024;
/// In `watch`, a plain upload or download of at least this many bytes runs
/// in the large lane, beside the engine's loop (at 10 MB/s, under half a
/// second is spent on a smaller one in the loop). The default of
/// [`Lane::min_size`].
pub const LARGE_LANE_MIN: u64 = 4 * 1024 * 1024;
/// Large-lane transfers at once (each holds a few 1 MiB chunks); another
/// large transfer meanwhile runs in the loop.
const LARGE_LANE_MAX: usize = 4;
/// Files at least this big are first offered to the server by hash alone,
/// in case it already holds their content (a move, a copy, another
/// client's identical file): one round trip instead of the whole file.
const REUSE_PROBE_MIN: u64 = 256 * 1024;

/// What the engine knows of a path's server side.
#[derive(Debug, Clone)]
pub enum RemoteView {
    /// Ask the server only if the local file changed (a local event: a
    /// server-side change arrives by subscription).
    IfLocalChanged,
    /// Ask the server.
    Fetch,
    /// Already known (from a listing or a change event).
    Known(Option<Entry>),
}

/// One path's plan, with what it was made from.
#[derive(Debug, Clone)]
pub struct Planned {
    pub path: RelPath,
    pub action: Action,
    pub local: Option<Local>,
    pub base: Option<Base>,
    pub remote: Option<Entry>,
}

impl Planned {
    /// Bytes the action moves over the network (0 for a delete or a record).
    pub fn transfer_size(&self) -> u64 {
        let local = self.local.map_or(0, |l| l.size);
        let remote = self.remote.as_ref().and_then(|r| r.content).map_or(0, |c| c.size);
        match self.action {
            Action::Upload { .. } => local,
            Action::Download => remote,
            Action::Conflict => local + remote,
            _ => 0,
        }
    }
}

/// The plans of a whole reconciliation.
#[derive(Debug)]
pub struct PlanAll {
    pub plans: Vec<Planned>,
    /// Paths that could not be planned (unreadable, still being written).
    pub failed: Vec<(RelPath, Error)>,
    /// The server's head when the manifest was read.
    pub head: u64,
}

/// A large-lane transfer that ended, for [`Engine::lane_done`].
#[derive(Debug)]
pub struct LaneDone {
    pub path: RelPath,
    pub result: Result<()>,
}

/// Where large-lane transfers run (see [`Engine::with_lane`]).
#[derive(Debug, Clone)]
pub struct Lane {
    /// Each transfer says here that it ended.
    pub done: mpsc::Sender<LaneDone>,
    /// The transfers' tasks, awaited when the client stops.
    pub tasks: TaskTracker,
    /// Cancels the transfers when the client stops.
    pub stop: CancellationToken,
    /// Plain transfers of at least this many bytes run in the lane
    /// ([`LARGE_LANE_MIN`]; 0 sends every plain transfer there).
    pub min_size: u64,
}

/// Applies sync decisions to the folder and the server.
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    /// The folder's handles: every write to it goes through them.
    folder: Folder,
    /// The bases, cursor and history (the database only).
    state: State,
    remote: Arc<dyn Remote>,
    ignore: Ignore,
    host: String,
    /// Paths whose last attempt failed; retried later.
    failed: BTreeSet<RelPath>,
    /// False when only planning (`status`): nothing may be written, and
    /// bases from another server history are ignored rather than dropped.
    acting: bool,
    /// Whether the stored bases belong to the server's current history.
    bases_valid: bool,
    /// The server's live locks.
    locks: Locks,
    metrics: ClientMetrics,
    /// The server refuses writes for now (its sync replica is away).
    refusal: Refusal,
    /// The large lane, in `watch` (none: every transfer runs in the loop).
    lane: Option<Lane>,
    /// Paths with a large-lane transfer running.
    in_lane: HashSet<RelPath>,
    /// The names of files with several links, from the last scan and the
    /// events since.
    links: HardLinks,
}

impl Engine {
    pub fn new(folder: Folder, state: State, remote: Arc<dyn Remote>, host: String) -> Self {
        let root = folder.path().to_path_buf();
        let ignore = Ignore::load(&root);
        let locks = Locks::new(remote.client_id().to_owned(), state.clone(), folder.root().clone());
        Self {
            root,
            folder,
            state,
            locks,
            remote,
            ignore,
            host,
            failed: BTreeSet::new(),
            refusal: Refusal::default(),
            acting: true,
            bases_valid: true,
            metrics: ClientMetrics::new(),
            lane: None,
            in_lane: HashSet::new(),
            links: HardLinks::default(),
        }
    }

    /// Runs large transfers in `lane`, beside the loop (see the module doc).
    pub fn with_lane(self, lane: Lane) -> Self {
        Self { lane: Some(lane), ..self }
    }

    /// An engine for one large-lane transfer: the shared state, and a copy
    /// of what is known of the locks (for this client's lock token).
    fn lane_engine(&self) -> Self {
        Self {
            root: self.root.clone(),
            folder: self.folder.clone(),
            state: self.state.clone(),
            remote: self.remote.clone(),
            ignore: self.ignore.clone(),
            host: self.host.clone(),
            failed: BTreeSet::new(),
            refusal: Refusal::default(),
            acting: self.acting,
            bases_valid: self.bases_valid,
            locks: self.locks.clone(),
            metrics: self.metrics.clone(),
            lane: None,
            in_lane: HashSet::new(),
            links: HardLinks::default(),
        }
    }

    /// Counts into `metrics` (shared with a metrics endpoint).
    pub fn with_metrics(self, metrics: ClientMetrics) -> Self {
        Self { metrics, ..self }
    }

    /// An engine that only plans (for `status`): it never writes the state.
    pub fn planner(folder: Folder, state: State, remote: Arc<dyn Remote>, host: String) -> Self {
        Self { acting: false, ..Self::new(folder, state, remote, host) }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn has_failures(&self) -> bool {
        !self.failed.is_empty()
    }

    /// Checks the server's history id. On a server whose history is not
    /// the one the bases came from, forget the bases (and cursor): every
    /// path is then met as for the first time, which deletes nothing.
    pub async fn check_history(&mut self) -> Result<ServerInfo> {
        let info = self.remote.info().await?;
        let known = self.state.get_meta("history_id")?;
        if known.as_deref() != Some(info.history_id.as_str()) {
            if !self.acting {
                self.bases_valid = known.is_none();
                return Ok(info);
            }
            if known.is_some() {
                tracing::warn!(
                    old = known.as_deref().unwrap_or(""),
                    new = %info.history_id,
                    "the server's history changed (data folder replaced?): re-comparing every file without deleting any"
                );
            }
            self.state.reset_history(&info.history_id)?;
        }
        Ok(info)
    }

    /// The plan for every path known here, at the last sync or on the
    /// server, without acting on it. Also returns the server's head at the
    /// time of the listing.
    pub async fn plan_all(&mut self) -> Result<PlanAll> {
        let info = self.check_history().await?;
        self.load_locks().await?;
        let mut remote = self.remote.manifest().await?;
        let (root, ignore) = (self.root.clone(), self.ignore.clone());
        let (local, links) =
            tokio::task::spawn_blocking(move || local::scan_linked(&root, &root, &ignore)).await??;
        self.links = links;
        let mut bases = if self.bases_valid { self.all_bases().await? } else { Default::default() };
        let paths: BTreeSet<RelPath> =
            local.keys().chain(bases.keys()).chain(remote.keys()).cloned().collect();
        // What the folder says of every path, in one pass off the async
        // workers (a hand-off per path costs more than its `stat`), with the
        // bases read once.
        let (root, ignore) = (self.folder.root().clone(), self.ignore.clone());
        let gathered = tokio::task::spawn_blocking(move || {
            // Paths in order: a folder's files follow each other, so its
            // handle is opened once for all of them.
            let mut parent = None;
            paths
                .into_iter()
                .filter(|p| !ignore.is_ignored(p, false))
                .map(|p| {
                    let base = bases.remove(&p);
                    // What the scan just saw of an unchanged file is as
                    // good as another look.
                    let seen = base.as_ref().zip(local.get(&p)).and_then(|(b, m)| local::unchanged(m, b));
                    let facts = match seen {
                        Some(l) => Ok((base, LocalView::File(l))),
                        None => gather(&root, &mut parent, &p, base),
                    };
                    (p, facts)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut all =
            PlanAll { plans: Vec::with_capacity(gathered.len()), failed: Vec::new(), head: info.head_seq };
        for (path, facts) in gathered {
            // One unreadable or still-growing file must not hold up the rest.
            let planned = match facts {
                Ok((base, view)) => {
                    self.plan_from(&path, RemoteView::Known(remote.remove(&path)), base, view).await
                }
                Err(e) => Err(e),
            };
            match planned {
                Ok(Some(p)) => all.plans.push(p),
                Ok(None) => {}
                Err(e) if e.is_unavailable() => return Err(e),
                Err(e) => all.failed.push((path, e)),
            }
        }
        Ok(all)
    }

    /// Reconciles everything: the whole folder against the whole manifest.
    /// Returns how many paths needed an action.
    pub async fn full_sync(&mut self) -> Result<usize> {
        let PlanAll { plans, failed, head } = self.plan_all().await?;
        let mut acted = failed.len();
        for (path, e) in failed {
            self.note_failure(path, &e);
        }
        // Deletions last, so content that moved is still on the server when
        // its new name is uploaded.
        // A path in the large lane is planned again when its transfer ends.
        let (mut deletes, others): (Vec<_>, Vec<_>) = plans
            .into_iter()
            .filter(|p| p.action != Action::Nothing && !self.in_lane.contains(&p.path))
            .partition(|p| matches!(p.action, Action::DeleteRemote { .. } | Action::DeleteLocal));
        // What lies below a folder goes before the folder.
        deletes.sort_by(|a, b| b.path.cmp(&a.path));
        let mut progress = Progress::new(
            (deletes.len() + others.len()) as u64,
            others.iter().map(Planned::transfer_size).sum(),
        );
        // Plain transfers of distinct paths run several at a time; what
        // fails among them, and every other action, goes one at a time
        // through `execute_and_retry`.
        let (parallel, serial): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|p| self.is_plain_transfer(p));
        let mut again = Vec::new();
        {
            let this = &*self;
            let large = tokio::sync::Semaphore::new(PARALLEL_LARGE_TRANSFERS);
            let large = &large;
            let mut done = futures::stream::iter(parallel)
                .map(|p| async move {
                    let big = p.transfer_size() > SMALL_TRANSFER;
                    let _slot = if big { Some(large.acquire().await.expect("never closed")) } else { None };
                    let r = this.transfer(&p).await;
                    (p, r)
                })
                .buffer_unordered(PARALLEL_TRANSFERS);
            while let Some((planned, result)) = done.next().await {
                match result {
                    Ok(()) => {
                        acted += 1;
                        progress.advance(planned.transfer_size());
                    }
                    Err(_) => again.push(planned),
                }
            }
        }
        for planned in again.into_iter().chain(serial).chain(deletes) {
            acted += 1;
            let (path, size) = (planned.path.clone(), planned.transfer_size());
            if let Err(e) = self.execute_and_retry(planned).await {
                self.note_failure(path, &e);
            }
            progress.advance(size);
        }
        progress.finish();
        // Changes after `head` arrive by subscription (again, harmlessly,
        // if the listing already showed them).
        if head > self.state.cursor()? {
            self.state.set_cursor(head)?;
        }
        Ok(acted)
    }

    /// Whether a plan is a plain upload or download that [`Engine::transfer`]
    /// can run beside others: no lock in the way, no folder to move aside.
    fn is_plain_transfer(&self, p: &Planned) -> bool {
        let unlocked = self.locks.by_other(&p.path).is_none();
        match p.action {
            Action::Upload { .. } => unlocked && p.local.is_some(),
            Action::Download => {
                let remote_folder = p.remote.as_ref().and_then(|r| r.content).is_some_and(|c| c.folder);
                let same_kind = p.local.is_none_or(|l| l.folder == remote_folder);
                unlocked
                    && same_kind
                    && (p.local.is_some() || !matches!(self.folder.root().stat(&p.path), Ok(Kind::Dir)))
            }
            _ => false,
        }
    }

    /// Runs a plain upload or download (see [`Engine::is_plain_transfer`]);
    /// only shared state is touched, so several can run at once.
    async fn transfer(&self, p: &Planned) -> Result<()> {
        let path = &p.path;
        match p.action {
            Action::Upload { base_version } => self.upload(p, base_version).await?,
            Action::Download => {
                let remote = p.remote.as_ref().expect("Download is planned for a server file");
                self.download(remote, p.local.map(meta_of)).await?;
                tracing::info!(%path, version = remote.version, why = p.action.describe(), "downloaded");
            }
            _ => unreachable!("only plain transfers run here"),
        }
        Ok(())
    }

    /// Uploads a planned local file based on `base_version`, carrying this
    /// client's lock token, and records the new base.
    async fn upload(&self, p: &Planned, base_version: u64) -> Result<()> {
        let (path, l) = (&p.path, p.local.expect("Upload is planned for a local file"));
        let base = UploadBase {
            version: base_version,
            lock_token: self.locks.token(path),
            reuse: l.size >= REUSE_PROBE_MIN || self.state.knows_hash(&l.hash)?,
        };
        self.state.note_sent(path, &l.hash)?;
        let (entry, sent) = transfer::upload(&*self.remote, self.folder.root(), path, l, base).await?;
        self.state.set_base(path, &base_of(entry.version, l))?;
        self.state.clear_sent(path)?;
        self.metrics.uploads.inc();
        if sent {
            self.metrics.upload_bytes.inc_by(l.size);
        }
        tracing::info!(%path, version = entry.version, size = l.size, why = p.action.describe(), "uploaded");
        Ok(())
    }

    /// Looks again at every local file and every base (the periodic check
    /// that catches what the watcher missed), and retries failed paths.
    pub async fn rescan(&mut self) -> Result<usize> {
        let (root, ignore) = (self.root.clone(), self.ignore.clone());
        let (local, links) =
            tokio::task::spawn_blocking(move || local::scan_linked(&root, &root, &ignore)).await??;
        self.links = links;
        let bases = self.all_bases().await?;
        let mut paths: BTreeSet<RelPath> = local.keys().chain(bases.keys()).cloned().collect();
        let retry = std::mem::take(&mut self.failed);
        paths.extend(retry.iter().cloned());
        // Files that are here first, then the ones that went: a moved file's
        // new name is uploaded (reusing the content the server holds) before
        // its old name is deleted there.
        let (present, gone): (Vec<_>, Vec<_>) = paths.into_iter().partition(|p| local.contains_key(p));
        let mut acted = 0;
        for path in present.into_iter().chain(gone.into_iter().rev()) {
            let view = if retry.contains(&path) { RemoteView::Fetch } else { RemoteView::IfLocalChanged };
            match self.sync_path(&path, view).await {
                Ok(true) => acted += 1,
                Ok(false) => {}
                Err(e) => self.note_failure(path, &e),
            }
        }
        Ok(acted)
    }

    /// Retries the paths that failed before.
    pub async fn retry_failed(&mut self) {
        if self.remote.has_fallback() {
            // The failures may come from a primary that went away, or from a
            // replica refusing writes: choose the server again first.
            if let Err(e) = self.check_history().await {
                tracing::debug!(error = %e, "no server answers yet");
                return;
            }
        }
        let mut paths = std::mem::take(&mut self.failed).into_iter();
        while let Some(path) = paths.next() {
            if let Err(e) = self.sync_path(&path, RemoteView::Fetch).await {
                let down = e.is_unavailable();
                self.failed.insert(path);
                if down {
                    // The server is away: the rest waits for the next round.
                    self.failed.extend(paths);
                    return;
                }
                tracing::debug!(error = %e, "retry failed again");
            }
        }
    }

    /// Handles a local event on `path`: a file, a folder (everything below
    /// it), or something gone (itself and every synced path below it).
    pub async fn local_event(&mut self, path: RelPath) {
        if path.as_str() == IGNORE_FILE {
            self.ignore = Ignore::load(&self.root);
        }
        let full = path.to_local(&self.root);
        let mut paths = BTreeSet::from([path.clone()]);
        match self.folder.root().stat(&path) {
            Ok(Kind::Dir) => {
                let (root, ignore) = (self.root.clone(), self.ignore.clone());
                match tokio::task::spawn_blocking(move || local::scan_linked(&root, &full, &ignore)).await {
                    Ok(Ok((found, links))) => {
                        paths.extend(found.into_keys());
                        self.links.merge(links);
                    }
                    Ok(Err(e)) => tracing::warn!(%path, error = %e, "cannot scan folder"),
                    Err(e) => tracing::warn!(%path, error = %e, "cannot scan folder"),
                }
                paths.extend(self.bases_under(&path));
            }
            Ok(Kind::Missing) => {
                paths.extend(self.bases_under(&path));
                // Its folder may now be empty: an entry of its own.
                if let Ok(parent) = RelPath::new(path.parent()) {
                    paths.insert(parent);
                }
            }
            _ => {}
        }
        // A file with several names, written through this one, changed
        // under its other names too: the watcher reports only this one.
        let md = self.folder.root().parent(&path).and_then(|d| d.metadata(path.file_name()));
        self.links.note(&path, md.as_ref().ok());
        let others: Vec<RelPath> = paths.iter().flat_map(|p| self.links.others(p)).collect();
        paths.extend(others);
        // Below a folder before the folder (deletions must go in that order).
        for p in paths.into_iter().rev() {
            if let Err(e) = self.sync_path(&p, RemoteView::IfLocalChanged).await {
                self.note_failure(p, &e);
            }
        }
    }

    /// Applies one change event from the server and advances the cursor.
    pub async fn remote_event(&mut self, event: RemoteEvent) -> Result<()> {
        let seq = event.seq();
        match event {
            RemoteEvent::Reset { .. } => {
                tracing::info!(seq, "the server asked for a full re-sync");
                self.full_sync().await?;
            }
            // A refused entry is skipped (and logged); the cursor still
            // moves past it.
            RemoteEvent::Entry { entry, .. } => {
                // An event older than the path's base says nothing new (this
                // client's own earlier upload, say, arriving after a later
                // one was recorded); acting on it would bring back an old
                // version.
                let stale = |e: &Entry| {
                    self.state.base(&e.path).ok().flatten().is_some_and(|b| e.version < b.version)
                };
                if let Some(entry) = entry.filter(|e| !stale(e)) {
                    let path = entry.path.clone();
                    if let Err(e) = self.sync_path(&path, RemoteView::Known(Some(entry))).await {
                        self.note_failure(path, &e);
                    }
                }
            }
            RemoteEvent::Locked { lock, .. } => self.lock_granted(lock),
            RemoteEvent::Unlocked { lock, .. } => self.lock_ended(&lock),
            RemoteEvent::Skipped { .. } => {}
        }
        if seq > self.state.cursor()? {
            self.state.set_cursor(seq)?;
        }
        Ok(())
    }

    fn bases_under(&self, dir: &RelPath) -> Vec<RelPath> {
        match self.state.paths_below(dir) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the state database");
                Vec::new()
            }
        }
    }

    /// Whether the synced folder itself is gone: the client must stop.
    pub fn folder_gone(&self) -> bool {
        self.acting && !self.folder.present()
    }

    fn note_failure(&mut self, path: RelPath, e: &Error) {
        self.metrics.errors.inc();
        if self.refusal.note(&self.state, e) {
            // Said once, by `note`.
        } else if e.is_unavailable() {
            tracing::debug!(%path, error = %e, "server unavailable; will retry");
        } else {
            tracing::warn!(%path, error = %e, "sync failed; will retry");
        }
        self.failed.insert(path);
    }

    /// Why the server refused this client's writes, while it still does.
    pub fn writes_refused(&self) -> Option<&str> {
        self.refusal.current()
    }

    /// Publishes how many paths wait for a retry; with none left, a
    /// refusal met before is over.
    pub fn update_pending(&mut self) {
        if self.failed.is_empty() {
            self.refusal.clear(&self.state);
        }
        self.metrics.pending.set(self.failed.len() as i64);
    }

    /// Every base, read on a blocking thread (it is the whole table).
    async fn all_bases(&self) -> Result<std::collections::HashMap<RelPath, Base>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.all_bases()).await?
    }

    /// Whether this folder's ignore rules exclude `path`.
    pub fn is_ignored(&self, path: &RelPath) -> bool {
        self.ignore.is_ignored(path, false)
    }

    /// Plans one path. `None` when the path is not for syncing (ignored, a
    /// folder, a symlink) or not settled yet.
    pub async fn plan(&self, path: &RelPath, remote: RemoteView) -> Result<Option<Planned>> {
        if self.ignore.is_ignored(path, false) {
            return Ok(None);
        }
        let base = if self.bases_valid { self.state.base(path)? } else { None };
        let (root, p) = (self.folder.root().clone(), path.clone());
        let (base, view) = tokio::task::spawn_blocking(move || gather(&root, &mut None, &p, base)).await??;
        self.plan_from(path, remote, base, view).await
    }

    /// Plans one path from what the folder and the state say of it.
    async fn plan_from(
        &self,
        path: &RelPath,
        remote: RemoteView,
        base: Option<Base>,
        view: LocalView,
    ) -> Result<Option<Planned>> {
        let local = match view {
            LocalView::File(l) => Some(l),
            LocalView::Missing => None,
            LocalView::Unsettled => {
                tracing::debug!(%path, "still being written; will look again");
                return Err(Error::ChangedWhileReading);
            }
            // A folder is an entry of its own when it is empty, or synced
            // as one already; otherwise it is just where files live.
            LocalView::Dir(folder)
                if base.is_some_and(|b| b.folder) || self.folder.root().is_empty_dir(path) =>
            {
                Some(folder)
            }
            LocalView::Dir(folder) => {
                let remote = match remote {
                    RemoteView::Known(r) => r,
                    RemoteView::Fetch => self.remote_stat(path).await?,
                    RemoteView::IfLocalChanged if base.is_some() => self.remote_stat(path).await?,
                    RemoteView::IfLocalChanged => return Ok(None),
                };
                if remote.as_ref().and_then(|e| e.content).is_some_and(|c| c.folder) {
                    // The server's folder entry meets this folder.
                    let action = plan::decide(Some(&folder), base.as_ref(), remote.as_ref());
                    return Ok(Some(Planned {
                        path: path.clone(),
                        action,
                        local: Some(folder),
                        base,
                        remote,
                    }));
                }
                // A folder where a file was synced (this side deleted the
                // file), or where the server has a file: plan the file as
                // missing here. A download then makes room for it.
                if base.is_none() && remote.as_ref().is_none_or(Entry::is_deleted) {
                    return Ok(None);
                }
                let action = plan::decide(None, base.as_ref(), remote.as_ref());
                return Ok(Some(Planned { path: path.clone(), action, local: None, base, remote }));
            }
            LocalView::Other => return Ok(None),
        };
        let remote = match remote {
            RemoteView::Known(r) => r,
            RemoteView::Fetch => self.remote_stat(path).await?,
            RemoteView::IfLocalChanged => {
                let changed = match &base {
                    Some(b) => plan::local_changed(local.as_ref(), b),
                    None => local.is_some(),
                };
                if !changed {
                    self.refresh_base(path, local.as_ref(), base.as_ref())?;
                    return Ok(Some(Planned {
                        path: path.clone(),
                        action: Action::Nothing,
                        local,
                        base,
                        remote: None,
                    }));
                }
                self.remote_stat(path).await?
            }
        };
        let base = self.own_version(path, base, remote.as_ref())?;
        let action = plan::decide(local.as_ref(), base.as_ref(), remote.as_ref());
        if action == Action::Nothing {
            self.refresh_base(path, local.as_ref(), base.as_ref())?;
        }
        Ok(Some(Planned { path: path.clone(), action, local, base, remote }))
    }

    /// The base of `path`, or the server's version of it if this client
    /// wrote that version after the base (its id on the entry, content it
    /// sent for the path): an upload whose answer was lost (a cut
    /// connection, a crash) is this folder's own past, not a change from
    /// elsewhere, so it stands in for the base instead of making a
    /// conflict. Its size, mtime and stamp are unknown here, so the local
    /// file is compared by hash.
    fn own_version(
        &self,
        path: &RelPath,
        base: Option<Base>,
        remote: Option<&Entry>,
    ) -> Result<Option<Base>> {
        let Some((entry, c)) = remote.and_then(|r| Some((r, r.content?))) else { return Ok(base) };
        if entry.client_id != self.remote.client_id()
            || base.is_some_and(|b| b.version >= entry.version)
            || !self.state.was_sent(path, &c.hash)?
        {
            return Ok(base);
        }
        tracing::info!(%path, version = entry.version, "the server holds this client's own upload, whose answer was lost: taking it as synced");
        Ok(Some(Base {
            version: entry.version,
            hash: c.hash,
            size: c.size,
            mtime_ns: c.mtime_ns,
            executable: c.executable,
            symlink: c.symlink,
            folder: c.folder,
            stamp: 0,
        }))
    }

    /// The server's entry of `path`, which must be about `path`.
    async fn remote_stat(&self, path: &RelPath) -> Result<Option<Entry>> {
        match self.remote.stat(path).await? {
            Some(e) if e.path != *path => Err(Error::Protocol(format!(
                "asked about {path}, the server answered about {}",
                e.path.as_str().escape_debug()
            ))),
            other => Ok(other),
        }
    }

    /// A file whose content matches its base but whose size, mtime or stamp
    /// moved (touched, or recorded while racy) gets its base refreshed, so
    /// that it is not hashed at every look.
    fn refresh_base(&self, path: &RelPath, local: Option<&Local>, base: Option<&Base>) -> Result<()> {
        if let (true, Some(l), Some(b)) = (self.acting, local, base)
            && l.hash == b.hash
            && l.executable == b.executable
            && !meta_of(*l).matches(b)
        {
            let fresh = base_of(b.version, *l);
            if fresh != *b {
                self.state.set_base(path, &fresh)?;
            }
        }
        Ok(())
    }

    /// Plans and executes one path (a large transfer in the large lane, if
    /// there is one). Returns whether anything was done.
    pub async fn sync_path(&mut self, path: &RelPath, remote: RemoteView) -> Result<bool> {
        if self.in_lane.contains(path) {
            return Ok(false); // Planned again when its transfer ends.
        }
        match self.plan(path, remote).await? {
            Some(planned) if planned.action != Action::Nothing => {
                if !self.start_in_lane(&planned) {
                    self.execute_and_retry(planned).await?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Starts `p` in the large lane if it is a plain transfer big enough and
    /// the lane has room. Returns whether it did.
    fn start_in_lane(&mut self, p: &Planned) -> bool {
        let Some(lane) = &self.lane else { return false };
        if p.transfer_size() < lane.min_size
            || self.in_lane.len() >= LARGE_LANE_MAX
            || !self.is_plain_transfer(p)
        {
            return false;
        }
        let (engine, lane, p) = (self.lane_engine(), lane.clone(), p.clone());
        self.in_lane.insert(p.path.clone());
        tracing::debug!(path = %p.path, size = p.transfer_size(), "transfer runs in the large lane");
        lane.tasks.spawn(async move {
            let result = tokio::select! {
                () = lane.stop.cancelled() => return,
                r = engine.transfer(&p) => r,
            };
            let _ = lane.done.send(LaneDone { path: p.path, result }).await;
        });
        true
    }

    /// A large-lane transfer ended: its path is planned again from fresh
    /// facts (it may have changed on either side meanwhile). One refused for
    /// a lock or a file/folder clash is dealt with here, in the loop.
    pub async fn lane_done(&mut self, done: LaneDone) {
        let LaneDone { path, result } = done;
        self.in_lane.remove(&path);
        let again = match result {
            Ok(()) => self.sync_path(&path, RemoteView::Fetch).await.map(drop),
            Err(e) if e.is_locked() || e.is_stale_lock() || e.is_path_clash() => {
                tracing::debug!(%path, error = %e, "a large transfer was refused; dealing with it here");
                match self.plan(&path, RemoteView::Fetch).await {
                    Ok(Some(p)) if p.action != Action::Nothing => self.execute_and_retry(p).await,
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) if e.is_race() => {
                tracing::debug!(%path, error = %e, "a large transfer lost a race; planning again");
                self.sync_path(&path, RemoteView::Fetch).await.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = again {
            self.note_failure(path, &e);
        }
    }

    /// Executes a plan; when it loses a race (the server moved on, or the
    /// local file changed), plans again from fresh facts, a few times.
    async fn execute_and_retry(&mut self, mut planned: Planned) -> Result<()> {
        let path = planned.path.clone();
        for attempt in 1.. {
            match self.execute(&planned).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < MAX_ATTEMPTS && e.is_race() => {
                    tracing::debug!(%path, error = %e, attempt, "lost a race; planning again");
                    if e.is_locked() || e.is_stale_lock() {
                        // Our view of the path's lock was out of date.
                        let lock = self.remote.lock_on(&path).await?;
                        self.locks.set(&path, lock);
                    }
                    if e.is_path_clash() {
                        self.resolve_clash(&path).await?;
                    }
                    match self.plan(&path, RemoteView::Fetch).await? {
                        Some(p) if p.action != Action::Nothing => planned = p,
                        _ => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns")
    }

    async fn execute(&mut self, p: &Planned) -> Result<()> {
        let path = &p.path;
        let why = p.action.describe();
        match &p.action {
            Action::Nothing => {}
            Action::Record { version } => {
                let l = p.local.expect("Record is planned for a local file");
                self.state.set_base(path, &base_of(*version, l))?;
            }
            Action::Forget => self.state.remove_base(path)?,
            Action::Upload { .. } | Action::DeleteRemote { .. } if self.locks.by_other(path).is_some() => {
                self.keep_out_of_locked(p).await?;
            }
            Action::Upload { base_version } => self.upload(p, *base_version).await?,
            Action::Download => {
                let remote = p.remote.as_ref().expect("Download is planned for a server file");
                let remote_folder = remote.content.is_some_and(|c| c.folder);
                let mut expected = p.local.map(meta_of);
                match p.local {
                    // Nothing here, or a folder where the server has a file.
                    None => self.make_room(path).await?,
                    Some(l) if l.folder && !remote_folder => {
                        self.make_room(path).await?;
                        expected = None;
                    }
                    // A file (unchanged here) that the server replaced by a
                    // folder: it goes, as a deletion would.
                    Some(l) if !l.folder && remote_folder => {
                        let (rel, folder, state) = (path.clone(), self.folder.clone(), self.state.clone());
                        tokio::task::spawn_blocking(move || delete_local(&folder, &state, &rel, meta_of(l)))
                            .await??;
                        expected = None;
                    }
                    Some(_) => {}
                }
                self.download(remote, expected).await?;
                self.locks.protect(path);
                tracing::info!(%path, version = remote.version, why, "downloaded");
            }
            Action::DeleteLocal if p.local.is_some_and(|l| l.folder) => {
                // Only an empty folder goes; one that holds something new
                // stays, no longer an entry of its own.
                match self.folder.root().parent(path).and_then(|d| d.rmdir(path.file_name())) {
                    Ok(()) => tracing::info!(%path, why, "deleted a folder locally"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                        tracing::info!(%path, "a folder deleted on the server holds new files here: kept");
                    }
                    Err(e) => return Err(e.into()),
                }
                self.state.remove_base(path)?;
            }
            Action::DeleteLocal => {
                let l = p.local.expect("DeleteLocal is planned for a local file");
                let (rel, folder, state) = (path.clone(), self.folder.clone(), self.state.clone());
                tokio::task::spawn_blocking(move || delete_local(&folder, &state, &rel, meta_of(l)))
                    .await??;
                self.state.remove_base(path)?;
                self.metrics.local_deletes.inc();
                tracing::info!(%path, why, "deleted locally");
            }
            Action::DeleteRemote { base_version } => {
                // A file is gone: is the whole folder?
                if !self.folder.present() {
                    return Err(Error::FolderGone(self.root.display().to_string()));
                }
                match self.remote.delete(path, *base_version, self.locks.token(path)).await {
                    Ok(tomb) => {
                        self.metrics.remote_deletes.inc();
                        tracing::info!(%path, version = tomb.version, why, "deleted on the server");
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                self.state.remove_base(path)?;
            }
            Action::Conflict => {
                let l = p.local.expect("Conflict is planned for a local file");
                let remote = p.remote.as_ref().expect("Conflict is planned for a server file");
                let copy = self.conflict_copy(path, meta_of(l)).await?;
                self.metrics.conflicts.inc();
                tracing::warn!(%path, copy = %copy, "conflict: both sides changed; keeping the local version as a copy");
                self.state.remove_base(path)?;
                self.download(remote, None).await?;
                self.locks.protect(path);
                // The copy is new (a file, or a folder and all in it).
                Box::pin(self.local_event(copy)).await;
            }
        }
        Ok(())
    }

    /// A local change (edit, new file, deletion) to a path someone else has
    /// locked: the server would refuse it. An edit is kept as a conflict
    /// copy (uploaded under that name) and the server's version is put
    /// back, read-only; a deletion is undone the same way.
    async fn keep_out_of_locked(&mut self, p: &Planned) -> Result<()> {
        let path = &p.path;
        let holder = self.locks.by_other(path).map(Lock::describe).unwrap_or_default();
        let copy = match p.local {
            Some(l) => {
                let copy = self.conflict_copy(path, meta_of(l)).await?;
                let writable =
                    self.folder.root().parent(&copy).and_then(|d| d.set_writable(copy.file_name(), true));
                if let Err(e) = writable {
                    tracing::warn!(%copy, error = %e, "cannot make a conflict copy writable");
                }
                self.metrics.conflicts.inc();
                tracing::warn!(%path, %copy, locked_by = %holder, "the file is locked by someone else: keeping the local edit as a copy");
                Some(copy)
            }
            None => {
                tracing::warn!(%path, locked_by = %holder, "the file is locked by someone else: restoring it");
                None
            }
        };
        match p.remote.as_ref().filter(|r| !r.is_deleted()) {
            Some(remote) => {
                self.download(remote, None).await?;
                self.locks.protect(path);
            }
            None => self.state.remove_base(path)?,
        }
        if let Some(copy) = copy {
            Box::pin(self.sync_path(&copy, RemoteView::Fetch)).await?;
        }
        Ok(())
    }

    /// The server refused `path` as a file because it clashes with a folder.
    /// Either the server has a file where this folder has a folder above
    /// `path`: that folder's name is then planned like a file (which deletes
    /// the server's file if this side deleted it knowingly, or else moves
    /// the local folder aside for it); or the server has a folder where
    /// this folder has the file `path`: the file is renamed to a conflict
    /// name and synced under it. Nothing is lost either way.
    async fn resolve_clash(&mut self, path: &RelPath) -> Result<()> {
        let p = path.as_str();
        for (i, _) in p.match_indices('/') {
            let folder = RelPath::new(&p[..i]).expect("a prefix of a valid path is valid");
            if self.remote.stat(&folder).await?.is_some_and(|e| !e.is_deleted()) {
                return Box::pin(self.sync_path(&folder, RemoteView::Fetch)).await.map(drop);
            }
        }
        let copy = self.move_aside(path).await?;
        self.state.remove_base(path)?;
        Box::pin(self.sync_path(&copy, RemoteView::Fetch)).await.map(drop)
    }

    /// Renames the local file or folder at `path` to a free conflict name.
    async fn move_aside(&mut self, path: &RelPath) -> Result<RelPath> {
        let (root, host, from) = (self.folder.root().clone(), self.host.clone(), path.clone());
        let copy = tokio::task::spawn_blocking(move || rename_aside(&root, &host, &from, None)).await??;
        self.metrics.conflicts.inc();
        tracing::warn!(%path, %copy, "a file and a folder of the same name: the server's keeps the name, this one is renamed");
        Ok(copy)
    }

    /// Clears the way for a file at `path` where this folder has a folder:
    /// an empty one is removed, one with content is renamed to a conflict
    /// name (and synced under it). The bases below it are dropped: the
    /// server, which has a file at `path`, has no live file below it.
    async fn make_room(&mut self, path: &RelPath) -> Result<()> {
        if !matches!(self.folder.root().stat(path)?, Kind::Dir) {
            return Ok(());
        }
        for below in self.bases_under(path) {
            self.state.remove_base(&below)?;
        }
        if self.folder.root().parent(path).and_then(|d| d.rmdir(path.file_name())).is_ok() {
            tracing::info!(%path, "removed an empty folder to make room for the server's file");
            return Ok(());
        }
        let copy = self.move_aside(path).await?;
        Box::pin(self.local_event(copy)).await;
        Ok(())
    }

    /// Reads the server's live locks, making files locked by others
    /// read-only and giving back write permission where a lock went.
    async fn load_locks(&mut self) -> Result<()> {
        let listed = self.remote.list_locks("").await?;
        if self.acting {
            self.locks.load_read_only()?;
        }
        let released = self.locks.replace_all(listed);
        if !self.acting {
            return Ok(());
        }
        for path in released {
            self.locks.unprotect(&path);
        }
        let others = self.locks.held_by_others();
        for path in others {
            self.locks.protect(&path);
        }
        Ok(())
    }

    fn lock_granted(&mut self, lock: Lock) {
        let path = lock.path.clone();
        if lock.client_id != self.remote.client_id() {
            tracing::info!(%path, locked_by = %lock.describe(), "locked by someone else: read-only here");
        }
        self.locks.granted(lock);
        self.locks.protect(&path);
    }

    fn lock_ended(&mut self, lock: &Lock) {
        if self.locks.ended(lock) {
            tracing::info!(path = %lock.path, "unlocked");
            self.locks.unprotect(&lock.path);
        }
    }

    /// The server's live locks as this client knows them.
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    /// Refreshes the locks this client holds before they expire (a crashed
    /// client stops refreshing, so its locks expire by themselves).
    pub async fn refresh_own_locks(&mut self) {
        for lock in self.locks.due_for_refresh(syncstore::lock::now_ms()) {
            let ttl = std::time::Duration::from_secs(lock.ttl_seconds.into());
            match self.remote.refresh_lock(&lock.lock_id, ttl).await {
                Ok(fresh) => self.locks.granted(fresh),
                Err(e) if e.is_not_found() => {
                    tracing::warn!(path = %lock.path, "our lock is gone (it expired or was broken)");
                    self.locks.ended(&lock);
                }
                Err(e) => {
                    tracing::debug!(path = %lock.path, error = %e, "could not refresh a lock; will retry")
                }
            }
        }
    }

    async fn download(&self, remote: &Entry, expected: Option<Meta>) -> Result<()> {
        let content = remote.content.expect("a downloaded entry is live");
        let meta = if content.folder {
            make_folder(self.folder.root(), &remote.path)?
        } else {
            transfer::download(&*self.remote, self.folder.root(), self.folder.tmp(), remote, expected).await?
        };
        let hash = content.hash;
        self.metrics.downloads.inc();
        self.metrics.download_bytes.inc_by(meta.size);
        let local = Local {
            hash,
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            executable: meta.executable,
            symlink: meta.symlink,
            folder: meta.folder,
            stamp: meta.stamp,
        };
        self.state.set_base(&remote.path, &base_of(remote.version, local))
    }

    /// Renames the local file at `path` to a free conflict-copy name.
    async fn conflict_copy(&self, path: &RelPath, expected: Meta) -> Result<RelPath> {
        let (root, host, path) = (self.folder.root().clone(), self.host.clone(), path.clone());
        tokio::task::spawn_blocking(move || rename_aside(&root, &host, &path, Some(expected))).await?
    }
}

/// `dir/name (conflict from HOST YYYY-MM-DD HHMMSS).ext`, with ` N` added
/// inside the parentheses for the second and later copies of the second.
pub fn conflict_name(path: &RelPath, host: &str, stamp: &str, n: usize) -> Result<RelPath> {
    let name = path.file_name();
    // The extension is the last dot's, unless the name only starts with one.
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    };
    let host: String = host.chars().map(|c| if c == '/' || c.is_control() { '_' } else { c }).collect();
    let counter = if n > 1 { format!(" {n}") } else { String::new() };
    let file = format!("{stem} (conflict from {host} {stamp}{counter}){ext}");
    let full = match path.parent() {
        "" => file,
        dir => format!("{dir}/{file}"),
    };
    RelPath::new(full).map_err(|e| Error::Config(format!("cannot name a conflict copy of {path}: {e}")))
}

/// Renames the local file or folder at `path` to a free conflict-copy name,
/// provided it still is `expected` (when given; otherwise whatever is there).
/// The copy is in the same folder, renamed through that folder's handle.
fn rename_aside(root: &Root, host: &str, path: &RelPath, expected: Option<Meta>) -> Result<RelPath> {
    let stamp = chrono::Local::now().format("%Y-%m-%d %H%M%S").to_string();
    let dir = root.parent(path)?;
    let from = path.file_name();
    for n in 1..1000 {
        let copy = conflict_name(path, host, &stamp, n)?;
        if !matches!(dir.kind(copy.file_name())?, Kind::Missing) {
            continue;
        }
        if let Some(expected) = expected {
            let still = match dir.kind(from)? {
                Kind::File(m) => m == expected,
                Kind::Dir => expected.folder,
                _ => false,
            };
            if !still {
                return Err(Error::ChangedWhileReading);
            }
        }
        match dir.rename_noreplace(from, &dir, copy.file_name()) {
            Ok(()) => return Ok(copy),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Config(format!("no free conflict-copy name for {path}")))
}

fn base_of(version: u64, l: Local) -> Base {
    Base {
        version,
        hash: l.hash,
        size: l.size,
        mtime_ns: local::base_mtime(l.mtime_ns),
        executable: l.executable,
        symlink: l.symlink,
        folder: l.folder,
        stamp: l.stamp,
    }
}

fn meta_of(l: Local) -> Meta {
    Meta {
        size: l.size,
        mtime_ns: l.mtime_ns,
        executable: l.executable,
        symlink: l.symlink,
        folder: l.folder,
        stamp: l.stamp,
    }
}

/// Deletes a local file if it is still as planned, then its empty folders.
///
/// The file is moved aside first (atomically, into the temp folder) and
/// checked there, so a write that lands after the check cannot be deleted
/// with it: a changed file is put back and the path planned again.
fn delete_local(folder: &Folder, state: &State, path: &RelPath, expected: Meta) -> Result<()> {
    let (root, tmp) = (folder.root(), folder.tmp());
    let dir = match root.parent(path) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let name = path.file_name();
    let aside = format!("delete-{:016x}", rand::random::<u64>());
    match dir.rename(name, tmp, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if !matches!(tmp.kind(&aside)?, Kind::File(m) if m.same_as_moved(&expected)) {
        transfer::put_back(tmp, &aside, &dir, name)?;
        return Err(Error::ChangedWhileReading);
    }
    tmp.unlink(&aside)?;
    // Folders synced as entries of their own stay, empty or not.
    let is_entry = |dir: &RelPath| state.base(dir).ok().flatten().is_some_and(|b| b.folder);
    root.prune_empty_dirs(path.parent(), is_entry);
    Ok(())
}

/// Creates the folder `path` (a folder entry from the server) and returns
/// its metadata. Never through a folder that is a link here.
fn make_folder(root: &Root, path: &RelPath) -> Result<Meta> {
    let parent = root.create_parent(path)?;
    match parent.mkdir(path.file_name()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e.into()),
    }
    match parent.kind(path.file_name())? {
        Kind::Dir => Ok(Meta::of(&parent.metadata(path.file_name())?)),
        _ => Err(Error::ChangedWhileReading),
    }
}

/// What the folder says of `path` (blocking): its local view, read against
/// `base`, which is handed back. A path below a folder that is a symbolic
/// link here is an error: reading or writing it would follow the link,
/// maybe out of the folder (the link itself syncs as a file, and a clash
/// with the server's folder of that name renames it aside).
/// `parent` keeps the last folder opened, reused while paths share it.
fn gather(
    root: &Root,
    parent: &mut Option<(String, Dir)>,
    path: &RelPath,
    base: Option<Base>,
) -> Result<(Option<Base>, LocalView)> {
    let dir = match parent {
        Some((p, dir)) if p == path.parent() => dir.clone(),
        _ => match root.parent(path) {
            Ok(dir) => {
                *parent = Some((path.parent().to_owned(), dir.clone()));
                dir
            }
            Err(e) if fsroot::is_through_link(&e) => {
                return Err(Error::Config(format!("a folder above {path} is a symbolic link here")));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                return Ok((base, LocalView::Missing));
            }
            Err(e) => return Err(e.into()),
        },
    };
    let view = local::local_state_in(&dir, path.file_name(), base.as_ref())?;
    Ok((base, view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        let p = RelPath::new("docs/report.final.txt").unwrap();
        assert_eq!(
            conflict_name(&p, "laptop", "2026-11-24 210600", 1).unwrap().as_str(),
            "docs/report.final (conflict from laptop 2026-11-24 210600).txt"
        );
        let p = RelPath::new(".bashrc").unwrap();
        assert_eq!(
            conflict_name(&p, "a/b", "2026-11-24 210600", 2).unwrap().as_str(),
            ".bashrc (conflict from a_b 2026-11-24 210600 2)"
        );
    }

    /// The engine against an in-memory server and a temp folder.
    mod against_memory {
        use std::{collections::HashMap, fs, sync::Arc, time::Duration};

        use syncstore::limits::STATE_DIR_NAME;

        use crate::{
            engine::Engine,
            folder::Folder,
            remote::{Remote, memory::MemoryRemote},
            state::State,
        };

        /// A client folder synced with `server` as client "here".
        struct Client {
            _dir: tempfile::TempDir,
            root: std::path::PathBuf,
            engine: Engine,
            server: MemoryRemote,
        }

        impl Client {
            fn new(server: &MemoryRemote) -> Self {
                let dir = tempfile::tempdir().unwrap();
                let root = fs::canonicalize(dir.path()).unwrap();
                let state = State::open(&root).unwrap();
                let server = server.as_client("here");
                let folder = Folder::open(&root).unwrap();
                let engine = Engine::new(folder, state, Arc::new(server.clone()), "host".into());
                Self { _dir: dir, root, engine, server }
            }

            fn write(&self, path: &str, data: &[u8]) {
                let full = self.root.join(path);
                if full.exists() {
                    // A file locked by someone else is read-only here.
                    let mut perms = fs::metadata(&full).unwrap().permissions();
                    #[allow(clippy::permissions_set_readonly_false)]
                    perms.set_readonly(false);
                    fs::set_permissions(&full, perms).unwrap();
                }
                fs::write(full, data).unwrap();
            }

            /// Every file in the folder but the client's own state.
            fn files(&self) -> HashMap<String, Vec<u8>> {
                let mut out = HashMap::new();
                for entry in fs::read_dir(&self.root).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name().into_string().unwrap();
                    if name != STATE_DIR_NAME {
                        out.insert(name, fs::read(entry.path()).unwrap());
                    }
                }
                out
            }
        }

        /// The one file whose name says it is a conflict copy of `stem`.
        fn copy_of(files: &HashMap<String, Vec<u8>>, stem: &str) -> Vec<u8> {
            let copies: Vec<_> = files
                .iter()
                .filter(|(name, _)| name.starts_with(&format!("{stem} (conflict from host ")))
                .collect();
            assert_eq!(copies.len(), 1, "one conflict copy of {stem} in {:?}", files.keys());
            copies[0].1.clone()
        }

        fn set(pairs: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect()
        }

        #[tokio::test]
        async fn both_sides_edited_keeps_the_local_edit_as_a_copy() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("a.txt", b"first");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();
            assert_eq!(c.files(), set(&[("a.txt", b"first")]));

            other.put("a.txt", b"edited on the server");
            c.write("a.txt", b"edited here, at more length");
            c.engine.full_sync().await.unwrap();

            let files = c.files();
            assert_eq!(files["a.txt"], b"edited on the server");
            assert_eq!(copy_of(&files, "a"), b"edited here, at more length");
            assert_eq!(files.len(), 2, "{:?}", files.keys());
            assert_eq!(c.server.files(), files, "the server holds both, as the folder does");
        }

        #[tokio::test]
        async fn an_edit_here_beats_a_delete_on_the_server() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("a.txt", b"first");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();

            other.remove("a.txt");
            c.write("a.txt", b"edited here while it was deleted there");
            c.engine.full_sync().await.unwrap();

            let edited = set(&[("a.txt", b"edited here while it was deleted there")]);
            assert_eq!(c.files(), edited);
            assert_eq!(c.server.files(), edited, "the edit is back on the server");
        }

        #[tokio::test]
        async fn a_local_edit_of_a_file_locked_by_someone_else_is_kept_as_a_copy() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("a.txt", b"first");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();

            let path = syncstore::RelPath::new("a.txt").unwrap();
            other.lock(&path, Duration::from_secs(600), "", "other@elsewhere").await.unwrap();
            c.engine.full_sync().await.unwrap();
            assert!(
                fs::metadata(c.root.join("a.txt")).unwrap().permissions().readonly(),
                "read-only while locked"
            );

            c.write("a.txt", b"edited here despite the lock");
            c.engine.local_event(path).await;

            let files = c.files();
            assert_eq!(files["a.txt"], b"first", "the locked file is restored");
            assert_eq!(copy_of(&files, "a"), b"edited here despite the lock");
            assert_eq!(server.content("a.txt").unwrap(), b"first", "the lock holder's file is untouched");
            assert_eq!(c.server.files(), files, "the copy is on the server");
            assert!(!c.engine.has_failures());
        }

        #[tokio::test]
        async fn a_local_write_during_a_download_is_not_overwritten() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("a.txt", b"first");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();

            other.put("a.txt", b"second, from the server");
            let target = c.root.join("a.txt");
            c.server.before_next_download(move || fs::write(target, b"written here mid-download").unwrap());
            c.engine.full_sync().await.unwrap();

            let files = c.files();
            assert_eq!(files["a.txt"], b"second, from the server");
            assert_eq!(copy_of(&files, "a"), b"written here mid-download", "the local write survives");
            assert_eq!(c.server.files(), files);
            assert!(!c.engine.has_failures());
        }

        #[tokio::test]
        async fn a_write_is_refused_when_its_base_is_not_current() {
            // The in-memory server keeps the rule the engine relies on.
            let server = MemoryRemote::new("server");
            server.put("a.txt", b"one");
            let err = server.delete(&syncstore::RelPath::new("a.txt").unwrap(), 7, 0).await.unwrap_err();
            assert!(err.is_race(), "{err}");
        }
    }
}
