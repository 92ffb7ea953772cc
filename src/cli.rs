//! Command-line plumbing both programs share: options from a TOML file,
//! logging set-up, and the signals that stop them.
//!
//! Precedence, highest first: flags, `SYNCSTORE_*` environment variables,
//! the `--config` file, built-in defaults. A key of the file is an option's
//! long name (`listen`, `rescan-interval` or `rescan_interval`); a list gives
//! a repeatable option several values; `true` sets a switch. A program may
//! also take sections (TOML tables such as the server's `[retention]`) that
//! are no option: it reads them itself ([`config_section`]).

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{CommandFactory, Parser, parser::ValueSource};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How a program's calls reach servers: the token and TLS options every
/// client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// File whose first line is the bearer token to present. Without it,
    /// the SYNCSTORE_TOKEN environment variable is used if set. (There is no
    /// flag for the token itself: `ps` would show it to every user.)
    #[arg(long, env = "SYNCSTORE_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that https:// servers' certificates are checked
    /// against, instead of the system's roots.
    #[arg(long, env = "SYNCSTORE_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that ask for one.
    #[arg(long, env = "SYNCSTORE_CLIENT_CERT", requires = "client_key", global = true)]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "SYNCSTORE_CLIENT_KEY", requires = "client_cert", global = true)]
    pub client_key: Option<PathBuf>,
    /// How long a call waits for a server's answer (a reply, or the next
    /// message of a listing or download) before the command fails naming
    /// the server, e.g. 10s, 2m. (The default is `connect::CALL_TIMEOUT`.)
    #[arg(long, default_value = "30s", value_parser = parse_timeout, env = "SYNCSTORE_TIMEOUT", global = true)]
    pub timeout: std::time::Duration,
}

/// A `--timeout`: a duration above zero.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

impl ConnectArgs {
    /// The token (from the file or the environment) and TLS settings.
    pub fn security(&self) -> Result<crate::connect::Security, crate::connect::ConnectError> {
        crate::connect::Security {
            token: None,
            ca_cert: self.ca_cert.clone(),
            identity: self.client_cert.clone().zip(self.client_key.clone()),
            call_timeout: self.timeout,
        }
        .with_token_from(self.token_file.as_deref())
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for machines.
    Json,
}

/// Parses the program's arguments, with its `--config` file under them.
/// On a bad config file, says why and returns the exit code to use.
pub fn parse_args<T: Parser>() -> Result<T, std::process::ExitCode> {
    parse_args_with_sections::<T>(&[])
}

/// [`parse_args`] for a program whose config file may also hold the tables
/// named in `sections` (read with [`config_section`]).
pub fn parse_args_with_sections<T: Parser>(sections: &[&str]) -> Result<T, std::process::ExitCode> {
    match with_config_file_sections::<T>(std::env::args_os().collect(), sections) {
        Ok(argv) => Ok(T::parse_from(argv)),
        Err(e) => {
            eprintln!("error: {e}");
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// Sends tracing to stderr in `format`, filtered by `RUST_LOG` or else by
/// `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // A log line that cannot be written (stderr closed) is dropped, not
    // reported on that same stderr, which would panic.
    // Colours only for a person at a terminal: a log file or a journal
    // gets plain text (and NO_COLOR turns them off anywhere).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let signal = tokio::select! {
        _ = ctrl_c => "SIGINT",
        () = term => "SIGTERM",
    };
    // Stop first: logging can fail (a closed stderr) and must not keep the
    // program running.
    shutdown.cancel();
    tracing::info!("{signal} received");
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not valid TOML: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("{path}: unknown option {key:?}")]
    Unknown { path: String, key: String },
    #[error("{path}: option {key:?} takes a string, number, boolean or list of them")]
    Value { path: String, key: String },
}

/// Returns `argv` with the options of the `--config` file (if any) that
/// neither a flag nor an environment variable set, inserted right after
/// the program name so that they also precede any subcommand.
pub fn with_config_file<T: CommandFactory>(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    with_config_file_sections::<T>(argv, &[])
}

/// [`with_config_file`], leaving alone the tables named in `sections`.
pub fn with_config_file_sections<T: CommandFactory>(
    argv: Vec<OsString>,
    sections: &[&str],
) -> Result<Vec<OsString>, ConfigError> {
    let command = T::command();
    // A first pass only learns where each value comes from; errors are left
    // to the real parse.
    let Ok(matches) = command.clone().ignore_errors(true).try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some(path) = matches.get_one::<std::path::PathBuf>("config").cloned() else {
        return Ok(argv);
    };
    let table = read(&path)?;
    let mut extra: Vec<OsString> = Vec::new();
    for (key, value) in table {
        if value.is_table() && sections.contains(&key.as_str()) {
            continue;
        }
        let long = key.replace('_', "-");
        let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long.as_str())) else {
            return Err(ConfigError::Unknown { path: path.display().to_string(), key });
        };
        let id = arg.get_id().as_str();
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().expect("checked above"));
        let values = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            match v {
                toml::Value::Boolean(true) => extra.push(flag.clone().into()),
                toml::Value::Boolean(false) => {}
                toml::Value::String(s) => extra.extend([flag.clone().into(), s.into()]),
                toml::Value::Integer(i) => extra.extend([flag.clone().into(), i.to_string().into()]),
                toml::Value::Float(f) => extra.extend([flag.clone().into(), f.to_string().into()]),
                _ => return Err(ConfigError::Value { path: path.display().to_string(), key: key.clone() }),
            }
        }
    }
    let mut out = Vec::with_capacity(argv.len() + extra.len());
    let mut rest = argv.into_iter();
    out.extend(rest.next());
    out.extend(extra);
    out.extend(rest);
    Ok(out)
}

/// The table `name` of the config file at `path` (`None` if it has none).
pub fn config_section(path: &Path, name: &str) -> Result<Option<toml::Table>, ConfigError> {
    match read(path)?.remove(name) {
        None => Ok(None),
        Some(toml::Value::Table(t)) => Ok(Some(t)),
        Some(_) => Err(ConfigError::Value { path: path.display().to_string(), key: name.to_owned() }),
    }
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Demo {
        #[arg(long, env = "SYNCSTORE_TEST_CONFIG_FILE")]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value = "a", env = "SYNCSTORE_TEST_LISTEN")]
        listen: String,
        #[arg(long = "server")]
        servers: Vec<String>,
        #[arg(long, default_value = "1s")]
        rescan_interval: String,
        #[arg(long)]
        verbose: bool,
    }

    fn parse(args: &[&str]) -> Result<Demo, ConfigError> {
        let argv = args.iter().map(OsString::from).collect();
        Ok(Demo::parse_from(with_config_file::<Demo>(argv)?))
    }

    #[test]
    fn the_timeout_defaults_to_the_call_timeout_and_is_never_zero() {
        #[derive(Debug, Parser)]
        struct Connect {
            #[command(flatten)]
            connect: ConnectArgs,
        }
        let parsed = Connect::try_parse_from(["demo"]).unwrap();
        assert_eq!(parsed.connect.security().unwrap().call_timeout, crate::connect::CALL_TIMEOUT);
        let parsed = Connect::try_parse_from(["demo", "--timeout", "2s"]).unwrap();
        assert_eq!(parsed.connect.timeout, std::time::Duration::from_secs(2));
        assert!(Connect::try_parse_from(["demo", "--timeout", "0s"]).is_err());
    }

    #[test]
    fn the_file_fills_in_what_flags_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"from-file\"\nserver = [\"s1\", \"s2\"]\nrescan-interval = \"30s\"\nverbose = true\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let d = parse(&["demo", "--config", f]).unwrap();
        assert_eq!((d.listen.as_str(), d.rescan_interval.as_str(), d.verbose), ("from-file", "30s", true));
        assert_eq!(d.servers, ["s1", "s2"]);
        let d = parse(&["demo", "--config", f, "--listen", "from-flag"]).unwrap();
        assert_eq!(d.listen, "from-flag");
        std::fs::write(&file, "nonsense = 1\n").unwrap();
        assert!(matches!(parse(&["demo", "--config", f]), Err(ConfigError::Unknown { .. })));
        std::fs::write(&file, "listen = [\n").unwrap();
        assert!(matches!(parse(&["demo", "--config", f]), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn a_section_the_program_reads_itself_is_no_option_and_any_other_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"x\"\n[retention]\nkeep_last = 2\n[retention.team]\nkeep_last = 3\n",
        )
        .unwrap();
        let argv = || ["demo", "--config", file.to_str().unwrap()].map(OsString::from).to_vec();
        let with = with_config_file_sections::<Demo>(argv(), &["retention"]).unwrap();
        assert_eq!(Demo::parse_from(with).listen, "x");
        assert!(matches!(with_config_file::<Demo>(argv()), Err(ConfigError::Unknown { .. })));
        let section = config_section(&file, "retention").unwrap().unwrap();
        assert_eq!(section["keep_last"].as_integer(), Some(2));
        assert_eq!(section["team"]["keep_last"].as_integer(), Some(3));
        assert!(config_section(&file, "other").unwrap().is_none());
    }
}
