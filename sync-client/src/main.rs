//! `sync-client`: parses flags, sets up logging and signals, and runs one
//! of the library's commands.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sync_client::{
    control::{self, Live, Request},
    ratelimit::Rate,
};
use syncstore::cli::{self, ConnectArgs, LogFormat};
use tokio_util::sync::CancellationToken;

/// Keeps a local folder in two-way sync with a syncstore server.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A TOML file of options (keys are the long option names); flags and
    /// SYNCSTORE_* environment variables take precedence over it.
    #[arg(long, env = "SYNCSTORE_CONFIG")]
    config: Option<PathBuf>,
    /// The server to sync with. Give it twice (primary and replica) to read
    /// from the replica while the primary is away; changes made meanwhile
    /// wait until a primary answers.
    #[arg(
        long = "server",
        default_value = "http://127.0.0.1:50051",
        env = "SYNCSTORE_SERVER",
        value_delimiter = ','
    )]
    servers: Vec<String>,
    /// The folder to sync (created if missing).
    #[arg(long, env = "SYNCSTORE_DIR")]
    dir: Option<PathBuf>,
    /// Time between full rescans of the folder (catches what the watcher
    /// missed), e.g. 30s, 5m.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "SYNCSTORE_RESCAN_INTERVAL")]
    rescan_interval: Duration,
    /// With `watch`: do not watch the folder; find local changes only by
    /// rescanning it every --rescan-interval (a file modified since the
    /// last check is synced). For file systems without change events.
    #[arg(long, env = "SYNCSTORE_POLL_ONLY")]
    poll_only: bool,
    /// Log lines (on stderr) for people or, as JSON, for machines;
    /// RUST_LOG filters them.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SYNCSTORE_LOG_FORMAT")]
    log_format: LogFormat,
    /// With `watch`: serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, env = "SYNCSTORE_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The most file content sent a second, all uploads together, e.g.
    /// 5MiB/s, 500KiB/s, 2MB/s or 1048576 (bytes a second). No limit
    /// without it.
    #[arg(long, value_name = "RATE", env = "SYNCSTORE_MAX_UPLOAD_RATE")]
    max_upload_rate: Option<Rate>,
    /// The most file content received a second, all downloads together
    /// (same form as --max-upload-rate). No limit without it.
    #[arg(long, value_name = "RATE", env = "SYNCSTORE_MAX_DOWNLOAD_RATE")]
    max_download_rate: Option<Rate>,
    /// Which way the folder syncs: send-receive, send-only (the server's
    /// changes are not applied here) or receive-only (local changes are
    /// kept here, never sent). Remembered in the folder's state; without
    /// it, the remembered mode (send-receive at first).
    #[arg(long, value_enum, env = "SYNCSTORE_MODE")]
    mode: Option<sync_client::Mode>,
    /// Selective sync: keep only this subtree of the server's files here
    /// (repeatable; a list in the config file; comma-separated in the
    /// environment). A path outside the selection is neither downloaded
    /// nor deleted on the server; a de-selected file unchanged since the
    /// last sync is removed here, a changed one kept. Remembered in the
    /// folder's state; without it, the remembered selection (everything
    /// at first).
    #[arg(long, value_name = "PATH", value_parser = parse_only, env = "SYNCSTORE_ONLY", value_delimiter = ',')]
    only: Vec<syncstore::RelPath>,
    /// Forget the remembered --only selection: keep every path here again
    /// (what was not selected is downloaded).
    #[arg(long, conflicts_with = "only")]
    select_all: bool,
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Sync now and keep syncing until interrupted (the default).
    Watch,
    /// Reconcile both ways once; exit 0 once the folder and server agree.
    Sync,
    /// Show what differs between the folder and the server; change nothing.
    /// Exit 0 when in sync, 1 when not.
    Status {
        /// Print a JSON array of {"path", "state", "detail"} objects instead
        /// of lines.
        #[arg(long)]
        json: bool,
        /// Also compare with this replica: one row per path on which the
        /// folder, the primary and the replica do not all agree, with each
        /// side's content hash ("-" where it has no file).
        #[arg(long, value_name = "URL")]
        against_replica: Option<String>,
        /// Show only what the `watch` running on the folder is doing now
        /// (paused or not, queued paths, transfers, errors, server,
        /// cursor), without asking the server. Exit 3 if none runs.
        #[arg(long, conflicts_with = "against_replica")]
        live: bool,
    },
    /// Pause the `watch` running on the folder: no transfer starts until
    /// `resume`; changes either way wait. Remembered across restarts.
    Pause,
    /// Resume a paused folder: what changed meanwhile is synced.
    Resume,
    /// List the server's files.
    Ls,
    /// Lock a file so that nobody else's change to it reaches the server
    /// until `unlock` (or the lock expires; a running `watch` of this folder
    /// keeps refreshing it). The file need not exist yet.
    Lock {
        /// The file, relative to --dir (or a path inside it).
        path: String,
        /// How long the lock lasts unless refreshed, e.g. 10m, 2h.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Why, for the others to read.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Release a lock this folder's client holds.
    Unlock {
        /// The file, relative to --dir (or a path inside it).
        path: String,
        /// Break someone else's lock (an administrator's action; the server
        /// records who broke it).
        #[arg(long)]
        force: bool,
    },
    /// List the server's live locks.
    Locks,
    /// In a receive-only folder: bring back the server's version of every
    /// locally changed item, keeping each local version as a conflict copy
    /// first (a file added here stays). Stop a `watch` of the folder first.
    Revert {
        /// Only list what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// In a send-only folder: make the server match the folder, as new
    /// versions. Stop a `watch` of the folder first.
    Override {
        /// Only list what would be done.
        #[arg(long)]
        dry_run: bool,
    },
    /// The server's version history (paths relative to --dir if given,
    /// else the server's own).
    #[command(flatten)]
    History(sync_client::history::Verb),
}

/// An `--only` path: relative to the folder, without `..`, not empty (a
/// trailing `/` is allowed).
fn parse_only(s: &str) -> Result<syncstore::RelPath, String> {
    let trimmed = s.strip_suffix('/').filter(|t| !t.is_empty()).unwrap_or(s);
    syncstore::RelPath::new(trimmed).map_err(|e| format!("not a path inside the folder: {e}"))
}

/// Exit code of `pause`, `resume` and `status --live` when no client runs
/// on the folder (1 is "not in sync", 2 a usage error).
const NOT_RUNNING: u8 = 3;

/// Exit code of `rewind` when it may not ask for a confirmation and was
/// not given `--yes` (as a usage error).
const NOT_CONFIRMED: u8 = 2;

fn main() -> ExitCode {
    let args: Args = match cli::parse_args() {
        Ok(args) => args,
        Err(code) => return code,
    };
    cli::init_logging(args.log_format, "info,notify=warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let command = args.command.clone().unwrap_or(Command::Watch);
    let security = args.connect.security()?;
    if let Command::Ls = command {
        // With a folder (or --only), the paths it does not keep are marked.
        let selection = match (only(&args), &args.dir) {
            (Some(selection), _) => selection,
            (None, Some(dir)) => sync_client::folder_selection(dir)?,
            (None, None) => sync_client::Selection::all(),
        };
        for e in sync_client::list(&args.servers, &security).await? {
            let size = e.content.map_or(0, |c| c.size);
            let mark = if selection.selects(&e.path) { "" } else { "  (not selected)" };
            println!("{:>8} {:>12} {}{mark}", e.version, size, e.path);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Locks = command {
        for l in sync_client::locks(&args.servers, &security).await? {
            let note = if l.note.is_empty() { String::new() } else { format!("  ({})", l.note) };
            println!("{}  locked by {}{note}", l.path, l.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::History(verb) = command {
        let target =
            sync_client::history::Target { servers: args.servers.clone(), security, dir: args.dir.clone() };
        let mut stdout = std::io::BufWriter::new(std::io::stdout());
        let done = sync_client::history::run(verb, &target, &mut stdout).await;
        stdout.flush().context("cannot write to stdout")?;
        return match done {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e @ sync_client::Error::NotConfirmed(_)) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(NOT_CONFIRMED))
            }
            Err(e) => Err(e.into()),
        };
    }
    let dir = args.dir.clone().context("--dir is required for this command")?;
    if let Some((request, json)) = match command {
        Command::Pause => Some((Request::Pause, false)),
        Command::Resume => Some((Request::Resume, false)),
        Command::Status { live: true, json, .. } => Some((Request::Status, json)),
        _ => None,
    } {
        let live = match control::request(&dir, request).await {
            Ok(live) => live,
            Err(e @ sync_client::Error::NotRunning(_)) => {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(NOT_RUNNING));
            }
            Err(e) => return Err(e.into()),
        };
        if json {
            println!("{}", serde_json::to_string_pretty(&live)?);
        } else if request == Request::Status {
            print!("{}", show_live(&live));
        } else {
            println!("{}", if live.paused { "paused" } else { "syncing" });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = sync_client::Config::new(String::new(), dir);
    config.servers = args.servers.clone();
    config.security = security;
    config.rescan_interval = args.rescan_interval;
    config.watcher = !args.poll_only;
    config.max_upload_rate = args.max_upload_rate;
    config.max_download_rate = args.max_download_rate;
    config.mode = args.mode;
    config.only = only(&args);
    match command {
        Command::Watch => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cli::stop_on_signal(shutdown.clone()));
            if let Some(addr) = args.metrics_listen {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let (registry, stop) = (config.metrics.registry.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let refresh: syncstore::metrics::Refresh = std::sync::Arc::new(|| {});
                    if let Err(e) =
                        syncstore::metrics::serve(listener, registry, refresh, stop.cancelled_owned()).await
                    {
                        tracing::error!(error = %e, "metrics endpoint failed");
                    }
                });
            }
            sync_client::watch(config, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync => {
            if sync_client::sync_once(config).await? {
                tracing::info!("in sync");
                Ok(ExitCode::SUCCESS)
            } else {
                tracing::warn!("not in sync yet (changes kept arriving, or some paths failed)");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Status { json, against_replica: Some(replica), .. } => {
            let rows = sync_client::status_against_replica(config, &replica).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let show = |h: &Option<String>| h.clone().unwrap_or_else(|| "-".into());
                if !rows.is_empty() {
                    println!("{:<12} {:<12} {:<12} path", "folder", "primary", "replica");
                }
                for r in &rows {
                    println!(
                        "{:<12} {:<12} {:<12} {}",
                        show(&r.folder),
                        show(&r.primary),
                        show(&r.replica),
                        r.path
                    );
                }
            }
            Ok(if rows.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Status { json, against_replica: None, .. } => {
            let refused = sync_client::writes_refused(&config)?;
            if let Some(why) = &refused {
                eprintln!("writes refused: {why}");
            }
            // The running client's state goes beside the differences, on
            // stderr, so that stdout stays one line (or object) per path.
            if !json && let Ok(live) = control::request(&config.dir, Request::Status).await {
                eprint!("{}", show_live(&live));
            }
            let diffs = sync_client::status(config).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&diffs)?);
            } else {
                for d in &diffs {
                    println!("{:<13} {}  ({})", d.state, d.path, d.detail);
                }
            }
            // A lock is shown but is no difference; so is a path outside the selection.
            let shown = [sync_client::LOCKED, sync_client::NOT_SELECTED];
            let in_sync = refused.is_none() && diffs.iter().all(|d| shown.contains(&d.state));
            Ok(if in_sync { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Lock { path, ttl, note } => {
            let l = sync_client::lock(config, &path, ttl, &note).await?;
            println!(
                "locked {} until {} (lock {}, token {})",
                l.path,
                syncstore::lock::format_ms(l.expires_ms),
                l.lock_id,
                l.token
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Unlock { path, force } => {
            let l = sync_client::unlock(config, &path, force).await?;
            println!("unlocked {}", l.path);
            Ok(ExitCode::SUCCESS)
        }
        Command::Revert { dry_run } => resolve(config, sync_client::engine::Resolve::Revert, dry_run).await,
        Command::Override { dry_run } => {
            resolve(config, sync_client::engine::Resolve::Override, dry_run).await
        }
        Command::Ls | Command::Locks | Command::Pause | Command::Resume | Command::History(_) => {
            unreachable!("handled above")
        }
    }
}

/// The selection the flags give: `--only`'s subtrees, every path with
/// `--select-all`, or none (the remembered one).
fn only(args: &Args) -> Option<sync_client::Selection> {
    if args.select_all {
        Some(sync_client::Selection::all())
    } else if args.only.is_empty() {
        None
    } else {
        Some(sync_client::Selection::of(args.only.clone()))
    }
}

/// Runs `revert` or `override`: one line per action (and per item left as
/// it is); exit 1 if any failed.
async fn resolve(
    config: sync_client::Config,
    how: sync_client::engine::Resolve,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let done = sync_client::resolve_kept(config, how, dry_run).await?;
    let verb = if dry_run { "would" } else { "did" };
    let failed = |p: &sync_client::planner::Planned| done.failed.iter().any(|(f, _)| *f == p.path);
    for p in done.done.iter().filter(|p| !failed(p)) {
        let what = match p.action {
            sync_client::plan::Action::Conflict => "keep the local version as a copy and fetch the server's",
            sync_client::plan::Action::Download => "fetch the server's version",
            sync_client::plan::Action::Upload { .. } => "send the folder's version",
            sync_client::plan::Action::DeleteRemote { .. } => "delete it on the server",
            _ => p.action.describe(),
        };
        println!("{verb} {what}: {}", p.path);
    }
    for p in &done.left {
        println!("left as it is (nothing on the server to bring back): {}", p.path);
    }
    for (path, e) in &done.failed {
        eprintln!("failed: {path}: {e:#}");
    }
    Ok(if done.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The live state for people, one fact a line.
fn show_live(live: &Live) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let state = if live.paused { "paused" } else { "syncing" };
    let _ = writeln!(out, "client:     running, {state}");
    let _ = writeln!(out, "mode:       {}", live.mode);
    if !live.only.is_empty() {
        let _ = writeln!(out, "only:       {}", live.only.join(", "));
    }
    let replica = if live.servers.first().is_some_and(|p| *p != live.server) { " (a replica)" } else { "" };
    let _ = writeln!(out, "server:     {}{replica}", live.server);
    let _ = writeln!(out, "cursor:     {} of {}", live.cursor, live.head);
    let _ = writeln!(out, "queued:     {}", live.queued_total);
    for path in &live.queued {
        let _ = writeln!(out, "  {path}");
    }
    let _ = writeln!(out, "transfers:  {}", live.transfers.len());
    for t in &live.transfers {
        let _ =
            writeln!(out, "  {} {} ({} of {} bytes, {}s)", t.direction, t.path, t.done, t.size, t.seconds);
    }
    let _ = writeln!(out, "errors:     {}", live.errors_total);
    for e in &live.errors {
        let _ = writeln!(out, "  {}: {}", e.path, e.error);
    }
    out
}
