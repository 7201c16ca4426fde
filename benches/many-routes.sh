#!/usr/bin/env bash
# 10,000 routes (issue #10): the data plane's CPU per request with a large route table
# against a one-route config, and what one route change costs the control plane then.
#
#   benches/many-routes.sh [--routes 10000] [--rounds 5] [--duration 4] [--changes 20]
#
# The large config: ROUTES routes, half exact paths (/api/v1/items/N), 40% prefixes
# (/svc/N/*), 10% catch-alls on their own hosts (hN.example.com), plus the catch-all the load
# hits. Requests go to "/", so the router looks past every one of them. Then the same table
# in the store provider: CHANGES route PUTs through the Admin API, one after another, each
# answered once every worker serves it (a full recompilation today).
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUTES=10000 ROUNDS=5 DURATION=4 CHANGES=20
while [ $# -gt 0 ]; do
    case "$1" in
        --routes) ROUTES=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        -h|--help) sed -n 2,14p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18890}
ADMIN_PORT=${SG_BENCH_ADMIN_PORT:-18891}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18881}
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp many-routes
taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$BE_PORT" --size 64 2>/dev/null &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
sleep 0.3

# config FILE ROUTES [EXTRA]: the gateway section, one upstream, ROUTES generated routes and
# the catch-all.
config() {
    python3 - "$GW_PORT" "$BE_PORT" "$2" "${3:-}" > "$1" <<'PY'
import sys
gw, be, n, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print(f'''[gateway]
listen = ["127.0.0.1:{gw}"]
workers = 1
cpus = [0]
access_log = "off"
watch_config = false
control_listen = "off"
{extra}
[[upstreams]]
id = "b"
nodes = {{ "127.0.0.1:{be}" = 1 }}
keepalive_pool = {{ size = 320, idle_timeout = 60, requests = 100000 }}
[[routes]]
id = "catch-all"
uri = "/*"
upstream_id = "b"''')
for i in range(n):
    if i % 10 < 5:
        route = f'uri = "/api/v1/items/{i}"'
    elif i % 10 < 9:
        route = f'uri = "/svc/{i}/*"'
    else:
        route = f'uri = "/*"\nhosts = ["h{i}.example.com"]'
    print(f'[[routes]]\nid = "r{i}"\n{route}\nupstream_id = "b"')
PY
}
config "$TMP/one.toml" 0
config "$TMP/many.toml" "$ROUTES"
: > "$TMP/results.tsv"
for _ in $(seq 1 "$ROUNDS"); do
    measure_variant 0 "$TMP/one.toml" "$GW_PORT"
    measure_variant 1 "$TMP/many.toml" "$GW_PORT"
done
NAMES=("1 route" "$((ROUTES + 1)) routes")
print_variants routes "${NAMES[@]}"

echo
echo "## One route change with $((ROUTES + 1)) routes (store provider, Admin API)"
config "$TMP/store.toml" "$ROUTES" "[deployment]
config_provider = \"store\"
data_dir = \"$TMP/data\"
[admin]
listen = \"127.0.0.1:$ADMIN_PORT\"
admin_key = \"bench\""
"$BIN/shardgate" run -c "$TMP/store.toml" 2>"$TMP/gw.log" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null && break
    sleep 0.1
done
python3 - "$ADMIN_PORT" "$CHANGES" "$BE_PORT" "$GW" "$CLK" <<'PY'
import http.client, json, sys, time
port, n, be, gw, clk = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
cpu = lambda: sum(int(x) for x in open(f"/proc/{gw}/stat").read().rsplit(")", 1)[1].split()[11:13]) / clk
a = http.client.HTTPConnection("127.0.0.1", port)
times = []
c0 = cpu()
for i in range(n):
    body = json.dumps({"uri": f"/changed/{i}", "upstream_id": "b"})
    t0 = time.perf_counter()
    a.request("PUT", "/apisix/admin/routes/r7", body, {"X-API-KEY": "bench"})
    r = a.getresponse(); r.read()
    assert r.status == 200, (r.status, r.read())
    times.append((time.perf_counter() - t0) * 1e3)
c1 = cpu()
times.sort()
print("| changes | p50 ms | max ms | gateway CPU per change ms |")
print("|---:|---:|---:|---:|")
print(f"| {n} | {times[len(times) // 2]:.1f} | {times[-1]:.1f} | {(c1 - c0) / n * 1e3:.1f} |")
PY
