#!/usr/bin/env bash
# Runs the whole test suite: unit tests plus the black-box integration tests (the real
# gateway binary, real backends on 127.0.0.1). This is the command README.md gives and
# .ci/run calls. Any server a test needs is installed and started here, and stopped by PID
# on exit:
# - etcd (Debian's etcd-server, with etcdctl from etcd-client): one server for the run on
#   loopback ports, named to the tests in SHARDGATE_TEST_ETCD (tests that kill or secure a
#   cluster start private ones with the same binary);
# - Redis (Debian's redis-server, with redis-cli from redis-tools): one standalone server and
#   one 3-master Redis Cluster for the run, named in SHARDGATE_TEST_REDIS and
#   SHARDGATE_TEST_REDIS_CLUSTER (tests that kill or pause Redis start private servers);
# - the openssl command, which makes the TLS tests' certificates and is one of their
#   clients (s_client), and curl, another;
# - Prometheus (Debian's prometheus, with promtool): the metrics tests check the exposition
#   with promtool and start one real Prometheus that scrapes a gateway;
# - Chromium (Debian's chromium), headless: the status dashboard's test loads the page in it;
# - nghttp and h2load (Debian's nghttp2-client): HTTP/2 clients;
# - Python peers (tests/py/) on Debian's python3: python3-websockets (WebSocket client and
#   server), python3-h2 (a low-level HTTP/2 client for trailers and abuse cases),
#   python3-grpcio (gRPC client and server).
# Backends are started by the tests themselves, and the comparison script's self-test skips
# its nginx/HAProxy checks when they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests run besides the gateway: command -> Debian package.
missing=()
for need in etcd:etcd-server etcdctl:etcd-client redis-server:redis-server redis-cli:redis-tools \
    openssl:openssl curl:curl prometheus:prometheus promtool:prometheus chromium:chromium \
    nghttp:nghttp2-client h2load:nghttp2-client; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need#*:}")
done
# Python peers (tests/py/): Debian's python3 with its packages, module -> package.
for need in websockets:python3-websockets h2:python3-h2 grpc:python3-grpcio; do
    /usr/bin/python3 -c "import ${need%%:*}" 2>/dev/null || missing+=("${need#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log=$(mktemp)
etcd_dir=$(mktemp -d)
etcd_pid=""
redis_pids=()
cleanup() {
    for pid in $etcd_pid "${redis_pids[@]}"; do
        kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
    done
    rm -rf "$log" "$etcd_dir"
}
trap cleanup EXIT

# The run's etcd, on ports below the kernel's ephemeral range that the tests' free_port()
# never hands out (it picks from 20000-31999).
etcd_client=12379
etcd_peer=12380
etcd --name shardgate-test --data-dir "$etcd_dir/data" --log-level error \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "shardgate-test=http://127.0.0.1:$etcd_peer" >"$etcd_dir/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$etcd_client") 2>/dev/null; then break; fi
    if ! kill -0 "$etcd_pid" 2>/dev/null; then echo "etcd did not start:"; cat "$etcd_dir/etcd.log"; exit 1; fi
    sleep 0.1
done
export SHARDGATE_TEST_ETCD="http://127.0.0.1:$etcd_client"

# The run's Redis: a standalone server on 16379 and a cluster of three masters on
# 16380-16382 (ports outside free_port()'s range too), no persistence.
start_redis() { # port [extra args...]
    local port=$1; shift
    mkdir -p "$etcd_dir/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$etcd_dir/redis-$port" "$@" >"$etcd_dir/redis-$port.log" 2>&1 &
    redis_pids+=($!)
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then return 0; fi
        sleep 0.05
    done
    echo "redis-server on $port did not start:"; cat "$etcd_dir/redis-$port.log"; exit 1
}
start_redis 16379
cluster_nodes=()
for port in 16380 16381 16382; do
    start_redis "$port" --cluster-enabled yes --cluster-config-file "$etcd_dir/redis-$port/nodes.conf"
    cluster_nodes+=("127.0.0.1:$port")
done
redis-cli --cluster create "${cluster_nodes[@]}" --cluster-replicas 0 --cluster-yes >"$etcd_dir/cluster.log" 2>&1 \
    || { echo "redis cluster create failed:"; cat "$etcd_dir/cluster.log"; exit 1; }
for _ in $(seq 1 100); do
    if redis-cli -p 16380 cluster info | grep -q 'cluster_state:ok'; then break; fi
    sleep 0.1
done
export SHARDGATE_TEST_REDIS="127.0.0.1:16379"
export SHARDGATE_TEST_REDIS_CLUSTER="$(IFS=,; echo "${cluster_nodes[*]}")"

# One build profile for everything (release: the tests push 256 MiB through the gateway).
status=0
cargo test --release "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
