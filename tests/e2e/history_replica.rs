//! Version history on a replica: the versions a primary keeps (who, when,
//! what kind, a move) reach its replica with the changes, and a full
//! resync brings the whole history (old versions with their content,
//! labels), not only the current files. Checked on the data folders, with
//! both servers stopped.

use std::time::Duration;

use sync_server::{
    Mode, OnTimeout,
    storage::{Store, StoreOptions, Version, VersionKind},
};
use syncstore::{RelPath, pb, pb::upload_request};

use crate::harness::*;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn identical(a: &TestServer, b: &TestServer) -> bool {
    sync_server::compare(&a.url(), &b.url(), &syncstore::connect::Security::none())
        .await
        .is_ok_and(|c| c.identical())
}

/// A header-only upload of `path` that says it is the file moved from
/// `from` (same content).
async fn move_to(rpc: &mut Rpc, from: &str, path: &str, data: &[u8]) -> pb::FileEntry {
    let mut header = upload_header(path, data, 0);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.moved_from = from.into();
    }
    rpc.upload(tokio_stream::iter([header, upload_end()])).await.unwrap().into_inner().entry.unwrap()
}

async fn delete(rpc: &mut Rpc, path: &str, base_version: u64) {
    let req = pb::DeleteRequest { path: path.into(), base_version, client_id: "t".into(), lock_token: 0 };
    rpc.delete(req).await.unwrap();
}

/// Every kept version of the default namespace of the data folder
/// `data`, in (path, seq) order, with whether its content is stored.
async fn history_of(data: &std::path::Path) -> Vec<(Version, bool)> {
    let store = Store::open(data, StoreOptions::default()).await.unwrap();
    let mut out = Vec::new();
    loop {
        let after = out.last().map(|(v, _): &(Version, bool)| (v.entry.path.as_str().to_owned(), v.seq()));
        let page =
            store.versions_page("default", after.as_ref().map(|(p, s)| (p.as_str(), *s)), 100).await.unwrap();
        if page.is_empty() {
            return out;
        }
        for v in page {
            let stored = match v.entry.content {
                Some(c) => store.has_blob(&c.hash).await.unwrap(),
                None => true,
            };
            out.push((v, stored));
        }
    }
}

/// The history of `b.txt`, following its move, as (seq, kind, path).
async fn moved_history(data: &std::path::Path) -> Vec<(u64, VersionKind, String)> {
    let store = Store::open(data, StoreOptions::default()).await.unwrap();
    let versions = store.versions("default", &RelPath::new("docs/b.txt").unwrap(), 0).await.unwrap();
    versions.iter().map(|v| (v.seq(), v.note.kind, v.entry.path.as_str().to_owned())).collect()
}

#[tokio::test]
async fn versions_reach_the_replica_with_the_changes() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, TIMEOUT, |_| {}).await;
    let mut p = primary.rpc().await;
    let v1 = upload(&mut p, "a.txt", b"first", 0).await.unwrap().version;
    let v2 = upload(&mut p, "a.txt", b"second", v1).await.unwrap().version;
    let moved = move_to(&mut p, "a.txt", "docs/b.txt", b"second").await.version;
    delete(&mut p, "a.txt", v2).await;
    eventually_async("replicated", || identical(&primary, &replica)).await;
    // The temp folders live as long as these.
    let ((pconfig, _pdata, _), (rconfig, _rdata, _)) = (primary.stop().await, replica.stop().await);
    let (pdir, rdir) = (pconfig.data_dir, rconfig.data_dir);

    let on_primary = history_of(&pdir).await;
    assert_eq!(on_primary.len(), 4, "{on_primary:?}");
    assert!(on_primary.iter().all(|(v, stored)| *stored && v.note.principal == "anonymous"));
    assert_eq!(history_of(&rdir).await, on_primary, "the same versions, notes and content");
    let expected = vec![
        (moved, VersionKind::Move, "docs/b.txt".to_owned()),
        (v2, VersionKind::Write, "a.txt".to_owned()),
        (v1, VersionKind::Write, "a.txt".to_owned()),
    ];
    assert_eq!(moved_history(&pdir).await, expected);
    assert_eq!(moved_history(&rdir).await, expected);
}

#[tokio::test]
async fn a_full_resync_brings_the_whole_history() {
    let replica = TestServer::start_replica().await;
    let primary = TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, TIMEOUT, |c| {
        c.store.log_retention = 10
    })
    .await;
    let mut p = primary.rpc().await;
    upload(&mut p, "seed", b"seed", 0).await.unwrap();
    eventually_async("replicated", || identical(&primary, &replica)).await;
    let (config, data, addr) = replica.stop().await;

    // Far more changes than the log keeps: versions of one file, a move, a
    // deletion, and the same content at two versions (sent once).
    let mut v = 0;
    for i in 0..5 {
        v = upload(&mut p, "a.txt", format!("edit {i}").as_bytes(), v).await.unwrap().version;
    }
    let moved = move_to(&mut p, "a.txt", "docs/b.txt", b"edit 4").await.version;
    delete(&mut p, "a.txt", v).await;
    let big = random_bytes(3 << 20, 7);
    let b1 = upload(&mut p, "docs/b.txt", &big, moved).await.unwrap().version;
    upload(&mut p, "docs/b.txt", b"edit 4", b1).await.unwrap();
    for i in 0..12 {
        upload(&mut p, &format!("new/{i}"), &random_bytes(100, i), 0).await.unwrap();
    }
    assert!(primary.status().await.head_seq > 20);

    let replica = TestServer::start_on(config, addr).await;
    eventually_async("the replica converges by a resync", || identical(&primary, &replica)).await;
    // The temp folders live as long as `data` and `_pdata`.
    let (rconfig, _, _) = replica.stop().await;
    let (pconfig, _pdata, _) = primary.stop().await;
    let (pdir, rdir) = (pconfig.data_dir, rconfig.data_dir);

    let on_primary = history_of(&pdir).await;
    assert!(on_primary.len() > 20, "{} versions", on_primary.len());
    assert!(on_primary.iter().all(|(_, stored)| *stored));
    assert_eq!(history_of(&rdir).await, on_primary, "every version, with its note and content");
    let history = moved_history(&rdir).await;
    assert_eq!(history.len(), 8, "{history:?}");
    assert_eq!(history[2], (moved, VersionKind::Move, "docs/b.txt".to_owned()));
    drop(data);
}

/// A history-only change (here a label) reaches a replica in order with the
/// file changes and is applied there, and `Subscribe` never sends it to a
/// client: live or replayed from the log, subscribers see the file changes
/// around it only.
#[tokio::test]
async fn a_history_change_is_replicated_in_order_and_never_sent_to_subscribers() {
    use pb::replicate_request::Msg;
    let replica = TestServer::start_replica().await;
    let status = replica.status().await;
    let mut r = replica.rpc().await;
    let mut live = r
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "live".into() })
        .await
        .unwrap()
        .into_inner();

    // A hand-made primary: a put, a label, a put.
    let put = |seq: u64, path: &str, data: &[u8]| {
        let entry = pb::FileEntry {
            path: path.into(),
            version: seq,
            size: data.len() as u64,
            hash: syncstore::ContentHash::of(data).as_bytes().to_vec(),
            mtime_ns: 1,
            client_id: "c".into(),
            ..Default::default()
        };
        let change = pb::ReplicatedChange {
            seq,
            namespace: "default".into(),
            entry: Some(entry),
            content_follows: true,
            kind: pb::change_event::Kind::Put.into(),
            principal: "alice".into(),
            committed_ms: 1_000 + seq as i64,
            version_kind: pb::VersionKind::Write.into(),
            ..Default::default()
        };
        [Msg::Change(change), Msg::Chunk(data.to_vec())]
    };
    let label = pb::Label {
        name: "before".into(),
        version: 1,
        at_ms: 1_001,
        principal: "alice".into(),
        ..Default::default()
    };
    let history = pb::HistoryChange { what: Some(pb::history_change::What::LabelSet(label)) };
    let label_change = pb::ReplicatedChange {
        seq: 2,
        namespace: "default".into(),
        history: Some(history),
        ..Default::default()
    };
    let hello = pb::ReplicaHello {
        history_id: status.history_id.clone(),
        epoch: status.epoch,
        primary_url: "http://forged.invalid".into(),
        head_seq: 3,
    };
    let mut messages = vec![Msg::Hello(hello)];
    messages.extend(put(1, "a.txt", b"one"));
    messages.push(Msg::Change(label_change));
    messages.extend(put(3, "b.txt", b"three"));
    let requests = messages.into_iter().map(|m| pb::ReplicateRequest { msg: Some(m) });
    // The stream stays open after the last message, as a primary's does.
    let requests = tokio_stream::StreamExt::chain(tokio_stream::iter(requests), tokio_stream::pending());
    let mut client = pb::replication_client::ReplicationClient::new(
        syncstore::connect::Security::none().channel(&replica.url()).unwrap(),
    );
    let responses = client.replicate(requests).await.unwrap().into_inner();
    eventually_async("the replica applied the three changes", || async {
        replica.status().await.head_seq == 3
    })
    .await;

    let first = next_event(&mut live).await;
    let second = next_event(&mut live).await;
    assert_eq!((first.seq, second.seq), (1, 3), "the label's change is not sent live");
    let mut replayed = r
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "late".into() })
        .await
        .unwrap()
        .into_inner();
    let (first, second) = (next_event(&mut replayed).await, next_event(&mut replayed).await);
    assert_eq!((first.seq, second.seq), (1, 3), "nor replayed from the log");
    drop((responses, client));

    let (config, _data, _) = replica.stop().await;
    let store = Store::open(&config.data_dir, StoreOptions::default()).await.unwrap();
    let labels = store.labels("default").await.unwrap();
    assert_eq!(labels.iter().map(|l| (l.name.as_str(), l.seq)).collect::<Vec<_>>(), [("before", 1)]);
    let a = store.versions("default", &RelPath::new("a.txt").unwrap(), 0).await.unwrap();
    assert_eq!(
        (a[0].note.principal.as_str(), a[0].note.committed_ms),
        ("alice", 1_001),
        "the primary's note"
    );
}
