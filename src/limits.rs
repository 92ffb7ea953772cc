//! Sizes and limits that the server and the client agree on, and the checks
//! of every bounded field a client sends.
//!
//! Every string a client sends is bounded so that whatever the server
//! accepts fits, with room to spare, in every message it will ever send
//! for it: events, listings, lock lists and replication messages all stay
//! far below [`MAX_MESSAGE`] (a test checks this for the largest accepted
//! values).

/// Largest content chunk in an `Upload` or `Download` message.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Largest gRPC message either side accepts: a full chunk plus framing.
pub const MAX_MESSAGE: usize = MAX_CHUNK + 64 * 1024;

/// Largest path, in bytes of UTF-8. Also the largest symbolic link target.
pub const MAX_PATH_BYTES: usize = 4096;

/// Largest single path component (file or folder name), in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;

/// Largest client id, in bytes of UTF-8. Client ids are echoed in every
/// event, entry and lock of a client's changes; the Rust client's are 16
/// hex digits.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Largest readable name of a lock's holder ("user@host"), in bytes.
pub const MAX_HOLDER_BYTES: usize = 256;

/// Largest note of a lock ("why it is locked"), in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

/// Largest lock id a request may name; the server's are 16 hex digits.
pub const MAX_LOCK_ID_BYTES: usize = 64;

/// Largest error message a server sends (longer ones are cut), in bytes:
/// error messages travel in a header, which peers bound far more tightly
/// than messages.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

/// Name of the client's state folder at the top of a synced folder. It is
/// never synced, and the server refuses paths that start with it.
pub const STATE_DIR_NAME: &str = ".syncstore";

/// Checks a client id: 1 to [`MAX_CLIENT_ID_BYTES`] bytes, no control
/// character (NUL included).
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the client id is empty; a writer names itself with a stable id".into());
    }
    check_text("client id", id, MAX_CLIENT_ID_BYTES, false)
}

/// Checks a lock's holder name: at most [`MAX_HOLDER_BYTES`] bytes, no
/// control character (empty means "the client id").
pub fn check_holder(holder: &str) -> Result<(), String> {
    check_text("holder", holder, MAX_HOLDER_BYTES, false)
}

/// Checks a lock's note: at most [`MAX_NOTE_BYTES`] bytes; line breaks and
/// tabs are allowed, other control characters are not.
pub fn check_note(note: &str) -> Result<(), String> {
    check_text("note", note, MAX_NOTE_BYTES, true)
}

/// Checks a lock id named by a request: at most [`MAX_LOCK_ID_BYTES`]
/// bytes, no control character.
pub fn check_lock_id(id: &str) -> Result<(), String> {
    check_text("lock id", id, MAX_LOCK_ID_BYTES, false)
}

/// Checks a symbolic link's target as every client must be able to use it:
/// 1 to [`MAX_PATH_BYTES`] bytes of UTF-8 with no NUL. The error completes
/// "the target ...".
pub fn check_link_target(target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("is empty".into());
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(format!("is {} bytes; the limit is {MAX_PATH_BYTES}", target.len()));
    }
    if target.contains(&0) {
        return Err("holds a NUL byte".into());
    }
    if std::str::from_utf8(target).is_err() {
        return Err("is not UTF-8".into());
    }
    Ok(())
}

fn check_text(what: &str, s: &str, max: usize, line_breaks: bool) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("the {what} is {} bytes; the limit is {max}", s.len()));
    }
    let allowed = |c: char| line_breaks && matches!(c, '\n' | '\r' | '\t');
    if s.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(format!("the {what} {:?} contains a control character", s));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_bounded_and_printable() {
        assert!(check_client_id("0123456789abcdef").is_ok());
        assert!(check_client_id(&"é".repeat(MAX_CLIENT_ID_BYTES / 2)).is_ok());
        assert!(check_client_id("").is_err());
        assert!(check_client_id("a\0b").is_err());
        assert!(check_client_id(&"x".repeat(MAX_CLIENT_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn notes_take_line_breaks_but_not_other_controls() {
        assert!(check_note("").is_ok());
        assert!(check_note("line one\nline two\ttab").is_ok());
        assert!(check_note("bell\x07").is_err());
        assert!(check_note(&"n".repeat(MAX_NOTE_BYTES + 1)).is_err());
        assert!(check_holder("alice@laptop").is_ok());
        assert!(check_holder("a\nb").is_err());
        assert!(check_lock_id(&"0".repeat(MAX_LOCK_ID_BYTES + 1)).is_err());
    }

    #[test]
    fn link_targets_are_what_clients_can_create() {
        assert!(check_link_target(b"../a/b").is_ok());
        assert!(check_link_target(b"").is_err());
        assert!(check_link_target(b"a\0b").is_err());
        assert!(check_link_target(b"\xff\xfe").is_err());
        assert!(check_link_target(&vec![b'a'; MAX_PATH_BYTES + 1]).is_err());
    }
}
