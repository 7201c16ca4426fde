#!/usr/bin/env bash
# Self-test of the benchmark tooling; needs no built binaries and starts no server.
#   benches/selftest.sh
# 1. compare.sh --dry-run: targets interleaved per round, every process pinned, every load run
#    bounded and on loopback; rendered nginx/HAProxy configs pass `nginx -t`/`haproxy -c` when
#    those are installed (compare.sh checks them in dry runs too, and Shardgate's with
#    `shardgate check` when target/release/shardgate exists).
# 1b. the same for the lb-* scenarios: three backends on the backend core, each proxy's
#    balancing directive in its rendered config, and the one-backend configs left unchanged.
# 1c. the tls-* scenarios: https load runs (resumed ones with --tls-resume), every proxy's
#    config terminating TLS with the run's certificate, and no direct target.
# 2. summarize.py on made-up results: medians, spread, ratios to nginx, CPU per request, and
#    the lb-* notes (balancer stand-ins, split of backend CPU over the three backends).
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
check "one-backend scenarios: nginx upstream has one server and no balancing directive" \
    bash -c "up=\$(sed -n '/upstream backend {/,/}/p' '$ngx'); [[ \$(grep -c '^ *server ' <<<\"\$up\") -eq 1 ]] &&
             ! grep -Eq '^ *(least_conn|hash|#)' <<<\"\$up\""
check "one-backend scenarios: haproxy has one server and no balance line" \
    bash -c "grep -c '^ *server ' '$cfgdir/haproxy-w2.cfg' | grep -qx 1 && ! grep -q '^ *balance' '$cfgdir/haproxy-w2.cfg'"
check "one-backend scenarios: shardgate upstream has one node and no type" \
    bash -c "grep -qx 'nodes = { \"127.0.0.1:18081\" = 1 }' '$cfgdir/shardgate-w2.toml' && ! grep -q '^type' '$cfgdir/shardgate-w2.toml'"
check "unknown scenario is refused" bash -c "! ./compare.sh --dry-run --no-build --scenarios lb-foo >/dev/null 2>&1"

# ---------------------------------------------------------------- 1b. dry run, lb-* scenarios
mkdir -p "$WORK/lb"
if TMPDIR=$WORK/lb ./compare.sh --dry-run --no-build --rounds 1 --duration 5 \
    --scenarios lb-rr,lb-leastconn,lb-chash,lb-ewma --workers 1 --out "$WORK/out-lb" \
    >"$WORK/dry-lb.out" 2>"$WORK/dry-lb.err"; then
    ok "lb dry run exits 0"
else
    nok "lb dry run exits 0"
    cat "$WORK/dry-lb.err"
fi
L=$WORK/dry-lb.err
check "lb dry run starts no process" bash -c "! grep -q 'kill -TERM [0-9]' '$L'"
bcore=$(sed -n 's/^== cores: proxy [0-9,]* | backend \([0-9]*\) | .*/\1/p' "$L" | head -1)
nb=$(grep -c -- '/sg-backend --listen' "$L" || true)
nb_ok=$(grep -c -- "^+ taskset -c $bcore [^ ]*/sg-backend --listen 127\.0\.0\.1:1808[123] --size 64 --threads 1 " "$L" || true)
check "lb: three backends per scenario on ports 18081-18083, pinned to core $bcore, one thread each ($nb_ok of $nb)" \
    bash -c "[[ $nb -eq 12 && $nb_ok -eq 12 ]] && for s in rr leastconn chash ewma; do for i in 1 2 3; do grep -q \"backend\$i-lb-\$s-w1.log\" '$L' || exit 1; done; done"
check "lb: every backend stopped (12)" test "$(grep -c 'kill -TERM <sg-backend pid>' "$L")" -eq 12
order=$(sed -n 's/^== lb-chash, workers=1, round 1\/1: //p' "$L" | tr '\n' ' ')
check "lb: targets interleaved (got: $order)" test "$order" = "direct shardgate nginx haproxy "
check "lb: 4 x 4 warm-up + measured load runs, all on 127.0.0.1:<port>/bench, 64 connections, bounded" \
    bash -c "[[ \$(grep -c -- '/sg-load --url' '$L') -eq 32 ]] && grep -- '/sg-load --url' '$L' | grep -v -- '^+ timeout --foreground .* taskset -c [0-9,]* .*--url http://127\.0\.0\.1:[0-9]*/bench -c 64 -d [0-9]* .*--max-requests [0-9]*' | { ! grep -q .; }"
check "lb: no --new-conn" bash -c "! grep -q -- '--new-conn' '$L'"
lbdir=$(sed -n 's/^== rendered configs are kept in //p' "$L" | sed 's/ for review$//')
declare -A SG_TYPE=([rr]=roundrobin [leastconn]=least_conn [chash]=chash [ewma]=ewma)
# shellcheck disable=SC2016  # $request_uri is nginx's variable
declare -A NGX_DIR=([rr]='# round robin' [leastconn]='least_conn;' [chash]='hash $request_uri consistent;' [ewma]='least_conn;')
declare -A HAP_DIR=([rr]='balance roundrobin' [leastconn]='balance leastconn' [chash]='balance uri' [ewma]='balance leastconn')
for s in rr leastconn chash ewma; do
    sg=$lbdir/shardgate-lb-$s-w1.toml ng=$lbdir/nginx-lb-$s-w1-r1-nginx.conf hp=$lbdir/haproxy-lb-$s-w1.cfg
    check "lb-$s: shardgate type = \"${SG_TYPE[$s]}\" over the three nodes" \
        bash -c "grep -qx 'type = \"${SG_TYPE[$s]}\"' '$sg' &&
                 grep -qx 'nodes = { \"127.0.0.1:18081\" = 1, \"127.0.0.1:18082\" = 1, \"127.0.0.1:18083\" = 1 }' '$sg'"
    check "lb-$s: nginx '${NGX_DIR[$s]}' before keepalive, three servers" \
        bash -c "up=\$(sed -n '/upstream backend {/,/}/p' '$ng'); d=\$(grep -nF -- '${NGX_DIR[$s]}' <<<\"\$up\" | cut -d: -f1);
                 k=\$(grep -n 'keepalive 320;' <<<\"\$up\" | cut -d: -f1);
                 [[ -n \$d && -n \$k && \$d -lt \$k ]] &&
                 [[ \$(grep -cE '^ *server 127\.0\.0\.1:1808[123];' <<<\"\$up\") -eq 3 ]]"
    check "lb-$s: haproxy '${HAP_DIR[$s]}', three servers" \
        bash -c "grep -q '^    ${HAP_DIR[$s]}' '$hp' && [[ \$(grep -cE '^    server b[123] 127\.0\.0\.1:1808[123] ' '$hp') -eq 3 ]]"
done
check "lb-chash: shardgate hashes the request_uri var" \
    bash -c "grep -qx 'hash_on = \"vars\"' '$lbdir/shardgate-lb-chash-w1.toml' && grep -qx 'key = \"request_uri\"' '$lbdir/shardgate-lb-chash-w1.toml'"
check "lb-chash: haproxy hash-type consistent" grep -q '^    hash-type consistent$' "$lbdir/haproxy-lb-chash-w1.cfg"
check "lb-ewma: the nginx and haproxy stand-ins say so" \
    bash -c "grep -q 'least_conn;  # open-source nginx has no EWMA' '$lbdir/nginx-lb-ewma-w1-r1-nginx.conf' &&
             grep -q 'balance leastconn  # HAProxy has no EWMA' '$lbdir/haproxy-lb-ewma-w1.cfg'"
check "lb: no placeholder left in rendered configs" \
    bash -c "cat '$lbdir'/*.conf '$lbdir'/*.cfg '$lbdir'/*.toml | grep -v '^ *#' | { ! grep -q '@[A-Z_]*@'; }"
check "lb: config checks passed (shardgate check / nginx -t / haproxy -c, those available)" \
    bash -c "! grep -q 'config check failed' '$L'"
if [[ -x ../target/release/shardgate ]]; then
    check "lb: shardgate check ran on each lb config (4)" \
        test "$(grep -c 'shardgate check -c .*/shardgate-lb-[a-z]*-w1.toml' "$L")" -eq 4
fi

# ---------------------------------------------------------------- 1c. dry run, tls-* scenarios
mkdir -p "$WORK/tls"
if TMPDIR=$WORK/tls ./compare.sh --dry-run --no-build --rounds 1 --duration 5 \
    --scenarios tls-ka,tls-resume --workers 1 --out "$WORK/out-tls" \
    >"$WORK/dry-tls.out" 2>"$WORK/dry-tls.err"; then
    ok "tls dry run exits 0"
else
    nok "tls dry run exits 0"
    cat "$WORK/dry-tls.err"
fi
T=$WORK/dry-tls.err
tlsdir=$(sed -n 's/^== rendered configs are kept in //p' "$T" | sed 's/ for review$//')
order=$(sed -n 's/^== tls-ka, workers=1, round 1\/1: //p' "$T" | tr '\n' ' ')
check "tls: no direct target (got: $order)" test "$order" = "shardgate nginx haproxy "
check "tls: 2 x 3 warm-up + measured load runs, all https://127.0.0.1:<port>/bench" \
    bash -c "[[ \$(grep -c -- '/sg-load --url https://127\.0\.0\.1:[0-9]*/bench ' '$T') -eq 12 && \$(grep -c -- '/sg-load --url' '$T') -eq 12 ]]"
check "tls: tls-resume runs make new connections and resume (6)" \
    test "$(grep -c -- '--new-conn --tls-resume' "$T")" -eq 6
check "tls: the certificate was made" test -s "$tlsdir/tls.pem"
check "tls: shardgate listens for TLS with an ssls object" \
    bash -c "grep -q '^listen_tls = \[\"127.0.0.1:18090\"\]' '$tlsdir/shardgate-w1.toml' && grep -q '^snis = \[\"localhost\"\]' '$tlsdir/shardgate-w1.toml'"
check "tls: nginx listens with ssl and the certificate" \
    bash -c "grep -q 'listen 127.0.0.1:18091 reuseport backlog=4096 ssl;' '$tlsdir'/nginx-tls-ka-w1-r1-nginx.conf && grep -q 'ssl_certificate $tlsdir/tls.pem;' '$tlsdir'/nginx-tls-ka-w1-r1-nginx.conf"
check "tls: haproxy binds with ssl crt, X-Forwarded-Proto https" \
    bash -c "grep -q 'bind 127.0.0.1:18092 ssl crt $tlsdir/tls-combined.pem' '$tlsdir'/haproxy-w1.cfg && grep -q 'X-Forwarded-Proto https' '$tlsdir'/haproxy-w1.cfg"

# ---------------------------------------------------------------- 2. summarize.py
S=$WORK/sum
mkdir -p "$S/json"
printf 'scenario\tworkers\tround\ttarget\tsize\tnewconn\tjson\tproxy_ticks\tbackend_ticks\tclk_tck\tproxy_cpus\tbackend_cpus\tload_cpus\tcontended\tbackend_ticks_each\n' >"$S/runs.tsv"
row() { # target round rps requests proxy_ticks errors (env: SCEN, EACH = backend ticks a/b/c)
    local j="json/${SCEN:-small-ka}-$1-$2.json" each=${EACH:-50}
    printf '{"requests": %s, "errors": %s, "errors_by_kind": {"connect": %s}, "duration_s": 10.0, "rps": %s, "p50_us": 100.0, "p90_us": 150.0, "p99_us": %s, "p999_us": 900.0, "p9999_us": 1000.0, "max_us": 2000.0}\n' \
        "$4" "$6" "$6" "$3" "$((200 + $2))" >"$S/$j"
    printf '%s\t1\t%s\t%s\t64\t0\t%s\t%s\t%s\t100\t0\t1\t1\t0\t%s\n' \
        "${SCEN:-small-ka}" "$2" "$1" "$j" "$5" "$((${each//\// + }))" "$each" >>"$S/runs.tsv"
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
# lb-chash (every request on backend 3, direct on backend 1) and lb-rr (spread evenly)
SCEN=lb-chash EACH=0/0/60 row nginx 1 100000 1000000 1000 0
SCEN=lb-chash EACH=0/0/60 row shardgate 1 150000 1000000 500 0
SCEN=lb-chash EACH=60/0/0 row direct 1 300000 3000000 NA 0
SCEN=lb-rr EACH=20/21/19 row nginx 1 100000 1000000 1000 0
SCEN=lb-rr EACH=19/21/20 row nginx 2 100000 1000000 1000 0
SCEN=lb-rr EACH=20/20/20 row nginx 3 100000 1000000 1000 0
SCEN=lb-ewma EACH=30/20/10 row nginx 1 100000 1000000 1000 0
if python3 summarize.py "$S" >"$WORK/sum.out" 2>"$WORK/sum.err"; then
    ok "summarize.py exits 0"
else
    nok "summarize.py exits 0"
    cat "$WORK/sum.err"
fi
line() { sed -n '/^## small-ka/,/^## /p' "$S/summary.md" | grep "^| $1 " || true; }
check "nginx row: median 100,000, spread 90,000–110,000, 10.00 us/req, 1.00x" \
    bash -c "[[ '$(line nginx)' == '| nginx | 100,000 (90,000–110,000) | 100 | 202 | 900 | 10.00 | 1.00× | 1.00× |' ]]"
check "shardgate row: 1.50x req/s, 0.50x CPU, errors flagged" \
    bash -c "[[ '$(line 'shardgate †')' == '| shardgate † | 150,000 (140,000–160,000) | 100 | 202 | 900 | 5.00 | 1.50× | 0.50× |' ]]"
check "direct row: CPU n/a" bash -c "[[ '$(line direct)' == *'| n/a | 3.00× | n/a |' ]]"
check "error note lists the counts" grep -q '† shardgate: 3 errors' "$S/summary.md"
check "small-ka has no backend-split note" \
    bash -c "grep -q '^## small-ka' '$S/summary.md' && ! sed -n '/^## small-ka/,/^## /p' '$S/summary.md' | grep -q 'split over backends'"
check "lb-chash: backend split note (direct 100/0/0, proxies 0/0/100)" \
    grep -q 'split over backends 1/2/3 .*: direct 100/0/0 %, shardgate 0/0/100 %, nginx 0/0/100 %\.' "$S/summary.md"
check "lb-chash: one-URI note" grep -q 'every request hashes to the same backend for every proxy' "$S/summary.md"
check "lb-rr: median share per backend over rounds (33/35/33)" grep -q 'nginx 33/35/33 %' "$S/summary.md"
check "lb-ewma: the least_conn stand-ins are named" \
    bash -c "sed -n '/^## lb-ewma/,\$p' '$S/summary.md' | grep -q 'nginx .least_conn. and HAProxy .balance leastconn. stand in'"
check "lb sections after the one-backend ones, titled" \
    bash -c "grep '^## ' '$S/summary.md' | cut -d: -f1 | tr '\n' ' ' | grep -qx '## small-ka ## lb-rr ## lb-chash ## lb-ewma '"

echo
echo "$PASS passed, $FAIL failed"
((FAIL == 0))
