//! The domain types of a change: what was committed ([`Change`], [`What`]),
//! what a write or a lock call asks for ([`Put`], [`Delete`],
//! [`LockRequest`]), who asks ([`Actor`]), and a change received from the
//! primary ([`Replicated`]). No wire format and no backend here: `wire.rs`
//! converts them to and from `pb`, the backends store them. The types of
//! version history are `version.rs`'s.

use syncstore::{Content, Entry, Lock, RelPath};

use super::content::StagedContent;
use super::version::{HistoryChange, VersionNote};

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
    /// a deletion), and what its version records beyond it.
    File(Entry, VersionNote),
    /// A lock was granted or refreshed: its new state.
    Lock(Lock),
    /// A lock ended, why, and by whom (no one for an expiry).
    Unlock { lock: Lock, ended: LockEnd, by: Actor },
    /// A history-only change (a label, a pin, retention, a prune):
    /// replicated, never sent to clients.
    History(HistoryChange),
}

impl Change {
    /// The change that makes `entry` (whose version is its seq) the path's
    /// state in namespace `ns`, its version recording `note`.
    pub(crate) fn file(ns: &str, entry: Entry, note: VersionNote) -> Self {
        Change { seq: entry.version, namespace: ns.to_owned(), what: What::File(entry, note) }
    }

    /// The file entry, for a file change.
    pub fn entry(&self) -> Option<&Entry> {
        match &self.what {
            What::File(e, _) => Some(e),
            _ => None,
        }
    }

    /// The version note, for a file change.
    pub fn note(&self) -> Option<&VersionNote> {
        match &self.what {
            What::File(_, n) => Some(n),
            _ => None,
        }
    }

    /// The file entry of a change known to be a file change.
    pub(crate) fn into_entry(self) -> Entry {
        match self.what {
            What::File(e, _) => e,
            other => unreachable!("not a file change: {other:?}"),
        }
    }

    /// The path the change is about: a file's or a lock's (none for a
    /// history-only change).
    pub fn path(&self) -> Option<&RelPath> {
        match &self.what {
            What::File(e, _) => Some(&e.path),
            What::Lock(l) | What::Unlock { lock: l, .. } => Some(&l.path),
            What::History(_) => None,
        }
    }

    /// The client that made the change (empty for a history-only change).
    pub fn client_id(&self) -> &str {
        match &self.what {
            What::File(e, _) => &e.client_id,
            What::Lock(l) => &l.client_id,
            What::Unlock { by, .. } => &by.client_id,
            What::History(_) => "",
        }
    }

    /// Whether clients see this change (`Subscribe`): file and lock
    /// changes do, history-only ones do not.
    pub fn for_clients(&self) -> bool {
        !matches!(self.what, What::History(_))
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
    /// The client's hint that this is the file that was at this path,
    /// moved (same content).
    pub(crate) moved_from: Option<RelPath>,
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
