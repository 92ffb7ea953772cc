//! syncstore: the gRPC API and the domain types that the server
//! (`sync-server`) and the client (`sync-client`) share.
//!
//! # Layout
//! - [`pb`]: code generated from `proto/syncstore/v1` (messages, clients,
//!   servers) and the descriptor set served by reflection.
//! - [`path`]: [`RelPath`], the validated relative path every file is known by.
//! - [`hash`]: [`ContentHash`], the BLAKE3 hash that names content.
//! - [`chunks`]: the content model: chunk lists cut by FastCDC, and runs
//!   that send one against a base both sides know.
//! - [`cli`]: options from a TOML config file, under flags and environment.
//! - [`connect`]: reaching a server: TLS endpoint and bearer token.
//! - [`entry`]: [`Entry`], one path's state in a manifest, and its conversion
//!   from and to the wire type.
//! - [`lock`]: [`Lock`], a lock on one path, and its wire conversion.
//! - [`limits`]: sizes and limits both sides agree on, and the checks of
//!   every bounded field.
//! - [`reason`]: [`Reason`], the machine-readable reason of a refusal.
//! - [`metrics`]: the Prometheus endpoint both programs serve.
//! - [`replication`]: the metadata of writes refused for the replica's sake.
//! - [`backoff`]: [`Backoff`], doubling waits between reconnection attempts.

pub mod backoff;
pub mod chunks;
pub mod cli;
pub mod connect;
pub mod entry;
pub mod hash;
pub mod limits;
pub mod lock;
pub mod metrics;
pub mod path;
pub mod pb;
pub mod reason;
pub mod replication;

pub use backoff::Backoff;
pub use entry::{Content, Entry, EntryError};
pub use hash::{ContentHash, HashError};
pub use lock::Lock;
pub use path::{PathError, RelPath};
pub use reason::Reason;
