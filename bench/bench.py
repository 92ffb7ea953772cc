#!/usr/bin/env python3
"""syncstore against its peers on the same data, in one run (run it through run.sh).

Stages, each bounded by a timeout, all traffic on 127.0.0.1:
  workloads  W1 = 10,000 x 4 KiB in 100 folders, W2 = one 1 GiB file, W3 = 1,000 x 1 MiB,
             BIG = 100,000 x 1 KiB in 1,000 folders; random, deterministic (seeded), generated
             once into DATA/src and reused while it exists.
  syncstore  per workload: `sync-client sync` of a full folder into an empty primary, then of
             an empty folder from it (download), then the upload again into a primary with a
             sync-mode replica. Client figures from wait4 (CPU, peak RSS), server figures from
             /proc (CPU over the run, VmHWM of a server started for that run).
  rsync      `rsync -a --whole-file` into an rsync daemon on 127.0.0.1 (started per run).
  syncthing  two instances, A (send-only, paused while both start and connect) and B; the
             clock starts when A's folder is resumed and stops when B has every file and byte.
             Fully offline: no discovery, relays, NAT, STUN, usage reports, upgrades or crash
             reports. Then the save latency A -> B on the same pair (watcher delay 1 s, its
             minimum).
  latency    one server, two watching clients: a 4 KiB file saved in folder A until the same
             bytes are in folder B (median, p99).
  big        the 100,000-file folder: initial upload; a watching client on it (its RSS, and
             CPU of client + server over IDLE_S seconds of nothing changing); then the restart
             rescan: `sync-client sync` over the unchanged folder whose state is known.
  wdelta     (W-delta, bench/wdelta.py) a 1 GiB file on a watching client A, a second watching
             client B, and edits E1-E5 to it: per edit the bytes of each leg through a counting
             proxy (client -> server, server -> B), the time from the save until B has it, CPU
             and the server's disk growth, against rsync (delta, to its daemon) on the same
             edits; then ten copies of one 100 MiB file (dedup). Runs after the file workloads.

ext4 here does not reuse an inode for 60 s after a delete, and every create scans past such
inodes: nothing is deleted while the benchmark runs. Every run gets new folders; at the end
the run's folder is deleted (and the sources too, unless KEEP_SRC=1).

Old against new (--baseline-bin, which run.sh passes for BASELINE=REV): the syncstore stages
(each workload's upload, download and upload with a sync replica, and the save latency) run
with both builds, REPEATS times each, alternating which build goes first; a second table gives
the median wall times and latency, old / new / new÷old. Everything else (peers, the big
folder, W-delta, the first table) is the new build's.

Environment: BENCH_DATA, BENCH_SCALE (divide file counts and sizes, for trying the script
out), REPEATS (syncstore runs per workload; W-delta runs), PEER_REPEATS, WORKLOADS
("w1 w2 w3 wdelta"), DELTA_SIZE (W-delta's file, 1G; e.g. 64M), DEDUP_SIZE (100M),
PEERS ("rsync syncthing"), DOWNLOAD (1), LAT_COUNT (100), ST_LAT_COUNT (10), IDLE_S (30),
RESCAN_REPEATS (3), BIG (1: run the 100,000-file stage), KEEP_SRC, KEEP.
"""

import argparse
import ctypes
import filecmp
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET

CLK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
MIB = 1 << 20
LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
# wdelta.py imports this file as `bench`: let it find this run's module, not load a second one.
sys.modules.setdefault("bench", sys.modules[__name__])


def env_int(name, default):
    return int(os.environ.get(name, default))


SCALE = env_int("BENCH_SCALE", 1)
REPEATS = env_int("REPEATS", 1)
PEER_REPEATS = env_int("PEER_REPEATS", 1)
WORKLOADS = os.environ.get("WORKLOADS", "w1 w2 w3 wdelta").split()
# The stages that sync a generated folder (W-delta is a stage of its own: wdelta.py).
FOLDERS = [w for w in WORKLOADS if w != "wdelta"]
PEERS = os.environ.get("PEERS", "rsync syncthing").split()
DOWNLOAD = env_int("DOWNLOAD", 1)
LAT_COUNT = env_int("LAT_COUNT", 100)
ST_LAT_COUNT = env_int("ST_LAT_COUNT", 10)
IDLE_S = env_int("IDLE_S", 30)
RESCAN_REPEATS = env_int("RESCAN_REPEATS", 3)
BIG = env_int("BIG", 1)

# name: (leaf folders as (top, sub) counts, files, bytes per file, seed)
WORKLOAD_SHAPES = {
    "w1": ((10, 10), 10_000, 4096, 1),
    "w2": ((1, 1), 1, 1 << 30, 2),
    "w3": ((10, 1), 1_000, MIB, 3),
    "big": ((100, 10), 100_000, 1024, 4),
}
# Upper bounds per step (seconds); a step that passes one fails the run.
STEP_TIMEOUT = 240
START_TIMEOUT = 30


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die_with_parent():
    LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: nothing outlives the benchmark


# ---------------------------------------------------------------- workloads


def shape(name):
    (tops, subs), files, size, seed = WORKLOAD_SHAPES[name]
    if name == "w2":
        return (tops, subs), 1, max(size // SCALE, 4096), seed
    return (tops, subs), max(files // SCALE, tops * subs), size, seed


def generate(src_root, name):
    """Writes workload `name` into src_root/name once (a marker says it is complete)."""
    dest = os.path.join(src_root, name)
    marker = f"{dest}.complete"
    if os.path.exists(marker):
        return dest
    if os.path.exists(dest):  # an interrupted generation: set it aside, never delete now
        os.rename(dest, f"{dest}.partial.{time.time_ns()}")
    (tops, subs), files, size, seed = shape(name)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    leaves = [(t, s) for t in range(tops) for s in range(subs)]
    per_leaf = files // len(leaves)
    block = 16 * MIB
    for t, s in leaves:
        leaf = os.path.join(dest, f"d{t:02d}", f"e{s:02d}") if subs > 1 else os.path.join(dest, f"d{t:02d}")
        os.makedirs(leaf, exist_ok=True)
        if size >= block:
            with open(os.path.join(leaf, "f000.bin"), "wb") as f:
                left = size
                while left:
                    n = min(block, left)
                    f.write(rng.randbytes(n))
                    left -= n
            continue
        data = rng.randbytes(per_leaf * size)
        for i in range(per_leaf):
            with open(os.path.join(leaf, f"f{i:03d}.bin"), "wb") as f:
                f.write(data[i * size:(i + 1) * size])
    open(marker, "w").close()
    log(f"generated {name}: {files} x {size} bytes in {time.perf_counter() - t0:.1f}s")
    return dest


def tree_size(path):
    files = total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            files += 1
            total += os.path.getsize(os.path.join(dirpath, n))
    return files, total


def same_tree(src, dst, deep, ignore=(".syncstore", ".stfolder", ".stversions")):
    """Whether dst holds exactly src's files (names and sizes; bytes too if deep)."""
    for dirpath, dirs, names in os.walk(dst):
        dirs[:] = [d for d in dirs if d not in ignore]
        rel = os.path.relpath(dirpath, dst)
        for n in names:
            if not os.path.exists(os.path.join(src, rel, n)):
                return f"extra file {rel}/{n}"
    for dirpath, _, names in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for n in names:
            a, b = os.path.join(dirpath, n), os.path.join(dst, rel, n)
            if not os.path.exists(b) or os.path.getsize(a) != os.path.getsize(b):
                return f"missing or different {rel}/{n}"
            if deep and not filecmp.cmp(a, b, shallow=False):
                return f"different bytes in {rel}/{n}"
    return None


def reclaim(path):
    """Frees the disk space (and page cache) of a run's output once it is measured: every
    file that has no other name is truncated to nothing. Nothing is deleted: the inodes stay
    in use until the end (see the ext4 note above), and a hard-linked copy of a source is
    never touched."""
    for dirpath, _, names in os.walk(path):
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
                if st.st_nlink == 1 and st.st_size > 0 and os.path.isfile(p) and not os.path.islink(p):
                    os.truncate(p, 0)
            except OSError:
                pass


def link_copy(src, dst):
    """A hard-linked copy: new names, no new data (the sources stay warm in the page cache)."""
    subprocess.run(["cp", "-al", src, dst], check=True, timeout=STEP_TIMEOUT)


# ---------------------------------------------------------------- processes


def proc_cpu(pid):
    """User + system CPU seconds of a live process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except OSError:
        return 0.0


def tree_cpu(pid):
    """CPU seconds of a live process and its descendants, the reaped ones included (a
    server with worker processes, like PostgreSQL's postmaster and its backends)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append((int(entry), fields))
    total, todo = 0.0, [pid]
    while todo:
        parent = todo.pop()
        for child, fields in children.get(parent, []):
            total += sum(int(x) for x in fields[11:15]) / CLK
            todo.append(child)
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15]) / CLK
    except OSError:
        pass
    return total


def proc_kb(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid):
    """pid and every process below it."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def tree_cpu(pid):
    return sum(proc_cpu(p) for p in descendants(pid))


def tree_hwm_mib(pid):
    return sum(proc_kb(p, "VmHWM") for p in descendants(pid)) / 1024


def machine_busy():
    """(busy, total) jiffies of the whole machine, to tell how much else ran meanwhile."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


class Proc:
    """A background process we started; stopped by its PID only."""

    def __init__(self, args, logfile, env=None, stdout=None):
        self.args = args
        self.log = open(logfile, "ab")
        self.proc = subprocess.Popen(args, stdout=stdout or self.log, stderr=self.log,
                                     env=env, preexec_fn=die_with_parent)
        self.pid = self.proc.pid
        self.rusage = None

    def cpu(self):
        return proc_cpu(self.pid)

    def hwm_mib(self):
        return proc_kb(self.pid, "VmHWM") / 1024

    def rss_mib(self):
        return proc_kb(self.pid, "VmRSS") / 1024

    def alive(self):
        return self.proc.poll() is None

    def stop(self, grace=15):
        """SIGTERM, then SIGKILL after `grace` seconds; returns the process's rusage."""
        if self.rusage is not None:
            return self.rusage
        if self.proc.returncode is not None:  # already reaped (by poll)
            self.log.close()
            return None
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        killer = threading.Timer(grace, lambda: os.kill(self.pid, signal.SIGKILL))
        killer.start()
        try:
            _, status, self.rusage = os.wait4(self.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.rusage = None
        finally:
            killer.cancel()
            self.log.close()
        return self.rusage


GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_measured(args, logfile, timeout=STEP_TIMEOUT, env=None):
    """Runs a command to its end; returns wall seconds, CPU seconds and peak RSS (MiB).

    CPU and RSS include the children the command waited for. They come from GNU time when
    it is there: a process forked from this (large) Python process would count this
    process's pages in its own peak RSS, which survives exec."""
    stats = f"{logfile}.time"
    cmd = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", stats, *args] if GNU_TIME else args
    with open(logfile, "ab") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, preexec_fn=die_with_parent)
        killer = threading.Timer(timeout, lambda: os.kill(p.pid, signal.SIGKILL))
        killer.start()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        killer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:4]))}... exited {p.returncode} after "
                           f"{wall:.1f}s (timeout {timeout}s); see {logfile}")
    if GNU_TIME:
        user, system, rss_kb = open(stats).read().split()[-3:]
        return {"wall": wall, "cpu": float(user) + float(system), "rss": int(rss_kb) / 1024}
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss": ru.ru_maxrss / 1024}


def wait_for(cond, timeout, what, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc, without connecting)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in f.readlines()[1:])


# ---------------------------------------------------------------- results


class Results:
    def __init__(self):
        self.rows = []  # dicts: workload, tool, build, wall, files, bytes, cpu, rss_client, rss_server
        self.extra = {}
        self.failures = []

    def add(self, build="new", **row):
        row["build"] = build
        self.rows.append(row)
        rate = row["files"] / row["wall"]
        tag = "" if build == "new" else f" ({build})"
        log(f"  {row['tool']}{tag} {row['workload']}: {row['wall']:.2f}s, {rate:,.0f} files/s, "
            f"{row['bytes'] / MIB / row['wall']:.0f} MiB/s, CPU {row['cpu']:.1f}s, peak RSS "
            f"{row.get('rss_client') or 0:.0f} / {row.get('rss_server') or 0:.0f} MiB")

    def median(self, workload, tool, build="new"):
        rows = [r for r in self.rows
                if r["workload"] == workload and r["tool"] == tool and r["build"] == build]
        if not rows:
            return None
        m = {k: statistics.median(r[k] for r in rows) for k in ("wall", "cpu")}
        for k in ("rss_client", "rss_server"):
            vals = [r[k] for r in rows if r.get(k) is not None]
            m[k] = statistics.median(vals) if vals else None
        m.update(files=rows[0]["files"], bytes=rows[0]["bytes"], n=len(rows))
        return m


# ---------------------------------------------------------------- syncstore


class Syncstore:
    """One build of syncstore (`build` names it: "new", or "old" for the baseline)."""

    def __init__(self, bin_dir, work, build="new"):
        self.server_bin = os.path.join(bin_dir, "sync-server")
        self.client_bin = os.path.join(bin_dir, "sync-client")
        self.work = work
        self.build = build
        # Run folders of the baseline get their own names.
        self.prefix = "syncstore" if build == "new" else f"syncstore-{build}"

    def server(self, data, *flags):
        out = f"{data}.out"
        p = Proc([self.server_bin, "--listen", "127.0.0.1:0", "--data", data, *flags],
                 f"{data}.log", stdout=open(out, "wb"))

        def addr():
            if not p.alive():
                raise RuntimeError(f"sync-server exited; see {data}.log")
            m = re.search(r"^listening on (\S+)$", open(out).read(), re.M)
            return m and m.group(1)

        p.url = "http://" + wait_for(addr, START_TIMEOUT, "the server's listening line")
        return p

    def client(self, url, folder, *command, measured=True, logname=None, env=None):
        args = [self.client_bin, "--server", url, "--dir", folder, *command]
        logfile = logname or f"{folder}.log"
        if measured:
            return run_measured(args, logfile, env=env)
        return Proc(args, logfile, env=env)

    def upload_run(self, res, w, src, files, nbytes, run):
        d = os.path.join(self.work, f"{self.prefix}-{w}-{run}")
        os.makedirs(d)
        up = os.path.join(d, "up")
        link_copy(src, up)
        srv = self.server(os.path.join(d, "server"))
        c0 = srv.cpu()
        m = self.client(srv.url, up, "sync")
        res.add(self.build, workload=w, tool="syncstore", wall=m["wall"], files=files, bytes=nbytes,
                cpu=m["cpu"] + srv.cpu() - c0, rss_client=m["rss"], rss_server=srv.hwm_mib())
        if DOWNLOAD:
            down = os.path.join(d, "down")
            c0 = srv.cpu()
            m = self.client(srv.url, down, "sync")
            res.add(self.build, workload=w, tool="syncstore download", wall=m["wall"], files=files,
                    bytes=nbytes, cpu=m["cpu"] + srv.cpu() - c0, rss_client=m["rss"],
                    rss_server=srv.hwm_mib())
            bad = same_tree(src, down, deep=run == 1)
            if bad:
                raise RuntimeError(f"syncstore download of {w} is not the source: {bad}")
        srv.stop()
        reclaim(os.path.join(d, "server"))
        reclaim(os.path.join(d, "down"))

        # The same upload into a primary whose writes are durable on a sync replica too.
        up = os.path.join(d, "up-replica")
        link_copy(src, up)
        rep = self.server(os.path.join(d, "replica"), "--role", "replica")
        pri = self.server(os.path.join(d, "primary"), "--replica", rep.url, "--replication", "sync",
                          "--replica-timeout", "60s")
        wait_for(lambda: "replication stream up" in open(os.path.join(d, "primary.log")).read(),
                 START_TIMEOUT, "the primary's replication stream")
        c0 = pri.cpu() + rep.cpu()
        m = self.client(pri.url, up, "sync")
        cpu = m["cpu"] + pri.cpu() + rep.cpu() - c0
        res.add(self.build, workload=w, tool="syncstore + sync replica", wall=m["wall"], files=files,
                bytes=nbytes, cpu=cpu, rss_client=m["rss"],
                rss_server=max(pri.hwm_mib(), rep.hwm_mib()))
        cmp = subprocess.run([self.server_bin, "compare", pri.url, rep.url], capture_output=True,
                             text=True, timeout=STEP_TIMEOUT)
        if cmp.returncode != 0:
            raise RuntimeError(f"primary and replica differ after {w}: {cmp.stdout[:500]}")
        pri.stop()
        rep.stop()
        reclaim(os.path.join(d, "primary"))
        reclaim(os.path.join(d, "replica"))

    def latency(self, res, run=1):
        d = os.path.join(self.work, f"{self.prefix}-latency-{run}")
        os.makedirs(d)
        srv = self.server(os.path.join(d, "server"))
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        ca = self.client(srv.url, a, measured=False)
        cb = self.client(srv.url, b, measured=False)
        for c, folder in ((ca, a), (cb, b)):
            wait_for(lambda f=folder: "initial sync done" in open(f"{f}.log").read(), START_TIMEOUT,
                     "a watching client's initial sync")
        time.sleep(1)  # both subscriptions settle: each probe starts from rest
        lat = probe_latency(a, b, LAT_COUNT, gap=0.1)
        res.extra.setdefault("latencies", {}).setdefault(self.build, []).append(lat)
        res.extra["latency"] = latency_summary(res.extra["latencies"].get("new", []))
        tag = "" if self.build == "new" else f" ({self.build})"
        log(f"  syncstore{tag} latency: median {lat['median'] * 1e3:.1f} ms, p99 {lat['p99'] * 1e3:.1f} ms "
            f"(n = {lat['n']}, {lat['missed']} missed)")
        for p in (ca, cb, srv):
            p.stop()

    def big(self, res, src, files, nbytes):
        """The 100,000-file folder: initial upload, idle watch, restart rescan."""
        d = os.path.join(self.work, "syncstore-big")
        os.makedirs(d)
        folder = os.path.join(d, "folder")
        link_copy(src, folder)
        srv = self.server(os.path.join(d, "server"))
        c0 = srv.cpu()
        m = self.client(srv.url, folder, "sync", logname=os.path.join(d, "initial.log"))
        res.add(workload="big", tool="syncstore", wall=m["wall"], files=files, bytes=nbytes,
                cpu=m["cpu"] + srv.cpu() - c0, rss_client=m["rss"], rss_server=srv.hwm_mib())
        big = {"initial_client_rss": m["rss"], "files": files}

        watch_log = os.path.join(d, "watch.log")
        t0 = time.perf_counter()
        w = self.client(srv.url, folder, "watch", measured=False, logname=watch_log)
        wait_for(lambda: "initial sync done" in open(watch_log).read(), STEP_TIMEOUT,
                 "the watching client's initial sync over the big folder", step=0.01)
        big["watch_start"] = time.perf_counter() - t0
        time.sleep(3)  # whatever the start left (state writes, the watcher's first events)
        b0 = machine_busy()
        c0 = (w.cpu(), srv.cpu())
        t0 = time.perf_counter()
        time.sleep(IDLE_S)
        dt = time.perf_counter() - t0
        b1 = machine_busy()
        big["idle_s"] = dt
        big["idle_cpu_client"] = w.cpu() - c0[0]
        big["idle_cpu_server"] = srv.cpu() - c0[1]
        big["idle_machine_pct"] = 100 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        big["watch_rss"] = w.rss_mib()
        big["watch_hwm"] = w.hwm_mib()
        w.stop()
        rescans = []
        for i in range(RESCAN_REPEATS):
            m = self.client(srv.url, folder, "sync", logname=os.path.join(d, f"restart-{i}.log"))
            rescans.append(m["wall"])
            big.setdefault("rescan_rss", m["rss"])
        big["rescan"] = statistics.median(rescans)
        big["rescans"] = rescans
        res.extra["big"] = big
        log(f"  big folder: watch start {big['watch_start']:.2f}s, idle CPU client "
            f"{big['idle_cpu_client']:.2f}s server {big['idle_cpu_server']:.2f}s over {dt:.0f}s, "
            f"watch RSS {big['watch_rss']:.0f} MiB (peak {big['watch_hwm']:.0f}), restart rescans "
            f"{', '.join(f'{r:.2f}' for r in rescans)} s")
        srv.stop()


def probe_latency(src, dst, count, gap, timeout=10.0, size=4096):
    """Saves `count` new files of `size` random bytes in src (plain open/write/close, as an
    editor without atomic save does) and times each until the same bytes are in dst."""
    rng = random.Random(99)
    times, missed = [], 0
    for i in range(count):
        name = f"latency-{time.time_ns()}-{i}.bin"
        data = rng.randbytes(size)
        target = os.path.join(dst, name)
        t0 = time.perf_counter()
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
        end = t0 + timeout
        while True:
            try:
                with open(target, "rb") as f:
                    if f.read() == data:
                        times.append(time.perf_counter() - t0)
                        break
            except OSError:
                pass
            if time.perf_counter() > end:
                missed += 1
                break
            time.sleep(0.0005)
        time.sleep(gap)
    times.sort()
    if not times:
        return {"n": 0, "missed": missed, "median": float("nan"), "p99": float("nan"), "max": float("nan")}
    p99 = times[min(len(times) - 1, max(0, int(round(0.99 * len(times))) - 1))]
    return {"n": len(times), "missed": missed, "median": statistics.median(times), "p99": p99,
            "min": times[0], "max": times[-1]}


def latency_summary(runs):
    """Several latency probes as one: the median of their medians and of their p99s."""
    runs = [r for r in runs if r["n"]]
    if not runs:
        return None
    return {"n": sum(r["n"] for r in runs), "missed": sum(r["missed"] for r in runs),
            "median": statistics.median(r["median"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs), "runs": len(runs)}


# ---------------------------------------------------------------- rsync


def bench_rsync(res, work, w, src, files, nbytes, run):
    d = os.path.join(work, f"rsync-{w}-{run}")
    dst = os.path.join(d, "dst")
    os.makedirs(dst)
    port = free_port()
    conf = os.path.join(d, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write(f"address = 127.0.0.1\nport = {port}\nuse chroot = false\n"
                f"pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\nmax connections = 4\n"
                f"[bench]\n    path = {dst}\n    read only = false\n    list = false\n"
                f"    uid = 0\n    gid = 0\n")
    stats = os.path.join(d, "daemon.time")
    wrap = [GNU_TIME, "-q", "-f", "%U %S %M", "-o", stats] if GNU_TIME else []
    daemon = Proc([*wrap, "rsync", "--daemon", "--no-detach", f"--config={conf}"], os.path.join(d, "daemon.log"))
    wait_for(lambda: listening(port), START_TIMEOUT, "the rsync daemon's port")
    m = run_measured(["rsync", "-a", "--whole-file", f"{src}/", f"rsync://127.0.0.1:{port}/bench/"],
                     os.path.join(d, "client.log"))
    # Stop the daemon itself (by the PID it wrote); its figures cover the connection's child.
    try:
        os.kill(int(open(os.path.join(d, "rsyncd.pid")).read()), signal.SIGTERM)
        wait_for(lambda: not daemon.alive(), 15, "the rsync daemon to exit", step=0.01)
    except (OSError, ValueError, RuntimeError):
        pass
    ru = daemon.stop()
    if GNU_TIME:
        user, system, rss_kb = open(stats).read().split()[-3:]
        cpu, rss = float(user) + float(system), int(rss_kb) / 1024
    else:
        cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024
    res.add(workload=w, tool="rsync daemon", wall=m["wall"], files=files, bytes=nbytes,
            cpu=m["cpu"] + cpu, rss_client=m["rss"], rss_server=rss)
    bad = same_tree(src, dst, deep=run == 1)
    reclaim(dst)
    if bad:
        raise RuntimeError(f"rsync of {w}: {bad}")


# ---------------------------------------------------------------- Syncthing

ST_FOLDER = "bench"


class Syncthing:
    """One Syncthing instance, configured fully offline before its first start."""

    def __init__(self, name, root):
        self.name, self.home = name, os.path.join(root, f"{name}-home")
        self.data = os.path.join(root, f"{name}-data")
        self.port, self.gui = free_port(), free_port()
        self.apikey = os.urandom(16).hex()
        r = subprocess.run(["syncthing", "generate", f"--home={self.home}", "--no-default-folder",
                            "--skip-port-probing"], capture_output=True, text=True, timeout=60)
        m = re.search(r"Device ID:\s*([A-Z0-9-]{50,})", r.stdout + r.stderr)
        if not m:
            raise RuntimeError(f"syncthing generate failed: {r.stdout}{r.stderr}")
        self.id = m.group(1)
        self.proc = None

    def configure(self, peer, folder_type, paused, dial_peer):
        path = os.path.join(self.home, "config.xml")
        tree = ET.parse(path)
        root = tree.getroot()
        for el in root.findall("device") + root.findall("folder"):
            root.remove(el)
        opts = root.find("options")
        for el in opts.findall("listenAddress") + opts.findall("globalAnnounceServer"):
            opts.remove(el)
        ET.SubElement(opts, "listenAddress").text = f"tcp://127.0.0.1:{self.port}"
        offline = {
            "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false",
            "relaysEnabled": "false", "natEnabled": "false", "urAccepted": "-1", "urSeen": "3",
            "autoUpgradeIntervalH": "0", "crashReportingEnabled": "false",
            "startBrowser": "false", "announceLANAddresses": "false",
            "stunKeepaliveStartS": "0", "reconnectionIntervalS": "1",
        }
        for k, v in offline.items():
            el = opts.find(k)
            if el is None:
                el = ET.SubElement(opts, k)
            el.text = v
        gui = root.find("gui")
        gui.set("enabled", "true")
        gui.set("tls", "false")
        gui.find("address").text = f"127.0.0.1:{self.gui}"
        gui.find("apikey").text = self.apikey
        folder = ET.Element("folder", {
            "id": ST_FOLDER, "label": ST_FOLDER, "path": self.data, "type": folder_type,
            "rescanIntervalS": "3600", "fsWatcherEnabled": "true", "fsWatcherDelayS": "1",
            "ignorePerms": "false", "autoNormalize": "true"})
        ET.SubElement(folder, "filesystemType").text = "basic"
        for inst in (self, peer):
            dev = ET.SubElement(folder, "device", {"id": inst.id, "introducedBy": ""})
            ET.SubElement(dev, "encryptionPassword").text = ""
        ET.SubElement(folder, "minDiskFree", {"unit": "%"}).text = "1"
        ET.SubElement(folder, "markerName").text = ".stfolder"
        ET.SubElement(folder, "paused").text = "true" if paused else "false"
        devices = []
        for inst in (self, peer):
            dev = ET.Element("device", {"id": inst.id, "name": inst.name, "compression": "metadata",
                                        "introducer": "false", "skipIntroductionRemovals": "false",
                                        "introducedBy": ""})
            # Only one side dials: when both dial at once, 1.19 can lose both connections to
            # its Hello timeout. "dynamic" with discovery off resolves to nothing: accept only.
            addr = "dynamic" if inst is peer and not dial_peer else f"tcp://127.0.0.1:{inst.port}"
            ET.SubElement(dev, "address").text = addr
            ET.SubElement(dev, "paused").text = "false"
            ET.SubElement(dev, "autoAcceptFolders").text = "false"
            devices.append(dev)
        for i, el in enumerate([folder] + devices):
            root.insert(i, el)
        tree.write(path)
        os.makedirs(os.path.join(self.data, ".stfolder"), exist_ok=True)

    def start(self):
        env = dict(os.environ, STNOUPGRADE="1", STNORESTART="1", STNODEFAULTFOLDER="1")
        self.proc = Proc(["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart",
                          "--no-upgrade", "--no-default-folder", "--skip-port-probing"],
                         os.path.join(self.home, "syncthing.log"), env=env)

    def api(self, path, method="GET", body=None, timeout=5):
        data = json.dumps(body).encode() if body is not None else (None if method == "GET" else b"")
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui}{path}", method=method, data=data,
                                     headers={"X-API-Key": self.apikey, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read()
            return json.loads(text) if text else None

    def ready(self):
        if not self.proc.alive():
            raise RuntimeError(f"syncthing {self.name} exited; see {self.home}/syncthing.log")
        try:
            self.api("/rest/system/ping", timeout=1)
            return True
        except OSError:
            return False

    def connected(self, other):
        return self.api("/rest/system/connections")["connections"].get(other.id, {}).get("connected")

    def status(self):
        return self.api(f"/rest/db/status?folder={ST_FOLDER}")

    def stop(self):
        if self.proc is None or not self.proc.alive():
            return
        try:
            self.api("/rest/system/shutdown", method="POST", timeout=3)
            wait_for(lambda: not self.proc.alive(), 10, "syncthing to exit", step=0.05)
        except (OSError, RuntimeError):
            pass
        self.proc.stop()


def bench_syncthing(res, work, w, src, files, nbytes, run, lat_count):
    d = os.path.join(work, f"syncthing-{w}-{run}")
    os.makedirs(d)
    a, b = Syncthing("A", d), Syncthing("B", d)
    link_copy(src, a.data)
    os.makedirs(b.data)
    a.configure(b, "sendonly", paused=True, dial_peer=False)
    b.configure(a, "sendreceive", paused=False, dial_peer=True)
    try:
        a.start()
        b.start()
        wait_for(a.ready, START_TIMEOUT, "Syncthing A's REST API", step=0.05)
        wait_for(b.ready, START_TIMEOUT, "Syncthing B's REST API", step=0.05)
        wait_for(lambda: a.connected(b), 60, "Syncthing B to connect to A", step=0.1)
        time.sleep(0.5)
        c0 = tree_cpu(a.proc.pid) + tree_cpu(b.proc.pid)
        t0 = time.perf_counter()
        a.api(f"/rest/config/folders/{ST_FOLDER}", method="PATCH", body={"paused": False})

        def done():
            s = b.status()  # localBytes counts 128 bytes per folder too
            return s["localFiles"] == files and s["localBytes"] >= nbytes and s["needTotalItems"] == 0

        try:
            wait_for(done, STEP_TIMEOUT, f"Syncthing to sync {w}", step=0.05)
        except RuntimeError:
            for inst in (a, b):
                tail = open(os.path.join(inst.home, "syncthing.log"), errors="replace").readlines()[-5:]
                log(f"  Syncthing {inst.name}: status {inst.status()}; log ends with: {''.join(tail)}")
            raise
        wall = time.perf_counter() - t0
        res.add(workload=w, tool="Syncthing", wall=wall, files=files, bytes=nbytes,
                cpu=tree_cpu(a.proc.pid) + tree_cpu(b.proc.pid) - c0,
                rss_client=tree_hwm_mib(a.proc.pid), rss_server=tree_hwm_mib(b.proc.pid))
        bad = same_tree(src, b.data, deep=run == 1)
        if bad:
            raise RuntimeError(f"Syncthing {w}: {bad}")
        if lat_count:
            time.sleep(1.5)  # A's watcher and scanner settle after the initial sync
            lat = probe_latency(a.data, b.data, lat_count, gap=0.2)
            res.extra["syncthing_latency"] = lat
            log(f"  Syncthing latency: median {lat['median'] * 1e3:.0f} ms, p99 {lat['p99'] * 1e3:.0f} ms")
    finally:
        a.stop()
        b.stop()
        reclaim(b.data)
    pattern = re.compile(r"discover|relay|upnp|nat-pmp|natpmp|stun|usage report|upgrade|crash report", re.I)
    for inst in (a, b):
        lines = [ln for ln in open(os.path.join(inst.home, "syncthing.log"), errors="replace")
                 if pattern.search(ln) and not ln.startswith("[start]")]
        if lines:
            log(f"  Syncthing {inst.name}: log lines that mention network services: {lines[:3]}")


# ---------------------------------------------------------------- table


def fmt(v, spec):
    return "" if v is None else format(v, spec)


def ratio(a, b):
    return f"{a / b:.2f}×" if a and b else ""


def table(res, meta):
    out = []
    names = {"w1": "W1 10,000 × 4 KiB", "w2": "W2 1 × 1 GiB", "w3": "W3 1,000 × 1 MiB",
             "big": "100,000 × 1 KiB"}
    if SCALE != 1:
        names = {k: f"{k.upper()} (scale 1/{SCALE})" for k in names}
    out.append("| workload | tool | wall s | files/s | MiB/s | peak RSS MiB (client / server) | "
               "CPU s | syncstore / rsync | syncstore / Syncthing |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    tools = ["syncstore", "syncstore + sync replica", "syncstore download", "rsync daemon", "Syncthing"]
    for w in FOLDERS + ["big"]:
        peers = {t: res.median(w, t) for t in ("rsync daemon", "Syncthing")}
        for tool in tools:
            m = res.median(w, tool)
            if m is None:
                continue
            fps, mibps = m["files"] / m["wall"], m["bytes"] / MIB / m["wall"]
            metric = (lambda x: x["files"] / x["wall"]) if w in ("w1", "big") else \
                (lambda x: x["bytes"] / x["wall"])
            r_rsync = r_st = ""
            if tool.startswith("syncstore") and "download" not in tool:
                r_rsync = ratio(metric(m), peers["rsync daemon"] and metric(peers["rsync daemon"]))
                r_st = ratio(metric(m), peers["Syncthing"] and metric(peers["Syncthing"]))
            rss = f"{fmt(m['rss_client'], '.0f')} / {fmt(m['rss_server'], '.0f')}"
            label = tool if m["n"] == 1 else f"{tool} (median of {m['n']})"
            fps_text = f"{fps:,.0f}" if fps >= 10 else f"{fps:.2f}"
            out.append(f"| {names[w]} | {label} | {m['wall']:.2f} | {fps_text} | {mibps:,.0f} | {rss} | "
                       f"{m['cpu']:.1f} | {r_rsync} | {r_st} |")
    if len(out) == 2:
        out = []  # only W-delta ran: no folder to tabulate
    else:
        out.append("")
        out.append("Peak RSS: syncstore client / server (the larger of primary and replica); rsync "
                   "client / daemon; Syncthing A (sender) / B (receiver). CPU: user + system seconds "
                   "of all of them during the run.")
    for f in res.failures:
        out.append(f"Failed: {f}")
    out.append("")
    out += targets(res)
    if "wdelta" in WORKLOADS:
        import wdelta
        out.append("")
        out += wdelta.report(res)
    out.append("")
    out.append(meta)
    return "\n".join(out)


def compare_table(res, old_name, new_name):
    """The baseline against the new build: median wall times (and save latency), old / new /
    new÷old. Every figure is a time, so a ratio below 1.00 means the new build is faster."""
    out = [f"Old = {old_name}, new = {new_name}: median wall time of each stage "
           f"(REPEATS = {REPEATS} each, alternating which build ran first).", "",
           "| workload | stage | old | new | new ÷ old |", "|---|---|---|---|---|"]
    names = {"w1": "W1 10,000 × 4 KiB", "w2": "W2 1 × 1 GiB", "w3": "W3 1,000 × 1 MiB"}
    if SCALE != 1:
        names = {k: f"{k.upper()} (scale 1/{SCALE})" for k in names}
    stages = {"syncstore": "upload, s", "syncstore download": "download, s",
              "syncstore + sync replica": "upload with a sync replica, s"}
    for w in FOLDERS:
        for tool, stage in stages.items():
            old, new = res.median(w, tool, "old"), res.median(w, tool, "new")
            if old and new:
                out.append(f"| {names.get(w, w)} | {stage} | {old['wall']:.2f} | {new['wall']:.2f} | "
                           f"{new['wall'] / old['wall']:.2f} |")
    lats = res.extra.get("latencies", {})
    old, new = latency_summary(lats.get("old", [])), latency_summary(lats.get("new", []))
    if old and new:
        for key, stage in (("median", "median"), ("p99", "p99")):
            out.append(f"| save latency (4 KiB, {LAT_COUNT} saves × {new['runs']}) | {stage}, ms | "
                       f"{old[key] * 1e3:.1f} | {new[key] * 1e3:.1f} | {new[key] / old[key]:.2f} |")
        if old["missed"] or new["missed"]:
            out.append(f"Missed saves: old {old['missed']}, new {new['missed']}.")
    return out


def targets(res):
    rows = ["| target | measured | goal | met |", "|---|---|---|---|"]

    def row(what, value, goal, ok):
        rows.append(f"| {what} | {value} | {goal} | {'yes' if ok else '**no**'} |")

    def rate(w, tool, files):
        m = res.median(w, tool)
        return m and (m["files"] / m["wall"] if files else m["bytes"] / m["wall"])

    rs = rate("w1", "rsync daemon", True)
    ss = rate("w1", "syncstore", True)
    if rs and ss:
        row("W1 initial sync, files/s vs rsync daemon", f"{ss / rs:.2f}×", "≥ 1.0×", ss / rs >= 1.0)
    for w in ("w2", "w3"):
        rs = rate(w, "rsync daemon", False)
        for tool, goal in (("syncstore", 1.2), ("syncstore + sync replica", 0.7)):
            ss = rate(w, tool, False)
            if rs and ss:
                row(f"{w.upper()} {tool.replace('syncstore', 'client → primary')}, MiB/s vs rsync",
                    f"{ss / rs:.2f}×", f"≥ {goal}×", ss / rs >= goal)
    lat = res.extra.get("latency")
    if lat and lat["n"]:
        row("L median (4 KiB save → other folder)", f"{lat['median'] * 1e3:.1f} ms", "≤ 20 ms",
            lat["median"] <= 0.020 and not lat["missed"])
        row(f"L p99 (n = {lat['n']}, {lat['missed']} missed)", f"{lat['p99'] * 1e3:.1f} ms",
            "≤ 100 ms", lat["p99"] <= 0.100 and not lat["missed"])
    m = res.median("w2", "syncstore")
    if m:
        worst = max(m["rss_client"] or 0, m["rss_server"] or 0)
        row("peak RSS during W2, client / server", f"{m['rss_client']:.0f} / {m['rss_server']:.0f} MiB",
            "≤ 64 MiB", worst <= 64)
    big = res.extra.get("big")
    if big:
        peak = max(big["initial_client_rss"], big["watch_hwm"])
        n = f"{big['files']:,}"
        row(f"client peak RSS, {n}-file folder (initial sync / watching)",
            f"{big['initial_client_rss']:.0f} / {big['watch_hwm']:.0f} MiB", "≤ 200 MiB", peak <= 200)
        pct = 100 * (big["idle_cpu_client"] + big["idle_cpu_server"]) / big["idle_s"]
        row(f"idle CPU (% of one core), {n} files watched, client + server over {big['idle_s']:.0f} s",
            f"{pct:.2f}% ({big['idle_cpu_client']:.2f} + {big['idle_cpu_server']:.2f} CPU s)",
            "≈ 0%", pct < 1.0)
        row(f"restart rescan, {n} unchanged files (`sync`, median of {len(big['rescans'])})",
            f"{big['rescan']:.2f} s",
            "≤ 2 s", big["rescan"] <= 2.0)
    st = res.extra.get("syncthing_latency")
    if st and st["n"]:
        rows.append("")
        rows.append(f"Syncthing's save latency on the same machine: median {st['median'] * 1e3:.0f} ms, "
                    f"p99 {st['p99'] * 1e3:.0f} ms (n = {st['n']}; its watcher waits at least 1 s).")
    return rows


# ---------------------------------------------------------------- main


def attempt(res, what, step, *args):
    """Runs one peer's step; a failure is reported in the table instead of ending the run."""
    try:
        step(*args)
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, ValueError) as e:
        log(f"  {what} FAILED: {e}")
        res.failures.append(f"{what}: {e}")


def quiet_gate():
    """Waits (up to QUIET_WAIT seconds) until the rest of the machine is mostly idle."""
    limit, pct = env_int("QUIET_WAIT", 180), env_int("QUIET_PCT", 25)
    end = time.monotonic() + limit
    while True:
        b0 = machine_busy()
        time.sleep(2)
        b1 = machine_busy()
        busy = 100 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if busy < pct:
            return
        if time.monotonic() > end:
            log(f"the machine is still {busy:.0f}% busy after {limit}s: measuring anyway")
            return
        log(f"the machine is {busy:.0f}% busy; waiting for it to calm down")
        time.sleep(3)


def versions():
    out = []
    for cmd in (["rsync", "--version"], ["syncthing", "--version"]):
        try:
            out.append(subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0])
        except (OSError, IndexError, subprocess.TimeoutExpired):
            pass
    return "; ".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", help="folder holding sync-server and sync-client")
    ap.add_argument("--data", required=True, help="where sources and run folders go")
    ap.add_argument("--out", help="write the markdown table here too")
    ap.add_argument("--generate", metavar="WORKLOAD", help="only generate WORKLOAD; print its folder")
    ap.add_argument("--baseline-bin", help="folder holding a baseline build's sync-server and "
                    "sync-client: run syncstore's stages with both and compare")
    ap.add_argument("--baseline-name", default="baseline", help="what the baseline build is")
    ap.add_argument("--new-name", default="new", help="what the --bin build is")
    args = ap.parse_args()

    src_root = os.path.join(args.data, "src" if SCALE == 1 else f"src-scale{SCALE}")
    if args.generate:
        os.makedirs(src_root, exist_ok=True)
        print(generate(src_root, args.generate))
        return
    if not args.bin:
        ap.error("--bin is required")
    work = os.path.join(args.data, "runs", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(src_root, exist_ok=True)
    os.makedirs(work)
    res = Results()
    peers = [p for p in PEERS if shutil.which(p)]
    for p in set(PEERS) - set(peers):
        log(f"{p} is not installed: skipped")
    started = time.perf_counter()
    sources = {w: generate(src_root, w) for w in FOLDERS + (["big"] if BIG else [])}
    sizes = {w: tree_size(s) for w, s in sources.items()}
    os.sync()
    # Outputs are truncated once measured (reclaim), so at most one run's copy of the
    # largest workload is on disk at a time, next to the sources.
    need = 2 * max([sizes[w][1] for w in sizes] + [0]) + (512 << 20)
    if "wdelta" in WORKLOADS:
        import wdelta
        need = max(need, sum(s for _, s in sizes.values()) + wdelta.disk_needed())
    free = shutil.disk_usage(work).free
    if free < need + (1 << 30):
        raise SystemExit(f"only {free >> 20} MiB free under {work}; the benchmark needs about "
                         f"{(need + (1 << 30)) >> 20} MiB")
    quiet_gate()
    busy0 = machine_busy()
    own0 = os.times()
    measured_from = time.perf_counter()
    ss = Syncstore(args.bin, work)
    # With a baseline, both builds run each stage, the first of them alternating by repeat,
    # so that a drift of the machine during the run weighs on both alike.
    builds = [ss] + ([Syncstore(args.baseline_bin, work, "old")] if args.baseline_bin else [])

    def in_turn(run):
        return builds if run % 2 else builds[::-1]

    for w in FOLDERS:
        files, nbytes = sizes[w]
        log(f"{w}: {files} files, {nbytes / MIB:.0f} MiB")
        for run in range(1, REPEATS + 1):
            for b in in_turn(run):
                b.upload_run(res, w, sources[w], files, nbytes, run)
        for run in range(1, PEER_REPEATS + 1):
            if "rsync" in peers:
                attempt(res, f"rsync daemon {w}", bench_rsync, res, work, w, sources[w], files, nbytes, run)
            if "syncthing" in peers:
                lat = ST_LAT_COUNT if w == FOLDERS[0] and run == 1 else 0
                attempt(res, f"Syncthing {w}", bench_syncthing, res, work, w, sources[w], files, nbytes,
                        run, lat)
    if "wdelta" in WORKLOADS:
        import wdelta
        for run in range(1, REPEATS + 1):
            attempt(res, f"W-delta run {run}", wdelta.stage, res, ss, work, src_root, run)
    log("latency")
    for run in range(1, (REPEATS if args.baseline_bin else 1) + 1):
        for b in in_turn(run):
            b.latency(res, run)
    if BIG:
        files, nbytes = sizes["big"]
        log(f"big folder: {files} files")
        ss.big(res, sources["big"], files, nbytes)

    busy1 = machine_busy()
    own1 = os.times()
    elapsed = time.perf_counter() - started
    # What else ran on the machine meanwhile: all busy CPU time less our processes' (every
    # process this run started has been waited for, so os.times counts it).
    ours = (own1.children_user + own1.children_system + own1.user + own1.system
            - own0.children_user - own0.children_system - own0.user - own0.system)
    span = time.perf_counter() - measured_from
    others = max(0.0, (busy1[0] - busy0[0]) / CLK - ours)
    runs = "one run each" if REPEATS == PEER_REPEATS == 1 else \
        f"medians of {REPEATS} syncstore and {PEER_REPEATS} peer runs"
    meta = (f"{time.strftime('%Y-%m-%d')}, {runs}; {os.cpu_count()} cores, loopback only, "
            f"{versions()}. The whole benchmark took {elapsed:.0f} s; other processes used "
            f"{100 * others / (span * os.cpu_count()):.0f}% of the machine meanwhile.")
    text = table(res, meta)
    if args.baseline_bin:
        text += "\n\n" + "\n".join(compare_table(res, args.baseline_name, args.new_name))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    with open(os.path.join(args.data, "results.json"), "w") as f:
        json.dump({"rows": res.rows, "extra": res.extra, "elapsed": elapsed, "ours_cpu": ours}, f, indent=1)


if __name__ == "__main__":
    main()
