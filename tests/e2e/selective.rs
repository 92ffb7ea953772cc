//! Selective sync with real servers and clients: a folder that keeps only
//! some subtrees never downloads the rest and never deletes it on the
//! server, never sends what is made outside them, remembers its selection,
//! and, when a subtree is de-selected, removes only the copies unchanged
//! since the last sync (a changed file stays, and is sent once selected
//! again).

use std::{collections::BTreeMap, path::Path};

use sync_client::Selection;
use syncstore::RelPath;

use crate::harness::*;

fn selection(paths: &[&str]) -> Selection {
    Selection::of(paths.iter().map(|p| RelPath::new(*p).unwrap()).collect())
}

fn text(data: &str) -> Vec<u8> {
    data.as_bytes().to_vec()
}

/// `status` of a folder: path → state.
async fn status_of(config: sync_client::Config) -> BTreeMap<String, String> {
    sync_client::status(config).await.unwrap().into_iter().map(|d| (d.path, d.state.to_owned())).collect()
}

/// The paths of `files`, in order.
fn names(files: &BTreeMap<String, Vec<u8>>) -> Vec<&str> {
    files.keys().map(String::as_str).collect()
}

fn config_of(url: &str, dir: &Path) -> sync_client::Config {
    sync_client::Config::new(url.to_owned(), dir)
}

#[tokio::test]
async fn selective_sync_never_downloads_or_deletes_outside_the_selection() {
    let server = TestServer::start().await;
    let url = server.url();
    let writer = TestClient::start(&url);
    let all = [
        ("docs/report.txt", "report"),
        ("docs/drafts/plan.txt", "plan"),
        ("photos/beach.jpg", "beach"),
        ("music/song.mp3", "song"),
        ("videos/film.mkv", "film"),
        ("top.txt", "top"),
    ];
    for (path, data) in all {
        writer.write(path, data);
    }
    eventually_async("the writer's files are on the server", || async {
        server.files().await.len() == all.len()
    })
    .await;
    let on_server = server.files().await;

    let laptop = TestClient::start_tweaked(&url, |c| c.only = Some(selection(&["docs", "photos"])));
    eventually("the laptop has the selected files", || laptop.files().len() == 3).await;
    let live =
        sync_client::control::request(&laptop.root(), sync_client::control::Request::Status).await.unwrap();
    assert_eq!(live.only, ["docs", "photos"], "the live status names the selection");
    // A change outside the selection, then one inside it: once the second
    // is here, the first was seen (and not fetched).
    writer.write("music/later.mp3", "later");
    writer.write("docs/later.txt", "later");
    eventually("the laptop receives inside its selection", || laptop.read("docs/later.txt").is_some()).await;
    assert_eq!(
        names(&laptop.files()),
        ["docs/drafts/plan.txt", "docs/later.txt", "docs/report.txt", "photos/beach.jpg"],
        "nothing outside the selection was downloaded"
    );
    // A file made here outside the selection stays here, never sent; one
    // made inside it is sent as usual.
    laptop.write("music/mine.mp3", "made on the laptop");
    laptop.write("photos/new.jpg", "new photo");
    eventually_async("the laptop's photo reaches the server", || async {
        server.files().await.contains_key("photos/new.jpg")
    })
    .await;

    // `status` lists what is not selected without counting it a difference.
    let rows = status_of(laptop.config()).await;
    for path in ["music/song.mp3", "music/later.mp3", "videos/film.mkv", "top.txt", "music/mine.mp3"] {
        assert_eq!(rows.get(path).map(String::as_str), Some(sync_client::NOT_SELECTED), "{path}: {rows:?}");
    }
    assert_eq!(rows.len(), 5, "{rows:?}");

    // Stopped and synced once without --only: the folder remembers its
    // selection, and a full sync neither fetches the rest, nor takes its
    // absence here for deletions, nor sends what was made outside it.
    let dir = laptop.stop().await;
    assert!(sync_client::sync_once(config_of(&url, dir.path())).await.unwrap());
    let files = tree(dir.path());
    assert_eq!(
        names(&files),
        [
            "docs/drafts/plan.txt",
            "docs/later.txt",
            "docs/report.txt",
            "music/mine.mp3",
            "photos/beach.jpg",
            "photos/new.jpg"
        ]
    );
    let mut expected = on_server;
    for (path, data) in
        [("music/later.mp3", "later"), ("docs/later.txt", "later"), ("photos/new.jpg", "new photo")]
    {
        expected.insert(path.to_owned(), text(data));
    }
    assert_eq!(server.files().await, expected, "nothing deleted on the server, nothing outside sent");

    // Selecting everything again downloads what was left on the server
    // (and sends the file made outside the old selection).
    let laptop = TestClient::start_tweaked_in(&url, dir, |c| c.only = Some(Selection::all()));
    eventually("the laptop has every file", || laptop.files().len() == expected.len() + 1).await;
    eventually_async("the laptop's own file reaches the server", || async {
        server.files().await.get("music/mine.mp3") == Some(&text("made on the laptop"))
    })
    .await;
    laptop.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn deselecting_a_subtree_with_a_locally_changed_file_loses_nothing() {
    let server = TestServer::start().await;
    let url = server.url();
    let laptop = TestClient::start(&url);
    for (path, data) in [
        ("docs/report.txt", "report"),
        ("photos/beach.jpg", "beach"),
        ("photos/old/2019.jpg", "2019"),
        ("photos/edited.jpg", "edited v1"),
    ] {
        laptop.write(path, data);
    }
    eventually_async("the files are on the server", || async { server.files().await.len() == 4 }).await;
    let on_server = server.files().await;

    // An edit made while the client is stopped, then `photos` de-selected.
    let dir = laptop.stop().await;
    write(dir.path(), "photos/edited.jpg", "edited v2, only here");
    let laptop = TestClient::start_tweaked_in(&url, dir, |c| c.only = Some(selection(&["docs"])));
    eventually("the unchanged photos are removed here", || {
        laptop.read("photos/beach.jpg").is_none() && laptop.read("photos/old/2019.jpg").is_none()
    })
    .await;
    assert_eq!(laptop.read("photos/edited.jpg"), Some(text("edited v2, only here")), "the edit is kept");
    assert_eq!(laptop.read("docs/report.txt"), Some(text("report")));
    assert!(!laptop.path("photos/old").exists(), "the folder left empty goes too");
    assert_eq!(server.files().await, on_server, "nothing deleted or changed on the server");

    let rows = status_of(laptop.config()).await;
    for path in ["photos/beach.jpg", "photos/old/2019.jpg", "photos/edited.jpg"] {
        assert_eq!(rows.get(path).map(String::as_str), Some(sync_client::NOT_SELECTED), "{path}: {rows:?}");
    }

    // Selected again: the removed photos come back, and the edit kept
    // here is sent (the server's copy had not changed since).
    let dir = laptop.stop().await;
    let laptop = TestClient::start_tweaked_in(&url, dir, |c| c.only = Some(selection(&["docs", "photos"])));
    eventually("the photos are back", || {
        laptop.read("photos/beach.jpg") == Some(text("beach"))
            && laptop.read("photos/old/2019.jpg") == Some(text("2019"))
    })
    .await;
    eventually_async("the kept edit reaches the server", || async {
        server.files().await.get("photos/edited.jpg") == Some(&text("edited v2, only here"))
    })
    .await;
    assert_eq!(laptop.files().len(), 4, "{:?}", laptop.files().keys());
    laptop.stop().await;
}
