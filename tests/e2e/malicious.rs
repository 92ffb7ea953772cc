//! A malicious server: a fake `FileSync` that lists, streams and serves
//! paths meant to escape the synced folder (`..`, absolute, NUL, a path
//! through a link planted in the folder) and downloads that break the
//! limits (a chunk over the limit, more data than declared). A real client
//! must refuse each of them, say so in its log, write nothing outside its
//! folder, and still sync the good entries of the same listing and stream.
//! A second test sends a large file's new version as runs against the
//! client's copy that lie (a new chunk whose bytes are not its hash, runs
//! that do not add up to the size): the client keeps its file as it was
//! and leaves no temp file.

use std::{collections::BTreeMap, path::Path, pin::Pin};

use syncstore::{
    ContentHash,
    chunks::{self, Run},
    limits::MAX_CHUNK,
    pb::{
        self, change_event, download_response,
        file_sync_server::{FileSync, FileSyncServer},
    },
};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::harness::{Captured, eventually};

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One file the fake server offers: its entry, and the chunks its
/// download sends (which need not match the entry).
#[derive(Clone)]
struct Offer {
    entry: pb::FileEntry,
    chunks: Vec<Vec<u8>>,
    /// What its download sends after the entry when the client names
    /// content it has (`have_hash`), if anything.
    runs: Vec<pb::DownloadResponse>,
}

/// An entry declaring `content`, whose download sends `chunks`.
fn offer(path: &str, version: u64, content: &[u8], chunks: Vec<Vec<u8>>) -> Offer {
    let entry = pb::FileEntry {
        path: path.to_owned(),
        version,
        size: content.len() as u64,
        hash: ContentHash::of(content).as_bytes().to_vec(),
        mtime_ns: 1_700_000_000_000_000_000,
        client_id: "evil".into(),
        ..Default::default()
    };
    Offer { entry, chunks, runs: Vec::new() }
}

/// A well-behaved entry: its download sends exactly its content.
fn honest(path: &str, version: u64, content: &[u8]) -> Offer {
    offer(path, version, content, vec![content.to_vec()])
}

struct EvilServer {
    /// What `List` sends, in order.
    listed: Vec<Offer>,
    /// What `Subscribe` sends (then the stream stays open).
    events: Vec<Offer>,
}

impl EvilServer {
    /// The offer of `path` at `version`, or its latest with `None`.
    fn find(&self, path: &str, version: Option<u64>) -> Option<&Offer> {
        self.listed
            .iter()
            .chain(&self.events)
            .filter(|o| o.entry.path == path && version.is_none_or(|v| o.entry.version == v))
            .max_by_key(|o| o.entry.version)
    }
}

#[tonic::async_trait]
impl FileSync for EvilServer {
    type DownloadStream = ServerStream<pb::DownloadResponse>;
    type ListStream = ServerStream<pb::ListResponse>;
    type SubscribeStream = ServerStream<pb::SubscribeResponse>;
    type ListLocksStream = ServerStream<pb::ListLocksResponse>;

    async fn server_info(
        &self,
        _: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        Ok(Response::new(pb::ServerInfoResponse {
            history_id: "evil-history".into(),
            head_seq: 10,
            oldest_seq: 1,
            role: "primary".into(),
            server_version: "0".into(),
            ..Default::default()
        }))
    }

    async fn list(&self, _: Request<pb::ListRequest>) -> Result<Response<Self::ListStream>, Status> {
        let head = pb::ListResponse { entry: None, head_seq: 10, ..Default::default() };
        let entries: Vec<_> = std::iter::once(head)
            .chain(self.listed.iter().map(|o| pb::ListResponse {
                entry: Some(o.entry.clone()),
                head_seq: 10,
                ..Default::default()
            }))
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(entries))))
    }

    async fn stat(&self, req: Request<pb::StatRequest>) -> Result<Response<pb::StatResponse>, Status> {
        match self.find(&req.get_ref().path, None) {
            Some(o) => Ok(Response::new(pb::StatResponse { entry: Some(o.entry.clone()) })),
            None => Err(Status::not_found("no such file")),
        }
    }

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let req = req.get_ref();
        let version = (req.version != 0).then_some(req.version);
        let o = self.find(&req.path, version).ok_or_else(|| Status::not_found("no such file"))?;
        let first = pb::DownloadResponse { msg: Some(download_response::Msg::Entry(o.entry.clone())) };
        if !req.have_hash.is_empty() && !o.runs.is_empty() {
            let all: Vec<_> = std::iter::once(first).chain(o.runs.iter().cloned()).map(Ok).collect();
            return Ok(Response::new(Box::pin(tokio_stream::iter(all))));
        }
        let chunks = o
            .chunks
            .iter()
            .map(|c| pb::DownloadResponse { msg: Some(download_response::Msg::Chunk(c.clone())) });
        let all: Vec<_> = std::iter::once(first).chain(chunks).map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(all))))
    }

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let events: Vec<_> = self
            .events
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Ok(pb::SubscribeResponse {
                    event: Some(pb::ChangeEvent {
                        seq: 11 + i as u64,
                        kind: change_event::Kind::Put as i32,
                        entry: Some(o.entry.clone()),
                        client_id: "evil".into(),
                        lock: None,
                    }),
                })
            })
            .collect();
        // Then nothing more, with the stream left open.
        Ok(Response::new(Box::pin(tokio_stream::iter(events).chain(tokio_stream::pending()))))
    }

    async fn list_locks(
        &self,
        _: Request<pb::ListLocksRequest>,
    ) -> Result<Response<Self::ListLocksStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::iter(Vec::new()))))
    }

    async fn upload(
        &self,
        _: Request<tonic::Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::UploadResponse>, Status> {
        Err(Status::unimplemented("this server takes nothing"))
    }

    async fn delete(&self, _: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        Err(Status::unimplemented("this server takes nothing"))
    }

    async fn lock(&self, _: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        Err(Status::unimplemented("no locks here"))
    }

    async fn refresh_lock(
        &self,
        _: Request<pb::RefreshLockRequest>,
    ) -> Result<Response<pb::RefreshLockResponse>, Status> {
        Err(Status::unimplemented("no locks here"))
    }

    async fn unlock(&self, _: Request<pb::UnlockRequest>) -> Result<Response<pb::UnlockResponse>, Status> {
        Err(Status::unimplemented("no locks here"))
    }
}

/// Serves `evil` on a loopback port until the token is cancelled.
async fn serve(
    evil: EvilServer,
) -> (std::net::SocketAddr, CancellationToken, tokio::task::JoinHandle<Result<(), tonic::transport::Error>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(FileSyncServer::new(evil))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.clone().cancelled_owned()),
    );
    (addr, stop, server)
}

/// Every file and folder below `dir` (links listed, not followed).
fn listing(dir: &Path) -> BTreeMap<String, String> {
    crate::harness::tree(dir)
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

// One thread: the client's tasks log through this test's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_malicious_server_cannot_make_the_client_write_outside_its_folder() {
    let (logs, _log) = Captured::this_thread(tracing::Level::WARN);

    // base/dir is synced; base/outside must stay empty, and so must
    // base/target, which a link planted in the folder points at.
    let base = tempfile::tempdir().unwrap();
    let base_path = std::fs::canonicalize(base.path()).unwrap();
    let dir = base_path.join("dir");
    let outside = base_path.join("outside");
    let target = base_path.join("target");
    for d in [&dir, &outside, &target] {
        std::fs::create_dir(d).unwrap();
    }
    std::os::unix::fs::symlink(&target, dir.join("link")).unwrap();
    let absolute = format!("{}/abs.txt", outside.display());

    let big = vec![b'x'; MAX_CHUNK + 100];
    let listed = vec![
        honest("good/listed.txt", 1, b"listed"),
        honest("../escape-list.txt", 2, b"escape"),
        honest(&absolute, 3, b"absolute"),
        honest("a/../../escape-dots.txt", 4, b"dots"),
        honest("nul\0name.txt", 5, b"nul"),
        honest(".syncstore/state.db", 6, b"state"),
        honest("link/through-link.txt", 7, b"through a link"),
        // Declares 5 bytes, sends more.
        offer("bad/too-long.txt", 8, b"hello", vec![b"hello".to_vec(), b" and more".to_vec()]),
        // A chunk over the limit (within the gRPC message limit).
        offer("bad/big-chunk.bin", 9, &big, vec![big.clone()]),
        honest("good/after.txt", 10, b"after the bad ones"),
    ];
    let events = vec![
        honest("../escape-event.txt", 11, b"escape"),
        honest(&format!("{}/abs-event.txt", outside.display()), 12, b"absolute"),
        honest("ev\0nul.txt", 13, b"nul"),
        honest("link/event-through-link.txt", 14, b"through a link"),
        honest("good/event.txt", 15, b"from an event"),
    ];
    let bad_paths: Vec<String> = listed
        .iter()
        .chain(&events)
        .map(|o| o.entry.path.clone())
        .filter(|p| !p.starts_with("good/") && !p.starts_with("bad/") && !p.starts_with("link/"))
        .collect();

    let (addr, stop_server, server) = serve(EvilServer { listed, events }).await;

    let mut config = sync_client::Config::new(format!("http://{addr}"), &dir);
    config.rescan_interval = std::time::Duration::from_secs(3600);
    let metrics = config.metrics.clone();
    let stop_client = CancellationToken::new();
    let client = tokio::spawn(sync_client::watch(config, stop_client.clone()));

    // The good entries, listed before and after the bad ones and streamed
    // after them, arrive.
    let read = |rel: &str| std::fs::read(dir.join(rel)).ok();
    eventually("the good entries are synced", || {
        read("good/listed.txt").as_deref() == Some(b"listed".as_slice())
            && read("good/after.txt").as_deref() == Some(b"after the bad ones".as_slice())
            && read("good/event.txt").as_deref() == Some(b"from an event".as_slice())
    })
    .await;

    // Each bad entry was refused, and said so (its path escaped).
    eventually("every bad entry is refused in the log", || {
        let text = logs.text();
        let refused = |p: &str| {
            text.lines().any(|l| {
                l.contains("refused an entry from the server") && l.contains(&*p.escape_debug().to_string())
            })
        };
        bad_paths.iter().all(|p| refused(p))
            && text.contains("more than the 5 bytes its entry declares")
            && text.contains(&format!("a chunk of {} bytes", MAX_CHUNK + 100))
            && text.lines().any(|l| l.contains("link/through-link.txt") && l.contains("symbolic link"))
            && text.lines().any(|l| l.contains("link/event-through-link.txt") && l.contains("symbolic link"))
    })
    .await;
    assert!(metrics.errors.get() > 0, "the refused downloads count as failures");

    // Nothing outside the folder, nothing through the link, nothing of the
    // refused downloads in place, no temp file left behind.
    eventually("no temp file is left", || listing(&dir.join(".syncstore/tmp")).is_empty()).await;
    stop_client.cancel();
    client.await.unwrap().unwrap();
    stop_server.cancel();
    server.await.unwrap().unwrap();

    let top: Vec<String> = std::fs::read_dir(&base_path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut top = top;
    top.sort();
    assert_eq!(top, ["dir", "outside", "target"], "nothing was created beside the folder");
    assert!(listing(&outside).is_empty(), "nothing was written outside: {:?}", listing(&outside));
    assert!(listing(&target).is_empty(), "nothing was written through the link: {:?}", listing(&target));
    assert_eq!(std::fs::read_link(dir.join("link")).unwrap(), target, "the planted link is untouched");
    let mut synced: Vec<String> =
        listing(&dir).into_keys().filter(|p| !p.starts_with(".syncstore/")).collect();
    synced.sort();
    assert_eq!(synced, ["good/after.txt", "good/event.txt", "good/listed.txt", "link"]);
}

/// A large file's new version, `new`, offered with runs against `old` (the
/// version the client holds) that `spoil` alters: the runs' messages, the
/// runs first, then the new chunks' bytes.
fn offer_runs(
    path: &str,
    version: u64,
    old: &[u8],
    new: &[u8],
    spoil: impl FnOnce(&mut Vec<Run>, &mut Vec<u8>),
) -> Offer {
    let list = |d: &[u8]| chunks::chunk_list(d, d.len() as u64).unwrap().2;
    let (old_list, new_list) = (list(old), list(new));
    let mut runs = chunks::diff(&old_list, &new_list);
    let mut offset = 0usize;
    let mut bytes = Vec::new();
    for (run, c) in runs.iter().zip(runs_sizes(&old_list, &runs)) {
        if matches!(run, Run::New(_)) {
            bytes.extend_from_slice(&new[offset..offset + c]);
        }
        offset += c;
    }
    spoil(&mut runs, &mut bytes);
    let mut o = whole(path, version, new);
    let runs_msg = pb::ChunkRuns { runs: runs.into_iter().map(Into::into).collect() };
    o.runs = vec![pb::DownloadResponse { msg: Some(download_response::Msg::Runs(runs_msg)) }];
    o.runs.extend(
        bytes
            .chunks(MAX_CHUNK)
            .map(|c| pb::DownloadResponse { msg: Some(download_response::Msg::Chunk(c.to_vec())) }),
    );
    o
}

/// A well-behaved entry of content larger than a message: its download
/// sends it in chunks of the largest size.
fn whole(path: &str, version: u64, content: &[u8]) -> Offer {
    offer(path, version, content, content.chunks(MAX_CHUNK).map(<[u8]>::to_vec).collect())
}

/// How many content bytes each run stands for.
fn runs_sizes(base: &[chunks::ChunkRef], runs: &[Run]) -> Vec<usize> {
    runs.iter()
        .map(|r| match *r {
            Run::Base { first, count } => {
                chunks::base_slice(base, first, count).unwrap().iter().map(|c| c.size as usize).sum()
            }
            Run::New(c) => c.size as usize,
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn runs_that_lie_leave_the_clients_file_as_it_was() {
    let (logs, _log) = Captured::this_thread(tracing::Level::WARN);

    // Two large files the client gets whole first, then new versions of as
    // runs against them.
    let old = crate::harness::random_bytes(3 << 20, 40);
    let mut new = old.clone();
    new[1_500_000..1_504_096].copy_from_slice(&crate::harness::random_bytes(4096, 41));
    let listed = vec![whole("wrong.bin", 1, &old), whole("short.bin", 2, &old)];
    let events = vec![
        // A new chunk's bytes are not its hash.
        offer_runs("wrong.bin", 11, &old, &new, |_, bytes| bytes[100] ^= 1),
        // The runs stop before the end of the content.
        offer_runs("short.bin", 12, &old, &new, |runs, _| {
            assert!(
                matches!(runs.pop(), Some(Run::Base { .. })),
                "an edit in the middle ends with base chunks"
            );
        }),
    ];

    let dir = tempfile::tempdir().unwrap();
    let (addr, stop_server, server) = serve(EvilServer { listed, events }).await;
    let mut config = sync_client::Config::new(format!("http://{addr}"), dir.path());
    config.rescan_interval = std::time::Duration::from_secs(3600);
    // Every transfer in the loop: the files are local before the
    // subscription (and its events) starts.
    config.large_transfer = u64::MAX;
    let metrics = config.metrics.clone();
    let stop_client = CancellationToken::new();
    let client = tokio::spawn(sync_client::watch(config, stop_client.clone()));

    eventually("the client has both files", || {
        ["wrong.bin", "short.bin"].iter().all(|p| std::fs::read(dir.path().join(p)).is_ok_and(|d| d == old))
    })
    .await;
    eventually("both new versions were refused for what they are", || {
        let text = logs.text();
        let refused = |path: &str, why: &str| text.lines().any(|l| l.contains(path) && l.contains(why));
        refused("wrong.bin", "a new chunk did not match its hash")
            && refused("short.bin", "the content of short.bin did not match its hash")
    })
    .await;
    assert!(metrics.errors.get() >= 2, "the refused downloads count as failures");
    eventually("no temp file is left", || listing(&dir.path().join(".syncstore/tmp")).is_empty()).await;
    stop_client.cancel();
    client.await.unwrap().unwrap();
    stop_server.cancel();
    server.await.unwrap().unwrap();
    for path in ["wrong.bin", "short.bin"] {
        assert!(std::fs::read(dir.path().join(path)).unwrap() == old, "{path} is as it was");
    }
}
