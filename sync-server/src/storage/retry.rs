//! Recognising a write sent again. A client that heard no answer, or an
//! `UNAVAILABLE` saying its write was committed but not yet confirmed by
//! the replica, sends the same upload or delete again; when the path's
//! current entry is that very write, the retry is answered with that entry
//! instead of being refused as a conflict, and nothing new is committed.
//!
//! The same write: same path, same client id, same content and flags (for
//! a delete: a tombstone), and the change replaced exactly the version the
//! retry is based on. That last part is read from the change log; when the
//! log no longer holds the path's earlier change, the retry is not
//! recognised (it then meets the usual version check).

use syncstore::{Entry, RelPath};

use super::{Delete, Put, Store};
use crate::error::Result;

impl Store {
    /// The path's current entry, if it is `put` committed already.
    pub(crate) async fn committed_put(&self, ns: &str, put: &Put) -> Result<Option<Entry>> {
        let Some(current) = self.stat(ns, &put.path).await? else { return Ok(None) };
        let same = current.client_id == put.who.client_id
            && current.content == Some(put.content)
            && current.version != put.base_version;
        Ok((same && self.replaced(ns, &put.path, current.version, put.base_version).await?)
            .then_some(current))
    }

    /// The path's current tombstone, if it is `del` committed already.
    pub(crate) async fn committed_delete(&self, ns: &str, del: &Delete) -> Result<Option<Entry>> {
        let Some(current) = self.stat(ns, &del.path).await? else { return Ok(None) };
        let same = current.is_deleted()
            && current.client_id == del.who.client_id
            && del.base_version != 0
            && current.version != del.base_version;
        Ok((same && self.replaced(ns, &del.path, current.version, del.base_version).await?)
            .then_some(current))
    }

    /// Whether the change at `version` of `path` replaced `base`: the
    /// path's previous change was `base` (or, for base 0, a tombstone or
    /// nothing at all, with the whole log kept).
    async fn replaced(&self, ns: &str, path: &RelPath, version: u64, base: u64) -> Result<bool> {
        let previous = self.previous_file_change(ns, path, version).await?;
        Ok(match previous {
            Some((seq, deleted)) => seq == base || (base == 0 && deleted),
            // Nothing before it: a creation, if the log was never trimmed.
            None => base == 0 && self.oldest_seq().await? <= 1,
        })
    }
}
