//! Helpers for tests that run the `sync-server` binary.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use syncstore::{
    ContentHash,
    pb::{self, file_sync_client::FileSyncClient, upload_request},
};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running server binary and its address (`host:port`).
pub struct Proc {
    pub child: Child,
    pub addr: String,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server binary on `data` with `extra` flags, listening on
/// `listen` (`127.0.0.1:0` for an ephemeral port), and waits for its
/// `listening on` line.
pub fn start_with(data: &Path, listen: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", listen, "--data", data.to_str().unwrap()];
    args.extend(extra);
    start_cmd(&args, &[])
}

/// Starts the server binary with exactly `args` and `env` added to the
/// environment, and waits for its `listening on` line.
pub fn start_cmd(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let line = rx.recv_timeout(DEADLINE).expect("the server prints its address");
    let addr = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected line {line:?}"));
    Proc { child, addr: addr.to_owned() }
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// Waits for the process to exit, failing after the deadline. (Async, so
/// that this test's own gRPC connections keep being served meanwhile.)
pub async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `check` holds, failing after the deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn header(path: &str, data: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            path: path.into(),
            size: data.len() as u64,
            hash: ContentHash::of(data).as_bytes().to_vec(),
            base_version: 0,
            client_id: "test".into(),
            ..Default::default()
        })),
    }
}

pub fn chunks(data: &[u8]) -> Vec<pb::UploadRequest> {
    data.chunks(1 << 20)
        .map(|c| pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(c.to_vec())) })
        .collect()
}

pub async fn upload(rpc: &mut FileSyncClient<tonic::transport::Channel>, path: &str, data: &[u8]) -> u64 {
    let mut msgs = vec![header(path, data)];
    msgs.extend(chunks(data));
    msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) });
    rpc.upload(tokio_stream::iter(msgs)).await.unwrap().into_inner().entry.unwrap().version
}
