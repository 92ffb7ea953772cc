//! Uploads that end early, go silent or trickle: nothing is committed that
//! the client did not finish sending, a client that gives up cancels its
//! call, and slow streams do not keep others out.

use std::time::Duration;

use syncstore::{
    ContentHash, Reason, RelPath,
    pb::{self, upload_request},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::Code;

use crate::harness::*;

fn chunk(data: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data.to_vec())) }
}

async fn stat_code(rpc: &mut Rpc, path: &str) -> Code {
    match rpc.stat(pb::StatRequest { path: path.into() }).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// A header and then the end of the stream, with no end marker: what a
/// client sent when it caught a file empty in the middle of an in-place
/// save (truncate, then write) and gave up on it. The server must not take
/// the early end for a complete, empty file; with the end marker the same
/// upload is stored.
#[tokio::test]
async fn a_stream_that_ends_after_its_header_commits_nothing() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let err = rpc.upload(tokio_stream::iter([upload_header("doc.txt", b"", 0)])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(Reason::of(&err), Some(Reason::UploadIncomplete), "{err:?}");
    assert_eq!(stat_code(&mut rpc, "doc.txt").await, Code::NotFound);
    assert_eq!(count_files(&server.data_dir().join("tmp")), 0);

    // All of the content, but no end marker: nothing either.
    let data = random_bytes(3 << 20, 1);
    let mut msgs = vec![upload_header("doc.txt", &data, 0)];
    msgs.extend(data.chunks(syncstore::limits::MAX_CHUNK).map(chunk));
    let err = rpc.upload(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(Reason::of(&err), Some(Reason::UploadIncomplete), "{err:?}");
    assert_eq!(stat_code(&mut rpc, "doc.txt").await, Code::NotFound);

    // The control: with the end marker, the empty file is stored.
    let entry = rpc
        .upload(tokio_stream::iter([upload_header("doc.txt", b"", 0), upload_end()]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(entry.size, 0);
    assert_eq!(download(&mut rpc, "doc.txt").await.unwrap(), b"");
}

/// What a client sent on each HTTP/2 stream of a connection: whether it
/// ended the stream (END_STREAM) and whether it reset it (RST_STREAM).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Ending {
    ended: bool,
    reset: bool,
}

/// A plaintext HTTP/2 proxy in front of `target` for one connection, which
/// reads the client's frames as they pass: stream id -> how it ended.
async fn frame_watcher(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u32, Ending>>>,
    JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: usize = 24;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        let (inbound, _) = listener.accept().await.unwrap();
        let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
        let (mut client_read, mut client_write) = inbound.into_split();
        let (mut server_read, mut server_write) = outbound.into_split();
        let back = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        });
        let mut pending = Vec::new();
        let mut preface_left = PREFACE;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            let skip = preface_left.min(pending.len());
            pending.drain(..skip);
            preface_left -= skip;
            // Whole frames: a 9-byte header (length, type, flags, stream).
            while pending.len() >= 9 {
                let len = u32::from_be_bytes([0, pending[0], pending[1], pending[2]]) as usize;
                if pending.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (pending[3], pending[4]);
                let stream =
                    u32::from_be_bytes([pending[5], pending[6], pending[7], pending[8]]) & 0x7fff_ffff;
                let mut seen = record.lock().unwrap();
                match kind {
                    // DATA or HEADERS with END_STREAM.
                    0 | 1 if flags & 0x1 != 0 => {
                        seen.entry(stream).or_insert_with(Ending::default).ended = true
                    }
                    3 => seen.entry(stream).or_insert_with(Ending::default).reset = true,
                    _ => {}
                }
                pending.drain(..9 + len);
            }
        }
        back.abort();
    });
    (addr, seen, task)
}

/// The client's reader finds the file is not what its header announced
/// (it changed after it was hashed): the client cancels the call
/// (RST_STREAM) and never ends its request stream normally. (The server
/// cannot tell the two apart, since a cancelled request stream reads as
/// ended there; the end marker is what keeps either from committing.)
#[tokio::test]
async fn a_client_that_finds_its_file_changed_cancels_the_upload() {
    let server = TestServer::start().await;
    let (proxy, seen, proxy_task) = frame_watcher(server.addr).await;

    let folder = tempfile::tempdir().unwrap();
    // Larger than the chunks the client reads ahead of the network (4 of
    // 1 MiB), so its reader can only reach the end, and find the change,
    // once the call is open and taking content: a reader that finished
    // first would leave no stream to cancel (nothing sent at all).
    let now = random_bytes(8 << 20, 2);
    let hashed = random_bytes(8 << 20, 3);
    write(folder.path(), "f.bin", &now);
    let root = sync_client::fsroot::Root::open(folder.path()).unwrap();
    let remote =
        sync_client::GrpcRemote::new(&[format!("http://{proxy}")], "c".into(), &Default::default()).unwrap();
    // What the file hashed to a moment ago: same size, other bytes.
    let expected = sync_client::plan::Local {
        hash: ContentHash::of(&hashed),
        size: hashed.len() as u64,
        mtime_ns: 1,
        executable: false,
        symlink: false,
        folder: false,
        stamp: 0,
    };
    let base = sync_client::transfer::UploadBase {
        version: 0,
        lock_token: 0,
        reuse: false,
        chunks: None,
        moved_from: None,
    };
    let path = RelPath::new("f.bin").unwrap();
    let result = sync_client::transfer::upload(&remote, &root, &path, expected, base).await;
    assert!(matches!(result, Err(sync_client::Error::ChangedWhileReading)), "{result:?}");

    eventually("the client reset its upload stream", || seen.lock().unwrap().values().any(|e| e.reset)).await;
    let endings = seen.lock().unwrap().clone();
    assert!(endings.values().all(|e| !e.ended), "the upload stream was ended, not cancelled: {endings:?}");
    let mut rpc = server.rpc().await;
    assert_eq!(stat_code(&mut rpc, "f.bin").await, Code::NotFound);
    eventually("nothing is left of the upload", || count_files(&server.data_dir().join("tmp")) == 0).await;
    drop(remote);
    proxy_task.abort();
}

/// An upload that sends its header and then a byte every `every`, on
/// `rpc`'s connection, until its call ends. The call's task.
fn trickle(rpc: &Rpc, path: &str, every: Duration) -> JoinHandle<Result<(), tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let header = upload_header(path, &[b'x'; 1 << 20], 0);
    let mut rpc = rpc.clone();
    tokio::spawn(async move {
        let sender = tokio::spawn(async move {
            if tx.send(header).await.is_err() {
                return;
            }
            // Ends once the call is over and its stream dropped.
            while tx.send(chunk(b"x")).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        });
        let result = rpc.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map(drop);
        sender.abort();
        result
    })
}

/// An upload that never sends anything, on `rpc`'s connection.
fn silent(rpc: &Rpc) -> JoinHandle<Result<(), tonic::Status>> {
    let mut rpc = rpc.clone();
    tokio::spawn(async move { rpc.upload(tokio_stream::pending()).await.map(drop) })
}

/// One connection opens many uploads that never send a header, and many
/// that trickle a byte now and then: with the server's default limits and
/// an idle timeout long enough that none of them is cut off during the
/// test, they take no slot before their header, and at most
/// `--max-uploads-per-connection` after it, so uploads over other
/// connections of the same namespace go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_of_silent_and_trickling_uploads_does_not_keep_others_out() {
    let server = TestServer::start_with(|c| c.upload_idle_timeout = DEADLINE).await;
    let hog = rpc_with(&server.url(), &Default::default());
    let per_namespace = sync_server::DEFAULT_MAX_UPLOADS_PER_NAMESPACE;
    let per_connection = sync_server::DEFAULT_MAX_UPLOADS_PER_CONNECTION;
    let mut calls: Vec<_> = (0..per_namespace).map(|_| silent(&hog)).collect();
    calls.extend((0..per_namespace).map(|i| trickle(&hog, &format!("t{i}"), Duration::from_millis(500))));
    let tmp = server.data_dir().join("tmp");
    eventually("the trickling uploads hold the connection's slots", || count_files(&tmp) == per_connection)
        .await;

    // The rest of the namespace's slots, at once, over another connection.
    let mut rpc = rpc_with(&server.url(), &Default::default());
    let others: Vec<_> = (0..per_namespace - per_connection)
        .map(|i| {
            let mut rpc = rpc.clone();
            tokio::spawn(async move { upload(&mut rpc, &format!("other{i}"), b"legitimate", 0).await })
        })
        .collect();
    for other in others {
        other.await.unwrap().unwrap();
    }
    upload(&mut rpc, "after.txt", b"and more", 0).await.unwrap();

    // The trickling uploads beyond the connection's share are refused for
    // want of a slot; the others keep theirs.
    let refused = per_namespace - per_connection;
    eventually("the trickling uploads beyond the connection's share are refused", || {
        calls[per_namespace..].iter().filter(|c| c.is_finished()).count() == refused
    })
    .await;
    let (done, running): (Vec<_>, Vec<_>) = calls.into_iter().partition(JoinHandle::is_finished);
    assert_eq!(done.len(), refused, "only the refused calls ended");
    for call in done {
        let s = call.await.unwrap().unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(Reason::of(&s), Some(Reason::Busy), "{s:?}");
    }
    for call in running {
        call.abort();
    }
}

/// A stream that keeps its slot by sending a byte now and then (never
/// silent for the idle timeout) is ended once it falls behind the minimum
/// rate, with DEADLINE_EXCEEDED and a reason, its temp file gone; honest
/// uploads of the namespace wait for a slot and then go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_uploads_are_ended_and_do_not_refuse_honest_ones() {
    const IDLE: Duration = Duration::from_secs(1);
    let server = TestServer::start_with(|c| {
        c.upload_idle_timeout = IDLE;
        c.upload_min_rate = 64 * 1024;
        c.max_uploads_per_namespace = 4;
    })
    .await;
    // One trickler per connection, so that only the rate can stop them.
    let tricklers: Vec<_> = (0..4)
        .map(|i| trickle(&rpc_with(&server.url(), &Default::default()), &format!("t{i}"), IDLE / 5))
        .collect();
    let tmp = server.data_dir().join("tmp");
    eventually("the trickling uploads hold the namespace's slots", || count_files(&tmp) == 4).await;

    let started = tokio::time::Instant::now();
    let mut rpc = server.rpc().await;
    upload(&mut rpc, "honest.txt", b"waits for a slot, then goes through", 0).await.unwrap();
    assert!(started.elapsed() < sync_server::UPLOAD_SLOT_WAIT, "it got a slot before its wait ran out");

    for t in tricklers {
        let status = tokio::time::timeout(DEADLINE, t).await.expect("ended in time").unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(Reason::of(&status), Some(Reason::DeadlineExceeded), "{status:?}");
        assert!(status.message().contains("bytes a second"), "{status:?}");
    }
    eventually("the trickling uploads' temp files are removed", || count_files(&tmp) == 0).await;
    for i in 0..4 {
        assert_eq!(stat_code(&mut rpc, &format!("t{i}")).await, Code::NotFound);
    }
}

/// The server stored a client's upload but the answer never arrived (the
/// connection dropped, the client crashed): the server's version carries
/// the client's id and content it noted as sent. Meanwhile the file was
/// saved again here. The client must take that version as its own past
/// and upload the new save on top of it, not call it a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_answer_was_lost_is_not_a_conflict() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    a.write("doc.txt", "first save");
    eventually_async("the first save is on the server", || async {
        server.files().await.get("doc.txt").is_some_and(|d| d == b"first save")
    })
    .await;
    let dir = a.stop().await;

    // What the lost upload did: noted as sent, then stored by the server.
    let state = sync_client::State::open(dir.path()).unwrap();
    let path = RelPath::new("doc.txt").unwrap();
    let base = state.base(&path).unwrap().expect("the first save was recorded");
    state.note_sent(&path, &ContentHash::of(b"second save")).unwrap();
    let mut header = upload_header("doc.txt", b"second save", base.version);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.client_id = state.client_id().unwrap();
    }
    let mut rpc = server.rpc().await;
    rpc.upload(tokio_stream::iter([header, chunk(b"second save"), upload_end()])).await.unwrap();
    drop(state);
    write(dir.path(), "doc.txt", "third save");

    let a = TestClient::start_in(&server.url(), dir);
    eventually_async("the third save is on the server", || async {
        server.files().await.get("doc.txt").is_some_and(|d| d == b"third save")
    })
    .await;
    let names: Vec<String> = server.files().await.into_keys().collect();
    assert_eq!(names, ["doc.txt"], "no conflict copy");
    assert_eq!(a.files().into_keys().collect::<Vec<_>>(), ["doc.txt"]);
    a.stop().await;
}
