#!/usr/bin/env bash
# Raises the open-file limit (RLIMIT_NOFILE, `ulimit -n`) for the gateway's user.
#
# Why: every client connection and every upstream connection (idle keep-alive pool connections
# included) is a file descriptor, and the usual soft limit is 1024: past ~500 concurrent
# proxied requests accept() fails with EMFILE. The gateway does not raise its own soft limit,
# so it runs with the soft limit of whatever starts it.
#
# What it writes:
#   /etc/security/limits.d/90-shardgate.conf  nofile soft and hard, for login sessions (ssh,
#       su, login: pam_limits reads it when a session starts, so open shells keep their limit);
#   with --unit NAME, on systemd: /etc/systemd/system/NAME.service.d/90-shardgate-limits.conf
#       with LimitNOFILE= (services never read limits.d), then `systemctl daemon-reload`.
# `--undo --apply` removes what it wrote (or puts back a file it replaced).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 [--dry-run | --apply] [--nofile N] [--user NAME] [--unit NAME] [--undo]

Raises the open-file limit for the gateway. Without --apply it only prints what it would do.

  --nofile N   the limit, soft and hard (default 1048576; at most fs.nr_open, which
               sysctl.sh raises to 1048576)
  --user NAME  the user that runs the gateway (default: every user, root included)
  --unit NAME  on systemd, also write a LimitNOFILE drop-in for this service (e.g. shardgate)
               and reload systemd; without it the drop-in is only printed

What matters in the end is \`ulimit -n\` in the shell (or the unit) that starts the gateway:
limits.d applies to sessions that start after --apply, not to shells already open.

$(sg_common_usage)
EOF
}

NOFILE=1048576
LIMIT_USER=""
UNIT=""
sg_opt() {
    case $1 in
    --nofile)
        NOFILE=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --user)
        LIMIT_USER=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --unit)
        UNIT=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    esac
}

sg_init limits
sg_parse_args "$@"
sg_require_root

if ! [[ $NOFILE =~ ^[0-9]{1,10}$ ]] || ((NOFILE < 1024)); then
    sg_usage_error "invalid --nofile value '$NOFILE': expected a number of at least 1024"
fi
if [[ -n $LIMIT_USER && ! $LIMIT_USER =~ ^[A-Za-z_][A-Za-z0-9_.-]*[$]?$ ]]; then
    sg_usage_error "invalid --user value '$LIMIT_USER'"
fi
if [[ -n $UNIT ]]; then
    [[ $UNIT =~ ^[A-Za-z0-9@._:-]+$ ]] || sg_usage_error "invalid --unit value '$UNIT'"
    [[ $UNIT == *.service ]] || UNIT="$UNIT.service"
fi

sg_banner

SYSTEMD=0
[[ -d $(sg_sys /run/systemd/system) ]] && SYSTEMD=1

if ((SG_UNDO)); then
    reload=0
    if [[ -s $(sg_state)/files.list ]] && grep -q '/etc/systemd/system/' "$(sg_state)/files.list"; then
        reload=1
    fi
    if ! sg_has_state; then
        sg_undo_main
    fi
    sg_undo_saved
    if ((reload)); then
        run systemctl daemon-reload
    fi
    sg_undo_cleanup
    sg_finish
fi

# The per-process ceiling: a nofile limit above fs.nr_open cannot be set, and pam_limits
# failing to set it can refuse the login altogether. Refuse to write such a file.
nr_open_file=$(sg_sys /proc/sys/fs/nr_open)
if nr_open=$(sg_read "$nr_open_file") && [[ $nr_open =~ ^[0-9]+$ ]]; then
    if ((NOFILE > nr_open)); then
        msg="--nofile $NOFILE is above fs.nr_open ($nr_open): raise fs.nr_open first (sysctl.sh --apply raises it to 1048576) or choose --nofile $nr_open or less"
        if sg_dry; then
            sg_warn "$msg; --apply will refuse"
        else
            sg_die "$msg (a limit above nr_open can make logins fail)"
        fi
    fi
else
    sg_note "cannot read /proc/sys/fs/nr_open; make sure --nofile $NOFILE is not above it"
fi

soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
printf 'this shell: open-file limit soft %s, hard %s; wanted %s\n' "$soft" "$hard" "$NOFILE"
if [[ $hard =~ ^[0-9]+$ ]] && ((hard > NOFILE)); then
    sg_warn "the hard limit here ($hard) is above $NOFILE: new sessions would get the lower one"
fi

# 1. pam_limits, for gateways started from a login shell (ssh, su, sudo -i, a terminal).
if [[ -d $(sg_sys /etc/security) ]]; then
    if [[ -n $LIMIT_USER ]]; then
        who=("$LIMIT_USER")
    else
        # `*` does not apply to root in limits.conf: root gets its own lines.
        who=("*" "root")
    fi
    sg_file_write "$(sg_sys /etc/security/limits.d/90-shardgate.conf)" show < <(
        printf '# Written by shardgate tuning/limits.sh; removed by its --undo --apply.\n'
        printf '# Open files for the gateway: a descriptor per client and per upstream connection.\n'
        printf '# Read by pam_limits when a session starts (not by systemd services).\n'
        for w in "${who[@]}"; do
            printf '%-8s soft nofile %s\n' "$w" "$NOFILE"
            printf '%-8s hard nofile %s\n' "$w" "$NOFILE"
        done
    )
else
    sg_note "/etc/security does not exist (no PAM limits here); set the limit where the gateway starts: ulimit -n $NOFILE"
fi

# 2. systemd services: LimitNOFILE= in the unit.
if ((SYSTEMD)); then
    if [[ -n $UNIT ]]; then
        sg_file_write "$(sg_sys "/etc/systemd/system/$UNIT.d/90-shardgate-limits.conf")" show < <(
            printf '# Written by shardgate tuning/limits.sh; removed by its --undo --apply.\n'
            printf '[Service]\nLimitNOFILE=%s\n' "$NOFILE"
        )
        run systemctl daemon-reload
        sg_note "restart $UNIT for the new limit to apply"
    else
        printf 'systemd: services do not read limits.d; if the gateway runs as a service, give its unit\n'
        printf '    [Service]\n    LimitNOFILE=%s\n' "$NOFILE"
        printf '  (e.g. systemctl edit shardgate, or run this script with --unit shardgate)\n'
    fi
elif [[ -n $UNIT ]]; then
    sg_note "--unit $UNIT ignored: systemd is not running here"
fi

# 3. The shell that starts the gateway.
sg_note "limits.d applies to sessions started after --apply; open shells keep their limit"
sg_note "what the gateway gets is 'ulimit -n' of the shell or unit that starts it: check it there, or run 'ulimit -n $NOFILE' (up to the hard limit) just before 'shardgate run'"
if [[ -z $SG_ROOT ]] && command -v pgrep >/dev/null; then
    while read -r pid; do
        [[ -n $pid ]] || continue
        if line=$(grep '^Max open files' "/proc/$pid/limits" 2>/dev/null); then
            read -r -a f <<<"$line"
            printf 'running gateway pid %s: open-file limit soft %s, hard %s\n' "$pid" "${f[3]}" "${f[4]}"
        fi
    done < <(pgrep -x shardgate || true)
fi

sg_finish
