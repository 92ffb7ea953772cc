//! The client's error type.

use syncstore::Reason;
use tonic::Code;

/// Result alias for the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while syncing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", describe_status(.0))]
    Rpc(tonic::Status),
    #[error("cannot connect to the server: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    NoAnswer(#[from] syncstore::connect::NoAnswer),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state database: {0}")]
    State(#[from] rusqlite::Error),
    #[error("another sync-client is already running on {0}")]
    Busy(String),
    #[error("the server sent something invalid: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "the synced folder {0} is gone (deleted, moved or unmounted); stopping without propagating any deletion"
    )]
    FolderGone(String),
    #[error("the local file changed while it was being read; will retry")]
    ChangedWhileReading,
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The server refuses writes until its replica is back.
    #[error("not in sync: {0}")]
    WritesRefused(String),
}

impl Error {
    /// The gRPC code, if the server refused the call.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Rpc(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The reason of the server's refusal, if it was one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Rpc(s) => Reason::of(s),
            _ => None,
        }
    }

    /// Whether the server refused a write because someone else locked the
    /// path.
    pub fn is_locked(&self) -> bool {
        self.reason() == Some(Reason::Locked)
    }

    /// Whether the server refused a write because the lock token it carried
    /// is not the path's current lock (or the path's lock needs one).
    pub fn is_stale_lock(&self) -> bool {
        self.reason() == Some(Reason::StaleLock)
    }

    /// Whether the server refused a file where it has a folder (or below a
    /// file).
    pub fn is_path_clash(&self) -> bool {
        self.reason() == Some(Reason::PathClash)
    }

    /// Whether the server refused this client's credentials: no token, an
    /// unknown or removed one, or one without the access needed. Retrying
    /// does not help; a person must act.
    pub fn is_refused(&self) -> bool {
        matches!(self.code(), Some(Code::Unauthenticated | Code::PermissionDenied))
    }

    /// Whether the primary refused a write because its sync replica is
    /// away (nothing written), or did not confirm it (committed on the
    /// primary only).
    pub fn is_replica_refusal(&self) -> bool {
        matches!(self, Error::Rpc(s) if syncstore::replication::is_replica_refusal(s))
    }

    /// Whether the server could not be reached, or did not answer in time
    /// (retry once it is back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::NoAnswer(_)) || self.code() == Some(Code::Unavailable)
    }
}

// By hand rather than `#[from]`: a status is shown by its code and message;
// its transport-level source chain would repeat them at length.
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Rpc(s)
    }
}

fn describe_status(s: &tonic::Status) -> String {
    match s.code() {
        Code::Unavailable if syncstore::replication::is_replica_refusal(s) => {
            format!("the server refused the write: {}", s.message())
        }
        Code::Unavailable => format!("cannot reach the server ({})", s.message()),
        Code::Unauthenticated => format!("the server refused this client's token: {}", s.message()),
        Code::PermissionDenied => format!("the server does not allow this: {}", s.message()),
        Code::ResourceExhausted if Reason::of(s) == Some(Reason::DiskFull) => {
            "the server's disk is full: nothing was stored; the change is sent again once space is freed on the server"
                .into()
        }
        Code::DataLoss => format!("the server's copy is damaged: {}", s.message()),
        code => format!("the server answered {code:?}: {}", s.message()),
    }
}

impl From<syncstore::EntryError> for Error {
    fn from(e: syncstore::EntryError) -> Self {
        Error::Protocol(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(mut status: tonic::Status, reason: Reason) -> Error {
        reason.attach(&mut status);
        Error::Rpc(status)
    }

    #[test]
    fn a_full_disk_on_the_server_is_said_plainly() {
        let e = with_reason(tonic::Status::resource_exhausted("no space"), Reason::DiskFull);
        assert!(e.to_string().starts_with("the server's disk is full"), "{e}");
        let busy = Error::Rpc(tonic::Status::resource_exhausted("too many uploads"));
        assert!(!busy.to_string().contains("disk is full"), "{busy}");
        let damaged = with_reason(tonic::Status::data_loss("content x is damaged"), Reason::Damaged);
        assert!(damaged.to_string().starts_with("the server's copy is damaged"), "{damaged}");
    }
}
