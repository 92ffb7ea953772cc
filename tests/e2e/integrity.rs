//! Damaged stored content (bit rot): never served or spread as good,
//! found by reads and scrubs, healed by a good copy; and a full disk.

use std::time::Duration;

use sync_server::{Mode, OnTimeout, scrub::Peer};
use syncstore::{
    ContentHash, Reason,
    connect::Security,
    pb::{self, upload_request},
};
use tonic::Code;

use crate::harness::{
    Rpc, TestClient, TestServer, blob_path, download, eventually, eventually_async, random_bytes, upload,
    upload_end, upload_header,
};

/// The blobs `content` is stored in, with where each starts in it: its
/// own, or for content larger than one chunk each chunk's.
fn stored_pieces(data_dir: &std::path::Path, content: &[u8]) -> Vec<(std::path::PathBuf, usize, usize)> {
    let list = syncstore::chunks::chunk_list(content, content.len() as u64).unwrap().2;
    let mut at = 0;
    list.iter()
        .map(|c| {
            let piece = (blob_path(data_dir, &c.hash), at, c.size as usize);
            at += c.size as usize;
            piece
        })
        .collect()
}

/// The stored copy of `content`, read from its blobs.
fn stored_copy(data_dir: &std::path::Path, content: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (path, _, _) in stored_pieces(data_dir, content) {
        out.extend_from_slice(&std::fs::read(path)?);
    }
    Ok(out)
}

/// Flips one bit of the byte at `at` of the stored copy of `content` (in
/// the chunk that holds it, for content larger than one chunk).
fn rot(data_dir: &std::path::Path, content: &[u8], at: usize) {
    assert_eq!(stored_copy(data_dir, content).unwrap(), content, "the stored copy was intact before");
    let (path, start, _) = stored_pieces(data_dir, content)
        .into_iter()
        .find(|(_, start, len)| (*start..start + len).contains(&at))
        .expect("a stored piece holds every byte");
    let mut stored = std::fs::read(&path).unwrap();
    stored[at - start] ^= 0x20;
    std::fs::write(&path, stored).unwrap();
}

/// A header-only upload of `data` to `path` (the content is announced, not
/// sent), as a client's copy or move does.
async fn upload_header_only(rpc: &mut Rpc, path: &str, data: &[u8]) -> Result<pb::FileEntry, tonic::Status> {
    let msgs = vec![upload_header(path, data, 0), upload_end()];
    Ok(rpc.upload(tokio_stream::iter(msgs)).await?.into_inner().entry.unwrap())
}

/// Downloads `path`, returning what arrived before the stream ended and how
/// it ended.
async fn download_partial(rpc: &mut Rpc, path: &str) -> (Vec<u8>, Result<(), tonic::Status>) {
    let mut got = Vec::new();
    let mut stream = match rpc
        .download(pb::DownloadRequest { path: path.into(), version: 0, have_hash: Vec::new() })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return (got, Err(s)),
    };
    loop {
        match stream.message().await {
            Ok(Some(pb::DownloadResponse { msg: Some(pb::download_response::Msg::Chunk(c)) })) => {
                got.extend_from_slice(&c)
            }
            Ok(Some(_)) => {}
            Ok(None) => return (got, Ok(())),
            Err(s) => return (got, Err(s)),
        }
    }
}

fn assert_data_loss(result: &Result<(), tonic::Status>) {
    let status = result.as_ref().expect_err("damaged content must not be served");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert_eq!(Reason::of(status), Some(Reason::Damaged));
}

#[tokio::test]
async fn damaged_content_is_never_served_nor_spread_and_the_good_bytes_heal_it() {
    let server = TestServer::start().await;
    let writer = TestClient::start(&server.url());
    // Three chunks: the damage is in the last one.
    let doc = random_bytes(2 * 1024 * 1024 + 300_000, 13);
    writer.write("doc.bin", &doc);
    let mut rpc = server.rpc().await;
    eventually_async("the server holds doc.bin", || async {
        download(&mut server.rpc().await, "doc.bin").await.is_ok_and(|d| d == doc)
    })
    .await;

    rot(server.data_dir(), &doc, doc.len() - 10);

    // A header-only upload of that content, before anyone read it: the
    // server checks its copy and answers as if it did not have it.
    let err = upload_header_only(&mut rpc, "reuse.bin", &doc).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(server.status().await.damaged_blobs, 1);

    // A download answers DATA_LOSS and never the whole content.
    let (got, ended) = download_partial(&mut rpc, "doc.bin").await;
    assert_data_loss(&ended);
    assert!(got.len() < doc.len(), "only {} of {} bytes may come before DATA_LOSS", got.len(), doc.len());

    // A copy in the client's folder: its header-only upload is refused,
    // the client sends its good bytes, and they heal doc.bin too.
    std::fs::copy(writer.path("doc.bin"), writer.path("copy.bin")).unwrap();
    eventually_async("copy.bin is stored and doc.bin is whole again", || async {
        let mut rpc = server.rpc().await;
        download(&mut rpc, "copy.bin").await.is_ok_and(|d| d == doc)
            && download(&mut rpc, "doc.bin").await.is_ok_and(|d| d == doc)
    })
    .await;
    let status = server.status().await;
    assert_eq!((status.damaged_blobs, status.damaged_blobs_found), (0, 1));
    assert_eq!(stored_copy(server.data_dir(), &doc).unwrap(), doc);

    // A second client gets both files whole.
    let reader = TestClient::start(&server.url());
    eventually("the second client has both files", || {
        reader.read("doc.bin").is_some_and(|d| d == doc) && reader.read("copy.bin").is_some_and(|d| d == doc)
    })
    .await;
    reader.stop().await;
    writer.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn uploading_the_same_bytes_again_replaces_a_damaged_copy_no_one_has_read_yet() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let small = b"a small file, rotting quietly".to_vec();
    let entry = upload(&mut rpc, "small.txt", &small, 0).await.unwrap();
    rot(server.data_dir(), &small, 3);
    // Same content under another name, bytes sent: the good copy wins.
    upload(&mut rpc, "again.txt", &small, 0).await.unwrap();
    assert_eq!(download(&mut rpc, "small.txt").await.unwrap(), small);
    assert_eq!(entry.path, "small.txt");
    server.stop().await;
}

/// A primary in sync mode and its replica, `files` written through the
/// primary and replicated.
async fn replicated_pair(files: &[(&str, &[u8])]) -> (TestServer, TestServer) {
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, Duration::from_secs(5), |_| {})
            .await;
    let mut rpc = primary.rpc().await;
    for (path, data) in files {
        let mut attempt = upload(&mut rpc, path, data, 0).await;
        // The first write may come before the replication stream is up.
        for _ in 0..50 {
            match &attempt {
                Err(s) if s.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    attempt = upload(&mut rpc, path, data, 0).await;
                }
                _ => break,
            }
        }
        if let Err(s) = &attempt
            && s.code() == Code::Aborted
        {
            continue; // Committed by an attempt that timed out.
        }
        attempt.unwrap();
    }
    let head = primary.status().await.head_seq;
    eventually_async("the replica has every change", || async { replica.status().await.head_seq >= head })
        .await;
    (primary, replica)
}

#[tokio::test]
async fn compare_content_sees_damage_the_manifests_hide_and_scrub_heals_it_from_the_replica() {
    let a = random_bytes(300_000, 1);
    let b = random_bytes(5000, 2);
    let c = random_bytes(70_000, 6);
    let (primary, replica) = replicated_pair(&[("a.bin", &a), ("b.bin", &b), ("c.bin", &c)]).await;
    rot(primary.data_dir(), &a, 100);
    // b is damaged on both servers: nowhere to heal it from.
    rot(primary.data_dir(), &b, 7);
    rot(replica.data_dir(), &b, 8);

    let none = Security::none();
    let metadata = sync_server::compare(&primary.url(), &replica.url(), &none).await.unwrap();
    assert!(metadata.identical(), "the manifests agree: {:?}", metadata.differences);
    let content = sync_server::admin::compare_content(&primary.url(), &replica.url(), &none).await.unwrap();
    assert!(!content.identical());
    let mut expected = vec![
        ("a.bin".to_owned(), "damaged-in-A"),
        ("b.bin".to_owned(), "damaged-in-A"),
        ("b.bin".to_owned(), "damaged-in-B"),
    ];
    expected.sort();
    assert_eq!(content.differences, expected);
    // The primary heals what its reads found from the replica, where it can.
    eventually_async("the primary healed a.bin from the replica", || async {
        download(&mut primary.rpc().await, "a.bin").await.is_ok_and(|d| d == a)
    })
    .await;
    assert_eq!(primary.status().await.damaged_blobs, 1, "b.bin is damaged on both");

    // Offline scrub of the stopped primary, healing from the replica.
    let (config, data, addr) = primary.stop().await;
    rot(&config.data_dir, &c, 69_999);
    let peer = Peer { url: replica.url(), security: none.clone() };
    let (report, lost) = sync_server::scrub_offline(&config.data_dir, Some(peer)).await.unwrap();
    assert_eq!(report.verified, 3);
    let mut damaged = vec![ContentHash::of(&b), ContentHash::of(&c)];
    damaged.sort();
    assert_eq!(report.damaged, damaged, "{report:?}");
    assert_eq!(report.healed, vec![ContentHash::of(&c)]);
    assert_eq!(lost, vec![("b.bin".to_owned(), ContentHash::of(&b))]);
    assert_eq!(stored_copy(&config.data_dir, &c).unwrap(), c);

    let primary = TestServer::start_on(config, addr).await;
    let mut rpc = primary.rpc().await;
    assert_eq!(download(&mut rpc, "a.bin").await.unwrap(), a);
    assert_eq!(download(&mut rpc, "c.bin").await.unwrap(), c);
    assert_data_loss(&download_partial(&mut rpc, "b.bin").await.1);
    let content = sync_server::admin::compare_content(&primary.url(), &replica.url(), &none).await.unwrap();
    let mut expected = vec![("b.bin".to_owned(), "damaged-in-A"), ("b.bin".to_owned(), "damaged-in-B")];
    expected.sort();
    assert_eq!(content.differences, expected);
    assert_eq!(primary.status().await.damaged_blobs, 1);
    primary.stop().await;
    drop(data);
    replica.stop().await;
}

#[tokio::test]
async fn the_background_scrub_finds_damage_and_heals_it_from_the_replica() {
    let a = random_bytes(700_000, 3);
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, Duration::from_secs(5), |c| {
            c.scrub_interval = Some(Duration::from_millis(200));
        })
        .await;
    upload(&mut primary.rpc().await, "a.bin", &a, 0).await.unwrap();
    eventually_async("the replica has a.bin", || async {
        download(&mut replica.rpc().await, "a.bin").await.is_ok_and(|d| d == a)
    })
    .await;
    rot(primary.data_dir(), &a, 650_000);
    eventually_async("the scrub found the damage and healed it", || async {
        let s = primary.status().await;
        s.damaged_blobs_found >= 1
            && s.damaged_blobs == 0
            && stored_copy(primary.data_dir(), &a).is_ok_and(|d| d == a)
    })
    .await;
    assert_eq!(download(&mut primary.rpc().await, "a.bin").await.unwrap(), a);
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test]
async fn damage_a_download_finds_on_a_primary_is_healed_from_the_replica_at_once() {
    let a = random_bytes(1_500_000, 5);
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, Duration::from_secs(5), |c| {
            c.scrub_interval = None;
        })
        .await;
    upload(&mut primary.rpc().await, "a.bin", &a, 0).await.unwrap();
    eventually_async("the replica has a.bin", || async {
        download(&mut replica.rpc().await, "a.bin").await.is_ok_and(|d| d == a)
    })
    .await;
    rot(primary.data_dir(), &a, 1_000_000);
    let (got, ended) = download_partial(&mut primary.rpc().await, "a.bin").await;
    assert_data_loss(&ended);
    assert!(got.len() < a.len());
    eventually_async("the primary fetched a good copy from the replica", || async {
        download(&mut primary.rpc().await, "a.bin").await.is_ok_and(|d| d == a)
    })
    .await;
    let status = primary.status().await;
    assert_eq!((status.damaged_blobs, status.damaged_blobs_found), (0, 1));
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test]
async fn a_damaged_blob_is_healed_by_the_primarys_next_copy_on_a_replica() {
    let a = random_bytes(4000, 4);
    let (primary, replica) = replicated_pair(&[("a.bin", &a)]).await;
    rot(replica.data_dir(), &a, 10);
    let mut on_replica = replica.rpc().await;
    assert_data_loss(&download_partial(&mut on_replica, "a.bin").await.1);
    // The same content written again on the primary comes with its bytes.
    upload(&mut primary.rpc().await, "again.bin", &a, 0).await.unwrap();
    eventually_async("the replica's copy is whole again", || async {
        download(&mut replica.rpc().await, "a.bin").await.is_ok_and(|d| d == a)
    })
    .await;
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test]
async fn a_sparse_file_takes_only_its_data_on_the_servers_disk() {
    use std::os::unix::fs::MetadataExt;
    let server = TestServer::start().await;
    let len = 256 * 1024 * 1024;
    let mut head = vec![0u8; 1024 * 1024];
    head[..5].copy_from_slice(b"start");
    let hash = {
        let mut h = blake3::Hasher::new();
        h.update(&head);
        let zeros = vec![0u8; 1024 * 1024];
        for _ in 1..len / zeros.len() {
            h.update(&zeros);
        }
        ContentHash::from(h.finalize())
    };
    // Streamed: the header, one chunk of data, then chunks of zeros.
    let header = pb::UploadHeader {
        path: "sparse.img".into(),
        size: len as u64,
        hash: hash.as_bytes().to_vec(),
        client_id: "test".into(),
        ..Default::default()
    };
    let chunks = std::iter::once(upload_request::Msg::Header(header))
        .chain(std::iter::once(upload_request::Msg::Chunk(head)))
        .chain((1..len / (1024 * 1024)).map(|_| upload_request::Msg::Chunk(vec![0u8; 1024 * 1024])))
        .chain(std::iter::once(upload_request::Msg::End(pb::UploadEnd {})))
        .map(|m| pb::UploadRequest { msg: Some(m) });
    server.rpc().await.upload(tokio_stream::iter(chunks)).await.unwrap();
    // Stored as chunks: its runs of zeros are one chunk of zeros, stored
    // once (as a hole).
    let mut allocated = 0;
    for dir in std::fs::read_dir(server.data_dir().join("blobs")).unwrap() {
        for blob in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            allocated += blob.unwrap().metadata().unwrap().blocks() * 512;
        }
    }
    assert!(allocated < 4 * 1024 * 1024, "{allocated} bytes on disk for 1 MiB of data in a 256 MiB file");
    server.stop().await;
}
