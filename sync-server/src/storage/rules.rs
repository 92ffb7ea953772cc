//! The domain rules of a write and of a lock, as pure functions: a backend
//! fetches the rows a rule needs (the path's entry, its lock row, a live
//! file above it, a live entry below it), the rule decides, and the backend
//! writes what was decided. Every backend shares them, and they are tested
//! here with no database.

use std::time::Duration;

use syncstore::{
    Entry, Lock, RelPath,
    lock::{DEFAULT_LOCK_TTL, MAX_LOCK_TTL},
};

use super::{Actor, LockEnd, LockRequest};
use crate::error::{Error, Result};

/// Checks `base_version` against the path's current entry: 0 means the path
/// must not exist (or only as a tombstone), anything else must be the
/// current version.
pub(crate) fn check_base(path: &RelPath, current: Option<&Entry>, base: u64) -> Result<()> {
    let ok = match current {
        None => base == 0,
        Some(e) if e.is_deleted() => base == 0 || base == e.version,
        Some(e) => base == e.version,
    };
    if ok {
        return Ok(());
    }
    Err(Error::VersionConflict {
        path: path.to_string(),
        current: current.map_or(0, |e| e.version),
        deleted: current.is_none_or(Entry::is_deleted),
        base,
    })
}

/// Checks that a write of `path` by `who` carrying `token` may pass, given
/// the path's lock row (`None` if it has none, in force or not) at `now`.
/// A lock admits only its holder with its current token; a token the path's
/// lock does not carry is refused (fencing).
pub(crate) fn check_write(
    path: &RelPath,
    lock: Option<&Lock>,
    who: &Actor,
    token: u64,
    now: i64,
) -> Result<()> {
    match in_force(lock, now) {
        Some(l) if who.holds(l) && l.token == token => Ok(()),
        Some(l) if who.holds(l) => Err(Error::StaleLock(format!(
            "{path} is locked by this client (lock {}), but the write carries token {token}, not the lock's {}",
            l.lock_id, l.token
        ))),
        Some(l) => Err(Error::Locked(locked_message(l))),
        None if token != 0 => Err(Error::StaleLock(format!(
            "the write carries lock token {token}, but {path} holds no lock with it: \
             the lock expired, was released or was broken"
        ))),
        None => Ok(()),
    }
}

/// Checks a requested time-to-live; 0 means the default.
pub(crate) fn lock_ttl(ttl_seconds: u32) -> Result<u32> {
    let ttl = match ttl_seconds {
        0 => DEFAULT_LOCK_TTL,
        s => Duration::from_secs(s.into()),
    };
    if ttl > MAX_LOCK_TTL {
        return Err(Error::invalid(format!(
            "a lock lasts at most {} seconds; {ttl_seconds} were asked for",
            MAX_LOCK_TTL.as_secs()
        )));
    }
    Ok(ttl.as_secs() as u32)
}

/// The lock a `Lock` call gets, given the path's lock row (`current`) at
/// `now`: the caller's own lock refreshed (same id and token), or a new one
/// whose token is `seq`, the granting change's, and whose id `new_id`
/// makes. `ttl_seconds` has passed [`lock_ttl`]. Someone else's lock in
/// force refuses it.
pub(crate) fn grant_lock(
    current: Option<Lock>,
    req: LockRequest,
    ttl_seconds: u32,
    now: i64,
    seq: u64,
    new_id: impl FnOnce() -> String,
) -> Result<Lock> {
    let expires_ms = now + i64::from(ttl_seconds) * 1000;
    Ok(match current.filter(|l| !l.expired_at(now)) {
        Some(l) if !req.who.holds(&l) => return Err(Error::Locked(locked_message(&l))),
        Some(l) => Lock {
            expires_ms,
            ttl_seconds,
            note: if req.note.is_empty() { l.note.clone() } else { req.note },
            ..l
        },
        None => Lock {
            lock_id: new_id(),
            holder: if req.holder.is_empty() { req.who.client_id.clone() } else { req.holder },
            path: req.path,
            client_id: req.who.client_id,
            principal: req.who.principal,
            note: req.note,
            acquired_ms: now,
            expires_ms,
            ttl_seconds,
            token: seq,
        },
    })
}

/// The lock `lock_id` refreshed by `who` at `now` to last `ttl_seconds`
/// (passed [`lock_ttl`]) more, given its row (`current`). Only its holder
/// may, and only while it is in force.
pub(crate) fn refresh_lock(
    lock_id: &str,
    current: Option<Lock>,
    who: &Actor,
    ttl_seconds: u32,
    now: i64,
) -> Result<Lock> {
    let l = current.filter(|l| !l.expired_at(now)).ok_or_else(|| gone(lock_id))?;
    if !who.holds(&l) {
        return Err(Error::Locked(format!("{}; only its holder may refresh it", locked_message(&l))));
    }
    Ok(Lock { expires_ms: now + i64::from(ttl_seconds) * 1000, ttl_seconds, ..l })
}

/// How the lock `lock_id` ends when `who` unlocks it at `now`, given its
/// row (`current`): an expired lock ends as expired whoever asks, its
/// holder releases it, anyone else breaks it only with `force` (whether the
/// caller may use force is checked before).
pub(crate) fn end_lock(
    lock_id: &str,
    current: Option<&Lock>,
    who: &Actor,
    force: bool,
    now: i64,
) -> Result<LockEnd> {
    let lock = current.ok_or_else(|| gone(lock_id))?;
    if lock.expired_at(now) {
        Ok(LockEnd::Expired)
    } else if who.holds(lock) {
        Ok(LockEnd::Released)
    } else if force {
        Ok(LockEnd::Broken)
    } else {
        Err(Error::Locked(format!(
            "{}; only its holder may unlock it (or a token with the break-locks right, with force)",
            locked_message(lock)
        )))
    }
}

/// The folders of `path`, outermost first: where a live file would clash
/// with it.
pub(crate) fn folders_of(path: &RelPath) -> impl Iterator<Item = &str> {
    let p = path.as_str();
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// Checks that `path` can be a file (or, with `folder`, a folder entry),
/// given the first of its folders that is a live file (`file_above`, a
/// folder entry does not count) and, for a file, a live entry below it
/// (`live_below`): no client could hold both. A folder holds what lies
/// below it, so `live_below` is not asked for one.
pub(crate) fn check_clash(
    path: &RelPath,
    folder: bool,
    file_above: Option<&str>,
    live_below: Option<&str>,
) -> Result<()> {
    if let Some(above) = file_above {
        return Err(Error::PathClash(format!("{path} cannot be a file: {above} is a file, not a folder")));
    }
    match live_below {
        Some(below) if !folder => {
            Err(Error::PathClash(format!("{path} cannot be a file: it is a folder (it holds {below})")))
        }
        _ => Ok(()),
    }
}

/// The lock row if it is in force at `now`: a row past its expiry is not,
/// whether or not the sweeper has removed it yet.
fn in_force(lock: Option<&Lock>, now: i64) -> Option<&Lock> {
    lock.filter(|l| !l.expired_at(now))
}

fn locked_message(l: &Lock) -> String {
    let note = if l.note.is_empty() { String::new() } else { format!(" ({})", l.note) };
    let principal = if l.principal.is_empty() { String::new() } else { format!(", token {:?}", l.principal) };
    format!(
        "{} is locked by {} (client {}{principal}) until {}{note}",
        l.path,
        l.holder,
        l.client_id,
        syncstore::lock::format_ms(l.expires_ms)
    )
}

fn gone(lock_id: &str) -> Error {
    Error::LockNotHeld(format!("lock {lock_id} is not held any more: it was released, expired or was broken"))
}

#[cfg(test)]
mod tests {
    use syncstore::{Content, ContentHash};

    use super::*;

    const NOW: i64 = 1_000_000;

    fn path(p: &str) -> RelPath {
        RelPath::new(p).unwrap()
    }

    /// Client `client` of the principal "alice".
    fn who(client: &str) -> Actor {
        Actor::new("alice", client)
    }

    /// A lock on "f" held by alice's client `client`, with token 7, in
    /// force until `expires_ms`.
    fn lock(client: &str, expires_ms: i64) -> Lock {
        Lock {
            lock_id: "L".into(),
            path: path("f"),
            client_id: client.into(),
            principal: "alice".into(),
            holder: format!("{client}@host"),
            note: "editing".into(),
            acquired_ms: NOW - 1000,
            expires_ms,
            ttl_seconds: 60,
            token: 7,
        }
    }

    fn request(client: &str, note: &str) -> LockRequest {
        LockRequest {
            path: path("f"),
            ttl_seconds: 30,
            note: note.into(),
            who: who(client),
            holder: String::new(),
        }
    }

    fn entry(version: u64, live: bool) -> Entry {
        let content = live.then(|| Content {
            hash: ContentHash::of(b""),
            size: 0,
            mtime_ns: 0,
            executable: false,
            symlink: false,
            folder: false,
        });
        Entry { path: path("f"), version, content, client_id: "c".into() }
    }

    #[test]
    fn a_base_version_must_name_the_current_entry_or_a_new_path() {
        let f = path("f");
        assert!(check_base(&f, None, 0).is_ok());
        assert!(matches!(
            check_base(&f, None, 3),
            Err(Error::VersionConflict { current: 0, deleted: true, .. })
        ));
        assert!(check_base(&f, Some(&entry(3, true)), 3).is_ok());
        assert!(matches!(
            check_base(&f, Some(&entry(3, true)), 0),
            Err(Error::VersionConflict { current: 3, deleted: false, base: 0, .. })
        ));
        assert!(check_base(&f, Some(&entry(3, true)), 2).is_err());
        // Over a tombstone: a new file (0) or one that saw the deletion.
        assert!(check_base(&f, Some(&entry(4, false)), 0).is_ok());
        assert!(check_base(&f, Some(&entry(4, false)), 4).is_ok());
        assert!(check_base(&f, Some(&entry(4, false)), 3).is_err());
    }

    #[test]
    fn a_write_passes_a_lock_only_from_its_holder_with_its_token() {
        let f = path("f");
        let l = lock("A", NOW + 1);
        assert!(check_write(&f, Some(&l), &who("A"), 7, NOW).is_ok());
        assert!(matches!(check_write(&f, Some(&l), &who("A"), 0, NOW), Err(Error::StaleLock(_))));
        assert!(matches!(check_write(&f, Some(&l), &who("A"), 8, NOW), Err(Error::StaleLock(_))));
        assert!(
            matches!(check_write(&f, Some(&l), &who("B"), 7, NOW), Err(Error::Locked(m)) if m.contains("A@host"))
        );
        // The same client id under another principal is not the holder.
        assert!(matches!(check_write(&f, Some(&l), &Actor::new("bob", "A"), 7, NOW), Err(Error::Locked(_))));
        // A lock stored before principals were recorded: the client id alone.
        let old = Lock { principal: String::new(), ..l.clone() };
        assert!(check_write(&f, Some(&old), &Actor::new("bob", "A"), 7, NOW).is_ok());
    }

    #[test]
    fn a_write_with_a_token_the_path_does_not_hold_is_fenced_off() {
        let f = path("f");
        assert!(check_write(&f, None, &who("A"), 0, NOW).is_ok());
        assert!(matches!(check_write(&f, None, &who("A"), 7, NOW), Err(Error::StaleLock(_))));
        // An expired row is no lock, whether or not it was swept.
        let expired = lock("A", NOW);
        assert!(check_write(&f, Some(&expired), &who("B"), 0, NOW).is_ok());
        assert!(matches!(check_write(&f, Some(&expired), &who("A"), 7, NOW), Err(Error::StaleLock(_))));
    }

    #[test]
    fn ttls_are_bounded() {
        assert_eq!(lock_ttl(0).unwrap(), DEFAULT_LOCK_TTL.as_secs() as u32);
        assert_eq!(lock_ttl(5).unwrap(), 5);
        assert!(lock_ttl(MAX_LOCK_TTL.as_secs() as u32).is_ok());
        assert!(lock_ttl(MAX_LOCK_TTL.as_secs() as u32 + 1).is_err());
    }

    #[test]
    fn a_grant_makes_a_new_lock_or_refreshes_the_callers_own() {
        let fresh = grant_lock(None, request("A", ""), 30, NOW, 12, || "new".into()).unwrap();
        assert_eq!(
            (fresh.lock_id.as_str(), fresh.token, fresh.holder.as_str(), fresh.principal.as_str()),
            ("new", 12, "A", "alice"),
            "a new lock: its token is the granting seq, its holder the client id by default"
        );
        assert_eq!((fresh.acquired_ms, fresh.expires_ms, fresh.ttl_seconds), (NOW, NOW + 30_000, 30));

        // The holder's own lock: same id, token and acquisition; a new expiry.
        let own = grant_lock(Some(lock("A", NOW + 1)), request("A", ""), 30, NOW, 12, || panic!("no new id"))
            .unwrap();
        assert_eq!((own.lock_id.as_str(), own.token, own.acquired_ms), ("L", 7, NOW - 1000));
        assert_eq!(
            (own.expires_ms, own.note.as_str()),
            (NOW + 30_000, "editing"),
            "an empty note keeps the old"
        );
        let renamed =
            grant_lock(Some(lock("A", NOW + 1)), request("A", "review"), 30, NOW, 12, || "x".into());
        assert_eq!(renamed.unwrap().note, "review");

        // Someone else's lock in force refuses; an expired one is replaced.
        let taken = grant_lock(Some(lock("A", NOW + 1)), request("B", ""), 30, NOW, 12, || "x".into());
        assert!(matches!(taken, Err(Error::Locked(m)) if m.contains("A@host")));
        let after = grant_lock(Some(lock("A", NOW)), request("B", ""), 30, NOW, 12, || "x".into()).unwrap();
        assert_eq!((after.lock_id.as_str(), after.token, after.client_id.as_str()), ("x", 12, "B"));
    }

    #[test]
    fn only_the_holder_refreshes_a_lock_in_force() {
        let l = refresh_lock("L", Some(lock("A", NOW + 1)), &who("A"), 90, NOW).unwrap();
        assert_eq!((l.token, l.expires_ms, l.ttl_seconds), (7, NOW + 90_000, 90));
        assert!(matches!(
            refresh_lock("L", Some(lock("A", NOW + 1)), &who("B"), 90, NOW),
            Err(Error::Locked(_))
        ));
        assert!(matches!(
            refresh_lock("L", Some(lock("A", NOW)), &who("A"), 90, NOW),
            Err(Error::LockNotHeld(_))
        ));
        assert!(matches!(refresh_lock("L", None, &who("A"), 90, NOW), Err(Error::LockNotHeld(_))));
    }

    #[test]
    fn a_lock_ends_released_by_its_holder_broken_with_force_or_expired() {
        let live = lock("A", NOW + 1);
        assert_eq!(end_lock("L", Some(&live), &who("A"), false, NOW).unwrap(), LockEnd::Released);
        assert_eq!(end_lock("L", Some(&live), &who("A"), true, NOW).unwrap(), LockEnd::Released);
        assert!(matches!(end_lock("L", Some(&live), &who("B"), false, NOW), Err(Error::Locked(_))));
        assert_eq!(end_lock("L", Some(&live), &who("B"), true, NOW).unwrap(), LockEnd::Broken);
        let expired = lock("A", NOW);
        assert_eq!(end_lock("L", Some(&expired), &who("B"), false, NOW).unwrap(), LockEnd::Expired);
        assert!(matches!(end_lock("L", None, &who("A"), true, NOW), Err(Error::LockNotHeld(_))));
    }

    #[test]
    fn a_path_clashes_with_a_file_above_it_and_a_file_with_entries_below() {
        assert_eq!(folders_of(&path("a/b/c")).collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(folders_of(&path("a")).count(), 0);
        let p = path("a/b");
        assert!(check_clash(&p, false, None, None).is_ok());
        assert!(
            matches!(check_clash(&p, false, Some("a"), None), Err(Error::PathClash(m)) if m.contains("a is a file"))
        );
        assert!(matches!(check_clash(&p, true, Some("a"), None), Err(Error::PathClash(_))));
        assert!(
            matches!(check_clash(&p, false, None, Some("a/b/c")), Err(Error::PathClash(m)) if m.contains("holds a/b/c"))
        );
        assert!(check_clash(&p, true, None, Some("a/b/c")).is_ok(), "a folder holds what lies below it");
    }
}
