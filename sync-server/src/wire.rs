//! The server's side of the wire: every conversion between storage's types
//! ([`Change`], [`What`], [`LockEnd`], [`Actor`]) and their `pb` messages,
//! for `Subscribe`, the lock calls and replication alike. Storage keeps its
//! own types and never builds a wire message for a caller.

use syncstore::{Lock, pb};

use crate::error::{Error, Result};
use crate::storage::{Actor, Change, Label, LockEnd, Version, VersionKind, What};

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

/// A kept version as the History service sends it.
pub(crate) fn file_version(v: Version) -> pb::FileVersion {
    let Version { entry, note, pinned } = v;
    pb::FileVersion {
        entry: Some(entry.into()),
        committed_ms: note.committed_ms,
        principal: note.principal,
        kind: version_kind_to_pb(note.kind).into(),
        moved_from: note.moved_from.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        moved_to: note.moved_to.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        restored_from: note.restored_from.unwrap_or(0),
        pinned,
    }
}

/// The version a file change made (a new version is never pinned); `None`
/// for a lock change.
pub(crate) fn change_version(change: &Change) -> Option<pb::FileVersion> {
    let entry = change.entry()?.clone();
    let note = change.note()?.clone();
    Some(file_version(Version { entry, note, pinned: false }))
}

/// A label as the History service sends it.
pub(crate) fn label(l: Label) -> pb::Label {
    pb::Label {
        name: l.name,
        version: l.seq,
        at_ms: l.committed_ms,
        note: l.note,
        automatic: l.automatic,
        principal: l.principal,
    }
}

fn version_kind_to_pb(kind: VersionKind) -> pb::VersionKind {
    match kind {
        VersionKind::Write => pb::VersionKind::Write,
        VersionKind::Delete => pb::VersionKind::Delete,
        VersionKind::Move => pb::VersionKind::Move,
        VersionKind::MovedAway => pb::VersionKind::MovedAway,
        VersionKind::Restore => pb::VersionKind::Restore,
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
