//! A seeded randomized test: two real clients (one of them sometimes
//! offline) and a real server, random creates, edits, deletes and renames
//! racing the watchers; then everything must converge without losing the
//! last version of any path.
//!
//! `SYNCSTORE_SEEDS=N` runs N seeds (default 4); `SYNCSTORE_SEED=S` runs
//! only seed S (a failure prints it).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use tempfile::TempDir;

use crate::harness::*;

const PATHS: &[&str] = &["a.txt", "b.txt", "d/c.txt", "d/e/f.txt", "g"];
const OPS: usize = 30;

enum Side {
    Online(TestClient),
    Offline(TempDir),
}

impl Side {
    fn root(&self) -> std::path::PathBuf {
        match self {
            Side::Online(c) => c.root(),
            Side::Offline(d) => d.path().canonicalize().unwrap(),
        }
    }

    async fn set_online(self, online: bool, url: &str) -> Side {
        match (self, online) {
            (Side::Offline(d), true) => Side::Online(TestClient::start_in(url, d)),
            (Side::Online(c), false) => Side::Offline(c.stop().await),
            (s, _) => s,
        }
    }
}

/// What the user did last to a path, in the test's order.
#[derive(Debug, Clone)]
enum Last {
    Wrote(String),
    Deleted,
}

/// Whether `name` is `path` or a conflict copy of it.
fn is_copy_of(name: &str, path: &str) -> bool {
    if name == path {
        return true;
    }
    let (dir, file) = path.rsplit_once('/').map_or(("", path), |(d, f)| (d, f));
    let stem = file.rsplit_once('.').map_or(file, |(s, _)| s);
    let prefix = if dir.is_empty() {
        format!("{stem} (conflict from ")
    } else {
        format!("{dir}/{stem} (conflict from ")
    };
    name.starts_with(&prefix)
}

async fn run_seed(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let server = TestServer::start().await;
    let url = server.url();
    let mut sides = [Side::Online(TestClient::start(&url)), Side::Online(TestClient::start(&url))];
    let mut last: BTreeMap<&str, Last> = BTreeMap::new();
    let mut log = Vec::new();

    for i in 0..OPS {
        let who = rng.random_range(0..sides.len());
        let root = sides[who].root();
        let path = PATHS[rng.random_range(0..PATHS.len())];
        let exists = root.join(path).is_file();
        match rng.random_range(0..10) {
            // Client 1 goes offline or comes back.
            0 => {
                let online = matches!(sides[1], Side::Offline(_));
                let side = std::mem::replace(&mut sides[1], Side::Offline(tempfile::tempdir().unwrap()));
                sides[1] = side.set_online(online, &url).await;
                log.push(format!("{i}: client 1 {}", if online { "online" } else { "offline" }));
            }
            1..=2 if exists => {
                std::fs::remove_file(root.join(path)).unwrap();
                last.insert(path, Last::Deleted);
                log.push(format!("{i}: client {who} deletes {path}"));
            }
            3 if exists => {
                let to = PATHS[rng.random_range(0..PATHS.len())];
                if to != path {
                    let content = std::fs::read_to_string(root.join(path)).unwrap();
                    std::fs::create_dir_all(root.join(to).parent().unwrap()).unwrap();
                    std::fs::rename(root.join(path), root.join(to)).unwrap();
                    last.insert(path, Last::Deleted);
                    last.insert(to, Last::Wrote(content));
                    log.push(format!("{i}: client {who} renames {path} to {to}"));
                }
            }
            _ => {
                let content = format!("seed {seed} op {i} by client {who}");
                write(&root, path, &content);
                last.insert(path, Last::Wrote(content));
                log.push(format!("{i}: client {who} writes {path}"));
            }
        }
        if rng.random_bool(0.3) {
            // Sometimes let things happen in between.
            tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(1..30))).await;
        }
    }

    let side = std::mem::replace(&mut sides[1], Side::Offline(tempfile::tempdir().unwrap()));
    sides[1] = side.set_online(true, &url).await;
    let (a, b) = (sides[0].root(), sides[1].root());
    let converged = || async {
        let (fa, fb) = (tree(&a), tree(&b));
        fa == fb && server.files().await == fa
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !converged().await {
        if tokio::time::Instant::now() >= deadline {
            let show = |t: BTreeMap<String, Vec<u8>>| {
                t.into_iter()
                    .map(|(k, v)| format!("  {k} = {}", String::from_utf8_lossy(&v)))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            panic!(
                "seed {seed} did not converge (rerun: SYNCSTORE_SEED={seed})\n{}\nA:\n{}\nB:\n{}\nserver:\n{}",
                log.join("\n"),
                show(tree(&a)),
                show(tree(&b)),
                show(server.files().await)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let files = tree(&a);
    for (path, what) in &last {
        if let Last::Wrote(content) = what {
            let kept = files.iter().any(|(name, data)| is_copy_of(name, path) && data == content.as_bytes());
            assert!(
                kept,
                "seed {seed}: the last version of {path} was lost (rerun: SYNCSTORE_SEED={seed})\n{}\nfinal: {:#?}",
                log.join("\n"),
                files.iter().map(|(k, v)| (k, String::from_utf8_lossy(v))).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_converge_without_losing_the_last_version() {
    let seeds: Vec<u64> = match std::env::var("SYNCSTORE_SEED") {
        Ok(s) => vec![s.parse().expect("SYNCSTORE_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SYNCSTORE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        run_seed(seed).await;
    }
}

#[test]
fn conflict_copies_are_recognised() {
    assert!(is_copy_of("d/c (conflict from h 2026-01-01 000000).txt", "d/c.txt"));
    assert!(is_copy_of("g (conflict from h 2026-01-01 000000 2)", "g"));
    assert!(!is_copy_of("d/x (conflict from h 2026-01-01 000000).txt", "d/c.txt"));
}
