//! The server's error type and its one mapping to gRPC status codes, each
//! refusal with its machine-readable [`Reason`] in metadata.

use syncstore::{
    EntryError, HashError, PathError, Reason,
    limits::MAX_ERROR_MESSAGE_BYTES,
    reason::{PRIMARY_KEY, REASON_KEY},
};
use tonic::{Code, Status, metadata::MetadataValue};

/// Result alias for the server library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong serving a request or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: wrong message order, a chunk too big.
    #[error("{0}")]
    InvalidArgument(String),
    /// A path that is not a valid relative path.
    #[error("{0}")]
    InvalidPath(String),
    /// A hash that is not 32 bytes.
    #[error("{0}")]
    InvalidHash(String),
    /// A string or number out of its bounds (see `syncstore::limits`).
    #[error("{0}")]
    InvalidField(String),
    /// A symbolic link target no client could create.
    #[error("{0}")]
    BadSymlink(String),
    /// The content does not match the header's size or hash.
    #[error("{0}")]
    ContentMismatch(String),
    /// The path (or version) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The lock named is no longer held.
    #[error("{0}")]
    LockNotHeld(String),
    /// The change was based on a version that is no longer current.
    #[error("{path} is at version {current}{}, but the change was based on version {base}",
        if *.deleted { " (deleted)" } else { "" })]
    VersionConflict { path: String, current: u64, deleted: bool, base: u64 },
    /// This server refuses writes: a replica ([`Reason::Replica`]) or a
    /// primary that must wait for an operator ([`Reason::Fenced`]).
    #[error("{message}")]
    WritesRefused {
        reason: Reason,
        message: String,
        /// Where clients write instead, when known.
        primary: Option<String>,
    },
    /// A header-only upload of content the caller's namespace does not hold.
    #[error("{0}")]
    UnknownContent(String),
    /// The request cannot be served in the server's current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The path is locked by someone else.
    #[error("{0}")]
    Locked(String),
    /// The write carries a lock token that is not the path's current lock.
    #[error("{0}")]
    StaleLock(String),
    /// A file where a folder is (or below a file).
    #[error("{0}")]
    PathClash(String),
    /// A file over the server's size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The server takes no more of this now (upload slots).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down, or cannot confirm a write in time.
    #[error("{0}")]
    Unavailable(String),
    /// The client took too long (e.g. an upload went silent).
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server's own configuration is wrong (it does not start).
    #[error("{0}")]
    Config(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// A header-only upload of content the caller's namespace does not
    /// hold: the client must send it.
    pub(crate) fn no_content(hash: &syncstore::ContentHash) -> Self {
        Self::UnknownContent(format!("the server holds no content with hash {hash} here: send the content"))
    }

    /// The code and reason a caller sees; `None` for internals, which are
    /// logged and hidden.
    fn code_and_reason(&self) -> Option<(Code, Reason)> {
        Some(match self {
            Error::InvalidArgument(_) => (Code::InvalidArgument, Reason::InvalidArgument),
            Error::InvalidPath(_) => (Code::InvalidArgument, Reason::InvalidPath),
            Error::InvalidHash(_) => (Code::InvalidArgument, Reason::InvalidHash),
            Error::InvalidField(_) => (Code::InvalidArgument, Reason::InvalidField),
            Error::BadSymlink(_) => (Code::InvalidArgument, Reason::InvalidSymlink),
            Error::ContentMismatch(_) => (Code::InvalidArgument, Reason::ContentMismatch),
            Error::NotFound(_) => (Code::NotFound, Reason::NotFound),
            Error::LockNotHeld(_) => (Code::NotFound, Reason::LockNotHeld),
            Error::VersionConflict { .. } => (Code::Aborted, Reason::VersionConflict),
            Error::WritesRefused { reason, .. } => (Code::FailedPrecondition, *reason),
            Error::UnknownContent(_) => (Code::FailedPrecondition, Reason::UnknownContent),
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, Reason::FailedPrecondition),
            Error::Locked(_) => (Code::FailedPrecondition, Reason::Locked),
            Error::StaleLock(_) => (Code::FailedPrecondition, Reason::StaleLock),
            Error::PathClash(_) => (Code::FailedPrecondition, Reason::PathClash),
            Error::TooLarge(_) => (Code::ResourceExhausted, Reason::TooLarge),
            Error::ResourceExhausted(_) => (Code::ResourceExhausted, Reason::Busy),
            Error::Unavailable(_) => (Code::Unavailable, Reason::Unavailable),
            Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, Reason::DeadlineExceeded),
            Error::Io(io) if is_disk_full(io) => (Code::ResourceExhausted, Reason::DiskFull),
            Error::Sqlite(_) | Error::Io(_) | Error::Config(_) | Error::Internal(_) => return None,
        })
    }
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Self {
        Self::InvalidPath(e.to_string())
    }
}

impl From<HashError> for Error {
    fn from(e: HashError) -> Self {
        Self::InvalidHash(e.to_string())
    }
}

impl From<EntryError> for Error {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Path(p) => p.into(),
            EntryError::Hash(h) => h.into(),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("background task failed: {e}"))
    }
}

/// Out of disk space (ENOSPC) or over quota (EDQUOT).
fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(28 | 122))
}

/// A status with `reason` in its metadata.
pub fn refusal(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    let mut status = Status::new(code, cut(message.into()));
    reason.attach(&mut status);
    status
}

/// `message`, cut to [`MAX_ERROR_MESSAGE_BYTES`] at a character boundary:
/// a message quotes what the client sent (paths, notes), and travels in a
/// header.
fn cut(mut message: String) -> String {
    const MARK: &str = " [...]";
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut end = MAX_ERROR_MESSAGE_BYTES - MARK.len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(MARK);
    }
    message
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let Some((code, reason)) = e.code_and_reason() else {
            // Internals go to the log, not to the caller.
            tracing::error!(error = %e, "request failed");
            return refusal(Code::Internal, Reason::Internal, "internal server error (see the server's log)");
        };
        let message = match (&e, reason) {
            (_, Reason::DiskFull) => "the server's disk is full".to_owned(),
            _ => e.to_string(),
        };
        let mut status = refusal(code, reason, message);
        if let Error::WritesRefused { primary: Some(url), .. } = &e
            && let Ok(v) = MetadataValue::try_from(url.as_str())
        {
            status.metadata_mut().insert(PRIMARY_KEY, v);
        }
        debug_assert!(status.metadata().contains_key(REASON_KEY));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_carries_a_reason_and_a_bounded_message() {
        let long = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
        let errors = [
            Error::invalid(long.clone()),
            Error::NotFound("x".into()),
            Error::VersionConflict { path: "a".into(), current: 2, deleted: false, base: 1 },
            Error::WritesRefused {
                reason: Reason::Replica,
                message: "a replica".into(),
                primary: Some("http://p:1".into()),
            },
            Error::Internal("secret detail".into()),
            Error::Io(std::io::Error::from_raw_os_error(28)),
        ];
        for e in errors {
            let s = Status::from(e);
            assert!(Reason::of(&s).is_some(), "{s:?} has no reason");
            assert!(s.message().len() <= MAX_ERROR_MESSAGE_BYTES, "{} bytes", s.message().len());
            assert!(!s.message().contains("secret"));
        }
        let replica = Status::from(Error::WritesRefused {
            reason: Reason::Replica,
            message: "a replica".into(),
            primary: Some("http://p:1".into()),
        });
        assert_eq!(syncstore::reason::primary_of(&replica), Some("http://p:1"));
        let full = Status::from(Error::Io(std::io::Error::from_raw_os_error(28)));
        assert_eq!((full.code(), Reason::of(&full)), (Code::ResourceExhausted, Some(Reason::DiskFull)));
    }
}
