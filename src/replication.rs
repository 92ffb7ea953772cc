//! What a write refused for replication's sake tells its caller: the
//! metadata a sync-mode primary puts on its `UNAVAILABLE` answers.
//!
//! Both carry [`crate::lock::ERROR_REASON_KEY`] and [`REPLICA_KEY`]:
//! - [`REASON_REPLICA_UNAVAILABLE`]: the replica is known to be away
//!   (not connected, silent, or not confirming anything); nothing was
//!   written. Retry once it is back.
//! - [`REASON_REPLICA_UNCONFIRMED`]: the write is committed on the primary
//!   as the version in [`COMMITTED_VERSION_KEY`], but the replica did not
//!   confirm it in time. Sending the same write again (same path, base,
//!   content and client id) is recognised as that write: it answers OK
//!   with that version once the replica holds it.

/// The replica is away; nothing was written.
pub const REASON_REPLICA_UNAVAILABLE: &str = "replica-unavailable";
/// Committed on the primary, not confirmed by the replica.
pub const REASON_REPLICA_UNCONFIRMED: &str = "replica-unconfirmed";
/// Metadata key naming the replica (its URL as the primary was given it).
pub const REPLICA_KEY: &str = "syncstore-replica";
/// Metadata key of the version a write was committed as, when it was.
pub const COMMITTED_VERSION_KEY: &str = "syncstore-committed-version";

/// The version a refused write was nevertheless committed as, if the
/// status says so.
pub fn committed_version(status: &tonic::Status) -> Option<u64> {
    status.metadata().get(COMMITTED_VERSION_KEY)?.to_str().ok()?.parse().ok()
}

/// Whether the status refuses a write because of the replica (either
/// reason above).
pub fn is_replica_refusal(status: &tonic::Status) -> bool {
    matches!(crate::lock::error_reason(status), Some(REASON_REPLICA_UNAVAILABLE | REASON_REPLICA_UNCONFIRMED))
}
