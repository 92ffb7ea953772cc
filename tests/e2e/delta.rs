//! Block-level transfer end to end: a server and two watching clients; each
//! edit of a large file (several chunks) arrives byte-identical on the other
//! client, while the content bytes on the wire, each leg counted by the
//! client on its end, stay far below the file's size when the edit is
//! small: the upload went as runs against the file's previous version, and
//! the download was assembled from the other client's copy of it. A file
//! the previous release stored whole goes plain once, then as runs.

use std::path::Path;

use sync_client::metrics::ClientMetrics;

use crate::harness::*;

/// The file: 8 MiB, some 128 chunks.
const SIZE: usize = 8 << 20;
/// The most content bytes a small edit may put on the wire in either leg:
/// the few chunks around it (a chunk is 16 KiB to 256 KiB), an eighth of
/// the file.
const SMALL_EDIT_BOUND: u64 = 1 << 20;

/// A client that counts into metrics the test reads.
fn client(server: &TestServer) -> (TestClient, ClientMetrics) {
    let metrics = ClientMetrics::new();
    let counted = metrics.clone();
    (TestClient::start_tweaked(&server.url(), move |c| c.metrics = counted), metrics)
}

/// Replaces `path` with `data` at once (a rename), so that the watcher
/// never sees a half-written edit.
fn replace(path: &Path, data: &[u8]) {
    let staged = tempfile::NamedTempFile::new_in(path.parent().unwrap().parent().unwrap()).unwrap();
    std::fs::write(staged.path(), data).unwrap();
    staged.persist(path).unwrap();
}

/// Content bytes one edit put on the wire: up (by the editing client) and
/// down (to the other), and the bytes the other copied from its own file.
#[derive(Debug)]
struct Moved {
    sent: u64,
    received: u64,
    reused: u64,
}

/// Writes `data` as `big.bin` in `up`'s folder and waits until `down` has
/// it, byte for byte, and both clients have counted their transfer.
async fn edit(
    (up, up_metrics): &(TestClient, ClientMetrics),
    (down, down_metrics): &(TestClient, ClientMetrics),
    what: &str,
    data: &[u8],
) -> Moved {
    let (uploads, downloads) = (up_metrics.uploads.get(), down_metrics.downloads.get());
    let (sent, received, reused) = (
        up_metrics.content_sent_bytes.get(),
        down_metrics.content_received_bytes.get(),
        down_metrics.reused_bytes.get(),
    );
    replace(&up.path("big.bin"), data);
    eventually(&format!("{what}: the other client has the new file"), || {
        up_metrics.uploads.get() > uploads
            && down_metrics.downloads.get() > downloads
            && down.read("big.bin").is_some_and(|d| d == data)
    })
    .await;
    assert!(up.read("big.bin").unwrap() == data, "{what}: the edited file stays as written");
    let moved = Moved {
        sent: up_metrics.content_sent_bytes.get() - sent,
        received: down_metrics.content_received_bytes.get() - received,
        reused: down_metrics.reused_bytes.get() - reused,
    };
    tracing::info!(what, ?moved, "edit synced");
    moved
}

/// Asserts that a small edit moved few bytes each way, the rest of the
/// file reused from the other client's copy.
fn small(what: &str, moved: &Moved, size: usize) {
    assert!(moved.sent <= SMALL_EDIT_BOUND, "{what}: {} bytes sent for a {size}-byte file", moved.sent);
    assert!(
        moved.received <= SMALL_EDIT_BOUND,
        "{what}: {} bytes received for a {size}-byte file",
        moved.received
    );
    assert_eq!(moved.received + moved.reused, size as u64, "{what}: the rest was copied locally ({moved:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_large_file_travel_as_the_chunks_they_touch() {
    let server = TestServer::start().await;
    let (a, b) = (client(&server), client(&server));

    let mut data = random_bytes(SIZE, 16);
    let first = edit(&a, &b, "a new file", &data).await;
    assert_eq!((first.sent, first.received), (SIZE as u64, SIZE as u64), "a new file travels whole");

    let at = 4 * 1024 * 1024 + 12_345;
    data[at..at + 4096].copy_from_slice(&random_bytes(4096, 17));
    small("an overwrite in the middle", &edit(&a, &b, "overwrite", &data).await, data.len());

    data.splice(2 * 1024 * 1024 + 7..2 * 1024 * 1024 + 7, random_bytes(100, 18));
    small("an insert", &edit(&a, &b, "insert", &data).await, data.len());

    data.extend_from_slice(&random_bytes(64 * 1024, 19));
    small("an append", &edit(&a, &b, "append", &data).await, data.len());

    data.truncate(6 * 1024 * 1024 + 333);
    small("a truncation", &edit(&a, &b, "truncate", &data).await, data.len());

    // The other way: b edits, a receives.
    data[100..200].copy_from_slice(&[0x5a; 100]);
    small("an edit from the other client", &edit(&b, &a, "edit back", &data).await, data.len());

    let empty = edit(&a, &b, "shrink to empty", &[]).await;
    assert_eq!((empty.sent, empty.received), (0, 0), "nothing to send for an empty file");

    // Nothing to take runs from: the content travels whole, and arrives.
    let grown = random_bytes(SIZE + 4321, 20);
    let moved = edit(&a, &b, "grow from empty", &grown).await;
    assert_eq!((moved.sent, moved.received), (grown.len() as u64, grown.len() as u64));

    assert!(server.files().await["big.bin"] == grown, "the server holds the last version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_stored_whole_by_the_previous_release_goes_plain_once_then_as_runs() {
    init_test_log();
    // The fixture's big.bin (1.5 MiB) is one whole blob with no chunk list.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v6/primary");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_dir(&fixture, &data);
    let server = TestServer::start_on(sync_server::Config::new(data), "127.0.0.1:0".parse().unwrap()).await;
    let (a, b) = (client(&server), client(&server));
    let mut big = server.files().await["big.bin"].clone();
    eventually("both clients have big.bin", || {
        a.0.read("big.bin").as_deref() == Some(&big[..]) && b.0.read("big.bin").as_deref() == Some(&big[..])
    })
    .await;

    // The server has no chunk list of it to take runs against: the edit is
    // sent whole (after the refused runs, which carried a few chunks).
    big[700_000..704_096].copy_from_slice(&random_bytes(4096, 7));
    let moved = edit(&a, &b, "the first edit", &big).await;
    assert!(moved.sent >= big.len() as u64, "sent whole: {moved:?}");

    // The new version is stored with its list: the next edit goes as runs.
    big[100_000..100_100].copy_from_slice(&[0xa5; 100]);
    let moved = edit(&a, &b, "the second edit", &big).await;
    small("the second edit", &moved, big.len());
    assert!(moved.sent < big.len() as u64 / 4, "the second edit: {moved:?}");
    assert!(server.files().await["big.bin"] == big, "the server holds the last version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_against_a_base_chunk_damaged_on_the_server_goes_whole_and_heals_it() {
    let server = TestServer::start().await;
    let (a, b) = (client(&server), client(&server));
    let mut data = random_bytes(SIZE, 30);
    edit(&a, &b, "a new file", &data).await;

    // A chunk of the stored version that the edit below leaves alone rots
    // on the server's disk.
    let first = syncstore::chunks::chunk_list(&data[..], SIZE as u64).unwrap().2[0];
    let blob = blob_path(server.data_dir(), &first.hash);
    let mut rotten = std::fs::read(&blob).unwrap();
    rotten[10] ^= 1;
    std::fs::write(&blob, rotten).unwrap();

    // The runs cannot be rebuilt from it: the edit goes whole, which also
    // stores that chunk again.
    let at = 4 * 1024 * 1024 + 12_345;
    data[at..at + 4096].copy_from_slice(&random_bytes(4096, 31));
    let moved = edit(&a, &b, "an edit against a damaged base", &data).await;
    assert!(moved.sent >= SIZE as u64, "sent whole: {moved:?}");
    assert!(server.files().await["big.bin"] == data, "the server holds the edit");
    let healed = std::fs::read(&blob).unwrap();
    assert_eq!(syncstore::ContentHash::of(&healed), first.hash, "the chunk is stored good again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_large_file_comes_down_from_the_local_copy() {
    let server = TestServer::start().await;
    let (a, b) = (client(&server), client(&server));
    let data = random_bytes(SIZE, 50);
    edit(&a, &b, "a new file", &data).await;

    // A copies the file: the other client already holds that content under
    // the first name, and takes every chunk from there.
    let (downloads, received, reused) =
        (b.1.downloads.get(), b.1.content_received_bytes.get(), b.1.reused_bytes.get());
    replace(&a.0.path("copy.bin"), &data);
    eventually("the other client has the copy", || {
        b.1.downloads.get() > downloads && b.0.read("copy.bin").is_some_and(|d| d == data)
    })
    .await;
    let received = b.1.content_received_bytes.get() - received;
    assert_eq!(received, 0, "no content travelled for the copy");
    assert_eq!(b.1.reused_bytes.get() - reused, SIZE as u64, "all of it came from big.bin");
    assert!(b.0.read("big.bin").unwrap() == data, "the source is untouched");
}
