//! What the client knows of the server's locks: the live locks as last
//! listed and then updated by change events, which of them this client
//! holds, and which local files it made read-only because someone else
//! holds their lock; and the engine's bookkeeping of them (loading the
//! listing, lock events, refreshing this client's own locks).

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::PermissionsExt,
    path::Path,
};

use syncstore::{Lock, RelPath};

use crate::{error::Result, fsroot::Root, remote::Remote, state::State};

/// A held lock is refreshed once one of this many parts of its time-to-live
/// has passed (a third), leaving two thirds of it for a refresh that failed
/// (a server restarting, a dropped connection) to be tried again.
const REFRESH_PARTS: i64 = 3;

/// The server's live locks, as this client last heard of them.
#[derive(Debug, Clone)]
pub struct Locks {
    /// This client's id: locks with it are ours.
    own: String,
    by_path: HashMap<RelPath, Lock>,
    /// Files this client made read-only (someone else's lock); write
    /// permission for the owner is given back when the lock goes. Kept in
    /// the state database too, so a restart still knows them.
    read_only: HashSet<RelPath>,
    state: State,
    /// The synced folder, whose files' modes this changes.
    root: Root,
}

impl Locks {
    pub fn new(own: String, state: State, root: Root) -> Self {
        Self { own, by_path: HashMap::new(), read_only: HashSet::new(), state, root }
    }

    /// Takes in the files a previous run made read-only.
    pub fn load_read_only(&mut self) -> Result<()> {
        self.read_only.extend(self.state.read_only_paths()?);
        Ok(())
    }

    /// Someone else's lock on `path`.
    pub fn by_other(&self, path: &RelPath) -> Option<&Lock> {
        self.by_path.get(path).filter(|l| l.client_id != self.own)
    }

    /// The token of this client's lock on `path` (0 for none).
    pub fn token(&self, path: &RelPath) -> u64 {
        self.by_path.get(path).filter(|l| l.client_id == self.own).map_or(0, |l| l.token)
    }

    /// Every live lock, in no order.
    pub fn all(&self) -> impl Iterator<Item = &Lock> {
        self.by_path.values()
    }

    /// The paths someone else holds a lock on.
    pub fn held_by_others(&self) -> Vec<RelPath> {
        self.by_path.values().filter(|l| l.client_id != self.own).map(|l| l.path.clone()).collect()
    }

    /// Whether this client holds any lock (which then needs refreshing).
    pub fn holds_any(&self) -> bool {
        self.by_path.values().any(|l| l.client_id == self.own)
    }

    /// This client's locks that have used up a third of their time.
    pub fn due_for_refresh(&self, now_ms: i64) -> Vec<Lock> {
        self.by_path
            .values()
            .filter(|l| l.client_id == self.own)
            .filter(|l| {
                l.expires_ms - now_ms < i64::from(l.ttl_seconds) * 1000 * (REFRESH_PARTS - 1) / REFRESH_PARTS
            })
            .cloned()
            .collect()
    }

    /// Records a granted or refreshed lock.
    pub fn granted(&mut self, lock: Lock) {
        self.by_path.insert(lock.path.clone(), lock);
    }

    /// Records a lock that ended; false if another lock had replaced it.
    pub fn ended(&mut self, lock: &Lock) -> bool {
        match self.by_path.get(&lock.path) {
            Some(l) if l.lock_id == lock.lock_id => {
                self.by_path.remove(&lock.path);
                true
            }
            _ => false,
        }
    }

    /// Replaces what is known of `path`'s lock with what the server said.
    pub fn set(&mut self, path: &RelPath, lock: Option<Lock>) {
        match lock {
            Some(l) => self.granted(l),
            None => {
                self.by_path.remove(path);
            }
        }
    }

    /// Replaces everything with a fresh listing; returns the paths whose
    /// lock went meanwhile.
    pub fn replace_all(&mut self, locks: Vec<Lock>) -> Vec<RelPath> {
        self.by_path = locks.into_iter().map(|l| (l.path.clone(), l)).collect();
        self.read_only.iter().filter(|p| self.by_other(p).is_none()).cloned().collect()
    }

    /// Makes the local file read-only if someone else holds its lock.
    pub fn protect(&mut self, path: &RelPath) {
        if self.by_other(path).is_none() {
            return;
        }
        match set_writable(&self.root, path, false) {
            Ok(true) => {
                if self.read_only.insert(path.clone())
                    && let Err(e) = self.state.set_read_only(path, true)
                {
                    tracing::warn!(%path, error = %e, "cannot note a read-only file in the state");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(%path, error = %e, "cannot make a locked file read-only"),
        }
    }

    /// Gives write permission back to the owner of a file this client made
    /// read-only, unless someone else (still) holds its lock.
    pub fn unprotect(&mut self, path: &RelPath) {
        if self.by_other(path).is_some() || !self.read_only.remove(path) {
            return;
        }
        if let Err(e) = self.state.set_read_only(path, false) {
            tracing::warn!(%path, error = %e, "cannot update the state");
        }
        if let Err(e) = set_writable(&self.root, path, true) {
            tracing::warn!(%path, error = %e, "cannot make an unlocked file writable again");
        }
    }
}

impl Locks {
    /// Reads the server's live locks, making files locked by others
    /// read-only and giving back write permission where a lock went.
    pub async fn load(&mut self, remote: &dyn Remote) -> Result<()> {
        let listed = remote.list_locks("").await?;
        self.load_read_only()?;
        for path in self.replace_all(listed) {
            self.unprotect(&path);
        }
        for path in self.held_by_others() {
            self.protect(&path);
        }
        Ok(())
    }

    /// Asks the server again for the lock on `path` (a write was refused
    /// for a lock this client did not know of, or for a stale token).
    pub async fn reread(&mut self, remote: &dyn Remote, path: &RelPath) -> Result<()> {
        let lock = remote.lock_on(path).await?;
        self.set(path, lock);
        Ok(())
    }

    /// A lock event: `lock` was granted or refreshed. Someone else's makes
    /// the file read-only here.
    pub fn on_locked(&mut self, lock: Lock) {
        let path = lock.path.clone();
        if lock.client_id != self.own {
            tracing::info!(%path, locked_by = %lock.describe(), "locked by someone else: read-only here");
        }
        self.granted(lock);
        self.protect(&path);
    }

    /// An unlock event: the file is writable again (if this client had made
    /// it read-only and no newer lock replaced this one).
    pub fn on_unlocked(&mut self, lock: &Lock) {
        if self.ended(lock) {
            tracing::info!(path = %lock.path, "unlocked");
            self.unprotect(&lock.path);
        }
    }

    /// Refreshes the locks this client holds before they expire (a crashed
    /// client stops refreshing, so its locks expire by themselves).
    pub async fn refresh_own(&mut self, remote: &dyn Remote) {
        for lock in self.due_for_refresh(syncstore::lock::now_ms()) {
            let ttl = std::time::Duration::from_secs(lock.ttl_seconds.into());
            match remote.refresh_lock(&lock.lock_id, ttl).await {
                Ok(fresh) => self.granted(fresh),
                Err(e) if e.is_not_found() => {
                    tracing::warn!(path = %lock.path, "our lock is gone (it expired or was broken)");
                    self.ended(&lock);
                }
                Err(e) => {
                    tracing::debug!(path = %lock.path, error = %e, "could not refresh a lock; will retry")
                }
            }
        }
    }
}

/// Removes every write bit of the file at `path`, or adds the owner's,
/// through the folder's handle (no link is followed). Returns whether a
/// regular file was there (a missing file, a folder or a link is left
/// alone).
pub fn set_writable(root: &Root, path: &RelPath, writable: bool) -> std::io::Result<bool> {
    match root.parent(path) {
        Ok(dir) => dir.set_writable(path.file_name(), writable),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the owner may write the file.
pub fn is_writable(full: &Path) -> std::io::Result<bool> {
    Ok(std::fs::metadata(full)?.permissions().mode() & 0o200 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(path: &str, client_id: &str, expires_ms: i64) -> Lock {
        Lock {
            lock_id: format!("{path}-lock"),
            path: RelPath::new(path).unwrap(),
            client_id: client_id.into(),
            principal: String::new(),
            holder: String::new(),
            note: String::new(),
            acquired_ms: 0,
            expires_ms,
            ttl_seconds: 90,
            token: 1,
        }
    }

    #[test]
    fn own_locks_are_due_for_refresh_once_a_third_of_their_ttl_has_passed() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let mut locks = Locks::new("me".into(), state, Root::open(dir.path()).unwrap());
        let now = 1_000_000;
        // 90 s of TTL: due once less than 60 s are left.
        locks.granted(lock("fresh.txt", "me", now + 60_000));
        locks.granted(lock("due.txt", "me", now + 59_999));
        locks.granted(lock("theirs.txt", "other", now + 1));
        let due: Vec<_> = locks.due_for_refresh(now).into_iter().map(|l| l.path.to_string()).collect();
        assert_eq!(due, ["due.txt"]);
    }
}
