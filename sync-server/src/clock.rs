//! The server's one clock for what history and retention see: commit
//! times, retention windows, the mass-change guard's window. It is the
//! system clock, plus, for tests only, an offset read from the file that
//! the environment variable [`TEST_CLOCK_FILE_VAR`] names: its content is a
//! signed integer of milliseconds, re-read whenever the file's modification
//! time or length changes, so a test moves the server's time forward (or
//! back) by rewriting it. Without the variable nothing is read.

use std::{
    path::PathBuf,
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
    let Some(path) = FILE.get_or_init(|| std::env::var_os(TEST_CLOCK_FILE_VAR).map(PathBuf::from)) else {
        return 0;
    };
    let Ok(meta) = std::fs::metadata(path) else { return 0 };
    let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
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
