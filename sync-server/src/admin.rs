//! `syncstore.v1.Admin`: a server's status (role, position, replication)
//! and a digest of its manifest, and `compare`, which diffs two servers.

use std::{collections::BTreeMap, pin::Pin};

use anyhow::Context;
use syncstore::{
    connect::{self, Security},
    pb::{self, admin_client::AdminClient, admin_server::Admin},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Need, caller},
    error::{Error, Result},
    replication::{Mode, WriteGate, primary::ReplicationHandle},
    storage::{DEFAULT_NAMESPACE, PAGE_SIZE, Store},
};

/// Manifest entries buffered before the producer waits for the caller.
const MANIFEST_BUFFER: usize = 64;

/// The `Admin` service of one server.
#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    role: &'static str,
    gate: WriteGate,
    replication: Option<ReplicationHandle>,
}

impl AdminService {
    pub fn new(
        store: Store,
        role: &'static str,
        gate: WriteGate,
        replication: Option<ReplicationHandle>,
    ) -> Self {
        Self { store, role, gate, replication }
    }
}

/// BLAKE3 over every live file's (namespace, path, hash, size, executable, symlink and folder flags)
/// in (namespace, path) order. Blocks.
pub fn digest(store: &Store) -> Result<pb::DigestResponse> {
    let head = store.head();
    let mut hasher = blake3::Hasher::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut after: Option<(String, String)> = None;
    loop {
        let page = store.manifest_page(after.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE)?;
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
        }
        if done {
            break;
        }
    }
    Ok(pb::DigestResponse {
        file_count: files,
        total_bytes: bytes,
        root_hash: hasher.finalize().as_bytes().to_vec(),
        head_seq: head,
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        caller(&request, Need::Admin)?;
        let s = self.store.clone();
        let (epoch, primary_url) = tokio::task::spawn_blocking(move || -> Result<_> {
            Ok((s.meta_u64("epoch")?, s.meta_text("primary_url")?.unwrap_or_default()))
        })
        .await
        .map_err(Error::from)??;
        let head = self.store.head();
        let mut out = pb::StatusResponse {
            role: self.role.to_owned(),
            epoch,
            history_id: self.store.history_id(),
            head_seq: head,
            replication_mode: "none".into(),
            writes_refused: self.gate.refusal().unwrap_or_default(),
            ..Default::default()
        };
        if self.role == "replica" {
            out.primary_url = primary_url;
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
        }
        Ok(Response::new(out))
    }

    async fn digest(
        &self,
        request: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        caller(&request, Need::Admin)?;
        let s = self.store.clone();
        let d = tokio::task::spawn_blocking(move || digest(&s)).await.map_err(Error::from)??;
        Ok(Response::new(d))
    }

    type ManifestStream = Pin<Box<dyn Stream<Item = Result<pb::ManifestEntry, Status>> + Send>>;

    async fn manifest(
        &self,
        request: Request<pb::ManifestRequest>,
    ) -> Result<Response<Self::ManifestStream>, Status> {
        caller(&request, Need::Admin)?;
        let (tx, rx) = mpsc::channel(MANIFEST_BUFFER);
        let store = self.store.clone();
        // Pages are read on a blocking thread and sent as the caller takes
        // them; a caller that leaves ends the walk.
        tokio::task::spawn_blocking(move || {
            let mut after: Option<(String, String)> = None;
            loop {
                let page = match store
                    .manifest_page(after.as_ref().map(|(n, p)| (n.as_str(), p.as_str())), PAGE_SIZE)
                {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.into()));
                        return;
                    }
                };
                let done = page.len() < PAGE_SIZE;
                after = page.last().map(|(ns, e)| (ns.clone(), e.path.to_string()));
                for (namespace, entry) in page {
                    if entry.content.is_none() {
                        continue;
                    }
                    let item = pb::ManifestEntry { namespace, entry: Some(entry.into()) };
                    if tx.blocking_send(Ok(item)).is_err() {
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
    /// or executable bit), like `sync-client status`.
    pub differences: Vec<(String, &'static str)>,
}

impl Comparison {
    pub fn identical(&self) -> bool {
        self.a.root_hash == self.b.root_hash
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
    Ok(Comparison { a: da, b: db, differences })
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
        Ok(Self { url, client: AdminClient::new(security.channel(url)?), timeout: security.call_timeout })
    }

    /// Awaits a call to this server, for at most the call timeout.
    async fn call<T>(&self, call: impl Future<Output = Result<T, Status>>) -> anyhow::Result<T> {
        connect::answer(self.url, self.timeout, call)
            .await?
            .with_context(|| format!("the server {} refused the call", self.url))
    }
}

/// Every live file of the server, keyed by its shown name.
async fn manifest(server: &Compared<'_>) -> anyhow::Result<BTreeMap<String, pb::FileEntry>> {
    let mut stream = server.call(server.client.clone().manifest(pb::ManifestRequest {})).await?.into_inner();
    let mut out = BTreeMap::new();
    while let Some(item) = server.call(stream.message()).await? {
        let Some(e) = item.entry else { continue };
        let shown = match item.namespace.as_str() {
            DEFAULT_NAMESPACE => e.path.clone(),
            ns => format!("{ns}:{}", e.path),
        };
        out.insert(shown, e);
    }
    Ok(out)
}
