#!/usr/bin/env bash
# Coverage-guided fuzzing of everything that parses untrusted bytes (cargo fuzz, libFuzzer).
#
#   benches/fuzz.sh                    # every target, 600 s each
#   benches/fuzz.sh 60                 # every target, 60 s each
#   benches/fuzz.sh 300 chunked vars   # two targets, 300 s each
#
# Targets (fuzz/fuzz_targets/, each a call of its harness in src/fuzzing/): request_head,
# chunked, response_head, vars, config_toml, resource_json, admin_body, h2_frames.
#
# Needs the nightly toolchain (cargo fuzz builds with -Z flags): without it the script says
# so and exits 0 (it never installs a toolchain). cargo-fuzz is installed with
# `cargo install cargo-fuzz --locked` when missing.
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET/, copied into the ignored
# working corpus fuzz/corpus/TARGET/, which keeps what the runs find). A crash, leak, OOM
# or timeout is kept in fuzz/artifacts/TARGET/ (replay one with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`), and the script exits 1.
# libFuzzer's output per target is in fuzz/logs/TARGET.log.
#
# Cargo runs under `flock $SG_CARGO_LOCK` (default /tmp/sg-cargo.lock, shared with other
# builds on this machine); set SG_CARGO_LOCK= to run without it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
ALL=(request_head chunked response_head vars config_toml resource_json admin_body h2_frames)
SECONDS_PER_TARGET=${1:-600}
if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -eq 0 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]   (targets: ${ALL[*]})" >&2
    exit 2
fi
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
    if [ ! -f "$FUZZ/fuzz_targets/$t.rs" ]; then
        echo "unknown target '$t' (targets: ${ALL[*]})" >&2
        exit 2
    fi
done

LOCK=${SG_CARGO_LOCK-/tmp/sg-cargo.lock}
locked() {
    if [ -n "$LOCK" ] && command -v flock >/dev/null; then
        flock "$LOCK" "$@"
    else
        "$@"
    fi
}

# The nightly toolchain, never installed here (RUSTUP_AUTO_INSTALL=0 keeps rustup from it).
if ! RUSTUP_AUTO_INSTALL=0 cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: skipped: no nightly toolchain (cargo fuzz needs one: rustup toolchain install nightly)."
    echo "The same harnesses run on stable in the test suite: cargo test --release --test it fuzz_properties"
    exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    locked cargo install cargo-fuzz --locked
fi

# The fuzz crate has its own target directory (fuzz/target): not the main crate's.
unset CARGO_TARGET_DIR
cd "$FUZZ"
echo "fuzz.sh: building ${#TARGETS[@]} target(s) ($(cargo +nightly --version))"
for t in "${TARGETS[@]}"; do
    locked cargo +nightly fuzz build -O "$t"
done

mkdir -p logs
declare -a ROWS
FAILED=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    before=$(find "artifacts/$t" -type f | wc -l)
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s"
    set +e
    locked cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 \
        -print_final_stats=1 >"logs/$t.log" 2>&1
    rc=$?
    set -e
    after=$(find "artifacts/$t" -type f | wc -l)
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "corpus/$t" -type f | wc -l)
    crashes=$((after - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # a failure libFuzzer kept no input for (a build error, say): see the log
    fi
    [ "$crashes" -eq 0 ] || FAILED=1
    ROWS+=("$(printf '%-14s %12s %9s %7s %8s %7s %8s' "$t" "${runs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "$corpus" "$crashes")")
    if [ "$crashes" -ne 0 ]; then
        echo "fuzz.sh: $t FAILED (exit $rc): see fuzz/logs/$t.log and fuzz/artifacts/$t/"
        grep -m1 -A12 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "logs/$t.log" || true
    fi
done

echo
printf '%-14s %12s %9s %7s %8s %7s %8s\n' target runs exec/s cov features corpus crashes
for r in "${ROWS[@]}"; do echo "$r"; done
if [ "$FAILED" -ne 0 ]; then
    echo "fuzz.sh: crashes found (inputs kept in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: no crash in ${#TARGETS[@]} target(s) x ${SECONDS_PER_TARGET}s"
