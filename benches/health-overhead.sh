#!/usr/bin/env bash
# Measures what health checking costs the request path: the same keep-alive load through
# Shardgate to 3 nodes, with no checks and with active (HTTP, every second) + passive checks,
# interleaved over rounds. Prints the median CPU µs per request of the gateway (all its
# threads, the prober included, from /proc), req/s and p99 for each.
#
#   benches/health-overhead.sh [--rounds 3] [--duration 5]
#
# Layout: gateway (1 worker) on CPU 0 (its prober thread floats), the three backends and the
# load generator on CPU 1. Loopback only; every run is bounded by --duration. Needs
# `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=3 DURATION=5
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18290}
BE_PORTS=(18281 18282 18283)
TMP=$(mktemp -d /tmp/sg-health.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
CLK=$(getconf CLK_TCK)
for p in "${BE_PORTS[@]}"; do
    taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$p" --size 64 2>/dev/null &
    PIDS+=($!)
done
sleep 0.3
NODES="{ \"127.0.0.1:${BE_PORTS[0]}\" = 1, \"127.0.0.1:${BE_PORTS[1]}\" = 1, \"127.0.0.1:${BE_PORTS[2]}\" = 1 }"
CHECKS='[upstreams.checks.active]
http_path = "/health"
healthy = { interval = 1 }
unhealthy = { interval = 1 }
[upstreams.checks.passive]
unhealthy = { http_failures = 5 }'
NAMES=("no health checks" "active (1 s) + passive checks")
: > "$TMP/results.tsv"
for round in $(seq 1 "$ROUNDS"); do
    for i in 0 1; do
        extra=""
        [ "$i" = 1 ] && extra=$CHECKS
        cat > "$TMP/gw.toml" <<EOT
[gateway]
listen = ["127.0.0.1:$GW_PORT"]
workers = 1
cpus = [0]
access_log = "off"
watch_config = false
control_listen = "off"
[[upstreams]]
id = "b"
nodes = $NODES
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }
$extra
[[routes]]
uri = "/*"
upstream_id = "b"
EOT
        "$BIN/shardgate" run -c "$TMP/gw.toml" 2>/dev/null &
        gw=$!
        sleep 0.3
        taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$GW_PORT/" -c 64 -d 1 --quiet > /dev/null
        t0=$(awk '{print $14+$15}' "/proc/$gw/stat")
        taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$GW_PORT/" -c 64 -d "$DURATION" --quiet \
            --json "$TMP/run.json" > /dev/null
        t1=$(awk '{print $14+$15}' "/proc/$gw/stat")
        kill "$gw"; wait "$gw" 2>/dev/null || true
        python3 - "$i" "$t0" "$t1" "$CLK" "$TMP/run.json" >> "$TMP/results.tsv" <<'PY'
import json, sys
i, t0, t1, clk, path = sys.argv[1:]
d = json.load(open(path))
cpu_us = (float(t1) - float(t0)) / float(clk) * 1e6 / max(d["requests"], 1)
print(f"{i}\t{cpu_us:.2f}\t{d['rps']:.0f}\t{d['p99_us']:.0f}\t{d['errors']}")
PY
    done
done
python3 - "$TMP/results.tsv" "${NAMES[@]}" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
names = sys.argv[2:]
base = None
print("| gateway | CPU µs/req (median, min-max) | ratio | req/s | p99 µs | errors |")
print("|---|---:|---:|---:|---:|---:|")
for i, name in enumerate(names):
    r = [x for x in rows if int(x[0]) == i]
    cpu = [float(x[1]) for x in r]
    med = statistics.median(cpu)
    base = base or med
    print(f"| {name} | {med:.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {med/base:.3f}× | "
          f"{statistics.median(float(x[2]) for x in r):,.0f} | {statistics.median(float(x[3]) for x in r):,.0f} | "
          f"{sum(int(x[4]) for x in r)} |")
PY
