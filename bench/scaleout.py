#!/usr/bin/env python3
"""syncstore scaled out against syncstore embedded, in one run.

The same generated workloads (W1 10,000 x 4 KiB, W2 one 1 GiB file, W3 1,000 x 1 MiB) are
uploaded by `sync-client sync`, and downloaded by a second client, on three set-ups:

  embedded     one server over SQLite and a blob folder (the default)
  shared x1    one server over PostgreSQL 15 and s3s-fs (the S3 protocol over a folder)
  shared x3    three servers over the same database and bucket; the upload goes to the
               first, the download comes from the second (so the download also measures
               how fast a commit reaches another process)

then the save latency between two watching clients (on the same server, and for shared x3
on two different servers: the cross-process latency). It prints one markdown table with
the medians of REPEATS runs and the ratio of each shared set-up to the embedded one, and
the issue's targets.

    python3 bench/scaleout.py --bin target/release --data /tmp/syncstore-scaleout
    BENCH_SCALE=10 REPEATS=1 LAT_COUNT=20 python3 bench/scaleout.py --bin ... --data ...

Each shared transfer also logs where its CPU went (client, servers, PostgreSQL's postmaster
and backends, the bucket); PG_STATEMENTS=1 loads pg_stat_statements and logs the statements
that took the most time in each.

PostgreSQL comes from Debian (`postgresql-15`, /usr/lib/postgresql/15/bin or
SYNCSTORE_PG_BIN), started with initdb + pg_ctl as the `postgres` user in a folder under
--data on a free loopback port, fsync on; s3s-fs is the binary `bash tests/setup`
installs (SYNCSTORE_S3S_FS or ~/.cache/syncstore/s3s-fs-0.14.1/bin/s3s-fs). Both are
stopped at the end. Everything listens on 127.0.0.1 only.

With S3=garage the bucket is Garage 2.5 (a production S3 store) instead of s3s-fs: a
single-node Garage with data and metadata fsync on, one bucket per set-up. Its build
takes about 20 minutes on 2 cores, so it is built on demand, once, into the same cache:

    cargo install garage --version 2.5.0 --locked --root ~/.cache/syncstore/garage-2.5.0
    S3=garage python3 bench/scaleout.py --bin target/release --data /tmp/syncstore-scaleout

GARAGE_COMPRESSION=none (or a zstd level) sets Garage's compression_level.
"""

import argparse
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers: workloads, processes, measuring)
from bench import MIB, Proc, free_port, log, wait_for  # noqa: E402

REPEATS = bench.env_int("REPEATS", 3)
LAT_COUNT = bench.env_int("LAT_COUNT", 100)
WORKLOADS = os.environ.get("WORKLOADS", "w1 w2 w3").split()
SETUPS = os.environ.get("SETUPS", "embedded shared1 shared3").split()
# PG_STATEMENTS=1: PostgreSQL keeps pg_stat_statements, printed after each shared upload.
PG_STATEMENTS = os.environ.get("PG_STATEMENTS") == "1"
KEY, SECRET = "syncstore-bench", "syncstore-bench-secret"
PG_BIN = os.environ.get("SYNCSTORE_PG_BIN", "/usr/lib/postgresql/15/bin")
CACHE = os.environ.get("SYNCSTORE_CACHE", os.path.expanduser("~/.cache/syncstore"))
S3S_FS = os.environ.get("SYNCSTORE_S3S_FS") or os.path.join(CACHE, "s3s-fs-0.14.1", "bin", "s3s-fs")
S3_KIND = os.environ.get("S3", "s3s-fs")
GARAGE = os.environ.get("SYNCSTORE_GARAGE") or os.path.join(CACHE, "garage-2.5.0", "bin", "garage")
# Garage's key format: "GK" and 24 hex digits; a secret of 64 hex digits.
GARAGE_KEY, GARAGE_SECRET = "GK" + "5eb0c4" * 4, "5eb0c4a7" * 8
# GARAGE_COMPRESSION=none (or a zstd level): Garage's compression_level; unset, its default.
GARAGE_COMPRESSION = (f'compression_level = "{os.environ["GARAGE_COMPRESSION"]}"\n'
                      if os.environ.get("GARAGE_COMPRESSION") else "")
NAMES = {"embedded": "embedded", "shared1": "shared x1", "shared3": "shared x3"}


def as_postgres(args):
    """Runs a PostgreSQL tool as the postgres user (initdb refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class Postgres:
    def __init__(self, root):
        self.dir = os.path.join(root, "pg")
        os.makedirs(self.dir)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres",
                                    "--no-instructions"]), check=True, capture_output=True)
        self.port = free_port()
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if PG_STATEMENTS:
            opts += " -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all"
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-o", opts, "-l",
                                    os.path.join(self.dir, "log"), "-w", "start"]),
                       check=True, capture_output=True)
        self.data = data
        self.count = 0
        with open(os.path.join(data, "postmaster.pid")) as f:
            self.pid = int(f.readline())

    def cpu(self):
        """CPU seconds of the postmaster and its backends so far."""
        return bench.tree_cpu(self.pid)

    def database(self):
        self.count += 1
        name = f"bench{self.count}"
        subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        if PG_STATEMENTS:
            self.sql("CREATE EXTENSION pg_stat_statements", name)
        self.last = name
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, statement, database="postgres"):
        return subprocess.run([f"{PG_BIN}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                               "-d", database, "-q", "-c", statement], check=True, capture_output=True,
                              text=True).stdout

    def statements(self):
        """The statements that took the most time since the last call (PG_STATEMENTS=1)."""
        top = self.sql("SELECT calls, round(total_exec_time) AS ms, rows, "
                       "left(regexp_replace(query, '\\s+', ' ', 'g'), 200) AS query "
                       "FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15", self.last)
        self.sql("SELECT pg_stat_statements_reset()", self.last)
        return top

    def stop(self):
        subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "stop"]),
                       capture_output=True)


class S3:
    def __init__(self, root):
        self.root = os.path.join(root, "s3")
        os.makedirs(self.root)
        self.port = free_port()
        self.proc = Proc([S3S_FS, "--host", "127.0.0.1", "--port", str(self.port), "--access-key",
                          KEY, "--secret-key", SECRET, self.root], os.path.join(root, "s3.log"))
        wait_for(lambda: bench.listening(self.port), bench.START_TIMEOUT, "s3s-fs to listen")
        self.count = 0

    def bucket(self):
        self.count += 1
        name = f"bench{self.count}"
        os.makedirs(os.path.join(self.root, name))
        return f"s3://{name}?endpoint=http://127.0.0.1:{self.port}&region=us-east-1"

    def cpu(self):
        return self.proc.cpu()

    def stop(self):
        self.proc.stop()


class Garage:
    """A single-node Garage on loopback, durable (data and metadata fsync on); its
    command-line tool creates a bucket for each set-up and allows the bench's key."""

    def __init__(self, root):
        self.root = os.path.join(root, "garage")
        os.makedirs(self.root)
        self.port, rpc, admin = free_port(), free_port(), free_port()
        self.config = os.path.join(self.root, "garage.toml")
        with open(self.config, "w") as f:
            f.write(f"""metadata_dir = "{self.root}/meta"
data_dir = "{self.root}/data"
db_engine = "lmdb"
replication_factor = 1
metadata_fsync = true
data_fsync = true
{GARAGE_COMPRESSION}rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{os.urandom(32).hex()}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{self.port}"
[admin]
api_bind_addr = "127.0.0.1:{admin}"
""")
        env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=GARAGE_KEY,
                   GARAGE_DEFAULT_SECRET_KEY=GARAGE_SECRET, GARAGE_DEFAULT_BUCKET="bench0")
        self.proc = Proc([GARAGE, "-c", self.config, "server", "--single-node", "--default-bucket"],
                         os.path.join(root, "garage.log"), env=env)
        wait_for(lambda: bench.listening(self.port), bench.START_TIMEOUT, "Garage to listen")
        self.count = 0

    def garage(self, *args):
        subprocess.run([GARAGE, "-c", self.config, *args], check=True, capture_output=True,
                       timeout=60)

    def bucket(self):
        self.count += 1
        name = f"bench{self.count}"
        # The layout is applied a moment after the server listens: retry until it is.
        wait_for(lambda: subprocess.run([GARAGE, "-c", self.config, "bucket", "create", name],
                                        capture_output=True, timeout=60).returncode == 0,
                 bench.START_TIMEOUT, "Garage to create a bucket")
        self.garage("bucket", "allow", "--read", "--write", "--owner", name, "--key", GARAGE_KEY)
        return f"s3://{name}?endpoint=http://127.0.0.1:{self.port}&region=garage"

    def cpu(self):
        return self.proc.cpu()

    def stop(self):
        self.proc.stop()


class Setup:
    """The servers of one set-up for one run; `urls[i]` is server i's address."""

    def __init__(self, kind, store, work, pg, s3):
        self.procs = []
        self.dirs = []
        n = 3 if kind == "shared3" else 1
        flags = []
        if kind != "embedded":
            flags = ["--meta", pg.database(), "--content", s3.bucket()]
        for i in range(n):
            d = os.path.join(work, f"server{i}")
            self.dirs.append(d)
            self.procs.append(store.server(d, *flags))
        self.urls = [p.url for p in self.procs]

    def cpu(self):
        return sum(p.cpu() for p in self.procs)

    def hwm(self):
        return max(p.hwm_mib() for p in self.procs)

    def stop(self):
        for p in self.procs:
            p.stop()
        for d in self.dirs:
            bench.reclaim(d)


def services_cpu(kind, pg, s3):
    """CPU seconds so far of the database and the bucket (zero for the embedded set-up)."""
    return (0.0, 0.0) if kind == "embedded" else (pg.cpu(), s3.cpu())


def breakdown(what, kind, m, setup, c0, services0, pg, s3):
    """Logs where the CPU of a shared set-up's transfer went (and with PG_STATEMENTS=1 the
    statements that took the most time)."""
    if kind == "embedded":
        return
    db, bucket = (after - before for after, before in zip(services_cpu(kind, pg, s3), services0))
    log(f"    CPU of the {what}: client {m['cpu']:.1f} s, servers {setup.cpu() - c0:.1f} s, "
        f"PostgreSQL {db:.1f} s, {S3_KIND} {bucket:.1f} s")
    if PG_STATEMENTS:
        log(f"    statements of the {what}, most time first:\n" + pg.statements())


def transfer(res, store, kind, w, src, files, nbytes, run, work, pg, s3):
    d = os.path.join(work, f"{kind}-{w}-{run}")
    os.makedirs(d)
    up = os.path.join(d, "up")
    bench.link_copy(src, up)
    env = dict(os.environ)
    setup = Setup(kind, store, d, pg, s3)
    try:
        if PG_STATEMENTS and kind != "embedded":
            pg.statements()
        c0, services0 = setup.cpu(), services_cpu(kind, pg, s3)
        m = store.client(setup.urls[0], up, "sync", env=env)
        res.add(workload=w, tool=f"{NAMES[kind]} upload", wall=m["wall"], files=files, bytes=nbytes,
                cpu=m["cpu"] + setup.cpu() - c0, rss_client=m["rss"], rss_server=setup.hwm())
        breakdown("upload", kind, m, setup, c0, services0, pg, s3)
        down = os.path.join(d, "down")
        c0, services0 = setup.cpu(), services_cpu(kind, pg, s3)
        m = store.client(setup.urls[-1 if kind == "shared3" else 0], down, "sync", env=env)
        res.add(workload=w, tool=f"{NAMES[kind]} download", wall=m["wall"], files=files,
                bytes=nbytes, cpu=m["cpu"] + setup.cpu() - c0, rss_client=m["rss"],
                rss_server=setup.hwm())
        breakdown("download", kind, m, setup, c0, services0, pg, s3)
        bad = bench.same_tree(src, down, deep=run == 1)
        if bad:
            raise RuntimeError(f"{kind} download of {w} is not the source: {bad}")
    finally:
        setup.stop()
        # Truncated, not deleted: ext4 slows every create for a minute after a bulk delete.
        bench.reclaim(d)


def latency(res, store, kind, run, work, pg, s3):
    d = os.path.join(work, f"{kind}-latency-{run}")
    os.makedirs(d)
    setup = Setup(kind, store, d, pg, s3)
    clients = []
    try:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        clients = [store.client(setup.urls[0], a, measured=False),
                   store.client(setup.urls[-1], b, measured=False)]
        for folder in (a, b):
            wait_for(lambda f=folder: "initial sync done" in open(f"{f}.log").read(),
                     bench.START_TIMEOUT, "a watching client's initial sync")
        time.sleep(1)  # both subscriptions settle: each probe starts from rest
        lat = bench.probe_latency(a, b, LAT_COUNT, gap=0.1)
        res.extra.setdefault("latency", {}).setdefault(kind, []).append(lat)
        log(f"  {NAMES[kind]} latency: median {lat['median'] * 1e3:.1f} ms, p99 "
            f"{lat['p99'] * 1e3:.1f} ms (n = {lat['n']}, {lat['missed']} missed)")
    finally:
        for c in clients:
            c.stop()
        setup.stop()
        bench.reclaim(d)


def table(res):
    out = [f"Shared backend: PostgreSQL 15 and {S3_KIND} on this machine.", "","| workload | set-up | upload | download | files/s up | MiB/s up | CPU s up | "
           "upload / embedded | download / embedded |", "|---|---|---|---|---|---|---|---|---|"]
    ratios = {}
    for w in WORKLOADS:
        base_up = res.median(w, "embedded upload")
        base_down = res.median(w, "embedded download")
        for kind in SETUPS:
            up = res.median(w, f"{NAMES[kind]} upload")
            down = res.median(w, f"{NAMES[kind]} download")
            if not up:
                continue
            r_up = base_up["wall"] / up["wall"] if base_up else None
            r_down = base_down["wall"] / down["wall"] if base_down and down else None
            ratios[(w, kind)] = r_up
            out.append(
                f"| {w.upper()} | {NAMES[kind]} | {up['wall']:.2f} s | "
                f"{down['wall']:.2f} s | {up['files'] / up['wall']:,.0f} | "
                f"{up['bytes'] / MIB / up['wall']:.0f} | {up['cpu']:.1f} | "
                f"{'' if r_up is None else f'{r_up:.2f}x'} | "
                f"{'' if r_down is None else f'{r_down:.2f}x'} |")
    out += ["", "| save latency | p50 | p99 | missed |", "|---|---|---|---|"]
    lat = {}
    for kind in SETUPS:
        runs = [r for r in res.extra.get("latency", {}).get(kind, []) if r["n"]]
        if not runs:
            continue
        p50 = statistics.median(r["median"] for r in runs)
        p99 = statistics.median(r["p99"] for r in runs)
        lat[kind] = (p50, p99)
        where = "two servers" if kind == "shared3" else "one server"
        out.append(f"| {NAMES[kind]} ({where}) | {p50 * 1e3:.1f} ms | {p99 * 1e3:.1f} ms | "
                   f"{sum(r['missed'] for r in runs)} |")
    out += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for kind in ("shared1", "shared3"):
        for w, goal in (("w1", 0.5), ("w2", 0.7)):
            v = ratios.get((w, kind))
            if v is not None:
                out.append(f"| {w.upper()} {NAMES[kind]} / embedded | {v:.2f}x | >= {goal}x | "
                           f"{'yes' if v >= goal else 'NO'} |")
    if "shared3" in lat:
        p50, p99 = lat["shared3"]
        out.append(f"| cross-process save latency p50 | {p50 * 1e3:.1f} ms | <= 50 ms | "
                   f"{'yes' if p50 <= 0.05 else 'NO'} |")
        out.append(f"| cross-process save latency p99 | {p99 * 1e3:.1f} ms | <= 200 ms | "
                   f"{'yes' if p99 <= 0.2 else 'NO'} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bin", required=True, help="folder holding sync-server and sync-client")
    ap.add_argument("--data", required=True, help="where sources and run folders go")
    args = ap.parse_args()
    if S3_KIND not in ("s3s-fs", "garage"):
        sys.exit(f"S3={S3_KIND}: s3s-fs or garage")
    for tool in (f"{PG_BIN}/initdb", S3S_FS):
        if not os.access(tool, os.X_OK):
            sys.exit(f"missing {tool}: run `bash tests/setup` (it installs PostgreSQL 15 and s3s-fs)")
    if S3_KIND == "garage" and not os.access(GARAGE, os.X_OK):
        sys.exit(f"missing {GARAGE}: build it as this script's help says")
    os.makedirs(args.data, exist_ok=True)
    work = os.path.join(args.data, "runs")
    os.makedirs(work, exist_ok=True)
    services = os.path.join(args.data, "services")
    shutil.rmtree(services, ignore_errors=True)
    os.makedirs(services)
    if S3_KIND == "garage":
        os.environ.update(AWS_ACCESS_KEY_ID=GARAGE_KEY, AWS_SECRET_ACCESS_KEY=GARAGE_SECRET)
    else:
        os.environ.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    store = bench.Syncstore(args.bin, work)
    res = bench.Results()
    pg = s3 = None
    try:
        pg = Postgres(services)
        s3 = Garage(services) if S3_KIND == "garage" else S3(services)
        log(f"bucket server: {S3_KIND}")
        for w in WORKLOADS:
            src = bench.generate(os.path.join(args.data, "src"), w)
            (_, _), files, size, _ = bench.shape(w)
            nbytes = files * size
            for run in range(1, REPEATS + 1):
                # Each repeat alternates which set-up goes first.
                order = SETUPS if run % 2 else list(reversed(SETUPS))
                for kind in order:
                    log(f"{w} run {run}: {NAMES[kind]}")
                    transfer(res, store, kind, w, src, files, nbytes, run, work, pg, s3)
        for run in range(1, REPEATS + 1):
            for kind in SETUPS:
                latency(res, store, kind, run, work, pg, s3)
    finally:
        if s3:
            s3.stop()
        if pg:
            pg.stop()
        shutil.rmtree(services, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    text = table(res)
    print(text)
    with open(os.path.join(args.data, "scaleout.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
