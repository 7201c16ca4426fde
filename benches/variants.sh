# Shared by benches/driver-flags.sh and benches/health-overhead.sh: measure Shardgate
# configured several ways under the same load, and print the medians. Source it; it needs
# BIN (the release binaries), TMP (a scratch dir) and CLK (`getconf CLK_TCK`).

# measure_variant INDEX CONFIG PORT [sg-load args...]
# Starts the gateway on CONFIG, warms up 1 s, measures DURATION s of 64-connection load on
# PORT, stops it by PID, and appends "index cpu_us_per_req rps p99_us errors" to
# $TMP/results.tsv. The gateway's CPU is user+sys of its whole process from /proc.
measure_variant() {
    local i=$1 config=$2 port=$3
    shift 3
    "$BIN/shardgate" run -c "$config" 2>/dev/null &
    local gw=$!
    sleep 0.3
    taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$port/" -c 64 -d 1 --quiet "$@" > /dev/null
    local t0 t1
    t0=$(awk '{print $14+$15}' "/proc/$gw/stat")
    taskset -c 1 "$BIN/sg-load" --url "http://127.0.0.1:$port/" -c 64 -d "$DURATION" --quiet \
        --json "$TMP/run.json" "$@" > /dev/null
    t1=$(awk '{print $14+$15}' "/proc/$gw/stat")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    python3 - "$i" "$t0" "$t1" "$CLK" "$TMP/run.json" >> "$TMP/results.tsv" <<'PY'
import json, sys
i, t0, t1, clk, path = sys.argv[1:]
d = json.load(open(path))
cpu_us = (float(t1) - float(t0)) / float(clk) * 1e6 / max(d["requests"], 1)
print(f"{i}\t{cpu_us:.2f}\t{d['rps']:.0f}\t{d['p99_us']:.0f}\t{d['errors']}")
PY
}

# print_variants LABEL NAME... : one markdown row per variant (medians over rounds), with the
# CPU ratio to the first variant.
print_variants() {
    python3 - "$TMP/results.tsv" "$@" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
label, names = sys.argv[2], sys.argv[3:]
base = None
print(f"| {label} | CPU µs/req (median, min-max) | ratio | req/s | p99 µs | errors |")
print("|---|---:|---:|---:|---:|---:|")
for i, name in enumerate(names):
    r = [x for x in rows if int(x[0]) == i]
    cpu = [float(x[1]) for x in r]
    med = statistics.median(cpu)
    base = base or med
    print(f"| {name} | {med:.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | {med / base:.3f}× | "
          f"{statistics.median(float(x[2]) for x in r):,.0f} | "
          f"{statistics.median(float(x[3]) for x in r):,.0f} | {sum(int(x[4]) for x in r)} |")
PY
}
