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

/// Processes (`PgMeta` instances) of the feed-order test.
const PROCESSES: usize = 3;
/// Concurrent writer tasks per process.
const WRITERS: usize = 8;
/// Write transactions per writer.
const WRITES_EACH: usize = 100;
/// Readers following the log, each on a process of its own.
const READERS: usize = 3;

/// Writers of several processes append concurrently, each transaction
/// taking the head (`claim_head`), writing the change with seq head + 1
/// and committing, while readers follow the log by `seq > cursor`: every
/// reader sees every seq exactly once, in order, with no gap.
///
/// It holds because the head's row lock is taken before a seq is chosen and
/// released only by the commit: the transaction that takes seq n + 1 waits
/// until the one with seq n has committed, so seqs become visible in seq
/// order. With seqs handed out by a sequence (`nextval()`) and no lock, two
/// transactions commit in either order; a reader that sees seq n + 1 before
/// n has committed moves its cursor past n and never reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seqs_become_visible_in_order_across_processes() {
    let url = fresh_database();
    let mut metas = Vec::new();
    for _ in 0..PROCESSES {
        metas.push(PgMeta::connect(&url).await.unwrap());
    }
    let total = (PROCESSES * WRITERS * WRITES_EACH) as u64;
    let mut readers = Vec::new();
    for r in 0..READERS {
        let meta = metas[r % PROCESSES].clone();
        readers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut cursor = 0;
            while cursor < total {
                assert!(Instant::now() < deadline, "reader {r} stuck at seq {cursor} of {total}");
                let page = meta.changes_after(None, cursor, 500).await.unwrap();
                for change in &page {
                    assert_eq!(change.seq, cursor + 1, "reader {r} after seq {cursor}");
                    cursor = change.seq;
                }
                if page.is_empty() {
                    meta.shared().unwrap().changed(Duration::from_millis(100)).await;
                }
            }
            cursor
        }));
    }
    let mut writers = Vec::new();
    for (p, meta) in metas.iter().enumerate() {
        for w in 0..WRITERS {
            let meta = meta.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..WRITES_EACH {
                    let mut tx = meta.begin();
                    let head = tx.claim_head().await.unwrap().expect("a shared backend has a head");
                    let data = format!("{p}/{w}/{i}");
                    let entry = Entry {
                        path: RelPath::new(format!("p{p}/w{w}/f{i}")).unwrap(),
                        version: head + 1,
                        content: Some(Content {
                            hash: ContentHash::of(data.as_bytes()),
                            size: data.len() as u64,
                            mtime_ns: 1,
                            executable: false,
                            symlink: false,
                            folder: false,
                        }),
                        client_id: format!("w{w}"),
                    };
                    let note = VersionNote::plain(&entry, "p", now_ms());
                    tx.write(Change::file("ns", entry, note));
                    tx.commit().await.unwrap();
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(metas[0].head().await.unwrap(), total);
    for r in readers {
        assert_eq!(r.await.unwrap(), total);
    }
}
