//! Moving whole files: streaming a local file up (`Upload`) and a server
//! file down (`Download`) into a temp file that is verified, fsynced and
//! renamed into place. Neither side ever holds a whole file in memory. A
//! download leaves blocks of zeros as holes, so a sparse file stays sparse.
//!
//! Content larger than one chunk ([`WHOLE_MAX`]) travels as runs against a
//! base both sides know, when this client knows the base's chunk list (see
//! [`syncstore::chunks`]). An upload based on such content cuts the file as
//! it reads it and sends the chunks the base lacks; the others are runs
//! naming the base's chunks, which the server copies from its own store. A
//! download names the content of the local file it replaces, and assembles
//! the new content in order from the local file's chunks (each checked
//! against its hash as it is copied: a local file that changed meanwhile
//! makes the download start over plain) and the new chunks the server
//! sends (each checked against its hash). Either way the file is read or
//! written once, its chunk list is computed in that same pass, and the
//! whole content is checked against its hash and size as for a plain
//! transfer. A server that refuses the base (`unknown-base`) gets the file
//! plain.

use std::{
    collections::{HashMap, VecDeque},
    fs,
    io::Read,
    os::unix::fs::{FileExt, PermissionsExt},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use syncstore::{
    ContentHash, Entry, RelPath,
    chunks::{self, Chunk, ChunkRef, Chunker, MAX_RUNS_PER_MESSAGE, Run, WHOLE_MAX},
    limits::{MAX_CHUNK, MAX_PATH_BYTES},
};
use tokio::sync::mpsc;

use crate::{
    error::{Error, Result},
    fsmeta::{Kind, Meta},
    fsroot::{Dir, Root, TempFile},
    plan::Local,
    remote::{Body, Piece, PieceStream, Refused, Remote, Upload},
};

/// Chunks read ahead of the network.
const PIPELINE: usize = 4;
/// A downloaded block of this many bytes (aligned to it in the file) that
/// is all zeros is left as a hole rather than written, so a sparse file
/// stays sparse: a file-system block, the smallest unit a hole saves.
const HOLE_BLOCK: usize = 4096;
/// An upload as runs gathers the bytes of new chunks up to this much
/// before it sends them with the runs that name them: one wire chunk's
/// worth, so that a stretch of small edits costs few messages.
const RUNS_FLUSH_BYTES: usize = MAX_CHUNK;

tokio::task_local! {
    /// The content bytes the transfer running in this task has moved so
    /// far (an upload: read and handed to the wire, as bytes or as runs; a
    /// download: written into place), for a caller that shows it (the
    /// large lane, for the live status). Set with `PROGRESS.scope`; a
    /// transfer outside a scope counts nothing.
    pub static PROGRESS: Arc<AtomicU64>;
}

/// Adds `n` bytes to `progress`, if the transfer is watched.
fn count(progress: Option<&Arc<AtomicU64>>, n: usize) {
    if let Some(p) = progress {
        p.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Whether `local` is content cut into several chunks: a regular file
/// larger than [`WHOLE_MAX`].
pub fn is_chunked(local: &Local) -> bool {
    !local.folder && !local.symlink && local.size > WHOLE_MAX
}

/// What an upload is based on.
#[derive(Debug, Clone)]
pub struct UploadBase {
    /// The version the change is based on (0 for a new file).
    pub version: u64,
    /// The token of this client's lock on the path (0 for none).
    pub lock_token: u64,
    /// First ask the server to reuse content it already holds under the
    /// file's hash (a rename or copy), without sending it.
    pub reuse: bool,
    /// The content the path was synced at and its chunk list, when this
    /// client knows it: a large file is then sent as runs against it.
    pub chunks: Option<(ContentHash, Vec<ChunkRef>)>,
    /// The path the file moved from, if it did (see [`Upload::moved_from`]).
    pub moved_from: Option<RelPath>,
}

/// What an upload did.
#[derive(Debug)]
pub struct Uploaded {
    /// The server's new entry.
    pub entry: Entry,
    /// Whether the content was sent (not when the server reused content it
    /// held under the file's hash).
    pub sent: bool,
    /// Whether it went as runs against its base.
    pub as_runs: bool,
    /// Content bytes put on the wire, those of an attempt the server
    /// refused included.
    pub wire_bytes: u64,
    /// The content's chunk list, computed in the read that sent it (only
    /// for content cut into several chunks).
    pub chunks: Option<Vec<ChunkRef>>,
}

/// Uploads `path` as `expected` (what it hashed to), based on `base`.
///
/// The end marker goes out only once the whole file was read and found as
/// `expected`; a file that changed meanwhile cancels the call, so the
/// server stores nothing. Once the server answered OK, its entry is
/// returned whatever the reader found afterwards: the server checked the
/// content against the header, so what it stored is `expected`.
///
/// A large file whose base's chunk list is known goes as runs against the
/// base. If the server cannot use that base (`unknown-base`), or refuses
/// the body as invalid (`content-mismatch`: the list was not the server's;
/// or a server of an earlier release, which knows no runs), or cannot
/// rebuild it because a base chunk is damaged on its disk (`DATA_LOSS`:
/// the whole content stores that chunk again), the file is sent again
/// plain, once.
pub async fn upload(
    remote: &dyn Remote,
    root: &Root,
    path: &RelPath,
    expected: Local,
    base: UploadBase,
) -> Result<Uploaded> {
    let UploadBase { version: base_version, lock_token, reuse, chunks, moved_from } = base;
    let mut upload = Upload {
        path: path.clone(),
        content: expected,
        base_version,
        lock_token,
        base_hash: None,
        moved_from,
    };
    if reuse
        && expected.size > 0
        && let Some(entry) = remote.upload_reusing(&upload).await?
    {
        return Ok(Uploaded { entry, sent: false, as_runs: false, wire_bytes: 0, chunks: None });
    }

    let wire = Arc::new(AtomicU64::new(0));
    let progress = PROGRESS.try_with(Arc::clone).ok();
    let started = progress.as_ref().map_or(0, |p| p.load(Ordering::Relaxed));
    if let Some((hash, list)) = chunks.filter(|_| is_chunked(&expected)) {
        upload.base_hash = Some(hash);
        match send(remote, root, &upload, Some(Arc::new(list)), &wire).await {
            // Damaged: a base chunk the runs need is damaged (or lost) on
            // the server; the whole content stores it again.
            Err(e)
                if matches!(
                    e.refused(),
                    Some(Refused::UnknownBase | Refused::Invalid | Refused::Damaged)
                ) =>
            {
                tracing::info!(%path, error = %e, "the server did not take the file as runs: sending it whole");
                upload.base_hash = None;
                if let Some(p) = &progress {
                    p.store(started, Ordering::Relaxed);
                }
            }
            sent => {
                let (entry, chunks) = sent?;
                let wire_bytes = wire.load(Ordering::Relaxed);
                return Ok(Uploaded { entry, sent: true, as_runs: true, wire_bytes, chunks });
            }
        }
    }
    let (entry, chunks) = send(remote, root, &upload, None, &wire).await?;
    Ok(Uploaded { entry, sent: true, as_runs: false, wire_bytes: wire.load(Ordering::Relaxed), chunks })
}

/// Sends `upload`'s content, plain or (with `base`, the chunk list of its
/// `base_hash`) as runs; returns the entry and the content's chunk list.
async fn send(
    remote: &dyn Remote,
    root: &Root,
    upload: &Upload,
    base: Option<Arc<Vec<ChunkRef>>>,
    wire: &Arc<AtomicU64>,
) -> Result<(Entry, Option<Vec<ChunkRef>>)> {
    let (tx, rx) = mpsc::channel(PIPELINE);
    let dir = root.parent(&upload.path)?;
    let name = upload.path.file_name().to_owned();
    let expected = upload.content;
    let counters = Counters { progress: PROGRESS.try_with(Arc::clone).ok(), wire: Arc::clone(wire) };
    let mut reader = tokio::task::spawn_blocking(move || {
        send_file(&dir, &name, expected, base.as_deref().map(Vec::as_slice), tx, &counters)
    });
    let mut call = remote.upload(upload, rx);
    let read = tokio::select! {
        read = &mut reader => read,
        // An answer before the reader is done: a refusal (nothing is
        // committed before the end marker, which the reader sends last),
        // or an OK that raced the reader's return.
        response = &mut call => return settle(response, reader.await),
    };
    match read {
        Ok(Ok(_)) => settle(call.await, read),
        failed => {
            // Cancel the call: the server sees a broken stream and stores
            // nothing. (The body never ends normally without the end
            // marker, so the cut cannot pass for a complete file.)
            drop(call);
            failed??;
            unreachable!("the reader failed")
        }
    }
}

/// An upload's outcome from the server's answer and the reader's verdict
/// (the chunk list it computed). The server's OK stands (the content it
/// stored is what the header announced); a refusal is explained by the
/// reader's error first, since a file that changed while it was sent was
/// cut short on purpose.
fn settle(
    response: Result<Entry>,
    read: std::result::Result<Result<Option<Vec<ChunkRef>>>, tokio::task::JoinError>,
) -> Result<(Entry, Option<Vec<ChunkRef>>)> {
    match response {
        Ok(entry) => match read.map_err(Error::from) {
            Ok(Ok(chunks)) => Ok((entry, chunks)),
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(error = %e, "the reader stopped after the server stored the upload");
                Ok((entry, None))
            }
        },
        Err(refused) => {
            read??;
            Err(refused)
        }
    }
}

/// Where an upload's reader counts what it sends.
#[derive(Debug)]
struct Counters {
    /// The transfer's progress, if it is watched.
    progress: Option<Arc<AtomicU64>>,
    /// Content bytes put on the wire.
    wire: Arc<AtomicU64>,
}

/// Hands `body` to the call, counting its bytes; false if the call is
/// gone (its status says why).
fn send_body(tx: &mpsc::Sender<Body>, body: Body, counters: &Counters) -> bool {
    let n = match &body {
        Body::Chunk(data) => data.len(),
        _ => 0,
    };
    if tx.blocking_send(body).is_err() {
        return false;
    }
    counters.wire.fetch_add(n as u64, Ordering::Relaxed);
    true
}

/// Reads the file in chunks into `tx` (plain, or with `base` as runs
/// against it), then sends the end marker only if the whole file hashed to
/// what the header announced. If it did not, the error says so and no end
/// marker goes: the caller cancels the call and the server discards the
/// upload. Returns the content's chunk list (content cut into several
/// chunks only; none if the call ended early).
/// The file is opened through its folder's handle, so a link above it or
/// at it is not followed.
fn send_file(
    dir: &Dir,
    name: &str,
    expected: Local,
    base: Option<&[ChunkRef]>,
    tx: mpsc::Sender<Body>,
    counters: &Counters,
) -> Result<Option<Vec<ChunkRef>>> {
    if expected.folder {
        // A folder has no content.
        let _ = tx.blocking_send(Body::End);
        return Ok(None);
    }
    if expected.symlink {
        // A link is never followed: its target is the content.
        let target = dir.read_link(name)?;
        if target.len() as u64 != expected.size || ContentHash::of(&target) != expected.hash {
            return Err(Error::ChangedWhileReading);
        }
        if send_body(&tx, Body::Chunk(target), counters) {
            let _ = tx.blocking_send(Body::End);
        }
        return Ok(None);
    }
    let mut file = dir.open_read(name)?;
    let mut digest = Digest::new(expected.size);
    let mut runs = base.map(RunsOut::new);
    let mut total = 0u64;
    let mut finished = false;
    while !finished {
        let piece = read_chunk(&mut file)?;
        total += piece.len() as u64;
        if total > expected.size {
            return Err(Error::ChangedWhileReading);
        }
        let n = piece.len();
        if piece.is_empty() {
            digest.finish();
            finished = true;
        } else {
            digest.push(&piece);
        }
        let mut messages = Vec::new();
        match &mut runs {
            None => {
                while digest.next_chunk().is_some() {}
                if n > 0 {
                    messages.push(Body::Chunk(piece));
                }
            }
            Some(runs) => {
                while let Some(c) = digest.next_chunk() {
                    runs.add(c, &mut messages);
                }
                if finished {
                    runs.flush(&mut messages);
                }
            }
        }
        for body in messages {
            if !send_body(&tx, body, counters) {
                return Ok(None);
            }
        }
        count(counters.progress.as_ref(), n);
    }
    let (hash, chunks) = digest.result();
    if total != expected.size || hash != expected.hash {
        return Err(Error::ChangedWhileReading);
    }
    let _ = tx.blocking_send(Body::End);
    Ok(chunks)
}

/// Reads up to one full chunk (short only at the end of the file).
fn read_chunk(file: &mut fs::File) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(MAX_CHUNK);
    file.take(MAX_CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// The hash of content passed through in order and, for content cut into
/// several chunks, its chunks (cut as the bytes come).
#[derive(Debug)]
enum Digest {
    /// Content of one chunk: only its hash.
    Whole(blake3::Hasher),
    /// Larger content: cut, and its list kept.
    Chunked { chunker: Chunker, list: Vec<ChunkRef> },
}

impl Digest {
    /// A digest for content announced as `size` bytes.
    fn new(size: u64) -> Self {
        if size > WHOLE_MAX {
            Digest::Chunked { chunker: Chunker::new(size), list: Vec::new() }
        } else {
            Digest::Whole(blake3::Hasher::new())
        }
    }

    fn push(&mut self, data: &[u8]) {
        match self {
            Digest::Whole(hasher) => {
                hasher.update(data);
            }
            Digest::Chunked { chunker, .. } => chunker.push(data),
        }
    }

    /// No more bytes come: the last chunk is ready.
    fn finish(&mut self) {
        if let Digest::Chunked { chunker, .. } = self {
            chunker.finish();
        }
    }

    /// The next chunk cut, with its bytes (to be taken after each push:
    /// the chunker holds the bytes of the chunks not taken).
    fn next_chunk(&mut self) -> Option<Chunk> {
        match self {
            Digest::Whole(_) => None,
            Digest::Chunked { chunker, list } => chunker.next_chunk().inspect(|c| list.push(c.chunk)),
        }
    }

    /// The content's hash and its chunk list (if it was cut).
    fn result(self) -> (ContentHash, Option<Vec<ChunkRef>>) {
        match self {
            Digest::Whole(hasher) => (hasher.finalize().into(), None),
            Digest::Chunked { chunker, list } => (chunker.content().0, Some(list)),
        }
    }
}

/// An upload's body as runs against a base list: each chunk the base has
/// extends or starts a base run, each other is a new run whose bytes
/// follow the runs message that names it.
#[derive(Debug)]
struct RunsOut<'a> {
    base: &'a [ChunkRef],
    /// The first index of each chunk in the base.
    index: HashMap<ChunkRef, u32>,
    /// Runs not sent yet.
    runs: Vec<Run>,
    /// The bytes of their new chunks.
    bytes: Vec<u8>,
}

impl<'a> RunsOut<'a> {
    fn new(base: &'a [ChunkRef]) -> Self {
        let mut index = HashMap::with_capacity(base.len());
        for (i, c) in base.iter().enumerate() {
            index.entry(*c).or_insert(i as u32);
        }
        Self { base, index, runs: Vec::new(), bytes: Vec::new() }
    }

    /// Adds the next chunk of the content; messages ready to go are pushed
    /// to `out`.
    fn add(&mut self, c: Chunk, out: &mut Vec<Body>) {
        match self.index.get(&c.chunk) {
            Some(&at) => {
                // Continuing the current base run keeps a stretch of
                // repeated chunks (zeros) one run.
                if let Some(Run::Base { first, count }) = self.runs.last_mut()
                    && self.base.get((*first + *count) as usize) == Some(&c.chunk)
                {
                    *count += 1;
                } else {
                    self.runs.push(Run::Base { first: at, count: 1 });
                }
            }
            None => {
                self.runs.push(Run::New(c.chunk));
                self.bytes.extend_from_slice(&c.data);
            }
        }
        if self.runs.len() >= MAX_RUNS_PER_MESSAGE || self.bytes.len() >= RUNS_FLUSH_BYTES {
            self.flush(out);
        }
    }

    /// Pushes the runs gathered, then the bytes of their new chunks, to
    /// `out`.
    fn flush(&mut self, out: &mut Vec<Body>) {
        if self.runs.is_empty() {
            return;
        }
        out.push(Body::Runs(std::mem::take(&mut self.runs)));
        out.extend(self.bytes.chunks(MAX_CHUNK).map(|b| Body::Chunk(b.to_vec())));
        self.bytes.clear();
    }
}

/// The local copy a download may take chunks from: the file at the
/// download's path, whose content this client synced.
#[derive(Debug, Clone)]
pub struct Have {
    /// Its content hash (named to the server).
    pub hash: ContentHash,
    /// Its chunk list.
    pub chunks: Vec<ChunkRef>,
    /// The local file that holds it: the downloaded path's own (its
    /// previous version), or another file of the same content as the
    /// download's.
    pub path: RelPath,
}

/// What a download did.
#[derive(Debug)]
pub struct Downloaded {
    /// The new local file's metadata.
    pub meta: Meta,
    /// Content bytes that came over the wire, those of an attempt
    /// abandoned included.
    pub wire_bytes: u64,
    /// Chunks copied from the local file instead of the wire.
    pub reused_chunks: u64,
    /// Their bytes.
    pub reused_bytes: u64,
    /// The content's chunk list (only for content cut into several
    /// chunks).
    pub chunks: Option<Vec<ChunkRef>>,
}

/// Downloads `entry` (that exact version) to its path in `root`, staged
/// in `tmp`, provided the local file still is `expected` (its size and
/// mtime, or missing) when the download is ready to be put into place.
/// With `have` (the content of the local file at the path, as synced), a
/// large file is asked for as runs against it.
///
/// What the server sends is checked as it comes: a chunk larger than
/// [`MAX_CHUNK`], more bytes than the entry's size, runs not asked for or
/// naming chunks the local copy does not have, or a new chunk that does
/// not match its hash end the download at once; the temp file is then
/// removed and nothing is put in place. A chunk of the local file that no
/// longer matches its hash makes the download start over, plain.
pub async fn download(
    remote: &dyn Remote,
    root: &Root,
    tmp: &Dir,
    entry: &Entry,
    expected: Option<Meta>,
    have: Option<Have>,
) -> Result<Downloaded> {
    let content = entry.content.ok_or_else(|| Error::Protocol("download of a tombstone".into()))?;
    if root.through_symlink(&entry.path) {
        return Err(Error::Config(format!(
            "a folder above {} is a symbolic link here; not writing through it",
            entry.path
        )));
    }
    if content.symlink && content.size > MAX_PATH_BYTES as u64 {
        return Err(Error::Protocol(format!("{} is a link with a {}-byte target", entry.path, content.size)));
    }
    let chunked = !content.symlink && !content.folder && content.size > WHOLE_MAX;
    let local = have.filter(|_| chunked).and_then(|have| LocalBase::open(root, have));

    let wire = Arc::new(AtomicU64::new(0));
    let progress = PROGRESS.try_with(Arc::clone).ok();
    let started = progress.as_ref().map_or(0, |p| p.load(Ordering::Relaxed));
    let assembled = match local {
        Some(local) => match fetch(remote, tmp, entry, Some(local), &wire).await {
            Err(Error::LocalChunkChanged) => {
                tracing::info!(path = %entry.path, "the local file changed while chunks were copied from it: downloading it whole");
                if let Some(p) = &progress {
                    p.store(started, Ordering::Relaxed);
                }
                fetch(remote, tmp, entry, None, &wire).await?
            }
            fetched => fetched?,
        },
        None => fetch(remote, tmp, entry, None, &wire).await?,
    };
    let Assembled { tmp, size, chunks, reused_chunks, reused_bytes, .. } = assembled;

    let (root, path) = (root.clone(), entry.path.clone());
    let meta = if content.symlink {
        tokio::task::spawn_blocking(move || install_symlink(tmp, &root, &path, size, expected)).await??
    } else {
        let mtime_ns = content.mtime_ns;
        let executable = content.executable;
        tokio::task::spawn_blocking(move || install(tmp, &root, &path, mtime_ns, executable, expected))
            .await??
    };
    Ok(Downloaded { meta, wire_bytes: wire.load(Ordering::Relaxed), reused_chunks, reused_bytes, chunks })
}

/// One attempt at receiving `entry`'s content into a temp file in `tmp`
/// (as runs against `local`, if given), checked against its hash and
/// size. Content bytes received are added to `wire`.
async fn fetch(
    remote: &dyn Remote,
    tmp: &Dir,
    entry: &Entry,
    local: Option<LocalBase>,
    wire: &AtomicU64,
) -> Result<Assembled> {
    let content = entry.content.ok_or_else(|| Error::Protocol("download of a tombstone".into()))?;
    let mut stream = remote.download(entry, local.as_ref().map(|l| l.hash)).await?;

    let (tx, mut rx) = mpsc::channel::<Piece>(PIPELINE);
    let staging = tmp.clone();
    let path = entry.path.clone();
    let progress = PROGRESS.try_with(Arc::clone).ok();
    let writer = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut assembly =
            Assembly::new(path, staging.create_temp("download-")?, content.size, local, progress);
        while let Some(piece) = rx.blocking_recv() {
            assembly.piece(piece)?;
        }
        assembly.finish()
    });
    let received = receive(&mut stream, &tx, wire).await;
    drop(tx);
    // The writer is awaited even after a refusal, so that its temp file is
    // gone when this returns.
    let written = writer.await?;
    received?;
    let assembled = written?;
    if assembled.hash != content.hash || assembled.size != content.size {
        return Err(Error::Protocol(format!("the content of {} did not match its hash", entry.path)));
    }
    Ok(assembled)
}

/// Passes a download's pieces to the writer, adding the content bytes
/// that came to `wire`.
async fn receive(stream: &mut PieceStream, tx: &mpsc::Sender<Piece>, wire: &AtomicU64) -> Result<()> {
    while let Some(piece) = stream.next().await {
        let piece = piece?;
        if let Piece::Chunk(c) = &piece {
            wire.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        if tx.send(piece).await.is_err() {
            break; // The writer failed; its error is reported by the caller.
        }
    }
    Ok(())
}

/// The local file a download takes chunks from, opened before the
/// download starts, with the offset of each of its chunks.
#[derive(Debug)]
struct LocalBase {
    file: fs::File,
    hash: ContentHash,
    chunks: Vec<ChunkRef>,
    offsets: Vec<u64>,
}

impl LocalBase {
    /// Opens the file at `have.path` (through its folder's handle, never
    /// following a link); `None` if it cannot be opened.
    fn open(root: &Root, have: Have) -> Option<Self> {
        let path = &have.path;
        let file = root.parent(path).and_then(|d| d.open_read(path.file_name())).ok()?;
        let mut at = 0u64;
        let offsets = have
            .chunks
            .iter()
            .map(|c| {
                let offset = at;
                at += u64::from(c.size);
                offset
            })
            .collect();
        Some(Self { file, hash: have.hash, chunks: have.chunks, offsets })
    }
}

/// A download's content as written to its temp file.
#[derive(Debug)]
struct Assembled {
    tmp: TempFile,
    hash: ContentHash,
    size: u64,
    chunks: Option<Vec<ChunkRef>>,
    reused_chunks: u64,
    reused_bytes: u64,
}

/// Writes a download's pieces into its temp file in content order: plain
/// bytes as they come, or runs: base runs copied from the local file
/// (each chunk checked against its hash as it is read) and new chunks
/// from the bytes that follow (each checked against its ref).
#[derive(Debug)]
struct Assembly {
    path: RelPath,
    tmp: TempFile,
    /// The entry's size: nothing is written beyond it.
    declared: u64,
    written: u64,
    digest: Digest,
    /// The local copy runs refer to (none: runs were not asked for).
    local: Option<LocalBase>,
    /// Whether the content comes as runs, once its first piece said so.
    as_runs: Option<bool>,
    /// Runs received and not yet written, in order. The first may be a
    /// base run partly copied, or the new chunk whose bytes are arriving.
    pending: VecDeque<Run>,
    /// The bytes received so far of the new chunk first in `pending`.
    partial: Vec<u8>,
    /// The chunk list, as runs assembled it.
    list: Vec<ChunkRef>,
    /// A buffer for chunks copied from the local file.
    copy: Vec<u8>,
    reused_chunks: u64,
    reused_bytes: u64,
    progress: Option<Arc<AtomicU64>>,
}

impl Assembly {
    fn new(
        path: RelPath,
        tmp: TempFile,
        declared: u64,
        local: Option<LocalBase>,
        progress: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            path,
            tmp,
            declared,
            written: 0,
            digest: Digest::new(declared),
            local,
            as_runs: None,
            pending: VecDeque::new(),
            partial: Vec::new(),
            list: Vec::new(),
            copy: Vec::new(),
            reused_chunks: 0,
            reused_bytes: 0,
            progress,
        }
    }

    fn bad(&self, why: impl std::fmt::Display) -> Error {
        Error::Protocol(format!("download of {}: {why}", self.path))
    }

    fn piece(&mut self, piece: Piece) -> Result<()> {
        match piece {
            Piece::Chunk(data) => {
                if *self.as_runs.get_or_insert(false) {
                    self.new_bytes(&data)
                } else {
                    self.write(&data)
                }
            }
            Piece::Runs(runs) => self.runs(runs),
        }
    }

    fn runs(&mut self, runs: Vec<Run>) -> Result<()> {
        let Some(local) = &self.local else { return Err(self.bad("runs it did not ask for")) };
        if *self.as_runs.get_or_insert(true) {
            // Runs carry their own list; no need to cut the content again.
            if self.written == 0 {
                self.digest = Digest::Whole(blake3::Hasher::new());
            }
        } else {
            return Err(self.bad("runs after plain content"));
        }
        if runs.len() > MAX_RUNS_PER_MESSAGE {
            return Err(self.bad(format!("{} runs in one message", runs.len())));
        }
        if self.pending.iter().any(|r| matches!(r, Run::New(_))) {
            return Err(self.bad("runs before the bytes of the chunks announced"));
        }
        for run in &runs {
            match *run {
                Run::Base { first, count } => {
                    if let Err(e) = chunks::base_slice(&local.chunks, first, count) {
                        return Err(self.bad(e));
                    }
                }
                Run::New(c) if c.size == 0 || u64::from(c.size) > WHOLE_MAX => {
                    return Err(self.bad(format!("a new chunk of {} bytes", c.size)));
                }
                Run::New(_) => {}
            }
        }
        self.pending.extend(runs);
        self.copy_base()
    }

    /// Bytes of the new chunks announced, in order.
    fn new_bytes(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let Some(&Run::New(c)) = self.pending.front() else {
                return Err(self.bad("bytes of no chunk announced"));
            };
            let take = (c.size as usize - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == c.size as usize {
                if ContentHash::of(&self.partial) != c.hash {
                    return Err(self.bad("a new chunk did not match its hash"));
                }
                let chunk = std::mem::take(&mut self.partial);
                self.write(&chunk)?;
                self.partial = chunk;
                self.partial.clear();
                self.list.push(c);
                self.pending.pop_front();
                self.copy_base()?;
            }
        }
        Ok(())
    }

    /// Copies the base runs first in line from the local file, each chunk
    /// checked against its hash.
    fn copy_base(&mut self) -> Result<()> {
        while let Some(&Run::Base { first, count }) = self.pending.front() {
            let local = self.local.as_ref().expect("base runs come only with a local copy");
            let (c, at) = (local.chunks[first as usize], local.offsets[first as usize]);
            let mut copy = std::mem::take(&mut self.copy);
            copy.resize(c.size as usize, 0);
            if local.file.read_exact_at(&mut copy, at).is_err() || ContentHash::of(&copy) != c.hash {
                return Err(Error::LocalChunkChanged);
            }
            self.write(&copy)?;
            self.copy = copy;
            self.list.push(c);
            self.reused_chunks += 1;
            self.reused_bytes += u64::from(c.size);
            match self.pending.front_mut() {
                Some(Run::Base { first, count: n }) if count > 1 => {
                    *first += 1;
                    *n -= 1;
                }
                _ => {
                    self.pending.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Appends content bytes to the temp file.
    fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.written + data.len() as u64 > self.declared {
            return Err(self.bad(format!("more than the {} bytes its entry declares", self.declared)));
        }
        write_sparse(self.tmp.file(), self.written, data)?;
        self.digest.push(data);
        while self.digest.next_chunk().is_some() {}
        self.written += data.len() as u64;
        count(self.progress.as_ref(), data.len());
        Ok(())
    }

    fn finish(mut self) -> Result<Assembled> {
        if !self.pending.is_empty() || !self.partial.is_empty() {
            return Err(self.bad("the content ended before the chunks its runs announced"));
        }
        // Trailing zeros were skipped: the length says where the file ends.
        self.tmp.file().set_len(self.written)?;
        self.digest.finish();
        while self.digest.next_chunk().is_some() {}
        let (hash, cut) = self.digest.result();
        let chunks = if self.as_runs == Some(true) { Some(self.list) } else { cut };
        Ok(Assembled {
            tmp: self.tmp,
            hash,
            size: self.written,
            chunks,
            reused_chunks: self.reused_chunks,
            reused_bytes: self.reused_bytes,
        })
    }
}

/// Writes `data` at `offset` of the (new, empty) file `file`, skipping the
/// [`HOLE_BLOCK`]s that are all zeros: they stay holes, which read as zeros.
fn write_sparse(file: &fs::File, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let mut pos = 0;
    // The start of the run of data blocks not yet written.
    let mut run = 0;
    while pos < data.len() {
        // Blocks are aligned to the file, not to the chunk.
        let into_block = ((offset + pos as u64) % HOLE_BLOCK as u64) as usize;
        let end = (pos + HOLE_BLOCK - into_block).min(data.len());
        if data[pos..end].iter().all(|&b| b == 0) {
            file.write_all_at(&data[run..pos], offset + run as u64)?;
            run = end;
        }
        pos = end;
    }
    file.write_all_at(&data[run..], offset + run as u64)
}

/// Creates the symbolic link whose target is the `size` bytes in `tmp` (a
/// target received from the server) at `path`, under the same rules as
/// [`install`]. The link is never followed; a target no link can have
/// (empty, with a NUL, not UTF-8: [`syncstore::limits::check_link_target`],
/// the server's own check) is refused.
fn install_symlink(
    tmp: TempFile,
    root: &Root,
    path: &RelPath,
    size: u64,
    expected: Option<Meta>,
) -> Result<Meta> {
    let mut link = vec![0u8; size as usize];
    tmp.file().read_exact_at(&mut link, 0)?;
    if let Err(why) = syncstore::limits::check_link_target(&link) {
        return Err(Error::Protocol(format!("{path} is a link whose target {why}")));
    }
    let parent = root.create_parent(path)?;
    let name = path.file_name();
    let aside = move_aside_checked(&parent, name, &tmp, expected)?;
    place(&parent, name, aside, || parent.symlink(&link, name))?;
    match parent.kind(name)? {
        Kind::File(m) if m.symlink => Ok(m),
        _ => Err(Error::ChangedWhileReading),
    }
}

/// A file moved aside into the temp folder, under `name`.
#[derive(Debug)]
struct Aside<'a> {
    tmp: &'a Dir,
    name: String,
}

/// Creates the new file `name` in `parent` with `create`, which must never
/// replace anything (a link does not). On success what was moved `aside`
/// goes and the folder is made durable (fsynced through its handle); if
/// the name was taken meanwhile, the newcomer stays (what was moved aside
/// is the version the plan saw, which the server has); on another failure
/// what was moved aside comes back.
fn place(
    parent: &Dir,
    name: &str,
    aside: Option<Aside<'_>>,
    create: impl FnOnce() -> std::io::Result<()>,
) -> Result<()> {
    match create() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if let Some(aside) = aside {
                aside.tmp.unlink(&aside.name)?;
            }
            return Err(Error::ChangedWhileReading);
        }
        Err(e) => {
            if let Some(aside) = &aside {
                put_back(aside.tmp, &aside.name, parent, name)?;
            }
            return Err(e.into());
        }
    }
    if let Some(aside) = aside {
        aside.tmp.unlink(&aside.name)?;
    }
    parent.sync()?;
    Ok(())
}

/// Moves the file `name` in `parent` into the temp folder (beside the temp
/// file `tmp`) and checks it is still what the plan saw (`expected`;
/// `None`: nothing was there). A file that changed is put back and the
/// error says to plan again.
fn move_aside_checked<'a>(
    parent: &Dir,
    name: &str,
    tmp: &'a TempFile,
    expected: Option<Meta>,
) -> Result<Option<Aside<'a>>> {
    let Some(planned) = expected else { return Ok(None) };
    let aside = Aside { tmp: tmp.dir(), name: format!("{}.aside", tmp.name()) };
    match parent.rename(name, aside.tmp, &aside.name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::ChangedWhileReading),
        Err(e) => return Err(e.into()),
    }
    if !matches!(aside.tmp.kind(&aside.name)?, Kind::File(m) if m.same_as_moved(&planned)) {
        put_back(aside.tmp, &aside.name, parent, name)?;
        return Err(Error::ChangedWhileReading);
    }
    Ok(Some(aside))
}

/// Gives the temp file its mode and mtime, makes it durable, and puts it
/// at `path` if what is there is still what the caller planned on.
///
/// No check-then-rename window: the current file is first moved aside
/// (atomically) and checked there; the new file is then linked into place
/// only if nothing took the name meanwhile (a link never replaces). A file
/// found changed is put back; the caller plans again.
fn install(
    tmp: TempFile,
    root: &Root,
    path: &RelPath,
    mtime_ns: i64,
    executable: bool,
    expected: Option<Meta>,
) -> Result<Meta> {
    let file = tmp.file();
    let mode = if executable { 0o755 } else { 0o644 };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    let mtime = filetime::FileTime::from_unix_time(
        mtime_ns.div_euclid(1_000_000_000),
        mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(file, None, Some(mtime))?;
    file.sync_all()?;

    let parent = root.create_parent(path)?;
    let name = path.file_name();
    let aside = move_aside_checked(&parent, name, &tmp, expected)?;
    place(&parent, name, aside, || parent.link_from(tmp.dir(), tmp.name(), name))?;
    drop(tmp); // Removes the temp name; the file stays linked at `path`.
    match parent.kind(name)? {
        Kind::File(m) => Ok(m),
        _ => Err(Error::ChangedWhileReading),
    }
}

/// Returns a file moved aside (`aside` in `tmp`) to `name` in `parent`,
/// or, if something took that name meanwhile, next to it under a name that
/// says so: never lost.
pub(crate) fn put_back(tmp: &Dir, aside: &str, parent: &Dir, name: &str) -> Result<()> {
    match parent.link_from(tmp, aside, name) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let keep = format!("{name} (kept {})", std::process::id());
            tracing::warn!(path = %keep.escape_debug(), "a file changed while it was being replaced; kept beside it");
            tmp.rename(aside, parent, &keep)?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    tmp.unlink(aside)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A chunk of `data`.
    fn chunk(data: &[u8]) -> Chunk {
        let chunk = ChunkRef { hash: ContentHash::of(data), size: data.len() as u32 };
        Chunk { chunk, data: data.to_vec() }
    }

    #[test]
    fn runs_go_in_bounded_messages_each_followed_by_its_new_bytes() {
        // 3,000 distinct chunks; the base has every third one, and the run
        // of the last 299 in order.
        let chunks: Vec<Chunk> = (0..3000u32).map(|i| chunk(format!("chunk {i}").as_bytes())).collect();
        let mut base: Vec<ChunkRef> = chunks.iter().step_by(3).map(|c| c.chunk).collect();
        base.extend(chunks[2701..].iter().map(|c| c.chunk));
        let mut runs_out = RunsOut::new(&base);
        let mut messages = Vec::new();
        for c in &chunks {
            runs_out.add(c.clone(), &mut messages);
        }
        runs_out.flush(&mut messages);

        let (mut runs, mut bytes) = (Vec::new(), Vec::new());
        let mut owed = 0usize;
        for m in messages {
            match m {
                Body::Runs(r) => {
                    assert_eq!(owed, 0, "the bytes of the runs before came first");
                    assert!(!r.is_empty() && r.len() <= MAX_RUNS_PER_MESSAGE, "{} runs", r.len());
                    owed = r.iter().map(|r| if let Run::New(c) = r { c.size as usize } else { 0 }).sum();
                    runs.extend(r);
                }
                Body::Chunk(b) => {
                    assert!(b.len() <= owed && b.len() <= MAX_CHUNK);
                    owed -= b.len();
                    bytes.extend(b);
                }
                Body::End => unreachable!(),
            }
        }
        assert_eq!(owed, 0);
        let list: Vec<ChunkRef> = chunks.iter().map(|c| c.chunk).collect();
        assert_eq!(chunks::apply(&base, &runs).unwrap(), list, "the runs describe the content");
        let new: Vec<u8> =
            chunks.iter().filter(|c| !base.contains(&c.chunk)).flat_map(|c| c.data.clone()).collect();
        assert_eq!(bytes, new, "only the chunks the base lacks travel");
        // The 299 chunks the base holds in order are one run, though some
        // of them are in the base twice.
        assert_eq!(runs.last(), Some(&Run::Base { first: 1000, count: 299 }));
    }

    #[test]
    fn blocks_of_zeros_become_holes_and_the_content_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = fs::File::create_new(&path).unwrap();
        let mut data = vec![0u8; 1 << 20];
        data[5000] = 1;
        data[(1 << 20) - 1] = 2;
        // Chunks that do not start on a block boundary, then trailing zeros.
        write_sparse(&file, 0, &data[..3000]).unwrap();
        write_sparse(&file, 3000, &data[3000..]).unwrap();
        write_sparse(&file, 1 << 20, &vec![0u8; 1 << 20]).unwrap();
        file.set_len(2 << 20).unwrap();
        data.resize(2 << 20, 0);
        assert!(fs::read(&path).unwrap() == data, "the content reads back as sent");
        // Two blocks hold data; the rest are holes.
        let allocated = fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated <= 64 * 1024, "{allocated} bytes allocated for 2 MiB with 2 non-zero blocks");
    }
}
