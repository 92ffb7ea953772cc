//! The syncstore client: keeps a local folder and a server in two-way sync.
//!
//! # Layout
//! - [`plan`]: the pure rules (local, base, remote → action), folders
//!   included.
//! - [`planner`]: the read-only planner: gathers the facts of a path (or of
//!   all), then asks [`plan`]; `status` runs it alone.
//! - [`execute`]: the executor: carries out one planned action, leaving
//!   follow-up paths (conflict copies, ...) for the engine's work queue.
//! - [`engine`]: drives planner and executor one path at a time; full
//!   syncs, rescans, local and remote events all go through it.
//! - [`local`]: the folder on disk: hashing, scanning, ignore rules.
//! - [`fsroot`]: the folder held open; every write to it goes through it.
//! - [`fsmeta`]: what a path is on disk (`Kind`, a file's `Meta`).
//! - [`locks`]: the server's locks as the client knows them; read-only
//!   files.
//! - [`transfer`]: streaming uploads and verified, atomic downloads.
//! - [`remote`]: the server as the engine sees it (the `Remote` trait),
//!   and its gRPC wire side.
//! - [`state`]: the client's SQLite state in `DIR/.syncstore/`.
//! - [`watch`]: the notify watcher and its settle timers.
//! - [`metrics`]: the client's Prometheus metrics.
//! - [`progress`]: a bar (or log lines) while a batch of transfers runs.
//! - [`ratelimit`]: the bandwidth limits, a token bucket per direction.
//! - [`control`]: the running client's control socket (pause, resume, live
//!   status).
//! - `refusal`: a primary refusing writes while its sync replica is away.
//! - [`watch()`](fn@crate::watch), [`sync_once`], [`status`], [`list`]:
//!   what the `sync-client` commands run.

pub mod control;
pub mod engine;
pub mod error;
pub mod execute;
pub mod folder;
pub mod fsmeta;
pub mod fsroot;
pub mod history;
pub mod local;
pub mod locks;
pub mod metrics;
pub mod plan;
pub mod planner;
pub mod progress;
pub mod ratelimit;
mod refusal;
pub mod remote;
pub mod state;
pub mod transfer;
pub mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use syncstore::{Backoff, Entry, Lock, RelPath, connect::Security};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use engine::Engine;
pub use error::{Error, Result};
pub use folder::Folder;
pub use plan::{Mode, Selection};
pub use planner::Planner;
pub use remote::{GrpcRemote, Remote};
pub use state::State;

/// Default time between two full rescans of the folder.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest accepted time between rescans.
pub const MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the client looks for locks of its own to refresh (each is
/// refreshed once a third of its time-to-live has passed).
const LOCK_REFRESH_CHECK: Duration = Duration::from_secs(1);
/// How often paths that failed are retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// First and largest wait before reconnecting to the server.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Full passes `sync` makes before it gives up on converging.
const MAX_SYNC_PASSES: usize = 5;
/// Events buffered between the watcher or the subscription and the engine.
const QUEUE: usize = 1024;
/// Server events buffered for the engine. Large, so that the subscription
/// is always read promptly: HTTP/2 refuses a peer that leaves a flood of
/// small frames unread, which would break every call on the connection.
/// (An event is a few hundred bytes: 64 Ki of them, some 16 MiB at most.)
const EVENT_QUEUE: usize = 64 * 1024;

/// What a client needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The servers, as `http://host:port`: one, or a primary and its
    /// replica (reads fall back to the replica while the primary is away).
    pub servers: Vec<String>,
    /// The synced folder.
    pub dir: PathBuf,
    /// Time between full rescans of the folder.
    pub rescan_interval: Duration,
    /// Whether to watch the folder for changes; without it local changes
    /// are found only by the rescans ("modified since the last check").
    pub watcher: bool,
    /// Where the engine counts what it does (served by `--metrics-listen`).
    pub metrics: metrics::ClientMetrics,
    /// The token and TLS settings presented to the servers.
    pub security: Security,
    /// In `watch`, uploads and downloads of at least this many bytes run
    /// beside the loop (see [`engine::LARGE_LANE_MIN`]).
    pub large_transfer: u64,
    /// The most content the client sends a second, all uploads together
    /// (none: no limit).
    pub max_upload_rate: Option<ratelimit::Rate>,
    /// The most content the client receives a second, all downloads
    /// together (none: no limit).
    pub max_download_rate: Option<ratelimit::Rate>,
    /// The folder's mode, if given (none: the one its state remembers,
    /// send-receive at first).
    pub mode: Option<Mode>,
    /// The subtrees kept here, if given (none: the ones its state
    /// remembers, every path at first; [`Selection::all`] forgets them).
    pub only: Option<Selection>,
}

impl Config {
    pub fn new(server: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            servers: vec![server.into()],
            dir: dir.into(),
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            watcher: true,
            metrics: metrics::ClientMetrics::new(),
            security: Security::none(),
            large_transfer: engine::LARGE_LANE_MIN,
            max_upload_rate: None,
            max_download_rate: None,
            mode: None,
            only: None,
        }
    }
}

/// Opens the folder and its state, and connects (lazily) to the server.
fn open(config: &Config) -> Result<(Engine, State, GrpcRemote, PathBuf)> {
    std::fs::create_dir_all(&config.dir)?;
    let root = std::fs::canonicalize(&config.dir)?;
    let state = State::open(&root)?;
    // One remote, so one pair of buckets, for every transfer of the client.
    let limits = ratelimit::Limits::new(config.max_upload_rate, config.max_download_rate);
    if config.max_upload_rate.is_some() || config.max_download_rate.is_some() {
        let show = |r: Option<ratelimit::Rate>| r.map_or_else(|| "no limit".to_owned(), |r| r.to_string());
        tracing::info!(
            upload = %show(config.max_upload_rate),
            download = %show(config.max_download_rate),
            "bandwidth limited"
        );
    }
    let remote = GrpcRemote::new(&config.servers, state.client_id()?, &config.security)?.with_limits(limits);
    let mode = remember_mode(&state, config.mode)?;
    let selection = remember_selection(&state, config.only.clone())?;
    let engine = Engine::new(Folder::open(&root)?, state.clone(), Arc::new(remote.clone()), host_name())
        .with_metrics(config.metrics.clone())
        .with_mode(mode)
        .with_selection(selection);
    Ok((engine, state, remote, root))
}

/// The state key holding the folder's mode.
const MODE_KEY: &str = "mode";

/// The mode the folder's state remembers (send-receive if none).
fn stored_mode(state: &State) -> Result<Mode> {
    match state.get_meta(MODE_KEY)?.filter(|m| !m.is_empty()) {
        None => Ok(Mode::default()),
        Some(m) => Mode::parse(&m).ok_or_else(|| {
            Error::Config(format!("the folder's state holds an unknown mode {m:?}; give --mode"))
        }),
    }
}

/// The folder's mode: `given`, remembered in its state (a change is
/// logged), or else the one remembered.
fn remember_mode(state: &State, given: Option<Mode>) -> Result<Mode> {
    let stored = stored_mode(state);
    let mode = match (given, stored) {
        (Some(mode), Ok(old)) if mode == old => mode,
        (Some(mode), old) => {
            let old = old.map_or_else(|e| e.to_string(), |m| m.to_string());
            tracing::info!(from = %old, to = %mode, "the folder's mode changes");
            state.set_meta(MODE_KEY, mode.as_str())?;
            mode
        }
        (None, stored) => stored?,
    };
    match mode {
        Mode::SendReceive => {}
        Mode::ReceiveOnly => tracing::info!(mode = %mode, "local changes are kept here and never sent"),
        Mode::SendOnly => tracing::info!(mode = %mode, "the server's changes are not applied here"),
    }
    Ok(mode)
}

/// The mode a one-off look at the folder plans in: `given`, or the one
/// its state remembers (nothing is written).
fn mode_of(state: &State, given: Option<Mode>) -> Result<Mode> {
    given.map_or_else(|| stored_mode(state), Ok)
}

/// The state key holding the folder's selection (a JSON list of paths;
/// missing or empty: every path).
const SELECTION_KEY: &str = "only";

/// The selection the folder's state remembers (every path if none).
pub fn stored_selection(state: &State) -> Result<Selection> {
    let Some(text) = state.get_meta(SELECTION_KEY)?.filter(|t| !t.is_empty()) else {
        return Ok(Selection::all());
    };
    let bad =
        |why: String| Error::Config(format!("the folder's state holds a bad selection ({why}); give --only"));
    let names: Vec<String> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let paths = names.into_iter().map(RelPath::new).collect::<std::result::Result<Vec<_>, _>>();
    Ok(Selection::of(paths.map_err(|e| bad(e.to_string()))?))
}

/// The folder's selection: `given`, remembered in its state (a change is
/// logged), or else the one remembered.
fn remember_selection(state: &State, given: Option<Selection>) -> Result<Selection> {
    let stored = stored_selection(state);
    let selection = match (given, stored) {
        (Some(selection), Ok(old)) if selection == old => selection,
        (Some(selection), old) => {
            let old = old.map_or_else(|e| e.to_string(), |s| s.to_string());
            tracing::info!(from = %old, to = %selection, "the folder's selection changes");
            let names: Vec<&str> = selection.paths().iter().map(RelPath::as_str).collect();
            state.set_meta(SELECTION_KEY, &serde_json::to_string(&names).map_err(std::io::Error::other)?)?;
            selection
        }
        (None, stored) => stored?,
    };
    if !selection.is_all() {
        tracing::info!(only = %selection, "selective sync: only these are kept here");
    }
    Ok(selection)
}

/// The selection a one-off look at the folder plans with: `given`, or the
/// one its state remembers (nothing is written).
fn selection_of(state: &State, given: Option<Selection>) -> Result<Selection> {
    given.map_or_else(|| stored_selection(state), Ok)
}

/// Brings back the server's state for every item a receive-only folder
/// changed (`revert`), or sends a send-only folder's state to the server
/// (`override`); see [`Engine::resolve_kept`]. It takes the folder, so a
/// `watch` of it must be stopped first.
pub async fn resolve_kept(config: Config, how: engine::Resolve, dry_run: bool) -> Result<engine::Resolved> {
    let (mut engine, _, _, root) = open(&config)?;
    let resolved = engine.resolve_kept(how, dry_run).await?;
    if engine.folder_gone() {
        return Err(Error::FolderGone(root.display().to_string()));
    }
    Ok(resolved)
}

fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// Keeps the folder in sync until `shutdown`: a full sync first, then local
/// events from the watcher, server events from the subscription, and a
/// full rescan every `rescan_interval`.
pub async fn watch(config: Config, shutdown: CancellationToken) -> Result<()> {
    let (engine, state, grpc, root) = open(&config)?;
    let remote: Arc<dyn Remote> = Arc::new(grpc.clone());
    refusal::forget(&state)?;
    let root_display = root.display().to_string();
    let tasks = TaskTracker::new();
    let stop_tasks = shutdown.child_token();
    // The helper tasks end with this function, even if it is dropped
    // (aborted) rather than returning.
    let _stop_on_drop = stop_tasks.clone().drop_guard();
    // Large transfers run beside the loop and report here when they end.
    // Pause, resume and the live status, for `sync-client` commands.
    let control = control::Control::new(state.clone())?;
    let (lane_tx, mut lane_rx) = mpsc::channel(QUEUE);
    let lane = engine::Lane {
        done: lane_tx,
        tasks: tasks.clone(),
        stop: stop_tasks.clone(),
        paused: control.paused(),
        min_size: config.large_transfer,
    };
    // The watcher signals a file once its writer is done; a scan that
    // meets one still being written leaves it for a moment.
    let mut engine = engine.with_lane(lane).with_settle(watch::SETTLE);
    // Published before the socket opens: the first answer already names
    // the mode.
    control.publish(|l| {
        l.servers = config.servers.clone();
        l.server = grpc.server().to_owned();
        l.mode = engine.mode().as_str().to_owned();
        l.only = engine.selection().paths().iter().map(ToString::to_string).collect();
    });
    match control::bind(&root) {
        Ok(listener) => {
            tasks.spawn(control::serve(listener, control.clone(), stop_tasks.clone()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: pause, resume and the live status are unavailable")
        }
    }
    let mut paused = control.paused();
    let mut held = Held::default();

    // Watch before the first sync, so nothing saved meanwhile is missed.
    let (local_tx, mut local_rx) = mpsc::channel(QUEUE);
    if config.watcher {
        let root_path = root.clone();
        tasks.spawn({
            let stop = stop_tasks.clone();
            async move {
                if let Err(e) = watch::run(root_path, local_tx, stop).await {
                    tracing::error!(error = %e, "the folder watcher failed; relying on rescans");
                }
            }
        });
    } else {
        tracing::info!(interval = ?config.rescan_interval, "no watcher: finding local changes by rescanning");
    }

    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut attempts = 0u32;
    if *paused.borrow() {
        tracing::info!("paused (remembered from before): `sync-client resume` starts syncing");
    }
    loop {
        // While paused, nothing is synced; local changes are only noted.
        while *paused.borrow_and_update() {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = paused.changed() => {}
                Some(change) = local_rx.recv() => held.local(change),
            }
            publish(&control, &engine, &held, &grpc, 0);
        }
        held = Held::default();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = engine.full_sync() => match r {
                Ok(n) => {
                    tracing::info!(actions = n, "initial sync done; watching");
                    break;
                }
                Err(e) if e.is_refused() => {
                    tracing::error!(error = %e, "stopping: the server refuses this client");
                    return Err(e);
                }
                Err(e) => {
                    attempts += 1;
                    // Say it once, then quietly keep trying.
                    if attempts == 1 {
                        tracing::warn!(error = %e, "initial sync failed; retrying with backoff");
                    } else {
                        tracing::debug!(error = %e, attempts, "initial sync still failing");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
            }
        }
    }

    let (remote_tx, mut remote_rx) = mpsc::channel(EVENT_QUEUE);
    tasks.spawn(subscribe(remote, state.clone(), remote_tx, stop_tasks.clone()));

    let mut rescan = tokio::time::interval(config.rescan_interval.max(MIN_RESCAN_INTERVAL));
    rescan.tick().await; // The first tick is immediate; the sync just ran.
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    let mut lock_refresh = tokio::time::interval(LOCK_REFRESH_CHECK);
    let mut is_paused = *paused.borrow_and_update();
    // A full sync is owed: after a pause, until one succeeds.
    let mut catch_up = false;
    let mut head = state.cursor()?;
    publish(&control, &engine, &held, &grpc, head);
    loop {
        let settled = engine.settling_due().map(tokio::time::Instant::from_std);
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Ok(()) = paused.changed() => {
                let now = *paused.borrow_and_update();
                if is_paused && !now {
                    // What finished meanwhile is planned again, then a full
                    // sync catches up with every change queued.
                    for done in std::mem::take(&mut held.lanes) {
                        engine.lane_done(done).await;
                    }
                    held = Held::default();
                    catch_up = !catch_up_sync(&mut engine, true).await;
                }
                is_paused = now;
            }
            Some(ev) = remote_rx.recv() => match ev {
                Subscription::Event(event) => {
                    head = head.max(event.seq());
                    if is_paused {
                        // The full sync at resume applies it.
                        held.remote(&event);
                    } else if let Err(e) = engine.remote_event(event).await {
                        tracing::warn!(error = %e, "could not apply a server change");
                    }
                }
                // The full sync at resume compares everything anyway.
                Subscription::Reconnected if is_paused => {}
                Subscription::Reconnected => {
                    // The server may have been replaced meanwhile: check its
                    // history before comparing against the stored bases.
                    match engine.check_history().await {
                        Ok(_) => log_rescan(engine.rescan().await),
                        Err(e) => tracing::warn!(error = %e, "cannot reach the server after reconnecting"),
                    }
                }
                Subscription::Refused(e) => {
                    tracing::error!(error = %e, "stopping: the server refuses this client");
                    stop_tasks.cancel();
                    tasks.close();
                    tasks.wait().await;
                    return Err(e);
                }
            },
            Some(done) = lane_rx.recv() => {
                if is_paused {
                    held.lanes.push(done);
                } else {
                    engine.lane_done(done).await;
                }
            }
            Some(change) = local_rx.recv() => match change {
                change if is_paused => held.local(change),
                watch::Change::Path(path) => engine.local_event(path).await,
                watch::Change::Rescan => log_rescan(engine.rescan().await),
            },
            _ = rescan.tick(), if !is_paused => log_rescan(engine.rescan().await),
            // Files a scan found being written, once they have settled.
            () = tokio::time::sleep_until(settled.unwrap_or_else(tokio::time::Instant::now)),
                if !is_paused && settled.is_some() => engine.look_again().await,
            _ = retry.tick(), if !is_paused && (catch_up || engine.has_failures()) => {
                if catch_up {
                    catch_up = !catch_up_sync(&mut engine, false).await;
                } else {
                    engine.retry_failed().await;
                }
            }
            _ = lock_refresh.tick() => {
                if engine.locks().holds_any() {
                    engine.refresh_own_locks().await;
                }
            }
        }
        engine.update_pending();
        publish(&control, &engine, &held, &grpc, head);
        if engine.folder_gone() {
            let e = Error::FolderGone(root_display.clone());
            tracing::error!(error = %e, "stopping");
            stop_tasks.cancel();
            tasks.close();
            tasks.wait().await;
            return Err(e);
        }
    }
    stop_tasks.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Changes met while paused, for the live status; resuming syncs them all
/// with a full sync.
#[derive(Debug, Default)]
struct Held {
    /// Distinct paths changed, up to [`MAX_HELD_PATHS`].
    paths: std::collections::BTreeSet<RelPath>,
    /// Changes beyond those, and rescans asked for.
    more: usize,
    /// Large-lane transfers that ended while paused.
    lanes: Vec<engine::LaneDone>,
}

/// Distinct paths [`Held`] keeps for the live status; past it, changes
/// are only counted (the full sync at resume finds them all).
const MAX_HELD_PATHS: usize = 10_000;

impl Held {
    fn note(&mut self, path: &RelPath) {
        if self.paths.len() < MAX_HELD_PATHS {
            self.paths.insert(path.clone());
        } else if !self.paths.contains(path) {
            self.more += 1;
        }
    }

    fn local(&mut self, change: watch::Change) {
        match change {
            watch::Change::Path(path) => self.note(&path),
            watch::Change::Rescan => self.more += 1,
        }
    }

    fn remote(&mut self, event: &remote::RemoteEvent) {
        match event {
            remote::RemoteEvent::Entry { entry: Some(e), .. } => self.note(&e.path),
            remote::RemoteEvent::Reset { .. } => self.more += 1,
            _ => {}
        }
    }
}

/// The full sync that follows a pause. Returns whether it succeeded (if
/// not, it is tried again at the next retry; only the `first` failure is
/// a warning).
async fn catch_up_sync(engine: &mut Engine, first: bool) -> bool {
    match engine.full_sync().await {
        Ok(n) => {
            tracing::info!(actions = n, "resumed: synced what changed while paused");
            true
        }
        Err(e) if first => {
            tracing::warn!(error = %e, "resumed, but the catch-up sync failed; retrying");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "the catch-up sync failed again");
            false
        }
    }
}

/// Publishes what the loop is doing for `status --live`.
fn publish(control: &control::Control, engine: &Engine, held: &Held, grpc: &GrpcRemote, head: u64) {
    let listed = control::MAX_LISTED;
    control.publish(|l| {
        l.server = grpc.server().to_owned();
        l.mode = engine.mode().as_str().to_owned();
        l.head = head;
        l.queued = held.paths.iter().take(listed).map(ToString::to_string).collect();
        l.queued_total = held.paths.len() + held.more;
        // One that ended while paused waits in `held` to be planned again.
        let ended = |p: &RelPath| held.lanes.iter().any(|d| d.path == *p);
        l.transfers = engine
            .in_flight()
            .filter(|(path, _)| !ended(path))
            .map(|(path, t)| control::Transfer {
                path: path.to_string(),
                direction: if t.upload { "upload" } else { "download" }.to_owned(),
                size: t.size,
                done: t.done.load(std::sync::atomic::Ordering::Relaxed),
                seconds: t.started.elapsed().as_secs(),
            })
            .collect();
        l.errors = engine
            .failures()
            .take(listed)
            .map(|(path, e)| control::PathError {
                path: path.to_string(),
                error: e.unwrap_or_default().to_owned(),
            })
            .collect();
        l.errors_total = engine.failure_count();
    });
}

fn log_rescan(r: Result<usize>) {
    match r {
        Ok(0) => {}
        Ok(n) => tracing::info!(actions = n, "rescan synced changes the watcher had not reported"),
        Err(e) => tracing::warn!(error = %e, "rescan failed"),
    }
}

/// What the subscription task tells the engine.
#[derive(Debug)]
enum Subscription {
    Event(remote::RemoteEvent),
    /// The subscription came back after a break: local changes made while
    /// the server was away are waiting.
    Reconnected,
    /// The server refuses this client's token (removed, say): stop.
    Refused(Error),
}

/// Follows the server's change stream from the stored cursor, reconnecting
/// with backoff, until `shutdown`.
async fn subscribe(
    remote: Arc<dyn Remote>,
    state: State,
    tx: mpsc::Sender<Subscription>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut connected_before = false;
    // Say once that the server is away, not at every attempt.
    let mut reported = false;
    loop {
        let attempt = async {
            let info = remote.info().await?;
            // A cursor from another history means nothing here: ask for a
            // position past any head, which the server answers with RESET.
            let cursor = match state.get_meta("history_id")? {
                Some(h) if h == info.history_id => state.cursor()?,
                _ => u64::MAX,
            };
            let mut stream = remote.subscribe(cursor).await?;
            tracing::info!(cursor, "subscribed to server changes");
            reported = false;
            backoff.reset();
            if connected_before && tx.send(Subscription::Reconnected).await.is_err() {
                return Ok(());
            }
            connected_before = true;
            while let Some(event) = stream.next().await {
                if tx.send(Subscription::Event(event?)).await.is_err() {
                    return Ok(());
                }
            }
            Err(Error::unavailable("the server ended the subscription"))
        };
        let result: Result<()> = tokio::select! {
            () = shutdown.cancelled() => return,
            r = attempt => r,
        };
        match result {
            Ok(()) => return,
            Err(e) if e.is_refused() => {
                let _ = tx.send(Subscription::Refused(e)).await;
                return;
            }
            Err(e) if !reported => {
                tracing::warn!(error = %e, "lost the server; reconnecting with backoff");
                reported = true;
            }
            Err(e) => tracing::debug!(error = %e, "server still away"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_wait()) => {}
        }
    }
}

/// Runs full reconciliations until the folder and the server agree.
/// Returns whether they do.
pub async fn sync_once(config: Config) -> Result<bool> {
    let (mut engine, state, _, root) = open(&config)?;
    refusal::forget(&state)?;
    for pass in 1..=MAX_SYNC_PASSES {
        let acted = engine.full_sync().await?;
        if engine.folder_gone() {
            return Err(Error::FolderGone(root.display().to_string()));
        }
        // Another pass would meet the same refusal.
        if let Some(why) = engine.writes_refused() {
            return Err(Error::WritesRefused(why.to_owned()));
        }
        tracing::debug!(pass, acted, "sync pass");
        if acted == 0 && !engine.has_failures() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Why the server refused the writes of a `watch` of this folder, if it
/// still does (its sync replica is away): `status` shows it.
pub fn writes_refused(config: &Config) -> Result<Option<String>> {
    let root = std::fs::canonicalize(&config.dir)?;
    refusal::stored(&State::open_shared(&root)?)
}

/// One line of `status`: a path on which the folder and the server differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    pub path: String,
    /// Like a directory comparison: `only-here`, `only-there`, `differs`
    /// (by content hash), `conflict` (both changed since the last sync),
    /// `locally-changed` / `remote-changed` (a change the folder's mode
    /// holds back), or `unreadable` / `being-written`.
    pub state: &'static str,
    /// What syncing would do about it, in the three-way terms: `changed
    /// here`, `deleted on the server`, ...; for `locked`, who holds the
    /// lock and until when.
    pub detail: String,
}

impl Difference {
    fn of(p: &planner::Planned) -> Option<Self> {
        use plan::Action;
        if matches!(p.action, Action::Nothing | Action::Record { .. } | Action::Forget) {
            return None;
        }
        let remote = p.remote.as_ref().and_then(|e| e.content);
        let state = match (&p.local, remote, &p.action) {
            (_, _, Action::NotSelected | Action::Deselect) => NOT_SELECTED,
            (_, _, Action::Conflict) => "conflict",
            (_, _, Action::KeepLocal) => LOCALLY_CHANGED,
            (_, _, Action::KeepRemote) => REMOTE_CHANGED,
            (Some(_), None, _) => "only-here",
            (None, Some(_), _) => "only-there",
            (Some(l), Some(r), _) if l.hash != r.hash => "differs",
            // Same content, other metadata (the executable bit).
            (Some(_), Some(_), _) => "differs",
            (None, None, _) => return None,
        };
        let detail = match (&p.action, &p.local, &p.base) {
            (Action::NotSelected, None, _) => "not selected: on the server only, not downloaded",
            (Action::NotSelected, Some(_), Some(_)) => {
                "not selected: changed here since the last sync, kept here and not sent"
            }
            (Action::NotSelected, Some(_), None) => "not selected: made here, kept here and not sent",
            (action, ..) => action.describe(),
        };
        Some(Self { path: p.path.to_string(), state, detail: detail.to_owned() })
    }
}

/// The `state` of a `status` row that shows a lock (not a difference).
pub const LOCKED: &str = "locked";
/// The `state` of a `status` row of a path outside the folder's selection
/// (the server's file, not fetched; or a local one, kept and not sent).
/// It is no difference.
pub const NOT_SELECTED: &str = "not-selected";
/// The `state` of a `status` row of a receive-only folder's own change,
/// kept here and not sent (`revert` brings back the server's version).
pub const LOCALLY_CHANGED: &str = "locally-changed";
/// The `state` of a `status` row of a send-only folder for a change on
/// the server not applied here (`override` sends the folder's version).
pub const REMOTE_CHANGED: &str = "remote-changed";

/// What differs between the folder and the server, and the live locks,
/// changing nothing. It can run beside a `watch` of the same folder.
pub async fn status(config: Config) -> Result<Vec<Difference>> {
    let root = std::fs::canonicalize(&config.dir)?;
    let state = State::open_shared(&root)?;
    let remote =
        GrpcRemote::new(&config.servers, state.get_meta("client_id")?.unwrap_or_default(), &config.security)?;
    let remote: Arc<dyn Remote> = Arc::new(remote);
    let mode = mode_of(&state, config.mode)?;
    let selection = selection_of(&state, config.only)?;
    let mut planner =
        Planner::new(Folder::open(&root)?, state, remote.clone()).with_mode(mode).with_selection(selection);
    let info = planner.check_history().await?;
    let locks = remote.list_locks("").await?;
    let all = planner.plan_all(&info).await?;
    let mut out: Vec<Difference> = all.plans.iter().filter_map(Difference::of).collect();
    out.extend(all.failed.into_iter().map(|(path, e)| {
        let state = match e {
            Error::ChangedWhileReading => "being-written",
            _ => "unreadable",
        };
        Difference { path: path.to_string(), state, detail: "retried later".into() }
    }));
    // Locks are shown whoever holds them; they are not differences.
    out.extend(locks.iter().map(|l| Difference {
        path: l.path.to_string(),
        state: LOCKED,
        detail: format!("locked by {}", l.describe()),
    }));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// One row of `status --against-replica`: a path on which the folder, the
/// primary and the replica do not all agree. Each side shows the first 12
/// hex digits of its content hash, or `None` where it has no file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ThreeWay {
    pub path: String,
    pub folder: Option<String>,
    pub primary: Option<String>,
    pub replica: Option<String>,
}

/// Compares the folder, the primary (the configured servers) and the
/// replica at `replica` by content, changing nothing.
pub async fn status_against_replica(config: Config, replica: &str) -> Result<Vec<ThreeWay>> {
    use std::collections::BTreeMap;
    let root = std::fs::canonicalize(&config.dir)?;
    let state = State::open_shared(&root)?;
    let remote =
        GrpcRemote::new(&config.servers, state.get_meta("client_id")?.unwrap_or_default(), &config.security)?;
    let mut planner = Planner::new(Folder::open(&root)?, state, Arc::new(remote));
    let info = planner.check_history().await?;
    let all = planner.plan_all(&info).await?;
    let replica_files =
        GrpcRemote::new(&[replica.to_owned()], String::new(), &config.security)?.manifest().await?;
    let short = |h: syncstore::ContentHash| h.to_hex()[..12].to_owned();
    let mut table: BTreeMap<String, ThreeWay> = BTreeMap::new();
    let row = |table: &mut BTreeMap<String, ThreeWay>, path: &syncstore::RelPath| {
        let path = path.to_string();
        table.entry(path.clone()).or_insert_with(|| ThreeWay {
            path,
            folder: None,
            primary: None,
            replica: None,
        });
    };
    for p in &all.plans {
        row(&mut table, &p.path);
        let r = table.get_mut(p.path.as_str()).expect("just added");
        r.folder = p.local.map(|l| short(l.hash));
        r.primary = p.remote.as_ref().and_then(|e| e.content).map(|c| short(c.hash));
    }
    // Paths this folder ignores are not compared (`plan_all` skipped them).
    for (path, e) in replica_files.into_iter().filter(|(p, _)| !planner.is_ignored(p)) {
        row(&mut table, &path);
        table.get_mut(path.as_str()).expect("just added").replica = e.content.map(|c| short(c.hash));
    }
    Ok(table.into_values().filter(|r| !(r.folder == r.primary && r.primary == r.replica)).collect())
}

/// The server's files (live ones only), in path order.
pub async fn list(servers: &[String], security: &Security) -> Result<Vec<Entry>> {
    let remote = GrpcRemote::new(servers, String::new(), security)?;
    remote.info().await?;
    let mut entries: Vec<Entry> =
        remote.manifest().await?.into_values().filter(|e| !e.is_deleted()).collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

/// The selection of the folder `dir` as its state remembers it, for `ls`
/// (every path where the folder has no state yet; nothing is created).
pub fn folder_selection(dir: &std::path::Path) -> Result<Selection> {
    let Ok(root) = std::fs::canonicalize(dir) else { return Ok(Selection::all()) };
    if !root.join(syncstore::limits::STATE_DIR_NAME).join("state.db").is_file() {
        return Ok(Selection::all());
    }
    stored_selection(&State::open_shared(&root)?)
}

/// The folder path `arg` names: relative to the synced folder, or an
/// absolute (or current-folder-relative, if it exists) path inside it.
pub(crate) fn folder_path(root: &std::path::Path, arg: &str) -> Result<RelPath> {
    let given = std::path::Path::new(arg);
    let candidate = if given.is_absolute() {
        Some(given.to_path_buf())
    } else {
        std::env::current_dir().ok().map(|d| d.join(given))
    };
    if let Some(full) = candidate.filter(|p| given.is_absolute() || p.exists()) {
        // Resolve the folder part (the file itself need not exist).
        let parent = full.parent().map(std::fs::canonicalize).transpose()?;
        if let (Some(parent), Some(name)) = (parent, full.file_name())
            && let Ok(p) = RelPath::from_local(root, &parent.join(name))
        {
            return Ok(p);
        }
        if given.is_absolute() {
            return Err(Error::Config(format!("{arg} is not inside the synced folder {}", root.display())));
        }
    }
    RelPath::new(arg.trim_end_matches('/')).map_err(|e| Error::Config(format!("{arg}: {e}")))
}

/// Opens the folder's state beside a possibly running `watch`, for a
/// one-off call as this folder's client.
fn one_off(config: &Config) -> Result<(std::path::PathBuf, GrpcRemote)> {
    let root = std::fs::canonicalize(&config.dir)?;
    let state = State::open_shared(&root)?;
    let remote = GrpcRemote::new(&config.servers, state.client_id()?, &config.security)?;
    Ok((root, remote))
}

/// Locks `path` for this folder's client, for `ttl` (a running `watch` of
/// the folder keeps refreshing it until `unlock`).
pub async fn lock(config: Config, path: &str, ttl: Duration, note: &str) -> Result<Lock> {
    let (root, remote) = one_off(&config)?;
    let path = folder_path(&root, path)?;
    remote.info().await?;
    remote.lock(&path, ttl, note, &holder_name()).await
}

/// Releases the lock on `path`; with `force`, even someone else's (an
/// administrator breaking it; the server records who).
pub async fn unlock(config: Config, path: &str, force: bool) -> Result<Lock> {
    let (root, remote) = one_off(&config)?;
    let path = folder_path(&root, path)?;
    remote.info().await?;
    let lock = remote.lock_on(&path).await?.ok_or_else(|| Error::Config(format!("{path} is not locked")))?;
    if lock.client_id != remote.client_id() && !force {
        return Err(Error::Config(format!(
            "{path} is locked by {}, not by this folder's client; `unlock --force` breaks it",
            lock.describe()
        )));
    }
    remote.unlock(&lock.lock_id, force).await
}

/// The server's live locks, in path order.
pub async fn locks(servers: &[String], security: &Security) -> Result<Vec<Lock>> {
    let remote = GrpcRemote::new(servers, String::new(), security)?;
    remote.info().await?;
    remote.list_locks("").await
}

/// "user@host", the readable name locks are taken under.
fn holder_name() -> String {
    let user =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "someone".into());
    format!("{user}@{}", host_name())
}
