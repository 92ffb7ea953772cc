//! The domain types of version history: a kept [`Version`] of a path and
//! the [`VersionNote`] its change carries, [`Label`]s, the [`Point`]s a
//! history read names, a namespace's [`Retention`], and what a history
//! write ([`HistoryBatch`]) asks for. No wire format here (`wire.rs`
//! converts) and no backend.

use syncstore::{Entry, RelPath};

use super::{Actor, Change, retention::Retention};

/// What a version was. The numbers are the wire's `VersionKind`, and the
/// metadata's `kind` column of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionKind {
    /// New content written at the path (or the path created).
    Write = 1,
    /// The file was deleted.
    Delete = 2,
    /// The file arrived at this path from `moved_from`, same content.
    Move = 3,
    /// A deletion that ended a move: the file lives on at `moved_to`.
    MovedAway = 4,
    /// A restore (undelete, rewind) brought back the content of
    /// `restored_from`.
    Restore = 5,
}

impl VersionKind {
    /// The kind's number.
    pub fn code(self) -> i64 {
        self as i64
    }

    /// The kind of number `code`, if it is one.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            1 => Self::Write,
            2 => Self::Delete,
            3 => Self::Move,
            4 => Self::MovedAway,
            5 => Self::Restore,
            _ => return None,
        })
    }

    /// The kind a change of this entry has when nothing more is known: a
    /// write, or a deletion for a tombstone.
    pub fn plain(entry: &Entry) -> Self {
        if entry.is_deleted() { Self::Delete } else { Self::Write }
    }
}

/// What a version records beyond its entry. A file change carries it; the
/// primary's note is what its replica stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionNote {
    /// Who made it: the token's name ("anonymous" on an open server; empty
    /// for a version older than history).
    pub principal: String,
    /// When the primary committed it, milliseconds since the Unix epoch
    /// ([`crate::clock::now_ms`]).
    pub committed_ms: i64,
    pub kind: VersionKind,
    /// For [`VersionKind::Move`]: the path the file came from.
    pub moved_from: Option<RelPath>,
    /// For [`VersionKind::MovedAway`]: the path the file went to.
    pub moved_to: Option<RelPath>,
    /// For [`VersionKind::Restore`]: the version whose content came back.
    pub restored_from: Option<u64>,
}

impl VersionNote {
    /// The note of a plain write or deletion of `entry` by `principal` at
    /// `committed_ms`.
    pub fn plain(entry: &Entry, principal: impl Into<String>, committed_ms: i64) -> Self {
        Self {
            principal: principal.into(),
            committed_ms,
            kind: VersionKind::plain(entry),
            moved_from: None,
            moved_to: None,
            restored_from: None,
        }
    }
}

/// One kept version of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The path's entry as the version made it (a tombstone for a
    /// deletion); `entry.version` is the version number (its seq).
    pub entry: Entry,
    pub note: VersionNote,
    /// Retention never removes a pinned version.
    pub pinned: bool,
}

impl Version {
    /// The version number (the seq of the change that made it).
    pub fn seq(&self) -> u64 {
        self.entry.version
    }

    /// Whether the version is a deletion (a tombstone).
    pub fn is_deleted(&self) -> bool {
        self.entry.is_deleted()
    }
}

/// A named state of a namespace: the state after change `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub name: String,
    pub seq: u64,
    /// When change `seq` was committed (0 when no version of it is kept).
    pub committed_ms: i64,
    pub note: String,
    /// Set by the server (before a rewind, or by the mass-change guard).
    pub automatic: bool,
    /// Who set it (a token's name; "server" for an automatic one).
    pub principal: String,
}

/// A point in a namespace's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    /// The state after every change committed at or before this time
    /// (milliseconds since the Unix epoch).
    AtMs(i64),
    /// For one file, exactly this version; for a folder, the state after
    /// the change with this seq.
    Version(u64),
    /// A label's state.
    Label(String),
}

/// A history-only change: logged with a seq and replicated like any
/// change, but never sent to clients (`Subscribe` skips it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryChange {
    /// A label was set.
    LabelSet(Label),
    /// The label of this name was removed.
    LabelRemoved(String),
    /// A version was pinned or unpinned.
    Pin { path: RelPath, seq: u64, pinned: bool },
    /// The namespace's retention was set at run time.
    Retention(Retention),
    /// These versions (path, seq) were removed by retention (at most
    /// [`MAX_PRUNED_PER_CHANGE`] a change).
    Prune(Vec<(RelPath, u64)>),
}

/// The most versions one prune change lists.
pub const MAX_PRUNED_PER_CHANGE: usize = 1000;

/// One write a history call makes.
#[derive(Debug, Clone)]
pub struct HistoryWrite {
    pub path: RelPath,
    /// The version whose content the path gets back; `None` deletes it.
    pub to: Option<Version>,
    /// The path's current version the caller based this on (none: any).
    pub base_version: Option<u64>,
    /// The token of the writer's lock on the path (0 for none).
    pub lock_token: u64,
}

/// The writes of one history call (restore, undelete, rewind), committed
/// in one transaction.
#[derive(Debug, Clone)]
pub struct HistoryBatch {
    pub who: Actor,
    pub writes: Vec<HistoryWrite>,
    /// An automatic label of the state before the batch, written first
    /// (when anything is written).
    pub label: Option<String>,
    /// A refused item (locked, clash, base version) is skipped and counted
    /// rather than failing the batch.
    pub skip_refused: bool,
}

/// What a [`HistoryBatch`] did.
#[derive(Debug, Clone)]
pub struct HistoryOutcome {
    /// The file changes committed, in order.
    pub changes: Vec<Change>,
    /// How many writes were refused and skipped.
    pub skipped: usize,
    /// The automatic label written, if any.
    pub label: Option<Label>,
}

/// The longest glob pattern taken, in bytes.
pub const MAX_GLOB_BYTES: usize = 1024;

/// A path pattern (a trash search, an undelete): `*` matches any run of
/// characters but `/`, `**` any run at all, `?` one character but `/`;
/// everything else matches itself. A pattern without `/` is matched
/// against a path's last component (`*.docx`), one with `/` against the
/// whole path (`docs/**/*.txt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    whole_path: bool,
}

impl Glob {
    /// The pattern, if it is one (not empty, not too long).
    pub fn new(pattern: &str) -> crate::error::Result<Self> {
        if pattern.is_empty() || pattern.len() > MAX_GLOB_BYTES {
            return Err(crate::error::Error::InvalidField(format!(
                "a match pattern must have 1 to {MAX_GLOB_BYTES} bytes"
            )));
        }
        Ok(Self { pattern: pattern.chars().collect(), whole_path: pattern.contains('/') })
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let subject = if self.whole_path { path } else { path.rsplit('/').next().unwrap_or(path) };
        let subject: Vec<char> = subject.chars().collect();
        glob_match(&self.pattern, &subject)
    }
}

/// A star seen while matching: the pattern index after it and the subject
/// index it has matched up to.
type Star = Option<(usize, usize)>;

/// Whether `s` matches `p`: iterative, backtracking to the last `*` (or,
/// when that cannot cross a `/`, to the last `**`), so never exponential.
fn glob_match(p: &[char], s: &[char]) -> bool {
    // The last star of each kind.
    let (mut single, mut double): (Star, Star) = (None, None);
    let (mut pi, mut si) = (0, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            if pi + 1 < p.len() && p[pi + 1] == '*' {
                pi += 2;
                double = Some((pi, si));
                single = None;
            } else {
                pi += 1;
                single = Some((pi, si));
            }
            continue;
        }
        if pi < p.len() && (p[pi] == s[si] || (p[pi] == '?' && s[si] != '/')) {
            pi += 1;
            si += 1;
            continue;
        }
        match (single, double) {
            (Some((after, matched)), _) if s[matched] != '/' => {
                single = Some((after, matched + 1));
                (pi, si) = (after, matched + 1);
            }
            (_, Some((after, matched))) => {
                single = None;
                double = Some((after, matched + 1));
                (pi, si) = (after, matched + 1);
            }
            _ => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names_or_whole_paths() {
        let g = |p: &str| Glob::new(p).unwrap();
        assert!(g("*.docx").matches("a/b/report.docx"));
        assert!(!g("*.docx").matches("a/b/report.docx.bak"));
        assert!(g("docs/*.txt").matches("docs/a.txt"));
        assert!(!g("docs/*.txt").matches("docs/sub/a.txt"));
        assert!(g("docs/**/*.txt").matches("docs/sub/deep/a.txt"));
        assert!(g("docs/**").matches("docs/sub/a"));
        assert!(g("r?port").matches("x/report"));
        assert!(!g("a?b").matches("a/b"));
        assert!(g("*").matches("anything"));
        assert!(Glob::new("").is_err());
    }
}
