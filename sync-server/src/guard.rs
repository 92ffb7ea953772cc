//! The mass-change guard: notices when a namespace's files are rewritten
//! or deleted en masse (a runaway client, ransomware encrypting a synced
//! folder) and marks the moment just before, so that a rewind to that
//! label undoes it.
//!
//! [`Detector`] is the pure part: per namespace, a window of the last
//! `guard_window_seconds` of rewrites (a write over a live file) and
//! deletions. When the distinct files in it exceed `guard_percent` % of
//! the live files the namespace had when the window opened, and are at
//! least `guard_min_files`, it trips, once: it trips again only after the
//! window has emptied (no such change for a whole window). [`run`] feeds
//! it the primary's committed changes and, on a trip, logs a warning,
//! counts it (`syncstore_history_guard_trips_total`) and writes the
//! automatic label `guard-SEQ` naming the state just before the burst's
//! first change.
//!
//! Not counted: a file's creation (also the new name of a move), a move's
//! old name (`MovedAway`), a restore (an undo must not trip the guard).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{
    ServerMetrics, WriteGate,
    feed::{self, Item},
    storage::{
        Change, Duty, HistoryChange, Store, What,
        retention::{Retention, RetentionConfig},
    },
};

/// A trip of the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trip {
    /// The seq just before the burst's first change: the state to go back
    /// to.
    pub(crate) before_seq: u64,
    /// Distinct files rewritten or deleted in the window.
    pub(crate) files: u64,
    /// Live files when the window opened.
    pub(crate) base: u64,
}

/// One namespace's window.
#[derive(Debug, Default)]
struct Window {
    /// Live files of the namespace when the window opened.
    base: u64,
    /// The changes in the window, oldest first: when, seq, path.
    events: VecDeque<(i64, u64, Arc<str>)>,
    /// How many of them touch each path.
    paths: HashMap<Arc<str>, usize>,
    /// Tripped since the window opened.
    tripped: bool,
}

/// The guard's windows, every namespace.
#[derive(Debug, Default)]
pub(crate) struct Detector {
    windows: HashMap<String, Window>,
}

impl Detector {
    /// Drops what left `ns`'s window by `now_ms`; returns whether the
    /// window is empty (the next change opens it: [`Detector::record`]
    /// then needs the namespace's live files).
    pub(crate) fn slide(&mut self, ns: &str, now_ms: i64, policy: &Retention) -> bool {
        let Some(w) = self.windows.get_mut(ns) else { return true };
        let from = now_ms
            .saturating_sub((policy.guard_window_seconds.saturating_mul(1000)).min(i64::MAX as u64) as i64);
        while let Some((at, _, path)) = w.events.front() {
            if *at >= from {
                break;
            }
            if let Some(n) = w.paths.get_mut(path) {
                *n -= 1;
                if *n == 0 {
                    w.paths.remove(path);
                }
            }
            w.events.pop_front();
        }
        if w.events.is_empty() {
            self.windows.remove(ns);
            return true;
        }
        false
    }

    /// Records a rewrite or deletion of `path` in `ns` (committed at `at_ms`
    /// as change `seq`), after [`Detector::slide`]; `base` is the
    /// namespace's live files just before it, used if this change opens
    /// the window. Returns the trip, if this change makes one.
    pub(crate) fn record(
        &mut self,
        ns: &str,
        at_ms: i64,
        seq: u64,
        path: &str,
        base: u64,
        policy: &Retention,
    ) -> Option<Trip> {
        if policy.guard_window_seconds == 0 {
            return None;
        }
        let w = self.windows.entry(ns.to_owned()).or_insert_with(|| Window { base, ..Window::default() });
        let path: Arc<str> = Arc::from(path);
        w.events.push_back((at_ms, seq, path.clone()));
        *w.paths.entry(path).or_default() += 1;
        let files = w.paths.len() as u64;
        let over = u128::from(files) * 100 > u128::from(w.base) * u128::from(policy.guard_percent);
        if w.tripped || !over || files < policy.guard_min_files {
            return None;
        }
        w.tripped = true;
        let first = w.events.front().map_or(seq, |(_, s, _)| *s);
        Some(Trip { before_seq: first.saturating_sub(1), files, base: w.base })
    }
}

/// The label a trip writes.
pub(crate) fn label_name(trip: &Trip) -> String {
    format!("guard-{}", trip.before_seq)
}

/// How long a process of a shared backend that does not watch for mass
/// changes waits before it tries to take that duty again (the watching
/// one may have gone).
const DUTY_RETRY: Duration = Duration::from_secs(5);

/// Follows the committed changes (on a primary: a replica gets the
/// primary's labels) and labels each trip of the guard, until `shutdown`.
/// Of the processes of a shared backend, one at a time does it (the one
/// holding [`Duty::MassChangeGuard`]; when it goes, another takes over
/// within [`DUTY_RETRY`], starting from its head).
pub(crate) async fn run(
    store: Store,
    config: Arc<RetentionConfig>,
    gate: WriteGate,
    metrics: ServerMetrics,
    shutdown: CancellationToken,
) {
    loop {
        match store.take_duty(Duty::MassChangeGuard).await {
            Ok(Some(duty)) => {
                if store.is_shared() {
                    tracing::info!("this process watches for mass changes");
                }
                let watching =
                    watch(store.clone(), config.clone(), gate.clone(), metrics.clone(), shutdown.clone());
                tokio::select! {
                    () = watching => return,
                    () = duty.lost() => tracing::warn!("no longer watching for mass changes"),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not ask whether this process watches for mass changes")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(DUTY_RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// [`run`] while this process holds the duty.
async fn watch(
    store: Store,
    config: Arc<RetentionConfig>,
    gate: WriteGate,
    metrics: ServerMetrics,
    shutdown: CancellationToken,
) {
    // Only the follower's one callback at a time takes it. Beside the
    // detector, each namespace's policy as last read: read once, not once
    // per change, and forgotten when a retention change passes.
    let detector = Arc::new(tokio::sync::Mutex::new((Detector::default(), HashMap::new())));
    let start = store.head();
    let result = feed::follow(&store, start, None, &shutdown, |item| {
        let (store, config, gate, metrics) = (store.clone(), config.clone(), gate.clone(), metrics.clone());
        let detector = detector.clone();
        async move {
            let Item::Change(change) = item else { return true };
            if gate.check().is_err() {
                return true;
            }
            let mut guard = detector.lock().await;
            let (detector, policies) = &mut *guard;
            if let What::History(HistoryChange::Retention(_)) = &change.what {
                policies.remove(&change.namespace);
                return true;
            }
            if let Err(e) = observe(&store, &config, detector, policies, &metrics, &change).await {
                tracing::warn!(error = %e, seq = change.seq, "the mass-change guard could not look at a change");
            }
            true
        }
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "the mass-change guard stopped");
    }
}

/// Feeds one committed change to the detector, and labels a trip.
async fn observe(
    store: &Store,
    config: &RetentionConfig,
    detector: &mut Detector,
    policies: &mut HashMap<String, Retention>,
    metrics: &ServerMetrics,
    change: &Change,
) -> crate::Result<()> {
    let Some((counted, at_ms)) = store.guard_counts(change).await? else { return Ok(()) };
    let Some(path) = change.path() else { return Ok(()) };
    let ns = change.namespace.as_str();
    let policy = match policies.get(ns) {
        Some(p) => *p,
        None => {
            let (p, _) = store.retention(ns, config).await?;
            policies.insert(ns.to_owned(), p);
            p
        }
    };
    let empty = detector.slide(ns, at_ms, &policy);
    if !counted || policy.guard_window_seconds == 0 {
        return Ok(());
    }
    let base = if empty { store.live_files_before(change).await? } else { 0 };
    let Some(trip) = detector.record(ns, at_ms, change.seq, path.as_str(), base, &policy) else {
        return Ok(());
    };
    metrics.history_guard_trips.inc();
    let name = label_name(&trip);
    tracing::warn!(
        namespace = ns,
        files = trip.files,
        of = trip.base,
        window_seconds = policy.guard_window_seconds,
        label = %name,
        "mass change: many files rewritten or deleted at once; a rewind to the label undoes it"
    );
    let note = format!(
        "{} of {} files rewritten or deleted within {} s",
        trip.files, trip.base, policy.guard_window_seconds
    );
    match store.set_automatic_label(ns, &name, trip.before_seq, &note).await {
        Ok(_) | Err(crate::Error::LabelExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Retention {
        Retention { guard_percent: 30, guard_min_files: 10, guard_window_seconds: 60, ..Retention::default() }
    }

    /// Feeds rewrites of `files` distinct paths, one per `every_ms`, from
    /// seq `first` at `start_ms`; returns the trips.
    fn feed(d: &mut Detector, base: u64, files: u64, first: u64, start_ms: i64, every_ms: i64) -> Vec<Trip> {
        let p = policy();
        let mut trips = Vec::new();
        for i in 0..files {
            let at = start_ms + i as i64 * every_ms;
            d.slide("ns", at, &p);
            trips.extend(d.record("ns", at, first + i, &format!("f{i}"), base, &p));
        }
        trips
    }

    #[test]
    fn a_burst_over_the_threshold_trips_once_and_names_the_state_before_it() {
        let mut d = Detector::default();
        // 100 files: the guard trips at the 31st, and only once.
        let trips = feed(&mut d, 100, 50, 501, 0, 100);
        assert_eq!(trips, vec![Trip { before_seq: 500, files: 31, base: 100 }]);
    }

    #[test]
    fn too_few_files_or_too_slow_a_pace_does_not_trip() {
        let mut d = Detector::default();
        // 30 % of 20 files is 6, but fewer than guard_min_files (10).
        assert!(feed(&mut d, 20, 9, 1, 0, 100).is_empty());
        let mut d = Detector::default();
        assert!(feed(&mut d, 100, 30, 1, 0, 100).is_empty());
        // 60 files, but one every 3 s: never more than 21 in a window.
        let mut d = Detector::default();
        assert!(feed(&mut d, 100, 60, 1, 0, 3_000).is_empty());
    }

    #[test]
    fn the_same_file_rewritten_again_and_again_counts_once() {
        let (mut d, p) = (Detector::default(), policy());
        for seq in 1..500 {
            d.slide("ns", seq as i64, &p);
            assert_eq!(d.record("ns", seq as i64, seq, "log.txt", 100, &p), None);
        }
    }

    #[test]
    fn it_trips_again_only_after_the_window_has_emptied() {
        let mut d = Detector::default();
        assert_eq!(feed(&mut d, 100, 40, 1, 0, 100).len(), 1);
        // Still inside the window: no second trip.
        assert!(feed(&mut d, 100, 40, 100, 4_100, 100).is_empty());
        // A quiet window later, a new burst trips again.
        let trips = feed(&mut d, 100, 40, 1000, 200_000, 100);
        assert_eq!(trips.len(), 1);
        assert_eq!(trips[0].before_seq, 999);
    }

    #[test]
    fn namespaces_have_windows_of_their_own_and_a_zero_window_is_off() {
        let (mut d, p) = (Detector::default(), policy());
        for i in 0..20u64 {
            for ns in ["a", "b"] {
                d.slide(ns, i as i64, &p);
                let trip = d.record(ns, i as i64, i, &format!("f{i}"), 100, &p);
                assert!(trip.is_none(), "{ns} {i}");
            }
        }
        let off = Retention { guard_window_seconds: 0, ..p };
        let mut d = Detector::default();
        assert!((0..200u64).all(|i| d.record("ns", 0, i, &format!("f{i}"), 10, &off).is_none()));
    }
}
