//! Replication: the primary streams every committed change, in sequence
//! order and with its content, to one replica ([`primary`]), which applies
//! each durably and acknowledges it ([`replica`]).
//!
//! Invariants:
//! - A replica applies changes strictly in sequence order, each exactly
//!   once (a redelivered seq is skipped, a gap is refused), so its log is a
//!   prefix of the primary's and it never goes ahead of it.
//! - A replica serves one history: a fresh one adopts its primary's, and
//!   after that a primary with another history, or an older epoch, is
//!   refused.
//! - A primary never streams to a replica that holds more than it does: an
//!   empty primary in front of a seeded replica refuses writes instead of
//!   starting a new history that would shadow the replica's.
//! - In sync mode a write is acknowledged only once the replica has
//!   acknowledged its seq (or, past the timeout, it fails with UNAVAILABLE
//!   or degrades to async, as configured, loudly).

pub mod primary;
pub mod replica;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use syncstore::Reason;

use crate::error::{Error, Result};

/// Default time a sync-mode write waits for the replica.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_secs(5);

/// When a primary acknowledges a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Once the replica has it durably.
    Sync,
    /// Once the primary has it durably; the replica follows in the background.
    Async,
}

/// What a sync-mode write does when the replica does not confirm in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTimeout {
    /// Fail the write with UNAVAILABLE (it is committed on the primary and
    /// reaches the replica once it is back).
    Fail,
    /// Acknowledge without the replica until it catches up, saying so in the
    /// log and in `Admin/Status`.
    Degrade,
}

/// A primary's link to its replica.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The replica's address, `http://host:port` (or `https://`).
    pub url: String,
    pub mode: Mode,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// The link's own credential (a `replication` token of the replica)
    /// and TLS settings.
    pub security: syncstore::connect::Security,
}

/// Whether this server takes writes, and if not, why: a replica names its
/// primary; a primary that found a newer epoch or a fuller replica refuses
/// until an operator steps in. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct WriteGate(Arc<Mutex<Option<Refusal>>>);

/// Why writes are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    /// [`Reason::Replica`] or [`Reason::Fenced`].
    reason: Reason,
    message: String,
    /// Where clients write instead, when known.
    primary: Option<String>,
}

impl WriteGate {
    /// Refuses writes with `reason` ([`Reason::Replica`] or
    /// [`Reason::Fenced`]), naming the `primary` clients should write to
    /// when it is known.
    pub fn refuse(&self, reason: Reason, why: impl Into<String>, primary: Option<String>) {
        let refusal = Refusal { reason, message: why.into(), primary };
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref() != Some(&refusal) {
            tracing::warn!(reason = %refusal.message, "refusing writes");
        }
        *g = Some(refusal);
    }

    pub fn allow(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.take().is_some() {
            tracing::info!("accepting writes again");
        }
    }

    /// Why writes are refused, if they are.
    pub fn refusal(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| r.message.clone())
    }

    /// `FAILED_PRECONDITION` with the refusal's reason (and primary) if
    /// writes are refused.
    pub fn check(&self) -> Result<()> {
        match self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            Some(Refusal { reason, message, primary }) => {
                Err(Error::WritesRefused { reason, message, primary })
            }
            None => Ok(()),
        }
    }
}
