#!/usr/bin/env bash
# Sets the CPU frequency governor (default: performance) on every CPU, or on --cores only.
#
# Why: with the usual `powersave`/`schedutil`/`ondemand` governors a core slows down when it
# idles and takes time to speed up again. A gateway's load comes in bursts, so requests that
# arrive on a slowed-down core take longer, and benchmark results drift from run to run.
# `performance` keeps the cores at full speed: steadier latency and comparable benchmarks, at
# the cost of power and heat.
#
# What it changes: /sys/devices/system/cpu/cpuN/cpufreq/scaling_governor. Lasts until a
# reboot; `--undo --apply` writes the saved governors back. Where there is no cpufreq (most
# VMs and containers: the host decides the frequency) it says so and does nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 [--governor NAME] [--cores LIST] [--dry-run | --apply] [--undo]

Sets the CPU frequency governor. Without --apply it only prints what it would do.

  --governor NAME  the governor (default performance; see scaling_available_governors)
  --cores LIST     only these CPUs, e.g. 2-7 (default: all)

$(sg_common_usage)
EOF
}

GOVERNOR=performance
CORES=""
sg_opt() {
    case $1 in
    --governor)
        GOVERNOR=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --cores)
        CORES=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    esac
}

sg_init cpu-governor
sg_parse_args "$@"
[[ $GOVERNOR =~ ^[a-z_]{1,32}$ ]] || sg_usage_error "invalid --governor value '$GOVERNOR'"
declare -A only=()
if [[ -n $CORES ]]; then
    sg_parse_cpulist "$CORES" --cores
    for c in "${SG_CPULIST[@]}"; do only[$c]=1; done
fi
sg_require_root
sg_banner

if ((SG_UNDO)); then
    sg_undo_main
fi

cpudir=$(sg_sys /sys/devices/system/cpu)
files=()
for f in "$cpudir"/cpu[0-9]*/cpufreq/scaling_governor; do
    [[ -e $f ]] && files+=("$f")
done
if ((${#files[@]} == 0)); then
    sg_note "cpufreq is not available here (no /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor): usual in VMs and containers, where the host decides the CPU frequency; nothing to do"
    sg_finish
fi
# cpu10 after cpu9.
mapfile -t files < <(printf '%s\n' "${files[@]}" | sort -V)

driver=$(sg_read "${files[0]%/*}/scaling_driver") || driver="unknown"
printf 'cpufreq driver: %s; wanted governor: %s\n' "$driver" "$GOVERNOR"

matched=0
for f in "${files[@]}"; do
    cpu=${f#"$cpudir"/cpu}
    cpu=${cpu%%/*}
    if ((${#only[@]})) && [[ -z ${only[$cpu]-} ]]; then
        continue
    fi
    matched=$((matched + 1))
    status=0
    cur=$(sg_read "$f") || status=$?
    if ((status != 0)); then
        sg_note "cpu$cpu: cannot read its governor as $(id -un); skipped"
        continue
    fi
    if avail=$(sg_read "${f%/*}/scaling_available_governors"); then
        if [[ " $avail " != *" $GOVERNOR "* ]]; then
            sg_die "cpu$cpu does not offer the '$GOVERNOR' governor (it offers: $avail)"
        fi
    fi
    if [[ $cur == "$GOVERNOR" ]]; then
        sg_ok "cpu$cpu governor is already $cur"
        continue
    fi
    sg_write "$f" "$GOVERNOR" "$cur" || true
done
if ((${#only[@]})) && ((matched == 0)); then
    sg_note "none of the CPUs $CORES has cpufreq here; nothing to do"
fi

if [[ $GOVERNOR == performance ]]; then
    sg_note "performance keeps cores at full speed: steadier latency, more power and heat; with intel_pstate or amd-pstate also see energy_performance_preference (README.md)"
fi
sg_note "lasts until a reboot; --undo --apply puts the saved governors back"
sg_finish
