#!/usr/bin/env python3
"""What version history costs and how fast it answers (issue targets in brackets), on loopback:

  undelete   a folder of UNDELETE_FILES (10,000) x 1 KiB on watching client A, a second
             watching client B; the folder is deleted on A and the deletion reaches B; then
             `sync-client undelete --under bulk` on A: its wall time [<= 5 s], and the time
             from its answer until both folders hold every file with its bytes again [<= 10 s].
  versions   VERSIONS (10,000) versions of one small file written by a gRPC client (stubs from
             stock protoc); then the CLI's `history` of it, process start included [<= 100 ms],
             and `ListVersions` through Python grpcio (median of 5), which mostly measures
             grpcio's cost per streamed message.
  browse     the 100,000 x 1 KiB folder (bench.py's BIG workload) synced by `sync-client
             sync`; then the CLI's `browse --at` of the whole namespace at a time after the
             sync, into its log [<= 2 s], and `Browse` through Python grpcio (median of 3).
  cost       a COST_SIZE (1 GiB) random file on watching client A; COST_EDITS (30) overwrites
             of 1 MiB at different offsets, each until the server holds it; the server's data
             folder (allocated blocks) after the first version and after the last, against
             the file's size [<= 1.1 x the file size for 30 versions].

Run: `cargo build --release -p sync-server -p sync-client && python3 bench/history.py --bin
target/release --data /tmp/syncstore-history` (STAGES="undelete versions browse cost" narrows
it; BENCH_SCALE divides counts and sizes for a quick try). The write-path figures (W1, W2, save
latency, before and after) come from `BASELINE=REV PEERS= WORKLOADS="w1 w2" BIG=0 bench/run.sh`.
Everything the run creates is under --data/runs-history and is deleted at the end unless KEEP=1.
"""

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from bench import MIB, SCALE, START_TIMEOUT, Syncstore, generate, log, run_measured, wait_for  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = os.environ.get("STAGES", "undelete versions browse cost").split()
UNDELETE_FILES = max(10_000 // SCALE, 10)
VERSIONS = max(10_000 // SCALE, 10)
COST_SIZE = max((1 << 30) // SCALE, 4 * MIB)
COST_EDITS = 30
EDIT = MIB
TIMEOUT = 600


def stubs():
    """Generates the Python stubs with stock protoc into a temp folder and imports them."""
    out = tempfile.mkdtemp(prefix="syncstore-stubs-")
    protos = [os.path.join("proto/syncstore/v1", p) for p in os.listdir(os.path.join(REPO, "proto/syncstore/v1"))]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", f"--python_out={out}",
                    f"--grpc_python_out={out}", *protos], cwd=REPO, check=True)
    sys.path.insert(0, out)
    import grpc
    from syncstore.v1 import history_pb2, history_pb2_grpc, sync_pb2, sync_pb2_grpc
    return grpc, sync_pb2, sync_pb2_grpc, history_pb2, history_pb2_grpc


def blake3_hex(data):
    import blake3
    return blake3.blake3(data).digest()


def du(path):
    """Allocated bytes of a folder (what it really costs on disk)."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def folder_holds(folder, expected):
    """Whether `folder` holds exactly the files of `expected` (rel path -> bytes)."""
    for rel, data in expected.items():
        p = os.path.join(folder, rel)
        try:
            if os.path.getsize(p) != len(data):
                return False
        except OSError:
            return False
    return True


def watching(ss, url, folder):
    c = ss.client(url, folder, measured=False)
    wait_for(lambda: "initial sync done" in open(f"{folder}.log").read(), START_TIMEOUT,
             f"{folder}'s initial sync")
    return c


def stage_undelete(ss, work, out):
    d = os.path.join(work, "undelete")
    os.makedirs(d)
    srv = ss.server(os.path.join(d, "server"))
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    rng = random.Random(7)
    expected = {}
    for i in range(UNDELETE_FILES):
        rel = os.path.join("bulk", f"d{i % 100:02d}", f"f{i:05d}.bin")
        data = rng.randbytes(1024)
        expected[rel] = data
        os.makedirs(os.path.dirname(os.path.join(a, rel)), exist_ok=True)
        with open(os.path.join(a, rel), "wb") as f:
            f.write(data)
    ca, cb = watching(ss, srv.url, a), watching(ss, srv.url, b)
    wait_for(lambda: folder_holds(b, expected), TIMEOUT, "B to hold the folder", step=0.2)
    shutil.rmtree(os.path.join(a, "bulk"))
    wait_for(lambda: not os.path.exists(os.path.join(b, "bulk", "d00", "f00000.bin"))
             and sum(len(n) for _, _, n in os.walk(os.path.join(b, "bulk"))) == 0,
             TIMEOUT, "the deletion to reach B", step=0.2)
    perf = None
    if os.environ.get("PERF_UNDELETE"):  # profile the server through the undelete
        perf = subprocess.Popen(["perf", "record", "-g", "-o", os.environ["PERF_UNDELETE"], "-p", str(srv.pid)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    m = run_measured([ss.client_bin, "--server", srv.url, "--dir", a, "undelete", "--under", "bulk"],
                     os.path.join(d, "undelete.log"))
    if perf:
        perf.send_signal(2)
        perf.wait()
    t0 = time.perf_counter()
    wait_for(lambda: folder_holds(a, expected) and folder_holds(b, expected), TIMEOUT,
             "both folders to hold every file again", step=0.05)
    clients = time.perf_counter() - t0
    for folder in (a, b):
        for rel, data in expected.items():
            if open(os.path.join(folder, rel), "rb").read() != data:
                raise RuntimeError(f"{folder}/{rel} came back with other bytes")
    out["undelete"] = {"files": UNDELETE_FILES, "undelete_s": m["wall"], "clients_s": clients}
    log(f"  undelete {UNDELETE_FILES} files: {m['wall']:.2f} s; both clients had them "
        f"{clients:.2f} s later")
    for p in (ca, cb, srv):
        p.stop()


def upload(grpc_mods, stub, path, data, base, client_id="bench-history"):
    _, pb, _, _, _ = grpc_mods
    header = pb.UploadHeader(path=path, size=len(data), hash=blake3_hex(data), mtime_ns=time.time_ns(),
                             base_version=base, client_id=client_id)
    msgs = [pb.UploadRequest(header=header), pb.UploadRequest(chunk=data),
            pb.UploadRequest(end=pb.UploadEnd())]
    return stub.Upload(iter(msgs), timeout=30).entry.version


def stage_versions(ss, work, out, grpc_mods):
    grpc, pb, pb_grpc, hpb, hpb_grpc = grpc_mods
    d = os.path.join(work, "versions")
    os.makedirs(d)
    srv = ss.server(os.path.join(d, "server"))
    chan = grpc.insecure_channel(srv.url.removeprefix("http://"))
    sync, hist = pb_grpc.FileSyncStub(chan), hpb_grpc.HistoryStub(chan)
    t0 = time.perf_counter()
    base = 0
    for i in range(VERSIONS):
        base = upload(grpc_mods, sync, "hot.txt", f"version {i}\n".encode(), base)
    written = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t = time.perf_counter()
        n = sum(1 for _ in hist.ListVersions(hpb.ListVersionsRequest(path="hot.txt"), timeout=60))
        times.append(time.perf_counter() - t)
        if n != VERSIONS:
            raise RuntimeError(f"ListVersions gave {n} versions, {VERSIONS} written")
    os.makedirs(os.path.join(d, "c"))
    m = run_measured([ss.client_bin, "--server", srv.url, "--dir", os.path.join(d, "c"), "history",
                      "hot.txt"], os.path.join(d, "history-cli.log"))
    out["versions"] = {"versions": VERSIONS, "write_s": written, "list_median_s": statistics.median(times),
                       "cli_s": m["wall"]}
    log(f"  {VERSIONS} versions written in {written:.1f} s; ListVersions median "
        f"{statistics.median(times) * 1e3:.1f} ms; CLI history {m['wall'] * 1e3:.0f} ms")
    chan.close()
    srv.stop()


def stage_browse(ss, work, src_root, out, grpc_mods):
    grpc, pb, pb_grpc, hpb, hpb_grpc = grpc_mods
    src = generate(src_root, "big")
    d = os.path.join(work, "browse")
    os.makedirs(d)
    folder = os.path.join(d, "folder")
    bench.link_copy(src, folder)
    srv = ss.server(os.path.join(d, "server"))
    ss.client(srv.url, folder, "sync", logname=os.path.join(d, "sync.log"))
    files = sum(len(n) for p, _, n in os.walk(folder) if ".syncstore" not in p)
    at_ms = int(time.time() * 1000)
    chan = grpc.insecure_channel(srv.url.removeprefix("http://"))
    hist = hpb_grpc.HistoryStub(chan)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        n = sum(1 for _ in hist.Browse(hpb.BrowseRequest(under="", at=hpb.Point(at_ms=at_ms)), timeout=120))
        times.append(time.perf_counter() - t)
        if n < files:
            raise RuntimeError(f"Browse listed {n} entries, the folder has {files} files")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_ms / 1000 + 1))
    m = run_measured([ss.client_bin, "--server", srv.url, "--dir", folder, "browse", "--at", stamp],
                     os.path.join(d, "browse-cli.log"))
    out["browse"] = {"files": files, "browse_median_s": statistics.median(times), "cli_s": m["wall"]}
    log(f"  browse of {files} files: median {statistics.median(times):.2f} s; CLI {m['wall']:.2f} s")
    chan.close()
    srv.stop()


def stage_cost(ss, work, out, grpc_mods):
    grpc, pb, pb_grpc, _, _ = grpc_mods
    d = os.path.join(work, "cost")
    os.makedirs(d)
    a = os.path.join(d, "a")
    os.makedirs(a)
    path = os.path.join(a, "image.bin")
    rng = random.Random(11)
    with open(path, "wb") as f:
        left = COST_SIZE
        while left:
            n = min(16 * MIB, left)
            f.write(rng.randbytes(n))
            left -= n
    srv = ss.server(os.path.join(d, "server"))
    chan = grpc.insecure_channel(srv.url.removeprefix("http://"))
    sync = pb_grpc.FileSyncStub(chan)

    def server_hash():
        try:
            return sync.Stat(pb.StatRequest(path="image.bin"), timeout=10).entry.hash
        except grpc.RpcError:
            return None

    def file_hash():
        h = __import__("blake3").blake3()
        with open(path, "rb") as f:
            while chunk := f.read(16 * MIB):
                h.update(chunk)
        return h.digest()

    ca = watching(ss, srv.url, a)
    want = file_hash()
    wait_for(lambda: server_hash() == want, TIMEOUT, "the first version on the server", step=0.2)
    first = du(os.path.join(d, "server"))
    for i in range(COST_EDITS):
        offset = (COST_SIZE // (COST_EDITS + 1)) * (i + 1) + 4096 * i
        with open(path, "r+b") as f:
            f.seek(min(offset, COST_SIZE - EDIT))
            f.write(rng.randbytes(EDIT))
        want = file_hash()
        wait_for(lambda: server_hash() == want, TIMEOUT, f"version {i + 2} on the server", step=0.1)
    ca.stop()
    time.sleep(1)
    srv.stop()  # a clean stop checkpoints the SQLite WAL: what stays is what history costs
    last = du(os.path.join(d, "server"))
    out["cost"] = {"size": COST_SIZE, "edits": COST_EDITS, "first": first, "last": last,
                   "ratio": last / COST_SIZE}
    log(f"  {COST_EDITS + 1} versions of a {COST_SIZE / MIB:.0f} MiB file: server data "
        f"{first / MIB:.0f} MiB after the first, {last / MIB:.0f} MiB after the last "
        f"({last / COST_SIZE:.3f} x the file)")
    chan.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder holding sync-server and sync-client")
    ap.add_argument("--data", required=True, help="where run folders go")
    args = ap.parse_args()
    work = os.path.join(args.data, "runs-history", time.strftime("%Y%m%d-%H%M%S"))
    src_root = os.path.join(args.data, "src" if SCALE == 1 else f"src-scale{SCALE}")
    os.makedirs(work)
    os.makedirs(src_root, exist_ok=True)
    ss = Syncstore(args.bin, work)
    grpc_mods = stubs()
    out = {}
    try:
        if "undelete" in STAGES:
            stage_undelete(ss, work, out)
        if "versions" in STAGES:
            stage_versions(ss, work, out, grpc_mods)
        if "browse" in STAGES:
            stage_browse(ss, work, src_root, out, grpc_mods)
        if "cost" in STAGES:
            stage_cost(ss, work, out, grpc_mods)
    finally:
        if not os.environ.get("KEEP"):
            shutil.rmtree(os.path.join(args.data, "runs-history"), ignore_errors=True)
    print("| figure | value | target |")
    print("|---|---|---|")
    if "undelete" in out:
        u = out["undelete"]
        print(f"| undelete of {u['files']:,} files | {u['undelete_s']:.2f} s | ≤ 5 s |")
        print(f"| ... until both watching clients have them | {u['clients_s']:.2f} s | ≤ 10 s |")
    if "versions" in out:
        v = out["versions"]
        print(f"| `sync-client history` of a path with {v['versions']:,} versions (process included) | "
              f"{v['cli_s'] * 1e3:.0f} ms | ≤ 100 ms |")
        print(f"| ... the same through Python grpcio (median of 5; its per-message cost) | "
              f"{v['list_median_s'] * 1e3:.0f} ms | |")
    if "browse" in out:
        b = out["browse"]
        print(f"| `sync-client browse --at` of {b['files']:,} files (process included) | {b['cli_s']:.2f} s | ≤ 2 s |")
        print(f"| ... the same through Python grpcio (median of 3) | {b['browse_median_s']:.2f} s | |")
    if "cost" in out:
        c = out["cost"]
        print(f"| server disk, {c['edits'] + 1} versions of a {c['size'] / MIB:.0f} MiB file with 1 MiB edits | "
              f"{c['last'] / MIB:.0f} MiB ({c['ratio']:.3f} x) | ≤ 1.1 x |")


if __name__ == "__main__":
    main()
