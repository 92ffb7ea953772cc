//! The synced folder held open: its top ([`Root`]), the temp folder in
//! `.syncstore/tmp` through which downloads and replacements go, and
//! whether the folder is still the one opened. Every write to the folder
//! goes through these handles.

use std::path::{Path, PathBuf};

use syncstore::limits::STATE_DIR_NAME;

use crate::{
    error::Result,
    fsroot::{Dir, Root},
};

/// The folder's handles; cheap to clone.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The synced folder's path.
    path: PathBuf,
    /// The synced folder, held open.
    root: Root,
    /// `.syncstore/tmp`, held open: downloads are staged there, and files
    /// are moved there to be checked before they are replaced or deleted.
    tmp: Dir,
    /// `.syncstore`, by path: to tell whether the folder is still there.
    state_dir: PathBuf,
    /// Device and inode of `.syncstore` when the folder was opened.
    marker: (u64, u64),
}

impl Folder {
    /// Opens the synced folder and its `.syncstore/tmp`, creating them,
    /// never through a link.
    pub fn open(root: &Path) -> Result<Self> {
        let top = Root::open(root)?;
        let mut dir = top.top().clone();
        for name in [STATE_DIR_NAME, "tmp"] {
            match dir.mkdir(name) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            dir = dir.open_dir(name)?;
        }
        let state_dir = root.join(STATE_DIR_NAME);
        let marker = dir_id(&state_dir)?;
        Ok(Self { path: root.to_path_buf(), root: top, tmp: dir, state_dir, marker })
    }

    /// Removes what downloads a crash interrupted left in the temp folder.
    /// Only for the client that holds the folder's lock: another one's
    /// downloads may be under way.
    pub(crate) fn clear_interrupted(&self) -> Result<()> {
        for entry in std::fs::read_dir(self.state_dir.join("tmp"))? {
            if let Some(name) = entry?.file_name().to_str() {
                self.tmp.unlink(name)?;
            }
        }
        Ok(())
    }

    /// The synced folder's path (for scanning and watching it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The synced folder, held open: every write to it goes through this.
    pub fn root(&self) -> &Root {
        &self.root
    }

    /// Where downloads are written before they are linked into place, and
    /// where files are moved to be checked before they are replaced or
    /// deleted (on the folder's file system, so both are renames).
    pub fn tmp(&self) -> &Dir {
        &self.tmp
    }

    /// Whether the synced folder is still there: its state folder is the
    /// one opened (not gone, as with a deleted folder or an unmounted disk,
    /// and not a new one).
    pub fn present(&self) -> bool {
        dir_id(&self.state_dir).is_ok_and(|id| id == self.marker)
    }
}

fn dir_id(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(dir)?;
    Ok((md.dev(), md.ino()))
}
