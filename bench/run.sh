#!/usr/bin/env bash
# Measures syncstore on the peers' workloads (see ../shared/bench-peers):
#   - initial upload: `sync-client sync` of a full folder into an empty server,
#     alone and with a sync-mode replica (every file durable on both servers
#     before it is acknowledged);
#   - initial download: `sync-client sync` of an empty folder from that server;
#   - latency: a 4 KiB file saved in one watched folder until it is identical
#     in another (latency_probe.py), with both clients and the server idle;
#   - the server's peak RSS over each run.
# Results go to $BENCH_DATA/syncstore/results.csv (the peers' CSV format) and a
# markdown summary is printed. Loopback only; every step has a timeout.
#
#   bench/run.sh                       # REPEATS=3, WORKLOADS="w1 w2 w3"
#   REPEATS=1 WORKLOADS=w1 bench/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
peers=${PEERS:-$repo/../shared/bench-peers}
root=${BENCH_DATA:-/tmp/bench-data}
data=$root/syncstore/$(date +%Y%m%d-%H%M%S)
csv=$root/syncstore/results.csv
REPEATS=${REPEATS:-3}
WORKLOADS=${WORKLOADS:-"w1 w2 w3"}
LAT_COUNT=${LAT_COUNT:-20}

cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
bin=$repo/target/release
mkdir -p "$data"
# shellcheck disable=SC2086
python3 "$peers/gen_workloads.py" --root "$root/src" $WORKLOADS

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# start_server DIR [FLAGS...]: starts a server on an ephemeral loopback
# port; sets srv_pid and url.
start_server() {
  local dir=$1
  shift
  "$bin/sync-server" --listen 127.0.0.1:0 --data "$dir" "$@" >"$dir.out" 2>"$dir.log" &
  srv_pid=$!
  pids+=("$srv_pid")
  for _ in $(seq 400); do
    grep -q '^listening on ' "$dir.out" 2>/dev/null && break
    sleep 0.025
  done
  url="http://$(sed -n 's/^listening on //p' "$dir.out")"
}

stop_server() {
  local hwm
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$srv_pid/status")
  kill -TERM "$srv_pid"
  wait "$srv_pid" || true
  echo "$hwm"
}

record() { # suite tool workload run metric value unit
  [ -s "$csv" ] || echo "ts,suite,tool,workload,run,metric,value,unit" >"$csv"
  echo "$(date +%s),$1,$2,$3,$4,$5,$6,$7" >>"$csv"
}

for w in $WORKLOADS; do
  src=$root/src/$w
  files=$(find "$src" -type f | wc -l)
  bytes=$(du -sb --apparent-size "$src" | cut -f1)
  for run in $(seq "$REPEATS"); do
    d=$data/$w-$run
    mkdir -p "$d"
    cp -a "$src" "$d/up" # the uploading client's folder (state goes in up/.syncstore)
    sync
    start_server "$d/server"
    python3 "$peers/measure.py" --csv "$csv" --suite syncstore --tool upload --workload "$w" --run "$run" \
      --bytes "$bytes" --files "$files" --timeout 600 --log "$d/up.log" -- \
      "$bin/sync-client" --server "$url" --dir "$d/up" sync
    python3 "$peers/measure.py" --csv "$csv" --suite syncstore --tool download --workload "$w" --run "$run" \
      --bytes "$bytes" --files "$files" --timeout 600 --log "$d/down.log" -- \
      "$bin/sync-client" --server "$url" --dir "$d/down" sync
    python3 "$peers/verify_tree.py" "$src" "$d/down" --ignore .syncstore -q
    hwm=$(stop_server)
    record syncstore server "$w" "$run" server_maxrss_mb "$((hwm / 1024))" MiB

    # The same upload into a primary with a sync-mode replica.
    cp -a "$src" "$d/up-rep"
    sync
    start_server "$d/replica" --role replica
    rep_pid=$srv_pid
    start_server "$d/primary" --replica "$url" --replication sync --replica-timeout 60s
    python3 "$peers/measure.py" --csv "$csv" --suite syncstore --tool upload-sync-replica --workload "$w" \
      --run "$run" --bytes "$bytes" --files "$files" --timeout 600 --log "$d/up-rep.log" -- \
      "$bin/sync-client" --server "$url" --dir "$d/up-rep" sync
    stop_server >/dev/null
    srv_pid=$rep_pid
    stop_server >/dev/null
  done
done

# Latency: two watching clients, one server, all idle between probes.
d=$data/latency
mkdir -p "$d/a" "$d/b"
start_server "$d/server"
RUST_LOG=warn "$bin/sync-client" --server "$url" --dir "$d/a" 2>"$d/a.log" &
pids+=("$!")
RUST_LOG=warn "$bin/sync-client" --server "$url" --dir "$d/b" 2>"$d/b.log" &
pids+=("$!")
for _ in $(seq 400); do
  [ -e "$d/a/.syncstore/state.db" ] && [ -e "$d/b/.syncstore/state.db" ] && break
  sleep 0.025
done
sleep 1 # let both subscriptions settle (the probe measures from rest)
python3 "$peers/latency_probe.py" --src "$d/a" --dst "$d/b" --count "$LAT_COUNT" --gap 0.5 \
  --tool syncstore --workload lat4k --csv "$csv"
stop_server >/dev/null

python3 "$peers/summarize.py" "$csv"
