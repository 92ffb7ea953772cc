//! A primary and its replica: fan-out, catch-up, resync, sync-mode
//! failure handling, write refusal, fencing and promotion.

use std::time::Duration;

use sync_server::{Mode, OnTimeout};
use syncstore::{connect::Security, pb};
use tonic::Code;

use crate::harness::*;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn identical(a: &TestServer, b: &TestServer) -> bool {
    sync_server::compare(&a.url(), &b.url(), &Security::none()).await.is_ok_and(|c| c.identical())
}

#[tokio::test]
async fn every_change_made_through_a_client_reaches_the_replica() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let a = TestClient::start(&primary.url());

    a.write("docs/one.txt", "one");
    a.write("docs/two.txt", "two");
    a.write("gone.txt", "soon deleted");
    a.write("big.bin", random_bytes(100 << 20, 100));
    eventually_async("the primary has them", || async { primary.files().await.len() == 4 }).await;
    a.write("docs/one.txt", "one, updated");
    std::fs::remove_file(a.path("gone.txt")).unwrap();
    let want = a.files();
    eventually_async("the primary has the edits", || {
        let (p, w) = (&primary, want.clone());
        async move { p.files().await == w }
    })
    .await;

    // Sync mode: what the primary acknowledged, the replica holds already.
    let c = sync_server::compare(&primary.url(), &replica.url(), &Security::none()).await.unwrap();
    assert!(c.identical(), "{:?}", c.differences);
    assert_eq!(c.a.file_count, 3);
    assert_eq!(c.a.head_seq, c.b.head_seq);
    assert_eq!(replica.files().await, want);

    let s = primary.status().await;
    assert_eq!((s.role.as_str(), s.replication_mode.as_str()), ("primary", "sync"));
    assert!(s.replica_connected && s.replica_lag_changes == 0 && !s.degraded, "{s:?}");
    let r = replica.status().await;
    assert_eq!(r.role, "replica");
    assert_eq!(r.primary_url, primary.url());
    assert_eq!(r.history_id, s.history_id, "the replica adopted the primary's history");

    // Subscribers of the replica see the same numbered changes.
    let mut sub = replica
        .rpc()
        .await
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "r".into() })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut sub).await;
    assert_eq!(first.seq, 1);
}

#[tokio::test]
async fn a_replica_refuses_writes_and_serves_reads() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "shared/readme.txt", b"read me", 0).await.unwrap();
    upload(&mut p, "shared/data.bin", &random_bytes(3 << 20, 3), 0).await.unwrap();

    let mut r = replica.rpc().await;
    let err = upload(&mut r, "x.txt", b"x", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&primary.url()), "names the primary: {}", err.message());
    let err = r
        .delete(pb::DeleteRequest {
            path: "shared/readme.txt".into(),
            base_version: 1,
            client_id: "t".into(),
            lock_token: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A client pointed at the replica downloads everything (read-only use).
    let dir = tempfile::tempdir().unwrap();
    let in_sync = sync_client::sync_once(sync_client::Config::new(replica.url(), dir.path())).await.unwrap();
    assert!(in_sync);
    assert_eq!(tree(dir.path()), primary.files().await);

    // Folder, primary and replica side by side: all agree, until the folder
    // holds something the servers do not.
    let config = sync_client::Config::new(primary.url(), dir.path());
    assert_eq!(sync_client::status_against_replica(config.clone(), &replica.url()).await.unwrap(), []);
    write(dir.path(), "extra.txt", "only here");
    let rows = sync_client::status_against_replica(config, &replica.url()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].path.as_str(), rows[0].primary.as_deref(), rows[0].replica.as_deref()),
        ("extra.txt", None, None)
    );
    assert_eq!(rows[0].folder.as_deref(), Some(&syncstore::ContentHash::of(b"only here").to_hex()[..12]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_after_10000_changes_catches_up_from_the_log() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    upload(&mut p, "before", b"before", 0).await.unwrap();
    eventually_async("replicated", || identical(&primary, &replica)).await;

    let (config, data, addr) = replica.stop().await;
    let writers: Vec<_> = (0..4u32)
        .map(|w| {
            let mut p = p.clone();
            tokio::spawn(async move {
                for i in 0..2500u32 {
                    upload(&mut p, &format!("many/{w}/{i:04}"), &i.to_le_bytes(), 0).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let head = primary.status().await.head_seq;
    assert_eq!(head, 10_001);
    let replica = TestServer::start_on(config, addr).await;
    // One durable apply per change: on a 2-core machine this takes tens of
    // seconds (see the notes on batching).
    let caught_up = || async { replica.status().await.head_seq == head };
    eventually_within(Duration::from_secs(180), "the replica catches up", caught_up).await;
    assert!(identical(&primary, &replica).await);
    eventually_async("the primary sees the replica current", || async {
        primary.status().await.replica_lag_changes == 0
    })
    .await;
    drop(data);
}

#[tokio::test]
async fn a_replica_behind_the_kept_log_gets_a_full_resync() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |c| {
        c.store.log_retention = 10
    })
    .await;
    let mut p = primary.rpc().await;
    for i in 0..5 {
        upload(&mut p, &format!("old/{i}"), b"old", 0).await.unwrap();
    }
    eventually_async("replicated", || identical(&primary, &replica)).await;

    let (config, data, addr) = replica.stop().await;
    // Far more changes than the log keeps: a lock, edits, deletes, new files.
    let lock = p
        .lock(pb::LockRequest {
            path: "reserved.txt".into(),
            ttl_seconds: 3600,
            client_id: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    for i in 0..5u64 {
        upload(&mut p, &format!("old/{i}"), b"edited", i + 1).await.unwrap();
    }
    p.delete(pb::DeleteRequest {
        path: "old/0".into(),
        base_version: 7,
        client_id: "t".into(),
        lock_token: 0,
    })
    .await
    .unwrap();
    for i in 0..50 {
        upload(&mut p, &format!("new/{i}"), &random_bytes(1000, i), 0).await.unwrap();
    }
    assert!(
        primary.rpc().await.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().oldest_seq > 6
    );

    let replica = TestServer::start_on(config, addr).await;
    // The replica's health says NOT_SERVING while the snapshot arrives.
    let channel = tonic::transport::Endpoint::from_shared(replica.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut statuses = health
        .watch(tonic_health::pb::HealthCheckRequest { service: "syncstore.v1.FileSync".into() })
        .await
        .unwrap()
        .into_inner();
    let seen = tokio::spawn(async move {
        use tonic_health::pb::health_check_response::ServingStatus;
        let mut seen = Vec::new();
        while let Ok(Ok(Some(r))) = tokio::time::timeout(DEADLINE, statuses.message()).await {
            seen.push(r.status());
            if seen.ends_with(&[ServingStatus::NotServing, ServingStatus::Serving]) {
                break;
            }
        }
        seen
    });
    eventually_async("the replica converges by a resync", || identical(&primary, &replica)).await;
    assert_eq!(replica.files().await, primary.files().await);
    {
        use tonic_health::pb::health_check_response::ServingStatus::{NotServing, Serving};
        let seen = seen.await.unwrap();
        assert!(seen.ends_with(&[NotServing, Serving]), "health during the resync: {seen:?}");
    }
    // The lock came with the snapshot.
    let mut r = replica.rpc().await;
    let locks = locks_of(r.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert_eq!(locks, vec![lock]);
    let (ps, rs) = (primary.status().await, replica.status().await);
    assert_eq!(rs.head_seq, ps.head_seq);
    // Replication goes on after the resync.
    upload(&mut p, "after-resync", b"x", 0).await.unwrap();
    eventually_async("replicated after the resync", || identical(&primary, &replica)).await;
    drop(data);
}

#[tokio::test]
async fn sync_mode_without_a_replica_fails_or_degrades_as_configured() {
    let short = Duration::from_millis(300);
    for on_timeout in [OnTimeout::Fail, OnTimeout::Degrade] {
        let replica = TestServer::start_replica().await;
        let primary = TestServer::start_primary_of(&replica, Mode::Sync, on_timeout, short, |_| {}).await;
        let mut p = primary.rpc().await;
        upload(&mut p, "first", b"1", 0).await.unwrap();
        let (config, data, addr) = replica.stop().await;

        let result = upload(&mut p, "second", b"2", 0).await;
        match on_timeout {
            OnTimeout::Fail => {
                let err = result.unwrap_err();
                assert_eq!(err.code(), Code::Unavailable, "{err:?}");
                assert!(err.message().contains("replica"), "{}", err.message());
                assert!(!primary.status().await.degraded);
            }
            OnTimeout::Degrade => {
                result.unwrap();
                let s = primary.status().await;
                assert!(s.degraded && !s.replica_connected, "{s:?}");
                // Further writes do not wait while degraded.
                upload(&mut p, "third", b"3", 0).await.unwrap();
            }
        }

        // The replica comes back and catches up; a degraded primary recovers.
        let replica = TestServer::start_on(config, addr).await;
        eventually_async("the replica catches up", || identical(&primary, &replica)).await;
        eventually_async("not degraded any more", || async { !primary.status().await.degraded }).await;
        // (Failing, the primary takes writes again once the link is back.)
        eventually_async("the link is back", || async { primary.status().await.replica_connected }).await;
        upload(&mut p, "after", b"4", 0).await.unwrap();
        assert!(identical(&primary, &replica).await, "sync mode again: acknowledged means replicated");
        drop(data);
    }
}

#[tokio::test]
async fn an_empty_primary_does_not_shadow_its_replica() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    upload(&mut primary.rpc().await, "precious", b"keep me", 0).await.unwrap();
    primary.stop().await;

    // The primary's data folder is lost; it comes back empty.
    let empty = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    eventually_async("the empty primary refuses writes", || async {
        !empty.status().await.writes_refused.is_empty()
    })
    .await;
    let err = upload(&mut empty.rpc().await, "new", b"x", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("re-seed"), "{}", err.message());
    assert_eq!(replica.files().await.len(), 1, "the replica still holds its files");
}

#[tokio::test]
async fn promotion_keeps_clients_syncing_and_fences_the_old_primary() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let a = TestClient::start(&primary.url());
    a.write("before.txt", "acknowledged before the failover");
    a.write("dir/also.txt", "also");
    eventually_async("on the primary, acknowledged by the replica", || async {
        let s = primary.status().await;
        primary.files().await.len() == 2 && s.replica_connected && s.replica_acked_seq == s.head_seq
    })
    .await;
    let a_dir = a.stop().await;
    let acknowledged = primary.status().await.head_seq;

    // The primary's machine dies; the operator promotes the replica.
    let (p_config, p_data, _) = primary.stop().await;
    let (r_config, r_data, r_addr) = replica.stop().await;
    let (history, epoch, head) = sync_server::promote(&r_config.data_dir).await.unwrap();
    assert_eq!((epoch, head), (1, acknowledged));
    let mut new_config = r_config.clone();
    new_config.role = sync_server::Role::Primary;
    let new_primary = TestServer::start_on(new_config, r_addr).await;
    assert_eq!(new_primary.status().await.history_id, history);

    // The client, pointed at the new primary, keeps syncing.
    let a = TestClient::start_in(&new_primary.url(), a_dir);
    a.write("after.txt", "written after the failover");
    eventually_async("the new primary has everything", || async { new_primary.files().await.len() == 3 })
        .await;
    assert_eq!(new_primary.files().await, a.files());

    // The old primary comes back, still configured to replicate to the
    // promoted server: it is refused and refuses writes itself.
    let mut old_config = p_config;
    old_config.replica = Some(sync_server::ReplicaConfig {
        url: new_primary.url(),
        mode: Mode::Sync,
        timeout: TIMEOUT,
        on_timeout: OnTimeout::Fail,
        security: Security::none(),
    });
    let old = TestServer::start_on(old_config, "127.0.0.1:0".parse().unwrap()).await;
    eventually_async("the old primary is fenced", || async { !old.status().await.writes_refused.is_empty() })
        .await;
    let err = upload(&mut old.rpc().await, "split-brain", b"x", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    drop((p_data, r_data));
}

#[tokio::test]
async fn a_client_given_both_servers_reads_from_the_replica_while_the_primary_is_away() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let servers = vec![primary.url(), replica.url()];
    let a = TestClient::start_servers(servers.clone(), tempfile::tempdir().unwrap());
    a.write("one.txt", "one");
    eventually_async("replicated", || async { replica.files().await.len() == 1 }).await;

    let (p_config, p_data, p_addr) = primary.stop().await;
    // A new client given both servers gets everything from the replica.
    let dir = tempfile::tempdir().unwrap();
    let mut config = sync_client::Config::new("", dir.path());
    config.servers = servers.clone();
    assert!(sync_client::sync_once(config).await.unwrap(), "a read-only sync succeeds");
    assert_eq!(tree(dir.path()).keys().collect::<Vec<_>>(), ["one.txt"]);

    // A change made while only the replica answers waits for a primary...
    a.write("two.txt", "written while the primary was away");
    let mut config = sync_client::Config::new("", a.root());
    config.servers = servers.clone();
    let pending = || {
        let config = config.clone();
        async move {
            let diffs = sync_client::status(config).await.unwrap();
            diffs.iter().any(|d| d.path == "two.txt" && d.state == "only-here")
        }
    };
    eventually_async("the change is seen, and waits: the replica refuses it", pending).await;
    let primary = TestServer::start_on(p_config, p_addr).await;
    // ...and lands on both once it is back.
    eventually_async("the change reaches the primary and the replica", || async {
        primary.files().await.len() == 2 && identical(&primary, &replica).await
    })
    .await;
    assert_eq!(primary.files().await, a.files());
    drop(p_data);
}
