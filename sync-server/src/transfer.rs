//! Content on the wire, both ways: [`send_content`] streams stored content
//! as it is read and verified (Download and the replication sender), and
//! [`ContentReceiver`] writes received chunks into a new upload of the
//! store (one blob, or chunk blobs for content over 1 MiB) and finishes it
//! verified (Upload and the replica), both through the storage's traits. The store's work is pipelined with the network; no content is
//! ever held whole.

use syncstore::{ContentHash, limits::MAX_CHUNK};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    error::Result,
    storage::{ContentReader, ContentUpload, StagedContent, Store},
};

/// Chunks buffered between the network and the content store's upload of a content
/// being received: the network reads ahead of the disk by at most this
/// many chunks (4 MiB of full chunks) per transfer.
pub(crate) const RECEIVE_PIPELINE: usize = 4;

/// How sending a content ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// All of it went; its last chunk once the whole content had matched
    /// its hash.
    Whole,
    /// The receiving side went away before the end.
    Closed,
}

/// Sends stored content to `tx` as it is read and verified, in chunks of at most [`MAX_CHUNK`] bytes that `wrap` makes into
/// messages. The last chunk goes only once all of the content matched its
/// hash: damaged content ends the read with `DATA_LOSS` before it (the blob
/// set aside), and the caller tells its peer so, which therefore never
/// holds damaged content whole.
pub(crate) async fn send_content<M: Send + 'static>(
    mut reader: Box<dyn ContentReader>,
    tx: mpsc::Sender<M>,
    wrap: impl Fn(Vec<u8>) -> M + Send,
) -> Result<Sent> {
    while let Some(chunk) = reader.next_chunk(MAX_CHUNK).await? {
        if tx.send(wrap(chunk)).await.is_err() {
            return Ok(Sent::Closed);
        }
    }
    Ok(Sent::Whole)
}

/// A content being received into the content store: each chunk goes to an
/// upload ([`Store::upload`]) written by a task of its own, with up to [`RECEIVE_PIPELINE`] chunks
/// waiting for it while the next ones come off the network. Nothing is
/// kept unless it is finished ([`ContentReceiver::finish`]): dropped, its
/// temp file is deleted once the writer has stopped; [`ContentReceiver::abort`]
/// waits for that.
#[derive(Debug)]
pub(crate) struct ContentReceiver {
    tx: mpsc::Sender<Vec<u8>>,
    writer: JoinHandle<Result<Box<dyn ContentUpload>>>,
}

impl ContentReceiver {
    /// Starts receiving content announced as `size` bytes into a new
    /// upload of `store` (cut into chunks as it comes when it is larger
    /// than one).
    pub(crate) fn start(store: &Store, size: u64) -> Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(RECEIVE_PIPELINE);
        let store = store.clone();
        let writer = tokio::spawn(async move {
            let mut upload = store.upload(size).await?;
            while let Some(chunk) = rx.recv().await {
                upload.write(chunk).await?;
            }
            Ok(upload)
        });
        Ok(Self { tx, writer })
    }

    /// Hands `chunk` to the writer, waiting while the pipeline is full.
    /// False once the writer has failed: [`ContentReceiver::finish`] says
    /// why.
    pub(crate) async fn write(&self, chunk: Vec<u8>) -> bool {
        self.tx.send(chunk).await.is_ok()
    }

    /// Waits until every chunk is written, then checks the content against
    /// `hash` and `size` and makes it as durable as its size asks
    /// ([`ContentUpload::complete`]): staged, ready to commit. A failed
    /// write or a mismatch keeps nothing.
    pub(crate) async fn finish(self, hash: ContentHash, size: u64) -> Result<Box<dyn StagedContent>> {
        self.close().await?.complete(hash, size).await
    }

    /// Waits until the writer has stopped and deletes the temp file:
    /// nothing received is kept, and nothing is left behind once this
    /// returns.
    pub(crate) async fn abort(self) {
        // A writer that failed has deleted its temp file already.
        if let Ok(upload) = self.close().await {
            upload.abort().await;
        }
    }

    async fn close(self) -> Result<Box<dyn ContentUpload>> {
        drop(self.tx);
        self.writer.await?
    }
}

#[cfg(test)]
mod tests {
    use syncstore::chunks::WHOLE_MAX;

    use super::*;
    use crate::{error::Error, storage::StoreOptions};

    /// Files in the store's temp folder: what a receiver leaves behind.
    fn temp_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    /// `n` bytes that differ from chunk to chunk.
    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i / 7 % 251) as u8).collect()
    }

    /// Receives `data` in chunks of `at_most` bytes and finishes it.
    async fn receive(store: &Store, data: &[u8], at_most: usize) -> Result<Box<dyn StagedContent>> {
        let receiver = ContentReceiver::start(store, data.len() as u64)?;
        for chunk in data.chunks(at_most) {
            assert!(receiver.write(chunk.to_vec()).await);
        }
        receiver.finish(ContentHash::of(data), data.len() as u64).await
    }

    #[tokio::test]
    async fn what_is_received_is_sent_back_whole_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let data = content(2 * MAX_CHUNK + 12345);
        let staged = receive(&store, &data, 100_000).await.unwrap();
        store.restore_blob(staged).await.unwrap();

        let reader = store.content_reader(&ContentHash::of(&data), data.len() as u64).await.unwrap().unwrap();
        let (tx, mut rx) = mpsc::channel(RECEIVE_PIPELINE);
        let sending = tokio::spawn(send_content(reader, tx, |c| c));
        let mut back = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = rx.recv().await {
            assert!(chunk.len() <= MAX_CHUNK);
            back.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert_eq!(sending.await.unwrap().unwrap(), Sent::Whole);
        assert_eq!((back == data, chunks), (true, 3), "stored as chunks, sent in full pieces");
        assert!(store.recipe(&ContentHash::of(&data)).await.unwrap().is_some());
        assert_eq!(temp_files(dir.path()), 0);
    }

    /// Flips one byte of the stored blob `hash` at `at`.
    fn flip(dir: &std::path::Path, hash: &ContentHash, at: usize) {
        let hex = hash.to_hex();
        let blob = dir.join("blobs").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes[at] ^= 1;
        std::fs::write(&blob, bytes).unwrap();
    }

    /// Sends stored content `hash` of `size` bytes: how it ended and how
    /// many bytes went.
    async fn send_stored(store: &Store, hash: &ContentHash, size: u64) -> (Result<Sent>, usize) {
        let reader = store.content_reader(hash, size).await.unwrap().unwrap();
        let (tx, mut rx) = mpsc::channel(RECEIVE_PIPELINE);
        let sending = tokio::spawn(send_content(reader, tx, |c: Vec<u8>| c));
        let mut got = 0;
        while let Some(chunk) = rx.recv().await {
            got += chunk.len();
        }
        (sending.await.unwrap(), got)
    }

    #[tokio::test]
    async fn damaged_content_ends_with_data_loss_before_its_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        // A whole blob: one byte of the stored copy flipped, past the first chunk.
        let data = content(WHOLE_MAX as usize);
        let hash = ContentHash::of(&data);
        store.restore_blob(receive(&store, &data, MAX_CHUNK).await.unwrap()).await.unwrap();
        flip(dir.path(), &hash, MAX_CHUNK - 5);
        let reader = store.content_reader(&hash, data.len() as u64).await.unwrap().unwrap();
        let (tx, mut rx) = mpsc::channel(RECEIVE_PIPELINE);
        let sent = send_content(reader, tx, |c| c).await;
        assert!(matches!(sent, Err(Error::DataLoss(_))), "{sent:?}");
        assert!(rx.recv().await.is_none(), "its one chunk did not go");
        assert!(store.is_damaged(&hash).await.unwrap(), "the damaged copy is set aside");

        // Content stored as chunks: its last chunk damaged.
        let data = content(2 * MAX_CHUNK + 12345);
        let hash = ContentHash::of(&data);
        store.restore_blob(receive(&store, &data, MAX_CHUNK).await.unwrap()).await.unwrap();
        let last = *store.recipe(&hash).await.unwrap().unwrap().list.last().unwrap();
        flip(dir.path(), &last.hash, 3);
        let (sent, got) = send_stored(&store, &hash, data.len() as u64).await;
        assert!(matches!(sent, Err(Error::DataLoss(_))), "{sent:?}");
        assert!(got < data.len(), "{got} bytes went");
        assert!(store.is_damaged(&last.hash).await.unwrap(), "the damaged chunk is set aside");
    }

    #[tokio::test]
    async fn a_receiver_gone_ends_the_send() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let data = content(3 * MAX_CHUNK);
        store.restore_blob(receive(&store, &data, MAX_CHUNK).await.unwrap()).await.unwrap();
        let reader = store.content_reader(&ContentHash::of(&data), data.len() as u64).await.unwrap().unwrap();
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        assert_eq!(send_content(reader, tx, |c| c).await.unwrap(), Sent::Closed);
    }

    #[tokio::test]
    async fn content_that_does_not_match_its_header_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let data = content(1000);
        let receiver = ContentReceiver::start(&store, data.len() as u64).unwrap();
        assert!(receiver.write(data.clone()).await);
        let wrong = receiver.finish(ContentHash::of(b"other"), data.len() as u64).await;
        assert!(matches!(wrong, Err(Error::ContentMismatch(_))), "{wrong:?}");
        let receiver = ContentReceiver::start(&store, data.len() as u64).unwrap();
        assert!(receiver.write(data.clone()).await);
        let short = receiver.finish(ContentHash::of(&data), data.len() as u64 + 1).await;
        assert!(matches!(short, Err(Error::ContentMismatch(_))), "{short:?}");
        assert_eq!(temp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn an_aborted_receiver_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).await.unwrap();
        let receiver = ContentReceiver::start(&store, MAX_CHUNK as u64).unwrap();
        for _ in 0..3 {
            assert!(receiver.write(content(MAX_CHUNK)).await);
        }
        // The writer task makes its temp file with the chunk it takes first.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while temp_files(dir.path()) != 1 {
            assert!(std::time::Instant::now() < deadline, "no temp file was made");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        receiver.abort().await;
        assert_eq!(temp_files(dir.path()), 0, "gone once abort returns");
    }
}
