//! Who is calling and what they may do: bearer tokens, the token file that
//! lists them (as hashes), and the interceptor that checks every call.
//!
//! A token grants one access level. `read-only` and `read-write` tokens live
//! in one namespace: every path, lock, event and cursor they see is that
//! namespace's. `admin` (the `Admin` service) and `replication` (a
//! primary's link to its replica) see every namespace and nothing else.
//!
//! Tokens are random (256 bits), so a fast keyed hash is enough to store
//! them: the file holds `BLAKE3-derive-key(token)`, never the token. A
//! presented token is hashed once and compared with every stored hash in
//! constant time, without stopping at a match.
//!
//! Without a token file the server is open: every caller is the anonymous
//! principal of the default namespace, allowed everything. [`crate::serve`]
//! allows that only on a loopback address unless told otherwise.

use std::{
    collections::BTreeSet,
    fmt,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, service::Interceptor};

use syncstore::Reason;
use tonic::Code;

use crate::{
    error::{Error, Result, refusal},
    storage::DEFAULT_NAMESPACE,
};

/// How often the token file is checked for changes: a token removed is
/// refused within this long, without a restart.
pub const TOKEN_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The key BLAKE3 derives token hashes with; changing it invalidates every
/// stored hash.
const HASH_CONTEXT: &str = "syncstore 2026-11 bearer token hash v1";

/// What every generated token starts with, so one found in a log or a
/// repository is recognisable.
pub const TOKEN_PREFIX: &str = "sst_";

/// Longest namespace name.
const MAX_NAMESPACE_LEN: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// List, stat, download, subscribe and list locks in its namespace.
    ReadOnly,
    /// Also upload, delete, lock and unlock in its namespace.
    ReadWrite,
    /// The `Admin` service (status and digest of every namespace).
    Admin,
    /// The `Replication` service: a primary feeding this server.
    Replication,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
            Access::Admin => "admin",
            Access::Replication => "replication",
        }
    }

    /// Whether tokens of this access belong to one namespace.
    pub fn has_namespace(self) -> bool {
        matches!(self, Access::ReadOnly | Access::ReadWrite)
    }
}

/// The caller of `request`, whatever it may do.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    match request.extensions().get::<Principal>() {
        Some(p) => Ok(p.clone()),
        // Every service is wrapped by the authenticator; this is a bug.
        None => Err(refusal(Code::Internal, Reason::Internal, "the call was not authenticated")),
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
    Admin,
    Replication,
}

/// The caller of a request, put in its extensions by [`Authenticator`].
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's display name ("anonymous" on an open server).
    pub name: String,
    /// The namespace it reads and writes ("" for admin and replication).
    pub namespace: String,
    pub access: Access,
    /// On an open server: allowed everything, in the default namespace.
    open: bool,
    /// May break other holders' locks (`Unlock` with `force`).
    pub break_locks: bool,
    /// The hash of the token it presented (none on an open server), to
    /// tell when that token is removed.
    token: Option<blake3::Hash>,
}

impl Principal {
    fn open() -> Self {
        Self {
            name: "anonymous".into(),
            namespace: DEFAULT_NAMESPACE.into(),
            access: Access::ReadWrite,
            open: true,
            break_locks: true,
            token: None,
        }
    }

    /// The reader behind a share link (`share:ID`): read-only, in the
    /// link's namespace, with no token to be removed (the link's own
    /// record is checked on every request instead).
    pub(crate) fn share(link_id: &str, namespace: &str) -> Self {
        Self {
            name: format!("share:{link_id}"),
            namespace: namespace.to_owned(),
            access: Access::ReadOnly,
            open: false,
            break_locks: false,
            token: None,
        }
    }

    /// Whether this caller may do what `need` asks.
    pub fn allows(&self, need: Need) -> bool {
        self.open
            || match need {
                Need::Read => self.access.has_namespace(),
                Need::Write => self.access == Access::ReadWrite,
                Need::Admin => self.access == Access::Admin,
                Need::Replication => self.access == Access::Replication,
            }
    }
}

/// The caller of `request`, if it may do what `need` asks; else
/// `PERMISSION_DENIED` saying what its token lacks.
pub fn caller<T>(request: &Request<T>, need: Need) -> Result<Principal, Status> {
    let p = principal(request)?;
    if p.allows(need) {
        return Ok(p);
    }
    let wanted = match need {
        Need::Read => "a read-only or read-write token",
        Need::Write => "a read-write token",
        Need::Admin => "an admin token",
        Need::Replication => "a replication token",
    };
    Err(refusal(
        Code::PermissionDenied,
        Reason::PermissionDenied,
        format!("the token {:?} is {}; this call needs {wanted}", p.name, p.access.as_str()),
    ))
}

/// Checks that a namespace name is usable: 1 to 64 of `a-z 0-9 . _ -`,
/// not starting with a dot.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= MAX_NAMESPACE_LEN
        && !ns.starts_with('.')
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad namespace {ns:?}: use 1 to {MAX_NAMESPACE_LEN} of a-z, 0-9, '.', '_' and '-', not starting with '.'"
        ))
    }
}

/// The hash a token is stored as.
pub fn hash_token(token: &str) -> blake3::Hash {
    blake3::Hash::from(blake3::derive_key(HASH_CONTEXT, token.as_bytes()))
}

/// A new random token.
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + 64);
    s.push_str(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One token as the file lists it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Unique display name, e.g. "alice-laptop".
    pub name: String,
    /// For read-only and read-write tokens: the namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub access: Access,
    /// BLAKE3 (derived key) of the token, in hex.
    pub hash: String,
    /// When it was added (RFC 3339), for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created: String,
    /// A read-write token's right to break other holders' locks in its
    /// namespace (`Unlock` with `force`), an administrator's action.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_locks: bool,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// The token file (`--tokens`): TOML, one `[[token]]` table per token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenRecord>,
}

const FILE_HEADER: &str = "\
# syncstore tokens: one [[token]] per token, stored as a hash.
# Managed with `sync-server token add|remove|list --tokens FILE`; the server
# rereads this file within a second of a change.
";

impl TokenFile {
    /// Reads and checks a token file; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(Error::Config(format!("cannot read {}: {e}", path.display()))),
        };
        let file: TokenFile =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        file.check().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        for t in &self.tokens {
            if t.name.trim().is_empty() {
                return Err("a token has an empty name".into());
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("two tokens are named {:?}", t.name));
            }
            match (t.access.has_namespace(), t.namespace.is_empty()) {
                (true, _) => check_namespace(&t.namespace).map_err(|e| format!("token {:?}: {e}", t.name))?,
                (false, false) => {
                    return Err(format!(
                        "token {:?} is {}: it sees every namespace and names none",
                        t.name,
                        t.access.as_str()
                    ));
                }
                (false, true) => {}
            }
            parse_hash(&t.hash).map_err(|e| format!("token {:?}: {e}", t.name))?;
        }
        Ok(())
    }

    /// Writes the file atomically (temp + fsync + rename), readable by its
    /// owner only.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let body = toml::to_string(self).map_err(|e| Error::Internal(format!("token file: {e}")))?;
        let mut tmp = tempfile::Builder::new().prefix(".tokens-").tempfile_in(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        tmp.write_all(FILE_HEADER.as_bytes())?;
        tmp.write_all(body.as_bytes())?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| Error::Io(e.error))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Adds a token; returns the token itself, which is shown once and
    /// never stored.
    pub fn add(&mut self, name: &str, namespace: &str, access: Access) -> Result<String> {
        let token = generate_token();
        let mut next = self.clone();
        next.tokens.push(TokenRecord {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            access,
            hash: hash_token(&token).to_hex().to_string(),
            created: rfc3339_now(),
            break_locks: false,
        });
        next.check().map_err(Error::InvalidArgument)?;
        *self = next;
        Ok(token)
    }

    /// Gives the token named `name` the right to break other holders' locks
    /// (or takes it away); false if there is no such token. Only read-write
    /// tokens can hold it.
    pub fn set_break_locks(&mut self, name: &str, on: bool) -> Result<bool> {
        let Some(t) = self.tokens.iter_mut().find(|t| t.name == name) else { return Ok(false) };
        if on && t.access != Access::ReadWrite {
            return Err(Error::InvalidArgument(format!(
                "token {name:?} is {}: only read-write tokens may break locks",
                t.access.as_str()
            )));
        }
        t.break_locks = on;
        Ok(true)
    }

    /// Removes the token named `name`; false if there is none.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        self.tokens.len() != before
    }
}

fn parse_hash(hex: &str) -> Result<blake3::Hash, String> {
    blake3::Hash::from_hex(hex).map_err(|_| "its hash is not 64 hex digits".to_owned())
}

/// The current time as RFC 3339 (UTC, seconds).
fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The tokens in force: hashes and whom they stand for.
#[derive(Debug, Default)]
struct Tokens(Vec<(blake3::Hash, Principal)>);

impl Tokens {
    fn holds(&self, hash: &blake3::Hash) -> bool {
        self.0.iter().any(|(h, _)| h == hash)
    }

    fn from_file(file: &TokenFile) -> Self {
        Self(
            file.tokens
                .iter()
                .map(|t| {
                    let hash = parse_hash(&t.hash).expect("checked when loaded");
                    let principal = Principal {
                        name: t.name.clone(),
                        namespace: t.namespace.clone(),
                        access: t.access,
                        open: false,
                        break_locks: t.break_locks && t.access == Access::ReadWrite,
                        token: Some(hash),
                    };
                    (hash, principal)
                })
                .collect(),
        )
    }

    /// The principal of `token`. Every stored hash is compared, each in
    /// constant time (`blake3::Hash`'s equality), so the time taken says
    /// nothing about which hash was close or matched.
    fn lookup(&self, token: &str) -> Option<Principal> {
        let presented = hash_token(token);
        let mut found = None;
        for (hash, principal) in &self.0 {
            if *hash == presented && found.is_none() {
                found = Some(principal);
            }
        }
        found.cloned()
    }
}

/// The tokens from a file, reloaded when the file changes.
#[derive(Debug)]
struct TokenSource {
    path: PathBuf,
    /// The tokens in force; long calls (subscriptions) watch it to end
    /// when their token is removed.
    tokens: watch::Sender<Arc<Tokens>>,
    /// The file's (modified time, length) when last read.
    seen: RwLock<Option<(SystemTime, u64)>>,
}

impl TokenSource {
    fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let md = std::fs::metadata(path).ok()?;
        Some((md.modified().ok()?, md.len()))
    }

    /// Rereads the file if it changed; a file that no longer parses keeps
    /// the tokens in force (and says so).
    fn reload_if_changed(&self) {
        let stamp = Self::stamp(&self.path);
        if *self.seen.read().unwrap_or_else(|p| p.into_inner()) == stamp {
            return;
        }
        *self.seen.write().unwrap_or_else(|p| p.into_inner()) = stamp;
        match TokenFile::load(&self.path) {
            Ok(file) => {
                let tokens = Tokens::from_file(&file);
                tracing::info!(file = %self.path.display(), tokens = tokens.0.len(), "tokens reloaded");
                self.tokens.send_replace(Arc::new(tokens));
            }
            Err(e) => tracing::error!(error = %e, "the token file is broken; keeping the tokens in force"),
        }
    }
}

/// The interceptor every service sits behind: puts the caller's
/// [`Principal`] in the request, or refuses it with `UNAUTHENTICATED`.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator(Option<Arc<TokenSource>>);

impl Authenticator {
    /// Lets every call in, as the anonymous principal.
    pub fn open() -> Self {
        Self(None)
    }

    /// Checks calls against the tokens of `path` (which must parse).
    pub fn from_file(path: &Path) -> Result<Self> {
        // The stamp is taken first: a change made while the file is read is
        // seen by the next reload.
        let seen = TokenSource::stamp(path);
        if seen.is_none() {
            return Err(Error::Config(format!(
                "the token file {} does not exist; create it with `sync-server token add --tokens {0} ...`",
                path.display()
            )));
        }
        let file = TokenFile::load(path)?;
        if file.tokens.is_empty() {
            tracing::warn!(file = %path.display(), "the token file lists no token: every call will be refused");
        }
        Ok(Self(Some(Arc::new(TokenSource {
            path: path.to_owned(),
            tokens: watch::Sender::new(Arc::new(Tokens::from_file(&file))),
            seen: RwLock::new(seen),
        }))))
    }

    pub fn is_open(&self) -> bool {
        self.0.is_none()
    }

    /// Resolves once the token `principal` presented is no longer in force
    /// (never on an open server): a subscription ends then.
    pub async fn revoked(&self, principal: &Principal) {
        let (Some(source), Some(hash)) = (&self.0, principal.token) else {
            return std::future::pending().await;
        };
        let mut tokens = source.tokens.subscribe();
        loop {
            if !tokens.borrow_and_update().holds(&hash) {
                return;
            }
            if tokens.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Rereads the token file whenever it changes, until `shutdown`.
    pub async fn watch(self, shutdown: CancellationToken) {
        let Some(source) = self.0 else { return };
        let mut tick = tokio::time::interval(TOKEN_RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let s = source.clone();
            let _ = tokio::task::spawn_blocking(move || s.reload_if_changed()).await;
        }
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if self.is_open() {
            return Ok(Principal::open());
        }
        let Some(value) = request.metadata().get(syncstore::connect::AUTHORIZATION) else {
            return Err(refusal(
                Code::Unauthenticated,
                Reason::Unauthenticated,
                "this server needs a token: send the metadata `authorization: Bearer TOKEN` \
                 (sync-client: --token-file or SYNCSTORE_TOKEN)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| {
                refusal(
                    Code::Unauthenticated,
                    Reason::Unauthenticated,
                    "the authorization metadata must be `Bearer TOKEN`",
                )
            })?;
        self.check(Some(token)).inspect_err(|_| {
            tracing::info!(peer = ?request.remote_addr(), "refused an unknown token");
        })
    }

    /// Whom `token` stands for here (`None`: no token), as a call that
    /// presents it is taken: the web dashboard's login, and its check on
    /// every page that a session's token was not removed since.
    pub(crate) fn check(&self, token: Option<&str>) -> Result<Principal, Status> {
        let Some(source) = &self.0 else {
            return Ok(Principal::open());
        };
        let unknown = || {
            refusal(
                Code::Unauthenticated,
                Reason::Unauthenticated,
                "the token is not valid here (unknown, or removed)",
            )
        };
        let token = token.ok_or_else(unknown)?;
        let tokens = source.tokens.borrow().clone();
        tokens.lookup(token).ok_or_else(unknown)
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let principal = self.authenticate(&request)?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_with(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_are_stored_as_hashes_and_found_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = TokenFile::default();
        let alice = file.add("alice", "team-a", Access::ReadWrite).unwrap();
        let viewer = file.add("viewer", "team-a", Access::ReadOnly).unwrap();
        file.add("ops", "", Access::Admin).unwrap();
        file.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&alice[TOKEN_PREFIX.len()..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(TokenFile::load(&path).unwrap(), file);

        let mut auth = Authenticator::from_file(&path).unwrap();
        let r = auth.call(request_with(Some(&alice))).unwrap();
        let p = r.extensions().get::<Principal>().unwrap();
        assert_eq!((p.name.as_str(), p.namespace.as_str()), ("alice", "team-a"));
        assert!(p.allows(Need::Write) && !p.allows(Need::Admin));
        let r = auth.call(request_with(Some(&viewer))).unwrap();
        let p = r.extensions().get::<Principal>().unwrap();
        assert!(p.allows(Need::Read) && !p.allows(Need::Write));

        let code = |r: Result<Request<()>, Status>| r.unwrap_err().code();
        assert_eq!(code(auth.call(request_with(None))), tonic::Code::Unauthenticated);
        assert_eq!(code(auth.call(request_with(Some("sst_nope")))), tonic::Code::Unauthenticated);
        let mut basic = Request::new(());
        basic.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(code(auth.call(basic)), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bad_files_are_refused() {
        let bad = [
            "[[token]]\nname = \"a\"\naccess = \"read-write\"\nhash = \"00\"\nnamespace = \"x\"\n",
            "[[token]]\nname = \"a\"\naccess = \"read-write\"\nnamespace = \"../x\"\nhash = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
            "[[token]]\nname = \"a\"\naccess = \"admin\"\nnamespace = \"x\"\nhash = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
            "[[token]]\nname = \"a\"\naccess = \"owner\"\nhash = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        ];
        let dir = tempfile::tempdir().unwrap();
        for (i, text) in bad.iter().enumerate() {
            let path = dir.path().join(format!("t{i}"));
            std::fs::write(&path, text).unwrap();
            assert!(TokenFile::load(&path).is_err(), "{text}");
        }
        let mut file = TokenFile::default();
        file.add("a", "x", Access::ReadOnly).unwrap();
        assert!(file.add("a", "y", Access::ReadOnly).is_err(), "duplicate name");
        assert!(file.remove("a") && !file.remove("a"));
    }

    #[test]
    fn namespaces_are_plain_names() {
        for ok in ["default", "team-a", "alice.home", "x_1"] {
            check_namespace(ok).unwrap();
        }
        for bad in ["", ".hidden", "A", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
