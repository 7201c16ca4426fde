#!/usr/bin/env bash
# Runs the whole test suite: unit tests plus the black-box integration tests (the real
# gateway binary, real backends on 127.0.0.1). This is the command README.md gives and
# .ci/run calls. Any server a test needs is installed and started here, and stopped by PID
# on exit (none needed yet: every backend the tests use is started by the tests themselves,
# and the comparison script's self-test skips its nginx/HAProxy checks when they are absent).
set -euo pipefail
cd "$(dirname "$0")/.."

# One build profile for everything (release: the tests push 256 MiB through the gateway).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
