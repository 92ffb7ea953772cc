//! The `sync-server` binary as an operator runs it: the `listening on` line,
//! graceful shutdown on SIGINT/SIGTERM, and durability across a SIGKILL.

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

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts the server binary on an ephemeral port; returns it and its address.
fn start(data: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
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
    (child, format!("http://{addr}"))
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig}");
}

/// Waits for the process to exit, failing after the deadline. (Async, so
/// that this test's own gRPC connections keep being served meanwhile.)
async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upload(rpc: &mut FileSyncClient<tonic::transport::Channel>, path: &str, data: &[u8]) -> u64 {
    let msgs = [
        pb::UploadRequest {
            msg: Some(upload_request::Msg::Header(pb::UploadHeader {
                path: path.into(),
                size: data.len() as u64,
                hash: ContentHash::of(data).as_bytes().to_vec(),
                base_version: 0,
                ..Default::default()
            })),
        },
        pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data.to_vec())) },
    ];
    rpc.upload(tokio_stream::iter(msgs)).await.unwrap().into_inner().entry.unwrap().version
}

#[tokio::test]
async fn sigterm_and_sigint_stop_it_cleanly() {
    for sig in ["-TERM", "-INT"] {
        let data = tempfile::tempdir().unwrap();
        let (mut child, url) = start(data.path());
        // It serves: a call succeeds.
        let mut rpc = FileSyncClient::connect(url).await.unwrap();
        rpc.server_info(pb::ServerInfoRequest {}).await.unwrap();
        // An open subscription must not hold the shutdown up.
        let _sub = rpc.subscribe(pb::SubscribeRequest::default()).await.unwrap();
        signal(&child, sig);
        let status = wait_exit(&mut child).await;
        assert!(status.success(), "{sig}: {status:?}");
    }
}

#[tokio::test]
async fn acknowledged_uploads_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let (mut child, url) = start(data.path());
    let mut rpc = FileSyncClient::connect(url).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let content = format!("content {i}").repeat(1000);
        let version = upload(&mut rpc, &format!("f{i}.txt"), content.as_bytes()).await;
        acked.push((format!("f{i}.txt"), content, version));
    }
    child.kill().unwrap(); // SIGKILL: no chance to flush anything.
    wait_exit(&mut child).await;
    // Debris of an upload a crash interrupted.
    std::fs::write(data.path().join("tmp/.tmp-interrupted"), b"half").unwrap();

    let (mut child, url) = start(data.path());
    let mut rpc = FileSyncClient::connect(url).await.unwrap();
    for (path, content, version) in &acked {
        let mut s =
            rpc.download(pb::DownloadRequest { path: path.clone(), version: 0 }).await.unwrap().into_inner();
        let mut got = Vec::new();
        let mut entry_version = 0;
        while let Some(m) = s.message().await.unwrap() {
            match m.msg.unwrap() {
                pb::download_response::Msg::Entry(e) => entry_version = e.version,
                pb::download_response::Msg::Chunk(c) => got.extend_from_slice(&c),
            }
        }
        assert_eq!(got, content.as_bytes(), "{path}");
        assert_eq!(entry_version, *version);
    }
    assert_eq!(std::fs::read_dir(data.path().join("tmp")).unwrap().count(), 0, "temp debris swept");
    signal(&child, "-TERM");
    assert!(wait_exit(&mut child).await.success());
}
