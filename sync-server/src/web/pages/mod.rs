//! The dashboard's pages and forms. Each handler turns a request into
//! calls of the server's own services (see the module above) and renders
//! the answer, or the refusal, as a page.
//!
//! This module holds what every page shares (refusals, rendering, the
//! navigation bar, formatting, the login); `files`, `history`, `locks`,
//! `shares` and `status` the pages of each part.

use std::{convert::Infallible, sync::Arc, time::Duration};

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

use super::{Checked, CsrfField, Viewer, Web, session};

mod files;
mod history;
mod locks;
mod shares;
mod status;

pub(super) use self::{files::*, history::*, locks::*, shares::*, status::*};
use crate::auth::Need;
use files::{streamed, urlencode};
use history::point_of;
use syncstore::pb::file_sync_client::FileSyncClient;

/// The client id of the dashboard's writes and locks: what clients and the
/// activity view show as where a change came from.
const WEB_CLIENT_ID: &str = "web-dashboard";

/// Rows of a folder listing per page.
const PAGE_ROWS: usize = 200;

/// The forms that carry the session's form token (see [`Checked`]).
macro_rules! csrf_field {
    ($($form:ty),* $(,)?) => {
        $(impl CsrfField for $form {
            fn csrf(&self) -> &str {
                &self.csrf
            }
        })*
    };
}

csrf_field!(
    CsrfForm,
    VersionForm,
    files::MkdirForm,
    files::MoveForm,
    history::RewindQuery,
    history::LabelForm,
    locks::LockForm,
    locks::UnlockForm,
    shares::ShareForm,
    shares::UnshareForm,
);

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
    /// The form's token, also in the [`session::LOGIN_COOKIE`] cookie.
    csrf: String,
}

impl LoginPage {
    /// The page with `message`, its form token in the form and a cookie.
    fn answer(web: &Web, code: StatusCode, message: &str, csrf: String) -> Response {
        let cookie = session::set_login_cookie(&csrf, web.secure);
        let mut response =
            (code, render(&LoginPage { nav: None, message: message.into(), csrf })).into_response();
        response.headers_mut().insert(header::SET_COOKIE, cookie);
        response
    }
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    ended: Option<String>,
}

pub(super) async fn login_form(
    State(web): WebState,
    headers: axum::http::HeaderMap,
    Query(q): Query<LoginQuery>,
) -> Response {
    if web.auth.is_open() {
        // Nothing to log in with: a session (for the form tokens) at once.
        return logged_in(&web, None, "/files");
    }
    let message = match q.ended {
        Some(_) => "Your session ended: its token was removed, or the server restarted. Log in again.",
        None => "",
    };
    // A login page open in another tab keeps working: the cookie's token
    // is kept while it is one of ours in shape.
    let csrf = session::named_cookie(&headers, session::LOGIN_COOKIE)
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(session::random_hex, str::to_owned);
    LoginPage::answer(&web, StatusCode::OK, message, csrf)
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    #[serde(default)]
    csrf: String,
}

pub(super) async fn login(
    State(web): WebState,
    headers: axum::http::HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let cookie = session::named_cookie(&headers, session::LOGIN_COOKIE).unwrap_or_default();
    if !session::same_secret(cookie, &form.csrf) {
        return refused(
            StatusCode::FORBIDDEN,
            "csrf",
            "this login did not come from this dashboard's login page (its form token is missing \
             or stale): open the login page again",
        );
    }
    let token = form.token.trim();
    match web.auth.check(Some(token)) {
        Ok(p) => {
            let home = if p.allows(Need::Read) { "/files" } else { "/status" };
            logged_in(&web, Some(token.to_owned()), home)
        }
        Err(_) => {
            LoginPage::answer(&web, StatusCode::UNAUTHORIZED, "That token is not valid here.", form.csrf)
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

/// Ends the session (its form token checked first: another site cannot
/// log a browser out).
pub(super) async fn logout(
    State(web): WebState,
    headers: axum::http::HeaderMap,
    _checked: Checked<CsrfForm>,
) -> Response {
    if let Some(id) = session::cookie_of(&headers) {
        web.sessions.remove(id);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, session::set_cookie(None, web.secure));
    response
}

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

/// A form about one version of one file: delete it, or restore it.
#[derive(Deserialize)]
pub(super) struct VersionForm {
    #[serde(default)]
    csrf: String,
    path: String,
    version: u64,
}
