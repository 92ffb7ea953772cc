//! The web dashboard: browse, upload, download and delete files, locks,
//! the change feed live, and the service's state, in a browser.
//!
//! The dashboard is a client of the server's own gRPC services, called in
//! process (the tonic clients drive the services' tower stacks directly,
//! with no socket in between). So every page goes through the same
//! authentication, permission checks, write path and refusals as any other
//! client: a read-only token's forged form post is refused by the service,
//! not only hidden by the page.
//!
//! - [`session`]: logins (a token, then a cookie) and form tokens (CSRF).
//! - `pages`: the handlers and their templates (`templates/`, compiled in
//!   by askama, which escapes every value).
//! - Scripts and styles are files of this crate, compiled in: the pages
//!   load nothing from elsewhere, and the Content-Security-Policy allows no
//!   inline script.

// A refusal is the whole page that says so, returned as soon as it is
// known (`Result<_, Response>`, as axum's extractors do).
#![allow(clippy::result_large_err)]

mod pages;
mod session;
mod tls;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
};

use axum::{
    Form, Router,
    extract::{FromRequest, FromRequestParts, Request},
    http::{HeaderValue, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use syncstore::pb::{
    admin_client::AdminClient, admin_server::AdminServer, file_sync_client::FileSyncClient,
    file_sync_server::FileSyncServer, history_client::HistoryClient, history_server::HistoryServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;

use crate::{AdminService, Authenticator, FileSyncService, HistoryService, auth::Principal};
use session::{Session, Sessions};

/// The default address of the dashboard: loopback only, like Syncthing's
/// GUI on 127.0.0.1:8384 (one port up, so both can run on one machine).
pub const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8385";

/// Largest body of a form post (uploads excepted).
const FORM_LIMIT: usize = 8 << 20;

/// A service as the server serves it: behind the authenticator.
type Authed<S> = InterceptedService<S, Authenticator>;

/// The server's services the dashboard calls.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    pub(crate) files: Authed<FileSyncServer<FileSyncService>>,
    pub(crate) history: Authed<HistoryServer<HistoryService>>,
    pub(crate) admin: Authed<AdminServer<AdminService>>,
    /// `FileSync` without the authenticator, for share links only: their
    /// requests carry the link's read-only principal (`Principal::share`),
    /// put there by `pages`' share handlers after checking the link.
    pub(crate) shared_files: FileSyncServer<FileSyncService>,
    /// The server's counters, shown on the service page to whoever the
    /// `Admin` service's `Status` answers (an admin token).
    pub(crate) metrics: crate::ServerMetrics,
}

/// What every handler shares.
#[derive(Debug)]
struct Web {
    services: Services,
    /// The share links' records.
    store: crate::Store,
    /// Share links unlocked with their password: grant (a cookie) to link
    /// id.
    grants: session::Grants,
    auth: Authenticator,
    sessions: Sessions,
    /// Where uploads through the page are spooled (to learn their hash
    /// before the upload's header) on their way to the write path.
    spool: PathBuf,
    /// Whether the browser reaches the dashboard over TLS (cookies are
    /// then Secure).
    secure: bool,
    /// The TLS acceptor, when the server has a certificate.
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Largest file the server accepts.
    max_file_size: u64,
    shutdown: CancellationToken,
}

/// The dashboard of one server, ready to serve.
#[derive(Debug)]
pub(crate) struct Dashboard(Arc<Web>);

impl Dashboard {
    pub(crate) fn new(
        services: Services,
        store: crate::Store,
        auth: Authenticator,
        tls: Option<&crate::TlsConfig>,
        spool: PathBuf,
        max_file_size: u64,
        shutdown: CancellationToken,
    ) -> crate::Result<Self> {
        let tls = tls.map(tls::acceptor).transpose()?;
        // Spooled uploads that a crash left behind are of no use to anyone.
        let spooled =
            |e: std::io::Error| crate::Error::Config(format!("the web dashboard's upload folder: {e}"));
        if spool.exists() {
            std::fs::remove_dir_all(&spool).map_err(spooled)?;
        }
        std::fs::create_dir_all(&spool).map_err(spooled)?;
        Ok(Self(Arc::new(Web {
            services,
            store,
            grants: Default::default(),
            auth,
            sessions: Sessions::default(),
            spool,
            secure: tls.is_some(),
            tls,
            max_file_size,
            shutdown,
        })))
    }

    /// Serves the dashboard on `listener` until shutdown.
    pub(crate) async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        let addr = listener.local_addr()?;
        let shutdown = self.0.shutdown.clone();
        let scheme = if self.0.tls.is_some() { "https" } else { "http" };
        tracing::info!(url = %format!("{scheme}://{addr}/"), "web dashboard");
        match self.0.tls.clone() {
            Some(config) => {
                let listener = tls::TlsListener::new(listener, config.into())?;
                axum::serve(listener, router(self.0)).with_graceful_shutdown(shutdown.cancelled_owned()).await
            }
            None => {
                axum::serve(listener, router(self.0)).with_graceful_shutdown(shutdown.cancelled_owned()).await
            }
        }
    }
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/files") }))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/files", get(pages::files))
        .route("/file", get(pages::file))
        .route("/download", get(pages::download))
        // Uploads stream to the spool, whatever their size (the server's
        // largest file is checked as they come).
        .route("/upload", post(pages::upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/mkdir", post(pages::mkdir))
        .route("/delete", post(pages::delete))
        .route("/move", post(pages::move_file))
        .route("/labels", get(pages::labels))
        .route("/label", post(pages::label))
        .route("/restore", post(pages::restore))
        .route("/trash", get(pages::trash))
        .route("/undelete", post(pages::undelete))
        .route("/rewind", get(pages::rewind_preview).post(pages::rewind))
        .route("/shares", get(pages::shares))
        .route("/share", post(pages::share))
        .route("/unshare", post(pages::unshare))
        .route("/s/{id}", get(pages::shared).post(pages::unlock_share))
        .route("/s/{id}/download", get(pages::shared_download))
        .route("/locks", get(pages::locks))
        .route("/lock", post(pages::lock))
        .route("/unlock", post(pages::unlock))
        .route("/status", get(pages::status))
        .route("/events", get(pages::events))
        .route("/static/app.js", get(|| asset("text/javascript", include_str!("static/app.js"))))
        .route("/static/style.css", get(|| asset("text/css", include_str!("static/style.css"))))
        // Every other form is read whole: a bound keeps a huge post from
        // taking the server's memory (a trash form of a thousand long paths
        // is far below it).
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn(security_headers))
        .with_state(web)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The Content-Security-Policy of every page: nothing but this server's
/// own scripts, styles and forms; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// The logged-in person behind a request: their session and whom its token
/// stands for now. A request without a live session is sent to the login
/// page (a JSON-less redirect: every page is a document).
struct Viewer {
    session: Arc<Session>,
    principal: Principal,
}

impl Viewer {
    /// A gRPC request carrying this session's token.
    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.session.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert(syncstore::connect::AUTHORIZATION, value);
        }
        request
    }

    fn files(&self, web: &Web) -> FileSyncClient<Authed<FileSyncServer<FileSyncService>>> {
        FileSyncClient::new(web.services.files.clone())
    }

    fn history(&self, web: &Web) -> HistoryClient<Authed<HistoryServer<HistoryService>>> {
        HistoryClient::new(web.services.history.clone())
    }

    fn admin(&self, web: &Web) -> AdminClient<Authed<AdminServer<AdminService>>> {
        AdminClient::new(web.services.admin.clone())
    }

    /// Refuses a form post that does not carry this session's form token.
    fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if self.session.csrf_matches(sent) {
            return Ok(());
        }
        Err(pages::refused(
            StatusCode::FORBIDDEN,
            "csrf",
            "this form did not come from this dashboard (its form token is missing or stale): \
             reload the page and try again",
        ))
    }
}

/// A form with the session's form token in its `csrf` field.
trait CsrfField {
    fn csrf(&self) -> &str;
}

/// A form post of a logged-in viewer that carried the session's form
/// token: the viewer and the form. A post without it is refused (403,
/// `csrf`) before its handler runs, whatever else it holds.
struct Checked<T>(Viewer, T);

impl<T> FromRequest<Arc<Web>> for Checked<T>
where
    T: serde::de::DeserializeOwned + CsrfField + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, web: &Arc<Web>) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let viewer = Viewer::from_request_parts(&mut parts, web).await?;
        let Form(form) = Form::<T>::from_request(Request::from_parts(parts, body), web)
            .await
            .map_err(IntoResponse::into_response)?;
        viewer.check_csrf(form.csrf())?;
        Ok(Self(viewer, form))
    }
}

impl FromRequestParts<Arc<Web>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Self::Rejection> {
        let Some(id) = session::cookie_of(&parts.headers) else {
            return Err(Redirect::to("/login").into_response());
        };
        let Some(session) = web.sessions.get(id) else {
            return Err(Redirect::to("/login").into_response());
        };
        let ended = &session.ended;
        match web.auth.check(session.token.as_deref()) {
            Ok(principal) if !ended.load(Ordering::Relaxed) => Ok(Self { session, principal }),
            // The token was removed: so is every session it opened.
            _ => {
                ended.store(true, Ordering::Relaxed);
                Err(Redirect::to("/login?ended=1").into_response())
            }
        }
    }
}

/// Refuses a dashboard address that would expose an open server (one
/// without tokens) beyond loopback, as for the gRPC address.
pub(crate) fn check_address(
    addr: SocketAddr,
    auth: &Authenticator,
    insecure_no_auth: bool,
    with_tls: bool,
) -> crate::Result<()> {
    if auth.is_open() && !addr.ip().is_loopback() && !insecure_no_auth {
        return Err(crate::Error::Config(format!(
            "refusing to serve the web dashboard on {addr} without authentication: give --tokens FILE, \
             keep --web-listen on a loopback address, or accept the risk with --insecure-no-auth"
        )));
    }
    if !auth.is_open() && !addr.ip().is_loopback() && !with_tls {
        tracing::warn!(%addr, "the web dashboard serves without TLS: logins travel in clear text (give --tls-cert and --tls-key)");
    }
    Ok(())
}
