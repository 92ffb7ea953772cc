#!/usr/bin/env python3
"""The web dashboard's speed targets, against a release build, in one run.

    python3 bench/web.py                      # builds target/release first if it is stale
    BENCH_SCALE=10 REPEATS=1 python3 bench/web.py          # a quick try
    python3 bench/web.py --bin target/release --out /tmp/web.md   # no build check

Stages, each on a server of its own (`sync-server --listen 127.0.0.1:0 --web-listen
127.0.0.1:0`, no tokens: GET /login gives a session cookie at once), all traffic on
127.0.0.1:

  listing  a folder `many` of 100,000 files of a few bytes (and a folder `few` of 10),
           written locally and uploaded by one `sync-client sync`. Then GET
           /files?dir=many (its first page, 200 rows): median of PAGE_REPEATS (5) after one
           warm-up, time to the response's headers and to its last byte, server CPU per
           page, and the HTML's size; the sizes of /static/app.js and /static/style.css
           added for a full first load. For comparison: the same for /files (the top,
           two rows), /files?dir=few, the last page of `many` (by its Next link's cursor),
           `many` sorted by size (its whole level read), and `sync-client ls` (the
           gRPC listing of every file, in a process of its own).
  upload   one 1 GiB file of random bytes: POST /upload (multipart/form-data: csrf, dir,
           file; the body streamed from the file in 1 MiB pieces) against `sync-client
           sync` of a folder holding only that file, each into a fresh server, REPEATS (3)
           times, alternating which goes first; MiB/s of each and web / CLI (medians).
           Run 1's web upload is downloaded again through GET /download and compared.
  live     GET /events?after=HEAD (server-sent events; HEAD from the files page's
           data-live attribute) held open with the session cookie, then LAT_COUNT (20)
           4 KiB files uploaded one by one: through POST /upload (its commit is when the
           303 arrives) and through `sync-client sync` (its commit is when the process
           exits; the event can come before that). Per upload: commit -> the `change`
           event for its path, and start of the write -> the event.

The machine may be shared (other builds): before each stage the script waits up to
QUIET_WAIT seconds (60) for it to calm down (bench.quiet_gate), every figure is a median,
and the table says how busy the rest of the machine was meanwhile.

Environment: BENCH_DATA (/tmp/syncstore-bench/web), BENCH_SCALE (divides the file count
and the big file's size), REPEATS (3), PAGE_REPEATS (5), LAT_COUNT (20), QUIET_WAIT,
QUIET_PCT, STAGES ("listing upload live"), KEEP=1 (keep BENCH_DATA), CARGO_TARGET_DIR.
"""

import argparse
import html
import http.client
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("QUIET_WAIT", "60")
import bench  # noqa: E402  (the shared helpers: processes, measuring, the quiet gate)
from bench import MIB, Proc, log, wait_for  # noqa: E402

SCALE = bench.env_int("BENCH_SCALE", 1)
REPEATS = bench.env_int("REPEATS", 3)
PAGE_REPEATS = bench.env_int("PAGE_REPEATS", 5)
LAT_COUNT = bench.env_int("LAT_COUNT", 20)
STAGES = os.environ.get("STAGES", "listing upload live").split()
KEEP = os.environ.get("KEEP") == "1"

MANY = max(100_000 // SCALE, 10)
FEW = 10
BIG_SIZE = max((1 << 30) // SCALE, MIB)
PIECE = MIB  # what the upload body is sent in
HTTP_TIMEOUT = 120  # any one read or write on a dashboard connection
BIG_UPLOAD_TIMEOUT = 900
EVENT_TIMEOUT = 10.0

# The goals beside the figures.
GOAL_PAGE_S = 0.300
GOAL_PAGE_BYTES = 150_000
GOAL_UPLOAD_RATIO = 0.7
GOAL_LIVE_S = 0.100

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the two binaries are built from (tests and benches are not).
SOURCES = ["Cargo.toml", "Cargo.lock", "build.rs", "src", "proto",
           "sync-server/Cargo.toml", "sync-server/build.rs", "sync-server/src", "sync-server/templates",
           "sync-client/Cargo.toml", "sync-client/build.rs", "sync-client/src"]


# ---------------------------------------------------------------- build


def newest_source():
    newest = 0.0
    for rel in SOURCES:
        path = os.path.join(REPO, rel)
        if os.path.isfile(path):
            newest = max(newest, os.path.getmtime(path))
        for dirpath, _, names in os.walk(path):
            for n in names:
                newest = max(newest, os.path.getmtime(os.path.join(dirpath, n)))
    return newest


def release_bin(explicit):
    """The folder of the release binaries; builds them (as run.sh does) when they are missing
    or older than a source, unless --bin names a folder to use as it is."""
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    bin_dir = os.path.join(target, "release")
    bins = [os.path.join(bin_dir, n) for n in ("sync-server", "sync-client")]
    newest = newest_source()
    if all(os.access(b, os.X_OK) and os.path.getmtime(b) >= newest for b in bins):
        return bin_dir
    log("building syncstore (release): the binaries are missing or older than the sources")
    try:
        subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path",
                        os.path.join(REPO, "Cargo.toml"), "-p", "sync-server", "-p", "sync-client"],
                       check=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"the release build failed ({e}); fix it, or pass --bin FOLDER")
    return bin_dir


# ---------------------------------------------------------------- servers and the dashboard


class Server:
    """A sync-server with its dashboard, on free loopback ports; stopped by its PID only."""

    def __init__(self, bin_dir, data):
        out = f"{data}.out"
        self.data = data
        self.proc = Proc([os.path.join(bin_dir, "sync-server"), "--listen", "127.0.0.1:0", "--data", data,
                          "--web-listen", "127.0.0.1:0"], f"{data}.log", stdout=open(out, "wb"))

        def addresses():
            if not self.proc.alive():
                raise RuntimeError(f"sync-server exited; see {data}.log")
            text = open(out).read()
            grpc = re.search(r"^listening on (\S+)$", text, re.M)
            web = re.search(r"^web dashboard on http://([^/\s]+)/?$", text, re.M)
            return grpc and web and (grpc.group(1), web.group(1))

        try:
            grpc, web = wait_for(addresses, bench.START_TIMEOUT, "the server's listening lines")
        except BaseException:
            self.proc.stop()
            raise
        self.url = f"http://{grpc}"
        self.web_host, port = web.rsplit(":", 1)
        self.web_port = int(port)

    def cpu(self):
        return self.proc.cpu()

    def stop(self):
        self.proc.stop()


class Dashboard:
    """One browser session: a keep-alive connection, the session cookie, the form token."""

    def __init__(self, server):
        self.server = server
        self.conn = self.connect()
        r = self.request("GET", "/login")
        cookie = r["headers"].get("set-cookie", "")
        m = re.match(r"(syncstore_session=[0-9a-f]+)", cookie)
        if r["status"] not in (302, 303, 307) or not m:
            raise RuntimeError(f"GET /login answered {r['status']} without a session cookie ({cookie!r})")
        self.cookie = m.group(1)
        page = self.get("/files")["body"].decode()
        self.csrf = attribute(page, r'<input type="hidden" name="csrf" value="([^"]*)"', "the form token")

    def connect(self, timeout=HTTP_TIMEOUT):
        return http.client.HTTPConnection(self.server.web_host, self.server.web_port, timeout=timeout)

    def request(self, method, path, body=None, headers=None):
        """One request on the keep-alive connection: status, headers, body and the times to
        the response's headers (ttfb) and to its last byte (total)."""
        h = dict(headers or {})
        if getattr(self, "cookie", None):
            h["Cookie"] = self.cookie
        t0 = time.perf_counter()
        try:
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            # A dropped keep-alive connection: one fresh try.
            self.conn.close()
            self.conn = self.connect()
            t0 = time.perf_counter()
            self.conn.request(method, path, body=body, headers=h)
            resp = self.conn.getresponse()
        ttfb = time.perf_counter() - t0
        data = resp.read()
        total = time.perf_counter() - t0
        return {"status": resp.status, "headers": {k.lower(): v for k, v in resp.getheaders()},
                "body": data, "ttfb": ttfb, "total": total}

    def get(self, path):
        r = self.request("GET", path)
        if r["status"] != 200:
            raise RuntimeError(f"GET {path} answered {r['status']}: {r['body'][:300]!r}")
        return r

    def upload(self, folder, name, source=None, data=None, timeout=HTTP_TIMEOUT):
        """POST /upload of one file (from `source`, streamed in pieces, or the bytes `data`) as
        a browser's form would send it; returns the seconds until the 303 arrived."""
        boundary = "syncstore-bench-" + os.urandom(12).hex()

        def part(field, extra=""):
            return (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"{extra}\r\n').encode()

        head = (part("csrf") + b"\r\n" + self.csrf.encode() + b"\r\n"
                + part("dir") + b"\r\n" + folder.encode() + b"\r\n"
                + part("file", f'; filename="{name}"') + b"Content-Type: application/octet-stream\r\n\r\n")
        tail = f"\r\n--{boundary}--\r\n".encode()
        size = len(data) if data is not None else os.path.getsize(source)
        conn = self.conn if data is not None else self.connect(timeout)
        t0 = time.perf_counter()
        try:
            conn.putrequest("POST", "/upload", skip_accept_encoding=True)
            for k, v in (("Content-Type", f"multipart/form-data; boundary={boundary}"),
                         ("Content-Length", str(len(head) + size + len(tail))), ("Cookie", self.cookie)):
                conn.putheader(k, v)
            conn.endheaders()
            conn.send(head)
            if data is not None:
                conn.send(data)
            else:
                with open(source, "rb") as f:
                    while piece := f.read(PIECE):
                        conn.send(piece)
            conn.send(tail)
            resp = conn.getresponse()
            body = resp.read()
            elapsed = time.perf_counter() - t0
        finally:
            if conn is not self.conn:
                conn.close()
        if resp.status != 303:
            raise RuntimeError(f"POST /upload of {name} answered {resp.status}: {body[:300]!r}")
        return elapsed

    def download_matches(self, path, source):
        """GET /download?path=PATH compared with `source` piece by piece; returns the seconds."""
        conn = self.connect()
        try:
            t0 = time.perf_counter()
            conn.request("GET", f"/download?path={path}", headers={"Cookie": self.cookie})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"GET /download?path={path} answered {resp.status}")
            with open(source, "rb") as f:
                while piece := resp.read(PIECE):
                    if f.read(len(piece)) != piece:
                        raise RuntimeError(f"{path}: the download differs from what was uploaded")
                if f.read(1):
                    raise RuntimeError(f"{path}: the download is shorter than what was uploaded")
            return time.perf_counter() - t0
        finally:
            conn.close()

    def close(self):
        self.conn.close()


def attribute(page, pattern, what):
    m = re.search(pattern, page)
    if not m:
        raise RuntimeError(f"the files page has no {what}")
    return html.unescape(m.group(1))


class Events:
    """GET /events?after=HEAD held open; a thread notes when each `change` event arrives."""

    def __init__(self, dash, live):
        self.conn = dash.connect(timeout=60)  # the feed sends a keep-alive every 15 s
        self.conn.request("GET", live, headers={"Cookie": dash.cookie, "Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise RuntimeError(f"GET {live} answered {self.resp.status}")
        self.arrived = {}  # path -> (perf_counter when its first change event arrived, event)
        self.cond = threading.Condition()
        self.error = None
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        event, data = None, []
        try:
            while line := self.resp.readline():
                line = line.rstrip(b"\r\n").decode()
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif not line:
                    if event == "change" and data:
                        now = time.perf_counter()
                        change = json.loads("\n".join(data))
                        with self.cond:
                            self.arrived.setdefault(change["path"], (now, change))
                            self.cond.notify_all()
                    event, data = None, []
        except (OSError, ValueError, http.client.HTTPException) as e:
            self.error = e
        with self.cond:
            self.cond.notify_all()

    def wait(self, path, timeout=EVENT_TIMEOUT):
        """When the change event for `path` arrived, or None after `timeout` seconds."""
        end = time.monotonic() + timeout
        with self.cond:
            while path not in self.arrived:
                left = end - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    return None
                self.cond.wait(left)
            return self.arrived[path][0]

    def close(self):
        """Ends the feed: the socket is shut down under the reading thread, which then ends."""
        try:
            if self.conn.sock:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(5)
        self.conn.close()


# ---------------------------------------------------------------- measuring


class Noise:
    """How busy the rest of the machine was over a stretch: all busy CPU less ours (this
    process, the children it waited for, and the live processes named)."""

    def __init__(self, *procs):
        self.procs = procs
        self.busy0, self.own0 = bench.machine_busy(), os.times()
        self.cpu0 = sum(p.cpu() for p in procs)
        self.t0 = time.perf_counter()

    def others_pct(self):
        busy1, own1 = bench.machine_busy(), os.times()
        ours = (own1.user + own1.system + own1.children_user + own1.children_system
                - self.own0.user - self.own0.system - self.own0.children_user - self.own0.children_system)
        ours += sum(p.cpu() for p in self.procs) - self.cpu0
        span = time.perf_counter() - self.t0
        others = max(0.0, (busy1[0] - self.busy0[0]) / bench.CLK - ours)
        return 100 * others / (span * os.cpu_count())


def client(bin_dir, url, folder, *command, logfile, timeout=bench.STEP_TIMEOUT):
    return bench.run_measured([os.path.join(bin_dir, "sync-client"), "--server", url, "--dir", folder,
                               *command], logfile, timeout=timeout)


def write_small_tree(root):
    """`many` (MANY files) and `few` (FEW files), a few bytes each."""
    t0 = time.perf_counter()
    for folder, count in (("many", MANY), ("few", FEW)):
        d = os.path.join(root, folder)
        os.makedirs(d)
        for i in range(count):
            with open(os.path.join(d, f"f{i:06d}.txt"), "w") as f:
                f.write(f"{folder} {i}\n")
    log(f"wrote {MANY:,} + {FEW} small files in {time.perf_counter() - t0:.1f}s")


def write_big_file(path, size, seed=7):
    rng = random.Random(seed)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(16 * MIB, left)
            f.write(rng.randbytes(n))
            left -= n
    log(f"wrote a {size / MIB:.0f} MiB file in {time.perf_counter() - t0:.1f}s")


def page_times(dash, path, server, repeats):
    """GET `path`: one warm-up, then `repeats` timed; the medians and the body."""
    first = dash.get(path)
    cpu0 = server.cpu()
    runs = [dash.get(path) for _ in range(repeats)]
    cpu = (server.cpu() - cpu0) / repeats
    return {"path": path, "bytes": len(runs[-1]["body"]), "body": runs[-1]["body"],
            "total": statistics.median(r["total"] for r in runs),
            "ttfb": statistics.median(r["ttfb"] for r in runs),
            "totals": [r["total"] for r in runs], "warmup": first["total"], "server_cpu": cpu,
            "encoding": runs[-1]["headers"].get("content-encoding", "none")}


# ---------------------------------------------------------------- stages


def stage_listing(res, bin_dir, work):
    d = os.path.join(work, "listing")
    os.makedirs(d)
    tree = os.path.join(d, "tree")
    write_small_tree(tree)
    server = Server(bin_dir, os.path.join(d, "server"))
    try:
        m = client(bin_dir, server.url, tree, "sync", logfile=os.path.join(d, "initial.log"),
                   timeout=BIG_UPLOAD_TIMEOUT)
        res["initial_sync"] = m["wall"]
        log(f"  uploaded {MANY + FEW:,} files with one `sync-client sync` in {m['wall']:.1f}s")
        bench.quiet_gate()
        dash = Dashboard(server)
        noise = Noise(server)
        pages = {}
        # The last page by name starts after the cursor its Next link carries: the path of
        # the row before it.
        last = f"/files?dir=many&after=many/f{max(MANY - 201, 0):06d}.txt&from={max(MANY - 199, 1)}"
        for key, path in (("many", "/files?dir=many"), ("top", "/files"), ("few", "/files?dir=few"),
                          ("last", last), ("size", "/files?dir=many&sort=size")):
            pages[key] = page_times(dash, path, server, PAGE_REPEATS)
            p = pages[key]
            log(f"  GET {path}: median {p['total'] * 1e3:.1f} ms (headers after {p['ttfb'] * 1e3:.1f} ms), "
                f"{p['bytes']:,} bytes, server CPU {p['server_cpu'] * 1e3:.0f} ms a page; "
                f"runs {', '.join(f'{t * 1e3:.0f}' for t in p['totals'])} ms")
        rows = pages["many"]["body"].decode().count("<tr class=")
        if rows != min(200, MANY):
            raise RuntimeError(f"the first page of `many` shows {rows} rows, not {min(200, MANY)}")
        res["rows"] = rows
        res["assets"] = {a: len(dash.get(a)["body"]) for a in ("/static/app.js", "/static/style.css")}
        ls = [client(bin_dir, server.url, os.path.join(d, "ls-folder"), "ls",
                     logfile=os.path.join(d, "ls.log"))["wall"] for _ in range(3)]
        res["ls"] = statistics.median(ls)
        res["listing_noise"] = noise.others_pct()
        for p in pages.values():
            del p["body"]
        res["pages"] = pages
        dash.close()
    finally:
        server.stop()


def stage_upload(res, bin_dir, work, src_dir):
    big = os.path.join(src_dir, "big.bin")
    if not os.path.exists(big):
        write_big_file(big, BIG_SIZE)
    size = os.path.getsize(big)
    bench.quiet_gate()
    runs = {"web": [], "cli": []}
    extra = {"web_cpu": [], "cli_cpu": []}

    def web(run):
        d = os.path.join(work, f"upload-web-{run}")
        os.makedirs(d)
        server = Server(bin_dir, os.path.join(d, "server"))
        try:
            dash = Dashboard(server)
            c0 = server.cpu()
            wall = dash.upload("", "big.bin", source=big, timeout=BIG_UPLOAD_TIMEOUT)
            extra["web_cpu"].append(server.cpu() - c0)
            runs["web"].append(wall)
            log(f"  run {run} POST /upload: {wall:.2f}s, {size / MIB / wall:.0f} MiB/s, "
                f"server CPU {extra['web_cpu'][-1]:.1f}s")
            if run == 1:
                t = dash.download_matches("big.bin", big)
                extra["download"] = t
                log(f"  GET /download of it: {t:.2f}s, {size / MIB / t:.0f} MiB/s, same bytes")
            dash.close()
        finally:
            server.stop()
            bench.reclaim(d)

    def cli(run):
        d = os.path.join(work, f"upload-cli-{run}")
        folder = os.path.join(d, "folder")
        os.makedirs(folder)
        os.link(big, os.path.join(folder, "big.bin"))
        server = Server(bin_dir, os.path.join(d, "server"))
        try:
            c0 = server.cpu()
            m = client(bin_dir, server.url, folder, "sync", logfile=os.path.join(d, "client.log"),
                       timeout=BIG_UPLOAD_TIMEOUT)
            extra["cli_cpu"].append(server.cpu() - c0 + m["cpu"])
            runs["cli"].append(m["wall"])
            log(f"  run {run} sync-client sync: {m['wall']:.2f}s, {size / MIB / m['wall']:.0f} MiB/s, "
                f"client + server CPU {extra['cli_cpu'][-1]:.1f}s")
        finally:
            server.stop()
            bench.reclaim(os.path.join(d, "server"))

    noise = Noise()
    for run in range(1, REPEATS + 1):
        for step in ((web, cli) if run % 2 else (cli, web)):
            step(run)
    res["upload"] = {"size": size, "runs": runs, "noise": noise.others_pct(), **extra}


def stage_live(res, bin_dir, work):
    d = os.path.join(work, "live")
    os.makedirs(d)
    folder = os.path.join(d, "folder")
    os.makedirs(os.path.join(folder, "cli"))
    server = Server(bin_dir, os.path.join(d, "server"))
    events = None
    rng = random.Random(11)
    try:
        # The client's state and a first web upload, before anything is timed.
        client(bin_dir, server.url, folder, "sync", logfile=os.path.join(d, "client.log"))
        dash = Dashboard(server)
        dash.upload("web", "warm-up.bin", data=rng.randbytes(4096))
        page = dash.get("/files")["body"].decode()
        live = attribute(page, r'data-live="([^"]*)"', "data-live attribute")
        bench.quiet_gate()
        events = Events(dash, live)
        time.sleep(0.5)  # the subscription is up before the first upload
        noise = Noise(server)
        out = {how: {"commit": [], "write": [], "missed": 0} for how in ("web", "cli")}
        for i in range(LAT_COUNT):
            data = rng.randbytes(4096)
            t0 = time.perf_counter()
            took = dash.upload("web", f"probe-{i:03d}.bin", data=data)
            note(out["web"], events.wait(f"web/probe-{i:03d}.bin"), t0, t0 + took)
            time.sleep(0.1)
        # The web probes reach this folder first, untimed.
        client(bin_dir, server.url, folder, "sync", logfile=os.path.join(d, "client.log"))
        time.sleep(0.1)
        for i in range(LAT_COUNT):
            data = rng.randbytes(4096)
            t0 = time.perf_counter()
            with open(os.path.join(folder, "cli", f"probe-{i:03d}.bin"), "wb") as f:
                f.write(data)
            m = client(bin_dir, server.url, folder, "sync", logfile=os.path.join(d, "client.log"))
            note(out["cli"], events.wait(f"cli/probe-{i:03d}.bin"), t0, t0 + m["wall"])
            time.sleep(0.1)
        if events.error:
            log(f"  the event stream ended: {events.error}")
        out["noise"] = noise.others_pct()
        res["live"] = out
        for how in ("web", "cli"):
            o = out[how]
            if o["commit"]:
                c, w = statistics.median(o["commit"]), statistics.median(o["write"])
                log(f"  live via {how}: commit -> event median {c * 1e3:.1f} ms, write -> event "
                    f"{w * 1e3:.1f} ms (n = {len(o['commit'])}, {o['missed']} missed)")
        dash.close()
    finally:
        if events:
            events.close()
        server.stop()


def note(out, arrived, start, committed):
    if arrived is None:
        out["missed"] += 1
        return
    out["commit"].append(arrived - committed)
    out["write"].append(arrived - start)


# ---------------------------------------------------------------- table


def ms(s):
    return f"{s * 1e3:.1f} ms"


def size_text(n):
    return f"{n / 1000:.1f} KB ({n:,} B)"


def table(res, elapsed):
    out = ["| target | measured | goal | met |", "|---|---|---|---|"]

    def row(what, value, goal, ok):
        out.append(f"| {what} | {value} | {goal} | {'' if ok is None else 'yes' if ok else '**no**'} |")

    scale = "" if SCALE == 1 else f" (BENCH_SCALE={SCALE})"
    pages = res.get("pages")
    if pages:
        p = pages["many"]
        row(f"GET /files?dir=many, first page of a {MANY:,}-file folder, median of {PAGE_REPEATS}{scale}",
            ms(p["total"]), "≤ 300 ms", p["total"] <= GOAL_PAGE_S)
        row(f"its weight, HTML only ({res['rows']} rows, Content-Encoding: {p['encoding']})",
            size_text(p["bytes"]), "≤ 150 KB", p["bytes"] <= GOAL_PAGE_BYTES)
        full = p["bytes"] + sum(res["assets"].values())
        row("full first load: HTML + /static/app.js + /static/style.css", size_text(full), "≤ 150 KB",
            full <= GOAL_PAGE_BYTES)
    up = res.get("upload")
    if up:
        web, cli = (statistics.median(up["runs"][k]) for k in ("web", "cli"))
        rate = lambda t: up["size"] / MIB / t  # noqa: E731
        row(f"upload of {up['size'] / MIB:,.0f} MiB, POST /upload vs `sync-client sync`, "
            f"median of {len(up['runs']['web'])}", f"{rate(web):.0f} vs {rate(cli):.0f} MiB/s = "
            f"{cli / web:.2f}×", "≥ 0.7×", cli / web >= GOAL_UPLOAD_RATIO)
    live = res.get("live")
    if live:
        for how, what in (("web", "POST /upload"), ("cli", "`sync-client sync`")):
            o = live[how]
            if not o["commit"]:
                row(f"live view, 4 KiB via {what}", f"no event ({o['missed']} missed)", "≤ 100 ms", False)
                continue
            c, w = statistics.median(o["commit"]), statistics.median(o["write"])
            missed = f", {o['missed']} missed" if o["missed"] else ""
            row(f"live view: 4 KiB via {what}, commit → SSE `change`, median of {len(o['commit'])}{missed}",
                ms(c), "≤ 100 ms", c <= GOAL_LIVE_S and not o["missed"])
            row(f"live view: 4 KiB via {what}, start of the write → SSE `change`", ms(w), "", None)

    out += ["", "Details (medians; times from this script's side of the socket):", "",
            "| measure | value |", "|---|---|"]
    if pages:
        out.append(f"| initial upload of the {MANY + FEW:,} small files (one `sync-client sync`) | "
                   f"{res['initial_sync']:.1f} s |")
        names = {"many": "first page of `many`", "last": "last page of `many`",
                 "top": "/files (the top: 2 rows, one level)",
                 "few": f"/files?dir=few ({FEW} files)",
                 "size": "`many` by size (its whole level read and sorted)"}
        for key in ("many", "last", "top", "few", "size"):
            p = pages[key]
            out.append(f"| GET {p['path']} — {names[key]}: to last byte / to headers / server CPU a page "
                       f"| {ms(p['total'])} / {ms(p['ttfb'])} / {ms(p['server_cpu'])} ({p['bytes']:,} B) |")
        out.append(f"| `sync-client ls` (the gRPC listing of all {MANY + FEW:,} files, process included) "
                   f"| {ms(res['ls'])} |")
        out.append("| /static/app.js, /static/style.css | " +
                   ", ".join(f"{n:,} B" for n in res["assets"].values()) + " |")
    if up:
        out.append(f"| POST /upload, each run | {', '.join(f'{t:.2f} s' for t in up['runs']['web'])} "
                   f"(server CPU {statistics.median(up['web_cpu']):.1f} s) |")
        out.append(f"| `sync-client sync`, each run | {', '.join(f'{t:.2f} s' for t in up['runs']['cli'])} "
                   f"(client + server CPU {statistics.median(up['cli_cpu']):.1f} s) |")
        if "download" in up:
            out.append(f"| GET /download of the web upload (bytes compared) | "
                       f"{up['size'] / MIB / up['download']:.0f} MiB/s |")
    if live:
        for how in ("web", "cli"):
            o = live[how]
            if o["commit"]:
                out.append(f"| live via {how}: commit → event min / max | {ms(min(o['commit']))} / "
                           f"{ms(max(o['commit']))} |")
    if live:
        out += ["", "Commit → event is negative when the `change` event arrived before the uploading call "
                "returned: the server sends it as the upload commits, before its 303 (web) or before the "
                "client process has recorded its state and exited (CLI)."]
    stages = (("listing", res.get("listing_noise")), ("upload", up and up["noise"]),
              ("live", live and live["noise"]))
    noise = [f"{name} {v:.0f}%" for name, v in stages if v is not None]
    out += ["", f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, loopback only; BENCH_SCALE={SCALE}, "
            f"REPEATS={REPEATS}, PAGE_REPEATS={PAGE_REPEATS}, LAT_COUNT={LAT_COUNT}. The run took "
            f"{elapsed:.0f} s. Other processes used this share of the machine while each stage was "
            f"measured: {', '.join(noise)}; every figure is a median, and still noisy."]
    return "\n".join(out)


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="folder holding sync-server and sync-client (default: the release "
                    "build, built first when stale)")
    ap.add_argument("--data", default=os.environ.get("BENCH_DATA", "/tmp/syncstore-bench/web"),
                    help="where the data goes (deleted at the end unless KEEP=1)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()
    bin_dir = release_bin(args.bin)
    started = time.perf_counter()
    created = not os.path.exists(args.data)
    work = os.path.join(args.data, "runs", time.strftime("%Y%m%d-%H%M%S"))
    src_dir = os.path.join(args.data, "src" if SCALE == 1 else f"src-scale{SCALE}")
    os.makedirs(work)
    os.makedirs(src_dir, exist_ok=True)
    need = (3 if "upload" in STAGES else 0) * BIG_SIZE + (256 << 20)
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"not enough free space under {work}: about {need >> 20} MiB needed")
    res = {}
    try:
        if "listing" in STAGES:
            log(f"listing: {MANY:,} files in one folder")
            stage_listing(res, bin_dir, work)
        if "upload" in STAGES:
            log(f"upload: {BIG_SIZE / MIB:.0f} MiB, web against CLI, {REPEATS} runs each")
            stage_upload(res, bin_dir, work, src_dir)
        if "live" in STAGES:
            log(f"live: {LAT_COUNT} uploads of 4 KiB each way, timed to their SSE event")
            stage_live(res, bin_dir, work)
    finally:
        if not KEEP:
            shutil.rmtree(args.data if created else work, ignore_errors=True)
            if not created:
                shutil.rmtree(src_dir, ignore_errors=True)
                try:
                    os.rmdir(os.path.join(args.data, "runs"))
                except OSError:
                    pass
    text = table(res, time.perf_counter() - started)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
