#!/usr/bin/env bash
# Measures two Shardgate builds under the same load, interleaved over rounds, for a change
# to the request path: this tree's build and a base build (another commit's binary). Prints
# the median CPU µs per request of each (the gateway's user+sys CPU from /proc over the run
# / requests), the ratio to the base, req/s and p50 / p99 / p99.9.
#
#   benches/before-after.sh --base-bin PATH [--rounds 5] [--duration 4] [--size 64] [--new-conn] [--tls]
#
# --tls: the gateway terminates HTTPS (an ECDSA P-256 certificate made with openssl for the
# run) and the load generator speaks it (TLS 1.3; with --new-conn a full handshake per
# request).
#
# A base binary, e.g. for commit REV:
#   git worktree add /tmp/sg-base REV
#   (cd /tmp/sg-base && CARGO_TARGET_DIR=/tmp/sg-base/target cargo build --release --bin shardgate)
#   benches/before-after.sh --base-bin /tmp/sg-base/target/release/shardgate
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1. Loopback only;
# every run is bounded by --duration. Needs `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=5 DURATION=4 SIZE=64 NEWCONN="" BASE_BIN="" TLS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --base-bin) BASE_BIN=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --new-conn) NEWCONN=--new-conn; shift ;;
        --tls) TLS=1; shift ;;
        -h|--help) sed -n 2,19p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
if [ ! -x "$BASE_BIN" ]; then
    echo "--base-bin PATH (an executable shardgate) is required; see --help" >&2
    exit 2
fi
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18390}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18381}
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp before-after
if [ "$TLS" = 1 ]; then
    TLS_CERT=$TMP/tls.pem TLS_KEY=$TMP/tls.key SCHEME=https
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -keyout "$TLS_KEY" -out "$TLS_CERT" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost 2>/dev/null
fi
# The config must load on both builds: only settings both know.
VARIANTS=("" "")
VARIANT_BINS=("$BASE_BIN" "$BIN/shardgate")
NAMES=("base ($BASE_BIN)" "this tree")
run_one_backend_variants build
