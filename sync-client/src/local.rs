//! The local folder: what a path is on disk, hashing, walking the folder,
//! and the ignore rules (`.syncignore` plus built-in patterns).

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::{self, Read},
    path::Path,
    sync::Arc,
    time::UNIX_EPOCH,
};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use syncstore::{
    ContentHash, RelPath,
    limits::{MAX_CHUNK, STATE_DIR_NAME},
};

use crate::{
    fsmeta::{Kind, Meta, mtime_ns},
    fsroot::{Dir, Root},
    plan::{Base, Local},
};

/// File name of the ignore file at the top of a synced folder.
pub const IGNORE_FILE: &str = ".syncignore";

/// Patterns never synced: editors' swap, backup and lock files, and
/// desktop clutter. Gitignore syntax, like `.syncignore`.
pub const BUILTIN_IGNORES: &[&str] = &[
    "*.swp",
    "*.swo",
    "*.swx",
    "*~",
    ".#*",
    "#*#",
    "4913",
    ".~lock.*#",
    "~$*",
    "~*.tmp",
    ".goutputstream-*",
    "*.crdownload",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
];

/// A base whose mtime was this recent when it was recorded is "racy": the
/// file could change again within the same timestamp tick without its
/// size or mtime showing it, so the next look hashes it (git's rule).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// The mtime stored for a racy base: it matches no file (and is kept out
/// of [`crate::fsmeta::MTIME_RANGE_NS`]).
pub const RACY_MTIME: i64 = i64::MIN;

/// Whether a file last modified at `mtime_ns` may still be being written:
/// it was modified less than `window` ago. A modification time in the
/// future (another clock, an unpacked archive) is not taken as fresh.
pub fn is_fresh(mtime_ns: i64, window: std::time::Duration) -> bool {
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    let age = now.saturating_sub(mtime_ns);
    (0..i64::try_from(window.as_nanos()).unwrap_or(i64::MAX)).contains(&age)
}

/// The mtime to record in a base for a file seen with `mtime_ns`: the real
/// one, or [`RACY_MTIME`] if it is too recent to be trusted later.
pub fn base_mtime(mtime_ns: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64);
    if now.saturating_sub(mtime_ns) < RACY_WINDOW_NS { RACY_MTIME } else { mtime_ns }
}

/// The base recording that the server's version `version` is the local
/// file `l` (its mtime kept only if it is not racy).
pub fn synced_base(version: u64, l: Local) -> Base {
    Base {
        version,
        hash: l.hash,
        size: l.size,
        mtime_ns: base_mtime(l.mtime_ns),
        executable: l.executable,
        symlink: l.symlink,
        folder: l.folder,
        stamp: l.stamp,
    }
}

/// Hashes the file `name` in `dir`, streaming it (a link: its target).
/// Fails with `None` if the file's size or mtime moved while it was read
/// (it is still being written).
pub fn hash_file(dir: &Dir, name: &str, before: Meta) -> io::Result<Option<ContentHash>> {
    if before.symlink {
        let target = dir.read_link(name)?;
        let after = Meta::of(&dir.metadata(name)?);
        return Ok((after == before).then(|| ContentHash::of(&target)));
    }
    let mut file = dir.open_read(name)?;
    let mut hasher = blake3::Hasher::new();
    // Sized to the file (one byte more, to see its end in two reads): a
    // fresh 1 MiB buffer costs more to zero than a small file to hash.
    let len = usize::try_from(before.size).unwrap_or(MAX_CHUNK).saturating_add(1).min(MAX_CHUNK);
    let mut buf = vec![0u8; len];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let after = Meta::of(&file.metadata()?);
    Ok((after == before).then(|| hasher.finalize().into()))
}

/// Whether `path` is a folder with nothing in it.
pub fn is_empty_dir(path: &Path) -> bool {
    fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// Reads a path's local state through the folder's handle (no link above
/// it or at it is followed), hashing only when size or mtime differ from
/// the base.
pub fn local_state(root: &Root, path: &RelPath, base: Option<&Base>) -> io::Result<LocalView> {
    let dir = match root.parent(path) {
        Ok(dir) => dir,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
        {
            return Ok(LocalView::Missing);
        }
        Err(e) => return Err(e),
    };
    local_state_in(&dir, path.file_name(), base)
}

/// [`local_state`] of the entry `name` of the (held) folder `dir`.
pub fn local_state_in(dir: &Dir, name: &str, base: Option<&Base>) -> io::Result<LocalView> {
    match dir.kind(name)? {
        Kind::Missing => Ok(LocalView::Missing),
        Kind::Dir => {
            // A folder's metadata is its identity alone (size and mtime 0).
            Ok(LocalView::Dir(Meta::of(&dir.metadata(name)?).with_hash(ContentHash::of(b""))))
        }
        Kind::Other => Ok(LocalView::Other),
        Kind::File(meta) => {
            if let Some(unchanged) = base.and_then(|b| unchanged(&meta, b)) {
                return Ok(LocalView::File(unchanged));
            }
            match hash_file(dir, name, meta)? {
                Some(hash) => Ok(LocalView::File(meta.with_hash(hash))),
                None => Ok(LocalView::Unsettled),
            }
        }
    }
}

/// The local state of a file (or link) whose metadata `meta` still matches
/// its `base`: the base's hash, without reading the file. `None` when it
/// does not match, or is a folder.
pub fn unchanged(meta: &Meta, base: &Base) -> Option<Local> {
    (!meta.folder && meta.matches(base)).then(|| meta.with_hash(base.hash))
}

/// A path's local state, ready for the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalView {
    Missing,
    File(Local),
    /// A folder, as the entry it is when folders are synced.
    Dir(Local),
    Other,
    /// A file that changed while it was hashed.
    Unsettled,
}

/// The ignore rules of a folder.
#[derive(Debug, Clone)]
pub struct Ignore {
    rules: Arc<Gitignore>,
}

impl Ignore {
    /// Built-in patterns plus `root/.syncignore` if present. A broken
    /// pattern is logged and skipped, never fatal.
    pub fn load(root: &Path) -> Self {
        let mut b = GitignoreBuilder::new(root);
        for pattern in BUILTIN_IGNORES {
            b.add_line(None, pattern).expect("built-in ignore patterns are valid");
        }
        let file = root.join(IGNORE_FILE);
        // Not through a link: a `.syncignore` link (which syncs as a link)
        // could point anywhere.
        if fs::symlink_metadata(&file).is_ok_and(|m| m.is_file())
            && let Some(e) = b.add(&file)
        {
            tracing::warn!(error = %e, "problem in {IGNORE_FILE}");
        }
        let rules = b.build().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot use {IGNORE_FILE}; using the built-in ignores only");
            Gitignore::empty()
        });
        Self { rules: Arc::new(rules) }
    }

    /// Whether `path` (or a folder above it) is ignored.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        self.rules.matched_path_or_any_parents(path.as_str(), is_dir).is_ignore()
    }
}

/// The names of the files that have several (hard) links in the folder,
/// by inode: a file edited through one name is changed under the others
/// too, though the watcher reports only the name it was written through.
#[derive(Debug, Clone, Default)]
pub struct HardLinks {
    by_inode: HashMap<(u64, u64), BTreeSet<RelPath>>,
    inode_of: HashMap<RelPath, (u64, u64)>,
}

impl HardLinks {
    /// Notes what `path` is now (`md`: its metadata, `None` if it is gone):
    /// a regular file with several links joins its inode's names; anything
    /// else leaves them.
    pub fn note(&mut self, path: &RelPath, md: Option<&fs::Metadata>) {
        use std::os::unix::fs::MetadataExt;
        let inode = md.filter(|m| m.is_file() && m.nlink() > 1).map(|m| (m.dev(), m.ino()));
        if let Some(old) = self.inode_of.get(path).copied().filter(|old| Some(*old) != inode) {
            self.inode_of.remove(path);
            if let Some(names) = self.by_inode.get_mut(&old) {
                names.remove(path);
                if names.is_empty() {
                    self.by_inode.remove(&old);
                }
            }
        }
        if let Some(inode) = inode {
            self.inode_of.insert(path.clone(), inode);
            self.by_inode.entry(inode).or_default().insert(path.clone());
        }
    }

    /// The other names known for `path`'s file.
    pub fn others(&self, path: &RelPath) -> Vec<RelPath> {
        let names = self.inode_of.get(path).and_then(|inode| self.by_inode.get(inode));
        names.into_iter().flatten().filter(|p| *p != path).cloned().collect()
    }

    /// Takes in what a scan of part of the folder found.
    pub fn merge(&mut self, other: HardLinks) {
        for (path, inode) in other.inode_of {
            self.inode_of.insert(path.clone(), inode);
            self.by_inode.entry(inode).or_default().insert(path);
        }
    }
}

/// Every regular file and symbolic link under `dir` (a folder below
/// `root`, or `root` itself) that is not ignored, with its metadata. Links
/// are listed, never followed; names that are not valid paths are skipped with a warning.
pub fn scan(root: &Path, dir: &Path, ignore: &Ignore) -> io::Result<HashMap<RelPath, Meta>> {
    scan_linked(root, dir, ignore).map(|(files, _)| files)
}

/// [`scan`], with the names of the files that have several links.
pub fn scan_linked(
    root: &Path,
    dir: &Path,
    ignore: &Ignore,
) -> io::Result<(HashMap<RelPath, Meta>, HardLinks)> {
    let mut out = HashMap::new();
    let mut links = HardLinks::default();
    let root_buf = root.to_path_buf();
    let ign = ignore.clone();
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .follow_links(false)
        .filter_entry(move |e| {
            keep_entry(&root_buf, e.path(), e.file_type().is_some_and(|t| t.is_dir()), &ign)
        })
        .build();
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read part of the folder");
                continue;
            }
        };
        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
        if is_dir && (entry.path() == root || !is_empty_dir(entry.path())) {
            continue; // Only empty folders are entries of their own here.
        }
        if !is_dir && !entry.file_type().is_some_and(|t| t.is_file() || t.is_symlink()) {
            continue;
        }
        let Ok(path) = RelPath::from_local(root, entry.path()) else { continue };
        match entry.metadata() {
            Ok(md) => {
                use std::os::unix::fs::MetadataExt;
                if !is_dir && mtime_ns(md.mtime(), md.mtime_nsec()).1 {
                    tracing::warn!(%path, mtime_s = md.mtime(), "a modification time outside 1677-2262: synced as the nearest one that can be kept");
                }
                links.note(&path, Some(&md));
                out.insert(path, Meta::of(&md));
            }
            Err(e) => tracing::warn!(%path, error = %e, "cannot stat"),
        }
    }
    Ok((out, links))
}

fn keep_entry(root: &Path, path: &Path, is_dir: bool, ignore: &Ignore) -> bool {
    if path == root {
        return true;
    }
    if path.parent() == Some(root) && path.file_name().is_some_and(|n| n == STATE_DIR_NAME) {
        return false;
    }
    match RelPath::from_local(root, path) {
        Ok(rel) => !ignore.is_ignored(&rel, is_dir),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "not synced: unusable name");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtimes_before_1970_and_after_2262_are_kept_or_clamped_never_wrapped() {
        // 1960-01-01 and just before 1970: negative, exact.
        assert_eq!(mtime_ns(-315_619_200, 5), (-315_619_199_999_999_995, false));
        assert_eq!(mtime_ns(-1, 999_999_999), (-1, false));
        assert_eq!(mtime_ns(1_700_000_000, 1), (1_700_000_000_000_000_001, false));
        // 2300-01-01 is past i64 nanoseconds: the latest time kept, not 1901.
        assert_eq!(mtime_ns(10_413_792_000, 0), (i64::MAX, true));
        // Before 1677: the earliest kept, which is not the racy marker.
        let (early, clamped) = mtime_ns(-10_000_000_000, 0);
        assert!(clamped && early == i64::MIN + 1 && early != RACY_MTIME);

        // What a file's metadata gives, through `Meta::of`.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("old");
        fs::write(&f, "x").unwrap();
        for (secs, want) in [(-315_619_200, -315_619_200_000_000_000), (10_413_792_000, i64::MAX)] {
            filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(secs, 0)).unwrap();
            assert_eq!(Meta::of(&fs::symlink_metadata(&f).unwrap()).mtime_ns, want, "{secs}");
        }
    }

    #[test]
    fn scan_skips_state_and_ignored_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join(".syncstore")).unwrap();
        fs::create_dir_all(root.join("build")).unwrap();
        fs::write(root.join("a/b/keep.txt"), "k").unwrap();
        fs::write(root.join("a/.keep.txt.swp"), "swap").unwrap();
        fs::write(root.join(".syncstore/state.db"), "x").unwrap();
        fs::write(root.join("build/out.o"), "o").unwrap();
        fs::write(root.join("notes.log"), "l").unwrap();
        fs::write(root.join(IGNORE_FILE), "build/\n*.log\n").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let found = scan(root, root, &Ignore::load(root)).unwrap();
        let mut names: Vec<_> = found.keys().map(|p| p.as_str().to_owned()).collect();
        names.sort();
        // The link is listed as itself; what it points to is not walked.
        assert_eq!(names, vec![IGNORE_FILE, "a/b/keep.txt", "link"]);
        assert!(found[&RelPath::new("link").unwrap()].symlink);
    }

    #[test]
    fn hard_links_are_grouped_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("one"), "x").unwrap();
        fs::hard_link(root.join("one"), root.join("sub/two")).unwrap();
        fs::write(root.join("alone"), "y").unwrap();
        let (_, mut links) = scan_linked(root, root, &Ignore::load(root)).unwrap();
        let p = |s: &str| RelPath::new(s).unwrap();
        assert_eq!(links.others(&p("one")), vec![p("sub/two")]);
        assert_eq!(links.others(&p("sub/two")), vec![p("one")]);
        assert!(links.others(&p("alone")).is_empty());
        // One name goes: the other has no others left.
        fs::remove_file(root.join("sub/two")).unwrap();
        links.note(&p("sub/two"), None);
        assert!(links.others(&p("one")).is_empty());
    }

    #[test]
    fn hashing_matches_and_unchanged_files_are_not_rehashed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("f"), "hello").unwrap();
        let path = RelPath::new("f").unwrap();
        let handle = Root::open(root).unwrap();
        let LocalView::File(l) = local_state(&handle, &path, None).unwrap() else { panic!() };
        assert_eq!(l.hash, ContentHash::of(b"hello"));
        // A base with the same size, mtime and stamp is trusted without reading.
        let base = Base {
            version: 1,
            hash: ContentHash::of(b"other"),
            size: l.size,
            mtime_ns: l.mtime_ns,
            executable: false,
            symlink: false,
            folder: false,
            stamp: l.stamp,
        };
        let LocalView::File(l2) = local_state(&handle, &path, Some(&base)).unwrap() else { panic!() };
        assert_eq!(l2.hash, base.hash);
        assert_eq!(local_state(&handle, &RelPath::new("nope").unwrap(), None).unwrap(), LocalView::Missing);

        // A file renamed over it, same size and mtime: the stamp differs.
        fs::write(root.join("g"), "HELLO").unwrap();
        let mtime = filetime::FileTime::from_unix_time(
            l.mtime_ns / 1_000_000_000,
            (l.mtime_ns % 1_000_000_000) as u32,
        );
        filetime::set_file_mtime(root.join("g"), mtime).unwrap();
        fs::rename(root.join("g"), root.join("f")).unwrap();
        let LocalView::File(l3) = local_state(&handle, &path, Some(&base)).unwrap() else { panic!() };
        assert_eq!(l3.hash, ContentHash::of(b"HELLO"), "rehashed");
        // A racy base (mtime too recent when recorded) never matches.
        assert_eq!(base_mtime(l.mtime_ns), RACY_MTIME);
        // Just written: fresh for a while; an hour ago or in the future: not.
        assert!(is_fresh(l.mtime_ns, std::time::Duration::from_secs(60)));
        let hour = 3_600_000_000_000;
        assert!(!is_fresh(l.mtime_ns - hour, std::time::Duration::from_secs(60)));
        assert!(!is_fresh(l.mtime_ns + hour, std::time::Duration::from_secs(60)));
        assert_eq!(base_mtime(1_000), 1_000);
    }
}
