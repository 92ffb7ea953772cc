//! The server's error type and its one mapping to gRPC status codes.

use syncstore::{EntryError, HashError, PathError};
use tonic::{Code, Status};

/// The metadata key of a status that says which case it is (see
/// [`syncstore::lock::ERROR_REASON_KEY`]).
pub const REASON_KEY: &str = syncstore::lock::ERROR_REASON_KEY;
const REASON_LOCKED: &str = syncstore::lock::REASON_LOCKED;
const REASON_STALE_LOCK: &str = syncstore::lock::REASON_STALE_LOCK;
const REASON_PATH_CLASH: &str = syncstore::lock::REASON_PATH_CLASH;
const REASON_UPLOAD_INCOMPLETE: &str = syncstore::lock::REASON_UPLOAD_INCOMPLETE;
const REASON_UPLOAD_TOO_SLOW: &str = syncstore::lock::REASON_UPLOAD_TOO_SLOW;
const REASON_UPLOADS_BUSY: &str = syncstore::lock::REASON_UPLOADS_BUSY;
const REASON_DISK_FULL: &str = syncstore::lock::REASON_DISK_FULL;
const REASON_DAMAGED: &str = syncstore::lock::REASON_DAMAGED;

/// What a caller is told when the server's disk (or quota) is full.
const DISK_FULL_MESSAGE: &str =
    "the server's disk is full: nothing was written; writes work again once space is freed on the server";

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
    /// Too big, or too many at once.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server's disk (or quota) is full.
    #[error("{0}")]
    DiskFull(String),
    /// Stored content no longer matches its hash (it was set aside).
    #[error("{0}")]
    DataLoss(String),
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

impl Error {
    /// Whether this is the disk (or a quota) being full, however it was
    /// wrapped on its way here.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull(_) => true,
            Error::Io(e) => io_disk_full(e),
            Error::Sqlite(e) => sqlite_disk_full(e),
            _ => false,
        }
    }
}

/// Out of disk space (ENOSPC) or over quota (EDQUOT), by kind or raw code,
/// also when wrapped: tempfile's errors carry the path and keep only the
/// kind, with the original error as their source.
fn io_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    if matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
    {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| inner as _);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return io_disk_full(io);
        }
        if let Some(sqlite) = inner.downcast_ref::<rusqlite::Error>() {
            return sqlite_disk_full(sqlite);
        }
        source = inner.source();
    }
    false
}

/// SQLite's "database or disk is full" (`SQLITE_FULL`).
fn sqlite_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
}

/// ENOSPC (the same number on Linux, the BSDs and macOS).
const ENOSPC: i32 = 28;
/// EDQUOT: 122 on Linux, 69 on the BSDs and macOS.
const EDQUOT: i32 = if cfg!(target_os = "linux") { 122 } else { 69 };

/// A status with a machine-readable reason in [`REASON_KEY`].
fn with_reason(mut status: Status, reason: &'static str) -> Status {
    status.metadata_mut().insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(reason));
    status
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        if e.is_disk_full() {
            // Logged, once, as a warning: the operator must act, but the
            // server is fine and reads go on.
            tracing::warn!(error = %e, "a write failed: the disk is full");
            return with_reason(Status::resource_exhausted(DISK_FULL_MESSAGE), REASON_DISK_FULL);
        }
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
                return with_reason(Status::failed_precondition(e.to_string()), reason);
            }
            Error::UploadIncomplete(_) => {
                return with_reason(Status::invalid_argument(e.to_string()), REASON_UPLOAD_INCOMPLETE);
            }
            Error::UploadTooSlow(_) => {
                return with_reason(Status::deadline_exceeded(e.to_string()), REASON_UPLOAD_TOO_SLOW);
            }
            Error::UploadsBusy(_) => {
                return with_reason(Status::resource_exhausted(e.to_string()), REASON_UPLOADS_BUSY);
            }
            Error::DataLoss(_) => return with_reason(Status::data_loss(e.to_string()), REASON_DAMAGED),
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) => Code::Unavailable,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::DiskFull(_) => unreachable!("answered above"),
            Error::Sqlite(_) | Error::Io(_) | Error::Config(_) | Error::Internal(_) => {
                // Internals go to the log, not to the caller.
                tracing::error!(error = %e, "request failed");
                return Status::internal("internal server error (see the server's log)");
            }
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn reason(status: &Status) -> Option<&str> {
        syncstore::lock::error_reason(status)
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_however_it_is_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let raw = io::Error::from_raw_os_error(ENOSPC);
        let cases: Vec<Error> = vec![
            Error::Io(io::Error::from_raw_os_error(ENOSPC)),
            Error::Io(io::Error::from_raw_os_error(EDQUOT)),
            Error::Io(io::ErrorKind::StorageFull.into()),
            Error::Io(io::ErrorKind::QuotaExceeded.into()),
            // A path-wrapped error keeps the kind only, the code in its source.
            Error::Io(io::Error::other(raw)),
            Error::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            )),
            Error::DiskFull("the commit failed".into()),
        ];
        for e in cases {
            let shown = format!("{e:?}");
            let status = Status::from(e);
            assert_eq!(status.code(), Code::ResourceExhausted, "{shown}");
            assert_eq!(reason(&status), Some(REASON_DISK_FULL), "{shown}");
        }
        // tempfile's own wrapping of an error, as the blob writer meets it.
        let missing = tempfile::NamedTempFile::new_in(dir.path().join("absent")).unwrap_err();
        assert_eq!(Status::from(Error::Io(missing)).code(), Code::Internal);
        let other = Status::from(Error::Io(io::ErrorKind::PermissionDenied.into()));
        assert_eq!((other.code(), reason(&other)), (Code::Internal, None));
    }

    #[test]
    fn damaged_content_is_data_loss_with_its_reason() {
        let status = Status::from(Error::DataLoss("damaged".into()));
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(reason(&status), Some(REASON_DAMAGED));
    }
}
