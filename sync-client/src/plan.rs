//! The sync planner: a pure function from what one path looks like here
//! (the local file), at the last sync (the base) and on the server (the
//! remote entry) to the one action that reconciles them. No I/O happens
//! here, so every rule is tested on plain values.
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
//! Nothing is deleted or overwritten unless the base shows that the side
//! losing it had already been seen.

use syncstore::{ContentHash, Entry};

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
    /// Whether the server's content is this file's: same bytes, same
    /// executable bit, same kind (file or link).
    pub fn same_as(&self, c: &syncstore::Content) -> bool {
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
        }
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

/// Decides what reconciles one path.
pub fn decide(local: Option<&Local>, base: Option<&Base>, remote: Option<&Entry>) -> Action {
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
    use syncstore::{Content, RelPath};

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
        assert_eq!(decide(None, None, None), Action::Nothing);
        assert_eq!(decide(Some(&local(b"a")), None, None), Action::Upload { base_version: 0 });
        assert_eq!(
            decide(Some(&local(b"a")), None, Some(&remote(4, None))),
            Action::Upload { base_version: 0 }
        );
        assert_eq!(decide(None, None, Some(&remote(3, Some(b"a")))), Action::Download);
        assert_eq!(decide(None, None, Some(&remote(3, None))), Action::Nothing);
        assert_eq!(
            decide(Some(&local(b"a")), None, Some(&remote(3, Some(b"a")))),
            Action::Record { version: 3 }
        );
        assert_eq!(decide(Some(&local(b"a")), None, Some(&remote(3, Some(b"b")))), Action::Conflict);
    }

    #[test]
    fn one_sided_changes_flow_to_the_other_side() {
        let b = base(5, b"old");
        let same = remote(5, Some(b"old"));
        assert_eq!(decide(Some(&local(b"old")), Some(&b), Some(&same)), Action::Nothing);
        assert_eq!(decide(Some(&local(b"new")), Some(&b), Some(&same)), Action::Upload { base_version: 5 });
        assert_eq!(decide(Some(&local(b"old")), Some(&b), Some(&remote(9, Some(b"new")))), Action::Download);
        assert_eq!(decide(None, Some(&b), Some(&same)), Action::DeleteRemote { base_version: 5 });
        assert_eq!(decide(Some(&local(b"old")), Some(&b), Some(&remote(9, None))), Action::DeleteLocal);
        assert_eq!(decide(None, Some(&b), Some(&remote(9, None))), Action::Forget);
    }

    #[test]
    fn both_sided_changes_keep_both_or_agree() {
        let b = base(5, b"old");
        assert_eq!(
            decide(Some(&local(b"mine")), Some(&b), Some(&remote(9, Some(b"theirs")))),
            Action::Conflict
        );
        assert_eq!(
            decide(Some(&local(b"same")), Some(&b), Some(&remote(9, Some(b"same")))),
            Action::Record { version: 9 }
        );
    }

    #[test]
    fn an_edit_beats_a_delete_on_either_side() {
        let b = base(5, b"old");
        // Edited here, deleted there.
        assert_eq!(
            decide(Some(&local(b"edit")), Some(&b), Some(&remote(9, None))),
            Action::Upload { base_version: 0 }
        );
        // Deleted here, edited there.
        assert_eq!(decide(None, Some(&b), Some(&remote(9, Some(b"edit")))), Action::Download);
    }

    #[test]
    fn a_server_that_forgot_a_path_gets_it_back() {
        let b = base(5, b"old");
        assert_eq!(decide(Some(&local(b"old")), Some(&b), None), Action::Upload { base_version: 0 });
        assert_eq!(decide(None, Some(&b), None), Action::Forget);
    }

    #[test]
    fn a_mode_change_is_a_change() {
        let b = base(5, b"x");
        let mut l = local(b"x");
        l.executable = true;
        assert_eq!(
            decide(Some(&l), Some(&b), Some(&remote(5, Some(b"x")))),
            Action::Upload { base_version: 5 }
        );
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
                    let action = decide(lo.as_ref(), b.as_ref(), r.as_ref());
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
