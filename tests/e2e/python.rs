//! A second-language client: the protos compiled by stock protoc (the one
//! in PyPI's grpcio-tools) and `tests/python/client.py`, written from the
//! protos and the README alone, run against a live server. Skipped (with a
//! message) when Python's grpcio, grpcio-tools or blake3 is missing, unless
//! SYNCSTORE_REQUIRE_PYTHON is set, as CI does: then it fails.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::*;

/// Longest a Python step may take before it is killed and the test fails.
const PYTHON_DEADLINE: Duration = Duration::from_secs(120);

fn have_python_grpc() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc, blake3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("SYNCSTORE_REQUIRE_PYTHON").is_none(),
            "Python's grpcio, grpcio-tools and blake3 are required (SYNCSTORE_REQUIRE_PYTHON is set) but missing"
        );
        eprintln!(
            "skipping: python3 with grpcio, grpcio-tools and blake3 is missing (pip install grpcio grpcio-tools blake3)"
        );
    }
    found
}

/// Runs `cmd` to its end, killing it past [`PYTHON_DEADLINE`].
fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python3 starts");
    let start = Instant::now();
    while child.try_wait().expect("wait on python3").is_none() {
        if start.elapsed() > PYTHON_DEADLINE {
            child.kill().expect("kill python3");
            let out = child.wait_with_output().expect("python3's output");
            panic!(
                "python3 ran past {PYTHON_DEADLINE:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("python3's output")
}

/// Compiles every proto with stock protoc into `out`.
fn protoc(root: &Path, out: &Path) -> Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args([
            "proto/syncstore/v1/sync.proto",
            "proto/syncstore/v1/replication.proto",
            "proto/syncstore/v1/admin.proto",
        ])
        .current_dir(root);
    run_bounded(cmd)
}

fn shown(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_from_stock_protoc_stubs() {
    if !have_python_grpc() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let stubs = tempfile::tempdir().unwrap();
    let compiled = protoc(root, stubs.path());
    assert!(compiled.status.success(), "stock protoc refuses the protos:\n{}", shown(&compiled));

    let server = TestServer::start().await;
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("tests/python/client.py")).arg(server.addr.to_string()).env("PYTHONPATH", stubs.path());
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd)).await.unwrap();
    assert!(out.status.success(), "the Python client failed:\n{}", shown(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"), "{}", shown(&out));
    // What it wrote is there for every other client.
    assert_eq!(server.files().await.get("py/hello.txt").map(Vec::as_slice), Some(&b"mine"[..]));
}
