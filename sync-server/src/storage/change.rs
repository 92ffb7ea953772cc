//! The domain types of a change: what was committed ([`Change`], [`What`]),
//! what a write or a lock call asks for ([`Put`], [`Delete`],
//! [`LockRequest`]), who asks ([`Actor`]), and a change received from the
//! primary ([`Replicated`]). No wire format and no backend here: `wire.rs`
//! converts them to and from `pb`, the backends store them.

use syncstore::{Content, Entry, Lock, RelPath};

use super::content::StagedContent;

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub namespace: String,
    pub what: What,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A file was written or deleted: the path's new state (a tombstone for
    /// a deletion).
    File(Entry),
    /// A lock was granted or refreshed: its new state.
    Lock(Lock),
    /// A lock ended, why, and by whom (no one for an expiry).
    Unlock { lock: Lock, ended: LockEnd, by: Actor },
}

impl Change {
    /// The change that makes `entry` (whose version is its seq) the path's
    /// state in namespace `ns`.
    pub(crate) fn file(ns: &str, entry: Entry) -> Self {
        Change { seq: entry.version, namespace: ns.to_owned(), what: What::File(entry) }
    }

    /// The file entry, for a file change.
    pub fn entry(&self) -> Option<&Entry> {
        match &self.what {
            What::File(e) => Some(e),
            _ => None,
        }
    }

    /// The file entry of a change known to be a file change.
    pub(crate) fn into_entry(self) -> Entry {
        match self.what {
            What::File(e) => e,
            other => unreachable!("not a file change: {other:?}"),
        }
    }

    /// The path the change is about.
    pub fn path(&self) -> &RelPath {
        match &self.what {
            What::File(e) => &e.path,
            What::Lock(l) | What::Unlock { lock: l, .. } => &l.path,
        }
    }

    /// The client that made the change.
    pub fn client_id(&self) -> &str {
        match &self.what {
            What::File(e) => &e.client_id,
            What::Lock(l) => &l.client_id,
            What::Unlock { by, .. } => &by.client_id,
        }
    }
}

/// Why a lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEnd {
    Released,
    Expired,
    Broken,
}

/// Who makes a write or a lock change: the caller's principal (the name of
/// its token, "anonymous" on a server without tokens) and the client id it
/// sent. Together they name a lock's holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub principal: String,
    pub client_id: String,
}

impl Actor {
    pub fn new(principal: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self { principal: principal.into(), client_id: client_id.into() }
    }

    /// Whether this is the holder of `lock`. A lock stored before locks
    /// recorded their principal (an empty one) is held by its client id
    /// alone, until it ends.
    pub fn holds(&self, lock: &Lock) -> bool {
        lock.client_id == self.client_id && (lock.principal.is_empty() || lock.principal == self.principal)
    }
}

/// What a `Lock` call asks for.
#[derive(Debug, Clone)]
pub(crate) struct LockRequest {
    pub(crate) path: RelPath,
    pub(crate) ttl_seconds: u32,
    pub(crate) note: String,
    pub(crate) who: Actor,
    pub(crate) holder: String,
}

/// A change received from the primary, with its content if it came along.
#[derive(Debug)]
pub(crate) struct Replicated {
    pub(crate) change: Change,
    /// The content, received and checked, not in place yet.
    pub(crate) staged: Option<Box<dyn StagedContent>>,
    /// The primary no longer kept the content (a later change replaced it).
    pub(crate) content_gone: bool,
}

/// What an upload wants to become.
#[derive(Debug, Clone)]
pub(crate) struct Put {
    pub(crate) path: RelPath,
    pub(crate) content: Content,
    pub(crate) base_version: u64,
    /// Who writes: the entry records its client id.
    pub(crate) who: Actor,
    /// The token of the writer's lock on the path (0 for none).
    pub(crate) lock_token: u64,
}

/// What a deletion wants.
#[derive(Debug, Clone)]
pub(crate) struct Delete {
    pub(crate) path: RelPath,
    pub(crate) base_version: u64,
    /// Who deletes: the tombstone records its client id.
    pub(crate) who: Actor,
    /// The token of the writer's lock on the path (0 for none).
    pub(crate) lock_token: u64,
}
