//! An S3-compatible server for tests: s3s-fs over a temp folder.
//!
//! [`S3::start`] runs s3s-fs (built from crates.io by `bash tests/setup`)
//! on a free loopback port over a fresh temp folder, with fixed test
//! credentials ([`S3::credentials`]). A bucket is a folder under that root
//! ([`S3::create_bucket`]), so a test can reach an object's bytes on disk
//! ([`S3::object_file`]), and requests are path-style. Nothing is exported
//! globally: a caller passes [`S3::url`] and the credentials on. A watcher,
//! a tiny `sh` loop started with each run of the server, kills it within a
//! second of the test process's death, so no server outlives the tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Overrides where the s3s-fs binary is looked for.
const BIN_ENV: &str = "SYNCSTORE_S3S_FS";

/// Overrides the cache folder `tests/setup` installs s3s-fs into.
const CACHE_ENV: &str = "SYNCSTORE_CACHE";

/// The s3s-fs release `tests/setup` installs, and the name of its folder in
/// the cache.
const INSTALL_DIR: &str = "s3s-fs-0.14.1";

/// The access key of every test server (the in-process harness exports it
/// once per test process, so it is the same for all of them).
pub const ACCESS_KEY: &str = "syncstore-test";

/// The secret key of every test server.
pub const SECRET_KEY: &str = "syncstore-test-secret";

/// The region the test URLs name (s3s-fs accepts any).
const REGION: &str = "us-east-1";

/// How long s3s-fs may take to listen after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the watcher checks that the test process is alive.
const WATCH_INTERVAL_SECS: f32 = 0.2;

/// What s3s-fs logs (at `info`) once it listens, followed by its address.
const READY_LINE: &str = "server is running at http://";

/// An s3s-fs server of one test, stopped on drop.
#[derive(Debug)]
pub struct S3 {
    bin: PathBuf,
    /// Holds the buckets (`root/`) and the server's logs; removed on drop.
    dir: tempfile::TempDir,
    /// The port it listens on (chosen by the first run, kept by the next).
    port: u16,
    /// The running server.
    child: Option<Child>,
    /// How many times it was started (each run logs to its own file).
    runs: u32,
}

impl S3 {
    /// Starts s3s-fs over a fresh temp folder on a free loopback port.
    /// Panics with the reason when it cannot (a test cannot run without
    /// it), and asks for `bash tests/setup` when the binary is missing.
    pub fn start() -> S3 {
        let bin = binary();
        assert!(
            bin.is_file(),
            "s3s-fs is missing ({} does not exist): run bash tests/setup (or set {BIN_ENV})",
            bin.display()
        );
        let dir = tempfile::Builder::new().prefix("syncstore-s3-").tempdir().expect("temp folder for s3s-fs");
        fs::create_dir(dir.path().join("root")).expect("s3s-fs root folder");
        let mut s3 = S3 { bin, dir, port: 0, child: None, runs: 0 };
        s3.start_again();
        s3
    }

    /// The content URL of `bucket` on this server (path-style, over http).
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint={}&region={REGION}", self.endpoint())
    }

    /// The server's endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access key and secret key the server accepts.
    pub fn credentials(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }

    /// Creates bucket `name` (a folder under the root) and returns its URL.
    pub fn create_bucket(&self, name: &str) -> String {
        fs::create_dir_all(self.root().join(name)).expect("create the bucket's folder");
        self.url(name)
    }

    /// The file that holds object `key` of `bucket`.
    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(key)
    }

    /// Stops the server (killed, as a crash would); its buckets stay for
    /// [`S3::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again, on the same port over the same
    /// buckets (the first run picks the port), and waits until it listens.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        self.runs += 1;
        let log = self.dir.path().join(format!("s3s-fs.{}.log", self.runs));
        let out = fs::File::create(&log).expect("s3s-fs log file");
        let err = out.try_clone().expect("s3s-fs log file");
        let mut child = Command::new(&self.bin)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root())
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.watch(child.id());
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let text = fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = listening_port(&text) {
                break port;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("s3s-fs exited ({status}) before it listened: {text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not listen within {START_TIMEOUT:?}: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(self.port == 0 || self.port == port, "s3s-fs listens on {port}, not on {}", self.port);
        self.port = port;
        self.child = Some(child);
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Starts the watcher of one run: once this process is gone, it kills
    /// the server and removes the folder; it ends with the run.
    fn watch(&self, server: u32) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do \
                 kill -0 {server} 2>/dev/null || exit 0; sleep {WATCH_INTERVAL_SECS}; \
             done; kill -9 {server} 2>/dev/null; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.path().display(),
        );
        // Started in the background by a shell that ends at once (and is
        // waited for): the watcher is nobody's child to reap.
        let started = Command::new("sh")
            .arg("-c")
            .arg(format!("({script}) </dev/null >/dev/null 2>&1 &"))
            .status()
            .expect("start the s3s-fs watcher");
        assert!(started.success(), "start the s3s-fs watcher: {started}");
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where the s3s-fs binary is: [`BIN_ENV`], else the cache `tests/setup`
/// installs it into.
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os(BIN_ENV) {
        return PathBuf::from(bin);
    }
    let cache = std::env::var_os(CACHE_ENV).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache").join("syncstore")
    });
    cache.join(INSTALL_DIR).join("bin").join("s3s-fs")
}

/// The port in s3s-fs's "listening" log line, once it is there.
fn listening_port(log: &str) -> Option<u16> {
    let rest = &log[log.find(READY_LINE)? + READY_LINE.len()..];
    // Only a whole line: the log may be read while the line is written.
    let addr = &rest[..rest.find(char::is_whitespace)?];
    addr.rsplit_once(':')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One plain HTTP request to the server: whether it answered at all.
    fn answers(endpoint: &str) -> bool {
        let addr = endpoint.trim_start_matches("http://");
        std::net::TcpStream::connect(addr).is_ok()
    }

    #[test]
    fn starts_stops_and_starts_again_on_the_same_port_over_the_same_buckets() {
        let mut s3 = S3::start();
        let url = s3.create_bucket("probe");
        assert!(url.starts_with("s3://probe?endpoint=http://127.0.0.1:"), "{url}");
        assert!(answers(&s3.endpoint()));
        fs::write(s3.object_file("probe", "kept"), b"bytes").unwrap();
        let endpoint = s3.endpoint();
        s3.stop();
        assert!(!answers(&endpoint), "a stopped server refuses connections");
        s3.start_again();
        assert_eq!(s3.endpoint(), endpoint);
        assert!(answers(&endpoint));
        assert_eq!(fs::read(s3.object_file("probe", "kept")).unwrap(), b"bytes");
    }

    #[test]
    fn the_port_is_read_from_the_listening_line() {
        let log = "  INFO s3s_fs: authentication is enabled\n  INFO s3s_fs: server is running at http://127.0.0.1:38435\n    at src/main.rs:121\n";
        assert_eq!(listening_port(log), Some(38435));
        assert_eq!(listening_port("  INFO s3s_fs: authentication is enabled\n"), None);
        assert_eq!(listening_port("  INFO s3s_fs: server is running at http://127.0.0.1:384"), None);
    }
}
