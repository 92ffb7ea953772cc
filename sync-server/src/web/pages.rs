//! The dashboard's pages and forms. Each handler turns a request into
//! calls of the server's own services (see the module above) and renders
//! the answer, or the refusal, as a page.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use askama::Template;
use axum::{
    Form,
    body::{Body, Bytes},
    extract::{Multipart, Query, State, multipart::Field},
    http::{HeaderValue, StatusCode, header},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use syncstore::{
    ContentHash, Reason, RelPath, limits::MAX_CHUNK, pb, pb::download_response, pb::upload_request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use super::{Viewer, Web, session};
use crate::auth::Need;
use syncstore::pb::file_sync_client::FileSyncClient;

/// The client id of the dashboard's writes and locks: what clients and the
/// activity view show as where a change came from.
const WEB_CLIENT_ID: &str = "web-dashboard";

/// Rows of a folder listing per page.
const PAGE_ROWS: usize = 200;

/// Versions shown on a file's page.
const VERSIONS_SHOWN: u32 = 50;

type WebState = State<Arc<Web>>;

// ---------------------------------------------------------------------------
// Refusals

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    nav: Option<Nav>,
    code: u16,
    reason: &'a str,
    message: &'a str,
}

/// A page saying why a request was refused, with `reason` for programs
/// (also in the `syncstore-reason` header).
pub(super) fn refused(code: StatusCode, reason: &str, message: &str) -> Response {
    let page = ErrorPage { nav: None, code: code.as_u16(), reason, message };
    let mut response = (code, render(&page)).into_response();
    if let Ok(v) = HeaderValue::from_str(reason) {
        response.headers_mut().insert(syncstore::reason::REASON_KEY, v);
    }
    response
}

/// A service's refusal as a page: the HTTP status nearest its gRPC code,
/// its reason and its message.
fn refusal(status: &tonic::Status) -> Response {
    let code = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::INSUFFICIENT_STORAGE,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::REQUEST_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let reason = Reason::of(status).map_or("internal", Reason::as_str);
    let code = match (code, reason) {
        (_, "too-large") => StatusCode::PAYLOAD_TOO_LARGE,
        (_, "busy") => StatusCode::TOO_MANY_REQUESTS,
        (c, _) => c,
    };
    refused(code, reason, status.message())
}

fn render(page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a dashboard page did not render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page did not render; the server's log says more")
                .into_response()
        }
    }
}

/// A refusal by the dashboard itself, before any service was asked.
fn bad_request(message: impl std::fmt::Display) -> Response {
    refused(StatusCode::BAD_REQUEST, "invalid-argument", &message.to_string())
}

// ---------------------------------------------------------------------------
// Shared page parts

/// The navigation bar: who is logged in, and the form token.
pub(super) struct Nav {
    user: String,
    access: String,
    csrf: String,
    can_write: bool,
    /// A server without tokens: nobody logs in or out.
    open: bool,
}

fn nav(web: &Web, v: &Viewer) -> Nav {
    Nav {
        user: v.principal.name.clone(),
        access: v.principal.access.as_str().to_owned(),
        csrf: v.session.csrf.clone(),
        can_write: v.principal.allows(Need::Write),
        open: web.auth.is_open(),
    }
}

/// A path's parent folder ("" at the top).
fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// `name` inside folder `dir`.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

/// A folder named in a query or form: "" or a valid path.
fn folder(dir: Option<&str>) -> Result<String, Response> {
    let dir = dir.unwrap_or("").trim_matches('/');
    if !dir.is_empty() {
        RelPath::new(dir).map_err(|e| bad_request(format!("bad folder: {e}")))?;
    }
    Ok(dir.to_owned())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn time_of_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| "?".into(), |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn time_of_ns(ns: i64) -> String {
    time_of_ms(ns.div_euclid(1_000_000))
}

/// The folders from the top down to `dir`, as (name, folder) links.
fn crumbs(dir: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut at = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        at = join(&at, part);
        out.push((part.to_owned(), at.clone()));
    }
    out
}

/// The token of the lock the dashboard holds on `path` for this viewer (0:
/// none), so that its own writes pass its own lock.
async fn own_lock_token(web: &Web, v: &Viewer, path: &str) -> u64 {
    let Ok(locks) = v.files(web).list_locks(v.call(pb::ListLocksRequest { prefix: path.into() })).await
    else {
        return 0;
    };
    let mut locks = locks.into_inner();
    while let Some(Ok(m)) = locks.next().await {
        if let Some(l) = m.lock
            && l.path == path
            && l.client_id == WEB_CLIENT_ID
            && l.holder == v.principal.name
        {
            return l.token;
        }
    }
    0
}

// ---------------------------------------------------------------------------
// Login

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Option<Nav>,
    message: String,
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    ended: Option<String>,
}

pub(super) async fn login_form(State(web): WebState, Query(q): Query<LoginQuery>) -> Response {
    if web.auth.is_open() {
        // Nothing to log in with: a session (for the form tokens) at once.
        return logged_in(&web, None, "/files");
    }
    let message = match q.ended {
        Some(_) => "Your session ended: its token was removed, or the server restarted. Log in again.",
        None => "",
    };
    render(&LoginPage { nav: None, message: message.into() })
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

pub(super) async fn login(State(web): WebState, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    match web.auth.check(Some(token)) {
        Ok(p) => {
            let home = if p.allows(Need::Read) { "/files" } else { "/status" };
            logged_in(&web, Some(token.to_owned()), home)
        }
        Err(_) => {
            let page = LoginPage { nav: None, message: "That token is not valid here.".into() };
            (StatusCode::UNAUTHORIZED, render(&page)).into_response()
        }
    }
}

fn logged_in(web: &Web, token: Option<String>, home: &str) -> Response {
    let (id, _) = web.sessions.create(token);
    let mut response = Redirect::to(home).into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(Some(&id), web.secure));
    response
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(web): WebState,
    headers: axum::http::HeaderMap,
    v: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    if let Some(id) = session::cookie_of(&headers) {
        web.sessions.remove(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(None, web.secure));
    response
}

// ---------------------------------------------------------------------------
// Files

/// One row of a folder listing.
struct Row {
    name: String,
    path: String,
    folder: bool,
    size: String,
    modified: String,
    version: u64,
    bytes: u64,
    mtime_ns: i64,
}

#[derive(Template)]
#[template(path = "files.html")]
struct FilesPage {
    nav: Option<Nav>,
    dir: String,
    crumbs: Vec<(String, String)>,
    query: String,
    sort: String,
    rows: Vec<Row>,
    total: usize,
    page: usize,
    pages: usize,
    head_seq: u64,
}

#[derive(Deserialize)]
pub(super) struct FilesQuery {
    dir: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    page: Option<usize>,
}

pub(super) async fn files(State(web): WebState, v: Viewer, Query(q): Query<FilesQuery>) -> Response {
    let dir = match folder(q.dir.as_deref()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let query = q.q.unwrap_or_default().trim().to_owned();
    let needle = query.to_lowercase();
    let listing =
        v.files(&web).list(v.call(pb::ListRequest { prefix: dir.clone(), include_deleted: false })).await;
    let mut stream = match listing {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut head_seq = 0;
    let mut children: BTreeMap<String, Row> = BTreeMap::new();
    let mut found = Vec::new();
    let below = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(m) => m,
            Err(s) => return refusal(&s),
        };
        head_seq = message.head_seq;
        let Some(e) = message.entry else { continue };
        let Some(rel) = e.path.strip_prefix(below.as_str()) else { continue };
        // Sizes and times are formatted for the rows shown only.
        let row = |name: &str, path: &str, folder: bool| Row {
            name: name.to_owned(),
            path: path.to_owned(),
            folder,
            size: String::new(),
            modified: String::new(),
            version: e.version,
            bytes: e.size,
            mtime_ns: e.mtime_ns,
        };
        if !needle.is_empty() {
            if rel.to_lowercase().contains(&needle) {
                found.push(row(rel, &e.path, e.folder));
            }
            continue;
        }
        match rel.split_once('/') {
            Some((first, _)) => {
                children.entry(first.to_owned()).or_insert_with(|| row(first, &join(&dir, first), true));
            }
            None => {
                children.insert(rel.to_owned(), row(rel, &e.path, e.folder));
            }
        }
    }
    let mut rows = if needle.is_empty() { children.into_values().collect() } else { found };
    let sort = q.sort.unwrap_or_else(|| "name".into());
    match sort.as_str() {
        "size" => rows.sort_by_key(|r| std::cmp::Reverse(r.bytes)),
        "modified" => rows.sort_by_key(|r| std::cmp::Reverse(r.mtime_ns)),
        _ => rows.sort_by(|a, b| b.folder.cmp(&a.folder).then_with(|| a.name.cmp(&b.name))),
    }
    let total = rows.len();
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let rows = rows
        .into_iter()
        .skip((page - 1) * PAGE_ROWS)
        .take(PAGE_ROWS)
        .map(|r| match r.folder {
            true => r,
            false => Row { size: human_size(r.bytes), modified: time_of_ns(r.mtime_ns), ..r },
        })
        .collect();
    render(&FilesPage {
        nav: Some(nav(&web, &v)),
        crumbs: crumbs(&dir),
        dir,
        query,
        sort,
        rows,
        total,
        page,
        pages,
        head_seq,
    })
}

/// One version on a file's page.
struct VersionRow {
    version: u64,
    size: String,
    committed: String,
    who: String,
    kind: String,
    deleted: bool,
}

/// A lock as the pages show it.
struct LockRow {
    lock_id: String,
    path: String,
    holder: String,
    client_id: String,
    note: String,
    expires: String,
}

impl From<pb::LockInfo> for LockRow {
    fn from(l: pb::LockInfo) -> Self {
        Self {
            lock_id: l.lock_id,
            path: l.path,
            holder: l.holder,
            client_id: l.client_id,
            note: l.note,
            expires: time_of_ms(l.expires_ms),
        }
    }
}

#[derive(Template)]
#[template(path = "file.html")]
struct FilePage {
    nav: Option<Nav>,
    path: String,
    name: String,
    dir: String,
    deleted: bool,
    folder: bool,
    size: String,
    modified: String,
    version: u64,
    client_id: String,
    hash: String,
    versions: Vec<VersionRow>,
    lock: Option<LockRow>,
}

#[derive(Deserialize)]
pub(super) struct PathQuery {
    path: String,
    version: Option<u64>,
}

pub(super) async fn file(State(web): WebState, v: Viewer, Query(q): Query<PathQuery>) -> Response {
    let entry = match v.files(&web).stat(v.call(pb::StatRequest { path: q.path.clone() })).await {
        Ok(r) => r.into_inner().entry.unwrap_or_default(),
        Err(s) => return refusal(&s),
    };
    let mut versions = Vec::new();
    let listed = v
        .history(&web)
        .list_versions(v.call(pb::ListVersionsRequest { path: q.path.clone(), limit: VERSIONS_SHOWN }))
        .await;
    if let Ok(stream) = listed {
        let mut stream = stream.into_inner();
        while let Some(Ok(m)) = stream.next().await {
            let Some(fv) = m.version else { continue };
            let e = fv.entry.unwrap_or_default();
            versions.push(VersionRow {
                version: e.version,
                size: human_size(e.size),
                committed: time_of_ms(fv.committed_ms),
                who: format!("{} ({})", fv.principal, e.client_id),
                kind: pb::VersionKind::try_from(fv.kind)
                    .map_or("?", |k| k.as_str_name().trim_start_matches("VERSION_KIND_"))
                    .to_lowercase(),
                deleted: e.deleted,
            });
        }
    }
    let mut lock = None;
    if let Ok(locks) = v.files(&web).list_locks(v.call(pb::ListLocksRequest { prefix: q.path.clone() })).await
    {
        let mut locks = locks.into_inner();
        while let Some(Ok(m)) = locks.next().await {
            if let Some(l) = m.lock.filter(|l| l.path == q.path) {
                lock = Some(l.into());
            }
        }
    }
    let hash = ContentHash::try_from(&entry.hash[..]).map(|h| h.to_hex()).unwrap_or_default();
    render(&FilePage {
        nav: Some(nav(&web, &v)),
        name: entry.path.rsplit('/').next().unwrap_or_default().to_owned(),
        dir: parent_of(&entry.path).to_owned(),
        path: entry.path,
        deleted: entry.deleted,
        folder: entry.folder,
        size: human_size(entry.size),
        modified: time_of_ns(entry.mtime_ns),
        version: entry.version,
        client_id: entry.client_id,
        hash,
        versions,
        lock,
    })
}

/// `attachment; filename*=UTF-8''…`: the file's own name, whatever its
/// characters.
fn attachment(path: &str) -> HeaderValue {
    let name = path.rsplit('/').next().unwrap_or("download");
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

pub(super) async fn download(State(web): WebState, v: Viewer, Query(q): Query<PathQuery>) -> Response {
    let request =
        pb::DownloadRequest { path: q.path.clone(), version: q.version.unwrap_or(0), have_hash: vec![] };
    match v.files(&web).download(v.call(request)).await {
        Ok(s) => streamed(s.into_inner()).await,
        Err(s) => refusal(&s),
    }
}

/// A download's messages as an HTTP body: the entry gives its length and
/// name, its chunks the body.
async fn streamed(mut stream: tonic::Streaming<pb::DownloadResponse>) -> Response {
    let entry = match stream.next().await {
        Some(Ok(pb::DownloadResponse { msg: Some(download_response::Msg::Entry(e)) })) => e,
        Some(Err(s)) => return refusal(&s),
        _ => {
            return refused(StatusCode::BAD_GATEWAY, "internal", "the download did not start with its entry");
        }
    };
    let body = stream.filter_map(|m| async move {
        match m {
            Ok(pb::DownloadResponse { msg: Some(download_response::Msg::Chunk(c)) }) => {
                Some(Ok(Bytes::from(c)))
            }
            Ok(_) => None,
            // The body breaks off: the browser reports a failed download
            // rather than keeping a short file.
            Err(s) => Some(Err(std::io::Error::other(s.message().to_owned()))),
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
    h.insert(header::CONTENT_DISPOSITION, attachment(&entry.path));
    response
}

// ---------------------------------------------------------------------------
// Writes

/// Where a form sends the browser back to.
fn back_to_folder(dir: &str) -> Response {
    let mut url = String::from("/files");
    if !dir.is_empty() {
        url.push_str("?dir=");
        url.push_str(&urlencode(dir));
    }
    Redirect::to(&url).into_response()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'/' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Uploads through the page: a form of `csrf`, `dir`, then one or more
/// `file` parts. Each file is spooled to disk while its hash is computed
/// (an upload's header names its hash before its content), then streamed
/// into the same `Upload` call every client uses. A file already there is
/// replaced by a new version (the old one stays in its history).
pub(super) async fn upload(State(web): WebState, v: Viewer, mut form: Multipart) -> Response {
    let mut csrf_checked = false;
    let mut dir = String::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return bad_request(format!("the upload form broke off: {e}")),
        };
        match field.name() {
            Some("csrf") => {
                let sent = field.text().await.unwrap_or_default();
                if let Err(r) = v.check_csrf(&sent) {
                    return r;
                }
                csrf_checked = true;
            }
            Some("dir") => match folder(Some(&field.text().await.unwrap_or_default())) {
                Ok(d) => dir = d,
                Err(r) => return r,
            },
            Some("file") => {
                if !csrf_checked {
                    return v.check_csrf("").expect_err("an empty form token never matches");
                }
                let Some(name) = field.file_name().map(str::to_owned).filter(|n| !n.is_empty()) else {
                    continue; // No file chosen.
                };
                let path = match RelPath::new(join(&dir, &name)) {
                    Ok(p) => p.as_str().to_owned(),
                    Err(e) => return bad_request(format!("{name:?} cannot be stored: {e}")),
                };
                if let Err(r) = upload_one(&web, &v, &path, field).await {
                    return r;
                }
            }
            _ => {}
        }
    }
    if !csrf_checked {
        return v.check_csrf("").expect_err("an empty form token never matches");
    }
    back_to_folder(&dir)
}

async fn upload_one(web: &Web, v: &Viewer, path: &str, field: Field<'_>) -> Result<(), Response> {
    let (spooled, size, hash) = spool(web, field).await?;
    let base_version = match v.files(web).stat(v.call(pb::StatRequest { path: path.into() })).await {
        Ok(r) => r.into_inner().entry.map_or(0, |e| e.version),
        Err(s) if s.code() == Code::NotFound => 0,
        Err(s) => return Err(refusal(&s)),
    };
    let header = pb::UploadHeader {
        path: path.into(),
        size,
        hash: hash.as_bytes().to_vec(),
        mtime_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        base_version,
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(web, v, path).await,
        ..Default::default()
    };
    let file = tokio::fs::File::open(spooled.path())
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("spool: {e}")))?;
    let messages =
        futures::stream::iter([pb::UploadRequest { msg: Some(upload_request::Msg::Header(header)) }])
            .chain(content_of(file));
    match v.files(web).upload(v.call(messages)).await {
        Ok(_) => Ok(()),
        Err(s) => Err(refusal(&s)),
    }
}

/// A spooled file's content as upload messages, then the end marker. A read
/// that fails ends the stream without the marker: nothing is committed.
fn content_of(file: tokio::fs::File) -> impl Stream<Item = pb::UploadRequest> + Send + 'static {
    futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut chunk = Vec::with_capacity(MAX_CHUNK);
        match (&mut file).take(MAX_CHUNK as u64).read_to_end(&mut chunk).await {
            Ok(0) => {
                Some((pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) }, None))
            }
            Ok(_) => Some((pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(chunk)) }, Some(file))),
            Err(e) => {
                tracing::warn!(error = %e, "could not read a spooled upload back");
                None
            }
        }
    })
}

/// Writes an uploaded part to a temp file in the spool, hashing it on the
/// way; refuses it once it passes the server's largest file.
async fn spool(
    web: &Web,
    mut field: Field<'_>,
) -> Result<(tempfile::NamedTempFile, u64, ContentHash), Response> {
    let failed = |e: std::io::Error| {
        refused(StatusCode::INSUFFICIENT_STORAGE, "disk-full", &format!("could not spool the upload: {e}"))
    };
    let spooled = tempfile::Builder::new().prefix("upload-").tempfile_in(&web.spool).map_err(failed)?;
    let mut out = tokio::fs::File::from_std(spooled.reopen().map_err(failed)?);
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    loop {
        let piece = match field.chunk().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(bad_request(format!("the upload broke off: {e}"))),
        };
        size += piece.len() as u64;
        if size > web.max_file_size {
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                &format!("the file is larger than this server's limit of {} bytes", web.max_file_size),
            ));
        }
        hasher.update(&piece);
        out.write_all(&piece).await.map_err(failed)?;
    }
    out.flush().await.map_err(failed)?;
    let hash = ContentHash::from(hasher.finalize());
    Ok((spooled, size, hash))
}

#[derive(Deserialize)]
pub(super) struct MkdirForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    dir: String,
    name: String,
}

pub(super) async fn mkdir(State(web): WebState, v: Viewer, Form(form): Form<MkdirForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let dir = match folder(Some(&form.dir)) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let path = match RelPath::new(join(&dir, form.name.trim())) {
        Ok(p) => p.as_str().to_owned(),
        Err(e) => return bad_request(format!("bad folder name: {e}")),
    };
    let header = pb::UploadHeader {
        path,
        hash: ContentHash::empty().as_bytes().to_vec(),
        mtime_ns: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        client_id: WEB_CLIENT_ID.into(),
        folder: true,
        ..Default::default()
    };
    let messages = futures::stream::iter([
        pb::UploadRequest { msg: Some(upload_request::Msg::Header(header)) },
        pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) },
    ]);
    match v.files(&web).upload(v.call(messages)).await {
        Ok(_) => back_to_folder(&dir),
        Err(s) => refusal(&s),
    }
}

/// A form about one version of one file: delete it, or restore it.
#[derive(Deserialize)]
pub(super) struct VersionForm {
    #[serde(default)]
    csrf: String,
    path: String,
    version: u64,
}

pub(super) async fn delete(State(web): WebState, v: Viewer, Form(form): Form<VersionForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let request = pb::DeleteRequest {
        path: form.path.clone(),
        base_version: form.version,
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(&web, &v, &form.path).await,
    };
    match v.files(&web).delete(v.call(request)).await {
        Ok(_) => back_to_folder(parent_of(&form.path)),
        Err(s) => refusal(&s),
    }
}

// ---------------------------------------------------------------------------
// Locks

#[derive(Template)]
#[template(path = "locks.html")]
struct LocksPage {
    nav: Option<Nav>,
    locks: Vec<LockRow>,
    break_locks: bool,
}

pub(super) async fn locks(State(web): WebState, v: Viewer) -> Response {
    let mut stream = match v.files(&web).list_locks(v.call(pb::ListLocksRequest::default())).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut locks = Vec::new();
    while let Some(m) = stream.next().await {
        match m {
            Ok(m) => locks.extend(m.lock.map(LockRow::from)),
            Err(s) => return refusal(&s),
        }
    }
    render(&LocksPage { nav: Some(nav(&web, &v)), locks, break_locks: v.principal.break_locks })
}

#[derive(Deserialize)]
pub(super) struct LockForm {
    #[serde(default)]
    csrf: String,
    path: String,
    #[serde(default)]
    note: String,
    ttl_seconds: Option<u32>,
}

pub(super) async fn lock(State(web): WebState, v: Viewer, Form(form): Form<LockForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let request = pb::LockRequest {
        path: form.path.clone(),
        ttl_seconds: form.ttl_seconds.unwrap_or(0),
        note: form.note,
        client_id: WEB_CLIENT_ID.into(),
        holder: v.principal.name.clone(),
    };
    match v.files(&web).lock(v.call(request)).await {
        Ok(_) => Redirect::to(&format!("/file?path={}", urlencode(&form.path))).into_response(),
        Err(s) => refusal(&s),
    }
}

#[derive(Deserialize)]
pub(super) struct UnlockForm {
    #[serde(default)]
    csrf: String,
    lock_id: String,
    force: Option<String>,
}

pub(super) async fn unlock(State(web): WebState, v: Viewer, Form(form): Form<UnlockForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let request = pb::UnlockRequest {
        lock_id: form.lock_id,
        client_id: WEB_CLIENT_ID.into(),
        force: form.force.is_some(),
    };
    match v.files(&web).unlock(v.call(request)).await {
        Ok(_) => Redirect::to("/locks").into_response(),
        Err(s) => refusal(&s),
    }
}

// ---------------------------------------------------------------------------
// The service's state

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    nav: Option<Nav>,
    rows: Vec<(&'static str, String)>,
    admin: Vec<(&'static str, String)>,
    admin_error: String,
    /// The subscriptions this process feeds (admins only).
    clients: Vec<ClientRow>,
}

/// One subscription on the service page.
struct ClientRow {
    client_id: String,
    principal: String,
    namespace: String,
    cursor: u64,
    behind: u64,
    since: String,
    peer: String,
}

pub(super) async fn status(State(web): WebState, v: Viewer) -> Response {
    let info = match v.files(&web).server_info(v.call(pb::ServerInfoRequest {})).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refusal(&s),
    };
    let rows = vec![
        ("Role", info.role.clone()),
        ("History id", info.history_id.clone()),
        ("Head seq", info.head_seq.to_string()),
        ("Oldest kept seq", info.oldest_seq.to_string()),
        ("Version", info.server_version.clone()),
        ("Logged in as", format!("{} ({}, namespace {:?})", info.principal, info.access, info.namespace)),
    ];
    let (mut admin, mut admin_error, mut clients) = (Vec::new(), String::new(), Vec::new());
    if v.principal.allows(Need::Admin) {
        match v.admin(&web).status(v.call(pb::StatusRequest { count_stored: false })).await {
            Ok(r) => {
                let s = r.into_inner();
                clients = s
                    .subscribers
                    .iter()
                    .map(|c| ClientRow {
                        client_id: if c.client_id.is_empty() {
                            "(a live page)".into()
                        } else {
                            c.client_id.clone()
                        },
                        principal: c.principal.clone(),
                        namespace: c.namespace.clone(),
                        cursor: c.cursor_seq,
                        behind: s.head_seq.saturating_sub(c.cursor_seq),
                        since: time_of_ms(c.connected_unix_ms),
                        peer: c.peer.clone(),
                    })
                    .collect();
                admin = vec![
                    ("Backend", s.backend.clone()),
                    ("Epoch", s.epoch.to_string()),
                    (
                        "Writes refused",
                        if s.writes_refused.is_empty() { "no".into() } else { s.writes_refused },
                    ),
                    ("Degraded", if s.degraded { "yes".into() } else { "no".into() }),
                    ("Replication mode", s.replication_mode),
                    ("Replica", s.replica_url),
                    ("Replica connected", if s.replica_connected { "yes".into() } else { "no".into() }),
                    ("Replica acked seq", s.replica_acked_seq.to_string()),
                    (
                        "Replica lag",
                        format!("{} changes, {:.1} s", s.replica_lag_changes, s.replica_lag_seconds),
                    ),
                    ("Replica error", s.replica_error),
                    ("Primary", s.primary_url),
                    ("History", format!("{} versions, {}", s.history_versions, human_size(s.history_bytes))),
                    (
                        "Damaged content",
                        format!("{} now, {} found ever", s.damaged_blobs, s.damaged_blobs_found),
                    ),
                ];
            }
            Err(s) => admin_error = s.message().to_owned(),
        }
    }
    render(&StatusPage { nav: Some(nav(&web, &v)), rows, admin, admin_error, clients })
}

// ---------------------------------------------------------------------------
// Live

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    #[serde(default)]
    after: u64,
}

/// The change feed as server-sent events (`change`, with the seq, kind,
/// path and client of each file change), from `after` on; the files page
/// follows it to show changes without a reload.
pub(super) async fn events(State(web): WebState, v: Viewer, Query(q): Query<EventsQuery>) -> Response {
    let request = pb::SubscribeRequest { after_seq: q.after, client_id: String::new() };
    let stream = match v.files(&web).subscribe(v.call(request)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let stop = web.shutdown.clone().cancelled_owned();
    let events = stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| async move {
            let e = m.ok()?.event?;
            let kind = pb::change_event::Kind::try_from(e.kind).ok()?;
            let path =
                e.entry.as_ref().map(|x| x.path.clone()).or_else(|| e.lock.as_ref().map(|l| l.path.clone()));
            let data = serde_json::json!({
                "seq": e.seq,
                "kind": kind.as_str_name().trim_start_matches("KIND_").to_lowercase(),
                "path": path.unwrap_or_default(),
                "client": e.client_id,
            });
            Some(Ok::<_, Infallible>(Event::default().event("change").data(data.to_string())))
        })
        .take_until(stop);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response()
}

// ---------------------------------------------------------------------------
// History: restore, the trash, rewind

/// A version's point.
fn at_version(version: u64) -> Option<pb::Point> {
    Some(pb::Point { at: Some(pb::point::At::Version(version)) })
}

/// Makes a kept version the file's current content again, as a new change.
pub(super) async fn restore(State(web): WebState, v: Viewer, Form(form): Form<VersionForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let request = pb::RestoreRequest {
        path: form.path.clone(),
        point: at_version(form.version),
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(&web, &v, &form.path).await,
        ..Default::default()
    };
    match v.history(&web).restore(v.call(request)).await {
        Ok(_) => Redirect::to(&format!("/file?path={}", urlencode(&form.path))).into_response(),
        Err(s) => refusal(&s),
    }
}

/// One deleted file in the trash.
struct TrashRow {
    path: String,
    deleted: String,
    by: String,
    size: String,
    /// The version whose content an undelete brings back.
    last: u64,
}

#[derive(Template)]
#[template(path = "trash.html")]
struct TrashPage {
    nav: Option<Nav>,
    under: String,
    glob: String,
    rows: Vec<TrashRow>,
    message: String,
}

#[derive(Deserialize)]
pub(super) struct TrashQuery {
    under: Option<String>,
    glob: Option<String>,
    restored: Option<u64>,
}

/// Most deleted files the trash page lists; a search narrows it.
const TRASH_ROWS: u32 = 1000;

pub(super) async fn trash(State(web): WebState, v: Viewer, Query(q): Query<TrashQuery>) -> Response {
    let under = match folder(q.under.as_deref()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let glob = q.glob.unwrap_or_default().trim().to_owned();
    let request =
        pb::ListTrashRequest { under: under.clone(), glob: glob.clone(), limit: TRASH_ROWS, since_ms: 0 };
    let mut stream = match v.history(&web).list_trash(v.call(request)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut rows = Vec::new();
    while let Some(m) = stream.next().await {
        let m = match m {
            Ok(m) => m,
            Err(s) => return refusal(&s),
        };
        let (Some(deleted), Some(last)) = (m.deleted, m.last) else { continue };
        let (gone, was) = (deleted.entry.unwrap_or_default(), last.entry.unwrap_or_default());
        rows.push(TrashRow {
            path: gone.path,
            deleted: time_of_ms(deleted.committed_ms),
            by: format!("{} ({})", deleted.principal, gone.client_id),
            size: human_size(was.size),
            last: was.version,
        });
    }
    let message = q.restored.map(|n| format!("{n} file(s) brought back.")).unwrap_or_default();
    render(&TrashPage { nav: Some(nav(&web, &v)), under, glob, rows, message })
}

/// The undelete form: the files ticked (`file`, each `PATH@VERSION`), or
/// every file the search matches (`all`).
pub(super) async fn undelete(
    State(web): WebState,
    v: Viewer,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if let Err(r) = v.check_csrf(field("csrf").unwrap_or("")) {
        return r;
    }
    let under = match folder(field("under")) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let glob = field("glob").unwrap_or("").trim().to_owned();
    let back = |restored: u64| {
        Redirect::to(&format!(
            "/trash?under={}&glob={}&restored={restored}",
            urlencode(&under),
            urlencode(&glob)
        ))
        .into_response()
    };
    if field("all").is_some() {
        // Every match at once, in one transaction.
        let request = pb::UndeleteRequest {
            under: under.clone(),
            glob: glob.clone(),
            client_id: WEB_CLIENT_ID.into(),
            ..Default::default()
        };
        return match v.history(&web).undelete(v.call(request)).await {
            Ok(r) => back(r.into_inner().restored),
            Err(s) => refusal(&s),
        };
    }
    // The ticked files, each restored from the version it had last.
    let mut restored = 0;
    for (_, ticked) in pairs.iter().filter(|(k, _)| k == "file") {
        let Some((path, version)) = ticked.rsplit_once('@').and_then(|(p, v)| Some((p, v.parse().ok()?)))
        else {
            return bad_request(format!("bad file {ticked:?}"));
        };
        let request = pb::RestoreRequest {
            path: path.into(),
            point: at_version(version),
            client_id: WEB_CLIENT_ID.into(),
            ..Default::default()
        };
        if let Err(s) = v.history(&web).restore(v.call(request)).await {
            return refusal(&s);
        }
        restored += 1;
    }
    back(restored)
}

/// One path of a rewind (or of its preview).
struct RewindRow {
    path: String,
    now: String,
    then: String,
}

#[derive(Template)]
#[template(path = "rewind.html")]
struct RewindPage {
    nav: Option<Nav>,
    under: String,
    to: String,
    /// Whether these are the actions done, not a preview.
    done: bool,
    rows: Vec<RewindRow>,
    summary: String,
}

#[derive(Deserialize)]
pub(super) struct RewindQuery {
    #[serde(default)]
    csrf: String,
    under: Option<String>,
    to: Option<String>,
}

/// The point a rewind form names: a version number, a time (UTC,
/// `YYYY-MM-DDTHH:MM[:SS]`, as a datetime field sends it) or a label.
fn point_of(to: &str) -> Result<pb::Point, Response> {
    let to = to.trim();
    if let Ok(version) = to.parse::<u64>() {
        return Ok(pb::Point { at: Some(pb::point::At::Version(version)) });
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(to, format) {
            return Ok(pb::Point { at: Some(pb::point::At::AtMs(t.and_utc().timestamp_millis())) });
        }
    }
    if to.is_empty() {
        return Err(bad_request("say when to rewind to: a version number, a time or a label"));
    }
    Ok(pb::Point { at: Some(pb::point::At::Label(to.to_owned())) })
}

/// A version's state in one line.
fn state_of(version: Option<&pb::FileVersion>) -> String {
    match version.and_then(|v| v.entry.as_ref()) {
        None => "absent".into(),
        Some(e) if e.deleted => "deleted".into(),
        Some(e) if e.folder => format!("folder (version {})", e.version),
        Some(e) => format!("version {}, {}", e.version, human_size(e.size)),
    }
}

/// The rewind page: without `to`, the form; with it, the preview (a dry
/// run); posted, the rewind itself, listing what it did.
async fn rewind_run(web: &Web, v: &Viewer, q: RewindQuery, dry_run: bool) -> Response {
    let under = match folder(q.under.as_deref()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let to = q.to.unwrap_or_default();
    let mut page = RewindPage {
        nav: Some(nav(web, v)),
        under: under.clone(),
        to: to.clone(),
        done: !dry_run,
        rows: Vec::new(),
        summary: String::new(),
    };
    if to.trim().is_empty() {
        return render(&page);
    }
    let point = match point_of(&to) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request = pb::RewindRequest { under, to: Some(point), client_id: WEB_CLIENT_ID.into(), dry_run };
    let mut stream = match v.history(web).rewind(v.call(request)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    while let Some(m) = stream.next().await {
        match m.map(|m| m.msg) {
            Ok(Some(pb::rewind_response::Msg::Action(a))) => page.rows.push(RewindRow {
                now: state_of(a.now.as_ref()),
                then: state_of(a.then.as_ref()),
                path: a.path,
            }),
            Ok(Some(pb::rewind_response::Msg::Summary(s))) => {
                page.summary = match dry_run {
                    true => format!(
                        "{} path(s) would change, {} would be skipped (locked).",
                        s.changed, s.skipped
                    ),
                    false => format!(
                        "{} path(s) changed, {} skipped (locked); the state before is labelled {:?}.",
                        s.changed, s.skipped, s.label
                    ),
                }
            }
            Ok(None) => {}
            Err(s) => return refusal(&s),
        }
    }
    render(&page)
}

pub(super) async fn rewind_preview(
    State(web): WebState,
    v: Viewer,
    Query(q): Query<RewindQuery>,
) -> Response {
    rewind_run(&web, &v, q, true).await
}

pub(super) async fn rewind(State(web): WebState, v: Viewer, Form(q): Form<RewindQuery>) -> Response {
    if let Err(r) = v.check_csrf(&q.csrf) {
        return r;
    }
    rewind_run(&web, &v, q, false).await
}

// ---------------------------------------------------------------------------
// Share links

/// A share link as the shares page shows it.
struct ShareRow {
    id: String,
    path: String,
    folder: bool,
    created: String,
    by: String,
    expires: String,
    password: bool,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "shares.html")]
struct SharesPage {
    nav: Option<Nav>,
    shares: Vec<ShareRow>,
}

/// The links of the viewer's namespace, newest first.
pub(super) async fn shares(State(web): WebState, v: Viewer) -> Response {
    if !v.principal.allows(Need::Read) {
        return refused(StatusCode::FORBIDDEN, "permission-denied", "share links need a namespace's token");
    }
    let links = match web.store.shares(&v.principal.namespace).await {
        Ok(l) => l,
        Err(e) => return refusal(&e.into()),
    };
    let now = crate::clock::now_ms();
    let shares = links
        .into_iter()
        .map(|s| ShareRow {
            state: match (s.revoked_ms, s.live_at(now)) {
                (0, true) => "live",
                (0, false) => "expired",
                _ => "revoked",
            },
            created: time_of_ms(s.created_ms),
            expires: if s.expires_ms == 0 { "never".into() } else { time_of_ms(s.expires_ms) },
            password: !s.password.is_empty(),
            id: s.id,
            path: s.path,
            folder: s.folder,
            by: s.created_by,
        })
        .collect();
    render(&SharesPage { nav: Some(nav(&web, &v)), shares })
}

#[derive(Deserialize)]
pub(super) struct ShareForm {
    #[serde(default)]
    csrf: String,
    path: String,
    /// When it stops working (UTC, as [`point_of`] reads times); empty:
    /// never.
    #[serde(default)]
    expires: String,
    #[serde(default)]
    password: String,
}

/// Refuses what a read-only (or admin) token may not do, here where no
/// service call would.
fn must_write(v: &Viewer) -> Result<(), Response> {
    if v.principal.allows(Need::Write) {
        return Ok(());
    }
    Err(refused(
        StatusCode::FORBIDDEN,
        "permission-denied",
        &format!(
            "the token {:?} is {}; share links need a read-write token",
            v.principal.name,
            v.principal.access.as_str()
        ),
    ))
}

/// Makes a link to a live file or folder of the viewer's namespace.
pub(super) async fn share(State(web): WebState, v: Viewer, Form(form): Form<ShareForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf).and_then(|()| must_write(&v)) {
        return r;
    }
    let path = match RelPath::new(form.path.trim_matches('/')) {
        Ok(p) => p.as_str().to_owned(),
        Err(e) => return bad_request(format!("bad path: {e}")),
    };
    // What it points at, as the viewer's token sees it: a live file or
    // folder entry, or a folder that files below it make.
    let folder = match v.files(&web).stat(v.call(pb::StatRequest { path: path.clone() })).await {
        Ok(r) => match r.into_inner().entry {
            Some(e) if !e.deleted => e.folder,
            _ => return refused(StatusCode::NOT_FOUND, "not-found", &format!("{path} was deleted")),
        },
        Err(s) if s.code() == Code::NotFound => {
            let mut files = v.files(&web);
            let listing =
                files.list(v.call(pb::ListRequest { prefix: path.clone(), include_deleted: false }));
            let mut stream = match listing.await {
                Ok(s) => s.into_inner(),
                Err(s) => return refusal(&s),
            };
            let mut below = false;
            while let Some(Ok(m)) = stream.next().await {
                if m.entry.is_some() {
                    below = true;
                    break;
                }
            }
            if !below {
                return refused(StatusCode::NOT_FOUND, "not-found", &format!("{path} does not exist"));
            }
            true
        }
        Err(s) => return refusal(&s),
    };
    let expires_ms = match form.expires.trim() {
        "" => 0,
        t => match point_of(t) {
            Ok(pb::Point { at: Some(pb::point::At::AtMs(ms)) }) => ms,
            _ => return bad_request(format!("bad expiry {t:?}: give a UTC time like 2026-12-31T18:00")),
        },
    };
    let password = match form.password.as_str() {
        "" => String::new(),
        p => match hash_password(p.to_owned()).await {
            Ok(h) => h,
            Err(r) => return r,
        },
    };
    let link = crate::storage::Share {
        id: session::random_hex(),
        namespace: v.principal.namespace.clone(),
        path,
        folder,
        created_by: v.principal.name.clone(),
        created_ms: crate::clock::now_ms(),
        expires_ms,
        password,
        revoked_ms: 0,
    };
    match web.store.put_share(link).await {
        Ok(()) => Redirect::to("/shares").into_response(),
        Err(e) => refusal(&e.into()),
    }
}

/// An Argon2id hash of a share link's password (on a blocking thread: it
/// is meant to be slow).
async fn hash_password(password: String) -> Result<String, Response> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let hashed = tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await;
    match hashed {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => Err(refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("password: {e}"))),
        Err(e) => Err(refused(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("password: {e}"))),
    }
}

async fn password_matches(hash: String, password: String) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

#[derive(Deserialize)]
pub(super) struct UnshareForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

pub(super) async fn unshare(State(web): WebState, v: Viewer, Form(form): Form<UnshareForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf).and_then(|()| must_write(&v)) {
        return r;
    }
    match web.store.revoke_share(&v.principal.namespace, &form.id, crate::clock::now_ms()).await {
        Ok(true) => Redirect::to("/shares").into_response(),
        Ok(false) => refused(StatusCode::NOT_FOUND, "not-found", "this namespace has no such link"),
        Err(e) => refusal(&e.into()),
    }
}

/// The same answer for a link that never existed, was revoked or expired:
/// a link's id is its secret, and nothing tells which of them it is.
fn no_such_link() -> Response {
    refused(StatusCode::NOT_FOUND, "not-found", "this link does not exist or no longer works")
}

/// The link `id` if it works now, read again on every request; `Err` is
/// the page to answer instead (no link, or its password form).
async fn open_link(
    web: &Web,
    id: &str,
    headers: &axum::http::HeaderMap,
) -> Result<crate::storage::Share, Response> {
    let link = match web.store.share(id).await {
        Ok(Some(l)) if l.live_at(crate::clock::now_ms()) => l,
        Ok(_) => return Err(no_such_link()),
        Err(e) => return Err(refusal(&e.into())),
    };
    if !link.password.is_empty()
        && !session::named_cookie(headers, session::GRANT_COOKIE).is_some_and(|g| web.grants.unlocks(g, id))
    {
        let page = SharePasswordPage { nav: None, id: link.id.clone(), message: String::new() };
        return Err((StatusCode::UNAUTHORIZED, render(&page)).into_response());
    }
    Ok(link)
}

/// A `FileSync` request as the link's reader.
fn as_link<T>(link: &crate::storage::Share, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(crate::auth::Principal::share(&link.id, &link.namespace));
    request
}

/// The file a link reaches at `rel` below it: the link's own path for a
/// file, a path strictly below its folder for a folder (`RelPath` has no
/// `..`, so a joined path never leaves it).
fn below_link(link: &crate::storage::Share, rel: &str) -> Result<String, Response> {
    let rel = rel.trim_matches('/');
    if !link.folder || rel.is_empty() {
        return Ok(link.path.clone());
    }
    let rel = RelPath::new(rel).map_err(|e| bad_request(format!("bad path: {e}")))?;
    Ok(join(&link.path, rel.as_str()))
}

#[derive(Template)]
#[template(path = "share_password.html")]
struct SharePasswordPage {
    nav: Option<Nav>,
    id: String,
    message: String,
}

#[derive(Template)]
#[template(path = "share.html")]
struct SharePage {
    nav: Option<Nav>,
    id: String,
    name: String,
    folder: bool,
    /// The folder shown, below the link's ("" at its top).
    dir: String,
    size: String,
    rows: Vec<Row>,
}

#[derive(Deserialize)]
pub(super) struct SharedQuery {
    #[serde(default)]
    dir: String,
    #[serde(default)]
    path: String,
}

/// A link's page: its file, or its folder's files (a folder at a time).
pub(super) async fn shared(
    State(web): WebState,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<SharedQuery>,
) -> Response {
    let link = match open_link(&web, &id, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let name = link.path.rsplit('/').next().unwrap_or_default().to_owned();
    let mut files = FileSyncClient::new(web.services.shared_files.clone());
    if !link.folder {
        let entry = match files.stat(as_link(&link, pb::StatRequest { path: link.path.clone() })).await {
            Ok(r) => r.into_inner().entry.filter(|e| !e.deleted),
            Err(_) => None,
        };
        let Some(entry) = entry else { return no_such_link() };
        return render(&SharePage {
            nav: None,
            id,
            name,
            folder: false,
            dir: String::new(),
            size: human_size(entry.size),
            rows: vec![],
        });
    }
    let at = match below_link(&link, &q.dir) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let dir = if at == link.path { String::new() } else { q.dir.trim_matches('/').to_owned() };
    let mut stream = match files
        .list(as_link(&link, pb::ListRequest { prefix: at.clone(), include_deleted: false }))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let below = format!("{at}/");
    let mut children: BTreeMap<String, Row> = BTreeMap::new();
    while let Some(m) = stream.next().await {
        let Some(e) = (match m {
            Ok(m) => m.entry,
            Err(s) => return refusal(&s),
        }) else {
            continue;
        };
        let Some(rel) = e.path.strip_prefix(below.as_str()) else { continue };
        let (name, folder) = match rel.split_once('/') {
            Some((first, _)) => (first, true),
            None => (rel, e.folder),
        };
        children.entry(name.to_owned()).or_insert_with(|| Row {
            name: name.to_owned(),
            path: join(&dir, name),
            folder,
            size: if folder { String::new() } else { human_size(e.size) },
            modified: if folder { String::new() } else { time_of_ns(e.mtime_ns) },
            version: e.version,
            bytes: e.size,
            mtime_ns: e.mtime_ns,
        });
    }
    let mut rows: Vec<Row> = children.into_values().collect();
    rows.sort_by(|a, b| b.folder.cmp(&a.folder).then_with(|| a.name.cmp(&b.name)));
    render(&SharePage { nav: None, id, name, folder: true, dir, size: String::new(), rows })
}

#[derive(Deserialize)]
pub(super) struct SharePasswordForm {
    #[serde(default)]
    password: String,
}

/// A link's password form: the right one unlocks the link for this browser.
pub(super) async fn unlock_share(
    State(web): WebState,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(form): Form<SharePasswordForm>,
) -> Response {
    let link = match web.store.share(&id).await {
        Ok(Some(l)) if l.live_at(crate::clock::now_ms()) => l,
        Ok(_) => return no_such_link(),
        Err(e) => return refusal(&e.into()),
    };
    if !web.grants.may_try(&id) {
        let page = SharePasswordPage {
            nav: None,
            id,
            message: "Too many wrong passwords for this link: try again in a minute.".into(),
        };
        return (StatusCode::TOO_MANY_REQUESTS, render(&page)).into_response();
    }
    if link.password.is_empty() || !password_matches(link.password.clone(), form.password).await {
        web.grants.failed(&id);
        let page = SharePasswordPage { nav: None, id, message: "That is not the link's password.".into() };
        return (StatusCode::UNAUTHORIZED, render(&page)).into_response();
    }
    let grant = web.grants.create(&id);
    let secure = if web.secure { "; Secure" } else { "" };
    let cookie =
        format!("{}={grant}; Path=/s/{id}; HttpOnly; SameSite=Strict{secure}", session::GRANT_COOKIE);
    let mut response = Redirect::to(&format!("/s/{id}")).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// A file through a link, streamed.
pub(super) async fn shared_download(
    State(web): WebState,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Query(q): Query<SharedQuery>,
) -> Response {
    let link = match open_link(&web, &id, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let path = match below_link(&link, &q.path) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let request = pb::DownloadRequest { path, version: 0, have_hash: vec![] };
    match FileSyncClient::new(web.services.shared_files.clone()).download(as_link(&link, request)).await {
        Ok(s) => streamed(s.into_inner()).await,
        Err(s) => refusal(&s),
    }
}

// ---------------------------------------------------------------------------
// Rename or move, and labels

#[derive(Deserialize)]
pub(super) struct MoveForm {
    #[serde(default)]
    csrf: String,
    path: String,
    version: u64,
    to: String,
}

/// Renames or moves a file as clients do: the content written at the new
/// path (by hash: nothing travels), recorded as a move so that its history
/// follows it, then the old path deleted, each checked against the version
/// the page showed.
pub(super) async fn move_file(State(web): WebState, v: Viewer, Form(form): Form<MoveForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let to = match RelPath::new(form.to.trim().trim_matches('/')) {
        Ok(p) => p.as_str().to_owned(),
        Err(e) => return bad_request(format!("bad new name: {e}")),
    };
    let entry = match v.files(&web).stat(v.call(pb::StatRequest { path: form.path.clone() })).await {
        Ok(r) => r.into_inner().entry.unwrap_or_default(),
        Err(s) => return refusal(&s),
    };
    if entry.deleted || entry.folder || entry.version != form.version {
        return refused(
            StatusCode::CONFLICT,
            "version-conflict",
            &format!("{} changed since the page showed it: reload and try again", form.path),
        );
    }
    let header = pb::UploadHeader {
        path: to.clone(),
        size: entry.size,
        hash: entry.hash.clone(),
        mtime_ns: entry.mtime_ns,
        executable: entry.executable,
        symlink: entry.symlink,
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(&web, &v, &to).await,
        moved_from: form.path.clone(),
        ..Default::default()
    };
    let messages = futures::stream::iter([
        pb::UploadRequest { msg: Some(upload_request::Msg::Header(header)) },
        pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) },
    ]);
    if let Err(s) = v.files(&web).upload(v.call(messages)).await {
        return refusal(&s);
    }
    let request = pb::DeleteRequest {
        path: form.path.clone(),
        base_version: form.version,
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(&web, &v, &form.path).await,
    };
    match v.files(&web).delete(v.call(request)).await {
        Ok(_) => Redirect::to(&format!("/file?path={}", urlencode(&to))).into_response(),
        // The copy stays: nothing is lost, and the page says why the old
        // name does too.
        Err(s) => refusal(&s),
    }
}

/// One label on the labels page.
struct LabelRow {
    name: String,
    version: u64,
    at: String,
    note: String,
    by: String,
}

#[derive(Template)]
#[template(path = "labels.html")]
struct LabelsPage {
    nav: Option<Nav>,
    labels: Vec<LabelRow>,
}

pub(super) async fn labels(State(web): WebState, v: Viewer) -> Response {
    let mut stream = match v.history(&web).list_labels(v.call(pb::ListLabelsRequest {})).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut labels = Vec::new();
    while let Some(m) = stream.next().await {
        match m {
            Ok(m) => labels.extend(m.label.map(|l| LabelRow {
                at: time_of_ms(l.at_ms),
                by: if l.automatic { format!("{} (automatic)", l.principal) } else { l.principal },
                name: l.name,
                version: l.version,
                note: l.note,
            })),
            Err(s) => return refusal(&s),
        }
    }
    labels.reverse();
    render(&LabelsPage { nav: Some(nav(&web, &v)), labels })
}

#[derive(Deserialize)]
pub(super) struct LabelForm {
    #[serde(default)]
    csrf: String,
    name: String,
    #[serde(default)]
    note: String,
}

/// Labels the namespace's state now.
pub(super) async fn label(State(web): WebState, v: Viewer, Form(form): Form<LabelForm>) -> Response {
    if let Err(r) = v.check_csrf(&form.csrf) {
        return r;
    }
    let request = pb::SetLabelRequest { name: form.name.trim().to_owned(), at: None, note: form.note };
    match v.history(&web).set_label(v.call(request)).await {
        Ok(_) => Redirect::to("/labels").into_response(),
        Err(s) => refusal(&s),
    }
}
