#!/usr/bin/env bash
# proxy-cache: one zone shared by every worker vs one zone per worker (`per_worker = true`),
# same memory_size, same request stream: hit rate, upstream requests, CPU per request.
#
#   benches/cache-sharing.sh                       # 2 workers, 3 working sets, 10 s each
#   benches/cache-sharing.sh --duration 3          # smoke
#
# The request stream: 200,000 GETs drawn from N keys with a Zipf(0.9) popularity (h2load -i,
# 8 keep-alive connections), 16 KiB responses from sg-backend, a 64 MiB memory zone. N is
# chosen so the working set fits one zone-per-worker easily (1,000 keys = 16 MiB), barely
# (1,800 keys = 29 MiB, each worker's zone being 32 MiB) and not at all (3,500 keys =
# 56 MiB): a shared zone holds it all three times. Hit rate and stores come from the zone's
# counters (shardgate_cache_*), CPU from /proc (utime+stime of the gateway over the run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=10
WORKERS=2
KEYS="1000 1800 3500"
BIN_DIR=${SG_BIN_DIR:-$ROOT/target/release}
BPORT=18281 SGP=18290 MPORT=18291
while (($#)); do
    case $1 in
        --duration) DURATION=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --keys) KEYS=${2//,/ }; shift 2 ;;
        -h | --help) sed -n 2,16p "$0"; exit 0 ;;
        *) echo "cache-sharing.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v h2load >/dev/null || { echo "cache-sharing.sh: needs h2load (nghttp2-client)" >&2; exit 1; }
[ -x "$BIN_DIR/shardgate" ] || (cd "$ROOT" && cargo build --release --bins)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
CLK_TCK=$(getconf CLK_TCK)
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
counter() { # name labels: from the exporter
    curl -s "http://127.0.0.1:$MPORT/apisix/prometheus/metrics" | awk -v k="$1" '$1 == k {print $2}'
}

"$BIN_DIR/sg-backend" --listen "127.0.0.1:$BPORT" --size 16384 >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_port "$BPORT"

echo "| keys (working set) | zone | hit rate | stored | gateway CPU µs/req | req/s |"
echo "|---|---|---|---|---|---|"
for n in $KEYS; do
    python3 - "$n" "$SGP" >"$WORK/uris" <<'PY'
import random, sys
n, port = int(sys.argv[1]), sys.argv[2]
random.seed(7)
weights = [1 / (i + 1) ** 0.9 for i in range(n)]
for k in random.choices(range(n), weights, k=200000):
    print(f"http://127.0.0.1:{port}/obj/{k}")
PY
    for mode in shared per_worker; do
        cat >"$WORK/sg.toml" <<EOF
[gateway]
listen = ["127.0.0.1:$SGP"]
workers = $WORKERS
access_log = "off"
control_listen = "off"
watch_config = false
[gateway.proxy_cache]
[[gateway.proxy_cache.zones]]
name = "memory_cache"
memory_size = "64m"
per_worker = $([[ $mode == per_worker ]] && echo true || echo false)
[deployment]
config_provider = "file"
[plugin_attr.prometheus]
export_addr = "127.0.0.1:$MPORT"
[[routes]]
uri = "/*"
plugins.proxy-cache = { cache_strategy = "memory", cache_zone = "memory_cache", cache_ttl = 3600 }
upstream = { nodes = { "127.0.0.1:$BPORT" = 1 } }
EOF
        "$BIN_DIR/shardgate" run -c "$WORK/sg.toml" >"$WORK/sg.log" 2>&1 &
        pid=$!
        PIDS+=($pid)
        wait_port "$SGP"
        t0=$(ticks "$pid")
        timeout $((DURATION + 30)) h2load --h1 -c 8 -m 1 -D "$DURATION" -i "$WORK/uris" >"$WORK/h2load.txt" 2>&1 || true
        t1=$(ticks "$pid")
        hits=$(counter 'shardgate_cache_lookups_total{zone="memory_cache",result="hit"}')
        misses=$(counter 'shardgate_cache_lookups_total{zone="memory_cache",result="miss"}')
        stored=$(counter 'shardgate_cache_stored_total{zone="memory_cache"}')
        done_=$(awk '/^requests:/ {print $8}' "$WORK/h2load.txt")
        python3 - "$n" "$mode" "${hits:-0}" "${misses:-0}" "${stored:-0}" "$((t1 - t0))" "$CLK_TCK" "${done_:-0}" "$DURATION" <<'PY'
import sys
n, mode, hits, misses, stored, ticks, hz, done, dur = sys.argv[1:]
hits, misses, done = int(hits), int(misses), int(done)
rate = hits / (hits + misses) if hits + misses else float("nan")
cpu = int(ticks) / int(hz) * 1e6 / done if done else float("nan")
print(f"| {n} ({int(n) * 16 // 1024} MiB) | {mode} | {rate:.1%} | {stored} | {cpu:.1f} | {done / float(dur):.0f} |")
PY
        kill "$pid"; wait "$pid" 2>/dev/null || true
    done
done
