//! Sizes and limits that the server and the client agree on.

/// Largest content chunk in an `Upload` or `Download` message.
pub const MAX_CHUNK: usize = 1024 * 1024;

/// Largest gRPC message either side accepts: a full chunk plus framing.
pub const MAX_MESSAGE: usize = MAX_CHUNK + 64 * 1024;

/// Largest path, in bytes of UTF-8.
pub const MAX_PATH_BYTES: usize = 4096;

/// Largest single path component (file or folder name), in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 255;

/// Name of the client's state folder at the top of a synced folder. It is
/// never synced, and the server refuses paths that start with it.
pub const STATE_DIR_NAME: &str = ".syncstore";
