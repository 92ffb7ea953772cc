//! Files: a folder's listing, a file's page, download, and the writes
//! (upload, new folder, delete, rename or move).

use super::*;

#[derive(Template)]
#[template(path = "files.html")]
struct FilesPage {
    nav: Option<Nav>,
    dir: String,
    crumbs: Vec<(String, String)>,
    query: String,
    rows: Vec<Row>,
    /// What the rows are ("200 item(s)", "items 201–400").
    summary: String,
    /// Paged by name: the link back goes to the first page.
    by_name: bool,
    /// The query strings of the previous and next pages, if any.
    prev: Option<String>,
    next: Option<String>,
    head_seq: u64,
}

#[derive(Deserialize)]
pub(in crate::web) struct FilesQuery {
    dir: Option<String>,
    q: Option<String>,
    sort: Option<String>,
    /// A page by number (sorted by size or time, and search results).
    page: Option<usize>,
    /// A page by name: the listing's cursor after the previous page's last
    /// row, and that page's first row's number.
    after: Option<String>,
    from: Option<usize>,
}

/// A folder's listing. By name (the default) it reads one page of the
/// folder's own level through `List`'s `one_level`, continued by its
/// cursor: the server seeks past each subfolder, so the page's cost does
/// not grow with what lies below the folder. Sorted by size or time it
/// reads the whole level (still nothing below it) and sorts; a search
/// reads every entry below the folder and matches each.
pub(in crate::web) async fn files(State(web): WebState, v: Viewer, Query(q): Query<FilesQuery>) -> Response {
    let dir = match folder(q.dir.as_deref()) {
        Ok(d) => d,
        Err(r) => return r,
    };
    let query = q.q.unwrap_or_default().trim().to_owned();
    let needle = query.to_lowercase();
    let sort = q.sort.unwrap_or_else(|| "name".into());
    let by_name = needle.is_empty() && sort != "size" && sort != "modified";
    let after = q.after.unwrap_or_default();
    let request = pb::ListRequest {
        prefix: dir.clone(),
        include_deleted: false,
        one_level: needle.is_empty(),
        after: if by_name { after.clone() } else { String::new() },
        // One more than a page: whether a next page exists.
        limit: if by_name { PAGE_ROWS as u32 + 1 } else { 0 },
    };
    let mut stream = match v.files(&web).list(v.call(request)).await {
        Ok(s) => s.into_inner(),
        Err(s) => return refusal(&s),
    };
    let mut head_seq = 0;
    let mut rows = Vec::new();
    let mut cursors = Vec::new();
    let below = if dir.is_empty() { String::new() } else { format!("{dir}/") };
    while let Some(message) = stream.next().await {
        let message = match message {
            Ok(m) => m,
            Err(s) => return refusal(&s),
        };
        head_seq = message.head_seq;
        let Some(e) = message.entry else { continue };
        let Some(rel) = e.path.strip_prefix(below.as_str()) else { continue };
        if !needle.is_empty() && !rel.to_lowercase().contains(&needle) {
            continue;
        }
        // Sizes and times are formatted for the rows shown only.
        rows.push(Row {
            name: rel.to_owned(),
            path: e.path.clone(),
            folder: e.folder,
            size: String::new(),
            modified: String::new(),
            version: e.version,
            bytes: e.size,
            mtime_ns: e.mtime_ns,
        });
        cursors.push(message.cursor);
    }
    let link = |extra: String| {
        format!("dir={}&q={}&sort={}&{extra}", urlencode(&dir), urlencode(&query), urlencode(&sort))
    };
    let (rows, summary, prev, next) = if by_name {
        // Only the first page and the next are linked: a page by name
        // knows where it starts, not where the one before it did.
        let from = q.from.unwrap_or(1).max(1);
        let next = (rows.len() > PAGE_ROWS)
            .then(|| link(format!("after={}&from={}", urlencode(&cursors[PAGE_ROWS - 1]), from + PAGE_ROWS)));
        rows.truncate(PAGE_ROWS);
        let summary = match (after.is_empty() && next.is_none(), rows.len()) {
            (true, n) => format!("{n} item(s)"),
            (false, 0) => "no more items".to_owned(),
            (false, n) => format!("items {from}–{}", from + n - 1),
        };
        let prev = (!after.is_empty()).then(|| link(String::new()));
        (rows, summary, prev, next)
    } else {
        match sort.as_str() {
            "size" => rows.sort_by_key(|r| std::cmp::Reverse(r.bytes)),
            "modified" => rows.sort_by_key(|r| std::cmp::Reverse(r.mtime_ns)),
            _ => {}
        }
        let total = rows.len();
        let pages = total.div_ceil(PAGE_ROWS).max(1);
        let page = q.page.unwrap_or(1).clamp(1, pages);
        let rows: Vec<Row> = rows.into_iter().skip((page - 1) * PAGE_ROWS).take(PAGE_ROWS).collect();
        let summary = match pages {
            1 => format!("{total} item(s)"),
            _ => format!("{total} item(s), page {page} of {pages}"),
        };
        let prev = (page > 1).then(|| link(format!("page={}", page - 1)));
        let next = (page < pages).then(|| link(format!("page={}", page + 1)));
        (rows, summary, prev, next)
    };
    let rows = rows
        .into_iter()
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
        rows,
        summary,
        by_name,
        prev,
        next,
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
pub(in crate::web) struct PathQuery {
    path: String,
    version: Option<u64>,
}

pub(in crate::web) async fn file(State(web): WebState, v: Viewer, Query(q): Query<PathQuery>) -> Response {
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

pub(in crate::web) async fn download(
    State(web): WebState,
    v: Viewer,
    Query(q): Query<PathQuery>,
) -> Response {
    let request =
        pb::DownloadRequest { path: q.path.clone(), version: q.version.unwrap_or(0), have_hash: vec![] };
    match v.files(&web).download(v.call(request)).await {
        Ok(s) => streamed(s.into_inner()).await,
        Err(s) => refusal(&s),
    }
}

/// A download's messages as an HTTP body: the entry gives its length and
/// name, its chunks the body.
pub(super) async fn streamed(mut stream: tonic::Streaming<pb::DownloadResponse>) -> Response {
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

pub(super) fn urlencode(s: &str) -> String {
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
pub(in crate::web) async fn upload(State(web): WebState, v: Viewer, mut form: Multipart) -> Response {
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
pub(in crate::web) struct MkdirForm {
    #[serde(default)]
    pub(super) csrf: String,
    #[serde(default)]
    dir: String,
    name: String,
}

pub(in crate::web) async fn mkdir(State(web): WebState, Checked(v, form): Checked<MkdirForm>) -> Response {
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

/// Deletes `path` as the viewer, if it is still at `version` (with the
/// viewer's own lock on it, if any).
async fn delete_version(web: &Web, v: &Viewer, path: &str, version: u64) -> Result<(), tonic::Status> {
    let request = pb::DeleteRequest {
        path: path.to_owned(),
        base_version: version,
        client_id: WEB_CLIENT_ID.into(),
        lock_token: own_lock_token(web, v, path).await,
    };
    v.files(web).delete(v.call(request)).await.map(|_| ())
}

pub(in crate::web) async fn delete(State(web): WebState, Checked(v, form): Checked<VersionForm>) -> Response {
    match delete_version(&web, &v, &form.path, form.version).await {
        Ok(()) => back_to_folder(parent_of(&form.path)),
        Err(s) => refusal(&s),
    }
}

// ---------------------------------------------------------------------------
// Rename or move, and labels

#[derive(Deserialize)]
pub(in crate::web) struct MoveForm {
    #[serde(default)]
    pub(super) csrf: String,
    path: String,
    version: u64,
    to: String,
}

/// Renames or moves a file as clients do: the content written at the new
/// path (by hash: nothing travels), recorded as a move so that its history
/// follows it, then the old path deleted, each checked against the version
/// the page showed.
pub(in crate::web) async fn move_file(State(web): WebState, Checked(v, form): Checked<MoveForm>) -> Response {
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
    match delete_version(&web, &v, &form.path, form.version).await {
        Ok(()) => Redirect::to(&format!("/file?path={}", urlencode(&to))).into_response(),
        // The copy stays: nothing is lost, and the page says why the old
        // name does too.
        Err(s) => refusal(&s),
    }
}
