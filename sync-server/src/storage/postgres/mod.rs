//! The shared metadata backend: PostgreSQL, written by any number of
//! server processes at once (see [`super::meta::SharedMeta`]).

// Until `PgMeta` (which calls them) is merged in, the history functions
// have no caller but their tests.
#[allow(dead_code)]
mod history;
#[allow(dead_code)]
mod history_prune;

/// PostgreSQL's errors: a connection that is lost or refused is the
/// database being unavailable; anything else a storage error.
impl From<tokio_postgres::Error> for crate::error::Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if e.is_closed() {
            return crate::error::Error::Unavailable(format!("the metadata database: {e}"));
        }
        crate::error::Error::Storage(crate::error::StorageError::new(
            crate::error::StorageErrorKind::Other,
            e,
        ))
    }
}
