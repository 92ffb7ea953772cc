//! Who a data folder's server is in its replicated history (history id,
//! epoch, the primary it follows), kept in the `meta` table under keys that
//! only this module spells, and read by everyone else through
//! [`Identity`] and the typed accessors of [`Store`].

use rusqlite::{Connection, OptionalExtension};

use super::{Store, schema};
use crate::error::{Error, Result};

/// The keys of the `meta` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MetaKey {
    /// The schema version the data folder was written with.
    SchemaVersion,
    /// [`Identity::history_id`].
    HistoryId,
    /// [`Identity::epoch`].
    Epoch,
    /// [`Identity::primary_url`].
    PrimaryUrl,
    /// After a full resync, the head the (empty) change log starts at.
    HeadFloor,
}

impl MetaKey {
    fn as_str(self) -> &'static str {
        match self {
            MetaKey::SchemaVersion => "schema_version",
            MetaKey::HistoryId => "history_id",
            MetaKey::Epoch => "epoch",
            MetaKey::PrimaryUrl => "primary_url",
            MetaKey::HeadFloor => "head_floor",
        }
    }
}

/// A server's place in its replicated history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The random id given to the history this data folder holds: created
    /// when a primary's folder is initialized, taken from the primary by a
    /// new replica.
    pub history_id: String,
    /// Raised by each promotion of a replica, so that an older primary of
    /// the same history is refused (0 until the first).
    pub epoch: u64,
    /// The address of the primary a replica last heard from (none on a
    /// primary, or a replica no primary has reached yet).
    pub primary_url: Option<String>,
}

impl Identity {
    /// Reads the identity of a data folder whose meta table is initialized.
    pub(super) fn load(c: &Connection) -> Result<Self> {
        Ok(Self {
            history_id: meta_text(c, MetaKey::HistoryId)?.unwrap_or_default(),
            epoch: meta_u64(c, MetaKey::Epoch)?,
            primary_url: meta_text(c, MetaKey::PrimaryUrl)?,
        })
    }
}

impl Store {
    /// This server's place in its replicated history.
    pub fn identity(&self) -> Identity {
        self.identity_guard().clone()
    }

    /// The history id ([`Identity::history_id`]).
    pub fn history_id(&self) -> String {
        self.identity_guard().history_id.clone()
    }

    /// The epoch ([`Identity::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.identity_guard().epoch
    }

    /// Records a new epoch, durably.
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let w = self.writer();
        set_meta(&w.conn, MetaKey::Epoch, &epoch.to_string())?;
        self.identity_guard().epoch = epoch;
        Ok(())
    }

    /// The primary this replica follows ([`Identity::primary_url`]).
    pub fn primary_url(&self) -> Option<String> {
        self.identity_guard().primary_url.clone()
    }

    /// Records the primary this replica follows, durably.
    pub fn set_primary_url(&self, url: &str) -> Result<()> {
        let w = self.writer();
        set_meta(&w.conn, MetaKey::PrimaryUrl, url)?;
        self.identity_guard().primary_url = Some(url.to_owned());
        Ok(())
    }

    /// Takes the primary's history id on a replica that holds nothing yet.
    pub fn adopt_history(&self, history_id: &str) -> Result<()> {
        let w = self.writer();
        if w.head != 0 {
            return Err(Error::FailedPrecondition(format!(
                "this server holds history {} up to change {}, not the sender's: \
                 re-seed the sender's data folder from this server (or wipe this one to re-seed it)",
                self.history_id(),
                w.head
            )));
        }
        set_meta(&w.conn, MetaKey::HistoryId, history_id)?;
        self.identity_guard().history_id = history_id.to_owned();
        Ok(())
    }
}

/// Creates the history id (and the schema version) on a new data folder;
/// refuses a folder written by a newer schema.
pub(super) fn init_meta(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction()?;
    match meta_text(&tx, MetaKey::SchemaVersion)?.as_deref().map(str::parse::<i64>) {
        None => set_meta(&tx, MetaKey::SchemaVersion, &schema::SCHEMA_VERSION.to_string())?,
        Some(Ok(v)) if v <= schema::SCHEMA_VERSION => {}
        Some(v) => {
            return Err(Error::FailedPrecondition(format!(
                "the data folder has schema version {v:?}; this server understands up to {}",
                schema::SCHEMA_VERSION
            )));
        }
    }
    if meta_text(&tx, MetaKey::HistoryId)?.is_none() {
        set_meta(&tx, MetaKey::HistoryId, &format!("{:032x}", rand::random::<u128>()))?;
    }
    tx.commit()?;
    Ok(())
}

/// A text kept in the `meta` table.
fn meta_text(c: &Connection, key: MetaKey) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key.as_str()], |r| r.get(0))
        .optional()?)
}

/// A number kept in the `meta` table (0 if unset).
pub(super) fn meta_u64(c: &Connection, key: MetaKey) -> Result<u64> {
    Ok(meta_text(c, key)?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Stores a value in the `meta` table.
pub(super) fn set_meta(c: &Connection, key: MetaKey, value: &str) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key.as_str(), value])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::storage::StoreOptions;

    use super::*;

    #[test]
    fn the_identity_is_created_once_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            let id = s.identity();
            assert_eq!(id.history_id.len(), 32);
            assert_eq!((id.epoch, id.primary_url.as_deref()), (0, None));
            s.set_epoch(3).unwrap();
            s.set_primary_url("http://primary:7000").unwrap();
            s.identity()
        };
        assert_eq!((first.epoch, first.primary_url.as_deref()), (3, Some("http://primary:7000")));
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.identity(), first);
    }

    #[test]
    fn only_a_store_that_holds_nothing_adopts_another_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        s.adopt_history("0123").unwrap();
        assert_eq!(s.history_id(), "0123");
        s.lock(
            "default",
            crate::storage::LockRequest {
                path: syncstore::RelPath::new("f").unwrap(),
                ttl_seconds: 0,
                note: String::new(),
                who: crate::storage::Actor::new("p", "c"),
                holder: String::new(),
            },
        )
        .unwrap();
        assert!(matches!(s.adopt_history("4567"), Err(Error::FailedPrecondition(_))));
        drop(s);
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.history_id(), "0123");
    }
}
