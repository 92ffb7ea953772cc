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
    /// No such version of the path is kept (never made, or pruned).
    #[error("{0}")]
    UnknownVersion(String),
    /// The namespace has no label of that name.
    #[error("{0}")]
    UnknownLabel(String),
    /// A time before the first version the namespace keeps.
    #[error("{0}")]
    BeforeHistory(String),
    /// A label of that name exists already.
    #[error("{0}")]
    LabelExists(String),
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
    /// An upload sent as runs against a base the server cannot use: the
    /// namespace does not refer to it, or no chunk list is kept for it.
    #[error("{0}")]
    UnknownBase(String),
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
    /// The server's disk (or quota) is full.
    #[error("{0}")]
    DiskFull(String),
    /// Stored content no longer matches its hash (it was set aside).
    #[error("{0}")]
    DataLoss(String),
    /// The server is shutting down, or cannot confirm a write in time.
    #[error("{0}")]
    Unavailable(String),
    /// Sync mode, failing on timeout: the replica is known to be away, so
    /// the write was refused before anything was written.
    #[error("{why}")]
    ReplicaUnavailable { replica: String, why: String },
    /// Sync mode: the write is committed on the primary as change `seq`,
    /// but the replica did not confirm it.
    #[error("{why}")]
    Unconfirmed { replica: String, seq: u64, why: String },
    /// The client took too long (an upload went silent, or fell below the
    /// minimum rate).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// An upload stream ended without its end marker: nothing is committed.
    #[error("{0}")]
    UploadIncomplete(String),
    /// The storage backend failed (its database or its content store).
    #[error("storage error: {0}")]
    Storage(#[from] StorageError),
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
        if self.is_disk_full() {
            return Some((Code::ResourceExhausted, Reason::DiskFull));
        }
        Some(match self {
            Error::InvalidArgument(_) => (Code::InvalidArgument, Reason::InvalidArgument),
            Error::InvalidPath(_) => (Code::InvalidArgument, Reason::InvalidPath),
            Error::InvalidHash(_) => (Code::InvalidArgument, Reason::InvalidHash),
            Error::InvalidField(_) => (Code::InvalidArgument, Reason::InvalidField),
            Error::BadSymlink(_) => (Code::InvalidArgument, Reason::InvalidSymlink),
            Error::ContentMismatch(_) => (Code::InvalidArgument, Reason::ContentMismatch),
            Error::NotFound(_) => (Code::NotFound, Reason::NotFound),
            Error::LockNotHeld(_) => (Code::NotFound, Reason::LockNotHeld),
            Error::UnknownVersion(_) => (Code::NotFound, Reason::UnknownVersion),
            Error::UnknownLabel(_) => (Code::NotFound, Reason::UnknownLabel),
            Error::BeforeHistory(_) => (Code::OutOfRange, Reason::BeforeHistory),
            Error::LabelExists(_) => (Code::AlreadyExists, Reason::LabelExists),
            Error::VersionConflict { .. } => (Code::Aborted, Reason::VersionConflict),
            Error::WritesRefused { reason, .. } => (Code::FailedPrecondition, *reason),
            Error::UnknownContent(_) => (Code::FailedPrecondition, Reason::UnknownContent),
            Error::UnknownBase(_) => (Code::FailedPrecondition, Reason::UnknownBase),
            Error::FailedPrecondition(_) => (Code::FailedPrecondition, Reason::FailedPrecondition),
            Error::Locked(_) => (Code::FailedPrecondition, Reason::Locked),
            Error::StaleLock(_) => (Code::FailedPrecondition, Reason::StaleLock),
            Error::PathClash(_) => (Code::FailedPrecondition, Reason::PathClash),
            Error::TooLarge(_) => (Code::ResourceExhausted, Reason::TooLarge),
            Error::ResourceExhausted(_) => (Code::ResourceExhausted, Reason::Busy),
            Error::DiskFull(_) => (Code::ResourceExhausted, Reason::DiskFull),
            Error::DataLoss(_) => (Code::DataLoss, Reason::Damaged),
            Error::Unavailable(_) => (Code::Unavailable, Reason::Unavailable),
            Error::ReplicaUnavailable { .. } => (Code::Unavailable, Reason::ReplicaUnavailable),
            Error::Unconfirmed { .. } => (Code::Unavailable, Reason::ReplicaUnconfirmed),
            Error::DeadlineExceeded(_) => (Code::DeadlineExceeded, Reason::DeadlineExceeded),
            Error::UploadIncomplete(_) => (Code::InvalidArgument, Reason::UploadIncomplete),
            Error::Storage(_) | Error::Io(_) | Error::Config(_) | Error::Internal(_) => return None,
        })
    }
}

/// A failure of the storage backend, in terms every backend shares: what
/// kind of failure it was (what the caller is told depends on it), and the
/// backend's own error as its source, for the log.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct StorageError {
    kind: StorageErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// What kind of failure a [`StorageError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The backend's disk (or quota) is full: nothing was written.
    DiskFull,
    /// Anything else: an internal error.
    Other,
}

impl StorageError {
    /// Wraps a backend's own error as a failure of `kind`.
    pub fn new(kind: StorageErrorKind, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { kind, source: source.into() }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// Whether the backend's disk (or quota) is full.
    pub fn is_disk_full(&self) -> bool {
        self.kind == StorageErrorKind::DiskFull
    }
}

impl From<syncstore::chunks::RunsError> for Error {
    fn from(e: syncstore::chunks::RunsError) -> Self {
        Self::InvalidArgument(format!("the upload's runs do not fit their base: {e}"))
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

impl Error {
    /// Whether this is the disk (or a quota) being full, however it was
    /// wrapped on its way here.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::DiskFull(_) => true,
            Error::Io(e) => io_disk_full(e),
            Error::Storage(e) => e.is_disk_full(),
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
        if let Some(storage) = inner.downcast_ref::<StorageError>() {
            return storage.is_disk_full();
        }
        source = inner.source();
    }
    false
}

/// ENOSPC (the same number on Linux, the BSDs and macOS).
const ENOSPC: i32 = 28;
/// EDQUOT: 122 on Linux, 69 on the BSDs and macOS.
const EDQUOT: i32 = if cfg!(target_os = "linux") { 122 } else { 69 };

/// What a caller is told when the server's disk (or quota) is full.
const DISK_FULL_MESSAGE: &str =
    "the server's disk is full: nothing was written; writes work again once space is freed on the server";

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
        if e.is_disk_full() {
            // Logged, once, as a warning: the operator must act, but the
            // server is fine and reads go on.
            tracing::warn!(error = %e, "a write failed: the disk is full");
        }
        let Some((code, reason)) = e.code_and_reason() else {
            // Internals go to the log, not to the caller.
            tracing::error!(error = %e, "request failed");
            return refusal(Code::Internal, Reason::Internal, "internal server error (see the server's log)");
        };
        let message = match (&e, reason) {
            (_, Reason::DiskFull) => DISK_FULL_MESSAGE.to_owned(),
            _ => e.to_string(),
        };
        let mut status = refusal(code, reason, message);
        if let Error::WritesRefused { primary: Some(url), .. } = &e
            && let Ok(v) = MetadataValue::try_from(url.as_str())
        {
            status.metadata_mut().insert(PRIMARY_KEY, v);
        }
        replica_metadata(&e, &mut status);
        debug_assert!(status.metadata().contains_key(REASON_KEY));
        status
    }
}

/// A write the replica held up names the replica, and the version it was
/// committed as, if it was, in metadata.
fn replica_metadata(e: &Error, status: &mut Status) {
    use syncstore::replication::{COMMITTED_VERSION_KEY, REPLICA_KEY};
    let (Error::ReplicaUnavailable { replica, .. } | Error::Unconfirmed { replica, .. }) = e else { return };
    let meta = status.metadata_mut();
    if let Error::Unconfirmed { seq, .. } = e {
        meta.insert(COMMITTED_VERSION_KEY, MetadataValue::from(*seq));
    }
    // A URL is plain ASCII; one that is not is left out rather than mangled.
    if let Ok(v) = MetadataValue::try_from(replica.as_str()) {
        meta.insert(REPLICA_KEY, v);
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
            Error::UnknownVersion("x".into()),
            Error::UnknownLabel("x".into()),
            Error::BeforeHistory("x".into()),
            Error::LabelExists("x".into()),
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

    fn reason(status: &Status) -> Option<Reason> {
        Reason::of(status)
    }

    #[test]
    fn a_full_disk_is_resource_exhausted_however_it_is_wrapped() {
        use std::io;
        let dir = tempfile::tempdir().unwrap();
        let raw = io::Error::from_raw_os_error(ENOSPC);
        let cases: Vec<Error> = vec![
            Error::Io(io::Error::from_raw_os_error(ENOSPC)),
            Error::Io(io::Error::from_raw_os_error(EDQUOT)),
            Error::Io(io::ErrorKind::StorageFull.into()),
            Error::Io(io::ErrorKind::QuotaExceeded.into()),
            // A path-wrapped error keeps the kind only, the code in its source.
            Error::Io(io::Error::other(raw)),
            Error::Storage(StorageError::new(StorageErrorKind::DiskFull, "database or disk is full")),
            // A storage failure wrapped in an I/O error on its way up.
            Error::Io(io::Error::other(StorageError::new(StorageErrorKind::DiskFull, "full"))),
            Error::DiskFull("the commit failed".into()),
        ];
        for e in cases {
            let shown = format!("{e:?}");
            let status = Status::from(e);
            assert_eq!(status.code(), Code::ResourceExhausted, "{shown}");
            assert_eq!(reason(&status), Some(Reason::DiskFull), "{shown}");
        }
        // tempfile's own wrapping of an error, as the blob writer meets it.
        let missing = tempfile::NamedTempFile::new_in(dir.path().join("absent")).unwrap_err();
        assert_eq!(Status::from(Error::Io(missing)).code(), Code::Internal);
        let other = Status::from(Error::Io(io::ErrorKind::PermissionDenied.into()));
        assert_eq!((other.code(), reason(&other)), (Code::Internal, Some(Reason::Internal)));
    }

    #[test]
    fn damaged_content_is_data_loss_with_its_reason() {
        let status = Status::from(Error::DataLoss("damaged".into()));
        assert_eq!(status.code(), Code::DataLoss);
        assert_eq!(reason(&status), Some(Reason::Damaged));
    }
}
