//! The synced folder as an open directory handle: every write the client
//! makes in the folder (and every read for an upload) goes through it, so
//! no path can lead out of the folder.
//!
//! A [`Root`] holds the folder open. A folder below it is reached by
//! opening one name at a time from the handle above, with `O_NOFOLLOW |
//! O_DIRECTORY`: a name that is a symbolic link (or not a folder) stops the
//! walk with an error, and a name is never `..`, empty or holding a `/`
//! (checked here again, whatever the caller validated). The last name is
//! then used with the `*at` calls on the parent's handle, which do not
//! follow a link there either (`renameat`, `unlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`, `mkdirat`, `symlinkat`, `readlinkat`, and opens
//! with `O_NOFOLLOW`; a mode change goes through such an open file).
//!
//! So a folder swapped for a link between a check and a use cannot
//! redirect a write: there is no check-then-use, the walk itself refuses
//! the link (the class of bug of the 2024–2026 rsync advisories).
//!
//! Why `rustix` and per-name `openat` rather than `cap-std` or
//! `openat2(RESOLVE_BENEATH)`: `rustix` is already in the dependency tree
//! (through `tempfile`), has a safe API for every `*at` call needed, and
//! the per-name walk works on every Linux kernel and is a dozen lines that
//! can be read in full; `cap-std` would bring its own file types and a
//! temp-file crate for the same guarantee.

use std::{
    fs::{self, File},
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use syncstore::RelPath;

use crate::fsmeta::{Kind, Meta};

/// Mode for folders the client creates (the umask applies).
const DIR_MODE: u32 = 0o777;
/// Mode for temp files until their final mode is set.
const TEMP_MODE: u32 = 0o600;

/// The synced folder, held open. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Root {
    dir: Dir,
    path: PathBuf,
}

/// A folder inside the synced folder (or the folder itself), held open.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
}

/// The error for a walk that met a symbolic link where a folder was needed.
fn through_link(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        format!("{name:?} is a symbolic link here; not following it"),
    )
}

/// Whether `e` is [`through_link`]'s error: the only `NotADirectory` here
/// without an OS error code (a file on the way gives `ENOTDIR` itself).
/// Whether `e` is the error of a walk that met a symbolic link.
pub fn is_through_link(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotADirectory && e.raw_os_error().is_none()
}

/// Refuses anything that is not one plain name.
fn check_name(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(name)
}

impl Root {
    /// Opens the folder at `path` (the user's folder: a link given as the
    /// folder itself is followed, once, here).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(Self { dir: Dir { fd: Arc::new(fd) }, path: path.to_path_buf() })
    }

    /// The folder's path, for messages and for walking it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The handle of the folder itself.
    pub fn top(&self) -> &Dir {
        &self.dir
    }

    /// Opens the folder `rel` (`/`-separated, "" for the top), one name at
    /// a time, following no link.
    pub fn dir(&self, rel: &str) -> io::Result<Dir> {
        let mut dir = self.dir.clone();
        for name in rel.split('/').filter(|n| !n.is_empty()) {
            dir = dir.open_dir(name)?;
        }
        Ok(dir)
    }

    /// The folder holding `path`.
    pub fn parent(&self, path: &RelPath) -> io::Result<Dir> {
        self.dir(path.parent())
    }

    /// The folder holding `path`, creating the missing folders on the way
    /// (never through a link).
    pub fn create_parent(&self, path: &RelPath) -> io::Result<Dir> {
        let mut dir = self.dir.clone();
        for name in path.parent().split('/').filter(|n| !n.is_empty()) {
            dir = match dir.open_dir(name) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match dir.mkdir(name) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    }
                    dir.open_dir(name)?
                }
                other => other?,
            };
        }
        Ok(dir)
    }

    /// What `path` is, never following a link (a link is a `File` whose
    /// meta says `symlink`). A path below a file or a missing folder is
    /// `Missing`; one below a link is an error.
    pub fn stat(&self, path: &RelPath) -> io::Result<Kind> {
        match self.parent(path) {
            Ok(dir) => dir.kind(path.file_name()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Missing),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) => Ok(Kind::Missing),
            Err(e) => Err(e),
        }
    }

    /// Whether a folder above `path` is a symbolic link here.
    pub fn through_symlink(&self, path: &RelPath) -> bool {
        self.parent(path).is_err_and(|e| is_through_link(&e))
    }

    /// Whether `path` is a folder with nothing in it.
    pub fn is_empty_dir(&self, path: &RelPath) -> bool {
        self.dir(path.as_str()).and_then(|d| d.is_empty()).unwrap_or(false)
    }

    /// Removes the empty folder `dir` (a folder path, "" for the top) and
    /// then its empty parents, stopping below the top, at the first folder
    /// that is not empty, or at one that `keep` says stays.
    pub fn prune_empty_dirs(&self, dir: &str, keep: impl Fn(&RelPath) -> bool) {
        let mut dir = dir.to_owned();
        while let Ok(path) = RelPath::new(dir.as_str()) {
            if keep(&path) {
                break;
            }
            let removed = self.parent(&path).and_then(|p| p.rmdir(path.file_name()));
            if removed.is_err() {
                break; // Not empty, gone, or not ours to follow: stop.
            }
            dir = path.parent().to_owned();
        }
    }
}

impl Dir {
    fn fd(&self) -> impl AsFd + '_ {
        self.fd.as_fd()
    }

    /// Opens the folder `name` in this one; a link there is refused.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(self.fd(), check_name(name)?, flags, Mode::empty()) {
            Ok(fd) => Ok(Dir { fd: Arc::new(fd) }),
            // ELOOP for a link, ENOTDIR for a file (or, on some kernels, a
            // link): say which, as a link above a path is a case of its own.
            Err(e) if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR => {
                match self.kind(name) {
                    Ok(Kind::File(m)) if m.symlink => Err(through_link(name)),
                    _ => Err(rustix::io::Errno::NOTDIR.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The metadata of `name` itself (a link is not followed).
    pub fn metadata(&self, name: &str) -> io::Result<fs::Metadata> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(self.fd(), check_name(name)?, flags, Mode::empty())?;
        File::from(fd).metadata()
    }

    /// What `name` is here, never following a link.
    pub fn kind(&self, name: &str) -> io::Result<Kind> {
        match self.metadata(name) {
            Ok(md) if md.is_file() || md.file_type().is_symlink() => Ok(Kind::File(Meta::of(&md))),
            Ok(md) if md.is_dir() => Ok(Kind::Dir),
            Ok(_) => Ok(Kind::Other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Kind::Missing),
            Err(e) => Err(e),
        }
    }

    /// Opens the file `name` for reading; a link there is refused.
    pub fn open_read(&self, name: &str) -> io::Result<File> {
        // NONBLOCK: a FIFO put in the file's place must not hang the open.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(self.fd(), check_name(name)?, flags, Mode::empty())?))
    }

    /// The target of the link `name`, as bytes.
    pub fn read_link(&self, name: &str) -> io::Result<Vec<u8>> {
        Ok(rustix::fs::readlinkat(self.fd(), check_name(name)?, Vec::new())?.into_bytes())
    }

    /// Whether this folder has nothing in it.
    pub fn is_empty(&self) -> io::Result<bool> {
        let fd = rustix::fs::openat(
            self.fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for entry in rustix::fs::Dir::new(fd)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Creates a new, empty temp file here (never over anything), removed
    /// again when the returned value is dropped unless it was renamed.
    pub fn create_temp(&self, prefix: &str) -> io::Result<TempFile> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let name = format!("{prefix}{:016x}", rand::random::<u64>());
            match rustix::fs::openat(self.fd(), check_name(&name)?, flags, Mode::from_raw_mode(TEMP_MODE)) {
                Ok(fd) => return Ok(TempFile { dir: self.clone(), name, file: File::from(fd) }),
                Err(e) if e == rustix::io::Errno::EXIST => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Makes `to` here a second name of `from` in `from_dir`; fails with
    /// `AlreadyExists` rather than replace anything. A link at `from` is
    /// linked as itself, not followed.
    pub fn link_from(&self, from_dir: &Dir, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            from_dir.fd(),
            check_name(from)?,
            self.fd(),
            check_name(to)?,
            AtFlags::empty(),
        )?)
    }

    /// Renames `from` here to `to` in `to_dir`, replacing what is there.
    pub fn rename(&self, from: &str, to_dir: &Dir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(self.fd(), check_name(from)?, to_dir.fd(), check_name(to)?)?)
    }

    /// Renames `from` here to `to` in `to_dir`, failing with
    /// `AlreadyExists` if `to` exists.
    pub fn rename_noreplace(&self, from: &str, to_dir: &Dir, to: &str) -> io::Result<()> {
        let (from, to) = (check_name(from)?, check_name(to)?);
        match rustix::fs::renameat_with(self.fd(), from, to_dir.fd(), to, RenameFlags::NOREPLACE) {
            // A file system without RENAME_NOREPLACE: link, then unlink
            // (a folder cannot be linked: check, then rename).
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                match to_dir.link_from(self, from, to) {
                    Ok(()) => self.unlink(from),
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
                        if !matches!(to_dir.kind(to)?, Kind::Missing) {
                            return Err(io::ErrorKind::AlreadyExists.into());
                        }
                        self.rename(from, to_dir, to)
                    }
                    Err(e) => Err(e),
                }
            }
            other => Ok(other?),
        }
    }

    /// Removes the file or link `name`.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(self.fd(), check_name(name)?, AtFlags::empty())?)
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(self.fd(), check_name(name)?, AtFlags::REMOVEDIR)?)
    }

    /// Creates the folder `name`.
    pub fn mkdir(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::mkdirat(self.fd(), check_name(name)?, Mode::from_raw_mode(DIR_MODE))?)
    }

    /// Creates the symbolic link `name` pointing at `target`; fails with
    /// `AlreadyExists` rather than replace anything.
    pub fn symlink(&self, target: &[u8], name: &str) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let target = std::ffi::OsStr::from_bytes(target);
        Ok(rustix::fs::symlinkat(target, self.fd(), check_name(name)?)?)
    }

    /// Removes every write bit of the regular file `name`, or gives the
    /// owner's back. Returns whether a regular file was there (a missing
    /// file, a folder or a link is left alone).
    pub fn set_writable(&self, name: &str, writable: bool) -> io::Result<bool> {
        use std::os::unix::fs::PermissionsExt;
        // The mode is changed through an open file: `fchmodat` cannot be
        // told not to follow a link, and an open with O_NOFOLLOW can. (A
        // file its owner cannot read is not one the client synced.)
        let file = match self.open_read(name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(false);
        }
        let mode = meta.permissions().mode();
        let new = if writable { mode | 0o200 } else { mode & !0o222 };
        if new != mode {
            file.set_permissions(fs::Permissions::from_mode(new))?;
        }
        Ok(true)
    }

    /// Makes what changed in this folder's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(self.fd())?)
    }
}

/// A temp file in a held folder; its name is removed on drop (after a
/// link elsewhere, the content stays there).
#[derive(Debug)]
pub struct TempFile {
    dir: Dir,
    name: String,
    file: File,
}

impl TempFile {
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = self.dir.unlink(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// A root folder and a folder outside it, which must stay empty.
    fn setup() -> (tempfile::TempDir, Root, PathBuf) {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir(base.path().join("root")).unwrap();
        fs::create_dir(base.path().join("outside")).unwrap();
        let root = Root::open(&base.path().join("root")).unwrap();
        let outside = base.path().join("outside");
        (base, root, outside)
    }

    fn is_empty(dir: &Path) -> bool {
        fs::read_dir(dir).unwrap().next().is_none()
    }

    #[test]
    fn a_parent_swapped_for_a_link_does_not_redirect_a_write() {
        let (_base, root, outside) = setup();
        let top = root.path().to_path_buf();
        fs::create_dir(top.join("a")).unwrap();
        // "Checked": a real folder. Then swapped for a link to the outside
        // before the write.
        assert!(!root.through_symlink(&rel("a/f")));
        fs::remove_dir(top.join("a")).unwrap();
        symlink(&outside, top.join("a")).unwrap();

        let path = rel("a/f");
        assert!(root.through_symlink(&path));
        assert!(root.parent(&path).is_err());
        assert!(root.create_parent(&path).is_err());
        assert!(root.stat(&path).is_err());
        assert!(is_empty(&outside), "nothing was written outside the root");

        // A handle taken before the swap still points at the folder that was
        // checked (now detached), never at the link's target.
        fs::remove_file(top.join("a")).unwrap();
        fs::create_dir(top.join("a")).unwrap();
        let held = root.parent(&path).unwrap();
        fs::rename(top.join("a"), top.join("a-moved")).unwrap();
        symlink(&outside, top.join("a")).unwrap();
        let tmp = held.create_temp(".t").unwrap();
        held.link_from(tmp.dir(), tmp.name(), "f").unwrap();
        assert!(top.join("a-moved/f").exists());
        assert!(is_empty(&outside));
    }

    #[test]
    fn a_deeper_link_stops_the_walk_too() {
        let (_base, root, outside) = setup();
        let top = root.path().to_path_buf();
        fs::create_dir_all(top.join("a/b")).unwrap();
        fs::remove_dir(top.join("a/b")).unwrap();
        symlink(&outside, top.join("a/b")).unwrap();
        assert!(root.create_parent(&rel("a/b/c/d")).is_err());
        assert!(root.dir("a/b").is_err());
        assert!(is_empty(&outside));
    }

    #[test]
    fn a_final_link_is_not_followed() {
        let (_base, root, outside) = setup();
        let top = root.path().to_path_buf();
        let victim = outside.join("victim");
        fs::write(&victim, "precious").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&victim, top.join("l")).unwrap();
        let dir = root.top();

        // Reading, chmod, write (by link), rename over, remove: the link
        // itself, or an error; never the target.
        assert!(dir.open_read("l").is_err());
        assert!(!dir.set_writable("l", false).unwrap());
        let tmp = dir.create_temp(".t").unwrap();
        let e = dir.link_from(tmp.dir(), tmp.name(), "l").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(dir.symlink(b"/etc/passwd", "l").is_err());
        assert!(matches!(root.stat(&rel("l")).unwrap(), Kind::File(m) if m.symlink));
        assert_eq!(dir.read_link("l").unwrap(), victim.as_os_str().as_encoded_bytes());
        dir.unlink("l").unwrap();

        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(fs::metadata(&victim).unwrap().permissions().mode() & 0o777, 0o644);
        assert!(!top.join("l").exists());
    }

    #[test]
    fn names_that_are_not_plain_are_refused() {
        let (_base, root, outside) = setup();
        let dir = root.top();
        dir.mkdir("a").unwrap();
        for bad in ["..", ".", "", "a/b", "../outside", "/etc", "a\0b"] {
            assert_eq!(dir.mkdir(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(dir.open_dir(bad).is_err(), "{bad:?}");
            assert!(dir.unlink(bad).is_err(), "{bad:?}");
            if bad.contains('/') || bad.contains('\0') {
                assert!(dir.create_temp(bad).is_err(), "{bad:?}");
            }
        }
        // A folder path with `..` in it cannot climb out either.
        assert!(root.dir("../outside").is_err());
        assert!(root.dir("a/../..").is_err());
        assert!(is_empty(&outside));
    }

    #[test]
    fn files_are_created_and_pruned_inside() {
        let (_base, root, _outside) = setup();
        let path = rel("x/y/z.txt");
        let parent = root.create_parent(&path).unwrap();
        let tmp = parent.create_temp(".t").unwrap();
        parent.rename(tmp.name(), &parent, "z.txt").unwrap();
        drop(tmp);
        assert!(matches!(root.stat(&path).unwrap(), Kind::File(_)));
        assert!(parent.set_writable("z.txt", false).unwrap());
        assert_eq!(fs::metadata(path.to_local(root.path())).unwrap().permissions().mode() & 0o222, 0);
        assert_eq!(
            parent.rename_noreplace("z.txt", &parent, "z.txt").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        parent.unlink("z.txt").unwrap();
        assert!(root.is_empty_dir(&rel("x/y")));
        root.prune_empty_dirs("x/y", |_| false);
        assert!(!root.path().join("x").exists());
        assert!(root.path().exists());
    }
}
