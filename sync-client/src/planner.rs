//! The read-only planner: gathers what the folder, the state database and
//! the server say of a path (or of every path), then asks the pure
//! [`plan::decide`] what reconciles it. It never writes the folder, the
//! state or the server, so `status` runs it beside a `watch` of the same
//! folder; the engine runs its plans through the executor (`execute.rs`).

use std::{collections::BTreeSet, path::PathBuf, sync::Arc, time::Duration};

use syncstore::{Entry, RelPath};

use crate::{
    error::{Error, Result},
    folder::Folder,
    fsroot::{self, Dir, Root},
    local::{self, HardLinks, Ignore, LocalView},
    plan::{self, Action, Base, Here, Local, Mode, Selection, Side},
    remote::{Remote, ServerInfo},
    state::State,
};

/// What the planner knows of a path's server side.
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
    /// Files modified within the planner's settle time, left unplanned
    /// (see [`Planner::with_settle`]).
    pub settling: Vec<RelPath>,
    /// The server's head when the manifest was read.
    pub head: u64,
    /// The names of files with several links, as the scan found them.
    pub links: HardLinks,
}

/// Plans paths from fresh facts, changing nothing.
#[derive(Debug, Clone)]
pub struct Planner {
    root: PathBuf,
    /// The folder's handles, only read here.
    folder: Folder,
    /// The bases and the record of sent content, only read here.
    state: State,
    remote: Arc<dyn Remote>,
    ignore: Ignore,
    /// Whether the stored bases belong to the server's current history
    /// (bases of another history are set aside, not used).
    bases_valid: bool,
    /// The folder's mode.
    mode: Mode,
    /// The subtrees kept here (selective sync).
    selection: Selection,
    /// The server refused a write for the token's sake (a read-only token):
    /// the folder runs receive-only whatever its mode.
    read_only_token: bool,
    /// A scan leaves a file modified within this window unplanned, for a
    /// look once it has settled (the watching client): found half-written
    /// (just created, not yet filled), it would be sent half-written and
    /// kept in the history. `None` (a one-shot sync, `status`) takes it as
    /// it is.
    settle: Option<Duration>,
}

impl Planner {
    pub fn new(folder: Folder, state: State, remote: Arc<dyn Remote>) -> Self {
        let root = folder.path().to_path_buf();
        let ignore = Ignore::load(&root);
        Self {
            root,
            folder,
            state,
            remote,
            ignore,
            bases_valid: true,
            mode: Mode::default(),
            selection: Selection::all(),
            read_only_token: false,
            settle: None,
        }
    }

    /// Plans scans that leave files modified within `settle` for later.
    pub fn with_settle(self, settle: Duration) -> Self {
        Self { settle: Some(settle), ..self }
    }

    /// Plans for a folder in `mode`.
    pub fn with_mode(self, mode: Mode) -> Self {
        Self { mode, ..self }
    }

    /// Plans for a folder that keeps only `selection`.
    pub fn with_selection(self, selection: Selection) -> Self {
        Self { selection, ..self }
    }

    /// The subtrees kept here.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The mode plans are made in: the folder's, or receive-only while the
    /// server takes the token for reading only.
    pub fn mode(&self) -> Mode {
        if self.read_only_token { Mode::ReceiveOnly } else { self.mode }
    }

    /// Notes whether the token may only read; returns whether that
    /// changed.
    pub fn set_read_only_token(&mut self, read_only: bool) -> bool {
        std::mem::replace(&mut self.read_only_token, read_only) != read_only
    }

    /// Reads the folder's ignore rules again (`.syncignore` changed).
    pub fn reload_ignore(&mut self) {
        self.ignore = Ignore::load(&self.root);
    }

    /// The folder's ignore rules.
    pub fn ignore(&self) -> &Ignore {
        &self.ignore
    }

    /// Whether this folder's ignore rules exclude `path`.
    pub fn is_ignored(&self, path: &RelPath) -> bool {
        self.ignore.is_ignored(path, false)
    }

    /// Asks the server for its history and, if it is not the one the stored
    /// bases came from, plans without them (changing nothing: the engine's
    /// own check forgets them instead).
    pub async fn check_history(&mut self) -> Result<ServerInfo> {
        let info = self.remote.info().await?;
        let known = self.state.get_meta("history_id")?;
        self.bases_valid = known.is_none() || known.as_deref() == Some(info.history_id.as_str());
        // A write refused for the token's sake, until the server says the
        // token writes (see `Engine::check_history`).
        self.read_only_token = read_only_token(&self.state)? && !info.token_writes;
        Ok(info)
    }

    /// The plan for every path known here, at the last sync or on the
    /// server, as of `info` (the server's head is taken before the
    /// manifest is read, so later changes come by subscription).
    pub async fn plan_all(&self, info: &ServerInfo) -> Result<PlanAll> {
        let mut remote = self.remote.manifest().await?;
        let (root, ignore) = (self.root.clone(), self.ignore.clone());
        let (local, links) =
            tokio::task::spawn_blocking(move || local::scan_linked(&root, &root, &ignore)).await??;
        let mut bases = if self.bases_valid { self.all_bases().await? } else { Default::default() };
        let paths: BTreeSet<RelPath> =
            local.keys().chain(bases.keys()).chain(remote.keys()).cloned().collect();
        // What the folder says of every path, in one pass off the async
        // workers (a hand-off per path costs more than its `stat`), with the
        // bases read once.
        let (root, ignore, settle) = (self.folder.root().clone(), self.ignore.clone(), self.settle);
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
                    let fresh = settle.is_some_and(|s| {
                        matches!(&facts, Ok((_, LocalView::File(l))) if seen.is_none() && local::is_fresh(l.mtime_ns, s))
                    });
                    (p, facts, fresh)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let mut all = PlanAll {
            plans: Vec::with_capacity(gathered.len()),
            failed: Vec::new(),
            settling: Vec::new(),
            head: info.head_seq,
            links,
        };
        for (path, facts, fresh) in gathered {
            if fresh {
                tracing::debug!(%path, "modified just now; will look again once it settles");
                all.settling.push(path);
                continue;
            }
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

    /// Plans one path. `None` when the path is not for syncing (ignored, a
    /// folder that only holds files, a socket) or not settled yet.
    pub async fn plan(&self, path: &RelPath, remote: RemoteView) -> Result<Option<Planned>> {
        if self.ignore.is_ignored(path, false) {
            return Ok(None);
        }
        let base = if self.bases_valid { self.state.base(path)? } else { None };
        let (root, p) = (self.folder.root().clone(), path.clone());
        let (base, view) = tokio::task::spawn_blocking(move || gather(&root, &mut None, &p, base)).await??;
        self.plan_from(path, remote, base, view).await
    }

    /// Plans one path from what the folder and the state say of it: the
    /// server's entry is fetched if needed, then [`plan::decide`] decides.
    async fn plan_from(
        &self,
        path: &RelPath,
        remote: RemoteView,
        base: Option<Base>,
        view: LocalView,
    ) -> Result<Option<Planned>> {
        let here = match view {
            LocalView::File(l) => Here::File(l),
            LocalView::Missing => Here::Missing,
            LocalView::Dir(local) => Here::Folder { local, empty: self.folder.root().is_empty_dir(path) },
            LocalView::Unsettled => {
                tracing::debug!(%path, "still being written; will look again");
                return Err(Error::ChangedWhileReading);
            }
            LocalView::Other => return Ok(None),
        };
        let side = plan::side(here, base.as_ref());
        if !self.selection.selects(path) {
            // Nothing of the server's side is needed: it is neither fetched
            // nor changed.
            let local = match side {
                Side::Entry(local) => local,
                Side::Holder(_) => None,
            };
            let remote = match remote {
                RemoteView::Known(r) => r,
                RemoteView::Fetch | RemoteView::IfLocalChanged => None,
            };
            let live = remote.as_ref().is_some_and(|r| !r.is_deleted());
            return Ok(plan::outside_selection(local.as_ref(), base.as_ref(), live).map(|action| Planned {
                path: path.clone(),
                action,
                local,
                base,
                remote,
            }));
        }
        let remote = match remote {
            RemoteView::Known(r) => r,
            RemoteView::Fetch => self.remote_stat(path).await?,
            RemoteView::IfLocalChanged if plan::changed_here(side, base.as_ref()) => {
                self.remote_stat(path).await?
            }
            RemoteView::IfLocalChanged => {
                // In sync as far as this side knows.
                return Ok(match side {
                    Side::Entry(local) => Some(Planned {
                        path: path.clone(),
                        action: Action::Nothing,
                        local,
                        base,
                        remote: None,
                    }),
                    Side::Holder(_) => None,
                });
            }
        };
        let base = match side {
            Side::Entry(_) => self.own_version(path, base, remote.as_ref())?,
            Side::Holder(_) => base,
        };
        Ok(plan::decide(side, base.as_ref(), remote.as_ref()).map(|d| Planned {
            path: path.clone(),
            action: plan::with_mode(self.mode(), d.action),
            local: d.local,
            base,
            remote,
        }))
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
        Ok(Some(Base::of_content(entry.version, &c)))
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

    /// Every base, read on a blocking thread (it is the whole table).
    async fn all_bases(&self) -> Result<std::collections::HashMap<RelPath, Base>> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.all_bases()).await?
    }
}

/// The state key set once the server refused a write because the token
/// may only read.
pub const READ_ONLY_TOKEN_KEY: &str = "read_only_token";

/// Whether a write was refused because the token may only read (and the
/// server has not said since that it writes).
pub fn read_only_token(state: &State) -> Result<bool> {
    Ok(state.get_meta(READ_ONLY_TOKEN_KEY)?.is_some_and(|v| v == "1"))
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
