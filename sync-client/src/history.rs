//! The history commands (`history`, `cat`, `get`, `restore`, `trash`,
//! `undelete`, `rewind`, `browse`, `diff`, `label`, `labels`, `pin`): their
//! flags, the reading of their arguments (paths, versions, times, labels),
//! the calls to the server's `History` service through
//! [`HistoryRemote`], and their output: readable lines, or with `--json`
//! one JSON object a line.
//!
//! A restore, undelete or rewind is a change on the server, made under a
//! client id of its own (the folder's id with [`CLIENT_ID_SUFFIX`]), so
//! that history tells it from the folder's own writes, and so that the
//! folder's `watch` never takes it for one of its own uploads whose answer
//! it lost (`Planner::own_version`: the restored content may be content
//! this folder sent and has not seen recorded).

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use chrono::{Local, LocalResult, NaiveDateTime, TimeZone};
use futures::StreamExt;
use serde::Serialize;
use syncstore::{RelPath, connect::Security};

use crate::{
    GrpcRemote, Remote, State,
    error::{Error, Result},
    remote::history::{Difference, HistoryRemote, Label, Point, RewindAction, Version, VersionKind},
};

/// Appended to the folder's client id for the changes history commands
/// make (see the module doc).
pub const CLIENT_ID_SUFFIX: &str = "/history";

/// The client id of history commands run without a folder.
const NO_FOLDER_CLIENT_ID: &str = "sync-client/history";

/// What `rewind` answers when it may not ask and was not told `--yes`.
pub const NOT_CONFIRMED: &str = "rewind changes files on the server for every client: give --yes to do it without asking (stdin is not a terminal)";

/// A history command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Verb {
    /// Every kept version of a file, newest first (following moves): its
    /// version number, when, who, size and what it was.
    History {
        /// The file (its path now, or when it was deleted).
        path: String,
        /// At most this many versions.
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        limit: u32,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Writes a version's content to stdout: PATH@VERSION, PATH@TIME or
    /// PATH@label:NAME (a deleted file's too).
    Cat {
        /// PATH@VERSION, PATH@TIME or PATH@label:NAME.
        spec: String,
    },
    /// Writes a version's content to a file (whole or not at all).
    Get {
        /// PATH@VERSION, PATH@TIME or PATH@label:NAME.
        spec: String,
        /// The file to write (replaced if it exists).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// Makes an earlier version a file's current content again, as a new
    /// change every client gets.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["version", "at"])))]
    Restore {
        /// The file.
        path: String,
        /// The version number to bring back.
        #[arg(long)]
        version: Option<u64>,
        /// Bring back the version the file had at this time (or
        /// label:NAME).
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Write it at this path instead (a copy beside the file).
        #[arg(long, value_name = "NEWPATH")]
        to: Option<String>,
    },
    /// Deleted files, newest deletion first.
    Trash {
        /// Only files in this folder.
        dir: Option<String>,
        /// Only files deleted since this time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only paths matching this glob (`*` within a name, `**` across
        /// folders; without `/`, the file name alone).
        #[arg(long = "match", value_name = "GLOB")]
        glob: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Brings back every deleted file under a folder (or that matches), in
    /// one change on the server.
    Undelete {
        /// The folder ("." for every file).
        #[arg(long, value_name = "DIR")]
        under: String,
        /// Only files deleted since this time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only paths matching this glob.
        #[arg(long = "match", value_name = "GLOB")]
        glob: Option<String>,
        /// Only list what would come back.
        #[arg(long)]
        dry_run: bool,
    },
    /// Brings a folder back to its state at a point: changed files get
    /// their content of then, deleted ones come back, new ones are
    /// deleted. Prints what it will do first and labels the state before.
    Rewind {
        /// The folder ("." for every file).
        dir: String,
        /// The point: a TIME, label:NAME or a version number.
        #[arg(long, value_name = "POINT")]
        to: String,
        /// Only print what it would do.
        #[arg(long)]
        dry_run: bool,
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Lists a folder as it was at a point, read-only.
    Browse {
        /// The point: a TIME, label:NAME or a version number.
        #[arg(long, value_name = "POINT")]
        at: String,
        /// The folder (every file without it).
        dir: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// What changed in a folder between two points.
    Diff {
        /// The folder ("." for every file).
        dir: String,
        /// The earlier point: a TIME, label:NAME or a version number.
        #[arg(long, value_name = "POINT")]
        from: String,
        /// The later point (now without it).
        #[arg(long, value_name = "POINT")]
        to: Option<String>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Names the server's state now (or at --at); retention keeps what a
    /// label needs.
    Label {
        /// Letters, digits, `.`, `_`, `-` and `:`.
        name: String,
        /// The point to name: a TIME, label:NAME or a version number.
        #[arg(long, value_name = "POINT")]
        at: Option<String>,
        /// A note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The labels, oldest first.
    Labels {
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// Pins a version (PATH@VERSION): retention never removes it.
    Pin {
        /// PATH@VERSION.
        spec: String,
        /// Unpin it instead.
        #[arg(long)]
        unpin: bool,
    },
}

/// Where history commands go: the servers, how to reach them, and the
/// synced folder paths are relative to (none: paths are the server's).
#[derive(Debug, Clone)]
pub struct Target {
    pub servers: Vec<String>,
    pub security: Security,
    pub dir: Option<PathBuf>,
}

/// Runs `verb` against `target`, writing its output to `out`.
pub async fn run(verb: Verb, target: &Target, out: &mut (dyn Write + Send)) -> Result<()> {
    let cx = Context::open(target).await?;
    let now = now_ms();
    match verb {
        Verb::History { path, limit, json } => {
            let path = cx.file(&path)?;
            for v in cx.history.versions(path.as_str(), limit).await? {
                if json {
                    json_line(out, &VersionRow::of(&v))?;
                } else {
                    writeln!(out, "{}", show_version(&v))?;
                }
            }
        }
        Verb::Cat { spec } => {
            let (path, point) = cx.spec(&spec, now)?;
            let (version, mut pieces) = match cx.history.read(path.as_str(), &point).await {
                Err(e) if is_unknown_version(&e) => match cx.former_name(&path, &point).await? {
                    Some(former) => cx.history.read(&former, &point).await?,
                    None => return Err(e),
                },
                read => read?,
            };
            let mut check = ContentCheck::new(&version)?;
            while let Some(piece) = pieces.next().await {
                let piece = piece?;
                check.add(&piece);
                out.write_all(&piece)?;
            }
            out.flush()?;
            check.finish()?;
        }
        Verb::Get { spec, output } => {
            let (path, point) = cx.spec(&spec, now)?;
            let version = match get(&cx.history, path.as_str(), &point, &output).await {
                Err(e) if is_unknown_version(&e) => match cx.former_name(&path, &point).await? {
                    Some(former) => get(&cx.history, &former, &point, &output).await?,
                    None => return Err(e),
                },
                got => got?,
            };
            writeln!(out, "wrote {} ({})", output.display(), show_version(&version))?;
        }
        Verb::Restore { path, version, at, to } => {
            let path = cx.file(&path)?;
            let point = match (version, at) {
                (Some(v), _) => Point::Version(v),
                (None, Some(at)) => parse_point(&at, now)?,
                (None, None) => unreachable!("clap requires one"),
            };
            let to = to.map(|t| cx.file(&t)).transpose()?;
            let to_path = to.as_ref().map_or("", RelPath::as_str);
            let v = match cx.history.restore(path.as_str(), &point, to_path, &cx.client_id, 0).await {
                // A version of a former name comes back under the name now.
                Err(e) if is_unknown_version(&e) => match cx.former_name(&path, &point).await? {
                    Some(former) => {
                        let to_path = if to_path.is_empty() { path.as_str() } else { to_path };
                        cx.history.restore(&former, &point, to_path, &cx.client_id, 0).await?
                    }
                    None => return Err(e),
                },
                restored => restored?,
            };
            writeln!(out, "restored {}", show_version(&v))?;
        }
        Verb::Trash { dir, since, glob, json } => {
            let under = cx.dir(dir.as_deref().unwrap_or(""))?;
            let since = since.map(|s| parse_time(&s, now)).transpose()?.unwrap_or(0);
            for t in cx.history.trash(&under, since, glob.as_deref().unwrap_or("")).await? {
                if json {
                    json_line(out, &TrashRow::of(&t.deleted, &t.last))?;
                } else {
                    let (d, l) = (&t.deleted, &t.last);
                    writeln!(
                        out,
                        "{}  deleted {} by {}  (version {} of {} bytes, from {})",
                        d.entry.path,
                        when(d.committed_ms),
                        who(d),
                        l.entry.version,
                        size(l),
                        when(l.committed_ms),
                    )?;
                }
            }
        }
        Verb::Undelete { under, since, glob, dry_run } => {
            let under = cx.dir(&under)?;
            let since = since.map(|s| parse_time(&s, now)).transpose()?.unwrap_or(0);
            let glob = glob.unwrap_or_default();
            if dry_run {
                for t in cx.history.trash(&under, since, &glob).await? {
                    writeln!(
                        out,
                        "would bring back {} (version {})",
                        t.deleted.entry.path, t.last.entry.version
                    )?;
                }
            }
            let done = cx.history.undelete(&under, since, &glob, &cx.client_id, dry_run).await?;
            let verb = if dry_run { "would bring back" } else { "brought back" };
            write!(out, "{verb} {} file(s)", done.restored)?;
            if done.skipped > 0 {
                write!(out, "; {} left deleted (a file now in the way, or locked)", done.skipped)?;
            }
            if done.last_version > 0 {
                write!(out, " (versions {} to {})", done.first_version, done.last_version)?;
            }
            writeln!(out)?;
        }
        Verb::Rewind { dir, to, dry_run, yes } => {
            let under = cx.dir(&dir)?;
            let point = parse_point(&to, now)?;
            let (actions, plan) = cx.history.rewind(&under, &point, &cx.client_id, true).await?;
            for a in &actions {
                writeln!(out, "{}", show_action(a))?;
            }
            let folder = if under.is_empty() { "every file".to_owned() } else { format!("{under}/") };
            writeln!(out, "rewinding {folder} to {to} changes {} file(s)", plan.changed)?;
            if dry_run || plan.changed == 0 {
                return Ok(());
            }
            if !yes {
                out.flush()?;
                if !confirm("rewind now?")? {
                    return Err(Error::NotConfirmed("rewind not done".into()));
                }
            }
            let (_, done) = cx.history.rewind(&under, &point, &cx.client_id, false).await?;
            write!(out, "rewound: {} file(s) changed", done.changed)?;
            if done.skipped > 0 {
                write!(out, ", {} left as they are (locked)", done.skipped)?;
            }
            if !done.label.is_empty() {
                write!(
                    out,
                    "; the state before is labelled {} (rewind --to label:{0} undoes it)",
                    done.label
                )?;
            }
            writeln!(out)?;
        }
        Verb::Browse { at, dir, json } => {
            let under = cx.dir(dir.as_deref().unwrap_or(""))?;
            let point = parse_point(&at, now)?;
            for v in cx.history.browse(&under, &point).await?.iter().filter(|v| !v.entry.is_deleted()) {
                if json {
                    json_line(out, &VersionRow::of(v))?;
                } else {
                    writeln!(
                        out,
                        "{:>8} {:>12}  {}  {}",
                        v.entry.version,
                        size(v),
                        when(v.committed_ms),
                        v.entry.path
                    )?;
                }
            }
        }
        Verb::Diff { dir, from, to, json } => {
            let under = cx.dir(&dir)?;
            let from = parse_point(&from, now)?;
            let to = to.map(|t| parse_point(&t, now)).transpose()?;
            for d in cx.history.diff(&under, &from, to.as_ref()).await? {
                if json {
                    json_line(out, &DiffRow::of(&d))?;
                } else {
                    writeln!(out, "{:<8} {}", change_of(&d), d.path)?;
                }
            }
        }
        Verb::Label { name, at, note } => {
            let at = at.map(|a| parse_point(&a, now)).transpose()?;
            let label = cx.history.set_label(&name, at.as_ref(), &note).await?;
            writeln!(out, "{}", show_label(&label))?;
        }
        Verb::Labels { json } => {
            for label in cx.history.labels().await? {
                if json {
                    json_line(out, &LabelRow::of(&label))?;
                } else {
                    writeln!(out, "{}", show_label(&label))?;
                }
            }
        }
        Verb::Pin { spec, unpin } => {
            let (path, point) = cx.spec(&spec, now)?;
            let Point::Version(version) = point else {
                return Err(Error::Config(format!("{spec}: pin takes PATH@VERSION (a version number)")));
            };
            let v = match cx.history.pin(path.as_str(), version, unpin).await {
                Err(e) if is_unknown_version(&e) => match cx.former_name(&path, &point).await? {
                    Some(former) => cx.history.pin(&former, version, unpin).await?,
                    None => return Err(e),
                },
                pinned => pinned?,
            };
            writeln!(out, "{} {}", if v.pinned { "pinned" } else { "unpinned" }, show_version(&v))?;
        }
    }
    Ok(())
}

/// What every command needs: the active server's `History`, the folder
/// (if any) and the client id changes are made under.
struct Context {
    history: HistoryRemote,
    root: Option<PathBuf>,
    client_id: String,
}

impl Context {
    async fn open(target: &Target) -> Result<Self> {
        let (root, client_id) = match &target.dir {
            Some(dir) => {
                let root = std::fs::canonicalize(dir)
                    .map_err(|e| Error::Config(format!("the folder {}: {e}", dir.display())))?;
                let id = State::open_shared(&root)?.client_id()?;
                (Some(root), format!("{id}{CLIENT_ID_SUFFIX}"))
            }
            None => (None, NO_FOLDER_CLIENT_ID.to_owned()),
        };
        let remote = GrpcRemote::new(&target.servers, client_id.clone(), &target.security)?;
        // Chooses the active server: the primary if one answers.
        remote.info().await?;
        Ok(Self { history: remote.history(), root, client_id })
    }

    /// The file `arg` names: relative to the folder (or an absolute path
    /// inside it) with one, the server's path without.
    fn file(&self, arg: &str) -> Result<RelPath> {
        let Some(root) = &self.root else {
            return RelPath::new(arg.trim_end_matches('/')).map_err(|e| Error::Config(format!("{arg}: {e}")));
        };
        match crate::folder_path(root, arg) {
            // A deleted file's folder may be gone too: an absolute path is
            // then read as it is written.
            Err(Error::Io(e)) if Path::new(arg).is_absolute() => match Path::new(arg).strip_prefix(root) {
                Ok(rest) => RelPath::new(rest.to_string_lossy().into_owned())
                    .map_err(|e| Error::Config(format!("{arg}: {e}"))),
                Err(_) => Err(Error::Io(e)),
            },
            other => other,
        }
    }

    /// The folder `arg` names, as the server's path ("" for all: "", "."
    /// or the synced folder itself).
    fn dir(&self, arg: &str) -> Result<String> {
        let trimmed = arg.trim_end_matches('/');
        if trimmed.is_empty() {
            return Ok(String::new());
        }
        let Some(root) = &self.root else {
            return if trimmed == "." { Ok(String::new()) } else { Ok(self.file(arg)?.to_string()) };
        };
        let given = Path::new(trimmed);
        let full = match given.is_absolute() {
            true => Some(given.to_path_buf()),
            false => std::env::current_dir().ok().map(|d| d.join(given)),
        };
        // A folder that exists here, named from where the command runs.
        if let Some(found) = full.and_then(|f| std::fs::canonicalize(f).ok()) {
            if found == *root {
                return Ok(String::new());
            }
            if let Ok(p) = RelPath::from_local(root, &found) {
                return Ok(p.to_string());
            }
        }
        if trimmed == "." {
            // Run from outside the synced folder: "." is the folder itself.
            return Ok(String::new());
        }
        Ok(self.file(arg)?.to_string())
    }

    /// The former name of the file now at `path` under which it had
    /// version `point` (history follows moves, and lists those versions
    /// with the file's; the server reads a version of one path), if
    /// `point` is a version number of one.
    async fn former_name(&self, path: &RelPath, point: &Point) -> Result<Option<String>> {
        let Point::Version(number) = point else { return Ok(None) };
        let versions = self.history.versions(path.as_str(), 0).await?;
        let had = versions.into_iter().find(|v| v.entry.version == *number);
        Ok(had.map(|v| v.entry.path.to_string()).filter(|p| p != path.as_str()))
    }

    /// A `PATH@POINT` argument.
    fn spec(&self, spec: &str, now: i64) -> Result<(RelPath, Point)> {
        let (path, point) = split_spec(spec)?;
        Ok((self.file(path)?, parse_point(point, now)?))
    }
}

/// Splits `PATH@POINT` at its last `@` (a path may hold `@`; a point
/// never does).
pub fn split_spec(spec: &str) -> Result<(&str, &str)> {
    match spec.rsplit_once('@') {
        Some((path, point)) if !path.is_empty() && !point.is_empty() => Ok((path, point)),
        _ => Err(Error::Config(format!(
            "{spec}: expected PATH@VERSION, PATH@TIME or PATH@label:NAME (e.g. notes.txt@42, notes.txt@2h)"
        ))),
    }
}

/// Reads a point: a version number (digits alone), `label:NAME`, or a
/// time (see [`parse_time`]).
pub fn parse_point(s: &str, now_ms: i64) -> Result<Point> {
    let s = s.trim();
    if let Some(name) = s.strip_prefix("label:") {
        if name.is_empty() {
            return Err(Error::Config("label: needs a name (label:NAME)".into()));
        }
        return Ok(Point::Label(name.to_owned()));
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map(Point::Version).map_err(|e| Error::Config(format!("{s}: {e}")));
    }
    parse_time(s, now_ms).map(Point::AtMs)
}

/// Reads a time as milliseconds since the Unix epoch: RFC 3339
/// (`2026-12-01T10:00:00Z`), a local `YYYY-MM-DD HH:MM[:SS]` (or with a
/// `T`), or a duration ago (`15m`, `2h`, `3d`, `1h 30m`).
pub fn parse_time(s: &str, now_ms: i64) -> Result<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(s, format) {
            return match Local.from_local_datetime(&naive) {
                LocalResult::Single(t) => Ok(t.timestamp_millis()),
                // A time the clock passed twice: the earlier one.
                LocalResult::Ambiguous(earlier, _) => Ok(earlier.timestamp_millis()),
                LocalResult::None => Err(Error::Config(format!("{s}: no such local time (a clock change)"))),
            };
        }
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ago));
    }
    Err(Error::Config(format!(
        "{s}: not a time (2026-12-01T10:00:00Z, \"2026-12-01 10:00\" local, or 15m, 2h, 3d ago)"
    )))
}

/// Whether the server said the path has no such version.
fn is_unknown_version(e: &Error) -> bool {
    matches!(e, Error::Server(s) if s.reason == syncstore::Reason::UnknownVersion.as_str())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Writes the content of `path` at `point` to `output`: into a temp file
/// beside it, checked against the version's hash and size, synced, then
/// renamed over `output`. On any failure `output` is as it was.
async fn get(history: &HistoryRemote, path: &str, point: &Point, output: &Path) -> Result<Version> {
    let (version, mut pieces) = history.read(path, point).await?;
    let mut check = ContentCheck::new(&version)?;
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name =
        output.file_name().ok_or_else(|| Error::Config(format!("{}: not a file name", output.display())))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".part")
        .tempfile_in(&parent)?;
    while let Some(piece) = pieces.next().await {
        let piece = piece?;
        check.add(&piece);
        temp.write_all(&piece)?;
    }
    check.finish()?;
    let output = output.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        temp.as_file().sync_all()?;
        temp.persist(&output).map_err(|e| Error::Io(e.error))?;
        // The rename itself survives a crash once the folder is synced.
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(())
    })
    .await??;
    Ok(version)
}

/// Checks content as it passes against the version's hash and size.
struct ContentCheck {
    path: String,
    expected: syncstore::Content,
    hasher: blake3::Hasher,
    size: u64,
}

impl ContentCheck {
    fn new(version: &Version) -> Result<Self> {
        let expected = version.entry.content.ok_or_else(|| {
            Error::Protocol(format!("{}: the server sent a deletion's content", version.entry.path))
        })?;
        Ok(Self { path: version.entry.path.to_string(), expected, hasher: blake3::Hasher::new(), size: 0 })
    }

    fn add(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.size += piece.len() as u64;
    }

    fn finish(self) -> Result<()> {
        let hash = syncstore::ContentHash::from(self.hasher.finalize());
        if hash != self.expected.hash || self.size != self.expected.size {
            return Err(Error::Protocol(format!(
                "{}: the content the server sent ({} bytes) is not the version's ({} bytes, hash {})",
                self.path,
                self.size,
                self.expected.size,
                self.expected.hash.to_hex()
            )));
        }
        Ok(())
    }
}

/// Asks `question` on the terminal; refuses without one.
fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::NotConfirmed(NOT_CONFIRMED.into()));
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "Yes"))
}

/// A time for people: local, RFC 3339, to the second.
fn when(ms: i64) -> String {
    match Local.timestamp_millis_opt(ms) {
        LocalResult::Single(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        _ => format!("{ms} ms"),
    }
}

fn who(v: &Version) -> String {
    format!("{} ({})", v.principal, v.entry.client_id)
}

fn size(v: &Version) -> u64 {
    v.entry.content.map_or(0, |c| c.size)
}

/// What a version was, in words.
fn kind(v: &Version) -> String {
    let or_unknown = |p: &Option<String>| p.clone().unwrap_or_else(|| "?".into());
    match v.kind {
        VersionKind::Write => "write".into(),
        VersionKind::Delete => "delete".into(),
        VersionKind::Move => format!("move from {}", or_unknown(&v.moved_from)),
        VersionKind::MovedAway => format!("moved to {}", or_unknown(&v.moved_to)),
        VersionKind::Restore => match v.restored_from {
            Some(from) => format!("restore of {from}"),
            None => "restore".into(),
        },
        VersionKind::Other(n) => format!("kind {n}"),
    }
}

fn kind_name(v: &Version) -> &'static str {
    match v.kind {
        VersionKind::Write => "write",
        VersionKind::Delete => "delete",
        VersionKind::Move => "move",
        VersionKind::MovedAway => "moved-away",
        VersionKind::Restore => "restore",
        VersionKind::Other(_) => "other",
    }
}

fn show_version(v: &Version) -> String {
    let pinned = if v.pinned { "  pinned" } else { "" };
    format!(
        "{:>8}  {}  {}  {:>12}  {}  {}{pinned}",
        v.entry.version,
        when(v.committed_ms),
        who(v),
        size(v),
        kind(v),
        v.entry.path
    )
}

fn show_label(l: &Label) -> String {
    let automatic = if l.automatic { "  (automatic)" } else { "" };
    let note = if l.note.is_empty() { String::new() } else { format!("  {}", l.note) };
    format!("{}  version {}  {}  by {}{automatic}{note}", l.name, l.version, when(l.at_ms), l.principal)
}

/// The version, if it is one with content.
fn live(v: &Option<Version>) -> Option<&Version> {
    v.as_ref().filter(|v| !v.entry.is_deleted())
}

fn show_action(a: &RewindAction) -> String {
    match (live(&a.now), live(&a.then)) {
        (Some(_), None) => format!("delete   {}", a.path),
        (None, Some(then)) => format!("restore  {}  (version {})", a.path, then.entry.version),
        (Some(_), Some(then)) => format!("revert   {}  (to version {})", a.path, then.entry.version),
        (None, None) => format!("keep     {}", a.path),
    }
}

fn change_of(d: &Difference) -> &'static str {
    match (live(&d.before).is_some(), live(&d.after).is_some()) {
        (false, true) => "added",
        (true, false) => "deleted",
        _ => "changed",
    }
}

fn json_line(out: &mut (dyn Write + Send), row: &impl Serialize) -> Result<()> {
    serde_json::to_writer(&mut *out, row).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// A version as `--json` prints it.
#[derive(Debug, Serialize)]
struct VersionRow {
    path: String,
    version: u64,
    committed_ms: i64,
    when: String,
    principal: String,
    client_id: String,
    kind: &'static str,
    deleted: bool,
    size: u64,
    hash: Option<String>,
    moved_from: Option<String>,
    moved_to: Option<String>,
    restored_from: Option<u64>,
    pinned: bool,
}

impl VersionRow {
    fn of(v: &Version) -> Self {
        Self {
            path: v.entry.path.to_string(),
            version: v.entry.version,
            committed_ms: v.committed_ms,
            when: when(v.committed_ms),
            principal: v.principal.clone(),
            client_id: v.entry.client_id.clone(),
            kind: kind_name(v),
            deleted: v.entry.is_deleted(),
            size: size(v),
            hash: v.entry.content.map(|c| c.hash.to_hex()),
            moved_from: v.moved_from.clone(),
            moved_to: v.moved_to.clone(),
            restored_from: v.restored_from,
            pinned: v.pinned,
        }
    }
}

/// A deleted file as `trash --json` prints it.
#[derive(Debug, Serialize)]
struct TrashRow {
    path: String,
    deleted: VersionRow,
    last: VersionRow,
}

impl TrashRow {
    fn of(deleted: &Version, last: &Version) -> Self {
        Self {
            path: deleted.entry.path.to_string(),
            deleted: VersionRow::of(deleted),
            last: VersionRow::of(last),
        }
    }
}

/// A difference as `diff --json` prints it.
#[derive(Debug, Serialize)]
struct DiffRow {
    path: String,
    change: &'static str,
    before: Option<VersionRow>,
    after: Option<VersionRow>,
}

impl DiffRow {
    fn of(d: &Difference) -> Self {
        Self {
            path: d.path.clone(),
            change: change_of(d),
            before: d.before.as_ref().map(VersionRow::of),
            after: d.after.as_ref().map(VersionRow::of),
        }
    }
}

/// A label as `labels --json` prints it.
#[derive(Debug, Serialize)]
struct LabelRow {
    name: String,
    version: u64,
    at_ms: i64,
    when: String,
    note: String,
    automatic: bool,
    principal: String,
}

impl LabelRow {
    fn of(l: &Label) -> Self {
        Self {
            name: l.name.clone(),
            version: l.version,
            at_ms: l.at_ms,
            when: when(l.at_ms),
            note: l.note.clone(),
            automatic: l.automatic,
            principal: l.principal.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_point_is_a_version_a_label_or_a_time() {
        assert_eq!(parse_point("42", NOW).unwrap(), Point::Version(42));
        assert_eq!(
            parse_point("label:before-rewind-7", NOW).unwrap(),
            Point::Label("before-rewind-7".into())
        );
        assert_eq!(parse_point("2026-12-01T10:00:00Z", NOW).unwrap(), Point::AtMs(1_796_119_200_000));
        assert_eq!(parse_point("2026-12-01T11:00:00+01:00", NOW).unwrap(), Point::AtMs(1_796_119_200_000));
        assert_eq!(parse_point("15m", NOW).unwrap(), Point::AtMs(NOW - 15 * 60_000));
        assert_eq!(parse_point("2h", NOW).unwrap(), Point::AtMs(NOW - 2 * 3_600_000));
        assert_eq!(parse_point("3d", NOW).unwrap(), Point::AtMs(NOW - 3 * 86_400_000));
        assert!(parse_point("label:", NOW).is_err());
        assert!(parse_point("yesterday-ish", NOW).is_err());
        assert!(parse_point("", NOW).is_err());
    }

    #[test]
    fn a_local_time_is_read_in_the_local_zone() {
        let naive = NaiveDateTime::parse_from_str("2026-12-01 10:00:00", "%Y-%m-%d %H:%M:%S").unwrap();
        let expected = Local.from_local_datetime(&naive).earliest().unwrap().timestamp_millis();
        assert_eq!(parse_time("2026-12-01 10:00", NOW).unwrap(), expected);
        assert_eq!(parse_time("2026-12-01 10:00:00", NOW).unwrap(), expected);
        assert_eq!(parse_time("2026-12-01T10:00", NOW).unwrap(), expected);
        assert_eq!(parse_time("2026-12-01 10:00:30", NOW).unwrap(), expected + 30_000);
    }

    #[test]
    fn a_spec_splits_at_its_last_at_sign() {
        assert_eq!(split_spec("a.txt@7").unwrap(), ("a.txt", "7"));
        assert_eq!(split_spec("me@home/a.txt@label:x").unwrap(), ("me@home/a.txt", "label:x"));
        assert!(split_spec("a.txt").is_err());
        assert!(split_spec("a.txt@").is_err());
        assert!(split_spec("@3").is_err());
    }
}
