//! What a write refused for replication's sake tells its caller: the
//! metadata a sync-mode primary puts on its `UNAVAILABLE` answers, beside
//! their [`Reason`]:
//! - [`Reason::ReplicaUnavailable`]: the replica is known to be away (not
//!   connected, silent, stuck, or not confirming anything); nothing was
//!   written. Retry once it is back.
//! - [`Reason::ReplicaUnconfirmed`]: the write is committed on the primary
//!   as the version in [`COMMITTED_VERSION_KEY`], but the replica did not
//!   confirm it in time. Sending the same write again (same path, base,
//!   content and client id) is recognised as that write: it answers OK
//!   with that version once the replica holds it.
//!
//! Both name the replica in [`REPLICA_KEY`].

use crate::Reason;

/// Metadata key naming the replica (its URL as the primary was given it).
pub const REPLICA_KEY: &str = "syncstore-replica";
/// Metadata key of the version a write was committed as, when it was.
pub const COMMITTED_VERSION_KEY: &str = "syncstore-committed-version";

/// The version a refused write was nevertheless committed as, if the
/// status says so.
pub fn committed_version(status: &tonic::Status) -> Option<u64> {
    status.metadata().get(COMMITTED_VERSION_KEY)?.to_str().ok()?.parse().ok()
}

/// The replica a refusal names, if it names one.
pub fn replica_of(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(REPLICA_KEY).and_then(|v| v.to_str().ok())
}

/// Whether the status refuses a write because of the replica (either
/// reason above).
pub fn is_replica_refusal(status: &tonic::Status) -> bool {
    matches!(Reason::of(status), Some(Reason::ReplicaUnavailable | Reason::ReplicaUnconfirmed))
}
