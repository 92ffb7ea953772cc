//! The running client's control channel: a Unix socket, owner-only, in the
//! folder's state directory, through which `sync-client pause`, `resume`
//! and `status --live` reach the `watch` of the folder.
//!
//! The protocol is one line of JSON each way per connection: a
//! [`Request`], then a [`Reply`]. Both sides bound what they read.
//!
//! The socket lives in `DIR/.syncstore/control/` (mode 0700) and is itself
//! mode 0600: only the folder's owner (and root) can reach it. A socket
//! left by a client that crashed is replaced at start; two clients on one
//! folder are kept apart by the state's lock, taken before.

use std::{
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use syncstore::limits::STATE_DIR_NAME;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    error::{Error, Result},
    state::State,
};

/// The folder (below the state directory) that holds the socket.
pub const CONTROL_DIR: &str = "control";
/// The socket's name in [`CONTROL_DIR`].
pub const SOCKET_NAME: &str = "socket";
/// The longest request line the client reads; a request is a few words.
const MAX_REQUEST: u64 = 4 * 1024;
/// The longest reply line a command reads: the live status lists at most
/// [`MAX_LISTED`] paths of each kind, each path at most a few KiB.
const MAX_REPLY: u64 = 16 * 1024 * 1024;
/// Paths listed per kind (queued, failed) in the live status; the totals
/// are always given.
pub const MAX_LISTED: usize = 100;
/// How long either side waits for the other's line: the client answers
/// from memory, at once.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The state's key remembering a pause across restarts.
const PAUSED_KEY: &str = "paused";

/// What a command asks of the running client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Stop syncing: no new transfer starts, changes either way are queued.
    Pause,
    /// Sync again: a full sync catches up with what was queued.
    Resume,
    /// The live state.
    Status,
}

/// The running client's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// Why the request was refused (none: done).
    pub error: Option<String>,
    /// The live state after the request.
    pub live: Option<Live>,
}

/// What a running `watch` is doing right now.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Live {
    /// Whether syncing is paused (`sync-client pause`).
    pub paused: bool,
    /// The folder's mode: `send-receive`, `send-only` or `receive-only`.
    pub mode: String,
    /// The subtrees kept here (selective sync); empty: every path.
    #[serde(default)]
    pub only: Vec<String>,
    /// The server in use now.
    pub server: String,
    /// The servers given, primary first: `server` is a replica when it is
    /// not the first.
    pub servers: Vec<String>,
    /// The last server change this folder has applied.
    pub cursor: u64,
    /// The last server change this client has heard of.
    pub head: u64,
    /// Paths changed (here or on the server) and not yet looked at: while
    /// paused, what resuming will sync. At most [`MAX_LISTED`].
    pub queued: Vec<String>,
    /// How many paths are queued in all.
    pub queued_total: usize,
    /// Large transfers under way beside the loop.
    pub transfers: Vec<Transfer>,
    /// Paths whose last attempt failed, with the error; retried. At most
    /// [`MAX_LISTED`].
    pub errors: Vec<PathError>,
    /// How many paths wait for a retry in all.
    pub errors_total: usize,
}

/// A transfer under way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub path: String,
    /// `upload` or `download`.
    pub direction: String,
    /// The bytes it carries.
    pub size: u64,
    /// The bytes it has moved so far.
    pub done: u64,
    /// Seconds since it started.
    pub seconds: u64,
}

/// A path whose last attempt failed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathError {
    pub path: String,
    /// The last error ("" if none was recorded).
    pub error: String,
}

/// The running client's side: the pause switch and the last published live
/// state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    paused: Arc<watch::Sender<bool>>,
    live: Arc<Mutex<Live>>,
    state: State,
}

impl Control {
    /// A control for the folder whose state is `state`, paused if a pause
    /// was remembered there.
    pub fn new(state: State) -> Result<Self> {
        let paused = state.get_meta(PAUSED_KEY)?.as_deref() == Some("true");
        Ok(Self { paused: Arc::new(watch::Sender::new(paused)), live: Arc::default(), state })
    }

    /// Follows the pause switch.
    pub fn paused(&self) -> watch::Receiver<bool> {
        self.paused.subscribe()
    }

    /// Pauses or resumes, remembering it for the next start.
    pub fn set_paused(&self, paused: bool) -> Result<()> {
        self.state.set_meta(PAUSED_KEY, if paused { "true" } else { "false" })?;
        if self.paused.send_replace(paused) != paused {
            tracing::info!(paused, "{}", if paused { "paused" } else { "resumed" });
        }
        Ok(())
    }

    /// Replaces the published live state with what `f` makes of it.
    pub fn publish(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The live state now.
    pub fn live(&self) -> Live {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
        live.paused = *self.paused.borrow();
        match self.state.cursor() {
            Ok(c) => live.cursor = c,
            Err(e) => tracing::debug!(error = %e, "cannot read the cursor"),
        }
        live.head = live.head.max(live.cursor);
        live
    }

    fn answer(&self, request: Request) -> Reply {
        let done = match request {
            Request::Pause => self.set_paused(true),
            Request::Resume => self.set_paused(false),
            Request::Status => Ok(()),
        };
        match done {
            Ok(()) => Reply { error: None, live: Some(self.live()) },
            Err(e) => Reply { error: Some(e.to_string()), live: None },
        }
    }
}

/// Where the control socket of the folder `root` is.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(STATE_DIR_NAME).join(CONTROL_DIR).join(SOCKET_NAME)
}

/// Binds the control socket of `root` (whose state is open and locked),
/// owner-only, replacing one a crashed client left.
pub fn bind(root: &Path) -> Result<UnixListener> {
    let path = socket_path(root);
    let dir = path.parent().expect("the socket has a folder");
    std::fs::DirBuilder::new().mode(0o700).recursive(true).create(dir)?;
    // It may have been made before, less strictly: only its owner may get
    // in, whatever it was.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!("replaced a control socket left by an earlier client"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers commands on `listener` until `shutdown`, then removes the
/// socket.
pub async fn serve(listener: UnixListener, control: Control, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    continue;
                }
            },
        };
        let (control, stop) = (control.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                r = tokio::time::timeout(IO_TIMEOUT, answer(stream, &control)) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "control socket: a command failed"),
                    Err(_) => tracing::debug!("control socket: a command timed out"),
                },
            }
        });
    }
    if let Ok(addr) = listener.local_addr()
        && let Some(path) = addr.as_pathname()
    {
        let _ = std::fs::remove_file(path);
    }
    tasks.close();
    tasks.wait().await;
}

/// Reads one request from `stream` and writes the reply.
async fn answer(stream: UnixStream, control: &Control) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let line = read_line(read, MAX_REQUEST).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => control.answer(request),
        Err(e) => Reply { error: Some(format!("not a request: {e}")), live: None },
    };
    write_line(&mut write, &reply).await
}

/// Reads one line of at most `max` bytes.
async fn read_line(read: impl tokio::io::AsyncRead + Unpin, max: u64) -> Result<String> {
    let mut line = String::new();
    BufReader::new(read.take(max)).read_line(&mut line).await?;
    if !line.ends_with('\n') {
        return Err(Error::Protocol(format!("control socket: no complete line within {max} bytes")));
    }
    Ok(line)
}

async fn write_line(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    value: &impl serde::Serialize,
) -> Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    Ok(())
}

/// Sends `request` to the `watch` running on the folder `dir`: its live
/// state after the request, or [`Error::NotRunning`] if none runs.
pub async fn request(dir: &Path, request: Request) -> Result<Live> {
    let root = std::fs::canonicalize(dir)?;
    let path = socket_path(&root);
    let not_running = || Error::NotRunning(root.display().to_string());
    let exchange = async {
        let stream = match UnixStream::connect(&path).await {
            Ok(s) => s,
            // No socket, or one nobody listens on (left by a crash).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(not_running());
            }
            Err(e) => return Err(e.into()),
        };
        let (read, mut write) = stream.into_split();
        write_line(&mut write, &request).await?;
        let line = read_line(read, MAX_REPLY).await?;
        serde_json::from_str::<Reply>(&line)
            .map_err(|e| Error::Protocol(format!("control socket: an unreadable reply: {e}")))
    };
    let reply = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| Error::Protocol("the running client did not answer in time".into()))??;
    match reply {
        Reply { error: Some(e), .. } => Err(Error::Config(format!("the running client refused: {e}"))),
        Reply { live: Some(live), .. } => Ok(live),
        Reply { live: None, error: None } => Err(Error::Protocol("control socket: an empty reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_as_one_word_commands() {
        assert_eq!(serde_json::to_string(&Request::Pause).unwrap(), r#"{"command":"pause"}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"command":"resume"}"#).unwrap(), Request::Resume);
        assert!(serde_json::from_str::<Request>(r#"{"command":"delete-everything"}"#).is_err());
    }

    #[tokio::test]
    async fn the_socket_is_owner_only_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let state = State::open(&root).unwrap();
        // A socket file nobody listens on, as a crash leaves it.
        drop(bind(&root).unwrap());
        assert!(socket_path(&root).exists());
        let err = request(&root, Request::Status).await.unwrap_err();
        assert!(matches!(err, Error::NotRunning(_)), "{err}");

        let listener = bind(&root).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket_path(&root)), 0o600);
        assert_eq!(mode(socket_path(&root).parent().unwrap()), 0o700);

        let control = Control::new(state.clone()).unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, control.clone(), stop.clone()));
        assert!(!request(&root, Request::Status).await.unwrap().paused);
        assert!(request(&root, Request::Pause).await.unwrap().paused);
        assert!(*control.paused().borrow());
        // Remembered for the next start.
        assert!(*Control::new(state.clone()).unwrap().paused().borrow());
        assert!(!request(&root, Request::Resume).await.unwrap().paused);
        assert!(!*Control::new(state).unwrap().paused().borrow());

        // Garbage is answered with an error, and changes nothing.
        let mut raw = UnixStream::connect(socket_path(&root)).await.unwrap();
        raw.write_all(b"{\"command\":\"pause\",\n").await.unwrap();
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("not a request"), "{answer}");
        assert!(!*control.paused().borrow());

        stop.cancel();
        server.await.unwrap();
        assert!(!socket_path(&root).exists(), "the socket is removed at the end");
    }
}
