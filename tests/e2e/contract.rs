//! The API as a contract for clients written by others: every string a
//! client sends is bounded, link targets are usable, lock listings stream,
//! a lock belongs to the token and client that took it, every refusal
//! names its reason, and List + Subscribe meet at the head List reports.

use std::time::Duration;

use syncstore::{
    ContentHash, Reason,
    connect::Security,
    limits::{MAX_CLIENT_ID_BYTES, MAX_MESSAGE, MAX_NOTE_BYTES},
    pb::{self, change_event::Kind, upload_request},
    reason::primary_of,
};
use tonic::Code;

use crate::harness::*;

/// What an upload says about itself.
#[derive(Clone, Copy)]
struct As<'a> {
    client_id: &'a str,
    base_version: u64,
    lock_token: u64,
    symlink: bool,
    /// Send only the header (reuse content the server holds).
    header_only: bool,
}

impl Default for As<'_> {
    fn default() -> Self {
        Self { client_id: "c1", base_version: 0, lock_token: 0, symlink: false, header_only: false }
    }
}

async fn put(rpc: &mut Rpc, path: &str, data: &[u8], how: As<'_>) -> Result<pb::FileEntry, tonic::Status> {
    let header = pb::UploadHeader {
        path: path.into(),
        size: data.len() as u64,
        hash: ContentHash::of(data).as_bytes().to_vec(),
        mtime_ns: 1_700_000_000_000_000_000,
        base_version: how.base_version,
        client_id: how.client_id.into(),
        lock_token: how.lock_token,
        symlink: how.symlink,
        ..Default::default()
    };
    let mut msgs = vec![pb::UploadRequest { msg: Some(upload_request::Msg::Header(header)) }];
    if !how.header_only && !data.is_empty() {
        msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(data.to_vec())) });
    }
    msgs.push(pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) });
    Ok(rpc.upload(tokio_stream::iter(msgs)).await?.into_inner().entry.unwrap())
}

/// The code and reason of a refusal.
fn refusal<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, Option<Reason>) {
    let s = r.expect_err("the call should have been refused");
    (s.code(), Reason::of(&s))
}

const FIELD: (Code, Option<Reason>) = (Code::InvalidArgument, Some(Reason::InvalidField));

fn lock_req(path: &str, client_id: &str) -> pb::LockRequest {
    pb::LockRequest { path: path.into(), ttl_seconds: 600, client_id: client_id.into(), ..Default::default() }
}

#[tokio::test]
async fn strings_over_their_bounds_are_refused_and_every_stream_keeps_working() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let a = put(&mut rpc, "a.txt", b"a", As::default()).await.unwrap();

    // A client id too long to echo in events, empty, or with a NUL.
    let huge = "c".repeat(600_000);
    let over = "c".repeat(MAX_CLIENT_ID_BYTES + 1);
    for client_id in [huge.as_str(), over.as_str(), "", "a\0b"] {
        let how = As { client_id, ..As::default() };
        assert_eq!(refusal(put(&mut rpc, "b.txt", b"b", how).await), FIELD, "{:.20}", client_id);
        let del = pb::DeleteRequest {
            path: "a.txt".into(),
            base_version: a.version,
            client_id: client_id.into(),
            lock_token: 0,
        };
        assert_eq!(refusal(rpc.delete(del).await), FIELD);
        assert_eq!(refusal(rpc.lock(lock_req("l.txt", client_id)).await), FIELD);
    }
    // A client id at the limit is fine.
    let max = "é".repeat(MAX_CLIENT_ID_BYTES / 2);
    put(&mut rpc, "max.txt", b"m", As { client_id: &max, ..As::default() }).await.unwrap();

    // Notes and holders too long to list.
    let note = pb::LockRequest { note: "n".repeat(700_000), ..lock_req("l.txt", "c1") };
    assert_eq!(refusal(rpc.lock(note).await), FIELD);
    let holder = pb::LockRequest { holder: "h".repeat(300), ..lock_req("l.txt", "c1") };
    assert_eq!(refusal(rpc.lock(holder).await), FIELD);
    let control = pb::LockRequest { holder: "al\x1bice".into(), ..lock_req("l.txt", "c1") };
    assert_eq!(refusal(rpc.lock(control).await), FIELD);
    for i in 0..2 {
        let full =
            pb::LockRequest { note: "n".repeat(MAX_NOTE_BYTES), ..lock_req(&format!("l{i}.txt"), "c1") };
        rpc.lock(full).await.unwrap();
    }

    // Nothing refused was written; every stream still delivers everything.
    assert_eq!(server.files().await.keys().collect::<Vec<_>>(), ["a.txt", "max.txt"]);
    let locks = locks_of(rpc.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert_eq!(locks.len(), 2);
    let mut sub = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "w".into() })
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<u64> = [(); 4].iter().map(|_| 0).collect();
    let mut got = Vec::new();
    for _ in seqs {
        got.push(next_event(&mut sub).await.seq);
    }
    assert_eq!(got, [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_client_id_too_large_to_replicate_never_wedges_a_sync_replica() {
    use sync_server::{Mode, OnTimeout};
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Sync, OnTimeout::Fail, Duration::from_secs(10), |_| {})
            .await;
    let mut rpc = primary.rpc().await;
    let just_under = "c".repeat(MAX_MESSAGE - 4096);
    let how = As { client_id: &just_under, ..As::default() };
    assert_eq!(refusal(put(&mut rpc, "big-id.txt", b"x", how).await), FIELD);
    // Later writes are confirmed by the replica as before.
    let v = put(&mut rpc, "after.txt", b"after", As::default()).await.unwrap();
    assert_eq!(replica.files().await.keys().collect::<Vec<_>>(), ["after.txt"]);
    assert_eq!(v.version, 1);
}

#[tokio::test]
async fn link_targets_no_client_can_use_are_refused() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    let link = As { symlink: true, ..As::default() };
    for (target, why) in [(&b""[..], "empty"), (b"a\0b", "NUL"), (b"\xff\xfe", "not UTF-8")] {
        let r = put(&mut rpc, "bad-link", target, link).await;
        assert_eq!(refusal(r), (Code::InvalidArgument, Some(Reason::InvalidSymlink)), "{why}");
    }
    // Content a file may hold, but no link: reusing it by hash is refused too.
    put(&mut rpc, "nul.bin", b"x\0y", As::default()).await.unwrap();
    let reuse = As { header_only: true, ..link };
    assert_eq!(refusal(put(&mut rpc, "bad-link", b"x\0y", reuse).await).1, Some(Reason::InvalidSymlink));
    // A usable target passes, by content or by reuse.
    put(&mut rpc, "good-link", "../docs/ünïcode".as_bytes(), link).await.unwrap();
    put(&mut rpc, "good-link-2", "../docs/ünïcode".as_bytes(), reuse).await.unwrap();
    let listed = entries_of(rpc.list(pb::ListRequest::default()).await.unwrap().into_inner()).await.unwrap();
    let paths: Vec<_> = listed.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["good-link", "good-link-2", "nul.bin"]);
}

#[tokio::test]
async fn lock_listings_stream_past_any_message_size() {
    // 1,000 locks with long notes are well over one message's limit.
    const LOCKS: usize = 1000;
    let server = TestServer::start().await;
    let rpc = server.rpc().await;
    let mut tasks = Vec::new();
    for part in 0..8 {
        let mut rpc = rpc.clone();
        tasks.push(tokio::spawn(async move {
            for i in (part..LOCKS).step_by(8) {
                let req = pb::LockRequest {
                    note: "n".repeat(MAX_NOTE_BYTES),
                    holder: "h".repeat(250),
                    ..lock_req(&format!("locked/{i:05}"), "c1")
                };
                rpc.lock(req).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut rpc = rpc;
    let locks = locks_of(
        rpc.list_locks(pb::ListLocksRequest { prefix: "locked".into() }).await.unwrap().into_inner(),
    )
    .await;
    assert_eq!(locks.len(), LOCKS);
    assert!(locks.windows(2).all(|w| w[0].path < w[1].path), "in path order");
    // The client's own listing (what `sync` and `locks` use) works too.
    let all = sync_client::locks(&[server.url()], &Security::none()).await.unwrap();
    assert_eq!(all.len(), LOCKS);
}

#[tokio::test]
async fn a_lock_belongs_to_the_token_and_client_that_took_it() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with(|c| c.tokens = Some(path)).await;
    let mut alice = rpc_with(&server.url(), &token(&tokens.alice));
    // Another read-write token of the same namespace.
    let mut other = rpc_with(&server.url(), &token(&tokens.alice2));
    let mut ops = rpc_with(&server.url(), &token(&tokens.alice_ops));

    let doc = put(&mut alice, "doc.txt", b"v1", As { client_id: "alice-id", ..As::default() }).await.unwrap();
    let lock = alice.lock(lock_req("doc.txt", "alice-id")).await.unwrap().into_inner().lock.unwrap();
    assert_eq!(lock.principal, "alice");
    // Everything a lock listing shows (client id, token, lock id) is not
    // enough to act as its holder.
    let listed =
        locks_of(other.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert_eq!(listed, vec![lock.clone()]);
    let spoof =
        As { client_id: "alice-id", base_version: doc.version, lock_token: lock.token, ..As::default() };
    let locked = (Code::FailedPrecondition, Some(Reason::Locked));
    assert_eq!(refusal(put(&mut other, "doc.txt", b"bob's", spoof).await), locked);
    let del = pb::DeleteRequest {
        path: "doc.txt".into(),
        base_version: doc.version,
        client_id: "alice-id".into(),
        lock_token: lock.token,
    };
    assert_eq!(refusal(other.delete(del).await), locked);
    let refresh = |client_id: &str| pb::RefreshLockRequest {
        lock_id: lock.lock_id.clone(),
        ttl_seconds: 600,
        client_id: client_id.into(),
    };
    assert_eq!(refusal(other.refresh_lock(refresh("alice-id")).await), locked);
    let unlock =
        |force| pb::UnlockRequest { lock_id: lock.lock_id.clone(), client_id: "alice-id".into(), force };
    assert_eq!(refusal(other.unlock(unlock(false)).await), locked);
    // Forcing needs the break-locks right.
    assert_eq!(
        refusal(other.unlock(unlock(true)).await),
        (Code::PermissionDenied, Some(Reason::PermissionDenied))
    );
    assert_eq!(download(&mut alice, "doc.txt").await.unwrap(), b"v1");

    // The holder refreshes and writes; a token with the right breaks it,
    // recorded as its own act.
    alice.refresh_lock(refresh("alice-id")).await.unwrap();
    let mine =
        As { client_id: "alice-id", base_version: doc.version, lock_token: lock.token, ..As::default() };
    put(&mut alice, "doc.txt", b"v2", mine).await.unwrap();
    let broken =
        ops.unlock(pb::UnlockRequest { client_id: "ops-console".into(), ..unlock(true) }).await.unwrap();
    let broken = broken.into_inner().lock.unwrap();
    assert_eq!(broken.ended(), pb::LockEnd::Broken);
    assert_eq!((broken.ended_by.as_str(), broken.ended_by_principal.as_str()), ("ops-console", "alice-ops"));

    // A release by its holder is recorded as the holder's.
    let again = alice.lock(lock_req("doc.txt", "alice-id")).await.unwrap().into_inner().lock.unwrap();
    let released = alice
        .unlock(pb::UnlockRequest { lock_id: again.lock_id, client_id: "alice-id".into(), force: false })
        .await
        .unwrap()
        .into_inner()
        .lock
        .unwrap();
    assert_eq!(released.ended(), pb::LockEnd::Released);
    assert_eq!(released.ended_by_principal, "alice");
}

#[tokio::test]
async fn every_refusal_names_its_reason_and_a_replica_names_its_primary() {
    use sync_server::{Mode, OnTimeout};
    let replica = TestServer::start_replica().await;
    let primary =
        TestServer::start_primary_of(&replica, Mode::Async, OnTimeout::Fail, Duration::from_secs(10), |_| {})
            .await;
    let mut p = primary.rpc().await;
    let v1 = put(&mut p, "a.txt", b"a", As::default()).await.unwrap();
    eventually_async("the replica follows", || async { replica.files().await.contains_key("a.txt") }).await;

    // A replica refuses writes, naming the primary in metadata, and tells
    // a read-write caller it may only read here.
    let mut r = replica.rpc().await;
    let refused = put(&mut r, "b.txt", b"b", As::default()).await.unwrap_err();
    assert_eq!((refused.code(), Reason::of(&refused)), (Code::FailedPrecondition, Some(Reason::Replica)));
    assert_eq!(primary_of(&refused), Some(primary.url().as_str()));
    assert_eq!(refusal(r.lock(lock_req("a.txt", "c1")).await).1, Some(Reason::Replica));
    let info = r.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!((info.role.as_str(), info.access.as_str()), ("replica", "read-only"));
    let info = p.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.access, "read-write");

    // Each FAILED_PRECONDITION, NOT_FOUND and INVALID_ARGUMENT says which.
    let unknown = As { header_only: true, ..As::default() };
    assert_eq!(
        refusal(put(&mut p, "c.txt", b"never sent", unknown).await),
        (Code::FailedPrecondition, Some(Reason::UnknownContent))
    );
    assert_eq!(
        refusal(put(&mut p, "a.txt", b"stale", As::default()).await),
        (Code::Aborted, Some(Reason::VersionConflict))
    );
    put(&mut p, "dir/f", b"f", As::default()).await.unwrap();
    assert_eq!(
        refusal(put(&mut p, "dir/f/g", b"g", As::default()).await),
        (Code::FailedPrecondition, Some(Reason::PathClash))
    );
    assert_eq!(
        refusal(p.stat(pb::StatRequest { path: "nope".into() }).await),
        (Code::NotFound, Some(Reason::NotFound))
    );
    let gone = pb::UnlockRequest { lock_id: "0123".into(), client_id: "c1".into(), force: false };
    assert_eq!(refusal(p.unlock(gone).await), (Code::NotFound, Some(Reason::LockNotHeld)));
    let bad_hash = pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            path: "h".into(),
            hash: vec![1, 2, 3],
            client_id: "c1".into(),
            ..Default::default()
        })),
    };
    assert_eq!(
        refusal(p.upload(tokio_stream::iter([bad_hash])).await),
        (Code::InvalidArgument, Some(Reason::InvalidHash))
    );
    // A control character is escaped once in the message.
    let bad = p.stat(pb::StatRequest { path: "a\0b".into() }).await.unwrap_err();
    assert_eq!(Reason::of(&bad), Some(Reason::InvalidPath));
    assert!(bad.message().contains(r#""a\0b""#) && !bad.message().contains(r"\\0"), "{}", bad.message());
    assert_eq!(v1.version, 1);

    // Health answers for every service by name.
    let channel = Security::none().channel(&primary.url()).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in [
        "",
        "syncstore.v1.FileSync",
        "syncstore.v1.History",
        "syncstore.v1.Admin",
        "syncstore.v1.Replication",
    ] {
        let req = tonic_health::pb::HealthCheckRequest { service: service.into() };
        let status = health.check(req).await.unwrap().into_inner().status();
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn refusals_of_tokens_name_their_reason() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with(|c| c.tokens = Some(path)).await;
    let mut none = server.rpc().await;
    assert_eq!(
        refusal(none.server_info(pb::ServerInfoRequest {}).await),
        (Code::Unauthenticated, Some(Reason::Unauthenticated))
    );
    let mut viewer = rpc_with(&server.url(), &token(&tokens.alice_ro));
    assert_eq!(
        refusal(put(&mut viewer, "x", b"x", As::default()).await),
        (Code::PermissionDenied, Some(Reason::PermissionDenied))
    );
}

#[tokio::test]
async fn list_reports_the_head_it_reflects_and_subscribe_continues_from_it() {
    let server = TestServer::start().await;
    let mut rpc = server.rpc().await;
    for i in 1..=5 {
        put(&mut rpc, &format!("{i}.txt"), b"x", As::default()).await.unwrap();
    }
    let mut list = rpc.list(pb::ListRequest::default()).await.unwrap().into_inner();
    let first = list.message().await.unwrap().unwrap();
    assert_eq!((first.entry, first.head_seq), (None, 5), "the first message is the listing's head");
    let mut entries = Vec::new();
    while let Some(m) = list.message().await.unwrap() {
        assert_eq!(m.head_seq, 5);
        entries.push(m.entry.unwrap().path);
    }
    assert_eq!(entries.len(), 5);
    // A change after the listing arrives first on a subscription from its
    // head: no gap, nothing the listing already showed.
    put(&mut rpc, "6.txt", b"x", As::default()).await.unwrap();
    let mut sub = rpc
        .subscribe(pb::SubscribeRequest { after_seq: first.head_seq, client_id: "w".into() })
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.seq, ev.entry.unwrap().path.as_str()), (6, "6.txt"));
    // A cursor beyond the head (another history) gets a RESET at the head.
    let mut sub = rpc
        .subscribe(pb::SubscribeRequest { after_seq: 1000, client_id: "w".into() })
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.kind(), ev.seq), (Kind::Reset, 6));
}
