#!/usr/bin/env bash
# Self-test of the benchmark tooling; needs no built binaries and starts no server.
#   benches/selftest.sh
# 1. compare.sh --dry-run: targets interleaved per round, every process pinned, every load run
#    bounded and on loopback; rendered nginx/HAProxy configs pass `nginx -t`/`haproxy -c` when
#    those are installed (compare.sh checks them in dry runs too).
# 2. summarize.py on made-up results: medians, spread, ratios to nginx, CPU per request.
set -euo pipefail
cd "$(dirname "$0")"

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
nok() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; }
check() { # check DESCRIPTION command...
    local d=$1
    shift
    if "$@"; then ok "$d"; else nok "$d"; fi
}

WORK=$(mktemp -d)
trap '[[ -n ${KEEP:-} ]] || rm -rf -- "$WORK"' EXIT

# ---------------------------------------------------------------- 1. dry run
if TMPDIR=$WORK ./compare.sh --dry-run --no-build --rounds 2 --duration 5 --scenarios small-ka,newconn \
    --workers "1 2" --out "$WORK/out" >"$WORK/dry.out" 2>"$WORK/dry.err"; then
    ok "compare.sh --dry-run exits 0"
else
    nok "compare.sh --dry-run exits 0"
    cat "$WORK/dry.err"
fi
D=$WORK/dry.err
check "dry run starts no process" bash -c "! grep -q 'kill -TERM [0-9]' '$D'"
check "dry run creates no results dir" test ! -e "$WORK/out"

order=$(sed -n 's/^== small-ka, workers=1, round [0-9]\/2: //p' "$D" | tr '\n' ' ')
check "targets interleaved per round (got: $order)" \
    test "$order" = "direct shardgate nginx haproxy direct shardgate nginx haproxy "

loads=$(grep -c -- '/sg-load --url' "$D" || true)
# 2 scenarios x 2 worker counts x 2 rounds x 4 targets x (warm-up + measured run)
check "one warm-up and one measured load run per measurement ($loads)" test "$loads" -eq 64
check "every load run on 127.0.0.1, bounded by -d, --max-requests and timeout" \
    bash -c "grep -- '/sg-load --url' '$D' | grep -v -- '^+ timeout --foreground .* taskset -c [0-9,]* .*--url http://127\.0\.0\.1:[0-9]*/bench -c 64 -d [0-9]* .*--max-requests [0-9]*' | { ! grep -q .; }"
check "measured runs write JSON" test "$(grep -c -- '-d 5 .*--json ' "$D")" -eq 32
check "newconn runs use --new-conn" test "$(grep -c -- '--new-conn' "$D")" -eq 32
check "every proxy and backend start is pinned with taskset" \
    bash -c "grep -E '(shardgate run|nginx -p|haproxy -db|sg-backend --listen)' '$D' | grep -v '^+ taskset -c [0-9,]* ' | { ! grep -q .; }"
check "workers=1: proxy on core 0, load and backend on core 1" \
    grep -q -- '== cores: proxy 0 | backend 1 | load generator 1' "$D"
if [[ $(nproc) -eq 2 ]]; then
    check "workers=2 on 2 cores warns about contention" grep -q 'contended' "$D"
fi

cfgdir=$(sed -n 's/^== rendered configs are kept in //p' "$D" | sed 's/ for review$//')
check "configs rendered" test -s "$cfgdir/shardgate-w2.toml"
check "shardgate config pins workers=2 to cpus [0,1]" \
    bash -c "grep -qx 'workers = 2' '$cfgdir/shardgate-w2.toml' && grep -qx 'cpus = \[0,1\]' '$cfgdir/shardgate-w2.toml'"
ngx=$(ls "$cfgdir"/nginx-small-ka-w2-r1-nginx.conf 2>/dev/null || true)
check "nginx config: 2 workers with affinity 1 10" \
    bash -c "grep -qx 'worker_processes 2;' '$ngx' && grep -qx 'worker_cpu_affinity 1 10;' '$ngx'"
check "haproxy config: nbthread 2, cpu-map to 0 1" \
    bash -c "grep -q '^ *nbthread 2$' '$cfgdir/haproxy-w2.cfg' && grep -q '^ *cpu-map auto:1/1-2 0 1$' '$cfgdir/haproxy-w2.cfg'"
check "no placeholder left in rendered configs" \
    bash -c "cat '$cfgdir'/*.conf '$cfgdir'/*.cfg '$cfgdir'/*.toml | grep -v '^ *#' | { ! grep -q '@[A-Z_]*@'; }"
if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then
    check "nginx -t passes on the rendered configs (run by the dry run)" \
        bash -c "! grep -q 'config check failed' '$D'"
fi

# ---------------------------------------------------------------- 2. summarize.py
S=$WORK/sum
mkdir -p "$S/json"
printf 'scenario\tworkers\tround\ttarget\tsize\tnewconn\tjson\tproxy_ticks\tbackend_ticks\tclk_tck\tproxy_cpus\tbackend_cpus\tload_cpus\tcontended\n' >"$S/runs.tsv"
row() { # target round rps requests proxy_ticks errors
    local j="json/$1-$2.json"
    printf '{"requests": %s, "errors": %s, "errors_by_kind": {"connect": %s}, "duration_s": 10.0, "rps": %s, "p50_us": 100.0, "p90_us": 150.0, "p99_us": %s, "p999_us": 900.0, "p9999_us": 1000.0, "max_us": 2000.0}\n' \
        "$4" "$6" "$6" "$3" "$((200 + $2))" >"$S/$j"
    printf 'small-ka\t1\t%s\t%s\t64\t0\t%s\t%s\t50\t100\t0\t1\t1\t0\n' "$2" "$1" "$j" "$5" >>"$S/runs.tsv"
}
# nginx: 100k, 90k, 110k req/s -> median 100k; 1,000,000 requests with 1000 ticks = 10 us/req
row nginx 1 100000 1000000 1000 0
row nginx 2 90000 1000000 1000 0
row nginx 3 110000 1000000 1000 0
# shardgate: median 150k; 1,000,000 requests with 500 ticks = 5 us/req; errors in one round
row shardgate 1 150000 1000000 500 0
row shardgate 2 160000 1000000 500 3
row shardgate 3 140000 1000000 500 0
row direct 1 300000 3000000 NA 0
if python3 summarize.py "$S" >"$WORK/sum.out" 2>"$WORK/sum.err"; then
    ok "summarize.py exits 0"
else
    nok "summarize.py exits 0"
    cat "$WORK/sum.err"
fi
line() { grep "^| $1 " "$S/summary.md" || true; }
check "nginx row: median 100,000, spread 90,000–110,000, 10.00 us/req, 1.00x" \
    bash -c "[[ '$(line nginx)' == '| nginx | 100,000 (90,000–110,000) | 100 | 202 | 900 | 10.00 | 1.00× | 1.00× |' ]]"
check "shardgate row: 1.50x req/s, 0.50x CPU, errors flagged" \
    bash -c "[[ '$(line 'shardgate †')' == '| shardgate † | 150,000 (140,000–160,000) | 100 | 202 | 900 | 5.00 | 1.50× | 0.50× |' ]]"
check "direct row: CPU n/a" bash -c "[[ '$(line direct)' == *'| n/a | 3.00× | n/a |' ]]"
check "error note lists the counts" grep -q '† shardgate: 3 errors' "$S/summary.md"

echo
echo "$PASS passed, $FAIL failed"
((FAIL == 0))
