//! Operating the server: the Prometheus endpoint.

use syncstore::pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::harness::*;

/// `GET /metrics` over plain HTTP/1.1; returns the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn metrics_count_what_the_server_does() {
    let data = tempfile::tempdir().unwrap();
    let server = sync_server::Server::open(sync_server::Config::new(data.path().join("data"))).await.unwrap();
    let (listener, metrics_listener) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics_listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let metrics = tokio::spawn(server.metrics_server().serve(metrics_listener, shutdown.clone()));
    let serving = tokio::spawn(server.serve(listener, shutdown.clone()));

    let mut rpc = rpc_with(&format!("http://{addr}"), &Default::default());
    for (i, data) in [&b"one"[..], b"two!", b"three"].iter().enumerate() {
        upload(&mut rpc, &format!("f{i}"), data, 0).await.unwrap();
    }
    download(&mut rpc, "f2").await.unwrap();
    assert_eq!(upload(&mut rpc, "f0", b"stale", 0).await.unwrap_err().code(), Code::Aborted);
    let _sub = rpc.subscribe(pb::SubscribeRequest { after_seq: 3, client_id: "m".into() }).await.unwrap();

    eventually_async("the subscriber is counted", || async {
        scrape(metrics_addr).await.lines().any(|l| l == "syncstore_subscribers 1")
    })
    .await;
    let body = scrape(metrics_addr).await;
    for line in [
        "syncstore_uploads_total 3",
        "syncstore_upload_bytes_total 12",
        "syncstore_downloads_total 1",
        "syncstore_download_bytes_total 5",
        r#"syncstore_errors_total{code="Aborted"} 1"#,
        "syncstore_head_seq 3",
        "syncstore_commit_seconds_count 3",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in:\n{body}");
    }

    shutdown.cancel();
    serving.await.unwrap().unwrap();
    metrics.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_metrics_count_transfers_and_conflicts() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = sync_client::Config::new(server.url(), dir.path());
    let metrics = config.metrics.clone();
    let shutdown = CancellationToken::new();
    let client = tokio::spawn(sync_client::watch(config, shutdown.clone()));

    write(dir.path(), "mine.txt", "12345");
    upload(&mut server.rpc().await, "theirs.txt", b"abc", 0).await.unwrap();
    eventually("one upload and one download counted", || {
        metrics.uploads.get() == 1 && metrics.downloads.get() == 1
    })
    .await;
    assert_eq!(metrics.upload_bytes.get(), 5);
    assert_eq!(metrics.download_bytes.get(), 3);
    let text = {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&metrics.registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(text.lines().any(|l| l == "syncstore_client_uploads_total 1"), "{text}");
    assert_eq!(metrics.conflicts.get(), 0);
    shutdown.cancel();
    client.await.unwrap().unwrap();
}
