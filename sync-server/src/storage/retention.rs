//! Retention of history: a namespace's policy ([`Retention`], from the
//! config file or set at run time) and the planner that decides, from a
//! path's versions, the labels, the pins, the policy and the time, which
//! versions pruning removes. Pure: no storage, no clock; `storage::prune`
//! fetches the facts and writes the outcome for the history collector
//! (`crate::pruning`).
//!
//! The rules, as restic's `forget` (a version is kept if any rule keeps
//! it):
//! - a file's current version (its newest: its content, or its deletion);
//! - a pinned version;
//! - a version a label needs: for each label, the path's newest version at
//!   or below the label's seq (the state the label names);
//! - a version younger than `keep_within`;
//! - the newest `keep_last` versions of the path;
//! - the newest version of the path in each UTC hour (day, week starting
//!   on Monday) whose start is less than `hourly_for` (`daily_for`,
//!   `weekly_for`) ago: the staggered ladder;
//! - a version younger than `immutable` (unless an admin's prune says
//!   `include_immutable`).
//!
//! Then the size cap: while the content only history refers to is above
//! `max_history_bytes`, the oldest kept versions go, except the protected
//! ones (current, pinned, needed by a label, immutable).

use std::collections::{BTreeMap, HashMap, HashSet};

use syncstore::{ContentHash, RelPath};

/// One hour, in milliseconds.
const HOUR_MS: i64 = 3_600_000;
/// One day, in milliseconds.
const DAY_MS: i64 = 24 * HOUR_MS;
/// One week, in milliseconds.
const WEEK_MS: i64 = 7 * DAY_MS;
/// The Unix epoch was a Thursday: weeks start on the Monday 4 days later.
const WEEK_START_MS: i64 = 4 * DAY_MS;

/// Default of [`Retention::keep_within_seconds`]: 30 days.
pub const DEFAULT_KEEP_WITHIN: u64 = 30 * 24 * 3600;
/// Default of [`Retention::hourly_for_seconds`]: 1 day.
pub const DEFAULT_HOURLY_FOR: u64 = 24 * 3600;
/// Default of [`Retention::daily_for_seconds`]: 30 days.
pub const DEFAULT_DAILY_FOR: u64 = 30 * 24 * 3600;
/// Default of [`Retention::weekly_for_seconds`]: 365 days.
pub const DEFAULT_WEEKLY_FOR: u64 = 365 * 24 * 3600;
/// Default of [`Retention::immutable_seconds`]: 7 days.
pub const DEFAULT_IMMUTABLE: u64 = 7 * 24 * 3600;
/// Default of [`Retention::guard_percent`].
pub const DEFAULT_GUARD_PERCENT: u32 = 30;
/// Default of [`Retention::guard_min_files`].
pub const DEFAULT_GUARD_MIN_FILES: u64 = 100;
/// Default of [`Retention::guard_window_seconds`]: 5 minutes.
pub const DEFAULT_GUARD_WINDOW: u64 = 300;

/// How long a namespace keeps the versions of its files, and its
/// mass-change guard (the proto's `Retention`; 0 turns a rule off). Stored
/// as JSON (a logged retention change, the `retention` table) by its field
/// names: renaming a field changes the stored form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    /// Every version younger than this is kept.
    pub keep_within_seconds: u64,
    /// The newest version of each path in each hour younger than this.
    pub hourly_for_seconds: u64,
    /// The newest version of each path in each day younger than this.
    pub daily_for_seconds: u64,
    /// The newest version of each path in each week younger than this.
    pub weekly_for_seconds: u64,
    /// The newest this many versions of each path.
    pub keep_last: u32,
    /// Cap on the bytes of content only history refers to (0: none).
    pub max_history_bytes: u64,
    /// Versions younger than this are never removed by retention.
    pub immutable_seconds: u64,
    /// The guard trips above this percentage of the namespace's files ...
    pub guard_percent: u32,
    /// ... and at least this many files ...
    pub guard_min_files: u64,
    /// ... rewritten or deleted within this many seconds (0: no guard).
    pub guard_window_seconds: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_within_seconds: DEFAULT_KEEP_WITHIN,
            hourly_for_seconds: DEFAULT_HOURLY_FOR,
            daily_for_seconds: DEFAULT_DAILY_FOR,
            weekly_for_seconds: DEFAULT_WEEKLY_FOR,
            keep_last: 0,
            max_history_bytes: 0,
            immutable_seconds: DEFAULT_IMMUTABLE,
            guard_percent: DEFAULT_GUARD_PERCENT,
            guard_min_files: DEFAULT_GUARD_MIN_FILES,
            guard_window_seconds: DEFAULT_GUARD_WINDOW,
        }
    }
}

impl Retention {
    /// Why this policy cannot be used, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.guard_percent > 100 {
            return Err(format!("guard_percent is a percentage (0 to 100), not {}", self.guard_percent));
        }
        // Durations become milliseconds and are subtracted from the clock.
        let longest = [
            self.keep_within_seconds,
            self.hourly_for_seconds,
            self.daily_for_seconds,
            self.weekly_for_seconds,
            self.immutable_seconds,
            self.guard_window_seconds,
        ];
        if longest.iter().any(|s| *s > MAX_SECONDS) {
            return Err(format!(
                "a duration of retention is at most {MAX_SECONDS} seconds (about 100 years)"
            ));
        }
        Ok(())
    }
}

/// Longest duration a retention rule takes: about 100 years, far beyond
/// any use and far below where milliseconds overflow.
pub const MAX_SECONDS: u64 = 100 * 366 * 24 * 3600;

/// The retention of every namespace: the config file's default, its
/// per-namespace overrides. (What an admin sets at run time is stored and
/// takes precedence: see `Store::retention`.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionConfig {
    /// For namespaces without an override.
    pub default: Retention,
    /// By namespace.
    pub namespaces: BTreeMap<String, Retention>,
}

impl RetentionConfig {
    /// The configured policy of namespace `ns`.
    pub fn of(&self, ns: &str) -> Retention {
        self.namespaces.get(ns).copied().unwrap_or(self.default)
    }

    /// Reads a config file's `[retention]` table: its keys are the
    /// `Retention` fields without `_seconds` (`keep_within`, `hourly_for`,
    /// `daily_for`, `weekly_for`, `immutable`, `guard_window` take a
    /// duration such as "30d", "12h" or a number of seconds; `keep_last`,
    /// `max_history_bytes`, `guard_percent`, `guard_min_files` a number),
    /// and each sub-table `[retention.NAMESPACE]` overrides some of them for
    /// one namespace (the others as in `[retention]`).
    pub fn from_toml(table: &toml::Table) -> Result<Self, String> {
        let mut default = Retention::default();
        let mut overrides = Vec::new();
        for (key, value) in table {
            match value {
                toml::Value::Table(t) => overrides.push((key, t)),
                v => set_key(&mut default, key, v).map_err(|e| format!("[retention] {e}"))?,
            }
        }
        default.check().map_err(|e| format!("[retention] {e}"))?;
        let mut namespaces = BTreeMap::new();
        for (ns, t) in overrides {
            let mut r = default;
            for (key, value) in t {
                set_key(&mut r, key, value).map_err(|e| format!("[retention.{ns}] {e}"))?;
            }
            r.check().map_err(|e| format!("[retention.{ns}] {e}"))?;
            namespaces.insert(ns.clone(), r);
        }
        Ok(Self { default, namespaces })
    }
}

/// Sets one `[retention]` key.
fn set_key(r: &mut Retention, key: &str, value: &toml::Value) -> Result<(), String> {
    let seconds = || -> Result<u64, String> {
        match value {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{key} must not be negative")),
            toml::Value::String(s) => humantime::parse_duration(s)
                .map(|d| d.as_secs())
                .map_err(|e| format!("{key} = {s:?} is not a duration: {e}")),
            _ => Err(format!("{key} takes a duration such as \"30d\" or a number of seconds")),
        }
    };
    let number = || -> Result<u64, String> {
        match value {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| format!("{key} must not be negative")),
            _ => Err(format!("{key} takes a number")),
        }
    };
    let small = |n: u64| u32::try_from(n).map_err(|_| format!("{key} is too large"));
    match key.replace('-', "_").as_str() {
        "keep_within" => r.keep_within_seconds = seconds()?,
        "hourly_for" => r.hourly_for_seconds = seconds()?,
        "daily_for" => r.daily_for_seconds = seconds()?,
        "weekly_for" => r.weekly_for_seconds = seconds()?,
        "immutable" => r.immutable_seconds = seconds()?,
        "guard_window" => r.guard_window_seconds = seconds()?,
        "keep_last" => r.keep_last = small(number()?)?,
        "max_history_bytes" => r.max_history_bytes = number()?,
        "guard_percent" => r.guard_percent = small(number()?)?,
        "guard_min_files" => r.guard_min_files = number()?,
        _ => return Err(format!("unknown key {key:?}")),
    }
    Ok(())
}

/// One version of a path, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionFacts {
    /// Its version (the seq of the change that made it).
    pub(crate) seq: u64,
    /// When it was committed.
    pub(crate) committed_ms: i64,
    /// Whether it is pinned.
    pub(crate) pinned: bool,
    /// Its content and size (none for a deletion or a folder).
    pub(crate) content: Option<(ContentHash, u64)>,
}

/// What a prune is asked to do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanOptions {
    /// The namespace's policy.
    pub(crate) policy: Retention,
    /// The time to plan at (the server's clock).
    pub(crate) now_ms: i64,
    /// Versions inside the immutable window may go too (an admin's call).
    pub(crate) include_immutable: bool,
}

/// What the planner decided about one version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Removed.
    Remove,
    /// Kept by a rule the size cap overrides (within, last, the ladder).
    Keep,
    /// Kept whatever the size cap says: current, pinned, needed by a
    /// label, or immutable.
    Protect,
}

/// Decides the fate of each version of one path, given newest first (the
/// first is the path's current version); `labels` are the namespace's
/// labels' seqs.
pub(crate) fn plan_path(versions: &[VersionFacts], labels: &[u64], opts: &PlanOptions) -> Vec<Fate> {
    let policy = &opts.policy;
    let now = opts.now_ms;
    let age_limit =
        |seconds: u64| now.saturating_sub(seconds.saturating_mul(1000).min(i64::MAX as u64) as i64);
    // Versions by seq, newest first, whatever order the clock gave them.
    let mut order: Vec<usize> = (0..versions.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(versions[*i].seq));
    let mut fates = vec![Fate::Remove; versions.len()];
    let mut protect = vec![false; versions.len()];
    let mut keep = vec![false; versions.len()];
    if let Some(current) = order.first() {
        protect[*current] = true;
    }
    for &label in labels {
        if let Some(i) = order.iter().copied().find(|i| versions[*i].seq <= label) {
            protect[i] = true;
        }
    }
    for (rank, &i) in order.iter().enumerate() {
        let v = &versions[i];
        if v.pinned {
            protect[i] = true;
        }
        if !opts.include_immutable
            && policy.immutable_seconds > 0
            && v.committed_ms > age_limit(policy.immutable_seconds)
        {
            protect[i] = true;
        }
        if policy.keep_within_seconds > 0 && v.committed_ms > age_limit(policy.keep_within_seconds) {
            keep[i] = true;
        }
        if (rank as u64) < u64::from(policy.keep_last) {
            keep[i] = true;
        }
    }
    for (for_seconds, bucket_of) in [
        (policy.hourly_for_seconds, hour_start as fn(i64) -> i64),
        (policy.daily_for_seconds, day_start),
        (policy.weekly_for_seconds, week_start),
    ] {
        if for_seconds == 0 {
            continue;
        }
        let oldest_start = age_limit(for_seconds);
        let mut seen = HashSet::new();
        for &i in &order {
            let bucket = bucket_of(versions[i].committed_ms);
            if seen.insert(bucket) && bucket >= oldest_start {
                keep[i] = true;
            }
        }
    }
    for i in 0..versions.len() {
        fates[i] = if protect[i] {
            Fate::Protect
        } else if keep[i] {
            Fate::Keep
        } else {
            Fate::Remove
        };
    }
    fates
}

/// The start of the UTC hour of `ms`.
fn hour_start(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The start of the UTC day of `ms`.
fn day_start(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// The start of the week (Monday, 00:00 UTC) of `ms`.
fn week_start(ms: i64) -> i64 {
    (ms - WEEK_START_MS).div_euclid(WEEK_MS) * WEEK_MS + WEEK_START_MS
}

/// A version the planner removes (or would), with what the caller gave
/// with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Removal<T> {
    pub(crate) path: RelPath,
    pub(crate) version: VersionFacts,
    /// The path's next newer version when planned: a label at or above
    /// this version's seq and below this one needs it.
    pub(crate) next_seq: u64,
    pub(crate) item: T,
}

/// How much history a namespace keeps: versions that are not a file's
/// current one, and the bytes of content only they refer to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Versions kept that are not a file's current one.
    pub versions: u64,
    /// Bytes of the distinct content those versions refer to and no live
    /// entry does.
    pub bytes: u64,
}

/// The outcome of planning a namespace.
#[derive(Debug, Clone)]
pub(crate) struct Plan<T> {
    /// What goes, in (path, seq) order.
    pub(crate) remove: Vec<Removal<T>>,
    /// History before.
    pub(crate) before: Usage,
    /// History after.
    pub(crate) after: Usage,
}

/// Plans a namespace's prune path by path ([`Planner::add_path`]), then as
/// a whole ([`Planner::finish`]: the size cap).
#[derive(Debug)]
pub(crate) struct Planner<T> {
    opts: PlanOptions,
    labels: Vec<u64>,
    remove: Vec<Removal<T>>,
    /// Kept versions the size cap may remove.
    cappable: Vec<Removal<T>>,
    /// Content history refers to: its size, and how many kept non-current
    /// versions refer to it.
    refs: HashMap<ContentHash, (u64, u64)>,
    /// The same, before any removal.
    refs_before: HashMap<ContentHash, u64>,
    versions_before: u64,
}

impl<T> Planner<T> {
    /// A planner for one namespace with these labels' seqs.
    pub(crate) fn new(opts: PlanOptions, labels: Vec<u64>) -> Self {
        Self {
            opts,
            labels,
            remove: Vec::new(),
            cappable: Vec::new(),
            refs: HashMap::new(),
            refs_before: HashMap::new(),
            versions_before: 0,
        }
    }

    /// Plans one path: its versions, newest first, each with its item.
    pub(crate) fn add_path(&mut self, path: &RelPath, versions: &[VersionFacts], items: Vec<T>) {
        let fates = plan_path(versions, &self.labels, &self.opts);
        let current = versions.iter().map(|v| v.seq).max();
        let mut seqs: Vec<u64> = versions.iter().map(|v| v.seq).collect();
        seqs.sort_unstable();
        for ((v, fate), item) in versions.iter().zip(fates).zip(items) {
            if Some(v.seq) == current {
                continue; // Not history: the file's state.
            }
            let next_seq = seqs.iter().copied().find(|s| *s > v.seq).unwrap_or(u64::MAX);
            self.versions_before += 1;
            if let Some((hash, size)) = v.content {
                self.refs_before.insert(hash, size);
            }
            let removal = Removal { path: path.clone(), version: *v, next_seq, item };
            match fate {
                Fate::Remove => self.remove.push(removal),
                Fate::Keep | Fate::Protect => {
                    if let Some((hash, size)) = v.content {
                        self.refs.entry(hash).or_insert((size, 0)).1 += 1;
                    }
                    if fate == Fate::Keep {
                        self.cappable.push(removal);
                    }
                }
            }
        }
    }

    /// The content history refers to (to ask which of it a live entry
    /// refers to).
    pub(crate) fn history_content(&self) -> impl Iterator<Item = &ContentHash> {
        self.refs_before.keys()
    }

    /// Applies the size cap and returns the plan; `live` is the content a
    /// live entry refers to (it costs history nothing).
    pub(crate) fn finish(mut self, live: &HashSet<ContentHash>) -> Plan<T> {
        let bytes_of = |m: &mut dyn Iterator<Item = (&ContentHash, u64)>| {
            m.filter(|(h, _)| !live.contains(*h)).map(|(_, s)| s).sum()
        };
        let before = Usage {
            versions: self.versions_before,
            bytes: bytes_of(&mut self.refs_before.iter().map(|(h, s)| (h, *s))),
        };
        let mut bytes: u64 = bytes_of(&mut self.refs.iter().map(|(h, (s, _))| (h, *s)));
        let cap = self.opts.policy.max_history_bytes;
        if cap > 0 && bytes > cap {
            self.cappable.sort_by_key(|r| (r.version.committed_ms, r.version.seq));
            for r in self.cappable {
                if bytes <= cap {
                    break;
                }
                if let Some((hash, _)) = r.version.content
                    && let Some((size, count)) = self.refs.get_mut(&hash)
                {
                    *count -= 1;
                    if *count == 0 {
                        if !live.contains(&hash) {
                            bytes -= *size;
                        }
                        self.refs.remove(&hash);
                    }
                }
                self.remove.push(r);
            }
        }
        self.remove.sort_by(|a, b| (&a.path, a.version.seq).cmp(&(&b.path, b.version.seq)));
        let after = Usage { versions: self.versions_before - self.remove.len() as u64, bytes };
        Plan { remove: self.remove, before, after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01 12:00:00 UTC, a Tuesday.
    const NOW: i64 = 1_796_126_400_000;
    const MIN: i64 = 60_000;

    fn v(seq: u64, ago_ms: i64) -> VersionFacts {
        VersionFacts { seq, committed_ms: NOW - ago_ms, pinned: false, content: Some((hash(seq), 10)) }
    }

    fn hash(seq: u64) -> ContentHash {
        ContentHash::of(&seq.to_le_bytes())
    }

    fn off() -> Retention {
        Retention {
            keep_within_seconds: 0,
            hourly_for_seconds: 0,
            daily_for_seconds: 0,
            weekly_for_seconds: 0,
            keep_last: 0,
            max_history_bytes: 0,
            immutable_seconds: 0,
            ..Retention::default()
        }
    }

    fn opts(policy: Retention) -> PlanOptions {
        PlanOptions { policy, now_ms: NOW, include_immutable: false }
    }

    /// The seqs `plan_path` removes, of versions given oldest first.
    fn removed(oldest_first: &[VersionFacts], labels: &[u64], o: &PlanOptions) -> Vec<u64> {
        let newest_first: Vec<_> = oldest_first.iter().rev().copied().collect();
        let fates = plan_path(&newest_first, labels, o);
        let mut out: Vec<u64> =
            newest_first.iter().zip(fates).filter(|(_, f)| *f == Fate::Remove).map(|(v, _)| v.seq).collect();
        out.sort();
        out
    }

    #[test]
    fn the_current_version_is_kept_whatever_the_policy() {
        let versions = [v(1, 400 * DAY_MS), v(2, 300 * DAY_MS)];
        assert_eq!(removed(&versions, &[], &opts(off())), vec![1]);
        assert_eq!(removed(&versions[..1], &[], &opts(off())), Vec::<u64>::new());
    }

    #[test]
    fn keep_within_keeps_every_younger_version_and_deletions_alike() {
        let p = Retention { keep_within_seconds: 3600, ..off() };
        let mut versions = vec![v(1, 2 * HOUR_MS), v(2, 59 * MIN), v(3, 30 * MIN), v(4, MIN)];
        versions[1].content = None; // a deletion
        assert_eq!(removed(&versions, &[], &opts(p)), vec![1]);
    }

    #[test]
    fn the_staggered_ladder_keeps_the_newest_of_each_bucket_within_its_reach() {
        // Hourly for 3 hours, daily for 3 days, weekly for 3 weeks.
        let p = Retention {
            hourly_for_seconds: 3 * 3600,
            daily_for_seconds: 3 * 24 * 3600,
            weekly_for_seconds: 21 * 24 * 3600,
            ..off()
        };
        // NOW is 12:00 on Tuesday 2026-12-01.
        let versions = [
            v(1, 40 * DAY_MS),              // 5 weeks ago: beyond every rule
            v(2, 16 * DAY_MS),              // Sunday 2026-11-15: its week began 11-09, out of reach
            v(3, 15 * DAY_MS + HOUR_MS),    // Monday 2026-11-16 11:00
            v(4, 15 * DAY_MS),              // Monday 2026-11-16 12:00: newest of that week
            v(5, 2 * DAY_MS + 2 * HOUR_MS), // Sunday 2026-11-29 10:00
            v(6, 2 * DAY_MS),               // Sunday 12:00: newest of Sunday (and of last week)
            v(7, DAY_MS + 3 * HOUR_MS),     // Monday 09:00
            v(8, DAY_MS),                   // Monday 12:00: newest of Monday
            v(9, 3 * HOUR_MS + 30 * MIN),   // 08:30: its hour starts 3.5 h ago, beyond hourly
            v(10, 2 * HOUR_MS + 50 * MIN),  // 09:10
            v(11, 2 * HOUR_MS + 20 * MIN),  // 09:40: newest of 09:00
            v(12, 90 * MIN),                // 10:30: newest of 10:00
            v(13, 50 * MIN),                // 11:10
            v(14, 10 * MIN),                // 11:50: current
        ];
        // Day buckets reach back to 2026-11-28 12:00 (3 days): Sunday 11-29,
        // Monday 11-30, Tuesday 12-01 (newest: 14). Week buckets start on
        // Mondays at or after 2026-11-10 12:00: 11-16, 11-23, 11-30.
        // 11-16's week: newest is 4; 11-23's week: newest is 6; this week: 14.
        // Hour buckets at or after 09:00: 09:00 (11), 10:00 (12), 11:00 (14).
        assert_eq!(removed(&versions, &[], &opts(p)), vec![1, 2, 3, 5, 7, 9, 10, 13]);
    }

    #[test]
    fn keep_last_keeps_the_newest_versions() {
        let p = Retention { keep_last: 3, ..off() };
        let versions: Vec<_> = (1..=6).map(|s| v(s, (10 - s as i64) * DAY_MS)).collect();
        assert_eq!(removed(&versions, &[], &opts(p)), vec![1, 2, 3]);
    }

    #[test]
    fn pinned_and_label_needed_versions_are_kept() {
        let mut versions: Vec<_> = (1..=5).map(|s| v(s * 10, (10 - s as i64) * DAY_MS)).collect();
        versions[0].pinned = true; // 10
        // A label at seq 35 needs 30 (the newest at or below it); one at 5
        // needs nothing of this path.
        assert_eq!(removed(&versions, &[35, 5], &opts(off())), vec![20, 40]);
    }

    #[test]
    fn the_immutable_window_protects_unless_an_admin_includes_it() {
        let p = Retention { immutable_seconds: 3600, ..off() };
        let versions = [v(1, 2 * HOUR_MS), v(2, 30 * MIN), v(3, MIN)];
        assert_eq!(removed(&versions, &[], &opts(p)), vec![1]);
        let admin = PlanOptions { include_immutable: true, ..opts(p) };
        assert_eq!(removed(&versions, &[], &admin), vec![1, 2]);
    }

    #[test]
    fn a_clock_set_back_does_not_confuse_which_is_newest() {
        let p = Retention { daily_for_seconds: 2 * 24 * 3600, ..off() };
        // seq 3 was committed under a clock set back: it is still the newer.
        let versions = [v(1, 2 * HOUR_MS), v(2, HOUR_MS), v(3, 3 * HOUR_MS)];
        assert_eq!(removed(&versions, &[], &opts(p)), vec![1, 2]);
    }

    fn path(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    #[test]
    fn the_size_cap_removes_the_oldest_unprotected_versions_first() {
        let p = Retention { keep_within_seconds: 30 * 24 * 3600, max_history_bytes: 25, ..off() };
        let mut planner = Planner::new(opts(p), vec![]);
        let mut a: Vec<_> = (1..=4).map(|s| v(s, (10 - s as i64) * DAY_MS)).collect();
        a[0].pinned = true; // 1: never removed
        a.reverse();
        planner.add_path(&path("a"), &a, vec![(); 4]);
        let b: Vec<_> = [v(6, 8 * DAY_MS + 1), v(5, 9 * DAY_MS + 1)].into_iter().collect();
        planner.add_path(&path("b"), &b, vec![(); 2]);
        let seen: HashSet<_> = planner.history_content().copied().collect();
        assert_eq!(seen.len(), 4); // 1, 2, 3 of a, 5 of b
        let plan = planner.finish(&HashSet::new());
        assert_eq!(plan.before, Usage { versions: 4, bytes: 40 });
        // Oldest first: 5 (b), then 2 (a): 20 bytes left, at most 25.
        let gone: Vec<_> = plan.remove.iter().map(|r| (r.path.as_str().to_owned(), r.version.seq)).collect();
        assert_eq!(gone, vec![("a".into(), 2), ("b".into(), 5)]);
        assert_eq!(plan.remove[0].next_seq, 3);
        assert_eq!(plan.remove[1].next_seq, 6);
        assert_eq!(plan.after, Usage { versions: 2, bytes: 20 });
    }

    #[test]
    fn content_a_live_entry_or_another_kept_version_refers_to_costs_history_nothing() {
        let p = Retention { keep_within_seconds: 30 * 24 * 3600, max_history_bytes: 5, ..off() };
        let mut planner = Planner::new(opts(p), vec![]);
        let mut versions: Vec<_> = (1..=4).map(|s| v(s, (10 - s as i64) * DAY_MS)).collect();
        versions[1].content = versions[2].content; // 2 and 3 share content
        versions.reverse();
        planner.add_path(&path("a"), &versions, vec![(); 4]);
        // 1's content is live elsewhere.
        let live: HashSet<_> = [hash(1)].into();
        let plan = planner.finish(&live);
        assert_eq!(plan.before, Usage { versions: 3, bytes: 10 });
        // 1 goes first (oldest) and frees nothing; 2 frees nothing while 3
        // still refers to its content; 3 frees it.
        assert_eq!(plan.remove.iter().map(|r| r.version.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(plan.after, Usage { versions: 0, bytes: 0 });
    }

    #[test]
    fn the_config_file_gives_a_default_and_overrides_per_namespace() {
        let table: toml::Table = r#"
            keep_within = "2h"
            keep_last = 3
            guard_window = 60
            [team]
            keep_within = "1d"
            max_history_bytes = 1000
        "#
        .parse()
        .unwrap();
        let c = RetentionConfig::from_toml(&table).unwrap();
        assert_eq!(c.default.keep_within_seconds, 7200);
        assert_eq!(c.default.keep_last, 3);
        assert_eq!(c.default.guard_window_seconds, 60);
        assert_eq!(c.default.daily_for_seconds, DEFAULT_DAILY_FOR);
        let team = c.of("team");
        assert_eq!((team.keep_within_seconds, team.keep_last, team.max_history_bytes), (86400, 3, 1000));
        assert_eq!(c.of("other"), c.default);
        for bad in [
            "keep_within = \"soon\"",
            "keep_last = -1",
            "nope = 1",
            "guard_percent = 101",
            "[x]\nkeep_last = \"3\"",
        ] {
            let table: toml::Table = bad.parse().unwrap();
            assert!(RetentionConfig::from_toml(&table).is_err(), "{bad}");
        }
    }
}
