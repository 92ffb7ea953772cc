#!/usr/bin/env bash
# Profiles the server and the client during an upload into an empty server
# (WORKLOAD=w1 by default; w2, w3 too): where the CPU goes (perf, or callgrind on a smaller
# W1 where perf cannot run), and which system calls the time waits in
# (strace -c -w: wall time per call, so fsync shows as what it costs).
#
#   bench/profile.sh              # perf + strace; reports in $BENCH_DATA/profile
#   WORKLOAD=w2 bench/profile.sh
#   TOOL=callgrind BENCH_SCALE=10 bench/profile.sh
#
# Installs linux-perf (Debian) when perf is missing and apt can run as root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
data=${BENCH_DATA:-/tmp/syncstore-bench}
tool=${TOOL:-perf}
workload=${WORKLOAD:-w1}
out=$data/profile
say() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ "$tool" = perf ] && ! command -v perf >/dev/null; then
  say "installing linux-perf"
  if [ "$(id -u)" = 0 ]; then
    timeout 300 apt-get install -y -qq --no-install-recommends linux-perf >/dev/null || true
  fi
fi
if [ "$tool" = perf ] && ! timeout 10 perf record -o /dev/null true >/dev/null 2>&1; then
  say "perf cannot record here; falling back to callgrind on a tenth of W1"
  tool=callgrind
  export BENCH_SCALE=${BENCH_SCALE:-10}
fi

timeout 1800 cargo build --release --quiet --manifest-path "$repo/Cargo.toml" -p sync-server -p sync-client
bin=$repo/target/release
src=$(python3 "$here/bench.py" --data "$data" --generate "$workload")
run=$out/$workload-$(date +%Y%m%d-%H%M%S)
mkdir -p "$run"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# profile_run NAME WRAP...: one upload into a new server, with the server
# and the client each run under WRAP (with NAME.server / NAME.client as its
# output file, given by the placeholder OUT).
profile_run() {
  local name=$1
  shift
  local wrap=("$@")
  local d=$run/$name
  mkdir -p "$d"
  cp -al "$src" "$d/up"
  sync
  "${wrap[@]/OUT/$d/server.prof}" "$bin/sync-server" --listen 127.0.0.1:0 --data "$d/server" \
    >"$d/server.out" 2>"$d/server.log" &
  local wpid=$!
  pids+=("$wpid")
  for _ in $(seq 600); do
    grep -q '^listening on ' "$d/server.out" 2>/dev/null && break
    sleep 0.05
  done
  local url
  url="http://$(sed -n 's/^listening on //p' "$d/server.out")"
  local t0 t1
  t0=$(date +%s.%N)
  timeout 600 "${wrap[@]/OUT/$d/client.prof}" "$bin/sync-client" --server "$url" --dir "$d/up" sync \
    >"$d/client.log" 2>&1
  t1=$(date +%s.%N)
  say "$name: $workload upload took $(awk "BEGIN {printf \"%.2f\", $t1 - $t0}") s under $name"
  # Stop the server itself (the wrapper's child), not the wrapper.
  local spid
  spid=$(pgrep -P "$wpid" -x sync-server || echo "$wpid")
  kill -TERM "$spid"
  wait "$wpid" || true
}

if [ "$tool" = perf ]; then
  profile_run perf perf record -F 999 -g --call-graph dwarf,16384 -o OUT --
  for side in server client; do
    perf report -i "$run/perf/$side.prof" --no-children --stdio --sort dso,sym --percent-limit 1.5 \
      -g none 2>/dev/null | grep -v '^$' >"$run/$side.top.txt" || true
    perf report -i "$run/perf/$side.prof" --children --stdio --sort sym --percent-limit 4 \
      -g none 2>/dev/null | grep -v '^$' >"$run/$side.children.txt" || true
  done
else
  profile_run callgrind valgrind --tool=callgrind --callgrind-out-file=OUT --
  for side in server client; do
    callgrind_annotate "$run/callgrind/$side.prof" 2>/dev/null | head -60 >"$run/$side.top.txt" || true
  done
fi
# System calls, with the wall time spent in each (-w), over all threads.
profile_run strace strace -f -c -w -o OUT
cp "$run/strace/server.prof" "$run/server.syscalls.txt"
cp "$run/strace/client.prof" "$run/client.syscalls.txt"
say "reports in $run: {server,client}.{top,children,syscalls}.txt"
