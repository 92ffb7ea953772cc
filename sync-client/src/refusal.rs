//! A primary that refuses writes for a while because its sync replica is
//! away: said once in the log (not at every retry), kept in the state so
//! that `status` shows it, and forgotten once nothing waits for a retry.

use crate::{
    error::{Error, Result},
    state::State,
};

/// The state key holding the refusal ("" when there is none).
const KEY: &str = "writes_refused";

/// The refusal this client last met, if it still holds.
#[derive(Debug, Default)]
pub(crate) struct Refusal {
    /// What the server said.
    current: Option<String>,
    /// Its reason and replica: a new refusal only when these change (the
    /// wording, with its times and errors, changes at every retry).
    key: Option<(String, String)>,
}

impl Refusal {
    /// Notes `e` if the server refused a write for its replica's sake;
    /// returns whether it did.
    pub(crate) fn note(&mut self, state: &State, e: &Error) -> bool {
        let Error::Server(refused) = e else { return false };
        if !e.is_replica_refusal() {
            return false;
        }
        let key = (refused.reason.clone(), refused.replica.clone());
        let why = e.to_string();
        if self.key.as_ref() != Some(&key) {
            tracing::warn!(error = %why, "the server refuses writes for now; retrying quietly");
            self.key = Some(key);
        }
        if self.current.as_deref() != Some(why.as_str()) {
            if let Err(e) = state.set_meta(KEY, &why) {
                tracing::debug!(error = %e, "cannot record the refusal");
            }
            self.current = Some(why);
        }
        true
    }

    /// Forgets the refusal: writes go through again.
    pub(crate) fn clear(&mut self, state: &State) {
        self.key = None;
        if self.current.take().is_some() {
            tracing::info!("the server takes writes again");
            if let Err(e) = state.set_meta(KEY, "") {
                tracing::debug!(error = %e, "cannot clear the refusal");
            }
        }
    }

    /// The refusal met, if it still holds.
    pub(crate) fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }
}

/// Forgets a refusal an earlier run left recorded: a new run records it
/// again when it meets it.
pub(crate) fn forget(state: &State) -> Result<()> {
    state.set_meta(KEY, "")
}

/// The refusal a `watch` of this folder last recorded and still holds.
pub(crate) fn stored(state: &State) -> Result<Option<String>> {
    Ok(state.get_meta(KEY)?.filter(|s| !s.is_empty()))
}
