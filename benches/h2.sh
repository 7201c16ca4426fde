#!/usr/bin/env bash
# HTTP/2 and gRPC at the proxy: Shardgate vs nginx vs HAProxy, same load, same cores.
#
#   benches/h2.sh                      # 3 rounds x 10 s, scenarios h2-small h2-16k grpc-unary
#   benches/h2.sh --rounds 1 --duration 3    # smoke
#
# h2-small / h2-16k: h2load over TLS (h2 by ALPN, TLS 1.3) with C connections x M streams
# each, GET of a 64 B / 16 KiB response from sg-backend (HTTP/1.1 keep-alive upstream) through
# each proxy: Shardgate, nginx (`listen ... ssl http2`, proxy_pass with keepalive) and HAProxy
# (`alpn h2,http/1.1`, http-reuse always). grpc-unary: h2load over h2c posting one gRPC
# message (application/grpc, te: trailers) to a Python grpcio echo server, directly, through
# Shardgate (scheme = "grpc") and through nginx (grpc_pass); HAProxy is left out of it.
# gzip-16k (not in the default list): HTTP/1.1 over plain TCP (h2load --h1, one request at
# a time per connection) with `Accept-Encoding: gzip`, a 16 KiB JSON response
# (`sg-backend --json`) compressed at level 1 by each proxy: Shardgate's gzip plugin,
# nginx's `gzip on` (gzip_comp_level 1, gzip_proxied any), HAProxy's `compression algo gzip`.
# gzip2-16k: the same with Shardgate at comp_level 2, whose output (3,023 B) is smaller than
# nginx's at level 1 (3,374 B; Shardgate's level 1, zlib-rs's fastest strategy, gives 4,523 B).
# br-16k / zstd-16k: Shardgate alone (stock nginx and HAProxy have neither) with brotli and
# zstd at level 1 (2,816 B and 2,375 B).
# cache-mem-64 / cache-mem-16k / cache-disk-64 / cache-disk-16k (not in the default list): the
# same HTTP/1.1 load against a cached response (every measured request a HIT): Shardgate's
# proxy-cache on its memory zone or its disk zone, nginx's proxy_cache (files, keys_zone,
# `$upstream_cache_status` added as a header as APISIX does), HAProxy's `cache` (memory).
#
# Requests per connection are unbounded for both (Shardgate's max_requests, nginx's
# keepalive_requests: 1000 by default, after which h2load, which does not reconnect, stops).
# Each proxy runs one worker pinned to CPU 0; the backend and h2load share CPU 1. CPU per
# request is the proxy's utime+stime (process and children, from /proc) over the measured
# run divided by the requests completed; p50/p99/p99.9 come from h2load's per-request log.
# Every process started is recorded and killed by PID on exit. Loopback only; runs are
# bounded by h2load -D and a `timeout`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=3
DURATION=10
CONNS=8
STREAMS=16
SCENARIOS="h2-small h2-16k grpc-unary"
TARGETS="shardgate nginx haproxy"
OUT=""
BIN_DIR=${SG_BIN_DIR:-$ROOT/target/release}
BPORT=18181 GPORT=18182 SGP=18190 NGP=18191 HAP=18192

while (($#)); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --streams) STREAMS=$2; shift 2 ;;
        --scenarios) SCENARIOS=${2//,/ }; shift 2 ;;
        --targets) TARGETS=${2//,/ }; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h | --help) sed -n 2,20p "$0"; exit 0 ;;
        *) echo "h2.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-$ROOT/benches/results/h2-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT/logs"
WORK=$(mktemp -d)
# nginx's workers (user nobody when started as root) write its proxy_cache files.
chmod 755 "$WORK" && mkdir -m 777 "$WORK/ngx-cache"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        pkill -P "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
CLK_TCK=$(getconf CLK_TCK)

for need in h2load nginx haproxy; do
    command -v "$need" >/dev/null || { echo "h2.sh: needs $need (nghttp2-client, nginx, haproxy)" >&2; exit 1; }
done
[ -x "$BIN_DIR/shardgate" ] || (cd "$ROOT" && cargo build --release --bins)

# One ECDSA P-256 certificate for every proxy.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/key.pem" \
    -out "$WORK/cert.pem" -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/both.pem"

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }
start() { # log cmd...: starts in the background, records the PID
    local log=$1; shift
    "$@" >"$log" 2>&1 &
    PIDS+=($!)
    STARTED=$!
}
cpu_ticks() { # utime+stime of PID and its children
    local total=0 f
    for f in "/proc/$1/stat" $(for c in $(pgrep -P "$1"); do echo "/proc/$c/stat"; done); do
        [ -r "$f" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "$f")))
    done
    echo "$total"
}

sg_config() { # scenario
    local up="nodes = { \"127.0.0.1:$BPORT\" = 1 }"
    [[ $1 == grpc-unary ]] && up="scheme = \"grpc\", nodes = { \"127.0.0.1:$GPORT\" = 1 }"
    cat <<EOF
[gateway]
listen = ["127.0.0.1:$SGP"]
listen_tls = ["127.0.0.1:$((SGP + 100))"]
workers = 1
pin_cores = false
access_log = "off"
control_listen = "off"
watch_config = false
[gateway.http2]
h2c = true
max_requests = 1000000000
$(sg_cache_zones "$1")
[deployment]
config_provider = "file"
[plugin_attr.prometheus]
enable_export_server = false
[[ssls]]
id = "s"
snis = ["localhost"]
cert = '''$(cat "$WORK/cert.pem")'''
key = '''$(cat "$WORK/key.pem")'''
[[routes]]
uri = "/*"
upstream = { $up }
$([[ $1 == gzip-16k ]] && echo 'plugins.gzip = { types = ["application/json"], comp_level = 1 }')
$([[ $1 == gzip2-16k ]] && echo 'plugins.gzip = { types = ["application/json"], comp_level = 2 }')
$([[ $1 == br-16k ]] && echo 'plugins.brotli = { types = ["application/json"], comp_level = 1 }')
$([[ $1 == zstd-16k ]] && echo 'plugins.zstd = { types = ["application/json"], comp_level = 1 }')
$([[ $1 == cache-mem-* ]] && echo 'plugins.proxy-cache = { cache_strategy = "memory", cache_zone = "memory_cache", cache_ttl = 3600 }')
$([[ $1 == cache-disk-* ]] && echo 'plugins.proxy-cache = {}')
EOF
}

sg_cache_zones() { # scenario
    [[ $1 == cache-* ]] || return 0
    cat <<EOF
[gateway.proxy_cache]
cache_ttl = "1h"
[[gateway.proxy_cache.zones]]
name = "disk_cache_one"
memory_size = "16m"
disk_size = "256m"
disk_path = "$WORK/sg-cache"
cache_levels = "1:2"
[[gateway.proxy_cache.zones]]
name = "memory_cache"
memory_size = "64m"
EOF
}

nginx_config() {
    cat <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    upstream b { server 127.0.0.1:$BPORT; keepalive 64; }
    upstream g { server 127.0.0.1:$GPORT; keepalive 64; }
    proxy_cache_path $WORK/ngx-cache levels=1:2 keys_zone=one:16m max_size=256m inactive=1d use_temp_path=off;
    server {
        listen 127.0.0.1:$((NGP + 100)) ssl http2;
        listen 127.0.0.1:$NGP http2;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /test.Echo/ { grpc_pass grpc://g; }
    }
    server {
        listen 127.0.0.1:$((NGP + 200));
        gzip on;
        gzip_comp_level 1;
        gzip_types application/json;
        gzip_proxied any;
        gzip_min_length 20;
        location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    server {
        listen 127.0.0.1:$((NGP + 300));
        proxy_cache one;
        proxy_cache_key \$host\$request_uri;
        proxy_cache_valid 200 1h;
        add_header Apisix-Cache-Status \$upstream_cache_status;
        location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
}

haproxy_config() {
    cat <<EOF
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend f
    bind 127.0.0.1:$((HAP + 100)) ssl crt $WORK/both.pem alpn h2,http/1.1
    default_backend b
frontend plain
    bind 127.0.0.1:$((HAP + 200))
    compression algo gzip
    compression type application/json
    default_backend b
frontend cached
    bind 127.0.0.1:$((HAP + 300))
    http-request cache-use c
    http-response cache-store c
    default_backend b
cache c
    total-max-size 64
    max-object-size 1048576
    max-age 3600
backend b
    server s1 127.0.0.1:$BPORT
EOF
}

start_target() { # target scenario
    case $1 in
        shardgate)
            sg_config "$2" >"$WORK/sg.toml"
            start "$OUT/logs/sg.log" taskset -c 0 "$BIN_DIR/shardgate" run -c "$WORK/sg.toml"
            wait_port $((SGP + 100)) ;;
        nginx)
            nginx_config >"$WORK/nginx.conf"
            start "$OUT/logs/nginx.log" taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK"
            wait_port $((NGP + 100)) ;;
        haproxy)
            haproxy_config >"$WORK/haproxy.cfg"
            start "$OUT/logs/haproxy.log" taskset -c 0 haproxy -f "$WORK/haproxy.cfg"
            wait_port $((HAP + 100)) ;;
        direct) STARTED="" ;;
    esac
}

url_for() { # target scenario
    local path=/bench
    [[ $2 == grpc-unary ]] && path=/test.Echo/Unary
    case $1,$2 in
        direct,grpc-unary) echo "http://127.0.0.1:$GPORT$path" ;;
        shardgate,*-16k) [[ $2 == h2-16k ]] && echo "https://localhost:$((SGP + 100))$path" || echo "http://127.0.0.1:$SGP$path" ;;
        nginx,gzip*-16k) echo "http://127.0.0.1:$((NGP + 200))$path" ;;
        haproxy,gzip*-16k) echo "http://127.0.0.1:$((HAP + 200))$path" ;;
        shardgate,cache-*) echo "http://127.0.0.1:$SGP$path" ;;
        nginx,cache-*) echo "http://127.0.0.1:$((NGP + 300))$path" ;;
        haproxy,cache-*) echo "http://127.0.0.1:$((HAP + 300))$path" ;;
        shardgate,grpc-unary) echo "http://127.0.0.1:$SGP$path" ;;
        nginx,grpc-unary) echo "http://127.0.0.1:$NGP$path" ;;
        shardgate,*) echo "https://localhost:$((SGP + 100))$path" ;;
        nginx,*) echo "https://localhost:$((NGP + 100))$path" ;;
        haproxy,*) echo "https://localhost:$((HAP + 100))$path" ;;
    esac
}

# A gRPC message: flag 0, 4-byte length, 16 payload bytes.
printf '\x00\x00\x00\x00\x10abcdefghijklmnop' >"$WORK/msg.bin"

echo "| scenario | target | req/s | p50 ms | p99 ms | p99.9 ms | proxy CPU µs/req |" >"$OUT/rows.md"
echo "|---|---|---|---|---|---|---|" >>"$OUT/rows.md"
for scen in $SCENARIOS; do
    size=64; [[ $scen == h2-16k || $scen == cache-*-16k ]] && size=16384
    if [[ $scen == grpc-unary ]]; then
        start "$OUT/logs/grpc.log" taskset -c 1 /usr/bin/python3 "$ROOT/tests/py/grpcpeer.py" serve bench
        BACKEND_PID=$STARTED
        GPORT=$(for _ in $(seq 1 100); do p=$(head -1 "$OUT/logs/grpc.log" 2>/dev/null); [ -n "$p" ] && { echo "$p"; break; }; sleep 0.05; done)
        targets="direct shardgate nginx"
    else
        json=(); [[ $scen == gzip*-16k || $scen == br-16k || $scen == zstd-16k ]] && { size=16384; json=(--json); }
        start "$OUT/logs/backend.log" taskset -c 1 "$BIN_DIR/sg-backend" --listen "127.0.0.1:$BPORT" --size "$size" "${json[@]}"
        BACKEND_PID=$STARTED
        wait_port "$BPORT"
        targets=$TARGETS
    fi
    for round in $(seq 1 "$ROUNDS"); do
        for t in $targets; do
            [[ $scen == grpc-unary && $t == haproxy ]] && continue
            [[ ($scen == br-16k || $scen == zstd-16k) && $t != shardgate ]] && continue
            start_target "$t" "$scen"
            pid=$STARTED
            url=$(url_for "$t" "$scen")
            extra=()
            [[ $scen == grpc-unary ]] && extra=(-d "$WORK/msg.bin" -H "content-type: application/grpc" -H "te: trailers")
            m=$STREAMS
            [[ $scen == gzip*-16k ]] && { extra=(--h1 -H "accept-encoding: gzip"); m=1; }
            [[ $scen == br-16k ]] && { extra=(--h1 -H "accept-encoding: br"); m=1; }
            [[ $scen == zstd-16k ]] && { extra=(--h1 -H "accept-encoding: zstd"); m=1; }
            [[ $scen == cache-* ]] && { extra=(--h1); m=1; }
            # Warm-up, then the measured run.
            timeout 30 taskset -c 1 h2load -c "$CONNS" -m "$m" -D 1 "${extra[@]}" "$url" >/dev/null 2>&1 || true
            before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
            log="$OUT/logs/$scen-$t-$round.tsv"
            timeout $((DURATION + 30)) taskset -c 1 h2load -c "$CONNS" -m "$m" -D "$DURATION" \
                --log-file="$log" "${extra[@]}" "$url" >"$OUT/logs/$scen-$t-$round.txt" 2>&1 || true
            after=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
            python3 - "$log" "$((after - before))" "$CLK_TCK" "$DURATION" "$scen" "$t" >>"$OUT/rows.md" <<'PY'
import sys
log, ticks, hz, dur, scen, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
lat = sorted(int(l.split("\t")[2]) for l in open(log) if l.count("\t") >= 2 and l.split("\t")[1].startswith("2"))
n = len(lat)
q = lambda p: lat[min(n - 1, int(p * n))] / 1000 if n else float("nan")
cpu = ticks / hz * 1e6 / n if n and ticks else float("nan")
print(f"| {scen} | {t} | {n / dur:.0f} | {q(0.5):.2f} | {q(0.99):.2f} | {q(0.999):.2f} | {cpu:.1f} |")
PY
            if [ -n "$pid" ]; then pkill -P "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
        done
    done
    kill "$BACKEND_PID" 2>/dev/null || true; wait "$BACKEND_PID" 2>/dev/null || true
done
cat "$OUT/rows.md"
