//! A cluster of real servers and clients for end-to-end tests: servers on
//! `127.0.0.1:0` with temp data folders, clients watching temp folders, and
//! `eventually`, which waits on a condition with a deadline.
//!
//! Servers run on the embedded backend unless `SYNCSTORE_TEST_BACKEND=postgres`
//! is set: then every [`TestServer::start`] (and its variants) runs on the
//! shared backend, a fresh PostgreSQL database and S3 bucket per server on
//! one PostgreSQL cluster and one s3s-fs of the test process ([`Services`]).
//! [`TestServer::start_group`] starts several servers over one database and
//! bucket whatever the variable says, and [`ServerProcess`] runs the real
//! `sync-server` binary, for the tests that kill one.

use std::{
    collections::BTreeMap,
    future::Future,
    io::BufRead,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sync_server::{
    Backend,
    testing::{
        postgres::Postgres,
        s3::{self, S3},
    },
};
use syncstore::{
    ContentHash,
    connect::{AuthChannel, Security},
    pb::{self, file_sync_client::FileSyncClient, upload_request},
};
use tempfile::TempDir;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long any condition may take to become true.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How often conditions are checked.
const POLL: Duration = Duration::from_millis(20);

/// With `SYNCSTORE_TEST_LOG=FILE`, the servers' and clients' logs (at
/// `RUST_LOG`, default debug) go to FILE, each client's lines tagged with
/// its folder: for digging into a failing seed.
pub fn init_test_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let Some(file) = std::env::var_os("SYNCSTORE_TEST_LOG") else { return };
    ONCE.call_once(|| {
        let file = std::fs::File::create(file).expect("the log file can be created");
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug,h2=info,hyper=info,tower=info"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .init();
    });
}

/// Waits until `check` returns true, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Like [`eventually`], for an async check.
pub async fn eventually_async<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_within(DEADLINE, what, check).await;
}

/// Like [`eventually_async`], with its own deadline (for work whose size
/// is the point of the test).
pub async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A server running in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The web dashboard's address, when it serves one.
    pub web: Option<SocketAddr>,
    pub config: sync_server::Config,
    data: Option<TempDir>,
    shutdown: CancellationToken,
    task: JoinHandle<sync_server::Result<()>>,
}

impl TestServer {
    /// A fresh server on an ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A fresh server whose config `tweak` adjusts (on the backend this
    /// test process runs on, see [`on_shared_backend`]).
    pub async fn start_with(tweak: impl FnOnce(&mut sync_server::Config)) -> Self {
        init_test_log();
        let data = tempfile::tempdir().unwrap();
        let mut config = sync_server::Config::new(data.path().join("data"));
        if on_shared_backend() {
            config.backend = Services::of_process().fresh_backend();
        }
        tweak(&mut config);
        Self::spawn(config, Some(data), "127.0.0.1:0".parse().unwrap()).await
    }

    /// `n` servers over one fresh PostgreSQL database and S3 bucket (of
    /// this process's [`Services`]), each on its own port with its own
    /// data folder, whatever backend the other tests run on.
    pub async fn start_group(n: usize) -> Vec<Self> {
        Self::start_group_over(&Services::of_process().fresh_backend(), n, |_| {}).await
    }

    /// `n` servers over `backend` (a shared one), each on its own port and
    /// data folder, their configs adjusted by `tweak`; they open the
    /// backend at the same time (as processes of a deployment starting
    /// together do).
    pub async fn start_group_over(
        backend: &Backend,
        n: usize,
        tweak: impl Fn(&mut sync_server::Config),
    ) -> Vec<Self> {
        init_test_log();
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            let data = tempfile::tempdir().unwrap();
            let mut config = sync_server::Config::new(data.path().join("data"));
            config.backend = backend.clone();
            tweak(&mut config);
            servers.push(Self::spawn(config, Some(data), "127.0.0.1:0".parse().unwrap()).await);
        }
        servers
    }

    /// A fresh server that also serves the web dashboard, on an ephemeral
    /// port of its own.
    pub async fn start_with_web(tweak: impl FnOnce(&mut sync_server::Config)) -> Self {
        init_test_log();
        let data = tempfile::tempdir().unwrap();
        let mut config = sync_server::Config::new(data.path().join("data"));
        tweak(&mut config);
        let web = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::spawn_with(config, Some(data), "127.0.0.1:0".parse().unwrap(), Some(web)).await
    }

    /// The dashboard's URL (the server must serve one).
    pub fn web_url(&self) -> String {
        format!("http://{}", self.web.expect("this server serves no dashboard"))
    }

    async fn spawn(config: sync_server::Config, data: Option<TempDir>, addr: SocketAddr) -> Self {
        Self::spawn_with(config, data, addr, None).await
    }

    async fn spawn_with(
        config: sync_server::Config,
        data: Option<TempDir>,
        addr: SocketAddr,
        web: Option<TcpListener>,
    ) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let web_addr = web.as_ref().map(|l| l.local_addr().unwrap());
        let served = {
            let (config, shutdown) = (config.clone(), shutdown.clone());
            async move {
                let mut server = sync_server::Server::open(config).await?;
                if let Some(web) = web {
                    server = server.with_web(web)?;
                }
                server.serve(listener, shutdown).await
            }
        };
        let task = tokio::spawn(async move {
            let served = served.await;
            // A server that cannot start shows only as refused connections
            // otherwise.
            if let Err(e) = &served {
                eprintln!("the server on {addr} ended: {e}");
            }
            served
        });
        Self { addr, web: web_addr, config, data, shutdown, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Stops gracefully and waits until it has.
    pub async fn stop(mut self) -> (sync_server::Config, Option<TempDir>, SocketAddr) {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
        // A blocking step of a request the shutdown cut off may still hold
        // the store: the next server on this folder waits for its lock.
        let lock = self.config.data_dir.join("lock");
        eventually("the stopped server's data folder is released", || {
            std::fs::File::open(&lock).map_or(true, |f| f.try_lock().is_ok())
        })
        .await;
        (self.config.clone(), self.data.take(), self.addr)
    }

    /// Stops and starts again on the same data folder and port.
    pub async fn restart(self) -> Self {
        let (config, data, addr) = self.stop().await;
        Self::spawn(config, data, addr).await
    }

    /// A new server with an empty data folder (on the shared backend: an
    /// empty database and bucket) on the same port (a replaced or wiped
    /// server).
    pub async fn replace_with_empty(self) -> Self {
        let (old, _old_data, addr) = self.stop().await;
        let data = tempfile::tempdir().unwrap();
        let mut config = sync_server::Config::new(data.path().join("data"));
        if matches!(old.backend, Backend::Shared { .. }) {
            config.backend = Services::of_process().fresh_backend();
        }
        Self::spawn(config, Some(data), addr).await
    }

    /// A replica on an ephemeral port with a fresh data folder.
    pub async fn start_replica() -> Self {
        Self::start_with(|c| c.role = sync_server::Role::Replica).await
    }

    /// A primary that fans out to `replica` in `mode`, failing or degrading
    /// after `timeout`.
    pub async fn start_primary_of(
        replica: &TestServer,
        mode: sync_server::Mode,
        on_timeout: sync_server::OnTimeout,
        timeout: Duration,
        tweak: impl FnOnce(&mut sync_server::Config),
    ) -> Self {
        let url = replica.url();
        Self::start_with(move |c| {
            c.replica = Some(sync_server::ReplicaConfig {
                url,
                mode,
                timeout,
                on_timeout,
                security: Default::default(),
            });
            tweak(c);
        })
        .await
    }

    /// Starts a server on `config` (an existing data folder) on `addr`.
    pub async fn start_on(config: sync_server::Config, addr: SocketAddr) -> Self {
        Self::spawn(config, None, addr).await
    }

    pub async fn admin(&self) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::connect(self.url()).await.unwrap()
    }

    pub async fn status(&self) -> pb::StatusResponse {
        self.admin().await.status(pb::StatusRequest::default()).await.unwrap().into_inner()
    }

    /// How many contents the server stores (each once, however many files
    /// refer to it), as it counts them.
    pub async fn stored_blobs(&self) -> u64 {
        self.stored_content().await.0
    }

    /// How many contents the server stores and their total size in bytes.
    pub async fn stored_content(&self) -> (u64, u64) {
        stored_content_of(&self.url(), &Security::none()).await
    }

    pub async fn rpc(&self) -> Rpc {
        rpc_with(&self.url(), &Security::none())
    }

    /// The live files on the server: path → content.
    pub async fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut rpc = self.rpc().await;
        let list = rpc.list(pb::ListRequest::default()).await.unwrap().into_inner();
        let mut out = BTreeMap::new();
        for e in entries_of(list).await.unwrap() {
            if e.folder {
                continue; // Folders: see `folders`.
            }
            match download(&mut rpc, &e.path).await {
                Ok(data) => {
                    out.insert(e.path.clone(), data);
                }
                // Deleted between the listing and the download.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => panic!("download of {}: {s:?}", e.path),
            }
        }
        out
    }
}

impl TestServer {
    /// The paths of the live files the server lists (without downloading
    /// them).
    pub async fn files_listed(&self) -> Vec<String> {
        let list = self.rpc().await.list(pb::ListRequest::default()).await.unwrap().into_inner();
        entries_of(list).await.unwrap().into_iter().filter(|e| !e.folder).map(|e| e.path).collect()
    }

    /// The folders the server holds as entries of their own.
    pub async fn folders(&self) -> Vec<String> {
        let list = self.rpc().await.list(pb::ListRequest::default()).await.unwrap().into_inner();
        let mut out = Vec::new();
        for e in entries_of(list).await.unwrap() {
            if e.folder {
                out.push(e.path);
            }
        }
        out
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The variable that puts every [`TestServer`] of the test process on the
/// shared backend: `postgres` (PostgreSQL + S3), or `embedded` (the
/// default).
pub const BACKEND_VAR: &str = "SYNCSTORE_TEST_BACKEND";

/// Whether this test process runs its servers on the shared backend
/// ([`BACKEND_VAR`]).
pub fn on_shared_backend() -> bool {
    static SHARED: OnceLock<bool> = OnceLock::new();
    *SHARED.get_or_init(|| match std::env::var(BACKEND_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("embedded" | "") | Err(_) => false,
        Ok(other) => panic!("{BACKEND_VAR}={other}: expected postgres or embedded"),
    })
}

/// A PostgreSQL cluster and an s3s-fs server (each stopped on drop, or by
/// its watcher when the test process dies), on which each shared-backend
/// server gets a fresh database and bucket.
pub struct Services {
    pub postgres: Postgres,
    pub s3: S3,
}

impl Services {
    /// Starts a cluster and an s3s-fs of their own: for a test that stops
    /// them (the other tests share [`Services::of_process`]).
    pub fn start() -> Self {
        let services = Self { postgres: Postgres::start(), s3: S3::start() };
        services.export_credentials();
        services
    }

    /// The test process's services, started on first use and stopped by
    /// their watchers when the process ends.
    pub fn of_process() -> &'static Self {
        static SERVICES: OnceLock<Services> = OnceLock::new();
        SERVICES.get_or_init(Self::start)
    }

    /// A fresh database and bucket, as a server's backend.
    pub fn fresh_backend(&self) -> Backend {
        // Unique in the cluster and the s3s-fs (which outlive no process
        // but may serve several tests at once), and a valid bucket name.
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!("t{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let meta = self.postgres.create_database(&name);
        self.s3.create_bucket(&name);
        Backend::Shared { meta, content: self.s3.url(&name) }
    }

    /// The in-process servers read the bucket's credentials from the
    /// environment (as a deployed server does); every s3s-fs of the tests
    /// has the same ones, so they are set once, before the first server on
    /// a shared backend starts.
    fn export_credentials(&self) {
        static EXPORTED: std::sync::Once = std::sync::Once::new();
        let (key, secret) = self.s3.credentials();
        EXPORTED.call_once(|| {
            // SAFETY: set once per process, before any server that reads
            // them starts; std's own readers of the environment (the only
            // ones in these tests) take the lock `set_var` takes.
            unsafe {
                std::env::set_var("AWS_ACCESS_KEY_ID", key);
                std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
            }
        });
    }
}

/// The real `sync-server` binary running as a child process over a shared
/// backend, on a free loopback port with a temp data folder; killed
/// (SIGKILL) on drop. Its output is kept for a failing test's message.
pub struct ServerProcess {
    pub addr: SocketAddr,
    child: Child,
    output: Arc<Mutex<String>>,
    _data: TempDir,
}

impl ServerProcess {
    /// The `sync-server` binary of this build: cargo puts it beside the
    /// folder of this test binary (`cargo test --workspace` builds it).
    pub fn binary() -> PathBuf {
        let exe = std::env::current_exe().expect("the test binary's path");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary is in target/*/deps")
            .join("sync-server");
        assert!(
            bin.exists(),
            "{} is missing: build it first (cargo build -p sync-server; cargo test --workspace does)",
            bin.display()
        );
        bin
    }

    /// A `sync-server` command over `backend`, with the bucket's
    /// credentials in its environment.
    pub fn command(backend: &Backend, data: &Path) -> Command {
        let Backend::Shared { meta, content } = backend else {
            panic!("a server process runs on a shared backend")
        };
        let mut cmd = Command::new(Self::binary());
        cmd.arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .arg("--meta")
            .arg(meta)
            .arg("--content")
            .arg(content)
            .arg("--no-web")
            .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .env_remove("SYNCSTORE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts a server over `backend` and waits (up to [`DEADLINE`]) until
    /// it prints the address it serves on.
    pub async fn start(backend: &Backend) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut child =
            Self::command(backend, &data.path().join("data")).spawn().expect("sync-server starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Both pipes are drained to the end, so the server never blocks on
        // a full one.
        let stdout = child.stdout.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("the address it listens on"));
                }
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let stderr = child.stderr.take().unwrap();
        let out = output.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let addr = match tokio::time::timeout(DEADLINE, rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sync-server did not start serving:\n{}", output.lock().unwrap());
            }
        };
        Self { addr, child, output, _data: data }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process with SIGKILL (nothing of it runs after this) and
    /// reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every live file `url` lists, downloaded and checked against the size
/// and hash its entry announces: path → content. Panics on a file that
/// does not match (a half-written file made visible).
pub async fn complete_files(url: &str) -> BTreeMap<String, Vec<u8>> {
    let mut rpc = rpc_with(url, &Security::none());
    let list = rpc.list(pb::ListRequest::default()).await.unwrap().into_inner();
    let mut out = BTreeMap::new();
    for e in entries_of(list).await.unwrap() {
        if e.folder || e.deleted {
            continue;
        }
        let data =
            download(&mut rpc, &e.path).await.unwrap_or_else(|s| panic!("download of {}: {s:?}", e.path));
        assert_eq!(data.len() as u64, e.size, "{} is listed with the size of what it holds", e.path);
        assert_eq!(
            ContentHash::of(&data).as_bytes().as_slice(),
            e.hash.as_slice(),
            "{} matches its hash",
            e.path
        );
        out.insert(e.path, data);
    }
    out
}

/// A raw `FileSync` client that presents `security`'s token and certificates.
pub type Rpc = FileSyncClient<AuthChannel>;

/// A raw `FileSync` client of `url` presenting `security`.
pub fn rpc_with(url: &str, security: &Security) -> Rpc {
    FileSyncClient::new(security.channel(url).unwrap())
}

/// A security with just this token.
pub fn token(token: &str) -> Security {
    Security { token: Some(token.to_owned()), ..Security::none() }
}

/// Downloads the current version of `path`.
pub async fn download(rpc: &mut Rpc, path: &str) -> Result<Vec<u8>, tonic::Status> {
    let mut s = rpc
        .download(pb::DownloadRequest { path: path.into(), version: 0, have_hash: Vec::new() })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        if let Some(pb::download_response::Msg::Chunk(c)) = m.msg {
            out.extend_from_slice(&c);
        }
    }
    Ok(out)
}

/// The entries of a `List` stream (its first message carries only the
/// listing's head).
pub async fn entries_of(
    mut s: tonic::Streaming<pb::ListResponse>,
) -> Result<Vec<pb::FileEntry>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.entry);
    }
    Ok(out)
}

/// The locks of a `ListLocks` stream.
pub async fn locks_of(mut s: tonic::Streaming<pb::ListLocksResponse>) -> Vec<pb::LockInfo> {
    let mut out = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        out.push(m.lock.expect("a listed lock"));
    }
    out
}

/// The next event of a subscription, within [`DEADLINE`].
pub async fn next_event(s: &mut tonic::Streaming<pb::SubscribeResponse>) -> pb::ChangeEvent {
    let msg = tokio::time::timeout(DEADLINE, s.message()).await.expect("an event in time").unwrap().unwrap();
    msg.event.expect("a subscription message carries an event")
}

/// Uploads `data` to `path` in 1 MiB chunks and the end marker, based on
/// `base_version`.
pub async fn upload(
    rpc: &mut Rpc,
    path: &str,
    data: &[u8],
    base_version: u64,
) -> Result<pb::FileEntry, tonic::Status> {
    let header = upload_header(path, data, base_version);
    let mut msgs = vec![header];
    msgs.extend(
        data.chunks(syncstore::limits::MAX_CHUNK)
            .map(|c| pb::UploadRequest { msg: Some(upload_request::Msg::Chunk(c.to_vec())) }),
    );
    msgs.push(upload_end());
    let resp = rpc.upload(tokio_stream::iter(msgs)).await?.into_inner();
    Ok(resp.entry.expect("an upload answers with its entry"))
}

/// The end marker, the last message of every complete upload.
pub fn upload_end() -> pb::UploadRequest {
    pb::UploadRequest { msg: Some(upload_request::Msg::End(pb::UploadEnd {})) }
}

pub fn upload_header(path: &str, data: &[u8], base_version: u64) -> pb::UploadRequest {
    pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            path: path.into(),
            size: data.len() as u64,
            hash: ContentHash::of(data).as_bytes().to_vec(),
            mtime_ns: 1_700_000_000_000_000_000,
            executable: false,
            base_version,
            client_id: "test".into(),
            lock_token: 0,
            symlink: false,
            folder: false,
            base_hash: Vec::new(),
            moved_from: String::new(),
        })),
    }
}

/// A client watching a temp folder, running in this process.
pub struct TestClient {
    pub dir: TempDir,
    servers: Vec<String>,
    security: Security,
    metrics: sync_client::metrics::ClientMetrics,
    shutdown: CancellationToken,
    task: JoinHandle<sync_client::Result<()>>,
}

impl TestClient {
    pub fn start(server: &str) -> Self {
        Self::start_in(server, tempfile::tempdir().unwrap())
    }

    /// Starts watching an existing folder.
    pub fn start_in(server: &str, dir: TempDir) -> Self {
        Self::start_servers(vec![server.to_owned()], dir)
    }

    /// Starts watching `dir`, given several servers (primary and replica).
    pub fn start_servers(servers: Vec<String>, dir: TempDir) -> Self {
        // The rescan is the safety net; tests exercise the watcher.
        Self::start_configured(servers, dir, |c| c.rescan_interval = Duration::from_secs(3600))
    }

    /// Starts a client without a watcher that rescans every second.
    pub fn start_polling(server: &str) -> Self {
        Self::start_configured(vec![server.to_owned()], tempfile::tempdir().unwrap(), |c| {
            c.watcher = false;
            c.rescan_interval = Duration::from_secs(1);
        })
    }

    /// Starts watching `dir` with every upload and download, small ones
    /// too, running in the large lane beside the engine's loop.
    pub fn start_all_in_lane(server: &str, dir: TempDir) -> Self {
        Self::start_configured(vec![server.to_owned()], dir, |c| {
            c.rescan_interval = Duration::from_secs(3600);
            c.large_transfer = 0;
        })
    }

    /// Starts watching a new folder with its configuration changed by
    /// `tweak` (after the defaults of [`TestClient::start`]).
    pub fn start_tweaked(server: &str, tweak: impl FnOnce(&mut sync_client::Config)) -> Self {
        Self::start_configured(vec![server.to_owned()], tempfile::tempdir().unwrap(), |c| {
            c.rescan_interval = Duration::from_secs(3600);
            tweak(c);
        })
    }

    /// Starts watching a new folder, presenting `security` to `server`.
    pub fn start_secure(server: &str, security: Security) -> Self {
        Self::start_configured(vec![server.to_owned()], tempfile::tempdir().unwrap(), |c| {
            c.rescan_interval = Duration::from_secs(3600);
            c.security = security;
        })
    }

    /// Starts watching `dir` with its configuration changed by `tweak`
    /// (after the defaults of [`TestClient::start`]).
    pub fn start_tweaked_in(
        server: &str,
        dir: TempDir,
        tweak: impl FnOnce(&mut sync_client::Config),
    ) -> Self {
        Self::start_configured(vec![server.to_owned()], dir, |c| {
            c.rescan_interval = Duration::from_secs(3600);
            tweak(c);
        })
    }

    fn start_configured(
        servers: Vec<String>,
        dir: TempDir,
        tweak: impl FnOnce(&mut sync_client::Config),
    ) -> Self {
        let shutdown = CancellationToken::new();
        let mut config = sync_client::Config::new("", dir.path());
        config.servers = servers.clone();
        tweak(&mut config);
        let (metrics, security) = (config.metrics.clone(), config.security.clone());
        let span = tracing::info_span!("client", dir = %dir.path().display());
        let task =
            tokio::spawn(tracing::Instrument::instrument(sync_client::watch(config, shutdown.clone()), span));
        Self { dir, servers, security, metrics, shutdown, task }
    }

    /// Bytes of content this client has uploaded.
    pub fn uploaded_bytes(&self) -> u64 {
        self.metrics.upload_bytes.get()
    }

    /// The configuration of a one-off command (`lock`, `status`, ...) run
    /// on this client's folder.
    pub fn config(&self) -> sync_client::Config {
        let mut config = sync_client::Config::new("", self.dir.path());
        config.servers = self.servers.clone();
        config.security = self.security.clone();
        config
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        write(&self.root(), rel, data);
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.path(rel)).ok()
    }

    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        tree(&self.root())
    }

    /// Kills the client abruptly (its task is aborted wherever it is, in
    /// the middle of a transfer too) and hands back its folder.
    pub async fn crash(mut self) -> TempDir {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.wait_for_lock_release().await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Waits (up to [`DEADLINE`]) for the client to stop by itself, and
    /// returns how it ended.
    pub async fn ended(mut self) -> sync_client::Result<()> {
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the client stops by itself in time")
            .unwrap()
    }

    /// Waits until nothing of a stopped client holds its folder's lock (a
    /// blocking step it started may still be finishing), so that the next
    /// client on the folder can start.
    async fn wait_for_lock_release(&self) {
        let lock = self.dir.path().join(".syncstore/lock");
        eventually("the stopped client's lock is released", || {
            // (No lock file: it stopped before it opened its state.)
            std::fs::File::open(&lock).map_or(true, |f| f.try_lock().is_ok())
        })
        .await;
    }

    /// Stops the client and hands back its folder.
    pub async fn stop(mut self) -> TempDir {
        self.shutdown.cancel();
        (&mut self.task).await.unwrap().unwrap();
        self.wait_for_lock_release().await;
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Every file under `root` except the client's state: path → content (a
/// symbolic link's content is its target).
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == ".syncstore" {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file()
                && let Ok(data) = std::fs::read(&p)
            {
                out.insert(rel, data);
            } else if ft.is_symlink()
                && let Ok(target) = std::fs::read_link(&p)
            {
                // A link is synced as its target, as the server holds it.
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A TCP proxy on loopback in front of a server, whose connections can be
/// cut at any moment: what was in flight is lost, as on a network that
/// drops. New connections go through again. It can also fall silent
/// ([`Proxy::pause`]): connections stay open but nothing is forwarded, as
/// on a network that stops delivering without telling anyone.
pub struct Proxy {
    pub addr: SocketAddr,
    /// Bytes forwarded from clients to the target so far.
    sent: Arc<AtomicU64>,
    cut: std::sync::Arc<std::sync::Mutex<CancellationToken>>,
    paused: tokio::sync::watch::Sender<bool>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy to `target` on an ephemeral port.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with_rate(target, None).await
    }

    /// A proxy to `target` whose every connection carries at most
    /// `bytes_per_second` each way: a slow link, on which a large transfer
    /// takes long.
    pub async fn start_throttled(target: SocketAddr, bytes_per_second: u64) -> Self {
        Self::start_with_rate(target, Some(bytes_per_second)).await
    }

    async fn start_with_rate(target: SocketAddr, rate: Option<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let paused = tokio::sync::watch::Sender::new(false);
        let sent = Arc::new(AtomicU64::new(0));
        let (cuts, stopped, pauses, sent_total) = (cut.clone(), stop.clone(), paused.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    () = stopped.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let token = cuts.lock().unwrap().clone();
                let (stopped, pauses, sent) = (stopped.clone(), pauses.clone(), sent_total.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_server, to_server) = outbound.into_split();
                    // Like `copy_bidirectional`: done when both ways end,
                    // cut (both sockets closed) when either fails.
                    let both_ways = async {
                        let _ = tokio::try_join!(
                            pump(from_client, to_server, rate, pauses.subscribe(), Some(&sent)),
                            pump(from_server, to_client, rate, pauses.subscribe(), None),
                        );
                    };
                    tokio::select! {
                        () = both_ways => {}
                        () = token.cancelled() => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, sent, cut, paused, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Bytes forwarded from clients to the target so far (what the target
    /// was sent, give or take the socket buffers).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Stops forwarding anything, either way, on every connection (new
    /// ones too), without closing any.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Forwards again what was held and what comes.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

/// Copies `from` to `to` until the end, at most `rate` bytes per second
/// (if given), holding whatever it has while `paused`, adding what it
/// forwards to `counted` (if given); then ends `to`'s writing side.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: Option<u64>,
    mut paused: tokio::sync::watch::Receiver<bool>,
    counted: Option<&AtomicU64>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Small reads keep a throttled link smooth.
    let mut buf = vec![0u8; if rate.is_some() { 16 * 1024 } else { 64 * 1024 }];
    // When the link is free again; idle time earns no burst.
    let mut free_at = tokio::time::Instant::now();
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return Ok(()); // The proxy is gone.
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if paused.wait_for(|p| !*p).await.is_err() {
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        if let Some(counted) = counted {
            counted.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(rate) = rate {
            let busy = Duration::from_secs_f64(n as f64 / rate as f64);
            free_at = free_at.max(tokio::time::Instant::now()) + busy;
            tokio::time::sleep_until(free_at).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Every empty folder under `root` (the client's state aside), sorted.
pub fn empty_dirs(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut any = false;
        for e in entries.flatten() {
            any = true;
            let p = e.path();
            if p.strip_prefix(root).is_ok_and(|r| r == Path::new(".syncstore")) {
                continue;
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            }
        }
        if !any && dir != root {
            out.push(dir.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Deterministic incompressible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// How many contents the server at `url` stores and their total size in
/// bytes, as its `Admin/Status` counts them; `security` is an admin's.
pub async fn stored_content_of(url: &str, security: &Security) -> (u64, u64) {
    let mut admin = pb::admin_client::AdminClient::new(security.channel(url).unwrap());
    let status = admin.status(pb::StatusRequest { count_stored: true }).await.unwrap().into_inner();
    (status.stored_blobs, status.stored_bytes)
}

/// Where a server with data folder `data_dir` keeps content `hash`: the
/// embedded backend's blob folder layout (`blobs/ab/abcdef…`), for the
/// tests that damage or remove a stored copy behind the server's back.
/// Everything else asks the server ([`stored_content_of`]).
pub fn blob_path(data_dir: &Path, hash: &ContentHash) -> PathBuf {
    let hex = hash.to_hex();
    data_dir.join("blobs").join(&hex[..2]).join(&hex)
}

/// A copy of the folder `from` (a fixture's data folder) at `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Files under `dir` (recursively), for checking that no temp file was
/// left behind.
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.file_type().unwrap().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and an
/// unrelated CA, as PEM files.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
            KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).unwrap();
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            params.distinguished_name.push(DnType::CommonName, name);
            write(&format!("{name}.pem"), params.self_signed(&key).unwrap().pem());
            Issuer::new(params, key)
        };
        let issuer = ca("ca");
        ca("other-ca");
        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            write(&format!("{name}.pem"), params.signed_by(&key, &issuer).unwrap().pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        leaf("server", vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
        leaf("client", vec!["client.example".into()], ExtendedKeyUsagePurpose::ClientAuth);
        Self { dir }
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn server_tls(&self, client_ca: bool) -> sync_server::TlsConfig {
        sync_server::TlsConfig {
            cert: self.file("server.pem"),
            key: self.file("server.key"),
            client_ca: client_ca.then(|| self.file("ca.pem")),
        }
    }

    pub fn trusting(&self, ca: &str) -> Security {
        Security { ca_cert: Some(self.file(ca)), ..Security::none() }
    }
}

/// A token file with two namespaces and every access level.
pub struct Tokens {
    _dir: TempDir,
    pub path: PathBuf,
    pub alice: String,
    pub alice_ro: String,
    pub alice2: String,
    pub bob: String,
    /// A read-write token of alice's namespace with the break-locks right.
    pub alice_ops: String,
    pub admin: String,
    pub replication: String,
}

impl Tokens {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        let mut file = sync_server::auth::TokenFile::default();
        let alice = file.add("alice", "alice", sync_server::auth::Access::ReadWrite).unwrap();
        let alice_ro = file.add("alice-viewer", "alice", sync_server::auth::Access::ReadOnly).unwrap();
        let alice2 = file.add("alice-desktop", "alice", sync_server::auth::Access::ReadWrite).unwrap();
        let bob = file.add("bob", "bob", sync_server::auth::Access::ReadWrite).unwrap();
        let alice_ops = file.add("alice-ops", "alice", sync_server::auth::Access::ReadWrite).unwrap();
        assert!(file.set_break_locks("alice-ops", true).unwrap());
        let admin = file.add("ops", "", sync_server::auth::Access::Admin).unwrap();
        let replication = file.add("link", "", sync_server::auth::Access::Replication).unwrap();
        file.save(&path).unwrap();
        Self { _dir: dir, path, alice, alice_ro, alice2, bob, alice_ops, admin, replication }
    }
}

/// Log lines written through a `tracing` subscriber's writer, captured for
/// a test's assertions (clones share the lines).
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's log lines up to `level` until the guard is
    /// dropped: with a current-thread runtime, the client's and server's
    /// tasks log here too.
    pub fn this_thread(level: tracing::Level) -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .with_ansi(false)
            .with_max_level(level)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// How many captured lines contain `what`.
    pub fn count(&self, what: &str) -> usize {
        self.text().lines().filter(|l| l.contains(what)).count()
    }
}
