#!/usr/bin/env bash
# Lets an idle vCPU poll before it halts, in a KVM guest that uses the haltpoll cpuidle driver
# (sets guest_halt_poll_ns, default 200000 = 200 µs).
#
# Why: in a KVM guest an idle vCPU halts, which exits to the host, and waking it takes an
# inter-processor interrupt that costs the waking CPU a VM exit of its own. A gateway worker
# that does little work per request is idle between most events, so new connections, requests
# and upstream answers keep waking it, and the processes that wake it (on loopback: the
# clients and backends) pay for it. With guest halt polling an idle vCPU first polls for up to
# guest_halt_poll_ns, and a wake-up within that window needs no interrupt. Some platforms ship
# it set to 0 (off). On the benchmark machine (KVM, 0 by default) 200 µs cut the
# function-call interrupts to the gateway's core by 85% and raised new-connection requests/s
# by 5-6%, for every proxy alike (BENCHMARKS.md). The cost: an idle vCPU spins on the host's
# CPU while it polls; the haltpoll governor shrinks the window when polling finds nothing.
#
# What it changes: /sys/module/haltpoll/parameters/guest_halt_poll_ns, nothing else. Lasts
# until a reboot; `--undo --apply` writes the saved value back. Where the haltpoll cpuidle
# driver is not in use (bare metal, other hypervisors) it says so and does nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 [--ns N] [--dry-run | --apply] [--undo]

Sets how long an idle vCPU polls before it halts (KVM guests with the haltpoll cpuidle
driver). Without --apply it only prints what it would do.

  --ns N   the longest poll, in nanoseconds (default 200000; 0 turns polling off; at most
           10000000)

$(sg_common_usage)
EOF
}

NS=200000
sg_opt() {
    case $1 in
    --ns)
        NS=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    esac
}

sg_init halt-poll
sg_parse_args "$@"
if ! [[ $NS =~ ^[0-9]{1,8}$ ]] || ((10#$NS > 10000000)); then
    sg_usage_error "invalid --ns value '$NS' (nanoseconds, 0 to 10000000)"
fi
NS=$((10#$NS))
sg_require_root
sg_banner

if ((SG_UNDO)); then
    sg_undo_main
fi

driver=$(sg_read "$(sg_sys /sys/devices/system/cpu/cpuidle/current_driver)") || driver=""
param=$(sg_sys /sys/module/haltpoll/parameters/guest_halt_poll_ns)
if [[ $driver != haltpoll || ! -e $param ]]; then
    sg_note "the haltpoll cpuidle driver is not in use here (cpuidle driver: ${driver:-none}): guest halt polling applies to KVM guests only; nothing to do"
    sg_finish
fi

status=0
cur=$(sg_read "$param") || status=$?
if ((status != 0)); then
    sg_die "cannot read $(sg_show "$param") as $(id -un)"
fi
printf 'cpuidle driver: haltpoll; guest_halt_poll_ns: %s, wanted %s\n' "$cur" "$NS"
if [[ $cur == "$NS" ]]; then
    sg_ok "guest_halt_poll_ns is already $cur"
else
    sg_write "$param" "$NS" "$cur" || true
fi
if ((NS > 0)); then
    sg_note "an idle vCPU now spins on the host for up to $NS ns before it halts: fewer wake-up interrupts, more host CPU while idle"
fi
sg_note "lasts until a reboot; --undo --apply puts the saved value back"
sg_finish
