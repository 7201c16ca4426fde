#!/usr/bin/env bash
# Moves the network card's interrupts (IRQs) off the CPUs the gateway's workers run on.
#
# Why: each worker is pinned to one core and does all of its connections' work there. An IRQ
# landing on that core runs the NIC's receive processing (softirq) in the middle of it, and
# the worker's latency then depends on the traffic of every other connection. With the IRQs
# (and so the kernel's packet processing) on other cores, each worker core runs only its
# worker. This needs spare cores: e.g. workers on 2-7, IRQs on 0-1.
#
# What it changes: /proc/irq/N/smp_affinity_list of each NIC queue's IRQ, found in
# /proc/interrupts by --iface (the interface's MSI vectors, its virtio queues, names that
# contain it) or, without --iface, by name (virtioN-input.M/output.M, mlx5_*, eth*/ens*/enp*,
# i40e-*, ...-TxRx-N, ...). irqbalance would move them back within seconds, so with --apply it
# is stopped (it is started again by --undo). The values last until a reboot (or until
# irqbalance runs again); `--undo --apply` writes the saved ones back.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 --cores LIST [--iface NAME] [--irq-cpus LIST] [--dry-run | --apply]
       $0 --undo [--apply]

Moves NIC interrupts to CPUs the gateway does not use. Without --apply it only prints what
it would do.

  --cores LIST     the gateway's worker CPUs, e.g. 2-7 or 2-4,6 (the same as pin-workers.sh)
  --iface NAME     only this interface's IRQs (default: every IRQ that looks like a NIC queue)
  --irq-cpus LIST  where the IRQs go (default: every online CPU not in --cores)

irqbalance, if it runs, is stopped by --apply (else it moves the IRQs back) and started again
by --undo --apply. For a setting that survives reboots, see README.md (IRQBALANCE_BANNED_CPULIST).

$(sg_common_usage)
EOF
}

CORES=""
IFACE=""
IRQ_CPUS=""
sg_opt() {
    case $1 in
    --cores)
        CORES=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --iface)
        IFACE=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --irq-cpus)
        IRQ_CPUS=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    esac
}

sg_init irq-affinity
sg_parse_args "$@"

SYSTEMD=0
[[ -d $(sg_sys /run/systemd/system) ]] && SYSTEMD=1

# Is irqbalance running? (read-only; on the real system even in a sandbox, as nothing is run)
irqbalance_active() {
    if ((SYSTEMD)) && command -v systemctl >/dev/null; then
        systemctl is-active --quiet irqbalance 2>/dev/null
    elif command -v pgrep >/dev/null; then
        pgrep -x irqbalance >/dev/null 2>&1
    else
        return 1
    fi
}

if ((SG_UNDO)); then
    sg_require_root
    sg_banner
    marker="$(sg_state)/irqbalance-stopped"
    if ! sg_has_state && [[ ! -e $marker ]]; then
        sg_undo_main
    fi
    sg_undo_saved
    if [[ -e $marker ]]; then
        SG_CHANGES=$((SG_CHANGES + 1))
        if ((SYSTEMD)); then
            run systemctl start irqbalance
        else
            sg_note "irqbalance was stopped by --apply: start it again the way it was started"
        fi
    fi
    sg_undo_cleanup
    sg_finish
fi

[[ -n $CORES ]] || sg_usage_error "--cores LIST is required: the CPUs the gateway's workers run on (e.g. --cores 2-7)"
sg_parse_cpulist "$CORES" --cores
GW_CPUS=("${SG_CPULIST[@]}")
if [[ -n $IFACE && ! $IFACE =~ ^[A-Za-z0-9_.:@-]{1,15}$ ]]; then
    sg_usage_error "invalid --iface value '$IFACE'"
fi
sg_require_root
sg_banner

sg_online_cpus
ONLINE=("${SG_CPULIST[@]}")
declare -A is_online=() is_gw=()
for c in "${ONLINE[@]}"; do is_online[$c]=1; done
for c in "${GW_CPUS[@]}"; do
    is_gw[$c]=1
    [[ -n ${is_online[$c]-} ]] || sg_warn "CPU $c (in --cores) is not online here"
done

TARGET=()
if [[ -n $IRQ_CPUS ]]; then
    sg_parse_cpulist "$IRQ_CPUS" --irq-cpus
    for c in "${SG_CPULIST[@]}"; do
        [[ -n ${is_online[$c]-} ]] || sg_die "--irq-cpus: CPU $c is not online (online: $(sg_cpulist_compact "${ONLINE[@]}"))"
        [[ -z ${is_gw[$c]-} ]] || sg_warn "CPU $c is in both --irq-cpus and --cores"
        TARGET+=("$c")
    done
else
    for c in "${ONLINE[@]}"; do
        [[ -n ${is_gw[$c]-} ]] || TARGET+=("$c")
    done
fi
if ((${#TARGET[@]} == 0)); then
    sg_die "no CPU left for the NIC's interrupts: --cores $CORES covers every online CPU ($(sg_cpulist_compact "${ONLINE[@]}")); keep at least one core out of the gateway's list"
fi
TARGET_LIST=$(sg_cpulist_compact "${TARGET[@]}")
printf 'gateway cores: %s; NIC interrupts go to: %s\n' "$(sg_cpulist_compact "${GW_CPUS[@]}")" "$TARGET_LIST"

# --- Find the NIC's IRQs ---------------------------------------------------------------------

# IRQ names (the last column of /proc/interrupts) that look like NIC queues.
NIC_RE='^(virtio[0-9]+-(input|output)\.[0-9]+|mlx[45]_.*|(eth|ens|enp|eno|enx|em)[0-9].*|(i40e|ice|ixgbe|ixgbevf|igb|igc|iavf|bnxt|bnxt_en|ena|gve|qede|hns3|mana|nfp|sfc|efx|tg3|vmxnet3|cxgb4|hinic)[-_@].*|.*[-_](TxRx|txrx|rxtx|Tx-Rx|rx|tx)[-_][0-9]+)$'

declare -A msi=()
virtio_dev=""
if [[ -n $IFACE ]]; then
    ifdir=$(sg_sys "/sys/class/net/$IFACE")
    [[ -e $ifdir ]] || sg_die "no network interface '$IFACE' here (see: ip -br link)"
    if [[ -d $ifdir/device/msi_irqs ]]; then
        for f in "$ifdir"/device/msi_irqs/*; do
            [[ -e $f ]] && msi[${f##*/}]=1
        done
    fi
    if [[ -e $ifdir/device ]]; then
        dev=$(readlink -f "$ifdir/device")
        dev=${dev##*/}
        [[ $dev =~ ^virtio[0-9]+$ ]] && virtio_dev=$dev
    fi
    if [[ ! -e $ifdir/device ]]; then
        sg_note "$IFACE has no device (a virtual interface): its packets arrive through another interface's IRQs"
    fi
fi

is_nic_irq() { # IRQ NAME
    local irq=$1 name=$2
    if [[ -n $IFACE ]]; then
        [[ -n ${msi[$irq]-} ]] && return 0
        [[ -n $virtio_dev && $name =~ ^${virtio_dev}-(input|output)\. ]] && return 0
        [[ $name == "$IFACE" || $name == "$IFACE"[-_@]* || $name == *[-_]"$IFACE" || $name == *[-_]"$IFACE"[-_@]* ]] && return 0
        return 1
    fi
    [[ $name =~ $NIC_RE ]]
}

interrupts=$(sg_sys /proc/interrupts)
if ! [[ -r $interrupts ]]; then
    sg_note "cannot read /proc/interrupts; nothing to do"
    sg_finish
fi
IRQS=()
declare -A irq_name=()
ncpu=0
while read -r first rest; do
    if ((ncpu == 0)); then
        # Header: one column per CPU.
        read -r -a cols <<<"$first $rest"
        ncpu=${#cols[@]}
        continue
    fi
    [[ $first =~ ^([0-9]+):$ ]] || continue
    irq=${BASH_REMATCH[1]}
    read -r -a f <<<"$rest"
    ((${#f[@]} > ncpu)) || continue
    name=${f[${#f[@]} - 1]}
    if is_nic_irq "$irq" "$name"; then
        IRQS+=("$irq")
        irq_name[$irq]=$name
    fi
done <"$interrupts"

if ((${#IRQS[@]} == 0)); then
    if [[ -n $IFACE ]]; then
        sg_note "no interrupts of $IFACE found in /proc/interrupts; nothing to do"
    else
        sg_note "no NIC queue interrupts found in /proc/interrupts (looked for virtio*-input/output, mlx5_*, eth*, ens*, enp*, i40e-*, *-TxRx-*, ...); name the interface with --iface"
    fi
    sg_finish
fi
printf 'found %d NIC interrupt(s)%s: %s\n' "${#IRQS[@]}" "${IFACE:+ of $IFACE}" "${IRQS[*]}"

# --- irqbalance first, or it would undo the change within seconds ----------------------------

if irqbalance_active; then
    if ((SYSTEMD)); then
        sg_warn "irqbalance is running and would move the interrupts back: stopping it"
        run systemctl stop irqbalance
        if ! sg_dry; then
            sg_state_ensure
            : >"$(sg_state)/irqbalance-stopped"
        fi
        SG_CHANGES=$((SG_CHANGES + 1))
    else
        sg_warn "irqbalance is running and would move the interrupts back: stop it first (e.g. kill $(pgrep -x irqbalance | head -n1))"
    fi
else
    sg_note "irqbalance is not running (when it is, this script stops it: systemctl stop irqbalance)"
fi

# --- Move them -------------------------------------------------------------------------------

for irq in "${IRQS[@]}"; do
    file=$(sg_sys "/proc/irq/$irq/smp_affinity_list")
    status=0
    cur=$(sg_read "$file") || status=$?
    if ((status == 1)); then
        sg_note "irq $irq (${irq_name[$irq]}): no /proc/irq/$irq/smp_affinity_list; skipped"
        continue
    elif ((status == 2)); then
        sg_note "irq $irq (${irq_name[$irq]}): cannot read /proc/irq/$irq/smp_affinity_list as $(id -un); skipped"
        continue
    fi
    if [[ $cur == "$TARGET_LIST" ]]; then
        sg_ok "irq $irq (${irq_name[$irq]}) already on $cur"
        continue
    fi
    printf 'irq %s (%s): CPUs %s -> %s\n' "$irq" "${irq_name[$irq]}" "$cur" "$TARGET_LIST"
    sg_write "$file" "$TARGET_LIST" "$cur" || true
done

if ((SG_FAILED)); then
    sg_note "an IRQ whose affinity cannot be written is managed by the kernel (its driver spreads it itself)"
fi
sg_note "the change lasts until a reboot; --undo --apply puts the saved affinities back"
sg_finish
