//! The `sync-client` binary as a person or a script runs it: `sync` exits 0
//! once in sync, `status` reports differences with `diff`-like exit codes
//! and changes nothing, `ls` lists the server, `watch` stops on SIGTERM.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    url: String,
    shutdown: CancellationToken,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn server() -> Server {
    let data = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let config = sync_server::Config::new(data.path().join("data"));
    tokio::spawn(sync_server::run(config, listener, shutdown.clone()));
    Server { url, shutdown, _data: data }
}

/// Runs the client binary to completion (off the async workers, so the
/// in-process server keeps serving).
async fn client(server: &str, dir: &Path, args: &[&str]) -> Output {
    client_in_env(server, dir, args, &[], None).await
}

/// A temp dir holding `folder/` with one file, `a.txt` (holding `a_txt`),
/// and the config file `client.toml` (holding `config`).
fn folder_and_config(a_txt: &str, config: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.txt"), a_txt).unwrap();
    let config_file = dir.path().join("client.toml");
    std::fs::write(&config_file, config).unwrap();
    (dir, folder, config_file)
}

/// [`client`] with the environment variables `unset` removed and `set`
/// (a name and its value) added.
async fn client_in_env<S: AsRef<std::ffi::OsStr>>(
    server: &str,
    dir: &Path,
    args: &[S],
    unset: &[&str],
    set: Option<(&str, &str)>,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sync-client"));
    cmd.args(["--server", server, "--dir"]).arg(dir).args(args);
    cmd.stdin(Stdio::null());
    for name in unset {
        cmd.env_remove(name);
    }
    if let Some((name, value)) = set {
        cmd.env(name, value);
    }
    tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || cmd.output().unwrap()))
        .await
        .expect("the client finishes in time")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_and_ls_behave_like_a_script_expects() {
    let server = server().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(a.path().join("docs")).unwrap();
    std::fs::write(a.path().join("docs/plan.txt"), "the plan").unwrap();
    std::fs::write(a.path().join("todo.txt"), "things").unwrap();

    // Before the first sync a's files are only here: status says so, exit 1.
    let st = client(&server.url, a.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(1), "{st:?}");
    assert_eq!(
        stdout(&st),
        "only-here     docs/plan.txt  (changed here)\nonly-here     todo.txt  (changed here)\n"
    );

    let out = client(&server.url, a.path(), &["sync"]).await;
    assert!(out.status.success(), "{out:?}");
    let st = client(&server.url, a.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(0), "in sync: {st:?}");
    assert_eq!(stdout(&st), "");

    let ls = client(&server.url, a.path(), &["ls"]).await;
    assert!(ls.status.success());
    let listed = stdout(&ls);
    assert!(listed.contains("docs/plan.txt") && listed.contains("todo.txt"), "{listed}");

    // b fetches everything with one sync.
    let out = client(&server.url, b.path(), &["sync"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(b.path().join("docs/plan.txt")).unwrap(), b"the plan");

    // A change in b: status shows it and changes nothing; sync sends it.
    std::fs::write(b.path().join("todo.txt"), "more things").unwrap();
    let st = client(&server.url, b.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(1));
    assert_eq!(stdout(&st), "differs       todo.txt  (changed here)\n");
    let st = client(&server.url, b.path(), &["status", "--json"]).await;
    assert_eq!(st.status.code(), Some(1));
    let expected = "[\n  {\n    \"path\": \"todo.txt\",\n    \"state\": \"differs\",\n    \"detail\": \"changed here\"\n  }\n]\n";
    assert_eq!(stdout(&st), expected);
    let st = client(&server.url, a.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(0), "status in b must not have uploaded anything");
    assert!(client(&server.url, b.path(), &["sync"]).await.status.success());
    let st = client(&server.url, a.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(1));
    assert_eq!(stdout(&st), "differs       todo.txt  (changed on the server)\n");
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    assert_eq!(std::fs::read(a.path().join("todo.txt")).unwrap(), b"more things");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stops_on_sigterm_and_a_bad_server_is_an_error() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sync-client"))
        .args(["--server", &server.url, "--dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the client has synced, its state folder exists: then stop it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !dir.path().join(".syncstore/state.db").exists() {
        assert!(tokio::time::Instant::now() < deadline, "the client never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the client did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");

    let out = client("not a url", dir.path(), &["sync"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad server address"), "{out:?}");
}

/// Starts `sync-client watch` on `dir` and waits until it holds the
/// folder's state.
async fn spawn_watch(server: &str, dir: &Path) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_sync-client"))
        .args(["--server", server, "--dir"])
        .arg(dir)
        .arg("watch")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !dir.join(".syncstore/state.db").exists() {
        assert!(tokio::time::Instant::now() < deadline, "the client never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_on_the_same_folder_refuses_to_start() {
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = spawn_watch(&server.url, dir.path()).await;
    let second = client(&server.url, dir.path(), &["watch"]).await;
    assert_eq!(second.status.code(), Some(1), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another sync-client is already running on"), "{err}");
    // The first one was not disturbed.
    assert!(first.try_wait().unwrap().is_none(), "the first client still runs");
    first.kill().unwrap();
    first.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_unlock_and_locks_from_the_command_line_and_a_killed_holder() {
    let server = server().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("report.txt"), "draft").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());

    // lock, locks, status, unlock.
    let out =
        client(&server.url, a.path(), &["lock", "report.txt", "--ttl", "10m", "--note", "editing"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).starts_with("locked report.txt until "), "{}", stdout(&out));
    let out = client(&server.url, b.path(), &["locks"]).await;
    assert!(
        stdout(&out).starts_with("report.txt  locked by ") && stdout(&out).contains("(editing)"),
        "{out:?}"
    );
    assert!(client(&server.url, b.path(), &["sync"]).await.status.success());
    let st = client(&server.url, b.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(0), "a lock is no difference: {st:?}");
    assert!(stdout(&st).starts_with("locked        report.txt  (locked by "), "{}", stdout(&st));
    let out = client(&server.url, b.path(), &["unlock", "report.txt"]).await;
    assert_eq!(out.status.code(), Some(1), "only the holder unlocks: {out:?}");
    let out = client(&server.url, a.path(), &["unlock", "report.txt"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&client(&server.url, b.path(), &["locks"]).await), "");

    // A running holder keeps a short lock alive; killed, its lock expires.
    let mut holder = spawn_watch(&server.url, a.path()).await;
    let out = client(&server.url, a.path(), &["lock", "report.txt", "--ttl", "2s"]).await;
    assert!(out.status.success(), "{out:?}");
    let locked_at = tokio::time::Instant::now();
    eventually("the lock outlives its first time-to-live", async || {
        let listed = stdout(&client(&server.url, b.path(), &["locks"]).await);
        assert!(listed.contains("report.txt"), "the lock was lost while its holder ran: {listed:?}");
        locked_at.elapsed() > Duration::from_secs(3)
    })
    .await;
    holder.kill().unwrap(); // SIGKILL: no goodbye.
    holder.wait().unwrap();
    eventually("the dead holder's lock expires", async || {
        stdout(&client(&server.url, b.path(), &["locks"]).await).is_empty()
    })
    .await;
}

/// Files in `dir` (recursively) except the client's state.
fn folder_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let rel = e.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        if !rel.starts_with(".syncstore") {
            out.push(rel);
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn big_data(len: usize) -> Vec<u8> {
    // Not compressible, not all alike: a cheap xorshift stream.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits until `dir/.syncstore/tmp` holds a partly written file.
async fn wait_for_partial(dir: &Path) {
    let tmp = dir.join(".syncstore/tmp");
    eventually("a transfer is under way", async || {
        std::fs::read_dir(&tmp)
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.metadata().is_ok_and(|m| m.len() > 0))))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_download_leaves_no_partial_file_and_converges() {
    let server = server().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let data = big_data(96 << 20);
    std::fs::write(a.path().join("big.bin"), &data).unwrap();
    std::fs::write(b.path().join("small.txt"), "b's").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());

    // b downloads the big file and is killed in the middle of it.
    let mut b_client = Command::new(env!("CARGO_BIN_EXE_sync-client"))
        .args(["--server", &server.url, "--dir"])
        .arg(b.path())
        .arg("sync")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_partial(b.path()).await;
    b_client.kill().unwrap();
    b_client.wait().unwrap();
    let present = folder_files(b.path());
    assert!(
        !present.contains(&"big.bin".to_owned()) || std::fs::read(b.path().join("big.bin")).unwrap() == data,
        "no half-written file in the folder: {present:?}"
    );

    // The next run converges, and leaves nothing in its temp folder.
    assert!(client(&server.url, b.path(), &["sync"]).await.status.success());
    assert!(std::fs::read(b.path().join("big.bin")).unwrap() == data);
    assert_eq!(std::fs::read_dir(b.path().join(".syncstore/tmp")).unwrap().count(), 0);
    assert_eq!(
        client(&server.url, a.path(), &["status"]).await.status.code(),
        Some(1),
        "small.txt is new for a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_cannot_be_written_keeps_the_old_file_and_is_retried() {
    let server = server().await;
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("doc.bin"), b"old version").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    assert!(client(&server.url, b.path(), &["sync"]).await.status.success());
    let new = big_data(4 << 20);
    std::fs::write(a.path().join("doc.bin"), &new).unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());

    // b's disk is "full": no file may grow past 1 MiB (writes fail with
    // EFBIG, as they would with ENOSPC).
    let bin = env!("CARGO_BIN_EXE_sync-client");
    let script =
        format!("trap '' XFSZ; ulimit -f 1024; exec '{bin}' --server {} --dir \"$0\" sync", server.url);
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]).arg(b.path()).stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "not in sync: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("File too large"), "{out:?}");
    assert_eq!(std::fs::read(b.path().join("doc.bin")).unwrap(), b"old version", "the old file is intact");
    assert_eq!(std::fs::read_dir(b.path().join(".syncstore/tmp")).unwrap().count(), 0, "no leftovers");

    // Space again: the next run gets it.
    assert!(client(&server.url, b.path(), &["sync"]).await.status.success());
    assert!(std::fs::read(b.path().join("doc.bin")).unwrap() == new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_a_file_or_the_environment() {
    use sync_server::auth::{Access, TokenFile};
    let secrets = tempfile::tempdir().unwrap();
    let tokens = secrets.path().join("tokens.toml");
    let mut file = TokenFile::default();
    let token = file.add("laptop", "team", Access::ReadWrite).unwrap();
    file.save(&tokens).unwrap();
    let token_file = secrets.path().join("laptop.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let data = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let mut config = sync_server::Config::new(data.path().join("data"));
    config.tokens = Some(tokens);
    tokio::spawn(sync_server::run(config, listener, shutdown.clone()));
    let _stop = shutdown.drop_guard();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let refused = client(&url, dir.path(), &["sync"]).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("token"), "{refused:?}");
    let synced = client(&url, dir.path(), &["--token-file", token_file.to_str().unwrap(), "sync"]).await;
    assert!(synced.status.success(), "{synced:?}");

    let mut ls = Command::new(env!("CARGO_BIN_EXE_sync-client"));
    ls.args(["--server", &url, "ls"]).env("SYNCSTORE_TOKEN", &token).stdin(Stdio::null());
    let listed = tokio::task::spawn_blocking(move || ls.output().unwrap()).await.unwrap();
    assert!(listed.status.success() && stdout(&listed).contains("a.txt"), "{listed:?}");
}

/// The environment variable that turns [`serve_as_a_child_process`] into a
/// server: the data folder to serve.
const CHILD_SERVER_DATA: &str = "SYNCSTORE_TEST_CHILD_SERVER_DATA";

/// A server running in a process of its own (this test binary, run again
/// as [`serve_as_a_child_process`]), so that a test can freeze it with
/// SIGSTOP. Dropping it resumes and kills it.
struct ServerProcess {
    child: std::process::Child,
    url: String,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    fn start() -> Self {
        use std::io::BufRead;
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["serve_as_a_child_process", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_SERVER_DATA, data.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        // The test harness prints its own words first, on the same line too.
        let addr = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.split_once("listening on ").map(|(_, addr)| addr.trim().to_owned()))
            .expect("the server process prints its address");
        Self { child, url: format!("http://{addr}"), _data: data }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test by itself: the server process of [`ServerProcess`], serving
/// until it is killed. Without its environment variable it does nothing.
#[test]
#[ignore = "run by ServerProcess as a server process of its own"]
fn serve_as_a_child_process() {
    let Some(data) = std::env::var_os(CHILD_SERVER_DATA) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let config = sync_server::Config::new(std::path::PathBuf::from(data));
        sync_server::run(config, listener, CancellationToken::new()).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_gives_up_on_a_frozen_server_in_time_naming_it() {
    let server = ServerProcess::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.txt"), "draft").unwrap();
    let synced = client(&server.url, dir.path(), &["sync"]).await;
    assert!(synced.status.success(), "{synced:?}");
    let locked = client(&server.url, dir.path(), &["lock", "report.txt"]).await;
    assert!(locked.status.success(), "{locked:?}");
    std::fs::write(dir.path().join("report.txt"), "edited while the server is frozen").unwrap();

    // Frozen: the kernel still accepts its connections, nothing answers.
    server.signal("-STOP");
    let timeout = Duration::from_secs(2);
    let expected = format!("the server {} did not answer within 2s", server.url);
    let commands: [&[&str]; 7] = [
        &["sync"],
        &["status"],
        &["status", "--against-replica", &server.url],
        &["ls"],
        &["lock", "report.txt"],
        &["unlock", "report.txt"],
        &["locks"],
    ];
    for args in commands {
        let started = tokio::time::Instant::now();
        let out = client(&server.url, dir.path(), &[&["--timeout", "2s"], args].concat()).await;
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stderr.contains(&expected), "{args:?} says which server did not answer: {stderr}");
        // One call's deadline, plus the program's start and end.
        assert!(took < timeout * 4, "{args:?} took {took:?}");
    }

    // Resumed, the server answers again: the edit made meanwhile goes up.
    server.signal("-CONT");
    let out = client(&server.url, dir.path(), &["unlock", "report.txt"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(client(&server.url, dir.path(), &["sync"]).await.status.success());
    let st = client(&server.url, dir.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(0), "{st:?}");
}

/// A child process killed (if still running) when the test ends, passed
/// or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server's live paths.
async fn server_paths(url: &str) -> Vec<String> {
    let listed = sync_client::list(&[url.to_owned()], &syncstore::connect::Security::none()).await;
    listed.map(|l| l.into_iter().map(|e| e.path.to_string()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_folder_does_not_stop_the_watcher() {
    use std::os::unix::fs::PermissionsExt;
    let server = server().await;
    let top = tempfile::tempdir().unwrap();
    let folder = top.path().join("synced");
    for d in ["", "open", "locked"] {
        std::fs::create_dir_all(folder.join(d)).unwrap();
    }
    std::fs::write(folder.join("before.txt"), "there at the start").unwrap();
    std::fs::write(folder.join("locked/secret.txt"), "unreadable").unwrap();
    // Root reads any folder whatever its mode: as root, the client runs as
    // `nobody`, who owns the folder but may not read `locked`.
    let nobody = 65534;
    // (A folder this process made is owned by its effective user.)
    let as_root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&folder).unwrap()) == 0;
    let mut cmd = if as_root {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!(
                "skipped: running as root without setpriv, a mode-000 folder cannot be made unreadable"
            );
            return;
        }
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["", "open", "locked"] {
            std::os::unix::fs::chown(folder.join(d), Some(nobody), Some(nobody)).unwrap();
        }
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]);
        cmd.arg(env!("CARGO_BIN_EXE_sync-client"));
        cmd
    } else {
        Command::new(env!("CARGO_BIN_EXE_sync-client"))
    };
    std::fs::set_permissions(folder.join("locked"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let log = top.path().join("client.log");
    let child = cmd
        .args(["--server", &server.url, "--rescan-interval", "1h", "--dir"])
        .arg(&folder)
        .arg("watch")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);

    eventually("the first sync is done", async || {
        if let Some(status) = child.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the client ended ({status}) before its first sync:\n{log}");
        }
        server_paths(&server.url).await.contains(&"before.txt".into())
    })
    .await;
    // Changes elsewhere in the folder are seen at once, not at the next
    // rescan (an hour away).
    std::fs::write(folder.join("open/new.txt"), "new").unwrap();
    std::fs::write(folder.join("top.txt"), "top").unwrap();
    std::fs::create_dir(folder.join("later")).unwrap();
    std::fs::write(folder.join("later/inside.txt"), "in a folder made after the start").unwrap();
    let started = tokio::time::Instant::now();
    eventually("the changes reach the server", async || {
        let paths = server_paths(&server.url).await;
        ["open/new.txt", "top.txt", "later/inside.txt"].iter().all(|p| paths.contains(&(*p).to_owned()))
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(child.0.try_wait().unwrap().is_none(), "the client still runs");

    assert!(Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap().success());
    assert!(child.0.wait().unwrap().success());
    std::fs::set_permissions(folder.join("locked"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("cannot watch some folders")).collect();
    assert_eq!(reports.len(), 1, "reported once: {log}");
    assert!(reports[0].contains("locked"), "{log}");
    assert!(!log.contains("the folder watcher failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rate_limit_is_refused_naming_its_option_and_a_good_one_is_kept() {
    let server = server().await;
    let (_dir, folder, config) = folder_and_config("not to be sent", "max-download-rate = \"12 parsecs\"\n");
    let run = async |mut args: Vec<String>, env: Option<(&'static str, &'static str)>| {
        args.push("sync".into());
        let unset = ["SYNCSTORE_MAX_UPLOAD_RATE", "SYNCSTORE_MAX_DOWNLOAD_RATE"];
        client_in_env(&server.url, &folder, &args, &unset, env).await
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let cases = [
        (s(&["--max-upload-rate", "0"]), None, "--max-upload-rate", "above zero"),
        (s(&["--max-upload-rate=-5MiB/s"]), None, "--max-upload-rate", "not a rate"),
        (s(&["--max-download-rate", "fast"]), None, "--max-download-rate", "not a rate"),
        (s(&["--max-download-rate", "10Mb/s"]), None, "--max-download-rate", "unknown unit"),
        (s(&[]), Some(("SYNCSTORE_MAX_UPLOAD_RATE", "0MiB/s")), "--max-upload-rate", "above zero"),
        (s(&["--config", config.to_str().unwrap()]), None, "--max-download-rate", "unknown unit"),
    ];
    for (args, env, flag, why) in cases {
        let what = format!("{args:?} {env:?}");
        let out = run(args, env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(stderr.contains(flag) && stderr.contains(why), "{what}: {stderr}");
        assert!(!folder.join(".syncstore").exists(), "{what}: the client started");
    }
    assert_eq!(server_paths(&server.url).await, Vec::<String>::new(), "nothing reached the server");

    // A good rate, from the config file too, syncs as usual.
    std::fs::write(&config, "max-download-rate = \"5MiB/s\"\n").unwrap();
    let args = s(&["--max-upload-rate", "1048576", "--config", config.to_str().unwrap()]);
    let out = run(args, None).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server_paths(&server.url).await, vec!["a.txt".to_owned()]);

    // And the limit is kept: 3 MiB at 1 MiB/s take over 2 s (the bucket
    // starts full, with a quarter second's worth).
    let mut big = vec![0u8; 3 << 20];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut big);
    std::fs::write(folder.join("big.bin"), &big).unwrap();
    let started = tokio::time::Instant::now();
    let out = run(s(&["--max-upload-rate", "1MiB/s"]), None).await;
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(server_paths(&server.url).await.contains(&"big.bin".to_owned()));
    assert!(took >= Duration::from_millis(2400), "3 MiB went up in {took:?} at 1 MiB/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_the_live_status_reach_the_running_watch() {
    use std::os::unix::fs::PermissionsExt;
    let server = server().await;
    let dir = tempfile::tempdir().unwrap();

    // No client runs on the folder: a clear error, exit 3.
    for command in ["pause", "resume"] {
        let out = client(&server.url, dir.path(), &[command]).await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no sync-client is running on"), "{err}");
    }
    let out = client(&server.url, dir.path(), &["status", "--live", "--json"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let mut watch = spawn_watch(&server.url, dir.path()).await;
    let mut live = serde_json::Value::Null;
    eventually("status --live answers", async || {
        let out = client(&server.url, dir.path(), &["status", "--live", "--json"]).await;
        if out.status.success() {
            live = serde_json::from_slice(&out.stdout).expect("status --live --json is JSON");
        }
        out.status.success()
    })
    .await;
    assert_eq!(live["paused"], false, "{live}");
    assert_eq!(live["mode"], "send-receive", "{live}");
    assert_eq!(live["server"], server.url.as_str(), "{live}");
    for field in ["cursor", "head", "queued_total", "errors_total"] {
        assert!(live[field].is_u64(), "{field} in {live}");
    }
    for field in ["queued", "transfers", "errors"] {
        assert!(live[field].is_array(), "{field} in {live}");
    }

    // Only the owner can reach the socket.
    let socket = dir.path().join(".syncstore/control/socket");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);

    // A plain `status` adds the summary on stderr; stdout keeps the
    // differences alone.
    let out = client(&server.url, dir.path(), &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout(&out), "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("client:     running, syncing\n"), "{err}");

    let out = client(&server.url, dir.path(), &["pause"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "paused\n");
    let out = client(&server.url, dir.path(), &["status", "--live"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).starts_with("client:     running, paused\n"), "{}", stdout(&out));
    let out = client(&server.url, dir.path(), &["resume"]).await;
    assert_eq!(stdout(&out), "syncing\n");

    // Killed, it leaves its socket behind: nobody answers on it.
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(socket.exists());
    let out = client(&server.url, dir.path(), &["pause"]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_mode_is_refused_and_a_given_one_is_remembered() {
    let server = server().await;
    let (_dir, folder, config) = folder_and_config("kept here", "mode = \"upwards\"\n");
    let run = async |args: Vec<String>, env: Option<(&'static str, &'static str)>| {
        client_in_env(&server.url, &folder, &args, &["SYNCSTORE_MODE"], env).await
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let cases = [
        (s(&["--mode", "both-ways", "sync"]), None, "both-ways"),
        (s(&["sync"]), Some(("SYNCSTORE_MODE", "sideways")), "sideways"),
        (s(&["--config", config.to_str().unwrap(), "sync"]), None, "upwards"),
        (s(&["--mode", "", "status"]), None, "--mode"),
    ];
    for (args, env, bad) in cases {
        let what = format!("{args:?} {env:?}");
        let out = run(args, env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(
            stderr.contains(bad) && stderr.contains("--mode") && stderr.contains("receive-only"),
            "{what}: {stderr}"
        );
        assert!(!folder.join(".syncstore").exists(), "{what}: the client started");
    }
    assert_eq!(server_paths(&server.url).await, Vec::<String>::new(), "nothing reached the server");

    // A mode given once is remembered: later runs without it keep it.
    let out = run(s(&["--mode", "receive-only", "sync"]), None).await;
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the folder's mode changes") && err.contains("to=receive-only"), "{err}");
    let out = run(s(&["sync"]), None).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("mode changes"), "no change, no log: {out:?}");
    assert_eq!(server_paths(&server.url).await, Vec::<String>::new(), "nothing local is sent");
    let st = run(s(&["status"]), None).await;
    assert_eq!(st.status.code(), Some(1), "{st:?}");
    assert_eq!(stdout(&st), "locally-changed a.txt  (changed here, kept here (receive-only))\n");
    // `status` with another mode shows the folder in it, storing nothing.
    let st = run(s(&["--mode", "send-receive", "status"]), None).await;
    assert_eq!(stdout(&st), "only-here     a.txt  (changed here)\n");
    // `override` is for a send-only folder: refused, naming the mode.
    let out = run(s(&["override"]), None).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is receive-only"), "{out:?}");
    assert_eq!(server_paths(&server.url).await, Vec::<String>::new(), "still nothing sent");

    // Switching to send-receive is explicit and logged; the kept change
    // is then sent.
    let out = run(s(&["--mode", "send-receive", "sync"]), None).await;
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("from=receive-only") && err.contains("to=send-receive"), "{err}");
    assert_eq!(server_paths(&server.url).await, vec!["a.txt".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_selection_path_is_refused_naming_only_and_changes_nothing() {
    let server = server().await;
    let (dir, folder, config) = folder_and_config("not to be sent", "only = [\"docs\", \"docs/../..\"]\n");
    let run = async |mut args: Vec<String>, env: Option<(&'static str, &'static str)>| {
        args.push("sync".into());
        client_in_env(&server.url, &folder, &args, &["SYNCSTORE_ONLY"], env).await
    };
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let cases = [
        (s(&["--only", "../elsewhere"]), None),
        (s(&["--only", "docs", "--only", "docs/../../etc"]), None),
        (s(&["--only", "/etc"]), None),
        (s(&["--only", ""]), None),
        (s(&["--only", "/"]), None),
        (s(&[]), Some(("SYNCSTORE_ONLY", "docs,.."))),
        (s(&["--config", config.to_str().unwrap()]), None),
    ];
    for (args, env) in cases {
        let what = format!("{args:?} {env:?}");
        let out = run(args, env).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(stderr.contains("--only"), "{what}: {stderr}");
        assert!(!folder.join(".syncstore").exists(), "{what}: the client started");
    }
    assert_eq!(server_paths(&server.url).await, Vec::<String>::new(), "nothing reached the server");

    // A good selection, from the config file too, is kept: a file outside
    // it stays here and is not sent; one inside it is.
    std::fs::create_dir(folder.join("docs")).unwrap();
    std::fs::write(folder.join("docs/kept.txt"), "sent").unwrap();
    std::fs::write(&config, "only = [\"docs/\"]\n").unwrap();
    let out = run(s(&["--config", config.to_str().unwrap()]), None).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server_paths(&server.url).await, vec!["docs/kept.txt".to_owned()]);
    assert!(folder.join("a.txt").exists());

    // Another folder puts a file outside the selection on the server:
    // `status` lists it and the file made here as not selected (still in
    // sync: exit 0), and `ls` given the folder marks it.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("music")).unwrap();
    std::fs::write(other.join("music/song.mp3"), "song").unwrap();
    assert!(client(&server.url, &other, &["sync"]).await.status.success());
    let out = client(&server.url, &folder, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let rows: Vec<Vec<String>> =
        stdout(&out).lines().map(|l| l.split_whitespace().take(2).map(str::to_owned).collect()).collect();
    assert_eq!(
        rows,
        [["not-selected", "a.txt"], ["not-selected", "music/song.mp3"]].map(|r| r.map(str::to_owned)),
        "{out:?}"
    );
    assert!(!folder.join("music").exists(), "nothing outside the selection was downloaded");
    let out = client(&server.url, &folder, &["ls"]).await;
    assert!(out.status.success(), "{out:?}");
    let listed = stdout(&out);
    let line = |path: &str| listed.lines().find(|l| l.contains(path)).unwrap_or_default().to_owned();
    assert!(line("music/song.mp3").ends_with("music/song.mp3  (not selected)"), "{listed}");
    assert!(line("docs/kept.txt").ends_with(" docs/kept.txt"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_commands_exit_as_a_script_expects() {
    let server = server().await;
    let a = tempfile::tempdir().unwrap();
    std::fs::write(a.path().join("a.txt"), "first").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    std::fs::write(a.path().join("a.txt"), "second").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());

    let history = client(&server.url, a.path(), &["history", "a.txt", "--json"]).await;
    assert!(history.status.success(), "{history:?}");
    let lines: Vec<serde_json::Value> =
        stdout(&history).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first = lines[1]["version"].as_u64().unwrap();
    let cat = client(&server.url, a.path(), &["cat", &format!("a.txt@{first}")]).await;
    assert!(cat.status.success(), "{cat:?}");
    assert_eq!(cat.stdout, b"first");

    // An unknown version: exit 1, the server's reason on stderr.
    let bad = client(&server.url, a.path(), &["cat", "a.txt@99999"]).await;
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(said.contains("unknown-version"), "{said}");
    assert!(bad.stdout.is_empty());

    // A rewind with no terminal to ask on and no --yes: it says what it
    // would do, refuses with exit 2, and changes nothing.
    let rewind = client(&server.url, a.path(), &["rewind", ".", "--to", &first.to_string()]).await;
    assert_eq!(rewind.status.code(), Some(2), "{rewind:?}");
    assert!(stdout(&rewind).contains("a.txt"), "{rewind:?}");
    assert!(String::from_utf8_lossy(&rewind.stderr).contains("--yes"), "{rewind:?}");
    let st = client(&server.url, a.path(), &["status"]).await;
    assert_eq!(st.status.code(), Some(0), "nothing changed on the server: {st:?}");
    let rewind = client(&server.url, a.path(), &["rewind", ".", "--to", &first.to_string(), "--yes"]).await;
    assert!(rewind.status.success(), "{rewind:?}");
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    assert_eq!(std::fs::read(a.path().join("a.txt")).unwrap(), b"first");

    // A folder argument names a folder from where the command runs: "."
    // in a subfolder is that subfolder.
    std::fs::create_dir(a.path().join("docs")).unwrap();
    std::fs::write(a.path().join("docs/gone.txt"), "deleted in docs").unwrap();
    std::fs::write(a.path().join("gone-too.txt"), "deleted at the top").unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    std::fs::remove_file(a.path().join("docs/gone.txt")).unwrap();
    std::fs::remove_file(a.path().join("gone-too.txt")).unwrap();
    assert!(client(&server.url, a.path(), &["sync"]).await.status.success());
    let trash_from = |cwd: PathBuf| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sync-client"));
        cmd.args(["--server", &server.url, "--dir"]).arg(a.path()).args(["trash", "."]).current_dir(cwd);
        cmd.stdin(Stdio::null());
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let trash = tokio::time::timeout(DEADLINE, trash_from(a.path().join("docs"))).await.unwrap().unwrap();
    assert!(trash.status.success(), "{trash:?}");
    let listed: Vec<String> =
        stdout(&trash).lines().map(|l| l.split("  ").next().unwrap().to_owned()).collect();
    assert_eq!(listed, ["docs/gone.txt"]);
    let everywhere = tokio::time::timeout(DEADLINE, trash_from(std::env::temp_dir())).await.unwrap().unwrap();
    let mut listed: Vec<String> =
        stdout(&everywhere).lines().map(|l| l.split("  ").next().unwrap().to_owned()).collect();
    listed.sort();
    assert_eq!(listed, ["docs/gone.txt", "gone-too.txt"], "{everywhere:?}");
}
