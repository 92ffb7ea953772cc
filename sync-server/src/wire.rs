//! The server's side of the wire: every conversion between storage's types
//! ([`Change`], [`What`], [`LockEnd`], [`Actor`]) and their `pb` messages,
//! for `Subscribe`, the lock calls and replication alike. Storage keeps its
//! own types and never builds a wire message for a caller.

use syncstore::{Lock, pb};

use crate::error::{Error, Result};
use crate::storage::{Actor, Change, LockEnd, What, retention::Retention};

/// The kind of event a change is on the wire.
pub(crate) fn kind(change: &Change) -> pb::change_event::Kind {
    use pb::change_event::Kind;
    match &change.what {
        What::File(e) if e.is_deleted() => Kind::Delete,
        What::File(_) => Kind::Put,
        What::Lock(_) => Kind::Lock,
        What::Unlock { .. } => Kind::Unlock,
    }
}

/// The lock of a lock change, as the wire has it (with why and by whom it
/// ended, for an unlock); `None` for a file change.
pub(crate) fn lock_info(change: &Change) -> Option<pb::LockInfo> {
    match &change.what {
        What::File(_) => None,
        What::Lock(l) => Some(l.clone().into()),
        What::Unlock { lock, ended, by } => Some(pb::LockInfo {
            ended: lock_end_to_pb(*ended).into(),
            ended_by: by.client_id.clone(),
            ended_by_principal: by.principal.clone(),
            ..lock.clone().into()
        }),
    }
}

/// The change as a `ChangeEvent`.
pub(crate) fn event(change: &Change) -> pb::ChangeEvent {
    pb::ChangeEvent {
        seq: change.seq,
        kind: kind(change).into(),
        entry: change.entry().map(|e| e.clone().into()),
        client_id: change.client_id().to_owned(),
        lock: lock_info(change),
    }
}

/// A lock change of the wire's `kind` (a replicated change, or a resync's
/// lock).
pub(crate) fn lock_change(seq: u64, namespace: String, kind: i32, lock: pb::LockInfo) -> Result<Change> {
    let unlock = match pb::change_event::Kind::try_from(kind) {
        Ok(pb::change_event::Kind::Lock) => false,
        Ok(pb::change_event::Kind::Unlock) => true,
        _ => return Err(Error::invalid(format!("a lock change of kind {kind}"))),
    };
    Ok(Change { seq, namespace, what: lock_what(unlock, lock)? })
}

/// What a lock change did, from its wire lock: a grant or refresh, or (with
/// `unlock`) an end, whose reason and author the lock carries.
pub(crate) fn lock_what(unlock: bool, lock: pb::LockInfo) -> Result<What> {
    if !unlock {
        return Ok(What::Lock(Lock::try_from(lock)?));
    }
    let ended = lock_end_from_pb(lock.ended)?;
    let by = Actor::new(lock.ended_by_principal.clone(), lock.ended_by.clone());
    Ok(What::Unlock { lock: Lock::try_from(lock)?, ended, by })
}

fn lock_end_to_pb(end: LockEnd) -> pb::LockEnd {
    match end {
        LockEnd::Released => pb::LockEnd::Released,
        LockEnd::Expired => pb::LockEnd::Expired,
        LockEnd::Broken => pb::LockEnd::Broken,
    }
}

fn lock_end_from_pb(v: i32) -> Result<LockEnd> {
    match pb::LockEnd::try_from(v) {
        Ok(pb::LockEnd::Released) => Ok(LockEnd::Released),
        Ok(pb::LockEnd::Expired) => Ok(LockEnd::Expired),
        Ok(pb::LockEnd::Broken) => Ok(LockEnd::Broken),
        _ => Err(Error::invalid(format!("an unlock change with end reason {v}"))),
    }
}

#[cfg(test)]
mod tests {
    use syncstore::RelPath;

    use super::*;

    fn lock() -> Lock {
        Lock {
            lock_id: "L".into(),
            path: RelPath::new("d/f").unwrap(),
            client_id: "A".into(),
            principal: "alice".into(),
            holder: "A@host".into(),
            note: "editing".into(),
            acquired_ms: 1,
            expires_ms: 2,
            ttl_seconds: 60,
            token: 7,
        }
    }

    #[test]
    fn lock_changes_cross_the_wire_and_back_unchanged() {
        for (what, want) in [
            (What::Lock(lock()), pb::change_event::Kind::Lock),
            (
                What::Unlock { lock: lock(), ended: LockEnd::Broken, by: Actor::new("bob", "B") },
                pb::change_event::Kind::Unlock,
            ),
            (
                What::Unlock { lock: lock(), ended: LockEnd::Expired, by: Actor::default() },
                pb::change_event::Kind::Unlock,
            ),
        ] {
            let change = Change { seq: 9, namespace: "ns".into(), what };
            let ev = event(&change);
            assert_eq!((ev.seq, ev.kind(), ev.client_id.as_str()), (9, want, change.client_id()));
            let back = lock_change(ev.seq, "ns".into(), ev.kind, ev.lock.unwrap()).unwrap();
            assert_eq!(back, change);
        }
    }

    #[test]
    fn a_lock_change_of_another_kind_or_end_is_refused() {
        let info: pb::LockInfo = lock().into();
        let put = pb::change_event::Kind::Put as i32;
        assert!(matches!(lock_change(1, "ns".into(), put, info.clone()), Err(Error::InvalidArgument(_))));
        let bad_end = pb::LockInfo { ended: 99, ..info };
        let unlock = pb::change_event::Kind::Unlock as i32;
        assert!(matches!(lock_change(1, "ns".into(), unlock, bad_end), Err(Error::InvalidArgument(_))));
    }
}

/// A retention policy as the wire has it.
pub(crate) fn retention_to_pb(r: &Retention) -> pb::Retention {
    pb::Retention {
        keep_within_seconds: r.keep_within_seconds,
        hourly_for_seconds: r.hourly_for_seconds,
        daily_for_seconds: r.daily_for_seconds,
        weekly_for_seconds: r.weekly_for_seconds,
        keep_last: r.keep_last,
        max_history_bytes: r.max_history_bytes,
        immutable_seconds: r.immutable_seconds,
        guard_percent: r.guard_percent,
        guard_min_files: r.guard_min_files,
        guard_window_seconds: r.guard_window_seconds,
    }
}

/// A retention policy from the wire, checked (`invalid-field` if it
/// cannot be used).
pub(crate) fn retention_from_pb(r: &pb::Retention) -> Result<Retention> {
    let out = Retention {
        keep_within_seconds: r.keep_within_seconds,
        hourly_for_seconds: r.hourly_for_seconds,
        daily_for_seconds: r.daily_for_seconds,
        weekly_for_seconds: r.weekly_for_seconds,
        keep_last: r.keep_last,
        max_history_bytes: r.max_history_bytes,
        immutable_seconds: r.immutable_seconds,
        guard_percent: r.guard_percent,
        guard_min_files: r.guard_min_files,
        guard_window_seconds: r.guard_window_seconds,
    };
    out.check().map_err(Error::InvalidField)?;
    Ok(out)
}
