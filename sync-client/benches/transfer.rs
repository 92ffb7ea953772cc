//! The client's hashing and chunk pipeline: `local::hash_file` (how a
//! changed file is hashed before it is planned) and `transfer::upload` (read
//! in 1 MiB chunks, hashed again while streamed, received, verified, fsynced
//! and committed by a server in this process, over loopback).
//!
//! `cargo bench -p sync-client --bench transfer`

use std::{fs, time::Duration};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sync_client::{
    GrpcRemote,
    fsmeta::{Kind, Meta},
    fsroot::Root,
    local,
    plan::Local,
    transfer::{self, UploadBase},
};
use syncstore::RelPath;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("64MiB", 64 << 20)];

/// Incompressible, deterministic content (xorshift).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn meta(root: &Root, path: &RelPath) -> Meta {
    match root.stat(path).expect("stat") {
        Kind::File(m) => m,
        other => panic!("{path} is not a file: {other:?}"),
    }
}

fn hash_file(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = Root::open(dir.path()).expect("root");
    let mut group = c.benchmark_group("hash_file");
    for (name, size) in SIZES {
        fs::write(dir.path().join(name), content(size, size as u64)).expect("write");
        let m = meta(&root, &RelPath::new(name).expect("path"));
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| local::hash_file(root.top(), name, m).expect("hash").expect("unchanged"))
        });
    }
    group.finish();
}

fn upload(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let server_dir = tempfile::tempdir().expect("temp dir");
    let root = tempfile::tempdir().expect("temp dir");
    let shutdown = CancellationToken::new();
    let url = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let config = sync_server::Config::new(server_dir.path());
        let stop = shutdown.clone();
        tokio::spawn(async move { sync_server::run(config, listener, stop).await.expect("server") });
        url
    });
    // The client's channel is built on this runtime.
    let _runtime = rt.enter();
    let remote = GrpcRemote::new(&[url], "bench".to_owned(), &Default::default()).expect("remote");
    let folder = Root::open(root.path()).expect("root");

    let mut group = c.benchmark_group("upload");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    for (name, size) in SIZES {
        let path = RelPath::new(format!("{name}.bin")).expect("path");
        fs::write(path.to_local(root.path()), content(size, size as u64 + 1)).expect("write");
        let m = meta(&folder, &path);
        let hash = local::hash_file(folder.top(), path.file_name(), m).expect("hash").expect("unchanged");
        let expected = Local {
            hash,
            size: m.size,
            mtime_ns: m.mtime_ns,
            executable: m.executable,
            symlink: false,
            folder: false,
            stamp: m.stamp,
        };
        // Every upload is a new version of the same path (same content:
        // the server still receives, verifies and fsyncs all of it).
        let mut version = 0;
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let base =
                    UploadBase { version, lock_token: 0, reuse: false, chunks: None, moved_from: None };
                let up =
                    rt.block_on(transfer::upload(&remote, &folder, &path, expected, base)).expect("upload");
                assert!(up.sent);
                version = up.entry.version;
            })
        });
    }
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, hash_file, upload);
criterion_main!(benches);
