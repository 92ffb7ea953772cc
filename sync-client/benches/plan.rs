//! The planner over a folder of 100,000 paths: `plan::decide` alone, and
//! with the step before it in a full sync (the union of the local scan, the
//! bases and the server's manifest, in path order).
//!
//! `cargo bench -p sync-client --bench plan`

use std::{
    collections::{BTreeSet, HashMap},
    hint::black_box,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sync_client::plan::{self, Action, Base, Local};
use syncstore::{Content, ContentHash, Entry, RelPath};

const PATHS: usize = 100_000;

struct Folder {
    local: HashMap<RelPath, Local>,
    bases: HashMap<RelPath, Base>,
    remote: HashMap<RelPath, Entry>,
}

/// 100,000 paths in 1,000 folders, as after a sync, with a few of each
/// kind of difference: 1% edited here, 1% edited on the server, 0.5% new
/// here, 0.5% new on the server, 0.2% deleted here, 0.2% deleted there,
/// 0.1% edited on both sides.
fn folder() -> Folder {
    let mut f = Folder { local: HashMap::new(), bases: HashMap::new(), remote: HashMap::new() };
    for i in 0..PATHS {
        let path =
            RelPath::new(format!("d{:02}/e{}/f{:03}.bin", i / 1000, i / 100 % 10, i % 100)).expect("path");
        let hash = ContentHash::of(&(i as u64).to_le_bytes());
        let other = ContentHash::of(&(i as u64 + PATHS as u64).to_le_bytes());
        let version = i as u64 + 1;
        let local = Local {
            hash,
            size: 1024,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            executable: false,
            symlink: false,
            folder: false,
            stamp: i as u64,
        };
        let base = Base {
            version,
            hash,
            size: 1024,
            mtime_ns: local.mtime_ns,
            executable: false,
            symlink: false,
            folder: false,
            stamp: local.stamp,
        };
        let entry = |version, hash| Entry {
            path: path.clone(),
            version,
            content: Some(Content {
                hash,
                size: 1024,
                mtime_ns: local.mtime_ns,
                executable: false,
                symlink: false,
                folder: false,
            }),
            client_id: "other".into(),
        };
        match i % 1000 {
            0..=9 => {
                // Edited here.
                f.local.insert(path.clone(), Local { hash: other, ..local });
                f.bases.insert(path.clone(), base);
                let e = entry(version, hash);
                f.remote.insert(path, e);
            }
            10..=19 => {
                // Edited on the server.
                f.local.insert(path.clone(), local);
                f.bases.insert(path.clone(), base);
                let e = entry(version + PATHS as u64, other);
                f.remote.insert(path, e);
            }
            20..=24 => {
                f.local.insert(path, local);
            }
            25..=29 => {
                f.remote.insert(path.clone(), entry(version, hash));
            }
            30..=31 => {
                f.bases.insert(path.clone(), base);
                let e = entry(version, hash);
                f.remote.insert(path, e);
            }
            32..=33 => {
                f.local.insert(path.clone(), local);
                f.bases.insert(path.clone(), base);
                let e = Entry { content: None, ..entry(version + PATHS as u64, hash) };
                f.remote.insert(path, e);
            }
            34 => {
                f.local.insert(path.clone(), Local { hash: other, ..local });
                f.bases.insert(path.clone(), base);
                let e = entry(version + PATHS as u64, ContentHash::of(b"theirs"));
                f.remote.insert(path, e);
            }
            _ => {
                f.local.insert(path.clone(), local);
                f.bases.insert(path.clone(), base);
                let e = entry(version, hash);
                f.remote.insert(path, e);
            }
        }
    }
    f
}

/// Whether `plan::decide` finds something to do about a file.
fn acts(local: Option<&Local>, base: Option<&Base>, remote: Option<&Entry>) -> bool {
    plan::decide(plan::Side::Entry(local.copied()), base, remote).is_some_and(|d| d.action != Action::Nothing)
}

fn plan_100k(c: &mut Criterion) {
    let f = folder();
    let paths: BTreeSet<&RelPath> = f.local.keys().chain(f.bases.keys()).chain(f.remote.keys()).collect();
    let triples: Vec<_> =
        paths.iter().map(|p| (f.local.get(*p), f.bases.get(*p), f.remote.get(*p))).collect();
    let to_do = triples.iter().filter(|(l, b, r)| acts(*l, *b, *r)).count();
    assert!(to_do > 3_000 && to_do < 4_000, "{to_do} actions");

    let mut group = c.benchmark_group("plan_100k");
    group.throughput(Throughput::Elements(triples.len() as u64));
    group.bench_function("decide", |b| {
        b.iter(|| {
            triples.iter().filter(|(l, b, r)| acts(black_box(*l), black_box(*b), black_box(*r))).count()
        })
    });
    group.sample_size(20);
    group.bench_function("join_and_decide", |b| {
        b.iter(|| {
            let paths: BTreeSet<&RelPath> =
                f.local.keys().chain(f.bases.keys()).chain(f.remote.keys()).collect();
            paths.into_iter().filter(|p| acts(f.local.get(*p), f.bases.get(*p), f.remote.get(*p))).count()
        })
    });
    group.finish();
}

criterion_group!(benches, plan_100k);
criterion_main!(benches);
