//! Replication between two `sync-server` processes that are killed with
//! SIGKILL at the worst moments, checked with the `compare` command.

mod common;

use std::process::Command;

use common::{chunks, eventually, header, start_with, upload, wait_exit};
use syncstore::pb::{self, file_sync_client::FileSyncClient};
use tokio_stream::StreamExt;

/// Runs `sync-server compare A B`; true when it says identical (exit 0).
async fn compare(a: String, b: String) -> bool {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_sync-server")).args(["compare", &a, &b]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match out.status.code() {
            Some(0) => {
                assert!(text.starts_with("identical"), "{text}");
                true
            }
            Some(1) => false,
            _ => panic!("compare failed: {out:?}"),
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_converges_after_1000_changes() {
    let (rdata, pdata) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut replica = start_with(rdata.path(), "127.0.0.1:0", &["--role", "replica"]);
    let primary =
        start_with(pdata.path(), "127.0.0.1:0", &["--replica", &replica.url(), "--replication", "async"]);
    let mut rpc = FileSyncClient::connect(primary.url()).await.unwrap();

    // Kill the replica while a stream of changes is flowing to it.
    let writer = {
        let mut rpc = rpc.clone();
        tokio::spawn(async move {
            for i in 0..500u32 {
                upload(&mut rpc, &format!("a/{i:04}"), format!("first wave {i}").as_bytes()).await;
            }
        })
    };
    let replica_url = replica.url();
    eventually("the replica is receiving", || async {
        let Ok(mut admin) = pb::admin_client::AdminClient::connect(replica_url.clone()).await else {
            return false;
        };
        admin.status(pb::StatusRequest::default()).await.is_ok_and(|s| s.into_inner().head_seq > 50)
    })
    .await;
    replica.child.kill().unwrap();
    wait_exit(&mut replica.child).await;
    writer.await.unwrap();
    for i in 0..500u32 {
        upload(&mut rpc, &format!("b/{i:04}"), format!("second wave {i}").as_bytes()).await;
    }

    let addr = replica.addr.clone();
    drop(replica);
    let replica = start_with(rdata.path(), &addr, &["--role", "replica"]);
    eventually("compare agrees", || compare(primary.url(), replica.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_during_a_large_sync_upload_leaves_no_partial_file() {
    let (rdata, pdata) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica = start_with(rdata.path(), "127.0.0.1:0", &["--role", "replica"]);
    let replica_flag = replica.url();
    let flags = ["--replica", replica_flag.as_str(), "--replication", "sync"];
    let mut primary = start_with(pdata.path(), "127.0.0.1:0", &flags);
    let mut rpc = FileSyncClient::connect(primary.url()).await.unwrap();
    let acked: Vec<u64> = {
        let mut v = Vec::new();
        for i in 0..20u32 {
            v.push(upload(&mut rpc, &format!("small/{i}"), &i.to_le_bytes()).await);
        }
        v
    };
    assert_eq!(acked.last(), Some(&20));

    // A 64 MiB upload whose stream stalls halfway; the primary dies then.
    let big: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let upload_call = {
        let mut rpc = rpc.clone();
        tokio::spawn(async move { rpc.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await })
    };
    tx.send(header("big.bin", &big)).await.unwrap();
    for c in chunks(&big).into_iter().take(32) {
        tx.send(c).await.unwrap();
    }
    // A file over 1 MiB is stored as chunks, each written as it is cut:
    // more blobs than the small files' once part of it has come.
    let blobs = pdata.path().join("blobs");
    eventually("part of the upload is on the primary's disk", || async { count_blobs(&blobs) > 20 }).await;
    primary.child.kill().unwrap();
    wait_exit(&mut primary.child).await;
    assert!(upload_call.await.unwrap().is_err(), "the upload was not acknowledged");

    let addr = primary.addr.clone();
    drop(primary);
    let primary = start_with(pdata.path(), &addr, &flags);
    assert_eq!(count_blobs(&blobs), 20, "the start-up sweep removed the interrupted upload's chunks");
    for url in [primary.url(), replica.url()] {
        let mut rpc = FileSyncClient::connect(url.clone()).await.unwrap();
        let err = rpc.stat(pb::StatRequest { path: "big.bin".into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{url}: no partial file");
        let mut list = rpc.list(pb::ListRequest::default()).await.unwrap().into_inner();
        let mut n = 0;
        while let Some(msg) = list.next().await {
            // The first message carries only the listing's head.
            if let Some(e) = msg.unwrap().entry {
                assert!(e.path.starts_with("small/"));
                n += 1;
            }
        }
        assert_eq!(n, 20, "{url}: every acknowledged change");
    }
    eventually("compare agrees", || compare(primary.url(), replica.url())).await;
}

/// Blob files under the blob folder `dir`.
fn count_blobs(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|sub| std::fs::read_dir(sub.path()).map_or(0, |f| f.count())).sum())
        .unwrap_or(0)
}
