//! The `meta` table: the server's identity (history id, epoch, the primary
//! it follows) and the embedded backend's own bookkeeping, under keys that
//! only this module spells.

use rusqlite::{Connection, OptionalExtension};

use super::schema;
use crate::error::{Error, Result};
use crate::storage::Identity;

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

/// Reads the identity of a data folder whose meta table is initialized.
pub(super) fn load(c: &Connection) -> Result<Identity> {
    Ok(Identity {
        history_id: meta_text(c, MetaKey::HistoryId)?.unwrap_or_default(),
        epoch: meta_u64(c, MetaKey::Epoch)?,
        primary_url: meta_text(c, MetaKey::PrimaryUrl)?,
    })
}

/// Stores the identity, in one transaction.
pub(super) fn save(c: &mut Connection, identity: &Identity) -> Result<()> {
    let tx = c.transaction()?;
    set_meta(&tx, MetaKey::HistoryId, &identity.history_id)?;
    set_meta(&tx, MetaKey::Epoch, &identity.epoch.to_string())?;
    if let Some(url) = &identity.primary_url {
        set_meta(&tx, MetaKey::PrimaryUrl, url)?;
    }
    tx.commit()?;
    Ok(())
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
