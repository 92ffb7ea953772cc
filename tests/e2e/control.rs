//! The running client's control socket: `pause` stops all syncing (changes
//! either way wait, and arrive after `resume`), a pause is remembered
//! across restarts, and the live status shows what the client is doing.

use std::path::Path;

use sync_client::control::{self, Live, Request};

use crate::harness::*;

async fn ask(dir: &Path, request: Request) -> Live {
    control::request(dir, request).await.expect("the running client answers")
}

/// Waits until the client's socket answers (it is bound once the state
/// is open).
async fn live_when_up(dir: &Path) -> Live {
    eventually_async("the control socket answers", || async {
        control::request(dir, Request::Status).await.is_ok()
    })
    .await;
    ask(dir, Request::Status).await
}

#[tokio::test]
async fn pause_holds_changes_both_ways_until_resume_and_survives_a_status_call() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("before.txt", "synced before the pause");
    eventually("b has a's file", || b.read("before.txt").is_some()).await;

    let live = live_when_up(a.dir.path()).await;
    assert!(!live.paused);
    assert_eq!(live.mode, "send-receive");
    assert_eq!(live.server, server.url());
    assert_eq!(live.servers, vec![server.url()]);
    assert!(ask(a.dir.path(), Request::Pause).await.paused);

    // A change here and one on the server, both met by the paused client
    // (it lists them as queued) and neither synced.
    a.write("here.txt", "saved while paused");
    b.write("there.txt", "saved elsewhere while a is paused");
    eventually_async("the server has b's change", || async {
        server.files().await.contains_key("there.txt")
    })
    .await;
    eventually_async("a queues both changes", || async {
        let live = ask(a.dir.path(), Request::Status).await;
        live.queued.iter().any(|p| p == "here.txt") && live.queued.iter().any(|p| p == "there.txt")
    })
    .await;
    let live = ask(a.dir.path(), Request::Status).await;
    assert!(live.paused);
    assert!(live.head > live.cursor, "the server is ahead of the paused folder: {live:?}");
    // A full `status` beside it changes nothing and resumes nothing.
    let diffs = sync_client::status(a.config()).await.unwrap();
    assert!(diffs.iter().any(|d| d.path == "here.txt" && d.state == "only-here"), "{diffs:?}");
    assert!(diffs.iter().any(|d| d.path == "there.txt" && d.state == "only-there"), "{diffs:?}");
    assert!(ask(a.dir.path(), Request::Status).await.paused);
    assert!(!server.files().await.contains_key("here.txt"), "nothing was sent while paused");
    assert_eq!(a.read("there.txt"), None, "nothing was received while paused");

    let live = ask(a.dir.path(), Request::Resume).await;
    assert!(!live.paused);
    eventually("a's change reaches b after resume", || b.read("here.txt").is_some()).await;
    eventually("b's change reaches a after resume", || a.read("there.txt").is_some()).await;
    assert_eq!(a.read("there.txt").unwrap(), b"saved elsewhere while a is paused");
    eventually_async("a is caught up", || async {
        let live = ask(a.dir.path(), Request::Status).await;
        live.queued_total == 0 && live.cursor == live.head && live.errors_total == 0
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_pause_is_remembered_across_a_restart_and_the_live_status_shows_transfers() {
    let server = TestServer::start().await;
    let slow = Proxy::start_throttled(server.addr, 2 << 20).await;
    let a = TestClient::start(&slow.url());
    live_when_up(a.dir.path()).await;
    assert!(ask(a.dir.path(), Request::Pause).await.paused);
    let dir = a.stop().await;
    assert!(
        matches!(control::request(dir.path(), Request::Status).await, Err(sync_client::Error::NotRunning(_))),
        "a stopped client does not answer"
    );

    let a = TestClient::start_in(&slow.url(), dir);
    assert!(live_when_up(a.dir.path()).await.paused, "still paused after the restart");
    a.write("while-stopped.txt", "saved while paused");
    eventually_async("the paused client queues the file", || async {
        ask(a.dir.path(), Request::Status).await.queued.iter().any(|p| p == "while-stopped.txt")
    })
    .await;
    assert!(!server.files().await.contains_key("while-stopped.txt"));
    ask(a.dir.path(), Request::Resume).await;
    eventually_async("resumed, the file arrives", || async {
        server.files().await.contains_key("while-stopped.txt")
    })
    .await;

    // A large upload (some 6 s over the slow link) is listed while it runs
    // beside the loop; a pause stops it (the server keeps nothing of it) and
    // holds what comes after; resuming sends both.
    let big = random_bytes(12 << 20, 5);
    a.write("big.bin", &big);
    eventually_async("the upload is listed in flight, with its progress", || async {
        let live = ask(a.dir.path(), Request::Status).await;
        // Part way: some bytes moved, not all.
        live.transfers.iter().any(|t| {
            t.path == "big.bin"
                && t.direction == "upload"
                && t.size == 12 << 20
                && t.done > 0
                && t.done < t.size
        })
    })
    .await;
    assert!(ask(a.dir.path(), Request::Pause).await.paused);
    a.write("after.txt", "saved after the pause");
    eventually_async("the transfer under way stops", || async {
        ask(a.dir.path(), Request::Status).await.transfers.is_empty()
    })
    .await;
    eventually_async("the later change is queued", || async {
        ask(a.dir.path(), Request::Status).await.queued.iter().any(|p| p == "after.txt")
    })
    .await;
    let files = server.files().await;
    assert!(!files.contains_key("big.bin"), "the stopped upload left nothing on the server");
    assert!(!files.contains_key("after.txt"), "nothing new starts while paused");
    ask(a.dir.path(), Request::Resume).await;
    eventually_async("resumed, the later change and the large file arrive", || async {
        let files = server.files().await;
        files.contains_key("after.txt") && files.get("big.bin") == Some(&big)
    })
    .await;
    a.stop().await;
}

#[tokio::test]
async fn a_path_that_keeps_failing_is_listed_with_its_last_error() {
    let server = TestServer::start_with(|c| c.max_file_size = 1024).await;
    let a = TestClient::start(&server.url());
    live_when_up(a.dir.path()).await;
    a.write("small.txt", "fits");
    a.write("too-big.bin", random_bytes(4096, 3));
    eventually_async("the refused file is listed with the server's refusal", || async {
        let live = ask(a.dir.path(), Request::Status).await;
        live.errors_total == 1
            && live.errors.iter().any(|e| e.path == "too-big.bin" && e.error.contains("1024"))
    })
    .await;
    assert!(server.files().await.contains_key("small.txt"), "the rest syncs");
    // Made small enough, it goes, and its error is gone.
    a.write("too-big.bin", "now it fits");
    eventually_async("the error clears once the file goes", || async {
        ask(a.dir.path(), Request::Status).await.errors_total == 0
    })
    .await;
    assert_eq!(server.files().await.get("too-big.bin").map(Vec::as_slice), Some(&b"now it fits"[..]));
    a.stop().await;
}
