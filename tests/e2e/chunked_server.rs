//! The server's side of block-level transfer, at the wire: uploads sent as
//! runs against a base, downloads described against the client's copy,
//! refusals of runs that do not fit, and the chunk store's dedup on disk,
//! with raw calls against a real server and its metrics endpoint.

use syncstore::{
    ContentHash,
    chunks::{self, ChunkRef, Run},
    connect::Security,
    limits::MAX_CHUNK,
    pb::{self, download_response, upload_request},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::harness::*;

/// A server with its metrics endpoint, stopped by [`Served::stop`] (or
/// when dropped).
struct Served {
    url: String,
    metrics_addr: std::net::SocketAddr,
    data: tempfile::TempDir,
    shutdown: CancellationToken,
    /// The serving task and the metrics endpoint's, until stopped.
    tasks: Option<(Serving, JoinHandle<std::io::Result<()>>)>,
}

type Serving = JoinHandle<sync_server::Result<()>>;

impl Served {
    async fn start(tweak: impl FnOnce(&mut sync_server::Config)) -> Self {
        init_test_log();
        let data = tempfile::tempdir().unwrap();
        let mut config = sync_server::Config::new(data.path().join("data"));
        tweak(&mut config);
        let server = sync_server::Server::open(config).await.unwrap();
        let (listener, metrics_listener) = (
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics_listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let metrics = tokio::spawn(server.metrics_server().serve(metrics_listener, shutdown.clone()));
        let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self { url: format!("http://{addr}"), metrics_addr, data, shutdown, tasks: Some((serving, metrics)) }
    }

    fn rpc(&self) -> Rpc {
        rpc_with(&self.url, &Security::none())
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.data.path().join("data")
    }

    /// The value of the server's metric `name` (with the `syncstore_`
    /// prefix).
    async fn metric(&self, name: &str) -> u64 {
        let mut conn = TcpStream::connect(self.metrics_addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let line = format!("syncstore_{name} ");
        let value = response.lines().find_map(|l| l.strip_prefix(line.as_str()));
        value.unwrap_or_else(|| panic!("no metric {name} in:\n{response}")).parse().unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let (serving, metrics) = self.tasks.take().expect("stopped once");
        serving.await.unwrap().unwrap();
        metrics.await.unwrap().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

const MIB: usize = 1024 * 1024;

/// The chunk list both sides cut `data` into.
fn list_of(data: &[u8]) -> Vec<ChunkRef> {
    chunks::chunk_list(data, data.len() as u64).unwrap().2
}

/// Where each chunk of `list` starts in its content.
fn offsets(list: &[ChunkRef]) -> Vec<usize> {
    list.iter()
        .scan(0usize, |at, c| {
            let start = *at;
            *at += c.size as usize;
            Some(start)
        })
        .collect()
}

/// The messages of an upload of `new` to `path` sent as `runs` against
/// content `base` cut into `base_list`: header, runs (at most the limit a
/// message), each followed by its new chunks' bytes from `new` in messages
/// of at most `MAX_CHUNK`, then the end marker. `tamper` may change each
/// new chunk's bytes.
fn runs_upload(
    path: &str,
    new: &[u8],
    base_version: u64,
    (base, base_list): (&ContentHash, &[ChunkRef]),
    runs: &[Run],
    mut tamper: impl FnMut(&mut Vec<u8>),
) -> Vec<pb::UploadRequest> {
    let mut header = upload_header(path, new, base_version);
    if let Some(upload_request::Msg::Header(h)) = &mut header.msg {
        h.base_hash = base.as_bytes().to_vec();
    }
    let mut msgs = vec![header];
    // Where the next run's chunks start in `new`.
    let mut at = 0usize;
    for batch in runs.chunks(chunks::MAX_RUNS_PER_MESSAGE) {
        msgs.push(runs_message(batch));
        let mut bytes = Vec::new();
        for run in batch {
            match *run {
                Run::Base { first, count } => {
                    let slice = &base_list[first as usize..(first + count) as usize];
                    at += slice.iter().map(|c| c.size as usize).sum::<usize>();
                }
                Run::New(c) => {
                    let mut chunk = new[at..at + c.size as usize].to_vec();
                    tamper(&mut chunk);
                    bytes.extend_from_slice(&chunk);
                    at += c.size as usize;
                }
            }
        }
        msgs.extend(bytes.chunks(MAX_CHUNK).map(chunk_message));
    }
    msgs.push(upload_end());
    msgs
}

fn runs_message(runs: &[Run]) -> pb::UploadRequest {
    let runs = runs.iter().map(|r| pb::ChunkRun::from(*r)).collect();
    pb::UploadRequest { msg: Some(upload_request::Msg::Runs(pb::ChunkRuns { runs })) }
}

fn chunk_message(bytes: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(bytes.to_vec())) }
}

/// Sends an upload's messages.
async fn send(rpc: &mut Rpc, msgs: Vec<pb::UploadRequest>) -> Result<pb::FileEntry, tonic::Status> {
    let resp = rpc.upload(tokio_stream::iter(msgs)).await?.into_inner();
    Ok(resp.entry.expect("an upload answers with its entry"))
}

/// The reason a refusal carries.
fn reason(s: &tonic::Status) -> &str {
    s.metadata().get("syncstore-reason").and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Downloads `path` naming `have` (whose bytes are `have_data`): the
/// content rebuilt from the runs and new bytes the server sent, whether it
/// sent runs, and how many content bytes came on the wire.
async fn download_against(rpc: &mut Rpc, path: &str, have_data: &[u8]) -> (Vec<u8>, bool, usize) {
    let request = pb::DownloadRequest {
        path: path.into(),
        version: 0,
        have_hash: ContentHash::of(have_data).as_bytes().to_vec(),
    };
    let mut stream = rpc.download(request).await.unwrap().into_inner();
    let (mut runs, mut bytes, mut with_runs) = (Vec::new(), Vec::new(), false);
    while let Some(m) = stream.message().await.unwrap() {
        match m.msg {
            Some(download_response::Msg::Runs(r)) => {
                with_runs = true;
                runs.extend(r.runs.into_iter().map(|r| Run::try_from(r).unwrap()));
            }
            Some(download_response::Msg::Chunk(c)) => bytes.extend_from_slice(&c),
            _ => {}
        }
    }
    let wire = bytes.len();
    if !with_runs {
        return (bytes, false, wire);
    }
    let have_list = list_of(have_data);
    let at = offsets(&have_list);
    let (mut out, mut next) = (Vec::new(), 0usize);
    for run in runs {
        match run {
            Run::Base { first, count } => {
                for i in first as usize..(first + count) as usize {
                    out.extend_from_slice(&have_data[at[i]..at[i] + have_list[i].size as usize]);
                }
            }
            Run::New(c) => {
                let chunk = &bytes[next..next + c.size as usize];
                assert_eq!(ContentHash::of(chunk), c.hash, "a new chunk matches its hash");
                out.extend_from_slice(chunk);
                next += c.size as usize;
            }
        }
    }
    assert_eq!(next, bytes.len(), "every byte sent belongs to a new chunk");
    (out, true, wire)
}

/// Overwrites `len` bytes of `data` at `at` with other bytes.
fn overwritten(data: &[u8], at: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    out[at..at + len].copy_from_slice(&random_bytes(len, seed));
    out
}

/// Bytes of the new chunks of `runs`.
fn new_bytes(runs: &[Run]) -> u64 {
    runs.iter().map(|r| if let Run::New(c) = r { u64::from(c.size) } else { 0 }).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_sent_as_runs_commits_and_comes_back_as_runs() {
    let server = Served::start(|_| {}).await;
    let mut rpc = server.rpc();
    let old = random_bytes(8 * MIB, 1);
    let v1 = upload(&mut rpc, "disk.img", &old, 0).await.unwrap().version;
    let received = server.metric("content_received_bytes_total").await;
    assert_eq!(received, old.len() as u64, "a plain upload's bytes all come on the wire");

    let new = overwritten(&old, 4 * MIB + 12_345, 100_000, 2);
    let (old_list, new_list) = (list_of(&old), list_of(&new));
    let runs = chunks::diff(&old_list, &new_list);
    let base = (&ContentHash::of(&old), &old_list[..]);
    let entry = send(&mut rpc, runs_upload("disk.img", &new, v1, base, &runs, |_| {})).await.unwrap();
    assert_eq!(entry.hash, ContentHash::of(&new).as_bytes().to_vec());
    let sent = server.metric("content_received_bytes_total").await - received;
    assert_eq!(sent, new_bytes(&runs), "only the new chunks' bytes came");
    assert!(sent < 600_000, "{sent} bytes on the wire for a 100 kB edit of 8 MiB");
    assert_eq!(server.metric("base_reused_bytes_total").await, new.len() as u64 - sent);
    assert_eq!(download(&mut rpc, "disk.img").await.unwrap(), new, "it reads back byte for byte");

    // A client holding the previous version gets runs against it.
    let before = server.metric("content_sent_bytes_total").await;
    let (back, with_runs, wire) = download_against(&mut rpc, "disk.img", &old).await;
    assert!(with_runs, "the download came as runs");
    assert!(back == new, "the runs rebuild the new content");
    assert!(wire < 600_000, "{wire} content bytes on the wire");
    assert_eq!(server.metric("content_sent_bytes_total").await - before, wire as u64);
    // Content the namespace refers to, which the file never replaced: runs
    // against its chunk list.
    let sibling = overwritten(&old, 6 * MIB, 50_000, 3);
    upload(&mut rpc, "sibling.img", &sibling, 0).await.unwrap();
    let (back, with_runs, wire) = download_against(&mut rpc, "disk.img", &sibling).await;
    assert!(with_runs && back == new, "runs against a sibling rebuild the new content");
    assert!(wire < 1_200_000, "{wire} content bytes on the wire");
    // Content the namespace does not refer to gets the plain content.
    let (plain, with_runs, _) = download_against(&mut rpc, "disk.img", b"something else").await;
    assert!(!with_runs && plain == new);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chunk_that_does_not_match_its_hash_leaves_nothing() {
    let server = Served::start(|_| {}).await;
    let mut rpc = server.rpc();
    let old = random_bytes(4 * MIB, 3);
    let v1 = upload(&mut rpc, "f", &old, 0).await.unwrap().version;
    let stored = stored_content_of(&server.url, &Security::none()).await;

    let new = overwritten(&old, 2 * MIB, 300_000, 4);
    let old_list = list_of(&old);
    let runs = chunks::diff(&old_list, &list_of(&new));
    let base = (&ContentHash::of(&old), &old_list[..]);
    // The last new chunk is wrong: the server has written the new chunks
    // before it by the time it finds out.
    let mut left = runs.iter().filter(|r| matches!(r, Run::New(_))).count();
    assert!(left >= 3, "{runs:?}");
    let flip_last = |chunk: &mut Vec<u8>| {
        left -= 1;
        if left == 0 {
            chunk[7] ^= 1;
        }
    };
    let refused = send(&mut rpc, runs_upload("f", &new, v1, base, &runs, flip_last)).await.unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::InvalidArgument, "content-mismatch"),
        "{refused:?}"
    );
    let stat = rpc.stat(pb::StatRequest { path: "f".into() }).await.unwrap().into_inner();
    assert_eq!(stat.entry.unwrap().version, v1, "nothing was committed");
    assert!(server.metric("chunks_stored_total").await > old_list.len() as u64, "new chunks were written");
    let now = stored_content_of(&server.url, &Security::none()).await;
    assert_eq!(now, stored, "the refused upload's chunks are gone by the time it hears why");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_server_cannot_use_are_refused() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = Served::start(|c| c.tokens = Some(path)).await;
    let mut alice = rpc_with(&server.url, &token(&tokens.alice));
    let mut bob = rpc_with(&server.url, &token(&tokens.bob));
    let data = random_bytes(3 * MIB, 5);
    let list = list_of(&data);
    let hash = ContentHash::of(&data);
    upload(&mut alice, "a", &data, 0).await.unwrap();
    let new = overwritten(&data, MIB, 1000, 6);
    let runs = chunks::diff(&list, &list_of(&new));
    let unknown_base = |s: tonic::Status| {
        assert_eq!((s.code(), reason(&s)), (Code::FailedPrecondition, "unknown-base"), "{s:?}");
    };

    // Another namespace's content, made-up content, content stored whole.
    unknown_base(send(&mut bob, runs_upload("b", &new, 0, (&hash, &list), &runs, |_| {})).await.unwrap_err());
    let made_up = ContentHash::of(b"made up");
    unknown_base(
        send(&mut alice, runs_upload("b", &new, 0, (&made_up, &list), &runs, |_| {})).await.unwrap_err(),
    );
    let small = b"small and whole";
    upload(&mut alice, "small", small, 0).await.unwrap();
    let whole = (&ContentHash::of(small), &list[..]);
    unknown_base(send(&mut alice, runs_upload("b", &new, 0, whole, &runs, |_| {})).await.unwrap_err());

    let invalid = |s: tonic::Status| {
        assert_eq!((s.code(), reason(&s)), (Code::InvalidArgument, "invalid-argument"), "{s:?}");
    };
    // A base run out of range.
    let past = [Run::Base { first: list.len() as u32 - 1, count: 2 }];
    let header = runs_upload("b", &new, 0, (&hash, &list), &runs, |_| {}).remove(0);
    invalid(send(&mut alice, vec![header, runs_message(&past), upload_end()]).await.unwrap_err());
    // Runs without a base, and plain bytes where runs are due.
    let mut no_base = runs_upload("b", &new, 0, (&hash, &list), &runs, |_| {});
    if let Some(upload_request::Msg::Header(h)) = &mut no_base[0].msg {
        h.base_hash.clear();
    }
    invalid(send(&mut alice, no_base).await.unwrap_err());
    let bytes_first = vec![
        runs_upload("b", &new, 0, (&hash, &list), &runs, |_| {}).remove(0),
        chunk_message(&new[..1000]),
        upload_end(),
    ];
    invalid(send(&mut alice, bytes_first).await.unwrap_err());
    // Too many runs in one message.
    let many = vec![Run::Base { first: 0, count: 1 }; chunks::MAX_RUNS_PER_MESSAGE + 1];
    let too_many = vec![
        runs_upload("b", &new, 0, (&hash, &list), &runs, |_| {}).remove(0),
        runs_message(&many),
        upload_end(),
    ];
    invalid(send(&mut alice, too_many).await.unwrap_err());
    assert!(alice.stat(pb::StatRequest { path: "b".into() }).await.is_err(), "nothing was committed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_chunks_are_stored_once() {
    let server = Served::start(|_| {}).await;
    let mut rpc = server.rpc();
    // Ten copies of one file under different names: stored once.
    let file = random_bytes(20 * MIB, 7);
    for i in 0..10 {
        upload(&mut rpc, &format!("copy{i}"), &file, 0).await.unwrap();
    }
    let (_, bytes) = stored_content_of(&server.url, &Security::none()).await;
    assert!(bytes <= 20 * MIB as u64 + 4096, "ten copies of 20 MiB take {bytes} bytes");
    assert!(server.metric("chunks_deduplicated_total").await >= 9 * list_of(&file).len() as u64);

    // A 1 MiB overwrite in the middle of a 64 MiB file, sent whole: the
    // server stores only the chunks it changed, and the old version's own
    // chunks stay with its history.
    let big = random_bytes(64 * MIB, 8);
    let v1 = upload(&mut rpc, "big", &big, 0).await.unwrap().version;
    let (_, before) = stored_content_of(&server.url, &Security::none()).await;
    let edited = overwritten(&big, 32 * MIB + 12_345, MIB, 9);
    upload(&mut rpc, "big", &edited, v1).await.unwrap();
    let (old_list, new_list) = (list_of(&big), list_of(&edited));
    let replaced: Vec<&ChunkRef> = old_list.iter().filter(|c| !new_list.contains(c)).collect();
    assert!(!replaced.is_empty());
    for c in &replaced {
        assert!(blob_path(&server.data_dir(), &c.hash).exists(), "the old version's own chunks are kept");
    }
    let (_, after) = stored_content_of(&server.url, &Security::none()).await;
    let added: u64 = new_list.iter().filter(|c| !old_list.contains(c)).map(|c| u64::from(c.size)).sum();
    assert!(added <= 1_363_149, "the edit stored {added} bytes of new chunks (at most 1.3 MiB)");
    assert!(after <= before + added, "stored bytes grew from {before} to {after}");
    assert_eq!(download(&mut rpc, "big").await.unwrap(), edited);
    server.stop().await;
}
