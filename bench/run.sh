#!/usr/bin/env bash
# syncstore against rsync (daemon on loopback) and Syncthing (two instances,
# fully offline) on the same generated workloads, in one run; prints one
# markdown table of wall time, files/s, MiB/s, peak RSS, CPU seconds and the
# ratio syncstore / peer, then the performance targets (save latency, idle
# CPU and restart rescan over 100,000 files, memory), then stage W-delta: edits
# to a 1 GiB file, each leg's bytes, time and server disk against rsync's delta
# transfer of the same edits. See bench/bench.py and bench/wdelta.py for what
# each stage measures.
#
#   bench/run.sh                    # the whole benchmark, about 8-10 minutes
#   BENCH_SCALE=10 bench/run.sh     # a tenth of every workload, to try it out
#   REPEATS=3 PEER_REPEATS=3 bench/run.sh
#   PEERS=rsync WORKLOADS=w1 BIG=0 bench/run.sh
#   PEERS=rsync WORKLOADS=wdelta BIG=0 bench/run.sh       # W-delta alone (1 GiB)
#   PEERS=rsync WORKLOADS=wdelta BIG=0 DELTA_SIZE=64M bench/run.sh   # a quick try
#
# Old against new: BASELINE=REV (any git revision) also builds that
# revision and runs syncstore's stages with both builds side by side in one
# run, alternating which goes first at each repeat (REPEATS, default 3 in
# this mode), and then prints a second table: the median wall time of each
# upload (W1 10,000 x 4 KiB, W2 one 1 GiB file, ...), download and upload
# to a primary with a sync replica, and the median save latency, old / new /
# new÷old. The baseline is built in a temporary `git worktree` (removed
# once built) with its own target folder, $BENCH_DATA/baseline/target
# (seeded from this checkout's release build), and its binaries are kept in
# $BENCH_DATA/baseline/SHA/, so a second run with the same BASELINE builds
# nothing. PEERS= (empty), WORKLOADS= and BIG=0 narrow the run:
#
#   BASELINE=main PEERS= WORKLOADS="w1 w2" BIG=0 bench/run.sh
#   BASELINE=HEAD~3 BENCH_SCALE=50 PEERS= BIG=0 LAT_COUNT=10 bench/run.sh   # a quick try
#
# Missing peers are installed from Debian packages (rsync, syncthing) when
# apt can run as root; otherwise that peer is skipped with a message. Data
# goes to $BENCH_DATA (default /tmp/syncstore-bench) and what the run put
# there is deleted at the end (KEEP_SRC=1 keeps the generated workloads for
# the next run, KEEP=1 keeps everything). The stages run in a private network namespace that has
# only `lo` when the system allows it, and the whole run is bounded by
# BENCH_TIMEOUT seconds (default 1200).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
data=${BENCH_DATA:-/tmp/syncstore-bench}
limit=${BENCH_TIMEOUT:-1200}
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# as_root CMD...: runs CMD as root, directly or through passwordless sudo;
# fails (status 1) when neither is possible.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

# Peers come from Debian packages; one that cannot be installed is skipped.
# GNU time gives each command's own peak RSS (without it, the figures count
# the benchmark's own memory too).
missing=()
for p in ${PEERS-rsync syncthing}; do
  command -v "$p" >/dev/null || missing+=("$p")
done
# W-delta measures rsync on the same edits, whatever PEERS says.
if [[ " ${WORKLOADS-wdelta} " == *" wdelta "* && " ${PEERS-rsync} " != *" rsync "* ]]; then
  command -v rsync >/dev/null || missing+=(rsync)
fi
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian packages"
  if ! { as_root timeout 300 apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive timeout 300 \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
    say "could not install ${missing[*]} (apt needs root); going on without them"
  fi
fi

say "building syncstore (release)"
timeout 1800 cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p sync-server -p sync-client
bin=${CARGO_TARGET_DIR:-$repo/target}/release

# The baseline's binaries: built once per commit, then reused.
compare=()
if [ -n "${BASELINE:-}" ]; then
  sha=$(git -C "$repo" rev-parse --verify --quiet "$BASELINE^{commit}") ||
    { say "BASELINE=$BASELINE is not a commit of $repo"; exit 2; }
  base_bin=$data/baseline/$sha
  if [ -x "$base_bin/sync-server" ] && [ -x "$base_bin/sync-client" ]; then
    say "baseline $BASELINE ($sha): using the binaries built by an earlier run"
  else
    base_target=$data/baseline/target
    if [ ! -d "$base_target" ] && [ -d "$bin" ]; then
      # Only the workspace's own crates then need building.
      mkdir -p "$base_target" && cp -a "$bin" "$base_target/release"
    fi
    tree=$(mktemp -d "${TMPDIR:-/tmp}/syncstore-baseline.XXXXXX")
    rmdir "$tree"
    trap 'git -C "$repo" worktree remove --force "$tree" 2>/dev/null || true' EXIT
    git -C "$repo" worktree add --quiet --detach "$tree" "$sha"
    say "building the baseline $BASELINE ($sha, release) in a temporary worktree"
    CARGO_TARGET_DIR=$base_target timeout 1800 cargo build --release --quiet --locked \
      --manifest-path "$tree/Cargo.toml" -p sync-server -p sync-client
    mkdir -p "$base_bin"
    cp "$base_target/release/sync-server" "$base_target/release/sync-client" "$base_bin/"
    git -C "$repo" worktree remove --force "$tree"
    trap - EXIT
  fi
  new_name=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo "this checkout")
  compare=(--baseline-bin "$base_bin" --baseline-name "$BASELINE ($(git -C "$repo" rev-parse --short "$sha"))"
    --new-name "$new_name")
  export REPEATS=${REPEATS:-3}
fi

# ext4 keeps deleted inodes out of reuse for a minute, and every create
# scans past them: after the last run's cleanup, let that minute pass.
stamp=${TMPDIR:-/tmp}/syncstore-bench.cleaned
if [ -e "$stamp" ]; then
  wait_s=$((65 - $(date +%s) + $(stat -c %Y "$stamp")))
  if [ "$wait_s" -gt 0 ]; then
    say "waiting ${wait_s}s: the last run's files were deleted less than a minute ago"
    sleep "$wait_s"
  fi
fi

mkdir -p "$data"
out=$data/table-$(date +%Y%m%d-%H%M%S).md
run=(python3 "$here/bench.py" --bin "$bin" --data "$data" --out "$out" "${compare[@]}")
status=0
if [ -z "${NO_NETNS:-}" ] && unshare -n true 2>/dev/null; then
  # Nothing in here can reach beyond loopback, whatever a peer's settings say.
  timeout --kill-after=20 "$limit" unshare -n -- bash -c 'ip link set lo up && exec "$@"' _ "${run[@]}" || status=$?
else
  say "no private network namespace here; every tool still listens and dials on 127.0.0.1 only"
  timeout --kill-after=20 "$limit" "${run[@]}" || status=$?
fi

# Delete the run's folders only now that nothing is measured any more: ext4
# keeps deleted inodes out of reuse for a minute, which slows every create.
if [ -z "${KEEP:-}" ]; then
  cp "$out" "${TMPDIR:-/tmp}/" 2>/dev/null && say "table kept as ${TMPDIR:-/tmp}/$(basename "$out")"
  rm -rf "$data/runs" "$data/results.json" "$data"/table-*.md
  [ -n "${KEEP_SRC:-}" ] || rm -rf "$data/src" "$data"/src-scale*
  rmdir "$data" 2>/dev/null || true
  touch "$stamp"
fi
exit $status
