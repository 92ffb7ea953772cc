//! The server's error type and its one mapping to gRPC status codes.

use syncstore::{EntryError, HashError, PathError};
use tonic::{Code, Status};

/// The metadata key of a FAILED_PRECONDITION that says which one it is.
pub const REASON_KEY: &str = syncstore::lock::ERROR_REASON_KEY;
const REASON_LOCKED: &str = syncstore::lock::REASON_LOCKED;
const REASON_STALE_LOCK: &str = syncstore::lock::REASON_STALE_LOCK;
const REASON_PATH_CLASH: &str = syncstore::lock::REASON_PATH_CLASH;
const REASON_UPLOAD_INCOMPLETE: &str = syncstore::lock::REASON_UPLOAD_INCOMPLETE;
const REASON_UPLOAD_TOO_SLOW: &str = syncstore::lock::REASON_UPLOAD_TOO_SLOW;
const REASON_UPLOADS_BUSY: &str = syncstore::lock::REASON_UPLOADS_BUSY;

/// Result alias for the server library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong serving a request or running the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad path, hash or size, wrong message order.
    #[error("{0}")]
    InvalidArgument(String),
    /// The path (or version) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The change was based on a version that is no longer current.
    #[error("{path} is at version {current}{}, but the change was based on version {base}",
        if *.deleted { " (deleted)" } else { "" })]
    VersionConflict { path: String, current: u64, deleted: bool, base: u64 },
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
    /// Too big, or the disk is full.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The client took too long (e.g. an upload went silent).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// An upload stream ended without its end marker: nothing is committed.
    #[error("{0}")]
    UploadIncomplete(String),
    /// An upload went silent, or fell below the minimum rate.
    #[error("{0}")]
    UploadTooSlow(String),
    /// No upload slot came free in time.
    #[error("{0}")]
    UploadsBusy(String),
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
        Self::FailedPrecondition(format!(
            "the server holds no content with hash {hash} here: send the content"
        ))
    }
}

impl From<PathError> for Error {
    fn from(e: PathError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

impl From<HashError> for Error {
    fn from(e: HashError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

impl From<EntryError> for Error {
    fn from(e: EntryError) -> Self {
        Self::InvalidArgument(e.to_string())
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

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::VersionConflict { .. } => Code::Aborted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Locked(_) | Error::StaleLock(_) | Error::PathClash(_) => {
                let reason = match &e {
                    Error::Locked(_) => REASON_LOCKED,
                    Error::StaleLock(_) => REASON_STALE_LOCK,
                    _ => REASON_PATH_CLASH,
                };
                let mut status = Status::failed_precondition(e.to_string());
                status.metadata_mut().insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(reason));
                return status;
            }
            Error::UploadIncomplete(_) | Error::UploadTooSlow(_) | Error::UploadsBusy(_) => {
                let (code, reason) = match &e {
                    Error::UploadIncomplete(_) => (Code::InvalidArgument, REASON_UPLOAD_INCOMPLETE),
                    Error::UploadTooSlow(_) => (Code::DeadlineExceeded, REASON_UPLOAD_TOO_SLOW),
                    _ => (Code::ResourceExhausted, REASON_UPLOADS_BUSY),
                };
                let mut status = Status::new(code, e.to_string());
                status.metadata_mut().insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(reason));
                return status;
            }
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Io(io) if is_disk_full(io) => {
                return Status::resource_exhausted("the server's disk is full");
            }
            Error::Sqlite(_) | Error::Io(_) | Error::Config(_) | Error::Internal(_) => {
                // Internals go to the log, not to the caller.
                tracing::error!(error = %e, "request failed");
                return Status::internal("internal server error (see the server's log)");
            }
        };
        Status::new(code, e.to_string())
    }
}
