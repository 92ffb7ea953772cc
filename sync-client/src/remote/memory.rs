//! An in-memory [`Remote`] for the engine's unit tests: a manifest, its
//! contents and its locks in a `Mutex`, with the server's rules that the
//! engine depends on (a write's base version must be current, a path
//! locked by someone else refuses writes, a stale lock token is refused,
//! a file never lies below a file nor where files lie below, the content
//! must match its header). Other clients' writes and locks are
//! made through its own methods.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use syncstore::{ContentHash, Entry, Lock, RelPath, entry::Content, limits::MAX_CHUNK};
use tokio::sync::mpsc;

use super::{Body, ByteStream, Refused, Remote, RemoteEvent, ServerInfo, Upload};
use crate::error::{Error, Result};

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

#[derive(Debug, Default)]
struct Server {
    /// The last change's sequence number (a version is one).
    seq: u64,
    entries: HashMap<RelPath, Entry>,
    /// Contents by hash.
    contents: HashMap<ContentHash, Vec<u8>>,
    locks: HashMap<RelPath, Lock>,
    events: Vec<RemoteEvent>,
}

impl Server {
    /// Refuses a write to `path` by `client_id` with `token` at `base`,
    /// as the server does.
    fn check_write(&self, path: &RelPath, client_id: &str, token: u64, base: u64) -> Result<()> {
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
            Ok(Some(server.commit(&upload.path, Some(upload.content.content()), &self.client_id)))
        })
    }

    fn upload<'a>(
        &'a self,
        upload: &'a Upload,
        mut body: mpsc::Receiver<Body>,
    ) -> BoxFuture<'a, Result<Entry>> {
        Box::pin(async move {
            {
                let server = self.server();
                server.check_write(&upload.path, &self.client_id, upload.lock_token, upload.base_version)?;
                server.check_clash(&upload.path, &upload.content.content())?;
            }
            let mut data = Vec::new();
            loop {
                match body.recv().await {
                    Some(Body::Chunk(c)) => data.extend_from_slice(&c),
                    Some(Body::End) => break,
                    // Cut off without the end marker: stays open until
                    // dropped, as the wire does.
                    None => std::future::pending().await,
                }
            }
            let c = &upload.content;
            if data.len() as u64 != c.size || ContentHash::of(&data) != c.hash {
                return Err(Error::server(Refused::Other, "the content does not match its header"));
            }
            let mut server = self.server();
            server.check_write(&upload.path, &self.client_id, upload.lock_token, upload.base_version)?;
            server.check_clash(&upload.path, &upload.content.content())?;
            server.contents.insert(c.hash, data);
            Ok(server.commit(&upload.path, Some(upload.content.content()), &self.client_id))
        })
    }

    fn download<'a>(&'a self, entry: &'a Entry) -> BoxFuture<'a, Result<ByteStream>> {
        Box::pin(async move {
            let hook = self.before_download.lock().expect("no panic under the hook").take();
            if let Some(hook) = hook {
                hook();
            }
            let server = self.server();
            let current = server.entries.get(&entry.path).filter(|e| e.version == entry.version);
            let data =
                current.and_then(|e| server.contents.get(&e.content?.hash)).cloned().ok_or_else(|| {
                    Error::server(Refused::NotFound, &format!("{} v{}", entry.path, entry.version))
                })?;
            let chunks: Vec<Result<Vec<u8>>> = data.chunks(MAX_CHUNK).map(|c| Ok(c.to_vec())).collect();
            Ok(futures::stream::iter(chunks).boxed())
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
