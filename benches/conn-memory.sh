#!/usr/bin/env bash
# Memory per client connection: Shardgate, nginx and HAProxy holding N connections in one
# state, side by side.
#
#   benches/conn-memory.sh                          # all modes, all proxies, as many conns as allowed
#   benches/conn-memory.sh --conns 8000 --modes idle,half --targets shardgate,nginx
#   SG_BIN=/tmp/old/shardgate benches/conn-memory.sh --targets shardgate   # another build
#
# For every mode and proxy: start the proxy (2 workers, long timeouts so nothing closes
# during the measurement) in front of one backend (benches/conn_hold.py backend), send a few
# requests through it so its pools and allocator are warm, read its resident set (VmRSS,
# summed over the proxy's processes: nginx's master and workers), open N connections with
# benches/conn_hold.py client and bring each to the mode's state, wait 2 s, read the resident
# set again, and report (after - before) / N in KiB. Modes (see conn_hold.py):
#   fresh   accepted and silent;   idle    between two requests of a keep-alive connection;
#   half    half a request head received;   active  a request waiting for the backend's
#   response (then every client connection also holds one upstream connection, so N is
#   halved to stay within the descriptor limit);   ws      a quiet WebSocket (upgraded,
#   nothing sent either way; N halved too).
# What the kernel keeps per socket (its buffers) is not in a process's RSS and is the same
# for every proxy; the table counts what the proxy itself keeps.
#
# tls-fresh, tls-idle, tls-half: the same over TLS (the proxy terminates it with an ECDSA
# P-256 certificate made for the run; TLS 1.3; `tls-fresh` is a completed handshake and no
# request yet), tls-active (N halved as for active); tls-h2: an idle HTTP/2 connection over
# TLS (h2 by ALPN, one GET answered).
# Not in the default set: ask for them with --modes.
#
# Limits: the script raises its soft descriptor limit to the hard one (which every process it
# starts inherits) and uses N = hard limit - 2000 by default, at most 15000 per run (every
# proxy holds N client sockets and, in mode active, N upstream ones). tuning/limits.sh raises
# the hard limit on a real host. HAProxy refuses to start unless the limit covers two
# descriptors per `maxconn`, so it is measured with at most (hard limit - 200) / 2
# connections (the table says how many each proxy held). Every process it starts is killed
# by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODES="fresh idle half active ws"
TARGETS="shardgate nginx haproxy"
CONNS=""
WORKERS=2
OUT=""
SG_BIN=${SG_BIN:-$ROOT/target/release/shardgate}
PY=/usr/bin/python3
PROXY_PORT=${SG_BENCH_PROXY_PORT:-18190}
BACKEND_PORT=${SG_BENCH_BACKEND_PORT:-18191}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    echo "Options: --conns N, --modes LIST, --targets LIST, --workers N (2), --out FILE (markdown table)"
}
while (($#)); do
    case $1 in
        --conns) CONNS=${2:?}; shift 2 ;;
        --modes) MODES=${2//,/ }; shift 2 ;;
        --targets) TARGETS=${2//,/ }; shift 2 ;;
        --workers) WORKERS=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "conn-memory.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

hard=$(ulimit -Hn)
ulimit -Sn "$hard"
if [ -z "$CONNS" ]; then
    CONNS=$((hard - 2000))
    ((CONNS > 15000)) && CONNS=15000
fi
echo "== descriptor limit $hard (soft raised to it); $CONNS connections per run ($((CONNS / 2)) in modes active and ws); $WORKERS workers" >&2

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ -f "$tmp/nginx.pid" ]; then kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

rss_tree() { # pid: VmRSS in KiB of the process and its children
    local total=0 p
    for p in $1 $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "conn-memory.sh: nothing listens on port $1" >&2
    return 1
}

# The certificate of the tls-* modes, made once when one is asked for.
cert=$tmp/tls.pem key=$tmp/tls.key
case " $MODES " in
    *" tls-"*)
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
            -keyout "$key" -out "$cert" -subj /CN=localhost \
            -addext subjectAltName=DNS:localhost 2>/dev/null
        cat "$cert" "$key" >"$tmp/tls-combined.pem"
        ;;
esac

start_proxy() { # target conns tls (0, 1, or 2: TLS with h2 offered) -> pid on stdout
    local n=$2 tls=$3 sg_listen="listen = [\"127.0.0.1:$PROXY_PORT\"]" sg_ssl="" ngx_ssl="" hap_ssl=""
    if ((tls)); then
        sg_listen="listen = [\"127.0.0.1:$((PROXY_PORT + 2))\"]"$'\n'"listen_tls = [\"127.0.0.1:$PROXY_PORT\"]"
        sg_ssl=$'[[ssls]]\nid = "bench"\nsnis = ["localhost"]\n'"cert = '''$(cat "$cert")'''"$'\n'"key = '''$(cat "$key")'''"
        ngx_ssl="ssl; ssl_certificate $cert; ssl_certificate_key $key"
        hap_ssl="ssl crt $tmp/tls-combined.pem"
        if ((tls == 2)); then # Shardgate offers h2 by ALPN whenever it terminates TLS
            ngx_ssl="ssl http2; ssl_certificate $cert; ssl_certificate_key $key"
            hap_ssl+=" alpn h2,http/1.1"
        fi
    fi
    case $1 in
        shardgate)
            cat >"$tmp/sg.toml" <<EOT
[gateway]
$sg_listen
workers = $WORKERS
access_log = "off"
watch_config = false
keepalive_timeout = 600
client_header_timeout = 600
graceful_shutdown_timeout = 1

[[upstreams]]
id = "b"
nodes = { "127.0.0.1:$BACKEND_PORT" = 1 }
timeout = { connect = 5, send = 600, read = 600 }

[[routes]]
uri = "/*"
upstream_id = "b"
enable_websocket = true
$sg_ssl

# Resources from this file, not from a store an earlier run left under ./data.
[deployment]
config_provider = "file"
EOT
            "$SG_BIN" run -c "$tmp/sg.toml" >"$tmp/sg.log" 2>&1 &
            echo $!
            ;;
        nginx)
            cat >"$tmp/nginx.conf" <<EOT
worker_processes $WORKERS;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
daemon off;
events { worker_connections $((CONNS * 2 + 1000)); }
http {
    access_log off;
    client_body_temp_path $tmp/nginx-body;
    proxy_temp_path $tmp/nginx-proxy;
    fastcgi_temp_path $tmp/nginx-fcgi;
    uwsgi_temp_path $tmp/nginx-uwsgi;
    scgi_temp_path $tmp/nginx-scgi;
    keepalive_timeout 600s;
    keepalive_requests 100000;
    client_header_timeout 600s;
    map \$http_upgrade \$upgrade_or_keepalive { default upgrade; "" ""; }
    upstream b { server 127.0.0.1:$BACKEND_PORT; keepalive 320; }
    server {
        listen 127.0.0.1:$PROXY_PORT reuseport $ngx_ssl;
        location / {
            proxy_pass http://b;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$upgrade_or_keepalive;
            proxy_read_timeout 600s;
        }
    }
}
EOT
            nginx -c "$tmp/nginx.conf" -e "$tmp/nginx-error.log" >"$tmp/nginx.out" 2>&1 &
            echo $!
            ;;
        haproxy)
            cat >"$tmp/haproxy.cfg" <<EOT
global
    nbthread $WORKERS
    maxconn $n
    tune.bufsize 16384
defaults
    mode http
    option http-keep-alive
    http-reuse always
    maxconn $n
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-request 600s
    timeout http-keep-alive 600s
frontend fe
    bind 127.0.0.1:$PROXY_PORT $hap_ssl
    default_backend be
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOT
            haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
            echo $!
            ;;
        *) echo "conn-memory.sh: unknown target $1" >&2; return 1 ;;
    esac
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

results=()
for mode in $MODES; do
    n=$CONNS
    tls=0 scheme=http client_mode=$mode tls_arg=()
    case $mode in
        active | ws) n=$((CONNS / 2)) ;;
        tls-fresh | tls-idle | tls-half) tls=1 scheme=https client_mode=${mode#tls-} tls_arg=(--tls) ;;
        tls-active) n=$((CONNS / 2)) tls=1 scheme=https client_mode=active tls_arg=(--tls) ;;
        tls-h2) tls=2 scheme=https client_mode=h2 tls_arg=(--tls) ;;
    esac
    hold=()
    [ "$client_mode" = active ] && hold=(--hold)
    "$PY" "$ROOT/benches/conn_hold.py" backend --addr "127.0.0.1:$BACKEND_PORT" "${hold[@]}" &
    backend=$!
    pids+=("$backend")
    wait_port "$BACKEND_PORT"
    for target in $TARGETS; do
        command -v "$target" >/dev/null || [ "$target" = shardgate ] || {
            echo "== $target not installed: skipped" >&2
            continue
        }
        nt=$n
        if [ "$target" = haproxy ] && ((nt > (hard - 200) / 2)); then
            nt=$(((hard - 200) / 2))
        fi
        proxy=$(start_proxy "$target" "$nt" "$tls")
        pids+=("$proxy")
        wait_port "$PROXY_PORT"
        # Warm: requests through every worker (new connections land on both), when the backend
        # answers at all.
        if [ "$client_mode" != active ]; then
            for _ in $(seq 1 50); do
                curl -sk -o /dev/null --resolve "localhost:$PROXY_PORT:127.0.0.1" \
                    "$scheme://localhost:$PROXY_PORT/warm" || true
            done
        fi
        sleep 1
        before=$(rss_tree "$proxy")
        rm -f "$tmp/ready"
        "$PY" "$ROOT/benches/conn_hold.py" client --addr "127.0.0.1:$PROXY_PORT" \
            --conns "$nt" --mode "$client_mode" "${tls_arg[@]}" --ready "$tmp/ready" &
        client=$!
        pids+=("$client")
        for _ in $(seq 1 600); do
            [ -s "$tmp/ready" ] && break
            sleep 0.1
        done
        status=$(cat "$tmp/ready" 2>/dev/null || echo "failed: no answer")
        sleep "${SG_SETTLE:-2}"
        after=$(rss_tree "$proxy")
        stop "$client"
        stop "$proxy"
        if [ -f "$tmp/nginx.pid" ]; then rm -f "$tmp/nginx.pid"; fi
        case $status in
            ready*)
                held=${status#ready }
                per=$(awk -v a="$after" -v b="$before" -v n="$held" 'BEGIN { printf "%.2f", (a - b) / n }')
                ;;
            *) held=0; per="($status)" ;;
        esac
        echo "$mode $target conns=$held rss_before=${before}KiB rss_after=${after}KiB per_conn=${per}KiB" >&2
        results+=("| $mode | $target | $held | $before | $after | $per |")
        sleep 1
    done
    stop "$backend"
done

table="| mode | proxy | connections | RSS before (KiB) | RSS after (KiB) | KiB per connection |
|---|---|---|---|---|---|
$(printf '%s\n' "${results[@]}")"
echo "$table"
if [ -n "$OUT" ]; then echo "$table" >"$OUT"; fi
