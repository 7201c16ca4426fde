#!/usr/bin/env bash
# Measures the splice(2) relay of long response bodies (the default, with a 16 KiB
# TCP_NOTSENT_LOWAT on the client socket; and `splice_lowat = 0`, no limit on unsent bytes)
# against copying them through the gateway's buffers (`splice = false`), interleaved over
# rounds. Prints the median CPU µs per request of the gateway, and of the backend and the
# load generator too: on loopback the bytes the gateway no longer copies are still copied
# by the load generator, and where they were last touched changes what that costs it.
#
#   benches/splice.sh [--rounds 3] [--duration 4] [--size 1048576] [--workers 1|2] [--upload]
#
# --upload sends POST bodies of --size bytes (spliced client -> upstream) and gets 64-byte
# answers, instead of GETs of --size-byte responses.
#
# Layout: gateway on CPU 0 (with --workers 2 on CPUs 0 and 1, contended), backend and load
# generator on CPU 1. Loopback only; every run is bounded by --duration. Needs
# `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=3 DURATION=4 SIZE=1048576 WORKERS=1 CPUS=0 UPLOAD=0
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --workers) WORKERS=$2; shift 2 ;;
        --upload) UPLOAD=1; shift ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case $WORKERS in 1) CPUS=0 ;; 2) CPUS=0,1 ;; *) echo "--workers is 1 or 2" >&2; exit 2 ;; esac
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18390}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18381}
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp splice
VARIANTS=("splice = true" "splice_lowat = 0" "splice = false")
NAMES=("splice, 16 KiB TCP_NOTSENT_LOWAT (default)" "splice, no unsent limit" "copy through 256 KiB buffers")
if ((UPLOAD)); then
    VARIANTS=("splice = true" "splice = false")
    NAMES=("splice (default)" "copy through the connection's buffer")
    BACKEND_SIZE=64 LOAD_EXTRA="--body-size $SIZE" NEIGHBOURS=1 \
        run_one_backend_variants "upload, $SIZE B, $WORKERS worker(s)"
else
    NEIGHBOURS=1 run_one_backend_variants "relay, $SIZE B, $WORKERS worker(s)"
fi
