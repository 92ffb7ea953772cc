//! The metadata commit: puts whose content the server already holds
//! (header-only uploads, as for a moved or copied file) go through the
//! version and lock checks and one SQLite transaction (`synchronous=FULL`)
//! each, or one per group when they arrive together (group commit). N
//! uploads of new paths are sent at once to a server in this process, over
//! loopback, so the figure per put includes a gRPC call on the loopback.
//!
//! `cargo bench -p sync-server --bench commit`

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use syncstore::{
    ContentHash,
    pb::{self, file_sync_client::FileSyncClient, upload_request},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const CONTENT: &[u8] = &[7; 1024];

fn header(path: String) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            path,
            size: CONTENT.len() as u64,
            hash: ContentHash::of(CONTENT).as_bytes().to_vec(),
            mtime_ns: 1,
            executable: false,
            symlink: false,
            folder: false,
            base_version: 0,
            client_id: "bench".into(),
            lock_token: 0,
            base_hash: Vec::new(),
            moved_from: String::new(),
        })),
    }
}

async fn put(client: &FileSyncClient<Channel>, path: String, content: bool) {
    let mut msgs = vec![header(path)];
    if content {
        msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(CONTENT.to_vec())) });
    }
    msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) });
    client.clone().upload(tokio_stream::iter(msgs)).await.expect("upload");
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let client = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = sync_server::Config::new(dir.path());
        let stop = shutdown.clone();
        tokio::spawn(async move { sync_server::run(config, listener, stop).await.expect("server") });
        let channel = Channel::from_shared(url).expect("url").connect_lazy();
        let client = FileSyncClient::new(channel);
        // The content, once; every later put only names it.
        let mut tries = 0;
        while client.clone().server_info(pb::ServerInfoRequest::default()).await.is_err() {
            tries += 1;
            assert!(tries < 200, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        put(&client, "first".into(), true).await;
        client
    });

    let mut group = c.benchmark_group("commit_puts");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut next = 0u64;
    for n in [1usize, 8, 32] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("concurrent", n), |b| {
            b.iter(|| {
                let first = next;
                next += n as u64;
                rt.block_on(futures::future::join_all(
                    (first..first + n as u64).map(|i| put(&client, format!("d{}/f{i}", i % 100), false)),
                ))
            })
        });
    }
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, commit);
criterion_main!(benches);
