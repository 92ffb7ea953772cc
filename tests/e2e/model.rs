//! A seeded randomized test of whole systems: three real clients and a
//! real server; random creates, edits, deletes and renames (files that
//! clash with folders included) race the watchers while clients go
//! offline, crash in the middle of whatever they do and come back, lose
//! their connections (a proxy per client drops what is in flight), and the
//! server restarts. (Deliveries cannot be reordered: every stream is
//! ordered and every change carries its seq.) At the end, with everyone online, it checks:
//!
//! - convergence: every folder equals the server's manifest, empty folders
//!   included;
//! - no data loss: the last version written to every path is still there,
//!   under its name or as a conflict copy (or under a renamed folder);
//! - no resurrection: a path deleted when every client had caught up on it
//!   (and the deleting client had recorded its last version) stays deleted;
//! - every conflict copy is named by the documented scheme and holds, byte
//!   for byte, a version some client wrote;
//! - the server's sequence numbers have no gap and every client's cursor
//!   reached the head.
//!
//! Some writes are bursts of 1-4 in-place saves (truncate, then write)
//! 0-200 ms apart. A second run has a single writer saving in place in such
//! bursts while two clients follow (its connections dropping, its client
//! crashing now and then): it must make no conflict copy at all, and the
//! last save must win everywhere.
//!
//! `SYNCSTORE_SEEDS=N` runs N seeds (default 25, about 10 s, and 4 of the
//! single-writer run); `SYNCSTORE_SEED=S` runs only seed S (a failure prints it).

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng, rngs::StdRng};
use syncstore::pb;
use tempfile::TempDir;

use crate::harness::*;

/// "d" and "g/h" clash with "d/c.txt" and "g": a file where a folder is.
const PATHS: &[&str] = &["a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "g", "d", "g/h"];
const OPS: usize = 40;
const CLIENTS: usize = 3;

enum Side {
    Online(Box<TestClient>),
    Offline(TempDir),
}

impl Side {
    fn root(&self) -> std::path::PathBuf {
        match self {
            Side::Online(c) => c.root(),
            Side::Offline(d) => d.path().canonicalize().unwrap(),
        }
    }

    async fn set_online(self, online: bool, url: &str, all_in_lane: bool) -> Side {
        match (self, online) {
            (Side::Offline(d), true) => Side::Online(Box::new(start_client(url, d, all_in_lane))),
            (Side::Online(c), false) => Side::Offline(c.stop().await),
            (s, _) => s,
        }
    }

    async fn crash(self) -> Side {
        match self {
            Side::Online(c) => Side::Offline(c.crash().await),
            s => s,
        }
    }
}

/// What the user did last to a path, in the test's order.
#[derive(Debug, Clone)]
enum Last {
    Wrote(String),
    /// Deleted (or renamed away); `caught_up`: every client then held the
    /// last written version or nothing at that path, and the deleting one
    /// had recorded that version as synced.
    Deleted {
        caught_up: bool,
    },
}

/// `component` without its conflict-copy marks, each of which must be
/// ` (conflict from HOST YYYY-MM-DD HHMMSS[ N])` right before the extension
/// (a copy of a copy has two); `None` if a mark is malformed.
fn strip_copies(component: &str) -> Option<String> {
    let mut name = component.to_owned();
    while let Some(at) = name.rfind(" (conflict from ") {
        let close = at + name[at..].find(')')?;
        let inner = &name[at + " (conflict from ".len()..close];
        // HOST YYYY-MM-DD HHMMSS, then an optional counter of 2 or more.
        let mut words: Vec<&str> = inner.split(' ').collect();
        if words.last().is_some_and(|n| n.len() < 6 && n.parse::<u32>().is_ok_and(|n| n >= 2)) {
            words.pop();
        }
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let [.., date, time] = words.as_slice() else { return None };
        if words.len() < 3
            || date.len() != 10
            || !digits(&date.replace('-', ""))
            || time.len() != 6
            || !digits(time)
        {
            return None;
        }
        // The mark sits before the extension (or at the end).
        let rest = &name[close + 1..];
        if !(rest.is_empty() || (rest.starts_with('.') && !rest[1..].contains(' '))) {
            return None;
        }
        name = format!("{}{rest}", &name[..at]);
    }
    Some(name)
}

/// Whether `name` is `path`, or `path` with components (a file, or folders
/// that were renamed aside) replaced by conflict copies' names.
fn is_copy_of(name: &str, path: &str) -> bool {
    let (n, p): (Vec<&str>, Vec<&str>) = (name.split('/').collect(), path.split('/').collect());
    n.len() == p.len() && n.iter().zip(&p).all(|(n, p)| strip_copies(n).as_deref() == Some(*p))
}

/// Whether `name` is a conflict copy of anything (some component is).
fn is_any_copy(name: &str) -> bool {
    name.split('/').any(|c| c.contains(" (conflict from "))
}

/// Records one step of the run (and logs it, for `SYNCSTORE_TEST_LOG`).
fn note(log: &mut Vec<String>, step: String) {
    tracing::info!(step = %step, "model step");
    log.push(step);
}

fn show(t: &BTreeMap<String, Vec<u8>>) -> String {
    t.iter().map(|(k, v)| format!("  {k} = {}", String::from_utf8_lossy(v))).collect::<Vec<_>>().join("\n")
}

/// Every change's seq, from the start, up to `head`.
async fn all_seqs(server: &TestServer, head: u64) -> Vec<u64> {
    let mut rpc = server.rpc().await;
    let mut s = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "model".into() })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|&l| l < head) {
        seqs.push(next_event(&mut s).await.seq);
    }
    seqs
}

/// A client watching `dir`; with `all_in_lane`, every transfer runs in the
/// large lane, beside its engine's loop.
fn start_client(url: &str, dir: TempDir, all_in_lane: bool) -> TestClient {
    if all_in_lane { TestClient::start_all_in_lane(url, dir) } else { TestClient::start_in(url, dir) }
}

async fn run_seed(seed: u64, all_in_lane: bool) {
    init_test_log();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = TestServer::start().await;
    // Each client reaches the server through its own proxy, whose
    // connections the run cuts now and then.
    let mut proxies = Vec::new();
    for _ in 0..CLIENTS {
        proxies.push(Proxy::start(server.addr).await);
    }
    let urls: Vec<String> = proxies.iter().map(Proxy::url).collect();
    let mut sides: Vec<Side> = urls
        .iter()
        .map(|u| Side::Online(Box::new(start_client(u, tempfile::tempdir().unwrap(), all_in_lane))))
        .collect();
    for (i, s) in sides.iter().enumerate() {
        tracing::info!(seed, client = i, dir = %s.root().display(), "model client");
    }
    let mut last: BTreeMap<&str, Last> = BTreeMap::new();
    let large_tail: String = random_bytes(768 * 1024, seed).iter().map(|b| format!("{b:02x}")).collect();
    // A write truncates, then writes: a client can catch the file empty in
    // between, a state it then rightly syncs.
    let mut written: BTreeSet<String> = BTreeSet::from([String::new()]);
    let mut log = Vec::new();

    for i in 0..OPS {
        let who = rng.random_range(0..sides.len());
        let root = sides[who].root();
        let path = PATHS[rng.random_range(0..PATHS.len())];
        let exists = root.join(path).is_file();
        // Whether every client holds the last version of `path`, or nothing.
        let caught_up = |last: &BTreeMap<&str, Last>, sides: &[Side]| {
            let want = match last.get(path) {
                Some(Last::Wrote(c)) => Some(c.clone().into_bytes()),
                _ => None,
            };
            // The deleting client must also have recorded that version as
            // synced: a client that crashed after placing a download but
            // before recording it cannot tell its deletion from never
            // having had it, and rightly keeps the file.
            let recorded = want.as_ref().is_some_and(|w| {
                let rel = syncstore::RelPath::new(path).unwrap();
                sync_client::State::open_shared(&root)
                    .and_then(|st| st.base(&rel))
                    .is_ok_and(|b| b.is_some_and(|b| b.hash == syncstore::ContentHash::of(w)))
            });
            recorded
                && sides.iter().all(|s| {
                    let p = s.root().join(path);
                    !p.exists() || (p.is_file() && std::fs::read(&p).ok() == want)
                })
        };
        let op = rng.random_range(0..17);
        match op {
            // A client (not the first) goes offline, or comes back.
            0 => {
                let c = rng.random_range(1..sides.len());
                let online = matches!(sides[c], Side::Offline(_));
                let side = std::mem::replace(&mut sides[c], Side::Offline(tempfile::tempdir().unwrap()));
                sides[c] = side.set_online(online, &urls[c], all_in_lane).await;
                note(&mut log, format!("{i}: client {c} {}", if online { "online" } else { "offline" }));
            }
            // A client crashes wherever it is.
            1 => {
                let c = rng.random_range(1..sides.len());
                let side = std::mem::replace(&mut sides[c], Side::Offline(tempfile::tempdir().unwrap()));
                sides[c] = side.crash().await;
                note(&mut log, format!("{i}: client {c} crashes"));
            }
            // The server restarts.
            2 => {
                server = server.restart().await;
                note(&mut log, format!("{i}: the server restarts"));
            }
            // A client's network drops: whatever was in flight is lost.
            13 => {
                let c = rng.random_range(0..sides.len());
                proxies[c].cut();
                note(&mut log, format!("{i}: client {c}'s connections drop"));
            }
            3..=4 if exists => {
                let caught_up = caught_up(&last, &sides);
                // The client may have moved the file meanwhile: then the
                // user's action did not happen.
                if std::fs::remove_file(root.join(path)).is_ok() {
                    last.insert(path, Last::Deleted { caught_up });
                    note(&mut log, format!("{i}: client {who} deletes {path}"));
                }
            }
            5 if exists => {
                let to = PATHS[rng.random_range(0..PATHS.len())];
                let target = root.join(to);
                let parent_ok = target.parent().is_none_or(|p| !p.is_file());
                if to != path && parent_ok && !target.is_dir() && !to.starts_with(&format!("{path}/")) {
                    let caught_up = caught_up(&last, &sides);
                    let moved = (|| {
                        let content = std::fs::read_to_string(root.join(path))?;
                        std::fs::create_dir_all(target.parent().unwrap())?;
                        std::fs::rename(root.join(path), &target)?;
                        Ok::<_, std::io::Error>(content)
                    })();
                    if let Ok(content) = moved {
                        last.insert(path, Last::Deleted { caught_up });
                        last.insert(to, Last::Wrote(content));
                        note(&mut log, format!("{i}: client {who} renames {path} to {to}"));
                    }
                }
            }
            _ => {
                // A file where this client has a folder (or below a file)
                // cannot be written here; the user would pick another name.
                let target = root.join(path);
                let blocked = target.is_dir()
                    || std::path::Path::new(path)
                        .ancestors()
                        .skip(1)
                        .any(|a| root.join(a).is_file() && !a.as_os_str().is_empty());
                // Sometimes a burst of in-place saves (truncate, then
                // write) 0-200 ms apart, as an editor saving repeatedly.
                let saves = if op >= 15 { rng.random_range(1..=4) } else { 1 };
                for save in 0..saves {
                    if save > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..=200))).await;
                    }
                    // A quarter of the writes are large (over 1 MiB, several
                    // chunks, sharing all but their first with each other).
                    let mut content = format!("seed {seed} op {i}.{save} by client {who}");
                    if rng.random_bool(0.25) {
                        content.push('\n');
                        content.push_str(&large_tail);
                    }
                    let wrote = !blocked
                        && (|| {
                            std::fs::create_dir_all(target.parent().unwrap())?;
                            std::fs::write(&target, &content)
                        })()
                        .is_ok();
                    if wrote {
                        written.insert(content.clone());
                        last.insert(path, Last::Wrote(content));
                        note(&mut log, format!("{i}: client {who} writes {path} (save {save} of {saves})"));
                    }
                }
            }
        }
        if rng.random_bool(0.3) {
            // Sometimes let things happen in between.
            tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(1..30))).await;
        }
    }

    for (c, side) in sides.iter_mut().enumerate() {
        let s = std::mem::replace(side, Side::Offline(tempfile::tempdir().unwrap()));
        *side = s.set_online(true, &urls[c], all_in_lane).await;
    }
    let roots: Vec<_> = sides.iter().map(Side::root).collect();
    let fail = |what: String, server_files: &BTreeMap<String, Vec<u8>>| -> ! {
        let folders: Vec<String> = roots
            .iter()
            .enumerate()
            .map(|(i, r)| format!("client {i}:\n{}\n  empty folders: {:?}", show(&tree(r)), empty_dirs(r)))
            .collect();
        panic!(
            "seed {seed}: {what} (rerun: SYNCSTORE_SEED={seed})\n{}\n{}\nserver:\n{}",
            log.join("\n"),
            folders.join("\n"),
            show(server_files)
        )
    };
    let converged = || async {
        let (first, dirs) = (tree(&roots[0]), empty_dirs(&roots[0]));
        roots.iter().all(|r| tree(r) == first && empty_dirs(r) == dirs) && server.files().await == first
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !converged().await {
        if tokio::time::Instant::now() >= deadline {
            fail("did not converge".into(), &server.files().await);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let files = server.files().await;

    // No data loss.
    for (path, what) in &last {
        if let Last::Wrote(content) = what {
            let kept = files.iter().any(|(name, data)| is_copy_of(name, path) && data == content.as_bytes());
            if !kept {
                fail(format!("the last version of {path} was lost"), &files);
            }
        }
    }
    // No resurrection.
    for (path, what) in &last {
        if let Last::Deleted { caught_up: true } = what
            && files.contains_key(*path)
        {
            fail(format!("{path} was deleted by a client that had its last version, and came back"), &files);
        }
    }
    // Conflict copies: named by the scheme, holding a written version.
    for (name, data) in &files {
        if is_any_copy(name) {
            let named = PATHS.iter().any(|p| is_copy_of(name, p));
            let held = written.contains(&String::from_utf8_lossy(data).into_owned());
            if !named || !held {
                fail(format!("the conflict copy {name} is misnamed or holds unknown content"), &files);
            }
        }
    }
    // Gap-free sequence numbers; every cursor at the head.
    let head = server.status().await.head_seq;
    let seqs = all_seqs(&server, head).await;
    if seqs != (1..=head).collect::<Vec<_>>() {
        fail(format!("the change log has gaps: {seqs:?}"), &files);
    }
    for (i, root) in roots.iter().enumerate() {
        let state = sync_client::State::open_shared(root).unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while state.cursor().unwrap() != head {
            if tokio::time::Instant::now() >= deadline {
                fail(
                    format!("client {i}'s cursor stays at {} (head {head})", state.cursor().unwrap()),
                    &files,
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// One writer saves files in place (truncate, then write) in bursts of 1-4
/// saves 0-200 ms apart while its client watches, two other clients
/// follow, and the writer's connections drop now and then and its client
/// sometimes crashes (an upload's answer lost). Nobody else touches the
/// files, so there must be no conflict copy at all, and the last save of
/// each file must be on the server and in every folder under its name.
async fn run_single_writer_seed(seed: u64) {
    init_test_log();
    const FILES: &[&str] = &["doc.txt", "d/notes.txt"];
    const BURSTS: usize = 12;
    let mut rng = StdRng::seed_from_u64(seed);
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut writer = Side::Online(Box::new(TestClient::start(&proxy.url())));
    let readers = [TestClient::start(&server.url()), TestClient::start(&server.url())];
    let root = writer.root();
    let mut last: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut log = Vec::new();
    for burst in 0..BURSTS {
        let path = FILES[rng.random_range(0..FILES.len())];
        let saves = rng.random_range(1..=4);
        for save in 0..saves {
            if save > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..=200))).await;
            }
            // Sizes up to 3 MiB, so that a save takes a moment and a read
            // can catch the file truncated or half written; half the saves
            // edit the file's previous content (an overwrite, an insert or
            // a cut somewhere in it), so large files travel as runs
            // against their previous version.
            let mut content = format!("seed {seed} burst {burst} save {save}\n").into_bytes();
            let fresh = seed * 1000 + burst as u64 * 10 + save;
            match last.get(path) {
                Some(prev) if rng.random_bool(0.5) => content.extend(edited_body(prev, &mut rng, fresh)),
                _ => content.extend(random_bytes(rng.random_range(0..3 << 20), fresh)),
            }
            std::fs::create_dir_all(root.join(path).parent().unwrap()).unwrap();
            std::fs::write(root.join(path), &content).unwrap();
            note(
                &mut log,
                format!("burst {burst}: save {save} of {saves} to {path}, {} bytes", content.len()),
            );
            last.insert(path, content);
        }
        match rng.random_range(0..8) {
            0 => {
                proxy.cut();
                note(&mut log, format!("burst {burst}: the writer's connections drop"));
            }
            1 => {
                writer = Side::Online(Box::new(TestClient::start_in(
                    &proxy.url(),
                    match writer {
                        Side::Online(c) => c.crash().await,
                        Side::Offline(d) => d,
                    },
                )));
                note(&mut log, format!("burst {burst}: the writer's client crashes and restarts"));
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(0..300))).await;
    }

    let folders = || [root.clone(), readers[0].root(), readers[1].root()];
    let want: BTreeMap<String, Vec<u8>> = last.iter().map(|(p, c)| ((*p).to_owned(), c.clone())).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let server_files = server.files().await;
        let settled = server_files == want || server_files.keys().any(|n| is_any_copy(n));
        if settled && folders().iter().all(|r| tree(r) == server_files) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let shown: Vec<String> = folders().iter().map(|r| show_sizes(&tree(r))).collect();
            panic!(
                "seed {seed}: did not converge on the last saves (rerun: SYNCSTORE_SEED={seed})\n{}\nfolders:\n{}\nserver:\n{}",
                log.join("\n"),
                shown.join("\n--\n"),
                show_sizes(&server_files)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let server_files = server.files().await;
    let copies: Vec<&String> = server_files.keys().filter(|n| is_any_copy(n)).collect();
    assert!(
        copies.is_empty(),
        "seed {seed}: conflict copies of files only one client wrote: {copies:?} (rerun: SYNCSTORE_SEED={seed})\n{}",
        log.join("\n")
    );
    assert!(server_files == want, "seed {seed}: the last saves are not what the server holds");
    if let Side::Online(w) = writer {
        w.stop().await;
    }
    for r in readers {
        r.stop().await;
    }
}

/// The body of `prev` (what follows its first line) with one random edit:
/// up to 100,000 bytes overwritten, inserted or cut at a random place.
fn edited_body(prev: &[u8], rng: &mut StdRng, seed: u64) -> Vec<u8> {
    let start = prev.iter().position(|&b| b == b'\n').map_or(0, |n| n + 1);
    let mut body = prev[start..].to_vec();
    let at = rng.random_range(0..=body.len());
    let n = rng.random_range(1..100_000);
    let end = (at + n).min(body.len());
    match rng.random_range(0..3) {
        0 => drop(body.splice(at..end, random_bytes(end - at, seed))),
        1 => drop(body.splice(at..at, random_bytes(n, seed))),
        _ => drop(body.drain(at..end)),
    }
    body
}

/// Paths and sizes (and a short hash) of a folder's files.
fn show_sizes(t: &BTreeMap<String, Vec<u8>>) -> String {
    t.iter()
        .map(|(k, v)| format!("  {k}: {} bytes, {}", v.len(), &syncstore::ContentHash::of(v).to_hex()[..12]))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_writer_saving_in_place_in_bursts_makes_no_conflict_copy() {
    for seed in seeds(4) {
        run_single_writer_seed(seed).await;
    }
}

/// The seeds to run: `SYNCSTORE_SEED`, or 1 to `SYNCSTORE_SEEDS` (else
/// `default`).
fn seeds(default: u64) -> Vec<u64> {
    match std::env::var("SYNCSTORE_SEED") {
        Ok(s) => vec![s.parse().expect("SYNCSTORE_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SYNCSTORE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
            (1..=n).collect()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_converge_without_losing_the_last_version() {
    for seed in seeds(25) {
        run_seed(seed, false).await;
    }
}

/// The same, with every transfer in the large lane: transfers run beside
/// the engine's loop while it goes on with other paths, as large files do.
/// (Fewer seeds by default: the two runs share the suite's time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_converge_with_every_transfer_beside_the_loop() {
    for seed in seeds(10) {
        run_seed(seed, true).await;
    }
}

#[test]
fn conflict_copies_are_recognised() {
    assert!(is_copy_of("d/c (conflict from h 2026-01-01 000000).txt", "d/c.txt"));
    assert!(is_copy_of("g (conflict from h 2026-01-01 000000 2)", "g"));
    assert!(is_copy_of("d (conflict from my host 2026-01-01 000000)/c.txt", "d/c.txt"));
    assert!(!is_copy_of("d/x (conflict from h 2026-01-01 000000).txt", "d/c.txt"));
    assert!(!is_copy_of("g (conflict from h yesterday)", "g"));
    assert!(!is_copy_of("d (conflict from h 2026-01-01 000000)/x.txt", "d/c.txt"));
    assert!(is_copy_of(
        "d (conflict from h 2026-01-01 000000)/c (conflict from h 2026-01-01 000000).txt",
        "d/c.txt"
    ));
    assert!(is_copy_of("d (conflict from h 2026-01-01 000000 2) (conflict from h 2026-01-01 000001)", "d"));
    assert!(!is_copy_of("d (conflict from h 2026-01-01 000000) x", "d"));
}
