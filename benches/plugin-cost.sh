#!/usr/bin/env bash
# Measures what plugins cost the request path: the same small keep-alive load through a
# route without plugins and through the same route with a set of plugins, interleaved over
# rounds. Prints the median CPU µs per request of the gateway, req/s and p50 / p99 / p99.9
# for each. Sets (--set):
#   typical     request-id, cors, ip-restriction, proxy-rewrite (one header set) and
#               response-rewrite (one header set) on the route (the default)
#   prometheus  the prometheus plugin as a global rule (every request recorded)
#   otel-1      opentelemetry as a global rule, always_on (every request a span)
#   otel-0.01   opentelemetry as a global rule, trace_id_ratio 0.01
#   http-logger http-logger as a global rule, every request an entry (batches of 1000)
#   auth-limit  key-auth (one consumer) + limit-count (local, never reached) on the route,
#               issue #12's pair; both variants' requests carry the API key
# The collector and the log sink are a second sg-backend (on CPU 1), answering 200.
#
#   benches/plugin-cost.sh [--set NAME] [--rounds 5] [--duration 4]
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1. Loopback only;
# every run is bounded by --duration. Needs `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=5 DURATION=4 SET=typical
while [ $# -gt 0 ]; do
    case "$1" in
        --set) SET=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
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
case $SET in
    typical)
        PLUGINS='[routes.plugins.request-id]
[routes.plugins.cors]
[routes.plugins.ip-restriction]
whitelist = ["127.0.0.0/8"]
[routes.plugins.proxy-rewrite]
headers = { set = { X-Via = "shardgate" } }
[routes.plugins.response-rewrite]
headers = { set = { X-Served-By = "shardgate" } }'
        NAMES=("route without plugins" "request-id, cors, ip-restriction, proxy-rewrite, response-rewrite") ;;
    prometheus)
        PLUGINS="[[global_rules]]
id = \"metrics\"
plugins.prometheus = {}
[plugin_attr.prometheus]
export_addr = \"127.0.0.1:$((GW_PORT + 1))\""
        NAMES=("no plugins" "prometheus as a global rule") ;;
    otel-1 | otel-0.01)
        if [ "$SET" = otel-1 ]; then
            SAMPLER='{ name = "always_on" }'
        else
            SAMPLER='{ name = "trace_id_ratio", options = { fraction = 0.01 } }'
        fi
        PLUGINS="[[global_rules]]
id = \"tracing\"
plugins.opentelemetry = { sampler = $SAMPLER }
[plugin_attr.opentelemetry]
collector = { address = \"127.0.0.1:$((BE_PORT + 1))\" }"
        NAMES=("no plugins" "opentelemetry ($SET) as a global rule") ;;
    http-logger)
        PLUGINS="[[global_rules]]
id = \"logs\"
plugins.http-logger = { uri = \"http://127.0.0.1:$((BE_PORT + 1))/logs\", batch_max_size = 1000, inactive_timeout = 1 }"
        NAMES=("no plugins" "http-logger as a global rule") ;;
    auth-limit)
        PLUGINS='plugins.key-auth = {}
plugins.limit-count = { count = 1000000000, time_window = 60 }
[[consumers]]
username = "bench"
plugins.key-auth = { key = "bench-key" }'
        LOAD_EXTRA="-H apikey:bench-key"
        NAMES=("route without plugins" "key-auth + limit-count (local)") ;;
    *) echo "unknown set $SET (typical, prometheus, otel-1, otel-0.01, http-logger, auth-limit)" >&2; exit 2 ;;
esac
if [ "$SET" != typical ] && [ "$SET" != prometheus ] && [ "$SET" != auth-limit ]; then
    taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$((BE_PORT + 1))" --size 0 2>/dev/null &
    PIDS+=("$!")
fi
run_with_and_without route "{ \"127.0.0.1:$BE_PORT\" = 1 }" "" "$PLUGINS"
