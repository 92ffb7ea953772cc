//! Edge cases real folders bring: the folder vanishing under a running
//! client, a lost state database, names that differ only by case or
//! Unicode normalization.

use std::collections::BTreeMap;

use crate::harness::*;

fn seed_files(c: &TestClient) -> BTreeMap<String, Vec<u8>> {
    for i in 0..20 {
        c.write(&format!("dir{}/sub/file{i}.txt", i % 3), format!("content {i}"));
    }
    c.write("top.txt", "top");
    c.files()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_folder_stops_the_client_and_deletes_nothing_elsewhere() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let files = seed_files(&a);
    eventually("b has everything", || b.files() == files).await;

    // rm -rf of the synced folder itself, under the running client.
    std::fs::remove_dir_all(a.root()).unwrap();
    let ended = a.ended().await;
    assert!(matches!(ended, Err(sync_client::Error::FolderGone(_))), "{ended:?}");
    assert_eq!(server.files().await, files, "no deletion reached the server");
    assert_eq!(b.files(), files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmounted_folder_stops_the_client_and_deletes_nothing() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let files = seed_files(&a);
    eventually_async("on the server", || async { server.files().await == files }).await;

    // The disk goes away: the path is now an empty folder.
    let root = a.root();
    let away = root.with_extension("away");
    std::fs::rename(&root, &away).unwrap();
    std::fs::create_dir(&root).unwrap();
    let ended = a.ended().await;
    assert!(matches!(ended, Err(sync_client::Error::FolderGone(_))), "{ended:?}");
    assert_eq!(server.files().await, files, "no deletion reached the server");
    std::fs::remove_dir_all(&away).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_state_database_deletes_nothing_and_keeps_both_versions() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    a.write("same.txt", "same");
    a.write("edited.txt", "server version");
    a.write("removed.txt", "still wanted?");
    let files = a.files();
    eventually_async("on the server", || async { server.files().await == files }).await;
    let dir = a.stop().await;

    // The state is lost; meanwhile a file is edited and one is deleted.
    std::fs::remove_dir_all(dir.path().join(".syncstore")).unwrap();
    write(dir.path(), "edited.txt", "local version");
    std::fs::remove_file(dir.path().join("removed.txt")).unwrap();

    let a = TestClient::start_in(&server.url(), dir);
    eventually_async("both sides agree", || async {
        let local = a.files();
        local.len() == 4 && server.files().await == local
    })
    .await;
    let local = a.files();
    // Nothing was deleted: the missing file came back, both versions of
    // the edited one are kept (one as a conflict copy).
    assert_eq!(local["same.txt"], b"same");
    assert_eq!(local["removed.txt"], b"still wanted?");
    assert_eq!(local["edited.txt"], b"server version");
    let copy: Vec<_> = local.iter().filter(|(p, _)| p.starts_with("edited (conflict from ")).collect();
    assert_eq!(copy.len(), 1, "{local:?}");
    assert_eq!(copy[0].1, b"local version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_differ_by_case_or_normalization_never_overwrite_each_other() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    // Case: two files on a case-sensitive file system, both synced.
    a.write("Readme.txt", "title case");
    a.write("README.txt", "upper case");
    eventually("b has both", || b.read("Readme.txt").is_some() && b.read("README.txt").is_some()).await;
    assert_eq!(b.read("Readme.txt").unwrap(), b"title case");
    assert_eq!(b.read("README.txt").unwrap(), b"upper case");

    // Normalization: b holds a decomposed (NFD) "café.txt", which is not
    // synced; the composed (NFC) one arriving from a is written beside it.
    let nfd = "cafe\u{301}.txt";
    let nfc = "caf\u{e9}.txt";
    b.write(nfd, "b's decomposed file");
    a.write(nfc, "a's composed file");
    eventually("b gets the composed name", || b.read(nfc).is_some()).await;
    assert_eq!(b.read(nfc).unwrap(), b"a's composed file");
    assert_eq!(b.read(nfd).unwrap(), b"b's decomposed file", "the decomposed file is untouched");
    assert!(!server.files().await.contains_key(nfd), "a decomposed name is not synced");
}

fn copies_of<'a>(files: &'a BTreeMap<String, Vec<u8>>, name: &str) -> Vec<(&'a String, &'a Vec<u8>)> {
    let prefix = format!("{name} (conflict from ");
    files.iter().filter(|(p, _)| p.starts_with(&prefix)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_and_a_folder_of_the_same_name_both_survive() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    a.write("docs/a.txt", "a's doc in a folder");
    a.write("notes", "a's notes as a file");
    eventually_async("on the server", || async { server.files().await.len() == 2 }).await;

    // b was offline with the opposite: a file "docs", a folder "notes".
    let b_dir = tempfile::tempdir().unwrap();
    write(b_dir.path(), "docs", "b's docs as a file");
    write(b_dir.path(), "notes/n.txt", "b's note in a folder");
    let b = TestClient::start_in(&server.url(), b_dir);

    // The server's side keeps each name; b's are renamed and synced too.
    eventually_async("everyone agrees, with four files", || async {
        let (fa, fb) = (a.files(), b.files());
        fa.len() == 4 && fa == fb && server.files().await == fa
    })
    .await;
    let files = a.files();
    assert_eq!(files["docs/a.txt"], b"a's doc in a folder");
    assert_eq!(files["notes"], b"a's notes as a file");
    let docs = copies_of(&files, "docs");
    assert_eq!(docs.len(), 1, "{files:?}");
    assert_eq!(docs[0].1, b"b's docs as a file");
    let notes: Vec<_> = files.iter().filter(|(p, _)| p.starts_with("notes (conflict from ")).collect();
    assert_eq!(notes.len(), 1, "{files:?}");
    assert!(notes[0].0.ends_with(")/n.txt") && notes[0].1 == b"b's note in a folder", "{files:?}");
}

#[tokio::test]
async fn the_server_never_holds_a_file_where_a_folder_is() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    upload(&mut rpc, "x", b"file", 0).await.unwrap();
    upload(&mut rpc, "dir/sub/y", b"deep", 0).await.unwrap();
    for (path, why) in [("x/y", "x is a file"), ("dir", "it is a folder"), ("dir/sub", "it is a folder")] {
        let err = upload(&mut rpc, path, b"clash", 0).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{path}: {err:?}");
        assert!(err.message().contains(why), "{path}: {}", err.message());
        assert_eq!(syncstore::Reason::of(&err), Some(syncstore::Reason::PathClash));
    }
    // Once the file is gone, the name can be a folder.
    rpc.delete(syncstore::pb::DeleteRequest {
        path: "x".into(),
        base_version: 1,
        client_id: "t".into(),
        lock_token: 0,
    })
    .await
    .unwrap();
    upload(&mut rpc, "x/y", b"now a folder", 0).await.unwrap();
    assert_eq!(server.files().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtime_and_the_executable_bit_arrive_as_stored() {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
    let path = a.path("tool.sh");
    std::fs::write(&path, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(when).unwrap();
    eventually("b has it, executable, with a's mtime", || {
        std::fs::metadata(b.path("tool.sh"))
            .is_ok_and(|m| m.permissions().mode() & 0o111 != 0 && m.modified().ok() == Some(when))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_during_its_upload_arrives_as_last_written() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    // Each version is written while the previous one is likely still in
    // flight; whatever the timing, only whole versions may arrive, and the
    // last one must.
    let versions: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(24 << 20, 100 + i)).collect();
    for v in &versions {
        a.write("video.bin", v);
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let last = versions.last().unwrap();
    eventually("b has the last version", || b.read("video.bin").is_some_and(|d| d == *last)).await;
    assert!(server.files().await["video.bin"] == *last);
    let names: Vec<String> = b.files().into_keys().collect();
    assert_eq!(names, ["video.bin"], "no partial or extra file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edited_here_during_its_download_keeps_both_versions() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("doc.bin", "v1");
    eventually("b has v1", || b.read("doc.bin").as_deref() == Some(&b"v1"[..])).await;
    // a sends a big new version; b edits the file while it comes in.
    let big = random_bytes(32 << 20, 7);
    a.write("doc.bin", &big);
    b.write("doc.bin", "b's edit");
    eventually("both versions everywhere", || {
        let files = b.files();
        files.len() == 2
            && files.values().any(|d| *d == big)
            && files.values().any(|d| d.as_slice() == b"b's edit")
            && a.files() == files
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_and_recreated_at_once_is_not_lost() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("notes.txt", "old");
    eventually("b has it", || b.read("notes.txt").is_some()).await;
    std::fs::remove_file(a.path("notes.txt")).unwrap();
    a.write("notes.txt", "new");
    eventually("b has the new one", || b.read("notes.txt").as_deref() == Some(&b"new"[..])).await;
    assert_eq!(a.read("notes.txt").as_deref(), Some(&b"new"[..]));
    assert_eq!(server.files().await["notes.txt"], b"new");
}

fn link_target(path: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_link(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_sync_as_links_and_are_never_followed() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.txt"), "outside the folder").unwrap();
    a.write("v2/readme.txt", "version 2");
    std::os::unix::fs::symlink("v2/readme.txt", a.path("latest")).unwrap();
    std::os::unix::fs::symlink(outside.path(), a.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", a.path("dangling")).unwrap();

    eventually("b has the three links", || {
        link_target(&b.path("latest")).as_deref() == Some(std::path::Path::new("v2/readme.txt"))
            && link_target(&b.path("elsewhere")).as_deref() == Some(outside.path())
            && link_target(&b.path("dangling")).as_deref() == Some(std::path::Path::new("does/not/exist"))
    })
    .await;
    // The link's target, not what it points to, is what was synced.
    assert_eq!(server.files().await["elsewhere"], outside.path().as_os_str().as_encoded_bytes());
    assert!(!server.files().await.keys().any(|p| p.contains("secret")), "a link is never followed");

    // Retargeting and deleting a link propagate.
    std::fs::remove_file(a.path("latest")).unwrap();
    std::os::unix::fs::symlink("v3/readme.txt", a.path("latest")).unwrap();
    std::fs::remove_file(a.path("dangling")).unwrap();
    eventually("b follows the changes", || {
        link_target(&b.path("latest")).as_deref() == Some(std::path::Path::new("v3/readme.txt"))
            && std::fs::symlink_metadata(b.path("dangling")).is_err()
    })
    .await;

    // A server file below a name that is a link here is never written
    // through the link. Whichever reaches the server first keeps the name
    // "trap"; the other side's link or folder is renamed aside.
    std::os::unix::fs::symlink(outside.path(), b.path("trap")).unwrap();
    a.write("trap/payload.txt", "must not land outside");
    eventually_async("all agree, the payload kept", || async {
        let (fa, fb) = (a.files(), b.files());
        fa == fb
            && server.files().await == fa
            && fb.iter().any(|(p, d)| p.ends_with("/payload.txt") && d.as_slice() == b"must not land outside")
    })
    .await;
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing was written outside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_folders_are_created_and_deleted_on_both_sides() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());

    // Created empty, nested too.
    std::fs::create_dir_all(a.path("empty")).unwrap();
    std::fs::create_dir_all(a.path("deep/er/still")).unwrap();
    eventually("b has the empty folders", || empty_dirs(&b.root()) == ["deep/er/still", "empty"]).await;

    // Deleted on the other side.
    std::fs::remove_dir(b.path("empty")).unwrap();
    eventually("a loses it", || empty_dirs(&a.root()) == ["deep/er/still"]).await;

    // A folder whose last file is deleted stays, empty, everywhere.
    a.write("docs/only.txt", "only");
    eventually("b has the file", || b.read("docs/only.txt").is_some()).await;
    std::fs::remove_file(a.path("docs/only.txt")).unwrap();
    eventually("docs stays, empty, on both", || {
        empty_dirs(&a.root()) == ["deep/er/still", "docs"]
            && empty_dirs(&b.root()) == ["deep/er/still", "docs"]
    })
    .await;

    // A whole tree deleted goes whole, leaving no empty folder behind.
    a.write("tree/x/1.txt", "1");
    a.write("tree/y/2.txt", "2");
    std::fs::create_dir_all(a.path("tree/z")).unwrap();
    eventually("b has the tree", || b.read("tree/y/2.txt").is_some() && b.path("tree/z").is_dir()).await;
    std::fs::remove_dir_all(a.path("tree")).unwrap();
    eventually("the tree is gone from b", || !b.path("tree").exists()).await;

    // A folder deleted on the server while it gets a new file here stays.
    std::fs::create_dir_all(b.path("shared")).unwrap();
    eventually("a has the folder", || a.path("shared").is_dir()).await;
    std::fs::remove_dir(a.path("shared")).unwrap();
    b.write("shared/new.txt", "new");
    eventually_async("the new file and its folder survive everywhere", || async {
        a.read("shared/new.txt").as_deref() == Some(&b"new"[..])
            && server.files().await.contains_key("shared/new.txt")
    })
    .await;
    eventually_async("everyone agrees on the folders", || async {
        let (ea, eb) = (empty_dirs(&a.root()), empty_dirs(&b.root()));
        ea == eb && ea == ["deep/er/still", "docs"] && a.files() == b.files()
    })
    .await;
    let folders = server.folders().await;
    assert!(
        folders.contains(&"docs".to_owned()) && folders.contains(&"deep/er/still".to_owned()),
        "{folders:?}"
    );
}

/// A tree whose last deletion to arrive is an empty folder's goes whole:
/// the folder above it is not left behind, empty (and then synced back as
/// a new folder).
#[tokio::test]
async fn a_tree_whose_last_deletion_is_an_empty_folder_goes_whole() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("tree/x/1.txt", "1");
    std::fs::create_dir_all(a.path("tree/z")).unwrap();
    eventually("b has the tree", || b.read("tree/x/1.txt").is_some() && b.path("tree/z").is_dir()).await;

    // The file and its folder first, then the empty folder: the tree's last
    // entry.
    std::fs::remove_dir_all(a.path("tree/x")).unwrap();
    eventually("b loses tree/x", || !b.path("tree/x").exists()).await;
    std::fs::remove_dir_all(a.path("tree")).unwrap();
    eventually_async("the tree is gone everywhere", || async {
        !a.path("tree").exists()
            && !b.path("tree").exists()
            && server.folders().await.is_empty()
            && server.files().await.is_empty()
    })
    .await;
}
