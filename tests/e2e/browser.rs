//! A headless Chromium driven over WebDriver, for the web dashboard's
//! browser tests: [`Browser::start`] runs a chromedriver of its own on a
//! free loopback port and opens a session in a fresh profile; the helpers
//! wait on the page with a deadline, as `eventually` does.
//!
//! Chromium and chromedriver come from Debian's `chromium` and
//! `chromium-driver` packages (`bash tests/setup` installs them);
//! `SYNCSTORE_CHROMIUM` and `SYNCSTORE_CHROMEDRIVER` point elsewhere. A
//! machine without them fails these tests rather than skipping them.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tempfile::TempDir;
use thirtyfour::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::Instant,
};

/// How long chromedriver may take to answer its /status.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How many ports chromedriver is tried on before the test fails.
const DRIVER_ATTEMPTS: usize = 3;
/// How long a condition on the page may take to become true.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(10);
/// How often the page is checked.
const POLL: Duration = Duration::from_millis(50);
/// The viewport of every session (and so of the screenshots).
const WINDOW_SIZE: &str = "1280,900";

/// A chromedriver process and one headless Chromium session on it. Dropping
/// it (as a panicking test does) ends the session and kills chromedriver's
/// process group, Chromium included; [`Browser::quit`] does the same and
/// reports a session that did not end.
pub struct Browser {
    driver: Option<WebDriver>,
    /// chromedriver, the leader of its own process group (Chromium's too).
    chromedriver: Option<Child>,
    /// Chromium's profile and chromedriver's log.
    dir: TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("chromedriver", &self.chromedriver.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Browser {
    /// Starts chromedriver and opens a session with a headless Chromium.
    /// Panics (pointing at `bash tests/setup`) when either is missing.
    pub async fn start() -> Browser {
        let chromedriver = find_chromedriver();
        let chromium = find_chromium();
        let dir = tempfile::tempdir().expect("a temp folder for the browser can be created");
        let log = dir.path().join("chromedriver.log");
        let profile = dir.path().join("profile");

        let (child, url) = start_chromedriver(&chromedriver, &log).await;
        let mut browser = Browser { driver: None, chromedriver: Some(child), dir };

        let mut caps = DesiredCapabilities::chrome();
        let binary = chromium.to_str().expect("the Chromium path is UTF-8");
        caps.set_binary(binary).expect("the Chromium binary can be set");
        let profile_arg = format!("--user-data-dir={}", profile.display());
        let window_arg = format!("--window-size={WINDOW_SIZE}");
        for arg in [
            "--headless=new",
            // The tests run as root, where Chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            // Containers have a small /dev/shm.
            "--disable-dev-shm-usage",
            &window_arg,
            &profile_arg,
        ] {
            caps.add_arg(arg).expect("a Chromium argument can be added");
        }
        let driver = WebDriver::builder(url.as_str(), caps)
            .request_timeout(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "no Chromium session ({} via {}): {e}\n{}",
                    chromium.display(),
                    chromedriver.display(),
                    log_tail(&log)
                )
            });
        browser.driver = Some(driver);
        browser
    }

    /// The WebDriver session, for what the helpers here do not cover.
    pub fn driver(&self) -> &WebDriver {
        self.driver.as_ref().expect("the session is open until quit")
    }

    /// Saves a PNG of the viewport to `target/web-screenshots/<name>.png`
    /// (under `CARGO_TARGET_DIR` when set) and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let folder = screenshot_dir();
        std::fs::create_dir_all(&folder)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", folder.display()));
        let png =
            self.driver().screenshot_as_png().await.unwrap_or_else(|e| panic!("no screenshot {name:?}: {e}"));
        let path = folder.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Ends the session (Chromium exits) and stops chromedriver; panics if
    /// the session did not end cleanly.
    pub async fn quit(mut self) {
        let ended = match self.driver.take() {
            Some(driver) => driver.quit().await,
            None => Ok(()),
        };
        self.stop_chromedriver();
        if let Err(e) = ended {
            panic!("the WebDriver session did not end: {e}");
        }
    }

    /// Waits until an element matching `css` has a text containing `text`
    /// (any element matching `css` when `text` is empty).
    pub async fn wait_for_text(&self, css: &str, text: &str) {
        self.wait_until(css, &format!("an element {css:?} with text {text:?}"), |texts| {
            texts.iter().any(|t| t.contains(text))
        })
        .await;
    }

    /// Waits until no element matching `css` has a text containing `text`
    /// (until none matches `css` when `text` is empty).
    pub async fn wait_gone(&self, css: &str, text: &str) {
        self.wait_until(css, &format!("no element {css:?} with text {text:?}"), |texts| {
            !texts.iter().any(|t| t.contains(text))
        })
        .await;
    }

    /// The text of the first element matching `css`, once there is one.
    pub async fn text_of(&self, css: &str) -> String {
        let mut first = None;
        self.wait_until(css, &format!("an element {css:?}"), |texts| {
            first = texts.first().cloned();
            first.is_some()
        })
        .await;
        first.expect("the wait ended on an element")
    }

    /// Whether an element matches `css` now (no waiting: use
    /// [`Browser::wait_for_text`] with an empty text to wait for one).
    pub async fn exists(&self, css: &str) -> bool {
        let found = self.driver().find_all(By::Css(css)).await;
        !found.unwrap_or_else(|e| panic!("cannot look for {css:?}: {e}")).is_empty()
    }

    /// Polls the texts of the elements matching `css` (found anew each
    /// time, as the page may replace them) until `check` accepts them,
    /// failing the test after [`PAGE_DEADLINE`].
    async fn wait_until(&self, css: &str, what: &str, mut check: impl FnMut(&[String]) -> bool) {
        let deadline = Instant::now() + PAGE_DEADLINE;
        loop {
            let last = match self.texts(css).await {
                Ok(texts) if check(&texts) => return,
                Ok(texts) => format!("the texts were {texts:?}"),
                // An element replaced between finding and reading it.
                Err(e) => format!("the last look failed: {e}"),
            };
            if Instant::now() >= deadline {
                let url = self.driver().current_url().await.map(|u| u.to_string()).unwrap_or_default();
                panic!("timed out waiting for {what} on {url}; {last}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The rendered texts of the elements matching `css`, in page order.
    async fn texts(&self, css: &str) -> WebDriverResult<Vec<String>> {
        let mut texts = Vec::new();
        for element in self.driver().find_all(By::Css(css)).await? {
            texts.push(element.text().await?);
        }
        Ok(texts)
    }

    /// Kills chromedriver's process group (whatever Chromium processes a
    /// session left) and reaps chromedriver; once.
    fn stop_chromedriver(&mut self) {
        if let Some(mut child) = self.chromedriver.take() {
            kill_group(&mut child);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Not quit (a test panicked): end the session the way thirtyfour
        // does on drop (a blocking DELETE of the session, which closes
        // Chromium), then kill what remains.
        drop(self.driver.take());
        self.stop_chromedriver();
    }
}

/// chromedriver: `SYNCSTORE_CHROMEDRIVER`, else the one on PATH, else
/// Debian's.
fn find_chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("SYNCSTORE_CHROMEDRIVER") {
        return existing(PathBuf::from(path), "chromedriver (SYNCSTORE_CHROMEDRIVER)");
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join("chromedriver")).find(|p| p.is_file())
    });
    existing(on_path.unwrap_or_else(|| "/usr/bin/chromedriver".into()), "chromedriver")
}

/// Chromium: `SYNCSTORE_CHROMIUM`, else Debian's.
fn find_chromium() -> PathBuf {
    match std::env::var_os("SYNCSTORE_CHROMIUM") {
        Some(path) => existing(PathBuf::from(path), "Chromium (SYNCSTORE_CHROMIUM)"),
        None => existing("/usr/bin/chromium".into(), "Chromium"),
    }
}

fn existing(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} not found at {}: run `bash tests/setup` (as root it installs Debian's chromium and \
         chromium-driver), or set SYNCSTORE_CHROMIUM and SYNCSTORE_CHROMEDRIVER",
        path.display()
    );
    path
}

/// Runs chromedriver on a free loopback port, in a process group of its
/// own, and waits until it is ready; tries another port if it does not
/// come up. Returns the process and its URL.
async fn start_chromedriver(chromedriver: &Path, log: &Path) -> (Child, String) {
    let mut failures = Vec::new();
    for _ in 0..DRIVER_ATTEMPTS {
        let port = free_port();
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + DRIVER_START;
        let failure = loop {
            if driver_ready(addr).await {
                return (child, format!("http://{addr}"));
            }
            if let Ok(Some(status)) = child.try_wait() {
                break format!("chromedriver on port {port} exited: {status}");
            }
            if Instant::now() >= deadline {
                break format!("chromedriver on port {port} was not ready within {DRIVER_START:?}");
            }
            tokio::time::sleep(POLL).await;
        };
        kill_group(&mut child);
        failures.push(failure);
    }
    panic!("chromedriver did not start: {}\n{}", failures.join("; "), log_tail(log));
}

/// A port free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// Whether chromedriver at `addr` answers its /status as ready.
async fn driver_ready(addr: SocketAddr) -> bool {
    let ask = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // chromedriver keeps the connection open whatever the request
        // says: read until the answer shows.
        let mut reply = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.ok()?;
            reply.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&reply).replace(' ', "");
            if n == 0 || text.contains("\"ready\":") {
                return Some(text.starts_with("HTTP/1.1200") && text.contains("\"ready\":true"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten().unwrap_or(false)
}

/// Kills the process group `child` leads, then reaps `child`.
fn kill_group(child: &mut Child) {
    // kill(2) with a negative pid signals a whole group; std's kill signals
    // one process.
    unsafe extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill only sends a signal; `child` is not reaped yet, so
        // its pid (and group id) is still its own.
        unsafe { kill(-pid, SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The end of chromedriver's log, for a failure message.
fn log_tail(log: &Path) -> String {
    match std::fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            format!("chromedriver's log ({}) ends:\n{tail}", log.display())
        }
        Err(e) => format!("(no chromedriver log at {}: {e})", log.display()),
    }
}

/// Where screenshots go: `target/web-screenshots` of the workspace, or of
/// `CARGO_TARGET_DIR` (relative to the workspace, as cargo takes it there).
fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    target.join("web-screenshots")
}

/// The smoke test's page: a static element, and one a script fills in
/// after a moment (replacing a placeholder), so the waits have something
/// to wait for.
const SMOKE_PAGE: &str = r#"<!doctype html>
<html><head><title>syncstore smoke</title></head>
<body>
<h1>Browser smoke test</h1>
<p id="hello">Hello from the syncstore smoke test</p>
<p id="later" class="pending">loading…</p>
<script>
setTimeout(() => {
  const later = document.getElementById("later");
  later.textContent = "Scripted text";
  later.className = "done";
}, 200);
</script>
</body></html>
"#;

/// Serves [`SMOKE_PAGE`] at `/` (404 elsewhere), one response per
/// connection, until the test's runtime ends.
async fn serve_smoke_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port can be bound");
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if request.starts_with(b"GET / ") {
                    ("200 OK", SMOKE_PAGE)
                } else {
                    ("404 Not Found", "not found")
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// The harness end to end: Chromium loads a page from a loopback server,
/// its script runs, the helpers see the changes, and a screenshot is a PNG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let started = std::time::Instant::now();
    let addr = serve_smoke_page().await;
    let browser = Browser::start().await;
    eprintln!("browser started in {:?}", started.elapsed());

    browser.driver().goto(format!("http://{addr}/")).await.expect("the page loads");
    assert_eq!(browser.driver().title().await.unwrap(), "syncstore smoke");
    assert_eq!(browser.text_of("#hello").await, "Hello from the syncstore smoke test");
    assert!(browser.exists("h1").await);
    assert!(!browser.exists("#nothing-like-this").await);

    browser.wait_for_text("#later.done", "Scripted").await;
    browser.wait_gone("#later", "loading").await;
    browser.wait_gone(".pending", "").await;
    assert_eq!(browser.text_of("#later").await, "Scripted text");

    let path = browser.screenshot("smoke").await;
    let png = std::fs::read(&path).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    assert!(png.len() > 1000, "{} is only {} bytes", path.display(), png.len());

    browser.quit().await;
    eprintln!("smoke test done in {:?}", started.elapsed());
}
