//! `sync-server`: parses flags, sets up logging and signals, binds, and
//! hands over to [`sync_server::Server`]; also the offline `promote` and
//! `scrub` and the `compare` commands.

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use sync_server::{
    Mode, OnTimeout, ReplicaConfig, Role, TlsConfig,
    auth::{Access, TokenFile},
};
use syncstore::cli::{self, ConnectArgs, LogFormat};
use tokio_util::sync::CancellationToken;

/// The syncstore server: stores files durably, pushes every change to every
/// subscribed client, and fans it out to a replica.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    /// Log lines (on stderr) for people or, as JSON, for machines;
    /// RUST_LOG filters them.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "SYNCSTORE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Turn a (stopped) replica's data folder into a primary's, at the next
    /// epoch. Then start it with `--role primary`.
    Promote {
        /// The replica's data folder.
        #[arg(long)]
        data: PathBuf,
    },
    /// Compare the trees held by two servers (every namespace). Exit 0 when
    /// identical, 1 when not (the differing paths are listed), like `diff`.
    /// Servers with tokens need an admin token.
    Compare {
        /// First server, e.g. http://127.0.0.1:50051.
        a: String,
        /// Second server.
        b: String,
        /// Also read every stored content back on both servers and check it
        /// against its hash (slow: reads everything they store): a damaged
        /// or missing content is a difference even where metadata agree.
        #[arg(long)]
        content: bool,
        /// Also count a difference in history (kept versions, pins, labels)
        /// as a difference. Without it a difference in history is only
        /// reported: servers upgraded from before history each filled it
        /// from their own change log.
        #[arg(long)]
        history: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Read every stored content of a (stopped) server's data folder back
    /// and check it against its hash. Damaged content is set aside; with
    /// --from, a good copy is fetched from that server (the replica, or the
    /// primary) to heal it. Exit 0 when everything is intact or healed, 1
    /// when files are lost (listed).
    Scrub {
        /// The data folder.
        #[arg(long)]
        data: PathBuf,
        /// A server holding the same history to fetch good copies from,
        /// e.g. the replica at http://HOST:PORT; on servers with tokens,
        /// --token-file must give its admin token.
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Copy a (stopped) server's data folder into PostgreSQL and a bucket,
    /// so that servers started with the same --meta and --content continue
    /// its history (history id, seqs, versions, locks, tombstones): clients
    /// go on without a RESET. Stopped half-way, run it again: the content
    /// already copied is not copied twice, and the metadata goes in one
    /// transaction. The database must be empty or hold an earlier run of
    /// the same migration.
    Migrate {
        /// The data folder to copy (no server may run on it).
        #[arg(long)]
        from: PathBuf,
        /// The PostgreSQL database, postgres://USER@HOST:PORT/DB (password
        /// from PGPASSWORD or a password file).
        #[arg(long, env = "SYNCSTORE_META")]
        meta: String,
        /// The bucket, s3://BUCKET?endpoint=URL&region=REGION (credentials
        /// from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
        #[arg(long, env = "SYNCSTORE_CONTENT")]
        content: String,
    },
    /// Manage the token file: add, remove or list tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Add a token and print it (once: only its hash is stored).
    Add {
        /// The token file (created if missing, readable by its owner only).
        #[arg(long, env = "SYNCSTORE_TOKENS")]
        tokens: PathBuf,
        /// A unique name for the token, e.g. alice-laptop.
        name: String,
        /// The namespace it reads and writes (read-only and read-write
        /// tokens), e.g. alice or team-a.
        #[arg(long, default_value = "")]
        namespace: String,
        /// What it may do.
        #[arg(long, value_enum, default_value_t = Access::ReadWrite)]
        access: Access,
        /// Also let it break other holders' locks in its namespace
        /// (`unlock --force`; read-write tokens only).
        #[arg(long)]
        break_locks: bool,
    },
    /// Remove a token by name; the server refuses it within a second.
    Remove {
        #[arg(long, env = "SYNCSTORE_TOKENS")]
        tokens: PathBuf,
        name: String,
    },
    /// List the tokens (names, namespaces, access; never the tokens).
    List {
        #[arg(long, env = "SYNCSTORE_TOKENS")]
        tokens: PathBuf,
    },
}

#[derive(Debug, ClapArgs)]
struct ServeArgs {
    /// A TOML file of options (keys are the long option names); flags and
    /// SYNCSTORE_* environment variables take precedence over it. Its
    /// `[retention]` table (and `[retention.NAMESPACE]` tables) set how long
    /// history is kept (see the README).
    #[arg(long, env = "SYNCSTORE_CONFIG")]
    config: Option<PathBuf>,
    /// The server's role.
    #[arg(long, value_enum, default_value_t = RoleArg::Primary, env = "SYNCSTORE_ROLE")]
    role: RoleArg,
    /// Address to serve gRPC on; port 0 picks a free port. The address is
    /// printed as `listening on ADDR` once the server serves.
    #[arg(long, default_value = "127.0.0.1:50051", env = "SYNCSTORE_LISTEN")]
    listen: SocketAddr,
    /// Data folder: metadata database and content blobs (the embedded
    /// backend; unused with --meta/--content).
    #[arg(long, default_value = "./sync-data", env = "SYNCSTORE_DATA")]
    data: PathBuf,
    /// Keep the metadata in PostgreSQL (postgres://USER@HOST:PORT/DB), shared
    /// with any number of server processes; needs --content. The password
    /// comes from PGPASSWORD or a password file, never from the URL.
    #[arg(long, env = "SYNCSTORE_META", requires = "content")]
    meta: Option<String>,
    /// Keep the content in an S3-compatible bucket
    /// (s3://BUCKET?endpoint=http://HOST:PORT&region=REGION, path-style);
    /// needs --meta. Credentials come from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "SYNCSTORE_CONTENT", requires = "meta")]
    content: Option<String>,
    /// Largest file accepted, in bytes.
    #[arg(long, default_value_t = sync_server::DEFAULT_MAX_FILE_SIZE, env = "SYNCSTORE_MAX_FILE_SIZE")]
    max_file_size: u64,
    /// Longest silence between two messages of an upload (each at most a
    /// 1 MiB chunk) before it is refused with DEADLINE_EXCEEDED, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "SYNCSTORE_UPLOAD_IDLE_TIMEOUT")]
    upload_idle_timeout: Duration,
    /// Slowest pace of an upload, in bytes a second, once the idle timeout
    /// has passed since it started; a slower one is refused with
    /// DEADLINE_EXCEEDED (0: no minimum).
    #[arg(long, default_value_t = sync_server::DEFAULT_UPLOAD_MIN_RATE, env = "SYNCSTORE_UPLOAD_MIN_RATE")]
    upload_min_rate: u64,
    /// Uploads received at once; more wait briefly, then are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = sync_server::DEFAULT_MAX_CONCURRENT_UPLOADS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), env = "SYNCSTORE_MAX_CONCURRENT_UPLOADS")]
    max_concurrent_uploads: usize,
    /// Uploads received at once for one namespace (token namespace), so
    /// that one cannot take every slot.
    #[arg(long, default_value_t = sync_server::DEFAULT_MAX_UPLOADS_PER_NAMESPACE, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), env = "SYNCSTORE_MAX_UPLOADS_PER_NAMESPACE")]
    max_uploads_per_namespace: usize,
    /// Uploads received at once over one connection, so that one client
    /// cannot take its namespace's every slot.
    #[arg(long, default_value_t = sync_server::DEFAULT_MAX_UPLOADS_PER_CONNECTION, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..), env = "SYNCSTORE_MAX_UPLOADS_PER_CONNECTION")]
    max_uploads_per_connection: usize,
    /// How many changes the log keeps for subscribers (and a replica) that
    /// catch up; an older position gets a RESET (a replica, a full resync).
    #[arg(long, default_value_t = sync_server::StoreOptions::default().log_retention, env = "SYNCSTORE_LOG_RETENTION")]
    log_retention: u64,
    /// On a primary: the replica to fan every change out to
    /// (http://HOST:PORT).
    #[arg(long, env = "SYNCSTORE_REPLICA")]
    replica: Option<String>,
    /// On a primary with a replica: acknowledge writes once the replica has
    /// them (sync) or once the primary has them (async).
    #[arg(long, value_enum, default_value_t = ModeArg::Sync, env = "SYNCSTORE_REPLICATION")]
    replication: ModeArg,
    /// How long a sync-mode write waits for the replica, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "SYNCSTORE_REPLICA_TIMEOUT")]
    replica_timeout: Duration,
    /// What a sync-mode write does when the replica does not confirm in
    /// time: fail with UNAVAILABLE (and refuse writes at once while the
    /// replica is known to be away), or degrade to async (loudly).
    #[arg(long, value_enum, default_value_t = OnTimeoutArg::Fail, env = "SYNCSTORE_ON_REPLICA_TIMEOUT")]
    on_replica_timeout: OnTimeoutArg,
    /// The URL clients reach this server at, announced to the replica (and
    /// named in its refusals). Default: http:// plus the listening address.
    #[arg(long, env = "SYNCSTORE_ADVERTISE")]
    advertise: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, env = "SYNCSTORE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the web dashboard on this address (port 0 picks a free port);
    /// its URL is printed as `web dashboard on URL`. Without this flag it
    /// serves on 127.0.0.1:8385 when that port is free. Beyond loopback
    /// it needs --tokens (its logins are the tokens).
    #[arg(long, env = "SYNCSTORE_WEB_LISTEN", conflicts_with = "no_web")]
    web_listen: Option<SocketAddr>,
    /// Serve no web dashboard.
    #[arg(long, env = "SYNCSTORE_NO_WEB")]
    no_web: bool,
    /// The token file (see `sync-server token add`): every call must then
    /// carry one of its tokens. Without it the server is open, which it
    /// allows only on a loopback address.
    #[arg(long, env = "SYNCSTORE_TOKENS")]
    tokens: Option<PathBuf>,
    /// Serve without tokens on a non-loopback address too: anyone who can
    /// reach it can read and change every file.
    #[arg(long, env = "SYNCSTORE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Serve TLS with this certificate (PEM); needs --tls-key.
    #[arg(long, env = "SYNCSTORE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "SYNCSTORE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM), on top of
    /// tokens.
    #[arg(long, env = "SYNCSTORE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// On a primary: file holding the replication token the replica's
    /// token file lists (the link's own credential).
    #[arg(long, env = "SYNCSTORE_REPLICA_TOKEN_FILE")]
    replica_token_file: Option<PathBuf>,
    /// On a primary: CA certificate (PEM) to check an https:// replica's
    /// certificate against.
    #[arg(long, env = "SYNCSTORE_REPLICA_CA_CERT")]
    replica_ca_cert: Option<PathBuf>,
    /// Time between the starts of two background scrubs, which read every
    /// stored content back and check it (a primary heals damaged content
    /// from its replica), e.g. 7d; 0 turns it off.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, env = "SYNCSTORE_SCRUB_INTERVAL")]
    scrub_interval: Duration,
    /// The background scrub's pace, in bytes read per second.
    #[arg(long, default_value_t = sync_server::scrub::DEFAULT_SCRUB_RATE, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..), env = "SYNCSTORE_SCRUB_RATE")]
    scrub_rate: u64,
    /// Time between two passes of the history collector, which prunes
    /// every namespace's history by its retention (on a primary), e.g. 1m.
    #[arg(long, default_value = "1m", value_parser = parse_interval, env = "SYNCSTORE_HISTORY_PRUNE_INTERVAL")]
    history_prune_interval: Duration,
}

/// An interval above zero.
fn parse_interval(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The config file's table of retention settings (see
/// `RetentionConfig::from_toml`): `[retention]` for every namespace,
/// `[retention.NAMESPACE]` for one.
const RETENTION_SECTION: &str = "retention";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Sync,
    Async,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnTimeoutArg {
    Fail,
    Degrade,
}

fn main() -> ExitCode {
    let args: Args = match cli::parse_args_with_sections(&[RETENTION_SECTION]) {
        Ok(args) => args,
        Err(code) => return code,
    };
    cli::init_logging(args.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Some(Command::Promote { data }) => promote(data).await,
            Some(Command::Compare { a, b, content, history, connect }) => {
                compare(&a, &b, content, history, &connect).await
            }
            Some(Command::Scrub { data, from, connect }) => scrub(data, from, &connect).await,
            Some(Command::Token { command }) => token(command),
            Some(Command::Migrate { from, meta, content }) => migrate(from, meta, content).await,
            None => serve(args.serve).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses a database URL that carries a password: a flag shows in the
/// process list and the shell history.
fn check_no_password(url: &str) -> anyhow::Result<()> {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let userinfo = authority.split(['/', '?']).next().unwrap_or("");
    if userinfo.rsplit_once('@').is_some_and(|(user, _)| user.contains(':')) || url.contains("password=") {
        anyhow::bail!("--meta must not carry a password: set PGPASSWORD or use a password file (PGPASSFILE)");
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.role == RoleArg::Replica && args.replica.is_some() {
        anyhow::bail!("--replica is for a primary; a replica is fed by its primary");
    }
    if let Some(meta) = &args.meta {
        check_no_password(meta)?;
        if args.replica.is_some() || args.role == RoleArg::Replica {
            anyhow::bail!("{}", sync_server::SHARED_REPLICA_REFUSED);
        }
    }
    if args.upload_idle_timeout.is_zero() {
        anyhow::bail!("--upload-idle-timeout must be above zero");
    }
    let replica_security = syncstore::connect::Security {
        token: args.replica_token_file.as_deref().map(syncstore::connect::read_token_file).transpose()?,
        ca_cert: args.replica_ca_cert,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;

    let shutdown = CancellationToken::new();
    tokio::spawn(cli::stop_on_signal(shutdown.clone()));

    let retention = match &args.config {
        Some(path) => match cli::config_section(path, RETENTION_SECTION)? {
            Some(table) => sync_server::storage::retention::RetentionConfig::from_toml(&table)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            None => Default::default(),
        },
        None => Default::default(),
    };
    let mut config = sync_server::Config::new(args.data);
    config.retention = retention;
    config.role = match args.role {
        RoleArg::Primary => Role::Primary,
        RoleArg::Replica => Role::Replica,
    };
    config.max_file_size = args.max_file_size;
    config.upload_idle_timeout = args.upload_idle_timeout;
    config.max_concurrent_uploads = args.max_concurrent_uploads;
    config.max_uploads_per_namespace = args.max_uploads_per_namespace;
    config.upload_min_rate = args.upload_min_rate;
    config.max_uploads_per_connection = args.max_uploads_per_connection;
    config.store.log_retention = args.log_retention;
    config.store.process_address = Some(args.advertise.clone().unwrap_or_else(|| format!("http://{addr}")));
    config.advertise = args.advertise;
    if let (Some(meta), Some(content)) = (args.meta, args.content) {
        config.backend = sync_server::Backend::Shared { meta, content };
    }
    config.scrub_interval = (!args.scrub_interval.is_zero()).then_some(args.scrub_interval);
    config.scrub_rate = args.scrub_rate;
    config.history_prune_interval = args.history_prune_interval;
    config.tokens = args.tokens;
    config.insecure_no_auth = args.insecure_no_auth;
    config.tls = args.tls_cert.zip(args.tls_key).map(|(cert, key)| TlsConfig {
        cert,
        key,
        client_ca: args.tls_client_ca,
    });
    config.replica = args.replica.map(|url| ReplicaConfig {
        url,
        mode: match args.replication {
            ModeArg::Sync => Mode::Sync,
            ModeArg::Async => Mode::Async,
        },
        timeout: args.replica_timeout,
        on_timeout: match args.on_replica_timeout {
            OnTimeoutArg::Fail => OnTimeout::Fail,
            OnTimeoutArg::Degrade => OnTimeout::Degrade,
        },
        security: replica_security,
    });
    let tls_configured = config.tls.is_some();
    let mut server = sync_server::Server::open(config).await.context("cannot start")?;
    server.check_listener(&listener)?;
    let web = match (args.no_web, args.web_listen) {
        (true, _) => None,
        (false, Some(addr)) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?,
        ),
        // The default address is a convenience: a second server on this
        // machine (a replica, a test) goes without.
        (false, None) => match tokio::net::TcpListener::bind(sync_server::DEFAULT_WEB_LISTEN).await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(addr = sync_server::DEFAULT_WEB_LISTEN, error = %e, "no web dashboard: its default address is taken (give --web-listen)");
                None
            }
        },
    };
    let web_addr = web.as_ref().map(|l| l.local_addr()).transpose()?;
    if let Some(listener) = web {
        server = server.with_web(listener)?;
    }
    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let metrics_task = metrics.map(|listener| {
        tracing::info!(addr = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "metrics served");
        let (server_metrics, stop) = (server.metrics_server(), shutdown.clone());
        tokio::spawn(async move { server_metrics.serve(listener, stop).await })
    });
    // Scripts wait for this line: the store is open and the socket bound.
    println!("listening on {addr}");
    if let Some(web) = web_addr {
        let scheme = if tls_configured { "https" } else { "http" };
        // Whoever waited for the line above may have stopped reading: a
        // closed stdout must not stop the server.
        let _ = writeln!(std::io::stdout(), "web dashboard on {scheme}://{web}/");
    }
    let _ = std::io::stdout().flush();
    server.serve(listener, shutdown).await.context("server failed")?;
    if let Some(task) = metrics_task {
        task.await?.context("metrics endpoint failed")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn promote(data: PathBuf) -> anyhow::Result<ExitCode> {
    let (history, epoch, head) = sync_server::promote(&data).await?;
    println!("promoted: history {history}, epoch {epoch}, head {head}; start it with --role primary");
    Ok(ExitCode::SUCCESS)
}

async fn migrate(from: PathBuf, meta: String, content: String) -> anyhow::Result<ExitCode> {
    check_no_password(&meta)?;
    let s = sync_server::storage::migrate(&from, &meta, &content).await?;
    for (table, rows) in &s.rows {
        println!("{table}: {rows} rows");
    }
    println!(
        "migrated: history {}, head {}; content: {} copied ({} bytes), {} there already",
        s.history_id, s.head, s.contents_copied, s.bytes_copied, s.contents_present
    );
    Ok(ExitCode::SUCCESS)
}

fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Add { tokens, name, namespace, access, break_locks } => {
            let mut file = TokenFile::load(&tokens)?;
            let token = file.add(&name, &namespace, access)?;
            file.set_break_locks(&name, break_locks)?;
            file.save(&tokens)?;
            eprintln!("added {name:?} to {}; the token (shown only now):", tokens.display());
            println!("{token}");
        }
        TokenCommand::Remove { tokens, name } => {
            let mut file = TokenFile::load(&tokens)?;
            if !file.remove(&name) {
                anyhow::bail!("{} has no token named {name:?}", tokens.display());
            }
            file.save(&tokens)?;
            eprintln!("removed {name:?}; a running server refuses it within a second");
        }
        TokenCommand::List { tokens } => {
            let file = TokenFile::load(&tokens)?;
            println!("{:<24} {:<12} {:<20} {:<12} CREATED", "NAME", "ACCESS", "NAMESPACE", "RIGHTS");
            for t in &file.tokens {
                let ns = if t.namespace.is_empty() { "*" } else { &t.namespace };
                let rights = if t.break_locks { "break-locks" } else { "-" };
                println!("{:<24} {:<12} {:<20} {rights:<12} {}", t.name, t.access.as_str(), ns, t.created);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn scrub(data: PathBuf, from: Option<String>, connect: &ConnectArgs) -> anyhow::Result<ExitCode> {
    let peer = from.map(|url| anyhow::Ok(sync_server::scrub::Peer { url, security: connect.security()? }));
    let (report, lost) = sync_server::scrub_offline(&data, peer.transpose()?).await?;
    println!(
        "scrub: {} contents read back ({} bytes): {} damaged, {} healed, {} lost",
        report.verified,
        report.bytes,
        report.damaged.len(),
        report.healed.len(),
        report.lost.len()
    );
    for hash in &report.healed {
        println!("healed     {hash}");
    }
    for (path, hash) in &lost {
        println!("lost       {path} (content {hash})");
    }
    Ok(if report.lost.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn compare(
    a: &str,
    b: &str,
    content: bool,
    history: bool,
    connect: &ConnectArgs,
) -> anyhow::Result<ExitCode> {
    let security = connect.security()?;
    let c = if content {
        sync_server::admin::compare_content(a, b, &security).await?
    } else {
        sync_server::compare(a, b, &security).await?
    };
    if c.history_differs {
        println!(
            "history differs: A keeps {} versions, B keeps {} (a difference with --history)",
            c.a.history_versions, c.b.history_versions
        );
    }
    if c.identical() && !(history && c.history_differs) {
        let checked = if c.content { ", all content read back intact" } else { "" };
        println!(
            "identical: {} files, {} bytes (heads {} and {}){checked}",
            c.a.file_count, c.a.total_bytes, c.a.head_seq, c.b.head_seq
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "different: A has {} files ({} bytes, head {}), B has {} files ({} bytes, head {})",
        c.a.file_count, c.a.total_bytes, c.a.head_seq, c.b.file_count, c.b.total_bytes, c.b.head_seq
    );
    for (path, what) in &c.differences {
        println!("{what:<12} {path}");
    }
    Ok(ExitCode::FAILURE)
}
