//! Upgrading in place: the data folders of the previous release (schema
//! version 5, the committed fixture `tests/fixtures/v5`, made by
//! `tests/fixtures/make-v5.sh`) open with today's server, which serves
//! their files, tombstones, lock history and identity as that release did,
//! goes on from there, and is followed by a new replica. A data folder of
//! schema version 6 (`tests/fixtures/v6`, made by
//! `tests/fixtures/make-v6.sh`), whose large file is one whole blob as every
//! release before chunks stored it, is served and edited as it was, and the
//! file's next version is stored as chunks. A data folder of schema
//! version 7 (`tests/fixtures/v7`) gets the version history it still
//! holds.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use sync_server::{Mode, OnTimeout, ReplicaConfig, Role};
use syncstore::{Reason, connect::Security, pb};
use tempfile::TempDir;
use tonic::Code;

use crate::harness::*;

use pb::change_event::Kind;

/// How long a sync-mode write waits for the replica.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(5);

/// The fixture's folder `name` (`primary` or `replica`).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v5").join(name)
}

/// What the fixture's script recorded beside the folders: the history id,
/// the head, and the client ids of alice and bob.
fn recorded() -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixture("expected")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// A copy of the fixture's folder `name` in a temp dir, and a server of
/// today on it, configured by `tweak`. The temp dir outlives the server.
async fn start_on_copy(name: &str, tweak: impl FnOnce(&mut sync_server::Config)) -> (TestServer, TempDir) {
    init_test_log();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture(name), &data);
    let mut config = sync_server::Config::new(data);
    tweak(&mut config);
    (TestServer::start_on(config, "127.0.0.1:0".parse().unwrap()).await, tmp)
}

/// The events of a subscription from cursor 0 up to `head`.
async fn replay(server: &TestServer, head: u64) -> Vec<pb::ChangeEvent> {
    let mut sub = server
        .rpc()
        .await
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "upgrade-test".into() })
        .await
        .unwrap()
        .into_inner();
    let mut out: Vec<pb::ChangeEvent> = Vec::new();
    while out.last().is_none_or(|e| e.seq < head) {
        out.push(next_event(&mut sub).await);
    }
    out
}

fn lock_of(e: &pb::ChangeEvent) -> &pb::LockInfo {
    e.lock.as_ref().unwrap_or_else(|| panic!("event {} has no lock", e.seq))
}

async fn list(server: &TestServer, include_deleted: bool) -> BTreeMap<String, pb::FileEntry> {
    let s = server
        .rpc()
        .await
        .list(pb::ListRequest { prefix: String::new(), include_deleted, ..Default::default() })
        .await;
    entries_of(s.unwrap().into_inner()).await.unwrap().into_iter().map(|e| (e.path.clone(), e)).collect()
}

async fn live_locks(server: &TestServer) -> Vec<pb::LockInfo> {
    locks_of(server.rpc().await.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await
}

/// Checks the fixture primary's log as a subscription replays it: its file
/// changes, and its lock changes with every field the previous release
/// recorded. Returns the lock still recorded (on plans/next.md).
fn check_fixture_log(events: &[pb::ChangeEvent]) -> pb::LockInfo {
    let ids = recorded();
    let (alice, bob) = (ids["alice"].as_str(), ids["bob"].as_str());
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=16).collect::<Vec<_>>());

    // Seqs 1 to 7: six files uploaded (in the order the client's parallel
    // transfers committed them) and gone.txt deleted.
    let files: BTreeMap<&str, &pb::ChangeEvent> =
        events[..6].iter().map(|e| (e.entry.as_ref().unwrap().path.as_str(), e)).collect();
    let names: Vec<&str> = files.keys().copied().collect();
    assert_eq!(names, ["docs/report.txt", "empty.txt", "gone.txt", "link", "photos", "run.sh"]);
    for e in files.values() {
        let entry = e.entry.as_ref().unwrap();
        assert_eq!((e.kind(), entry.version, e.client_id.as_str()), (Kind::Put, e.seq, alice), "{e:?}");
    }
    let entry = |p: &str| files[p].entry.as_ref().unwrap();
    assert!(entry("photos").folder && entry("link").symlink && entry("run.sh").executable);
    assert_eq!((entry("empty.txt").size, entry("docs/report.txt").size), (0, 17));
    let gone = &events[6];
    assert_eq!((gone.kind(), gone.entry.as_ref().unwrap().path.as_str()), (Kind::Delete, "gone.txt"));
    assert!(gone.entry.as_ref().unwrap().deleted);

    // Seqs 8 to 16: the locks, each field as the previous release stored it.
    let lock_events: Vec<(Kind, &str, &pb::LockInfo)> = events[7..]
        .iter()
        .filter(|e| e.kind() != Kind::Put)
        .map(|e| (e.kind(), e.client_id.as_str(), lock_of(e)))
        .collect();
    let shape: Vec<(Kind, &str, &str, &str, u32, pb::LockEnd)> = lock_events
        .iter()
        .map(|(k, client, l)| (*k, *client, l.path.as_str(), l.note.as_str(), l.ttl_seconds, l.ended()))
        .collect();
    use pb::LockEnd as End;
    assert_eq!(
        shape,
        [
            (Kind::Lock, alice, "docs/report.txt", "final edits", 600, End::Unspecified),
            (Kind::Lock, alice, "docs/report.txt", "final edits", 1200, End::Unspecified),
            (Kind::Unlock, alice, "docs/report.txt", "final edits", 1200, End::Released),
            (Kind::Lock, alice, "run.sh", "tuning", 600, End::Unspecified),
            (Kind::Unlock, bob, "run.sh", "tuning", 600, End::Broken),
            (Kind::Lock, bob, "empty.txt", "brief", 1, End::Unspecified),
            (Kind::Lock, alice, "plans/next.md", "reserved", 604_800, End::Unspecified),
            (Kind::Unlock, "", "empty.txt", "brief", 1, End::Expired),
        ]
    );
    let [grant, refresh, release, run, broken, brief, reserved, expired] =
        <[&pb::LockInfo; 8]>::try_from(lock_events.iter().map(|(_, _, l)| *l).collect::<Vec<_>>()).unwrap();
    // A lock's token is its grant's seq; a refresh keeps the id and token.
    assert_eq!((grant.token, run.token, brief.token, reserved.token), (8, 12, 14, 15));
    for (a, b) in [(grant, refresh), (grant, release), (run, broken), (brief, expired)] {
        assert_eq!(
            (&a.lock_id, a.token, &a.client_id, &a.holder),
            (&b.lock_id, b.token, &b.client_id, &b.holder)
        );
        assert_eq!(a.acquired_ms, b.acquired_ms);
    }
    let distinct: std::collections::BTreeSet<&str> =
        [grant, run, brief, reserved].iter().map(|l| l.lock_id.as_str()).collect();
    assert_eq!(distinct.len(), 4);
    for l in [grant, run, reserved] {
        assert_eq!((l.client_id.as_str(), l.principal.as_str()), (alice, "anonymous"));
        assert_eq!(l.expires_ms - l.acquired_ms, i64::from(l.ttl_seconds) * 1000, "{l:?}");
        assert!(!l.holder.is_empty());
    }
    assert_eq!((brief.client_id.as_str(), brief.principal.as_str()), (bob, "anonymous"));
    assert!(refresh.expires_ms > grant.expires_ms);
    // Who ended each: its holder, someone else, no one.
    let ended_by = |l: &pb::LockInfo| (l.ended_by.clone(), l.ended_by_principal.clone());
    assert_eq!(ended_by(release), (alice.to_owned(), "anonymous".to_owned()));
    assert_eq!(ended_by(broken), (bob.to_owned(), "anonymous".to_owned()));
    assert_eq!(ended_by(expired), (String::new(), String::new()));
    assert_eq!(ended_by(grant), (String::new(), String::new()), "a grant has not ended");
    reserved.clone()
}

#[tokio::test]
async fn a_version_5_primary_upgrades_in_place_and_a_new_replica_follows_it() {
    let ids = recorded();
    let replica = TestServer::start_replica().await;
    let replica_url = replica.url();
    let (primary, _data) = start_on_copy("primary", move |c| {
        c.replica = Some(ReplicaConfig {
            url: replica_url,
            mode: Mode::Sync,
            timeout: REPLICA_TIMEOUT,
            on_timeout: OnTimeout::Fail,
            security: Default::default(),
        });
    })
    .await;

    let status = primary.status().await;
    assert_eq!((status.history_id.as_str(), status.epoch), (ids["history_id"].as_str(), 0));
    assert!(status.head_seq >= 16, "{status:?}");

    // The manifest, tombstone included, and the bytes, as they were.
    let listed = list(&primary, true).await;
    let paths: Vec<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(paths, ["docs/report.txt", "empty.txt", "gone.txt", "link", "photos", "run.sh"]);
    assert_eq!((listed["docs/report.txt"].version, listed["docs/report.txt"].size), (10, 24));
    assert!(listed["gone.txt"].deleted && listed["gone.txt"].version == 7);
    assert!(!list(&primary, false).await.contains_key("gone.txt"));
    assert!(listed["photos"].folder && listed["link"].symlink && listed["run.sh"].executable);
    let files = primary.files().await;
    let want: BTreeMap<String, Vec<u8>> = [
        ("docs/report.txt", &b"quarterly report, final\n"[..]),
        ("empty.txt", b""),
        ("link", b"docs/report.txt"),
        ("run.sh", b"#!/bin/sh\necho hello\n"),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_owned(), d.to_vec()))
    .collect();
    assert_eq!(files, want);

    // The log replays as the previous release recorded it.
    let events = replay(&primary, 16).await;
    let reserved = check_fixture_log(&events);

    // The lock still recorded is in force until its expiry, and ended by
    // the sweeper after it (a fixture older than its 7 days).
    let mut rpc = primary.rpc().await;
    let head = if reserved.expires_ms > syncstore::lock::now_ms() + REPLICA_TIMEOUT.as_millis() as i64 {
        let live = live_locks(&primary).await;
        assert_eq!(live.len(), 1);
        assert_eq!(
            (&live[0].lock_id, live[0].token, &live[0].client_id, live[0].expires_ms),
            (&reserved.lock_id, reserved.token, &reserved.client_id, reserved.expires_ms)
        );
        let refused = upload(&mut rpc, "plans/next.md", b"not yours", 0).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(Reason::of(&refused), Some(Reason::Locked));
        16
    } else {
        let mut sub = rpc
            .subscribe(pb::SubscribeRequest { after_seq: 16, client_id: "upgrade-test".into() })
            .await
            .unwrap()
            .into_inner();
        let e = next_event(&mut sub).await;
        assert_eq!(
            (e.seq, e.kind(), lock_of(&e).lock_id.as_str()),
            (17, Kind::Unlock, reserved.lock_id.as_str())
        );
        assert_eq!(lock_of(&e).ended(), pb::LockEnd::Expired);
        17
    };

    // New writes and locks continue the sequence.
    let put = upload(&mut rpc, "after/new.txt", b"written after the upgrade", 0).await.unwrap();
    assert_eq!(put.version, head + 1);
    let lock = rpc
        .lock(pb::LockRequest {
            path: "docs/report.txt".into(),
            ttl_seconds: 60,
            note: "after".into(),
            client_id: "carol".into(),
            holder: "carol@host".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(lock.token, head + 2);
    let released = rpc
        .unlock(pb::UnlockRequest { lock_id: lock.lock_id.clone(), client_id: "carol".into(), force: false })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    let all = replay(&primary, head + 3).await;
    assert_eq!(all[..16], events[..], "the old log reads the same after new changes");
    let new: Vec<(u64, Kind)> = all[all.len() - 3..].iter().map(|e| (e.seq, e.kind())).collect();
    assert_eq!(new, [(head + 1, Kind::Put), (head + 2, Kind::Lock), (head + 3, Kind::Unlock)]);
    assert_eq!(lock_of(&all[all.len() - 2]), &lock);
    assert_eq!(lock_of(&all[all.len() - 1]).ended(), pb::LockEnd::Released);
    assert_eq!(released.lock_id, lock.lock_id);

    // The new replica caught up with all of it, the upgraded lock changes
    // included, and replays the same log.
    eventually_async("the replica holds what the primary holds", || async {
        sync_server::compare(&primary.url(), &replica.url(), &Security::none())
            .await
            .is_ok_and(|c| c.identical() && c.b.head_seq == head + 3)
    })
    .await;
    assert_eq!(replay(&replica, head + 3).await, all);
    assert_eq!(live_locks(&replica).await, live_locks(&primary).await);
    let r = replica.status().await;
    assert_eq!((r.role.as_str(), r.history_id.as_str()), ("replica", ids["history_id"].as_str()));

    primary.stop().await;
    replica.stop().await;
}

#[tokio::test]
async fn a_promoted_version_5_replica_keeps_its_identity_and_log() {
    let ids = recorded();
    let (old_primary, _primary_data) = start_on_copy("primary", |_| {}).await;
    let (replica, _replica_data) = start_on_copy("replica", |c| c.role = Role::Replica).await;

    let s = replica.status().await;
    assert_eq!(
        (s.role.as_str(), s.epoch, s.primary_url.as_str(), s.history_id.as_str(), s.head_seq),
        ("replica", 1, "http://primary.example:50051", ids["history_id"].as_str(), 16)
    );
    let events = replay(&replica, 16).await;
    check_fixture_log(&events);
    assert_eq!(events, replay(&old_primary, 16).await, "the replica's log is its primary's");

    // It was promoted: as a primary it takes writes at epoch 1.
    let (config, _, addr) = replica.stop().await;
    let primary = TestServer::start_on(sync_server::Config { role: Role::Primary, ..config }, addr).await;
    let s = primary.status().await;
    assert_eq!((s.role.as_str(), s.epoch), ("primary", 1));
    let put = upload(&mut primary.rpc().await, "after.txt", b"after", 0).await.unwrap();
    assert!(put.version > 16);

    primary.stop().await;
    old_primary.stop().await;
}

/// The v6 fixture's data folder: content stored whole.
fn fixture_v6() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v6/primary")
}

#[tokio::test]
async fn content_stored_whole_by_version_6_is_served_edited_and_then_stored_as_chunks() {
    init_test_log();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture_v6(), &data);
    let big = std::fs::read(
        fixture_v6().join("blobs/28/280bf1689b99a1fa41b7246f007e29d5e0b4dc2b452a2cd263c87d9b9388ff66"),
    )
    .unwrap();
    assert!(big.len() as u64 > syncstore::chunks::WHOLE_MAX, "more than one chunk's worth");
    let whole_blob = blob_path(&data, &syncstore::ContentHash::of(&big));
    let server = TestServer::start_on(sync_server::Config::new(data), "127.0.0.1:0".parse().unwrap()).await;
    assert_eq!(server.stored_blobs().await, 2);

    // Served as that release stored it, to a program and to clients.
    assert_eq!(server.files().await["big.bin"], big);
    let alice = TestClient::start(&server.url());
    let bob = TestClient::start(&server.url());
    eventually("both clients have big.bin", || {
        alice.read("big.bin").as_deref() == Some(&big[..]) && bob.read("big.bin").as_deref() == Some(&big[..])
    })
    .await;

    // An edit in the middle reaches the other client; the new version is
    // stored as chunks, and the whole blob stays with the old version.
    let mut edited = big.clone();
    edited[700_000..704_096].copy_from_slice(&random_bytes(4096, 7));
    alice.write("big.bin", &edited);
    eventually("bob has the edit", || bob.read("big.bin").as_deref() == Some(&edited[..])).await;
    assert!(whole_blob.exists(), "the replaced version keeps its whole blob");
    let (blobs, bytes) = server.stored_content().await;
    assert!(blobs > 3, "big.bin is stored as chunks: {blobs} contents");
    assert!(bytes < 2 * big.len() as u64 + 64 * 1024, "each version stored once: {bytes} bytes");

    // The next edit goes on from the chunks.
    let mut again = edited.clone();
    again.splice(300_000..300_000, random_bytes(10, 8));
    alice.write("big.bin", &again);
    eventually("bob has the second edit", || bob.read("big.bin").as_deref() == Some(&again[..])).await;
    assert_eq!(server.files().await["big.bin"], again);

    alice.stop().await;
    bob.stop().await;
    server.stop().await;
}

fn fixture_v7() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v7/primary")
}

/// A data folder of schema version 7 (`tests/fixtures/v7`, made by
/// `tests/fixtures/make-v7.sh`) keeps serving its files, and its files get
/// a history: each starts with the versions the folder still holds (the
/// writes whose content is still stored, the deletions), then goes on
/// with every new write.
#[tokio::test]
async fn a_version_7_folder_upgrades_with_the_history_it_still_holds() {
    use sync_server::storage::{Store, StoreOptions, VersionKind};
    init_test_log();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture_v7(), &data);
    let server =
        TestServer::start_on(sync_server::Config::new(data.clone()), "127.0.0.1:0".parse().unwrap()).await;
    let files = server.files().await;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["keep.txt", "notes.txt"]);
    assert_eq!(files["notes.txt"], b"third draft, longer\n");
    let mut rpc = server.rpc().await;
    let current = rpc.stat(pb::StatRequest { path: "notes.txt".into() }).await.unwrap().into_inner();
    let v5 = current.entry.unwrap().version;
    let v7 = upload(&mut rpc, "notes.txt", b"fourth, after the upgrade\n", v5).await.unwrap().version;
    server.stop().await;

    let store = Store::open(&data, StoreOptions::default()).await.unwrap();
    let path = |p: &str| syncstore::RelPath::new(p).unwrap();
    let notes = store.versions("default", &path("notes.txt"), 0).await.unwrap();
    let seen: Vec<(u64, VersionKind, &str)> =
        notes.iter().map(|v| (v.seq(), v.note.kind, v.note.principal.as_str())).collect();
    // Seq 4 ("second draft") was removed by version 7 when seq 5 replaced
    // it: it is not a version. Seq 1 ("kept") is still stored: keep.txt
    // holds it.
    assert_eq!(
        seen,
        [(v7, VersionKind::Write, "anonymous"), (v5, VersionKind::Write, ""), (1, VersionKind::Write, "")]
    );
    for v in &notes {
        let hash = v.entry.content.unwrap().hash;
        assert!(store.has_blob(&hash).await.unwrap(), "version {} keeps its content", v.seq());
    }
    assert_eq!(notes[2].entry.content.unwrap().hash, syncstore::ContentHash::of(b"kept\n"));
    let gone = store.versions("default", &path("gone.txt"), 0).await.unwrap();
    assert_eq!(gone.iter().map(|v| (v.seq(), v.note.kind)).collect::<Vec<_>>(), [(6, VersionKind::Delete)]);
    let keep = store.versions("default", &path("keep.txt"), 0).await.unwrap();
    assert_eq!(keep.iter().map(|v| v.seq()).collect::<Vec<_>>(), [2]);
}
