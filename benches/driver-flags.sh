#!/usr/bin/env bash
# Measures Shardgate's I/O driver settings against each other, interleaved over rounds:
# io_uring without setup flags, with COOP_TASKRUN + SINGLE_ISSUER (the default), with
# DEFER_TASKRUN on top, and the epoll driver. Prints the median CPU µs per request (the
# gateway's user+sys CPU from /proc over the run / requests), req/s and p99 per variant.
#
#   benches/driver-flags.sh [--rounds 3] [--duration 4] [--size 64] [--new-conn]
#
# Layout: gateway (1 worker) on CPU 0, backend and load generator on CPU 1. Loopback only;
# every run is bounded by --duration. Needs `cargo build --release --bins` first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SG_BIN_DIR:-$ROOT/target/release}
ROUNDS=3 DURATION=4 SIZE=64 NEWCONN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --new-conn) NEWCONN=--new-conn; shift ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
GW_PORT=${SG_BENCH_SHARDGATE_PORT:-18190}
BE_PORT=${SG_BENCH_BACKEND_PORT:-18181}
# shellcheck source=benches/variants.sh
. "$ROOT/benches/variants.sh"
bench_tmp flags
VARIANTS=("io_uring_flags = false" "io_uring_flags = true" "io_uring_defer_taskrun = true" 'driver = "epoll"')
NAMES=("io_uring, no setup flags" "io_uring, COOP_TASKRUN+SINGLE_ISSUER (default)" "io_uring, +DEFER_TASKRUN" "epoll")

run_one_backend_variants driver
