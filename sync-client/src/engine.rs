//! The sync engine: drives the planner (`planner.rs`, read-only) and the
//! executor (`execute.rs`) one path at a time, for full reconciliations,
//! local rescans, local events and remote change events alike. What an
//! action leaves to do about other paths (a conflict copy, a folder moved
//! aside, a clashing folder) comes back as follow-ups on a work queue,
//! which [`Engine`] works through in order, bounded, never recursing.
//!
//! Invariants:
//! - Work is done by one task, one path at a time, so a change event about
//!   a path is never applied while that path is being uploaded. The one
//!   exception, in `watch`, is the large lane: a plain transfer of at least
//!   [`LARGE_LANE_MIN`] bytes runs beside the loop, so that small changes
//!   either way do not wait behind it; until it ends, nothing else is done
//!   about its path (events for it are left, and the path is planned again
//!   from fresh facts when the transfer ends).
//! - A plan that lost a race (a version conflict, or a file that changed
//!   under our feet) is made again from fresh facts, a few times, then the
//!   path is left for the retry.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use futures::StreamExt;
use syncstore::{Entry, RelPath};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::{Error, Result},
    execute::{self, Clash, Executor, FollowUp, FollowUps},
    folder::Folder,
    fsmeta::Kind,
    local::{self, HardLinks, IGNORE_FILE},
    locks::Locks,
    metrics::ClientMetrics,
    plan::{self, Action, Base, Mode},
    planner::{self, PlanAll, Planned, Planner, RemoteView},
    progress::Progress,
    refusal::Refusal,
    remote::{Remote, RemoteEvent, ServerInfo},
    state::State,
    transfer,
};

/// What the client says (once) when it finds its token may only read.
const READ_ONLY_TOKEN_SAID: &str = "the server refuses writes with this token (read-only): running receive-only; local changes are kept here and not sent";

/// Times one path is planned again after a race (a version conflict, or a
/// file that changed under our feet) before it is left for the next retry.
const MAX_ATTEMPTS: usize = 4;
/// Follow-ups one change may lead to (conflict copies, folders moved aside,
/// a clashing folder planned first, and theirs in turn) before the rest is
/// left for the retry: a bound, should actions keep leaving work for each
/// other. One follow-up is a path, or a folder and all below it.
const MAX_FOLLOW_UPS: usize = 64;
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

/// A large-lane transfer that ended, for [`Engine::lane_done`].
#[derive(Debug)]
pub struct LaneDone {
    pub path: RelPath,
    pub result: Result<()>,
}

/// A large-lane transfer under way, as the live status shows it.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// An upload (else a download).
    pub upload: bool,
    /// The bytes it carries.
    pub size: u64,
    /// The bytes it has moved so far.
    pub done: Arc<AtomicU64>,
    pub started: Instant,
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
    /// Whether the folder is paused: a pause stops the transfers under way
    /// (an upload is cancelled, so the server keeps nothing of it; a
    /// download's temp file goes), and the full sync at resume starts them
    /// again.
    pub paused: tokio::sync::watch::Receiver<bool>,
    /// Plain transfers of at least this many bytes run in the lane
    /// ([`LARGE_LANE_MIN`]; 0 sends every plain transfer there).
    pub min_size: u64,
}

/// One item of the engine's work queue.
#[derive(Debug)]
enum Work {
    /// Plan the path and act on the plan (in the large lane, if it fits).
    Sync(RelPath, RemoteView),
    /// Act on a plan already made, in the loop.
    Execute(Planned),
    /// A local change at the path: it, everything below it, and its other
    /// names.
    Local(RelPath),
}

impl From<FollowUp> for Work {
    fn from(f: FollowUp) -> Self {
        match f {
            FollowUp::Local(path) => Work::Local(path),
            FollowUp::Fetch(path) => Work::Sync(path, RemoteView::Fetch),
        }
    }
}

/// Which side [`Engine::resolve_kept`] makes match the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The folder takes the server's state back (`revert`).
    Revert,
    /// The server takes the folder's state (`override`).
    Override,
}

impl Resolve {
    /// The command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Resolve::Revert => "revert",
            Resolve::Override => "override",
        }
    }
}

/// What [`Engine::resolve_kept`] did (or, in a dry run, would do).
#[derive(Debug)]
pub struct Resolved {
    /// The actions taken, in order.
    pub done: Vec<Planned>,
    /// Kept items left as they are (a file added here, in a receive-only
    /// folder: the server has nothing to bring back).
    pub left: Vec<Planned>,
    /// Paths whose action failed.
    pub failed: Vec<(RelPath, Error)>,
}

/// Keeps a folder in sync: plans with a [`Planner`], acts with an
/// [`Executor`].
#[derive(Debug)]
pub struct Engine {
    root: PathBuf,
    planner: Planner,
    executor: Executor,
    /// The bases, cursor and history (the database only).
    state: State,
    remote: Arc<dyn Remote>,
    /// Paths whose last attempt failed; retried later.
    failed: BTreeSet<RelPath>,
    /// The last error of each path in `failed` that had one.
    last_errors: BTreeMap<RelPath, String>,
    /// The server refuses writes for now (its sync replica is away).
    refusal: Refusal,
    /// The large lane, in `watch` (none: every transfer runs in the loop).
    lane: Option<Lane>,
    /// Paths with a large-lane transfer running.
    in_lane: HashMap<RelPath, InFlight>,
    /// The names of files with several links, from the last scan and the
    /// events since.
    links: HardLinks,
    /// Files a scan found modified just now, and when to look at them
    /// again (see [`Engine::with_settle`]).
    settling: BTreeSet<RelPath>,
    settling_due: Option<Instant>,
    settle: std::time::Duration,
}

impl Engine {
    pub fn new(folder: Folder, state: State, remote: Arc<dyn Remote>, host: String) -> Self {
        Self {
            root: folder.path().to_path_buf(),
            planner: Planner::new(folder.clone(), state.clone(), remote.clone()),
            executor: Executor::new(folder, state.clone(), remote.clone(), host),
            state,
            remote,
            failed: BTreeSet::new(),
            last_errors: BTreeMap::new(),
            refusal: Refusal::default(),
            lane: None,
            in_lane: HashMap::new(),
            links: HardLinks::default(),
            settling: BTreeSet::new(),
            settling_due: None,
            settle: std::time::Duration::ZERO,
        }
    }

    /// Runs large transfers in `lane`, beside the loop (see the module doc).
    pub fn with_lane(self, lane: Lane) -> Self {
        Self { lane: Some(lane), ..self }
    }

    /// Syncs the folder in `mode`.
    pub fn with_mode(self, mode: Mode) -> Self {
        Self { planner: self.planner.with_mode(mode), ..self }
    }

    /// Syncs only the subtrees of `selection`.
    pub fn with_selection(self, selection: plan::Selection) -> Self {
        Self { planner: self.planner.with_selection(selection), ..self }
    }

    /// Leaves files a scan finds modified within `settle` to a look a
    /// moment later (see [`Planner::with_settle`]).
    pub fn with_settle(self, settle: std::time::Duration) -> Self {
        Self { planner: self.planner.with_settle(settle), settle, ..self }
    }

    /// When the files a scan left to settle are due for another look.
    pub fn settling_due(&self) -> Option<Instant> {
        self.settling_due
    }

    /// Looks again at the files a scan left to settle: each one still
    /// there is a local change now. One gone meanwhile is left to the
    /// watcher, whose removals come batched (a folder deleted whole is
    /// seen whole and never propagated), or to the next rescan.
    pub async fn look_again(&mut self) {
        self.settling_due = None;
        let root = self.executor.folder().root().clone();
        for path in std::mem::take(&mut self.settling) {
            if matches!(root.stat(&path), Ok(Kind::File(_))) {
                self.local_event(path).await;
            }
        }
    }

    /// The subtrees kept here.
    pub fn selection(&self) -> &plan::Selection {
        self.planner.selection()
    }

    /// The mode the folder syncs in now (receive-only once the server
    /// refused a write for the token's sake).
    pub fn mode(&self) -> Mode {
        self.planner.mode()
    }

    /// Counts into `metrics` (shared with a metrics endpoint).
    pub fn with_metrics(self, metrics: ClientMetrics) -> Self {
        Self { executor: self.executor.with_metrics(metrics), ..self }
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
        if info.token_writes {
            if self.planner.set_read_only_token(false) {
                tracing::info!("the server takes this client's writes again: the folder's own mode applies");
            }
            if planner::read_only_token(&self.state)? {
                self.state.set_meta(planner::READ_ONLY_TOKEN_KEY, "")?;
            }
        } else if planner::read_only_token(&self.state)? && self.planner.set_read_only_token(true) {
            tracing::warn!("{READ_ONLY_TOKEN_SAID}");
        }
        let known = self.state.get_meta("history_id")?;
        if known.as_deref() != Some(info.history_id.as_str()) {
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

    /// Reconciles everything: the whole folder against the whole manifest.
    /// Returns how many paths needed an action.
    pub async fn full_sync(&mut self) -> Result<usize> {
        let info = self.check_history().await?;
        self.executor.locks_mut().load(&*self.remote).await?;
        let PlanAll { plans, failed, settling, head, links } = self.planner.plan_all(&info).await?;
        self.links = links;
        let mut acted = failed.len() + settling.len();
        if !settling.is_empty() {
            self.settling.extend(settling);
            self.settling_due = Some(Instant::now() + self.settle);
        }
        for (path, e) in failed {
            self.note_failure(path, &e);
        }
        // A path in the large lane is planned again when its transfer ends.
        // What the folder's mode holds back is left as it is.
        let (nothing, plans): (Vec<_>, Vec<_>) = plans
            .into_iter()
            .filter(|p| !self.in_lane.contains_key(&p.path) && !p.action.is_kept())
            .partition(|p| p.action == Action::Nothing);
        for p in nothing {
            if let Err(e) = self.executor.refresh_base(&p) {
                acted += 1;
                self.note_failure(p.path, &e);
            }
        }
        // Deletions last, so content that moved is still on the server when
        // its new name is uploaded.
        let (mut deletes, others): (Vec<_>, Vec<_>) = plans.into_iter().partition(|p| {
            matches!(p.action, Action::DeleteRemote { .. } | Action::DeleteLocal | Action::Deselect)
        });
        // What lies below a folder goes before the folder.
        deletes.sort_by(|a, b| b.path.cmp(&a.path));
        let mut progress = Progress::new(
            (deletes.len() + others.len()) as u64,
            others.iter().map(Planned::transfer_size).sum(),
        );
        // Plain transfers of distinct paths run several at a time; what
        // fails among them, and every other action, goes one at a time
        // through the work queue.
        let (parallel, serial): (Vec<_>, Vec<_>) =
            others.into_iter().partition(|p| self.executor.is_plain_transfer(p));
        let (mut again, mut read_only) = (Vec::new(), None);
        // What goes up is noted as sent in one transaction (on a blocking
        // thread: it may be thousands of rows), not one each.
        let uploads: Vec<_> = parallel
            .iter()
            .filter(|p| matches!(p.action, Action::Upload { .. }))
            .filter_map(|p| Some((p.path.clone(), p.local?.hash)))
            .collect();
        let state = self.state.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || state.note_sent_all(&uploads)).await? {
            tracing::warn!(error = %e, "could not note what this sync sends; each upload notes its own");
        }
        {
            let executor = &self.executor;
            let large = tokio::sync::Semaphore::new(PARALLEL_LARGE_TRANSFERS);
            let large = &large;
            let mut done = futures::stream::iter(parallel)
                .map(|p| async move {
                    let big = p.transfer_size() > SMALL_TRANSFER;
                    let _slot = if big { Some(large.acquire().await.expect("never closed")) } else { None };
                    let r = executor.transfer(&p).await;
                    (p, r)
                })
                .buffer_unordered(PARALLEL_TRANSFERS);
            while let Some((planned, result)) = done.next().await {
                match result {
                    Ok(()) => {
                        acted += 1;
                        progress.advance(planned.transfer_size());
                    }
                    Err(e) if e.is_read_only_token() => read_only = Some((planned.path, e)),
                    Err(_) => again.push(planned),
                }
            }
        }
        if let Some((path, e)) = read_only {
            self.note_read_only_token(&path, &e);
        }
        for mut planned in again.into_iter().chain(serial).chain(deletes) {
            // The token turned out to be read-only meanwhile: what would be
            // sent is kept here instead, not tried again.
            planned.action = plan::with_mode(self.mode(), planned.action);
            if planned.action.is_kept() {
                continue;
            }
            acted += 1;
            let (path, size) = (planned.path.clone(), planned.transfer_size());
            if let Err(e) = self.drive(Work::Execute(planned)).await {
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

    /// Makes one side match the other where the folder's mode held a
    /// change back: `revert` (receive-only) brings back the server's state
    /// for every locally changed item, each local version kept as a copy
    /// first; `override` (send-only) sends the folder's state to the server
    /// as new versions. With `dry_run`, only says what it would do.
    pub async fn resolve_kept(&mut self, how: Resolve, dry_run: bool) -> Result<Resolved> {
        let info = self.check_history().await?;
        let (wanted, kept) = match how {
            Resolve::Revert => (Mode::ReceiveOnly, Action::KeepLocal),
            Resolve::Override => (Mode::SendOnly, Action::KeepRemote),
        };
        let mode = self.mode();
        if mode != wanted {
            return Err(Error::Config(format!(
                "`{}` is for a {wanted} folder; this one is {mode} (see --mode)",
                how.as_str()
            )));
        }
        self.executor.locks_mut().load(&*self.remote).await?;
        let all = self.planner.plan_all(&info).await?;
        let mut out = Resolved { done: Vec::new(), left: Vec::new(), failed: Vec::new() };
        for p in all.plans.into_iter().filter(|p| p.action == kept) {
            let action = match how {
                Resolve::Revert => plan::revert(p.local.as_ref(), p.remote.as_ref()),
                Resolve::Override => plan::override_action(p.local.as_ref(), p.remote.as_ref()),
            };
            match action {
                Some(action) => out.done.push(Planned { action, ..p }),
                None => out.left.push(p),
            }
        }
        // What lies below a folder is deleted before the folder.
        out.done.sort_by(|a, b| {
            let delete = |p: &Planned| matches!(p.action, Action::DeleteRemote { .. });
            delete(a)
                .cmp(&delete(b))
                .then_with(|| if delete(a) { b.path.cmp(&a.path) } else { a.path.cmp(&b.path) })
        });
        if dry_run {
            return Ok(out);
        }
        for p in &out.done {
            tracing::info!(path = %p.path, action = ?p.action, "{}", how.as_str());
            if let Err(e) = self.drive(Work::Execute(p.clone())).await {
                out.failed.push((p.path.clone(), e));
            }
        }
        Ok(out)
    }

    /// Looks again at every local file and every base (the periodic check
    /// that catches what the watcher missed), and retries failed paths.
    pub async fn rescan(&mut self) -> Result<usize> {
        let (root, ignore) = (self.root.clone(), self.planner.ignore().clone());
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
                if e.is_read_only_token() {
                    // Not retried again: planned again, the change is kept here.
                    self.note_read_only_token(&path, &e);
                    continue;
                }
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
        // A local change's own failures are noted path by path.
        let _ = self.drive(Work::Local(path)).await;
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
            RemoteEvent::Locked { lock, .. } => self.executor.locks_mut().on_locked(lock),
            RemoteEvent::Unlocked { lock, .. } => self.executor.locks_mut().on_unlocked(&lock),
            RemoteEvent::Skipped { .. } => {}
        }
        if seq > self.state.cursor()? {
            self.state.set_cursor(seq)?;
        }
        Ok(())
    }

    /// The paths waiting for a retry, with the last error of each (none
    /// for one left over from too many follow-ups), in path order.
    pub fn failures(&self) -> impl Iterator<Item = (&RelPath, Option<&str>)> {
        self.failed.iter().map(|p| (p, self.last_errors.get(p).map(String::as_str)))
    }

    /// How many paths wait for a retry.
    pub fn failure_count(&self) -> usize {
        self.failed.len()
    }

    /// The large-lane transfers under way.
    pub fn in_flight(&self) -> impl Iterator<Item = (&RelPath, &InFlight)> {
        self.in_lane.iter()
    }

    /// Whether the synced folder itself is gone: the client must stop.
    pub fn folder_gone(&self) -> bool {
        !self.executor.folder().present()
    }

    fn note_failure(&mut self, path: RelPath, e: &Error) {
        self.executor.metrics().errors.inc();
        if e.is_read_only_token() {
            // Not retried: planned again, the change is kept here.
            self.note_read_only_token(&path, e);
            return;
        }
        if self.refusal.note(&self.state, e) {
            // Said once, by `note`.
        } else if e.is_unavailable() {
            tracing::debug!(%path, error = %e, "server unavailable; will retry");
        } else {
            tracing::warn!(%path, error = %e, "sync failed; will retry");
        }
        self.last_errors.insert(path.clone(), e.to_string());
        self.failed.insert(path);
    }

    /// The server refused a write of `path` because the token may only
    /// read: from now on the folder runs receive-only (said once), and
    /// nothing local is sent or tried again.
    fn note_read_only_token(&mut self, path: &RelPath, e: &Error) {
        if self.planner.set_read_only_token(true) {
            tracing::warn!(%path, error = %e, "{READ_ONLY_TOKEN_SAID}");
            // Remembered, so the next run starts receive-only.
            if let Err(e) = self.state.set_meta(planner::READ_ONLY_TOKEN_KEY, "1") {
                tracing::debug!(error = %e, "cannot record the read-only token");
            }
        }
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
        let failed = &self.failed;
        self.last_errors.retain(|p, _| failed.contains(p));
        self.executor.metrics().pending.set(self.failed.len() as i64);
    }

    /// Every base, read on a blocking thread (it is the whole table).
    async fn all_bases(&self) -> Result<std::collections::HashMap<RelPath, Base>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.all_bases()).await?
    }

    /// Plans one path, and refreshes the base of a path in sync whose file
    /// was only touched (the planner writes nothing).
    async fn plan(&self, path: &RelPath, remote: RemoteView) -> Result<Option<Planned>> {
        let planned = self.planner.plan(path, remote).await?;
        if let Some(p) = planned.as_ref().filter(|p| p.action == Action::Nothing) {
            self.executor.refresh_base(p)?;
        }
        Ok(planned)
    }

    /// Plans and executes one path (a large transfer in the large lane, if
    /// there is one), then what that left to do. Returns whether anything
    /// was done.
    pub async fn sync_path(&mut self, path: &RelPath, remote: RemoteView) -> Result<bool> {
        self.drive(Work::Sync(path.clone(), remote)).await
    }

    /// Does `first`, then the follow-ups it leaves (and theirs), in order:
    /// no action recurses into another. At most [`MAX_FOLLOW_UPS`] are
    /// done, each at most once; the rest are left for the retry, as is a
    /// follow-up that fails. Returns what `first` returned.
    async fn drive(&mut self, first: Work) -> Result<bool> {
        let mut follow = FollowUps::default();
        let result = self.work(first, &mut follow).await;
        let mut done = HashSet::new();
        while let Some(next) = follow.pop() {
            let path = next.path().clone();
            if done.len() >= MAX_FOLLOW_UPS || !done.insert(next.clone()) {
                tracing::debug!(%path, "one change led to too many follow-ups, or back to this one: left for the retry");
                self.failed.insert(path);
                continue;
            }
            if let Err(e) = self.work(next.into(), &mut follow).await {
                self.note_failure(path, &e);
            }
        }
        result
    }

    /// Does one item of work; what it leaves to do goes to `follow`.
    async fn work(&mut self, work: Work, follow: &mut FollowUps) -> Result<bool> {
        match work {
            Work::Sync(path, remote) => self.sync_one(&path, remote, follow).await,
            Work::Execute(planned) => self.execute_and_retry(planned, follow).await.map(|()| true),
            Work::Local(path) => {
                self.local_change(path, follow).await;
                Ok(true)
            }
        }
    }

    /// Plans and executes one path (see [`Engine::sync_path`]).
    async fn sync_one(&mut self, path: &RelPath, remote: RemoteView, follow: &mut FollowUps) -> Result<bool> {
        if self.in_lane.contains_key(path) {
            return Ok(false); // Planned again when its transfer ends.
        }
        match self.plan(path, remote).await? {
            Some(planned) if planned.action != Action::Nothing && !planned.action.is_kept() => {
                if !self.start_in_lane(&planned) {
                    self.execute_and_retry(planned, follow).await?;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// A local change at `path` (see [`Engine::local_event`]): every path
    /// it touches is planned, below a folder before the folder.
    async fn local_change(&mut self, path: RelPath, follow: &mut FollowUps) {
        if path.as_str() == IGNORE_FILE {
            self.planner.reload_ignore();
        }
        let full = path.to_local(&self.root);
        let mut paths = BTreeSet::from([path.clone()]);
        let root = self.executor.folder().root().clone();
        match root.stat(&path) {
            Ok(Kind::Dir) => {
                let (top, ignore) = (self.root.clone(), self.planner.ignore().clone());
                match tokio::task::spawn_blocking(move || local::scan_linked(&top, &full, &ignore)).await {
                    Ok(Ok((found, links))) => {
                        paths.extend(found.into_keys());
                        self.links.merge(links);
                    }
                    Ok(Err(e)) => tracing::warn!(%path, error = %e, "cannot scan folder"),
                    Err(e) => tracing::warn!(%path, error = %e, "cannot scan folder"),
                }
                paths.extend(execute::bases_under(&self.state, &path));
            }
            Ok(Kind::Missing) => {
                paths.extend(execute::bases_under(&self.state, &path));
                // Its folder may now be empty: an entry of its own.
                if let Ok(parent) = RelPath::new(path.parent()) {
                    paths.insert(parent);
                }
            }
            _ => {}
        }
        // A file with several names, written through this one, changed
        // under its other names too: the watcher reports only this one.
        let md = root.parent(&path).and_then(|d| d.metadata(path.file_name()));
        self.links.note(&path, md.as_ref().ok());
        let others: Vec<RelPath> = paths.iter().flat_map(|p| self.links.others(p)).collect();
        paths.extend(others);
        // Below a folder before the folder (deletions must go in that order).
        for p in paths.into_iter().rev() {
            if let Err(e) = self.sync_one(&p, RemoteView::IfLocalChanged, follow).await {
                self.note_failure(p, &e);
            }
        }
    }

    /// Starts `p` in the large lane if it is a plain transfer big enough and
    /// the lane has room. Returns whether it did.
    fn start_in_lane(&mut self, p: &Planned) -> bool {
        let Some(lane) = &self.lane else { return false };
        if p.transfer_size() < lane.min_size
            || self.in_lane.len() >= LARGE_LANE_MAX
            || !self.executor.is_plain_transfer(p)
        {
            return false;
        }
        // A copy of the executor: the shared state, and what is known of
        // the locks (for this client's lock token).
        let (executor, lane, p) = (self.executor.clone(), lane.clone(), p.clone());
        let (upload, done) = (matches!(p.action, Action::Upload { .. }), Arc::new(AtomicU64::new(0)));
        let started = Instant::now();
        let in_flight = InFlight { upload, size: p.transfer_size(), done: done.clone(), started };
        self.in_lane.insert(p.path.clone(), in_flight);
        tracing::debug!(path = %p.path, size = p.transfer_size(), "transfer runs in the large lane");
        let mut paused = lane.paused.clone();
        lane.tasks.spawn(async move {
            let result = tokio::select! {
                () = lane.stop.cancelled() => return,
                Ok(_) = paused.wait_for(|&p| p) => Err(Error::Paused),
                r = transfer::PROGRESS.scope(done, executor.transfer(&p)) => r,
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
            // Stopped by a pause: the full sync at resume plans it again.
            Err(Error::Paused) => Ok(()),
            Err(e) if e.is_locked() || e.is_stale_lock() || e.is_path_clash() => {
                tracing::debug!(%path, error = %e, "a large transfer was refused; dealing with it here");
                match self.plan(&path, RemoteView::Fetch).await {
                    Ok(Some(p)) if p.action != Action::Nothing && !p.action.is_kept() => {
                        self.drive(Work::Execute(p)).await.map(drop)
                    }
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
    async fn execute_and_retry(&mut self, mut planned: Planned, follow: &mut FollowUps) -> Result<()> {
        let path = planned.path.clone();
        for attempt in 1.. {
            match self.executor.execute(&planned, follow).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < MAX_ATTEMPTS && e.is_race() => {
                    tracing::debug!(%path, error = %e, attempt, "lost a race; planning again");
                    if e.is_locked() || e.is_stale_lock() {
                        // Our view of the path's lock was out of date.
                        self.executor.locks_mut().reread(&*self.remote, &path).await?;
                    }
                    if e.is_path_clash()
                        && let Clash::FileAbove(folder) = self.executor.resolve_clash(&path, follow).await?
                    {
                        // That name is planned like a file first, then
                        // this path again.
                        follow.push(FollowUp::Fetch(folder));
                        follow.push(FollowUp::Fetch(path));
                        return Ok(());
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

    /// The server's live locks as this client knows them.
    pub fn locks(&self) -> &Locks {
        self.executor.locks()
    }

    /// Refreshes the locks this client holds before they expire (a crashed
    /// client stops refreshing, so its locks expire by themselves).
    pub async fn refresh_own_locks(&mut self) {
        self.executor.locks_mut().refresh_own(&*self.remote).await;
    }
}

#[cfg(test)]
mod tests {
    /// The engine against an in-memory server and a temp folder.
    mod against_memory {
        use std::{collections::HashMap, fs, sync::Arc, time::Duration};

        use syncstore::limits::STATE_DIR_NAME;

        use syncstore::RelPath;

        use crate::{
            engine::Engine,
            execute::{Executor, FollowUp, FollowUps},
            folder::Folder,
            metrics::ClientMetrics,
            plan::{Action, Mode},
            planner::{PlanAll, Planner, RemoteView},
            remote::{
                Refused, Remote, RemoteEvent,
                memory::{BadRuns, MemoryRemote},
            },
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

            /// The client of a watching engine, which leaves files a scan
            /// finds modified within `settle` for a later look.
            fn settling(self, settle: Duration) -> Self {
                Self { engine: self.engine.with_settle(settle), ..self }
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
        async fn a_read_only_token_met_first_by_a_retry_turns_the_folder_receive_only() {
            let server = MemoryRemote::new("server");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();
            let refusal = |refused: Refused, reason: &str, code: &str| crate::error::ServerError {
                refused,
                reason: reason.into(),
                replica: String::new(),
                code: code.into(),
                message: "refused".into(),
            };

            // Written while the server is away: waits for a retry.
            c.server.refuse_writes(Some(refusal(Refused::Unavailable, "", "Unavailable")));
            c.write("mine.txt", b"written here");
            c.engine.local_event(RelPath::new("mine.txt").unwrap()).await;
            assert_eq!(c.engine.failure_count(), 1);

            // Back, with the token now read-only: the retry is refused.
            let read_only = refusal(
                Refused::Credentials,
                syncstore::Reason::PermissionDenied.as_str(),
                "PermissionDenied",
            );
            c.server.refuse_writes(Some(read_only));
            c.engine.retry_failed().await;
            assert_eq!(c.engine.mode(), Mode::ReceiveOnly, "the refusal was not taken for what it says");
            assert_eq!(c.engine.failure_count(), 0, "a refusal for the token's sake is tried again");
            c.engine.retry_failed().await;
            assert!(c.server.files().is_empty());
            assert_eq!(c.files(), set(&[("mine.txt", b"written here")]), "the change is kept here");
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
        async fn a_rename_uploads_the_new_name_as_moved_from_the_old() {
            let server = MemoryRemote::new("server");
            let mut c = Client::new(&server);
            c.write("a.txt", b"a file that moves");
            c.write("kept.txt", b"a file that is copied");
            c.engine.full_sync().await.unwrap();

            // Found by a full sync: the new name goes first, naming the old.
            fs::rename(c.root.join("a.txt"), c.root.join("b.txt")).unwrap();
            // A copy is no move: its original is still here.
            fs::copy(c.root.join("kept.txt"), c.root.join("copy.txt")).unwrap();
            c.engine.full_sync().await.unwrap();
            assert_eq!(server.moves(), [("b.txt".to_owned(), "a.txt".to_owned())]);
            assert_eq!(server.entry("a.txt").map(|e| e.is_deleted()), Some(true));

            // Found by the watcher's events, the new name's first.
            fs::rename(c.root.join("b.txt"), c.root.join("c.txt")).unwrap();
            c.engine.local_event(RelPath::new("c.txt").unwrap()).await;
            c.engine.local_event(RelPath::new("b.txt").unwrap()).await;
            assert_eq!(server.moves()[1..], [("c.txt".to_owned(), "b.txt".to_owned())]);

            // The old name's event first: its deletion is remembered.
            fs::rename(c.root.join("c.txt"), c.root.join("a.txt")).unwrap();
            c.engine.local_event(RelPath::new("c.txt").unwrap()).await;
            assert_eq!(server.entry("c.txt").map(|e| e.is_deleted()), Some(true));
            c.engine.local_event(RelPath::new("a.txt").unwrap()).await;
            assert_eq!(server.moves()[2..], [("a.txt".to_owned(), "c.txt".to_owned())]);
            let expected = set(&[
                ("a.txt", b"a file that moves"),
                ("kept.txt", b"a file that is copied"),
                ("copy.txt", b"a file that is copied"),
            ]);
            assert_eq!(server.files(), expected);
            assert_eq!(c.files(), expected);
            assert!(!c.engine.has_failures());
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

        /// `n` bytes of seeded random content.
        fn random(n: usize, seed: u64) -> Vec<u8> {
            use rand::{Rng, SeedableRng, rngs::StdRng};
            let mut data = vec![0; n];
            StdRng::seed_from_u64(seed).fill(&mut data[..]);
            data
        }

        /// A file of several chunks, and the same with `edit` written over
        /// it at its middle.
        fn large_and_edited(edit: &[u8]) -> (Vec<u8>, Vec<u8>) {
            let data = random(4 * 1024 * 1024, 7);
            let mut edited = data.clone();
            let mid = data.len() / 2;
            edited[mid..mid + edit.len()].copy_from_slice(edit);
            (data, edited)
        }

        /// At most this many bytes travel for a small edit of a large file:
        /// the few chunks around it (chunks are at most 256 KiB).
        const DELTA_BOUND: u64 = 600 * 1024;

        /// A client of `server` whose metrics the test reads.
        fn client_with_metrics(server: &MemoryRemote) -> (Client, ClientMetrics) {
            let metrics = ClientMetrics::new();
            let mut c = Client::new(server);
            let state = c.engine.state().clone();
            c.engine =
                Engine::new(Folder::open(&c.root).unwrap(), state, Arc::new(c.server.clone()), "host".into())
                    .with_metrics(metrics.clone());
            (c, metrics)
        }

        /// The downloads staged and not cleared in the client's temp folder.
        fn staged(c: &Client) -> Vec<String> {
            fs::read_dir(c.root.join(STATE_DIR_NAME).join("tmp"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        }

        #[tokio::test]
        async fn an_edit_of_a_large_file_goes_up_as_runs_and_comes_down_from_local_chunks() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            let (mut c, metrics) = client_with_metrics(&server);
            let (data, edited) = large_and_edited(b"an edit in the middle of a large file");
            c.write("big.bin", &data);
            c.engine.full_sync().await.unwrap();
            assert_eq!(server.wire_bytes().0, data.len() as u64, "the first upload is plain");
            let known = |c: &Client, content: &[u8]| {
                c.engine.state().chunk_list(&syncstore::ContentHash::of(content)).unwrap().is_some()
            };
            assert!(known(&c, &data), "the list of what was uploaded is kept");

            c.write("big.bin", &edited);
            c.engine.full_sync().await.unwrap();
            let up = server.wire_bytes().0 - data.len() as u64;
            assert!(up > 0 && up <= DELTA_BOUND, "{up} bytes sent for the edit");
            assert_eq!(metrics.content_sent_bytes.get(), data.len() as u64 + up);
            assert!(server.content("big.bin").unwrap() == edited, "the edit arrived");
            assert!(known(&c, &edited) && !known(&c, &data), "the new list replaces the old");

            // Another client edits it again: it comes down as runs.
            let mut again = edited.clone();
            again.splice(1000..1000, b"inserted near the start".iter().copied());
            other.put("big.bin", &again);
            c.engine.full_sync().await.unwrap();
            assert!(c.files()["big.bin"] == again, "the insert arrived");
            let down = server.wire_bytes().1;
            assert!(down > 0 && down <= DELTA_BOUND, "{down} bytes received for the insert");
            assert_eq!(metrics.content_received_bytes.get(), down);
            assert!(metrics.chunks_reused.get() > 10, "{} chunks reused", metrics.chunks_reused.get());
            assert_eq!(metrics.reused_bytes.get() + down, again.len() as u64);
            assert!(known(&c, &again));
            assert!(!c.engine.has_failures());
        }

        #[tokio::test]
        async fn an_upload_against_a_base_the_server_cannot_use_goes_plain() {
            let server = MemoryRemote::new("server");
            let mut c = Client::new(&server);
            let (data, edited) = large_and_edited(b"edited after the server lost its lists");
            c.write("big.bin", &data);
            c.engine.full_sync().await.unwrap();
            // As a data folder of an earlier release: content stored whole.
            server.forget_lists();
            c.write("big.bin", &edited);
            c.engine.full_sync().await.unwrap();
            assert!(server.content("big.bin").unwrap() == edited, "the edit arrived");
            assert_eq!(server.wire_bytes().0, (data.len() + edited.len()) as u64, "sent whole");
            assert!(!c.engine.has_failures());

            // The plain upload recorded its list: the next edit goes as runs.
            let mut third = edited.clone();
            third.extend_from_slice(b"appended");
            c.write("big.bin", &third);
            c.engine.full_sync().await.unwrap();
            assert!(server.content("big.bin").unwrap() == third, "the append arrived");
            let up = server.wire_bytes().0 - (data.len() + edited.len()) as u64;
            assert!(up <= DELTA_BOUND, "{up} bytes sent for an append");
        }

        #[tokio::test]
        async fn runs_against_a_list_the_server_does_not_share_fall_back_to_plain() {
            let server = MemoryRemote::new("server");
            let mut c = Client::new(&server);
            let (data, edited) = large_and_edited(b"edited against a wrong list");
            c.write("big.bin", &data);
            c.engine.full_sync().await.unwrap();
            // A list this client recorded that is not the server's cut.
            let hash = syncstore::ContentHash::of(&data);
            let mut wrong = c.engine.state().chunk_list(&hash).unwrap().unwrap();
            wrong.reverse();
            c.engine.state().set_chunk_list(&hash, &wrong, None).unwrap();

            c.write("big.bin", &edited);
            c.engine.full_sync().await.unwrap();
            assert!(server.content("big.bin").unwrap() == edited, "the edit arrived");
            assert!(!c.engine.has_failures());
            let sent = server.wire_bytes().0 - data.len() as u64;
            assert!(sent >= edited.len() as u64, "sent whole after the runs were refused: {sent}");
        }

        #[tokio::test]
        async fn a_local_chunk_that_changes_during_a_download_is_not_kept() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            let (mut c, metrics) = client_with_metrics(&server);
            let (data, edited) = large_and_edited(b"a new version from elsewhere");
            other.put("big.bin", &data);
            c.engine.full_sync().await.unwrap();
            other.put("big.bin", &edited);
            // Once the download started, a chunk near the end (unchanged in
            // the new version) changes here, with the file's size and mtime
            // as they were: only its hash can tell.
            let target = c.root.join("big.bin");
            c.server.before_next_download(move || {
                let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&target).unwrap());
                let mut bytes = fs::read(&target).unwrap();
                let end = bytes.len();
                bytes[end - 100..].copy_from_slice(&[0xee; 100]);
                fs::write(&target, &bytes).unwrap();
                filetime::set_file_mtime(&target, mtime).unwrap();
            });
            c.engine.full_sync().await.unwrap();
            assert!(c.files()["big.bin"] == edited, "the server's version, none of the changed bytes");
            assert!(!c.engine.has_failures());
            let received = metrics.content_received_bytes.get() - data.len() as u64;
            assert!(received >= edited.len() as u64, "downloaded whole after the runs: {received} bytes");
            assert_eq!(metrics.chunks_reused.get(), 0, "nothing kept from the attempt abandoned");
            assert!(staged(&c).is_empty(), "{:?}", staged(&c));
        }

        #[tokio::test]
        async fn bad_runs_from_the_server_leave_the_file_as_it_was() {
            for bad in [BadRuns::WrongChunk, BadRuns::Short, BadRuns::OutOfBase] {
                let server = MemoryRemote::new("server");
                let other = server.as_client("other");
                let mut c = Client::new(&server);
                let (data, edited) = large_and_edited(b"a version sent badly");
                other.put("big.bin", &data);
                c.engine.full_sync().await.unwrap();
                let path = syncstore::RelPath::new("big.bin").unwrap();
                let base = c.engine.state().base(&path).unwrap();

                other.put("big.bin", &edited);
                server.spoil_runs(Some(bad));
                c.engine.full_sync().await.unwrap();
                assert!(c.engine.has_failures(), "{bad:?}: refused");
                assert!(c.files()["big.bin"] == data, "{bad:?}: the old file is untouched");
                assert_eq!(c.engine.state().base(&path).unwrap(), base, "{bad:?}");
                assert!(staged(&c).is_empty(), "{bad:?}: {:?}", staged(&c));

                // An honest answer then puts the new version in place.
                server.spoil_runs(None);
                c.engine.full_sync().await.unwrap();
                assert!(c.files()["big.bin"] == edited, "{bad:?}");
            }
        }

        #[tokio::test]
        async fn runs_not_asked_for_are_refused() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            let mut c = Client::new(&server);
            let (data, _) = large_and_edited(b"");
            other.put("big.bin", &data);
            server.spoil_runs(Some(BadRuns::Unasked));
            c.engine.full_sync().await.unwrap();
            assert!(c.engine.has_failures());
            assert!(!c.files().contains_key("big.bin"));
            assert!(staged(&c).is_empty(), "{:?}", staged(&c));
            server.spoil_runs(None);
            c.engine.full_sync().await.unwrap();
            assert!(c.files()["big.bin"] == data, "downloaded once the server answers plain");
        }

        /// Everything a look at the folder could change: each file's
        /// content, mode and mtime.
        fn snapshot(root: &std::path::Path) -> Vec<(String, Vec<u8>, u32, std::time::SystemTime)> {
            use std::os::unix::fs::PermissionsExt;
            let mut out = Vec::new();
            for entry in fs::read_dir(root).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                if name != STATE_DIR_NAME {
                    let md = entry.metadata().unwrap();
                    let data = fs::read(entry.path()).unwrap();
                    out.push((name, data, md.permissions().mode(), md.modified().unwrap()));
                }
            }
            out.sort();
            out
        }

        fn plan_of<'a>(all: &'a PlanAll, path: &str) -> &'a Action {
            &all.plans.iter().find(|p| p.path.as_str() == path).expect("a plan for the path").action
        }

        #[tokio::test]
        async fn the_planner_that_status_runs_writes_nothing() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            for name in ["a.txt", "b.txt", "c.txt"] {
                other.put(name, name.as_bytes());
            }
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();

            // Every kind of plan: a conflict, a deletion here, a new file
            // there, and a file locked by someone else and touched here
            // (acting on it would make it read-only and refresh its base).
            let touched = filetime::FileTime::from_unix_time(2_000_000_000, 0);
            filetime::set_file_mtime(c.root.join("c.txt"), touched).unwrap();
            other.put("a.txt", b"edited there");
            c.write("a.txt", b"edited here");
            fs::remove_file(c.root.join("b.txt")).unwrap();
            other.put("new.txt", b"new there");
            other.lock(&RelPath::new("c.txt").unwrap(), Duration::from_secs(600), "", "o@x").await.unwrap();
            let state = c.engine.state().clone();
            let (folder_before, bases_before) = (snapshot(&c.root), state.all_bases().unwrap());
            let (cursor_before, server_before) = (state.cursor().unwrap(), c.server.files());

            let shared = State::open_shared(&c.root).unwrap();
            let remote: Arc<dyn Remote> = Arc::new(c.server.clone());
            let mut planner = Planner::new(Folder::open(&c.root).unwrap(), shared, remote);
            let info = planner.check_history().await.unwrap();
            let all = planner.plan_all(&info).await.unwrap();
            assert_eq!(plan_of(&all, "a.txt"), &Action::Conflict);
            assert!(matches!(plan_of(&all, "b.txt"), Action::DeleteRemote { .. }));
            assert_eq!(plan_of(&all, "new.txt"), &Action::Download);
            assert_eq!(plan_of(&all, "c.txt"), &Action::Nothing);

            assert_eq!(snapshot(&c.root), folder_before, "the folder is untouched");
            assert_eq!(state.all_bases().unwrap(), bases_before, "no base is written");
            assert_eq!(state.cursor().unwrap(), cursor_before);
            assert_eq!(c.server.files(), server_before, "the server is untouched");
        }

        #[tokio::test]
        async fn a_watching_scan_leaves_a_file_still_being_written_for_a_later_look() {
            let server = MemoryRemote::new("server");
            let c = Client::new(&server);
            c.write("saved.txt", b"saved an hour ago");
            let hour_ago = filetime::FileTime::from_system_time(
                std::time::SystemTime::now() - Duration::from_secs(3600),
            );
            filetime::set_file_mtime(c.root.join("saved.txt"), hour_ago).unwrap();
            c.write("writing.txt", b"half of it");

            let planner = |settle: Option<Duration>| {
                let remote: Arc<dyn Remote> = Arc::new(c.server.clone());
                let planner = Planner::new(Folder::open(&c.root).unwrap(), c.engine.state().clone(), remote);
                match settle {
                    Some(s) => planner.with_settle(s),
                    None => planner,
                }
            };
            // Watching: the file written just now is left for later, the
            // other one is sent.
            let mut watching = planner(Some(Duration::from_secs(60)));
            let info = watching.check_history().await.unwrap();
            let all = watching.plan_all(&info).await.unwrap();
            assert!(matches!(plan_of(&all, "saved.txt"), Action::Upload { .. }));
            assert!(all.plans.iter().all(|p| p.path.as_str() != "writing.txt"), "{:?}", all.plans);
            let settling: Vec<_> = all.settling.iter().map(RelPath::as_str).collect();
            assert_eq!(settling, ["writing.txt"]);
            assert!(all.failed.is_empty());

            // A one-shot sync takes it as it is.
            let once = planner(None);
            let all = once.plan_all(&info).await.unwrap();
            assert!(matches!(plan_of(&all, "writing.txt"), Action::Upload { .. }));
            assert!(all.failed.is_empty() && all.settling.is_empty());

            // The watching engine sends the other file and looks at this
            // one again when it is due, whole by then.
            let mut c = c.settling(Duration::from_secs(60));
            c.write("writing.txt", b"all of it");
            c.engine.full_sync().await.unwrap();
            assert_eq!(c.server.files().keys().map(String::as_str).collect::<Vec<_>>(), ["saved.txt"]);
            assert!(c.engine.settling_due().is_some());
            c.engine.look_again().await;
            assert_eq!(c.server.files().get("writing.txt").map(Vec::as_slice), Some(&b"all of it"[..]));
            assert!(c.engine.settling_due().is_none());
        }

        #[tokio::test]
        async fn the_planner_sets_aside_bases_of_another_history_without_dropping_them() {
            let server = MemoryRemote::new("server");
            server.as_client("other").put("a.txt", b"one");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();
            fs::remove_file(c.root.join("a.txt")).unwrap();
            let state = c.engine.state().clone();
            state.set_meta("history_id", "another server's").unwrap();
            let bases_before = state.all_bases().unwrap();

            let remote: Arc<dyn Remote> = Arc::new(c.server.clone());
            let mut planner = Planner::new(Folder::open(&c.root).unwrap(), state.clone(), remote);
            let info = planner.check_history().await.unwrap();
            let all = planner.plan_all(&info).await.unwrap();
            // Without its base, the file missing here is met for the first
            // time: downloaded, not deleted on the server.
            assert_eq!(plan_of(&all, "a.txt"), &Action::Download);
            assert_eq!(state.all_bases().unwrap(), bases_before, "the bases stay");
            assert_eq!(state.get_meta("history_id").unwrap().as_deref(), Some("another server's"));
        }

        #[tokio::test]
        async fn a_conflict_leaves_its_copy_to_the_work_queue() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("a.txt", b"first");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();
            other.put("a.txt", b"edited there");
            c.write("a.txt", b"edited here");

            let path = RelPath::new("a.txt").unwrap();
            let state = c.engine.state().clone();
            let remote: Arc<dyn Remote> = Arc::new(c.server.clone());
            let folder = Folder::open(&c.root).unwrap();
            let planner = Planner::new(folder.clone(), state.clone(), remote.clone());
            let planned = planner.plan(&path, RemoteView::Fetch).await.unwrap().unwrap();
            assert_eq!(planned.action, Action::Conflict);
            let mut executor = Executor::new(folder, state, remote, "host".into());
            let mut follow = FollowUps::default();
            executor.execute(&planned, &mut follow).await.unwrap();

            let Some(FollowUp::Local(copy)) = follow.pop() else { panic!("the copy is a follow-up") };
            assert!(follow.pop().is_none());
            let files = c.files();
            assert_eq!(files["a.txt"], b"edited there");
            assert_eq!(files[copy.as_str()], b"edited here");
            assert_eq!(copy_of(&files, "a"), b"edited here");
            assert_eq!(c.server.content(copy.as_str()), None, "the executor did not sync the copy itself");

            // The engine's queue does.
            c.engine.local_event(copy.clone()).await;
            assert_eq!(c.server.content(copy.as_str()).unwrap(), b"edited here");
            assert_eq!(c.server.files(), c.files());
        }

        /// Every file below `dir` but the client's own state, by path.
        fn tree(root: &std::path::Path) -> HashMap<String, Vec<u8>> {
            let mut out = HashMap::new();
            let mut dirs = vec![root.to_path_buf()];
            while let Some(dir) = dirs.pop() {
                for entry in fs::read_dir(&dir).unwrap() {
                    let entry = entry.unwrap();
                    let rel = entry.path().strip_prefix(root).unwrap().to_str().unwrap().to_owned();
                    if rel == STATE_DIR_NAME {
                        continue;
                    }
                    if entry.file_type().unwrap().is_dir() {
                        dirs.push(entry.path());
                    } else {
                        out.insert(rel, fs::read(entry.path()).unwrap());
                    }
                }
            }
            out
        }

        #[tokio::test]
        async fn a_folder_where_the_server_has_a_file_is_moved_aside_through_the_queue() {
            let server = MemoryRemote::new("server");
            let mut c = Client::new(&server);
            c.engine.full_sync().await.unwrap();
            server.as_client("other").put("d", b"a file there");
            fs::create_dir(c.root.join("d")).unwrap();
            c.write("d/x.txt", b"a file here, below that name");

            // d/x.txt is refused (below a file); the clash plans `d` first,
            // which moves this folder aside, and the copy's files follow.
            c.engine.local_event(RelPath::new("d/x.txt").unwrap()).await;

            let files = tree(&c.root);
            assert_eq!(files["d"], b"a file there");
            let copies: Vec<_> = files
                .keys()
                .filter(|p| p.starts_with("d (conflict from host ") && p.ends_with("/x.txt"))
                .collect();
            assert_eq!(copies.len(), 1, "{:?}", files.keys());
            assert_eq!(files[copies[0]], b"a file here, below that name");
            assert_eq!(files.len(), 2, "{:?}", files.keys());
            assert_eq!(c.server.files(), files, "the server holds both");
            assert!(!c.engine.has_failures());
        }

        #[tokio::test]
        async fn a_tree_deleted_on_the_server_leaves_no_empty_folder_whatever_goes_last() {
            let server = MemoryRemote::new("server");
            let other = server.as_client("other");
            other.put("tree/x/1.txt", b"1");
            let mut c = Client::new(&server);
            fs::create_dir_all(c.root.join("tree/z")).unwrap();
            c.engine.full_sync().await.unwrap();
            assert!(c.server.entry("tree/z").is_some_and(|e| e.content.is_some_and(|c| c.folder)));

            // The file goes first, then the empty folder beside it: the
            // last deletion leaves `tree` empty.
            for path in ["tree/x/1.txt", "tree/z"] {
                let entry = other.remove(path);
                let event = RemoteEvent::Entry { seq: entry.version, entry: Some(entry) };
                c.engine.remote_event(event).await.unwrap();
            }
            assert!(!c.root.join("tree").exists(), "no empty folder is left behind");
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
