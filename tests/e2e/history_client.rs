//! The client's history commands against a real server, with real clients
//! watching their folders: a restore, an undelete and a rewind reach every
//! folder; history follows a move; old and deleted versions read back
//! whole; bad input names the server's reason. Each command runs as
//! `sync-client --dir FOLDER VERB ...` runs it (its arguments parsed by the
//! same flags), in this process.

use std::path::Path;

use clap::Parser;
use sync_client::history::{self, Target, Verb};

use crate::harness::*;

/// A history command line, as the client program parses it.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

/// Runs `sync-client --dir FOLDER ARGS...` for `client`'s folder: its
/// stdout, or its error.
async fn cli(client: &TestClient, args: &[&str]) -> sync_client::Result<Vec<u8>> {
    let Cli { verb } = Cli::try_parse_from(std::iter::once("sync-client").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?} parses: {e}"));
    let config = client.config();
    let target = Target { servers: config.servers, security: config.security, dir: Some(client.root()) };
    let mut out = Vec::new();
    history::run(verb, &target, &mut out).await.map(|()| out)
}

/// [`cli`]'s output as text; the command must succeed.
async fn ok(client: &TestClient, args: &[&str]) -> String {
    match cli(client, args).await {
        Ok(out) => String::from_utf8(out).unwrap(),
        Err(e) => panic!("{args:?} failed: {e}"),
    }
}

/// The lines of a `--json` command, parsed.
async fn json(client: &TestClient, args: &[&str]) -> Vec<serde_json::Value> {
    ok(client, args).await.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A version's field as text.
fn text<'a>(v: &'a serde_json::Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("{field} in {v}"))
}

fn number(v: &serde_json::Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Now, in milliseconds since the Unix epoch, as RFC 3339 (UTC).
fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

#[tokio::test]
async fn a_restored_version_reaches_every_client() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("report.txt", "the version to keep");
    eventually("b has the first version", || {
        b.read("report.txt").as_deref() == Some(&b"the version to keep"[..])
    })
    .await;
    a.write("report.txt", "overwritten by mistake");
    eventually("b has the overwrite", || {
        b.read("report.txt").as_deref() == Some(&b"overwritten by mistake"[..])
    })
    .await;

    let versions = json(&a, &["history", "report.txt", "--json"]).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    let first = number(&versions[1], "version");
    assert!(number(&versions[0], "version") > first, "newest first: {versions:?}");
    assert_eq!(text(&versions[1], "kind"), "write");

    let said = ok(&a, &["restore", "report.txt", "--version", &first.to_string()]).await;
    assert!(said.starts_with("restored"), "{said}");
    for (name, c) in [("a", &a), ("b", &b)] {
        eventually(&format!("{name} has the restored version"), || {
            c.read("report.txt").as_deref() == Some(&b"the version to keep"[..])
        })
        .await;
    }
    let versions = json(&a, &["history", "report.txt", "--json"]).await;
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(text(&versions[0], "kind"), "restore");
    assert_eq!(number(&versions[0], "restored_from"), first);
    // The restore is no upload of the folder's own: nothing sends the
    // overwrite again over it.
    server_settles(&server, "report.txt", b"the version to keep").await;
}

/// Waits until the server's file `path` holds `data`, then checks that it
/// still does once both clients had time to act on it.
async fn server_settles(server: &TestServer, path: &str, data: &[u8]) {
    eventually_async("the server holds the content", || async {
        server.files().await.get(path).map(Vec::as_slice) == Some(data)
    })
    .await;
    let head = server.status().await.head_seq;
    // Another change to the file would come within the clients' debounce;
    // the log's head must not move.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(server.status().await.head_seq, head, "nothing wrote over the restore");
    assert_eq!(server.files().await.get(path).map(Vec::as_slice), Some(data));
}

#[tokio::test]
async fn an_undelete_brings_back_a_deleted_folder_of_500_files_everywhere() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    for i in 0..500 {
        a.write(&format!("album/photo-{i:03}.jpg"), format!("photo {i}, {}", "x".repeat(i)));
    }
    let before = a.files();
    eventually("b has the 500 files", || b.files() == before).await;

    std::fs::remove_dir_all(a.path("album")).unwrap();
    eventually("the deletion reached b", || !b.path("album").exists()).await;
    eventually_async("the server has no file left", || async { server.files().await.is_empty() }).await;

    let trash = json(&a, &["trash", "album", "--json"]).await;
    assert_eq!(trash.len(), 500, "every deleted file is in the trash");
    // A deleted file named by its absolute path, its folder gone too.
    let gone = a.path("album/photo-042.jpg");
    let versions = json(&a, &["history", gone.to_str().unwrap(), "--json"]).await;
    let kinds: Vec<&str> = versions.iter().map(|v| text(v, "kind")).collect();
    assert_eq!(kinds, ["delete", "write"], "{versions:?}");
    let dry = ok(&a, &["undelete", "--under", "album", "--dry-run"]).await;
    assert!(dry.contains("would bring back 500 file(s)"), "{dry}");
    assert!(server.files().await.is_empty(), "a dry run changes nothing");

    let said = ok(&a, &["undelete", "--under", "album"]).await;
    assert!(said.contains("brought back 500 file(s)"), "{said}");
    eventually("a has every file back", || a.files() == before).await;
    eventually("b has every file back", || b.files() == before).await;
    assert_eq!(server.files().await, before);

    let versions = json(&a, &["history", "album/photo-042.jpg", "--json"]).await;
    let kinds: Vec<&str> = versions.iter().map(|v| text(v, "kind")).collect();
    assert_eq!(kinds, ["restore", "delete", "write"], "{versions:?}");
    assert_eq!(number(&versions[0], "restored_from"), number(&versions[2], "version"));
}

#[tokio::test]
async fn a_rewind_undoes_a_ransomware_run_in_every_folder() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    for i in 0..300 {
        a.write(&format!("work/doc-{i:03}.txt"), format!("document {i}: {}", "text ".repeat(i % 40)));
    }
    let before = a.files();
    eventually("b has the 300 files", || b.files() == before).await;
    eventually_async("the server has them", || async { server.files().await == before }).await;
    let clean = rfc3339_now();
    // Past the millisecond of the last clean change.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    // Every file replaced by garbage.
    for (i, path) in before.keys().enumerate() {
        a.write(path, random_bytes(200 + i, i as u64));
    }
    let garbage = a.files();
    assert!(garbage.iter().all(|(p, d)| before[p] != *d));
    eventually("the garbage reached b", || b.files() == garbage).await;

    let dry = ok(&a, &["rewind", ".", "--to", &clean, "--dry-run"]).await;
    assert!(dry.contains("changes 300 file(s)"), "{dry}");
    assert_eq!(b.files(), garbage, "a dry run changes nothing");

    // The burst tripped the server's guard, which labelled the state just
    // before it: rewinding to that label undoes it.
    eventually_async("the guard labelled the state before the burst", || async {
        guard_label(&a).await.is_some()
    })
    .await;
    let guard = guard_label(&a).await.unwrap();
    let dry = ok(&a, &["rewind", ".", "--to", &format!("label:{guard}"), "--dry-run"]).await;
    assert!(dry.contains("changes 300 file(s)"), "{dry}");
    let said = ok(&a, &["rewind", ".", "--to", &format!("label:{guard}"), "--yes"]).await;
    assert!(said.contains("rewound: 300 file(s) changed"), "{said}");
    eventually("a is as before", || a.files() == before).await;
    eventually("b is as before", || b.files() == before).await;
    assert_eq!(server.files().await, before);

    // The rewind labelled the state before it: the garbage is not lost
    // either, and rewinding to that label would bring it back.
    let labels = json(&a, &["labels", "--json"]).await;
    let label = labels
        .iter()
        .find(|l| text(l, "name").starts_with("before-rewind-"))
        .unwrap_or_else(|| panic!("a before-rewind label in {labels:?}"));
    assert!(label["automatic"].as_bool().unwrap());
    let name = text(label, "name");
    let then = cli(&a, &["cat", &format!("work/doc-007.txt@label:{name}")]).await.unwrap();
    assert_eq!(then, garbage["work/doc-007.txt"]);
}

/// The name of the label the mass-change guard set, if it did.
async fn guard_label(client: &TestClient) -> Option<String> {
    let labels = json(client, &["labels", "--json"]).await;
    let trip = labels.iter().find(|l| text(l, "name").starts_with("guard-") && l["automatic"] == true);
    trip.map(|l| text(l, "name").to_owned())
}

#[tokio::test]
async fn history_follows_a_move() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    let b = TestClient::start(&server.url());
    a.write("draft.txt", "first draft");
    eventually("b has the draft", || b.read("draft.txt").as_deref() == Some(&b"first draft"[..])).await;
    a.write("draft.txt", "second draft");
    eventually("b has the second draft", || b.read("draft.txt").as_deref() == Some(&b"second draft"[..]))
        .await;

    std::fs::rename(a.path("draft.txt"), a.path("final.txt")).unwrap();
    eventually("the move reached b", || {
        b.read("final.txt").as_deref() == Some(&b"second draft"[..]) && b.read("draft.txt").is_none()
    })
    .await;

    let versions = json(&a, &["history", "final.txt", "--json"]).await;
    let seen: Vec<(&str, &str)> = versions.iter().map(|v| (text(v, "path"), text(v, "kind"))).collect();
    assert_eq!(seen, [("final.txt", "move"), ("draft.txt", "write"), ("draft.txt", "write")], "{versions:?}");
    assert_eq!(text(&versions[0], "moved_from"), "draft.txt");
    let lines = ok(&a, &["history", "final.txt"]).await;
    assert!(lines.lines().next().unwrap().contains("move from draft.txt"), "{lines}");
    // The old name's deletion ended the move: it is no file in the trash.
    let trash = json(&a, &["trash", "--json"]).await;
    assert!(trash.is_empty(), "{trash:?}");
    let first = number(&versions[2], "version");
    let old = ok(&a, &["cat", &format!("draft.txt@{first}")]).await;
    assert_eq!(old, "first draft");
    // A version `history final.txt` lists reads back by that name too, and
    // comes back under it.
    assert_eq!(ok(&a, &["cat", &format!("final.txt@{first}")]).await, "first draft");
    ok(&a, &["restore", "final.txt", "--version", &first.to_string()]).await;
    for (name, c) in [("a", &a), ("b", &b)] {
        eventually(&format!("{name} has the first draft as final.txt"), || {
            c.read("final.txt").as_deref() == Some(&b"first draft"[..]) && c.read("draft.txt").is_none()
        })
        .await;
    }
}

#[tokio::test]
async fn old_and_deleted_versions_read_back_and_bad_input_names_its_reason() {
    let server = TestServer::start().await;
    let a = TestClient::start(&server.url());
    a.write("notes.txt", "one");
    eventually_async("the first version is on the server", || async {
        server.files().await.get("notes.txt").map(Vec::as_slice) == Some(&b"one"[..])
    })
    .await;
    let between = rfc3339_now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    a.write("notes.txt", "two, longer");
    eventually_async("the second version is on the server", || async {
        server.files().await.get("notes.txt").map(Vec::as_slice) == Some(&b"two, longer"[..])
    })
    .await;
    let versions = json(&a, &["history", "notes.txt", "--json"]).await;
    let (second, first) = (number(&versions[0], "version"), number(&versions[1], "version"));

    assert_eq!(ok(&a, &["cat", &format!("notes.txt@{first}")]).await, "one");
    assert_eq!(ok(&a, &["cat", &format!("notes.txt@{between}")]).await, "one");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("notes-then.txt");
    ok(&a, &["get", &format!("notes.txt@{first}"), "-o", file.to_str().unwrap()]).await;
    assert_eq!(std::fs::read(&file).unwrap(), b"one");
    assert_eq!(entries(out.path()), ["notes-then.txt"], "no temp file is left beside it");

    let browse = json(&a, &["browse", "--at", &between, "--json"]).await;
    let listed: Vec<(&str, u64)> = browse.iter().map(|v| (text(v, "path"), number(v, "version"))).collect();
    assert_eq!(listed, [("notes.txt", first)]);

    std::fs::remove_file(a.path("notes.txt")).unwrap();
    eventually_async("the deletion is on the server", || async { server.files().await.is_empty() }).await;
    // A deleted file's last version reads back.
    assert_eq!(ok(&a, &["cat", &format!("notes.txt@{second}")]).await, "two, longer");
    let trash = ok(&a, &["trash"]).await;
    assert!(trash.starts_with("notes.txt  deleted "), "{trash}");
    let diff = json(&a, &["diff", ".", "--from", &between, "--json"]).await;
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!((text(&diff[0], "path"), text(&diff[0], "change")), ("notes.txt", "deleted"));
    assert_eq!(number(&diff[0]["before"], "version"), first);

    // Bad input: the server's reason is in the error, and nothing changed.
    let head = server.status().await.head_seq;
    let e = cli(&a, &["cat", "notes.txt@99999"]).await.expect_err("no such version");
    assert!(e.to_string().contains("unknown-version"), "{e}");
    let e = cli(&a, &["restore", "notes.txt", "--version", "99999"]).await.expect_err("no such version");
    assert!(e.to_string().contains("unknown-version"), "{e}");
    let e = cli(&a, &["cat", "notes.txt@label:no-such-label"]).await.expect_err("no such label");
    assert!(e.to_string().contains("unknown-label"), "{e}");
    let e = cli(&a, &["browse", "--at", "2001-01-01T00:00:00Z"]).await.expect_err("before history");
    assert!(e.to_string().contains("before-history"), "{e}");
    assert_eq!(server.status().await.head_seq, head, "refused commands change nothing");
    assert!(a.read("notes.txt").is_none());
}

/// The names in a folder.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}
