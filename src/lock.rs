//! [`Lock`]: a lock on one path, and its conversion from and to the wire's
//! `Lock`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{PathError, RelPath, pb};

/// Time-to-live of a lock when the request names none.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest time-to-live a lock may ask for.
pub const MAX_LOCK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A live lock on one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Names the lock for refresh and unlock; stable across refreshes.
    pub lock_id: String,
    pub path: RelPath,
    /// The holder's client id.
    pub client_id: String,
    /// A readable name of the holder ("user@host").
    pub holder: String,
    pub note: String,
    /// When it was granted, milliseconds since the Unix epoch.
    pub acquired_ms: i64,
    /// When it expires unless refreshed, milliseconds since the Unix epoch.
    pub expires_ms: i64,
    /// The time-to-live last asked for.
    pub ttl_seconds: u32,
    /// The fencing token: the sequence number of the granting change.
    pub token: u64,
}

impl Lock {
    /// Whether the lock is past its expiry at `now_ms`.
    pub fn expired_at(&self, now_ms: i64) -> bool {
        self.expires_ms <= now_ms
    }

    /// "alice@laptop until 2026-11-24T10:00:00Z".
    pub fn describe(&self) -> String {
        format!("{} until {}", self.holder, format_ms(self.expires_ms))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An RFC 3339 UTC time, to the second.
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl TryFrom<pb::Lock> for Lock {
    type Error = PathError;

    fn try_from(l: pb::Lock) -> Result<Self, PathError> {
        Ok(Lock {
            lock_id: l.lock_id,
            path: RelPath::new(l.path)?,
            client_id: l.client_id,
            holder: l.holder,
            note: l.note,
            acquired_ms: l.acquired_ms,
            expires_ms: l.expires_ms,
            ttl_seconds: l.ttl_seconds,
            token: l.token,
        })
    }
}

impl From<Lock> for pb::Lock {
    fn from(l: Lock) -> Self {
        pb::Lock {
            lock_id: l.lock_id,
            path: l.path.as_str().to_owned(),
            client_id: l.client_id,
            holder: l.holder,
            note: l.note,
            acquired_ms: l.acquired_ms,
            expires_ms: l.expires_ms,
            ttl_seconds: l.ttl_seconds,
            token: l.token,
            ended: pb::LockEnd::Unspecified.into(),
            ended_by: String::new(),
        }
    }
}

/// Metadata key of a status that says which case it is: a
/// FAILED_PRECONDITION's [`REASON_LOCKED`], [`REASON_STALE_LOCK`] or
/// [`REASON_PATH_CLASH`], a RESOURCE_EXHAUSTED's [`REASON_DISK_FULL`] or
/// [`REASON_UPLOADS_BUSY`], a DATA_LOSS's [`REASON_DAMAGED`], an upload's
/// [`REASON_UPLOAD_INCOMPLETE`] (INVALID_ARGUMENT) or
/// [`REASON_UPLOAD_TOO_SLOW`] (DEADLINE_EXCEEDED).
pub const ERROR_REASON_KEY: &str = "syncstore-reason";
/// The path is locked by someone else.
pub const REASON_LOCKED: &str = "locked";
/// The write's lock token is not the path's current lock.
pub const REASON_STALE_LOCK: &str = "stale-lock";
/// A file where the server has a folder, or below a file (not a lock
/// matter, but told the same way).
pub const REASON_PATH_CLASH: &str = "path-clash";
/// An upload stream ended without its end marker (INVALID_ARGUMENT):
/// nothing was committed.
pub const REASON_UPLOAD_INCOMPLETE: &str = "upload-incomplete";
/// An upload went silent or fell below the server's minimum rate
/// (DEADLINE_EXCEEDED): nothing was committed.
pub const REASON_UPLOAD_TOO_SLOW: &str = "upload-too-slow";
/// No upload slot came free in time (RESOURCE_EXHAUSTED): try again later.
pub const REASON_UPLOADS_BUSY: &str = "uploads-busy";

/// A RESOURCE_EXHAUSTED: the server's disk (or quota) is full; nothing was
/// written, and writes work again once space is freed there.
pub const REASON_DISK_FULL: &str = "disk-full";
/// A DATA_LOSS: the server's stored copy of the content is damaged (it no
/// longer matches its hash); it was set aside and is never sent as good.
pub const REASON_DAMAGED: &str = "damaged-content";

/// The reason a status carries in [`ERROR_REASON_KEY`], if any.
pub fn error_reason(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(ERROR_REASON_KEY).and_then(|v| v.to_str().ok())
}
