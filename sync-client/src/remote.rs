//! The server, as the client sees it: a lazily connecting gRPC channel and
//! typed calls that return domain values. Every call waits for its answer
//! (a reply, or the next message of a listing) at most the security's
//! `call_timeout`, then fails naming the server.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use syncstore::{
    Entry, Lock, RelPath,
    connect::{self, AuthChannel, Security},
    limits::MAX_MESSAGE,
    pb::{self, file_sync_client::FileSyncClient},
};
use tonic::{Code, service::interceptor::InterceptedService};

use crate::error::{Error, Result};

/// A client of the servers' `FileSync`: one server, or a primary and its
/// replica. Calls go to the active server; [`Remote::info`] (re)chooses it:
/// the primary if one answers, else any server that answers (a replica
/// serves reads; writes then fail and wait for a primary). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Remote {
    servers: Arc<Vec<(String, FileSyncClient<AuthChannel>)>>,
    active: Arc<AtomicUsize>,
    client_id: String,
    /// How long a call waits for an answer.
    call_timeout: Duration,
}

impl Remote {
    /// Prepares connections to `urls` (`http://host:port` or `https://`),
    /// presenting `security`'s token and certificates; each is made on its
    /// first call and remade after a failure.
    pub fn new(urls: &[String], client_id: String, security: &Security) -> Result<Self> {
        if urls.is_empty() {
            return Err(Error::Config("no server given".into()));
        }
        let mut servers = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = security
                .endpoint(url)
                .map_err(|e| Error::Config(e.to_string()))?
                .http2_keep_alive_interval(connect::KEEPALIVE_INTERVAL)
                .keep_alive_timeout(connect::KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .tcp_nodelay(true);
            let credentials = security.credentials().map_err(|e| Error::Config(e.to_string()))?;
            let client = FileSyncClient::new(InterceptedService::new(endpoint.connect_lazy(), credentials))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            servers.push((url.clone(), client));
        }
        Ok(Self {
            servers: Arc::new(servers),
            active: Arc::new(AtomicUsize::new(0)),
            client_id,
            call_timeout: security.call_timeout,
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether more than one server was given.
    pub fn has_fallback(&self) -> bool {
        self.servers.len() > 1
    }

    /// The raw generated client of the active server, for streaming calls.
    pub fn raw(&self) -> FileSyncClient<AuthChannel> {
        self.servers[self.active.load(Ordering::Relaxed)].1.clone()
    }

    /// The active server's URL.
    pub fn server(&self) -> &str {
        &self.servers[self.active.load(Ordering::Relaxed)].0
    }

    /// Awaits `call` to the active server for at most the call timeout.
    pub async fn answer<T>(&self, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T> {
        Ok(connect::answer(self.server(), self.call_timeout, call).await??)
    }

    /// Describes the active server's history, after choosing the active
    /// server: the first primary that answers, else the first server that
    /// answers at all.
    pub async fn info(&self) -> Result<pb::ServerInfoResponse> {
        if !self.has_fallback() {
            return Ok(self.answer(self.raw().server_info(pb::ServerInfoRequest {})).await?.into_inner());
        }
        let mut fallback: Option<(usize, pb::ServerInfoResponse)> = None;
        let mut last_error = None;
        for (i, (url, client)) in self.servers.iter().enumerate() {
            let mut client = client.clone();
            let call = client.server_info(pb::ServerInfoRequest {});
            let answered = match connect::answer(url, self.call_timeout, call).await {
                Ok(r) => r.map_err(Error::from),
                Err(e) => Err(e.into()),
            };
            match answered {
                Ok(r) if r.get_ref().role == "primary" => {
                    self.activate(i);
                    return Ok(r.into_inner());
                }
                Ok(r) => {
                    if fallback.is_none() {
                        fallback = Some((i, r.into_inner()));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        match fallback {
            Some((i, info)) => {
                self.activate(i);
                Ok(info)
            }
            None => Err(last_error.expect("at least one server was asked")),
        }
    }

    fn activate(&self, i: usize) {
        let before = self.active.swap(i, Ordering::Relaxed);
        if before != i {
            tracing::warn!(server = %self.servers[i].0, previous = %self.servers[before].0, "switched server");
        }
    }

    /// The path's entry, `None` if the server never had it.
    pub async fn stat(&self, path: &RelPath) -> Result<Option<Entry>> {
        match self.answer(self.raw().stat(pb::StatRequest { path: path.to_string() })).await {
            Ok(r) => {
                let entry =
                    r.into_inner().entry.ok_or_else(|| Error::Protocol("stat without entry".into()))?;
                Ok(Some(Entry::try_from(entry)?))
            }
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The whole manifest, tombstones included.
    pub async fn manifest(&self) -> Result<HashMap<RelPath, Entry>> {
        let mut stream = self
            .answer(self.raw().list(pb::ListRequest { prefix: String::new(), include_deleted: true }))
            .await?
            .into_inner();
        let mut out = HashMap::new();
        while let Some(msg) = self.answer(stream.message()).await? {
            // The first message carries only the listing's head.
            let Some(e) = msg.entry else { continue };
            let Some(e) = crate::engine::accept_entry(e) else { continue };
            out.insert(e.path.clone(), e);
        }
        Ok(out)
    }

    /// Deletes `path` at `base_version`, carrying the token of the lock this
    /// client holds on it (0 for none).
    pub async fn delete(&self, path: &RelPath, base_version: u64, lock_token: u64) -> Result<Entry> {
        let mut client = self.raw();
        let call = client.delete(pb::DeleteRequest {
            path: path.to_string(),
            base_version,
            client_id: self.client_id.clone(),
            lock_token,
        });
        let resp = self.answer(call).await?.into_inner();
        Ok(Entry::try_from(resp.entry.ok_or_else(|| Error::Protocol("delete without entry".into()))?)?)
    }

    /// Locks `path` for this client (or refreshes its own lock on it).
    pub async fn lock(&self, path: &RelPath, ttl: Duration, note: &str, holder: &str) -> Result<Lock> {
        let mut client = self.raw();
        let call = client.lock(pb::LockRequest {
            path: path.to_string(),
            ttl_seconds: ttl_seconds(ttl)?,
            note: note.to_owned(),
            client_id: self.client_id.clone(),
            holder: holder.to_owned(),
        });
        lock_of(self.answer(call).await?.into_inner().lock)
    }

    /// Pushes the expiry of this client's lock `lock_id` to now + `ttl`.
    pub async fn refresh_lock(&self, lock_id: &str, ttl: Duration) -> Result<Lock> {
        let req = pb::RefreshLockRequest {
            lock_id: lock_id.to_owned(),
            ttl_seconds: ttl_seconds(ttl)?,
            client_id: self.client_id.clone(),
        };
        lock_of(self.answer(self.raw().refresh_lock(req)).await?.into_inner().lock)
    }

    /// Releases lock `lock_id`; with `force`, even someone else's.
    pub async fn unlock(&self, lock_id: &str, force: bool) -> Result<Lock> {
        let req = pb::UnlockRequest { lock_id: lock_id.to_owned(), client_id: self.client_id.clone(), force };
        let resp = self.answer(self.raw().unlock(req)).await?.into_inner();
        lock_of(resp.lock)
    }

    /// The live locks on `prefix` or below ("" for all), in path order.
    pub async fn list_locks(&self, prefix: &str) -> Result<Vec<Lock>> {
        let mut client = self.raw();
        let call = client.list_locks(pb::ListLocksRequest { prefix: prefix.to_owned() });
        let mut stream = self.answer(call).await?.into_inner();
        let mut out = Vec::new();
        while let Some(msg) = self.answer(stream.message()).await? {
            out.push(lock_of(msg.lock)?);
        }
        Ok(out)
    }

    /// The live lock on exactly `path`, if any.
    pub async fn lock_on(&self, path: &RelPath) -> Result<Option<Lock>> {
        Ok(self.list_locks(path.as_str()).await?.into_iter().find(|l| l.path == *path))
    }

    pub async fn subscribe(&self, after_seq: u64) -> Result<tonic::Streaming<pb::SubscribeResponse>> {
        let mut client = self.raw();
        let call = client.subscribe(pb::SubscribeRequest { after_seq, client_id: self.client_id.clone() });
        Ok(self.answer(call).await?.into_inner())
    }
}

fn lock_of(l: Option<pb::LockInfo>) -> Result<Lock> {
    let l = l.ok_or_else(|| Error::Protocol("an answer without its lock".into()))?;
    Lock::try_from(l).map_err(|e| Error::Protocol(format!("a lock with a bad path: {e}")))
}

fn ttl_seconds(ttl: Duration) -> Result<u32> {
    u32::try_from(ttl.as_secs().max(1))
        .map_err(|_| Error::Config(format!("a lock time of {ttl:?} is too long")))
}
