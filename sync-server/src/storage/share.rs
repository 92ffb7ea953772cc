//! Share links: a read-only link to one file or folder of a namespace, with
//! an optional expiry and password, revocable. A link's record is read again
//! on every request made through it, so a revocation or an expiry takes
//! effect at once, in every process over the same metadata.
//!
//! Links are not changes: they are not in the change log, so they are not
//! replicated to a replica. `migrate` copies them with the rest of the
//! metadata.

use super::Store;
use crate::Result;

/// One share link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The link's id: the secret part of its URL (random, 64 hex digits).
    pub id: String,
    pub namespace: String,
    /// The file or folder shared.
    pub path: String,
    /// Whether `path` is a folder (the link reaches every file below it).
    pub folder: bool,
    /// Who made it (the token's name).
    pub created_by: String,
    pub created_ms: i64,
    /// When it stops working, in milliseconds since the Unix epoch (0:
    /// never).
    pub expires_ms: i64,
    /// The Argon2id hash of its password, as a PHC string ("" for none).
    pub password: String,
    /// When it was revoked (0: it was not).
    pub revoked_ms: i64,
}

impl Share {
    /// Whether the link works at `now_ms`: not revoked, not expired.
    pub fn live_at(&self, now_ms: i64) -> bool {
        self.revoked_ms == 0 && (self.expires_ms == 0 || now_ms < self.expires_ms)
    }
}

impl Store {
    /// Records a new link.
    pub async fn put_share(&self, share: Share) -> Result<()> {
        self.meta().put_share(share).await
    }

    /// The link `id`, live or not.
    pub async fn share(&self, id: &str) -> Result<Option<Share>> {
        self.meta().share(id).await
    }

    /// The links of `ns`, newest first, revoked ones included.
    pub async fn shares(&self, ns: &str) -> Result<Vec<Share>> {
        self.meta().shares(ns).await
    }

    /// Revokes the link `id` of `ns` at `at_ms`; false if `ns` has no such
    /// link (revoking twice keeps the first time).
    pub async fn revoke_share(&self, ns: &str, id: &str, at_ms: i64) -> Result<bool> {
        self.meta().revoke_share(ns, id, at_ms).await
    }
}
