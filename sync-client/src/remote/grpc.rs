//! The wire side of [`Remote`]: a lazily connecting gRPC channel per
//! server, every `pb` message the client builds or reads, and the one
//! decoding of a server's refusal into [`Refused`]. Every call waits for
//! its answer (a reply, or the next message of a stream) at most the
//! security's `call_timeout`, then fails naming the server.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use syncstore::{
    ContentHash, Entry, Lock, Reason, RelPath,
    chunks::{MAX_RUNS_PER_MESSAGE, Run},
    connect::{self, AuthChannel, Security},
    limits::{MAX_CHUNK, MAX_MESSAGE},
    pb::{self, download_response, file_sync_client::FileSyncClient, upload_request},
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Code, service::interceptor::InterceptedService};

use super::{Body, Piece, PieceStream, Refused, Remote, RemoteEvent, ServerInfo, Upload};
use crate::{
    error::{Error, Result, ServerError},
    ratelimit::{self, Limits},
};

/// A client of the servers' `FileSync`: one server, or a primary and its
/// replica. Calls go to the active server; [`Remote::info`] (re)chooses it:
/// the primary if one answers, else any server that answers (a replica
/// serves reads; writes then fail and wait for a primary). Cheap to clone.
#[derive(Debug, Clone)]
pub struct GrpcRemote {
    /// Each server's URL, its `FileSync` client and the channel under it
    /// (which [`GrpcRemote::history`] shares).
    servers: Arc<Vec<(String, FileSyncClient<AuthChannel>, AuthChannel)>>,
    active: Arc<AtomicUsize>,
    client_id: String,
    /// How long a call waits for an answer.
    call_timeout: Duration,
    /// The bandwidth limits content goes on and comes off the wire under.
    limits: Limits,
}

impl GrpcRemote {
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
                .tcp_nodelay(true)
                .initial_stream_window_size(ratelimit::STREAM_WINDOW)
                .initial_connection_window_size(ratelimit::CONNECTION_WINDOW);
            let credentials = security.credentials().map_err(|e| Error::Config(e.to_string()))?;
            let channel = InterceptedService::new(endpoint.connect_lazy(), credentials);
            let client = FileSyncClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            servers.push((url.clone(), client, channel));
        }
        Ok(Self {
            servers: Arc::new(servers),
            active: Arc::new(AtomicUsize::new(0)),
            client_id,
            call_timeout: security.call_timeout,
            limits: Limits::default(),
        })
    }

    /// Sends and receives content under `limits` (shared with its clones).
    pub fn with_limits(self, limits: Limits) -> Self {
        Self { limits, ..self }
    }

    /// The generated client of the active server.
    fn raw(&self) -> FileSyncClient<AuthChannel> {
        self.servers[self.active.load(Ordering::Relaxed)].1.clone()
    }

    /// A client of the active server's `History` service, on the same
    /// connection and under the same call timeout.
    pub fn history(&self) -> super::history::HistoryRemote {
        let (url, _, channel) = &self.servers[self.active.load(Ordering::Relaxed)];
        super::history::HistoryRemote::new(url.clone(), channel.clone(), self.call_timeout)
    }

    /// The active server's URL.
    pub fn server(&self) -> &str {
        &self.servers[self.active.load(Ordering::Relaxed)].0
    }

    /// Awaits `call` to the active server for at most the call timeout.
    async fn answer<T>(&self, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T> {
        Ok(connect::answer(self.server(), self.call_timeout, call).await??)
    }

    fn activate(&self, i: usize) {
        let before = self.active.swap(i, Ordering::Relaxed);
        if before != i {
            tracing::warn!(server = %self.servers[i].0, previous = %self.servers[before].0, "switched server");
        }
    }

    fn header(&self, upload: &Upload) -> pb::UploadRequest {
        let c = &upload.content;
        pb::UploadRequest {
            msg: Some(upload_request::Msg::Header(pb::UploadHeader {
                path: upload.path.to_string(),
                size: c.size,
                hash: c.hash.as_bytes().to_vec(),
                mtime_ns: c.mtime_ns,
                executable: c.executable,
                symlink: c.symlink,
                folder: c.folder,
                base_version: upload.base_version,
                client_id: self.client_id.clone(),
                lock_token: upload.lock_token,
                base_hash: upload.base_hash.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
                moved_from: upload.moved_from.as_ref().map(RelPath::to_string).unwrap_or_default(),
            })),
        }
    }
}

impl Remote for GrpcRemote {
    fn client_id(&self) -> &str {
        &self.client_id
    }

    fn has_fallback(&self) -> bool {
        self.servers.len() > 1
    }

    fn info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        Box::pin(async move {
            if !self.has_fallback() {
                return Ok(info_of(
                    self.answer(self.raw().server_info(pb::ServerInfoRequest {})).await?.into_inner(),
                ));
            }
            let mut fallback: Option<(usize, pb::ServerInfoResponse)> = None;
            let mut last_error = None;
            for (i, (url, client, _)) in self.servers.iter().enumerate() {
                let mut client = client.clone();
                let call = client.server_info(pb::ServerInfoRequest {});
                let answered = match connect::answer(url, self.call_timeout, call).await {
                    Ok(r) => r.map_err(Error::from),
                    Err(e) => Err(e.into()),
                };
                match answered {
                    Ok(r) if r.get_ref().role == "primary" => {
                        self.activate(i);
                        return Ok(info_of(r.into_inner()));
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
                    Ok(info_of(info))
                }
                None => Err(last_error.expect("at least one server was asked")),
            }
        })
    }

    fn stat<'a>(&'a self, path: &'a RelPath) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(async move {
            match self.answer(self.raw().stat(pb::StatRequest { path: path.to_string() })).await {
                Ok(r) => {
                    let entry =
                        r.into_inner().entry.ok_or_else(|| Error::Protocol("stat without entry".into()))?;
                    Ok(Some(Entry::try_from(entry)?))
                }
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn manifest(&self) -> BoxFuture<'_, Result<HashMap<RelPath, Entry>>> {
        Box::pin(async move {
            let mut stream = self
                .answer(self.raw().list(pb::ListRequest {
                    prefix: String::new(),
                    include_deleted: true,
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let mut out = HashMap::new();
            while let Some(msg) = self.answer(stream.message()).await? {
                // The first message carries only the listing's head.
                let Some(e) = msg.entry else { continue };
                let Some(e) = accept_entry(e) else { continue };
                out.insert(e.path.clone(), e);
            }
            Ok(out)
        })
    }

    fn upload_reusing<'a>(&'a self, upload: &'a Upload) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(async move {
            let only_header = tokio_stream::iter([self.header(upload), body_msg(Body::End)]);
            match self.raw().upload(only_header).await {
                Ok(resp) => Ok(Some(entry_of(resp.into_inner().entry)?)),
                Err(s) => match Error::from(s) {
                    // Not there: send it. (A lock refusal is not that.)
                    e if e.refused() == Some(Refused::UnknownContent) => Ok(None),
                    e => Err(e),
                },
            }
        })
    }

    fn upload<'a>(&'a self, upload: &'a Upload, body: mpsc::Receiver<Body>) -> BoxFuture<'a, Result<Entry>> {
        Box::pin(async move {
            let header = self.header(upload);
            let body = self.limits.pace_upload(tokio_stream::wrappers::ReceiverStream::new(body).boxed());
            let messages = futures::stream::iter([header]).chain(request_stream(body));
            let resp = self.raw().upload(messages).await?;
            entry_of(resp.into_inner().entry)
        })
    }

    fn download<'a>(
        &'a self,
        entry: &'a Entry,
        have: Option<ContentHash>,
    ) -> BoxFuture<'a, Result<PieceStream>> {
        Box::pin(async move {
            let content = entry.content.ok_or_else(|| Error::Protocol("download of a tombstone".into()))?;
            let mut client = self.raw();
            let call = client.download(pb::DownloadRequest {
                path: entry.path.to_string(),
                version: entry.version,
                have_hash: have.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
            });
            let mut stream = self.answer(call).await?.into_inner();
            match self.answer(stream.message()).await? {
                Some(pb::DownloadResponse { msg: Some(download_response::Msg::Entry(e)) })
                    if e.version == entry.version && e.hash == content.hash.as_bytes() => {}
                _ => {
                    return Err(Error::Protocol(format!(
                        "download of {} did not start with its entry",
                        entry.path
                    )));
                }
            }
            let (this, path) = (self.clone(), entry.path.clone());
            let chunks = futures::stream::unfold(Some(stream), move |stream| {
                let (this, path) = (this.clone(), path.clone());
                async move {
                    let mut stream = stream?;
                    let chunk = match this.answer(stream.message()).await {
                        Ok(None) => return None,
                        Ok(Some(pb::DownloadResponse { msg: Some(download_response::Msg::Chunk(c)) })) => {
                            if c.len() > MAX_CHUNK {
                                Err(Error::Protocol(format!(
                                    "download of {path}: a chunk of {} bytes (the limit is {MAX_CHUNK})",
                                    c.len()
                                )))
                            } else {
                                Ok(Piece::Chunk(c))
                            }
                        }
                        Ok(Some(pb::DownloadResponse { msg: Some(download_response::Msg::Runs(r)) })) => {
                            runs_of(r, have.is_some())
                                .map(Piece::Runs)
                                .map_err(|why| Error::Protocol(format!("download of {path}: {why}")))
                        }
                        Ok(Some(_)) => Err(Error::Protocol("unexpected message in a download".into())),
                        Err(e) => Err(e),
                    };
                    // After an error the stream ends.
                    let next = chunk.is_ok().then_some(stream);
                    Some((chunk, next))
                }
            });
            Ok(self.limits.pace_download(chunks.boxed()))
        })
    }

    fn delete<'a>(
        &'a self,
        path: &'a RelPath,
        base_version: u64,
        lock_token: u64,
    ) -> BoxFuture<'a, Result<Entry>> {
        Box::pin(async move {
            let mut client = self.raw();
            let call = client.delete(pb::DeleteRequest {
                path: path.to_string(),
                base_version,
                client_id: self.client_id.clone(),
                lock_token,
            });
            let resp = self.answer(call).await?.into_inner();
            Ok(Entry::try_from(resp.entry.ok_or_else(|| Error::Protocol("delete without entry".into()))?)?)
        })
    }

    fn lock<'a>(
        &'a self,
        path: &'a RelPath,
        ttl: Duration,
        note: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(async move {
            let mut client = self.raw();
            let call = client.lock(pb::LockRequest {
                path: path.to_string(),
                ttl_seconds: ttl_seconds(ttl)?,
                note: note.to_owned(),
                client_id: self.client_id.clone(),
                holder: holder.to_owned(),
            });
            lock_of(self.answer(call).await?.into_inner().lock)
        })
    }

    fn refresh_lock<'a>(&'a self, lock_id: &'a str, ttl: Duration) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(async move {
            let req = pb::RefreshLockRequest {
                lock_id: lock_id.to_owned(),
                ttl_seconds: ttl_seconds(ttl)?,
                client_id: self.client_id.clone(),
            };
            lock_of(self.answer(self.raw().refresh_lock(req)).await?.into_inner().lock)
        })
    }

    fn unlock<'a>(&'a self, lock_id: &'a str, force: bool) -> BoxFuture<'a, Result<Lock>> {
        Box::pin(async move {
            let req =
                pb::UnlockRequest { lock_id: lock_id.to_owned(), client_id: self.client_id.clone(), force };
            let resp = self.answer(self.raw().unlock(req)).await?.into_inner();
            lock_of(resp.lock)
        })
    }

    fn list_locks<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Lock>>> {
        Box::pin(async move {
            let mut client = self.raw();
            let call = client.list_locks(pb::ListLocksRequest { prefix: prefix.to_owned() });
            let mut stream = self.answer(call).await?.into_inner();
            let mut out = Vec::new();
            while let Some(msg) = self.answer(stream.message()).await? {
                out.push(lock_of(msg.lock)?);
            }
            Ok(out)
        })
    }

    fn subscribe(&self, after_seq: u64) -> BoxFuture<'_, Result<BoxStream<'static, Result<RemoteEvent>>>> {
        Box::pin(async move {
            let mut client = self.raw();
            let call =
                client.subscribe(pb::SubscribeRequest { after_seq, client_id: self.client_id.clone() });
            let stream = self.answer(call).await?.into_inner();
            // Events come when they happen: no answer timeout between them (the
            // connection's keep-alive notices a server gone silent).
            let events = futures::stream::unfold(Some(stream), |stream| async move {
                let mut stream = stream?;
                match stream.message().await {
                    Ok(None) => None,
                    Ok(Some(msg)) => match msg.event {
                        Some(event) => Some((Ok(event_of(event)), Some(stream))),
                        None => {
                            Some((Err(Error::Protocol("a subscription message without event".into())), None))
                        }
                    },
                    Err(s) => Some((Err(s.into()), None)),
                }
            });
            Ok(events.boxed())
        })
    }
}

// The one place a gRPC status becomes an error of the client: its reason
// (the `syncstore-reason` metadata) says what it means; a status without
// one (from a proxy, or the transport) is read by its code.
impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let reason = Reason::of(&s);
        let refused = match (reason, s.code()) {
            (Some(Reason::VersionConflict), _) => Refused::VersionConflict,
            (Some(Reason::Locked), _) => Refused::Locked,
            (Some(Reason::StaleLock), _) => Refused::StaleLock,
            (Some(Reason::PathClash), _) => Refused::PathClash,
            (Some(Reason::UnknownContent), _) => Refused::UnknownContent,
            (Some(Reason::UnknownBase), _) => Refused::UnknownBase,
            (Some(Reason::Replica | Reason::Fenced), _) => Refused::NotWritable,
            (Some(Reason::ReplicaUnavailable | Reason::ReplicaUnconfirmed), _) => Refused::ReplicaAway,
            (Some(Reason::DiskFull), _) => Refused::DiskFull,
            (_, Code::Aborted) => Refused::VersionConflict,
            (_, Code::NotFound) => Refused::NotFound,
            (_, Code::FailedPrecondition) => Refused::Precondition,
            (_, Code::Unavailable) => Refused::Unavailable,
            (_, Code::Unauthenticated | Code::PermissionDenied) => Refused::Credentials,
            (_, Code::DataLoss) => Refused::Damaged,
            (_, Code::InvalidArgument) => Refused::Invalid,
            _ => Refused::Other,
        };
        Error::Server(ServerError {
            refused,
            // A reason this release does not know (of a newer server) is
            // still shown as the server named it.
            reason: s
                .metadata()
                .get(syncstore::reason::REASON_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            replica: syncstore::replication::replica_of(&s).unwrap_or("").to_owned(),
            code: format!("{:?}", s.code()),
            message: s.message().to_owned(),
        })
    }
}

fn info_of(r: pb::ServerInfoResponse) -> ServerInfo {
    ServerInfo {
        primary: r.role == "primary",
        token_writes: r.access == "read-write",
        history_id: r.history_id,
        head_seq: r.head_seq,
    }
}

/// Turns an entry received from the server into an [`Entry`], or refuses
/// it with a warning (its path escaped) if its path or hash is not valid:
/// `..`, absolute, empty, NUL or other control characters, not NFC, too
/// long, inside the client's state folder. A refused entry is skipped;
/// the rest of the listing or stream goes on.
fn accept_entry(e: pb::FileEntry) -> Option<Entry> {
    let path = e.path.escape_debug().to_string();
    match Entry::try_from(e) {
        Ok(entry) => Some(entry),
        Err(err) => {
            tracing::warn!(path = %path, error = %err, "refused an entry from the server");
            None
        }
    }
}

/// A change event in the client's terms.
fn event_of(event: pb::ChangeEvent) -> RemoteEvent {
    use pb::change_event::Kind;
    let seq = event.seq;
    match Kind::try_from(event.kind) {
        Ok(Kind::Reset) => RemoteEvent::Reset { seq },
        Ok(Kind::Put | Kind::Delete) => RemoteEvent::Entry { seq, entry: event.entry.and_then(accept_entry) },
        Ok(kind @ (Kind::Lock | Kind::Unlock)) => match event.lock.map(Lock::try_from) {
            Some(Ok(lock)) if kind == Kind::Lock => RemoteEvent::Locked { seq, lock },
            Some(Ok(lock)) => RemoteEvent::Unlocked { seq, lock },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "refused a lock event with a bad path");
                RemoteEvent::Skipped { seq }
            }
            None => {
                tracing::warn!(seq, "refused a lock event without its lock");
                RemoteEvent::Skipped { seq }
            }
        },
        _ => {
            tracing::warn!(kind = event.kind, "ignoring an unknown change event");
            RemoteEvent::Skipped { seq }
        }
    }
}

/// The body of an upload: the reader's messages, ending only after the
/// end marker. A reader that stops without sending it (the file changed,
/// or could not be read) leaves the stream open, never ended normally,
/// until the call is cancelled.
fn request_stream(rx: BoxStream<'static, Body>) -> impl Stream<Item = pb::UploadRequest> {
    futures::stream::unfold((rx, false), |(mut rx, ended)| async move {
        match rx.next().await {
            Some(body) => {
                let end = body == Body::End;
                Some((body_msg(body), (rx, end)))
            }
            None if ended => None,
            None => std::future::pending().await,
        }
    })
}

/// A download's runs in the client's terms; refused if the download named
/// no content held (`asked`), if there are too many or if one is malformed.
fn runs_of(runs: pb::ChunkRuns, asked: bool) -> std::result::Result<Vec<Run>, String> {
    if !asked {
        return Err("runs it did not ask for".into());
    }
    if runs.runs.len() > MAX_RUNS_PER_MESSAGE {
        return Err(format!("{} runs in one message (the limit is {MAX_RUNS_PER_MESSAGE})", runs.runs.len()));
    }
    runs.runs.into_iter().map(|r| Run::try_from(r).map_err(|e| e.to_string())).collect()
}

fn body_msg(body: Body) -> pb::UploadRequest {
    let msg = match body {
        Body::Chunk(data) => upload_request::Msg::Chunk(data),
        Body::Runs(runs) => {
            upload_request::Msg::Runs(pb::ChunkRuns { runs: runs.into_iter().map(Into::into).collect() })
        }
        Body::End => upload_request::Msg::End(pb::UploadEnd {}),
    };
    pb::UploadRequest { msg: Some(msg) }
}

fn entry_of(e: Option<pb::FileEntry>) -> Result<Entry> {
    Ok(Entry::try_from(e.ok_or_else(|| Error::Protocol("response without entry".into()))?)?)
}

fn lock_of(l: Option<pb::LockInfo>) -> Result<Lock> {
    let l = l.ok_or_else(|| Error::Protocol("an answer without its lock".into()))?;
    Lock::try_from(l).map_err(|e| Error::Protocol(format!("a lock with a bad path: {e}")))
}

fn ttl_seconds(ttl: Duration) -> Result<u32> {
    u32::try_from(ttl.as_secs().max(1))
        .map_err(|_| Error::Config(format!("a lock time of {ttl:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(mut status: tonic::Status, reason: Reason) -> Error {
        reason.attach(&mut status);
        Error::from(status)
    }

    #[test]
    fn a_full_disk_on_the_server_is_said_plainly() {
        let e = with_reason(tonic::Status::resource_exhausted("no space"), Reason::DiskFull);
        assert!(e.to_string().starts_with("the server's disk is full"), "{e}");
        let busy = Error::from(tonic::Status::resource_exhausted("too many uploads"));
        assert!(!busy.to_string().contains("disk is full"), "{busy}");
        let damaged = with_reason(tonic::Status::data_loss("content x is damaged"), Reason::Damaged);
        assert!(damaged.to_string().starts_with("the server's copy is damaged"), "{damaged}");
    }

    #[test]
    fn every_reason_decodes_to_what_the_engine_acts_on() {
        let cases = [
            (tonic::Status::aborted("x"), Reason::VersionConflict, Refused::VersionConflict),
            (tonic::Status::failed_precondition("x"), Reason::Locked, Refused::Locked),
            (tonic::Status::failed_precondition("x"), Reason::StaleLock, Refused::StaleLock),
            (tonic::Status::failed_precondition("x"), Reason::PathClash, Refused::PathClash),
            (tonic::Status::failed_precondition("x"), Reason::UnknownContent, Refused::UnknownContent),
            (tonic::Status::failed_precondition("x"), Reason::UnknownBase, Refused::UnknownBase),
            (tonic::Status::failed_precondition("x"), Reason::Replica, Refused::NotWritable),
            (tonic::Status::not_found("x"), Reason::LockNotHeld, Refused::NotFound),
            (tonic::Status::unavailable("x"), Reason::ReplicaUnavailable, Refused::ReplicaAway),
            (tonic::Status::unavailable("x"), Reason::Unavailable, Refused::Unavailable),
            (tonic::Status::unauthenticated("x"), Reason::Unauthenticated, Refused::Credentials),
            (tonic::Status::invalid_argument("x"), Reason::InvalidPath, Refused::Invalid),
            (tonic::Status::invalid_argument("x"), Reason::ContentMismatch, Refused::Invalid),
            (tonic::Status::resource_exhausted("x"), Reason::TooLarge, Refused::Other),
        ];
        for (status, reason, refused) in cases {
            assert_eq!(with_reason(status, reason).refused(), Some(refused), "{reason:?}");
        }
        // A status without a reason (from a proxy, say) is read by its code.
        assert_eq!(Error::from(tonic::Status::aborted("x")).refused(), Some(Refused::VersionConflict));
        assert!(Error::from(tonic::Status::unavailable("x")).is_unavailable());
    }
}
