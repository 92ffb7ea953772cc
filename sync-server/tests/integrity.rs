//! Damaged stored content as an operator meets it, with `sync-server`
//! processes: `compare` (metadata) says identical, `compare --content` names
//! the damaged file, `scrub` reports it lost and, given the replica, heals
//! it.

mod common;

use std::process::{Command, Output};

use common::{eventually, signal, start_with, upload, wait_exit};
use syncstore::{ContentHash, pb::file_sync_client::FileSyncClient};

/// Runs `sync-server ARGS` to completion (off the async workers).
async fn run(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sync-server")).args(&args).output().unwrap()
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Flips a bit of the stored copy of `content` in data folder `data`.
fn rot(data: &std::path::Path, content: &[u8]) {
    let hex = ContentHash::of(content).to_hex();
    let path = data.join("blobs").join(&hex[..2]).join(&hex);
    let mut stored = std::fs::read(&path).unwrap();
    stored[content.len() / 2] ^= 1;
    std::fs::write(&path, stored).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_content_and_scrub_find_and_heal_damage_from_the_command_line() {
    let (rdata, pdata) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut replica = start_with(rdata.path(), "127.0.0.1:0", &["--role", "replica"]);
    let mut primary =
        start_with(pdata.path(), "127.0.0.1:0", &["--replica", &replica.url(), "--replication", "async"]);
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    upload(&mut FileSyncClient::connect(primary.url()).await.unwrap(), "f.bin", &content).await;
    let (p, r) = (primary.url(), replica.url());
    eventually("the replica has f.bin", || async { run(&["compare", &p, &r]).await.status.success() }).await;

    rot(pdata.path(), &content);
    let metadata = run(&["compare", &p, &r]).await;
    assert!(metadata.status.success() && stdout(&metadata).starts_with("identical"), "{metadata:?}");
    let content_check = run(&["compare", "--content", &p, &r]).await;
    assert_eq!(content_check.status.code(), Some(1), "{content_check:?}");
    assert!(stdout(&content_check).contains("damaged-in-A f.bin"), "{content_check:?}");

    // Offline: the primary stopped, its copy damaged again.
    signal(&primary.child, "-TERM");
    assert!(wait_exit(&mut primary.child).await.success());
    rot(pdata.path(), &content);
    let data = pdata.path().to_str().unwrap();
    let alone = run(&["scrub", "--data", data]).await;
    assert_eq!(alone.status.code(), Some(1), "{alone:?}");
    assert!(stdout(&alone).contains("1 damaged, 0 healed, 1 lost"), "{alone:?}");
    assert!(stdout(&alone).contains("lost       f.bin"), "{alone:?}");
    let healed = run(&["scrub", "--data", data, "--from", &r]).await;
    assert!(healed.status.success(), "{healed:?}");
    assert!(stdout(&healed).contains("1 damaged, 1 healed, 0 lost"), "{healed:?}");
    let again = run(&["scrub", "--data", data]).await;
    assert!(again.status.success() && stdout(&again).contains("0 damaged"), "{again:?}");

    signal(&replica.child, "-TERM");
    assert!(wait_exit(&mut replica.child).await.success());
}
