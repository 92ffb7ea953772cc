//! The `sync-server` binary as an operator runs it: the `listening on` line,
//! graceful shutdown on SIGINT/SIGTERM, and durability across a SIGKILL.

mod common;

use common::{signal, start_cmd, start_with, upload, wait_exit};
use syncstore::pb::{self, file_sync_client::FileSyncClient};

#[tokio::test]
async fn sigterm_and_sigint_stop_it_cleanly() {
    for sig in ["-TERM", "-INT"] {
        let data = tempfile::tempdir().unwrap();
        let mut server = start_with(data.path(), "127.0.0.1:0", &[]);
        let url = server.url();
        // It serves: a call succeeds.
        let mut rpc = FileSyncClient::connect(url).await.unwrap();
        rpc.server_info(pb::ServerInfoRequest {}).await.unwrap();
        // An open subscription must not hold the shutdown up.
        let _sub = rpc.subscribe(pb::SubscribeRequest::default()).await.unwrap();
        signal(&server.child, sig);
        let status = wait_exit(&mut server.child).await;
        assert!(status.success(), "{sig}: {status:?}");
    }
}

#[tokio::test]
async fn acknowledged_uploads_survive_sigkill() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start_with(data.path(), "127.0.0.1:0", &[]);
    let mut rpc = FileSyncClient::connect(server.url()).await.unwrap();
    let mut acked = Vec::new();
    for i in 0..10 {
        let content = format!("content {i}").repeat(1000);
        let version = upload(&mut rpc, &format!("f{i}.txt"), content.as_bytes()).await;
        acked.push((format!("f{i}.txt"), content, version));
    }
    server.child.kill().unwrap(); // SIGKILL: no chance to flush anything.
    wait_exit(&mut server.child).await;
    // Debris of an upload a crash interrupted.
    std::fs::write(data.path().join("tmp/.tmp-interrupted"), b"half").unwrap();

    let mut server = start_with(data.path(), "127.0.0.1:0", &[]);
    let mut rpc = FileSyncClient::connect(server.url()).await.unwrap();
    for (path, content, version) in &acked {
        let mut s = rpc
            .download(pb::DownloadRequest { path: path.clone(), version: 0, have_hash: Vec::new() })
            .await
            .unwrap()
            .into_inner();
        let mut got = Vec::new();
        let mut entry_version = 0;
        while let Some(m) = s.message().await.unwrap() {
            match m.msg.unwrap() {
                pb::download_response::Msg::Entry(e) => entry_version = e.version,
                pb::download_response::Msg::Chunk(c) => got.extend_from_slice(&c),
                pb::download_response::Msg::Runs(_) => panic!("runs without asking for them"),
            }
        }
        assert_eq!(got, content.as_bytes(), "{path}");
        assert_eq!(entry_version, *version);
    }
    assert_eq!(std::fs::read_dir(data.path().join("tmp")).unwrap().count(), 0, "temp debris swept");
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).await.success());
}

#[tokio::test]
async fn options_come_from_flags_then_environment_then_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:0\"\ndata = \"{}\"\nlog-retention = 7\n", d("from-file")),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 3] = [
        (&["--config", config], &[], "from-file"),
        (&["--config", config], &[("SYNCSTORE_DATA", &d("from-env"))], "from-env"),
        (
            &["--config", config, "--data", &d("from-flag")],
            &[("SYNCSTORE_DATA", &d("from-env"))],
            "from-flag",
        ),
    ];
    for (args, env, want) in cases {
        let mut server = start_cmd(args, env);
        assert!(dir.path().join(want).join("meta.db").is_file(), "{want}: {args:?} {env:?}");
        signal(&server.child, "-TERM");
        assert!(wait_exit(&mut server.child).await.success());
    }

    // A config file with an unknown option is refused before anything starts.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listn = \"127.0.0.1:0\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option \"listn\""), "{out:?}");
}

#[tokio::test]
async fn sigterm_stops_it_even_when_its_log_pipe_is_closed() {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };
    let data = tempfile::tempdir().unwrap();
    // With a dashboard, which prints a second line after the one read here.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--web-listen",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on "), "{line:?}");
    // Whoever read its logs went away.
    drop(child.stderr.take());
    signal(&child, "-TERM");
    let status = wait_exit(&mut child).await;
    assert!(status.success(), "{status:?}");
}

/// Runs `sync-server ARGS` to completion.
fn run_server_cmd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sync-server")).args(args).output().unwrap()
}

#[tokio::test]
async fn tokens_are_managed_from_the_command_line_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let t = tokens.to_str().unwrap();
    let add = |name: &str, extra: &[&str]| {
        let mut args = vec!["token", "add", "--tokens", t, name];
        args.extend(extra);
        let out = run_server_cmd(&args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let alice = add("alice-laptop", &["--namespace", "alice"]);
    add("ops", &["--access", "admin"]);
    assert!(alice.starts_with("sst_") && alice.len() > 60, "{alice}");
    assert!(!std::fs::read_to_string(&tokens).unwrap().contains(&alice), "only the hash is stored");
    let list = String::from_utf8(run_server_cmd(&["token", "list", "--tokens", t]).stdout).unwrap();
    assert!(list.contains("alice-laptop") && list.contains("read-write") && list.contains("alice"), "{list}");
    assert!(list.contains("ops") && list.contains("admin") && !list.contains(&alice), "{list}");
    // Mistakes are refused and leave the file as it was.
    let before = std::fs::read(&tokens).unwrap();
    for bad in [
        vec!["token", "add", "--tokens", t, "alice-laptop", "--namespace", "x"],
        vec!["token", "add", "--tokens", t, "x", "--namespace", "../etc"],
        vec!["token", "add", "--tokens", t, "y"],
        vec!["token", "remove", "--tokens", t, "nobody"],
    ] {
        let out = run_server_cmd(&bad);
        assert!(!out.status.success(), "{bad:?}");
    }
    assert_eq!(std::fs::read(&tokens).unwrap(), before);

    let data = tempfile::tempdir().unwrap();
    let mut server = start_with(data.path(), "127.0.0.1:0", &["--tokens", t]);
    let with = |token: Option<&str>| {
        let security = syncstore::connect::Security { token: token.map(str::to_owned), ..Default::default() };
        FileSyncClient::new(security.channel(&server.url()).unwrap())
    };
    let info = with(Some(&alice)).server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.namespace.as_str(), info.principal.as_str()), ("alice", "alice-laptop"));
    let refused = with(None).server_info(pb::ServerInfoRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    assert!(run_server_cmd(&["token", "remove", "--tokens", t, "alice-laptop"]).status.success());
    common::eventually("the removed token is refused", || {
        let mut rpc = with(Some(&alice));
        async move { rpc.server_info(pb::ServerInfoRequest {}).await.is_err() }
    })
    .await;
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).await.success());
}

#[test]
fn an_open_server_refuses_a_non_loopback_address() {
    let data = tempfile::tempdir().unwrap();
    // It binds (port 0 on every interface) but never serves: it exits first.
    let out = run_server_cmd(&["--listen", "0.0.0.0:0", "--data", data.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without authentication") && stderr.contains("--insecure-no-auth"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("server.log");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
        .args(["--listen", "127.0.0.1:0", "--data", data.path().join("d").to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = common::Proc { child, addr: String::new() };
    let serving = |text: &str| text.contains("serving");
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while !serving(&std::fs::read_to_string(&log).unwrap()) {
        assert!(tokio::time::Instant::now() < deadline, "the server never logged that it serves");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    signal(&server.child, "-TERM");
    assert!(wait_exit(&mut server.child).await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "colour codes in a log file:\n{text}");
}

#[tokio::test]
async fn compare_gives_up_on_a_frozen_server_in_time_naming_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_with(da.path(), "127.0.0.1:0", &[]);
    let b = start_with(db.path(), "127.0.0.1:0", &[]);
    let compare = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_sync-server"))
                .arg("compare")
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (out, started.elapsed())
        })
    };
    let (out, _) = compare(vec![a.url(), b.url()]).await.unwrap();
    assert!(out.status.success(), "two empty servers are identical: {out:?}");

    // Frozen, first one side then the other: the kernel still accepts
    // connections, nothing answers. Each call waits at most --timeout.
    for frozen in [&a, &b] {
        signal(&frozen.child, "-STOP");
        let (out, took) = compare(vec!["--timeout".into(), "2s".into(), a.url(), b.url()]).await.unwrap();
        signal(&frozen.child, "-CONT");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let expected = format!("the server {} did not answer within 2s", frozen.url());
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(took < std::time::Duration::from_secs(8), "took {took:?}");
    }
    let (out, _) = compare(vec![a.url(), b.url()]).await.unwrap();
    assert!(out.status.success(), "resumed, both answer: {out:?}");
}
