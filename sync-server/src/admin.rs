//! `syncstore.v1.Admin`: a server's status (role, position, replication,
//! history), a digest of its manifest (and of its content, read back), its
//! content for a peer's scrub, the retention of history and pruning, and
//! `compare`, which diffs two servers.

use std::{
    collections::{BTreeMap, HashMap},
    pin::Pin,
};

use anyhow::Context;
use syncstore::{
    connect::{self, Security},
    pb::{self, admin_client::AdminClient, admin_server::Admin},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    ServerMetrics,
    auth::{Need, caller, check_namespace, principal},
    context::ServiceContext,
    error::{Error, Result},
    pruning::Pruner,
    replication::{Mode, WriteGate, primary::ReplicationHandle},
    storage::{DEFAULT_NAMESPACE, PAGE_SIZE, Store, Verdict},
    wire,
};

/// Manifest entries buffered before the producer waits for the caller.
const MANIFEST_BUFFER: usize = 64;
/// Chunks of a `ReadContent` buffered before the reader waits for the caller.
const CONTENT_BUFFER: usize = 4;
/// Most problems a `ContentDigest` lists (all are counted).
pub const MAX_CONTENT_PROBLEMS: usize = 1000;

/// How recently a process of a shared backend must have reported itself to
/// count among the processes status shows.
const PROCESSES_SEEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The `Admin` service of one server.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    role: &'static str,
    gate: WriteGate,
    replication: Option<ReplicationHandle>,
    pruner: Pruner,
    metrics: ServerMetrics,
    subscribers: crate::context::Subscribers,
}

impl AdminService {
    /// The service over `ctx`.
    pub fn new(ctx: &ServiceContext) -> Self {
        Self {
            store: ctx.store.clone(),
            role: ctx.role.as_str(),
            gate: ctx.gate.clone(),
            replication: ctx.replication.clone(),
            pruner: ctx.pruner.clone(),
            metrics: ctx.metrics.clone(),
            subscribers: ctx.subscribers.clone(),
        }
    }
}

impl AdminService {
    /// Refuses a write (a retention, a prune) on a server that takes none
    /// now, or while a sync-mode replica that must confirm it is known to
    /// be away: before anything is written.
    fn admit_write(&self) -> Result<()> {
        self.gate.check()?;
        match &self.replication {
            Some(r) => r.admit(),
            None => Ok(()),
        }
    }

    /// In sync mode, waits until the replica holds everything committed so
    /// far (the write just made included), as an upload does.
    async fn replicated(&self) -> Result<()> {
        match &self.replication {
            Some(r) => {
                let seq = self.store.head();
                r.committed(seq);
                r.wait_replicated(seq).await
            }
            None => Ok(()),
        }
    }
}

/// The namespace an Admin call names ("" is the default namespace).
fn namespace_of(ns: &str) -> Result<String> {
    if ns.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_owned());
    }
    check_namespace(ns).map_err(Error::InvalidField)?;
    Ok(ns.to_owned())
}

/// BLAKE3 over every live file's (namespace, path, hash, size, executable, symlink and folder flags)
/// in (namespace, path) order, and over the history (see [`history_digest`]).
pub async fn digest(store: &Store) -> Result<pb::DigestResponse> {
    let (mut d, _) = digest_with(store, |_| None).await?;
    (d.history_hash, d.history_versions) = history_digest(store).await?;
    Ok(d)
}

/// BLAKE3 over every kept version of every namespace in (namespace, path,
/// version) order, each with its note and pin, and every label; and how
/// many versions.
pub async fn history_digest(store: &Store) -> Result<(Vec<u8>, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u64;
    let field = |h: &mut blake3::Hasher, bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for ns in store.history_namespaces().await? {
        field(&mut hasher, ns.as_bytes());
        let mut after: Option<(String, u64)> = None;
        loop {
            let page =
                store.versions_page(&ns, after.as_ref().map(|(p, s)| (p.as_str(), *s)), PAGE_SIZE).await?;
            let done = page.len() < PAGE_SIZE;
            after = page.last().map(|v| (v.entry.path.as_str().to_owned(), v.seq()));
            for v in page {
                count += 1;
                let pb::FileVersion {
                    entry,
                    committed_ms,
                    principal,
                    kind,
                    moved_from,
                    moved_to,
                    restored_from,
                    pinned,
                } = wire::file_version(v);
                let e = entry.unwrap_or_default();
                field(&mut hasher, e.path.as_bytes());
                field(&mut hasher, &e.hash);
                for n in [e.version, e.size, restored_from, committed_ms as u64, kind as u64] {
                    hasher.update(&n.to_le_bytes());
                }
                hasher.update(&[
                    u8::from(e.deleted),
                    u8::from(e.executable),
                    u8::from(e.symlink),
                    u8::from(e.folder),
                    u8::from(pinned),
                ]);
                for text in [&principal, &moved_from, &moved_to, &e.client_id] {
                    field(&mut hasher, text.as_bytes());
                }
            }
            if done {
                break;
            }
        }
        for l in store.labels(&ns).await? {
            field(&mut hasher, l.name.as_bytes());
            hasher.update(&l.seq.to_le_bytes());
            field(&mut hasher, l.note.as_bytes());
            field(&mut hasher, l.principal.as_bytes());
            hasher.update(&[u8::from(l.automatic)]);
        }
    }
    Ok((hasher.finalize().as_bytes().to_vec(), count))
}

/// [`digest`], plus for each live file whether its content read back
/// whole: every distinct stored content is read and verified first
/// (damaged content is set aside). Reads everything stored.
pub async fn content_digest(store: &Store) -> Result<pb::ContentDigestResponse> {
    let mut bad: HashMap<syncstore::ContentHash, &'static str> = HashMap::new();
    let mut verified_bytes = 0u64;
    let mut after = None;
    loop {
        let page = store.referenced_blobs(after.as_ref(), PAGE_SIZE).await?;
        let done = page.len() < PAGE_SIZE;
        after = page.last().map(|(h, _)| *h);
        for (hash, size) in page {
            verified_bytes += size;
            match store.verify_blob(&hash, size).await? {
                Verdict::Good => {}
                Verdict::Damaged => {
                    bad.insert(hash, "damaged");
                }
                Verdict::Missing => {
                    bad.insert(hash, if store.is_damaged(&hash).await? { "damaged" } else { "missing" });
                }
            }
        }
        if done {
            break;
        }
    }
    let (d, problems) = digest_with(store, |h| bad.get(h).copied()).await?;
    Ok(pb::ContentDigestResponse {
        file_count: d.file_count,
        total_bytes: d.total_bytes,
        root_hash: d.root_hash,
        head_seq: d.head_seq,
        verified_bytes,
        problem_count: problems.len() as u64,
        problems: problems.into_iter().take(MAX_CONTENT_PROBLEMS).collect(),
    })
}

/// The manifest digest; `problem` says which content is not intact (it is
/// then hashed in too, and the file listed).
async fn digest_with(
    store: &Store,
    problem: impl Fn(&syncstore::ContentHash) -> Option<&'static str>,
) -> Result<(pb::DigestResponse, Vec<pb::ContentProblem>)> {
    let head = store.head();
    let mut hasher = blake3::Hasher::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut problems = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let page =
            store.manifest_page(after.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE).await?;
        let done = page.len() < PAGE_SIZE;
        after = page.last().map(|(ns, e)| (ns.clone(), e.path.to_string()));
        for (ns, e) in page {
            let Some(c) = e.content else { continue };
            files += 1;
            bytes += c.size;
            for part in [ns.as_bytes(), e.path.as_str().as_bytes()] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            hasher.update(c.hash.as_bytes());
            hasher.update(&c.size.to_le_bytes());
            hasher.update(&[u8::from(c.executable) | (u8::from(c.symlink) << 1) | (u8::from(c.folder) << 2)]);
            if let Some(state) = problem(&c.hash) {
                hasher.update(state.as_bytes());
                problems.push(pb::ContentProblem {
                    namespace: ns,
                    path: e.path.to_string(),
                    hash: c.hash.as_bytes().to_vec(),
                    state: state.to_owned(),
                });
            }
        }
        if done {
            break;
        }
    }
    let digest = pb::DigestResponse {
        file_count: files,
        total_bytes: bytes,
        root_hash: hasher.finalize().as_bytes().to_vec(),
        head_seq: head,
        ..Default::default()
    };
    Ok((digest, problems))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        caller(&request, Need::Admin)?;
        let identity = self.store.identity();
        let head = self.store.head();
        let mut out = pb::StatusResponse {
            role: self.role.to_owned(),
            epoch: identity.epoch,
            history_id: identity.history_id,
            head_seq: head,
            replication_mode: "none".into(),
            writes_refused: self.gate.refusal().unwrap_or_default(),
            ..Default::default()
        };
        (out.damaged_blobs, out.damaged_blobs_found) = self.store.damaged_blobs();
        let history = self.store.history_usage(None).await?;
        (out.history_versions, out.history_bytes) = (history.versions, history.bytes);
        out.guard_trips = self.metrics.history_guard_trips.get();
        out.backend = if self.store.is_shared() { "postgres+s3" } else { "embedded" }.into();
        if self.store.is_shared() {
            out.process_id = self.store.process_id().to_owned();
            out.processes = self
                .store
                .processes(PROCESSES_SEEN_WITHIN)
                .await?
                .into_iter()
                .map(|p| pb::ServerProcess {
                    id: p.id,
                    address: p.address,
                    head_seq: p.head,
                    lag_changes: head.saturating_sub(p.head),
                    seen_unix_ms: p.seen_ms,
                })
                .collect();
        }
        out.subscribers = self
            .subscribers
            .list()
            .into_iter()
            .map(|(s, cursor)| pb::Subscriber {
                client_id: s.client_id,
                principal: s.principal,
                namespace: s.namespace,
                cursor_seq: cursor,
                connected_unix_ms: s.connected_ms,
                peer: s.peer,
            })
            .collect();
        if request.get_ref().count_stored {
            (out.stored_blobs, out.stored_bytes) = self.store.stored_blobs().await?;
        }
        if self.role == "replica" {
            out.primary_url = identity.primary_url.unwrap_or_default();
        }
        if let Some(r) = &self.replication {
            let acked = r.acked();
            out.replication_mode = match r.config().mode {
                Mode::Sync => "sync",
                Mode::Async => "async",
            }
            .into();
            out.replica_url = r.config().url.clone();
            out.replica_connected = r.connected();
            out.replica_acked_seq = acked;
            out.replica_lag_changes = head.saturating_sub(acked);
            out.replica_lag_seconds = r.lag_seconds(head);
            out.degraded = r.degraded();
            let link = r.link_status();
            out.replica_blocked_seq = link.blocked_seq;
            out.replica_error = link.error;
            out.replica_lost_changes = link.lost;
            out.replica_last_lost = link.last_lost;
            out.replica_connect_attempts = link.connect_attempts;
        }
        Ok(Response::new(out))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        caller(&request, Need::Admin)?;
        let d = digest(&self.store).await?;
        Ok(Response::new(d))
    }

    async fn content_digest(
        &self,
        request: Request<pb::ContentDigestRequest>,
    ) -> Result<Response<pb::ContentDigestResponse>, Status> {
        caller(&request, Need::Admin)?;
        let d = content_digest(&self.store).await?;
        Ok(Response::new(d))
    }

    type ReadContentStream = Pin<Box<dyn Stream<Item = Result<pb::ReadContentResponse, Status>> + Send>>;

    async fn read_content(
        &self,
        request: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadContentStream>, Status> {
        // A peer's scrub (an operator's admin token) or the primary's own
        // (its replication token) asks.
        let p = principal(&request)?;
        if !(p.allows(Need::Admin) || p.allows(Need::Replication)) {
            caller(&request, Need::Admin)?;
        }
        let req = request.into_inner();
        let hash = syncstore::ContentHash::try_from(&req.hash[..]).map_err(Error::from)?;
        let mut reader = self
            .store
            .content_reader(&hash, req.size)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no content with hash {hash} is stored here")))?;
        let (tx, rx) = mpsc::channel(CONTENT_BUFFER);
        tokio::spawn(async move {
            loop {
                let item = match reader.next_chunk(syncstore::limits::MAX_CHUNK).await {
                    Ok(Some(chunk)) => Ok(pb::ReadContentResponse { chunk }),
                    Ok(None) => return,
                    Err(e) => Err(Status::from(e)),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_retention(
        &self,
        request: Request<pb::GetRetentionRequest>,
    ) -> Result<Response<pb::GetRetentionResponse>, Status> {
        caller(&request, Need::Admin)?;
        let ns = namespace_of(&request.get_ref().namespace)?;
        let (retention, set_at_run_time) = self.store.retention(&ns, self.pruner.config()).await?;
        let usage = self.store.history_usage(Some(&ns)).await?;
        Ok(Response::new(pb::GetRetentionResponse {
            retention: Some(wire::retention_to_pb(&retention)),
            set_at_run_time,
            history_versions: usage.versions,
            history_bytes: usage.bytes,
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn set_retention(
        &self,
        request: Request<pb::SetRetentionRequest>,
    ) -> Result<Response<pb::SetRetentionResponse>, Status> {
        caller(&request, Need::Admin)?;
        let req = request.into_inner();
        let ns = namespace_of(&req.namespace)?;
        let given = req.retention.ok_or_else(|| Error::InvalidField("retention is required".into()))?;
        let retention = wire::retention_from_pb(&given)?;
        self.admit_write()?;
        self.store.set_retention(&ns, retention).await?;
        self.replicated().await?;
        tracing::info!(?retention, "retention set");
        self.pruner.wake();
        Ok(Response::new(pb::SetRetentionResponse { retention: Some(wire::retention_to_pb(&retention)) }))
    }

    type PruneHistoryStream = Pin<Box<dyn Stream<Item = Result<pb::PruneHistoryResponse, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn prune_history(
        &self,
        request: Request<pb::PruneHistoryRequest>,
    ) -> Result<Response<Self::PruneHistoryStream>, Status> {
        caller(&request, Need::Admin)?;
        let req = request.into_inner();
        let ns = namespace_of(&req.namespace)?;
        if !req.dry_run {
            self.admit_write()?;
        }
        let pruned = self.pruner.prune(&ns, req.dry_run, req.include_immutable).await?;
        if !req.dry_run && !pruned.removed.is_empty() {
            self.replicated().await?;
        }
        let (tx, rx) = mpsc::channel(MANIFEST_BUFFER);
        tokio::spawn(async move {
            for v in &pruned.removed {
                let msg = pb::prune_history_response::Msg::Version(wire::file_version(v.clone()));
                if tx.send(Ok(pb::PruneHistoryResponse { msg: Some(msg) })).await.is_err() {
                    return;
                }
            }
            let summary = pb::PruneSummary {
                versions: pruned.removed.len() as u64,
                bytes: pruned.before.bytes.saturating_sub(pruned.after.bytes),
            };
            let msg = pb::prune_history_response::Msg::Summary(summary);
            let _ = tx.send(Ok(pb::PruneHistoryResponse { msg: Some(msg) })).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ManifestStream = Pin<Box<dyn Stream<Item = Result<pb::ManifestResponse, Status>> + Send>>;

    async fn manifest(
        &self,
        request: Request<pb::ManifestRequest>,
    ) -> Result<Response<Self::ManifestStream>, Status> {
        caller(&request, Need::Admin)?;
        let (tx, rx) = mpsc::channel(MANIFEST_BUFFER);
        let store = self.store.clone();
        // Pages are read and sent as the caller takes them; a caller that
        // leaves ends the walk.
        tokio::spawn(async move {
            let mut after: Option<(String, String)> = None;
            loop {
                let page = match store
                    .manifest_page(after.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE)
                    .await
                {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let done = page.len() < PAGE_SIZE;
                after = page.last().map(|(ns, e)| (ns.clone(), e.path.to_string()));
                for (namespace, entry) in page {
                    if entry.content.is_none() {
                        continue;
                    }
                    let item = pb::ManifestResponse { namespace, entry: Some(entry.into()) };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How two servers' trees compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub a: pb::DigestResponse,
    pub b: pb::DigestResponse,
    /// (path, state): "only-in-A", "only-in-B", "differs" (by content hash
    /// or executable bit), like `sync-client status`; with content compared
    /// also "damaged-in-A", "missing-in-B" and the like.
    pub differences: Vec<(String, &'static str)>,
    /// Whether the content was read back and compared (`--content`).
    pub content: bool,
    /// Whether the two keep different history (versions, pins, labels).
    /// Not part of [`Comparison::identical`]: servers upgraded from before
    /// history each filled it from their own change log, so their pasts
    /// may differ while their trees agree.
    pub history_differs: bool,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.a.root_hash == self.b.root_hash && self.differences.is_empty()
    }
}

/// Like [`compare`], and reads every stored content back on both servers
/// (`Admin/ContentDigest`): a file whose content is damaged or missing on
/// a side is a difference even where the manifests agree.
pub async fn compare_content(a: &str, b: &str, security: &Security) -> anyhow::Result<Comparison> {
    // The metadata first: quick, and a server that does not answer is
    // named within the call timeout.
    let mut comparison = compare(a, b, security).await?;
    let (sa, sb) = (Compared::new(a, security)?, Compared::new(b, security)?);
    let (mut ca, mut cb) = (sa.client.clone(), sb.client.clone());
    let (da, db) = tokio::try_join!(
        sa.long_call(ca.content_digest(pb::ContentDigestRequest {})),
        sb.long_call(cb.content_digest(pb::ContentDigestRequest {}))
    )?;
    let (da, db) = (da.into_inner(), db.into_inner());
    comparison.content = true;
    for (side, d) in [("A", &da), ("B", &db)] {
        for p in &d.problems {
            let state = match (side, p.state.as_str()) {
                ("A", "damaged") => "damaged-in-A",
                ("A", _) => "missing-in-A",
                (_, "damaged") => "damaged-in-B",
                _ => "missing-in-B",
            };
            comparison.differences.push((shown(&p.namespace, &p.path), state));
        }
        let unlisted = d.problem_count.saturating_sub(d.problems.len() as u64);
        if unlisted > 0 {
            let what = if side == "A" { "more-damaged-in-A" } else { "more-damaged-in-B" };
            comparison.differences.push((format!("({unlisted} more files)"), what));
        }
    }
    comparison.differences.sort();
    comparison.differences.dedup();
    Ok(comparison)
}

/// A path as `compare` shows it: `NAMESPACE:PATH` outside the default
/// namespace.
fn shown(namespace: &str, path: &str) -> String {
    match namespace {
        DEFAULT_NAMESPACE => path.to_owned(),
        ns => format!("{ns}:{path}"),
    }
}

/// Compares the trees of the servers at `a` and `b` (URLs), every
/// namespace; on servers with tokens, `security` must carry an admin token.
/// A path outside the default namespace is shown as `NAMESPACE:PATH`.
/// Each call waits for its answer at most `security.call_timeout`; a
/// server that does not answer (or refuses) is named in the error.
pub async fn compare(a: &str, b: &str, security: &Security) -> anyhow::Result<Comparison> {
    let (a, b) = (Compared::new(a, security)?, Compared::new(b, security)?);
    let da = a.call(a.client.clone().digest(pb::DigestRequest {})).await?.into_inner();
    let db = b.call(b.client.clone().digest(pb::DigestRequest {})).await?.into_inner();
    let mut differences = Vec::new();
    if da.root_hash != db.root_hash {
        let (ma, mb) = (manifest(&a).await?, manifest(&b).await?);
        for (path, ea) in &ma {
            match mb.get(path) {
                None => differences.push((path.clone(), "only-in-A")),
                Some(eb)
                    if (eb.hash.as_slice(), eb.size, eb.executable, eb.symlink, eb.folder)
                        != (ea.hash.as_slice(), ea.size, ea.executable, ea.symlink, ea.folder) =>
                {
                    differences.push((path.clone(), "differs"));
                }
                Some(_) => {}
            }
        }
        differences.extend(mb.keys().filter(|p| !ma.contains_key(*p)).map(|p| (p.clone(), "only-in-B")));
        differences.sort();
    }
    // A server older than history sends no history digest: nothing to compare.
    let history_differs =
        !da.history_hash.is_empty() && !db.history_hash.is_empty() && da.history_hash != db.history_hash;
    Ok(Comparison { a: da, b: db, differences, content: false, history_differs })
}

type Client = AdminClient<syncstore::connect::AuthChannel>;

/// One of the servers `compare` reads.
struct Compared<'a> {
    url: &'a str,
    client: Client,
    timeout: std::time::Duration,
}

impl<'a> Compared<'a> {
    fn new(url: &'a str, security: &Security) -> anyhow::Result<Self> {
        // HTTP/2 pings find a server that stops answering during a long call.
        let channel = security
            .endpoint(url)?
            .http2_keep_alive_interval(connect::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(connect::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = AdminClient::new(tonic::service::interceptor::InterceptedService::new(
            channel,
            security.credentials()?,
        ));
        Ok(Self { url, client, timeout: security.call_timeout })
    }

    /// Awaits a call to this server, for at most the call timeout.
    async fn call<T>(&self, call: impl Future<Output = Result<T, Status>>) -> anyhow::Result<T> {
        let answered = connect::answer(self.url, self.timeout, call).await?;
        answered.with_context(|| format!("the server {} refused the call", self.url))
    }

    /// Awaits a call that takes as long as the work it asks for (reading
    /// back everything a server stores): without the call timeout, but the
    /// connection's keep-alive ends it if the server stops answering.
    async fn long_call<T>(&self, call: impl Future<Output = Result<T, Status>>) -> anyhow::Result<T> {
        call.await.with_context(|| format!("the server {} did not complete the call", self.url))
    }
}

/// Every live file of the server, keyed by its shown name.
async fn manifest(server: &Compared<'_>) -> anyhow::Result<BTreeMap<String, pb::FileEntry>> {
    let mut stream = server.call(server.client.clone().manifest(pb::ManifestRequest {})).await?.into_inner();
    let mut out = BTreeMap::new();
    while let Some(item) = server.call(stream.message()).await? {
        let Some(e) = item.entry else { continue };
        out.insert(shown(&item.namespace, &e.path), e);
    }
    Ok(out)
}
