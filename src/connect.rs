//! How a program reaches a server: the endpoint (plain or TLS) and the
//! bearer token sent with every call.
//!
//! The client, the `compare` command and a primary's link to its replica
//! all connect through [`Security`], so a token or a certificate given once
//! applies to every call they make. Every connection attempt is bounded by
//! [`CONNECT_TIMEOUT`], and a call that waits for an answer goes through
//! [`answer`], so that a server that accepts connections but never answers
//! (frozen, overloaded, half-partitioned) ends the call with an error naming
//! it instead of hanging.

use std::{
    fmt,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
};

/// The metadata key a call's bearer token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// The environment variable a token may come from instead of a file (never
/// from a flag, which any user could read in `ps`).
pub const TOKEN_ENV: &str = "SYNCSTORE_TOKEN";

/// How long a new connection to a server (TCP, then TLS) may take to be set
/// up. Loopback and LAN connections take milliseconds; a server that drops
/// connection attempts is reported after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for an answer by default: a unary call's reply,
/// or the next message of a listing or a download. A healthy server answers
/// in milliseconds, and a write in sync replication mode in at most the
/// replica timeout (5 s by default); a server frozen mid-call (stopped,
/// swapping, its disk hung) is reported after this, by name. `--timeout`
/// changes it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 pings on an idle or long-running connection, and how long one
/// may go unanswered: a server that stopped answering (frozen, gone
/// without closing the connection) is found within their sum, under calls
/// that no call timeout bounds (a subscription, a long read-back).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A server did not answer a call in time.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server {server} did not answer within {}", humantime::format_duration(*.waited))]
pub struct NoAnswer {
    /// The server's URL.
    pub server: String,
    /// How long the call waited.
    pub waited: Duration,
}

/// Awaits `call`, made to `server`, for at most `limit`.
pub async fn answer<T>(server: &str, limit: Duration, call: impl Future<Output = T>) -> Result<T, NoAnswer> {
    tokio::time::timeout(limit, call).await.map_err(|_| NoAnswer { server: server.to_owned(), waited: limit })
}

/// A channel that adds the bearer token to every call.
pub type AuthChannel = InterceptedService<tonic::transport::Channel, Credentials>;

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad server address {url:?}: {reason}")]
    Address { url: String, reason: String },
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the token {0}")]
    Token(String),
    #[error("TLS for {url}: {reason}")]
    Tls { url: String, reason: String },
}

/// What a program presents to servers (its token and its TLS settings) and
/// how long it waits for their answers.
#[derive(Clone)]
pub struct Security {
    /// The bearer token (without the `Bearer ` prefix).
    pub token: Option<String>,
    /// Trust servers whose certificate this CA (PEM) signed, instead of the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate and its key (PEM), for servers that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How long a call waits for an answer (see [`answer`]).
    pub call_timeout: Duration,
}

impl Default for Security {
    fn default() -> Self {
        Self { token: None, ca_cert: None, identity: None, call_timeout: CALL_TIMEOUT }
    }
}

impl fmt::Debug for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Security")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("identity", &self.identity)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

impl Security {
    /// No token, no TLS settings: what an open server on loopback needs.
    pub fn none() -> Self {
        Self::default()
    }

    /// With the token read from `token_file`, or else from
    /// [`TOKEN_ENV`], if either is there.
    pub fn with_token_from(mut self, token_file: Option<&Path>) -> Result<Self, ConnectError> {
        self.token = match token_file {
            Some(path) => Some(read_token_file(path)?),
            None => match std::env::var(TOKEN_ENV) {
                Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
                _ => None,
            },
        };
        Ok(self)
    }

    /// The endpoint for `url`: TLS when it is `https://` (with the CA and
    /// client certificate given, else the system's roots), its connection
    /// attempts bounded by [`CONNECT_TIMEOUT`].
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, ConnectError> {
        let address = |reason: String| ConnectError::Address { url: url.to_owned(), reason };
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| address(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT);
        let https = url.starts_with("https://");
        if !https {
            if self.ca_cert.is_some() || self.identity.is_some() {
                return Err(address("TLS certificates were given but the address is not https://".into()));
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path, "the CA certificate")?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(
                read(cert, "the client certificate")?,
                read(key, "the client key")?,
            ));
        }
        endpoint.tls_config(tls).map_err(|e| ConnectError::Tls { url: url.to_owned(), reason: e.to_string() })
    }

    /// The interceptor that sends this token with every call.
    pub fn credentials(&self) -> Result<Credentials, ConnectError> {
        Credentials::new(self.token.as_deref())
    }

    /// A lazily connecting channel to `url` that carries the token.
    pub fn channel(&self, url: &str) -> Result<AuthChannel, ConnectError> {
        let channel = self.endpoint(url)?.connect_lazy();
        Ok(InterceptedService::new(channel, self.credentials()?))
    }
}

/// Reads a token file: the token is its first line, surrounding space
/// trimmed.
pub fn read_token_file(path: &Path) -> Result<String, ConnectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectError::Read {
        what: "the token file",
        path: path.to_owned(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(ConnectError::Token(format!("file {} is empty", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(file = %path.display(), "the token file is readable by other users; chmod 600 it");
        }
    }
    Ok(token.to_owned())
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::Read { what, path: path.to_owned(), source })
}

/// Adds `authorization: Bearer TOKEN` to every call (nothing without a
/// token).
#[derive(Clone)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        let value = match token {
            None => None,
            Some(t) => {
                let mut v: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ConnectError::Token("holds characters a header cannot carry".into()))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Self(value))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Credentials(<redacted>)" } else { "Credentials(none)" })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_first_line_trimmed() {
        let dir = std::env::temp_dir().join(format!("syncstore-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        std::fs::write(&f, "  sst_abc \nignored\n").unwrap();
        assert_eq!(read_token_file(&f).unwrap(), "sst_abc");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(read_token_file(&f), Err(ConnectError::Token(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn certificates_need_https() {
        let s = Security { ca_cert: Some("ca.pem".into()), ..Security::none() };
        assert!(matches!(s.endpoint("http://127.0.0.1:1"), Err(ConnectError::Address { .. })));
        assert!(Security::none().endpoint("http://127.0.0.1:1").is_ok());
    }

    #[tokio::test]
    async fn a_call_without_an_answer_names_its_server() {
        let limit = Duration::from_millis(50);
        let e = answer("http://frozen:1", limit, std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(e.to_string(), "the server http://frozen:1 did not answer within 50ms");
        assert_eq!(answer("http://up:1", limit, async { 7 }).await.unwrap(), 7);
    }

    #[test]
    fn credentials_add_the_bearer_header_and_hide_it() {
        let mut c = Credentials::new(Some("sst_x")).unwrap();
        let r = c.call(Request::new(())).unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer sst_x");
        assert!(!format!("{c:?}").contains("sst_x"));
        let mut none = Credentials::new(None).unwrap();
        assert!(none.call(Request::new(())).unwrap().metadata().get(AUTHORIZATION).is_none());
        assert!(Credentials::new(Some("bad\nvalue")).is_err());
    }
}
