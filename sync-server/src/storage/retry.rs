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

use rusqlite::{OptionalExtension, params};
use syncstore::{Entry, RelPath};

use super::{Delete, Put, Store};
use crate::error::Result;

impl Store {
    /// The path's current entry, if it is `put` committed already.
    pub(crate) fn committed_put(&self, ns: &str, put: &Put) -> Result<Option<Entry>> {
        let Some(current) = self.stat(ns, &put.path)? else { return Ok(None) };
        let same = current.client_id == put.who.client_id
            && current.content == Some(put.content)
            && current.version != put.base_version;
        Ok((same && self.replaced(ns, &put.path, current.version, put.base_version)?).then_some(current))
    }

    /// The path's current tombstone, if it is `del` committed already.
    pub(crate) fn committed_delete(&self, ns: &str, del: &Delete) -> Result<Option<Entry>> {
        let Some(current) = self.stat(ns, &del.path)? else { return Ok(None) };
        let same = current.is_deleted()
            && current.client_id == del.who.client_id
            && del.base_version != 0
            && current.version != del.base_version;
        Ok((same && self.replaced(ns, &del.path, current.version, del.base_version)?).then_some(current))
    }

    /// Whether the change at `version` of `path` replaced `base`: the
    /// path's previous change was `base` (or, for base 0, a tombstone or
    /// nothing at all, with the whole log kept).
    fn replaced(&self, ns: &str, path: &RelPath, version: u64, base: u64) -> Result<bool> {
        let previous: Option<(u64, bool)> = self.read(|c| {
            Ok(c.query_row(
                "SELECT seq, deleted FROM changes
                 WHERE namespace = ?1 AND path = ?2 AND seq < ?3 AND kind = 0
                 ORDER BY seq DESC LIMIT 1",
                params![ns, path.as_str(), version as i64],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
        })?;
        Ok(match previous {
            Some((seq, deleted)) => seq == base || (base == 0 && deleted),
            // Nothing before it: a creation, if the log was never trimmed.
            None => base == 0 && self.oldest_seq()? <= 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use syncstore::{Content, ContentHash};

    use super::*;
    use crate::storage::{Actor, DEFAULT_NAMESPACE as NS, StoreOptions};

    fn put(path: &str, data: &[u8], base: u64, client: &str) -> Put {
        let content = Content {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 7,
            executable: false,
            symlink: false,
            folder: false,
        };
        Put {
            path: RelPath::new(path).unwrap(),
            content,
            base_version: base,
            who: Actor::new("t", client),
            lock_token: 0,
        }
    }

    fn commit(store: &Store, p: &Put, data: &[u8]) -> u64 {
        let mut w = store.blob_writer().unwrap();
        w.write(data).unwrap();
        let staged = w.finish(p.content.hash, data.len() as u64).unwrap();
        store.commit_put(NS, p.clone(), Some(staged)).unwrap().seq
    }

    fn delete(path: &str, base: u64, client: &str) -> Delete {
        Delete {
            path: RelPath::new(path).unwrap(),
            base_version: base,
            who: Actor::new("t", client),
            lock_token: 0,
        }
    }

    #[test]
    fn only_the_very_same_write_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let first = put("a", b"one", 0, "c1");
        let v1 = commit(&store, &first, b"one");
        assert_eq!(store.committed_put(NS, &first).unwrap().map(|e| e.version), Some(v1));
        // Another client, other bytes, another mtime, another base: not it.
        assert_eq!(store.committed_put(NS, &put("a", b"one", 0, "c2")).unwrap(), None);
        assert_eq!(store.committed_put(NS, &put("a", b"two", 0, "c1")).unwrap(), None);
        let mut later = first.clone();
        later.content.mtime_ns = 8;
        assert_eq!(store.committed_put(NS, &later).unwrap(), None);
        // Based on the current version: a new write, not a retry.
        assert_eq!(store.committed_put(NS, &put("a", b"one", v1, "c1")).unwrap(), None);

        let second = put("a", b"two", v1, "c1");
        let v2 = commit(&store, &second, b"two");
        assert_eq!(store.committed_put(NS, &second).unwrap().map(|e| e.version), Some(v2));
        // The same bytes again, but claiming to replace something else.
        assert_eq!(store.committed_put(NS, &put("a", b"two", 0, "c1")).unwrap(), None);

        let del = delete("a", v2, "c1");
        let v3 = store.commit_delete(NS, del.clone()).unwrap().seq;
        assert_eq!(store.committed_delete(NS, &del).unwrap().map(|e| e.version), Some(v3));
        assert_eq!(store.committed_delete(NS, &delete("a", v2, "c2")).unwrap(), None);
        assert_eq!(store.committed_delete(NS, &delete("a", v1, "c1")).unwrap(), None);
        // Re-created on the tombstone: base 0 or the tombstone's version.
        let again = put("a", b"three", 0, "c1");
        commit(&store, &again, b"three");
        assert!(store.committed_put(NS, &again).unwrap().is_some());
        assert!(store.committed_put(NS, &put("a", b"three", v3, "c1")).unwrap().is_some());
    }

    #[test]
    fn a_creation_whose_history_was_trimmed_is_not_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { log_retention: 1 };
        let store = Store::open(dir.path(), options).unwrap();
        let old = put("old", b"old", 0, "c1");
        commit(&store, &old, b"old");
        for i in 0..3 {
            commit(&store, &put(&format!("other{i}"), b"x", 0, "c1"), b"x");
        }
        assert!(store.oldest_seq().unwrap() > 1, "the log was trimmed");
        let new = put("new", b"new", 0, "c1");
        commit(&store, &new, b"new");
        // "old"'s creation is gone from the log: it may have replaced
        // something, so a base-0 retry is not taken on trust.
        assert_eq!(store.committed_put(NS, &old).unwrap(), None);
    }
}
