//! The server, as the engine sees it: the [`Remote`] trait of typed
//! operations on domain values (entries, locks, change events, refusals).
//! [`grpc`] is the one wire module that speaks the protocol; a second,
//! in-memory implementation ([`memory`]) lets the engine be tested without
//! a network.
//!
//! Every server refusal reaches the engine as a [`Refused`], decoded once
//! (from the `syncstore-reason` metadata) on the wire side.

use std::{collections::HashMap, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};
use syncstore::{ContentHash, Entry, Lock, RelPath, chunks::Run};

use crate::{error::Result, plan::Local};

pub mod grpc;
pub mod history;
#[cfg(test)]
pub(crate) mod memory;

pub use grpc::GrpcRemote;

/// Typed operations on the server. Object safe, so that the engine holds
/// any implementation behind an `Arc<dyn Remote>`.
pub trait Remote: std::fmt::Debug + Send + Sync {
    /// The id this client writes under.
    fn client_id(&self) -> &str;

    /// Whether more than one server was given (a primary and its replica).
    fn has_fallback(&self) -> bool;

    /// Describes the active server's history, after choosing the active
    /// server (see [`GrpcRemote`]).
    fn info(&self) -> BoxFuture<'_, Result<ServerInfo>>;

    /// The path's entry, `None` if the server never had it.
    fn stat<'a>(&'a self, path: &'a RelPath) -> BoxFuture<'a, Result<Option<Entry>>>;

    /// The whole manifest, tombstones included. Entries whose path or hash
    /// is not valid are left out (and logged).
    fn manifest(&self) -> BoxFuture<'_, Result<HashMap<RelPath, Entry>>>;

    /// Offers `upload` by its header alone, for the server to reuse
    /// content it already holds under the hash. `None`: the server does not
    /// hold it; send it with [`Remote::upload`].
    fn upload_reusing<'a>(&'a self, upload: &'a Upload) -> BoxFuture<'a, Result<Option<Entry>>>;

    /// Uploads `upload`, its content read from `body`. The server stores
    /// it only once [`Body::End`] came; a `body` that closes without it
    /// leaves the call open until it is dropped (cancelled), so a cut
    /// stream never passes for a complete file.
    fn upload<'a>(
        &'a self,
        upload: &'a Upload,
        body: tokio::sync::mpsc::Receiver<Body>,
    ) -> BoxFuture<'a, Result<Entry>>;

    /// The content of `entry` (that exact version) as a stream of pieces,
    /// after the server confirmed that version and hash. Each chunk is
    /// at most [`syncstore::limits::MAX_CHUNK`] bytes (larger ones are
    /// refused as errors of the stream). With `have` (content this client
    /// holds and knows the chunk list of), the server may send the content
    /// as runs against that list; runs it was not asked for are refused as
    /// errors of the stream.
    fn download<'a>(
        &'a self,
        entry: &'a Entry,
        have: Option<ContentHash>,
    ) -> BoxFuture<'a, Result<PieceStream>>;

    /// Deletes `path` at `base_version`, carrying the token of the lock this
    /// client holds on it (0 for none). Returns the tombstone.
    fn delete<'a>(
        &'a self,
        path: &'a RelPath,
        base_version: u64,
        lock_token: u64,
    ) -> BoxFuture<'a, Result<Entry>>;

    /// Locks `path` for this client (or refreshes its own lock on it).
    fn lock<'a>(
        &'a self,
        path: &'a RelPath,
        ttl: Duration,
        note: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Lock>>;

    /// Pushes the expiry of this client's lock `lock_id` to now + `ttl`.
    fn refresh_lock<'a>(&'a self, lock_id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lock>>;

    /// Releases lock `lock_id`; with `force`, even someone else's.
    fn unlock<'a>(&'a self, lock_id: &'a str, force: bool) -> BoxFuture<'a, Result<Lock>>;

    /// The live locks on `prefix` or below ("" for all), in path order.
    fn list_locks<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Lock>>>;

    /// The committed changes after `after_seq`, then the live ones, as they
    /// come. The stream ends (or fails) when the subscription breaks.
    fn subscribe(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<RemoteEvent>>>>;

    /// The live lock on exactly `path`, if any.
    fn lock_on<'a>(&'a self, path: &'a RelPath) -> BoxFuture<'a, Result<Option<Lock>>> {
        Box::pin(
            async move { Ok(self.list_locks(path.as_str()).await?.into_iter().find(|l| l.path == *path)) },
        )
    }
}

/// A download's content, piece by piece.
pub type PieceStream = BoxStream<'static, Result<Piece>>;

/// A piece of a download's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The next bytes: of the content, or (after runs) of the new chunks
    /// the runs named, concatenated.
    Chunk(Vec<u8>),
    /// The next stretch of the content as runs against the content the
    /// download named as held (at most
    /// [`syncstore::chunks::MAX_RUNS_PER_MESSAGE`]).
    Runs(Vec<Run>),
}

/// What the engine needs to know of the active server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The server's history: bases and cursors of another mean nothing.
    pub history_id: String,
    /// The last committed change.
    pub head_seq: u64,
    /// Whether the server takes writes (a replica does not).
    pub primary: bool,
    /// Whether the server takes writes from this client's token now (a
    /// read-only token, or a server refusing every write, does not).
    pub token_writes: bool,
}

/// One upload's header: what is sent, and what it is based on.
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: RelPath,
    /// What the local file hashed to; the content must match it.
    pub content: Local,
    /// The version the change is based on (0 for a new file).
    pub base_version: u64,
    /// The token of this client's lock on the path (0 for none).
    pub lock_token: u64,
    /// Content the server holds whose chunk list both sides know: the
    /// body is then runs against it, with the bytes of new chunks only.
    pub base_hash: Option<ContentHash>,
    /// The path this file was at before a move here (same content, its
    /// old name deleted in the folder), for the server's history to
    /// follow the file. A hint: the server checks it.
    pub moved_from: Option<RelPath>,
}

/// A message of an upload's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The next bytes of the content (of its new chunks, in an upload as
    /// runs).
    Chunk(Vec<u8>),
    /// Only in an upload with a base: the next stretch of the content as
    /// runs against the base; the bytes of its new chunks follow before
    /// the next runs or the end (at most
    /// [`syncstore::chunks::MAX_RUNS_PER_MESSAGE`]).
    Runs(Vec<Run>),
    /// The content is complete and as announced.
    End,
}

/// A committed change, as the subscription reports it.
#[derive(Debug, Clone)]
pub enum RemoteEvent {
    /// The server cannot replay from the cursor: sync everything again.
    Reset { seq: u64 },
    /// A file was written or deleted. `None`: the server sent an entry this
    /// client refuses (its path or hash is not valid); skip it.
    Entry { seq: u64, entry: Option<Entry> },
    /// A lock was granted (or refreshed).
    Locked { seq: u64, lock: Lock },
    /// A lock ended (released, broken or expired).
    Unlocked { seq: u64, lock: Lock },
    /// An event this client does not understand (or a lock event it
    /// refuses): only its position counts.
    Skipped { seq: u64 },
}

impl RemoteEvent {
    /// The event's position in the server's change log.
    pub fn seq(&self) -> u64 {
        match self {
            RemoteEvent::Reset { seq }
            | RemoteEvent::Entry { seq, .. }
            | RemoteEvent::Locked { seq, .. }
            | RemoteEvent::Unlocked { seq, .. }
            | RemoteEvent::Skipped { seq } => *seq,
        }
    }
}

/// Why the server refused a call, decoded once from its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The write's base version is not the current version.
    VersionConflict,
    /// The path is locked by someone else.
    Locked,
    /// The write's lock token is not the path's current lock.
    StaleLock,
    /// A file where a folder is, or below a file.
    PathClash,
    /// A header-only upload of content the server does not hold.
    UnknownContent,
    /// An upload as runs against a base the server cannot use here: send
    /// it plain.
    UnknownBase,
    /// No such path or version, or the lock is no longer held.
    NotFound,
    /// This server is a replica, or a primary fenced off: it takes no
    /// writes (another server may).
    NotWritable,
    /// Anything else the server's state forbids for now.
    Precondition,
    /// A sync-mode primary's replica is away or did not confirm the
    /// write: retry once it is back.
    ReplicaAway,
    /// The server is away, shutting down, or broke the call off.
    Unavailable,
    /// The server refuses this client's credentials, or their access:
    /// retrying does not help; a person must act.
    Credentials,
    /// The server's disk is full: nothing was stored.
    DiskFull,
    /// The server's copy of the content is damaged.
    Damaged,
    /// The request is invalid (INVALID_ARGUMENT: bad input, content not
    /// as its header announced, or messages the server does not take).
    Invalid,
    /// Anything else (too large, busy, internal).
    Other,
}

impl Refused {
    /// Whether the refusal means the plan was made from facts that changed
    /// meanwhile: planning the path again from fresh facts may succeed.
    pub fn is_race(self) -> bool {
        matches!(
            self,
            Refused::VersionConflict
                | Refused::Locked
                | Refused::StaleLock
                | Refused::PathClash
                | Refused::UnknownContent
                | Refused::NotFound
                | Refused::NotWritable
                | Refused::Precondition
        )
    }
}
