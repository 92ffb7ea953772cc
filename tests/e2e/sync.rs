//! Real clients syncing real folders through a real server.

use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

use crate::harness::*;

fn conflict_copies(files: &BTreeMap<String, Vec<u8>>) -> Vec<(&String, &Vec<u8>)> {
    files.iter().filter(|(p, _)| p.contains("(conflict from ")).collect()
}

#[tokio::test]
async fn every_change_reaches_the_other_client() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());

    // Create: nested folders, an empty file, Unicode names.
    a.write("hello.txt", "hello");
    a.write("deep/er/still/deeper.md", "# deep");
    a.write("empty", "");
    a.write("ünïcödé/日本語 ✓.txt", "unicode");
    let expected = a.files();
    eventually("b has a's files", || b.files() == expected).await;

    // Update, both ways.
    a.write("hello.txt", "hello again, longer");
    eventually("b sees the update", || b.read("hello.txt").as_deref() == Some(&b"hello again, longer"[..]))
        .await;
    b.write("empty", "not empty any more");
    eventually("a sees b's update", || a.read("empty").as_deref() == Some(&b"not empty any more"[..])).await;

    // Executable bit.
    std::fs::set_permissions(a.path("hello.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    eventually("b sees the mode change", || {
        std::fs::metadata(b.path("hello.txt")).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
    })
    .await;

    // Delete a file, and a whole folder.
    std::fs::remove_file(a.path("ünïcödé/日本語 ✓.txt")).unwrap();
    std::fs::remove_dir_all(b.path("deep")).unwrap();
    eventually("both deletions everywhere", || {
        let (fa, fb) = (a.files(), b.files());
        fa == fb && fa.keys().collect::<Vec<_>>() == ["empty", "hello.txt"]
    })
    .await;
    let on_server = server.files().await;
    assert_eq!(on_server, a.files());
    assert!(!b.path("deep").exists(), "a folder emptied by remote deletes is removed");
}

#[tokio::test]
async fn a_50_mib_file_syncs_intact() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let data = random_bytes(50 << 20, 50);
    a.write("big.bin", &data);
    eventually("b has the whole file", || b.read("big.bin").is_some_and(|d| d.len() == data.len())).await;
    assert!(b.read("big.bin").unwrap() == data, "content differs");
    // Nothing half-written was ever visible: the download went through a
    // temp file in the state folder, which is empty again.
    assert_eq!(count_files(&b.root().join(".syncstore/tmp")), 0);
}

#[tokio::test]
async fn editors_saving_by_rename_and_ignored_files() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("doc.txt", "v1");
    eventually("b has v1", || b.read("doc.txt").as_deref() == Some(&b"v1"[..])).await;

    // vim-style: write a swap file and a temp, rename over the original.
    a.write(".doc.txt.swp", "swap");
    a.write("doc.txt.tmp~", "v2");
    std::fs::rename(a.path("doc.txt.tmp~"), a.path("doc.txt")).unwrap();
    eventually("b has v2", || b.read("doc.txt").as_deref() == Some(&b"v2"[..])).await;

    // .syncignore rules apply (and the file itself syncs).
    a.write(".syncignore", "*.log\nbuild/\n");
    eventually("b has the ignore file", || b.read(".syncignore").is_some()).await;
    a.write("build/out.o", "object");
    a.write("run.log", "log");
    a.write("marker.txt", "after the ignored ones");
    eventually("b has the marker", || b.read("marker.txt").is_some()).await;
    let names: Vec<String> = b.files().into_keys().collect();
    assert_eq!(names, [".syncignore", "doc.txt", "marker.txt"]);
    assert!(!server.files().await.contains_key(".doc.txt.swp"));
}

#[tokio::test]
async fn a_stopped_client_catches_up_by_the_three_way_rules() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    for name in [
        "keep",
        "edit_here",
        "edit_there",
        "del_here",
        "del_there",
        "del_here_edit_there",
        "edit_here_del_there",
        "same_both",
    ] {
        a.write(name, format!("original {name}"));
    }
    let original = a.files();
    eventually("b has everything", || b.files() == original).await;

    let b_dir = b.stop().await;
    let b_root = b_dir.path().canonicalize().unwrap();

    // While b is away, a (online) changes things...
    a.write("edit_there", "edited by a");
    std::fs::remove_file(a.path("del_there")).unwrap();
    a.write("del_here_edit_there", "edited by a");
    std::fs::remove_file(a.path("edit_here_del_there")).unwrap();
    a.write("same_both", "same new content");
    a.write("new_there", "new on a");
    let a_now = a.files();
    eventually_async("the server has a's changes", || {
        let s = &server;
        let want = a_now.clone();
        async move { s.files().await == want }
    })
    .await;

    // ...and b's folder changes offline.
    write(&b_root, "edit_here", "edited by b");
    std::fs::remove_file(b_root.join("del_here")).unwrap();
    std::fs::remove_file(b_root.join("del_here_edit_there")).unwrap();
    write(&b_root, "edit_here_del_there", "edited by b");
    write(&b_root, "same_both", "same new content");
    write(&b_root, "new_here", "new on b");

    let b = TestClient::start_in(&server.url(), b_dir);
    let want: BTreeMap<String, Vec<u8>> = [
        ("keep", "original keep"),
        ("edit_here", "edited by b"),
        ("edit_there", "edited by a"),
        ("del_here_edit_there", "edited by a"),
        ("edit_here_del_there", "edited by b"),
        ("same_both", "same new content"),
        ("new_here", "new on b"),
        ("new_there", "new on a"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
    .collect();
    eventually("both folders converge on the three-way result", || a.files() == want && b.files() == want)
        .await;
    assert_eq!(server.files().await, want);
}

#[tokio::test]
async fn two_clients_editing_one_file_keep_both_versions() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("report.txt", "base");
    eventually("b has the base", || b.read("report.txt").is_some()).await;

    let b_dir = b.stop().await;
    a.write("report.txt", "a's version");
    eventually_async("the server has a's version", || async {
        server.files().await.get("report.txt").map(Vec::as_slice) == Some(&b"a's version"[..])
    })
    .await;
    write(&b_dir.path().canonicalize().unwrap(), "report.txt", "b's version");
    let b = TestClient::start_in(&server.url(), b_dir);

    eventually("both folders hold both versions", || {
        let (fa, fb) = (a.files(), b.files());
        fa == fb && fa.len() == 2
    })
    .await;
    let files = a.files();
    assert_eq!(files["report.txt"], b"a's version", "the server's version keeps the name");
    let copies = conflict_copies(&files);
    assert_eq!(copies.len(), 1, "{files:?}");
    let (name, content) = copies[0];
    assert!(name.starts_with("report (conflict from ") && name.ends_with(").txt"), "{name}");
    assert_eq!(content.as_slice(), b"b's version");
}

#[tokio::test]
async fn simultaneous_edits_while_online_lose_nothing() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("race.txt", "start");
    eventually("b has it", || b.read("race.txt").is_some()).await;
    a.write("race.txt", "from a");
    b.write("race.txt", "from b");
    eventually("converged", || {
        let (fa, fb) = (a.files(), b.files());
        fa == fb && fa.values().any(|v| v == b"from a") && fa.values().any(|v| v == b"from b")
    })
    .await;
}

#[tokio::test]
async fn clients_reconnect_after_a_server_restart() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("before.txt", "before");
    eventually("b has it", || b.read("before.txt").is_some()).await;

    let (config, data, addr) = server.stop().await;
    // Saved while the server is down: uploaded once it is back.
    a.write("during.txt", "during the outage");
    let server = {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(sync_server::run(config, listener, shutdown.clone()));
        (task, shutdown, data)
    };
    eventually("b receives the change made during the outage", || b.read("during.txt").is_some()).await;
    b.write("after.txt", "after");
    eventually("a receives changes after the restart", || a.read("after.txt").is_some()).await;
    server.1.cancel();
    server.0.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_replaced_server_deletes_nothing_and_gets_everything_back() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    a.write("precious.txt", "do not lose me");
    a.write("dir/also.txt", "me neither");
    eventually_async("uploaded", || async { server.files().await.len() == 2 }).await;
    let a_dir = a.stop().await;

    // The server comes back with an empty data folder (a new history).
    let server = server.replace_with_empty().await;
    let a = TestClient::start_in(&server.url(), a_dir);
    eventually_async("the files are uploaded to the new server", || async {
        server.files().await.len() == 2
    })
    .await;
    assert_eq!(a.read("precious.txt").as_deref(), Some(&b"do not lose me"[..]));
    assert_eq!(server.files().await, a.files());
}

#[tokio::test]
async fn a_moved_file_arrives_under_its_new_name_only() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let data = random_bytes(2 << 20, 7);
    a.write("old/name.bin", &data);
    eventually("b has it", || b.read("old/name.bin").is_some()).await;
    std::fs::create_dir_all(a.path("new")).unwrap();
    std::fs::rename(a.path("old/name.bin"), a.path("new/name.bin")).unwrap();
    eventually("b sees the move", || {
        b.read("new/name.bin").is_some_and(|d| d == data) && b.read("old/name.bin").is_none()
    })
    .await;
    // Content is stored once, whichever way it travelled (beside, perhaps,
    // the empty content of the folders left empty).
    // A file over 1 MiB is stored as its chunks.
    let chunks = syncstore::chunks::chunk_list(&data[..], data.len() as u64).unwrap().2.len() as u64;
    let (blobs, bytes) = server.stored_content().await;
    assert_eq!(bytes, data.len() as u64, "the file's content is stored once");
    assert!(blobs <= chunks + 1, "{blobs} contents stored for one file of {chunks} chunks");
}

/// One scripted session of edits on `a`, waiting for `b` after each step;
/// returns what both folders hold at the end.
async fn scripted_session(a: &TestClient, b: &TestClient) -> BTreeMap<String, Vec<u8>> {
    a.write("keep.txt", "kept");
    a.write("dir/edit.txt", "first");
    a.write("dir/gone.txt", "to be deleted");
    a.write("old name.txt", "moved");
    eventually("b has the new files", || b.files() == a.files()).await;
    a.write("dir/edit.txt", "second, longer");
    std::fs::remove_file(a.path("dir/gone.txt")).unwrap();
    std::fs::rename(a.path("old name.txt"), a.path("dir/new name.txt")).unwrap();
    b.write("from b.txt", "b's file");
    eventually("both agree after the edits", || b.files() == a.files() && a.files().len() == 4).await;
    a.files()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescanning_without_a_watcher_gives_the_same_result_as_the_watcher() {
    let server = TestServer::start().await;
    let watched =
        scripted_session(&TestClient::start(&server.url()), &TestClient::start(&server.url())).await;

    let other = TestServer::start().await;
    let (a, b) = (TestClient::start_polling(&other.url()), TestClient::start_polling(&other.url()));
    let polled = scripted_session(&a, &b).await;
    assert_eq!(polled, watched);
    assert_eq!(other.files().await, polled);

    // And `sync` alone, without any watcher, converges to it too.
    let dir = tempfile::tempdir().unwrap();
    let mut config = sync_client::Config::new(other.url(), dir.path());
    config.watcher = false;
    assert!(sync_client::sync_once(config).await.unwrap());
    assert_eq!(tree(dir.path()), polled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_folder_arrives_whole_without_sending_its_content_again() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let big = random_bytes(600 << 10, 11);
    a.write("proj/src/main.rs", "fn main() {}");
    a.write("proj/assets/big.bin", &big);
    a.write("proj/README", "readme");
    eventually("b has the project", || b.files() == a.files()).await;
    let stored = server.stored_blobs().await;
    // (a counts its bytes when the server's answer arrives, which can come
    // after b already has the file.)
    let total = (big.len() + "fn main() {}".len() + "readme".len()) as u64;
    eventually("a has counted its uploads", || a.uploaded_bytes() >= total).await;
    let sent = a.uploaded_bytes();

    std::fs::create_dir_all(a.path("archive")).unwrap();
    std::fs::rename(a.path("proj"), a.path("archive/proj")).unwrap();
    // The old folder goes once its last file has moved out of it, a moment
    // after the files arrive under the new name: both are waited for.
    eventually("b has it under its new name only, and the old folder is gone", || {
        let files = b.files();
        files.len() == 3 && files.keys().all(|p| p.starts_with("archive/proj/")) && !b.path("proj").exists()
    })
    .await;
    assert!(b.read("archive/proj/assets/big.bin").unwrap() == big);
    assert_eq!(server.stored_blobs().await, stored, "no content was stored twice");
    // The big file went by hash alone; only the small ones were sent again.
    assert!(a.uploaded_bytes() - sent < 1024, "sent {} bytes again", a.uploaded_bytes() - sent);
}
