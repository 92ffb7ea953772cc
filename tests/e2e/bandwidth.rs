//! Bandwidth limits: a large transfer keeps to the client's rate limit in
//! each direction (measured in real time, against a lower bound), while a
//! small change made meanwhile still arrives within seconds.

use std::time::Duration;

use sync_client::ratelimit::Rate;
use syncstore::pb;
use tokio::time::Instant;

use crate::harness::*;

/// The file: 100 MiB, some 10 s at [`UPLOAD_RATE`].
const BIG: usize = 100 << 20;
const UPLOAD_RATE: &str = "10MiB/s";
/// The downloading client's limit: the same file in some 5 s.
const DOWNLOAD_RATE: &str = "20MiB/s";
/// The share of `size / rate` a limited transfer must at least take (the
/// bucket starts full, and the start is seen a little late).
const AT_LEAST: f64 = 0.8;
/// How soon a small change must arrive beside a limited transfer.
const SMALL_WITHIN: Duration = Duration::from_secs(4);
/// How long a limited transfer may take at most (a loaded machine).
const BIG_WITHIN: Duration = Duration::from_secs(60);

/// The least time `bytes` can take at `rate`.
fn least(bytes: usize, rate: &str) -> Duration {
    let rate: Rate = rate.parse().unwrap();
    Duration::from_secs_f64(AT_LEAST * bytes as f64 / rate.bytes_per_second() as f64)
}

fn has_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_keeps_to_the_limit_while_small_changes_pass() {
    let server = TestServer::start().await;
    let up =
        TestClient::start_tweaked(&server.url(), |c| c.max_upload_rate = Some(UPLOAD_RATE.parse().unwrap()));
    let other = TestClient::start(&server.url());
    let down = TestClient::start_tweaked(&server.url(), |c| {
        c.max_download_rate = Some(DOWNLOAD_RATE.parse().unwrap())
    });
    other.write("ready.txt", "go");
    eventually("every client is up", || up.read("ready.txt").is_some() && down.read("ready.txt").is_some())
        .await;
    let rpc = server.rpc().await;
    let on_server = |rpc: &Rpc, path: &'static str| {
        let mut rpc = rpc.clone();
        async move { rpc.stat(pb::StatRequest { path: path.into() }).await.is_ok() }
    };

    // The limited upload.
    let big = random_bytes(BIG, 21);
    // A file over 1 MiB is stored as chunks, each written as it is cut.
    let blobs = server.data_dir().join("blobs");
    let before = count_files(&blobs);
    up.write("big.bin", &big);
    eventually("the big upload is under way", || count_files(&blobs) > before).await;
    let started = Instant::now();
    up.write("small-up.txt", "saved while the big one uploads");
    eventually_within(SMALL_WITHIN, "the small file is on the server", || on_server(&rpc, "small-up.txt"))
        .await;
    let small = started.elapsed();
    assert!(!on_server(&rpc, "big.bin").await, "the big file was still on its way");
    eventually_within(BIG_WITHIN, "the big upload is committed", || on_server(&rpc, "big.bin")).await;
    let upload = started.elapsed();
    assert!(
        upload >= least(BIG, UPLOAD_RATE),
        "100 MiB went up in {upload:?} under {UPLOAD_RATE} (small file: {small:?})"
    );

    // The limited download (it starts as soon as the upload is committed).
    eventually("the big download is under way", || has_files(&down.root().join(".syncstore/tmp"))).await;
    let started = Instant::now();
    other.write("small-down.txt", "saved while the big one downloads");
    eventually_within(SMALL_WITHIN, "the small file is downloaded", || {
        std::future::ready(down.read("small-down.txt").is_some())
    })
    .await;
    let small = started.elapsed();
    assert!(down.read("big.bin").is_none(), "the big file was still on its way");
    eventually_within(BIG_WITHIN, "the big download is complete", || {
        std::future::ready(down.read("big.bin").is_some_and(|d| d.len() == BIG))
    })
    .await;
    let download = started.elapsed();
    assert!(
        download >= least(BIG, DOWNLOAD_RATE),
        "100 MiB came down in {download:?} under {DOWNLOAD_RATE} (small file: {small:?})"
    );
    assert!(down.read("big.bin").unwrap() == big, "the content arrived whole");
}

/// Limited downloads at once: as many as the large lane runs.
const LIMITED_DOWNLOADS: u64 = 4;
/// Each big enough for the large lane, and to last the test at the rate.
const LANE_FILE: usize = 8 << 20;
const SLOW_DOWNLOAD_RATE: &str = "512KiB/s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_downloads_do_not_hold_back_the_connection() {
    let server = TestServer::start().await;
    let other = TestClient::start(&server.url());
    let down = TestClient::start_tweaked(&server.url(), |c| {
        c.max_download_rate = Some(SLOW_DOWNLOAD_RATE.parse().unwrap())
    });
    other.write("ready.txt", "go");
    eventually("every client is up", || down.read("ready.txt").is_some()).await;
    for i in 0..LIMITED_DOWNLOADS {
        other.write(&format!("big-{i}.bin"), random_bytes(LANE_FILE, i));
    }
    // Each download's data the client leaves unread (held back by the
    // limit) takes room in the connection's receive window.
    eventually("every big download is under way", || {
        std::fs::read_dir(down.root().join(".syncstore/tmp")).map_or(0, |d| d.count())
            >= LIMITED_DOWNLOADS as usize
    })
    .await;
    let started = Instant::now();
    other.write("small.txt", "saved while the big ones download");
    eventually_within(SMALL_WITHIN, "the small change reached the limited client", || {
        std::future::ready(down.read("small.txt").is_some())
    })
    .await;
    let small = started.elapsed();
    let big_done = (0..LIMITED_DOWNLOADS).filter(|i| down.read(&format!("big-{i}.bin")).is_some()).count();
    assert_eq!(big_done, 0, "the big downloads were still on their way (small change: {small:?})");
}
