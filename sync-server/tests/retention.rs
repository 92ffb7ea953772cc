//! Retention of history, pruning and the mass-change guard, with
//! `sync-server` processes whose clock the test moves (the test clock
//! file, `SYNCSTORE_TEST_CLOCK_FILE`): the staggered ladder removes
//! exactly the versions it should and never a pinned one, one a label
//! needs, or one inside the immutable window; the size cap; a retention
//! set at run time survives a restart and the collector applies it by
//! itself; pruning never removes content a kept version or an upload in
//! flight refers to; the guard trips on a mass rewrite, once per burst;
//! only an admin prunes.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use common::{DEADLINE, Proc, chunks, eventually, signal, wait_exit};
use syncstore::{
    ContentHash,
    connect::{AuthChannel, Security},
    pb::{
        self, admin_client::AdminClient, file_sync_client::FileSyncClient, history_client::HistoryClient,
        upload_request,
    },
};

/// 2026-12-01 12:00:00 UTC, a Tuesday: the servers' "now" in the ladder
/// test, far from any bucket's edge.
const NOW: i64 = 1_796_126_400_000;
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;

/// The test clock: moves the servers' time by rewriting the offset file.
struct Clock {
    path: PathBuf,
    writes: usize,
}

impl Clock {
    fn new(dir: &Path) -> Self {
        let mut clock = Self { path: dir.join("clock"), writes: 0 };
        clock.set_offset(0);
        clock
    }

    /// Sets the servers' clock to `at_ms` (since the Unix epoch).
    fn set(&mut self, at_ms: i64) {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
        self.set_offset(at_ms - now);
    }

    /// Adds `ms` to the servers' clock.
    fn advance(&mut self, ms: i64) {
        let offset: i64 = std::fs::read_to_string(&self.path).unwrap().trim().parse().unwrap();
        self.set_offset(offset + ms);
    }

    fn set_offset(&mut self, offset: i64) {
        // The server re-reads the file when its mtime or length changes: a
        // length that alternates tells it even within one mtime tick.
        self.writes += 1;
        let pad = " ".repeat(self.writes % 2);
        std::fs::write(&self.path, format!("{offset}{pad}\n")).unwrap();
    }
}

/// A server process with its log on a file.
struct Server {
    proc: Proc,
    log: PathBuf,
    data: PathBuf,
    args: Vec<String>,
    clock: PathBuf,
}

impl Server {
    /// Starts `sync-server` on `data` (in `dir`) with `extra` flags and the
    /// test clock.
    fn start(dir: &Path, clock: &Clock, extra: &[&str]) -> Self {
        let data = dir.join("data");
        let args = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn(dir, data, args, clock.path.clone())
    }

    fn spawn(dir: &Path, data: PathBuf, args: Vec<String>, clock: PathBuf) -> Self {
        let log = dir.join(format!("server-{}.log", SystemTime::now().elapsed().map_or(0, |d| d.as_nanos())));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sync-server"))
            .args(["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()])
            .args(&args)
            .env("SYNCSTORE_TEST_CLOCK_FILE", &clock)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let _ = tx.send(line.unwrap());
            }
        });
        let line = rx.recv_timeout(DEADLINE).expect("the server prints its address");
        let addr = line.strip_prefix("listening on ").unwrap().to_owned();
        Self { proc: Proc { child, addr }, log, data, args, clock }
    }

    /// Stops it (SIGTERM) and starts it again on the same data folder.
    async fn restart(mut self, dir: &Path) -> Self {
        signal(&self.proc.child, "-TERM");
        assert!(wait_exit(&mut self.proc.child).await.success());
        let (data, args, clock) = (self.data.clone(), self.args.clone(), self.clock.clone());
        Self::spawn(dir, data, args, clock)
    }

    fn url(&self) -> String {
        self.proc.url()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// The calls of one server, as one caller.
struct Calls {
    files: FileSyncClient<AuthChannel>,
    history: HistoryClient<AuthChannel>,
    admin: AdminClient<AuthChannel>,
    /// The current version of each path this caller wrote.
    current: BTreeMap<String, u64>,
}

impl Calls {
    fn new(url: &str, security: &Security) -> Self {
        let channel = security.channel(url).unwrap();
        Self {
            files: FileSyncClient::new(channel.clone()),
            history: HistoryClient::new(channel.clone()),
            admin: AdminClient::new(channel),
            current: BTreeMap::new(),
        }
    }

    /// Writes `data` at `path` over its current version; returns the new
    /// version.
    async fn put(&mut self, path: &str, data: &[u8]) -> u64 {
        let base = self.current.get(path).copied().unwrap_or(0);
        let version = upload(&mut self.files, path, data, base).await.unwrap();
        self.current.insert(path.to_owned(), version);
        version
    }

    /// The kept versions of `path`, oldest first.
    async fn versions(&mut self, path: &str) -> Vec<u64> {
        let mut s = self
            .history
            .list_versions(pb::ListVersionsRequest { path: path.into(), limit: 0 })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            out.push(m.version.unwrap().entry.unwrap().version);
        }
        out.reverse();
        out
    }

    /// The content of version `version` of `path`.
    async fn read_version(&mut self, path: &str, version: u64) -> Result<Vec<u8>, tonic::Status> {
        let point = pb::Point { at: Some(pb::point::At::Version(version)) };
        let mut s = self
            .history
            .read_version(pb::ReadVersionRequest { path: path.into(), point: Some(point) })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await? {
            if let Some(pb::read_version_response::Msg::Chunk(c)) = m.msg {
                out.extend(c);
            }
        }
        Ok(out)
    }

    /// PruneHistory: the versions (path, version) removed, or that would
    /// be, and the summary.
    async fn prune(
        &mut self,
        dry_run: bool,
        include_immutable: bool,
    ) -> Result<(Vec<(String, u64)>, pb::PruneSummary), tonic::Status> {
        let req = pb::PruneHistoryRequest { namespace: String::new(), dry_run, include_immutable };
        let mut s = self.admin.prune_history(req).await?.into_inner();
        let (mut versions, mut summary) = (Vec::new(), None);
        while let Some(m) = s.message().await? {
            match m.msg.unwrap() {
                pb::prune_history_response::Msg::Version(v) => {
                    let e = v.entry.unwrap();
                    versions.push((e.path, e.version));
                }
                pb::prune_history_response::Msg::Summary(s) => summary = Some(s),
            }
        }
        Ok((versions, summary.expect("a prune ends with its summary")))
    }

    async fn retention(&mut self) -> pb::GetRetentionResponse {
        let req = pb::GetRetentionRequest { namespace: String::new() };
        self.admin.get_retention(req).await.unwrap().into_inner()
    }

    async fn status(&mut self) -> pb::StatusResponse {
        self.admin.status(pb::StatusRequest::default()).await.unwrap().into_inner()
    }

    async fn labels(&mut self) -> Vec<pb::Label> {
        let mut s = self.history.list_labels(pb::ListLabelsRequest {}).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(m) = s.message().await.unwrap() {
            out.push(m.label.unwrap());
        }
        out
    }
}

/// Uploads `data` at `path` over version `base`.
async fn upload(
    rpc: &mut FileSyncClient<AuthChannel>,
    path: &str,
    data: &[u8],
    base: u64,
) -> Result<u64, tonic::Status> {
    let header = pb::UploadHeader {
        path: path.into(),
        size: data.len() as u64,
        hash: ContentHash::of(data).as_bytes().to_vec(),
        base_version: base,
        client_id: "retention-test".into(),
        ..Default::default()
    };
    let mut msgs = vec![pb::UploadRequest { msg: Some(upload_request::Msg::Header(header)) }];
    msgs.extend(chunks(data));
    msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) });
    Ok(rpc.upload(tokio_stream::iter(msgs)).await?.into_inner().entry.unwrap().version)
}

/// A config file holding `text`.
fn config(dir: &Path, text: &str) -> String {
    let path = dir.join("server.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Distinct content for version `i` of `path`.
fn content(path: &str, i: usize, len: usize) -> Vec<u8> {
    let seed = format!("{path} version {i} ");
    seed.bytes().cycle().take(len.max(seed.len())).collect()
}

/// The reason a refusal carries.
fn reason(s: &tonic::Status) -> String {
    s.metadata().get("syncstore-reason").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

#[tokio::test]
async fn the_ladder_removes_exactly_what_it_should_never_a_pinned_labelled_or_immutable_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(dir.path());
    // Every version younger than 30 minutes; the newest of each hour for 6
    // hours and of each day for 3 days; nothing removed younger than 1 hour.
    let cfg = config(
        dir.path(),
        "[retention]\nkeep_within = \"30m\"\nhourly_for = \"6h\"\ndaily_for = \"3d\"\nweekly_for = 0\nimmutable = \"1h\"\n",
    );
    let server = Server::start(dir.path(), &clock, &["--config", &cfg]);
    let mut c = Calls::new(&server.url(), &Security::none());

    // (path, when, expected fate). NOW is Tuesday 12:00; day buckets that
    // start after Saturday 12:00 (Sunday, Monday, Tuesday) and hour buckets
    // after 06:00 keep their newest version.
    let writes: &[(&str, i64, &str)] = &[
        ("b.txt", NOW - 4 * DAY, "pinned"),              // Friday 12:00
        ("b.txt", NOW - 3 * DAY - 3 * HOUR, "labelled"), // Saturday 09:00
        ("a.txt", NOW - 3 * DAY - 2 * HOUR, "removed"),  // Saturday 10:00: its day is out of reach
        ("b.txt", NOW - 3 * DAY - 90 * MIN, "removed"),  // Saturday 10:30
        ("a.txt", NOW - 2 * DAY - 2 * HOUR, "removed"),  // Sunday 10:00: not Sunday's newest
        ("a.txt", NOW - 2 * DAY, "kept"),                // Sunday 12:00: Sunday's newest
        ("a.txt", NOW - 4 * HOUR - 30 * MIN, "kept"),    // 07:30: newest of 07:00
        ("a.txt", NOW - 3 * HOUR - 50 * MIN, "removed"), // 08:10
        ("a.txt", NOW - 3 * HOUR - 20 * MIN, "kept"),    // 08:40: newest of 08:00
        ("a.txt", NOW - 50 * MIN, "immutable"),          // 11:10: only the immutable window keeps it
        ("a.txt", NOW - 20 * MIN, "kept"),               // 11:40: within 30 minutes
        ("a.txt", NOW - 10 * MIN, "current"),            // 11:50
        ("b.txt", NOW - 5 * MIN, "current"),             // 11:55
    ];
    let mut fate: BTreeMap<(String, u64), &str> = BTreeMap::new();
    let mut data: BTreeMap<(String, u64), Vec<u8>> = BTreeMap::new();
    for (i, (path, at, what)) in writes.iter().enumerate() {
        clock.set(*at);
        let bytes = content(path, i, 100);
        let v = c.put(path, &bytes).await;
        fate.insert((path.to_string(), v), *what);
        data.insert((path.to_string(), v), bytes);
    }
    clock.set(NOW);
    let of = |what: &str| -> Vec<(String, u64)> {
        fate.iter().filter(|(_, w)| **w == what).map(|(k, _)| k.clone()).collect()
    };
    let pinned = of("pinned")[0].clone();
    let labelled = of("labelled")[0].clone();
    c.history.pin(pb::PinRequest { path: pinned.0.clone(), version: pinned.1, unpin: false }).await.unwrap();
    let at = pb::Point { at: Some(pb::point::At::Version(labelled.1)) };
    c.history
        .set_label(pb::SetLabelRequest { name: "keep-b".into(), at: Some(at), note: String::new() })
        .await
        .unwrap();
    let all_before = [c.versions("a.txt").await, c.versions("b.txt").await];
    assert_eq!(all_before[0].len() + all_before[1].len(), writes.len(), "every write is a version");

    // The dry run lists exactly the versions the rules do not keep, and
    // removes nothing.
    let (listed, summary) = c.prune(true, false).await.unwrap();
    assert_eq!(listed, of("removed"));
    assert_eq!(summary.versions, listed.len() as u64);
    assert_eq!(summary.bytes, 100 * listed.len() as u64, "each removed version had its own 100 bytes");
    assert_eq!([c.versions("a.txt").await, c.versions("b.txt").await], all_before);

    // The prune removes exactly those.
    let (removed, _) = c.prune(false, false).await.unwrap();
    assert_eq!(removed, listed);
    for ((path, v), what) in &fate {
        let kept = c.versions(path).await.contains(v);
        assert_eq!(kept, *what != "removed", "{path} version {v} ({what})");
        match c.read_version(path, *v).await {
            Ok(got) => {
                assert_ne!(*what, "removed", "{path} version {v} still reads");
                assert_eq!(got, data[&(path.clone(), *v)], "{path} version {v} reads back whole");
            }
            Err(s) => {
                assert_eq!(*what, "removed", "{path} version {v}: {s:?}");
                assert_eq!((s.code(), reason(&s).as_str()), (tonic::Code::NotFound, "unknown-version"));
            }
        }
    }
    // Nothing more goes on a second pass.
    assert!(c.prune(false, false).await.unwrap().0.is_empty());

    // An admin's include_immutable removes what only the immutable window
    // kept, and still never the pinned or labelled versions.
    let (removed, _) = c.prune(false, true).await.unwrap();
    assert_eq!(removed, of("immutable"));
    for (path, v) in of("pinned").into_iter().chain(of("labelled")).chain(of("current")).chain(of("kept")) {
        assert!(c.versions(&path).await.contains(&v), "{path} version {v} is kept");
    }
    // Unpinned, the version the pin kept goes with the next prune.
    c.history.pin(pb::PinRequest { path: pinned.0.clone(), version: pinned.1, unpin: true }).await.unwrap();
    assert_eq!(c.prune(false, false).await.unwrap().0, [pinned]);
    assert!(c.versions("b.txt").await.contains(&labelled.1), "the label still keeps its version");
    drop(server);
}

#[tokio::test]
async fn the_size_cap_removes_the_oldest_unprotected_versions_until_history_fits() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(dir.path());
    let cfg =
        config(dir.path(), "[retention]\nkeep_within = \"30d\"\nimmutable = 0\nmax_history_bytes = 3000\n");
    let server = Server::start(dir.path(), &clock, &["--config", &cfg]);
    let mut c = Calls::new(&server.url(), &Security::none());
    clock.set(NOW - 10 * HOUR);
    let mut versions = Vec::new();
    for i in 0..7 {
        clock.advance(HOUR);
        versions.push(c.put("f.bin", &content("f.bin", i, 1000)).await);
    }
    // The oldest is pinned: the cap passes over it.
    c.history.pin(pb::PinRequest { path: "f.bin".into(), version: versions[0], unpin: false }).await.unwrap();
    let before = c.retention().await;
    assert_eq!((before.history_versions, before.history_bytes), (6, 6000));
    let status = c.status().await;
    assert_eq!((status.history_versions, status.history_bytes), (6, 6000));

    let (removed, summary) = c.prune(false, false).await.unwrap();
    // 6000 bytes of history, 3000 allowed: the three oldest unpinned go.
    let expected: Vec<_> = versions[1..4].iter().map(|v| ("f.bin".to_owned(), *v)).collect();
    assert_eq!(removed, expected);
    assert_eq!((summary.versions, summary.bytes), (3, 3000));
    assert_eq!(c.versions("f.bin").await, [versions[0], versions[4], versions[5], versions[6]]);
    let after = c.retention().await;
    assert_eq!((after.history_versions, after.history_bytes), (3, 3000));
    let status = c.status().await;
    assert_eq!((status.history_versions, status.history_bytes), (3, 3000));
    for v in [versions[0], versions[4], versions[5], versions[6]] {
        let i = versions.iter().position(|x| *x == v).unwrap();
        assert_eq!(c.read_version("f.bin", v).await.unwrap(), content("f.bin", i, 1000));
    }
    drop(server);
}

#[tokio::test]
async fn a_retention_set_at_run_time_survives_a_restart_and_the_collector_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(dir.path());
    let metrics_addr = free_addr();
    let flags = ["--history-prune-interval", "200ms", "--metrics-listen", &metrics_addr];
    let server = Server::start(dir.path(), &clock, &flags);
    let mut c = Calls::new(&server.url(), &Security::none());
    // The defaults first (30 days, ...), not set at run time.
    let got = c.retention().await;
    assert!(!got.set_at_run_time);
    assert_eq!(got.retention.unwrap().keep_within_seconds, 30 * 24 * 3600);

    let wanted = pb::Retention {
        keep_within_seconds: 3600,
        guard_percent: 30,
        guard_min_files: 100,
        guard_window_seconds: 300,
        ..Default::default()
    };
    let req = pb::SetRetentionRequest { namespace: String::new(), retention: Some(wanted) };
    let set = c.admin.set_retention(req).await.unwrap().into_inner();
    assert_eq!(set.retention, Some(wanted));
    // A policy that cannot be is refused, and changes nothing.
    let bad = pb::Retention { guard_percent: 101, ..wanted };
    let req = pb::SetRetentionRequest { namespace: String::new(), retention: Some(bad) };
    let refused = c.admin.set_retention(req).await.unwrap_err();
    assert_eq!((refused.code(), reason(&refused).as_str()), (tonic::Code::InvalidArgument, "invalid-field"));

    let server = server.restart(dir.path()).await;
    let mut c = Calls::new(&server.url(), &Security::none());
    let got = c.retention().await;
    assert!(got.set_at_run_time, "the retention set at run time is kept across a restart");
    assert_eq!(got.retention, Some(wanted));

    // Three versions; two hours later the collector removes the two old
    // ones by itself (no prune call).
    let mut versions = Vec::new();
    for i in 0..3 {
        versions.push(c.put("doc.txt", &content("doc.txt", i, 200)).await);
    }
    assert_eq!(c.versions("doc.txt").await, versions);
    eventually("the collector's gauges count the history", || async {
        metric(&metrics_addr, "syncstore_history_versions") == Some(2.0)
            && metric(&metrics_addr, "syncstore_history_bytes") == Some(400.0)
    })
    .await;
    clock.advance(2 * HOUR);
    eventually("the collector prunes the old versions", || {
        let url = server.url();
        async move { Calls::new(&url, &Security::none()).versions("doc.txt").await.len() == 1 }
    })
    .await;
    assert_eq!(c.versions("doc.txt").await, [versions[2]]);
    assert_eq!(c.read_version("doc.txt", versions[2]).await.unwrap(), content("doc.txt", 2, 200));
    eventually("the metrics and status say no history is kept", || {
        let (url, m) = (server.url(), metrics_addr.clone());
        async move {
            let s = Calls::new(&url, &Security::none()).status().await;
            (s.history_versions, s.history_bytes) == (0, 0)
                && metric(&m, "syncstore_history_versions") == Some(0.0)
                && metric(&m, "syncstore_history_bytes") == Some(0.0)
        }
    })
    .await;
    assert_eq!(metric(&metrics_addr, "syncstore_history_pruned_versions_total"), Some(2.0));
}

#[tokio::test]
async fn only_an_admin_reads_or_changes_retention_and_prunes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let tokens = dir.path().join("tokens.toml");
    let mut file = sync_server::auth::TokenFile::default();
    let writer = file.add("alice", "alice", sync_server::auth::Access::ReadWrite).unwrap();
    let admin = file.add("ops", "", sync_server::auth::Access::Admin).unwrap();
    file.save(&tokens).unwrap();
    let server = Server::start(dir.path(), &clock, &["--tokens", tokens.to_str().unwrap()]);
    let as_token = |t: &str| Security { token: Some(t.to_owned()), ..Security::none() };
    let mut alice = Calls::new(&server.url(), &as_token(&writer));
    alice.put("x.txt", b"one").await;
    alice.put("x.txt", b"two").await;

    let denied = |r: Result<(), tonic::Status>| {
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    };
    denied(alice.prune(false, true).await.map(|_| ()));
    denied(alice.prune(true, false).await.map(|_| ()));
    denied(
        alice.admin.get_retention(pb::GetRetentionRequest { namespace: "alice".into() }).await.map(|_| ()),
    );
    let req =
        pb::SetRetentionRequest { namespace: "alice".into(), retention: Some(pb::Retention::default()) };
    denied(alice.admin.set_retention(req).await.map(|_| ()));
    assert_eq!(alice.versions("x.txt").await.len(), 2, "nothing was pruned");

    // The admin: the defaults keep both versions (30 days) ...
    let mut ops = Calls::new(&server.url(), &as_token(&admin));
    let req = pb::PruneHistoryRequest { namespace: "alice".into(), dry_run: false, include_immutable: true };
    let mut s = ops.admin.prune_history(req).await.unwrap().into_inner();
    let mut summary = None;
    while let Some(m) = s.message().await.unwrap() {
        match m.msg.unwrap() {
            pb::prune_history_response::Msg::Version(v) => panic!("removed {v:?}"),
            pb::prune_history_response::Msg::Summary(s) => summary = Some(s),
        }
    }
    assert_eq!(summary.map(|s| s.versions), Some(0));
    // ... a retention that keeps only current versions is applied at once.
    let req = pb::SetRetentionRequest {
        namespace: "alice".into(),
        retention: Some(pb::Retention { keep_within_seconds: 0, ..Default::default() }),
    };
    ops.admin.set_retention(req).await.unwrap();
    eventually("the collector prunes alice's history after SetRetention", || {
        let (url, token) = (server.url(), writer.clone());
        async move { Calls::new(&url, &as_token(&token)).versions("x.txt").await.len() == 1 }
    })
    .await;
    // A namespace name that cannot be one is refused.
    let bad =
        ops.admin.get_retention(pb::GetRetentionRequest { namespace: "No/Such".into() }).await.unwrap_err();
    assert_eq!((bad.code(), reason(&bad).as_str()), (tonic::Code::InvalidArgument, "invalid-field"));
}

#[tokio::test]
async fn pruning_never_removes_content_a_kept_version_or_an_upload_in_flight_refers_to() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    // Nothing but a file's current version is kept.
    let cfg = config(
        dir.path(),
        "[retention]\nkeep_within = 0\nhourly_for = 0\ndaily_for = 0\nweekly_for = 0\nimmutable = 0\n",
    );
    let server = Server::start(dir.path(), &clock, &["--config", &cfg]);
    let url = server.url();
    let mut c = Calls::new(&url, &Security::none());
    const ROUNDS: usize = 40;
    for round in 0..ROUNDS {
        // x.txt's old version (content `old`) becomes prunable, and at the
        // same time `old` is uploaded at a new path: the prune must not
        // remove the content the upload is about to commit, nor the content
        // a kept (pinned) version refers to.
        let old = content("shared", round, 50_000 + round);
        let kept = content("kept", round, 20_000 + round);
        // A pinned old version of y refers to `kept`, and nothing else
        // will once x.txt's versions are pruned.
        let y = format!("y-{round}.txt");
        let pinned = c.put(&y, &kept).await;
        c.put(&y, b"y now").await;
        c.put("x.txt", &old).await;
        c.put("x.txt", &kept).await;
        c.put("x.txt", &content("x.txt", round, 300)).await;
        c.history.pin(pb::PinRequest { path: y.clone(), version: pinned, unpin: false }).await.unwrap();
        let pruning = {
            let url = url.clone();
            tokio::spawn(async move { Calls::new(&url, &Security::none()).prune(false, true).await.unwrap() })
        };
        let uploading = {
            let (url, old) = (url.clone(), old.clone());
            tokio::spawn(async move {
                let mut files = Calls::new(&url, &Security::none());
                files.put(&format!("copy-{round}.bin"), &old).await
            })
        };
        let (pruned, copy) = (pruning.await.unwrap(), uploading.await.unwrap());
        assert!(pruned.0.len() <= 4, "round {round}: {:?}", pruned.0);
        let mut rpc = c.files.clone();
        let got = download(&mut rpc, &format!("copy-{round}.bin")).await;
        let got = got
            .unwrap_or_else(|s| panic!("round {round}: the upload committed at {copy} does not read: {s:?}"));
        assert!(got == old, "round {round}: the upload committed at {copy} reads back as uploaded");
        let read = c.read_version(&y, pinned).await;
        assert!(read.is_ok_and(|k| k == kept), "round {round}: the pinned version of {y} reads back");
    }
    // Every kept version of every file still reads back whole.
    for path in ["x.txt".to_owned()].into_iter().chain((0..ROUNDS).map(|r| format!("copy-{r}.bin"))) {
        for v in c.versions(&path).await {
            assert!(c.read_version(&path, v).await.is_ok(), "{path} version {v} reads back");
        }
    }
    assert_eq!(c.versions("x.txt").await.len(), 1);
    drop(server);
}

/// Downloads the current content of `path`.
async fn download(rpc: &mut FileSyncClient<AuthChannel>, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::DownloadRequest { path: path.into(), version: 0, have_hash: Vec::new() };
    let mut s = rpc.download(req).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        if let Some(pb::download_response::Msg::Chunk(c)) = m.msg {
            out.extend(c);
        }
    }
    Ok(out)
}

/// A loopback address with a free port, for a server's metrics.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The value of the metric `name` the server at `metrics` (host:port)
/// exports.
fn metric(metrics: &str, name: &str) -> Option<f64> {
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body.lines().find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn the_guard_trips_once_on_a_mass_rewrite_and_labels_the_state_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = Clock::new(dir.path());
    let metrics_addr = free_addr();
    // The defaults: more than 30 % of the files and at least 100 within 5
    // minutes.
    let server = Server::start(dir.path(), &clock, &["--metrics-listen", &metrics_addr]);
    let mut c = Calls::new(&server.url(), &Security::none());
    for i in 0..300 {
        c.put(&format!("docs/f{i:03}.txt"), &content("f", i, 64)).await;
    }
    // 20 rewrites: no trip. Then the clock moves past the window.
    for i in 0..20 {
        c.put(&format!("docs/f{i:03}.txt"), &content("edit", i, 64)).await;
    }
    clock.advance(10 * MIN);
    // "Ransomware": 150 of the 300 files rewritten within the window, then
    // 100 more (still the same window: no second trip).
    let first_of_burst = c.put("docs/f100.txt", b"encrypted 100").await;
    for i in 101..250 {
        c.put(&format!("docs/f{i:03}.txt"), format!("encrypted {i}").as_bytes()).await;
    }
    for i in 0..100 {
        c.put(&format!("docs/f{i:03}.txt"), format!("encrypted {i}").as_bytes()).await;
    }
    // A window later, a second burst (deletions this time) trips again.
    clock.advance(10 * MIN);
    let head = c.status().await.head_seq;
    for i in 0..120 {
        let path = format!("docs/f{i:03}.txt");
        let base = c.current[&path];
        c.files
            .delete(pb::DeleteRequest { path, base_version: base, client_id: "t".into(), lock_token: 0 })
            .await
            .unwrap();
    }
    let expected = [format!("guard-{}", first_of_burst - 1), format!("guard-{head}")];
    eventually("the guard labels both bursts", || {
        let url = server.url();
        async move {
            let labels = Calls::new(&url, &Security::none()).labels().await;
            labels.iter().filter(|l| l.automatic && l.name.starts_with("guard-")).count() >= 2
        }
    })
    .await;
    let labels = c.labels().await;
    let guard: Vec<_> = labels.iter().filter(|l| l.name.starts_with("guard-")).collect();
    assert_eq!(guard.iter().map(|l| l.name.clone()).collect::<Vec<_>>(), expected);
    assert_eq!(guard[0].version, first_of_burst - 1, "the label names the state just before the burst");
    assert!(guard.iter().all(|l| l.automatic));
    assert_eq!(c.status().await.guard_trips, 2);
    assert_eq!(metric(&metrics_addr, "syncstore_history_guard_trips_total"), Some(2.0));
    let log = server.log();
    assert_eq!(log.matches("mass change").count(), 2, "{log}");
    // The labelled state has every file as it was before the burst.
    let at = pb::Point { at: Some(pb::point::At::Label(expected[0].clone())) };
    let mut s = c
        .history
        .read_version(pb::ReadVersionRequest { path: "docs/f150.txt".into(), point: Some(at) })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        if let Some(pb::read_version_response::Msg::Chunk(ch)) = m.msg {
            got.extend(ch);
        }
    }
    assert_eq!(got, content("f", 150, 64));
    drop(server);
}

/// Runs `sync-server compare A B [--history]`: its success and output.
async fn compare(a: &str, b: &str, history: bool) -> (bool, String) {
    let mut args = vec!["compare".to_owned(), a.to_owned(), b.to_owned()];
    if history {
        args.push("--history".into());
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_sync-server")).args(&args).output().unwrap()
    })
    .await
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn prunes_reach_the_replica_and_compare_covers_history() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::new(dir.path());
    let (rdir, pdir, sdir) = (dir.path().join("r"), dir.path().join("p"), dir.path().join("s"));
    for d in [&rdir, &pdir, &sdir] {
        std::fs::create_dir(d).unwrap();
    }
    let replica = Server::start(&rdir, &clock, &["--role", "replica"]);
    let primary = Server::start(&pdir, &clock, &["--replica", &replica.url()]);
    let mut p = Calls::new(&primary.url(), &Security::none());
    let mut r = Calls::new(&replica.url(), &Security::none());
    for i in 0..4 {
        p.put("doc.txt", &content("doc.txt", i, 500)).await;
    }
    // Sync replication: the replica has every version once the writes
    // are answered.
    assert_eq!(r.retention().await.history_versions, 3);
    assert!(compare(&primary.url(), &replica.url(), true).await.0, "the same history");

    // Only current versions from now on: the primary's collector prunes at
    // once, and the replica removes the same versions.
    let none = pb::Retention { keep_within_seconds: 0, ..Default::default() };
    let req = pb::SetRetentionRequest { namespace: String::new(), retention: Some(none) };
    p.admin.set_retention(req).await.unwrap();
    // Sync replication: the replica has it once the call is answered.
    let on_replica = r.retention().await;
    assert!(on_replica.set_at_run_time, "the retention reached the replica");
    assert_eq!(on_replica.retention, Some(none));
    eventually("the replica applies the primary's prune", || {
        let url = replica.url();
        async move { Calls::new(&url, &Security::none()).retention().await.history_versions == 0 }
    })
    .await;
    assert_eq!(p.retention().await.history_versions, 0);
    let (same, out) = compare(&primary.url(), &replica.url(), true).await;
    assert!(same, "{out}");
    // A replica prunes nothing itself.
    let refused = r.prune(false, true).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    // Another server with the same tree but another history: compare says
    // so, and counts it as a difference only with --history.
    let other = Server::start(&sdir, &clock, &[]);
    let mut o = Calls::new(&other.url(), &Security::none());
    o.put("doc.txt", &content("elsewhere", 0, 10)).await;
    o.put("doc.txt", &content("doc.txt", 3, 500)).await;
    let (same, out) = compare(&primary.url(), &other.url(), false).await;
    assert!(same && out.contains("history differs"), "{out}");
    let (same, out) = compare(&primary.url(), &other.url(), true).await;
    assert!(!same && out.contains("history differs"), "{out}");
}

#[tokio::test]
async fn a_bad_retention_in_the_config_file_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (text, expected) in [
        ("[retention]\nkeep_within = \"soon\"\n", "[retention] keep_within = \"soon\" is not a duration"),
        ("[retention.team-a]\nguard_percent = 150\n", "[retention.team-a] guard_percent is a percentage"),
        ("[retention]\nkeep_forever = true\n", "[retention] unknown key \"keep_forever\""),
        ("[retentions]\nkeep_last = 1\n", "unknown option \"retentions\""),
    ] {
        let cfg = config(dir.path(), text);
        let args = ["--config", &cfg, "--data", data.to_str().unwrap(), "--listen", "127.0.0.1:0"]
            .map(str::to_owned);
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_sync-server")).args(args).output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{text}: {stderr}");
    }
}
