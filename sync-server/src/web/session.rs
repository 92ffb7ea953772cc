//! The dashboard's sessions: who a browser is logged in as, and the token
//! that guards its forms against cross-site requests.
//!
//! A session holds the token the person logged in with (never shown
//! again, never sent to the browser) and stands for it on every page. The
//! token is checked again on every request, so removing it from the token
//! file ends its sessions within the authenticator's reload interval.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, HeaderValue, header};
use rand::Rng;

/// The session cookie's name.
pub(super) const COOKIE: &str = "syncstore_session";

/// The login form's cookie: a random value the login page also puts in
/// its form, which the login's POST must carry in both (before there is a
/// session, whose form token guards every later form). Another site can
/// neither read the page's value nor make the browser send this cookie.
pub(super) const LOGIN_COOKIE: &str = "syncstore_login";

/// How long a login page's form token stays good.
const LOGIN_FORM_LIMIT: Duration = Duration::from_secs(3600);

/// How long a session lasts after its last request.
const IDLE_LIMIT: Duration = Duration::from_secs(12 * 3600);

/// Most sessions kept at once; past it, the least recently used goes.
const MAX_SESSIONS: usize = 10_000;

/// A logged-in browser.
#[derive(Debug)]
pub(super) struct Session {
    /// The token it logged in with (`None` on a server without tokens).
    pub(super) token: Option<String>,
    /// What every form of this session carries back (`csrf` field), so
    /// that another site cannot make the browser post to the dashboard.
    pub(super) csrf: String,
    /// Its token was removed: every request is sent to the login, saying
    /// so (the session is kept, so that a page's background requests do
    /// not take that message from the next page load).
    pub(super) ended: std::sync::atomic::AtomicBool,
}

impl Session {
    /// Whether `sent` is this session's form token (in time independent of
    /// where they differ).
    pub(super) fn csrf_matches(&self, sent: &str) -> bool {
        same_secret(&self.csrf, sent)
    }
}

/// Whether `sent` is `secret` (in time independent of where they differ);
/// never for an empty secret.
pub(super) fn same_secret(secret: &str, sent: &str) -> bool {
    let (a, b) = (secret.as_bytes(), sent.as_bytes());
    !a.is_empty() && a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Set-Cookie` value of the login form's token `value` (see
/// [`LOGIN_COOKIE`]): sent to the login only.
pub(super) fn set_login_cookie(value: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let limit = LOGIN_FORM_LIMIT.as_secs();
    let value =
        format!("{LOGIN_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={limit}{secure}");
    HeaderValue::from_str(&value).expect("a cookie of hex digits is a valid header")
}

/// The sessions of one server, in memory: a restart logs everyone out.
#[derive(Debug, Default)]
pub(super) struct Sessions(Mutex<HashMap<String, (Arc<Session>, Instant)>>);

impl Sessions {
    /// A new session for `token`; returns its id (the cookie's value).
    pub(super) fn create(&self, token: Option<String>) -> (String, Arc<Session>) {
        let session = Arc::new(Session { token, csrf: random_hex(), ended: Default::default() });
        (insert_bounded(&self.0, session.clone()), session)
    }

    /// The live session `id` names, marked as used now.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (session, used) = map.get_mut(id)?;
        if now.duration_since(*used) >= IDLE_LIMIT {
            map.remove(id);
            return None;
        }
        *used = now;
        Some(session.clone())
    }

    pub(super) fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Share links unlocked with their password, in memory: a grant id (the
/// cookie [`GRANT_COOKIE`], valid for its link's pages only) to the link's
/// id. A restart asks for the password again.
#[derive(Debug, Default)]
pub(super) struct Grants(Mutex<HashMap<String, (String, Instant)>>, Mutex<HashMap<String, (Instant, u32)>>);

/// Wrong passwords a link takes in [`GUESS_WINDOW`] before it refuses
/// every try (the right password too) until the window has passed: a
/// guesser gets a handful of tries a minute, whatever Argon2 costs.
const GUESSES: u32 = 10;

/// See [`GUESSES`].
const GUESS_WINDOW: Duration = Duration::from_secs(60);

/// The cookie that carries a share link's grant.
pub(super) const GRANT_COOKIE: &str = "syncstore_share";

impl Grants {
    /// A new grant for link `link_id`; returns its id.
    pub(super) fn create(&self, link_id: &str) -> String {
        insert_bounded(&self.0, link_id.to_owned())
    }

    /// Whether link `link_id` takes a password try now.
    pub(super) fn may_try(&self, link_id: &str) -> bool {
        let mut tries = self.1.lock().unwrap_or_else(|p| p.into_inner());
        match tries.get(link_id) {
            Some((since, _)) if since.elapsed() >= GUESS_WINDOW => {
                tries.remove(link_id);
                true
            }
            Some((_, failed)) => *failed < GUESSES,
            None => true,
        }
    }

    /// Counts a wrong password for link `link_id`.
    pub(super) fn failed(&self, link_id: &str) {
        let mut tries = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tries.retain(|_, (since, _)| now.duration_since(*since) < GUESS_WINDOW);
        tries.entry(link_id.to_owned()).or_insert((now, 0)).1 += 1;
    }

    /// Whether grant `id` unlocks link `link_id`.
    pub(super) fn unlocks(&self, id: &str, link_id: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).is_some_and(|(link, made)| link == link_id && made.elapsed() < IDLE_LIMIT)
    }
}

/// Adds `value` under a new random id, after dropping the entries idle for
/// [`IDLE_LIMIT`] and, at [`MAX_SESSIONS`], the least recently used one;
/// returns the id.
fn insert_bounded<V>(map: &Mutex<HashMap<String, (V, Instant)>>, value: V) -> String {
    let id = random_hex();
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    map.retain(|_, (_, used)| now.duration_since(*used) < IDLE_LIMIT);
    if map.len() >= MAX_SESSIONS
        && let Some(oldest) = map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
    {
        map.remove(&oldest);
    }
    map.insert(id.clone(), (value, now));
    id
}

/// The value of cookie `name` among a request's cookies.
pub(super) fn named_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The session id a request's cookies carry.
pub(super) fn cookie_of(headers: &HeaderMap) -> Option<&str> {
    named_cookie(headers, COOKIE)
}

/// The `Set-Cookie` value that gives the browser session `id` (`None`:
/// ends it). HttpOnly (no script reads it), SameSite=Strict (no other site
/// sends it), Secure when the dashboard is served over TLS.
pub(super) fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let value = match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("a cookie of hex digits is a valid header")
}

/// 32 random bytes in hex.
pub(super) fn random_hex() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; syncstore_session=abc; b=2"));
        assert_eq!(cookie_of(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("syncstore_sessionx=abc"));
        assert_eq!(cookie_of(&h), None);
    }

    #[test]
    fn a_form_token_must_match_exactly() {
        let sessions = Sessions::default();
        let (id, s) = sessions.create(None);
        assert!(s.csrf_matches(&s.csrf.clone()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf[1..]));
        assert!(sessions.get(&id).is_some());
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }
}
