//! Who a data folder's server is in its replicated history (history id,
//! epoch, the primary it follows): [`Identity`], read through the typed
//! accessors of [`Store`] and stored by the metadata backend.

use super::Store;
use crate::error::{Error, Result};

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
    pub async fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.update_identity(move |id, _| {
            id.epoch = epoch;
            Ok(())
        })
        .await
    }

    /// The primary this replica follows ([`Identity::primary_url`]).
    pub fn primary_url(&self) -> Option<String> {
        self.identity_guard().primary_url.clone()
    }

    /// Records the primary this replica follows, durably.
    pub async fn set_primary_url(&self, url: &str) -> Result<()> {
        let url = url.to_owned();
        self.update_identity(move |id, _| {
            id.primary_url = Some(url);
            Ok(())
        })
        .await
    }

    /// Takes the primary's history id on a replica that holds nothing yet.
    pub async fn adopt_history(&self, history_id: &str) -> Result<()> {
        let history_id = history_id.to_owned();
        self.update_identity(move |id, head| {
            if head != 0 {
                return Err(Error::FailedPrecondition(format!(
                    "this server holds history {} up to change {head}, not the sender's: \
                     re-seed the sender's data folder from this server (or wipe this one to re-seed it)",
                    id.history_id
                )));
            }
            id.history_id = history_id;
            Ok(())
        })
        .await
    }
}
