//! The server's side of the wire: every conversion between storage's types
//! ([`Change`], [`What`], [`LockEnd`], [`Actor`], and history's
//! [`Version`], [`VersionNote`], [`Label`], [`Retention`],
//! [`HistoryChange`]) and their `pb` messages, for `Subscribe`, the lock
//! calls, history and replication alike. Storage keeps its own types and
//! never builds a wire message for a caller.

use syncstore::{Entry, Lock, RelPath, pb};

use crate::error::{Error, Result};
use crate::storage::{
    Actor, Change, HistoryChange, Label, LockEnd, Version, VersionKind, VersionNote, What,
    retention::Retention,
};

/// The kind of event a change is on the wire.
pub(crate) fn kind(change: &Change) -> pb::change_event::Kind {
    use pb::change_event::Kind;
    match &change.what {
        What::File(e, _) if e.is_deleted() => Kind::Delete,
        What::File(..) => Kind::Put,
        What::Lock(_) => Kind::Lock,
        What::Unlock { .. } => Kind::Unlock,
        // Never sent to clients; replication tells it by its `history`.
        What::History(_) => Kind::Unspecified,
    }
}

/// The lock of a lock change, as the wire has it (with why and by whom it
/// ended, for an unlock); `None` for a file change.
pub(crate) fn lock_info(change: &Change) -> Option<pb::LockInfo> {
    match &change.what {
        What::File(..) | What::History(_) => None,
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

/// A label from the wire (a replicated one).
pub(crate) fn label_from_pb(l: pb::Label) -> Label {
    Label {
        name: l.name,
        seq: l.version,
        committed_ms: l.at_ms,
        note: l.note,
        automatic: l.automatic,
        principal: l.principal,
    }
}

/// A version note's fields on a `ReplicatedChange` (the rest of the
/// message the caller's).
pub(crate) fn with_note(mut c: pb::ReplicatedChange, note: &VersionNote) -> pb::ReplicatedChange {
    c.principal = note.principal.clone();
    c.committed_ms = note.committed_ms;
    c.version_kind = version_kind_to_pb(note.kind).into();
    c.moved_from = note.moved_from.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default();
    c.moved_to = note.moved_to.as_ref().map(|p| p.as_str().to_owned()).unwrap_or_default();
    c.restored_from = note.restored_from.unwrap_or(0);
    c
}

/// The version note a `ReplicatedChange` of `entry` carries. From a
/// primary older than history (no kind): a plain write or deletion.
pub(crate) fn note_of(c: &pb::ReplicatedChange, entry: &Entry) -> Result<VersionNote> {
    let path = |p: &str| if p.is_empty() { Ok(None) } else { RelPath::new(p).map(Some) };
    let kind = match pb::VersionKind::try_from(c.version_kind) {
        Ok(pb::VersionKind::Unspecified) => VersionKind::plain(entry),
        Ok(pb::VersionKind::Write) => VersionKind::Write,
        Ok(pb::VersionKind::Delete) => VersionKind::Delete,
        Ok(pb::VersionKind::Move) => VersionKind::Move,
        Ok(pb::VersionKind::MovedAway) => VersionKind::MovedAway,
        Ok(pb::VersionKind::Restore) => VersionKind::Restore,
        Err(_) => return Err(Error::invalid(format!("a change with version kind {}", c.version_kind))),
    };
    Ok(VersionNote {
        principal: c.principal.clone(),
        committed_ms: c.committed_ms,
        kind,
        moved_from: path(&c.moved_from)?,
        moved_to: path(&c.moved_to)?,
        restored_from: (c.restored_from != 0).then_some(c.restored_from),
    })
}

/// A history-only change as replication sends it.
pub(crate) fn history_to_pb(h: &HistoryChange) -> pb::HistoryChange {
    use pb::history_change::What as W;
    let what = match h {
        HistoryChange::LabelSet(l) => W::LabelSet(label(l.clone())),
        HistoryChange::LabelRemoved(name) => W::LabelRemoved(name.clone()),
        HistoryChange::Pin { path, seq, pinned } => {
            W::Pin(pb::PinChange { path: path.as_str().to_owned(), version: *seq, pinned: *pinned })
        }
        HistoryChange::Retention(r) => W::Retention(retention_to_pb(r)),
        HistoryChange::Prune(removed) => W::Prune(pb::PruneChange {
            versions: removed
                .iter()
                .map(|(p, seq)| pb::PrunedVersion { path: p.as_str().to_owned(), version: *seq })
                .collect(),
        }),
    };
    pb::HistoryChange { what: Some(what) }
}

/// A history-only change received from the primary.
pub(crate) fn history_from_pb(h: pb::HistoryChange) -> Result<HistoryChange> {
    use pb::history_change::What as W;
    Ok(match h.what.ok_or_else(|| Error::invalid("a history change without content"))? {
        W::LabelSet(l) => HistoryChange::LabelSet(label_from_pb(l)),
        W::LabelRemoved(name) => HistoryChange::LabelRemoved(name),
        W::Pin(p) => HistoryChange::Pin { path: RelPath::new(p.path)?, seq: p.version, pinned: p.pinned },
        W::Retention(r) => HistoryChange::Retention(retention_from_pb(&r)?),
        W::Prune(p) => HistoryChange::Prune(
            p.versions.into_iter().map(|v| Ok((RelPath::new(v.path)?, v.version))).collect::<Result<_>>()?,
        ),
    })
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

    fn entry(path: &str, version: u64, deleted: bool) -> Entry {
        let content = (!deleted).then(|| syncstore::Content {
            hash: syncstore::ContentHash::of(b"x"),
            size: 1,
            mtime_ns: 5,
            executable: false,
            symlink: false,
            folder: false,
        });
        Entry { path: RelPath::new(path).unwrap(), version, content, client_id: "A".into() }
    }

    #[test]
    fn version_notes_cross_the_replication_wire_and_back_unchanged() {
        let notes = [
            VersionNote::plain(&entry("a", 1, false), "alice", 10),
            VersionNote {
                principal: "bob".into(),
                committed_ms: 11,
                kind: VersionKind::Move,
                moved_from: Some(RelPath::new("old/a").unwrap()),
                moved_to: None,
                restored_from: None,
            },
            VersionNote {
                principal: "bob".into(),
                committed_ms: 12,
                kind: VersionKind::MovedAway,
                moved_from: None,
                moved_to: Some(RelPath::new("new/a").unwrap()),
                restored_from: None,
            },
            VersionNote {
                principal: "carol".into(),
                committed_ms: 13,
                kind: VersionKind::Restore,
                moved_from: None,
                moved_to: None,
                restored_from: Some(3),
            },
        ];
        for note in notes {
            let e = entry("a", 7, note.kind == VersionKind::MovedAway);
            let sent = with_note(pb::ReplicatedChange::default(), &note);
            assert_eq!(note_of(&sent, &e).unwrap(), note);
            assert_eq!(sent.version_kind, version_kind_to_pb(note.kind) as i32);
        }
        // From a primary older than history: a plain write or deletion.
        let old = pb::ReplicatedChange::default();
        assert_eq!(note_of(&old, &entry("a", 1, true)).unwrap().kind, VersionKind::Delete);
        assert_eq!(note_of(&old, &entry("a", 1, false)).unwrap().kind, VersionKind::Write);
        let bad = pb::ReplicatedChange { version_kind: 99, ..Default::default() };
        assert!(matches!(note_of(&bad, &entry("a", 1, false)), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn history_changes_cross_the_replication_wire_and_back_unchanged() {
        let label = Label {
            name: "before".into(),
            seq: 4,
            committed_ms: 40,
            note: "n".into(),
            automatic: true,
            principal: "server".into(),
        };
        for h in [
            HistoryChange::LabelSet(label),
            HistoryChange::LabelRemoved("before".into()),
            HistoryChange::Pin { path: RelPath::new("d/f").unwrap(), seq: 3, pinned: true },
            HistoryChange::Retention(Retention::default()),
            HistoryChange::Prune(vec![(RelPath::new("d/f").unwrap(), 2), (RelPath::new("g").unwrap(), 1)]),
        ] {
            assert_eq!(history_from_pb(history_to_pb(&h)).unwrap(), h);
        }
        assert!(history_from_pb(pb::HistoryChange { what: None }).is_err());
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
