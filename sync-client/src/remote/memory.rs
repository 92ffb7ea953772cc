//! An in-memory [`Remote`] for the engine's unit tests: a manifest, its
//! contents and its locks in a `Mutex`, with the server's rules that the
//! engine depends on (a write's base version must be current, a path
//! locked by someone else refuses writes, a stale lock token is refused,
//! a file never lies below a file nor where files lie below, the content
//! must match its header, a base must be content the server holds and
//! keeps a chunk list for). Runs go both ways, against lists it computes
//! with [`chunks::chunk_list`]; it counts the content bytes each way, and
//! can be told to forget lists or to send bad runs. Other clients' writes
//! and locks are made through its own methods.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use syncstore::{
    ContentHash, Entry, Lock, Reason, RelPath,
    chunks::{self, ChunkRef, MAX_RUNS_PER_MESSAGE, Run, WHOLE_MAX},
    entry::Content,
    limits::MAX_CHUNK,
};
use tokio::sync::mpsc;

use super::{Body, Piece, PieceStream, Refused, Remote, RemoteEvent, ServerInfo, Upload};
use crate::error::{Error, Result, ServerError};

/// The history id the in-memory server reports.
const HISTORY_ID: &str = "memory";

/// Something to do once, when the next download starts (to race it).
type Hook = Box<dyn FnOnce() + Send>;

/// One server's files and locks, in memory. Cheap to clone: clones share
/// the server, each with its own client id.
#[derive(Clone)]
pub(crate) struct MemoryRemote {
    client_id: String,
    server: Arc<Mutex<Server>>,
    before_download: Arc<Mutex<Option<Hook>>>,
}

impl std::fmt::Debug for MemoryRemote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRemote").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

/// A way the next download sent as runs goes wrong, as a broken or
/// malicious server's would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRuns {
    /// A new chunk's bytes do not match its hash.
    WrongChunk,
    /// The first base run is left out: the runs do not add up to the size.
    Short,
    /// A base run names a chunk past the end of the base.
    OutOfBase,
    /// Runs, though the download named no content held.
    Unasked,
}

#[derive(Debug, Default)]
struct Server {
    /// The last change's sequence number (a version is one).
    seq: u64,
    entries: HashMap<RelPath, Entry>,
    /// Contents by hash.
    contents: HashMap<ContentHash, Vec<u8>>,
    /// Contents kept whole, with no chunk list (as an earlier release
    /// stored them): no base for runs.
    whole: HashSet<ContentHash>,
    locks: HashMap<RelPath, Lock>,
    events: Vec<RemoteEvent>,
    /// Content bytes received in upload chunks.
    received: u64,
    /// Content bytes sent in download chunks.
    sent: u64,
    /// How downloads as runs go wrong, if they should.
    bad_runs: Option<BadRuns>,
    /// Each committed upload that named the path it moved from: (the
    /// upload's path, `moved_from`).
    moves: Vec<(RelPath, RelPath)>,
    /// The refusal every write meets, while set.
    refuse_writes: Option<ServerError>,
}

impl Server {
    /// The chunk list and bytes of `hash` as a base for runs: content
    /// larger than one chunk, with a list kept, that a live entry refers
    /// to (for an upload; a download may name an earlier version).
    fn base(&self, hash: &ContentHash, upload: bool) -> Result<(Vec<ChunkRef>, &[u8])> {
        let referred = !upload || self.entries.values().any(|e| e.content.is_some_and(|c| c.hash == *hash));
        match self.contents.get(hash) {
            Some(data) if referred && data.len() as u64 > WHOLE_MAX && !self.whole.contains(hash) => {
                Ok((list_of(data), data))
            }
            _ => Err(Error::Server(ServerError {
                refused: Refused::UnknownBase,
                reason: Reason::UnknownBase.as_str().into(),
                replica: String::new(),
                code: "FailedPrecondition".into(),
                message: format!("no chunk list for {hash}"),
            })),
        }
    }

    /// Records the move an upload names, if any.
    fn note_move(&mut self, upload: &Upload) {
        if let Some(from) = &upload.moved_from {
            self.moves.push((upload.path.clone(), from.clone()));
        }
    }

    /// Refuses a write to `path` by `client_id` with `token` at `base`,
    /// as the server does.
    fn check_write(&self, path: &RelPath, client_id: &str, token: u64, base: u64) -> Result<()> {
        if let Some(refusal) = &self.refuse_writes {
            return Err(Error::Server(refusal.clone()));
        }
        if let Some(lock) = self.locks.get(path) {
            if lock.client_id != client_id {
                return Err(Error::server(Refused::Locked, &format!("{path} is locked")));
            }
            if lock.token != token {
                return Err(Error::server(Refused::StaleLock, &format!("{path}: stale lock token")));
            }
        }
        // Creating over a tombstone (or nothing) is based on version 0.
        let current = self.entries.get(path).filter(|e| !e.is_deleted()).map_or(0, |e| e.version);
        if current != base {
            return Err(Error::server(
                Refused::VersionConflict,
                &format!("{path} is at {current}, not {base}"),
            ));
        }
        Ok(())
    }

    /// Refuses a file (or folder) at `path` below a live file, and a file
    /// at `path` where live entries lie below it, as the server does.
    fn check_clash(&self, path: &RelPath, content: &Content) -> Result<()> {
        let live = |e: &&Entry| !e.is_deleted();
        let p = path.as_str();
        let below_a_file = p.match_indices('/').any(|(i, _)| {
            let above = RelPath::new(&p[..i]).expect("a prefix of a valid path is valid");
            self.entries.get(&above).filter(live).and_then(|e| e.content).is_some_and(|c| !c.folder)
        });
        let above_entries = !content.folder
            && self.entries.values().filter(live).any(|e| e.path.as_str().starts_with(&format!("{p}/")));
        if below_a_file || above_entries {
            return Err(Error::server(Refused::PathClash, &format!("{path} clashes with a file or folder")));
        }
        Ok(())
    }

    fn commit(&mut self, path: &RelPath, content: Option<Content>, client_id: &str) -> Entry {
        self.seq += 1;
        let entry = Entry { path: path.clone(), version: self.seq, content, client_id: client_id.to_owned() };
        self.entries.insert(path.clone(), entry.clone());
        self.events.push(RemoteEvent::Entry { seq: self.seq, entry: Some(entry.clone()) });
        entry
    }
}

/// The chunk list of `data`.
fn list_of(data: &[u8]) -> Vec<ChunkRef> {
    chunks::chunk_list(data, data.len() as u64).expect("reading memory cannot fail").2
}

/// The refusal of content that is not what its header announced.
fn mismatch(why: &str) -> Error {
    Error::Server(ServerError {
        refused: Refused::Invalid,
        reason: Reason::ContentMismatch.as_str().into(),
        replica: String::new(),
        code: "InvalidArgument".into(),
        message: why.into(),
    })
}

/// `data` (whose list is `list`) as runs against `base`: each message of
/// runs followed by the bytes of its new chunks.
fn as_runs(base: &[ChunkRef], list: &[ChunkRef], data: &[u8]) -> Vec<Piece> {
    let runs = chunks::diff(base, list);
    let mut offset = 0usize;
    let mut pieces = Vec::new();
    for group in runs.chunks(MAX_RUNS_PER_MESSAGE) {
        let mut bytes = Vec::new();
        for run in group {
            match *run {
                Run::Base { first, count } => {
                    let slice = chunks::base_slice(base, first, count).expect("diff names base chunks");
                    offset += slice.iter().map(|c| c.size as usize).sum::<usize>();
                }
                Run::New(c) => {
                    bytes.extend_from_slice(&data[offset..offset + c.size as usize]);
                    offset += c.size as usize;
                }
            }
        }
        pieces.push(Piece::Runs(group.to_vec()));
        pieces.extend(bytes.chunks(MAX_CHUNK).map(|b| Piece::Chunk(b.to_vec())));
    }
    pieces
}

/// Makes `pieces` (runs) go wrong as `bad` says.
fn spoil(pieces: &mut [Piece], bad: BadRuns, base_len: usize) {
    match bad {
        BadRuns::WrongChunk => {
            if let Some(Piece::Chunk(c)) = pieces.iter_mut().find(|p| matches!(p, Piece::Chunk(_))) {
                c[0] ^= 1;
            }
        }
        BadRuns::Short | BadRuns::OutOfBase => {
            for p in pieces.iter_mut() {
                if let Piece::Runs(runs) = p
                    && let Some(i) = runs.iter().position(|r| matches!(r, Run::Base { .. }))
                {
                    if bad == BadRuns::Short {
                        runs.remove(i);
                    } else {
                        runs[i] = Run::Base { first: base_len as u32, count: 1 };
                    }
                    return;
                }
            }
        }
        BadRuns::Unasked => {}
    }
}

impl MemoryRemote {
    /// An empty server, seen by client `client_id`.
    pub(crate) fn new(client_id: &str) -> Self {
        Self { client_id: client_id.to_owned(), server: Arc::default(), before_download: Arc::default() }
    }

    /// The same server, seen by another client.
    pub(crate) fn as_client(&self, client_id: &str) -> Self {
        Self { client_id: client_id.to_owned(), ..self.clone() }
    }

    fn server(&self) -> std::sync::MutexGuard<'_, Server> {
        self.server.lock().expect("no test panics while holding the server")
    }

    /// Writes `data` at `path` as this client, over whatever is there.
    pub(crate) fn put(&self, path: &str, data: &[u8]) -> Entry {
        let path = RelPath::new(path).expect("a valid path");
        let content = Content {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mtime_ns: 1_000_000_000,
            executable: false,
            symlink: false,
            folder: false,
        };
        let mut server = self.server();
        server.contents.insert(content.hash, data.to_vec());
        server.commit(&path, Some(content), &self.client_id)
    }

    /// Deletes `path` as this client.
    pub(crate) fn remove(&self, path: &str) -> Entry {
        let path = RelPath::new(path).expect("a valid path");
        self.server().commit(&path, None, &self.client_id)
    }

    /// The content of the live file at `path`, if there is one.
    pub(crate) fn content(&self, path: &str) -> Option<Vec<u8>> {
        let server = self.server();
        let entry = server.entries.get(&RelPath::new(path).ok()?)?;
        server.contents.get(&entry.content?.hash).cloned()
    }

    /// The entry at `path` (a tombstone too), if the server has one.
    pub(crate) fn entry(&self, path: &str) -> Option<Entry> {
        self.server().entries.get(&RelPath::new(path).ok()?).cloned()
    }

    /// The live files' paths and contents.
    pub(crate) fn files(&self) -> HashMap<String, Vec<u8>> {
        let server = self.server();
        server
            .entries
            .values()
            .filter_map(|e| Some((e.path.to_string(), server.contents.get(&e.content?.hash)?.clone())))
            .collect()
    }

    /// Forgets the chunk lists of every content held now, as if an
    /// earlier release had stored it whole.
    pub(crate) fn forget_lists(&self) {
        let mut server = self.server();
        let held: Vec<ContentHash> = server.contents.keys().copied().collect();
        server.whole.extend(held);
    }

    /// Content bytes received in upload chunks so far, and sent in
    /// download chunks.
    pub(crate) fn moves(&self) -> Vec<(String, String)> {
        self.server().moves.iter().map(|(to, from)| (to.to_string(), from.to_string())).collect()
    }

    /// Content bytes (received, sent) in upload and download chunks.
    pub(crate) fn wire_bytes(&self) -> (u64, u64) {
        let server = self.server();
        (server.received, server.sent)
    }

    /// Makes every download sent as runs (or, for [`BadRuns::Unasked`],
    /// every download) go wrong as `bad` says, until called with `None`.
    pub(crate) fn spoil_runs(&self, bad: Option<BadRuns>) {
        self.server().bad_runs = bad;
    }

    /// Refuses every write with `refusal` from now on (`None`: writes
    /// go through again).
    pub(crate) fn refuse_writes(&self, refusal: Option<ServerError>) {
        self.server().refuse_writes = refusal;
    }

    /// Runs `hook` when the next download starts, before its content is sent.
    pub(crate) fn before_next_download(&self, hook: impl FnOnce() + Send + 'static) {
        *self.before_download.lock().expect("no panic under the hook") = Some(Box::new(hook));
    }

    async fn lock_path(&self, path: &RelPath, ttl: Duration, note: &str, holder: &str) -> Result<Lock> {
        let mut server = self.server();
        if let Some(held) = server.locks.get(path)
            && held.client_id != self.client_id
        {
            return Err(Error::server(Refused::Locked, &format!("{path} is locked")));
        }
        server.seq += 1;
        let now = syncstore::lock::now_ms();
        let ttl_seconds = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        let lock = Lock {
            lock_id: format!("lock-{}", server.seq),
            path: path.clone(),
            client_id: self.client_id.clone(),
            principal: "anonymous".into(),
            holder: holder.to_owned(),
            note: note.to_owned(),
            acquired_ms: now,
            expires_ms: now + i64::from(ttl_seconds) * 1000,
            ttl_seconds,
            token: server.seq,
        };
        server.locks.insert(path.clone(), lock.clone());
        let seq = server.seq;
        server.events.push(RemoteEvent::Locked { seq, lock: lock.clone() });
        Ok(lock)
    }

    fn lock_by_id(server: &Server, lock_id: &str) -> Result<Lock> {
        server
            .locks
            .values()
            .find(|l| l.lock_id == lock_id)
            .cloned()
            .ok_or_else(|| Error::server(Refused::NotFound, "no such lock"))
    }
}

impl Remote for MemoryRemote {
    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn has_fallback(&self) -> bool {
        false
    }

    fn info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        let head_seq = self.server().seq;
        Box::pin(async move {
            Ok(ServerInfo { history_id: HISTORY_ID.into(), head_seq, primary: true, token_writes: true })
        })
    }

    fn stat<'a>(&'a self, path: &'a RelPath) -> BoxFuture<'a, Result<Option<Entry>>> {
        let entry = self.server().entries.get(path).cloned();
        Box::pin(async move { Ok(entry) })
    }

    fn manifest(&self) -> BoxFuture<'_, Result<HashMap<RelPath, Entry>>> {
        let entries = self.server().entries.clone();
        Box::pin(async move { Ok(entries) })
    }

    fn upload_reusing<'a>(&'a self, upload: &'a Upload) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(async move {
            let mut server = self.server();
            if !server.contents.contains_key(&upload.content.hash) {
                return Ok(None);
            }
            server.check_write(&upload.path, &self.client_id, upload.lock_token, upload.base_version)?;
            server.check_clash(&upload.path, &upload.content.content())?;
            server.note_move(upload);
            Ok(Some(server.commit(&upload.path, Some(upload.content.content()), &self.client_id)))
        })
    }

    fn upload<'a>(
        &'a self,
        upload: &'a Upload,
        mut body: mpsc::Receiver<Body>,
    ) -> BoxFuture<'a, Result<Entry>> {
        Box::pin(async move {
            let base = {
                let server = self.server();
                server.check_write(&upload.path, &self.client_id, upload.lock_token, upload.base_version)?;
                server.check_clash(&upload.path, &upload.content.content())?;
                match &upload.base_hash {
                    Some(hash) => {
                        let (list, data) = server.base(hash, true)?;
                        Some((list, data.to_vec()))
                    }
                    None => None,
                }
            };
            // Plain bytes, or the runs and the bytes of their new chunks.
            let (mut bytes, mut runs) = (Vec::new(), Vec::new());
            let mut announced = 0u64;
            loop {
                match body.recv().await {
                    Some(Body::Chunk(c)) => {
                        self.server().received += c.len() as u64;
                        bytes.extend_from_slice(&c);
                    }
                    Some(Body::Runs(more)) => {
                        if base.is_none() || bytes.len() as u64 != announced {
                            return Err(Error::server(Refused::Invalid, "runs out of place"));
                        }
                        for run in &more {
                            if let Run::New(c) = run {
                                announced += u64::from(c.size);
                            }
                        }
                        runs.extend(more);
                    }
                    Some(Body::End) => break,
                    // Cut off without the end marker: stays open until
                    // dropped, as the wire does.
                    None => std::future::pending().await,
                }
            }
            let data = match &base {
                None => bytes,
                Some((list, base_data)) => {
                    let mut data = Vec::new();
                    let mut new = &bytes[..];
                    let offsets: Vec<usize> = list
                        .iter()
                        .scan(0, |at, c| {
                            *at += c.size as usize;
                            Some(*at - c.size as usize)
                        })
                        .collect();
                    for run in &runs {
                        match *run {
                            Run::Base { first, count } => {
                                let slice = chunks::base_slice(list, first, count)
                                    .map_err(|e| Error::server(Refused::Invalid, &e.to_string()))?;
                                let at = offsets[first as usize];
                                let len: usize = slice.iter().map(|c| c.size as usize).sum();
                                data.extend_from_slice(&base_data[at..at + len]);
                            }
                            Run::New(c) => {
                                let Some((chunk, rest)) = new.split_at_checked(c.size as usize) else {
                                    return Err(mismatch("the bytes of a new chunk are missing"));
                                };
                                if ContentHash::of(chunk) != c.hash {
                                    return Err(mismatch("a new chunk does not match its hash"));
                                }
                                data.extend_from_slice(chunk);
                                new = rest;
                            }
                        }
                    }
                    data
                }
            };
            let c = &upload.content;
            if data.len() as u64 != c.size || ContentHash::of(&data) != c.hash {
                return Err(mismatch("the content does not match its header"));
            }
            let mut server = self.server();
            server.check_write(&upload.path, &self.client_id, upload.lock_token, upload.base_version)?;
            server.check_clash(&upload.path, &upload.content.content())?;
            server.contents.insert(c.hash, data);
            server.note_move(upload);
            Ok(server.commit(&upload.path, Some(upload.content.content()), &self.client_id))
        })
    }

    fn download<'a>(
        &'a self,
        entry: &'a Entry,
        have: Option<ContentHash>,
    ) -> BoxFuture<'a, Result<PieceStream>> {
        Box::pin(async move {
            let hook = self.before_download.lock().expect("no panic under the hook").take();
            if let Some(hook) = hook {
                hook();
            }
            let mut server = self.server();
            let current = server.entries.get(&entry.path).filter(|e| e.version == entry.version);
            let data =
                current.and_then(|e| server.contents.get(&e.content?.hash)).cloned().ok_or_else(|| {
                    Error::server(Refused::NotFound, &format!("{} v{}", entry.path, entry.version))
                })?;
            let base = have.and_then(|h| server.base(&h, false).ok().map(|(list, _)| list));
            let bad = server.bad_runs;
            let mut pieces = match (base, bad) {
                (Some(base), _) if data.len() as u64 > WHOLE_MAX => {
                    let mut pieces = as_runs(&base, &list_of(&data), &data);
                    if let Some(bad) = bad {
                        spoil(&mut pieces, bad, base.len());
                    }
                    pieces
                }
                (None, Some(BadRuns::Unasked)) => {
                    let list = list_of(&data);
                    as_runs(&list, &list, &data)
                }
                _ => data.chunks(MAX_CHUNK).map(|c| Piece::Chunk(c.to_vec())).collect(),
            };
            for p in &mut pieces {
                if let Piece::Chunk(c) = p {
                    server.sent += c.len() as u64;
                }
            }
            Ok(futures::stream::iter(pieces.into_iter().map(Ok)).boxed())
        })
    }

    fn delete<'a>(
        &'a self,
        path: &'a RelPath,
        base_version: u64,
        lock_token: u64,
    ) -> BoxFuture<'a, Result<Entry>> {
        Box::pin(async move {
            let mut server = self.server();
            if server.entries.get(path).is_none_or(Entry::is_deleted) {
                return Err(Error::server(Refused::NotFound, &format!("{path}")));
            }
            server.check_write(path, &self.client_id, lock_token, base_version)?;
            Ok(server.commit(path, None, &self.client_id))
        })
    }

    fn lock<'a>(
        &'a self,
        path: &'a RelPath,
        ttl: Duration,
        note: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(self.lock_path(path, ttl, note, holder))
    }

    fn refresh_lock<'a>(&'a self, lock_id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(async move {
            let mut server = self.server();
            let mut lock = Self::lock_by_id(&server, lock_id)?;
            lock.expires_ms = syncstore::lock::now_ms() + ttl.as_millis() as i64;
            server.locks.insert(lock.path.clone(), lock.clone());
            Ok(lock)
        })
    }

    fn unlock<'a>(&'a self, lock_id: &'a str, force: bool) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(async move {
            let mut server = self.server();
            let lock = Self::lock_by_id(&server, lock_id)?;
            if lock.client_id != self.client_id && !force {
                return Err(Error::server(Refused::Locked, "someone else's lock"));
            }
            server.locks.remove(&lock.path);
            server.seq += 1;
            let seq = server.seq;
            server.events.push(RemoteEvent::Unlocked { seq, lock: lock.clone() });
            Ok(lock)
        })
    }

    fn list_locks<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Lock>>> {
        Box::pin(async move {
            let mut locks: Vec<Lock> = self
                .server()
                .locks
                .values()
                .filter(|l| l.path.as_str().starts_with(prefix))
                .cloned()
                .collect();
            locks.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(locks)
        })
    }

    fn subscribe(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<RemoteEvent>>>> {
        let events: Vec<Result<RemoteEvent>> =
            self.server().events.iter().filter(|e| e.seq() > after_seq).cloned().map(Ok).collect();
        Box::pin(async move { Ok(futures::stream::iter(events).boxed()) })
    }
}
