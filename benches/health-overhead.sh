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
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp health
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
run_with_and_without gateway "$NODES" "$CHECKS" ""
