//! What a path is on disk, as `stat` reports it through the folder's
//! handles ([`crate::fsroot`]): [`Kind`] and a file's [`Meta`] (size,
//! mtime, mode, identity), and the mtime's range.

use std::{fs, os::unix::fs::PermissionsExt};

use syncstore::ContentHash;

use crate::plan::{Base, Local};

/// Size, mtime, mode and identity of a regular file, as `stat` reports
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub size: u64,
    pub mtime_ns: i64,
    pub executable: bool,
    /// A symbolic link (its size is its target's length).
    pub symlink: bool,
    /// A folder (size and mtime 0: what it holds is not its content).
    pub folder: bool,
    /// The inode and the ctime, folded together: a file renamed over
    /// another, or written in the same clock tick with the same size, still
    /// shows a different stamp (as git's index uses them).
    pub stamp: u64,
}

/// Earliest and latest modification times kept (nanoseconds since 1970):
/// what a signed 64-bit count of nanoseconds holds, about 1677-09-21 to
/// 2262-04-11. [`crate::local::RACY_MTIME`] (`i64::MIN`) is kept out: it means "matches
/// no file".
pub const MTIME_RANGE_NS: std::ops::RangeInclusive<i64> = (i64::MIN + 1)..=i64::MAX;

/// A file's modification time in signed nanoseconds since 1970 (before
/// 1970 negative), and whether it had to be clamped into
/// [`MTIME_RANGE_NS`] (never wrapped).
pub fn mtime_ns(secs: i64, nanos: i64) -> (i64, bool) {
    let exact = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let (lo, hi) = (*MTIME_RANGE_NS.start(), *MTIME_RANGE_NS.end());
    let kept = exact.clamp(i128::from(lo), i128::from(hi));
    (kept as i64, kept != exact)
}

impl Meta {
    pub(crate) fn of(md: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let (mtime_ns, _) = mtime_ns(md.mtime(), md.mtime_nsec());
        let ctime_ns = md.ctime().wrapping_mul(1_000_000_000).wrapping_add(md.ctime_nsec());
        let stamp = md.ino().wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ctime_ns as u64;
        if md.is_dir() {
            // Entries coming and going change a folder's mtime and ctime,
            // not the folder: only its inode identifies it.
            let stamp = md.ino().wrapping_mul(0x9E37_79B9_7F4A_7C15);
            return Meta { size: 0, mtime_ns: 0, executable: false, symlink: false, folder: true, stamp };
        }
        let symlink = md.file_type().is_symlink();
        let executable = !symlink && md.permissions().mode() & 0o111 != 0;
        Meta { size: md.len(), mtime_ns, executable, symlink, folder: false, stamp }
    }

    /// The state of the file, link or folder this is the metadata of, whose
    /// content hashes to `hash` (a folder's: the hash of nothing).
    pub fn with_hash(&self, hash: ContentHash) -> Local {
        Local {
            hash,
            size: self.size,
            mtime_ns: self.mtime_ns,
            executable: self.executable,
            symlink: self.symlink,
            folder: self.folder,
            stamp: self.stamp,
        }
    }

    /// Whether the file still looks as it did when the base was recorded.
    pub fn matches(&self, base: &Base) -> bool {
        self.size == base.size
            && self.mtime_ns == base.mtime_ns
            && self.executable == base.executable
            && self.symlink == base.symlink
            && self.folder == base.folder
            && self.stamp == base.stamp
    }
}

impl Meta {
    /// Whether `self` and `other` look like the same unmodified file, the
    /// stamp aside (a rename, which moving a file aside is, changes the
    /// ctime in it).
    pub fn same_as_moved(&self, other: &Meta) -> bool {
        (self.size, self.mtime_ns, self.executable, self.symlink, self.folder)
            == (other.size, other.mtime_ns, other.executable, other.symlink, other.folder)
    }
}

impl Local {
    /// The metadata a file in this state has (the inverse of
    /// [`Meta::with_hash`]).
    pub fn meta(&self) -> Meta {
        Meta {
            size: self.size,
            mtime_ns: self.mtime_ns,
            executable: self.executable,
            symlink: self.symlink,
            folder: self.folder,
            stamp: self.stamp,
        }
    }
}

/// What a path is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File(Meta),
    Dir,
    /// A symlink, socket, device…: not synced.
    Other,
}
