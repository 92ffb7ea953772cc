//! The server's gRPC API, driven directly: the version model, error codes,
//! durability of acknowledged writes, and the Subscribe seam.

use syncstore::pb::{self, change_event::Kind, upload_request};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn versions_are_sequence_numbers_and_stale_bases_are_refused() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;

    let a1 = upload(&mut rpc, "a.txt", b"one", 0).await.unwrap();
    assert_eq!(a1.version, 1);
    let b1 = upload(&mut rpc, "dir/b.txt", b"bee", 0).await.unwrap();
    assert_eq!(b1.version, 2);

    // Creating what exists, or updating from a stale base: ABORTED, and the
    // message names the current version.
    let err = upload(&mut rpc, "a.txt", b"two", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("version 1"), "{}", err.message());
    let a2 = upload(&mut rpc, "a.txt", b"two", 1).await.unwrap();
    assert_eq!(a2.version, 3);
    let err = upload(&mut rpc, "a.txt", b"three", 1).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(download(&mut rpc, "a.txt").await.unwrap(), b"two");

    // Delete needs the current version too, and leaves a tombstone.
    let err = rpc
        .delete(pb::DeleteRequest {
            path: "a.txt".into(),
            base_version: 1,
            client_id: "t".into(),
            lock_token: 0,
        })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::Aborted);
    let tomb = rpc
        .delete(pb::DeleteRequest {
            path: "a.txt".into(),
            base_version: 3,
            client_id: "t".into(),
            lock_token: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert!(tomb.deleted);
    assert_eq!(tomb.version, 4);
    let stat = rpc.stat(pb::StatRequest { path: "a.txt".into() }).await.unwrap().into_inner().entry.unwrap();
    assert!(stat.deleted);
    assert_eq!(download(&mut rpc, "a.txt").await.unwrap_err().code(), Code::NotFound);
    let err = rpc
        .delete(pb::DeleteRequest {
            path: "a.txt".into(),
            base_version: 4,
            client_id: "t".into(),
            lock_token: 0,
        })
        .await;
    assert_eq!(err.unwrap_err().code(), Code::NotFound);

    // Re-creating over a tombstone is a create (base 0).
    assert_eq!(upload(&mut rpc, "a.txt", b"again", 0).await.unwrap().version, 5);

    // List hides tombstones unless asked, and filters by folder prefix.
    rpc.delete(pb::DeleteRequest {
        path: "dir/b.txt".into(),
        base_version: 2,
        client_id: "t".into(),
        lock_token: 0,
    })
    .await
    .unwrap();
    upload(&mut rpc, "dir2/c.txt", b"c", 0).await.unwrap();
    let list = |prefix: &str, include_deleted: bool| {
        let mut rpc = rpc.clone();
        let req = pb::ListRequest { prefix: prefix.into(), include_deleted, ..Default::default() };
        async move {
            let s = rpc.list(req).await.unwrap().into_inner();
            entries_of(s).await.unwrap().into_iter().map(|e| e.path).collect::<Vec<_>>()
        }
    };
    assert_eq!(list("", false).await, ["a.txt", "dir2/c.txt"]);
    assert_eq!(list("", true).await, ["a.txt", "dir/b.txt", "dir2/c.txt"]);
    assert_eq!(list("dir", true).await, ["dir/b.txt"]);
    assert_eq!(list("dir/", false).await, Vec::<String>::new());
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_writes_nothing() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    for bad in ["", "/abs", "a/../b", "a//b", "./a", ".syncstore/x", "nul\0byte", "cafe\u{301}"] {
        let err = upload(&mut rpc, bad, b"x", 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}: {err:?}");
        let err = rpc.stat(pb::StatRequest { path: bad.into() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
    }

    // Content that does not match the header's hash or size.
    let mut header = upload_header("h.txt", b"promised", 0);
    let chunk = |d: &[u8]| pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(d.to_vec())) };
    let err = rpc
        .upload(tokio_stream::iter([header.clone(), chunk(b"delivered"), upload_end()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err =
        rpc.upload(tokio_stream::iter([header.clone(), chunk(b"promis"), upload_end()])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("announced"), "{}", err.message());
    let err = rpc
        .upload(tokio_stream::iter([header.clone(), chunk(b"promised!"), upload_end()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A second header, a missing header, a short hash.
    let err =
        rpc.upload(tokio_stream::iter([header.clone(), header.clone(), upload_end()])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = rpc.upload(tokio_stream::iter([chunk(b"promised"), upload_end()])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.hash.truncate(16);
    }
    let err = rpc.upload(tokio_stream::iter([header, chunk(b"promised"), upload_end()])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Header-only upload of content the server does not have.
    let err = rpc
        .upload(tokio_stream::iter([upload_header("h.txt", b"unknown", 0), upload_end()]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    assert_eq!(rpc.stat(pb::StatRequest { path: "h.txt".into() }).await.unwrap_err().code(), Code::NotFound);
    let err = rpc
        .download(pb::DownloadRequest { path: "h.txt".into(), version: 0, have_hash: Vec::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(server.stored_blobs().await, 0);
    assert_eq!(count_files(&server.data_dir().join("tmp")), 0);
}

#[tokio::test]
async fn identical_content_is_stored_once_and_reused_without_resending() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let data = random_bytes(100_000, 1);
    upload(&mut rpc, "one.bin", &data, 0).await.unwrap();
    upload(&mut rpc, "two.bin", &data, 0).await.unwrap();
    // A header alone reuses the stored content (a rename or a copy).
    let three = rpc
        .upload(tokio_stream::iter([upload_header("three.bin", &data, 0), upload_end()]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(three.size, data.len() as u64);
    assert_eq!(download(&mut rpc, "three.bin").await.unwrap(), data);
    assert_eq!(server.stored_blobs().await, 1);

    // Deleted and replaced files keep their content in their history.
    let mut versions = Vec::new();
    for p in ["one.bin", "two.bin", "three.bin"] {
        versions.push(
            rpc.stat(pb::StatRequest { path: p.into() }).await.unwrap().into_inner().entry.unwrap().version,
        );
    }
    for (p, v) in ["one.bin", "two.bin"].iter().zip(&versions) {
        rpc.delete(pb::DeleteRequest {
            path: (*p).into(),
            base_version: *v,
            client_id: "t".into(),
            lock_token: 0,
        })
        .await
        .unwrap();
    }
    assert_eq!(server.stored_blobs().await, 1);
    upload(&mut rpc, "three.bin", b"other", versions[2]).await.unwrap();
    assert_eq!(server.stored_blobs().await, 2, "the replaced content is kept by three.bin's history");
}

#[tokio::test]
async fn a_cancelled_upload_leaves_nothing() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let data = random_bytes(3 << 20, 2);

    // The client goes away mid-stream: header and one chunk, then the call
    // is dropped.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(upload_header("big.bin", &data, 0)).await.unwrap();
    tx.send(pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data[..1 << 20].to_vec())) })
        .await
        .unwrap();
    let mut call_rpc = rpc.clone();
    let call =
        tokio::spawn(async move { call_rpc.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // A file over 1 MiB is stored as chunks, each written as it is cut.
    let (tmp, blobs) = (server.data_dir().join("tmp"), server.data_dir().join("blobs"));
    eventually("the server receives the first chunk", || count_files(&blobs) > 0).await;
    call.abort();
    drop(tx);
    eventually_async("the cancelled upload's chunks and temp files are removed", || async {
        count_files(&tmp) == 0 && server.stored_blobs().await == 0
    })
    .await;
    assert_eq!(
        rpc.stat(pb::StatRequest { path: "big.bin".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(server.stored_blobs().await, 0);

    // The stream ends early (the client stopped sending): refused, nothing kept.
    let short = [
        upload_header("big.bin", &data, 0),
        pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data[..1 << 20].to_vec())) },
    ];
    assert_eq!(rpc.upload(tokio_stream::iter(short)).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(
        rpc.stat(pb::StatRequest { path: "big.bin".into() }).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(server.stored_blobs().await, 0);
    assert_eq!(count_files(&tmp), 0);
    // The head did not move: no sequence number was spent.
    let info = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.head_seq, 0);
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let history = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().history_id;
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..20u64 {
        let data = random_bytes(1000 + i as usize * 5000, i);
        upload(&mut rpc, &format!("f/{i}.bin"), &data, 0).await.unwrap();
        expected.insert(format!("f/{i}.bin"), data);
    }
    let server = server.restart().await;
    assert_eq!(server.files().await, expected);
    let mut rpc = server.rpc().await;
    let info = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.history_id, history, "the history id is kept across restarts");
    assert_eq!(info.head_seq, 20);
    // Sequence numbers continue where they were.
    assert_eq!(upload(&mut rpc, "after.txt", b"x", 0).await.unwrap().version, 21);
}

#[tokio::test]
async fn subscribe_replays_then_follows_live_without_gap_or_duplicate() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    for i in 1..=5 {
        upload(&mut rpc, &format!("{i}.txt"), format!("{i}").as_bytes(), 0).await.unwrap();
    }
    let mut sub = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 2, client_id: "watcher".into() })
        .await
        .unwrap()
        .into_inner();
    // Writers race the replay: every change must arrive exactly once, in order.
    let writer = {
        let mut rpc = rpc.clone();
        tokio::spawn(async move {
            for i in 6..=40 {
                upload(&mut rpc, &format!("{i}.txt"), b"live", 0).await.unwrap();
            }
        })
    };
    for seq in 3..=40u64 {
        let ev = next_event(&mut sub).await;
        assert_eq!(ev.seq, seq);
        assert_eq!(ev.kind(), Kind::Put);
        assert_eq!(ev.entry.as_ref().unwrap().path, format!("{seq}.txt"));
        assert_eq!(ev.client_id, "test");
    }
    writer.await.unwrap();
    rpc.delete(pb::DeleteRequest {
        path: "1.txt".into(),
        base_version: 1,
        client_id: "deleter".into(),
        lock_token: 0,
    })
    .await
    .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.seq, ev.kind(), ev.client_id.as_str()), (41, Kind::Delete, "deleter"));
    assert!(ev.entry.unwrap().deleted);
}

#[tokio::test]
async fn a_cursor_outside_the_kept_log_gets_a_reset() {
    let server = TestServer::start_with(|c| c.store.log_retention = 3).await;
    let mut rpc = server.rpc().await;
    for i in 1..=10 {
        upload(&mut rpc, &format!("{i}"), b"x", 0).await.unwrap();
    }
    let info = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert!(info.oldest_seq > 2, "the log was trimmed: {info:?}");

    for after_seq in [1, 1000] {
        let mut sub = rpc
            .subscribe(pb::SubscribeRequest { after_seq, client_id: "old".into() })
            .await
            .unwrap()
            .into_inner();
        let head = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().head_seq;
        let ev = next_event(&mut sub).await;
        assert_eq!((ev.kind(), ev.seq), (Kind::Reset, head), "after {after_seq}");
        upload(&mut rpc, &format!("more-{after_seq}"), b"y", 0).await.unwrap();
        let ev = next_event(&mut sub).await;
        assert_eq!(ev.kind(), Kind::Put);
    }
    // A cursor inside the kept log replays normally.
    let mut sub = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 11, client_id: "recent".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_event(&mut sub).await.seq, 12);
}

#[tokio::test]
async fn large_files_stream_in_chunks() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let data = random_bytes(5 << 20 | 12345, 9);
    let mut msgs = vec![upload_header("big.bin", &data, 0)];
    msgs.extend(
        data.chunks(1 << 20).map(|c| pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(c.to_vec())) }),
    );
    msgs.push(upload_end());
    rpc.upload(tokio_stream::iter(msgs)).await.unwrap();
    let mut s = rpc
        .download(pb::DownloadRequest { path: "big.bin".into(), version: 0, have_hash: Vec::new() })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        match m.msg.unwrap() {
            pb::download_response::Msg::Entry(e) => assert_eq!(e.size, data.len() as u64),
            pb::download_response::Msg::Chunk(c) => {
                assert!(c.len() <= 1 << 20);
                chunks += 1;
                got.extend_from_slice(&c);
            }
            pb::download_response::Msg::Runs(_) => panic!("runs without asking for them"),
        }
    }
    assert_eq!(chunks, 6);
    assert!(got == data);

    // A chunk over the limit is refused.
    let over = vec![0u8; (1 << 20) + 1];
    let msgs = [
        upload_header("over.bin", &over, 0),
        pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(over.clone())) },
        upload_end(),
    ];
    let err = rpc.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert!(matches!(err.code(), Code::InvalidArgument | Code::ResourceExhausted), "{err:?}");

    // A file over the server's size limit is refused before any content.
    let small = TestServer::start_with(|c| c.max_file_size = 10).await;
    let err = upload(&mut small.rpc().await, "f", b"eleven bytes", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn admin_status_lists_each_subscription_with_its_cursor() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let subscribers = |s: pb::StatusResponse| {
        s.subscribers.into_iter().map(|c| (c.client_id, c.principal, c.cursor_seq)).collect::<Vec<_>>()
    };
    assert!(subscribers(server.status().await).is_empty());
    let mut events = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "watcher-1".into() })
        .await
        .unwrap()
        .into_inner();
    let first = upload(&mut rpc, "a.txt", b"a", 0).await.unwrap();
    assert_eq!(next_event(&mut events).await.seq, first.version);
    // The cursor is the last change sent; it moves with the next one.
    eventually_async("the status shows the subscription at its cursor", || {
        let server = &server;
        async move {
            subscribers(server.status().await)
                == [("watcher-1".to_owned(), "anonymous".to_owned(), first.version)]
        }
    })
    .await;
    let second = upload(&mut rpc, "b.txt", b"b", 0).await.unwrap();
    assert_eq!(next_event(&mut events).await.seq, second.version);
    eventually_async("the cursor moved", || {
        let server = &server;
        async move { subscribers(server.status().await).first().map(|s| s.2) == Some(second.version) }
    })
    .await;
    // A subscription that ends leaves the list.
    drop(events);
    eventually_async("the ended subscription left the list", || {
        let server = &server;
        async move { subscribers(server.status().await).is_empty() }
    })
    .await;
}

/// `List` by pages (`limit`, continued with the last message's `cursor`
/// as `after`), of a whole prefix or of one folder level (`one_level`):
/// each entry once, in order; a subfolder without an entry of its own
/// comes as a folder entry at version 0.
#[tokio::test]
async fn list_pages_by_cursor_and_lists_one_folder_level() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    for p in ["d/a.txt", "d/b.txt", "d/sub/x", "d/sub/y/z", "d/sub.txt", "d/z.txt", "e.txt"] {
        upload(&mut rpc, p, p.as_bytes(), 0).await.unwrap();
    }
    let walk = |prefix: &'static str, one_level: bool, limit: u32| {
        let mut rpc = rpc.clone();
        async move {
            let (mut seen, mut after) = (Vec::new(), String::new());
            loop {
                let req = pb::ListRequest {
                    prefix: prefix.into(),
                    one_level,
                    after: after.clone(),
                    limit,
                    ..Default::default()
                };
                let mut stream = rpc.list(req).await.unwrap().into_inner();
                let mut got = 0;
                while let Some(m) = stream.message().await.unwrap() {
                    let Some(e) = m.entry else { continue };
                    got += 1;
                    after = m.cursor;
                    seen.push(if e.folder { format!("{}/ v{}", e.path, e.version) } else { e.path });
                }
                assert!(got <= limit as usize, "{got} entries past a limit of {limit}");
                if got < limit as usize {
                    return seen;
                }
            }
        }
    };
    let all = ["d/a.txt", "d/b.txt", "d/sub.txt", "d/sub/x", "d/sub/y/z", "d/z.txt"];
    assert_eq!(walk("d", false, 2).await, all);
    assert_eq!(walk("d", true, 2).await, ["d/a.txt", "d/b.txt", "d/sub.txt", "d/sub/ v0", "d/z.txt"]);
    assert_eq!(walk("d", true, 1000).await.len(), 5);
    assert_eq!(walk("", true, 1).await, ["d/ v0", "e.txt"]);
}
