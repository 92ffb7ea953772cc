//! PostgreSQL for tests: `initdb` + `pg_ctl` as the `postgres` user.
//!
//! [`Postgres::start`] makes a fresh cluster in a temp folder (owned by the
//! `postgres` user when the tests run as root, since PostgreSQL refuses to
//! run as root), listening on a free loopback port with its unix sockets in
//! that folder and fsync on (the tests measure what a real deployment
//! does). A watcher, a tiny `sh` loop started with the cluster, stops it
//! within a second of the test process's death, so no server outlives the
//! tests even when a test panics past its `Drop` or is killed.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Where the distribution's PostgreSQL 15 binaries are.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Overrides [`DEFAULT_BIN`].
const BIN_ENV: &str = "SYNCSTORE_PG_BIN";

/// The superuser of a test cluster (the one `initdb` makes; no password:
/// the cluster trusts loopback connections).
pub const USER: &str = "postgres";

/// How long a cluster may take to accept connections after `pg_ctl start`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the watcher checks that the test process is alive.
const WATCH_INTERVAL_SECS: f32 = 0.2;

/// A PostgreSQL cluster of one test process, stopped on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// Holds the data folder and the sockets; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    /// Whether `pg_ctl` runs as the `postgres` user (the tests run as
    /// root).
    as_postgres: bool,
    running: bool,
}

impl Postgres {
    /// Makes and starts a fresh cluster. Panics with the reason when it
    /// cannot (a test cannot run without it).
    pub fn start() -> Postgres {
        let bin = std::env::var_os(BIN_ENV).map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from);
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL 15 is missing ({} has no initdb): apt-get install postgresql-15 (or run bash tests/setup)",
            bin.display()
        );
        // `/proc/self` belongs to the process's effective user.
        let as_postgres =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0;
        let dir =
            tempfile::Builder::new().prefix("syncstore-pg-").tempdir().expect("temp folder for PostgreSQL");
        if as_postgres {
            run(Command::new("chown").arg(format!("{USER}:")).arg(dir.path()), "chown the PostgreSQL folder");
        }
        let mut pg = Postgres { bin, dir, port: free_port(), as_postgres, running: false };
        let data = pg.data();
        pg.run_pg(
            pg.command("initdb")
                .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", USER, "-D"])
                .arg(&data),
            "initdb",
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nfsync = on\n\
             max_connections = 300\nshared_buffers = 32MB\n",
            pg.port,
            pg.dir.path().display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .expect("write postgresql.conf");
        pg.start_again();
        pg.watch();
        pg
    }

    /// The URL of database `db` of this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", USER, "-p"])
            .arg(self.port.to_string())
            .args(["-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""))
            .output()
            .expect("run psql");
        assert!(out.status.success(), "CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.url(name)
    }

    /// Stops the cluster (fast: clients are disconnected); its data stays
    /// for [`Postgres::start_again`].
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl_stop("fast");
        }
    }

    /// Starts the stopped cluster again, on the same port with the same
    /// data, and waits until it accepts connections.
    pub fn start_again(&mut self) {
        if self.running {
            return;
        }
        let log = self.dir.path().join("server.log");
        let data = self.data();
        self.run_pg(
            self.command("pg_ctl").args(["-w", "-t", "60", "-l"]).arg(&log).arg("-D").arg(&data).arg("start"),
            "pg_ctl start",
        );
        self.running = true;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p"])
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not accept connections within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command running binary `name` of the cluster, as the `postgres`
    /// user when needed.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run_pg(&self, cmd: &mut Command, what: &str) {
        run(cmd.current_dir(self.dir.path()), what);
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(&data)
            .arg("stop")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// Starts the watcher: once this process is gone, it stops the cluster
    /// (immediately; the data is thrown away) and removes the folder.
    fn watch(&self) {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep {WATCH_INTERVAL_SECS}; done; \
             if [ -f '{data}/postmaster.pid' ]; then {stop}; fi; rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data().display(),
            dir = self.dir.path().display(),
            stop = self.stop_command_line(),
        );
        let mut watcher = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PostgreSQL watcher");
        // Reaped if it ends first (it outlives this process otherwise).
        std::thread::spawn(move || watcher.wait());
    }

    fn stop_command_line(&self) -> String {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let cmd = format!("'{}' -m immediate -D '{}' stop", pg_ctl.display(), data.display());
        if self.as_postgres { format!("runuser -u {USER} -- {cmd}") } else { cmd }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            self.pg_ctl_stop("immediate");
        }
    }
}

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loopback port free at the time of the call.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_stops_and_starts_again() {
        let mut pg = Postgres::start();
        let url = pg.create_database("probe");
        let select_one = |url: String| async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let task = tokio::spawn(conn);
            let row = client.query_one("SELECT 1::int4", &[]).await?;
            drop(client);
            let _ = task.await;
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        };
        assert_eq!(select_one(url.clone()).await.unwrap(), 1);
        pg.stop();
        assert!(select_one(url.clone()).await.is_err(), "a stopped cluster refuses connections");
        pg.start_again();
        assert_eq!(select_one(url).await.unwrap(), 1);
    }
}
