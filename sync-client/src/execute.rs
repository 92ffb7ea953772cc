//! The executor: carries out one planned action on the folder, the state
//! database and the server (uploads, downloads, guarded local deletions,
//! remote deletions, conflict copies, making room for a file where a folder
//! is). What an action leaves to do about other paths (a conflict copy to
//! upload, a folder moved aside, a clashing folder to plan first) it puts
//! in a [`FollowUps`] queue for the engine, instead of syncing them itself.
//!
//! Invariants:
//! - A base is written only after the action it records is durable on both
//!   sides (after the server acknowledged, or after the rename into place).
//! - A local file is replaced or deleted only if it still has the size and
//!   mtime the plan was made from; otherwise the error says so and the
//!   engine plans the path again.

use std::{collections::VecDeque, sync::Arc};

use syncstore::{ContentHash, Entry, Lock, RelPath};

use crate::{
    error::{Error, Result},
    folder::Folder,
    fsmeta::{Kind, Meta},
    fsroot::Root,
    local,
    locks::Locks,
    metrics::ClientMetrics,
    plan::{Action, Base},
    planner::Planned,
    remote::Remote,
    state::State,
    transfer::{self, Have, UploadBase},
};

/// Files at least this big are first offered to the server by hash alone,
/// in case it already holds their content (a move, a copy, another
/// client's identical file): one round trip instead of the whole file.
const REUSE_PROBE_MIN: u64 = 256 * 1024;

/// At most this many paths with a new file's content are looked at for
/// the one it moved from (many copies of one content are not searched
/// through at every upload), and at most this many deletions sent lately
/// are remembered for it.
const MOVE_CANDIDATES: usize = 16;

/// How long a deletion this client sent may be taken for the old name of
/// a file uploaded after it with the same content: the two events of a
/// rename reach the engine within the watcher's settle time, far less.
const MOVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// A path an action left to look at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FollowUp {
    /// A path new here (a conflict copy, a folder moved aside), synced as a
    /// local event is: it and everything below it.
    Local(RelPath),
    /// A path to plan again, with the server's entry fetched.
    Fetch(RelPath),
}

impl FollowUp {
    pub fn path(&self) -> &RelPath {
        match self {
            FollowUp::Local(p) | FollowUp::Fetch(p) => p,
        }
    }
}

/// The paths actions left to look at, in the order they were left.
#[derive(Debug, Default)]
pub struct FollowUps(VecDeque<FollowUp>);

impl FollowUps {
    pub fn push(&mut self, f: FollowUp) {
        self.0.push_back(f);
    }

    pub fn pop(&mut self) -> Option<FollowUp> {
        self.0.pop_front()
    }
}

/// What resolving a file/folder clash left to do about the refused path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    /// The server has a file at this folder above the path: that name is
    /// to be planned like a file first, and the path after it.
    FileAbove(RelPath),
    /// The local file was renamed aside (its copy is a follow-up): the
    /// path can be planned again at once.
    MovedAside,
}

/// Applies planned actions to the folder, the state and the server. Cheap
/// to clone: a clone shares all but the copy of the locks (a large-lane
/// transfer runs on one).
#[derive(Debug, Clone)]
pub struct Executor {
    /// The folder's handles: every write to it goes through them.
    folder: Folder,
    /// The bases, cursor and history (the database only).
    state: State,
    remote: Arc<dyn Remote>,
    /// The name conflict copies carry.
    host: String,
    /// The server's live locks.
    locks: Locks,
    metrics: ClientMetrics,
    /// Files whose deletion this client sent lately, newest last: a file
    /// uploaded just after with the same content moved from one of them
    /// (a rename whose old name was seen first).
    deleted: Arc<std::sync::Mutex<VecDeque<Deleted>>>,
}

/// A file whose deletion this client sent.
#[derive(Debug)]
struct Deleted {
    path: RelPath,
    hash: ContentHash,
    at: std::time::Instant,
}

impl Executor {
    pub fn new(folder: Folder, state: State, remote: Arc<dyn Remote>, host: String) -> Self {
        let locks = Locks::new(remote.client_id().to_owned(), state.clone(), folder.root().clone());
        let deleted = Arc::default();
        Self { folder, state, remote, host, locks, metrics: ClientMetrics::new(), deleted }
    }

    /// Counts into `metrics` (shared with a metrics endpoint).
    pub fn with_metrics(self, metrics: ClientMetrics) -> Self {
        Self { metrics, ..self }
    }

    pub fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    pub fn folder(&self) -> &Folder {
        &self.folder
    }

    /// The server's live locks as this client knows them.
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    pub fn locks_mut(&mut self) -> &mut Locks {
        &mut self.locks
    }

    /// Whether a plan is a plain upload or download that [`Executor::transfer`]
    /// can run beside others: no lock in the way, no folder to move aside.
    pub fn is_plain_transfer(&self, p: &Planned) -> bool {
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

    /// Runs a plain upload or download (see [`Executor::is_plain_transfer`]);
    /// only shared state is touched, so several can run at once.
    pub async fn transfer(&self, p: &Planned) -> Result<()> {
        let path = &p.path;
        match p.action {
            Action::Upload { base_version } => self.upload(p, base_version).await?,
            Action::Download => {
                let remote = p.remote.as_ref().expect("Download is planned for a server file");
                let got = self.download(remote, p.local.map(|l| l.meta()), held(p)).await?;
                tracing::info!(
                    %path,
                    version = remote.version,
                    received = got.wire_bytes,
                    reused = got.reused_bytes,
                    why = p.action.describe(),
                    "downloaded"
                );
            }
            _ => unreachable!("only plain transfers run here"),
        }
        Ok(())
    }

    /// Uploads a planned local file based on `base_version`, carrying this
    /// client's lock token, and records the new base.
    async fn upload(&self, p: &Planned, base_version: u64) -> Result<()> {
        let (path, l) = (&p.path, p.local.expect("Upload is planned for a local file"));
        // A large file synced before goes as runs against what it was, if
        // this client knows that content's chunk list.
        let chunks = match p.base {
            Some(b) if transfer::is_chunked(&l) => self.state.chunk_list(&b.hash)?.map(|list| (b.hash, list)),
            _ => None,
        };
        let base = UploadBase {
            version: base_version,
            lock_token: self.locks.token(path),
            reuse: l.size >= REUSE_PROBE_MIN || self.state.knows_hash(&l.hash)?,
            chunks,
            moved_from: self.moved_from(path, &l)?,
        };
        self.state.note_sent(path, &l.hash)?;
        let up = transfer::upload(&*self.remote, self.folder.root(), path, l, base).await?;
        let replaced = p.base.as_ref().map(|b| &b.hash);
        let new_base = local::synced_base(up.entry.version, l);
        self.state.record_upload(path, &new_base, up.chunks.as_deref(), replaced)?;
        self.metrics.uploads.inc();
        if up.sent {
            self.metrics.upload_bytes.inc_by(l.size);
        }
        self.metrics.content_sent_bytes.inc_by(up.wire_bytes);
        tracing::info!(
            %path,
            version = up.entry.version,
            size = l.size,
            sent = up.wire_bytes,
            as_runs = up.as_runs,
            why = p.action.describe(),
            "uploaded"
        );
        Ok(())
    }

    /// The path `path`'s file was moved from, as far as this folder can
    /// tell: another path whose base (its last synced state) had the same
    /// content and that is gone from the folder. Deletions are sent after
    /// new files, so that path's base is still here when its new name is
    /// uploaded. Only a hint for the server's history: the server checks
    /// the content before it records a move.
    /// A path whose deletion this client sent within [`MOVE_WINDOW`] with
    /// the same content counts too (the old name's event came first).
    fn moved_from(&self, path: &RelPath, l: &crate::plan::Local) -> Result<Option<RelPath>> {
        if l.folder || l.symlink {
            return Ok(None);
        }
        let gone = |p: &RelPath| *p != *path && matches!(self.folder.root().stat(p), Ok(Kind::Missing));
        for other in self.state.paths_holding(&l.hash, MOVE_CANDIDATES)? {
            if gone(&other) {
                return Ok(Some(other));
            }
        }
        let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        let recent = deleted.iter().rev().take_while(|d| d.at.elapsed() < MOVE_WINDOW);
        Ok(recent.filter(|d| d.hash == l.hash).map(|d| d.path.clone()).find(gone))
    }

    /// Remembers that this client sent the deletion of `path`, which held
    /// `hash` (the last [`MOVE_CANDIDATES`] at most).
    fn note_deleted(&self, path: &RelPath, hash: ContentHash) {
        let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        if deleted.len() >= MOVE_CANDIDATES {
            deleted.pop_front();
        }
        deleted.push_back(Deleted { path: path.clone(), hash, at: std::time::Instant::now() });
    }

    /// A file whose content matches its base but whose size, mtime or stamp
    /// moved (touched, or recorded while racy) gets its base refreshed, so
    /// that it is not hashed at every look. The one write a plan of
    /// `Nothing` leads to.
    pub fn refresh_base(&self, p: &Planned) -> Result<()> {
        if let (Some(l), Some(b)) = (p.local, p.base)
            && l.hash == b.hash
            && l.executable == b.executable
            && !l.meta().matches(&b)
        {
            let fresh = local::synced_base(b.version, l);
            if fresh != b {
                self.state.set_base(&p.path, &fresh)?;
            }
        }
        Ok(())
    }

    /// Carries out `p`. Paths it leaves to look at go to `follow`, even
    /// when a later step fails.
    pub async fn execute(&mut self, p: &Planned, follow: &mut FollowUps) -> Result<()> {
        let path = &p.path;
        let why = p.action.describe();
        match &p.action {
            Action::Nothing => self.refresh_base(p)?,
            // Held back by the folder's mode: nothing to do, the base stays.
            Action::KeepLocal | Action::KeepRemote | Action::NotSelected => {}
            Action::Record { version } => {
                let l = p.local.expect("Record is planned for a local file");
                self.state.set_base(path, &local::synced_base(*version, l))?;
            }
            Action::Forget => self.state.remove_base(path)?,
            Action::Upload { .. } | Action::DeleteRemote { .. } if self.locks.by_other(path).is_some() => {
                self.keep_out_of_locked(p, follow).await?;
            }
            Action::Upload { base_version } => self.upload(p, *base_version).await?,
            Action::Download => {
                let remote = p.remote.as_ref().expect("Download is planned for a server file");
                let remote_folder = remote.content.is_some_and(|c| c.folder);
                let mut expected = p.local.map(|l| l.meta());
                let mut have = held(p);
                match p.local {
                    // Nothing here, or a folder where the server has a file.
                    None => self.make_room(path, follow).await?,
                    Some(l) if l.folder && !remote_folder => {
                        self.make_room(path, follow).await?;
                        expected = None;
                    }
                    // A file (unchanged here) that the server replaced by a
                    // folder: it goes, as a deletion would.
                    Some(l) if !l.folder && remote_folder => {
                        let (rel, folder, state) = (path.clone(), self.folder.clone(), self.state.clone());
                        tokio::task::spawn_blocking(move || delete_local(&folder, &state, &rel, l.meta()))
                            .await??;
                        expected = None;
                        have = None;
                    }
                    Some(_) => {}
                }
                let got = self.download(remote, expected, have).await?;
                self.locks.protect(path);
                tracing::info!(
                    %path,
                    version = remote.version,
                    received = got.wire_bytes,
                    reused = got.reused_bytes,
                    why,
                    "downloaded"
                );
            }
            Action::DeleteLocal | Action::Deselect if p.local.is_some_and(|l| l.folder) => {
                // Only an empty folder goes; one that holds something new
                // stays, no longer an entry of its own.
                let root = self.folder.root();
                match root.parent(path).and_then(|d| d.rmdir(path.file_name())) {
                    Ok(()) => {
                        tracing::info!(%path, why, "deleted a folder locally");
                        // As after a file's deletion: the folders it leaves
                        // empty go too, unless they are entries of their
                        // own (otherwise the last folder of a deleted tree
                        // would stay, and be synced back as a new one).
                        let is_entry =
                            |dir: &RelPath| self.state.base(dir).ok().flatten().is_some_and(|b| b.folder);
                        root.prune_empty_dirs(path.parent(), is_entry);
                    }
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
                tokio::task::spawn_blocking(move || delete_local(&folder, &state, &rel, l.meta())).await??;
                self.state.remove_base(path)?;
                self.metrics.local_deletes.inc();
                tracing::info!(%path, why, "deleted locally");
            }
            Action::Deselect => {
                // Only the unchanged copy the plan saw goes (a change made
                // since is put back and planned again, then kept).
                let l = p.local.expect("Deselect is planned for a local file");
                let (rel, folder, state) = (path.clone(), self.folder.clone(), self.state.clone());
                tokio::task::spawn_blocking(move || delete_local(&folder, &state, &rel, l.meta())).await??;
                self.state.remove_base(path)?;
                tracing::info!(%path, why, "removed the local copy of a path no longer selected");
            }
            Action::DeleteRemote { base_version } => {
                // A file is gone: is the whole folder?
                if !self.folder.present() {
                    return Err(Error::FolderGone(self.folder.path().display().to_string()));
                }
                match self.remote.delete(path, *base_version, self.locks.token(path)).await {
                    Ok(tomb) => {
                        self.metrics.remote_deletes.inc();
                        tracing::info!(%path, version = tomb.version, why, "deleted on the server");
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
                if let Some(base) = &p.base {
                    self.note_deleted(path, base.hash);
                }
                self.state.remove_base(path)?;
            }
            Action::Conflict => {
                let l = p.local.expect("Conflict is planned for a local file");
                let remote = p.remote.as_ref().expect("Conflict is planned for a server file");
                let copy = self.conflict_copy(path, l.meta()).await?;
                self.metrics.conflicts.inc();
                tracing::warn!(%path, copy = %copy, "conflict: both sides changed; keeping the local version as a copy");
                // The copy is new (a file, or a folder and all in it).
                follow.push(FollowUp::Local(copy));
                self.state.remove_base(path)?;
                self.download(remote, None, None).await?;
                self.locks.protect(path);
            }
        }
        Ok(())
    }

    /// A local change (edit, new file, deletion) to a path someone else has
    /// locked: the server would refuse it. An edit is kept as a conflict
    /// copy (uploaded under that name) and the server's version is put
    /// back, read-only; a deletion is undone the same way.
    async fn keep_out_of_locked(&mut self, p: &Planned, follow: &mut FollowUps) -> Result<()> {
        let path = &p.path;
        let holder = self.locks.by_other(path).map(Lock::describe).unwrap_or_default();
        match p.local {
            Some(l) => {
                let copy = self.conflict_copy(path, l.meta()).await?;
                let writable =
                    self.folder.root().parent(&copy).and_then(|d| d.set_writable(copy.file_name(), true));
                if let Err(e) = writable {
                    tracing::warn!(%copy, error = %e, "cannot make a conflict copy writable");
                }
                self.metrics.conflicts.inc();
                tracing::warn!(%path, %copy, locked_by = %holder, "the file is locked by someone else: keeping the local edit as a copy");
                follow.push(FollowUp::Fetch(copy));
            }
            None => {
                tracing::warn!(%path, locked_by = %holder, "the file is locked by someone else: restoring it");
            }
        }
        match p.remote.as_ref().filter(|r| !r.is_deleted()) {
            Some(remote) => {
                self.download(remote, None, None).await?;
                self.locks.protect(path);
            }
            None => self.state.remove_base(path)?,
        }
        Ok(())
    }

    /// The server refused `path` as a file because it clashes with a folder.
    /// Either the server has a file where this folder has a folder above
    /// `path`: that folder's name is then to be planned like a file (which
    /// deletes the server's file if this side deleted it knowingly, or else
    /// moves the local folder aside for it); or the server has a folder
    /// where this folder has the file `path`: the file is renamed to a
    /// conflict name, to be synced under it. Nothing is lost either way.
    pub async fn resolve_clash(&mut self, path: &RelPath, follow: &mut FollowUps) -> Result<Clash> {
        let p = path.as_str();
        for (i, _) in p.match_indices('/') {
            let folder = RelPath::new(&p[..i]).expect("a prefix of a valid path is valid");
            if self.remote.stat(&folder).await?.is_some_and(|e| !e.is_deleted()) {
                return Ok(Clash::FileAbove(folder));
            }
        }
        let copy = self.move_aside(path).await?;
        follow.push(FollowUp::Fetch(copy));
        self.state.remove_base(path)?;
        Ok(Clash::MovedAside)
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
    async fn make_room(&mut self, path: &RelPath, follow: &mut FollowUps) -> Result<()> {
        if !matches!(self.folder.root().stat(path)?, Kind::Dir) {
            return Ok(());
        }
        for below in bases_under(&self.state, path) {
            self.state.remove_base(&below)?;
        }
        if self.folder.root().parent(path).and_then(|d| d.rmdir(path.file_name())).is_ok() {
            tracing::info!(%path, "removed an empty folder to make room for the server's file");
            return Ok(());
        }
        let copy = self.move_aside(path).await?;
        follow.push(FollowUp::Local(copy));
        Ok(())
    }

    /// The local content a large download of `remote` may take chunks
    /// from: another synced file of the very same content if there is one
    /// (nothing then travels but the runs: Syncthing's copier, for a copy
    /// or a move made elsewhere), else the path's own previous version
    /// `have`; either only if this client knows its chunk list.
    fn reusable(&self, remote: &Entry, have: Option<ContentHash>) -> Result<Option<Have>> {
        let content = remote.content.expect("a downloaded entry is live");
        if let Some(chunks) = self.state.chunk_list(&content.hash)? {
            // A few candidates: one whose file changed since fails its
            // checks and the download starts over plain.
            let same = self.state.paths_holding(&content.hash, 4)?;
            if let Some(path) = same.into_iter().find(|p| *p != remote.path) {
                return Ok(Some(Have { hash: content.hash, chunks, path }));
            }
        }
        let Some(hash) = have else { return Ok(None) };
        Ok(self.state.chunk_list(&hash)?.map(|chunks| Have { hash, chunks, path: remote.path.clone() }))
    }

    /// Downloads the server's `remote` (a folder entry: makes the folder)
    /// over the local file, which must still be `expected`, and records the
    /// base (and the content's chunk list). `have`: the content of the
    /// local file, whose chunks a large download may reuse if this client
    /// knows its chunk list.
    async fn download(
        &self,
        remote: &Entry,
        expected: Option<Meta>,
        have: Option<ContentHash>,
    ) -> Result<Fetched> {
        let content = remote.content.expect("a downloaded entry is live");
        let (meta, fetched, chunks) = if content.folder {
            (make_folder(self.folder.root(), &remote.path)?, Fetched::default(), None)
        } else {
            let reuse =
                if content.size > syncstore::chunks::WHOLE_MAX { self.reusable(remote, have)? } else { None };
            let (root, tmp) = (self.folder.root(), self.folder.tmp());
            let got = transfer::download(&*self.remote, root, tmp, remote, expected, reuse).await?;
            self.metrics.content_received_bytes.inc_by(got.wire_bytes);
            self.metrics.chunks_reused.inc_by(got.reused_chunks);
            self.metrics.reused_bytes.inc_by(got.reused_bytes);
            (got.meta, Fetched { wire_bytes: got.wire_bytes, reused_bytes: got.reused_bytes }, got.chunks)
        };
        self.metrics.downloads.inc();
        self.metrics.download_bytes.inc_by(meta.size);
        let base: Base = local::synced_base(remote.version, meta.with_hash(content.hash));
        self.state.set_base(&remote.path, &base)?;
        if let Some(list) = &chunks {
            // The local file's list (usually the version replaced) goes if
            // no other path holds that content.
            self.state.set_chunk_list(&content.hash, list, have.as_ref())?;
        }
        Ok(fetched)
    }

    /// Renames the local file at `path` to a free conflict-copy name.
    async fn conflict_copy(&self, path: &RelPath, expected: Meta) -> Result<RelPath> {
        let (root, host, path) = (self.folder.root().clone(), self.host.clone(), path.clone());
        tokio::task::spawn_blocking(move || rename_aside(&root, &host, &path, Some(expected))).await?
    }
}

/// What a download moved, for its log line.
#[derive(Debug, Default, Clone, Copy)]
struct Fetched {
    /// Content bytes that came over the wire.
    wire_bytes: u64,
    /// Bytes copied from the local file instead.
    reused_bytes: u64,
}

/// The content of the regular file a download replaces, if any.
fn held(p: &Planned) -> Option<ContentHash> {
    p.local.filter(|l| !l.folder && !l.symlink).map(|l| l.hash)
}

/// The synced paths below the folder `dir` (none if the state cannot be
/// read, which is logged).
pub fn bases_under(state: &State, dir: &RelPath) -> Vec<RelPath> {
    match state.paths_below(dir) {
        Ok(paths) => paths,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the state database");
            Vec::new()
        }
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
}
