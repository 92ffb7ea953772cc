//! Bad input sent straight over gRPC: every case gets its exact status code
//! and changes nothing, neither the manifest, head and digest (every
//! namespace) of the primary and its replica nor their blob and temp
//! folders. The servers check tokens, so the cases include missing and
//! unknown tokens, tokens used beyond their access, and a token of another
//! namespace reaching for this one's files. Also the upload slots, and a
//! property test of the upload stream against a live server.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use proptest::prelude::*;
use sync_server::{Mode, OnTimeout};
use syncstore::{
    ContentHash,
    connect::Security,
    limits::MAX_CHUNK,
    pb::{self, point::At, upload_request},
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::harness::*;

/// The primary's idle timeout in these tests: a stalled upload is cut off
/// quickly, while honest ones (all sent at once) never come near it.
const IDLE: Duration = Duration::from_secs(1);
/// The primary's file size limit, so that 10 GiB is beyond it.
const MAX_FILE: u64 = 1 << 30;

fn header(path: &str, size: u64, hash: Vec<u8>, base_version: u64) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            path: path.into(),
            size,
            hash,
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            base_version,
            client_id: "badinput".into(),
            ..Default::default()
        })),
    }
}

fn chunk(data: &[u8]) -> pb::UploadRequest {
    pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data.to_vec())) }
}

fn hash(data: &[u8]) -> Vec<u8> {
    ContentHash::of(data).as_bytes().to_vec()
}

/// A correct upload of `data` to `path`: header, then 1 MiB chunks.
fn put(path: &str, data: &[u8], base_version: u64) -> Vec<pb::UploadRequest> {
    let mut msgs = vec![header(path, data.len() as u64, hash(data), base_version)];
    msgs.extend(data.chunks(MAX_CHUNK).map(chunk));
    msgs
}

/// What a case sends.
enum Call {
    /// An upload stream of these messages, then the end marker and the
    /// stream's end.
    Upload(Vec<pb::UploadRequest>),
    /// An upload stream of these messages, then the stream's end without
    /// the end marker (a client that gave up, or broke off).
    Unended(Vec<pb::UploadRequest>),
    /// These messages, then silence with the stream left open.
    Stalled(Vec<pb::UploadRequest>),
    Delete(&'static str, u64),
    Download(&'static str, u64),
    Stat(&'static str),
    List(&'static str),
    /// A `Stat` carrying this many bytes of metadata.
    StatWithMetadata(usize),
    /// A listing that must show nothing (`DATA_LOSS` if it shows anything).
    ListNothing,
    /// A subscription from this cursor that must send nothing within
    /// [`QUIET`] (`DATA_LOSS` if it sends an event).
    SubscribeNothing(u64),
    /// A replication stream's hello.
    Replicate,
    /// `Admin/Digest`.
    Digest,
    /// A `History` call.
    History(HistoryCall),
}

/// A `History` call that writes, or could.
enum HistoryCall {
    Restore(pb::RestoreRequest),
    Undelete(pb::UndeleteRequest),
    Rewind(pb::RewindRequest),
    SetLabel(pb::SetLabelRequest),
    Pin(pb::PinRequest),
}

fn restore(path: &str, point: pb::point::At, to_path: &str, base_version: u64) -> Call {
    Call::History(HistoryCall::Restore(pb::RestoreRequest {
        path: path.into(),
        point: Some(pb::Point { at: Some(point) }),
        to_path: to_path.into(),
        client_id: "badinput".into(),
        base_version,
        lock_token: 0,
    }))
}

fn rewind_to(point: pb::point::At) -> Call {
    Call::History(HistoryCall::Rewind(pb::RewindRequest {
        under: String::new(),
        to: Some(pb::Point { at: Some(point) }),
        client_id: "badinput".into(),
        dry_run: false,
    }))
}

fn undelete(glob: String) -> Call {
    Call::History(HistoryCall::Undelete(pb::UndeleteRequest {
        glob,
        client_id: "badinput".into(),
        ..Default::default()
    }))
}

fn set_label(name: &str) -> Call {
    Call::History(HistoryCall::SetLabel(pb::SetLabelRequest {
        name: name.into(),
        at: None,
        note: String::new(),
    }))
}

fn pin(path: &str, version: u64) -> Call {
    Call::History(HistoryCall::Pin(pb::PinRequest { path: path.into(), version, unpin: false }))
}

/// How long a subscription that must stay silent is listened to.
const QUIET: Duration = Duration::from_millis(300);

/// Whose token a case presents.
#[derive(Clone, Copy, Debug)]
enum Who {
    /// Read-write, in the namespace the seed files are in.
    Writer,
    /// No token at all.
    Nobody,
    /// A token the server does not know.
    Stranger,
    /// Read-only, same namespace.
    Viewer,
    /// Read-write, another namespace.
    Neighbour,
    Admin,
    Replication,
}

impl Who {
    /// What this caller presents, with the tokens of `tokens`.
    fn security(self, tokens: &Tokens) -> Security {
        let t = match self {
            Who::Writer => &tokens.alice,
            Who::Nobody => return Security::none(),
            Who::Stranger => "sst_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            Who::Viewer => &tokens.alice_ro,
            Who::Neighbour => &tokens.bob,
            Who::Admin => &tokens.admin,
            Who::Replication => &tokens.replication,
        };
        token(t)
    }
}

/// Which server a case talks to.
#[derive(Clone, Copy)]
enum On {
    Primary,
    Replica,
}

struct Case {
    name: &'static str,
    on: On,
    who: Who,
    call: Call,
    want: Code,
}

fn case(name: &'static str, want: Code, call: Call) -> Case {
    Case { name, on: On::Primary, who: Who::Writer, call, want }
}

fn case_as(who: Who, name: &'static str, want: Code, call: Call) -> Case {
    Case { who, ..case(name, want, call) }
}

/// Everything a bad input must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    manifest: Vec<pb::FileEntry>,
    head: u64,
    /// Every namespace's live files, as the admin digest sees them.
    digest: Vec<u8>,
    /// How many contents the server stores, and their bytes.
    stored: (u64, u64),
    tmp: BTreeSet<PathBuf>,
}

/// Every file and folder below `dir`, relative to it.
fn entries(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_owned());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

async fn manifest(rpc: &mut Rpc) -> Vec<pb::FileEntry> {
    let req = pb::ListRequest { prefix: String::new(), include_deleted: true, ..Default::default() };
    entries_of(rpc.list(req).await.unwrap().into_inner()).await.unwrap()
}

async fn snapshot(server: &TestServer, tokens: &Tokens) -> Snapshot {
    let mut rpc = rpc_with(&server.url(), &Who::Writer.security(tokens));
    let head = rpc.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().head_seq;
    let mut admin =
        pb::admin_client::AdminClient::new(Who::Admin.security(tokens).channel(&server.url()).unwrap());
    let digest = admin.digest(pb::DigestRequest {}).await.unwrap().into_inner();
    Snapshot {
        manifest: manifest(&mut rpc).await,
        head,
        digest: digest.root_hash,
        stored: stored_content_of(&server.url(), &Who::Admin.security(tokens)).await,
        tmp: entries(&server.data_dir().join("tmp")),
    }
}

/// Runs `call` as `security` on `url` and returns its status: the call's,
/// or the first error on its response stream.
async fn run(url: &str, security: &Security, call: Call) -> Result<(), tonic::Status> {
    let mut rpc = rpc_with(url, security);
    let rpc = &mut rpc;
    match call {
        Call::Upload(mut msgs) => {
            msgs.push(upload_end());
            rpc.upload(tokio_stream::iter(msgs)).await.map(drop)
        }
        Call::Unended(msgs) => rpc.upload(tokio_stream::iter(msgs)).await.map(drop),
        Call::Stalled(msgs) => {
            rpc.upload(tokio_stream::iter(msgs).chain(tokio_stream::pending())).await.map(drop)
        }
        Call::Delete(path, base_version) => rpc
            .delete(pb::DeleteRequest {
                path: path.into(),
                base_version,
                client_id: "badinput".into(),
                lock_token: 0,
            })
            .await
            .map(drop),
        Call::Download(path, version) => {
            let mut s = rpc
                .download(pb::DownloadRequest { path: path.into(), version, have_hash: Vec::new() })
                .await?
                .into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        Call::Stat(path) => rpc.stat(pb::StatRequest { path: path.into() }).await.map(drop),
        Call::List(prefix) => {
            let req = pb::ListRequest { prefix: prefix.into(), include_deleted: true, ..Default::default() };
            let mut s = rpc.list(req).await?.into_inner();
            while s.message().await?.is_some() {}
            Ok(())
        }
        Call::StatWithMetadata(len) => {
            let mut req = tonic::Request::new(pb::StatRequest { path: "seed.txt".into() });
            req.metadata_mut().insert("x-padding", "p".repeat(len).parse().unwrap());
            rpc.stat(req).await.map(drop)
        }
        Call::ListNothing => {
            match entries_of(rpc.list(pb::ListRequest::default()).await?.into_inner()).await?.first() {
                Some(e) => Err(tonic::Status::data_loss(format!("listed {}", e.path))),
                None => Ok(()),
            }
        }
        Call::SubscribeNothing(after_seq) => {
            let req = pb::SubscribeRequest { after_seq, client_id: "badinput".into() };
            let mut events = rpc.subscribe(req).await?.into_inner();
            match tokio::time::timeout(QUIET, events.message()).await {
                Ok(Ok(Some(e))) => Err(tonic::Status::data_loss(format!("sent {e:?}"))),
                Ok(Ok(None)) | Err(_) => Ok(()),
                Ok(Err(s)) => Err(s),
            }
        }
        Call::Replicate => {
            let hello = pb::ReplicateRequest {
                msg: Some(pb::replicate_request::Msg::Hello(pb::ReplicaHello {
                    history_id: "badinput".into(),
                    ..Default::default()
                })),
            };
            let mut client = pb::replication_client::ReplicationClient::new(security.channel(url).unwrap());
            client.replicate(tokio_stream::iter([hello])).await.map(drop)
        }
        Call::Digest => {
            let mut client = pb::admin_client::AdminClient::new(security.channel(url).unwrap());
            client.digest(pb::DigestRequest {}).await.map(drop)
        }
        Call::History(call) => {
            let mut client = pb::history_client::HistoryClient::new(security.channel(url).unwrap());
            match call {
                HistoryCall::Restore(req) => client.restore(req).await.map(drop),
                HistoryCall::Undelete(req) => client.undelete(req).await.map(drop),
                HistoryCall::Rewind(req) => {
                    let mut s = client.rewind(req).await?.into_inner();
                    while s.message().await?.is_some() {}
                    Ok(())
                }
                HistoryCall::SetLabel(req) => client.set_label(req).await.map(drop),
                HistoryCall::Pin(req) => client.pin(req).await.map(drop),
            }
        }
    }
}

fn cases() -> Vec<Case> {
    use Call::*;
    let fresh = |seed| random_bytes(1000, seed);
    let big = random_bytes(3 << 20, 7);
    let held = random_bytes(100, 2);
    let mut c = vec![
        // Paths, each in an upload of content the server does not hold.
        case("traversal ../x", Code::InvalidArgument, Upload(put("../x", &fresh(10), 0))),
        case("traversal a/../../x", Code::InvalidArgument, Upload(put("a/../../x", &fresh(11), 0))),
        case("dot component ./a", Code::InvalidArgument, Upload(put("./a", &fresh(12), 0))),
        case("absolute path", Code::InvalidArgument, Upload(put("/etc/passwd", &fresh(13), 0))),
        case("NUL byte", Code::InvalidArgument, Upload(put("a\0b", &fresh(14), 0))),
        case("newline", Code::InvalidArgument, Upload(put("a\nb", &fresh(15), 0))),
        case("name over 255 bytes", Code::InvalidArgument, Upload(put(&"n".repeat(256), &fresh(16), 0))),
        case(
            "path over 4096 bytes",
            Code::InvalidArgument,
            Upload(put(&vec!["d".repeat(200); 21].join("/"), &fresh(17), 0)),
        ),
        case("empty path", Code::InvalidArgument, Upload(put("", &fresh(18), 0))),
        case("trailing slash", Code::InvalidArgument, Upload(put("dir/", &fresh(19), 0))),
        case("empty component a//b", Code::InvalidArgument, Upload(put("a//b", &fresh(20), 0))),
        case("state folder", Code::InvalidArgument, Upload(put(".syncstore/state.db", &fresh(21), 0))),
        case("not NFC", Code::InvalidArgument, Upload(put("cafe\u{301}.txt", &fresh(22), 0))),
        // The upload stream's shape.
        case("no message at all", Code::InvalidArgument, Upload(vec![])),
        case("chunk before header", Code::InvalidArgument, Upload(vec![chunk(b"x"), chunk(b"y")])),
        case("empty message", Code::InvalidArgument, Upload(vec![pb::UploadRequest { msg: None }])),
        case("two headers", Code::InvalidArgument, {
            let d = fresh(23);
            Upload(vec![
                header("two.txt", 1000, hash(&d), 0),
                header("two.txt", 1000, hash(&d), 0),
                chunk(&d),
            ])
        }),
        case("header after a chunk", Code::InvalidArgument, {
            let mut m = put("late.txt", &fresh(24), 0);
            m.push(header("late.txt", 1000, hash(&fresh(24)), 0));
            Upload(m)
        }),
        case("empty message after the header", Code::InvalidArgument, {
            let mut m = put("none.txt", &fresh(25), 0);
            m.insert(1, pb::UploadRequest { msg: None });
            Upload(m)
        }),
        // Content against its header.
        case("more bytes than declared", Code::InvalidArgument, {
            let d = fresh(26);
            Upload(vec![header("more.txt", 999, hash(&d[..999]), 0), chunk(&d)])
        }),
        case("fewer bytes than declared", Code::InvalidArgument, {
            let d = fresh(27);
            Upload(vec![header("fewer.txt", 1001, hash(&d), 0), chunk(&d)])
        }),
        case("bytes for an empty file", Code::InvalidArgument, {
            Upload(vec![header("empty.txt", 0, hash(b""), 0), chunk(b"x")])
        }),
        case("wrong hash", Code::InvalidArgument, {
            let d = fresh(28);
            Upload(vec![header("hash.txt", 1000, hash(b"other"), 0), chunk(&d)])
        }),
        case("hash of 31 bytes", Code::InvalidArgument, {
            let d = fresh(29);
            Upload(vec![header("short.txt", 1000, hash(&d)[..31].to_vec(), 0), chunk(&d)])
        }),
        case("hash of 33 bytes", Code::InvalidArgument, {
            let d = fresh(30);
            let mut h = hash(&d);
            h.push(0);
            Upload(vec![header("long.txt", 1000, h, 0), chunk(&d)])
        }),
        case("empty hash", Code::InvalidArgument, Upload(vec![header("nohash.txt", 0, vec![], 0)])),
        case(
            "10 GiB declared, over the limit",
            Code::ResourceExhausted,
            Upload(vec![header("huge.bin", 10 << 30, hash(b"huge"), 0), chunk(&fresh(31))]),
        ),
        case("chunk of 1 MiB + 1", Code::InvalidArgument, {
            let d = random_bytes(MAX_CHUNK + 1, 32);
            Upload(vec![header("over.bin", d.len() as u64, hash(&d), 0), chunk(&d)])
        }),
        case("message over the gRPC limit", Code::InvalidArgument, {
            let d = random_bytes(2 * MAX_CHUNK, 33);
            Upload(vec![header("over2.bin", d.len() as u64, hash(&d), 0), chunk(&d)])
        }),
        case(
            "header only, content not held",
            Code::FailedPrecondition,
            Upload(vec![header("reuse.bin", 1000, hash(&fresh(34)), 0)]),
        ),
        case(
            "header only, held content with the wrong size",
            Code::InvalidArgument,
            Upload(vec![header("reuse.bin", 5000, hash(&held), 0)]),
        ),
        // Streams that end without the end marker commit nothing, whatever
        // came before: an empty file, all of the content, a reuse, a folder.
        case(
            "no end marker, empty file",
            Code::InvalidArgument,
            Unended(vec![header("e.txt", 0, hash(b""), 0)]),
        ),
        case("no end marker, all content", Code::InvalidArgument, {
            let d = fresh(43);
            Unended(vec![header("all.txt", 1000, hash(&d), 0), chunk(&d)])
        }),
        case(
            "no end marker, header-only reuse",
            Code::InvalidArgument,
            Unended(vec![header("reuse.bin", 100, hash(&held), 0)]),
        ),
        case("no end marker, folder", Code::InvalidArgument, {
            let mut h = header("dir2", 0, hash(b""), 0);
            if let Some(upload_request::Msg::Header(h)) = &mut h.msg {
                h.folder = true;
            }
            Unended(vec![h])
        }),
        case("a message after the end marker", Code::InvalidArgument, {
            let d = fresh(44);
            Upload(vec![header("after.txt", 1000, hash(&d), 0), chunk(&d), upload_end()])
        }),
        case("two end markers", Code::InvalidArgument, {
            let d = fresh(45);
            Upload(vec![header("twice.txt", 1000, hash(&d), 0), chunk(&d), upload_end(), upload_end()])
        }),
        // Stalled streams: cut off after the idle timeout, temp file removed.
        case("stalled before the header", Code::DeadlineExceeded, Stalled(vec![])),
        case(
            "stalled after the header",
            Code::DeadlineExceeded,
            Stalled(vec![header("stall.bin", big.len() as u64, hash(&big), 0)]),
        ),
        case(
            "stalled after the first chunk",
            Code::DeadlineExceeded,
            Stalled(vec![header("stall.bin", big.len() as u64, hash(&big), 0), chunk(&big[..MAX_CHUNK])]),
        ),
        // Versions.
        case("create over a live file", Code::Aborted, Upload(put("seed.txt", &fresh(35), 0))),
        case("stale base_version", Code::Aborted, Upload(put("seed.txt", &fresh(36), 999))),
        case("base_version of a missing path", Code::Aborted, Upload(put("nope.txt", &fresh(37), 1))),
        case("wrong base on a tombstone", Code::Aborted, Upload(put("gone.txt", &fresh(38), 1))),
        case("delete a missing path", Code::NotFound, Delete("nope.txt", 0)),
        case("delete a deleted path", Code::NotFound, Delete("gone.txt", 4)),
        case("delete with a wrong base", Code::Aborted, Delete("seed.txt", 2)),
        case("delete with base 0", Code::Aborted, Delete("seed.txt", 0)),
        case("delete a bad path", Code::InvalidArgument, Delete("../seed.txt", 1)),
        // Reads.
        case("download a missing path", Code::NotFound, Download("nope.txt", 0)),
        case("download a deleted path", Code::NotFound, Download("gone.txt", 0)),
        case("download a version never written", Code::NotFound, Download("seed.txt", 99)),
        case("download a bad path", Code::InvalidArgument, Download("a/../../etc/passwd", 0)),
        case("stat a bad path", Code::InvalidArgument, Stat("/etc/passwd")),
        case("stat a missing path", Code::NotFound, Stat("nope.txt")),
        case("list a bad prefix", Code::InvalidArgument, List("../")),
        // Refused by HTTP/2 with status 431, which gRPC maps to UNKNOWN.
        case("headers over the 8 KiB limit", Code::Unknown, StatWithMetadata(16 * 1024)),
        case("headers under the limit (control)", Code::Ok, StatWithMetadata(4 * 1024)),
        // History writes: refused before anything is written.
        case("restore a bad path", Code::InvalidArgument, restore("../seed.txt", At::Version(1), "", 0)),
        case("restore to a bad path", Code::InvalidArgument, restore("seed.txt", At::Version(1), "a//b", 0)),
        case("restore a version never written", Code::NotFound, restore("seed.txt", At::Version(99), "", 0)),
        case("restore a deletion", Code::NotFound, restore("gone.txt", At::Version(4), "", 0)),
        case("restore over a wrong base", Code::Aborted, restore("seed.txt", At::Version(1), "", 2)),
        case("restore from before history", Code::OutOfRange, restore("seed.txt", At::AtMs(1), "", 0)),
        case("restore at version 0", Code::InvalidArgument, restore("seed.txt", At::Version(0), "", 0)),
        case("undelete with a glob over 1 KiB", Code::InvalidArgument, undelete("*".repeat(1025))),
        case("rewind to an unknown label", Code::NotFound, rewind_to(At::Label("nope".into()))),
        case("rewind to before history", Code::OutOfRange, rewind_to(At::AtMs(1))),
        case("label with a bad name", Code::InvalidArgument, set_label("a b")),
        case("pin a version never written", Code::NotFound, pin("seed.txt", 99)),
    ];
    // Who calls: no token, an unknown one, one beyond its access, one of
    // another namespace.
    use Who::*;
    c.extend([
        case_as(Nobody, "no token, stat", Code::Unauthenticated, Stat("seed.txt")),
        case_as(Nobody, "no token, upload", Code::Unauthenticated, Upload(put("anon.txt", &fresh(40), 0))),
        case_as(
            Stranger,
            "unknown token, upload",
            Code::Unauthenticated,
            Upload(put("x.txt", &fresh(41), 0)),
        ),
        case_as(Stranger, "unknown token, delete", Code::Unauthenticated, Delete("seed.txt", 1)),
        case_as(Stranger, "unknown token, admin", Code::Unauthenticated, Digest),
        case_as(
            Viewer,
            "read-only token uploads",
            Code::PermissionDenied,
            Upload(put("ro.txt", &fresh(42), 0)),
        ),
        case_as(Viewer, "read-only token deletes", Code::PermissionDenied, Delete("seed.txt", 1)),
        case_as(Neighbour, "other namespace, stat by path", Code::NotFound, Stat("seed.txt")),
        case_as(Neighbour, "other namespace, download by version", Code::NotFound, Download("seed.txt", 1)),
        case_as(Neighbour, "other namespace, delete", Code::NotFound, Delete("seed.txt", 1)),
        case_as(Neighbour, "other namespace, list", Code::Ok, ListNothing),
        case_as(Neighbour, "other namespace, subscribe from 0", Code::Ok, SubscribeNothing(0)),
        case_as(
            Neighbour,
            "other namespace, reuse of held content by hash",
            Code::FailedPrecondition,
            Upload(vec![header("steal.bin", 100, hash(&held), 0)]),
        ),
        case_as(Admin, "admin token reads files", Code::PermissionDenied, Stat("seed.txt")),
        case_as(
            Replication,
            "replication token reads files",
            Code::PermissionDenied,
            Download("seed.txt", 0),
        ),
        case_as(Writer, "client token replicates", Code::PermissionDenied, Replicate),
        case_as(Writer, "client token asks for the digest", Code::PermissionDenied, Digest),
        case_as(
            Nobody,
            "no token, restore",
            Code::Unauthenticated,
            restore("gone.txt", At::Version(3), "", 0),
        ),
        case_as(
            Viewer,
            "read-only token restores",
            Code::PermissionDenied,
            restore("gone.txt", At::Version(3), "", 0),
        ),
        case_as(Viewer, "read-only token undeletes", Code::PermissionDenied, undelete(String::new())),
        case_as(Viewer, "read-only token rewinds", Code::PermissionDenied, rewind_to(At::Version(1))),
        case_as(Viewer, "read-only token labels", Code::PermissionDenied, set_label("mine")),
        case_as(Viewer, "read-only token pins", Code::PermissionDenied, pin("seed.txt", 1)),
        case_as(
            Admin,
            "admin token restores",
            Code::PermissionDenied,
            restore("gone.txt", At::Version(3), "", 0),
        ),
        case_as(
            Neighbour,
            "other namespace, restore",
            Code::NotFound,
            restore("gone.txt", At::Version(3), "", 0),
        ),
        case_as(Neighbour, "other namespace, pin", Code::NotFound, pin("seed.txt", 1)),
        case_as(Neighbour, "other namespace, undelete finds nothing", Code::Ok, undelete(String::new())),
        case_as(Neighbour, "other namespace, rewind changes nothing", Code::Ok, rewind_to(At::Version(1))),
    ]);
    // The replica: writes, and who calls.
    let on_replica = |c: Case| Case { on: On::Replica, ..c };
    c.extend([
        on_replica(case(
            "upload to the replica",
            Code::FailedPrecondition,
            Upload(put("replica.txt", &fresh(39), 0)),
        )),
        on_replica(case("delete on the replica", Code::FailedPrecondition, Delete("seed.txt", 1))),
        on_replica(case(
            "restore on the replica",
            Code::FailedPrecondition,
            restore("gone.txt", At::Version(3), "", 0),
        )),
        on_replica(case("label on the replica", Code::FailedPrecondition, set_label("on-replica"))),
        on_replica(case_as(
            Stranger,
            "unknown token on the replica",
            Code::Unauthenticated,
            Stat("seed.txt"),
        )),
    ]);
    c
}

#[tokio::test]
async fn every_bad_input_gets_its_code_and_changes_nothing() {
    let tokens = Tokens::new();
    let file = tokens.path.clone();
    let replica = TestServer::start_with(|c| {
        c.role = sync_server::Role::Replica;
        c.tokens = Some(file);
    })
    .await;
    let (file, link) = (tokens.path.clone(), Who::Replication.security(&tokens));
    let primary = TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, DEADLINE, |c| {
        c.upload_idle_timeout = IDLE;
        c.max_file_size = MAX_FILE;
        c.tokens = Some(file);
        c.replica.as_mut().expect("a replica").security = link;
    })
    .await;
    // Versions 1 to 4: seed.txt, dir/held.bin (content the cases refer to),
    // gone.txt, then its deletion.
    let mut p = rpc_with(&primary.url(), &Who::Writer.security(&tokens));
    upload(&mut p, "seed.txt", b"seed", 0).await.unwrap();
    upload(&mut p, "dir/held.bin", &random_bytes(100, 2), 0).await.unwrap();
    upload(&mut p, "gone.txt", b"gone", 0).await.unwrap();
    let del = pb::DeleteRequest {
        path: "gone.txt".into(),
        base_version: 3,
        client_id: "seed".into(),
        lock_token: 0,
    };
    p.delete(del).await.unwrap();

    let before = (snapshot(&primary, &tokens).await, snapshot(&replica, &tokens).await);
    assert_eq!(before.0.head, 4);
    assert_eq!((&before.1.manifest, before.1.head), (&before.0.manifest, 4), "the replica has the seed");
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for Case { name, on, who, call, want } in cases {
        let server = match on {
            On::Primary => &primary,
            On::Replica => &replica,
        };
        let got = tokio::time::timeout(DEADLINE, run(&server.url(), &who.security(&tokens), call)).await;
        let code = match got {
            Err(_) => {
                failures.push(format!("{name}: no answer within {DEADLINE:?}"));
                continue;
            }
            Ok(Ok(())) => Code::Ok,
            Ok(Err(ref status)) => status.code(),
        };
        if code != want {
            failures.push(format!("{name}: got {code:?}, want {want:?} ({got:?})"));
        }
        // Every refusal of the server's says why, for a program to act on
        // (an HTTP-level refusal, before any gRPC service, has no status).
        if let Ok(Err(ref status)) = got
            && status.code() != Code::Unknown
            && syncstore::Reason::of(status).is_none()
        {
            failures.push(format!("{name}: no syncstore-reason in {status:?}"));
        }
        // The server answers once the temp file is gone: no waiting here.
        let after = (snapshot(&primary, &tokens).await, snapshot(&replica, &tokens).await);
        if after != before {
            failures.push(format!("{name}: the servers changed: {before:#?} -> {after:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn uploads_beyond_the_slots_wait_briefly_then_are_refused() {
    let server = TestServer::start_with(|c| {
        c.max_concurrent_uploads = 1;
        c.upload_idle_timeout = DEADLINE;
    })
    .await;
    let mut rpc = server.rpc().await;
    let data = random_bytes(3 << 20, 5);

    // One upload holds the only slot: header and a chunk, then it waits.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(header("slow.bin", data.len() as u64, hash(&data), 0)).await.unwrap();
    tx.send(chunk(&data[..MAX_CHUNK])).await.unwrap();
    let mut slow_rpc = rpc.clone();
    let slow =
        tokio::spawn(async move { slow_rpc.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // A file over 1 MiB is stored as chunks, each written as it is cut.
    let (tmp, blobs) = (server.data_dir().join("tmp"), server.data_dir().join("blobs"));
    eventually("the slow upload is being received", || count_files(&blobs) > 0).await;

    let started = tokio::time::Instant::now();
    let err = upload(&mut rpc, "other.txt", b"other", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(started.elapsed() >= sync_server::UPLOAD_SLOT_WAIT, "it waited for a slot first");

    // The slow upload finishes; its slot is free again.
    for c in data[MAX_CHUNK..].chunks(MAX_CHUNK) {
        tx.send(chunk(c)).await.unwrap();
    }
    tx.send(upload_end()).await.unwrap();
    drop(tx);
    slow.await.unwrap().unwrap();
    upload(&mut rpc, "other.txt", b"other", 0).await.unwrap();
    assert_eq!(count_files(&tmp), 0);
}

/// One message of a generated upload stream.
#[derive(Debug, Clone)]
enum Msg {
    /// A header for the case's content, `size_delta` off in size, with a
    /// hash of the content (0), of other bytes (1) or 31 bytes long (2).
    Header {
        size_delta: i8,
        hash_kind: u8,
    },
    Chunk(Vec<u8>),
    Empty,
    /// The end marker.
    End,
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..4)
}

/// Content, and a stream that is often the correct one for it.
fn upload_case() -> impl Strategy<Value = (Vec<u8>, Vec<Msg>)> {
    let msg = prop_oneof![
        2 => (-1i8..=1, 0u8..3).prop_map(|(size_delta, hash_kind)| Msg::Header { size_delta, hash_kind }),
        3 => bytes().prop_map(Msg::Chunk),
        1 => Just(Msg::Empty),
        1 => Just(Msg::End),
    ];
    let any = (bytes(), proptest::collection::vec(msg, 0..5));
    // Mostly ended by the end marker; without it, even exact content must
    // not be committed.
    let ended = proptest::bool::weighted(0.8);
    let exact = (bytes(), 0usize..4, 0usize..4, ended).prop_map(|(content, a, b, ended)| {
        let (a, b) = (a.min(content.len()), b.min(content.len()));
        let (a, b) = (a.min(b), a.max(b));
        let mut msgs = vec![Msg::Header { size_delta: 0, hash_kind: 0 }];
        msgs.extend([&content[..a], &content[a..b], &content[b..]].map(|c| Msg::Chunk(c.to_vec())));
        if ended {
            msgs.push(Msg::End);
        }
        (content, msgs)
    });
    prop_oneof![any, exact]
}

fn to_requests(path: &str, content: &[u8], msgs: &[Msg]) -> Vec<pb::UploadRequest> {
    msgs.iter()
        .map(|m| match m {
            Msg::Header { size_delta, hash_kind } => {
                let size = (content.len() as i64 + i64::from(*size_delta)).max(0) as u64;
                let h = match hash_kind {
                    0 => hash(content),
                    1 => hash(&[content, b"!"].concat()),
                    _ => hash(content)[..31].to_vec(),
                };
                header(path, size, h, 0)
            }
            Msg::Chunk(c) => chunk(c),
            Msg::Empty => pb::UploadRequest { msg: None },
            Msg::End => upload_end(),
        })
        .collect()
}

/// Whether the server must commit `msgs`: exactly one header first, valid,
/// then chunks that add up to its size and hash, then the end marker as
/// the last message; or a header and the end marker alone for content the
/// server holds, with that content's size.
fn must_commit(content: &[u8], msgs: &[Msg], held: &BTreeMap<Vec<u8>, u64>) -> bool {
    let Some((Msg::Header { size_delta, hash_kind }, rest)) = msgs.split_first() else { return false };
    if *hash_kind == 2 {
        return false;
    }
    let size = (content.len() as i64 + i64::from(*size_delta)).max(0) as u64;
    let h = if *hash_kind == 0 { hash(content) } else { hash(&[content, b"!"].concat()) };
    let Some((Msg::End, rest)) = rest.split_last() else { return false };
    let mut sent = Vec::new();
    for m in rest {
        match m {
            Msg::Chunk(c) => sent.extend_from_slice(c),
            _ => return false,
        }
    }
    if rest.is_empty() && size > 0 {
        return held.get(&h) == Some(&size);
    }
    sent.len() as u64 == size && hash(&sent) == h
}

#[test]
fn upload_streams_commit_only_when_exactly_right() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(TestServer::start_with(|c| c.upload_idle_timeout = IDLE));
    let rpc = rt.block_on(server.rpc());
    // Content the server holds (hash -> size), as the model sees it.
    let held = RefCell::new(BTreeMap::new());
    let n = AtomicU64::new(0);
    let config = ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&upload_case(), |(content, msgs)| {
            // A fresh path per case: base_version 0 is always right.
            let path = format!("prop/{}", n.fetch_add(1, Ordering::Relaxed));
            let want = must_commit(&content, &msgs, &held.borrow());
            let requests = to_requests(&path, &content, &msgs);
            let mut rpc = rpc.clone();
            let (result, head_before, head_after, stat) = rt.block_on(async {
                let info = |mut r: Rpc| async move {
                    r.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner().head_seq
                };
                let before = info(rpc.clone()).await;
                let result = rpc.upload(tokio_stream::iter(requests)).await;
                let after = info(rpc.clone()).await;
                let stat = rpc.stat(pb::StatRequest { path: path.clone() }).await;
                (result, before, after, stat)
            });
            if want {
                let entry = result.map_err(|s| TestCaseError::fail(format!("refused: {s:?}")))?.into_inner();
                prop_assert_eq!(head_after, head_before + 1);
                prop_assert_eq!(entry.entry.map(|e| e.size), Some(content.len() as u64));
                prop_assert!(stat.is_ok());
                held.borrow_mut().insert(hash(&content), content.len() as u64);
            } else {
                let err = result.err().ok_or_else(|| TestCaseError::fail("committed a bad stream"))?;
                prop_assert!(
                    !matches!(err.code(), Code::Ok | Code::Internal | Code::Unknown),
                    "unexpected code: {:?}",
                    err
                );
                prop_assert_eq!(head_after, head_before);
                prop_assert_eq!(stat.map_err(|s| s.code()).err(), Some(Code::NotFound));
            }
            prop_assert_eq!(count_files(&server.data_dir().join("tmp")), 0);
            prop_assert_eq!(rt.block_on(server.stored_blobs()), held.borrow().len() as u64);
            Ok(())
        })
        .unwrap();
}
