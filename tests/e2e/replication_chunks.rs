//! Replication by chunks: an edit to a large file reaches the replica as
//! runs against the replica's copy of the previous version (only the new
//! chunks' bytes cross the link), also after the replica was away, and a
//! replica that cannot rebuild it gets the content plain.

use std::{net::SocketAddr, time::Duration};

use sync_server::{Config, Mode, OnTimeout, ReplicaConfig, Role};
use syncstore::{chunks, connect::Security, pb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// Size of the large files: many chunks (64 KiB on average).
const SIZE: usize = 8 << 20;
/// The most content bytes an edit of a few KiB may cost on the link: a few
/// chunks around it, far below [`SIZE`].
const DELTA_MAX: u64 = (SIZE / 8) as u64;
/// The primary's metric of content bytes sent on the link.
const SENT: &str = "syncstore_replication_content_sent_bytes_total";
/// The replica's metric of bytes rebuilt from its base's chunks.
const REUSED: &str = "syncstore_base_reused_bytes_total";
/// The replica's metric of content bytes received.
const RECEIVED: &str = "syncstore_content_received_bytes_total";

/// A server with its Prometheus endpoint, restartable on its data folder
/// and address.
struct Metered {
    addr: SocketAddr,
    metrics: SocketAddr,
    config: Config,
    shutdown: CancellationToken,
    serving: JoinHandle<sync_server::Result<()>>,
    exporting: JoinHandle<std::io::Result<()>>,
}

impl Metered {
    /// Serves `config` on `listener`.
    async fn start(config: Config, listener: TcpListener) -> Self {
        init_test_log();
        let server = sync_server::Server::open(config.clone()).await.unwrap();
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics) = (listener.local_addr().unwrap(), metrics_listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let exporting = tokio::spawn(server.metrics_server().serve(metrics_listener, shutdown.clone()));
        let serving = tokio::spawn(server.serve(listener, shutdown.clone()));
        Self { addr, metrics, config, shutdown, serving, exporting }
    }

    /// A replica with a fresh data folder in `dir`.
    async fn replica(dir: &tempfile::TempDir) -> Self {
        let mut config = Config::new(dir.path().join("replica"));
        config.role = Role::Replica;
        Self::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    /// An async-mode primary of `replica` with a fresh data folder in `dir`.
    async fn primary_of(replica: &Metered, dir: &tempfile::TempDir) -> Self {
        let mut config = Config::new(dir.path().join("primary"));
        config.replica = Some(ReplicaConfig {
            url: replica.url(),
            mode: Mode::Async,
            timeout: Duration::from_secs(5),
            on_timeout: OnTimeout::Fail,
            security: Security::none(),
        });
        Self::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully; what it needs to start again.
    async fn stop(mut self) -> (Config, SocketAddr) {
        self.shutdown.cancel();
        (&mut self.serving).await.unwrap().unwrap();
        (&mut self.exporting).await.unwrap().unwrap();
        let lock = self.config.data_dir.join("lock");
        eventually("the stopped server's data folder is released", || {
            std::fs::File::open(&lock).map_or(true, |f| f.try_lock().is_ok())
        })
        .await;
        (self.config.clone(), self.addr)
    }

    /// Starts again on the same data folder and address.
    async fn start_again((config, addr): (Config, SocketAddr)) -> Self {
        Self::start(config, TcpListener::bind(addr).await.unwrap()).await
    }

    /// The value of counter `name`; the test fails if it is not exported.
    async fn counter(&self, name: &str) -> u64 {
        let mut conn = TcpStream::connect(self.metrics).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let line = response.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        line.unwrap_or_else(|| panic!("no metric {name} in:\n{response}")).parse().unwrap()
    }

    /// The content of `path` as the server sends it (verified on its way).
    async fn download(&self, path: &str) -> Vec<u8> {
        download(&mut rpc_with(&self.url(), &Security::none()), path).await.unwrap()
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Whether both servers hold the same files, contents and history.
async fn identical(a: &Metered, b: &Metered) -> bool {
    sync_server::compare(&a.url(), &b.url(), &Security::none()).await.is_ok_and(|c| c.identical())
}

/// Uploads `data` to `path` on `server` over `version`; the new version.
async fn put(server: &Metered, path: &str, data: &[u8], version: u64) -> u64 {
    let mut rpc = rpc_with(&server.url(), &Security::none());
    upload(&mut rpc, path, data, version).await.unwrap().version
}

/// `data` with `len` bytes at `at` overwritten by seed `seed`.
fn overwritten(data: &[u8], at: usize, len: usize, seed: u64) -> Vec<u8> {
    let mut out = data.to_vec();
    out[at..at + len].copy_from_slice(&random_bytes(len, seed));
    out
}

/// `data` with `bytes` inserted at `at`.
fn inserted(data: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
    [&data[..at], bytes, &data[at..]].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_the_middle_of_a_large_file_reaches_the_replica_as_its_new_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let v1 = random_bytes(SIZE, 1);
    let version = put(&primary, "vm.img", &v1, 0).await;
    eventually_async("the first version is replicated", || identical(&primary, &replica)).await;
    let first = primary.counter(SENT).await;
    assert!(first >= SIZE as u64, "the first version went whole: {first} bytes");

    let v2 = overwritten(&v1, SIZE / 2 + 12_345, 4096, 2);
    put(&primary, "vm.img", &v2, version).await;
    eventually_async("the edit is replicated", || identical(&primary, &replica)).await;
    assert!(replica.download("vm.img").await == v2, "the replica's copy is byte-identical");
    let delta = primary.counter(SENT).await - first;
    assert!(delta > 0 && delta <= DELTA_MAX, "the edit cost {delta} content bytes on the link");
    let reused = replica.counter(REUSED).await;
    assert!(reused >= SIZE as u64 - DELTA_MAX, "the replica took {reused} bytes from its copy");
    let received = replica.counter(RECEIVED).await;
    assert_eq!(received, first + delta, "the replica counts what the primary sent");
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_down_catches_up_by_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let names = ["a.img", "b.db", "c.mov"];
    let mut files = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let data = random_bytes(SIZE, 10 + i as u64);
        let version = put(&primary, name, &data, 0).await;
        files.push((data, version));
    }
    eventually_async("the first versions are replicated", || identical(&primary, &replica)).await;
    let replica = replica.stop().await;
    let before = primary.counter(SENT).await;

    // While the replica is away: an overwrite, an insert and an append.
    let edited = [
        overwritten(&files[0].0, SIZE / 3, 10_000, 20),
        inserted(&files[1].0, SIZE / 2 + 7, b"one inserted line\n"),
        [&files[2].0[..], &random_bytes(100_003, 22)].concat(),
    ];
    for ((name, (_, version)), data) in names.iter().zip(&files).zip(&edited) {
        put(&primary, name, data, *version).await;
    }
    let replica = Metered::start_again(replica).await;
    eventually_async("the replica catches up", || identical(&primary, &replica)).await;
    for (name, data) in names.iter().zip(&edited) {
        assert!(replica.download(name).await == *data, "{name} is byte-identical on the replica");
    }
    let delta = primary.counter(SENT).await - before;
    assert!(delta > 0 && delta <= 3 * DELTA_MAX, "three edits cost {delta} content bytes on the link");
    let reused = replica.counter(REUSED).await;
    assert!(reused >= 3 * (SIZE as u64 - DELTA_MAX), "the replica took {reused} bytes from its copies");
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_edited_twice_while_the_replica_was_down_arrives_whole() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let v1 = random_bytes(SIZE, 40);
    let mut version = put(&primary, "twice.bin", &v1, 0).await;
    eventually_async("the first version is replicated", || identical(&primary, &replica)).await;
    let replica = replica.stop().await;

    // The middle version's content is gone from the primary (replaced)
    // when the replica comes back: it goes without, and the last version,
    // whose runs are against the middle one, goes by its chunk list, not
    // as runs the replica would refuse: at most whole, once.
    let v2 = overwritten(&v1, SIZE / 2, 4096, 41);
    let v3 = overwritten(&v2, SIZE / 4, 4096, 42);
    for data in [&v2, &v3] {
        version = put(&primary, "twice.bin", data, version).await;
    }
    let before = primary.counter(SENT).await;
    let replica = Metered::start_again(replica).await;
    eventually_async("the replica catches up", || identical(&primary, &replica)).await;
    assert!(replica.download("twice.bin").await == v3, "the replica's copy is byte-identical");
    let delta = primary.counter(SENT).await - before;
    assert!(delta <= SIZE as u64, "the last version went at most whole, once: {delta} bytes");
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_moved_or_copied_costs_the_link_no_content() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let data = random_bytes(SIZE, 60);
    let version = put(&primary, "old/name.iso", &data, 0).await;
    eventually_async("the file is replicated", || identical(&primary, &replica)).await;
    let before = primary.counter(SENT).await;

    // A copy under another name, then the original deleted: a move.
    put(&primary, "new/name.iso", &data, 0).await;
    let mut rpc = rpc_with(&primary.url(), &Security::none());
    let delete = pb::DeleteRequest {
        path: "old/name.iso".into(),
        base_version: version,
        client_id: "test".into(),
        lock_token: 0,
    };
    rpc.delete(delete).await.unwrap();
    eventually_async("the move is replicated", || identical(&primary, &replica)).await;
    assert!(replica.download("new/name.iso").await == data, "the replica's copy is byte-identical");
    let delta = primary.counter(SENT).await - before;
    assert_eq!(delta, 0, "the replica held every chunk already");
    primary.stop().await;
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_missing_or_holding_a_damaged_chunk_of_the_base_gets_the_content_plain() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let v1 = random_bytes(SIZE, 30);
    let mut version = put(&primary, "big.bin", &v1, 0).await;
    eventually_async("the first version is replicated", || identical(&primary, &replica)).await;
    let mut replica = replica.stop().await;

    // First a chunk of the replica's copy goes missing while it is
    // stopped, then one is damaged: each time one that the next edit (in
    // the middle) keeps, the first and then the last.
    let v2 = overwritten(&v1, SIZE / 2, 4096, 31);
    let v3 = overwritten(&v2, SIZE / 2 + 300_000, 4096, 32);
    let (_, _, first) = chunks::chunk_list(&v1[..], v1.len() as u64).unwrap();
    let (_, _, second) = chunks::chunk_list(&v2[..], v2.len() as u64).unwrap();
    let steps = [(&v2, first[0], false), (&v3, *second.last().unwrap(), true)];
    for (data, chunk, damage) in steps {
        let blob = blob_path(&replica.0.data_dir, &chunk.hash);
        match damage {
            false => std::fs::remove_file(&blob).unwrap(),
            true => {
                let mut bytes = std::fs::read(&blob).unwrap();
                bytes[100] ^= 1;
                std::fs::write(&blob, bytes).unwrap();
            }
        }
        let before = primary.counter(SENT).await;
        version = put(&primary, "big.bin", data, version).await;

        let restarted = Metered::start_again(replica).await;
        eventually_async("the replica gets the edit", || identical(&primary, &restarted)).await;
        assert!(restarted.download("big.bin").await == *data, "the replica's copy is byte-identical");
        let delta = primary.counter(SENT).await - before;
        assert!(delta >= SIZE as u64, "refused as runs, the content went whole: {delta} bytes");
        let stored = std::fs::read(&blob).unwrap();
        assert_eq!(syncstore::ContentHash::of(&stored), chunk.hash, "the chunk is stored good again");
        replica = restarted.stop().await;
    }
    primary.stop().await;
}

/// What a hand-made primary sends a replica for change 2: `runs` against
/// `base`, then `bytes`.
struct Forged {
    what: &'static str,
    /// Sent by its chunk list (the runs), not against `base`.
    by_list: bool,
    base: syncstore::ContentHash,
    runs: Vec<chunks::Run>,
    bytes: Vec<u8>,
}

/// Sends `forged` as change 2 of `path` (content `data`) to `replica`,
/// speaking for the primary of history `status`; the status it ends the
/// stream with.
async fn forge(
    replica: &Metered,
    status: &pb::StatusResponse,
    path: &str,
    data: &[u8],
    forged: Forged,
) -> tonic::Status {
    use pb::replicate_request::Msg;
    let hello = pb::ReplicaHello {
        history_id: status.history_id.clone(),
        epoch: status.epoch,
        primary_url: "http://forged.invalid".into(),
        head_seq: 2,
    };
    let entry = pb::FileEntry {
        path: path.into(),
        version: 2,
        size: data.len() as u64,
        hash: syncstore::ContentHash::of(data).as_bytes().to_vec(),
        mtime_ns: 1_700_000_000_000_000_000,
        client_id: "forged".into(),
        ..Default::default()
    };
    let change = pb::ReplicatedChange {
        seq: 2,
        namespace: String::new(),
        entry: Some(entry),
        content_follows: true,
        kind: pb::change_event::Kind::Put.into(),
        runs_base: if forged.by_list { Vec::new() } else { forged.base.as_bytes().to_vec() },
        by_list: forged.by_list,
        ..Default::default()
    };
    let runs = pb::ChunkRuns { runs: forged.runs.into_iter().map(pb::ChunkRun::from).collect() };
    let mut messages = vec![Msg::Hello(hello), Msg::Change(change), Msg::Runs(runs)];
    messages.extend(forged.bytes.chunks(syncstore::limits::MAX_CHUNK).map(|c| Msg::Chunk(c.to_vec())));
    let requests = messages.into_iter().map(|m| pb::ReplicateRequest { msg: Some(m) });
    let mut client =
        pb::replication_client::ReplicationClient::new(Security::none().channel(&replica.url()).unwrap());
    // The stream stays open after the last message, as a primary's does.
    let requests = tokio_stream::StreamExt::chain(tokio_stream::iter(requests), tokio_stream::pending());
    let mut responses = client.replicate(requests).await.unwrap().into_inner();
    let refusal = async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => {} // Ready, heartbeats.
                Ok(None) => panic!("{}: the replica ended the stream without refusing", forged.what),
                Err(status) => return status,
            }
        }
    };
    tokio::time::timeout(DEADLINE, refusal).await.expect("a refusal in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_sent_as_runs_that_do_not_rebuild_it_is_refused_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let replica = Metered::replica(&dir).await;
    let primary = Metered::primary_of(&replica, &dir).await;
    let v1 = random_bytes(SIZE, 50);
    put(&primary, "big.bin", &v1, 0).await;
    eventually_async("the first version is replicated", || identical(&primary, &replica)).await;
    primary.stop().await;
    let status = pb::admin_client::AdminClient::new(Security::none().channel(&replica.url()).unwrap())
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();

    let v2 = overwritten(&v1, SIZE / 2, 4096, 51);
    let (_, _, base) = chunks::chunk_list(&v1[..], v1.len() as u64).unwrap();
    let (_, _, list) = chunks::chunk_list(&v2[..], v2.len() as u64).unwrap();
    let runs = chunks::diff(&base, &list);
    // The new chunks' bytes, in the order of the runs.
    let (mut new, mut at) = (Vec::new(), 0usize);
    for run in &runs {
        match *run {
            chunks::Run::Base { first, count } => {
                let stretch = &base[first as usize..(first + count) as usize];
                at += stretch.iter().map(|c| c.size as usize).sum::<usize>();
            }
            chunks::Run::New(c) => {
                new.extend_from_slice(&v2[at..at + c.size as usize]);
                at += c.size as usize;
            }
        }
    }
    assert!(!new.is_empty() && new.len() < SIZE / 8, "an edit of a few chunks: {} bytes", new.len());
    let v1_hash = syncstore::ContentHash::of(&v1);
    let mut flipped = new.clone();
    flipped[10] ^= 1;
    let cases = [
        Forged {
            what: "a chunk list that adds up to more than the size",
            by_list: true,
            base: v1_hash,
            runs: list.iter().chain(&list[..1]).map(|c| chunks::Run::New(*c)).collect(),
            bytes: Vec::new(),
        },
        Forged {
            what: "a base the replica does not hold",
            by_list: false,
            base: syncstore::ContentHash::of(b"never stored"),
            runs: runs.clone(),
            bytes: new.clone(),
        },
        Forged {
            what: "runs past the end of the base",
            by_list: false,
            base: v1_hash,
            runs: vec![chunks::Run::Base { first: 0, count: base.len() as u32 + 5 }],
            bytes: Vec::new(),
        },
        Forged {
            what: "a new chunk's bytes altered",
            by_list: false,
            base: v1_hash,
            runs: runs.clone(),
            bytes: flipped,
        },
        Forged {
            what: "runs that rebuild other content",
            by_list: false,
            base: v1_hash,
            runs: chunks::diff(&base, &base),
            bytes: Vec::new(),
        },
    ];
    let stored = stored_content_of(&replica.url(), &Security::none()).await;
    for forged in cases {
        let what = forged.what;
        let refusal = forge(&replica, &status, "big.bin", &v2, forged).await;
        assert_eq!(refusal.code(), tonic::Code::FailedPrecondition, "{what}: {refusal:?}");
        assert_eq!(syncstore::Reason::of(&refusal), Some(syncstore::Reason::UnknownBase), "{what}");
        let mut admin = pb::admin_client::AdminClient::new(Security::none().channel(&replica.url()).unwrap());
        let head = admin.status(pb::StatusRequest::default()).await.unwrap().into_inner().head_seq;
        assert_eq!(head, 1, "{what}: nothing of the change is applied");
        assert!(replica.download("big.bin").await == v1, "{what}: the replica's copy is untouched");
        let now = stored_content_of(&replica.url(), &Security::none()).await;
        assert_eq!(now, stored, "{what}: no chunk of it is left behind");
    }
    replica.stop().await;
}

/// A replica of an older release: it announces no `takes_chunks`, keeps
/// the change headers it gets and counts the content bytes, and
/// acknowledges every change at once.
#[derive(Clone, Default)]
struct OlderReplica {
    changes: std::sync::Arc<std::sync::Mutex<Vec<pb::ReplicatedChange>>>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl pb::replication_server::Replication for OlderReplica {
    type ReplicateStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ReplicateResponse, tonic::Status>> + Send>,
    >;

    async fn replicate(
        &self,
        request: tonic::Request<tonic::Streaming<pb::ReplicateRequest>>,
    ) -> Result<tonic::Response<Self::ReplicateStream>, tonic::Status> {
        use pb::{replicate_request::Msg, replicate_response::Msg as Answer};
        let mut incoming = request.into_inner();
        let Some(pb::ReplicateRequest { msg: Some(Msg::Hello(hello)) }) = incoming.message().await? else {
            return Err(tonic::Status::invalid_argument("no hello"));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let ready = pb::ReplicaReady {
            history_id: hello.history_id,
            applied_seq: 0,
            epoch: hello.epoch,
            heartbeat_interval_ms: 0,
            takes_chunks: false,
        };
        tx.send(Ok(pb::ReplicateResponse { msg: Some(Answer::Ready(ready)) })).await.unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            let mut processed = 0;
            while let Ok(Some(message)) = incoming.message().await {
                match message.msg {
                    Some(Msg::Change(c)) => {
                        processed += 1;
                        let ack = pb::ReplicaAck { acked_seq: c.seq, processed };
                        this.changes.lock().unwrap().push(c);
                        let _ = tx.send(Ok(pb::ReplicateResponse { msg: Some(Answer::Ack(ack)) })).await;
                    }
                    Some(Msg::Chunk(c)) => {
                        this.bytes.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_an_older_release_gets_every_content_plain() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let older = OlderReplica::default();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::replication_server::ReplicationServer::new(older.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("primary"));
    config.replica = Some(ReplicaConfig {
        url,
        mode: Mode::Async,
        timeout: Duration::from_secs(5),
        on_timeout: OnTimeout::Fail,
        security: Security::none(),
    });
    let primary = Metered::start(config, TcpListener::bind("127.0.0.1:0").await.unwrap()).await;

    let v1 = random_bytes(SIZE, 70);
    let version = put(&primary, "big.bin", &v1, 0).await;
    put(&primary, "copy.bin", &v1, 0).await;
    put(&primary, "big.bin", &overwritten(&v1, SIZE / 2, 4096, 71), version).await;
    eventually("the three changes reach it", || older.changes.lock().unwrap().len() == 3).await;
    eventually("their content reaches it", || {
        older.bytes.load(std::sync::atomic::Ordering::Relaxed) == 3 * SIZE as u64
    })
    .await;
    for c in older.changes.lock().unwrap().iter() {
        assert!(c.content_follows && c.runs_base.is_empty() && !c.by_list, "sent plain: {c:?}");
    }
    primary.stop().await;
    stop.cancel();
    serving.await.unwrap().unwrap();
}
