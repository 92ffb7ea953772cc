//! The client's error type.

use crate::remote::Refused;

/// Result alias for the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while syncing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the call (decoded by the wire module).
    #[error("{0}")]
    Server(ServerError),
    #[error("cannot connect to the server: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("{0}")]
    NoAnswer(#[from] syncstore::connect::NoAnswer),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state database: {0}")]
    State(#[from] rusqlite::Error),
    #[error("another sync-client is already running on {0}")]
    Busy(String),
    /// A command for the running client found none on the folder.
    #[error("no sync-client is running on {0} (`sync-client watch` runs one)")]
    NotRunning(String),
    #[error("the server sent something invalid: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "the synced folder {0} is gone (deleted, moved or unmounted); stopping without propagating any deletion"
    )]
    FolderGone(String),
    #[error("the local file changed while it was being read; will retry")]
    ChangedWhileReading,
    /// A chunk a download copies from the local file no longer matches its
    /// hash: the download starts over without the local file.
    #[error("the local file changed while chunks were copied from it")]
    LocalChunkChanged,
    /// A large transfer stopped because the folder was paused.
    #[error("stopped by a pause; resuming starts it again")]
    Paused,
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// A command that changes many files asked for a confirmation it
    /// could not get (no terminal to ask on, and no `--yes`).
    #[error("{0}")]
    NotConfirmed(String),
    /// The server refuses writes until its replica is back.
    #[error("not in sync: {0}")]
    WritesRefused(String),
}

impl Error {
    /// The server is away, or broke the call off, as `message` says.
    pub fn unavailable(message: &str) -> Self {
        Self::server(Refused::Unavailable, message)
    }

    /// A refusal `refused` of a server that named no reason of its own.
    pub fn server(refused: Refused, message: &str) -> Self {
        Error::Server(ServerError {
            refused,
            reason: String::new(),
            replica: String::new(),
            code: format!("{refused:?}"),
            message: message.to_owned(),
        })
    }

    /// Why the server refused the call, if it did.
    pub fn refused(&self) -> Option<Refused> {
        match self {
            Error::Server(e) => Some(e.refused),
            _ => None,
        }
    }

    /// Whether the server refused a write because someone else locked the
    /// path.
    pub fn is_locked(&self) -> bool {
        self.refused() == Some(Refused::Locked)
    }

    /// Whether the server refused a write because the lock token it carried
    /// is not the path's current lock (or the path's lock needs one).
    pub fn is_stale_lock(&self) -> bool {
        self.refused() == Some(Refused::StaleLock)
    }

    /// Whether the server refused a file where it has a folder (or below a
    /// file).
    pub fn is_path_clash(&self) -> bool {
        self.refused() == Some(Refused::PathClash)
    }

    /// Whether the server said the path, version or lock is not there.
    pub fn is_not_found(&self) -> bool {
        self.refused() == Some(Refused::NotFound)
    }

    /// Whether the server refused this client's credentials: no token, an
    /// unknown or removed one, or one without the access needed. Retrying
    /// does not help; a person must act.
    pub fn is_refused(&self) -> bool {
        self.refused() == Some(Refused::Credentials)
    }

    /// Whether the server refused a write because the token may only
    /// read (a read-only token).
    pub fn is_read_only_token(&self) -> bool {
        matches!(self, Error::Server(s) if s.refused == Refused::Credentials
            && s.reason == syncstore::Reason::PermissionDenied.as_str())
    }

    /// Whether the primary refused a write because its sync replica is
    /// away (nothing written), or did not confirm it (committed on the
    /// primary only).
    pub fn is_replica_refusal(&self) -> bool {
        self.refused() == Some(Refused::ReplicaAway)
    }

    /// Whether the server could not be reached, or did not answer in time
    /// (retry once it is back).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Connect(_) | Error::NoAnswer(_))
            || matches!(self.refused(), Some(Refused::Unavailable | Refused::ReplicaAway))
    }

    /// Whether the plan this error ended was made from facts that changed
    /// meanwhile (the local file, or the server's version or lock): the
    /// path is planned again.
    pub fn is_race(&self) -> bool {
        matches!(self, Error::ChangedWhileReading) || self.refused().is_some_and(Refused::is_race)
    }
}

/// A refusal from the server: what it means, and how to say it.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// What the refusal means.
    pub refused: Refused,
    /// The server's machine-readable reason, as it named it ("" if none).
    pub reason: String,
    /// The replica a replication refusal names ("" if none).
    pub replica: String,
    /// The gRPC code's name, for a refusal [`Refused::Other`] says nothing
    /// more of.
    pub code: String,
    /// The server's message.
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let message = &self.message;
        match self.refused {
            Refused::ReplicaAway => write!(f, "the server refused the write: {message}"),
            Refused::Unavailable => write!(f, "cannot reach the server ({message})"),
            Refused::Credentials if self.code == "Unauthenticated" => {
                write!(f, "the server refused this client's token: {message}")
            }
            Refused::Credentials => write!(f, "the server does not allow this: {message}"),
            Refused::DiskFull => f.write_str(
                "the server's disk is full: nothing was stored; the change is sent again once space is freed on the server",
            ),
            Refused::Damaged => write!(f, "the server's copy is damaged: {message}"),
            _ if self.reason.is_empty() => write!(f, "the server answered {}: {message}", self.code),
            _ => write!(f, "the server answered {}: {message} ({})", self.code, self.reason),
        }
    }
}

impl From<syncstore::EntryError> for Error {
    fn from(e: syncstore::EntryError) -> Self {
        Error::Protocol(e.to_string())
    }
}
