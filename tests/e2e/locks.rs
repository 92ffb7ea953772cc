//! File locking end to end: real clients locking, editing and waiting on
//! locks through a real server (and its replica).

use std::{collections::BTreeMap, time::Duration};

use syncstore::pb;
use tonic::Code;

use crate::harness::*;

/// How long a lock takes to show as read-only on another client.
const SHOWS_WITHIN: Duration = Duration::from_secs(1);

fn writable(path: &std::path::Path) -> Option<bool> {
    sync_client::locks::is_writable(path).ok()
}

fn conflict_copies(files: &BTreeMap<String, Vec<u8>>) -> Vec<(&String, &Vec<u8>)> {
    files.iter().filter(|(p, _)| p.contains("(conflict from ")).collect()
}

/// Saves like an editor: a new file renamed over the old one (which works
/// on a read-only file too).
fn save_atomically(path: &std::path::Path, data: &[u8]) {
    let scratch = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
    std::fs::write(scratch.path(), data).unwrap();
    scratch.persist(path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_file_takes_only_its_holders_changes() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("report.docx", "a's draft");
    a.write("notes.txt", "notes");
    eventually("b has a's files", || b.files() == a.files()).await;

    let lock =
        sync_client::lock(a.config(), "report.docx", Duration::from_secs(60), "editing").await.unwrap();
    assert!(lock.holder.contains('@'), "the holder is user@host: {}", lock.holder);
    eventually_within(SHOWS_WITHIN, "b's copy turns read-only", || async {
        writable(&b.path("report.docx")) == Some(false)
    })
    .await;
    assert_eq!(writable(&a.path("report.docx")), Some(true), "the holder's copy stays writable");

    // B edits it anyway: the server keeps A's version, B's edit becomes a
    // conflict copy that reaches the server, and B's copy of the file is
    // A's version again, read-only.
    save_atomically(&b.path("report.docx"), b"b's edit");
    eventually("b's edit is kept as a conflict copy on b and on the server", || {
        let files = b.files();
        conflict_copies(&files).iter().any(|(_, d)| d.as_slice() == b"b's edit")
            && files.get("report.docx").map(Vec::as_slice) == Some(&b"a's draft"[..])
    })
    .await;
    eventually_async("the copy is on the server", || async {
        conflict_copies(&server.files().await).iter().any(|(_, d)| d.as_slice() == b"b's edit")
    })
    .await;
    assert_eq!(server.files().await["report.docx"], b"a's draft");
    eventually("b's copy is read-only again", || writable(&b.path("report.docx")) == Some(false)).await;

    // B's other files keep syncing, and A's edits reach B.
    b.write("notes.txt", "b's notes");
    eventually("a gets b's other edit", || a.read("notes.txt").as_deref() == Some(&b"b's notes"[..])).await;
    a.write("report.docx", "a's second draft");
    eventually("b gets the holder's edit", || {
        b.read("report.docx").as_deref() == Some(&b"a's second draft"[..])
    })
    .await;
    eventually("still read-only after the download", || writable(&b.path("report.docx")) == Some(false))
        .await;

    // status shows the lock on both sides, and neither is out of sync.
    let st = sync_client::status(b.config()).await.unwrap();
    let locked: Vec<_> = st.iter().filter(|d| d.state == sync_client::LOCKED).collect();
    assert_eq!(locked.len(), 1, "{st:?}");
    assert!(locked[0].path == "report.docx" && locked[0].detail.contains(&lock.holder), "{st:?}");

    // B cannot unlock it; A can, and B's copy is writable again.
    let err = sync_client::unlock(b.config(), "report.docx", false).await.unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    sync_client::unlock(a.config(), "report.docx", false).await.unwrap();
    eventually_within(SHOWS_WITHIN, "b's copy is writable again", || async {
        writable(&b.path("report.docx")) == Some(true)
    })
    .await;
    b.write("report.docx", "b's turn");
    eventually("b's edit now reaches a", || a.read("report.docx").as_deref() == Some(&b"b's turn"[..])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lives_while_its_holder_runs_and_expires_when_it_is_gone() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("shared.txt", "v1");
    eventually("b has it", || b.read("shared.txt").is_some()).await;

    let ttl = Duration::from_secs(2);
    let first = sync_client::lock(a.config(), "shared.txt", ttl, "").await.unwrap();
    let locks = || async { sync_client::locks(&[server.url()], &Default::default()).await.unwrap() };
    // The running holder refreshes it past its first expiry.
    eventually_async("the holder refreshed its lock past the first expiry", || async {
        syncstore::lock::now_ms() > first.expires_ms + 500
            && locks().await.iter().any(|l| l.lock_id == first.lock_id && l.expires_ms > first.expires_ms)
    })
    .await;
    eventually("b's copy is read-only", || writable(&b.path("shared.txt")) == Some(false)).await;

    // The holder goes away without unlocking: the lock expires.
    drop(a.stop().await);
    eventually_async("the lock expired", || async { locks().await.is_empty() }).await;
    eventually("b's copy is writable again", || writable(&b.path("shared.txt")) == Some(true)).await;
    b.write("shared.txt", "b after the expiry");
    eventually_async("b's write reaches the server", || async {
        server.files().await.get("shared.txt").map(Vec::as_slice) == Some(&b"b after the expiry"[..])
    })
    .await;
}

#[tokio::test]
async fn the_server_refuses_writes_to_a_locked_path_and_fences_stale_tokens() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    upload(&mut rpc, "doc.txt", b"v1", 0).await.unwrap();
    // A lock may reserve a name that does not exist yet, too.
    for path in ["doc.txt", "reserved.txt"] {
        rpc.lock(pb::LockRequest {
            path: path.into(),
            ttl_seconds: 60,
            note: "mine".into(),
            client_id: "alice-id".into(),
            holder: "alice@laptop".into(),
        })
        .await
        .unwrap();
    }
    let listed = locks_of(rpc.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert_eq!(listed.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), ["doc.txt", "reserved.txt"]);
    let lock = listed[0].clone();

    // Anyone else: refused, naming the holder and the expiry; nothing changes.
    let err = upload(&mut rpc, "doc.txt", b"overwrite", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("alice@laptop") && err.message().contains(" until "), "{}", err.message());
    let err = upload(&mut rpc, "reserved.txt", b"taken", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let del = |client: &str, token| pb::DeleteRequest {
        path: "doc.txt".into(),
        base_version: 1,
        client_id: client.into(),
        lock_token: token,
    };
    assert_eq!(rpc.delete(del("test", 0)).await.unwrap_err().code(), Code::FailedPrecondition);
    let err = rpc
        .lock(pb::LockRequest { path: "doc.txt".into(), client_id: "bob-id".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(server.files().await["doc.txt"], b"v1");

    // Bob breaks the lock with force (an administrator); it is in the log.
    let mut events = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 1, client_id: "watcher".into() })
        .await
        .unwrap()
        .into_inner();
    let broken = rpc
        .unlock(pb::UnlockRequest { lock_id: lock.lock_id.clone(), client_id: "bob-id".into(), force: true })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(broken.ended(), pb::LockEnd::Broken);
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let ev = next_event(&mut events).await;
        kinds.push((ev.kind(), ev.lock.map(|l| (l.path, l.ended_by))));
    }
    assert_eq!(kinds[2], (pb::change_event::Kind::Unlock, Some(("doc.txt".into(), "bob-id".into()))));

    // Fencing: alice's token is refused now, even with no lock on the path.
    let err = rpc.delete(del("alice-id", lock.token)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("no lock"), "{}", err.message());
    // Bob takes it: a larger token; his writes pass with it.
    let bobs = rpc
        .lock(pb::LockRequest { path: "doc.txt".into(), client_id: "bob-id".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert!(bobs.token > lock.token);
    assert_eq!(rpc.delete(del("alice-id", lock.token)).await.unwrap_err().code(), Code::FailedPrecondition);
    rpc.delete(del("bob-id", bobs.token)).await.unwrap();
}

#[tokio::test]
async fn locks_survive_a_restart_reach_the_replica_and_bind_a_promoted_replica() {
    use sync_server::{Mode, OnTimeout};
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, Duration::from_secs(10), |_| {})
            .await;
    let mut rpc = primary.rpc().await;
    upload(&mut rpc, "plan.txt", b"plan", 0).await.unwrap();
    let lock_req = |path: &str| pb::LockRequest {
        path: path.into(),
        ttl_seconds: 3600,
        client_id: "alice-id".into(),
        holder: "alice@laptop".into(),
        ..Default::default()
    };
    let kept = rpc.lock(lock_req("plan.txt")).await.unwrap().into_inner().lock.unwrap();
    let released = rpc.lock(lock_req("other.txt")).await.unwrap().into_inner().lock.unwrap();
    rpc.unlock(pb::UnlockRequest { lock_id: released.lock_id, client_id: "alice-id".into(), force: false })
        .await
        .unwrap();

    let list = |url: String| async move {
        let mut c = pb::file_sync_client::FileSyncClient::connect(url).await.unwrap();
        locks_of(c.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await
    };
    // Sync replication: acknowledged means on the replica.
    assert_eq!(list(replica.url()).await, vec![kept.clone()]);

    let primary = primary.restart().await;
    assert_eq!(list(primary.url()).await, vec![kept.clone()], "the lock survives a restart");
    let err = upload(&mut primary.rpc().await, "plan.txt", b"mine now", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    eventually_async("the replica is current", || async {
        let s = primary.status().await;
        s.replica_connected && s.replica_lag_changes == 0
    })
    .await;

    // The primary is lost; the promoted replica enforces the lock it had.
    drop(primary.stop().await);
    let (r_config, r_data, r_addr) = replica.stop().await;
    sync_server::promote(&r_config.data_dir).await.unwrap();
    let mut config = r_config.clone();
    config.role = sync_server::Role::Primary;
    let promoted = TestServer::start_on(config, r_addr).await;
    assert_eq!(list(promoted.url()).await, vec![kept.clone()]);
    let err = upload(&mut promoted.rpc().await, "plan.txt", b"mine now", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    drop(r_data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_made_read_only_becomes_writable_after_a_restart_if_the_lock_went_meanwhile() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("plan.txt", "plan");
    eventually("b has it", || b.read("plan.txt").is_some()).await;
    sync_client::lock(a.config(), "plan.txt", Duration::from_secs(600), "").await.unwrap();
    eventually("b's copy is read-only", || writable(&b.path("plan.txt")) == Some(false)).await;

    let b_dir = b.stop().await;
    sync_client::unlock(a.config(), "plan.txt", false).await.unwrap();
    let b = TestClient::start_in(&server.url(), b_dir);
    eventually("b's copy is writable after its restart", || writable(&b.path("plan.txt")) == Some(true))
        .await;
}
