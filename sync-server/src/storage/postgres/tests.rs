//! PgMeta against a real PostgreSQL (`testing::postgres`).

use std::sync::{
    OnceLock,
    atomic::{AtomicUsize, Ordering},
};

use super::*;
use crate::testing::postgres::Postgres;

/// The cluster of this test process (the watcher stops it when the
/// process ends).
fn cluster() -> &'static Postgres {
    static CLUSTER: OnceLock<Postgres> = OnceLock::new();
    CLUSTER.get_or_init(Postgres::start)
}

/// A fresh database of this process's cluster, its URL.
pub(crate) fn fresh_database() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    cluster().create_database(&format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_at_once_on_a_fresh_database_all_connect() {
    let url = fresh_database();
    let (a, b, c) = tokio::join!(PgMeta::connect(&url), PgMeta::connect(&url), PgMeta::connect(&url));
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let ids = [
        a.load_identity().await.unwrap(),
        b.load_identity().await.unwrap(),
        c.load_identity().await.unwrap(),
    ];
    assert!(!ids[0].history_id.is_empty());
    assert!(
        ids.iter().all(|i| i.history_id == ids[0].history_id),
        "one history id for the database: {ids:?}"
    );
    assert_eq!(a.head().await.unwrap(), 0);
    let version: i64 =
        a.conn().await.unwrap().query_one("SELECT version FROM schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, schema::SCHEMA_VERSION);
    // And again, on a database that has the schema: nothing to do.
    PgMeta::connect(&url).await.unwrap();
}
