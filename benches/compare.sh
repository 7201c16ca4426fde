#!/usr/bin/env bash
# shellcheck disable=SC2015  # `a && b || c` is meant as written throughout
# Shardgate vs nginx vs HAProxy (and the backend directly), same load, same cores.
#
#   benches/compare.sh                 # full run: 3 rounds x 10 s, all scenarios, workers 1 and 2
#   benches/compare.sh --quick         # smoke: 1 round x 3 s
#   benches/compare.sh --dry-run       # print every command it would run; starts nothing
#   benches/compare.sh --scenarios lb-rr,lb-leastconn,lb-chash,lb-ewma   # one per balancer
#
# One run: builds the release binaries (once), installs nginx and HAProxy from the
# distribution's packages if missing, then for every scenario and worker count starts one
# backend (sg-backend, pinned to its own core) and measures each target in interleaved order
# (direct, shardgate, nginx, haproxy, direct, shardgate, ...) for --rounds rounds. At the end it
# prints one markdown table per scenario (medians over rounds, ratios to nginx) and writes it to
# OUT/summary.md. See benches/README.md.
#
# The tls-* scenarios terminate TLS at the proxy (plain HTTP to the backend): every proxy
# serves the same ECDSA P-256 certificate (made with openssl for the run), TLS 1.2 and 1.3,
# session tickets on; the load generator (rustls) negotiates TLS 1.3 with
# TLS_AES_256_GCM_SHA384 and X25519 with each. tls-newconn makes a full handshake per
# request, tls-resume resumes a ticket on each new connection. They are not in the default
# list either; the "direct" target is left out of them (the backend speaks plain HTTP).
#
# The lb-* scenarios (one per load-balancing algorithm) put three sg-backend instances on
# three ports (BACKEND_PORT, +1, +2), all pinned to the backend core with one thread each, and
# make every proxy balance over them with its counterpart of the algorithm. They are not in
# the default scenario list (they would double the full run); select them with --scenarios.
#
# Process model: every proxy measurement starts a fresh proxy process (identical conditions for
# every round and target: cold start, 1 s warm-up, then the measured run) and stops it by PID
# right after. The backend lives for one scenario x worker count, shared by all targets and
# rounds. Every PID this script starts is recorded and killed by PID on exit (trap), nginx's
# workers included (found as children of the master PID we started). No systemctl, no system
# nginx/haproxy instance is touched: ours run in the foreground on our own loopback ports with
# configs and pid files in a temp dir.
#
# Safety: traffic goes to 127.0.0.1 only; every load run is bounded in time (-d, plus a
# `timeout` wrapper) and in count (--max-requests).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=variants.sh
. "$ROOT/benches/variants.sh"   # sg_file_provider
BENCH_DIR="$ROOT/benches"

# ---------------------------------------------------------------- options
ROUNDS=3
DURATION=10
CONNS=64
SCENARIOS="small-ka newconn 16k 1m"
WORKERS_LIST="1 2"
TARGETS="direct shardgate nginx haproxy"
OUT=""
DRY_RUN=0
BUILD=1
WARMUP=1
MAX_REQ=""
SG_OPTIONS=""
HAPROXY_SPLICE=0

# Ports (loopback only). Each target has its own so a slow-to-die process never answers for
# the next one.
BACKEND_PORT=${SG_BENCH_BACKEND_PORT:-18081}
SHARDGATE_PORT=${SG_BENCH_SHARDGATE_PORT:-18090}
NGINX_PORT=${SG_BENCH_NGINX_PORT:-18091}
HAPROXY_PORT=${SG_BENCH_HAPROXY_PORT:-18092}
BIN_DIR=${SG_BIN_DIR:-$ROOT/target/release}
NGINX_BIN=${NGINX_BIN:-}
HAPROXY_BIN=${HAPROXY_BIN:-}
URL_PATH=/bench

usage() {
    cat <<EOF
Usage: benches/compare.sh [options]

  --rounds N          rounds per scenario, targets interleaved in each (default $ROUNDS)
  --duration S        seconds per measured run, integer (default $DURATION)
  --connections C     concurrent connections of the load generator (default $CONNS)
  --scenarios LIST    space or comma separated, any of:
                        small-ka newconn 16k 1m     one backend (the default: these four)
                        lb-rr lb-leastconn lb-chash lb-ewma
                                                    one per balancer, 64 B keep-alive over
                                                    three backends; not in the default, as
                                                    they would double the full run (about
                                                    5 min each, 20 min for the four)
                        tls-ka tls-newconn tls-resume tls-1m
                                                    HTTPS at the proxy: 64 B keep-alive, a
                                                    full handshake per request, a resumed
                                                    one per request, 1 MiB keep-alive
                        prometheus                  64 B keep-alive with Shardgate's prometheus
                                                    plugin as a global rule (nginx and HAProxy
                                                    run as in small-ka, for reference); compare
                                                    with small-ka of the same run
                        partial-ka partial-newconn
                                                    open loop at fixed rates: nginx saturated
                                                    (closed loop) first in each round, then
                                                    every target at 25, 50 and 75% of that
                                                    rate (PARTIAL_RATES), 64 B keep-alive or a
                                                    new connection per request: CPU per
                                                    request and latency below saturation
                        wrk-ka wrk-newconn          as a new user tries it: wrk (closed loop)
                                                    as the load generator and nginx (one
                                                    worker, a 64 B body from memory) as the
                                                    backend, keep-alive or a new connection
                                                    per request (Connection: close)
                        auth-limit auth-limit-redis
                                                    64 B keep-alive through an API key check
                                                    and a rate limit never reached: Shardgate's
                                                    key-auth + limit-count (local, or in a
                                                    redis-server the script starts), nginx's
                                                    map + limit_req, HAProxy's ACL + stick table
  --workers LIST      proxy worker counts, e.g. "1 2" (default "$WORKERS_LIST")
  --targets LIST      any of: direct shardgate nginx haproxy (default: all)
  --max-requests N    per-run request bound (default: duration x 1,000,000)
  --warmup S          warm-up seconds before each measured run (default $WARMUP)
  --sg-option LINE    add LINE to Shardgate's [gateway] section (repeatable), e.g.
                        --sg-option 'splice = false'
  --haproxy-splice    give HAProxy 'option splice-response' (off by default in HAProxy; Shardgate
                        splices long bodies by default, nginx cannot splice proxied bodies)
  --quick             1 round, 3 s per run (smoke test)
  --out DIR           results directory (default benches/results/<date>)
  --no-build          skip 'cargo build --release --bins'
  --dry-run           print the commands it would run; build, install and start nothing
  -h, --help          this text

Environment: SG_BIN_DIR (default target/release), NGINX_BIN, HAPROXY_BIN,
SG_BENCH_{BACKEND,SHARDGATE,NGINX,HAPROXY}_PORT (defaults 18081, 18090, 18091, 18092;
the lb-* scenarios also use the two ports after the backend's).
EOF
}

die() { echo "compare.sh: error: $*" >&2; exit 1; }
warn() { echo "compare.sh: warning: $*" >&2; }
info() { echo "== $*" >&2; }

while (($#)); do
    case $1 in
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --connections | -c) CONNS=${2:?}; shift 2 ;;
        --scenarios) SCENARIOS=${2:?}; shift 2 ;;
        --workers) WORKERS_LIST=${2:?}; shift 2 ;;
        --targets) TARGETS=${2:?}; shift 2 ;;
        --max-requests) MAX_REQ=${2:?}; shift 2 ;;
        --warmup) WARMUP=${2:?}; shift 2 ;;
        --sg-option) SG_OPTIONS+="${2:?}"$'\n'; shift 2 ;;
        --haproxy-splice) HAPROXY_SPLICE=1; shift ;;
        --quick) ROUNDS=1; DURATION=3; shift ;;
        --out) OUT=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

SCENARIOS=${SCENARIOS//,/ }
WORKERS_LIST=${WORKERS_LIST//,/ }
TARGETS=${TARGETS//,/ }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$ROUNDS" && ((ROUNDS >= 1)) || die "--rounds must be a positive integer"
is_uint "$DURATION" && ((DURATION >= 1)) || die "--duration must be a positive integer (seconds)"
is_uint "$CONNS" && ((CONNS >= 1)) || die "--connections must be a positive integer"
is_uint "$WARMUP" || die "--warmup must be an integer (seconds)"
[[ -z $MAX_REQ ]] && MAX_REQ=$((DURATION * 1000000))
is_uint "$MAX_REQ" && ((MAX_REQ >= 1)) || die "--max-requests must be a positive integer"
for s in $SCENARIOS; do
    case $s in
        small-ka | newconn | 16k | 1m | lb-rr | lb-leastconn | lb-chash | lb-ewma) ;;
        tls-ka | tls-newconn | tls-resume | tls-1m) ;;
        auth-limit | auth-limit-redis | prometheus) ;;
        partial-ka | partial-newconn | wrk-ka | wrk-newconn) ;;
        *) die "unknown scenario: $s" ;;
    esac
done
for w in $WORKERS_LIST; do
    is_uint "$w" && ((w >= 1)) || die "bad worker count: $w"
done
for t in $TARGETS; do
    case $t in direct | shardgate | nginx | haproxy) ;; *) die "unknown target: $t" ;; esac
done
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- process bookkeeping
PIDS=()          # every PID this script started and has not yet stopped
TMP=""           # configs, pid files, proxy temp dirs

proc_state() { # prints the state letter of PID, fails if there is no such process
    local line
    { read -r line <"/proc/$1/stat"; } 2>/dev/null || return 1
    line=${line##*) }
    printf '%s' "${line:0:1}"
}
alive() { # running (a zombie, not yet reaped, counts as dead)
    local s
    s=$(proc_state "$1") || return 1
    [[ $s != Z && $s != X ]]
}
child_pids() { # direct children of PID, from /proc/*/stat
    local root=$1 f line rest
    local -a a
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }
        read -ra a <<<"$rest"
        [[ ${a[1]} == "$root" ]] && printf '%s ' "${line%% *}"
    done
    return 0
}

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

stop_pid() { # TERM the process (and its direct children), wait up to 5 s, then KILL
    local pid=$1 kids k i
    [[ -n $pid && $pid != 0 ]] || return 0
    kids=$(child_pids "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    for k in $kids; do
        for ((i = 0; i < 20; i++)); do
            alive "$k" || break
            sleep 0.1
        done
        alive "$k" && kill -KILL "$k" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        for p in "${PIDS[@]}"; do stop_pid "$p"; done
    fi
    ((rc == 0)) || echo "compare.sh: stopped (exit $rc); every process it started has been stopped" >&2
    if [[ -n $TMP && -d $TMP && $DRY_RUN == 0 ]]; then rm -rf -- "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- command echo / execution
CMDLOG=/dev/null
show() { # print a command line, words quoted only where the shell needs it
    local w out=""
    for w in "$@"; do
        [[ $w =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]] || w=$(printf '%q' "$w")
        out+="${out:+ }$w"
    done
    printf '+ %s\n' "$out"
}
run() { # run a command in the foreground (or just print it with --dry-run)
    show "$@" | tee -a "$CMDLOG" >&2
    ((DRY_RUN)) && return 0
    "$@"
}
run_log() { # run_log LOGFILE cmd...: as run, output appended to LOGFILE
    local log=$1
    shift
    { show "$@"; } | sed "s|\$| >>$log 2>\&1|" | tee -a "$CMDLOG" >&2
    ((DRY_RUN)) && return 0
    "$@" >>"$log" 2>&1
}
STARTED_PID=0
start_bg() { # start_bg LOGFILE cmd...: background, PID recorded in PIDS and STARTED_PID
    local log=$1
    shift
    { show "$@"; } | sed "s|\$| >$log 2>\&1 \&|" | tee -a "$CMDLOG" >&2
    STARTED_PID=0
    ((DRY_RUN)) && return 0
    "$@" </dev/null >"$log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# ---------------------------------------------------------------- measurement helpers
CLK_TCK=$(getconf CLK_TCK)

tree_ticks() { # tree_ticks PID...: utime+stime (+cutime+cstime) of each PID and its direct
    # children, in clock ticks; one number per PID, space separated, from one pass over /proc
    local -A sum=()
    local r f line pid rest owner
    local -a a
    for r in "$@"; do sum[$r]=0; done
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        pid=${line%% *}
        rest=${line##*) }
        read -ra a <<<"$rest"
        # after "comm)": a[0]=state(3) a[1]=ppid(4) ... a[11]=utime(14) a[12]=stime(15)
        # a[13]=cutime(16) a[14]=cstime(17)
        owner=""
        if [[ -n ${sum[$pid]+x} ]]; then
            owner=$pid
        elif [[ -n ${sum[${a[1]}]+x} ]]; then
            owner=${a[1]}
        fi
        [[ -n $owner ]] && sum[$owner]=$((sum[$owner] + a[11] + a[12] + a[13] + a[14]))
    done
    local out=""
    for r in "$@"; do out+="${out:+ }${sum[$r]}"; done
    echo "$out"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_ok() { # one GET over bash's /dev/tcp (curl for a TLS proxy); succeeds on a 200 status line
    if ((TLS)) && [[ $1 != "$BACKEND_PORT" && $1 != "$((BACKEND_PORT + 1))" && $1 != "$((BACKEND_PORT + 2))" ]]; then
        [[ $(curl -sk -o /dev/null -w '%{http_code}' --resolve "localhost:$1:127.0.0.1" \
            "https://localhost:$1$URL_PATH" 2>/dev/null) == 200 ]]
        return
    fi
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        key="" # the auth-limit scenarios' API key (the backend ignores it)
        [[ -z $AUTH ]] || key=$'apikey: bench-key\r\n'
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n%sConnection: close\r\n\r\n' "$URL_PATH" "$1" "$key" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == HTTP/1.[01]\ 200* ]]
    ) 2>/dev/null
}

wait_ready() { # wait_ready PORT PID NAME LOG: up to 10 s for an HTTP 200 on PORT; 1 if not
    local port=$1 pid=$2 name=$3 log=$4 i
    echo "  (wait until GET $port$URL_PATH answers 200, via bash /dev/tcp, or curl -k for TLS)" | tee -a "$CMDLOG" >&2
    ((DRY_RUN)) && return 0
    for ((i = 0; i < 200; i++)); do
        if ! alive "$pid"; then
            tail -n 20 "$log" >&2 || true
            warn "$name exited during start-up (log: $log)"
            return 1
        fi
        http_ok "$port" && return 0
        sleep 0.05
    done
    tail -n 20 "$log" >&2 || true
    warn "$name did not answer on 127.0.0.1:$port within 10 s (log: $log)"
    return 1
}

cpu_list_count() { # "0,1,3" -> 3
    local -a a
    IFS=, read -ra a <<<"$1"
    echo "${#a[@]}"
}
allowed_cpus() { # the CPU ids this process may run on, in order: "0-1,4" -> "0 1 4"
    local list part a b i out=""
    list=$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/self/status 2>/dev/null)
    [[ -n $list ]] || list="0-$(($(nproc) - 1))"
    for part in ${list//,/ }; do
        a=${part%-*} b=${part#*-}
        for ((i = a; i <= b; i++)); do out+="${out:+ }$i"; done
    done
    echo "$out"
}
seq_csv() { # seq_csv FIRST LAST -> "CPU_IDS[FIRST],...,CPU_IDS[LAST]"
    local i out=""
    for ((i = $1; i <= $2; i++)); do out+="${out:+,}${CPU_IDS[i]}"; done
    echo "$out"
}

# Core layout for W proxy workers on NPROC cores. Sets PROXY_CPUS BACKEND_CPUS LOAD_CPUS
# (comma lists of CPU ids) and CONTENDED (1 when the proxy shares a core with load or backend).
# Positions index CPU_IDS, the CPUs we may use (usually 0..n-1; in a container's cpuset the
# real ids), so "core 0" below means the first allowed CPU.
layout() {
    local w=$1 n=$NPROC
    CONTENDED=0
    if ((w > n)); then
        return 1
    fi
    PROXY_CPUS=$(seq_csv 0 $((w - 1)))
    if ((n >= w + 2)); then
        BACKEND_CPUS=${CPU_IDS[w]}
        LOAD_CPUS=$(seq_csv $((w + 1)) $((n - 1)))
    elif ((n == w + 1)); then # e.g. 2 cores, 1 worker: load generator and backend share the last core
        BACKEND_CPUS=${CPU_IDS[w]}
        LOAD_CPUS=${CPU_IDS[w]}
    else # w == n: no core left; load generator and backend share the last one with the proxy
        BACKEND_CPUS=${CPU_IDS[n - 1]}
        LOAD_CPUS=${CPU_IDS[n - 1]}
        CONTENDED=1
    fi
}

# ---------------------------------------------------------------- config rendering
render() { # render TEMPLATE OUTFILE key=value...: placeholders are filled outside comment
    # lines only; a line holding only a placeholder whose value is empty is dropped; a newline
    # in a value becomes a line break (GNU sed)
    local tpl=$1 out=$2 kv k v
    shift 2
    local -a sed_args=()
    for kv in "$@"; do
        k=${kv%%=*} v=${kv#*=}
        [[ -n $v ]] || sed_args+=(-e "/^[[:space:]]*@$k@[[:space:]]*\$/d")
        sed_args+=(-e "/^[[:space:]]*#/!s|@$k@|${v//$'\n'/\\n}|g")
    done
    sed "${sed_args[@]}" "$tpl" >"$out"
    if grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_]*@'; then
        die "unfilled placeholder in $out"
    fi
}

nginx_masks() { # "0,1" -> "01 10" (worker i -> bit cpus[i]; rightmost bit = CPU 0)
    local IFS=, c m out="" i
    for c in $1; do
        m="1"
        for ((i = 0; i < c; i++)); do m+="0"; done
        out+="${out:+ }$m"
    done
    echo "$out"
}

write_shardgate_conf() { # OUTFILE WORKERS CPUS (upstream from SG_LB and the backend ports)
    local nodes="" p listen="listen = [\"127.0.0.1:$SHARDGATE_PORT\"]" ssl=""
    for p in "${BACKEND_PORTS[@]}"; do nodes+="${nodes:+, }\"127.0.0.1:$p\" = 1"; done
    if ((TLS)); then # the measured port terminates TLS; the plain one is unused
        listen="listen = [\"127.0.0.1:$((SHARDGATE_PORT + 100))\"]"$'\n'"listen_tls = [\"127.0.0.1:$SHARDGATE_PORT\"]"
        ssl=$'[[ssls]]\nid = "bench"\nsnis = ["localhost"]\n'"cert = '''$(cat "$TLS_CERT")'''"$'\n'"key = '''$(cat "$TLS_KEY")'''"
    fi
    cat >"$1" <<EOF
# Shardgate config for benches/compare.sh (generated). Same cores, workers and pool sizes as
# the nginx and HAProxy configs: keepalive_pool per core = nginx keepalive 320 per worker.
[gateway]
$listen
workers = $2
pin_cores = true
cpus = [$3]
access_log = "off"
watch_config = false
graceful_shutdown_timeout = 2
$SG_OPTIONS
[[upstreams]]
id = "b"
${SG_LB:+$SG_LB
}nodes = { $nodes }
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }

[[routes]]
uri = "/*"
upstream_id = "b"
$(auth_plugins)
$ssl
$(observability)
# Resources from this file only: with the default (the embedded store under ./data), a
# store left by an earlier run in the same directory would win over this file's routes.
[deployment]
config_provider = "file"
EOF
}

# The observability scenarios: the plugin as a global rule (every request recorded), the
# exporter on a port of the script's own.
observability() {
    if [[ $OBS == prometheus ]]; then
        printf '[plugin_attr.prometheus]\nexport_addr = "127.0.0.1:%s"\n' "$((SHARDGATE_PORT + 50))"
        printf '[[global_rules]]\nid = "obs"\nplugins.prometheus = {}\n'
    else
        printf '[plugin_attr.prometheus]\nenable_export_server = false\n'
    fi
}

# The auth-limit scenarios: an API key checked against a consumer, then a count per client
# address that is never reached (so every request pays for the check and the counting).
REDIS_PORT=${SG_BENCH_REDIS_PORT:-18093}
auth_plugins() {
    [[ -n $AUTH ]] || return 0
    local policy=""
    [[ $AUTH == redis ]] && policy=", policy = \"redis\", redis_host = \"127.0.0.1\", redis_port = $REDIS_PORT"
    cat <<EOF
plugins.key-auth = {}
plugins.limit-count = { count = 1000000000, time_window = 60$policy }

[[consumers]]
username = "bench"
plugins.key-auth = { key = "bench-key" }
EOF
}
# nginx's counterpart: a map from the key header to a consumer, 401 without one, and
# limit_req per client address at a rate never reached.
nginx_auth_http() {
    [[ -n $AUTH ]] || return 0
    # shellcheck disable=SC2016  # nginx variables
    printf '%s' 'map $http_apikey $bench_consumer { default ""; "bench-key" "bench"; }
    limit_req_zone $binary_remote_addr zone=bench:1m rate=100000000r/s;'
}
nginx_auth_location() {
    [[ -n $AUTH ]] || return 0
    # shellcheck disable=SC2016  # nginx variables
    printf '%s' 'if ($bench_consumer = "") { return 401; }
            limit_req zone=bench burst=100000000 nodelay;'
}
# HAProxy's: the key compared by an ACL, 401 without it, and a stick table counting each
# client address's requests against a rate never reached.
haproxy_auth() {
    [[ -n $AUTH ]] || return 0
    printf '%s' 'http-request deny deny_status 401 unless { req.hdr(apikey) -m str bench-key }
    stick-table type ip size 100k expire 60s store http_req_rate(60s)
    http-request track-sc0 src
    http-request deny deny_status 503 if { sc_http_req_rate(0) gt 1000000000 }'
}

declare -A CHECKED=()
check_conf() { # check_conf CONF cmd...: validate a rendered config once (also in --dry-run
    # when the binary exists, since a check starts no server)
    local conf=$1
    shift
    local key=${conf##*/}
    key=${key/-r[0-9]*-/-} # one check per config shape, not per round
    [[ -n ${CHECKED[$key]:-} ]] && return 0
    CHECKED[$key]=1
    show "$@" | tee -a "$CMDLOG" >&2
    if [[ ! -x $1 ]]; then
        ((DRY_RUN)) && return 0
        die "$1 not found"
    fi
    local outp
    outp=$("$@" 2>&1) || { echo "$outp" >&2; die "config check failed: $conf"; }
    [[ -z $outp ]] || printf '  %s\n' "${outp//$'\n'/$'\n'  }" >&2
}

nginx_servers() { # the upstream's server lines, one per backend port
    local p out=""
    for p in "${BACKEND_PORTS[@]}"; do out+="${out:+$'\n'        }server 127.0.0.1:$p;"; done
    printf '%s' "$out"
}
haproxy_servers() {
    local i out=""
    for i in "${!BACKEND_PORTS[@]}"; do
        out+="${out:+$'\n'    }server b$((i + 1)) 127.0.0.1:${BACKEND_PORTS[i]} pool-purge-delay 60s"
    done
    printf '%s' "$out"
}

# Start TARGET for W workers on PROXY_CPUS; sets PROXY_PID. "direct" starts nothing.
# Uses scen (the scenario) for file names when the scenario balances (LB set).
start_target() {
    local target=$1 w=$2 tag=$3 conf log
    PROXY_PID=0
    case $target in
        direct) return 0 ;;
        shardgate)
            conf="$TMP/shardgate-${LB:+$scen-}w$w.toml"
            log="$OUT/logs/$tag.log"
            write_shardgate_conf "$conf" "$w" "$PROXY_CPUS"
            [[ -x $BIN_DIR/shardgate ]] && sg_file_provider "$BIN_DIR/shardgate" "$conf"
            check_conf "$conf" "$BIN_DIR/shardgate" check -c "$conf"
            start_bg "$log" taskset -c "$PROXY_CPUS" "$BIN_DIR/shardgate" run -c "$conf"
            ;;
        nginx)
            conf="$TMP/nginx-$tag.conf"
            log="$OUT/logs/$tag.log"
            rm -f "$TMP/nginx.pid"
            render "$BENCH_DIR/nginx.conf.template" "$conf" \
                WORKERS="$w" CPU_MASKS="$(nginx_masks "$PROXY_CPUS")" \
                LISTEN_PORT="$NGINX_PORT" BALANCE="$NGINX_LB" SERVERS="$(nginx_servers)" \
                AUTH_HTTP="$(nginx_auth_http)" AUTH_LOCATION="$(nginx_auth_location)" \
                LISTEN_SSL="$( ((TLS)) && echo ssl)" \
                SSL_CONF="$( ((TLS)) && echo "ssl_certificate $TLS_CERT; ssl_certificate_key $TLS_KEY; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_tickets on;")" \
                PIDFILE="$TMP/nginx.pid" TMPDIR="$TMP" ERROR_LOG="$TMP/$tag.error.log"
            check_conf "$conf" "$NGINX_BIN" -t -q -p "$TMP/" -e "$TMP/nginx-check.log" -c "$conf"
            start_bg "$log" taskset -c "$PROXY_CPUS" "$NGINX_BIN" -p "$TMP/" -e "$TMP/$tag.error.log" -c "$conf"
            ;;
        haproxy)
            conf="$TMP/haproxy-${LB:+$scen-}w$w.cfg"
            log="$OUT/logs/$tag.log"
            render "$BENCH_DIR/haproxy.cfg.template" "$conf" \
                WORKERS="$w" CPUS_LIST="${PROXY_CPUS//,/ }" \
                LISTEN_PORT="$HAPROXY_PORT" BALANCE="$HAPROXY_LB" SERVERS="$(haproxy_servers)" \
                AUTH="$(haproxy_auth)" \
                BIND_SSL="$( ((TLS)) && echo "ssl crt $TLS_COMBINED alpn http/1.1 ssl-min-ver TLSv1.2")" \
                PROTO="$( ((TLS)) && echo https || echo http)" \
                PIDFILE="$TMP/haproxy.pid" TMPDIR="$TMP" \
                SPLICE="$( ((HAPROXY_SPLICE)) && echo 'option splice-response')" \
                MAXPIPES="$( ((HAPROXY_SPLICE)) && echo 'maxpipes 1024')"
            check_conf "$conf" "$HAPROXY_BIN" -c -q -f "$conf"
            start_bg "$log" taskset -c "$PROXY_CPUS" "$HAPROXY_BIN" -db -f "$conf"
            ;;
    esac
    PROXY_PID=$STARTED_PID
    wait_ready "$(target_port "$target")" "$PROXY_PID" "$target" "$log" || return 1
    if [[ $target == nginx && $DRY_RUN == 0 ]]; then
        local master
        master=$(cat "$TMP/nginx.pid" 2>/dev/null || true)
        [[ $master == "$PROXY_PID" ]] || warn "nginx pid file says '$master', started $PROXY_PID"
    fi
}

target_port() {
    case $1 in
        direct) echo "$BACKEND_PORT" ;;
        shardgate) echo "$SHARDGATE_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        haproxy) echo "$HAPROXY_PORT" ;;
    esac
}

load_cmd() { # load_cmd TARGET SECONDS [extra sg-load args...] -> LOAD (array)
    local target=$1 secs=$2
    shift 2
    local threads
    threads=$(cpu_list_count "$LOAD_CPUS")
    local scheme=http
    ((TLS)) && scheme=https
    if ((WRK)); then
        wrk_cmd "$target" "$secs" "$threads" "$@"
        return
    fi
    LOAD=(timeout --foreground --signal=TERM --kill-after=5 $((secs + 30))
        taskset -c "$LOAD_CPUS" "$BIN_DIR/sg-load"
        --url "$scheme://127.0.0.1:$(target_port "$target")$URL_PATH"
        -c "$CONNS" -d "$secs" --threads "$threads" --max-requests "$MAX_REQ")
    ((NEWCONN)) && LOAD+=(--new-conn)
    ((RESUME)) && LOAD+=(--tls-resume)
    [[ -z $AUTH ]] || LOAD+=(-H "apikey: bench-key")
    [[ -z $RATE ]] || LOAD+=(--rate "$RATE")
    LOAD+=("$@")
}

# The wrk-* scenarios' load generator: wrk, closed loop, the same connections and threads as
# sg-load would use; benches/wrk-report.lua writes the result as sg-load's JSON (to
# /dev/null in warm-ups). Of sg-load's extra arguments only --json matters here.
wrk_cmd() { # wrk_cmd TARGET SECONDS THREADS [sg-load args...] -> LOAD (array)
    local target=$1 secs=$2 threads=$3 json=/dev/null
    shift 3
    while (($#)); do
        [[ $1 == --json ]] && json=$2
        shift
    done
    LOAD=(env WRK_JSON="$json" timeout --foreground --signal=TERM --kill-after=5 $((secs + 30))
        taskset -c "$LOAD_CPUS" "$WRK_BIN" -t "$threads" -c "$CONNS" -d "${secs}s" --timeout 10s
        -s "$BENCH_DIR/wrk-report.lua")
    ((NEWCONN)) && LOAD+=(-H "Connection: close")
    LOAD+=("http://127.0.0.1:$(target_port "$target")$URL_PATH")
}

# Open-loop rates of the partial-* scenarios, in percent of nginx's saturated rate.
PARTIAL_RATES=${PARTIAL_RATES:-"25 50 75"}
RATE=""

# One round of a partial-* scenario: nginx at saturation (closed loop; reported as
# "<scenario>-sat"), then every target open loop at each of PARTIAL_RATES percent of the rate
# nginx reached (reported as "<scenario>@<percent>%"). The rate is the same for every target
# within a round, so CPU per request and latency compare at equal load.
measure_partial() {
    local scen=$1 w=$2 round=$3 sat f target
    RATE=""
    measure "$scen-sat" "$w" "$round" nginx || return 1
    if ((DRY_RUN)); then
        sat=100000
    else
        sat=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["rps"])' \
            "$OUT/json/$scen-sat-w$w-r$round-nginx.json")
    fi
    for f in $PARTIAL_RATES; do
        RATE=$(python3 -c 'import sys; print(round(float(sys.argv[1]) * int(sys.argv[2]) / 100))' "$sat" "$f")
        info "$scen: open loop at $f% of nginx's $sat req/s: $RATE req/s"
        for target in $TARGETS; do
            measure "$scen@$f%" "$w" "$round" "$target" || true
        done
    done
    RATE=""
}

FAILURES=()
measure_failed() { # record a failed measurement, stop its proxy; the run goes on
    warn "$1: $2; measurement left out"
    FAILURES+=("$1: $2")
    if [[ $PROXY_PID != 0 ]]; then stop_pid "$PROXY_PID"; fi
    PROXY_PID=0
    return 1
}

# One measurement: start target, warm up, measure with CPU accounting, stop target.
# A failure (proxy does not start or dies, load generator fails) is recorded and left out of
# the summary; the other measurements go on, and the script exits 1 at the end.
measure() {
    local scen=$1 w=$2 round=$3 target=$4
    local tag="$scen-w$w-r$round-$target"
    local json="json/$tag.json" t0=NA t1=NA ptick=NA i btick=0 beach=""
    local -a b0 b1
    info "$scen, workers=$w, round $round/$ROUNDS: $target"
    start_target "$target" "$w" "$tag" || { measure_failed "$tag" "$target did not start"; return 1; }
    if ((WARMUP > 0)); then
        load_cmd "$target" "$WARMUP" --quiet
        # sg-load exits non-zero when any request failed; the measured run will show it.
        run_log "$OUT/logs/$tag.warmup.log" "${LOAD[@]}" ||
            warn "$tag: warm-up had errors (see $OUT/logs/$tag.warmup.log)"
    fi
    load_cmd "$target" "$DURATION" --quiet --json "$OUT/$json" --hgrm "$OUT/hgrm/$tag.hgrm"
    if ((DRY_RUN)); then
        [[ $target == direct ]] || echo "  (read /proc/<$target pid and children>/stat utime+stime)" >&2
        run_log "$OUT/logs/$tag.load.log" "${LOAD[@]}"
        [[ $target == direct ]] || echo "  (read /proc/<$target pid and children>/stat utime+stime again)" >&2
        [[ $target == direct ]] || echo "+ kill -TERM <$target pid>  (then its children, KILL after 5 s)" >&2
        return 0
    fi
    [[ $target == direct ]] || t0=$(tree_ticks "$PROXY_PID")
    read -ra b0 <<<"$(tree_ticks "${BACKEND_PIDS[@]}")"
    local rc=0
    run_log "$OUT/logs/$tag.load.log" "${LOAD[@]}" || rc=$?
    read -ra b1 <<<"$(tree_ticks "${BACKEND_PIDS[@]}")"
    for i in "${!b0[@]}"; do # all backends together, and each one (how the proxy spread the load)
        btick=$((btick + b1[i] - b0[i]))
        beach+="${beach:+/}$((b1[i] - b0[i]))"
    done
    if [[ $target != direct ]]; then
        t1=$(tree_ticks "$PROXY_PID")
        ptick=$((t1 - t0))
        alive "$PROXY_PID" ||
            { measure_failed "$tag" "$target died during the run (see $OUT/logs/$tag.log)"; return 1; }
        show kill -TERM "$PROXY_PID" | tee -a "$CMDLOG" >&2
        stop_pid "$PROXY_PID"
        if [[ -f $TMP/$tag.error.log ]]; then cp "$TMP/$tag.error.log" "$OUT/logs/"; fi
    fi
    PROXY_PID=0
    [[ -s $OUT/$json ]] ||
        { measure_failed "$tag" "sg-load exited $rc without JSON (see $OUT/logs/$tag.load.log)"; return 1; }
    # A non-zero exit with a JSON result means some requests failed: kept, and flagged in the table.
    ((rc == 0)) || warn "$tag: sg-load exited $rc (request errors; see $OUT/logs/$tag.load.log)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$scen" "$w" "$round" "$target" "$SIZE" "$NEWCONN" "$json" "$ptick" "$btick" \
        "$CLK_TCK" "$PROXY_CPUS" "$BACKEND_CPUS" "$LOAD_CPUS" "$CONTENDED" "$beach" >>"$OUT/runs.tsv"
    python3 - "$OUT/$json" "$ptick" "$CLK_TCK" "$beach" >&2 <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
t, clk, each = sys.argv[2], float(sys.argv[3]), sys.argv[4]
cpu = "n/a" if t == "NA" or not r["requests"] else "%.2f" % (int(t) / clk * 1e6 / r["requests"])
print("   %.0f req/s  p50 %.1f us  p99 %.1f us  errors %d  CPU us/req %s%s"
      % (r["rps"], r["p50_us"], r["p99_us"], r["errors"], cpu,
         "  backend ticks %s" % each if "/" in each else ""))
PY
}

scenario_params() { # sets SIZE NEWCONN LB TLS RESUME AUTH OBS PARTIAL WRK, and from LB: BACKEND_PORTS SG_LB NGINX_LB HAPROXY_LB
    LB="" TLS=0 RESUME=0 AUTH="" OBS="" PARTIAL=0 WRK=0
    case $1 in
        wrk-ka) SIZE=64 NEWCONN=0 WRK=1 ;;
        wrk-newconn) SIZE=64 NEWCONN=1 WRK=1 ;;
        partial-ka) SIZE=64 NEWCONN=0 PARTIAL=1 ;;
        partial-newconn) SIZE=64 NEWCONN=1 PARTIAL=1 ;;
        prometheus) SIZE=64 NEWCONN=0 OBS=prometheus ;;
        auth-limit) SIZE=64 NEWCONN=0 AUTH=local ;;
        auth-limit-redis) SIZE=64 NEWCONN=0 AUTH=redis ;;
        tls-ka) SIZE=64 NEWCONN=0 TLS=1 ;;
        tls-newconn) SIZE=64 NEWCONN=1 TLS=1 ;;
        tls-resume) SIZE=64 NEWCONN=1 TLS=1 RESUME=1 ;;
        tls-1m) SIZE=1048576 NEWCONN=0 TLS=1 ;;
        small-ka) SIZE=64 NEWCONN=0 ;;
        newconn) SIZE=64 NEWCONN=1 ;;
        16k) SIZE=16384 NEWCONN=0 ;;
        1m) SIZE=1048576 NEWCONN=0 ;;
        lb-*) SIZE=64 NEWCONN=0 LB=${1#lb-} ;;
    esac
    # Each proxy's counterpart of the algorithm (see the templates' comments and README):
    #   rr        Shardgate roundrobin    nginx default round robin   HAProxy balance roundrobin
    #   leastconn Shardgate least_conn    nginx least_conn            HAProxy balance leastconn
    #   chash     Shardgate chash on the  nginx hash $request_uri     HAProxy balance uri +
    #             request_uri var           consistent                  hash-type consistent
    #   ewma      Shardgate ewma          nginx least_conn (open-source nginx has no EWMA)
    #                                                                 HAProxy balance leastconn (none)
    SG_LB="" NGINX_LB="" HAPROXY_LB=""
    case $LB in
        rr)
            SG_LB='type = "roundrobin"'
            NGINX_LB="# round robin: nginx's default, no directive"
            HAPROXY_LB='balance roundrobin' ;;
        leastconn)
            SG_LB='type = "least_conn"'
            NGINX_LB='least_conn;'
            HAPROXY_LB='balance leastconn' ;;
        chash)
            SG_LB=$'type = "chash"\nhash_on = "vars"\nkey = "request_uri"'
            # shellcheck disable=SC2016  # $request_uri is nginx's variable
            NGINX_LB='hash $request_uri consistent;'
            HAPROXY_LB=$'balance uri\n    hash-type consistent' ;;
        ewma)
            SG_LB='type = "ewma"'
            NGINX_LB='least_conn;  # open-source nginx has no EWMA balancer: least_conn stands in'
            HAPROXY_LB='balance leastconn  # HAProxy has no EWMA balancer: leastconn stands in' ;;
    esac
    BACKEND_PORTS=("$BACKEND_PORT")
    [[ -z $LB ]] || BACKEND_PORTS=("$BACKEND_PORT" $((BACKEND_PORT + 1)) $((BACKEND_PORT + 2)))
}

# ---------------------------------------------------------------- 1. build
read -ra CPU_IDS <<<"$(allowed_cpus)"
NPROC=${#CPU_IDS[@]}
if [[ -z $OUT ]]; then OUT="$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)"; fi
if ((DRY_RUN)); then
    info "dry run: nothing is built, installed or started; results would go to $OUT"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/sg-compare.XXXXXX")
    info "rendered configs are kept in $TMP for review"
fi

if ((BUILD)); then
    (cd "$ROOT" && run cargo build --release --bins)
fi

# ---------------------------------------------------------------- 2. nginx / HAProxy
find_bin() { # find_bin NAME -> path or empty
    command -v "$1" 2>/dev/null || { [[ -x /usr/sbin/$1 ]] && echo "/usr/sbin/$1"; } || true
}
[[ -n $NGINX_BIN ]] || NGINX_BIN=$(find_bin nginx)
[[ -n $HAPROXY_BIN ]] || HAPROXY_BIN=$(find_bin haproxy)
WRK_BIN=$(find_bin wrk)
missing=()
[[ " $SCENARIOS " == *" wrk-"* && -z $WRK_BIN ]] && missing+=(wrk)
[[ " $SCENARIOS " == *" wrk-"* && -z $NGINX_BIN ]] && missing+=(nginx) # the wrk-* backend
has_target nginx && [[ -z $NGINX_BIN ]] && missing+=(nginx)
has_target haproxy && [[ -z $HAPROXY_BIN ]] && missing+=(haproxy)
if ((${#missing[@]})); then
    # Installing nginx/haproxy on a systemd machine also starts their system services (nginx on
    # port 80). We never use or stop those; our instances run on our own ports.
    SUDO=()
    ((EUID == 0)) || SUDO=(sudo)
    run "${SUDO[@]}" apt-get update
    run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    [[ -n $NGINX_BIN ]] || NGINX_BIN=$(find_bin nginx)
    [[ -n $HAPROXY_BIN ]] || HAPROXY_BIN=$(find_bin haproxy)
    [[ -n $WRK_BIN ]] || WRK_BIN=$(find_bin wrk)
fi
((DRY_RUN)) && { NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}; HAPROXY_BIN=${HAPROXY_BIN:-/usr/sbin/haproxy}; WRK_BIN=${WRK_BIN:-/usr/bin/wrk}; }

# ---------------------------------------------------------------- 3. preflight
if ((!DRY_RUN)); then
    for b in sg-load sg-backend; do
        [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b not found (build with cargo build --release --bins)"
    done
    has_target shardgate && { [[ -x $BIN_DIR/shardgate ]] || die "$BIN_DIR/shardgate not found"; }
    has_target nginx && { [[ -x $NGINX_BIN ]] || die "nginx not found"; }
    has_target haproxy && { [[ -x $HAPROXY_BIN ]] || die "haproxy not found"; }
    command -v python3 >/dev/null || die "python3 is needed for the summary"
    command -v taskset >/dev/null || die "taskset (util-linux) is needed"
    all_backend_ports=()
    for s in $SCENARIOS; do
        scenario_params "$s"
        ((${#BACKEND_PORTS[@]} > ${#all_backend_ports[@]})) && all_backend_ports=("${BACKEND_PORTS[@]}")
    done
    for p in "${all_backend_ports[@]}" "$SHARDGATE_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
        ! port_in_use "$p" || die "127.0.0.1:$p is already in use"
    done
    mkdir -p "$OUT/logs" "$OUT/json" "$OUT/hgrm"
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/sg-compare.XXXXXX")
    chmod 755 "$TMP" # nginx workers run as an unprivileged user when started as root
    CMDLOG="$OUT/commands.log"
    : >"$CMDLOG"
    # Proxies and load generator need many descriptors; raise the soft limit to the hard one.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
# One certificate for every proxy in the tls-* scenarios.
TLS_CERT="$TMP/tls.pem" TLS_KEY="$TMP/tls.key" TLS_COMBINED="$TMP/tls-combined.pem"
if [[ " $SCENARIOS " == *" tls-"* ]]; then
    command -v openssl >/dev/null || die "openssl is needed for the tls-* scenarios"
    command -v curl >/dev/null || die "curl is needed for the tls-* scenarios"
    # Made in dry runs too (into the temp dir), so the rendered configs can be checked.
    cert=(openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7
        -subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout "$TLS_KEY" -out "$TLS_CERT")
    show "${cert[@]}" | tee -a "$CMDLOG" >&2
    "${cert[@]}" 2>/dev/null || die "openssl could not make the test certificate"
    cat "$TLS_CERT" "$TLS_KEY" >"$TLS_COMBINED"
    chmod 644 "$TLS_KEY" "$TLS_COMBINED"
fi
((DRY_RUN)) || printf 'scenario\tworkers\tround\ttarget\tsize\tnewconn\tjson\tproxy_ticks\tbackend_ticks\tclk_tck\tproxy_cpus\tbackend_cpus\tload_cpus\tcontended\tbackend_ticks_each\n' >"$OUT/runs.tsv"

{
    echo "date:        $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "git:         $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "kernel:      $(uname -r)"
    echo "cpu:         $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //') x $NPROC"
    echo "nginx:       $("$NGINX_BIN" -v 2>&1 | head -1 || echo n/a)"
    echo "haproxy:     $("$HAPROXY_BIN" -v 2>/dev/null | head -1 || echo n/a)"
    echo "sysctl:      tcp_tw_reuse=$(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null) ip_local_port_range=$(tr '\t' - </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) somaxconn=$(cat /proc/sys/net/core/somaxconn 2>/dev/null)"
    echo "options:     rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s connections=$CONNS max_requests=$MAX_REQ haproxy_splice=$HAPROXY_SPLICE${SG_OPTIONS:+ shardgate: ${SG_OPTIONS//$'\n'/; }}"
    echo "scenarios:   $SCENARIOS; workers: $WORKERS_LIST; targets: $TARGETS"
} >"$TMP/env.txt" 2>/dev/null
cat "$TMP/env.txt" >&2
((DRY_RUN)) || cp "$TMP/env.txt" "$OUT/env.txt"

# ---------------------------------------------------------------- 4. measure
BACKEND_PIDS=()
for scen in $SCENARIOS; do
    scenario_params "$scen"
    for w in $WORKERS_LIST; do
        if ! layout "$w"; then
            warn "workers=$w needs at least $w cores, this machine has $NPROC: skipped"
            continue
        fi
        info "scenario $scen (body $SIZE B, new connection per request: $NEWCONN${LB:+, balancer $LB over ${#BACKEND_PORTS[@]} backends}), workers=$w"
        info "cores: proxy $PROXY_CPUS | backend $BACKEND_CPUS | load generator $LOAD_CPUS"
        if ((CONTENDED)); then
            warn "workers=$w on $NPROC cores: the proxy shares core $LOAD_CPUS with the load" \
                "generator and the backend, so req/s and latency are contended; CPU us/req is" \
                "the figure to compare"
        fi
        BACKEND_PIDS=()
        if ((WRK)); then # nginx as the backend, one worker on the backend core
            conf="$TMP/nginx-backend.conf"
            render "$BENCH_DIR/nginx-backend.conf.template" "$conf" \
                LISTEN_PORT="$BACKEND_PORT" PIDFILE="$TMP/nginx-backend.pid" TMPDIR="$TMP" \
                ERROR_LOG="$TMP/nginx-backend.error.log" BODY="$(printf '%*s' "$SIZE" '' | tr ' ' x)"
            check_conf "$conf" "$NGINX_BIN" -t -q -p "$TMP/" -e "$TMP/nginx-check.log" -c "$conf"
            start_bg "$OUT/logs/backend-$scen-w$w.log" taskset -c "$BACKEND_CPUS" "$NGINX_BIN" \
                -p "$TMP/" -e "$TMP/nginx-backend.error.log" -c "$conf"
            BACKEND_PIDS+=("$STARTED_PID")
            wait_ready "$BACKEND_PORT" "$STARTED_PID" "nginx (backend)" "$OUT/logs/backend-$scen-w$w.log" ||
                die "the nginx backend did not start"
        elif [[ -z $LB ]]; then
            start_bg "$OUT/logs/backend-$scen-w$w.log" taskset -c "$BACKEND_CPUS" "$BIN_DIR/sg-backend" \
                --listen "127.0.0.1:$BACKEND_PORT" --size "$SIZE" --threads "$(cpu_list_count "$BACKEND_CPUS")"
            BACKEND_PIDS+=("$STARTED_PID")
            wait_ready "$BACKEND_PORT" "$STARTED_PID" sg-backend "$OUT/logs/backend-$scen-w$w.log" ||
                die "the backend did not start"
        else # three instances, all on the backend core, one thread each
            for i in "${!BACKEND_PORTS[@]}"; do
                blog="$OUT/logs/backend$((i + 1))-$scen-w$w.log"
                start_bg "$blog" taskset -c "$BACKEND_CPUS" "$BIN_DIR/sg-backend" \
                    --listen "127.0.0.1:${BACKEND_PORTS[i]}" --size "$SIZE" --threads 1
                BACKEND_PIDS+=("$STARTED_PID")
                wait_ready "${BACKEND_PORTS[i]}" "$STARTED_PID" "sg-backend $((i + 1))" "$blog" ||
                    die "backend $((i + 1)) did not start"
            done
        fi
        if [[ $AUTH == redis ]]; then # the counters' Redis, on the backend's core
            command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
                die "redis-server and redis-cli are needed for $scen (apt-get install redis-server redis-tools)"
            start_bg "$OUT/logs/redis-$scen-w$w.log" taskset -c "$BACKEND_CPUS" redis-server \
                --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP"
            BACKEND_PIDS+=("$STARTED_PID")
            if ((!DRY_RUN)); then
                for ((i = 0; i < 100; i++)); do
                    [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] && break
                    sleep 0.05
                done
                [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]] || die "redis-server did not start"
            fi
        fi
        for ((round = 1; round <= ROUNDS; round++)); do
            if ((PARTIAL)); then
                measure_partial "$scen" "$w" "$round" || true
                continue
            fi
            for target in $TARGETS; do
                ((TLS)) && [[ $target == direct ]] && continue
                measure "$scen" "$w" "$round" "$target" || true
            done
        done
        for i in "${!BACKEND_PIDS[@]}"; do
            ((DRY_RUN)) && echo "+ kill -TERM <sg-backend pid>" >&2
            stop_pid "${BACKEND_PIDS[i]}"
        done
        BACKEND_PIDS=()
    done
done

# ---------------------------------------------------------------- 5. summary
if ((DRY_RUN)); then
    show python3 "$BENCH_DIR/summarize.py" "$OUT" >&2
    info "dry run done; rendered configs in $TMP"
    exit 0
fi
echo >&2
if (($(wc -l <"$OUT/runs.tsv") > 1)); then
    python3 "$BENCH_DIR/summarize.py" "$OUT"
else
    warn "no measurement succeeded"
fi
info "results: $OUT (summary.md, runs.tsv, json/, hgrm/, logs/, commands.log)"
if ((${#FAILURES[@]})); then
    warn "${#FAILURES[@]} measurement(s) failed and are left out of the tables:"
    printf '  %s\n' "${FAILURES[@]}" >&2
    exit 1
fi
