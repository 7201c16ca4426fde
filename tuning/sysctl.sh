#!/usr/bin/env bash
# Kernel network and file settings for a busy proxy: accept queues, SYN backlog, the packet
# backlog, ephemeral ports and TIME_WAIT reuse for upstream connections, the system-wide and
# per-process open-file caps, FIN timeout, no slow start after idle, and (only with
# --busy-poll) socket busy polling.
#
# Why: the kernel defaults suit a desktop. A gateway holds two sockets per proxied request
# (client and upstream), accepts bursts of new connections and opens many upstream ones; with
# the defaults those bursts overflow queues (dropped SYNs, retransmits after 1 s) and upstream
# churn runs out of ephemeral ports.
#
# It writes /proc/sys directly (like `sysctl -w`): the values last until a reboot. --persist
# also writes /etc/sysctl.d/90-shardgate.conf so they survive one. It only raises limits that
# are lower than its target (never lowers a bigger value someone chose), and skips keys this
# kernel does not have. The values before --apply are saved; `--undo --apply` restores them
# (and removes the sysctl.d file).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 [--dry-run | --apply] [--busy-poll] [--persist] [--undo]

Sets the kernel's network and file limits for a busy proxy (see the table this prints).
Without --apply it only prints what it would set.

  --busy-poll  also set net.core.busy_poll and net.core.busy_read to 50 us: sockets spin on
               the NIC queue instead of sleeping, which lowers latency a little and costs a
               CPU spinning; only for latency benchmarks on dedicated cores (see README.md)
  --persist    also write /etc/sysctl.d/90-shardgate.conf, so the values survive a reboot

$(sg_common_usage)
EOF
}

BUSY_POLL=0
PERSIST=0
sg_opt() {
    case $1 in
    --busy-poll) BUSY_POLL=1 SG_SHIFT=1 ;;
    --persist) PERSIST=1 SG_SHIFT=1 ;;
    esac
}

sg_init sysctl
sg_parse_args "$@"
sg_require_root
sg_banner

if ((SG_UNDO)); then
    sg_undo_main
fi

PERSIST_LINES=()

# want KEY MODE VALUE WHY: MODE is `min` (raise to at least VALUE), `max` (lower to at most
# VALUE), `set` (exactly VALUE) or `range` (a port range at least as wide as VALUE).
want() {
    local key=$1 mode=$2 value=$3 why=$4 file cur status lo hi clo chi
    file=$(sg_sysctl_path "$key")
    status=0
    cur=$(sg_read "$file") || status=$?
    if ((status == 1)); then
        sg_note "skipped $key: this kernel does not have it"
        return 0
    elif ((status == 2)); then
        sg_note "skipped $key: cannot read $(sg_show "$file") as $(id -un)"
        return 0
    fi
    cur=$(printf '%s' "$cur" | tr -s ' \t' '  ')
    local ok=0
    case $mode in
    min) [[ $cur =~ ^[0-9]+$ ]] && ((cur >= value)) && ok=1 ;;
    max) [[ $cur =~ ^[0-9]+$ ]] && ((cur <= value)) && ok=1 ;;
    set) [[ $cur == "$value" ]] && ok=1 ;;
    range)
        read -r lo hi <<<"$value"
        read -r clo chi <<<"$cur"
        [[ $clo =~ ^[0-9]+$ && $chi =~ ^[0-9]+$ ]] && ((clo <= lo && chi >= hi)) && ok=1
        ;;
    esac
    if ((ok)); then
        case $mode in
        min) sg_ok "$key = $cur (wanted at least $value)" ;;
        max) sg_ok "$key = $cur (wanted at most $value)" ;;
        range) sg_ok "$key = $cur (wanted at least $value)" ;;
        *) sg_ok "$key = $cur" ;;
        esac
        return 0
    fi
    sg_write "$file" "$value" "$cur" || return 0
    printf '    why: %s\n' "$why"
    PERSIST_LINES+=("# $why" "$key = $value")
}

# Accept queue per listening socket: the gateway asks listen() for 4096 per worker (one
# SO_REUSEPORT listener each) and the kernel silently caps that at somaxconn, 128 before 5.4.
want net.core.somaxconn min 65535 \
    "cap on each listener's accept queue; a full queue drops new connections"

# Connections in SYN-RECEIVED per listener; a burst of new clients (a benchmark without
# keep-alive) overflows the default (128 to a few thousand, by memory size); clients retry in 1 s.
want net.ipv4.tcp_max_syn_backlog min 65535 \
    "half-open connections queued per listener during connection bursts"

# Packets queued per CPU between the NIC interrupt and the TCP stack; drops show in column 2 of
# /proc/net/softnet_stat.
want net.core.netdev_max_backlog min 16384 \
    "per-CPU queue of received packets; the default 1000 drops packets at high rates"

# Every upstream connection uses a local ephemeral port; the default 32768-60999 is ~28k ports
# per upstream address, few when connections churn. Starts at 10000 to keep clear of services.
want net.ipv4.ip_local_port_range range "10000 65535" \
    "more ephemeral ports for connections to upstreams"

# Lets a new outgoing connection reuse a socket in TIME_WAIT (safe: TCP timestamps tell old
# segments apart). Only outgoing connections, i.e. gateway -> upstream. Default 2 = loopback only.
want net.ipv4.tcp_tw_reuse set 1 \
    "reuse TIME_WAIT ports for new upstream connections instead of running out of them"

# System-wide cap on open files: each proxied request holds a client and an upstream socket.
want fs.file-max min 2097152 \
    "system-wide open-file cap; every connection is a file descriptor"

# Ceiling for a process's open-file limit (RLIMIT_NOFILE): limits.sh raises it to 1048576,
# which cannot exceed nr_open.
want fs.nr_open min 1048576 \
    "per-process ceiling for the open-file limit that limits.sh raises"

# Orphaned connections wait this long in FIN-WAIT-2 for the peer's FIN (TIME_WAIT is a fixed
# 60 s and is not changed by this); 60 s holds memory and ports when clients vanish.
want net.ipv4.tcp_fin_timeout max 15 \
    "free connections stuck in FIN-WAIT-2 sooner"

# By default a connection idle for one RTO restarts from the initial congestion window; pooled
# upstream connections and keep-alive clients are idle between requests by nature.
want net.ipv4.tcp_slow_start_after_idle set 0 \
    "keep-alive and pooled upstream connections resume at full speed after a pause"

if ((BUSY_POLL)); then
    # Busy polling: a socket read (busy_read) or poll/epoll wait (busy_poll) spins up to this
    # many microseconds on the NIC's queue before sleeping. It cuts wake-up latency and burns
    # that CPU time even when nothing arrives; it applies to the epoll driver (and blocking
    # reads), not to io_uring, whose own NAPI busy polling Shardgate does not use yet.
    want net.core.busy_poll set 50 \
        "epoll waits spin 50 us on the NIC queue: lower latency, a CPU spinning (benchmarks)"
    want net.core.busy_read set 50 \
        "socket reads spin 50 us on the NIC queue: lower latency, a CPU spinning (benchmarks)"
else
    sg_note "busy polling left as it is (net.core.busy_poll/busy_read); --busy-poll sets them, at the cost of CPU spinning"
fi

if ((PERSIST)); then
    if ((${#PERSIST_LINES[@]})); then
        sg_file_write "$(sg_sys /etc/sysctl.d/90-shardgate.conf)" show < <(
            printf '# Written by shardgate tuning/sysctl.sh --persist; removed by its --undo --apply.\n'
            printf '%s\n' "${PERSIST_LINES[@]}"
        )
    else
        sg_note "--persist: nothing changed, so /etc/sysctl.d/90-shardgate.conf is not written"
    fi
else
    sg_note "the values last until a reboot; --persist also writes /etc/sysctl.d/90-shardgate.conf"
fi

sg_finish
