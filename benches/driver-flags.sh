#!/usr/bin/env bash
# Measures Shardgate's I/O driver settings against each other, interleaved over rounds:
# io_uring without setup flags, with COOP_TASKRUN + SINGLE_ISSUER (the default), with
# DEFER_TASKRUN on top, and the epoll driver. Prints the median CPU µs per request (the
# gateway's user+sys CPU from /proc over the run / requests), req/s and p99 per variant.
#
#   benches/driver-flags.sh [--rounds 3] [--duration 4] [--size 64] [--new-conn]
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1. Loopback only;
# every run is bounded by --duration. Needs `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=3 DURATION=4 SIZE=64 NEWCONN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --new-conn) NEWCONN=--new-conn; shift ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18190}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18181}
TMP=$(mktemp -d /tmp/sg-flags.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
VARIANTS=("io_uring_flags = false" "io_uring_flags = true" "io_uring_defer_taskrun = true" 'driver = "epoll"')
NAMES=("io_uring, no setup flags" "io_uring, COOP_TASKRUN+SINGLE_ISSUER (default)" "io_uring, +DEFER_TASKRUN" "epoll")

taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$BE_PORT" --size "$SIZE" 2>/dev/null &
PIDS+=($!)
sleep 0.3
: > "$TMP/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for i in "${!VARIANTS[@]}"; do
        cat > "$TMP/gw.toml" <<EOT
[gateway]
listen = ["127.0.0.1:$GW_PORT"]
workers = 1
cpus = [0]
access_log = "off"
watch_config = false
${VARIANTS[$i]}
[[upstreams]]
id = "b"
nodes = { "127.0.0.1:$BE_PORT" = 1 }
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }
[[routes]]
uri = "/*"
upstream_id = "b"
EOT
        taskset -c 0 "$BIN/shardgate" run -c "$TMP/gw.toml" 2>/dev/null &
        gw=$!
        sleep 0.3
        # Warm-up, then the measured run.
        taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$GW_PORT/" -c 64 -d 1 --quiet $NEWCONN > /dev/null
        t0=$(awk '{print $14+$15}' "/proc/$gw/stat")
        taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$GW_PORT/" -c 64 -d "$DURATION" --quiet \
            --json "$TMP/run.json" $NEWCONN > /dev/null
        t1=$(awk '{print $14+$15}' "/proc/$gw/stat")
        kill "$gw"; wait "$gw" 2>/dev/null || true
        python3 - "$i" "$t0" "$t1" "$CLK" "$TMP/run.json" >> "$TMP/results.tsv" <<'PY'
import json, sys
i, t0, t1, clk, path = sys.argv[1:]
d = json.load(open(path))
cpu_us = (float(t1) - float(t0)) / float(clk) * 1e6 / max(d["requests"], 1)
print(f"{i}\t{cpu_us:.2f}\t{d['rps']:.0f}\t{d['p99_us']:.0f}")
PY
    done
done
python3 - "$TMP/results.tsv" "${NAMES[@]}" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
names = sys.argv[2:]
print("| driver | CPU µs/req (median, min-max) | req/s | p99 µs |")
print("|---|---:|---:|---:|")
for i, name in enumerate(names):
    r = [x for x in rows if int(x[0]) == i]
    cpu = [float(x[1]) for x in r]
    print(f"| {name} | {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | "
          f"{statistics.median(float(x[2]) for x in r):,.0f} | {statistics.median(float(x[3]) for x in r):,.0f} |")
PY
