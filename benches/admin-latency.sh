#!/usr/bin/env bash
# Admin API change-to-served latency, and traffic while changes stream in (issue #10).
#
#   benches/admin-latency.sh [--provider store|etcd] [--changes 200] [--workers 2]
#                            [--duration 30] [--rate 100] [--repeat 1]
#
# 1. CHANGES route changes through the Admin API, one after another: the time from sending
#    each PUT to its 2xx, which Shardgate sends only once every worker serves the change
#    (with etcd: once the gateway's own watch brought it back and every worker serves it);
#    then a request through the gateway on a new connection must reach the changed route's
#    upstream (counted as a miss otherwise). Prints p50 / p99 / max. With etcd (a private
#    server on loopback ports; Debian's etcd-server), a second gateway watches the same
#    prefix: how long after the 2xx it serves the change too.
# 2. sg-load (64 connections) for DURATION s on a route that is not changed: once alone, once
#    while the change script only reads (RATE GETs per second: its own CPU, without changes),
#    and once while it makes RATE route/upstream changes per second. Failed requests and p99.
#    With --repeat N the three runs are interleaved N times and the median p99s compared.
#
# Layout: the gateway's workers on CPUs 0..WORKERS-1 (unpinned when the machine has fewer),
# backends and load on the last CPU. Loopback only; needs `cargo build --release --bins`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
CHANGES=200 WORKERS=2 DURATION=30 RATE=100 PROVIDER=store REPEAT=1
while [ $# -gt 0 ]; do
    case "$1" in
        --provider) PROVIDER=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --changes) CHANGES=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        -h|--help) sed -n 2,20p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18590}
ADMIN_PORT=${SG_BENCH_ADMIN_PORT:-18591}
BE1=${SG_BENCH_BACKEND_PORT:-18581}
BE2=$((BE1 + 1))
LAST=$(($(nproc) - 1))
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp admin-latency
KEY=bench-admin-key

taskset -c "$LAST" "$BIN/sg-backend" --listen "127.0.0.1:$BE1" --size 64 2>/dev/null &
PIDS+=($!)
taskset -c "$LAST" "$BIN/sg-backend" --listen "127.0.0.1:$BE2" --size 128 2>/dev/null &
PIDS+=($!)
PEER_PORT=$((GW_PORT + 2))
case $PROVIDER in
    store)
        PROVIDER_TOML="config_provider = \"store\"
data_dir = \"$TMP/data\"" ;;
    etcd)
        ETCD_CLIENT=$((GW_PORT + 3)) ETCD_PEER=$((GW_PORT + 4))
        command -v etcd >/dev/null || { echo "etcd is not installed (apt-get install etcd-server)" >&2; exit 1; }
        taskset -c "$LAST" etcd --name bench --data-dir "$TMP/etcd" --log-level error \
            --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
            --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
            --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" 2>"$TMP/etcd.log" &
        PIDS+=($!)
        for _ in $(seq 100); do
            (exec 3<>"/dev/tcp/127.0.0.1/$ETCD_CLIENT") 2>/dev/null && break
            sleep 0.05
        done
        PROVIDER_TOML="config_provider = \"etcd\"
[deployment.etcd]
host = [\"http://127.0.0.1:$ETCD_CLIENT\"]
prefix = \"/bench\"" ;;
    *) echo "--provider is store or etcd" >&2; exit 2 ;;
esac
# gateway_config PORT ADMIN WORKERS: the gateway's config.
gateway_config() {
    cat <<EOT
[gateway]
listen = ["127.0.0.1:$1"]
workers = $3
pin_cores = false
access_log = "off"
watch_config = false
control_listen = "off"
[deployment]
$PROVIDER_TOML
[admin]
listen = "$2"
admin_key = "$KEY"
[[upstreams]]
id = "steady"
nodes = { "127.0.0.1:$BE1" = 1 }
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }
[[routes]]
id = "steady"
uri = "/steady"
upstream_id = "steady"
EOT
}
gateway_config "$GW_PORT" "127.0.0.1:$ADMIN_PORT" "$WORKERS" > "$TMP/gw.toml"
"$BIN/shardgate" run -c "$TMP/gw.toml" 2>"$TMP/gw.log" &
GW=$!
PIDS+=("$GW")
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ADMIN_PORT") 2>/dev/null && break
    sleep 0.05
done
PEER=""
if [ "$PROVIDER" = etcd ]; then
    # The resources live in etcd: the steady route is written once through the API.
    curl -s -o /dev/null -X PUT "127.0.0.1:$ADMIN_PORT/apisix/admin/upstreams/steady" -H "X-API-KEY: $KEY" \
        -d "{\"nodes\":{\"127.0.0.1:$BE1\":1},\"keepalive_pool\":{\"size\":320,\"idle_timeout\":60,\"requests\":100000}}"
    curl -s -o /dev/null -X PUT "127.0.0.1:$ADMIN_PORT/apisix/admin/routes/steady" -H "X-API-KEY: $KEY" \
        -d '{"uri":"/steady","upstream_id":"steady"}'
    gateway_config "$PEER_PORT" off 1 > "$TMP/peer.toml"
    taskset -c "$LAST" "$BIN/shardgate" run -c "$TMP/peer.toml" 2>"$TMP/peer.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PEER_PORT") 2>/dev/null && break
        sleep 0.05
    done
    PEER=$PEER_PORT
fi

echo "## Change to served: $CHANGES route changes, $WORKERS workers, $PROVIDER provider"
taskset -c "$LAST" python3 - "$ADMIN_PORT" "$GW_PORT" "$KEY" "$CHANGES" "$BE1" "$BE2" "$PEER" <<'PY'
import http.client, json, sys, time
admin, gw, key, n, be1, be2, peer = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
a = http.client.HTTPConnection("127.0.0.1", int(admin))
times, lags, misses = [], [], 0
def size_at(port):
    g = http.client.HTTPConnection("127.0.0.1", int(port))
    g.request("GET", "/changing"); gr = g.getresponse()
    n = len(gr.read()); g.close()
    return n
for i in range(n):
    be, size = (be1, 64) if i % 2 == 0 else (be2, 128)
    body = json.dumps({"uri": "/changing", "upstream": {"nodes": {f"127.0.0.1:{be}": 1}}})
    t0 = time.perf_counter()
    a.request("PUT", "/apisix/admin/routes/changing", body, {"X-API-KEY": key})
    r = a.getresponse(); r.read()
    t1 = time.perf_counter()
    times.append((t1 - t0) * 1e3)
    assert r.status in (200, 201), r.status
    if size_at(gw) != size:
        misses += 1
    if peer:
        while size_at(peer) != size:
            if time.perf_counter() - t1 > 5:
                raise SystemExit("the second gateway did not apply a change within 5 s")
        lags.append((time.perf_counter() - t1) * 1e3)
times.sort(); lags.sort()
q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]
print(f"| changes | p50 ms | p99 ms | max ms | served right after the 2xx |" + (" second gateway after the 2xx: p50 / p99 / max ms |" if peer else ""))
print(f"|---:|---:|---:|---:|---:|" + ("---:|" if peer else ""))
print(f"| {n} | {q(times, 0.5):.2f} | {q(times, 0.99):.2f} | {times[-1]:.2f} | {n - misses}/{n} |"
      + (f" {q(lags, 0.5):.2f} / {q(lags, 0.99):.2f} / {lags[-1]:.2f} |" if peer else ""))
PY

echo
echo "## Traffic on an unchanged route, ${DURATION}s, 64 connections: alone, then with $RATE changes/s"
run_load() {
    taskset -c "$LAST" "$BIN/sg-load" --url "http://127.0.0.1:$GW_PORT/steady" -c 64 \
        -d "$DURATION" --quiet --json "$TMP/$1.json" > /dev/null
}
# churn MODE OUT: RATE admin requests per second for DURATION s; MODE "read" GETs, "write" PUTs.
churn() {
    taskset -c "$LAST" python3 - "$ADMIN_PORT" "$KEY" "$RATE" "$DURATION" "$BE1" "$BE2" "$1" > "$2" <<'PY'
import http.client, json, sys, time
admin, key, rate, duration, be1, be2, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
a = http.client.HTTPConnection("127.0.0.1", int(admin))
start, i, failed = time.perf_counter(), 0, 0
while time.perf_counter() - start < duration:
    target = start + i / rate
    now = time.perf_counter()
    if target > now:
        time.sleep(target - now)
    be = be1 if i % 2 == 0 else be2
    kind = "routes" if i % 2 == 0 else "upstreams"
    if kind == "routes":
        body = {"uri": f"/churn/{i % 50}", "upstream": {"nodes": {f"127.0.0.1:{be}": 1}}}
    else:
        body = {"nodes": {f"127.0.0.1:{be}": 1}}
    if mode == "write":
        a.request("PUT", f"/apisix/admin/{kind}/churn{i % 50}", json.dumps(body), {"X-API-KEY": key})
    else:
        a.request("GET", f"/apisix/admin/{kind}", headers={"X-API-KEY": key})
    r = a.getresponse(); r.read()
    failed += r.status not in (200, 201)
    i += 1
print(i, failed)
PY
}
# REPEAT rounds, each: alone, with admin reads, with changes (interleaved, so drift in the
# machine's background load hits all three alike).
for round in $(seq 1 "$REPEAT"); do
    run_load "alone-$round"
    churn read "$TMP/reads-$round.txt" &
    CHURN=$!
    run_load "reads-$round"
    wait "$CHURN"
    churn write "$TMP/changes-$round.txt" &
    CHURN=$!
    run_load "churn-$round"
    wait "$CHURN"
done
python3 - "$TMP" "$REPEAT" "$DURATION" <<'PY'
import json, statistics, sys
tmp, rounds, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
print("| round | run | req/s | p50 / p99 / p99.9 µs | failed requests | changes made |")
print("|---|---|---:|---:|---:|---:|")
p99 = {"alone": [], "reads": [], "churn": []}
for r in range(1, rounds + 1):
    for name, label in (("alone", "no changes"), ("reads", "admin reads, no changes"), ("churn", "changes streaming in")):
        d = json.load(open(f"{tmp}/{name}-{r}.json"))
        p99[name].append(d["p99_us"])
        changes = "-"
        if name == "churn":
            made, failed = map(int, open(f"{tmp}/changes-{r}.txt").read().split())
            changes = f"{made} ({made / duration:.0f}/s, {failed} refused)"
        print(f"| {r} | {label} | {d['rps']:,.0f} | {d['p50_us']:,.0f} / {d['p99_us']:,.0f} / {d['p999_us']:,.0f} | {d['errors']} | {changes} |")
if rounds > 1:
    m = {k: statistics.median(v) for k, v in p99.items()}
    print()
    print(f"Median p99 over {rounds} rounds: no changes {m['alone']:,.0f} µs, admin reads {m['reads']:,.0f} µs, "
          f"changes {m['churn']:,.0f} µs ({m['churn'] / m['alone']:.2f}× no changes, {m['churn'] / m['reads']:.2f}× reads)")
PY
