"""Stage W-delta of the benchmark: what an edit to a large file costs on the wire, in time and
on the server's disk, against rsync on the same edits in the same run.

One server, two watching clients (A, where the edits are made, and B) and an rsync daemon, all
on loopback. Every connection goes through a counting proxy (`countproxy.py`) with one
listening port per leg: `a` (client A <-> server: the client -> server leg), `b` (client B <->
server: the server -> other client leg) and `rsync` (rsync client <-> daemon), so both tools'
bytes are measured the same way, outside the programs (TCP payload, both directions). They are
cross-checked against the programs' own counters where these exist: the server's
`syncstore_content_received_bytes_total` / `_content_sent_bytes_total` and the clients'
`syncstore_client_content_sent_bytes_total` / `_content_received_bytes_total` /
`_chunks_reused_total` (printed as n/a by a build that does not export them).

Sequence (file size DELTA_SIZE, 1 GiB by default; offsets scale with it):
  initial  A holds the file (random, seeded) when it starts; until B has it. rsync sends the
           same file into its empty daemon folder.
  E1       overwrite 1 MiB at size/2 + 12,345 (512 MiB + 12,345), in place
  E2       insert 1 byte at the same offset (a new file renamed over the old, as editors save)
  E3       append 1 MiB, in place
  E4       1,000 random 4 KiB-aligned 4 KiB page writes (seed 42), in place
  E5       insert 100,003 bytes at size x 300/1024 + 7 (300 MiB + 7), renamed over the old
  dedup    ten copies of one new DEDUP_SIZE file (100 MiB) under different names, in A
Each edit is applied first to rsync's copy (its hash is what B must end up with), then to A's
file. Measured per edit: the bytes of each leg from the save until B's copy is the new file
(the first change of B's file after the save whose SHA-256 is the expected one) and both
clients and the server are quiet again; the time from the end of the save until then; CPU
seconds of client A + client B + server; the server's disk growth (allocated blocks of its data
folder) and what it wrote to disk (/proc/PID/io write_bytes). Then `rsync -a -I --stats` (default
delta algorithm; -I so that an edit within the second of the last transfer is not skipped) of
rsync's copy to its daemon: its bytes through the proxy and from --stats,
its wall time, CPU of the rsync client and daemon. REPEATS runs of the whole sequence, each on
new folders and a new server; the table gives medians.
"""

import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

import bench
from bench import (MIB, SCALE, START_TIMEOUT, STEP_TIMEOUT, Proc, descendants, die_with_parent,
                   free_port, listening, log, reclaim, run_measured, wait_for)

GIB = 1 << 30
PAGE = 4096
FILE = "image.bin"
DEDUP_COPIES = 10
# Quiet means no byte on any syncstore leg for this long after B has the new file.
QUIET_S = 0.5
# How often B's file is looked at (a stat) while waiting for an edit to arrive.
POLL_S = 0.005

SERVER_COUNTERS = {
    "srv_received": "syncstore_content_received_bytes_total",
    "srv_sent": "syncstore_content_sent_bytes_total",
    "srv_chunks_stored": "syncstore_chunks_stored_total",
    "srv_chunks_dedup": "syncstore_chunks_deduplicated_total",
    "srv_base_reused": "syncstore_base_reused_bytes_total",
}
CLIENT_A_COUNTERS = {"a_sent": "syncstore_client_content_sent_bytes_total"}
CLIENT_B_COUNTERS = {
    "b_received": "syncstore_client_content_received_bytes_total",
    "b_chunks_reused": "syncstore_client_chunks_reused_total",
    "b_reused_bytes": "syncstore_client_reused_bytes_total",
}


def parse_size(text):
    """'64M', '1G', '100MiB', '12345' -> bytes (binary units); '' -> None."""
    text = text.strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(i?B)?", text, re.I)
    if not m:
        raise SystemExit(f"not a size: {text!r} (e.g. 64M, 1G, 100MiB)")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


DELTA_SIZE = parse_size(os.environ.get("DELTA_SIZE", "")) or max(GIB // SCALE, 64 * MIB)
DEDUP_SIZE = parse_size(os.environ.get("DEDUP_SIZE", "")) or max(100 * MIB // SCALE, MIB)
if DELTA_SIZE < 16 * MIB:
    raise SystemExit("DELTA_SIZE must be at least 16M (the edits are 1 MiB and more)")
# Where E1 and E2 edit, and E5 inserts: 512 MiB + 12,345 and 300 MiB + 7 of a 1 GiB file.
OFF_MIDDLE = DELTA_SIZE // 2 + 12_345
OFF_E5 = DELTA_SIZE * 300 // 1024 + 7


# ---------------------------------------------------------------- the edits


def copy_bytes(src, dst, n, block=8 * MIB):
    while n:
        data = src.read(min(block, n))
        if not data:
            raise RuntimeError("the file ended early")
        dst.write(data)
        n -= len(data)


def insert(offset, data):
    """A rewrite that inserts `data` at `offset`: streams src to dst with it in between."""
    def rewrite(src, dst, size):
        copy_bytes(src, dst, offset)
        dst.write(data)
        copy_bytes(src, dst, size - offset)
    return rewrite


def e1(f, size):
    f.seek(OFF_MIDDLE)
    f.write(random.Random(41).randbytes(MIB))


def e3(f, size):
    f.seek(size)
    f.write(random.Random(43).randbytes(MIB))


def e4(f, size):
    rng = random.Random(42)
    for _ in range(1000):
        f.seek(rng.randrange(size // PAGE) * PAGE)
        f.write(rng.randbytes(PAGE))


def at(offset):
    return f"{offset // MIB} MiB + {offset % MIB:,}"


# name, what it is, how it is saved (in place, or a new file renamed over the old), the edit
EDITS = [
    ("E1", f"overwrite 1 MiB at {at(OFF_MIDDLE)}", "in place", e1),
    ("E2", "insert 1 byte at the same offset", "rename", insert(OFF_MIDDLE, b"\x5a")),
    ("E3", "append 1 MiB", "in place", e3),
    ("E4", "1,000 random 4 KiB page writes (seed 42)", "in place", e4),
    ("E5", f"insert 100,003 bytes at {at(OFF_E5)}", "rename",
     insert(OFF_E5, random.Random(45).randbytes(100_003))),
]


def apply_edit(kind, edit, path, scratch):
    """Applies an edit to the file at `path`; a rewrite is written in `scratch` (same file
    system) and renamed over it. Returns the new size."""
    size = os.path.getsize(path)
    if kind == "in place":
        with open(path, "r+b") as f:
            edit(f, size)
    else:
        tmp = os.path.join(scratch, "rewrite.tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            edit(src, dst, size)
        os.replace(tmp, path)
    return os.path.getsize(path)


# ---------------------------------------------------------------- measuring


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            data = f.read(8 * MIB)
            if not data:
                return h.hexdigest()
            h.update(data)


def generate(path, size, seed):
    """Random (seeded) content written once, streaming; its SHA-256 is kept beside it."""
    marker = f"{path}.sha256"
    if os.path.exists(marker) and os.path.exists(path) and os.path.getsize(path) == size:
        return open(marker).read().strip()
    t0 = time.perf_counter()
    rng, h, left = random.Random(seed), hashlib.sha256(), size
    with open(f"{path}.partial", "wb") as f:
        while left:
            data = rng.randbytes(min(16 * MIB, left))
            f.write(data)
            h.update(data)
            left -= len(data)
    os.replace(f"{path}.partial", path)
    with open(marker, "w") as f:
        f.write(h.hexdigest())
    log(f"generated {os.path.basename(path)}: {size} bytes in {time.perf_counter() - t0:.1f}s")
    return h.hexdigest()


def disk_usage(path):
    """Allocated bytes of everything under path."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def disk_writes(pid):
    """Bytes the process caused to be written to storage so far (/proc/PID/io)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_with_children(pid):
    """User + system CPU seconds of a process and of the children it has reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / bench.CLK
    except OSError:
        return 0.0


def metrics(port):
    """The counters of a Prometheus endpoint, by name (unlabelled samples only)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            if "{" not in name:
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
    return out


class CountProxy:
    """countproxy.py, started with one leg per name -> (host, port)."""

    def __init__(self, legs, logfile):
        args = [sys.executable, os.path.join(os.path.dirname(__file__), "countproxy.py")]
        for name, (host, port) in legs.items():
            args += ["--leg", f"{name}={host}:{port}"]
        self.log = open(logfile, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, preexec_fn=die_with_parent)
        self.port = {}
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the counting proxy exited; see {logfile}")
            if line.strip() == "ready":
                return
            _, name, port = line.split()
            self.port[name] = int(port)
        raise RuntimeError("the counting proxy did not start")

    def stats(self):
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def cpu(self):
        return bench.proc_cpu(self.proc.pid)

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def wire(stats, leg):
    return stats[leg]["up"] + stats[leg]["down"]


def file_key(path):
    try:
        st = os.stat(path)
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except FileNotFoundError:
        return None


def wait_arrival(paths, size, digest, before, timeout=STEP_TIMEOUT):
    """Waits until every file in `paths` is the expected content; returns the perf_counter time
    at which the last of them was first seen changed into it. `before` is a path's state (a
    file_key) before the edit, or absent: only a change of it is looked at, and hashed once
    seen with the expected size."""
    end = time.monotonic() + timeout
    state = {p: {"seen": before.get(p), "seen_at": None, "hashed_at": 0.0} for p in paths}
    arrived = {}
    while time.monotonic() < end:
        for p, s in state.items():
            if p in arrived:
                continue
            key = file_key(p)
            now = time.perf_counter()
            if key != s["seen"]:
                s["seen"], s["seen_at"] = key, now
            # A file that did not match is hashed again after a second even if its state did
            # not change: a write within the same timestamp tick leaves it as it was.
            if key is not None and key != before.get(p) and key[1] == size and \
                    s["seen_at"] is not None and (s["hashed_at"] < s["seen_at"] or now - s["hashed_at"] > 1.0):
                s["hashed_at"] = time.perf_counter()
                if sha256(p) == digest:
                    arrived[p] = s["seen_at"]
        if len(arrived) == len(paths):
            return max(arrived.values())
        time.sleep(POLL_S)
    raise RuntimeError(f"timed out after {timeout}s waiting for {sorted(set(paths) - set(arrived))} "
                       "to be the new content")


def quiet(proxy, legs, timeout=30.0):
    """Waits until no byte has crossed `legs` for QUIET_S; returns the proxy's counters."""
    prev = proxy.stats()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(QUIET_S)
        cur = proxy.stats()
        if all(wire(cur, leg) == wire(prev, leg) for leg in legs):
            return cur
        prev = cur
    log(f"  the legs {legs} were still busy after {timeout}s; measuring anyway")
    return prev


# ---------------------------------------------------------------- one run


class Run:
    """One server, two watching clients, an rsync daemon and the proxy, for one pass over the
    edits."""

    def __init__(self, ss, work, run):
        self.d = d = os.path.join(work, f"wdelta-{run}")
        for sub in ("a", "b", "scratch", "ref", "rsync-dst"):
            os.makedirs(os.path.join(d, sub))
        self.a, self.b = os.path.join(d, "a"), os.path.join(d, "b")
        self.scratch, self.ref = os.path.join(d, "scratch"), os.path.join(d, "ref")
        self.server_dir = os.path.join(d, "server")
        self.procs = []
        self.ss = ss
        self.ca = self.cb = None

    def start(self):
        d = self.d
        rport = free_port()
        conf = os.path.join(d, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"address = 127.0.0.1\nport = {rport}\nuse chroot = false\n"
                    f"pid file = {d}/rsyncd.pid\nlog file = {d}/rsyncd.log\nmax connections = 4\n"
                    f"[bench]\n    path = {d}/rsync-dst\n    read only = false\n    list = false\n"
                    f"    uid = 0\n    gid = 0\n")
        self.rsyncd = Proc(["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                           os.path.join(d, "rsyncd.out"))
        self.procs.append(self.rsyncd)
        wait_for(lambda: listening(rport), START_TIMEOUT, "the rsync daemon's port")

        self.metrics_port = {"srv": free_port(), "a": free_port(), "b": free_port()}
        self.srv = self.ss.server(self.server_dir, "--metrics-listen",
                                  f"127.0.0.1:{self.metrics_port['srv']}")
        self.procs.append(self.srv)
        host, port = self.srv.url.removeprefix("http://").rsplit(":", 1)
        self.proxy = CountProxy({"a": (host, int(port)), "b": (host, int(port)),
                                 "rsync": ("127.0.0.1", rport)}, os.path.join(d, "proxy.log"))

    def client(self, name, folder):
        c = self.ss.client(f"http://127.0.0.1:{self.proxy.port[name]}", folder,
                           "--rescan-interval", "1h",
                           "--metrics-listen", f"127.0.0.1:{self.metrics_port[name]}", "watch",
                           measured=False)
        self.procs.append(c)
        return c

    def snapshot(self):
        snap = {"proxy": self.proxy.stats(), "t": time.perf_counter(),
                "cpu": sum(p.cpu() for p in self.syncstore_procs()),
                "disk": disk_usage(self.server_dir), "writes": disk_writes(self.srv.pid)}
        counters = {}
        for who, names in (("srv", SERVER_COUNTERS), ("a", CLIENT_A_COUNTERS), ("b", CLIENT_B_COUNTERS)):
            if who != "srv" and getattr(self, f"c{who}") is None:
                counters.update({k: 0 for k in names})  # not started yet: nothing counted
                continue
            m = metrics(self.metrics_port[who])
            counters.update({k: m.get(v) for k, v in names.items()})
        snap["counters"] = counters
        return snap

    def syncstore_procs(self):
        return [p for p in (self.srv, self.ca, self.cb) if p]

    def measure(self, before, arrived, t_saved, size):
        after_proxy = quiet(self.proxy, ["a", "b"])
        after = self.snapshot()
        after["proxy"] = after_proxy
        row = {"size": size, "time": arrived - t_saved,
               "cpu": after["cpu"] - before["cpu"],
               "disk_growth": after["disk"] - before["disk"],
               "disk_writes": None if after["writes"] is None or before["writes"] is None
               else after["writes"] - before["writes"]}
        for leg in ("a", "b"):
            row[f"wire_{leg}"] = wire(after["proxy"], leg) - wire(before["proxy"], leg)
            row[f"wire_{leg}_up"] = after["proxy"][leg]["up"] - before["proxy"][leg]["up"]
        for k, v in after["counters"].items():
            b = before["counters"].get(k)
            row[k] = None if v is None or b is None else v - b
        return row

    def rsync(self, label):
        """`rsync -a -I --stats` of the reference folder to the daemon, through the proxy."""
        before = self.proxy.stats()
        cpu0 = cpu_with_children(self.rsyncd.pid)
        logfile = os.path.join(self.d, f"rsync-{label}.log")
        # -I: an edit made within the second of the last transfer has the same size and
        # mtime (to the second) as what the daemon holds, and rsync would skip it.
        m = run_measured(["rsync", "-a", "-I", "--stats", f"{self.ref}/",
                          f"rsync://127.0.0.1:{self.proxy.port['rsync']}/bench/"], logfile)
        # The daemon's child for the connection counts once the daemon has reaped it.
        wait_for(lambda: descendants(self.rsyncd.pid) == [self.rsyncd.pid], 10,
                 "the rsync daemon's connection to end", step=0.01)
        after = self.proxy.stats()
        text = open(logfile).read()

        def stat(what):
            found = re.findall(rf"Total bytes {what}: ([\d,]+)", text)
            return int(found[-1].replace(",", "")) if found else None

        return {"rsync_wire": wire(after, "rsync") - wire(before, "rsync"),
                "rsync_sent": stat("sent"), "rsync_received": stat("received"),
                "rsync_time": m["wall"], "rsync_cpu": m["cpu"] + cpu_with_children(self.rsyncd.pid) - cpu0}

    def check_rsync(self, digest):
        got = sha256(os.path.join(self.d, "rsync-dst", FILE))
        if got != digest:
            raise RuntimeError("rsync's copy is not the reference after the edit")

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        if hasattr(self, "proxy"):
            self.proxy.stop()
        for sub in ("a", "b", "scratch", "ref", "rsync-dst", "server"):
            reclaim(os.path.join(self.d, sub))


def run_once(rows, ss, work, run, base, base_hash, dedup_src, dedup_hash):
    """Fills `rows` with one pass's figures, step by step (a failure keeps those measured)."""
    r = Run(ss, work, run)
    try:
        r.start()
        shutil.copyfile(base, os.path.join(r.a, FILE))
        shutil.copyfile(base, os.path.join(r.ref, FILE))
        os.sync()

        # The first sync: B watches an empty folder, then A starts with the file.
        r.cb = r.client("b", r.b)
        wait_for(lambda: "initial sync done" in open(f"{r.b}.log").read(), START_TIMEOUT,
                 "client B's initial sync")
        before = r.snapshot()
        t0 = time.perf_counter()
        r.ca = r.client("a", r.a)
        arrived = wait_arrival([os.path.join(r.b, FILE)], DELTA_SIZE, base_hash, {})
        rows["initial"] = r.measure(before, arrived, t0, DELTA_SIZE)
        rows["initial"].update(r.rsync("initial"))
        r.check_rsync(base_hash)
        log_row("initial", rows["initial"])

        for name, _, kind, edit in EDITS:
            size = apply_edit(kind, edit, os.path.join(r.ref, FILE), r.scratch)
            digest = sha256(os.path.join(r.ref, FILE))
            target = os.path.join(r.a, FILE)
            if kind == "rename":
                prepared = os.path.join(r.scratch, "save.tmp")
                shutil.copyfile(os.path.join(r.ref, FILE), prepared)
            b_file = os.path.join(r.b, FILE)
            b_state = {b_file: file_key(b_file)}
            time.sleep(0.2)  # the preparation's writes are not the edit's
            before = r.snapshot()
            if kind == "in place":
                with open(target, "r+b") as f:
                    edit(f, os.path.getsize(target))
            else:
                os.replace(prepared, target)
            t_saved = time.perf_counter()
            arrived = wait_arrival([b_file], size, digest, b_state)
            rows[name] = r.measure(before, arrived, t_saved, size)
            rows[name].update(r.rsync(name))
            r.check_rsync(digest)
            log_row(name, rows[name])

        # Dedup: ten copies of one new file, each saved by a rename into A.
        os.makedirs(os.path.join(r.scratch, "copies"))
        for i in range(DEDUP_COPIES):
            shutil.copyfile(dedup_src, os.path.join(r.scratch, "copies", f"copy-{i:02d}.bin"))
        os.sync()
        before = r.snapshot()
        os.makedirs(os.path.join(r.a, "copies"))
        for i in range(DEDUP_COPIES):
            os.replace(os.path.join(r.scratch, "copies", f"copy-{i:02d}.bin"),
                       os.path.join(r.a, "copies", f"copy-{i:02d}.bin"))
        t_saved = time.perf_counter()
        arrived = wait_arrival([os.path.join(r.b, "copies", f"copy-{i:02d}.bin")
                                for i in range(DEDUP_COPIES)], DEDUP_SIZE, dedup_hash, {})
        rows["dedup"] = r.measure(before, arrived, t_saved, DEDUP_SIZE)
        log_row("dedup", rows["dedup"])
        log(f"  W-delta: the counting proxy used {r.proxy.cpu():.1f} CPU s over the run")
    finally:
        r.stop()


# ---------------------------------------------------------------- the stage


def human(n):
    if n is None:
        return "n/a"
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            return f"{n / (1 << shift):.2f} {unit}"
    return f"{n:.0f} B"


def cross_check(name, row):
    """Where a program counted more content on a leg than crossed it: one of the two counts
    is wrong. Returns those findings as text."""
    out = []
    for key, leg, who in (("srv_received", "a", "server"), ("a_sent", "a", "client A"),
                          ("srv_sent", "b", "server"), ("b_received", "b", "client B")):
        if row.get(key) is not None and row[key] > row[f"wire_{leg}"]:
            out.append(f"{name}: {who} counted {human(row[key])} of content, but "
                       f"{human(row[f'wire_{leg}'])} crossed its leg")
    return out


def log_row(name, row):
    for finding in cross_check(name, row):
        log(f"  W-delta cross-check failed: {finding}")
    extra = ""
    if "rsync_wire" in row:
        extra = f"; rsync {human(row['rsync_wire'])} in {row['rsync_time']:.2f}s"
    log(f"  W-delta {name}: client -> server {human(row['wire_a'])}, server -> client "
        f"{human(row['wire_b'])}, save -> other client {row['time']:.2f}s, CPU {row['cpu']:.1f}s, "
        f"server disk {human(row['disk_growth'])} (wrote {human(row['disk_writes'])}){extra}")


def stage(res, ss, work, src_root, run):
    """Runs one pass of W-delta and keeps its figures in res.extra['wdelta']."""
    if not shutil.which("rsync"):
        raise RuntimeError("rsync is not installed: W-delta measures it on the same edits")
    os.makedirs(src_root, exist_ok=True)
    base = os.path.join(src_root, f"wdelta-{DELTA_SIZE}.bin")
    base_hash = generate(base, DELTA_SIZE, 5)
    dedup = os.path.join(src_root, f"wdelta-dedup-{DEDUP_SIZE}.bin")
    dedup_hash = generate(dedup, DEDUP_SIZE, 6)
    log(f"W-delta run {run}: a {human(DELTA_SIZE)} file, edits E1-E5, then {DEDUP_COPIES} copies "
        f"of {human(DEDUP_SIZE)}")
    rows = {}
    res.extra.setdefault("wdelta", []).append(rows)
    run_once(rows, ss, work, run, base, base_hash, dedup, dedup_hash)


def disk_needed():
    """Bytes the stage needs at most: the file in A and B, rsync's source and destination, the
    server's copy, a temp file on three of them while a new version is written, a prepared
    save; then the copies in A and B and the server's one."""
    return 8 * (DELTA_SIZE + 2 * MIB) + (2 * DEDUP_COPIES + 1) * DEDUP_SIZE


def medians(runs):
    """Per step and figure, the median over the runs (None where no run has it)."""
    out = {}
    for step in ["initial"] + [e[0] for e in EDITS] + ["dedup"]:
        rows = [r[step] for r in runs if step in r]
        if not rows:
            continue
        out[step] = {"runs": len(rows)}
        for k in rows[0]:
            if k == "runs":
                continue
            vals = [r[k] for r in rows if r.get(k) is not None]
            out[step][k] = statistics.median(vals) if vals else None
    return out


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "n/a"


def report(res):
    """The W-delta table and its targets, as markdown lines ([] when the stage did not run)."""
    runs = res.extra.get("wdelta")
    if not runs:
        return []
    m = medians(runs)
    n = len(runs)
    out = [f"W-delta: one {human(DELTA_SIZE)} file (incompressible) on client A, watched by "
           f"client B through the server; each edit saved in A until B has it, and the same edit "
           f"sent by `rsync -a -I` (delta) to its daemon"
           + ("" if n == 1 else f"; medians of {n} runs") + ". Bytes are TCP payload through a "
           "counting proxy, both directions; the programs' own counts are content bytes.", "",
           "| edit | leg | bytes on the wire | counted by server / client | rsync bytes "
           "(sent + received) | ÷ rsync | file ÷ wire | save → other client s (rsync s) | "
           "CPU s (rsync) | server disk growth (written) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    labels = {"initial": "first sync of the whole file"}
    labels.update({name: f"{name} {what}" for name, what, _, _ in EDITS})
    for step, r in m.items():  # a run that failed before this step has no figure for it
        if step in labels and r["runs"] != n:
            labels[step] += f" ({r['runs']} of {n} runs)"
    for step in ["initial"] + [e[0] for e in EDITS]:
        r = m.get(step)
        if not r:
            continue
        for leg, title, counts in (
                ("a", "client → server", (r["srv_received"], r["a_sent"], None)),
                ("b", "server → other client", (r["srv_sent"], r["b_received"], r["b_chunks_reused"]))):
            count = f"{human(counts[0])} / {human(counts[1])}"
            if counts[2] is not None:
                count += f" ({counts[2]:.0f} chunks reused)"
            first = leg == "a"
            out.append(
                f"| {labels[step] if first else ''} | {title} | {human(r[f'wire_{leg}'])} | {count} | "
                f"{human(r['rsync_wire'])} | {ratio(r[f'wire_{leg}'], r['rsync_wire'])} | "
                f"{ratio(r['size'], r[f'wire_{leg}'])} | "
                + (f"{r['time']:.2f} ({r['rsync_time']:.2f}) | {r['cpu']:.1f} ({r['rsync_cpu']:.1f}) | "
                   f"{human(r['disk_growth'])} ({human(r['disk_writes'])}) |" if first else "| | |"))
    d = m.get("dedup")
    if d:
        out.append(f"| {DEDUP_COPIES} copies of one {human(DEDUP_SIZE)} file | client → server | "
                   f"{human(d['wire_a'])} | {human(d['srv_received'])} / {human(d['a_sent'])} | | | | "
                   f"{d['time']:.2f} | {d['cpu']:.1f} | {human(d['disk_growth'])} "
                   f"({human(d['disk_writes'])}) |")
        out.append(f"| | server → other client | {human(d['wire_b'])} | {human(d['srv_sent'])} / "
                   f"{human(d['b_received'])} | | | | | | |")
    stats = [f"{s}: {human(m[s]['rsync_sent'])} + {human(m[s]['rsync_received'])}"
             for s in [e[0] for e in EDITS] if s in m]
    out.append("")
    out.append("rsync's own --stats (sent + received): " + "; ".join(stats) + ". Times run from the "
               "end of the save (close, or the rename over the old file) until B's file is the new "
               "content; CPU is client A + client B + server (rsync: client + daemon); disk growth "
               "is the server's data folder, allocated blocks (written: the server's write_bytes).")
    findings = [f for run in runs for s, r in run.items() for f in cross_check(s, r)]
    counted = any(r.get("srv_received") is not None for r in m.values())
    if findings:
        out.append("")
        out.append("Cross-check failed (a program counted more content than crossed the wire): "
                   + "; ".join(findings) + ".")
    elif counted:
        out.append("")
        out.append("Cross-check: on every leg of every run, the content the programs counted is "
                   "at most what crossed the wire.")
    chunks = [f"{s}: {r['srv_chunks_stored']:.0f} / {r['srv_chunks_dedup']:.0f} / "
              f"{human(r['srv_base_reused'])}"
              for s, r in m.items() if r.get("srv_chunks_stored") is not None
              and r.get("srv_chunks_dedup") is not None and r.get("srv_base_reused") is not None]
    if chunks:
        out.append("")
        out.append("The server's chunks stored / chunks deduplicated / bytes taken from the base: "
                   + "; ".join(chunks) + ".")
    out.append("")
    out += targets(m)
    return out


def targets(m):
    rows = ["| W-delta target | measured | goal | met |", "|---|---|---|---|"]

    def row(what, value, goal, ok):
        rows.append(f"| {what} | {value} | {goal} | {'yes' if ok else '**no**'} |")

    for name, _, _, _ in EDITS:
        r = m.get(name)
        if not r:
            continue
        limit = 1.0 if name == "E4" else 1.1
        for leg, title in (("a", "client → server"), ("b", "server → other client")):
            w, rs = r[f"wire_{leg}"], r["rsync_wire"]
            if name == "E4":
                row(f"{name} {title}, bytes vs rsync", f"{w / rs:.2f}×", "≤ 1.0×", w <= rs)
            else:
                row(f"{name} {title}, bytes vs rsync; file ÷ bytes",
                    f"{w / rs:.2f}×; {r['size'] / w:,.0f}×", f"≤ {limit}×; ≥ 100×",
                    w <= limit * rs and r["size"] >= 100 * w)
        row(f"{name} save → other client vs rsync", f"{r['time']:.2f} s vs {r['rsync_time']:.2f} s",
            "≤ rsync", r["time"] <= r["rsync_time"])
    r = m.get("E1")
    if r:
        row("E1 server disk growth (what it wrote)", f"{human(r['disk_growth'])} ({human(r['disk_writes'])})",
            "≤ 1.2 MiB", r["disk_growth"] <= 1.2 * MIB)
    d = m.get("dedup")
    if d:
        goal = DEDUP_SIZE * 1.01
        row(f"{DEDUP_COPIES} copies of one {human(DEDUP_SIZE)} file, server disk growth",
            human(d["disk_growth"]), f"≤ {human(goal)}", d["disk_growth"] <= goal)
    return rows

