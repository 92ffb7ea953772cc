//! `sync-server migrate`: an embedded data folder with history, a lock,
//! a tombstone and a large (chunked) file, copied into real PostgreSQL and
//! a real S3 server (s3s-fs); the new server is identical to the old one
//! (`compare`, history included), a subscriber resumes at its cursor
//! without a RESET, a watching client goes on against it, and a second run
//! resumes without copying content twice; a share link works on the new
//! server.

use sync_server::{
    Backend,
    storage::{Share, Store, StoreOptions},
};
use syncstore::{
    connect::Security,
    pb::{self, change_event::Kind, history_client::HistoryClient},
};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn a_migrated_data_folder_continues_on_postgres_and_a_bucket_without_a_reset() {
    init_test_log();
    // The old server is embedded, whatever backend this test run uses.
    let old = TestServer::start_with(|c| c.backend = Backend::Embedded).await;
    let alice = TestClient::start(&old.url());
    alice.write("notes.txt", "first");
    eventually_async("notes.txt v1 on the old server", || async {
        old.files().await.get("notes.txt").is_some_and(|d| d == b"first")
    })
    .await;
    alice.write("notes.txt", "second, longer");
    let big = random_bytes(3 << 20, 7);
    alice.write("big.bin", &big);
    alice.write("gone.txt", "bye");
    eventually_async("the files on the old server", || async {
        let files = old.files().await;
        files.get("notes.txt").is_some_and(|d| d == b"second, longer")
            && files.get("big.bin").is_some_and(|d| *d == big)
            && files.contains_key("gone.txt")
    })
    .await;
    std::fs::remove_file(alice.path("gone.txt")).unwrap();
    eventually_async("gone.txt deleted on the old server", || async {
        !old.files().await.contains_key("gone.txt")
    })
    .await;
    let mut rpc = old.rpc().await;
    rpc.lock(pb::LockRequest {
        path: "notes.txt".into(),
        ttl_seconds: 3600,
        note: "editing".into(),
        client_id: "alice-lock".into(),
        holder: "alice@laptop".into(),
    })
    .await
    .unwrap();
    let mut history = HistoryClient::new(Security::none().channel(&old.url()).unwrap());
    history
        .set_label(pb::SetLabelRequest { name: "before-migration".into(), at: None, note: "".into() })
        .await
        .unwrap();
    let head = old.status().await.head_seq;
    let folder = alice.stop().await;
    let (config, data, _) = old.stop().await;
    // A share link (the dashboard's records, beside the history).
    let link = "5a".repeat(32);
    {
        let store = Store::open(&config.data_dir, StoreOptions::default()).await.unwrap();
        let share = Share {
            id: link.clone(),
            namespace: "default".into(),
            path: "notes.txt".into(),
            folder: false,
            created_by: "anonymous".into(),
            created_ms: 1_700_000_000_000,
            expires_ms: 0,
            password: String::new(),
            revoked_ms: 0,
        };
        store.put_share(share).await.unwrap();
    }

    // Migrate, then run it again: the second run finds every content there.
    let Backend::Shared { meta, content } = Services::of_process().fresh_backend() else { unreachable!() };
    let first = sync_server::storage::migrate(&config.data_dir, &meta, &content).await.unwrap();
    assert_eq!(first.head, head);
    assert!(first.contents_copied >= 3, "{first:?}");
    let again = sync_server::storage::migrate(&config.data_dir, &meta, &content).await.unwrap();
    assert_eq!(
        (again.contents_copied, again.contents_present),
        (0, first.contents_copied + first.contents_present)
    );
    assert_eq!(again.rows, first.rows);

    let backend = Backend::Shared { meta: meta.clone(), content: content.clone() };
    let new = TestServer::start_with_web(|c| c.backend = backend.clone()).await;
    let old = TestServer::start_on(config.clone(), "127.0.0.1:0".parse().unwrap()).await;
    let compared = sync_server::compare(&old.url(), &new.url(), &Security::none()).await.unwrap();
    assert!(compared.identical(), "{:?}", compared.differences);
    assert!(!compared.history_differs, "the history differs after the migration");
    let status = new.status().await;
    assert_eq!((status.head_seq, status.backend.as_str()), (head, "postgres+s3"));
    assert_eq!(status.history_id, old.status().await.history_id);

    // Versions, the trash, the label and the lock came along.
    let mut history = HistoryClient::new(Security::none().channel(&new.url()).unwrap());
    let mut versions = history
        .list_versions(pb::ListVersionsRequest { path: "notes.txt".into(), limit: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while versions.message().await.unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 2, "both versions of notes.txt");
    let mut trash = history.list_trash(pb::ListTrashRequest::default()).await.unwrap().into_inner();
    let mut trashed = Vec::new();
    while let Some(t) = trash.message().await.unwrap() {
        trashed.extend(t.deleted.and_then(|v| v.entry).map(|e| e.path));
    }
    assert_eq!(trashed, ["gone.txt"]);
    let mut labels = history.list_labels(pb::ListLabelsRequest::default()).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(l) = labels.message().await.unwrap() {
        names.extend(l.label.map(|l| l.name));
    }
    assert!(names.iter().any(|n| n == "before-migration"), "{names:?}");
    let mut rpc = new.rpc().await;
    let locks = locks_of(rpc.list_locks(pb::ListLocksRequest::default()).await.unwrap().into_inner()).await;
    assert_eq!(
        locks.iter().map(|l| (l.path.as_str(), l.holder.as_str())).collect::<Vec<_>>(),
        [("notes.txt", "alice@laptop")]
    );
    // The share link came along: it serves the file without a login.
    let shared = crate::web::http(&new.web_url(), "GET", &format!("/s/{link}/download"), None, None).await;
    assert_eq!((shared.status, shared.text().as_str()), (200, "second, longer"));
    // The lock is enforced: another client's write is refused.
    let refused = upload(&mut rpc, "notes.txt", b"not yours", head).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // A subscriber resumes at its cursor: the next change, no RESET.
    let mut events = rpc
        .subscribe(pb::SubscribeRequest { after_seq: head, client_id: "old-cursor".into() })
        .await
        .unwrap()
        .into_inner();
    let alice = TestClient::start_in(&new.url(), folder);
    let bob = TestClient::start(&new.url());
    bob.write("after.txt", "written after the move");
    let event = next_event(&mut events).await;
    assert_ne!(event.kind(), Kind::Reset);
    assert_eq!(event.seq, head + 1);
    eventually("after.txt reaches alice's folder", || {
        alice.read("after.txt").is_some_and(|d| d == b"written after the move")
    })
    .await;
    eventually("bob's folder holds the migrated files", || {
        bob.read("big.bin").is_some_and(|d| d == big)
            && bob.read("notes.txt").is_some_and(|d| d == b"second, longer")
    })
    .await;
    assert_eq!(alice.read("notes.txt").as_deref(), Some(&b"second, longer"[..]));
    assert!(alice.read("gone.txt").is_none());
    alice.stop().await;
    bob.stop().await;
    new.stop().await;

    // A database holding this history refuses another folder's migration.
    let other = TestServer::start_with(|c| c.backend = Backend::Embedded).await;
    upload(&mut other.rpc().await, "x.txt", b"x", 0).await.unwrap();
    let (other_config, _other_data, _) = other.stop().await;
    let err = sync_server::storage::migrate(&other_config.data_dir, &meta, &content).await.unwrap_err();
    assert!(matches!(err, sync_server::Error::FailedPrecondition(_)), "{err}");
    old.stop().await;
    drop(data);
}
