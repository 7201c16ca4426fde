#!/usr/bin/env bash
# Measures what a typical set of plugins costs the request path: the same small keep-alive
# load through a route without plugins and through the same route with request-id, cors,
# ip-restriction, proxy-rewrite (one header set) and response-rewrite (one header set),
# interleaved over rounds. Prints the median CPU µs per request of the gateway, req/s and
# p50 / p99 / p99.9 for each.
#
#   benches/plugin-cost.sh [--rounds 5] [--duration 4]
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1. Loopback only;
# every run is bounded by --duration. Needs `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=5 DURATION=4
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        -h|--help) sed -n 2,12p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18690}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18681}
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp plugins
taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$BE_PORT" --size 64 2>/dev/null &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
sleep 0.3
PLUGINS='[routes.plugins.request-id]
[routes.plugins.cors]
[routes.plugins.ip-restriction]
whitelist = ["127.0.0.0/8"]
[routes.plugins.proxy-rewrite]
headers = { set = { X-Via = "shardgate" } }
[routes.plugins.response-rewrite]
headers = { set = { X-Served-By = "shardgate" } }'
NAMES=("route without plugins" "request-id, cors, ip-restriction, proxy-rewrite, response-rewrite")
run_with_and_without route "{ \"127.0.0.1:$BE_PORT\" = 1 }" "" "$PLUGINS"
