//! The server's one clock for what history and retention see: commit
//! times, retention windows, the mass-change guard's window. It is the
//! system clock, plus, for tests only, an offset read from the file that
//! the environment variable [`TEST_CLOCK_FILE_VAR`] names: its content is a
//! signed integer of milliseconds, re-read whenever the file's modification
//! time or length changes, so a test moves the server's time forward (or
//! back) by rewriting it. Without the variable nothing is read.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

/// The environment variable naming the test clock's offset file.
pub const TEST_CLOCK_FILE_VAR: &str = "SYNCSTORE_TEST_CLOCK_FILE";

/// Milliseconds since the Unix epoch, as the server's clock says.
pub fn now_ms() -> i64 {
    syncstore::lock::now_ms().saturating_add(offset_ms())
}

/// The test offset file's last reading: its modification time and length
/// then, and the offset it held.
type Reading = Option<(SystemTime, u64, i64)>;

/// The offset in milliseconds the test clock file holds (0 without one, or
/// when it does not read as an integer).
fn offset_ms() -> i64 {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    static LAST: Mutex<Reading> = Mutex::new(None);
    match FILE.get_or_init(|| std::env::var_os(TEST_CLOCK_FILE_VAR).map(PathBuf::from)) {
        Some(path) => read_offset(path, &LAST),
        None => 0,
    }
}

/// The offset `path` holds, read again only when its modification time or
/// length changed since `last`.
fn read_offset(path: &Path, last: &Mutex<Reading>) -> i64 {
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
    let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((modified, len, offset)) = *last
        && (modified, len) == stamp
    {
        return offset;
    }
    let offset = match std::fs::read_to_string(path).map(|s| s.trim().parse::<i64>()) {
        Ok(Ok(v)) => v,
        _ => {
            tracing::warn!(path = %path.display(), "the test clock file does not hold an integer; no offset");
            0
        }
    };
    *last = Some((stamp.0, stamp.1, offset));
    offset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_clock_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("offset");
        let last = Mutex::new(None);
        assert_eq!(read_offset(&path, &last), 0, "no file: no offset");
        std::fs::write(&path, "3600000\n").unwrap();
        assert_eq!(read_offset(&path, &last), 3_600_000);
        std::fs::write(&path, "-86400000").unwrap();
        assert_eq!(read_offset(&path, &last), -86_400_000, "rewritten: read again");
        std::fs::write(&path, "soon").unwrap();
        assert_eq!(read_offset(&path, &last), 0, "not an integer: no offset");
        // Without the variable (as in these tests), the clock is the
        // system's.
        let (before, now) = (syncstore::lock::now_ms(), now_ms());
        assert!((now - before).abs() < 60_000);
    }
}
