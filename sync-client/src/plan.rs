//! The sync planner's rules: a pure function from what one path looks like
//! here (the local file or folder), at the last sync (the base) and on the
//! server (the remote entry) to the one action that reconciles them. No I/O
//! happens here, so every rule is tested on plain values; the planner
//! (`planner.rs`) gathers the facts and the executor (`execute.rs`) acts.
//!
//! The rules (three-way, like Unison's):
//! - changed only here → upload; only on the server → download;
//! - deleted here, unchanged there → delete on the server; deleted there,
//!   unchanged here → delete here;
//! - changed on both sides to the same content → just record it;
//! - changed on both sides differently → keep both (conflict copy);
//! - deleted on one side, edited on the other → the edit wins;
//! - no base (first meeting): same content is adopted, different content is
//!   a conflict, and nothing is deleted.
//!
//! Folders ([`side`], [`decide`]): a folder is an entry of its own when it
//! is empty or was synced as one; otherwise it is only where files live. Such
//! a folder meets a folder on the server as the folder it is; where the base
//! or the server has a file, it counts as that file missing here (a
//! download then makes room for the server's file); with neither, there is
//! nothing to sync.
//!
//! Nothing is deleted or overwritten unless the base shows that the side
//! losing it had already been seen.
//!
//! Folder modes ([`Mode`], [`with_mode`]) then filter the action: a
//! receive-only folder keeps its own changes ([`Action::KeepLocal`]) and
//! meets a server change to a locally changed path as a conflict (the
//! server's version wins, the local one is kept as a copy); a send-only
//! folder leaves the server's changes unapplied ([`Action::KeepRemote`]).
//! [`revert`] and [`override_action`] turn those kept items into the
//! actions that make one side match the other.
//!
//! Selective sync ([`Selection`], [`outside_selection`]) comes before all
//! of that: a path outside the folder's selection is not synced at all.
//! Its absence here is no deletion and the server's copy is never
//! fetched; a local copy unchanged since the last sync is removed here
//! only ([`Action::Deselect`]); anything else there (changed since the
//! last sync, or made here) stays as it is and is never sent
//! ([`Action::NotSelected`]).

use syncstore::{Content, ContentHash, Entry, RelPath};

/// A local file as found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    pub hash: ContentHash,
    pub size: u64,
    pub mtime_ns: i64,
    pub executable: bool,
    /// A symbolic link; `hash` and `size` are its target's.
    pub symlink: bool,
    /// A folder (the hash of nothing, size 0).
    pub folder: bool,
    /// Inode and ctime folded together (see `local::Meta::stamp`).
    pub stamp: u64,
}

impl Local {
    /// The content this file is, as an entry describes it.
    pub fn content(&self) -> Content {
        Content {
            hash: self.hash,
            size: self.size,
            mtime_ns: self.mtime_ns,
            executable: self.executable,
            symlink: self.symlink,
            folder: self.folder,
        }
    }

    /// Whether the server's content is this file's: same bytes, same
    /// executable bit, same kind (file or link).
    pub fn same_as(&self, c: &Content) -> bool {
        self.hash == c.hash
            && self.executable == c.executable
            && self.symlink == c.symlink
            && self.folder == c.folder
    }
}

/// What both sides agreed on at the last sync of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// The server's version the local file matched.
    pub version: u64,
    pub hash: ContentHash,
    /// Size, mtime and stamp of the local file when it was synced: if they
    /// are unchanged the file is, without hashing it again.
    pub size: u64,
    pub mtime_ns: i64,
    pub executable: bool,
    pub symlink: bool,
    pub folder: bool,
    pub stamp: u64,
}

impl Base {
    /// A base standing for the server's version `version` of `content`, for
    /// a file whose size, mtime and stamp here are unknown: its stamp of 0
    /// matches no file, so the local file is compared with it by hash.
    pub fn of_content(version: u64, c: &Content) -> Self {
        Base {
            version,
            hash: c.hash,
            size: c.size,
            mtime_ns: c.mtime_ns,
            executable: c.executable,
            symlink: c.symlink,
            folder: c.folder,
            stamp: 0,
        }
    }
}

/// What to do with one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Already in sync.
    Nothing,
    /// Both sides hold the same content: record `version` as the base.
    Record { version: u64 },
    /// Neither side has a file any more: drop the base.
    Forget,
    /// Send the local file, based on `base_version`.
    Upload { base_version: u64 },
    /// Fetch the server's file.
    Download,
    /// The server deleted a file this side had not changed.
    DeleteLocal,
    /// This side deleted a file the server had not changed.
    DeleteRemote { base_version: u64 },
    /// Both changed differently: move the local file to a conflict copy
    /// (which is then uploaded as a new file) and fetch the server's.
    Conflict,
    /// Receive-only: this side's change (an edit, an addition or a
    /// deletion) stays here and is not sent.
    KeepLocal,
    /// Send-only: the server's change (or the server's side of a conflict)
    /// is not applied here.
    KeepRemote,
    /// Outside the selection, a local copy unchanged since the last sync:
    /// removed here only (the server keeps it), and its base dropped.
    Deselect,
    /// Outside the selection: neither fetched nor sent; what is here
    /// (changed since the last sync, or made here) stays as it is.
    NotSelected,
}

impl Action {
    /// A short word for logs and `status`.
    pub fn describe(&self) -> &'static str {
        match self {
            Action::Nothing => "in sync",
            Action::Record { .. } => "same content on both sides",
            Action::Forget => "deleted on both sides",
            Action::Upload { .. } => "changed here",
            Action::Download => "changed on the server",
            Action::DeleteLocal => "deleted on the server",
            Action::DeleteRemote { .. } => "deleted here",
            Action::Conflict => "conflict",
            Action::KeepLocal => "changed here, kept here (receive-only)",
            Action::KeepRemote => "changed on the server, not applied (send-only)",
            Action::Deselect => "not selected: local copy removed (kept on the server)",
            Action::NotSelected => "not selected",
        }
    }

    /// Whether the action is a change a folder mode holds back: nothing
    /// is done about it, and it is no work left to do.
    pub fn is_kept(&self) -> bool {
        matches!(self, Action::KeepLocal | Action::KeepRemote | Action::NotSelected)
    }
}

/// Which way a folder syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Changes go both ways.
    #[default]
    SendReceive,
    /// Local changes go to the server; the server's are not applied here.
    SendOnly,
    /// The server's changes are applied here; local ones are never sent.
    ReceiveOnly,
}

impl Mode {
    /// The mode's name, as the `--mode` option and the state spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SendReceive => "send-receive",
            Mode::SendOnly => "send-only",
            Mode::ReceiveOnly => "receive-only",
        }
    }

    /// The mode named `name` (as [`Mode::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::SendReceive, Mode::SendOnly, Mode::ReceiveOnly].into_iter().find(|m| m.as_str() == name)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subtrees a folder keeps (selective sync): a path is selected when
/// it is one of them, lies below one, or is a folder above one (the
/// folders that lead to a selected subtree). No subtree: every path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(Vec<RelPath>);

impl Selection {
    /// Every path.
    pub fn all() -> Self {
        Self(Vec::new())
    }

    /// The subtrees `paths` (none: every path), in order, without
    /// repeats.
    pub fn of(mut paths: Vec<RelPath>) -> Self {
        paths.sort();
        paths.dedup();
        Self(paths)
    }

    /// Whether every path is selected.
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }

    /// The selected subtrees.
    pub fn paths(&self) -> &[RelPath] {
        &self.0
    }

    /// Whether `path` is synced (see the type's doc).
    pub fn selects(&self, path: &RelPath) -> bool {
        self.0.is_empty() || self.0.iter().any(|s| within(path, s) || within(s, path))
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("everything");
        }
        let names: Vec<&str> = self.0.iter().map(RelPath::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

/// Whether `path` is `top` or lies below it.
fn within(path: &RelPath, top: &RelPath) -> bool {
    path.as_str().strip_prefix(top.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// What is done about a path outside the selection, from what is here and
/// its base (never the server's side: nothing of it is fetched, nothing is
/// sent). `remote_live`: the server has a file there (shown as not
/// selected). `None`: nothing to do or show.
pub fn outside_selection(local: Option<&Local>, base: Option<&Base>, remote_live: bool) -> Option<Action> {
    match (local, base) {
        // Gone here, outside the selection: no deletion, the base goes (so
        // that selecting the path again fetches it).
        (None, Some(_)) => Some(Action::Forget),
        (None, None) if remote_live => Some(Action::NotSelected),
        (None, None) => None,
        (Some(l), Some(b)) if !local_changed(Some(l), b) => Some(Action::Deselect),
        // Changed since the last sync, or made here: kept, never sent.
        (Some(_), _) => Some(Action::NotSelected),
    }
}

/// The action a folder in `mode` takes where the three-way rules chose
/// `action`. Receive-only never sends: an upload or a deletion on the
/// server becomes [`Action::KeepLocal`]; a conflict still keeps the local
/// version as a copy (which stays here, kept in turn) and fetches the
/// server's. Send-only never changes the folder for the server's sake: a
/// download, a deletion here or a conflict becomes [`Action::KeepRemote`].
pub fn with_mode(mode: Mode, action: Action) -> Action {
    match (mode, action) {
        (Mode::ReceiveOnly, Action::Upload { .. } | Action::DeleteRemote { .. }) => Action::KeepLocal,
        (Mode::SendOnly, Action::Download | Action::DeleteLocal | Action::Conflict) => Action::KeepRemote,
        (_, action) => action,
    }
}

/// What `revert` does about a path kept in a receive-only folder: an
/// edited file is kept as a copy and the server's version fetched (as a
/// conflict is); a deleted one is fetched again. A file the server does
/// not have (an addition here) has nothing to come back to: it stays, as
/// `None` says.
pub fn revert(local: Option<&Local>, remote: Option<&Entry>) -> Option<Action> {
    let remote_live = remote.and_then(|r| r.content);
    match (local, remote_live) {
        (Some(l), Some(c)) if l.same_as(&c) => None,
        (Some(_), Some(_)) => Some(Action::Conflict),
        (None, Some(_)) => Some(Action::Download),
        (_, None) => None,
    }
}

/// What `override` does about a path kept in a send-only folder: the
/// folder's file is sent as a new version over whatever the server holds
/// (a deletion of it, too); a path missing here is deleted on the server.
/// `None`: the server already matches.
pub fn override_action(local: Option<&Local>, remote: Option<&Entry>) -> Option<Action> {
    let live = remote.and_then(|r| r.content.map(|c| (r.version, c)));
    match (local, live) {
        (Some(l), Some((_, c))) if l.same_as(&c) => None,
        (Some(_), Some((version, _))) => Some(Action::Upload { base_version: version }),
        // Creating over a tombstone (or nothing) is based on version 0.
        (Some(_), None) => Some(Action::Upload { base_version: 0 }),
        (None, Some((version, _))) => Some(Action::DeleteRemote { base_version: version }),
        (None, None) => None,
    }
}

/// Whether the local file differs from the base (or is gone).
pub fn local_changed(local: Option<&Local>, base: &Base) -> bool {
    local.is_none_or(|l| {
        l.hash != base.hash
            || l.executable != base.executable
            || l.symlink != base.symlink
            || l.folder != base.folder
    })
}

/// What the folder holds at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Here {
    /// Nothing.
    Missing,
    /// A file or a symbolic link.
    File(Local),
    /// A folder (`local` is its entry: the hash of nothing, size 0);
    /// `empty` when it holds nothing.
    Folder { local: Local, empty: bool },
}

/// The local side of a path, as the three-way rules meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A file, a link, or a folder that is an entry of its own (`None`:
    /// nothing here).
    Entry(Option<Local>),
    /// A folder that is only where files live.
    Holder(Local),
}

/// What [`decide`] chose for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The local side the action is about: `None` for a folder that counts
    /// as a missing file.
    pub local: Option<Local>,
}

/// The local side of what is `here`: a folder is an entry of its own when
/// it is empty, or was synced as one already (its base is a folder).
pub fn side(here: Here, base: Option<&Base>) -> Side {
    match here {
        Here::Missing => Side::Entry(None),
        Here::File(l) => Side::Entry(Some(l)),
        Here::Folder { local, empty } if empty || base.is_some_and(|b| b.folder) => Side::Entry(Some(local)),
        Here::Folder { local, .. } => Side::Holder(local),
    }
}

/// Whether the local side may have changed since the base, so that the
/// server's entry is needed to plan the path (after a local event; without
/// a change, the path is in sync as far as this side knows). A folder that
/// only holds files changed if a file was synced at its name.
pub fn changed_here(side: Side, base: Option<&Base>) -> bool {
    match (side, base) {
        (Side::Holder(_), base) => base.is_some(),
        (Side::Entry(local), Some(b)) => local_changed(local.as_ref(), b),
        (Side::Entry(local), None) => local.is_some(),
    }
}

/// Decides what reconciles one path, folders included (see the module
/// doc). `None`: nothing is to be synced there.
pub fn decide(side: Side, base: Option<&Base>, remote: Option<&Entry>) -> Option<Decision> {
    let local = match side {
        Side::Entry(local) => local,
        // The server's folder entry meets this folder.
        Side::Holder(folder) if remote.and_then(|e| e.content).is_some_and(|c| c.folder) => Some(folder),
        Side::Holder(_) if base.is_none() && remote.is_none_or(Entry::is_deleted) => return None,
        // A folder where a file was synced (this side deleted the file), or
        // where the server has a file: the file is missing here.
        Side::Holder(_) => None,
    };
    Some(Decision { action: three_way(local.as_ref(), base, remote), local })
}

/// Decides what reconciles one path's file (or folder entry): the
/// three-way rules of the module doc.
pub fn three_way(local: Option<&Local>, base: Option<&Base>, remote: Option<&Entry>) -> Action {
    let remote_live = remote.and_then(|r| r.content.map(|c| (r.version, c)));
    let Some(base) = base else {
        // First meeting: adopt equal content, keep both otherwise, never delete.
        return match (local, remote_live) {
            (None, None) => Action::Nothing,
            // Creating over a tombstone (or nothing) is based on version 0.
            (Some(_), None) => Action::Upload { base_version: 0 },
            (None, Some(_)) => Action::Download,
            (Some(l), Some((version, c))) if l.same_as(&c) => Action::Record { version },
            (Some(_), Some(_)) => Action::Conflict,
        };
    };

    let remote_unchanged = remote.is_some_and(|r| r.version == base.version);
    let local_changed = local_changed(local, base);
    match (local, remote_live) {
        // Gone here.
        (None, Some(_)) if remote_unchanged => Action::DeleteRemote { base_version: base.version },
        (None, Some(_)) => Action::Download, // edited there: the edit wins
        (None, None) => Action::Forget,

        // Here, unchanged since the base.
        (Some(_), _) if !local_changed && remote_unchanged => Action::Nothing,
        (Some(_), Some(_)) if !local_changed => Action::Download,
        (Some(_), None) if !local_changed => match remote {
            Some(_) => Action::DeleteLocal,
            // The server has no record of the path at all (never a tombstone):
            // it lost it, so nothing says it was deleted. Put it back.
            None => Action::Upload { base_version: 0 },
        },

        // Here, changed since the base.
        (Some(_), Some(_)) if remote_unchanged => Action::Upload { base_version: base.version },
        (Some(_), None) => Action::Upload { base_version: 0 }, // deleted there: the edit wins
        (Some(l), Some((version, c))) => {
            if l.same_as(&c) {
                Action::Record { version }
            } else {
                Action::Conflict
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(data: &[u8]) -> Local {
        Local {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
            stamp: 1,
        }
    }

    fn base(version: u64, data: &[u8]) -> Base {
        Base {
            version,
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
            stamp: 1,
        }
    }

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn a_selection_holds_its_subtrees_and_the_folders_above_them() {
        let only = Selection::of(vec![rel("docs/work"), rel("photos")]);
        for path in ["docs/work", "docs/work/a.txt", "docs", "photos", "photos/2024/x.jpg"] {
            assert!(only.selects(&rel(path)), "{path}");
        }
        for path in ["docs/play", "docs/workshop", "docs/workshop/a", "photosets", "music/x.mp3", "a"] {
            assert!(!only.selects(&rel(path)), "{path}");
        }
        assert!(Selection::all().selects(&rel("anything/at/all")));
        assert_eq!(Selection::of(vec![rel("b"), rel("a"), rel("b")]).paths(), &[rel("a"), rel("b")]);
    }

    #[test]
    fn outside_the_selection_nothing_is_fetched_sent_or_deleted_on_the_server() {
        let (old, new) = (local(b"old"), local(b"new"));
        let b = base(3, b"old");
        // Unchanged since the last sync: removed here only.
        assert_eq!(outside_selection(Some(&old), Some(&b), true), Some(Action::Deselect));
        assert_eq!(outside_selection(Some(&old), Some(&b), false), Some(Action::Deselect));
        // Changed here, or made here: kept, never sent.
        assert_eq!(outside_selection(Some(&new), Some(&b), true), Some(Action::NotSelected));
        assert_eq!(outside_selection(Some(&new), None, false), Some(Action::NotSelected));
        assert_eq!(outside_selection(Some(&new), None, true), Some(Action::NotSelected));
        // Gone here: no deletion, only the base goes.
        assert_eq!(outside_selection(None, Some(&b), true), Some(Action::Forget));
        // Only on the server: shown, never fetched.
        assert_eq!(outside_selection(None, None, true), Some(Action::NotSelected));
        assert_eq!(outside_selection(None, None, false), None);
        // Whatever the case, nothing of it reaches the server or comes
        // from it, and nothing changed here is removed.
        for l in [None, Some(&old), Some(&new)] {
            for bs in [None, Some(&b)] {
                for live in [false, true] {
                    let action = outside_selection(l, bs, live);
                    assert!(
                        !matches!(
                            action,
                            Some(
                                Action::Upload { .. }
                                    | Action::Download
                                    | Action::DeleteRemote { .. }
                                    | Action::DeleteLocal
                                    | Action::Conflict
                            )
                        ),
                        "{l:?} {bs:?} {live}"
                    );
                    if action == Some(Action::Deselect) {
                        assert!(!local_changed(l, bs.unwrap()));
                    }
                }
            }
        }
    }

    fn remote(version: u64, data: Option<&[u8]>) -> Entry {
        Entry {
            path: RelPath::new("f").unwrap(),
            version,
            content: data.map(|d| Content {
                hash: ContentHash::of(d),
                size: d.len() as u64,
                mtime_ns: 1,
                executable: false,
                symlink: false,
                folder: false,
            }),
            client_id: "other".into(),
        }
    }

    #[test]
    fn first_meeting_adopts_conflicts_and_never_deletes() {
        assert_eq!(three_way(None, None, None), Action::Nothing);
        assert_eq!(three_way(Some(&local(b"a")), None, None), Action::Upload { base_version: 0 });
        assert_eq!(
            three_way(Some(&local(b"a")), None, Some(&remote(4, None))),
            Action::Upload { base_version: 0 }
        );
        assert_eq!(three_way(None, None, Some(&remote(3, Some(b"a")))), Action::Download);
        assert_eq!(three_way(None, None, Some(&remote(3, None))), Action::Nothing);
        assert_eq!(
            three_way(Some(&local(b"a")), None, Some(&remote(3, Some(b"a")))),
            Action::Record { version: 3 }
        );
        assert_eq!(three_way(Some(&local(b"a")), None, Some(&remote(3, Some(b"b")))), Action::Conflict);
    }

    #[test]
    fn one_sided_changes_flow_to_the_other_side() {
        let b = base(5, b"old");
        let same = remote(5, Some(b"old"));
        assert_eq!(three_way(Some(&local(b"old")), Some(&b), Some(&same)), Action::Nothing);
        assert_eq!(
            three_way(Some(&local(b"new")), Some(&b), Some(&same)),
            Action::Upload { base_version: 5 }
        );
        assert_eq!(
            three_way(Some(&local(b"old")), Some(&b), Some(&remote(9, Some(b"new")))),
            Action::Download
        );
        assert_eq!(three_way(None, Some(&b), Some(&same)), Action::DeleteRemote { base_version: 5 });
        assert_eq!(three_way(Some(&local(b"old")), Some(&b), Some(&remote(9, None))), Action::DeleteLocal);
        assert_eq!(three_way(None, Some(&b), Some(&remote(9, None))), Action::Forget);
    }

    #[test]
    fn both_sided_changes_keep_both_or_agree() {
        let b = base(5, b"old");
        assert_eq!(
            three_way(Some(&local(b"mine")), Some(&b), Some(&remote(9, Some(b"theirs")))),
            Action::Conflict
        );
        assert_eq!(
            three_way(Some(&local(b"same")), Some(&b), Some(&remote(9, Some(b"same")))),
            Action::Record { version: 9 }
        );
    }

    #[test]
    fn an_edit_beats_a_delete_on_either_side() {
        let b = base(5, b"old");
        // Edited here, deleted there.
        assert_eq!(
            three_way(Some(&local(b"edit")), Some(&b), Some(&remote(9, None))),
            Action::Upload { base_version: 0 }
        );
        // Deleted here, edited there.
        assert_eq!(three_way(None, Some(&b), Some(&remote(9, Some(b"edit")))), Action::Download);
    }

    #[test]
    fn a_server_that_forgot_a_path_gets_it_back() {
        let b = base(5, b"old");
        assert_eq!(three_way(Some(&local(b"old")), Some(&b), None), Action::Upload { base_version: 0 });
        assert_eq!(three_way(None, Some(&b), None), Action::Forget);
    }

    #[test]
    fn a_mode_change_is_a_change() {
        let b = base(5, b"x");
        let mut l = local(b"x");
        l.executable = true;
        assert_eq!(
            three_way(Some(&l), Some(&b), Some(&remote(5, Some(b"x")))),
            Action::Upload { base_version: 5 }
        );
    }

    fn folder() -> Local {
        Local { folder: true, ..local(b"") }
    }

    fn folder_base(version: u64) -> Base {
        Base { folder: true, ..base(version, b"") }
    }

    fn remote_folder(version: u64) -> Entry {
        let mut e = remote(version, Some(b""));
        e.content = e.content.map(|c| syncstore::Content { folder: true, ..c });
        e
    }

    #[test]
    fn a_folder_is_an_entry_when_empty_or_synced_as_one() {
        let (f, full, empty) = (
            folder(),
            Here::Folder { local: folder(), empty: false },
            Here::Folder { local: folder(), empty: true },
        );
        assert_eq!(side(empty, None), Side::Entry(Some(f)));
        assert_eq!(side(full, Some(&folder_base(3))), Side::Entry(Some(f)));
        assert_eq!(side(full, None), Side::Holder(f));
        assert_eq!(side(full, Some(&base(3, b"a file"))), Side::Holder(f));
        assert_eq!(side(Here::Missing, Some(&folder_base(3))), Side::Entry(None));
        assert_eq!(side(Here::File(local(b"x")), None), Side::Entry(Some(local(b"x"))));
    }

    #[test]
    fn a_new_empty_folder_is_uploaded_and_a_folder_entry_downloaded() {
        let empty = side(Here::Folder { local: folder(), empty: true }, None);
        let d = decide(empty, None, None).unwrap();
        assert_eq!((d.action, d.local), (Action::Upload { base_version: 0 }, Some(folder())));
        let d = decide(Side::Entry(None), None, Some(&remote_folder(4))).unwrap();
        assert_eq!((d.action, d.local), (Action::Download, None));
    }

    #[test]
    fn a_folder_holding_files_meets_a_server_folder_as_a_folder() {
        let d = decide(Side::Holder(folder()), None, Some(&remote_folder(4))).unwrap();
        assert_eq!((d.action, d.local), (Action::Record { version: 4 }, Some(folder())));
        let d = decide(Side::Holder(folder()), Some(&folder_base(4)), Some(&remote_folder(4))).unwrap();
        assert_eq!(d.action, Action::Nothing);
    }

    #[test]
    fn a_folder_holding_files_with_nothing_to_meet_is_not_synced() {
        assert_eq!(decide(Side::Holder(folder()), None, None), None);
        assert_eq!(decide(Side::Holder(folder()), None, Some(&remote(4, None))), None);
        assert!(!changed_here(Side::Holder(folder()), None));
    }

    #[test]
    fn a_folder_where_a_file_is_counts_as_that_file_missing_here() {
        // This side replaced a synced file by a folder: the file goes.
        let b = base(5, b"old");
        let d = decide(Side::Holder(folder()), Some(&b), Some(&remote(5, Some(b"old")))).unwrap();
        assert_eq!((d.action, d.local), (Action::DeleteRemote { base_version: 5 }, None));
        assert!(changed_here(Side::Holder(folder()), Some(&b)));
        // The server has a file where this side has a folder: download it
        // (the folder is made room for).
        let d = decide(Side::Holder(folder()), None, Some(&remote(7, Some(b"theirs")))).unwrap();
        assert_eq!((d.action, d.local), (Action::Download, None));
        // Edited there since the base: the edit wins.
        let d = decide(Side::Holder(folder()), Some(&b), Some(&remote(9, Some(b"new")))).unwrap();
        assert_eq!(d.action, Action::Download);
    }

    #[test]
    fn only_a_changed_side_needs_the_server() {
        let b = base(5, b"old");
        assert!(!changed_here(Side::Entry(Some(local(b"old"))), Some(&b)));
        assert!(changed_here(Side::Entry(Some(local(b"new"))), Some(&b)));
        assert!(changed_here(Side::Entry(None), Some(&b)));
        assert!(changed_here(Side::Entry(Some(local(b"new"))), None));
        assert!(!changed_here(Side::Entry(None), None));
    }

    #[test]
    fn base_of_content_matches_no_file_but_has_its_hash() {
        let c = remote(3, Some(b"x")).content.unwrap();
        let b = Base::of_content(3, &c);
        assert_eq!((b.version, b.hash, b.stamp), (3, c.hash, 0));
        assert_eq!(local(b"x").content(), c);
    }

    #[test]
    fn receive_only_keeps_local_changes_and_lets_the_server_win_a_clash() {
        let b = base(5, b"old");
        let same = remote(5, Some(b"old"));
        let ro = |l: Option<&Local>, b: Option<&Base>, r: Option<&Entry>| {
            with_mode(Mode::ReceiveOnly, three_way(l, b, r))
        };
        // An edit, an addition, a deletion: kept here, never sent.
        assert_eq!(ro(Some(&local(b"new")), Some(&b), Some(&same)), Action::KeepLocal);
        assert_eq!(ro(Some(&local(b"new")), None, None), Action::KeepLocal);
        assert_eq!(ro(None, Some(&b), Some(&same)), Action::KeepLocal);
        // The server changes a locally changed path: its version wins, the
        // local one becomes a copy (a conflict); a local deletion yields.
        assert_eq!(ro(Some(&local(b"new")), Some(&b), Some(&remote(9, Some(b"theirs")))), Action::Conflict);
        assert_eq!(ro(None, Some(&b), Some(&remote(9, Some(b"theirs")))), Action::Download);
        // The server's own changes still arrive.
        assert_eq!(ro(Some(&local(b"old")), Some(&b), Some(&remote(9, Some(b"n")))), Action::Download);
        assert_eq!(ro(Some(&local(b"old")), Some(&b), Some(&remote(9, None))), Action::DeleteLocal);
    }

    #[test]
    fn send_only_leaves_the_server_changes_unapplied() {
        let b = base(5, b"old");
        let same = remote(5, Some(b"old"));
        let so = |l: Option<&Local>, b: Option<&Base>, r: Option<&Entry>| {
            with_mode(Mode::SendOnly, three_way(l, b, r))
        };
        assert_eq!(so(Some(&local(b"old")), Some(&b), Some(&remote(9, Some(b"n")))), Action::KeepRemote);
        assert_eq!(so(Some(&local(b"old")), Some(&b), Some(&remote(9, None))), Action::KeepRemote);
        assert_eq!(so(None, None, Some(&remote(9, Some(b"n")))), Action::KeepRemote);
        assert_eq!(so(Some(&local(b"x")), Some(&b), Some(&remote(9, Some(b"y")))), Action::KeepRemote);
        // Local changes still go.
        assert_eq!(so(Some(&local(b"new")), Some(&b), Some(&same)), Action::Upload { base_version: 5 });
        assert_eq!(so(None, Some(&b), Some(&same)), Action::DeleteRemote { base_version: 5 });
        // Send-receive changes nothing.
        for a in [Action::Download, Action::Conflict, Action::Upload { base_version: 5 }] {
            assert_eq!(with_mode(Mode::SendReceive, a.clone()), a);
        }
    }

    #[test]
    fn revert_fetches_the_server_version_and_keeps_the_local_one() {
        let there = remote(9, Some(b"theirs"));
        assert_eq!(revert(Some(&local(b"mine")), Some(&there)), Some(Action::Conflict));
        assert_eq!(revert(None, Some(&there)), Some(Action::Download));
        assert_eq!(revert(Some(&local(b"theirs")), Some(&there)), None);
        // Nothing on the server to come back to: the addition stays.
        assert_eq!(revert(Some(&local(b"mine")), None), None);
        assert_eq!(revert(Some(&local(b"mine")), Some(&remote(9, None))), None);
    }

    #[test]
    fn override_sends_the_folder_as_new_versions() {
        let there = remote(9, Some(b"theirs"));
        assert_eq!(
            override_action(Some(&local(b"mine")), Some(&there)),
            Some(Action::Upload { base_version: 9 })
        );
        assert_eq!(
            override_action(Some(&local(b"mine")), Some(&remote(9, None))),
            Some(Action::Upload { base_version: 0 })
        );
        assert_eq!(override_action(None, Some(&there)), Some(Action::DeleteRemote { base_version: 9 }));
        assert_eq!(override_action(Some(&local(b"theirs")), Some(&there)), None);
        assert_eq!(override_action(None, Some(&remote(9, None))), None);
    }

    #[test]
    fn modes_read_back_as_written() {
        for m in [Mode::SendReceive, Mode::SendOnly, Mode::ReceiveOnly] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::parse("receive"), None);
    }

    /// Every combination of small states: nothing is ever lost. A side's
    /// content disappears only by DeleteLocal/DeleteRemote/Download over an
    /// unchanged file, and only when the base shows it was seen.
    #[test]
    fn exhaustive_no_unseen_content_is_dropped() {
        let datas: [Option<&[u8]>; 3] = [None, Some(b"a"), Some(b"b")];
        let bases = [None, Some(base(5, b"a")), Some(base(5, b"b"))];
        let remotes = [
            None,
            Some(remote(5, Some(b"a"))),
            Some(remote(5, None)),
            Some(remote(9, Some(b"b"))),
            Some(remote(9, None)),
        ];
        for l in datas {
            for b in &bases {
                for r in &remotes {
                    // A version names one content: skip impossible states.
                    if let (Some(b), Some(r)) = (b, r)
                        && r.version == b.version
                        && r.content.map(|c| c.hash) != Some(b.hash)
                    {
                        continue;
                    }
                    let lo = l.map(local);
                    let action = three_way(lo.as_ref(), b.as_ref(), r.as_ref());
                    // Receive-only never sends; send-only never changes
                    // the folder for the server's sake.
                    let received = with_mode(Mode::ReceiveOnly, action.clone());
                    assert!(!matches!(received, Action::Upload { .. } | Action::DeleteRemote { .. }));
                    let sent = with_mode(Mode::SendOnly, action.clone());
                    assert!(!matches!(sent, Action::Download | Action::DeleteLocal | Action::Conflict));
                    match action {
                        Action::DeleteLocal => {
                            let (lo, b) = (lo.unwrap(), b.unwrap());
                            assert_eq!(lo.hash, b.hash, "deleting unseen local content: {l:?} {b:?} {r:?}");
                        }
                        Action::DeleteRemote { base_version } => {
                            let r = r.as_ref().unwrap();
                            assert_eq!(r.version, base_version);
                            assert_eq!(r.content.unwrap().hash, b.unwrap().hash);
                        }
                        Action::Download => {
                            if let Some(lo) = lo {
                                assert!(!local_changed(Some(&lo), b.as_ref().unwrap()), "{l:?} {b:?} {r:?}");
                            }
                        }
                        Action::Upload { base_version } => {
                            // Overwrites only the version the base saw, or a
                            // tombstone/nothing.
                            match r.as_ref().filter(|r| !r.is_deleted()) {
                                Some(r) => assert_eq!(r.version, base_version),
                                None => assert_eq!(base_version, 0),
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
