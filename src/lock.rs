//! [`Lock`]: a lock on one path, and its conversion from and to the wire's
//! `LockInfo`.

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
    /// The holder's principal: the name of the token that took the lock
    /// ("anonymous" on a server without tokens). With the client id, it
    /// names the holder.
    pub principal: String,
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

impl TryFrom<pb::LockInfo> for Lock {
    type Error = PathError;

    fn try_from(l: pb::LockInfo) -> Result<Self, PathError> {
        Ok(Lock {
            lock_id: l.lock_id,
            path: RelPath::new(l.path)?,
            client_id: l.client_id,
            principal: l.principal,
            holder: l.holder,
            note: l.note,
            acquired_ms: l.acquired_ms,
            expires_ms: l.expires_ms,
            ttl_seconds: l.ttl_seconds,
            token: l.token,
        })
    }
}

impl From<Lock> for pb::LockInfo {
    fn from(l: Lock) -> Self {
        pb::LockInfo {
            lock_id: l.lock_id,
            path: l.path.as_str().to_owned(),
            client_id: l.client_id,
            principal: l.principal,
            holder: l.holder,
            note: l.note,
            acquired_ms: l.acquired_ms,
            expires_ms: l.expires_ms,
            ttl_seconds: l.ttl_seconds,
            token: l.token,
            ended: pb::LockEnd::Unspecified.into(),
            ended_by: String::new(),
            ended_by_principal: String::new(),
        }
    }
}
