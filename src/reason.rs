//! [`Reason`]: the machine-readable reason every refusal of a server
//! carries in its metadata, so that a program acts on the reason and never
//! on the message text. `proto/syncstore/v1/sync.proto` lists them for
//! other languages.

/// Metadata key of a refusal's [`Reason`].
pub const REASON_KEY: &str = "syncstore-reason";

/// Metadata key of the primary's URL, on a refusal by a replica or by a
/// primary that refuses writes ([`Reason::Replica`], [`Reason::Fenced`]),
/// when the server knows it.
pub const PRIMARY_KEY: &str = "syncstore-primary";

/// Why a server refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// INVALID_ARGUMENT: the path is not a valid relative path.
    InvalidPath,
    /// INVALID_ARGUMENT: a hash is not 32 bytes.
    InvalidHash,
    /// INVALID_ARGUMENT: a string or number is out of its bounds (client
    /// id, holder, note, lock id, time-to-live).
    InvalidField,
    /// INVALID_ARGUMENT: a symbolic link's target is empty, holds a NUL,
    /// is not UTF-8 or is too long.
    InvalidSymlink,
    /// INVALID_ARGUMENT: the content does not match the header's size or
    /// hash.
    ContentMismatch,
    /// INVALID_ARGUMENT: an upload stream ended without its end marker
    /// (the client gave up, or broke off): nothing was stored.
    UploadIncomplete,
    /// INVALID_ARGUMENT: anything else malformed (message order, a chunk
    /// too big).
    InvalidArgument,
    /// NOT_FOUND: no such path, or that version's content is gone.
    NotFound,
    /// NOT_FOUND: the lock is no longer held.
    LockNotHeld,
    /// NOT_FOUND: no such version of the path is kept (never made, or
    /// removed by retention).
    UnknownVersion,
    /// NOT_FOUND: the namespace has no label of that name.
    UnknownLabel,
    /// OUT_OF_RANGE: the time asked for is before the first version the
    /// server keeps of the namespace.
    BeforeHistory,
    /// ALREADY_EXISTS: a label of that name exists.
    LabelExists,
    /// ABORTED: the write's base version is not the current version.
    VersionConflict,
    /// FAILED_PRECONDITION: this server is a replica; write to the primary.
    Replica,
    /// FAILED_PRECONDITION: this primary refuses writes until an operator
    /// acts (a newer primary exists, or its replica holds more).
    Fenced,
    /// FAILED_PRECONDITION: a header-only upload of content the server does
    /// not hold here: send the content.
    UnknownContent,
    /// FAILED_PRECONDITION: an upload sent against a base content the
    /// server holds no chunk list for here: send the file plain.
    UnknownBase,
    /// FAILED_PRECONDITION: the path is locked by someone else.
    Locked,
    /// FAILED_PRECONDITION: the write's lock token is not the path's
    /// current lock.
    StaleLock,
    /// FAILED_PRECONDITION: a file where a folder is, or below a file.
    PathClash,
    /// FAILED_PRECONDITION: anything else the server's state forbids.
    FailedPrecondition,
    /// RESOURCE_EXHAUSTED: the file is over the server's size limit.
    TooLarge,
    /// RESOURCE_EXHAUSTED: the server's disk is full.
    DiskFull,
    /// RESOURCE_EXHAUSTED: the server takes no more uploads at the moment.
    Busy,
    /// UNAVAILABLE: try again later (shutting down, a broken stream).
    Unavailable,
    /// UNAVAILABLE: a sync-mode primary's replica is away (not connected,
    /// silent, stuck, or confirming nothing): nothing was written. The
    /// replica is named in [`crate::replication::REPLICA_KEY`].
    ReplicaUnavailable,
    /// UNAVAILABLE: the write is committed on the primary as the version in
    /// [`crate::replication::COMMITTED_VERSION_KEY`], but the replica did
    /// not confirm it in time. The same write sent again answers OK once
    /// the replica has it.
    ReplicaUnconfirmed,
    /// DEADLINE_EXCEEDED: the client went silent, or an upload fell below
    /// the server's minimum rate.
    DeadlineExceeded,
    /// UNAUTHENTICATED: no token, or one the server does not know.
    Unauthenticated,
    /// PERMISSION_DENIED: the token may not do this.
    PermissionDenied,
    /// DATA_LOSS: the server's stored copy of the content is damaged (it no
    /// longer matches its hash); it was set aside and never sent as good.
    Damaged,
    /// INTERNAL: the server failed; its log says why.
    Internal,
}

impl Reason {
    /// Every reason, in the order the proto lists them.
    pub const ALL: [Reason; 33] = [
        Reason::InvalidPath,
        Reason::InvalidHash,
        Reason::InvalidField,
        Reason::InvalidSymlink,
        Reason::ContentMismatch,
        Reason::UploadIncomplete,
        Reason::InvalidArgument,
        Reason::NotFound,
        Reason::LockNotHeld,
        Reason::UnknownVersion,
        Reason::UnknownLabel,
        Reason::BeforeHistory,
        Reason::LabelExists,
        Reason::VersionConflict,
        Reason::Replica,
        Reason::Fenced,
        Reason::UnknownContent,
        Reason::UnknownBase,
        Reason::Locked,
        Reason::StaleLock,
        Reason::PathClash,
        Reason::FailedPrecondition,
        Reason::TooLarge,
        Reason::DiskFull,
        Reason::Busy,
        Reason::Unavailable,
        Reason::ReplicaUnavailable,
        Reason::ReplicaUnconfirmed,
        Reason::DeadlineExceeded,
        Reason::Unauthenticated,
        Reason::PermissionDenied,
        Reason::Damaged,
        Reason::Internal,
    ];

    /// The reason as it travels in [`REASON_KEY`].
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidPath => "invalid-path",
            Reason::InvalidHash => "invalid-hash",
            Reason::InvalidField => "invalid-field",
            Reason::InvalidSymlink => "invalid-symlink",
            Reason::ContentMismatch => "content-mismatch",
            Reason::UploadIncomplete => "upload-incomplete",
            Reason::InvalidArgument => "invalid-argument",
            Reason::NotFound => "not-found",
            Reason::LockNotHeld => "lock-not-held",
            Reason::UnknownVersion => "unknown-version",
            Reason::UnknownLabel => "unknown-label",
            Reason::BeforeHistory => "before-history",
            Reason::LabelExists => "label-exists",
            Reason::VersionConflict => "version-conflict",
            Reason::Replica => "replica",
            Reason::Fenced => "fenced",
            Reason::UnknownContent => "unknown-content",
            Reason::UnknownBase => "unknown-base",
            Reason::Locked => "locked",
            Reason::StaleLock => "stale-lock",
            Reason::PathClash => "path-clash",
            Reason::FailedPrecondition => "failed-precondition",
            Reason::TooLarge => "too-large",
            Reason::DiskFull => "disk-full",
            Reason::Busy => "busy",
            Reason::Unavailable => "unavailable",
            Reason::ReplicaUnavailable => "replica-unavailable",
            Reason::ReplicaUnconfirmed => "replica-unconfirmed",
            Reason::DeadlineExceeded => "deadline-exceeded",
            Reason::Unauthenticated => "unauthenticated",
            Reason::PermissionDenied => "permission-denied",
            Reason::Damaged => "damaged-content",
            Reason::Internal => "internal",
        }
    }

    /// The reason a status carries, if it carries a known one.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        let s = status.metadata().get(REASON_KEY)?.to_str().ok()?;
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Attaches this reason to `status`.
    pub fn attach(self, status: &mut tonic::Status) {
        status.metadata_mut().insert(REASON_KEY, tonic::metadata::MetadataValue::from_static(self.as_str()));
    }
}

/// The primary's URL a refusal names in [`PRIMARY_KEY`], if any.
pub fn primary_of(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(PRIMARY_KEY).and_then(|v| v.to_str().ok())
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_and_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r} twice");
            let mut s = tonic::Status::internal("x");
            r.attach(&mut s);
            assert_eq!(Reason::of(&s), Some(r));
        }
    }

    #[test]
    fn the_proto_documents_every_reason() {
        let proto = include_str!("../proto/syncstore/v1/sync.proto");
        for r in Reason::ALL {
            assert!(proto.contains(&format!("`{}`", r.as_str())), "sync.proto does not list `{r}`");
        }
    }
}
