//! What a client's folder can hold beyond plain files written by name:
//! modification times outside 1970-2262, unreadable folders, hard links and
//! sparse files.

use std::os::unix::fs::MetadataExt;

use crate::harness::*;

/// Writes `data` outside `client`'s folder, gives it `mtime` and moves it
/// in as `rel`, so that the watcher first sees it with that mtime.
fn move_in_with_mtime(client: &TestClient, rel: &str, data: &[u8], mtime: filetime::FileTime) {
    let staging = tempfile::tempdir_in(client.root().parent().unwrap()).unwrap();
    let f = staging.path().join("f");
    std::fs::write(&f, data).unwrap();
    filetime::set_file_mtime(&f, mtime).unwrap();
    std::fs::rename(&f, client.path(rel)).unwrap();
}

fn mtime_of(client: &TestClient, rel: &str) -> Option<(i64, i64)> {
    std::fs::metadata(client.path(rel)).ok().map(|m| (m.mtime(), m.mtime_nsec()))
}

#[tokio::test]
async fn mtimes_before_1970_arrive_as_they_are_and_after_2262_clamped_not_wrapped() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    // 1960-01-01 00:00:00.5 and 2300-01-01.
    move_in_with_mtime(&a, "1960.txt", b"old", filetime::FileTime::from_unix_time(-315_619_200, 500_000_000));
    move_in_with_mtime(&a, "2300.txt", b"future", filetime::FileTime::from_unix_time(10_413_792_000, 0));
    eventually("b has both files", || b.read("1960.txt").is_some() && b.read("2300.txt").is_some()).await;
    assert_eq!(mtime_of(&b, "1960.txt"), Some((-315_619_200, 500_000_000)));
    // The latest time a signed 64-bit count of nanoseconds holds: 2262-04-11.
    let latest = (i64::MAX / 1_000_000_000, i64::MAX % 1_000_000_000);
    assert_eq!(mtime_of(&b, "2300.txt"), Some(latest), "clamped, not wrapped to 1901 or 0");
    let on_server = server.files().await;
    assert_eq!(on_server.get("1960.txt").map(Vec::as_slice), Some(&b"old"[..]));
}

#[tokio::test]
async fn a_sparse_file_stays_sparse_in_the_receiving_folder() {
    use std::os::unix::fs::FileExt;
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    let size = 32u64 << 20;
    // A hole, a little data, and a longer hole to the end.
    let staging = tempfile::tempdir_in(a.root().parent().unwrap()).unwrap();
    let f = staging.path().join("disk.img");
    let file = std::fs::File::create_new(&f).unwrap();
    file.set_len(size).unwrap();
    file.write_all_at(b"boot sector", 8 << 20).unwrap();
    drop(file);
    std::fs::rename(&f, a.path("disk.img")).unwrap();

    eventually("b has the whole file", || {
        std::fs::metadata(b.path("disk.img")).is_ok_and(|m| m.len() == size)
    })
    .await;
    let got = b.read("disk.img").unwrap();
    let mut expected = vec![0u8; size as usize];
    expected[(8 << 20)..(8 << 20) + 11].copy_from_slice(b"boot sector");
    assert!(got == expected, "the content arrived as it was");
    let allocated = std::fs::metadata(b.path("disk.img")).unwrap().blocks() * 512;
    assert!(allocated < 1 << 20, "{allocated} bytes allocated for a 32 MiB file holding 11 bytes");
}

#[tokio::test]
async fn a_hard_linked_file_edited_through_one_name_syncs_under_every_name() {
    use std::io::Write;
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("notes.txt", "first");
    std::fs::create_dir(a.path("elsewhere")).unwrap();
    std::fs::hard_link(a.path("notes.txt"), a.path("elsewhere/same-notes.txt")).unwrap();
    eventually("b has both names", || {
        b.read("notes.txt").as_deref() == Some(&b"first"[..])
            && b.read("elsewhere/same-notes.txt").as_deref() == Some(&b"first"[..])
    })
    .await;

    // Edited in place through one name (same inode): the watcher hears of
    // that name only; the other changed too, and is not left for the
    // rescan (an hour away here).
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(a.path("notes.txt")).unwrap();
    f.write_all(b"second, longer").unwrap();
    drop(f);
    eventually("b has the edit under both names", || {
        b.read("notes.txt").as_deref() == Some(&b"second, longer"[..])
            && b.read("elsewhere/same-notes.txt").as_deref() == Some(&b"second, longer"[..])
    })
    .await;
    let on_server = server.files().await;
    assert_eq!(on_server.get("elsewhere/same-notes.txt").map(Vec::as_slice), Some(&b"second, longer"[..]));
}
