//! Content on the wire as runs against a base content both sides know
//! (`ChunkRuns`): [`RunsReceiver`] rebuilds an upload's bytes from its runs
//! (base chunks read, verified, from the store; new chunks' bytes from the
//! stream, each checked against its hash) into a [`ContentReceiver`], which
//! cuts and checks the whole as for a plain upload; [`download_runs`] and
//! [`send_runs`] describe a download against the client's copy and send
//! only the chunks it lacks. The runs only save bytes on the wire: the
//! server stores what it cuts itself.

use std::collections::VecDeque;

use syncstore::{
    Content, ContentHash, RelPath,
    chunks::{self, ChunkRef, MAX_RUNS_PER_MESSAGE, Run, WHOLE_MAX},
    limits::MAX_CHUNK,
    pb::{self, download_response},
};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    ServerMetrics,
    error::{Error, Result},
    storage::Store,
    transfer::{ContentReceiver, Sent},
};

/// The chunk list of `base` if an upload of namespace `ns` may be sent
/// against it: the namespace refers to it (the rule of the header-only
/// upload: content only other namespaces hold is as good as absent) and
/// the server keeps its chunk list. `UNKNOWN_BASE` otherwise.
pub(crate) async fn upload_base(
    store: &Store,
    ns: &str,
    path: &RelPath,
    base: &ContentHash,
) -> Result<Vec<ChunkRef>> {
    let unknown = || {
        Error::UnknownBase(format!(
            "the server keeps no chunk list of content {base} here: send the file plain"
        ))
    };
    if !store.path_facts(ns, path, false, Some(base)).await?.refers {
        return Err(unknown());
    }
    Ok(store.recipe(base).await?.ok_or_else(unknown)?.list)
}

/// Rebuilds the bytes of an upload sent as runs, in content order.
#[derive(Debug)]
pub(crate) struct RunsReceiver {
    store: Store,
    base: Vec<ChunkRef>,
    /// Runs received and not yet rebuilt: its front is the new chunk whose
    /// bytes come next (base runs are copied as soon as they are in front).
    queue: VecDeque<Run>,
    /// The new chunk in front: its bytes so far.
    filled: u32,
    hasher: blake3::Hasher,
    /// Content bytes rebuilt so far, and the most the header allows.
    content: u64,
    size: u64,
    metrics: ServerMetrics,
}

impl RunsReceiver {
    /// A receiver of content announced as `size` bytes, sent against `base`.
    pub(crate) fn new(store: Store, base: Vec<ChunkRef>, size: u64, metrics: ServerMetrics) -> Self {
        Self {
            store,
            base,
            queue: VecDeque::new(),
            filled: 0,
            hasher: blake3::Hasher::new(),
            content: 0,
            size,
            metrics,
        }
    }

    /// Takes a runs message and copies the base chunks it starts with.
    /// False once the receiver's writer has failed (finishing says why).
    pub(crate) async fn runs(&mut self, runs: pb::ChunkRuns, receiver: &ContentReceiver) -> Result<bool> {
        if !self.queue.is_empty() {
            return Err(Error::invalid(
                "a runs message came before the bytes of the new chunks of the one before it",
            ));
        }
        if runs.runs.len() > MAX_RUNS_PER_MESSAGE {
            return Err(Error::invalid(format!(
                "a runs message of {} runs is over the limit of {MAX_RUNS_PER_MESSAGE}",
                runs.runs.len()
            )));
        }
        for run in runs.runs {
            let run = Run::try_from(run)?;
            if let Run::Base { first, count } = run {
                chunks::base_slice(&self.base, first, count)?;
            }
            self.queue.push_back(run);
        }
        self.copy_base(receiver).await
    }

    /// Takes the bytes of a chunk message: the next new chunks' bytes.
    pub(crate) async fn bytes(&mut self, data: Vec<u8>, receiver: &ContentReceiver) -> Result<bool> {
        self.metrics.content_received_bytes.inc_by(data.len() as u64);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let Some(Run::New(c)) = self.queue.front().copied() else {
                return Err(Error::invalid(
                    "content bytes came where a runs message (or the end marker) was due",
                ));
            };
            let n = rest.len().min((c.size - self.filled) as usize);
            let (piece, after) = rest.split_at(n);
            self.hasher.update(piece);
            self.filled += n as u32;
            rest = after;
            if !self.write(piece.to_vec(), receiver).await? {
                return Ok(false);
            }
            if self.filled == c.size {
                let got = ContentHash::from(self.hasher.finalize());
                if got != c.hash {
                    return Err(Error::ContentMismatch(format!(
                        "a new chunk announced as {} hashes to {got}",
                        c.hash
                    )));
                }
                (self.filled, self.hasher) = (0, blake3::Hasher::new());
                self.queue.pop_front();
                if !self.copy_base(receiver).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Whether the content is rebuilt whole: every run received is
    /// complete and they add up to the announced size (for a stream with
    /// no end marker: replication's).
    pub(crate) fn complete(&self) -> bool {
        self.queue.is_empty() && self.content == self.size
    }

    /// Content bytes rebuilt so far (from the base and the wire): the
    /// upload's progress.
    pub(crate) fn rebuilt(&self) -> u64 {
        self.content
    }

    /// The end marker came: every run must be complete.
    pub(crate) fn end(&self) -> Result<()> {
        match self.queue.front() {
            None => Ok(()),
            Some(_) => Err(Error::invalid("the upload ended before the bytes of all its new chunks")),
        }
    }

    /// Copies the base runs at the front of the queue from the store.
    async fn copy_base(&mut self, receiver: &ContentReceiver) -> Result<bool> {
        while let Some(Run::Base { first, count }) = self.queue.front().copied() {
            self.queue.pop_front();
            let slice = chunks::base_slice(&self.base, first, count)?.to_vec();
            for c in slice {
                let Some(data) = self.store.read_chunk(&c).await? else {
                    return Err(Error::UnknownBase(format!(
                        "a chunk of the base ({}) is no longer kept here: send the file plain",
                        c.hash
                    )));
                };
                self.metrics.base_reused_bytes.inc_by(data.len() as u64);
                if !self.write(data, receiver).await? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn write(&mut self, piece: Vec<u8>, receiver: &ContentReceiver) -> Result<bool> {
        self.content += piece.len() as u64;
        if self.content > self.size {
            return Err(Error::invalid(format!(
                "the runs add up to more than the {} bytes the header announced",
                self.size
            )));
        }
        Ok(receiver.write(piece).await)
    }
}

/// A download of `content` described against `have` (content the client
/// holds), if the server can: the content has a chunk list, and either it
/// was committed over `have` (its stored runs) or namespace `ns` refers to
/// `have` and its chunk list is kept.
pub(crate) async fn download_runs(
    store: &Store,
    ns: &str,
    path: &RelPath,
    content: &Content,
    have: &ContentHash,
) -> Result<Option<Vec<Run>>> {
    if content.size <= WHOLE_MAX {
        return Ok(None);
    }
    let Some(recipe) = store.recipe(&content.hash).await? else { return Ok(None) };
    if let Some((prev, runs)) = recipe.prev
        && prev == *have
    {
        return Ok(Some(runs));
    }
    if !store.path_facts(ns, path, false, Some(have)).await?.refers {
        return Ok(None);
    }
    let Some(base) = store.recipe(have).await? else { return Ok(None) };
    Ok(Some(chunks::diff(&base.list, &recipe.list)))
}

/// Sends `runs` (at most [`MAX_RUNS_PER_MESSAGE`] a message), each runs
/// message followed by the bytes of its new chunks, read verified from the
/// store, in chunk messages of at most [`MAX_CHUNK`] bytes.
pub(crate) async fn send_runs(
    store: &Store,
    runs: Vec<Run>,
    tx: &mpsc::Sender<Result<pb::DownloadResponse, Status>>,
    metrics: &ServerMetrics,
) -> Result<Sent> {
    let wrap = |msg| Ok(pb::DownloadResponse { msg: Some(msg) });
    let runs_msg = |r| wrap(download_response::Msg::Runs(r));
    let chunk_msg = |c| wrap(download_response::Msg::Chunk(c));
    send_runs_as(store, runs, tx, (runs_msg, chunk_msg), &metrics.content_sent_bytes).await
}

/// [`send_runs`] on any stream (replication's too): its runs and chunk
/// messages made by `framing`, the bytes of the new chunks counted in
/// `sent`.
pub(crate) async fn send_runs_as<M>(
    store: &Store,
    runs: Vec<Run>,
    tx: &mpsc::Sender<M>,
    framing: (impl Fn(pb::ChunkRuns) -> M, impl Fn(Vec<u8>) -> M),
    sent: &prometheus::IntCounter,
) -> Result<Sent> {
    let (runs_msg, chunk_msg) = framing;
    for batch in runs.chunks(MAX_RUNS_PER_MESSAGE) {
        let message = pb::ChunkRuns { runs: batch.iter().map(|r| pb::ChunkRun::from(*r)).collect() };
        if tx.send(runs_msg(message)).await.is_err() {
            return Ok(Sent::Closed);
        }
        let new: Vec<ChunkRef> =
            batch.iter().filter_map(|r| if let Run::New(c) = r { Some(*c) } else { None }).collect();
        if send_chunks_as(store, &new, tx, &chunk_msg, sent).await? == Sent::Closed {
            return Ok(Sent::Closed);
        }
    }
    Ok(Sent::Whole)
}

/// Sends the bytes of `chunks`, read verified from the store, concatenated
/// in chunk messages of at most [`MAX_CHUNK`] bytes made by `chunk_msg`,
/// counted in `sent`.
pub(crate) async fn send_chunks_as<M>(
    store: &Store,
    chunks: &[ChunkRef],
    tx: &mpsc::Sender<M>,
    chunk_msg: &impl Fn(Vec<u8>) -> M,
    sent: &prometheus::IntCounter,
) -> Result<Sent> {
    let mut out = Vec::new();
    for c in chunks {
        let Some(data) = store.read_chunk(c).await? else {
            return Err(Error::DataLoss(format!("chunk {} is missing from the store", c.hash)));
        };
        let mut rest = &data[..];
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(rest.len().min(MAX_CHUNK - out.len()));
            out.extend_from_slice(piece);
            rest = after;
            if out.len() == MAX_CHUNK {
                sent.inc_by(out.len() as u64);
                if tx.send(chunk_msg(std::mem::take(&mut out))).await.is_err() {
                    return Ok(Sent::Closed);
                }
            }
        }
    }
    if !out.is_empty() {
        sent.inc_by(out.len() as u64);
        if tx.send(chunk_msg(out)).await.is_err() {
            return Ok(Sent::Closed);
        }
    }
    Ok(Sent::Whole)
}
