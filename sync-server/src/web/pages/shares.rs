//! Share links: making, listing and revoking them, and serving a link's
//! file or folder to anyone who has it.

use super::*;

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
pub(in crate::web) async fn shares(State(web): WebState, v: Viewer) -> Response {
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
pub(in crate::web) struct ShareForm {
    #[serde(default)]
    pub(super) csrf: String,
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
pub(in crate::web) async fn share(State(web): WebState, Checked(v, form): Checked<ShareForm>) -> Response {
    if let Err(r) = must_write(&v) {
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
            let listing = files.list(v.call(pb::ListRequest {
                prefix: path.clone(),
                include_deleted: false,
                ..Default::default()
            }));
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
pub(in crate::web) struct UnshareForm {
    #[serde(default)]
    pub(super) csrf: String,
    id: String,
}

pub(in crate::web) async fn unshare(
    State(web): WebState,
    Checked(v, form): Checked<UnshareForm>,
) -> Response {
    if let Err(r) = must_write(&v) {
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

/// The link `id` if it exists and works now (not revoked, not expired),
/// its record read again for this request; `Err` is the page to answer
/// instead.
async fn live_link(web: &Web, id: &str) -> Result<crate::storage::Share, Response> {
    match web.store.share(id).await {
        Ok(Some(l)) if l.live_at(crate::clock::now_ms()) => Ok(l),
        Ok(_) => Err(no_such_link()),
        Err(e) => Err(refusal(&e.into())),
    }
}

/// The link `id` if it works now and this browser may use it; `Err` is
/// the page to answer instead (no link, or its password form).
async fn open_link(
    web: &Web,
    id: &str,
    headers: &axum::http::HeaderMap,
) -> Result<crate::storage::Share, Response> {
    let link = live_link(web, id).await?;
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
pub(in crate::web) struct SharedQuery {
    #[serde(default)]
    dir: String,
    #[serde(default)]
    path: String,
}

/// A link's page: its file, or its folder's files (a folder at a time).
pub(in crate::web) async fn shared(
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
        .list(as_link(
            &link,
            pb::ListRequest {
                prefix: at.clone(),
                include_deleted: false,
                one_level: true,
                ..Default::default()
            },
        ))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    // One level: each entry is a file or folder of this folder, never one
    // further below.
    let below = format!("{at}/");
    let mut rows = Vec::new();
    while let Some(m) = stream.next().await {
        let Some(e) = (match m {
            Ok(m) => m.entry,
            Err(s) => return refusal(&s),
        }) else {
            continue;
        };
        let Some(name) = e.path.strip_prefix(below.as_str()) else { continue };
        let folder = e.folder;
        rows.push(Row {
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
    rows.sort_by(|a, b| b.folder.cmp(&a.folder).then_with(|| a.name.cmp(&b.name)));
    render(&SharePage { nav: None, id, name, folder: true, dir, size: String::new(), rows })
}

#[derive(Deserialize)]
pub(in crate::web) struct SharePasswordForm {
    #[serde(default)]
    password: String,
}

/// A link's password form: the right one unlocks the link for this browser.
pub(in crate::web) async fn unlock_share(
    State(web): WebState,
    axum::extract::Path(id): axum::extract::Path<String>,
    Form(form): Form<SharePasswordForm>,
) -> Response {
    let link = match live_link(&web, &id).await {
        Ok(l) => l,
        Err(r) => return r,
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
pub(in crate::web) async fn shared_download(
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
