#!/usr/bin/env bash
# Runs the whole test suite: unit tests plus the black-box integration tests (the real
# gateway binary, real backends on 127.0.0.1). This is the command README.md gives and
# .ci/run calls. Any server a test needs is installed and started here, and stopped by PID
# on exit (none needed yet: every backend the tests use is started by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."

# One build profile for everything (release: the tests push 256 MiB through the gateway).
cargo test --release "$@"
