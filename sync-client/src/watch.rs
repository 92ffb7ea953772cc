//! The folder watcher: turns notify's raw events into "look at this path"
//! signals. A file whose writer closed it or a rename's new name is
//! signalled at once; a file still being written (modified, not closed) is
//! signalled once it has been quiet for [`SETTLE`]. Deletions wait as a
//! batch until no deletion has come for [`SETTLE`] (at most
//! [`MAX_REMOVAL_HOLD`]): a folder being deleted whole, the synced folder
//! itself included (`rm -rf`), is then seen gone as a whole, and the engine
//! refuses to propagate it.
//!
//! On Linux every folder gets a watch of its own (inotify watches one
//! folder at a time; notify's recursive mode gives up on the whole tree at
//! the first folder it cannot watch). A folder that cannot be watched
//! (unreadable, or past the system's watch limit) is skipped and reported
//! once; changes in it are found by the rescans, and the rest of the tree
//! is watched as usual. Folders created or moved in later get their watches
//! as they appear.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    time::Duration,
};

use notify::{
    EventKind, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode},
};
use syncstore::{RelPath, limits::STATE_DIR_NAME};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// Quiet time after the last write before a file that was not closed is
/// looked at.
pub const SETTLE: Duration = Duration::from_millis(200);
/// Longest a deletion waits for a stream of further deletions to end.
pub const MAX_REMOVAL_HOLD: Duration = Duration::from_secs(10);

/// What the watcher asks of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Look at this path (a file, a folder, or something now gone).
    Path(PathBuf),
    /// Events were lost (queue overflow): rescan everything.
    Rescan,
}

/// The pure event-to-signal step, with the settle timers.
#[derive(Debug, Default)]
pub struct Settler {
    pending: HashMap<PathBuf, Instant>,
    /// Deleted paths, signalled together once deletions pause.
    removals: Vec<PathBuf>,
    /// When the removals are due (`SETTLE` after the last one), and when
    /// the first of them came.
    removals_due: Option<(Instant, Instant)>,
}

impl Settler {
    /// Takes one raw event at time `now`; returns what is due at once.
    pub fn on_event(&mut self, event: &notify::Event, now: Instant) -> Vec<Signal> {
        if event.need_rescan() {
            return vec![Signal::Rescan];
        }
        // A rename's old name waits out the settle time, so that the new
        // name goes first: its content is still on the server to be reused.
        let (settle, immediate): (&[PathBuf], &[PathBuf]) = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => (&[], &event.paths),
            EventKind::Access(_) => return Vec::new(),
            // A new folder settles too: one filled right away is then seen
            // with its files, not as an empty folder of its own.
            EventKind::Create(CreateKind::Folder) => (&event.paths, &[]),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => (&event.paths, &[]),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) if event.paths.len() == 2 => {
                (&event.paths[..1], &event.paths[1..])
            }
            EventKind::Remove(_) => {
                for path in &event.paths {
                    self.pending.remove(path);
                    self.removals.push(path.clone());
                }
                let first = self.removals_due.map_or(now, |(_, first)| first);
                self.removals_due = Some(((now + SETTLE).min(first + MAX_REMOVAL_HOLD), first));
                return Vec::new();
            }
            EventKind::Modify(ModifyKind::Name(_)) => (&[], &event.paths),
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
                (&event.paths, &[])
            }
        };
        for path in settle {
            self.pending.insert(path.clone(), now + SETTLE);
        }
        immediate
            .iter()
            .map(|path| {
                self.pending.remove(path);
                Signal::Path(path.clone())
            })
            .collect()
    }

    /// When the next settle timer runs out.
    pub fn next_due(&self) -> Option<Instant> {
        let removals = self.removals_due.map(|(due, _)| due);
        self.pending.values().copied().chain(removals).min()
    }

    /// Pending paths (not deletions) that `keep` selects, whether their
    /// settle time has passed or not.
    pub fn take_pending(&mut self, keep: impl Fn(&Path) -> bool) -> Vec<Signal> {
        let taken: Vec<PathBuf> = self.pending.keys().filter(|p| keep(p)).cloned().collect();
        for p in &taken {
            self.pending.remove(p);
        }
        taken.into_iter().map(Signal::Path).collect()
    }

    /// Paths whose settle time has passed at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<Signal> {
        let due: Vec<PathBuf> =
            self.pending.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
        for p in &due {
            self.pending.remove(p);
        }
        let mut signals: Vec<Signal> = due.into_iter().map(Signal::Path).collect();
        if self.removals_due.is_some_and(|(due, _)| due <= now) {
            self.removals_due = None;
            signals.extend(std::mem::take(&mut self.removals).into_iter().map(Signal::Path));
        }
        signals
    }
}

/// What the watcher sends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Path(RelPath),
    Rescan,
}

/// Whether every folder is watched on its own (see the module doc), rather
/// than the whole tree with one recursive watch (which FSEvents does well).
const WATCH_PER_FOLDER: bool = cfg!(target_os = "linux");

/// The watches of a tree: one per folder, skipping those that cannot be
/// watched.
struct Watches<W> {
    watcher: W,
    root: PathBuf,
    /// Folders found unwatchable (each reported once).
    unwatchable: HashSet<PathBuf>,
}

impl<W: Watcher> Watches<W> {
    /// Watches `dir` (the root, or a folder below it) and every folder under
    /// it, never through a link nor into the client's state folder. Folders
    /// that cannot be watched are skipped (and not descended into); those
    /// not reported before are returned.
    fn add_tree(&mut self, dir: &Path) -> Vec<(PathBuf, notify::Error)> {
        if !WATCH_PER_FOLDER {
            return match self.watcher.watch(dir, RecursiveMode::Recursive) {
                Ok(()) => Vec::new(),
                Err(e) => vec![(dir.to_owned(), e)],
            };
        }
        let mut failed = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(dir) = stack.pop() {
            if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                if self.unwatchable.insert(dir.clone()) {
                    failed.push((dir, e));
                }
                continue;
            }
            self.unwatchable.remove(&dir);
            // Unreadable after all, or gone already: nothing below to watch.
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let state = dir == self.root && entry.file_name() == STATE_DIR_NAME;
                if is_dir && !state {
                    stack.push(entry.path());
                }
            }
        }
        failed
    }

    /// Watches a folder that an event shows newly created or moved in, or
    /// an unwatchable one whose permissions changed.
    fn add_new(&mut self, event: &notify::Event) -> Vec<(PathBuf, notify::Error)> {
        let new_path = match event.kind {
            EventKind::Create(CreateKind::Folder | CreateKind::Any | CreateKind::Other) => event.paths.last(),
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::Any)) => {
                event.paths.last()
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => {
                event.paths.last().filter(|p| self.unwatchable.contains(*p))
            }
            _ => None,
        };
        match new_path {
            Some(p) if WATCH_PER_FOLDER && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) => {
                self.add_tree(&p.clone())
            }
            _ => Vec::new(),
        }
    }
}

/// Says once which folders cannot be watched.
fn report_unwatchable(root: &Path, failed: &[(PathBuf, notify::Error)]) {
    let Some((first, error)) = failed.first() else { return };
    let shown: Vec<String> =
        failed.iter().map(|(p, _)| p.strip_prefix(root).unwrap_or(p).display().to_string()).collect();
    tracing::warn!(
        count = failed.len(),
        folders = %shown.join(", "),
        first = %first.display(),
        error = %error,
        "cannot watch some folders; changes in them are found by the rescans, the rest is watched"
    );
}

/// Watches `root` and every folder below it, and sends changes until
/// `shutdown`. Fails only if `root` itself cannot be watched.
pub async fn run(root: PathBuf, out: mpsc::Sender<Change>, shutdown: CancellationToken) -> Result<()> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel();
    // A link in the folder is synced as a link: the watcher must not
    // follow it into what it points at (maybe outside the folder).
    let config = notify::Config::default().with_follow_symlinks(false);
    let watcher = notify::RecommendedWatcher::new(
        move |res| {
            let _ = raw_tx.send(res);
        },
        config,
    )
    .map_err(std::io::Error::other)?;
    let mut watches = Watches { watcher, root: root.clone(), unwatchable: HashSet::new() };
    let failed = watches.add_tree(&root);
    if let Some((_, e)) = failed.iter().find(|(p, _)| *p == root) {
        return Err(std::io::Error::other(e.to_string()).into());
    }
    report_unwatchable(&root, &failed);
    tracing::debug!(root = %root.display(), "watching");

    let mut settler = Settler::default();
    loop {
        let due = settler.next_due();
        let signals = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            raw = raw_rx.recv() => match raw {
                Some(Ok(event)) => {
                    report_unwatchable(&root, &watches.add_new(&event));
                    settler.on_event(&event, Instant::now())
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watcher error; rescanning");
                    vec![Signal::Rescan]
                }
                None => return Ok(()),
            },
            () = sleep_until(due) => {
                // What exists goes first: a moved file's or folder's new
                // name is uploaded (reusing the content the server holds)
                // before its old name is deleted there. So when something
                // due is gone, whatever still settles and exists comes along.
                let gone = |s: &Signal| matches!(s, Signal::Path(p) if std::fs::symlink_metadata(p).is_err());
                let mut due = settler.take_due(Instant::now());
                if due.iter().any(gone) {
                    due.extend(settler.take_pending(|p| std::fs::symlink_metadata(p).is_ok()));
                }
                due.sort_by_key(gone);
                due
            }
        };
        for signal in signals {
            let change = match signal {
                Signal::Rescan => Change::Rescan,
                Signal::Path(p) => match to_rel(&root, &p) {
                    Some(rel) => Change::Path(rel),
                    None => continue,
                },
            };
            if out.send(change).await.is_err() {
                return Ok(());
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The synced path of an event path; `None` for the root itself, the
/// client's state folder and unusable names.
fn to_rel(root: &Path, path: &Path) -> Option<RelPath> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.components().next().is_some_and(|c| c.as_os_str() == STATE_DIR_NAME) {
        return None;
    }
    RelPath::from_local(root, path).ok()
}

#[cfg(test)]
mod tests {
    use notify::event::{DataChange, RemoveKind};

    use super::*;

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[tokio::test(start_paused = true)]
    async fn closed_files_go_at_once_and_open_ones_settle() {
        let mut s = Settler::default();
        let t0 = Instant::now();
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Content));
        assert!(s.on_event(&ev(write, "/r/a"), t0).is_empty());
        assert_eq!(s.next_due(), Some(t0 + SETTLE));
        // Still being written: the timer restarts.
        let t1 = t0 + SETTLE / 2;
        assert!(s.on_event(&ev(write, "/r/a"), t1).is_empty());
        assert!(s.take_due(t0 + SETTLE).is_empty());
        assert_eq!(s.take_due(t1 + SETTLE), vec![Signal::Path("/r/a".into())]);
        assert_eq!(s.next_due(), None);

        // Written and closed: at once, and the pending timer is dropped.
        assert!(s.on_event(&ev(write, "/r/b"), t1).is_empty());
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert_eq!(s.on_event(&ev(close, "/r/b"), t1), vec![Signal::Path("/r/b".into())]);
        assert_eq!(s.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn renames_removals_and_overflows() {
        let mut s = Settler::default();
        let now = Instant::now();
        let rename = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/r/old".into())
            .add_path("/r/new".into());
        // The new name at once; the old one after the settle time.
        assert_eq!(s.on_event(&rename, now), vec![Signal::Path("/r/new".into())]);
        assert_eq!(s.take_due(now + SETTLE), vec![Signal::Path("/r/old".into())]);
        let from = ev(EventKind::Modify(ModifyKind::Name(RenameMode::From)), "/r/a");
        assert!(s.on_event(&from, now).is_empty());
        let to = ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "/r/b");
        assert_eq!(s.on_event(&to, now), vec![Signal::Path("/r/b".into())]);
        assert_eq!(s.take_due(now + SETTLE), vec![Signal::Path("/r/a".into())]);
        // Deletions wait until they pause, then go together.
        let remove = |p: &str| ev(EventKind::Remove(RemoveKind::File), p);
        assert!(s.on_event(&remove("/r/x"), now).is_empty());
        assert!(s.on_event(&remove("/r/y"), now + SETTLE / 2).is_empty());
        assert!(s.take_due(now + SETTLE).is_empty(), "the second deletion restarted the wait");
        assert_eq!(
            s.take_due(now + SETTLE / 2 + SETTLE),
            vec![Signal::Path("/r/x".into()), Signal::Path("/r/y".into())]
        );
        // A stream of deletions that never pauses is let through in time.
        let mut t = now;
        while t < now + MAX_REMOVAL_HOLD {
            assert!(s.on_event(&remove("/r/z"), t).is_empty());
            t += SETTLE / 2;
        }
        assert_eq!(s.next_due(), Some(now + MAX_REMOVAL_HOLD));
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(s.on_event(&overflow, now), vec![Signal::Rescan]);
        // Reads are not changes.
        assert!(s.on_event(&ev(EventKind::Access(AccessKind::Read), "/r/a"), now).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_paths_can_be_taken_early() {
        let mut s = Settler::default();
        let now = Instant::now();
        let create = EventKind::Create(CreateKind::Folder);
        assert!(s.on_event(&ev(create, "/r/new"), now).is_empty());
        assert!(s.on_event(&ev(create, "/r/other"), now).is_empty());
        assert_eq!(s.take_pending(|p| p == Path::new("/r/new")), vec![Signal::Path("/r/new".into())]);
        assert_eq!(s.take_due(now + SETTLE), vec![Signal::Path("/r/other".into())]);
    }

    #[test]
    fn state_folder_and_root_are_not_synced() {
        let root = Path::new("/r");
        assert_eq!(to_rel(root, Path::new("/r")), None);
        assert_eq!(to_rel(root, Path::new("/r/.syncstore/state.db")), None);
        assert_eq!(to_rel(root, Path::new("/r/a/b")).unwrap().as_str(), "a/b");
    }
}
