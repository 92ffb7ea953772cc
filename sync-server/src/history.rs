//! `syncstore.v1.History`: the gRPC face of the versions a server keeps
//! (listing, reading, restoring, the trash, rewinding, browsing and
//! comparing points in time, labels and pins), over the store's history
//! calls (`storage/history.rs`).
//!
//! Every write here (Restore, Undelete, Rewind, SetLabel, Pin) goes through
//! the write gate and the store's writer like an upload: rules, locks,
//! clash and base version checked, broadcast to subscribers and replicated
//! as ordinary file changes. Undelete and Rewind are one transaction each,
//! however many files they bring back.
//!
//! Reads need a read-only or read-write token of the namespace (the dry
//! run of an undelete or a rewind is a read); writes need a read-write
//! token.

use std::{collections::VecDeque, pin::Pin};

use syncstore::{
    RelPath, limits,
    pb::{self, history_server::History, read_version_response, rewind_response},
};
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::{
    auth::{Need, Principal, caller},
    context::ServiceContext,
    error::{Error, Result},
    storage::{Actor, Glob, HistoryBatch, HistoryOutcome, HistoryWrite, PAGE_SIZE, Point, Store, Version},
    transfer, wire,
};

/// Messages buffered per server stream before the producer waits.
const STREAM_BUFFER: usize = 16;

/// Longest label name, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// The `History` service of one server.
#[derive(Debug, Clone)]
pub struct HistoryService {
    ctx: ServiceContext,
}

impl HistoryService {
    /// The service over `ctx`.
    pub fn new(ctx: ServiceContext) -> Self {
        Self { ctx }
    }

    fn store(&self) -> &Store {
        &self.ctx.store
    }

    /// The caller, if it may do what `need` asks; a refusal is counted.
    fn caller<T>(&self, request: &Request<T>, need: Need) -> Result<Principal, Status> {
        self.counted(caller(request, need))
    }

    /// Counts a failed call by its code.
    fn counted<T>(&self, r: Result<T, Status>) -> Result<T, Status> {
        if let Err(s) = &r {
            self.ctx.metrics.error(s);
        }
        r
    }

    /// `r`, its error made a counted status.
    fn answer<T>(&self, r: Result<T>) -> Result<T, Status> {
        self.counted(r.map_err(Status::from))
    }

    /// See [`ServiceContext::admit_write`].
    fn admit_write(&self) -> Result<()> {
        self.ctx.admit_write()
    }

    /// Commits `batch` through the store's writer (one transaction),
    /// after the write gate; in sync mode, answers once the replica holds
    /// it, as an upload does.
    async fn commit(&self, ns: &str, batch: HistoryBatch) -> Result<HistoryOutcome> {
        self.admit_write()?;
        let outcome = self.store().commit_history(ns, batch).await?;
        if let Some(last) = outcome.changes.last() {
            self.replicated(last.seq).await?;
        }
        Ok(outcome)
    }

    /// See [`ServiceContext::replicated`].
    async fn replicated(&self, seq: u64) -> Result<()> {
        self.ctx.replicated(seq).await
    }
}

type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream fed by a producer task through a bounded channel, so that a
/// caller who goes away shows up as a failed send.
fn channel<T>() -> (mpsc::Sender<Result<T, Status>>, ServerStream<T>)
where
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    (tx, Box::pin(ReceiverStream::new(rx)))
}

#[tonic::async_trait]
impl History for HistoryService {
    type ListVersionsStream = ServerStream<pb::ListVersionsResponse>;

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<Self::ListVersionsStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let req = request.into_inner();
        let path = self.answer(RelPath::new(req.path).map_err(Error::from))?;
        let versions = self.answer(self.store().versions(&ns, &path, all_if_zero(req.limit)).await)?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for v in versions {
                let msg = pb::ListVersionsResponse { version: Some(wire::file_version(v)) };
                if tx.send(Ok(msg)).await.is_err() {
                    return; // The caller went away.
                }
            }
        });
        Ok(Response::new(stream))
    }

    type ReadVersionStream = ServerStream<pb::ReadVersionResponse>;

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path))]
    async fn read_version(
        &self,
        request: Request<pb::ReadVersionRequest>,
    ) -> Result<Response<Self::ReadVersionStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let req = request.into_inner();
        let found = async {
            let path = RelPath::new(req.path)?;
            let point = required_point(req.point, "point")?;
            let version = self.store().version_at(&ns, &path, &point).await?;
            let content = with_content(&version)?;
            let reader =
                self.store().content_reader(&content.hash, content.size).await?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "the content of {path} at version {} is no longer kept",
                        version.entry.version
                    ))
                })?;
            Ok((version, reader))
        }
        .await;
        let (version, reader) = self.answer(found)?;
        self.ctx.metrics.downloads.inc();
        self.ctx.metrics.download_bytes.inc_by(version.entry.content.map_or(0, |c| c.size));
        let (tx, stream) = channel();
        let metrics = self.ctx.metrics.clone();
        tokio::spawn(async move {
            let first = pb::ReadVersionResponse {
                msg: Some(read_version_response::Msg::Version(wire::file_version(version))),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            // Each piece checked as it is read: damaged content ends the
            // stream with DATA_LOSS before its last piece.
            let counter = metrics.content_sent_bytes.clone();
            let chunk = move |c: Vec<u8>| {
                counter.inc_by(c.len() as u64);
                Ok(pb::ReadVersionResponse { msg: Some(read_version_response::Msg::Chunk(c)) })
            };
            if let Err(e) = transfer::send_content(reader, tx.clone(), chunk).await {
                let status = Status::from(e);
                metrics.error(&status);
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path, client = %request.get_ref().client_id))]
    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let who = self.caller(&request, Need::Write)?;
        let req = request.into_inner();
        let ns = who.namespace.clone();
        let restored = async {
            field(limits::check_client_id(&req.client_id))?;
            let path = RelPath::new(req.path)?;
            let target = match req.to_path.is_empty() {
                true => path.clone(),
                false => RelPath::new(req.to_path)?,
            };
            let point = required_point(req.point, "point")?;
            self.admit_write()?;
            let version = self.store().version_at(&ns, &path, &point).await?;
            with_content(&version)?;
            let from = version.entry.version;
            let batch = HistoryBatch {
                who: Actor::new(who.name, req.client_id),
                writes: vec![HistoryWrite {
                    path: target,
                    to: Some(version),
                    base_version: (req.base_version != 0).then_some(req.base_version),
                    lock_token: req.lock_token,
                }],
                label: None,
                skip_refused: false,
            };
            let outcome = self.commit(&ns, batch).await?;
            let change = outcome
                .changes
                .into_iter()
                .next()
                .ok_or_else(|| Error::Internal("a restore committed no change".into()))?;
            Ok((from, change))
        }
        .await;
        let (from, change) = match restored {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(error = %e, "restore refused");
                return self.answer(Err(e));
            }
        };
        let version = self.answer(
            wire::change_version(&change)
                .ok_or_else(|| Error::Internal("a restore committed a change that is no file".into())),
        )?;
        tracing::info!(path = %version.entry.as_ref().map_or("", |e| e.path.as_str()), seq = change.seq, from, "restored");
        Ok(Response::new(pb::RestoreResponse { version: Some(version) }))
    }

    type ListTrashStream = ServerStream<pb::ListTrashResponse>;

    #[tracing::instrument(skip_all, fields(under = %request.get_ref().under))]
    async fn list_trash(
        &self,
        request: Request<pb::ListTrashRequest>,
    ) -> Result<Response<Self::ListTrashStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let req = request.into_inner();
        let found = async {
            let under = folder(&req.under)?;
            let glob = glob(&req.glob)?;
            self.store().trash(&ns, &under, req.since_ms, glob.as_ref(), all_if_zero(req.limit)).await
        }
        .await;
        let trash = self.answer(found)?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for (deleted, last) in trash {
                let msg = pb::ListTrashResponse {
                    deleted: Some(wire::file_version(deleted)),
                    last: Some(wire::file_version(last)),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(under = %request.get_ref().under, dry_run = request.get_ref().dry_run))]
    async fn undelete(
        &self,
        request: Request<pb::UndeleteRequest>,
    ) -> Result<Response<pb::UndeleteResponse>, Status> {
        // A dry run changes nothing: reading history is enough for it.
        let need = if request.get_ref().dry_run { Need::Read } else { Need::Write };
        let who = self.caller(&request, need)?;
        let req = request.into_inner();
        let ns = who.namespace.clone();
        let done = async {
            if !req.dry_run || !req.client_id.is_empty() {
                field(limits::check_client_id(&req.client_id))?;
            }
            let under = folder(&req.under)?;
            let glob = glob(&req.glob)?;
            if !req.dry_run {
                self.admit_write()?;
            }
            let trash = self.store().trash(&ns, &under, req.since_ms, glob.as_ref(), usize::MAX).await?;
            if req.dry_run || trash.is_empty() {
                return Ok(pb::UndeleteResponse { restored: trash.len() as u64, ..Default::default() });
            }
            // Each back over its own tombstone: a file written there since
            // is never replaced.
            let writes = trash
                .into_iter()
                .map(|(deleted, last)| HistoryWrite {
                    path: deleted.entry.path.clone(),
                    to: Some(last),
                    base_version: Some(deleted.entry.version),
                    lock_token: 0,
                })
                .collect();
            let batch = HistoryBatch {
                who: Actor::new(who.name, req.client_id),
                writes,
                label: None,
                skip_refused: true,
            };
            let outcome = self.commit(&ns, batch).await?;
            Ok(pb::UndeleteResponse {
                restored: outcome.changes.len() as u64,
                skipped: outcome.skipped as u64,
                first_version: outcome.changes.first().map_or(0, |c| c.seq),
                last_version: outcome.changes.last().map_or(0, |c| c.seq),
            })
        }
        .await;
        let answer = self.answer(done)?;
        tracing::info!(
            restored = answer.restored,
            skipped = answer.skipped,
            first = answer.first_version,
            last = answer.last_version,
            dry_run = req.dry_run,
            "undeleted"
        );
        Ok(Response::new(answer))
    }

    type RewindStream = ServerStream<pb::RewindResponse>;

    #[tracing::instrument(skip_all, fields(under = %request.get_ref().under, dry_run = request.get_ref().dry_run))]
    async fn rewind(
        &self,
        request: Request<pb::RewindRequest>,
    ) -> Result<Response<Self::RewindStream>, Status> {
        // A dry run changes nothing: reading history is enough for it.
        let need = if request.get_ref().dry_run { Need::Read } else { Need::Write };
        let who = self.caller(&request, need)?;
        let req = request.into_inner();
        let ns = who.namespace.clone();
        let done = async {
            if !req.dry_run || !req.client_id.is_empty() {
                field(limits::check_client_id(&req.client_id))?;
            }
            let under = folder(&req.under)?;
            let to = required_point(req.to, "to")?;
            if !req.dry_run {
                self.admit_write()?;
            }
            let then_seq = self.store().point_seq(&ns, &to).await?;
            let head = self.store().head();
            let actions = rewind_actions(self.store(), &ns, &under, then_seq, head).await?;
            if req.dry_run || actions.is_empty() {
                let summary = pb::RewindSummary { changed: actions.len() as u64, ..Default::default() };
                return Ok((actions, summary));
            }
            let writes = rewind_writes(&actions);
            let batch = HistoryBatch {
                who: Actor::new(who.name, req.client_id),
                writes,
                label: Some(format!("before-rewind-{head}")),
                skip_refused: true,
            };
            let outcome = self.commit(&ns, batch).await?;
            let summary = pb::RewindSummary {
                changed: outcome.changes.len() as u64,
                skipped: outcome.skipped as u64,
                label: outcome.label.map(|l| l.name).unwrap_or_default(),
                first_version: outcome.changes.first().map_or(0, |c| c.seq),
                last_version: outcome.changes.last().map_or(0, |c| c.seq),
            };
            Ok((actions, summary))
        }
        .await;
        let (actions, summary) = self.answer(done)?;
        tracing::info!(
            actions = actions.len(),
            changed = summary.changed,
            skipped = summary.skipped,
            label = %summary.label,
            dry_run = req.dry_run,
            "rewound"
        );
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for a in actions {
                let action = pb::RewindAction {
                    path: a.path.as_str().to_owned(),
                    now: a.now.map(wire::file_version),
                    then: a.then.map(wire::file_version),
                };
                let msg = pb::RewindResponse { msg: Some(rewind_response::Msg::Action(action)) };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            let _ =
                tx.send(Ok(pb::RewindResponse { msg: Some(rewind_response::Msg::Summary(summary)) })).await;
        });
        Ok(Response::new(stream))
    }

    type BrowseStream = ServerStream<pb::BrowseResponse>;

    #[tracing::instrument(skip_all, fields(under = %request.get_ref().under))]
    async fn browse(
        &self,
        request: Request<pb::BrowseRequest>,
    ) -> Result<Response<Self::BrowseStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let req = request.into_inner();
        let found = async {
            let under = folder(&req.under)?;
            let at = required_point(req.at, "at")?;
            let seq = self.store().point_seq(&ns, &at).await?;
            Ok(Walk::new(self.store().clone(), ns, under, seq))
        }
        .await;
        let mut walk = self.answer(found)?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            loop {
                let msg = match walk.next().await {
                    Ok(Some(v)) if v.entry.is_deleted() => continue, // Not there then.
                    Ok(Some(v)) => Ok(pb::BrowseResponse { version: Some(wire::file_version(v)) }),
                    Ok(None) => return,
                    Err(e) => Err(Status::from(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    type DiffStream = ServerStream<pb::DiffResponse>;

    #[tracing::instrument(skip_all, fields(under = %request.get_ref().under))]
    async fn diff(&self, request: Request<pb::DiffRequest>) -> Result<Response<Self::DiffStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let req = request.into_inner();
        let found = async {
            let under = folder(&req.under)?;
            let from = required_point(req.from, "from")?;
            let from = self.store().point_seq(&ns, &from).await?;
            let to = match req.to.and_then(|p| p.at) {
                None => self.store().head(),
                Some(at) => self.store().point_seq(&ns, &point(at)?).await?,
            };
            let walk = |seq| Walk::new(self.store().clone(), ns.clone(), under.clone(), seq);
            Ok((walk(from), walk(to)))
        }
        .await;
        let (before, after) = self.answer(found)?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            let mut pairs = Pairs::new(before, after);
            loop {
                let msg = match pairs.next().await {
                    Ok(Some((path, before, after))) => {
                        let (before, after) = (existing(before), existing(after));
                        if same_state(before.as_ref(), after.as_ref()) {
                            continue;
                        }
                        Ok(pb::DiffResponse {
                            path: path.as_str().to_owned(),
                            before: before.map(wire::file_version),
                            after: after.map(wire::file_version),
                        })
                    }
                    Ok(None) => return,
                    Err(e) => Err(Status::from(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn set_label(
        &self,
        request: Request<pb::SetLabelRequest>,
    ) -> Result<Response<pb::SetLabelResponse>, Status> {
        let who = self.caller(&request, Need::Write)?;
        let req = request.into_inner();
        let ns = who.namespace.clone();
        let set = async {
            check_label_name(&req.name)?;
            field(limits::check_note(&req.note))?;
            self.admit_write()?;
            let seq = match req.at.and_then(|p| p.at) {
                None => self.store().head(),
                Some(at) => self.store().point_seq(&ns, &point(at)?).await?,
            };
            let label = self
                .store()
                .set_label(&ns, &req.name, seq, &req.note, &Actor::new(who.name.clone(), ""))
                .await?;
            // The label's own change is at or below the head now.
            self.replicated(self.store().head()).await?;
            Ok(label)
        }
        .await;
        let label = self.answer(set)?;
        tracing::info!(name = %label.name, seq = label.seq, "label set");
        Ok(Response::new(pb::SetLabelResponse { label: Some(wire::label(label)) }))
    }

    type ListLabelsStream = ServerStream<pb::ListLabelsResponse>;

    async fn list_labels(
        &self,
        request: Request<pb::ListLabelsRequest>,
    ) -> Result<Response<Self::ListLabelsStream>, Status> {
        let ns = self.caller(&request, Need::Read)?.namespace;
        let labels = self.answer(self.store().labels(&ns).await)?;
        let (tx, stream) = channel();
        tokio::spawn(async move {
            for label in labels {
                if tx.send(Ok(pb::ListLabelsResponse { label: Some(wire::label(label)) })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(path = %request.get_ref().path, version = request.get_ref().version))]
    async fn pin(&self, request: Request<pb::PinRequest>) -> Result<Response<pb::PinResponse>, Status> {
        let ns = self.caller(&request, Need::Write)?.namespace;
        let req = request.into_inner();
        let pinned = async {
            let path = RelPath::new(req.path)?;
            self.admit_write()?;
            let version = self.store().pin(&ns, &path, req.version, !req.unpin).await?;
            self.replicated(self.store().head()).await?;
            Ok(version)
        }
        .await;
        let version = self.answer(pinned)?;
        tracing::info!(path = %version.entry.path, version = version.entry.version, pinned = version.pinned, "pin");
        Ok(Response::new(pb::PinResponse { version: Some(wire::file_version(version)) }))
    }
}

/// A request's limit: 0 for none.
fn all_if_zero(limit: u32) -> usize {
    match limit {
        0 => usize::MAX,
        n => n as usize,
    }
}

/// A field out of its bounds.
fn field(checked: Result<(), String>) -> Result<()> {
    checked.map_err(Error::InvalidField)
}

/// A folder named by a request: "" (or "/") for the whole namespace, else a
/// valid path, without its trailing slash.
fn folder(under: &str) -> Result<String> {
    let under = under.trim_end_matches('/');
    if !under.is_empty() {
        RelPath::new(under)?;
    }
    Ok(under.to_owned())
}

/// A request's glob ("" for none): `*` within a name, `**` across folders,
/// `?` one character; without `/` it matches the file name alone.
fn glob(pattern: &str) -> Result<Option<Glob>> {
    match pattern.is_empty() {
        true => Ok(None),
        false => Glob::new(pattern).map(Some),
    }
}

/// A point a request must give.
fn required_point(p: Option<pb::Point>, name: &str) -> Result<Point> {
    match p.and_then(|p| p.at) {
        Some(at) => point(at),
        None => {
            Err(Error::InvalidField(format!("{name} is missing: give a version, a time (at_ms) or a label")))
        }
    }
}

/// A point from its wire form.
fn point(at: pb::point::At) -> Result<Point> {
    Ok(match at {
        pb::point::At::AtMs(ms) => Point::AtMs(ms),
        pb::point::At::Version(0) => {
            return Err(Error::InvalidField("version 0 names no version: versions start at 1".into()));
        }
        pb::point::At::Version(v) => Point::Version(v),
        pb::point::At::Label(name) => {
            check_label_name(&name)?;
            Point::Label(name)
        }
    })
}

/// Checks a label's name: 1 to [`MAX_LABEL_BYTES`] of ASCII letters,
/// digits, `.`, `_`, `-` and `:`.
fn check_label_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_LABEL_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
    if ok {
        return Ok(());
    }
    Err(Error::InvalidField(format!(
        "bad label name {:?}: use 1 to {MAX_LABEL_BYTES} of letters, digits, '.', '_', '-' and ':'",
        name.chars().take(MAX_LABEL_BYTES + 1).collect::<String>()
    )))
}

/// The content of a version, or `not-found` for a deletion (which has none).
fn with_content(version: &Version) -> Result<syncstore::Content> {
    version.entry.content.ok_or_else(|| {
        Error::NotFound(format!(
            "version {} of {} is a deletion: it has no content",
            version.entry.version, version.entry.path
        ))
    })
}

/// A version that is not a deletion, or nothing.
fn existing(v: Option<Version>) -> Option<Version> {
    v.filter(|v| !v.entry.is_deleted())
}

/// Whether two states of a path (nothing: it did not exist) hold the same
/// file: both absent, or the same content and kind. A new modification
/// time alone is no change.
fn same_state(a: Option<&Version>, b: Option<&Version>) -> bool {
    let content = |v: Option<&Version>| {
        v.and_then(|v| v.entry.content).map(|c| (c.hash, c.size, c.executable, c.symlink, c.folder))
    };
    content(a) == content(b)
}

/// What a rewind does to one path: its state now and at the point (absent,
/// or a tombstone: it did not exist).
#[derive(Debug)]
struct RewindAction {
    path: RelPath,
    now: Option<Version>,
    then: Option<Version>,
}

/// The paths under `under` whose state at `then_seq` differs from their
/// state at `head`, in path order.
async fn rewind_actions(
    store: &Store,
    ns: &str,
    under: &str,
    then_seq: u64,
    head: u64,
) -> Result<Vec<RewindAction>> {
    let then = Walk::new(store.clone(), ns.to_owned(), under.to_owned(), then_seq);
    let now = Walk::new(store.clone(), ns.to_owned(), under.to_owned(), head);
    let mut pairs = Pairs::new(then, now);
    let mut actions = Vec::new();
    while let Some((path, then, now)) = pairs.next().await? {
        if same_state(existing(then.clone()).as_ref(), existing(now.clone()).as_ref()) {
            continue;
        }
        actions.push(RewindAction { path, now, then });
    }
    Ok(actions)
}

/// The writes of a rewind: deletions first (a file created since may stand
/// where a folder of then must come back), then the contents of then, each
/// based on the path's state now, so that a change made meanwhile is
/// never overwritten.
fn rewind_writes(actions: &[RewindAction]) -> Vec<HistoryWrite> {
    let write = |a: &RewindAction| HistoryWrite {
        path: a.path.clone(),
        to: existing(a.then.clone()),
        base_version: Some(a.now.as_ref().map_or(0, |v| v.entry.version)),
        lock_token: 0,
    };
    let deletes = actions.iter().filter(|a| existing(a.then.clone()).is_none()).map(write);
    let writes = actions.iter().filter(|a| existing(a.then.clone()).is_some()).map(write);
    deletes.chain(writes).collect()
}

/// The state of a folder at one point, path by path in path order (each
/// path's newest version at or below the point's seq, tombstones included),
/// read a page at a time.
#[derive(Debug)]
struct Walk {
    store: Store,
    ns: String,
    under: String,
    seq: u64,
    page: VecDeque<Version>,
    after: Option<String>,
    done: bool,
}

impl Walk {
    fn new(store: Store, ns: String, under: String, seq: u64) -> Self {
        Self { store, ns, under, seq, page: VecDeque::new(), after: None, done: false }
    }

    /// The next path's version, or `None` past the last.
    async fn next(&mut self) -> Result<Option<Version>> {
        if self.page.is_empty() && !self.done {
            let page = self
                .store
                .state_at(&self.ns, &self.under, self.seq, self.after.as_deref(), PAGE_SIZE)
                .await?;
            self.done = page.len() < PAGE_SIZE;
            self.after = page.last().map(|v| v.entry.path.as_str().to_owned());
            self.page = page.into();
        }
        Ok(self.page.pop_front())
    }

    /// The next path, without taking it.
    async fn peek(&mut self) -> Result<Option<&Version>> {
        if self.page.is_empty() && !self.done {
            let next = self.next().await?;
            if let Some(v) = next {
                self.page.push_front(v);
            }
        }
        Ok(self.page.front())
    }
}

/// Two walks of one folder merged in path order: each path with its
/// version in the first and in the second (either may be absent).
#[derive(Debug)]
struct Pairs {
    a: Walk,
    b: Walk,
}

impl Pairs {
    fn new(a: Walk, b: Walk) -> Self {
        Self { a, b }
    }

    async fn next(&mut self) -> Result<Option<(RelPath, Option<Version>, Option<Version>)>> {
        let a = self.a.peek().await?.map(|v| v.entry.path.clone());
        let b = self.b.peek().await?.map(|v| v.entry.path.clone());
        Ok(match (a, b) {
            (None, None) => None,
            (Some(p), None) => Some((p, self.a.next().await?, None)),
            (None, Some(p)) => Some((p, None, self.b.next().await?)),
            (Some(pa), Some(pb)) => match pa.as_str().cmp(pb.as_str()) {
                std::cmp::Ordering::Less => Some((pa, self.a.next().await?, None)),
                std::cmp::Ordering::Greater => Some((pb, None, self.b.next().await?)),
                std::cmp::Ordering::Equal => Some((pa, self.a.next().await?, self.b.next().await?)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use syncstore::{Content, ContentHash, Entry};

    use super::*;
    use crate::storage::VersionNote;

    /// Version `seq` of `path`: `data`'s content, or a deletion.
    fn version(path: &str, seq: u64, data: Option<&[u8]>) -> Version {
        let content = data.map(|d| Content {
            hash: ContentHash::of(d),
            size: d.len() as u64,
            mtime_ns: seq as i64,
            executable: false,
            symlink: false,
            folder: false,
        });
        let entry = Entry { path: RelPath::new(path).unwrap(), version: seq, content, client_id: "c".into() };
        let note = VersionNote::plain(&entry, "p", 0);
        Version { entry, note, pinned: false }
    }

    #[test]
    fn a_state_differs_by_existence_or_content_not_by_time() {
        let a1 = version("a", 1, Some(b"one"));
        let a2_same = version("a", 2, Some(b"one"));
        let a3 = version("a", 3, Some(b"two"));
        let gone = version("a", 4, None);
        assert!(same_state(Some(&a1), Some(&a2_same)), "only the modification time and version differ");
        assert!(!same_state(Some(&a1), Some(&a3)));
        assert!(!same_state(Some(&a1), None));
        assert!(same_state(existing(Some(gone.clone())).as_ref(), None), "a deletion is no file");
        assert!(same_state(None, None));
    }

    #[test]
    fn a_rewind_deletes_first_and_bases_every_write_on_the_state_now() {
        let actions = vec![
            // A file then, created over since: brought back over its version now.
            RewindAction {
                path: RelPath::new("a").unwrap(),
                now: Some(version("a", 9, Some(b"new"))),
                then: Some(version("a", 2, Some(b"old"))),
            },
            // Created since: deleted.
            RewindAction {
                path: RelPath::new("b").unwrap(),
                now: Some(version("b", 8, Some(b"b"))),
                then: None,
            },
            // Deleted since: back over its tombstone.
            RewindAction {
                path: RelPath::new("c").unwrap(),
                now: Some(version("c", 7, None)),
                then: Some(version("c", 3, Some(b"c"))),
            },
            // A deletion then: the same as not there, deleted.
            RewindAction {
                path: RelPath::new("d").unwrap(),
                now: Some(version("d", 6, Some(b"d"))),
                then: Some(version("d", 4, None)),
            },
        ];
        let writes = rewind_writes(&actions);
        let shown: Vec<_> = writes
            .iter()
            .map(|w| (w.path.as_str(), w.to.as_ref().map(|v| v.entry.version), w.base_version))
            .collect();
        assert_eq!(
            shown,
            [("b", None, Some(8)), ("d", None, Some(6)), ("a", Some(2), Some(9)), ("c", Some(3), Some(7))]
        );
    }

    #[test]
    fn label_names_are_short_and_plain() {
        for good in ["release-1.2", "a", "before-rewind-42", "x:y_z", &"a".repeat(MAX_LABEL_BYTES)] {
            assert!(check_label_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a\n", &"a".repeat(MAX_LABEL_BYTES + 1)] {
            assert!(matches!(check_label_name(bad), Err(Error::InvalidField(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_point_is_checked_before_use() {
        assert!(matches!(required_point(None, "to"), Err(Error::InvalidField(_))));
        assert!(matches!(required_point(Some(pb::Point { at: None }), "to"), Err(Error::InvalidField(_))));
        assert!(matches!(point(pb::point::At::Version(0)), Err(Error::InvalidField(_))));
        assert!(matches!(point(pb::point::At::Label("a b".into())), Err(Error::InvalidField(_))));
        assert!(matches!(point(pb::point::At::AtMs(5)), Ok(Point::AtMs(5))));
        assert!(matches!(point(pb::point::At::Version(7)), Ok(Point::Version(7))));
    }

    #[test]
    fn a_folder_is_a_valid_path_or_everything() {
        assert_eq!(folder("").unwrap(), "");
        assert_eq!(folder("docs/").unwrap(), "docs");
        assert!(matches!(folder("../etc"), Err(Error::InvalidPath(_))));
    }
}
