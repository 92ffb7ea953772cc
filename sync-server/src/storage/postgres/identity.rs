//! The `meta` table: the server's identity (history id, epoch, the primary
//! it follows), shared by every process over the database, under keys that
//! only this module spells (the same as the embedded backend's).

use super::Conn;
use crate::error::Result;
use crate::storage::Identity;

/// The key of [`Identity::history_id`].
const HISTORY_ID: &str = "history_id";
/// The key of [`Identity::epoch`].
const EPOCH: &str = "epoch";
/// The key of [`Identity::primary_url`].
const PRIMARY_URL: &str = "primary_url";

/// Reads the identity.
pub(super) async fn load(c: &Conn) -> Result<Identity> {
    Ok(Identity {
        history_id: meta_text(c, HISTORY_ID).await?.unwrap_or_default(),
        epoch: meta_text(c, EPOCH).await?.and_then(|v| v.parse().ok()).unwrap_or(0),
        primary_url: meta_text(c, PRIMARY_URL).await?,
    })
}

/// Stores the identity (the caller runs it in a transaction).
pub(super) async fn save(c: &Conn, identity: &Identity) -> Result<()> {
    set_meta(c, HISTORY_ID, &identity.history_id).await?;
    set_meta(c, EPOCH, &identity.epoch.to_string()).await?;
    if let Some(url) = &identity.primary_url {
        set_meta(c, PRIMARY_URL, url).await?;
    }
    Ok(())
}

/// Creates the history id of a new database; a process starting at the
/// same time as another keeps whichever was stored first.
pub(super) async fn init(c: &Conn) -> Result<()> {
    let id = format!("{:032x}", rand::random::<u128>());
    c.execute(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        &[&HISTORY_ID, &id],
    )
    .await?;
    Ok(())
}

async fn meta_text(c: &Conn, key: &str) -> Result<Option<String>> {
    let stmt = c.prepare_cached("SELECT value FROM meta WHERE key = $1").await?;
    Ok(c.query_opt(&stmt, &[&key]).await?.map(|r| r.get(0)))
}

async fn set_meta(c: &Conn, key: &str, value: &str) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .await?;
    c.execute(&stmt, &[&key, &value]).await?;
    Ok(())
}
