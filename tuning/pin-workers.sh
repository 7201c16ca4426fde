#!/usr/bin/env bash
# Pins the gateway's workers to chosen cores: writes `workers = N` and `cpus = [...]` into the
# [gateway] table of a config file (the gateway pins worker i to cpus[i % len(cpus)]).
#
# Why: each worker is a single-threaded runtime that owns its connections; pinned to its own
# core it keeps its caches warm and never competes with another worker. Choosing the cores
# keeps the workers away from the cores that take the NIC's interrupts (irq-affinity.sh), from
# a load generator in a benchmark, or from other services.
#
# What it changes: only the config file given with --config (nothing without it: it then just
# prints the settings). The file's previous contents are saved; `--undo --apply` puts them
# back (and refuses if the file was edited since, unless --force). Takes effect when the
# gateway next starts: workers are created at start, a reload does not move them.
#
# The alternative that leaves the config alone: `taskset -c 2-7 shardgate run -c config.toml`;
# with `cpus` empty the gateway runs one worker per allowed core and pins them in order.
#
# --apply edits a file and needs no root: only write access to the config and the state dir
# (set SHARDGATE_TUNING_STATE to a directory you own when not root).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
Usage: $0 --cores LIST [--config FILE] [--workers N] [--dry-run | --apply]
       $0 --undo [--apply]

Pins the gateway's workers to the given cores by setting, in the config's [gateway] table,
\`workers = N\` and \`cpus = [...]\`. Without --apply it only prints what it would set.

  --cores LIST    CPUs for the workers, in pinning order: 2-7, 0,2-4,6 ...
  --config FILE   the gateway config to edit (without it the settings are only printed)
  --workers N     number of workers (default: one per listed core; worker i runs on
                  cpus[i % len], so more workers than cores share them)

Alternative without editing the config (with \`cpus\` empty in it):
  taskset -c LIST shardgate run -c config.toml

$(sg_common_usage)
EOF
}

CORES=""
CONFIG=""
WORKERS=""
sg_opt() {
    case $1 in
    --cores)
        CORES=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --config | -c)
        CONFIG=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    --workers)
        WORKERS=$(sg_optarg "$@")
        SG_SHIFT=2
        ;;
    esac
}

sg_init pin-workers
sg_parse_args "$@"

if ((SG_UNDO)); then
    sg_banner
    sg_undo_main
fi

[[ -n $CORES ]] || sg_usage_error "--cores LIST is required: the CPUs for the workers (e.g. --cores 2-7)"
sg_parse_cpulist "$CORES" --cores
CPUS=("${SG_CPULIST[@]}")
if [[ -z $WORKERS ]]; then
    WORKERS=${#CPUS[@]}
elif ! [[ $WORKERS =~ ^[1-9][0-9]{0,4}$ ]]; then
    sg_usage_error "invalid --workers value '$WORKERS': expected a number from 1"
fi
sg_banner

CPUS_TOML="[$(printf '%s, ' "${CPUS[@]}")"
CPUS_TOML="${CPUS_TOML%, }]"
COMPACT=$(sg_cpulist_compact "${CPUS[@]}")

printf '[gateway] settings for workers on CPUs %s:\n' "$COMPACT"
printf '    workers = %s\n' "$WORKERS"
printf '    cpus = %s\n' "$CPUS_TOML"
if ((WORKERS > ${#CPUS[@]})); then
    sg_note "$WORKERS workers on ${#CPUS[@]} cores: worker i runs on cpus[i % ${#CPUS[@]}], so some cores run two or more"
elif ((WORKERS < ${#CPUS[@]})); then
    sg_note "$WORKERS workers use only the first $WORKERS of the ${#CPUS[@]} cores"
fi

# Cores this machine does not have: fine for a config meant for another machine.
sg_online_cpus >/dev/null
declare -A is_online=()
for c in "${SG_CPULIST[@]}"; do is_online[$c]=1; done
missing=()
for c in "${CPUS[@]}"; do
    [[ -n ${is_online[$c]-} ]] || missing+=("$c")
done
if ((${#missing[@]})); then
    sg_warn "CPU(s) $(sg_cpulist_compact "${missing[@]}") not online on this machine (online: $(sg_cpulist_compact "${SG_CPULIST[@]}")): a worker cannot be pinned there (fine if the config is for another machine)"
fi

# ---------------------------------------------------------------------------------------------
# A small TOML line scanner: enough to tell table headers, keys and multi-line arrays apart,
# with strings and comments taken into account. State carried from line to line:
T_DEPTH=0 # open [ and { brackets
T_STR=""  # the open multi-line string's delimiter, if any

toml_scan() {
    local s=$1 i=0 n=${#1} c
    while ((i < n)); do
        c=${s:i:1}
        case $T_STR in
        '"""' | "'''")
            if [[ ${s:i:3} == "$T_STR" ]]; then
                T_STR=""
                i=$((i + 3))
                continue
            fi
            if [[ $T_STR == '"""' && $c == "\\" ]]; then i=$((i + 1)); fi
            ;;
        '"')
            if [[ $c == "\\" ]]; then
                i=$((i + 1))
            elif [[ $c == '"' ]]; then
                T_STR=""
            fi
            ;;
        "'")
            if [[ $c == "'" ]]; then T_STR=""; fi
            ;;
        *)
            if [[ ${s:i:3} == '"""' || ${s:i:3} == "'''" ]]; then
                T_STR=${s:i:3}
                i=$((i + 3))
                continue
            fi
            case $c in
            '#') break ;;
            '"' | "'") T_STR=$c ;;
            '[' | '{') T_DEPTH=$((T_DEPTH + 1)) ;;
            ']' | '}') if ((T_DEPTH > 0)); then T_DEPTH=$((T_DEPTH - 1)); fi ;;
            esac
            ;;
        esac
        i=$((i + 1))
    done
    # A one-line string cannot go on to the next line.
    if [[ $T_STR == '"' || $T_STR == "'" ]]; then T_STR=""; fi
}

# The value written after `key =` on a line, without a trailing comment, for messages.
toml_value() {
    local v=${1#*=}
    v=${v%%#*}
    v=${v#"${v%%[![:space:]]*}"}
    v=${v%"${v##*[![:space:]]}"}
    printf '%s' "$v"
}

if [[ -z $CONFIG ]]; then
    sg_note "no --config given: put these lines in the [gateway] table of the gateway's config, or pass --config FILE"
else
    [[ -f $CONFIG ]] || sg_die "config file $CONFIG does not exist (or cannot be reached as $(id -un))"
    [[ -r $CONFIG ]] || sg_die "cannot read config file $CONFIG"
    CONFIG_REAL=$(realpath -e "$CONFIG")
    mapfile -t lines <"$CONFIG_REAL"

    # Pass 1: where is [gateway], and its workers / cpus / pin_cores lines?
    section=""
    gw_header=-1 workers_at=-1 cpus_at=-1 cpus_end=-1 pin_at=-1
    for i in "${!lines[@]}"; do
        line=${lines[i]}
        if ((T_DEPTH == 0)) && [[ -z $T_STR ]]; then
            if [[ $line =~ ^[[:space:]]*\[ ]]; then
                if [[ $line =~ ^[[:space:]]*\[[[:space:]]*gateway[[:space:]]*\][[:space:]]*(#.*)?$ ]]; then
                    section=gateway
                    gw_header=$i
                else
                    section=other
                fi
            elif [[ -z $section && $line =~ ^[[:space:]]*\"?gateway\"?[[:space:]]*[=.] ]]; then
                sg_die "$CONFIG sets gateway as an inline table or dotted keys; write a [gateway] table (or edit it by hand)"
            elif [[ $section == gateway ]]; then
                if [[ $line =~ ^[[:space:]]*workers[[:space:]]*= ]]; then
                    workers_at=$i
                elif [[ $line =~ ^[[:space:]]*cpus[[:space:]]*= ]]; then
                    cpus_at=$i
                elif [[ $line =~ ^[[:space:]]*pin_cores[[:space:]]*= ]]; then
                    pin_at=$i
                fi
            fi
        fi
        toml_scan "$line"
        if ((cpus_at >= 0 && cpus_end < 0)) && ((T_DEPTH == 0)); then
            cpus_end=$i
        fi
    done

    # Pass 2: the new contents.
    indent() { [[ $1 =~ ^([[:space:]]*) ]] && printf '%s' "${BASH_REMATCH[1]}"; }
    WORKERS_LINE="workers = $WORKERS"
    CPUS_LINE="cpus = $CPUS_TOML"
    out=()
    changes=()
    for i in "${!lines[@]}"; do
        line=${lines[i]}
        if ((i == workers_at)); then
            new="$(indent "$line")$WORKERS_LINE"
            [[ $(toml_value "$line") == "$WORKERS" ]] && new=$line
            out+=("$new")
            [[ $new == "$line" ]] || changes+=("workers = $WORKERS (now $(toml_value "$line"))")
        elif ((i == cpus_at)); then
            old=$(toml_value "$line")
            ((cpus_end > cpus_at)) && old="$old ..."
            if [[ $old == "$CPUS_TOML" ]]; then
                out+=("$line")
            else
                out+=("$(indent "$line")$CPUS_LINE")
                changes+=("cpus = $CPUS_TOML (now $old)")
            fi
        elif ((cpus_at >= 0 && i > cpus_at && i <= cpus_end)); then
            # The rest of a multi-line cpus array.
            [[ $(toml_value "${lines[cpus_at]}") == "$CPUS_TOML" ]] && out+=("$line")
        elif ((i == pin_at)) && [[ $(toml_value "$line") != true ]]; then
            out+=("$(indent "$line")pin_cores = true")
            changes+=("pin_cores = true (now $(toml_value "$line"); cpus only count when workers are pinned)")
        else
            out+=("$line")
        fi
        if ((i == gw_header)); then
            if ((workers_at < 0)); then
                out+=("$WORKERS_LINE")
                changes+=("workers = $WORKERS (not set now: 0, one per available core)")
            fi
            if ((cpus_at < 0)); then
                out+=("$CPUS_LINE")
                changes+=("cpus = $CPUS_TOML (not set now: the process's allowed cores in order)")
            fi
        fi
    done
    if ((gw_header < 0)); then
        # No [gateway] table: add one at the end (a table header may come after others).
        out+=("" "[gateway]" "$WORKERS_LINE" "$CPUS_LINE")
        changes+=("a [gateway] table with workers = $WORKERS and cpus = $CPUS_TOML (none now)")
    fi

    if ((${#changes[@]} == 0)); then
        sg_ok "$CONFIG already has workers = $WORKERS and cpus = $CPUS_TOML in [gateway]"
    else
        for c in "${changes[@]}"; do
            if sg_dry; then
                printf 'would set: %s [gateway] %s\n' "$CONFIG" "$c"
            else
                printf 'setting: %s [gateway] %s\n' "$CONFIG" "$c"
            fi
        done
        sg_file_write "$CONFIG_REAL" noshow < <(printf '%s\n' "${out[@]}")
        sg_note "restart the gateway for this to take effect: workers are started and pinned when it starts (a reload does not move them); 'shardgate check -c $CONFIG' validates the file"
    fi
fi

printf '\nalternative, without editing the config: leave cpus empty (and workers = 0) and start the gateway\n'
printf 'under taskset; it then runs one worker per allowed core, pinned in order:\n'
printf '    taskset -c %s shardgate run -c %s\n' "$COMPACT" "${CONFIG:-config.toml}"
printf '  (under systemd: CPUAffinity=%s in the [Service] section of its unit does the same)\n' "$COMPACT"

sg_finish
