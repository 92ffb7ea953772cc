//! Durable storage of one data folder, behind seams a second backend plugs
//! into:
//!
//! ```text
//!   service, feed, admin, scrub, replication
//!                     │
//!                     ▼
//!          Store  (journal.rs: seqs, group commit, content before
//!                  metadata, holds, broadcast; runs rules.rs)
//!           │               │                 ▲
//!           ▼               ▼                 │ implements
//!      MetaStore       ContentStore       ChangeFeed
//!      (meta.rs)       (content.rs)       (feed.rs)
//!           ▲               ▲
//!     sqlite/ (SQLite)  blobdir/ (blob folder)      ← the embedded backend
//! ```
//!
//! - [`change`]: the domain types of a change, no wire format.
//! - [`journal`]: [`Store`], the one handle callers use; async throughout.
//! - `meta`, `content`, `feed`: the traits. The async boundary is the
//!   trait: a blocking backend does its own `spawn_blocking`.
//! - `rules`: the decisions (base version, lock write check, lock grant /
//!   refresh / end, path clash) as pure functions over fetched facts.
//! - `identity`: the server's place in its replicated history.
//! - [`retention`]: the retention policy and the pure planner of what
//!   pruning removes; `prune`: the store's side of pruning.
//! - `retry`: recognising a write sent again.
//! - `version`: the types of version history; `history`: the history
//!   reads and writes of [`Store`].
//! - `chunked`: content larger than one chunk, received as chunk blobs
//!   and read back from its recipe.
//! - `memory` (tests only): an in-memory backend; `suite`: the journal's
//!   tests, run over both backends.

mod blobdir;
mod bucket;
mod change;
mod chunked;
mod content;
mod feed;
mod history;
mod identity;
mod journal;
#[cfg(test)]
mod memory;
mod meta;
mod migrate;
mod postgres;
mod prune;
pub mod retention;
mod retry;
pub(crate) mod rules;
mod share;
mod sqlite;
#[cfg(test)]
mod suite;
mod version;

pub use change::{Actor, Change, LockEnd, What};
pub(crate) use change::{Delete, LockRequest, Put, Replicated};
pub(crate) use content::{ContentReader, ContentUpload, StagedContent, Verdict};
pub(crate) use feed::ChangeFeed;
pub use history::{MAX_LABEL_BYTES, MAX_MOVE_HOPS, SERVER_PRINCIPAL, check_label_name};
pub use identity::Identity;
pub use journal::{Store, StoreOptions};
pub(crate) use meta::{Duty, HeldDuty};
pub use migrate::{MigrationSummary, migrate};
pub use share::Share;
pub use version::{
    Glob, HistoryBatch, HistoryChange, HistoryOutcome, HistoryWrite, Label, MAX_GLOB_BYTES,
    MAX_PRUNED_PER_CHANGE, Point, Version, VersionKind, VersionNote,
};

/// The namespace of an open server's callers (no token file); with tokens,
/// each read-only or read-write token names its own, which may be this one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Rows read per page by `List` and by change-log replays.
pub(crate) const PAGE_SIZE: usize = 1000;

/// Rows a one-level listing reads after it has sought past a subfolder
/// (doubling while no other subfolder follows): the next rows may well be
/// that subfolder's neighbours' contents, which it would read for nothing.
pub(crate) const LEVEL_PROBE: usize = 16;
