//! Locks: the namespace's live locks; lock and unlock.

use super::*;

#[derive(Template)]
#[template(path = "locks.html")]
struct LocksPage {
    nav: Option<Nav>,
    locks: Vec<LockRow>,
    break_locks: bool,
}

pub(in crate::web) async fn locks(State(web): WebState, v: Viewer) -> Response {
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
pub(in crate::web) struct LockForm {
    #[serde(default)]
    pub(super) csrf: String,
    path: String,
    #[serde(default)]
    note: String,
    ttl_seconds: Option<u32>,
}

pub(in crate::web) async fn lock(State(web): WebState, Checked(v, form): Checked<LockForm>) -> Response {
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
pub(in crate::web) struct UnlockForm {
    #[serde(default)]
    pub(super) csrf: String,
    lock_id: String,
    force: Option<String>,
}

pub(in crate::web) async fn unlock(State(web): WebState, Checked(v, form): Checked<UnlockForm>) -> Response {
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
