//! The replication link under faults: a replica down or silent in sync
//! mode (writes refused at once, nothing written), a write the replica did
//! not confirm and the same write sent again, content the primary has lost,
//! and reconnections backing off while the replica cannot take a change.

use std::time::{Duration, Instant};

use sync_server::{Mode, OnTimeout};
use syncstore::{
    ContentHash, Reason,
    connect::Security,
    pb::{self, upload_request},
    replication::{REPLICA_KEY, committed_version},
};
use tonic::Code;

use crate::harness::*;

/// The sync timeout of the tests where the replica is meant to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// What "at once" means for a refused write: far under [`TIMEOUT`].
const AT_ONCE: Duration = Duration::from_secs(2);

/// A primary replicating to `url` (a replica, or a proxy in front of one).
async fn primary_to(url: String, mode: Mode, timeout: Duration) -> TestServer {
    TestServer::start_with(move |c| {
        c.replica = Some(sync_server::ReplicaConfig {
            url,
            mode,
            timeout,
            on_timeout: OnTimeout::Fail,
            security: Security::none(),
        });
    })
    .await
}

async fn connected(primary: &TestServer) {
    eventually_async("the replication stream is up", || async { primary.status().await.replica_connected })
        .await;
}

/// Checks that `err` refuses a write because the replica at `url` is away,
/// with nothing written.
fn refused_for_replica(err: &tonic::Status, url: &str) {
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(Reason::of(err), Some(Reason::ReplicaUnavailable), "{err:?}");
    assert_eq!(err.metadata().get(REPLICA_KEY).and_then(|v| v.to_str().ok()), Some(url), "{err:?}");
    assert!(err.message().contains(url), "names the replica: {}", err.message());
    assert_eq!(committed_version(err), None, "nothing was committed: {err:?}");
}

/// An upload of `data` to `path` as client `client_id`.
async fn upload_as(
    rpc: &mut Rpc,
    client_id: &str,
    path: &str,
    data: &[u8],
    base: u64,
) -> Result<pb::FileEntry, tonic::Status> {
    let mut header = upload_header(path, data, base);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.client_id = client_id.into();
    }
    let chunks = data
        .chunks(syncstore::limits::MAX_CHUNK)
        .map(|c| pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(c.to_vec())) });
    let msgs: Vec<_> = std::iter::once(header).chain(chunks).chain([upload_end()]).collect();
    let resp = rpc.upload(tokio_stream::iter(msgs)).await?.into_inner();
    Ok(resp.entry.expect("an upload answers with its entry"))
}

#[tokio::test]
async fn with_its_replica_down_a_sync_primary_refuses_writes_at_once_and_writes_nothing() {
    let replica = TestServer::start_replica().await;
    let replica_url = replica.url();
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    let first = upload(&mut p, "first.txt", b"1", 0).await.unwrap();

    let (config, data, addr) = replica.stop().await;
    eventually_async("the primary sees the replica gone", || async {
        !primary.status().await.replica_connected
    })
    .await;
    let head = primary.status().await.head_seq;

    let started = Instant::now();
    let err = upload(&mut p, "second.txt", b"2", 0).await.unwrap_err();
    assert!(started.elapsed() < AT_ONCE, "refused after {:?}", started.elapsed());
    refused_for_replica(&err, &replica_url);
    let delete = pb::DeleteRequest {
        path: "first.txt".into(),
        base_version: first.version,
        client_id: "test".into(),
        ..Default::default()
    };
    refused_for_replica(&p.delete(delete).await.unwrap_err(), &replica_url);
    let lock = pb::LockRequest {
        path: "first.txt".into(),
        ttl_seconds: 60,
        client_id: "test".into(),
        ..Default::default()
    };
    refused_for_replica(&p.lock(lock).await.unwrap_err(), &replica_url);
    assert_eq!(primary.status().await.head_seq, head, "nothing was committed");
    let gone = p.stat(pb::StatRequest { path: "second.txt".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // A sync of a folder of new files ends at once, in error, naming the
    // replica; it does not report "in sync".
    let dir = tempfile::tempdir().unwrap();
    for i in 0..200 {
        write(dir.path(), &format!("new/{i:03}.txt"), format!("file {i}"));
    }
    let config_a = sync_client::Config::new(primary.url(), dir.path());
    let started = Instant::now();
    let ended = tokio::time::timeout(DEADLINE, sync_client::sync_once(config_a.clone())).await;
    let err = ended.expect("the sync ends by itself").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(err.to_string().contains(&replica_url), "names the replica: {err}");
    assert_eq!(primary.status().await.head_seq, head, "nothing was committed");

    // The replica is back: the same sync goes through, onto both.
    let replica = TestServer::start_on(config, addr).await;
    connected(&primary).await;
    assert!(sync_client::sync_once(config_a).await.unwrap(), "in sync once the replica is back");
    let files = primary.files().await;
    assert_eq!(files.len(), 201);
    eventually_async("the replica holds everything", || {
        let (replica, files) = (&replica, files.clone());
        async move { replica.files().await == files }
    })
    .await;
    drop(data);
}

#[tokio::test]
async fn a_write_the_replica_did_not_confirm_names_its_version_and_sending_it_again_is_the_same_write() {
    let replica = TestServer::start_replica().await;
    let proxy = Proxy::start(replica.addr).await;
    let primary = primary_to(proxy.url(), Mode::Sync, Duration::from_millis(300)).await;
    connected(&primary).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "before.txt", b"before", 0).await.unwrap();
    let doc = random_bytes(3 << 20, 5);

    // The network to the replica goes silent: the write is committed here
    // but not confirmed, and the answer says which version it is.
    proxy.pause();
    let err = upload(&mut p, "doc.txt", &doc, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(Reason::of(&err), Some(Reason::ReplicaUnconfirmed), "{err:?}");
    let version = committed_version(&err).expect("the committed version is in the metadata");
    let head = primary.status().await.head_seq;
    assert_eq!(version, head);
    assert!(err.message().contains(&proxy.url()), "names the replica: {}", err.message());

    // Sent again while the replica is still silent: the same write, not
    // a new one, and still not confirmed.
    let again = upload(&mut p, "doc.txt", &doc, 0).await.unwrap_err();
    assert_eq!(Reason::of(&again), Some(Reason::ReplicaUnconfirmed), "{again:?}");
    assert_eq!(committed_version(&again), Some(version));
    assert_eq!(primary.status().await.head_seq, head, "nothing new was committed");
    // The same bytes from another client are not that write.
    let other = upload_as(&mut p, "someone-else", "doc.txt", &doc, 0).await.unwrap_err();
    assert_eq!(other.code(), Code::Aborted, "{other:?}");

    // Once the replica has it, sending it again answers OK with that
    // version, and still commits nothing.
    proxy.resume();
    eventually_async("the replica confirms the write", || async {
        primary.status().await.replica_acked_seq >= version
    })
    .await;
    let entry = upload(&mut p, "doc.txt", &doc, 0).await.unwrap();
    assert_eq!(entry.version, version);
    assert_eq!(primary.status().await.head_seq, head);
    assert_eq!(replica.files().await.get("doc.txt"), Some(&doc));

    // A delete sent twice is one delete.
    let delete = pb::DeleteRequest {
        path: "doc.txt".into(),
        base_version: version,
        client_id: "test".into(),
        lock_token: 0,
    };
    let gone = p.delete(delete.clone()).await.unwrap().into_inner().entry.unwrap();
    let gone_again = p.delete(delete).await.unwrap().into_inner().entry.unwrap();
    assert_eq!(gone_again, gone);
    assert_eq!(primary.status().await.head_seq, gone.version);
}

#[tokio::test]
async fn a_silent_replica_is_taken_as_gone_within_seconds() {
    let replica = TestServer::start_replica().await;
    let proxy = Proxy::start(replica.addr).await;
    let primary = primary_to(proxy.url(), Mode::Sync, TIMEOUT).await;
    connected(&primary).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "before.txt", b"before", 0).await.unwrap();

    // Connections stay open, nothing gets through.
    proxy.pause();
    let paused = Instant::now();
    eventually_within(Duration::from_secs(10), "the primary takes the replica as gone", || async {
        !primary.status().await.replica_connected
    })
    .await;
    assert!(paused.elapsed() < Duration::from_secs(6), "noticed after {:?}", paused.elapsed());
    let status = primary.status().await;
    assert!(status.replica_error.contains("heartbeat"), "{status:?}");

    let head = status.head_seq;
    let started = Instant::now();
    let err = upload(&mut p, "during.txt", b"during", 0).await.unwrap_err();
    assert!(started.elapsed() < AT_ONCE, "refused after {:?}", started.elapsed());
    refused_for_replica(&err, &proxy.url());
    assert_eq!(primary.status().await.head_seq, head);

    // The network heals: the link comes back and writes reach both.
    proxy.resume();
    connected(&primary).await;
    upload(&mut p, "after.txt", b"after", 0).await.unwrap();
    let files = primary.files().await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["after.txt", "before.txt"]);
    assert_eq!(replica.files().await, files);
}

#[tokio::test]
async fn content_the_primary_lost_does_not_hold_up_the_changes_behind_it() {
    // A primary without a replica yet holds a file whose copy then rots.
    let primary = TestServer::start().await;
    let mut p = primary.rpc().await;
    upload(&mut p, "a.txt", b"fine", 0).await.unwrap();
    let content = random_bytes(300_000, 7);
    let rotten = upload(&mut p, "rotten.bin", &content, 0).await.unwrap();
    let blob = blob_path(primary.data_dir(), &ContentHash::of(&content));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&blob, bytes).unwrap();

    // It gets a sync replica, which catches up from the log: the rotten
    // copy is not sent as good, and is not retried forever either; the
    // change goes without it and the replica gets past it.
    let replica = TestServer::start_replica().await;
    let (mut config, data, addr) = primary.stop().await;
    config.replica = Some(sync_server::ReplicaConfig {
        url: replica.url(),
        mode: Mode::Sync,
        timeout: TIMEOUT,
        on_timeout: OnTimeout::Fail,
        security: Security::none(),
    });
    let primary = TestServer::start_on(config, addr).await;
    eventually_async("the replica gets past the rotten change", || async {
        let s = primary.status().await;
        s.replica_connected && s.replica_acked_seq == s.head_seq
    })
    .await;

    // Later, unrelated writes are confirmed as usual.
    let mut p = primary.rpc().await;
    let started = Instant::now();
    upload(&mut p, "later.txt", b"later", 0).await.unwrap();
    assert!(started.elapsed() < TIMEOUT, "took {:?}", started.elapsed());
    let status = primary.status().await;
    assert_eq!(status.replica_acked_seq, status.head_seq, "{status:?}");
    assert_eq!(status.replica_lost_changes, 1, "{status:?}");
    assert!(status.replica_last_lost.contains("rotten.bin"), "{status:?}");
    assert!(status.replica_last_lost.contains(&rotten.version.to_string()), "{status:?}");
    assert_eq!(status.replica_blocked_seq, 0, "{status:?}");

    // The replica has the other files, and no bytes at all for the rotten
    // one: the corrupt copy was not spread.
    let mut r = replica.rpc().await;
    assert_eq!(download(&mut r, "a.txt").await.unwrap(), b"fine");
    assert_eq!(download(&mut r, "later.txt").await.unwrap(), b"later");
    let entry =
        r.stat(pb::StatRequest { path: "rotten.bin".into() }).await.unwrap().into_inner().entry.unwrap();
    assert_eq!(entry.version, rotten.version);
    assert_eq!(download(&mut r, "rotten.bin").await.unwrap_err().code(), Code::NotFound);
    drop(data);
}

#[tokio::test]
async fn a_change_whose_content_is_missing_on_the_primary_is_reported_lost_and_passed() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "before.txt", b"before", 0).await.unwrap();
    eventually_async("replicated", || async { replica.files().await.len() == 1 }).await;

    // While the replica is away, a file is written, then its blob goes
    // missing on the primary (a disk fault, a careless cleanup).
    let (config, data, addr) = replica.stop().await;
    let content = random_bytes(50_000, 9);
    let gone = upload(&mut p, "gone.bin", &content, 0).await.unwrap();
    std::fs::remove_file(blob_path(primary.data_dir(), &ContentHash::of(&content))).unwrap();
    upload(&mut p, "after.txt", b"after", 0).await.unwrap();

    // The replica catches up past it, and the primary says what was lost.
    let replica = TestServer::start_on(config, addr).await;
    eventually_async("the changes behind it reach the replica", || async {
        replica.files_listed().await.contains(&"after.txt".to_owned())
    })
    .await;
    let status = primary.status().await;
    assert_eq!(status.replica_lost_changes, 1, "{status:?}");
    assert!(status.replica_last_lost.contains("gone.bin"), "{status:?}");
    assert!(status.replica_last_lost.contains(&gone.version.to_string()), "{status:?}");
    // The replica knows the entry, and has no content to serve for it.
    let mut r = replica.rpc().await;
    let entry =
        r.stat(pb::StatRequest { path: "gone.bin".into() }).await.unwrap().into_inner().entry.unwrap();
    assert_eq!(entry.version, gone.version);
    assert_eq!(download(&mut r, "gone.bin").await.unwrap_err().code(), Code::NotFound);
    drop(data);
}

#[tokio::test]
async fn reconnections_back_off_while_the_replica_cannot_take_a_change() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "ok.txt", b"ok", 0).await.unwrap();
    eventually_async("replicated", || async { replica.files().await.len() == 1 }).await;

    // The replica cannot stage any content (as good as a full disk): its
    // temp folder is a file now.
    let tmp = replica.data_dir().join("tmp");
    let away = replica.data_dir().join("tmp.away");
    std::fs::rename(&tmp, &away).unwrap();
    std::fs::write(&tmp, b"not a folder").unwrap();
    let stuck = upload(&mut p, "stuck.bin", &random_bytes(100_000, 1), 0).await.unwrap();
    eventually_async("the status names the change replication is stuck on", || async {
        primary.status().await.replica_blocked_seq == stuck.version
    })
    .await;

    // Each failed attempt waits longer than the one before: four more take
    // seconds, not the fraction of a second of a fixed short delay.
    let from = primary.status().await.replica_connect_attempts;
    let started = Instant::now();
    eventually_async("four more attempts", || async {
        primary.status().await.replica_connect_attempts >= from + 4
    })
    .await;
    assert!(started.elapsed() > Duration::from_millis(1500), "4 attempts in {:?}", started.elapsed());
    let status = primary.status().await;
    assert!(!status.replica_error.is_empty(), "{status:?}");

    // The replica can write again: the change goes through.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::rename(&away, &tmp).unwrap();
    eventually_async("the stuck change reaches the replica", || async {
        replica.files().await.contains_key("stuck.bin")
    })
    .await;
    eventually_async("no longer stuck", || async { primary.status().await.replica_blocked_seq == 0 }).await;
}

#[tokio::test]
async fn a_watching_client_says_why_the_primary_refuses_its_writes() {
    let replica = TestServer::start_replica().await;
    let replica_url = replica.url();
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let a = TestClient::start(&primary.url());
    a.write("one.txt", "one");
    eventually_async("synced", || async { primary.files().await.len() == 1 }).await;

    let (config, data, addr) = replica.stop().await;
    eventually_async("the primary sees the replica gone", || async {
        !primary.status().await.replica_connected
    })
    .await;
    a.write("two.txt", "two");
    let refusal = || sync_client::writes_refused(&a.config()).unwrap();
    eventually("the client records why its writes are refused", || refusal().is_some()).await;
    let why = refusal().unwrap();
    assert!(why.contains(&replica_url), "names the replica: {why}");

    // The replica is back: the change goes through and the refusal is over.
    let replica = TestServer::start_on(config, addr).await;
    eventually_async("the change reaches both servers", || async {
        primary.files().await.len() == 2 && replica.files().await.len() == 2
    })
    .await;
    eventually("the refusal is cleared", || refusal().is_none()).await;
    drop(data);
}
