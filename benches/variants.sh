# Shared by benches/driver-flags.sh and benches/health-overhead.sh: measure Shardgate
# configured several ways under the same load, and print the medians. Source it; it needs
# BIN (the release binaries), TMP (a scratch dir) and CLK (`getconf CLK_TCK`).

# bench_tmp NAME: a scratch directory TMP (/tmp/sg-NAME.*), a PIDS list the caller adds its
# background processes to, both cleaned up (killed, removed) on exit, and CLK.
bench_tmp() {
    TMP=$(mktemp -d "/tmp/sg-$1.XXXXXX")
    PIDS=()
    trap 'for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"' EXIT
    CLK=$(getconf CLK_TCK)
}

# sg_file_provider BIN CONFIG: makes CONFIG read its resources from the file. The default
# provider is the store, which would keep the first run's resources in ./data; builds from
# before the Admin API know no [deployment] section and read the file anyway (left as is).
sg_file_provider() {
    local bin=$1 config=$2
    grep -q '^\[deployment\]' "$config" && return 0
    cp "$config" "$config.try"
    printf '\n[deployment]\nconfig_provider = "file"\n' >> "$config.try"
    if "$bin" check -c "$config.try" >/dev/null 2>&1; then
        mv "$config.try" "$config"
    else
        rm -f "$config.try"
    fi
}

# measure_variant INDEX CONFIG PORT [sg-load args...]
# Starts the gateway ($GW_BIN, default $BIN/shardgate) on CONFIG, warms up 1 s, measures
# DURATION s of 64-connection load on PORT, stops it by PID, and appends "index
# cpu_us_per_req rps p99_us errors backend_us load_us p50_us p999_us" to $TMP/results.tsv.
# The gateway's CPU is user+sys of its whole process from /proc;
# backend_us is the same for the process BACKEND_PID (when set), load_us the load generator's
# own user+sys (bash `times` of the subshell that ran it), both per request.
measure_variant() {
    local i=$1 config=$2 port=$3
    shift 3
    sg_file_provider "${GW_BIN:-$BIN/shardgate}" "$config"
    "${GW_BIN:-$BIN/shardgate}" run -c "$config" 2>/dev/null &
    local gw=$!
    sleep 0.3
    taskset -c 1 "$BIN/sg-load" --url "${SCHEME:-http}://127.0.0.1:$port/" -c 64 -d 1 --quiet "$@" > /dev/null
    local t0 t1 b0=0 b1=0
    t0=$(awk '{print $14+$15}' "/proc/$gw/stat")
    [ -n "${BACKEND_PID:-}" ] && b0=$(awk '{print $14+$15}' "/proc/$BACKEND_PID/stat")
    (
        taskset -c 1 "$BIN/sg-load" --url "${SCHEME:-http}://127.0.0.1:$port/" -c 64 -d "$DURATION" \
            --quiet --json "$TMP/run.json" "$@" > /dev/null
        times > "$TMP/load.times"
    )
    t1=$(awk '{print $14+$15}' "/proc/$gw/stat")
    [ -n "${BACKEND_PID:-}" ] && b1=$(awk '{print $14+$15}' "/proc/$BACKEND_PID/stat")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    python3 - "$i" "$t0" "$t1" "$CLK" "$TMP/run.json" "$b0" "$b1" "$TMP/load.times" \
        >> "$TMP/results.tsv" <<'PY'
import json, re, sys
i, t0, t1, clk, path, b0, b1, times = sys.argv[1:]
d = json.load(open(path))
n = max(d["requests"], 1)
cpu_us = (float(t1) - float(t0)) / float(clk) * 1e6 / n
backend_us = (float(b1) - float(b0)) / float(clk) * 1e6 / n
# `times` prints the shell's own times, then its children's: "0m1.234s 0m0.567s".
child = open(times).read().split("\n")[1]
secs = sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", child))
print(f"{i}\t{cpu_us:.2f}\t{d['rps']:.0f}\t{d['p99_us']:.0f}\t{d['errors']}"
      f"\t{backend_us:.2f}\t{secs * 1e6 / n:.2f}\t{d['p50_us']:.0f}\t{d['p999_us']:.0f}")
PY
}

# print_variants LABEL NAME... : one markdown row per variant (medians over rounds), with the
# CPU ratio to the first variant. With NEIGHBOURS=1 also the backend's and the load
# generator's CPU per request (medians).
print_variants() {
    NEIGHBOURS=${NEIGHBOURS:-0} python3 - "$TMP/results.tsv" "$@" <<'PY'
import os, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
label, names = sys.argv[2], sys.argv[3:]
neighbours = os.environ["NEIGHBOURS"] == "1"
base = None
extra_head = " backend CPU µs/req | load generator CPU µs/req |" if neighbours else ""
print(f"| {label} | CPU µs/req (median, min-max) | ratio | req/s | p50 / p99 / p99.9 µs | errors |{extra_head}")
print("|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if neighbours else ""))
for i, name in enumerate(names):
    r = [x for x in rows if int(x[0]) == i]
    cpu = [float(x[1]) for x in r]
    med = statistics.median(cpu)
    base = base or med
    print(f"| {name} | {med:.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {med / base:.3f}× | "
          f"{statistics.median(float(x[2]) for x in r):,.0f} | "
          f"{statistics.median(float(x[7]) for x in r):,.0f} / "
          f"{statistics.median(float(x[3]) for x in r):,.0f} / "
          f"{statistics.median(float(x[8]) for x in r):,.0f} | {sum(int(x[4]) for x in r)} |"
          + (f" {statistics.median(float(x[5]) for x in r):.2f} |"
             f" {statistics.median(float(x[6]) for x in r):.2f} |" if neighbours else ""))
PY
}

# run_one_backend_variants LABEL: the common experiment. One sg-backend (BACKEND_SIZE-byte
# responses, default SIZE) on CPU 1, the gateway with WORKERS workers (default 1) on CPUS (default 0) configured with
# each of VARIANTS (lines added to [gateway]) in turn (run by VARIANT_BINS[i] when set, else
# $BIN/shardgate), interleaved over ROUNDS rounds, load
# with optional NEWCONN and LOAD_EXTRA (more sg-load arguments); prints the table (NAMES label the rows). Needs GW_PORT and BE_PORT,
# and PIDS (an array `bench_tmp` kills on exit). With TLS_CERT and TLS_KEY (PEM files) set,
# GW_PORT terminates TLS with them (the load then needs SCHEME=https).
run_one_backend_variants() {
    taskset -c 1 "$BIN/sg-backend" --listen "127.0.0.1:$BE_PORT" --size "${BACKEND_SIZE:-$SIZE}" \
        2>/dev/null &
    BACKEND_PID=$!
    PIDS+=("$BACKEND_PID")
    sleep 0.3
    : > "$TMP/results.tsv"
    local round i
    for round in $(seq 1 "$ROUNDS"); do
        for i in "${!VARIANTS[@]}"; do
            local listen="listen = [\"127.0.0.1:$GW_PORT\"]" ssl=""
            if [ -n "${TLS_CERT:-}" ]; then
                listen="listen = [\"127.0.0.1:$((GW_PORT + 100))\"]"$'\n'"listen_tls = [\"127.0.0.1:$GW_PORT\"]"
                ssl=$'[[ssls]]\nid = "bench"\nsnis = ["localhost"]\n'"cert = '''$(cat "$TLS_CERT")'''"$'\n'"key = '''$(cat "$TLS_KEY")'''"
            fi
            cat > "$TMP/gw.toml" <<EOT
[gateway]
$listen
workers = ${WORKERS:-1}
cpus = [${CPUS:-0}]
access_log = "off"
watch_config = false
${VARIANTS[$i]}
[[upstreams]]
id = "b"
nodes = { "127.0.0.1:$BE_PORT" = 1 }
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }
[[routes]]
uri = "/*"
upstream_id = "b"
$ssl
EOT
            GW_BIN=${VARIANT_BINS[$i]:-$BIN/shardgate}
            # shellcheck disable=SC2086 # LOAD_EXTRA is a list of sg-load arguments
            measure_variant "$i" "$TMP/gw.toml" "$GW_PORT" ${NEWCONN:-} ${LOAD_EXTRA:-}
        done
    done
    print_variants "$1" "${NAMES[@]}"
}

# run_with_and_without LABEL NODES UPSTREAM_EXTRA ROUTE_EXTRA: the common two-way experiment.
# The gateway (1 worker on CPU 0, access log off) proxies "/*" to upstream NODES, once as is
# and once with UPSTREAM_EXTRA added to the upstream and ROUTE_EXTRA to the route,
# interleaved over ROUNDS rounds, the load with optional LOAD_EXTRA (more sg-load arguments);
# prints the table (NAMES label the two rows). Needs GW_PORT.
run_with_and_without() {
    local label=$1 nodes=$2 upstream_extra=$3 route_extra=$4 round i
    : > "$TMP/results.tsv"
    for round in $(seq 1 "$ROUNDS"); do
        for i in 0 1; do
            local ue="" re=""
            if [ "$i" = 1 ]; then ue=$upstream_extra; re=$route_extra; fi
            cat > "$TMP/gw.toml" <<EOT
[gateway]
listen = ["127.0.0.1:$GW_PORT"]
workers = 1
cpus = [0]
access_log = "off"
watch_config = false
control_listen = "off"
[[upstreams]]
id = "b"
nodes = $nodes
keepalive_pool = { size = 320, idle_timeout = 60, requests = 100000 }
$ue
[[routes]]
uri = "/*"
upstream_id = "b"
$re
EOT
            # shellcheck disable=SC2086 # LOAD_EXTRA is a list of sg-load arguments
            measure_variant "$i" "$TMP/gw.toml" "$GW_PORT" ${LOAD_EXTRA:-}
        done
    done
    print_variants "$label" "${NAMES[@]}"
}
