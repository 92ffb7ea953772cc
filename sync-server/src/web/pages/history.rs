//! History: restore a version, the trash and undelete, rewind (previewed
//! first), labels.

use super::*;

/// A version's point.
fn at_version(version: u64) -> Option<pb::Point> {
    Some(pb::Point { at: Some(pb::point::At::Version(version)) })
}

/// Makes a kept version the file's current content again, as a new change.
pub(in crate::web) async fn restore(
    State(web): WebState,
    Checked(v, form): Checked<VersionForm>,
) -> Response {
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
pub(in crate::web) struct TrashQuery {
    under: Option<String>,
    glob: Option<String>,
    restored: Option<u64>,
}

/// Most deleted files the trash page lists; a search narrows it.
const TRASH_ROWS: u32 = 1000;

pub(in crate::web) async fn trash(State(web): WebState, v: Viewer, Query(q): Query<TrashQuery>) -> Response {
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
pub(in crate::web) async fn undelete(
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
pub(in crate::web) struct RewindQuery {
    #[serde(default)]
    pub(super) csrf: String,
    under: Option<String>,
    to: Option<String>,
}

/// The point a rewind form names: a version number, a time (UTC,
/// `YYYY-MM-DDTHH:MM[:SS]`, as a datetime field sends it) or a label.
pub(super) fn point_of(to: &str) -> Result<pb::Point, Response> {
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

pub(in crate::web) async fn rewind_preview(
    State(web): WebState,
    v: Viewer,
    Query(q): Query<RewindQuery>,
) -> Response {
    rewind_run(&web, &v, q, true).await
}

pub(in crate::web) async fn rewind(State(web): WebState, Checked(v, q): Checked<RewindQuery>) -> Response {
    rewind_run(&web, &v, q, false).await
}

// ---------------------------------------------------------------------------
// Labels

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

pub(in crate::web) async fn labels(State(web): WebState, v: Viewer) -> Response {
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
pub(in crate::web) struct LabelForm {
    #[serde(default)]
    pub(super) csrf: String,
    name: String,
    #[serde(default)]
    note: String,
}

/// Labels the namespace's state now.
pub(in crate::web) async fn label(State(web): WebState, Checked(v, form): Checked<LabelForm>) -> Response {
    let request = pb::SetLabelRequest { name: form.name.trim().to_owned(), at: None, note: form.note };
    match v.history(&web).set_label(v.call(request)).await {
        Ok(_) => Redirect::to("/labels").into_response(),
        Err(s) => refusal(&s),
    }
}
