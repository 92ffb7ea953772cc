//! The service's state, and the change feed as server-sent events.

use super::*;

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    nav: Option<Nav>,
    rows: Vec<(&'static str, String)>,
    admin: Vec<(&'static str, String)>,
    admin_error: String,
    /// The server's counters since it started (admins only).
    counters: Vec<(&'static str, String)>,
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

pub(in crate::web) async fn status(State(web): WebState, v: Viewer) -> Response {
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
    let mut counters = Vec::new();
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
                counters = counters_of(&web.services.metrics);
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
    render(&StatusPage { nav: Some(nav(&web, &v)), rows, admin, admin_error, counters, clients })
}

/// The key counters of the server's metrics (all of them at `/metrics`
/// with `--metrics-listen`), as the service page shows them.
fn counters_of(m: &crate::ServerMetrics) -> Vec<(&'static str, String)> {
    let commits = m.commit_seconds.get_sample_count();
    let mean_ms = match commits {
        0 => 0.0,
        n => m.commit_seconds.get_sample_sum() * 1000.0 / n as f64,
    };
    vec![
        ("Uploads", format!("{} ({})", m.uploads.get(), human_size(m.upload_bytes.get()))),
        ("Downloads", format!("{} ({})", m.downloads.get(), human_size(m.download_bytes.get()))),
        ("Deletions", m.deletes.get().to_string()),
        ("Commits", format!("{commits} ({mean_ms:.1} ms each on average)")),
        ("Refused or failed calls", m.errors_total().to_string()),
        ("Live subscriptions", m.subscribers.get().to_string()),
    ]
}

// ---------------------------------------------------------------------------
// Live

#[derive(Deserialize)]
pub(in crate::web) struct EventsQuery {
    #[serde(default)]
    after: u64,
}

/// The change feed as server-sent events (`change`, with the seq, kind,
/// path and client of each file change), from `after` on; the files page
/// follows it to show changes without a reload.
pub(in crate::web) async fn events(
    State(web): WebState,
    v: Viewer,
    Query(q): Query<EventsQuery>,
) -> Response {
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
