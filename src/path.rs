//! [`RelPath`]: a validated relative path, the only form in which a file's
//! name crosses the wire or reaches a disk.
//!
//! Rules: relative, `/`-separated, no empty, `.` or `..` component, no
//! control character (NUL included), Unicode NFC, at most
//! [`MAX_PATH_BYTES`] bytes with names of at most [`MAX_NAME_BYTES`], and not
//! inside the client's state folder. Anything that passes can be joined
//! onto a folder without escaping it.

use std::{fmt, path::Path};

use unicode_normalization::is_nfc;

use crate::limits::{MAX_NAME_BYTES, MAX_PATH_BYTES, STATE_DIR_NAME};

/// A validated, relative, `/`-separated, NFC path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0:?} is absolute; paths are relative to the synced folder")]
    Absolute(String),
    #[error("path {0:?} has an empty, `.` or `..` component")]
    BadComponent(String),
    #[error("path {0:?} contains a control character")]
    ControlChar(String),
    #[error("path {0:?} is not in Unicode NFC form")]
    NotNfc(String),
    #[error("path is {0} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("a name in path {0:?} is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong(String),
    #[error("path {0:?} is inside the reserved folder {STATE_DIR_NAME:?}")]
    Reserved(String),
    #[error("path {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

impl RelPath {
    /// Validates `s` as it arrived (from the wire): it must already be NFC.
    pub fn new(s: impl Into<String>) -> Result<Self, PathError> {
        let s = s.into();
        validate(&s)?;
        Ok(Self(s))
    }

    /// Builds the path of `path` relative to `root` on the local disk. Fails
    /// for paths outside `root`, names that are not UTF-8 and everything
    /// [`RelPath::new`] refuses, names not in NFC included: a file is synced
    /// under the exact name it has on disk, or not at all.
    pub fn from_local(root: &Path, path: &Path) -> Result<Self, PathError> {
        let rel = path.strip_prefix(root).map_err(|_| PathError::Absolute(path.display().to_string()))?;
        let mut out = String::new();
        for comp in rel.components() {
            let std::path::Component::Normal(name) = comp else {
                return Err(PathError::BadComponent(rel.display().to_string()));
            };
            let name = name.to_str().ok_or_else(|| PathError::NotUtf8(rel.display().to_string()))?;
            if !out.is_empty() {
                out.push('/');
            }
            out.push_str(name);
        }
        Self::new(out)
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where this path lives below `root` on the local disk.
    pub fn to_local(&self, root: &Path) -> std::path::PathBuf {
        let mut p = root.to_path_buf();
        p.extend(self.0.split('/'));
        p
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The folder part, without a trailing slash ("" at the top).
    pub fn parent(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(dir, _)| dir)
    }

    /// Whether this path is `prefix` or lies below the folder `prefix`.
    /// The empty prefix holds everything.
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty()
            || self.0 == prefix
            || (self.0.starts_with(prefix) && self.0.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

fn validate(s: &str) -> Result<(), PathError> {
    if s.is_empty() {
        return Err(PathError::Empty);
    }
    if s.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(s.len()));
    }
    if s.starts_with('/') {
        return Err(PathError::Absolute(s.to_owned()));
    }
    if s.chars().any(char::is_control) {
        // The message quotes it with `{:?}`, which escapes it once.
        return Err(PathError::ControlChar(s.to_owned()));
    }
    if !is_nfc(s) {
        return Err(PathError::NotNfc(s.to_owned()));
    }
    for (i, comp) in s.split('/').enumerate() {
        if comp.is_empty() || comp == "." || comp == ".." {
            return Err(PathError::BadComponent(s.to_owned()));
        }
        if comp.len() > MAX_NAME_BYTES {
            return Err(PathError::NameTooLong(s.to_owned()));
        }
        if i == 0 && comp == STATE_DIR_NAME {
            return Err(PathError::Reserved(s.to_owned()));
        }
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "a/b.txt", "dir/sub/ünïcödé ✓.md", ".hidden", "a/.syncstore", "..a"] {
            RelPath::new(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute("/etc/passwd".into())),
            ("a/../b", PathError::BadComponent("a/../b".into())),
            ("./a", PathError::BadComponent("./a".into())),
            ("a//b", PathError::BadComponent("a//b".into())),
            ("a/", PathError::BadComponent("a/".into())),
            (".syncstore/state.db", PathError::Reserved(".syncstore/state.db".into())),
        ];
        for (input, want) in cases {
            assert_eq!(RelPath::new(input).unwrap_err(), want, "{input:?}");
        }
        assert!(matches!(RelPath::new("a\0b"), Err(PathError::ControlChar(_))));
        assert!(matches!(RelPath::new("a\nb"), Err(PathError::ControlChar(_))));
        // Escaped once in the message: `a\0b`, not `a\\0b`.
        assert_eq!(
            RelPath::new("a\0b").unwrap_err().to_string(),
            r#"path "a\0b" contains a control character"#
        );
        // "é" as e + combining acute accent (NFD).
        assert!(matches!(RelPath::new("cafe\u{301}"), Err(PathError::NotNfc(_))));
        assert!(matches!(RelPath::new("x".repeat(256)), Err(PathError::NameTooLong(_))));
        let long = vec!["d".repeat(200); 30].join("/");
        assert!(matches!(RelPath::new(long), Err(PathError::TooLong(_))));
    }

    #[test]
    fn local_paths_keep_their_exact_name_or_are_refused() {
        let root = Path::new("/sync");
        let p = RelPath::from_local(root, Path::new("/sync/docs/caf\u{e9}.txt")).unwrap();
        assert_eq!(p.as_str(), "docs/caf\u{e9}.txt");
        assert_eq!(p.to_local(root), Path::new("/sync/docs/caf\u{e9}.txt"));
        // NFD on disk: renaming it silently would sync a file that is not
        // there under that name.
        assert!(matches!(
            RelPath::from_local(root, Path::new("/sync/docs/cafe\u{301}.txt")),
            Err(PathError::NotNfc(_))
        ));
        assert!(RelPath::from_local(root, Path::new("/elsewhere/a")).is_err());
    }

    /// What every accepted path must be, and that it survives the trips
    /// to the wire and to a local folder.
    fn check_accepted(s: &str) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prelude::*;
        let Ok(p) = RelPath::new(s) else { return Ok(()) };
        prop_assert_eq!(p.as_str(), s);
        prop_assert!(!s.starts_with('/') && !s.contains('\0') && !s.chars().any(char::is_control));
        prop_assert!(is_nfc(s), "not NFC: {:?}", s);
        prop_assert!(s.len() <= MAX_PATH_BYTES);
        for comp in s.split('/') {
            prop_assert!(!matches!(comp, "" | "." | ".."), "component {:?} in {:?}", comp, s);
            prop_assert!(comp.len() <= MAX_NAME_BYTES);
        }
        prop_assert!(s.split('/').next() != Some(STATE_DIR_NAME));
        let root = Path::new("/sync/root");
        let local = p.to_local(root);
        prop_assert!(local.starts_with(root));
        prop_assert!(
            local
                .strip_prefix(root)
                .unwrap()
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{:?} leaves the folder",
            local
        );
        prop_assert_eq!(RelPath::from_local(root, &local), Ok(p.clone()));
        prop_assert_eq!(RelPath::new(p.to_string()), Ok(p));
        Ok(())
    }

    /// Pieces that make paths interesting: escapes, separators, reserved and
    /// non-NFC names, control characters, long names.
    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(String::new()),
            Just("/".to_owned()),
            Just("\\".to_owned()),
            Just("\0".to_owned()),
            Just("\n".to_owned()),
            Just(STATE_DIR_NAME.to_owned()),
            Just("cafe\u{301}".to_owned()),
            Just("caf\u{e9}".to_owned()),
            Just("x".repeat(MAX_NAME_BYTES)),
            Just("..a".to_owned()),
            "[a-c.]{1,3}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 1000,
            failure_persistence: None,
            ..Default::default()
        })]

        #[test]
        fn arbitrary_strings_never_yield_an_escaping_path(s in proptest::prelude::any::<String>()) {
            check_accepted(&s)?;
        }

        #[test]
        fn path_like_strings_never_yield_an_escaping_path(
            parts in proptest::collection::vec(piece(), 0..8),
            sep in proptest::prelude::prop_oneof![proptest::prelude::Just("/"), proptest::prelude::Just("")],
        ) {
            check_accepted(&parts.join(sep))?;
        }

        #[test]
        fn valid_paths_are_accepted_and_round_trip(
            names in proptest::collection::vec("[a-zA-Z0-9 ._\\-]{1,12}|[\u{e0}-\u{ff}]{1,4}", 1..6),
        ) {
            let s = names.join("/");
            let valid = names.iter().all(|n| n != "." && n != "..") && names[0] != STATE_DIR_NAME;
            proptest::prop_assert_eq!(RelPath::new(s.as_str()).is_ok(), valid, "{:?}", s);
            check_accepted(&s)?;
        }
    }

    #[test]
    fn prefixes_match_whole_components() {
        let p = RelPath::new("docs/a.txt").unwrap();
        assert!(p.is_under(""));
        assert!(p.is_under("docs"));
        assert!(p.is_under("docs/"));
        assert!(p.is_under("docs/a.txt"));
        assert!(!p.is_under("doc"));
        assert!(!RelPath::new("docs2/a").unwrap().is_under("docs"));
        assert_eq!(p.parent(), "docs");
        assert_eq!(p.file_name(), "a.txt");
    }
}
