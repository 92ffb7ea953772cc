//! The wire side of the server's `History` service: every `pb` message the
//! history commands build or read, and their domain values ([`Version`],
//! [`Label`], [`Point`], ...). A client type of its own beside
//! [`GrpcRemote`](super::GrpcRemote), not part of the [`Remote`](super::Remote)
//! trait: the sync engine never reads history, and only the commands do.
//! It shares the active server's connection and call timeout
//! ([`GrpcRemote::history`](super::GrpcRemote::history)); refusals decode
//! as every other call's do.

use std::time::Duration;

use futures::{StreamExt, stream::BoxStream};
use syncstore::{
    Entry,
    connect::{self, AuthChannel},
    limits::{MAX_CHUNK, MAX_MESSAGE},
    pb::{self, history_client::HistoryClient},
};

use crate::error::{Error, Result};

/// A point in a namespace's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// A time, milliseconds since the Unix epoch: the state after every
    /// change committed at or before it.
    AtMs(i64),
    /// A version number (a change's sequence number).
    Version(u64),
    /// A label's state.
    Label(String),
}

impl From<&Point> for pb::Point {
    fn from(p: &Point) -> Self {
        use pb::point::At;
        let at = match p {
            Point::AtMs(ms) => At::AtMs(*ms),
            Point::Version(v) => At::Version(*v),
            Point::Label(name) => At::Label(name.clone()),
        };
        pb::Point { at: Some(at) }
    }
}

/// What a version was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionKind {
    /// New content written at the path.
    Write,
    /// The file was deleted.
    Delete,
    /// The file arrived here from another path.
    Move,
    /// The file left for another path.
    MovedAway,
    /// A restore brought back an earlier version's content.
    Restore,
    /// A kind this release does not know (of a newer server).
    Other(i32),
}

impl VersionKind {
    fn of(kind: i32) -> Self {
        use pb::VersionKind as K;
        match K::try_from(kind) {
            Ok(K::Write) => Self::Write,
            Ok(K::Delete) => Self::Delete,
            Ok(K::Move) => Self::Move,
            Ok(K::MovedAway) => Self::MovedAway,
            Ok(K::Restore) => Self::Restore,
            _ => Self::Other(kind),
        }
    }
}

/// One kept version of a file.
#[derive(Debug, Clone)]
pub struct Version {
    /// The entry this version made (a tombstone for a deletion);
    /// `entry.version` is the version number.
    pub entry: Entry,
    /// When the server committed it, milliseconds since the Unix epoch.
    pub committed_ms: i64,
    /// Who made it: a token's name.
    pub principal: String,
    /// What it was.
    pub kind: VersionKind,
    /// For a move: the path the file came from.
    pub moved_from: Option<String>,
    /// For a move away: the path the file went to.
    pub moved_to: Option<String>,
    /// For a restore: the version whose content came back.
    pub restored_from: Option<u64>,
    /// Whether retention keeps it whatever its age.
    pub pinned: bool,
}

/// A named state of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub name: String,
    /// The state after this version number.
    pub version: u64,
    /// When that version was committed, milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub note: String,
    /// Set by the server (before a rewind, or by the mass-change guard).
    pub automatic: bool,
    /// Who set it.
    pub principal: String,
}

/// A deleted file: its deletion and the version an undelete brings back.
#[derive(Debug, Clone)]
pub struct Trashed {
    pub deleted: Version,
    pub last: Version,
}

/// What a bulk undelete did (or would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undeleted {
    /// Files brought back (or that would be).
    pub restored: u64,
    /// Files that matched but could not come back.
    pub skipped: u64,
    /// The batch's first and last version numbers (0 when nothing changed).
    pub first_version: u64,
    pub last_version: u64,
}

/// What a rewind does to one path.
#[derive(Debug, Clone)]
pub struct RewindAction {
    pub path: String,
    /// Its state now (`None`: no entry).
    pub now: Option<Version>,
    /// Its state at the point (`None` or a deletion: the rewind deletes it).
    pub then: Option<Version>,
}

/// What a rewind did (or would do) in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewindSummary {
    pub changed: u64,
    pub skipped: u64,
    /// The label of the state just before ("" for a dry run).
    pub label: String,
    pub first_version: u64,
    pub last_version: u64,
}

/// One path whose state differs between two points.
#[derive(Debug, Clone)]
pub struct Difference {
    pub path: String,
    /// Its state at the earlier point (`None`: it did not exist).
    pub before: Option<Version>,
    /// Its state at the later point (`None`: it did not exist).
    pub after: Option<Version>,
}

/// A version's content, piece by piece (each at most
/// [`syncstore::limits::MAX_CHUNK`] bytes).
pub type ContentStream = BoxStream<'static, Result<Vec<u8>>>;

/// A client of one server's `History` service. Every call waits for its
/// answer (a reply, or the next message of a stream) at most the call
/// timeout, then fails naming the server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HistoryRemote {
    server: String,
    client: HistoryClient<AuthChannel>,
    call_timeout: Duration,
}

impl HistoryRemote {
    pub(super) fn new(server: String, channel: AuthChannel, call_timeout: Duration) -> Self {
        let client = HistoryClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Self { server, client, call_timeout }
    }

    /// Awaits `call` for at most the call timeout.
    async fn answer<T>(&self, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T> {
        Ok(connect::answer(&self.server, self.call_timeout, call).await??)
    }

    /// Every message of a server stream, each awaited at most the call
    /// timeout.
    async fn collect<M, T>(
        &self,
        mut stream: tonic::Streaming<M>,
        mut each: impl FnMut(M) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        while let Some(msg) = self.answer(stream.message()).await? {
            out.push(each(msg)?);
        }
        Ok(out)
    }

    /// The kept versions of `path`, newest first, following moves (at most
    /// `limit`; 0 for all).
    pub async fn versions(&self, path: &str, limit: u32) -> Result<Vec<Version>> {
        let req = pb::ListVersionsRequest { path: path.to_owned(), limit };
        let stream = self.answer(self.client.clone().list_versions(req)).await?.into_inner();
        self.collect(stream, |m| version_of(m.version)).await
    }

    /// The version of `path` at `point`, and its content as a stream.
    pub async fn read(&self, path: &str, point: &Point) -> Result<(Version, ContentStream)> {
        let req = pb::ReadVersionRequest { path: path.to_owned(), point: Some(point.into()) };
        let mut stream = self.answer(self.client.clone().read_version(req)).await?.into_inner();
        use pb::read_version_response::Msg;
        let version = match self.answer(stream.message()).await? {
            Some(pb::ReadVersionResponse { msg: Some(Msg::Version(v)) }) => version_of(Some(v))?,
            _ => return Err(Error::Protocol(format!("reading {path} did not start with its version"))),
        };
        let this = self.clone();
        let pieces = futures::stream::unfold(Some(stream), move |stream| {
            let this = this.clone();
            async move {
                let mut stream = stream?;
                let piece = match this.answer(stream.message()).await {
                    Ok(None) => return None,
                    Ok(Some(pb::ReadVersionResponse { msg: Some(Msg::Chunk(c)) }))
                        if c.len() <= MAX_CHUNK =>
                    {
                        Ok(c)
                    }
                    Ok(Some(pb::ReadVersionResponse { msg: Some(Msg::Chunk(c)) })) => Err(Error::Protocol(
                        format!("a piece of {} bytes (the limit is {MAX_CHUNK})", c.len()),
                    )),
                    Ok(Some(_)) => Err(Error::Protocol("unexpected message in a version's content".into())),
                    Err(e) => Err(e),
                };
                // After an error the stream ends.
                let next = piece.is_ok().then_some(stream);
                Some((piece, next))
            }
        });
        Ok((version, pieces.boxed()))
    }

    /// Makes `path`'s version at `point` current again, at `to_path` ("":
    /// at `path`), as a new change by `client_id`. `base_version` 0
    /// restores over whatever the target holds.
    pub async fn restore(
        &self,
        path: &str,
        point: &Point,
        to_path: &str,
        client_id: &str,
        base_version: u64,
    ) -> Result<Version> {
        let req = pb::RestoreRequest {
            path: path.to_owned(),
            point: Some(point.into()),
            to_path: to_path.to_owned(),
            client_id: client_id.to_owned(),
            base_version,
            lock_token: 0,
        };
        version_of(self.answer(self.client.clone().restore(req)).await?.into_inner().version)
    }

    /// The deleted files under `under` deleted at or after `since_ms`
    /// whose path matches `glob` ("": any), newest deletion first.
    pub async fn trash(&self, under: &str, since_ms: i64, glob: &str) -> Result<Vec<Trashed>> {
        let req = pb::ListTrashRequest { under: under.to_owned(), since_ms, glob: glob.to_owned(), limit: 0 };
        let stream = self.answer(self.client.clone().list_trash(req)).await?.into_inner();
        self.collect(stream, |m| Ok(Trashed { deleted: version_of(m.deleted)?, last: version_of(m.last)? }))
            .await
    }

    /// Brings back every deleted file [`HistoryRemote::trash`] would list,
    /// in one transaction (with `dry_run`, only counts them).
    pub async fn undelete(
        &self,
        under: &str,
        since_ms: i64,
        glob: &str,
        client_id: &str,
        dry_run: bool,
    ) -> Result<Undeleted> {
        let req = pb::UndeleteRequest {
            under: under.to_owned(),
            since_ms,
            glob: glob.to_owned(),
            client_id: client_id.to_owned(),
            dry_run,
        };
        let r = self.answer(self.client.clone().undelete(req)).await?.into_inner();
        Ok(Undeleted {
            restored: r.restored,
            skipped: r.skipped,
            first_version: r.first_version,
            last_version: r.last_version,
        })
    }

    /// Brings `under` back to its state at `to` (with `dry_run`, only says
    /// what that takes): each path's action, then the summary.
    pub async fn rewind(
        &self,
        under: &str,
        to: &Point,
        client_id: &str,
        dry_run: bool,
    ) -> Result<(Vec<RewindAction>, RewindSummary)> {
        use pb::rewind_response::Msg;
        let req = pb::RewindRequest {
            under: under.to_owned(),
            to: Some(to.into()),
            client_id: client_id.to_owned(),
            dry_run,
        };
        let mut stream = self.answer(self.client.clone().rewind(req)).await?.into_inner();
        let mut actions = Vec::new();
        while let Some(msg) = self.answer(stream.message()).await? {
            match msg.msg {
                Some(Msg::Action(a)) => actions.push(RewindAction {
                    path: a.path,
                    now: a.now.map(|v| version_of(Some(v))).transpose()?,
                    then: a.then.map(|v| version_of(Some(v))).transpose()?,
                }),
                Some(Msg::Summary(s)) => {
                    let summary = RewindSummary {
                        changed: s.changed,
                        skipped: s.skipped,
                        label: s.label,
                        first_version: s.first_version,
                        last_version: s.last_version,
                    };
                    return Ok((actions, summary));
                }
                None => return Err(Error::Protocol("an empty message in a rewind".into())),
            }
        }
        Err(Error::Protocol("a rewind ended without its summary".into()))
    }

    /// The files under `under` as they were at `at`, in path order.
    pub async fn browse(&self, under: &str, at: &Point) -> Result<Vec<Version>> {
        let req = pb::BrowseRequest { under: under.to_owned(), at: Some(at.into()) };
        let stream = self.answer(self.client.clone().browse(req)).await?.into_inner();
        self.collect(stream, |m| version_of(m.version)).await
    }

    /// What changed under `under` between `from` and `to` (`None`: now),
    /// in path order.
    pub async fn diff(&self, under: &str, from: &Point, to: Option<&Point>) -> Result<Vec<Difference>> {
        let req =
            pb::DiffRequest { under: under.to_owned(), from: Some(from.into()), to: to.map(Into::into) };
        let stream = self.answer(self.client.clone().diff(req)).await?.into_inner();
        self.collect(stream, |m| {
            Ok(Difference {
                path: m.path,
                before: m.before.map(|v| version_of(Some(v))).transpose()?,
                after: m.after.map(|v| version_of(Some(v))).transpose()?,
            })
        })
        .await
    }

    /// Names the state at `at` (`None`: now).
    pub async fn set_label(&self, name: &str, at: Option<&Point>, note: &str) -> Result<Label> {
        let req =
            pb::SetLabelRequest { name: name.to_owned(), at: at.map(Into::into), note: note.to_owned() };
        label_of(self.answer(self.client.clone().set_label(req)).await?.into_inner().label)
    }

    /// The namespace's labels, oldest first.
    pub async fn labels(&self) -> Result<Vec<Label>> {
        let stream =
            self.answer(self.client.clone().list_labels(pb::ListLabelsRequest {})).await?.into_inner();
        self.collect(stream, |m| label_of(m.label)).await
    }

    /// Pins (or unpins) version `version` of `path`.
    pub async fn pin(&self, path: &str, version: u64, unpin: bool) -> Result<Version> {
        let req = pb::PinRequest { path: path.to_owned(), version, unpin };
        version_of(self.answer(self.client.clone().pin(req)).await?.into_inner().version)
    }
}

/// A version from the server in the client's terms; refused if it has no
/// entry or its entry is not valid (a path that escapes, a bad hash).
fn version_of(v: Option<pb::FileVersion>) -> Result<Version> {
    let v = v.ok_or_else(|| Error::Protocol("an answer without its version".into()))?;
    let entry = v.entry.ok_or_else(|| Error::Protocol("a version without its entry".into()))?;
    let some = |s: String| (!s.is_empty()).then_some(s);
    Ok(Version {
        entry: Entry::try_from(entry)?,
        committed_ms: v.committed_ms,
        principal: v.principal,
        kind: VersionKind::of(v.kind),
        moved_from: some(v.moved_from),
        moved_to: some(v.moved_to),
        restored_from: (v.restored_from != 0).then_some(v.restored_from),
        pinned: v.pinned,
    })
}

fn label_of(l: Option<pb::Label>) -> Result<Label> {
    let l = l.ok_or_else(|| Error::Protocol("an answer without its label".into()))?;
    Ok(Label {
        name: l.name,
        version: l.version,
        at_ms: l.at_ms,
        note: l.note,
        automatic: l.automatic,
        principal: l.principal,
    })
}
