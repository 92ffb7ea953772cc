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

/// The change that writes `data` to `path` of namespace "ns" as version
/// `seq`, by client `client`.
fn file_change(path: &str, seq: u64, data: &str, client: &str) -> Change {
    let entry = Entry {
        path: RelPath::new(path).unwrap(),
        version: seq,
        content: Some(Content {
            hash: ContentHash::of(data.as_bytes()),
            size: data.len() as u64,
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
        }),
        client_id: client.to_owned(),
    };
    let note = VersionNote::plain(&entry, "p", now_ms());
    Change::file("ns", entry, note)
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
                    let path = format!("p{p}/w{w}/f{i}");
                    tx.write(file_change(&path, head + 1, &format!("{p}/{w}/{i}"), &format!("w{w}")));
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

/// How long the tests below wait for what must happen promptly.
const PROMPTLY: Duration = Duration::from_secs(10);

/// A transaction dropped while it holds the head (a request cancelled
/// mid-write) is rolled back: the next writer takes the head at once, and
/// nothing it wrote is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_releases_the_head_and_keeps_nothing() {
    let meta = PgMeta::connect(&fresh_database()).await.unwrap();
    let mut tx = meta.begin();
    assert_eq!(tx.claim_head().await.unwrap(), Some(0));
    tx.write(lock_change(1));
    tx.flush().await.unwrap();
    drop(tx);
    let mut next = meta.begin();
    let head = tokio::time::timeout(PROMPTLY, next.claim_head()).await.expect("the head was released");
    assert_eq!(head.unwrap(), Some(0));
    next.write(lock_change(1));
    next.commit().await.unwrap();
    assert_eq!(meta.head().await.unwrap(), 1);
    assert_eq!(meta.changes_after(None, 0, 10).await.unwrap().len(), 1);
}

/// A commit's notification carries the head it set, so the process it
/// wakes learns it without asking; the wake-up of a (re)connected LISTEN
/// says to ask, since something may have been missed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commits_notification_carries_the_head_it_set() {
    let url = fresh_database();
    let (meta, other) = (PgMeta::connect(&url).await.unwrap(), PgMeta::connect(&url).await.unwrap());
    let shared = meta.shared().unwrap();
    let long_poll = Duration::from_secs(60);
    let heard = tokio::time::timeout(PROMPTLY, shared.changed(long_poll)).await;
    assert_eq!(heard.expect("the LISTEN connection came up"), None, "after connecting, the head is read");
    for _ in 0..2 {
        let mut tx = other.begin();
        let head = tx.claim_head().await.unwrap().unwrap();
        tx.write(lock_change(head + 1));
        tx.commit().await.unwrap();
        let heard = tokio::time::timeout(PROMPTLY, shared.changed(long_poll)).await;
        assert_eq!(heard.expect("the commit was announced"), Some(head + 1));
    }
}

/// A window's writes go in as runs of rows (one statement per table each):
/// a path written again starts a new run, another kind of change is
/// written in its place, and every row reads back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_writes_go_in_as_runs_of_rows_in_order() {
    let meta = PgMeta::connect(&fresh_database()).await.unwrap();
    let mut gone = file_change("c", 6, "", "laptop");
    if let What::File(e, note) = &mut gone.what {
        e.content = None;
        *note = VersionNote::plain(e, "p", now_ms());
    }
    let changes = vec![
        file_change("a", 1, "one", "laptop"),
        file_change("b", 2, "two", "phone"),
        lock_change(3),
        file_change("a", 4, "three", "laptop"),
        file_change("c", 5, "four", "laptop"),
        gone,
    ];
    write_all(&meta.conn().await.unwrap(), changes.iter().map(|c| (c.clone(), None)).collect())
        .await
        .unwrap();
    assert_eq!(meta.changes_after(None, 0, 10).await.unwrap(), changes);
    let listed = meta.list_page("ns", "", None, true, 10).await.unwrap();
    let current: Vec<(&str, u64, bool)> =
        listed.iter().map(|e| (e.path.as_str(), e.version, e.is_deleted())).collect();
    assert_eq!(current, [("a", 4, false), ("b", 2, false), ("c", 6, true)]);
    let a = RelPath::new("a").unwrap();
    let versions: Vec<u64> =
        meta.versions("ns", &a, u64::MAX, 10).await.unwrap().iter().map(Version::seq).collect();
    assert_eq!(versions, [4, 1]);
    assert_eq!(meta.entry_at("ns", &a, 1).await.unwrap().unwrap(), changes[0].entry().unwrap().clone());
}

/// One process at a time holds a duty; when its holder goes, another
/// process takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_at_a_time_holds_a_duty() {
    let url = fresh_database();
    let (a, b) = (PgMeta::connect(&url).await.unwrap(), PgMeta::connect(&url).await.unwrap());
    let held = a.take_duty(Duty::MassChangeGuard).await.unwrap().expect("nobody held it");
    assert!(b.take_duty(Duty::MassChangeGuard).await.unwrap().is_none(), "a holds it");
    assert!(a.take_duty(Duty::MassChangeGuard).await.unwrap().is_none(), "held once, even by its holder");
    assert!(
        tokio::time::timeout(DUTY_CHECK * 2, held.lost()).await.is_err(),
        "a holder whose connection is up keeps it"
    );
    drop(held);
    let deadline = Instant::now() + PROMPTLY;
    loop {
        if b.take_duty(Duty::MassChangeGuard).await.unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "b never took the duty a gave up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lock grant with seq `seq`.
fn lock_change(seq: u64) -> Change {
    let lock = Lock {
        lock_id: format!("l{seq}"),
        path: RelPath::new("doc").unwrap(),
        client_id: "c".into(),
        principal: "alice".into(),
        holder: "alice".into(),
        note: String::new(),
        acquired_ms: 1,
        expires_ms: i64::MAX,
        ttl_seconds: 60,
        token: seq,
    };
    Change { seq, namespace: "ns".into(), what: What::Lock(lock) }
}

/// With the database down, calls fail as UNAVAILABLE (not as internal
/// errors); once it is back, the pool and the LISTEN connection reconnect:
/// another process's commit wakes a waiter long before its poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_unavailable_until_it_is_back() {
    let mut pg = Postgres::start();
    let url = pg.create_database("outage");
    let (meta, other) = (PgMeta::connect(&url).await.unwrap(), PgMeta::connect(&url).await.unwrap());
    meta.ping().await.unwrap();
    pg.stop();
    assert!(matches!(meta.ping().await, Err(Error::Unavailable(_))), "ping while down");
    assert!(matches!(meta.head().await, Err(Error::Unavailable(_))), "a read while down");
    let mut tx = meta.begin();
    tx.write(lock_change(1));
    assert!(matches!(tx.commit().await, Err(Error::Unavailable(_))), "a commit while down");
    pg.start_again();
    let deadline = Instant::now() + PROMPTLY;
    while meta.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the pool did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Drain the wake-ups of the reconnection, then wait for one commit.
    let deadline = Instant::now() + PROMPTLY;
    let shared = meta.shared().unwrap();
    let long_poll = Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the LISTEN connection did not come back");
        let mut tx = other.begin();
        let head = tx.claim_head().await.unwrap().unwrap();
        tx.write(lock_change(head + 1));
        let waiter = async {
            let started = Instant::now();
            shared.changed(long_poll).await;
            started.elapsed()
        };
        let (waited, committed) = tokio::join!(waiter, tx.commit());
        committed.unwrap();
        if waited < Duration::from_secs(5) && meta.head().await.unwrap() == head + 1 {
            break;
        }
    }
}

/// A process's heartbeat makes it one of the processes seen, with its
/// address and head; one not seen within the window is not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_list_the_processes_seen() {
    let meta = PgMeta::connect(&fresh_database()).await.unwrap();
    meta.heartbeat("a", "http://a:1", 5).await.unwrap();
    meta.heartbeat("b", "", 7).await.unwrap();
    meta.heartbeat("a", "http://a:1", 6).await.unwrap();
    let seen = meta.processes(Duration::from_secs(60)).await.unwrap();
    let summary: Vec<(&str, &str, u64)> =
        seen.iter().map(|p| (p.id.as_str(), p.address.as_str(), p.head)).collect();
    assert_eq!(summary, [("a", "http://a:1", 6), ("b", "", 7)]);
    assert!(seen.iter().all(|p| (now_ms() - p.seen_ms).abs() < 60_000));
    meta.pool()
        .get()
        .await
        .unwrap()
        .execute("UPDATE processes SET seen = now() - interval '1 hour' WHERE id = 'b'", &[])
        .await
        .unwrap();
    let ids: Vec<String> =
        meta.processes(Duration::from_secs(60)).await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(ids, ["a"]);
}

/// A young database's tables are analyzed once they grew (which also
/// replaces the plans each connection cached while they were nearly empty:
/// a put's facts read by scanning what was written before); tables that
/// did not change much are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_that_grew_are_analyzed_and_read_by_index() {
    let meta = PgMeta::connect(&fresh_database()).await.unwrap();
    assert_eq!(meta.refresh_statistics().await.unwrap(), Vec::<String>::new(), "nothing changed yet");
    let mut tx = meta.begin();
    for i in 0..2_000u64 {
        tx.write(file_change(&format!("d{}/f{i}", i % 10), i + 1, &format!("{i}"), "c"));
    }
    tx.commit().await.unwrap();
    let c = meta.pool().get().await.unwrap();
    // The statistics the server's connections see arrive within a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let analyzed = loop {
        let analyzed = meta.refresh_statistics().await.unwrap();
        if !analyzed.is_empty() || Instant::now() > deadline {
            break analyzed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for table in ["files", "versions", "changes"] {
        assert!(analyzed.iter().any(|t| t == table), "{table} analyzed: {analyzed:?}");
    }
    assert!(!analyzed.iter().any(|t| t == "locks"), "locks did not change: {analyzed:?}");
    assert_eq!(meta.refresh_statistics().await.unwrap(), Vec::<String>::new(), "analyzed once");
    // The database says so too.
    let analyzed_at: Vec<String> = c
        .query(
            "SELECT relname::text FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL ORDER BY relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(analyzed_at.iter().any(|t| t == "files"), "{analyzed_at:?}");
}
