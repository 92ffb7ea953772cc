//! Folder modes with real servers and clients: a receive-only folder keeps
//! its own changes (listed by `status`) until the server changes the same
//! path or `revert` brings the server's state back, each local version kept
//! as a copy; a send-only folder leaves the server's changes unapplied until
//! `override` sends its own state; a read-only token runs receive-only and
//! says so once.

use std::{collections::BTreeMap, path::Path};

use sync_client::{Mode, engine::Resolve};
use syncstore::pb;

use crate::harness::*;

/// `status` of a folder: path → (state, detail).
async fn status_of(config: sync_client::Config) -> BTreeMap<String, (String, String)> {
    sync_client::status(config)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.path, (d.state.to_owned(), d.detail)))
        .collect()
}

/// The content of the one conflict copy of `stem` (`stem.txt`) in `files`.
fn copy_of(files: &BTreeMap<String, Vec<u8>>, stem: &str) -> Vec<u8> {
    let prefix = format!("{stem} (conflict from ");
    let copies: Vec<_> = files.iter().filter(|(p, _)| p.starts_with(&prefix)).collect();
    assert_eq!(copies.len(), 1, "one copy of {stem} in {:?}", files.keys());
    copies[0].1.clone()
}

fn text(data: &str) -> Vec<u8> {
    data.as_bytes().to_vec()
}

fn paths(planned: &[sync_client::planner::Planned]) -> Vec<String> {
    let mut out: Vec<String> = planned.iter().map(|p| p.path.to_string()).collect();
    out.sort();
    out
}

/// A one-off command's configuration for the folder `dir` (its mode is
/// the one the folder's state remembers).
fn config_of(url: &str, dir: &Path) -> sync_client::Config {
    sync_client::Config::new(url.to_owned(), dir)
}

#[tokio::test]
async fn a_receive_only_folder_keeps_its_edits_and_revert_brings_back_the_server_version() {
    let server = TestServer::start().await;
    let url = server.url();
    let writer = TestClient::start(&url);
    for (path, data) in [("doc.txt", "doc v1"), ("notes.txt", "notes v1"), ("gone.txt", "gone v1")] {
        writer.write(path, data);
    }
    eventually_async("the writer's files are on the server", || async { server.files().await.len() == 3 })
        .await;
    let mirror = TestClient::start_tweaked(&url, |c| c.mode = Some(Mode::ReceiveOnly));
    eventually("the mirror has the server's files", || mirror.files().len() == 3).await;
    // A downloaded file is in place a moment before its base is recorded:
    // edits must come after that, or they are not edits of the download.
    eventually_async("the mirror has recorded its downloads", || async {
        status_of(mirror.config()).await.is_empty()
    })
    .await;

    // Two edits, an addition and a deletion here.
    mirror.write("doc.txt", "doc edited here");
    mirror.write("notes.txt", "notes edited here");
    mirror.write("new.txt", "added here");
    std::fs::remove_file(mirror.path("gone.txt")).unwrap();

    // Restarted without a mode: the folder remembers receive-only, and
    // its first sync looks at every path.
    let dir = mirror.stop().await;
    let mirror = TestClient::start_tweaked_in(&url, dir, |_| {});
    writer.write("after.txt", "written after the restart");
    eventually("the restarted mirror still receives", || mirror.read("after.txt").is_some()).await;

    let rows = status_of(mirror.config()).await;
    for path in ["doc.txt", "notes.txt", "new.txt", "gone.txt"] {
        assert_eq!(rows.get(path).map(|r| r.0.as_str()), Some(sync_client::LOCALLY_CHANGED), "{rows:?}");
    }
    assert_eq!(rows.len(), 4, "{rows:?}");
    let expected: BTreeMap<String, Vec<u8>> = [
        ("doc.txt", "doc v1"),
        ("notes.txt", "notes v1"),
        ("gone.txt", "gone v1"),
        ("after.txt", "written after the restart"),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_owned(), text(d)))
    .collect();
    assert_eq!(server.files().await, expected, "nothing local reached the server");

    // The server changes an edited path: its version wins here, and the
    // local edit is kept as a copy that stays here.
    writer.write("doc.txt", "doc v2 from the writer");
    eventually("the mirror takes the server's new doc.txt", || {
        mirror.read("doc.txt") == Some(text("doc v2 from the writer"))
    })
    .await;
    assert_eq!(copy_of(&mirror.files(), "doc"), text("doc edited here"));

    // `revert`, dry run first: it changes nothing.
    let dir = mirror.stop().await;
    let before = tree(dir.path());
    let dry = sync_client::resolve_kept(config_of(&url, dir.path()), Resolve::Revert, true).await.unwrap();
    assert_eq!(paths(&dry.done), ["gone.txt", "notes.txt"]);
    assert_eq!(tree(dir.path()), before, "a dry run changes nothing");

    let done = sync_client::resolve_kept(config_of(&url, dir.path()), Resolve::Revert, false).await.unwrap();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    assert_eq!(paths(&done.done), ["gone.txt", "notes.txt"]);
    let files = tree(dir.path());
    assert_eq!(files["notes.txt"], text("notes v1"), "the server's version is back");
    assert_eq!(copy_of(&files, "notes"), text("notes edited here"), "the edit is kept as a copy");
    assert_eq!(files["gone.txt"], text("gone v1"), "the deleted file is back");
    assert_eq!(files["new.txt"], text("added here"), "an addition has nothing to come back to: it stays");
    assert_eq!(files["doc.txt"], text("doc v2 from the writer"));
    assert_eq!(copy_of(&files, "doc"), text("doc edited here"));

    let mut expected = expected;
    expected.insert("doc.txt".into(), text("doc v2 from the writer"));
    assert_eq!(server.files().await, expected, "revert sends nothing");
    writer.stop().await;
}

#[tokio::test]
async fn a_send_only_folder_ignores_a_remote_change_and_override_pushes_its_state() {
    let server = TestServer::start().await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "a from the laptop");
    write(dir.path(), "b.txt", "b from the laptop");
    let laptop = TestClient::start_tweaked_in(&url, dir, |c| c.mode = Some(Mode::SendOnly));
    eventually_async("the laptop's files are on the server", || async { server.files().await.len() == 2 })
        .await;
    let other = TestClient::start(&url);
    eventually("the other client has them", || other.files().len() == 2).await;
    eventually_async("the other client has recorded its downloads", || async {
        status_of(other.config()).await.is_empty()
    })
    .await;

    // The other side edits, deletes and adds.
    other.write("a.txt", "a from the other");
    std::fs::remove_file(other.path("b.txt")).unwrap();
    other.write("c.txt", "c from the other");
    let changed: BTreeMap<String, Vec<u8>> = [("a.txt", "a from the other"), ("c.txt", "c from the other")]
        .into_iter()
        .map(|(p, d)| (p.to_owned(), text(d)))
        .collect();
    eventually_async("the other's changes are on the server", || async { server.files().await == changed })
        .await;

    // Restarted without a mode: still send-only; its own changes still go.
    let dir = laptop.stop().await;
    let laptop = TestClient::start_tweaked_in(&url, dir, |_| {});
    laptop.write("d.txt", "d from the laptop");
    eventually_async("the laptop still sends", || async {
        server.files().await.get("d.txt") == Some(&text("d from the laptop"))
    })
    .await;

    let rows = status_of(laptop.config()).await;
    for path in ["a.txt", "b.txt", "c.txt"] {
        assert_eq!(rows.get(path).map(|r| r.0.as_str()), Some(sync_client::REMOTE_CHANGED), "{rows:?}");
    }
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mine = laptop.files();
    assert_eq!(mine["a.txt"], text("a from the laptop"), "the server's edit is not applied");
    assert_eq!(mine["b.txt"], text("b from the laptop"), "the server's deletion is not applied");
    assert!(!mine.contains_key("c.txt"), "the server's new file is not fetched");

    // `override`, dry run first: it changes nothing.
    let dir = laptop.stop().await;
    let server_before = server.files().await;
    let dry = sync_client::resolve_kept(config_of(&url, dir.path()), Resolve::Override, true).await.unwrap();
    assert_eq!(paths(&dry.done), ["a.txt", "b.txt", "c.txt"]);
    assert_eq!(server.files().await, server_before, "a dry run changes nothing");

    let done =
        sync_client::resolve_kept(config_of(&url, dir.path()), Resolve::Override, false).await.unwrap();
    assert!(done.failed.is_empty(), "{:?}", done.failed);
    let folder = tree(dir.path());
    assert_eq!(server.files().await, folder, "the server matches the folder");
    assert_eq!(folder.len(), 3, "{folder:?}");
    eventually("the other client follows", || other.files() == folder).await;
    let status = status_of(config_of(&url, dir.path())).await;
    assert!(status.is_empty(), "{status:?}");
    other.stop().await;
}

/// The live paths alice's namespace holds.
async fn listed(url: &str, security: &syncstore::connect::Security) -> Vec<String> {
    let mut rpc = rpc_with(url, security);
    let list = rpc.list(pb::ListRequest::default()).await.unwrap().into_inner();
    entries_of(list).await.unwrap().into_iter().map(|e| e.path).collect()
}

// One thread: the client's tasks log through this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_read_only_token_client_runs_receive_only_and_says_so_once() {
    const SAID: &str = "running receive-only";
    const RETRY: &str = "will retry";
    let (logs, _log) = Captured::this_thread(tracing::Level::INFO);

    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with(|c| c.tokens = Some(path)).await;
    let url = server.url();
    let alice = token(&tokens.alice);
    upload(&mut rpc_with(&url, &alice), "shared.txt", b"from alice", 0).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "mine.txt", "written here");
    let viewer_token = token(&tokens.alice_ro);
    let viewer = TestClient::start_tweaked_in(&url, dir, {
        let t = viewer_token.clone();
        |c| c.security = t
    });
    eventually("the viewer receives", || viewer.read("shared.txt").is_some()).await;
    eventually("the viewer says it runs receive-only", || logs.count(SAID) == 1).await;

    // Later local changes are kept, not tried; the server's still arrive.
    viewer.write("mine.txt", "edited here");
    viewer.write("more.txt", "added here");
    upload(&mut rpc_with(&url, &alice), "later.txt", b"later", 0).await.unwrap();
    eventually("the viewer still receives", || viewer.read("later.txt").is_some()).await;
    let mut config = viewer.config();
    config.security = viewer_token.clone();
    let rows = status_of(config).await;
    for path in ["mine.txt", "more.txt"] {
        assert_eq!(rows.get(path).map(|r| r.0.as_str()), Some(sync_client::LOCALLY_CHANGED), "{rows:?}");
    }

    // A restart starts receive-only: it says so once more, and tries
    // nothing.
    let dir = viewer.stop().await;
    let viewer = TestClient::start_tweaked_in(&url, dir, {
        let t = viewer_token.clone();
        |c| c.security = t
    });
    upload(&mut rpc_with(&url, &alice), "last.txt", b"last", 0).await.unwrap();
    eventually("the restarted viewer receives", || viewer.read("last.txt").is_some()).await;
    eventually("the restarted viewer says it runs receive-only", || logs.count(SAID) == 2).await;
    viewer.write("mine.txt", "edited again");
    upload(&mut rpc_with(&url, &alice), "final.txt", b"final", 0).await.unwrap();
    eventually("the viewer still receives", || viewer.read("final.txt").is_some()).await;

    assert_eq!(logs.count(SAID), 2, "once a run");
    assert_eq!(logs.count(RETRY), 0, "no refused upload is retried");
    assert_eq!(logs.count("needs a read-write token"), 1, "one upload was refused, in the first run");
    assert_eq!(
        listed(&url, &alice).await,
        ["final.txt", "last.txt", "later.txt", "shared.txt"],
        "nothing of the viewer's reached the server"
    );
    viewer.stop().await;
}
