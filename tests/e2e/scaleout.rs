//! Scale-out end to end: several servers over one PostgreSQL database and
//! one S3 bucket (s3s-fs), each with real clients: changes converge through
//! every process, locks bind across them, the change feed keeps commit
//! order under concurrent writers, a killed process loses nothing it
//! acknowledged, and an outage of PostgreSQL or of the bucket is a clean
//! `UNAVAILABLE` that heals by itself. Also runs the other suites on the
//! shared backend ([`the_suites_hold_on_the_shared_backend`]).

use std::{
    collections::BTreeMap,
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use syncstore::pb::{self, change_event::Kind};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::harness::*;

/// Saves whose cross-process latency is measured.
const SAVES: usize = 60;
/// The bound on the 99th percentile of that latency: generous, the point
/// is that a change reaches another process by push or poll, not a speed
/// figure (the benchmark measures that).
const LATENCY_BOUND: Duration = Duration::from_secs(5);

/// Concurrent writers of the feed-order test, and the writes of each.
const WRITERS: usize = 8;
const WRITES_EACH: usize = 40;

/// The large file of the kill test, and the link it crawls over so that
/// the kill comes mid-upload.
const LARGE: usize = 12 << 20;
const SLOW_LINK: u64 = 2 << 20;
/// Concurrent raw writers of small files while the server is killed, and
/// how many each writes at most.
const BURST_WRITERS: usize = 4;
const BURST_MAX: usize = 2_000;

/// How long the bucket stays away.
const S3_OUTAGE: Duration = Duration::from_secs(20);
/// How long clients may take to converge after an outage or a failover
/// (their backoff grows while the service is away).
const RECOVERY: Duration = Duration::from_secs(120);

/// The next event of `sub` with its arrival time.
async fn arrival(sub: &mut tonic::Streaming<pb::SubscribeResponse>) -> (pb::ChangeEvent, Instant) {
    let ev = next_event(sub).await;
    (ev, Instant::now())
}

async fn subscribe(server: &TestServer, after_seq: u64) -> tonic::Streaming<pb::SubscribeResponse> {
    let mut rpc = server.rpc().await;
    rpc.subscribe(pb::SubscribeRequest { after_seq, client_id: "follower".into() })
        .await
        .unwrap()
        .into_inner()
}

async fn head(server: &TestServer) -> u64 {
    server.rpc().await.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().head_seq
}

/// Whether every server has published the log up to `seq`.
async fn lowest_head_reaches(servers: &[TestServer], seq: u64) -> bool {
    for s in servers {
        if head(s).await < seq {
            return false;
        }
    }
    true
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_three_clients_converge_share_locks_and_push_across_processes() {
    let servers = TestServer::start_group(3).await;
    let clients: Vec<TestClient> = servers.iter().map(|s| TestClient::start(&s.url())).collect();
    let mut want = BTreeMap::new();
    let all_have = |want: &BTreeMap<String, Vec<u8>>| clients.iter().all(|c| c.files() == *want);

    // Created in every folder.
    for (i, c) in clients.iter().enumerate() {
        for name in ["a.txt", "b.txt", "sub/c.txt"] {
            let (path, data) = (format!("from-{i}/{name}"), format!("{name} by {i}").into_bytes());
            c.write(&path, &data);
            want.insert(path, data);
        }
    }
    eventually("every folder has every file", || all_have(&want)).await;

    // Each edits, renames and deletes a file another one created.
    for (i, c) in clients.iter().enumerate() {
        let edited = format!("from-{}/a.txt", (i + 1) % 3);
        let data = format!("edited by {i}").into_bytes();
        c.write(&edited, &data);
        want.insert(edited, data);
        let (from, to) = (format!("from-{}/b.txt", (i + 2) % 3), format!("renamed-by-{i}.txt"));
        std::fs::rename(c.path(&from), c.path(&to)).unwrap();
        let moved = want.remove(&from).unwrap();
        want.insert(to, moved);
        let deleted = format!("from-{}/sub/c.txt", (i + 1) % 3);
        std::fs::remove_file(c.path(&deleted)).unwrap();
        want.remove(&deleted);
    }
    eventually("every folder has every edit, rename and deletion", || all_have(&want)).await;
    for s in &servers {
        assert_eq!(s.files().await, want, "{} serves the same tree", s.url());
    }

    // A lock taken through one server binds through the others.
    let mut rpcs = Vec::new();
    for s in &servers {
        rpcs.push(s.rpc().await);
    }
    let path = "from-0/a.txt";
    let stat = |rpc: &mut Rpc| {
        let mut rpc = rpc.clone();
        async move {
            rpc.stat(pb::StatRequest { path: path.into() }).await.unwrap().into_inner().entry.unwrap().version
        }
    };
    let version = stat(&mut rpcs[0]).await;
    let lock_of = |client: &str| pb::LockRequest {
        path: path.into(),
        ttl_seconds: 60,
        note: "editing".into(),
        client_id: client.into(),
        holder: format!("{client}@laptop"),
    };
    let taken = rpcs[0].lock(lock_of("alice")).await.unwrap().into_inner().lock.unwrap();
    for (i, rpc) in rpcs.iter_mut().enumerate().skip(1) {
        let err = upload(rpc, path, b"overwrite", version).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "server {i}: {err:?}");
        assert!(err.message().contains("alice@laptop"), "server {i} names the holder: {}", err.message());
        let err = rpc.lock(lock_of("bob")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "server {i} refuses a second lock: {err:?}");
        let listed =
            locks_of(rpc.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
        assert_eq!(listed.iter().map(|l| l.path.as_str()).collect::<Vec<_>>(), [path], "server {i}");
    }
    // The holder writes through another server with its token.
    let mut header = upload_header(path, b"alice's edit", version);
    if let Some(pb::upload_request::Msg::Header(h)) = &mut header.msg {
        h.client_id = "alice".into();
        h.lock_token = taken.token;
    }
    let msgs =
        [header, pb::UploadRequest { msg: Some(pb::upload_request::Msg::Chunk(b"alice's edit".to_vec())) }];
    rpcs[2].upload(tokio_stream::iter(msgs.into_iter().chain([upload_end()]))).await.unwrap();
    want.insert(path.into(), b"alice's edit".to_vec());
    // Released through another server, taken again through a third: the
    // fencing token grows across processes.
    rpcs[1]
        .unlock(pb::UnlockRequest { lock_id: taken.lock_id.clone(), client_id: "alice".into(), force: false })
        .await
        .unwrap();
    let bobs = rpcs[2].lock(lock_of("bob")).await.unwrap().into_inner().lock.unwrap();
    assert!(bobs.token > taken.token, "fencing tokens grow: {} then {}", taken.token, bobs.token);
    eventually("every folder has the holder's edit", || all_have(&want)).await;
    for c in clients {
        c.stop().await;
    }

    // Save latency across processes: a save through one server, until the
    // subscribers of the two others see it.
    let head = head(&servers[0]).await;
    let mut subs = Vec::new();
    for s in &servers {
        subs.push(subscribe(s, head).await);
    }
    let mut latencies = Vec::new();
    for i in 0..SAVES {
        let from = i % servers.len();
        let path = format!("latency/{i}.txt");
        let [s0, s1, s2] = subs.as_mut_slice() else { unreachable!("three servers") };
        let start = Instant::now();
        let (saved, a0, a1, a2) =
            tokio::join!(upload(&mut rpcs[from], &path, b"saved", 0), arrival(s0), arrival(s1), arrival(s2));
        let saved = saved.unwrap();
        for (j, (ev, at)) in [a0, a1, a2].into_iter().enumerate() {
            assert_eq!((ev.seq, ev.entry.unwrap().path), (saved.version, path.clone()), "server {j}");
            if j != from {
                latencies.push(at - start);
            }
        }
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
    eprintln!("cross-process save latency over {} deliveries: p50 {p50:?}, p99 {p99:?}", latencies.len());
    assert!(p99 < LATENCY_BOUND, "a save reaches the other processes within {LATENCY_BOUND:?}: p99 {p99:?}");
}

/// What a follower saw: (seq, kind, path, version).
type Seen = Vec<(u64, Kind, String, u64)>;

/// Follows `server`'s feed after `cursor` until the head that `target`
/// announces, checking that every seq comes once, in order, with no gap.
fn follow(
    server: &TestServer,
    cursor: u64,
    mut target: tokio::sync::watch::Receiver<Option<u64>>,
) -> tokio::task::JoinHandle<Seen> {
    let url = server.url();
    tokio::spawn(async move {
        let mut rpc = rpc_with(&url, &syncstore::connect::Security::none());
        let mut sub = rpc
            .subscribe(pb::SubscribeRequest { after_seq: cursor, client_id: "follower".into() })
            .await
            .unwrap()
            .into_inner();
        let mut seen = Seen::new();
        loop {
            let last = seen.last().map_or(cursor, |e| e.0);
            if target.borrow().is_some_and(|t| last >= t) {
                return seen;
            }
            tokio::select! {
                ev = next_event_of(&mut sub) => {
                    assert_eq!(ev.seq, last + 1, "{url} after {cursor}: the seq after {last}");
                    let entry = ev.entry.clone().unwrap_or_default();
                    seen.push((ev.seq, ev.kind(), entry.path, entry.version));
                }
                _ = target.changed() => {}
            }
        }
    })
}

/// [`next_event`], for a `select!`.
async fn next_event_of(sub: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::ChangeEvent {
    next_event(sub).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_three_servers_give_every_subscriber_every_seq_once_in_order() {
    let servers = TestServer::start_group(3).await;
    // The mass-change guard would label the burst: a history-only change
    // that takes a seq and is never sent to clients. Off, every seq of the
    // run is a file's and every follower must see each one.
    let mut admin = servers[0].admin().await;
    let mut retention = admin
        .get_retention(pb::GetRetentionRequest { namespace: String::new() })
        .await
        .unwrap()
        .into_inner()
        .retention
        .unwrap();
    retention.guard_window_seconds = 0;
    admin
        .set_retention(pb::SetRetentionRequest { namespace: String::new(), retention: Some(retention) })
        .await
        .unwrap();
    let set_at = head(&servers[0]).await;
    eventually_async("every server has the retention change", || lowest_head_reaches(&servers, set_at)).await;
    let (target_tx, target) = tokio::sync::watch::channel(None);
    let start = head(&servers[0]).await;
    let mut followers =
        vec![follow(&servers[0], start, target.clone()), follow(&servers[1], start, target.clone())];

    // Each writer writes through one server; half of its writes edit a file
    // it wrote before (based on the version it got).
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut rpc = servers[w % servers.len()].rpc().await;
        writers.push(tokio::spawn(async move {
            let mut versions = BTreeMap::<String, u64>::new();
            let mut acked = Vec::new();
            for k in 0..WRITES_EACH {
                let path = format!("w{w}/{}.txt", k % (WRITES_EACH / 2));
                let base = versions.get(&path).copied().unwrap_or(0);
                let entry = upload(&mut rpc, &path, format!("{w}/{k}").as_bytes(), base).await.unwrap();
                versions.insert(path.clone(), entry.version);
                acked.push((path, entry.version));
            }
            acked
        }));
    }
    // The third subscriber joins mid-way: its replay races the writers.
    let total = (WRITERS * WRITES_EACH) as u64;
    eventually_async("half the writes are in", || async { head(&servers[2]).await >= start + total / 2 })
        .await;
    let joined = head(&servers[2]).await;
    followers.push(follow(&servers[2], joined, target.clone()));

    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    // Each process learns of the others' last commits by LISTEN or its poll,
    // so their heads agree a moment after the last acknowledgement.
    let last = start + total;
    eventually_async("every server's head reaches the last write", || lowest_head_reaches(&servers, last))
        .await;
    for s in &servers {
        assert_eq!(head(s).await, last, "no server's head is past the last write");
    }
    let heads = vec![last; servers.len()];
    target_tx.send_replace(Some(heads[0]));
    let mut seen = Vec::new();
    for f in followers {
        seen.push(tokio::time::timeout(DEADLINE, f).await.expect("every follower reaches the head").unwrap());
    }

    // Every acknowledged write is in the feed once, at its version.
    let mut puts: Vec<(String, u64)> =
        seen[0].iter().filter(|e| e.1 == Kind::Put).map(|e| (e.2.clone(), e.0)).collect();
    puts.sort();
    acked.sort();
    assert_eq!(puts, acked, "the feed holds exactly the acknowledged writes");
    assert!(seen[0].iter().all(|e| e.1 != Kind::Put || e.3 == e.0), "a put's version is its seq");
    // Each follower ends at the head, and all saw the same feed.
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.last().map(|e| e.0), Some(heads[0]), "follower {i} ends at the head");
    }
    assert_eq!(seen[1], seen[0], "the followers of servers 0 and 1 saw the same feed");
    let from = seen[0].iter().position(|e| e.0 == joined + 1).unwrap();
    assert_eq!(seen[2], seen[0][from..], "the follower that joined saw the rest of the same feed");
}

/// Files of the mass-change test, and how many of them it rewrites (the
/// guard's defaults trip at more than 30 % and at least 100 files).
const MASS_FILES: usize = 130;
const MASS_REWRITES: usize = 110;
/// How long the guard's trip count must stay at one: the other processes
/// have published the burst by then and would have tripped within it.
const ONE_TRIP_HOLDS: Duration = Duration::from_secs(3);

async fn guard_trips(servers: &[TestServer]) -> u64 {
    let mut trips = 0;
    for s in servers {
        trips += s.status().await.guard_trips;
    }
    trips
}

/// One process at a time watches the feed for mass changes: a burst
/// written through one server trips the guard once among all of them (and
/// the others do not each read every change's previous version back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_change_trips_the_guard_of_one_process_only() {
    let servers = TestServer::start_group(3).await;
    let mut rpc = servers[1].rpc().await;
    let mut versions = Vec::new();
    for i in 0..MASS_FILES {
        versions.push(upload(&mut rpc, &format!("docs/f{i:03}"), b"plain", 0).await.unwrap().version);
    }
    for (i, base) in versions.iter().enumerate().take(MASS_REWRITES) {
        upload(&mut rpc, &format!("docs/f{i:03}"), format!("encrypted {i}").as_bytes(), *base).await.unwrap();
    }
    let last = head(&servers[1]).await;
    eventually_async("the guard trips", || async { guard_trips(&servers).await >= 1 }).await;
    eventually_async("every server published the burst", || lowest_head_reaches(&servers, last)).await;
    let until = Instant::now() + ONE_TRIP_HOLDS;
    while Instant::now() < until {
        assert_eq!(guard_trips(&servers).await, 1, "one process watches for mass changes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_nothing_acknowledged_and_shows_nothing_half_written() {
    let backend = Services::of_process().fresh_backend();
    let mut a = ServerProcess::start(&backend).await;
    let b = ServerProcess::start(&backend).await;
    // The client reaches A over a slow link, so that its large upload is in
    // flight when A dies; B is its second server.
    let link = Proxy::start_throttled(a.addr, SLOW_LINK).await;
    let client = TestClient::start_servers(vec![link.url(), b.url()], tempfile::tempdir().unwrap());
    client.write("before.txt", "before");
    eventually_async("the client's first file is on B", || async {
        complete_files(&b.url()).await.contains_key("before.txt")
    })
    .await;

    let large = random_bytes(LARGE, 7);
    client.write("large.bin", &large);
    // Small commits straight to A, several at a time, until it dies.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut burst = Vec::new();
    for w in 0..BURST_WRITERS {
        let (url, acked) = (a.url(), acked.clone());
        burst.push(tokio::spawn(async move {
            let mut rpc = rpc_with(&url, &syncstore::connect::Security::none());
            for k in 0..BURST_MAX {
                let (path, data) = (format!("burst/{w}-{k}.txt"), format!("{w}/{k}").into_bytes());
                match upload(&mut rpc, &path, &data, 0).await {
                    Ok(_) => acked.lock().unwrap().push((path, data)),
                    Err(_) => return true, // A is gone.
                }
            }
            false
        }));
    }
    eventually("A is mid-upload of the large file and mid-burst", || {
        link.sent() >= (LARGE / 4) as u64 && acked.lock().unwrap().len() >= 50
    })
    .await;
    a.kill();
    for task in burst {
        assert!(task.await.unwrap(), "the kill came mid-burst");
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged write is there through B, intact; whatever B lists
    // is complete (`complete_files` checks each against its hash).
    let on_b = complete_files(&b.url()).await;
    assert!(!on_b.contains_key("large.bin"), "the kill came mid-upload");
    for (path, data) in &acked {
        assert_eq!(on_b.get(path), Some(data), "acknowledged {path} is on B");
    }
    // The client fails over to B: the large file and a later one arrive.
    client.write("after.txt", "after the kill");
    eventually_within(RECOVERY, "the client's files reach B intact", || async {
        let on_b = complete_files(&b.url()).await;
        on_b.get("large.bin") == Some(&large) && on_b.get("after.txt").is_some_and(|d| d == b"after the kill")
    })
    .await;
    assert_eq!(client.read("large.bin").as_ref(), Some(&large), "the client's copy is untouched");
    drop(client);
    eprintln!("{} small commits acknowledged before the kill; B's log:\n{}", acked.len(), tail(&b.output()));
}

/// The last lines of a process's output.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// How `server`'s health service reports FileSync.
async fn health(server: &TestServer) -> Option<ServingStatus> {
    let mut health = HealthClient::new(syncstore::connect::Security::none().channel(&server.url()).ok()?);
    let req = HealthCheckRequest { service: "syncstore.v1.FileSync".into() };
    let status = health.check(req).await.ok()?.into_inner().status;
    ServingStatus::try_from(status).ok()
}

async fn all_report(servers: &[TestServer], want: ServingStatus) -> bool {
    for s in servers {
        if health(s).await != Some(want) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarting_and_the_bucket_away_are_unavailable_then_everything_resumes() {
    // Services of its own: this test stops them.
    let mut services = Services::start();
    let servers = TestServer::start_group_over(&services.fresh_backend(), 2, |_| {}).await;
    let a = TestClient::start(&servers[0].url());
    let b = TestClient::start(&servers[1].url());
    a.write("before.txt", "before");
    eventually("b has a's file", || b.read("before.txt").is_some()).await;
    let mut rpc = servers[1].rpc().await;

    // PostgreSQL restarts while both clients write.
    services.postgres.stop();
    let err = upload(&mut rpc, "refused.txt", b"no database", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually_async("health reports NOT_SERVING without PostgreSQL", || {
        all_report(&servers, ServingStatus::NotServing)
    })
    .await;
    a.write("during-postgres-a.txt", "written while PostgreSQL was down");
    b.write("during-postgres-b.txt", "this one too");
    services.postgres.start_again();
    eventually_async("health reports SERVING again", || all_report(&servers, ServingStatus::Serving)).await;
    eventually_within(RECOVERY, "both folders converge after PostgreSQL's restart", || async {
        let files = a.files();
        files.len() == 3 && b.files() == files
    })
    .await;

    // The bucket goes away for a while.
    services.s3.stop();
    let away = Instant::now();
    // (Small content lives in PostgreSQL; this one goes to the bucket.)
    let big = random_bytes(64 << 10, 1);
    let err = upload(&mut rpc, "refused.bin", &big, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually_async("health reports NOT_SERVING without the bucket", || {
        all_report(&servers, ServingStatus::NotServing)
    })
    .await;
    a.write("during-s3.bin", random_bytes(256 << 10, 2));
    // The outage's length is the scenario, not what the test waits on.
    tokio::time::sleep_until((away + S3_OUTAGE).into()).await;
    services.s3.start_again();
    eventually_async("health reports SERVING again", || all_report(&servers, ServingStatus::Serving)).await;
    eventually_within(RECOVERY, "both folders converge after the bucket's return", || async {
        let files = a.files();
        files.len() == 4 && b.files() == files
    })
    .await;

    // Nothing refused shows, and whatever is listed is complete.
    let want = a.files();
    for s in &servers {
        assert_eq!(complete_files(&s.url()).await, want, "{} holds exactly the folders' files", s.url());
    }
}

/// Runs `cmd` to its end within [`DEADLINE`].
fn run_bounded(cmd: &mut Command, deadline: Duration) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the command starts");
    let start = Instant::now();
    while child.try_wait().expect("wait on the command").is_none() {
        if start.elapsed() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} ran past {deadline:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn a_replica_with_a_shared_backend_is_refused_saying_why() {
    let backend = Services::of_process().fresh_backend();
    // The binary, before it opens anything.
    for flags in [["--replica", "http://127.0.0.1:9"], ["--role", "replica"]] {
        let data = tempfile::tempdir().unwrap();
        let out = run_bounded(ServerProcess::command(&backend, data.path()).args(flags), DEADLINE);
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} is refused: {said}");
        assert!(said.contains("PostgreSQL"), "{flags:?}: the refusal says why: {said}");
    }
    // The library too.
    for replica in [false, true] {
        let data = tempfile::tempdir().unwrap();
        let mut config = sync_server::Config::new(data.path().join("data"));
        config.backend = backend.clone();
        if replica {
            config.role = sync_server::Role::Replica;
        } else {
            config.replica = Some(sync_server::ReplicaConfig {
                url: "http://127.0.0.1:9".into(),
                mode: sync_server::Mode::Async,
                timeout: DEADLINE,
                on_timeout: sync_server::OnTimeout::Fail,
                security: Default::default(),
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = sync_server::run(config, listener, tokio_util::sync::CancellationToken::new());
        let err = tokio::time::timeout(DEADLINE, served).await.expect("refused at once").unwrap_err();
        assert!(err.to_string().contains("PostgreSQL"), "the refusal says why: {err}");
    }
}

/// The suites that run on both backends.
const SUITES: [&str; 6] = ["sync::", "api::", "locks::", "badinput::", "security::", "model::"];

/// The tests of [`SUITES`] that cannot hold on a shared backend, and why.
const EMBEDDED_ONLY: [(&str, &str); 7] = [
    ("api::a_cancelled_upload_leaves_nothing", "watches the data folder's blob and temp folders"),
    ("badinput::every_bad_input_gets_its_code_and_changes_nothing", "runs a primary with a replica"),
    ("badinput::uploads_beyond_the_slots_wait_briefly_then_are_refused", "watches the blob folder"),
    ("locks::locks_survive_a_restart_reach_the_replica_and_bind_a_promoted_replica", "a replica, promoted"),
    ("security::the_replication_link_needs_its_own_credential", "a replica"),
    ("security::client_certificates_when_the_server_asks", "a replica (over TLS)"),
    ("security::one_namespace_cannot_take_every_upload_slot", "counts the data folder's temp files"),
];

/// How long the suites may take on the shared backend.
const SUITES_DEADLINE: Duration = Duration::from_secs(900);

/// The same test binary, run again with [`BACKEND_VAR`]`=postgres` over
/// [`SUITES`]: every server those tests start runs on a fresh PostgreSQL
/// database and bucket.
#[test]
fn the_suites_hold_on_the_shared_backend() {
    if on_shared_backend() {
        eprintln!("skipping: this run is already on the shared backend");
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(SUITES).env(BACKEND_VAR, "postgres");
    for (test, _why) in EMBEDDED_ONLY {
        cmd.args(["--skip", test]);
    }
    let start = Instant::now();
    let out = run_bounded(&mut cmd, SUITES_DEADLINE);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the suites fail on the shared backend:\n{stdout}\n{stderr}");
    let summary = stdout.lines().filter(|l| l.starts_with("test result")).collect::<Vec<_>>().join("\n");
    eprintln!("the suites on the shared backend, in {:?}: {summary}", start.elapsed());
}
