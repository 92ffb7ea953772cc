//! Authentication, namespaces and TLS: tokens checked on every service,
//! each namespace sealed from the others, the replication link's own
//! credential, the loopback-only default, and sync over TLS (with and
//! without client certificates).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use sync_server::{Mode, OnTimeout, auth::TokenFile};
use syncstore::{
    ContentHash,
    connect::Security,
    pb::{self, admin_client::AdminClient},
};
use tonic::Code;

use crate::harness::*;

async fn server_with(tokens: &Tokens) -> TestServer {
    let path = tokens.path.clone();
    TestServer::start_with(|c| c.tokens = Some(path)).await
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call should have been refused").code()
}

fn admin_as(url: &str, security: &Security) -> AdminClient<syncstore::connect::AuthChannel> {
    AdminClient::new(security.channel(url).unwrap())
}

/// Upload of content by hash alone (no chunks).
fn header_only(path: &str, data: &[u8]) -> Vec<pb::UploadRequest> {
    vec![upload_header(path, data, 0), upload_end()]
}

/// Everything the caller's namespace shows through `FileSync`.
async fn visible(rpc: &mut Rpc) -> Vec<String> {
    let list =
        rpc.list(pb::ListRequest { include_deleted: true, ..Default::default() }).await.unwrap().into_inner();
    entries_of(list).await.unwrap().into_iter().map(|e| e.path).collect()
}

#[tokio::test]
async fn tokens_are_checked_and_namespaces_are_sealed() {
    let tokens = Tokens::new();
    let server = server_with(&tokens).await;
    let url = server.url();
    let mut alice = rpc_with(&url, &token(&tokens.alice));
    let mut viewer = rpc_with(&url, &token(&tokens.alice_ro));
    let mut bob = rpc_with(&url, &token(&tokens.bob));
    let mut anonymous = server.rpc().await;
    let mut forged =
        rpc_with(&url, &token("sst_0000000000000000000000000000000000000000000000000000000000000000"));
    let mut admin_token_on_files = rpc_with(&url, &token(&tokens.admin));

    let secret = b"alice's plans".to_vec();
    let stored = upload(&mut alice, "plans/secret.txt", &secret, 0).await.unwrap();
    alice
        .lock(pb::LockRequest {
            path: "plans/locked.txt".into(),
            client_id: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = server.admin_digest(&tokens.admin).await;

    // Who may call at all.
    assert_eq!(code(anonymous.list(pb::ListRequest::default()).await), Code::Unauthenticated);
    assert_eq!(code(upload(&mut anonymous, "x", b"x", 0).await), Code::Unauthenticated);
    assert_eq!(code(anonymous.server_info(pb::ServerInfoRequest {}).await), Code::Unauthenticated);
    assert_eq!(
        code(forged.stat(pb::StatRequest { path: "plans/secret.txt".into() }).await),
        Code::Unauthenticated
    );
    assert_eq!(code(upload(&mut forged, "x", b"x", 0).await), Code::Unauthenticated);
    let status = admin_as(&url, &Security::none()).status(pb::StatusRequest::default()).await;
    assert_eq!(code(status), Code::Unauthenticated);

    // What each token may do.
    assert_eq!(code(upload(&mut viewer, "plans/new.txt", b"no", 0).await), Code::PermissionDenied);
    let del = pb::DeleteRequest {
        path: "plans/secret.txt".into(),
        base_version: stored.version,
        ..Default::default()
    };
    assert_eq!(code(viewer.delete(del).await), Code::PermissionDenied);
    let lock =
        pb::LockRequest { path: "plans/secret.txt".into(), client_id: "v".into(), ..Default::default() };
    assert_eq!(code(viewer.lock(lock).await), Code::PermissionDenied);
    assert_eq!(download(&mut viewer, "plans/secret.txt").await.unwrap(), secret, "a viewer reads");
    assert_eq!(code(admin_token_on_files.list(pb::ListRequest::default()).await), Code::PermissionDenied);
    let alice_on_admin = admin_as(&url, &token(&tokens.alice)).status(pb::StatusRequest::default()).await;
    assert_eq!(code(alice_on_admin), Code::PermissionDenied);
    let mut alice_on_replication =
        pb::replication_client::ReplicationClient::new(token(&tokens.alice).channel(&url).unwrap());
    let hello = pb::ReplicateRequest {
        msg: Some(pb::replicate_request::Msg::Hello(pb::ReplicaHello {
            history_id: "h".into(),
            ..Default::default()
        })),
    };
    assert_eq!(
        code(alice_on_replication.replicate(tokio_stream::iter([hello])).await),
        Code::PermissionDenied
    );

    // Another namespace's files, locks and events do not exist for bob:
    // not by path, not by version, not by listing, cursor or content hash.
    let path = "plans/secret.txt".to_owned();
    assert_eq!(code(bob.stat(pb::StatRequest { path: path.clone() }).await), Code::NotFound);
    assert_eq!(code(download(&mut bob, &path).await), Code::NotFound);
    let by_version =
        pb::DownloadRequest { path: path.clone(), version: stored.version, have_hash: Vec::new() };
    assert_eq!(code(bob.download(by_version).await), Code::NotFound);
    assert!(visible(&mut bob).await.is_empty());
    let locks = locks_of(bob.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert!(locks.is_empty(), "{locks:?}");
    let probe = bob.upload(tokio_stream::iter(header_only("probe.txt", &secret))).await;
    let unknown = bob.upload(tokio_stream::iter(header_only("probe.txt", b"content nobody has"))).await;
    let (probe, unknown) = (probe.unwrap_err(), unknown.unwrap_err());
    assert_eq!((probe.code(), unknown.code()), (Code::FailedPrecondition, Code::FailedPrecondition));
    assert_eq!(
        probe.message().replace(&ContentHash::of(&secret).to_string(), "H"),
        unknown.message().replace(&ContentHash::of(b"content nobody has").to_string(), "H"),
        "held and unknown content look the same from another namespace"
    );
    // The same path is bob's own to create (no conflict with alice's).
    let own = upload(&mut bob, "plans/secret.txt", b"bob's own", 0).await.unwrap();
    assert!(own.version > stored.version);
    // A subscription from cursor 0 sees only bob's changes.
    let mut events = bob
        .subscribe(pb::SubscribeRequest { after_seq: 0, client_id: "b".into() })
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut events).await;
    assert_eq!((first.seq, first.entry.unwrap().path.as_str()), (own.version, "plans/secret.txt"));
    upload(&mut alice, "plans/later.txt", b"later", 0).await.unwrap();
    let bobs = upload(&mut bob, "mine.txt", b"mine", 0).await.unwrap();
    let next = next_event(&mut events).await;
    assert_eq!(next.seq, bobs.version, "alice's later change is not sent to bob");

    // The caller learns whom the server takes it for.
    let info = bob.server_info(pb::ServerInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (info.namespace.as_str(), info.principal.as_str(), info.access.as_str()),
        ("bob", "bob", "read-write")
    );

    // The refused calls changed nothing of alice's.
    let after = server.admin_digest(&tokens.admin).await;
    assert_eq!(after.file_count, before.file_count + 3, "bob's two files and alice's later one");
    let alice_files = visible(&mut alice).await;
    assert_eq!(alice_files, ["plans/later.txt", "plans/secret.txt"]);
    assert_eq!(download(&mut alice, "plans/secret.txt").await.unwrap(), secret);
    assert!(sync_server::compare(&url, &url, &token(&tokens.alice)).await.is_err(), "compare needs admin");

    // Health and reflection stay open.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(Security::none().channel(&url).unwrap());
    let h = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(h.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_removed_token_is_refused_without_a_restart() {
    let tokens = Tokens::new();
    let server = server_with(&tokens).await;
    let mut bob = rpc_with(&server.url(), &token(&tokens.bob));
    upload(&mut bob, "a.txt", b"a", 0).await.unwrap();
    let watching = TestClient::start_secure(&server.url(), token(&tokens.bob));
    eventually("bob's client synced", || watching.read("a.txt").is_some()).await;
    let mut events = bob
        .subscribe(pb::SubscribeRequest { after_seq: u64::MAX - 1, client_id: "b".into() })
        .await
        .unwrap()
        .into_inner();

    let mut file = TokenFile::load(&tokens.path).unwrap();
    assert!(file.remove("bob"));
    file.save(&tokens.path).unwrap();
    eventually_async("bob's token is refused", || {
        let mut bob = bob.clone();
        async move {
            matches!(bob.stat(pb::StatRequest { path: "a.txt".into() }).await, Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    // Open subscriptions end too, and a watching client stops with the
    // reason instead of retrying.
    let ended = loop {
        match tokio::time::timeout(DEADLINE, events.message()).await.expect("the subscription ends") {
            Ok(Some(_)) => continue, // The RESET for the far cursor.
            other => break other,
        }
    };
    assert_eq!(ended.unwrap_err().code(), Code::Unauthenticated);
    let stopped = watching.ended().await.unwrap_err();
    assert!(stopped.is_refused(), "{stopped}");
    // The others still work, and a broken file keeps the tokens in force.
    std::fs::write(&tokens.path, "this is not toml [[[").unwrap();
    let mut alice = rpc_with(&server.url(), &token(&tokens.alice));
    upload(&mut alice, "b.txt", b"b", 0).await.unwrap();
}

#[tokio::test]
async fn clients_sync_within_their_namespace_only() {
    let tokens = Tokens::new();
    let server = server_with(&tokens).await;
    let a1 = TestClient::start_secure(&server.url(), token(&tokens.alice));
    let a2 = TestClient::start_secure(&server.url(), token(&tokens.alice2));
    let b = TestClient::start_secure(&server.url(), token(&tokens.bob));

    a1.write("shared/report.txt", "alice's report");
    b.write("shared/report.txt", "bob's report");
    b.write("bob-only.txt", "bob");
    eventually("alice's other client has her report", || {
        a2.read("shared/report.txt").as_deref() == Some(&b"alice's report"[..])
    })
    .await;
    // bob's files reached the server (his namespace) but not alice's
    // folders, and the same path in two namespaces is no conflict.
    let mut bob_rpc = rpc_with(&server.url(), &token(&tokens.bob));
    eventually_async("bob's files are stored", || {
        let mut rpc = bob_rpc.clone();
        async move { visible(&mut rpc).await.len() == 2 }
    })
    .await;
    assert_eq!(download(&mut bob_rpc, "shared/report.txt").await.unwrap(), b"bob's report");
    a2.write("from-desktop.txt", "desktop");
    eventually("alice's first client has the desktop's file", || a1.read("from-desktop.txt").is_some()).await;
    let alice_files = a1.files();
    assert_eq!(alice_files.keys().collect::<Vec<_>>(), ["from-desktop.txt", "shared/report.txt"]);
    assert_eq!(a2.files(), alice_files);
    assert_eq!(b.files().keys().collect::<Vec<_>>(), ["bob-only.txt", "shared/report.txt"]);
    assert_eq!(b.read("shared/report.txt").unwrap(), b"bob's report");

    // The client binary's token sources work the same way (locks listed
    // through the library call with the file's token).
    let token_file = tokens.path.with_file_name("alice.token");
    std::fs::write(&token_file, format!("{}\n", tokens.alice)).unwrap();
    let security = Security::none().with_token_from(Some(&token_file)).unwrap();
    let listed = sync_client::list(&[server.url()], &security).await.unwrap();
    assert_eq!(listed.len(), 2);
    std::fs::remove_file(&token_file).unwrap();
    let refused = sync_client::list(&[server.url()], &Security::none()).await.unwrap_err();
    assert!(refused.to_string().contains("token"), "{refused}");
    drop((a1, a2, b));
}

#[tokio::test]
async fn the_replication_link_needs_its_own_credential() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let replica = TestServer::start_with(|c| {
        *c = sync_server::Config { tokens: Some(path), ..sync_server::Config::replica(c.data_dir.clone()) };
    })
    .await;
    let link = |t: Option<&str>| sync_server::ReplicaConfig {
        url: replica.url(),
        mode: Mode::Sync,
        timeout: Duration::from_secs(1),
        on_timeout: OnTimeout::Fail,
        security: Security { token: t.map(str::to_owned), ..Security::none() },
    };

    // A client token is not a replication credential: writes on a sync
    // primary fail, and nothing reaches the replica.
    let wrong = link(Some(&tokens.alice));
    let primary = TestServer::start_with(|c| c.replica = Some(wrong)).await;
    assert_eq!(code(upload(&mut primary.rpc().await, "a.txt", b"a", 0).await), Code::Unavailable);
    assert_eq!(replica.admin_digest(&tokens.admin).await.file_count, 0);
    drop(primary);

    let right = link(Some(&tokens.replication));
    let primary = TestServer::start_with(|c| c.replica = Some(right)).await;
    upload(&mut primary.rpc().await, "b.txt", b"b", 0).await.unwrap();
    assert_eq!(replica.admin_digest(&tokens.admin).await.file_count, 1);
    // Both servers hold the same, every namespace compared (the open
    // primary takes any token).
    let c = sync_server::compare(&primary.url(), &replica.url(), &token(&tokens.admin)).await.unwrap();
    assert!(c.identical(), "{c:?}");
    // The replica serves reads to the namespace's tokens only ("default"
    // here: the primary is open), and refuses writes whatever the token.
    let mut reader = rpc_with(&replica.url(), &token(&tokens.alice));
    assert_eq!(code(download(&mut reader, "b.txt").await), Code::NotFound);
    assert_eq!(code(upload(&mut reader, "c.txt", b"c", 0).await), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_open_server_serves_loopback_only_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let wildcard = tokio::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)).await.unwrap();
    let server = sync_server::Server::open(sync_server::Config::new(dir.path().join("open"))).await.unwrap();
    let refused = server.check_listener(&wildcard).unwrap_err().to_string();
    assert!(refused.contains("--tokens") && refused.contains("--insecure-no-auth"), "{refused}");
    drop(server);

    let mut told = sync_server::Config::new(dir.path().join("told"));
    told.insecure_no_auth = true;
    sync_server::Server::open(told).await.unwrap().check_listener(&wildcard).unwrap();

    let tokens = Tokens::new();
    let mut with_tokens = sync_server::Config::new(dir.path().join("tokens"));
    with_tokens.tokens = Some(tokens.path.clone());
    sync_server::Server::open(with_tokens).await.unwrap().check_listener(&wildcard).unwrap();

    let mut missing = sync_server::Config::new(dir.path().join("missing"));
    missing.tokens = Some(dir.path().join("no-such-file"));
    let err = sync_server::Server::open(missing).await.unwrap_err().to_string();
    assert!(err.contains("token add"), "{err}");
}

fn https(server: &TestServer) -> String {
    format!("https://{}", server.addr)
}

async fn info(url: &str, security: &Security) -> Result<pb::ServerInfoResponse, tonic::Status> {
    Ok(rpc_with(url, security).server_info(pb::ServerInfoRequest {}).await?.into_inner())
}

#[tokio::test]
async fn clients_sync_over_tls() {
    let pki = Pki::new();
    let tokens = Tokens::new();
    let (tls, path) = (pki.server_tls(false), tokens.path.clone());
    let server = TestServer::start_with(|c| {
        c.tls = Some(tls);
        c.tokens = Some(path);
    })
    .await;
    let url = https(&server);
    let secure = Security { token: Some(tokens.alice.clone()), ..pki.trusting("ca.pem") };

    let a = TestClient::start_secure(&url, secure.clone());
    let b = TestClient::start_secure(&url, secure.clone());
    let big = random_bytes(3 << 20, 7);
    a.write("over-tls.bin", &big);
    eventually("the file crossed TLS twice", || b.read("over-tls.bin").as_deref() == Some(&big[..])).await;

    // A server certificate from another CA, plain HTTP/2 to a TLS port, and
    // an unknown token over a good TLS channel are all refused.
    let other = Security { token: Some(tokens.alice.clone()), ..pki.trusting("other-ca.pem") };
    assert_eq!(code(info(&url, &other).await), Code::Unavailable);
    let plain = format!("http://{}", server.addr);
    assert!(info(&plain, &token(&tokens.alice)).await.is_err());
    let forged = Security { token: Some("sst_forged".into()), ..pki.trusting("ca.pem") };
    assert_eq!(code(info(&url, &forged).await), Code::Unauthenticated);
    // Certificates on a plain address are a configuration mistake.
    assert!(pki.trusting("ca.pem").endpoint(&plain).is_err());
    drop((a, b));
}

#[tokio::test]
async fn client_certificates_when_the_server_asks() {
    let pki = Pki::new();
    // A replica, so that the primary's link can be tested too.
    let tls = pki.server_tls(true);
    let server = TestServer::start_with(|c| {
        *c = sync_server::Config { tls: Some(tls), ..sync_server::Config::replica(c.data_dir.clone()) };
    })
    .await;
    let url = https(&server);
    let without = pki.trusting("ca.pem");
    assert!(info(&url, &without).await.is_err(), "no client certificate");
    let with = Security { identity: Some((pki.file("client.pem"), pki.file("client.key"))), ..without };
    assert_eq!(info(&url, &with).await.unwrap().namespace, "default");

    // The replication link over TLS, with the primary's client certificate.
    let primary_tls = pki.server_tls(false);
    let replica_url = url.clone();
    let primary = TestServer::start_with(|c| {
        c.tls = Some(primary_tls);
        c.replica = Some(sync_server::ReplicaConfig {
            url: replica_url,
            mode: Mode::Sync,
            timeout: Duration::from_secs(5),
            on_timeout: OnTimeout::Fail,
            security: with.clone(),
        });
    })
    .await;
    let mut rpc = rpc_with(&https(&primary), &pki.trusting("ca.pem"));
    upload(&mut rpc, "replicated.txt", b"over TLS", 0).await.unwrap();
    let mut replica_rpc = rpc_with(&url, &with);
    assert_eq!(download(&mut replica_rpc, "replicated.txt").await.unwrap(), b"over TLS");
}

impl TestServer {
    /// The server's digest, asked with an admin token.
    async fn admin_digest(&self, admin: &str) -> pb::DigestResponse {
        admin_as(&self.url(), &token(admin)).digest(pb::DigestRequest {}).await.unwrap().into_inner()
    }
}

#[tokio::test]
async fn one_namespace_cannot_take_every_upload_slot() {
    let tokens = Tokens::new();
    let path = tokens.path.clone();
    let server = TestServer::start_with(|c| {
        c.tokens = Some(path);
        c.max_concurrent_uploads = 4;
        c.max_uploads_per_namespace = 2;
        c.upload_idle_timeout = DEADLINE;
    })
    .await;
    let mut alice = rpc_with(&server.url(), &token(&tokens.alice));
    let mut bob = rpc_with(&server.url(), &token(&tokens.bob));

    // Two of alice's uploads stall after their header: her share is taken.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(upload_header(&format!("stalled{i}"), b"never sent", 0)).await.unwrap();
        let mut rpc = alice.clone();
        let call =
            tokio::spawn(async move { rpc.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        stalled.push((tx, call));
    }
    let tmp = server.data_dir().join("tmp");
    eventually("both stalled uploads are being received", || count_files(&tmp) == 2).await;
    assert_eq!(code(upload(&mut alice, "third.txt", b"3", 0).await), Code::ResourceExhausted);
    // Bob's namespace still has its slots.
    upload(&mut bob, "bob.txt", b"b", 0).await.unwrap();
    for (tx, call) in stalled {
        drop(tx);
        assert!(call.await.unwrap().is_err(), "a stream that ends short is refused");
    }
    upload(&mut alice, "third.txt", b"3", 0).await.unwrap();
}

#[tokio::test]
async fn a_self_signed_certificate_trusted_as_its_own_ca() {
    // What the README's openssl recipe makes: one certificate, not a CA,
    // that clients trust directly with --ca-cert.
    let dir = tempfile::tempdir().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.signing_key.serialize_pem()).unwrap();
    let tls = sync_server::TlsConfig { cert: cert.clone(), key, client_ca: None };
    let server = TestServer::start_with(|c| c.tls = Some(tls)).await;
    let trusting = Security { ca_cert: Some(cert), ..Security::none() };
    assert_eq!(info(&https(&server), &trusting).await.unwrap().role, "primary");
}
