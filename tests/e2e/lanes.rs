//! Small changes do not wait behind a large transfer, in either direction:
//! large uploads and downloads run beside the watching client's loop.

use std::time::Duration;

use syncstore::pb;
use tokio::time::Instant;

use crate::harness::*;

/// The slow link's speed: a 24 MiB file takes about 8 s over it.
const SLOW_LINK: u64 = 3 << 20;
const BIG: usize = 24 << 20;

/// Waits for `check`, returning when it held (from `since`).
async fn time_until(since: Instant, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    eventually(what, &mut check).await;
    since.elapsed()
}

#[tokio::test]
async fn small_changes_pass_a_large_transfer_both_ways() {
    let server = TestServer::start().await;
    let slow_a = Proxy::start_throttled(server.addr, SLOW_LINK).await;
    let slow_c = Proxy::start_throttled(server.addr, SLOW_LINK).await;
    let a = TestClient::start(&slow_a.url());
    let b = TestClient::start(&server.url());
    let c = TestClient::start(&slow_c.url());
    b.write("ready.txt", "go");
    eventually("every client is up", || a.read("ready.txt").is_some() && c.read("ready.txt").is_some()).await;

    // a uploads a large file over its slow link; meanwhile a small file
    // saved in a reaches b, and b's small change reaches a.
    let big = random_bytes(BIG, 13);
    let started = Instant::now();
    a.write("big.bin", &big);
    a.write("small-a.txt", "saved while the big one uploads");
    b.write("small-b.txt", "saved elsewhere meanwhile");
    let small_a = time_until(started, "b has a's small file", || b.read("small-a.txt").is_some()).await;
    let small_b = time_until(started, "a applied b's small change", || a.read("small-b.txt").is_some()).await;
    assert!(b.read("big.bin").is_none(), "the big file was still on its way");
    let mut rpc = server.rpc().await;
    let stat = |rpc: &mut Rpc| {
        let mut rpc = rpc.clone();
        async move { rpc.stat(pb::StatRequest { path: "big.bin".into() }).await.is_ok() }
    };
    eventually_async("the big upload is committed", || stat(&mut rpc)).await;
    let upload = started.elapsed();
    assert!(
        small_a * 3 < upload && small_b * 3 < upload,
        "small changes took {small_a:?} and {small_b:?}, the large upload {upload:?}"
    );

    // c downloads it over its slow link; meanwhile b's next small change
    // reaches c.
    let started = Instant::now();
    eventually("c's download is under way", || {
        std::fs::read_dir(c.root().join(".syncstore/tmp")).is_ok_and(|mut d| d.next().is_some())
    })
    .await;
    b.write("small-c.txt", "saved while c downloads");
    let small_c = time_until(started, "c has b's small file", || c.read("small-c.txt").is_some()).await;
    assert!(c.read("big.bin").is_none(), "the big file was still on its way");
    let download =
        time_until(started, "c has the big file", || c.read("big.bin").is_some_and(|d| d.len() == BIG)).await;
    assert!(small_c * 3 < download, "a small change took {small_c:?}, the large download {download:?}");
    assert!(c.read("big.bin").unwrap() == big && b.read("big.bin").unwrap() == big);
}
