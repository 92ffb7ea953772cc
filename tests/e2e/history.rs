//! The `History` service against a live server, with raw calls: versions
//! with who and when, reading any kept version (also of a deleted file),
//! restore as a new change every subscriber sees, the trash and a bulk
//! undelete in one batch, rewind (dry run, real, and undone), browsing and
//! comparing points in time, labels and pins, bad input, namespaces and a
//! read-only token.

use std::collections::BTreeMap;

use syncstore::{
    ContentHash,
    connect::{AuthChannel, Security},
    pb::{self, history_client::HistoryClient, point::At},
};
use tonic::Code;

use crate::harness::*;

/// A raw `History` client.
type Hist = HistoryClient<AuthChannel>;

fn history_with(url: &str, security: &Security) -> Hist {
    HistoryClient::new(security.channel(url).unwrap())
}

fn reason(s: &tonic::Status) -> &str {
    s.metadata().get("syncstore-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Asserts that `r` was refused with `code` and `why` in its metadata.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, why: &str) {
    let s = r.expect_err("the call should have been refused");
    assert_eq!((s.code(), reason(&s)), (code, why), "{s:?}");
}

fn at_version(v: u64) -> Option<pb::Point> {
    Some(pb::Point { at: Some(At::Version(v)) })
}

fn at_ms(ms: i64) -> Option<pb::Point> {
    Some(pb::Point { at: Some(At::AtMs(ms)) })
}

fn at_label(name: &str) -> Option<pb::Point> {
    Some(pb::Point { at: Some(At::Label(name.into())) })
}

/// The servers' clock (they run in this process): the system's, moved by
/// a test clock file if one is set.
fn now_ms() -> i64 {
    sync_server::clock::now_ms()
}

/// Every version `ListVersions` gives for `path`, newest first.
async fn versions(h: &mut Hist, path: &str) -> Result<Vec<pb::FileVersion>, tonic::Status> {
    let mut s = h.list_versions(pb::ListVersionsRequest { path: path.into(), limit: 0 }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m.version.expect("a listed version"));
    }
    Ok(out)
}

/// The version and the content `ReadVersion` gives.
async fn read_version(
    h: &mut Hist,
    path: &str,
    point: Option<pb::Point>,
) -> Result<(pb::FileVersion, Vec<u8>), tonic::Status> {
    let mut s = h.read_version(pb::ReadVersionRequest { path: path.into(), point }).await?.into_inner();
    let mut version = None;
    let mut data = Vec::new();
    while let Some(m) = s.message().await? {
        match m.msg {
            Some(pb::read_version_response::Msg::Version(v)) => {
                assert!(version.is_none() && data.is_empty(), "the version comes first, once");
                version = Some(v);
            }
            Some(pb::read_version_response::Msg::Chunk(c)) => data.extend_from_slice(&c),
            None => panic!("an empty message"),
        }
    }
    Ok((version.expect("a version before the content"), data))
}

fn restore_req(path: &str, point: Option<pb::Point>) -> pb::RestoreRequest {
    pb::RestoreRequest { path: path.into(), point, client_id: "restorer".into(), ..Default::default() }
}

async fn trash(h: &mut Hist, req: pb::ListTrashRequest) -> Vec<(pb::FileVersion, pb::FileVersion)> {
    let mut s = h.list_trash(req).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push((m.deleted.unwrap(), m.last.unwrap()));
    }
    out
}

fn entry(v: &pb::FileVersion) -> &pb::FileEntry {
    v.entry.as_ref().expect("a version has its entry")
}

/// A rewind's actions and summary.
async fn rewind(
    h: &mut Hist,
    req: pb::RewindRequest,
) -> Result<(Vec<pb::RewindAction>, pb::RewindSummary), tonic::Status> {
    let mut s = h.rewind(req).await?.into_inner();
    let (mut actions, mut summary) = (Vec::new(), None);
    while let Some(m) = s.message().await? {
        match m.msg {
            Some(pb::rewind_response::Msg::Action(a)) => {
                assert!(summary.is_none(), "the summary comes last");
                actions.push(a);
            }
            Some(pb::rewind_response::Msg::Summary(s)) => summary = Some(s),
            None => panic!("an empty message"),
        }
    }
    Ok((actions, summary.expect("a rewind ends with its summary")))
}

fn rewind_req(under: &str, to: Option<pb::Point>, dry_run: bool) -> pb::RewindRequest {
    pb::RewindRequest { under: under.into(), to, client_id: "rewinder".into(), dry_run }
}

/// Path → size of every file `Browse` lists.
async fn browse(
    h: &mut Hist,
    under: &str,
    at: Option<pb::Point>,
) -> Result<BTreeMap<String, pb::FileEntry>, tonic::Status> {
    let mut s = h.browse(pb::BrowseRequest { under: under.into(), at }).await?.into_inner();
    let mut out = BTreeMap::new();
    while let Some(m) = s.message().await? {
        let e = m.version.unwrap().entry.unwrap();
        assert!(!e.deleted, "browse lists only files that existed: {e:?}");
        out.insert(e.path.clone(), e);
    }
    Ok(out)
}

async fn labels(h: &mut Hist) -> Vec<pb::Label> {
    let mut s = h.list_labels(pb::ListLabelsRequest {}).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push(m.label.unwrap());
    }
    out
}

async fn delete(rpc: &mut Rpc, path: &str, base: u64) -> pb::FileEntry {
    let req =
        pb::DeleteRequest { path: path.into(), base_version: base, client_id: "test".into(), lock_token: 0 };
    rpc.delete(req).await.unwrap().into_inner().entry.unwrap()
}

async fn head(rpc: &mut Rpc) -> u64 {
    rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().head_seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_is_listed_with_who_and_when_and_each_can_be_read_back() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let before = now_ms();
    let one = upload(&mut rpc, "docs/report.txt", b"first draft", 0).await.unwrap();
    let two = upload(&mut rpc, "docs/report.txt", b"second draft, longer", one.version).await.unwrap();
    let three = upload(&mut rpc, "docs/report.txt", b"final", two.version).await.unwrap();
    let after = now_ms();

    let listed = versions(&mut h, "docs/report.txt").await.unwrap();
    let numbers: Vec<u64> = listed.iter().map(|v| entry(v).version).collect();
    assert_eq!(numbers, [three.version, two.version, one.version], "newest first");
    for (v, size) in listed.iter().zip([5, 20, 11]) {
        assert_eq!(v.kind(), pb::VersionKind::Write);
        assert_eq!(v.principal, "anonymous");
        assert_eq!(entry(v).client_id, "test");
        assert_eq!(entry(v).size, size);
        assert!((before..=after).contains(&v.committed_ms), "{} not in {before}..={after}", v.committed_ms);
    }
    assert!(listed.windows(2).all(|w| w[0].committed_ms >= w[1].committed_ms));
    // A limit keeps the newest.
    let mut s = h
        .list_versions(pb::ListVersionsRequest { path: "docs/report.txt".into(), limit: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entry(&s.message().await.unwrap().unwrap().version.unwrap()).version, three.version);
    assert!(s.message().await.unwrap().is_none());

    // Any version's exact bytes, by number, by time and after deletion.
    let (v, data) = read_version(&mut h, "docs/report.txt", at_version(one.version)).await.unwrap();
    assert_eq!((entry(&v).version, data.as_slice()), (one.version, &b"first draft"[..]));
    let two_ms = listed[1].committed_ms;
    let (v, data) = read_version(&mut h, "docs/report.txt", at_ms(two_ms)).await.unwrap();
    assert!(entry(&v).version >= two.version && data.len() as u64 == entry(&v).size);
    let gone = delete(&mut rpc, "docs/report.txt", three.version).await;
    let (_, data) = read_version(&mut h, "docs/report.txt", at_version(one.version)).await.unwrap();
    assert_eq!(data, b"first draft", "a deleted file's versions are still read");
    let listed = versions(&mut h, "docs/report.txt").await.unwrap();
    assert_eq!(entry(&listed[0]).version, gone.version);
    assert_eq!(listed[0].kind(), pb::VersionKind::Delete);
    assert!(entry(&listed[0]).deleted);
    // The deletion itself has no content.
    refused(
        read_version(&mut h, "docs/report.txt", at_version(gone.version)).await,
        Code::NotFound,
        "not-found",
    );
    // A large version comes in pieces, whole.
    let big = random_bytes(3 * syncstore::limits::MAX_CHUNK + 77, 17);
    let b1 = upload(&mut rpc, "big.bin", &big, 0).await.unwrap();
    upload(&mut rpc, "big.bin", b"small now", b1.version).await.unwrap();
    let (v, data) = read_version(&mut h, "big.bin", at_version(b1.version)).await.unwrap();
    assert_eq!(entry(&v).hash, ContentHash::of(&big).as_bytes().to_vec());
    assert!(data == big, "the big version came back whole");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_a_new_version_that_subscribers_get_as_an_ordinary_change() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let one = upload(&mut rpc, "notes.txt", b"version one", 0).await.unwrap();
    let two = upload(&mut rpc, "notes.txt", b"version two", one.version).await.unwrap();
    let mut events = rpc
        .subscribe(pb::SubscribeRequest { after_seq: two.version, client_id: "watcher".into() })
        .await
        .unwrap()
        .into_inner();

    let restored = h.restore(restore_req("notes.txt", at_version(one.version))).await.unwrap().into_inner();
    let v = restored.version.unwrap();
    assert_eq!(v.kind(), pb::VersionKind::Restore);
    assert_eq!(v.restored_from, one.version);
    let e = entry(&v).clone();
    assert!(e.version > two.version && e.path == "notes.txt" && e.client_id == "restorer");
    assert_eq!(e.hash, ContentHash::of(b"version one").as_bytes().to_vec());
    assert_eq!(download(&mut rpc, "notes.txt").await.unwrap(), b"version one");

    // A subscriber sees a plain put of the restored content.
    let ev = next_event(&mut events).await;
    assert_eq!((ev.seq, ev.kind()), (e.version, pb::change_event::Kind::Put));
    assert_eq!(ev.entry.unwrap().hash, e.hash);

    // Newest first: the restore, then the two writes.
    let listed = versions(&mut h, "notes.txt").await.unwrap();
    let kinds: Vec<_> = listed.iter().map(|v| (entry(v).version, v.kind())).collect();
    assert_eq!(
        kinds,
        [
            (e.version, pb::VersionKind::Restore),
            (two.version, pb::VersionKind::Write),
            (one.version, pb::VersionKind::Write)
        ]
    );

    // The restore itself can be undone: restore version two.
    let back = h.restore(restore_req("notes.txt", at_version(two.version))).await.unwrap().into_inner();
    assert_eq!(back.version.unwrap().restored_from, two.version);
    assert_eq!(download(&mut rpc, "notes.txt").await.unwrap(), b"version two");

    // A base version that moved on is refused and changes nothing.
    let stale =
        pb::RestoreRequest { base_version: e.version, ..restore_req("notes.txt", at_version(one.version)) };
    refused(h.restore(stale).await, Code::Aborted, "version-conflict");
    assert_eq!(download(&mut rpc, "notes.txt").await.unwrap(), b"version two");

    // Restore as a copy: the original stays as it is.
    let copy = pb::RestoreRequest {
        to_path: "old/notes-v1.txt".into(),
        ..restore_req("notes.txt", at_version(one.version))
    };
    let copied = h.restore(copy).await.unwrap().into_inner().version.unwrap();
    assert_eq!(entry(&copied).path, "old/notes-v1.txt");
    assert_eq!(download(&mut rpc, "old/notes-v1.txt").await.unwrap(), b"version one");
    assert_eq!(download(&mut rpc, "notes.txt").await.unwrap(), b"version two");
    let ev = next_event(&mut events).await;
    assert_eq!(ev.kind(), pb::change_event::Kind::Put);
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.kind(), ev.entry.unwrap().path.as_str()),
        (pb::change_event::Kind::Put, "old/notes-v1.txt")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trash_lists_deleted_files_by_folder_time_and_glob() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let mut stored = BTreeMap::new();
    for path in ["docs/a.txt", "docs/sub/b.txt", "docs/c.pdf", "other/d.txt", "docsx/e.txt", "kept.txt"] {
        stored.insert(path, upload(&mut rpc, path, path.as_bytes(), 0).await.unwrap());
    }
    let early = delete(&mut rpc, "docs/a.txt", stored["docs/a.txt"].version).await;
    // The server's clock in milliseconds: wait until it has moved past the
    // first deletion, so that `since` can tell them apart.
    let early_ms = versions(&mut h, "docs/a.txt").await.unwrap()[0].committed_ms;
    eventually("the clock moves on", || now_ms() > early_ms + 1).await;
    for path in ["docs/sub/b.txt", "docs/c.pdf", "other/d.txt", "docsx/e.txt"] {
        delete(&mut rpc, path, stored[path].version).await;
    }

    let all = trash(&mut h, pb::ListTrashRequest::default()).await;
    let paths: Vec<&str> = all.iter().map(|(d, _)| entry(d).path.as_str()).collect();
    assert_eq!(paths.len(), 5, "{paths:?}");
    assert_eq!(paths[4], "docs/a.txt", "newest deletion first: {paths:?}");
    assert!(!paths.contains(&"kept.txt"));
    for (deleted, last) in &all {
        assert!(entry(deleted).deleted && !entry(last).deleted);
        assert_eq!(deleted.kind(), pb::VersionKind::Delete);
        assert_eq!(entry(last).path, entry(deleted).path);
        assert_eq!(entry(last).version, stored[entry(last).path.as_str()].version);
    }
    let (_, last) = &all[4];
    assert_eq!(entry(&all[4].0).version, early.version);
    assert_eq!(entry(last).hash, ContentHash::of(b"docs/a.txt").as_bytes().to_vec());

    let listed = |req| {
        let mut h = h.clone();
        async move {
            let mut p: Vec<String> =
                trash(&mut h, req).await.into_iter().map(|(d, _)| entry(&d).path.clone()).collect();
            p.sort();
            p
        }
    };
    let under = pb::ListTrashRequest { under: "docs".into(), ..Default::default() };
    assert_eq!(listed(under).await, ["docs/a.txt", "docs/c.pdf", "docs/sub/b.txt"], "not docsx/");
    let since = pb::ListTrashRequest { under: "docs/".into(), since_ms: early_ms + 1, ..Default::default() };
    assert_eq!(listed(since).await, ["docs/c.pdf", "docs/sub/b.txt"]);
    let names = pb::ListTrashRequest { glob: "*.txt".into(), ..Default::default() };
    assert_eq!(listed(names).await, ["docs/a.txt", "docs/sub/b.txt", "docsx/e.txt", "other/d.txt"]);
    let deep = pb::ListTrashRequest { glob: "docs/*/*.txt".into(), ..Default::default() };
    assert_eq!(listed(deep).await, ["docs/sub/b.txt"]);
    let any = pb::ListTrashRequest { glob: "docs/**".into(), ..Default::default() };
    assert_eq!(listed(any).await, ["docs/a.txt", "docs/c.pdf", "docs/sub/b.txt"]);
    let limited = pb::ListTrashRequest { limit: 2, ..Default::default() };
    assert_eq!(listed(limited).await.len(), 2);

    let long = pb::ListTrashRequest { glob: "*".repeat(1025), ..Default::default() };
    refused(h.list_trash(long).await, Code::InvalidArgument, "invalid-field");
    refused(
        h.list_trash(pb::ListTrashRequest { under: "../x".into(), ..Default::default() }).await,
        Code::InvalidArgument,
        "invalid-path",
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelete_brings_a_folder_of_500_files_back_in_one_batch() {
    const FILES: usize = 500;
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let content = |i: usize| format!("file {i} of the project\n").into_bytes();
    let mut deleted = Vec::new();
    for i in 0..FILES {
        let path = format!("project/{:03}/f{i}.txt", i % 7);
        let e = upload(&mut rpc, &path, &content(i), 0).await.unwrap();
        deleted.push((path.clone(), delete(&mut rpc, &path, e.version).await.version));
    }
    let outside = upload(&mut rpc, "elsewhere.txt", b"x", 0).await.unwrap();
    delete(&mut rpc, "elsewhere.txt", outside.version).await;
    assert!(server.files_listed().await.is_empty());
    let after_seq = head(&mut rpc).await;
    let mut events = rpc
        .subscribe(pb::SubscribeRequest { after_seq, client_id: "watcher".into() })
        .await
        .unwrap()
        .into_inner();

    // A dry run counts and changes nothing.
    let before = head(&mut rpc).await;
    let req = pb::UndeleteRequest { under: "project".into(), client_id: "ops".into(), ..Default::default() };
    let dry = h.undelete(pb::UndeleteRequest { dry_run: true, ..req.clone() }).await.unwrap().into_inner();
    assert_eq!((dry.restored, dry.first_version, dry.last_version), (FILES as u64, 0, 0));
    assert_eq!(head(&mut rpc).await, before);

    let done = h.undelete(req.clone()).await.unwrap().into_inner();
    assert_eq!((done.restored, done.skipped), (FILES as u64, 0));
    assert_eq!(done.first_version, before + 1);
    assert_eq!(done.last_version - done.first_version + 1, FILES as u64, "one batch: consecutive versions");
    assert_eq!(head(&mut rpc).await, done.last_version);

    // Every file is back with its content; the file outside stays deleted.
    let files = server.files().await;
    assert_eq!(files.len(), FILES);
    for (i, (path, _)) in deleted.iter().enumerate() {
        assert_eq!(files.get(path), Some(&content(i)), "{path}");
    }
    // Watchers get them as ordinary puts.
    for _ in 0..FILES {
        let ev = next_event(&mut events).await;
        assert_eq!(ev.kind(), pb::change_event::Kind::Put);
        assert!((done.first_version..=done.last_version).contains(&ev.seq));
    }
    // Each file's history: written, deleted, restored.
    let (path, tombstone) = &deleted[123];
    let listed = versions(&mut h, path).await.unwrap();
    let kinds: Vec<_> = listed.iter().map(|v| v.kind()).collect();
    assert_eq!(kinds, [pb::VersionKind::Restore, pb::VersionKind::Delete, pb::VersionKind::Write]);
    assert_eq!(entry(&listed[1]).version, *tombstone);
    assert_eq!(listed[0].restored_from, entry(&listed[2]).version);
    // Nothing left to bring back.
    let again = h.undelete(req).await.unwrap().into_inner();
    assert_eq!((again.restored, again.first_version), (0, 0));
    assert!(
        trash(&mut h, pb::ListTrashRequest { under: "project".into(), ..Default::default() })
            .await
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_brings_a_folder_back_and_can_itself_be_rewound() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let a = upload(&mut rpc, "w/a.txt", b"a one", 0).await.unwrap();
    let b = upload(&mut rpc, "w/b.txt", b"b one", 0).await.unwrap();
    upload(&mut rpc, "w/c.txt", b"c one", 0).await.unwrap();
    upload(&mut rpc, "outside.txt", b"out one", 0).await.unwrap();
    let point = head(&mut rpc).await;
    let then = server.files().await;

    // Then: a modified, b deleted, d created, and outside changed too.
    upload(&mut rpc, "w/a.txt", b"a two", a.version).await.unwrap();
    delete(&mut rpc, "w/b.txt", b.version).await;
    upload(&mut rpc, "w/d.txt", b"d new", 0).await.unwrap();
    let out = server.files().await;
    let o = versions(&mut h, "outside.txt").await.unwrap()[0].entry.clone().unwrap();
    upload(&mut rpc, "outside.txt", b"out two", o.version).await.unwrap();
    let changed = server.files().await;
    assert_ne!(changed, out);

    // A dry run lists the three paths and changes nothing.
    let head_before = head(&mut rpc).await;
    let (actions, summary) = rewind(&mut h, rewind_req("w", at_version(point), true)).await.unwrap();
    let paths: Vec<&str> = actions.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["w/a.txt", "w/b.txt", "w/d.txt"], "path order");
    assert_eq!((summary.changed, summary.label.as_str(), summary.first_version), (3, "", 0));
    let a_action = &actions[0];
    assert_eq!(entry(a_action.then.as_ref().unwrap()).version, a.version);
    assert!(actions[2].then.as_ref().is_none_or(|v| entry(v).deleted), "d did not exist then");
    assert!(actions[1].now.as_ref().is_some_and(|v| entry(v).deleted), "b is deleted now");
    assert_eq!(head(&mut rpc).await, head_before);
    assert_eq!(server.files().await, changed);

    // The real one: the folder as it was, the rest untouched, one batch.
    let (actions, summary) = rewind(&mut h, rewind_req("w/", at_version(point), false)).await.unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!((summary.changed, summary.skipped), (3, 0));
    assert_eq!(summary.label, format!("before-rewind-{head_before}"));
    // The label is logged first, then the three changes, one after another.
    assert!(summary.first_version > head_before);
    assert_eq!(summary.last_version - summary.first_version, 2);
    let now = server.files().await;
    for p in ["w/a.txt", "w/b.txt", "w/c.txt"] {
        assert_eq!(now.get(p), then.get(p), "{p}");
    }
    assert!(!now.contains_key("w/d.txt"));
    assert_eq!(now.get("outside.txt").map(Vec::as_slice), Some(&b"out two"[..]));
    let label =
        labels(&mut h).await.into_iter().find(|l| l.name == summary.label).expect("the rewind's label");
    assert!(label.automatic);
    assert_eq!(label.version, head_before);

    // Rewinding to that label undoes the rewind.
    let (_, undo) = rewind(&mut h, rewind_req("w", at_label(&summary.label), false)).await.unwrap();
    assert_eq!(undo.changed, 3);
    assert_eq!(server.files().await, changed);
    // Nothing differs: nothing changes, and no label.
    let head_now = head(&mut rpc).await;
    let (actions, nothing) = rewind(&mut h, rewind_req("w", at_version(head_now), false)).await.unwrap();
    assert!(actions.is_empty() && nothing.changed == 0 && nothing.label.is_empty());
    assert_eq!(head(&mut rpc).await, head_now);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_and_diff_show_a_folder_at_a_time_or_a_label() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let a = upload(&mut rpc, "p/a.txt", b"a one", 0).await.unwrap();
    let b = upload(&mut rpc, "p/b.txt", b"b one", 0).await.unwrap();
    upload(&mut rpc, "q/x.txt", b"x", 0).await.unwrap();
    let label = h
        .set_label(pb::SetLabelRequest { name: "release-1".into(), at: None, note: "shipped".into() })
        .await
        .unwrap()
        .into_inner()
        .label
        .unwrap();
    assert_eq!((label.name.as_str(), label.note.as_str(), label.automatic), ("release-1", "shipped", false));
    let when = versions(&mut h, "q/x.txt").await.unwrap()[0].committed_ms;
    eventually("the clock moves on", || now_ms() > when + 1).await;

    upload(&mut rpc, "p/a.txt", b"a two!", a.version).await.unwrap();
    delete(&mut rpc, "p/b.txt", b.version).await;
    upload(&mut rpc, "p/c.txt", b"c", 0).await.unwrap();

    for at in [at_label("release-1"), at_ms(when), at_version(label.version)] {
        let then = browse(&mut h, "p", at.clone()).await.unwrap();
        assert_eq!(then.keys().collect::<Vec<_>>(), ["p/a.txt", "p/b.txt"], "{at:?}");
        assert_eq!(then["p/a.txt"].version, a.version);
    }
    let all = browse(&mut h, "", at_label("release-1")).await.unwrap();
    assert_eq!(all.len(), 3);
    let now = browse(&mut h, "p", at_version(head(&mut rpc).await)).await.unwrap();
    assert_eq!(now.keys().collect::<Vec<_>>(), ["p/a.txt", "p/c.txt"]);

    let mut s = h
        .diff(pb::DiffRequest { under: "".into(), from: at_label("release-1"), to: None })
        .await
        .unwrap()
        .into_inner();
    let mut diff = Vec::new();
    while let Some(d) = s.message().await.unwrap() {
        diff.push((d.path.clone(), d.before.map(|v| entry(&v).size), d.after.map(|v| entry(&v).size)));
    }
    assert_eq!(
        diff,
        [
            ("p/a.txt".to_owned(), Some(5), Some(6)),
            ("p/b.txt".to_owned(), Some(5), None),
            ("p/c.txt".to_owned(), None, Some(1)),
        ]
    );
    // Between two equal points: nothing.
    let mut s = h
        .diff(pb::DiffRequest { under: "p".into(), from: at_label("release-1"), to: at_ms(when) })
        .await
        .unwrap()
        .into_inner();
    assert!(s.message().await.unwrap().is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_and_pins_round_trip() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let one = upload(&mut rpc, "f.txt", b"one", 0).await.unwrap();
    let two = upload(&mut rpc, "f.txt", b"two", one.version).await.unwrap();

    let set = |name: &str, at| pb::SetLabelRequest { name: name.into(), at, note: String::new() };
    let first = h.set_label(set("first", at_version(one.version))).await.unwrap().into_inner().label.unwrap();
    assert_eq!((first.version, first.principal.as_str()), (one.version, "anonymous"));
    let second = h.set_label(set("second:now", None)).await.unwrap().into_inner().label.unwrap();
    assert!(second.version >= two.version, "now: the head");
    refused(h.set_label(set("first", None)).await, Code::AlreadyExists, "label-exists");
    refused(h.set_label(set("bad name", None)).await, Code::InvalidArgument, "invalid-field");
    refused(h.set_label(set(&"x".repeat(129), None)).await, Code::InvalidArgument, "invalid-field");
    let long_note = pb::SetLabelRequest { note: "n".repeat(1025), ..set("noted", None) };
    refused(h.set_label(long_note).await, Code::InvalidArgument, "invalid-field");
    let listed = labels(&mut h).await;
    let names: Vec<(&str, u64)> = listed.iter().map(|l| (l.name.as_str(), l.version)).collect();
    assert_eq!(names, [("first", one.version), ("second:now", second.version)], "oldest first");
    let (_, data) = read_version(&mut h, "f.txt", at_label("first")).await.unwrap();
    assert_eq!(data, b"one");
    refused(read_version(&mut h, "f.txt", at_label("nope")).await, Code::NotFound, "unknown-label");

    let pin = |version, unpin| pb::PinRequest { path: "f.txt".into(), version, unpin };
    let pinned = h.pin(pin(one.version, false)).await.unwrap().into_inner().version.unwrap();
    assert!(pinned.pinned && entry(&pinned).version == one.version);
    let listed = versions(&mut h, "f.txt").await.unwrap();
    assert_eq!(listed.iter().map(|v| v.pinned).collect::<Vec<_>>(), [false, true]);
    let unpinned = h.pin(pin(one.version, true)).await.unwrap().into_inner().version.unwrap();
    assert!(!unpinned.pinned);
    assert!(versions(&mut h, "f.txt").await.unwrap().iter().all(|v| !v.pinned));
    refused(h.pin(pin(two.version + 100, false)).await, Code::NotFound, "unknown-version");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_code_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let one = upload(&mut rpc, "f.txt", b"one", 0).await.unwrap();
    let first_ms = versions(&mut h, "f.txt").await.unwrap()[0].committed_ms;
    let head_before = head(&mut rpc).await;

    refused(
        read_version(&mut h, "f.txt", at_version(one.version + 50)).await,
        Code::NotFound,
        "unknown-version",
    );
    refused(
        h.restore(restore_req("f.txt", at_version(one.version + 50))).await,
        Code::NotFound,
        "unknown-version",
    );
    refused(read_version(&mut h, "f.txt", at_ms(first_ms - 1)).await, Code::OutOfRange, "before-history");
    refused(h.restore(restore_req("f.txt", at_ms(1))).await, Code::OutOfRange, "before-history");
    refused(browse(&mut h, "", at_ms(first_ms - 1000)).await, Code::OutOfRange, "before-history");
    let rw = rewind_req("", at_ms(first_ms - 1), false);
    refused(rewind(&mut h, rw).await, Code::OutOfRange, "before-history");
    refused(versions(&mut h, "../etc/passwd").await, Code::InvalidArgument, "invalid-path");
    refused(read_version(&mut h, "/abs", at_version(1)).await, Code::InvalidArgument, "invalid-path");
    let to_bad =
        pb::RestoreRequest { to_path: "a/../../b".into(), ..restore_req("f.txt", at_version(one.version)) };
    refused(h.restore(to_bad).await, Code::InvalidArgument, "invalid-path");
    let no_client =
        pb::RestoreRequest { client_id: String::new(), ..restore_req("f.txt", at_version(one.version)) };
    refused(h.restore(no_client).await, Code::InvalidArgument, "invalid-field");
    refused(h.restore(restore_req("f.txt", None)).await, Code::InvalidArgument, "invalid-field");
    refused(read_version(&mut h, "f.txt", at_version(0)).await, Code::InvalidArgument, "invalid-field");
    refused(
        read_version(&mut h, "never.txt", at_version(one.version)).await,
        Code::NotFound,
        "unknown-version",
    );
    refused(read_version(&mut h, "never.txt", at_ms(now_ms())).await, Code::NotFound, "not-found");
    let undelete_bad =
        pb::UndeleteRequest { glob: "*".repeat(1025), client_id: "c".into(), ..Default::default() };
    refused(h.undelete(undelete_bad).await, Code::InvalidArgument, "invalid-field");
    assert_eq!(head(&mut rpc).await, head_before, "nothing changed");
    assert_eq!(download(&mut rpc, "f.txt").await.unwrap(), b"one");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_sealed_and_a_read_only_token_cannot_restore() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with(|c| c.tokens = Some(path)).await;
    let url = server.url();
    let mut alice = rpc_with(&url, &token(&tokens.alice));
    let mut alice_h = history_with(&url, &token(&tokens.alice));
    let mut viewer = history_with(&url, &token(&tokens.alice_ro));
    let mut bob = history_with(&url, &token(&tokens.bob));
    let mut admin = history_with(&url, &token(&tokens.admin));

    let one = upload(&mut alice, "plans.txt", b"plan A", 0).await.unwrap();
    let two = upload(&mut alice, "plans.txt", b"plan B", one.version).await.unwrap();
    let listed = versions(&mut alice_h, "plans.txt").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].principal, "alice", "the token's name");

    // A path of another namespace is simply not there.
    assert!(versions(&mut bob, "plans.txt").await.map_or(true, |v| v.is_empty()));
    let r = read_version(&mut bob, "plans.txt", at_version(one.version)).await;
    assert_eq!(r.expect_err("not bob's").code(), Code::NotFound);
    let r = bob.restore(restore_req("plans.txt", at_version(one.version))).await;
    assert_eq!(r.expect_err("not bob's").code(), Code::NotFound);
    assert!(trash(&mut bob, pb::ListTrashRequest::default()).await.is_empty());
    assert!(labels(&mut bob).await.is_empty());
    // History is no admin's business.
    refused(versions(&mut admin, "plans.txt").await, Code::PermissionDenied, "permission-denied");

    // The viewer reads history, and changes nothing.
    let seen = versions(&mut viewer, "plans.txt").await.unwrap();
    assert_eq!(seen.len(), 2);
    let (_, data) = read_version(&mut viewer, "plans.txt", at_version(one.version)).await.unwrap();
    assert_eq!(data, b"plan A");
    let dry = rewind(&mut viewer, rewind_req("", at_version(one.version), true)).await.unwrap();
    assert_eq!(dry.1.changed, 1, "a dry run is a read");
    refused(
        viewer.restore(restore_req("plans.txt", at_version(one.version))).await,
        Code::PermissionDenied,
        "permission-denied",
    );
    let undelete = pb::UndeleteRequest { client_id: "v".into(), ..Default::default() };
    refused(viewer.undelete(undelete).await, Code::PermissionDenied, "permission-denied");
    refused(
        rewind(&mut viewer, rewind_req("", at_version(one.version), false)).await,
        Code::PermissionDenied,
        "permission-denied",
    );
    let label = pb::SetLabelRequest { name: "mine".into(), ..Default::default() };
    refused(viewer.set_label(label).await, Code::PermissionDenied, "permission-denied");
    let pin = pb::PinRequest { path: "plans.txt".into(), version: one.version, unpin: false };
    refused(viewer.pin(pin).await, Code::PermissionDenied, "permission-denied");
    assert_eq!(head(&mut alice).await, two.version, "nothing changed");
    assert_eq!(download(&mut alice, "plans.txt").await.unwrap(), b"plan B");
    assert!(versions(&mut alice_h, "plans.txt").await.unwrap().iter().all(|v| !v.pinned));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_answers_once_a_sync_replica_holds_it() {
    let replica = TestServer::start_replica().await;
    let proxy = Proxy::start(replica.addr).await;
    let url = proxy.url();
    let primary = TestServer::start_with(move |c| {
        c.replica = Some(sync_server::ReplicaConfig {
            url,
            mode: sync_server::Mode::Sync,
            timeout: std::time::Duration::from_millis(300),
            on_timeout: sync_server::OnTimeout::Fail,
            security: Security::none(),
        });
    })
    .await;
    eventually_async("the replication stream is up", || async { primary.status().await.replica_connected })
        .await;
    let mut p = primary.rpc().await;
    let mut h = history_with(&primary.url(), &Security::none());
    let one = upload(&mut p, "doc.txt", b"one", 0).await.unwrap();
    upload(&mut p, "doc.txt", b"two", one.version).await.unwrap();

    // The link goes silent: the restore is committed here but the replica
    // does not confirm it, and the answer says so.
    proxy.pause();
    let err = h.restore(restore_req("doc.txt", at_version(one.version))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::Unavailable, "replica-unconfirmed"), "{err:?}");
    let head = primary.status().await.head_seq;

    // Once the link is back, the replica gets the restore.
    proxy.resume();
    let mut r = replica.rpc().await;
    eventually_async("the replica holds the restore", || {
        let mut h = history_with(&replica.url(), &Security::none());
        async move {
            versions(&mut h, "doc.txt").await.is_ok_and(|v| {
                v.iter().any(|v| v.kind() == pb::VersionKind::Restore && entry(v).version == head)
            })
        }
    })
    .await;
    let listed = versions(&mut history_with(&replica.url(), &Security::none()), "doc.txt").await.unwrap();
    assert_eq!(listed[0].restored_from, one.version);
    assert_eq!(download(&mut r, "doc.txt").await.unwrap(), b"one");
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_file_is_left_alone_by_undelete_and_rewind_and_refuses_a_restore() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let a = upload(&mut rpc, "d/a.txt", b"a one", 0).await.unwrap();
    let b = upload(&mut rpc, "d/b.txt", b"b one", 0).await.unwrap();
    let point = b.version;
    let a2 = upload(&mut rpc, "d/a.txt", b"a two", a.version).await.unwrap();
    let b_gone = delete(&mut rpc, "d/b.txt", b.version).await;
    // Someone else locks a.txt: it is theirs to change.
    let lock = pb::LockRequest {
        path: "d/a.txt".into(),
        ttl_seconds: 600,
        note: String::new(),
        client_id: "editor".into(),
        holder: String::new(),
    };
    rpc.lock(lock).await.unwrap();

    refused(
        h.restore(restore_req("d/a.txt", at_version(a.version))).await,
        Code::FailedPrecondition,
        "locked",
    );
    let (actions, summary) = rewind(&mut h, rewind_req("d", at_version(point), false)).await.unwrap();
    assert_eq!(actions.len(), 2);
    assert_eq!((summary.changed, summary.skipped), (1, 1), "b comes back, a is skipped");
    assert_eq!(download(&mut rpc, "d/a.txt").await.unwrap(), b"a two");
    assert_eq!(download(&mut rpc, "d/b.txt").await.unwrap(), b"b one");
    let listed = versions(&mut h, "d/a.txt").await.unwrap();
    assert_eq!(entry(&listed[0]).version, a2.version, "a.txt unchanged");

    // The trash: b is back, so only what is deleted now counts.
    let b_back = versions(&mut h, "d/b.txt").await.unwrap()[0].entry.clone().unwrap();
    assert!(b_back.version > b_gone.version);
    delete(&mut rpc, "d/b.txt", b_back.version).await;
    let undo = pb::UndeleteRequest { under: "d".into(), client_id: "ops".into(), ..Default::default() };
    let done = h.undelete(undo).await.unwrap().into_inner();
    assert_eq!((done.restored, done.skipped), (1, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follows_a_move_and_the_trash_leaves_the_old_name_out() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let mut h = history_with(&server.url(), &Security::none());
    let one = upload(&mut rpc, "old/name.txt", b"draft", 0).await.unwrap();
    let two = upload(&mut rpc, "old/name.txt", b"final", one.version).await.unwrap();
    // A client moves it: the same content at the new name, with the hint,
    // then the old name deleted.
    let mut header = upload_header("new/name.txt", b"final", 0);
    if let Some(pb::upload_request::Msg::Header(hd)) = &mut header.msg {
        hd.moved_from = "old/name.txt".into();
    }
    let chunk = pb::UploadRequest { msg: Some(pb::upload_request::Msg::Chunk(b"final".to_vec())) };
    let moved = rpc
        .upload(tokio_stream::iter(vec![header, chunk, upload_end()]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    let away = delete(&mut rpc, "old/name.txt", two.version).await;

    let listed = versions(&mut h, "new/name.txt").await.unwrap();
    let seen: Vec<_> = listed.iter().map(|v| (entry(v).path.as_str(), entry(v).version, v.kind())).collect();
    assert_eq!(
        seen,
        [
            ("new/name.txt", moved.version, pb::VersionKind::Move),
            ("old/name.txt", two.version, pb::VersionKind::Write),
            ("old/name.txt", one.version, pb::VersionKind::Write),
        ]
    );
    assert_eq!(listed[0].moved_from, "old/name.txt");
    let old = versions(&mut h, "old/name.txt").await.unwrap();
    assert_eq!((entry(&old[0]).version, old[0].kind()), (away.version, pb::VersionKind::MovedAway));
    assert_eq!(old[0].moved_to, "new/name.txt");
    // The file lives on: nothing is in the trash.
    assert!(trash(&mut h, pb::ListTrashRequest::default()).await.is_empty());
    // Its old content is still read under its old name.
    let (_, data) = read_version(&mut h, "old/name.txt", at_version(one.version)).await.unwrap();
    assert_eq!(data, b"draft");
    server.stop().await;
}
