# shellcheck shell=bash
# Shared helpers for Shardgate's tuning scripts. Sourced by each script, never run by itself.
#
# What every script gets from here:
#   - the common flags: --dry-run (the default), --apply, --undo, --force, -h/--help;
#   - `run CMD...`: prints `would run: CMD` in a dry run, runs CMD with --apply;
#   - sg_write / sg_file_write: the same for writing a value to a /proc or /sys file, or a
#     whole file, saving what was there before;
#   - a state dir where the previous values are saved before anything is changed, so that
#     `--undo --apply` restores them exactly (the first --apply's values are kept: applying
#     twice and undoing once still gets back to the original system);
#   - CPU-list parsing (`2-7`, `2-4,6`) for --cores.
#
# A dry run works for any user: files it cannot read become notes, never failures. --apply
# needs root (pin-workers.sh, which only edits a config file, needs write access instead).
#
# Environment:
#   SHARDGATE_TUNING_STATE  state dir (default /var/lib/shardgate-tuning)
#   SHARDGATE_TUNING_ROOT   a directory used as prefix of every /proc, /sys and /etc path
#                           (default: none, the real system). This is for the test suite: with
#                           it set, --apply writes only below that directory, runs no command
#                           (`run` prints `sandbox: not run: ...`) and does not need root.

SG_ROOT="${SHARDGATE_TUNING_ROOT:-}"
SG_STATE_DIR="${SHARDGATE_TUNING_STATE:-${SG_ROOT}/var/lib/shardgate-tuning}"
SG_NAME=""         # this script's name, e.g. `sysctl`; names its state subdirectory
SG_MODE="dry-run"  # dry-run | apply
SG_MODE_SET=""     # the flag that set SG_MODE, to refuse `--dry-run --apply`
SG_UNDO=0
SG_FORCE=0
SG_FAILED=0        # changes that could not be made (the script then exits 1)
SG_CHANGES=0       # changes made or, in a dry run, that would be made
SG_SHIFT=0         # set by a script's sg_opt hook: how many arguments it consumed
SG_CPULIST=()      # result of sg_parse_cpulist
SG_ARGS=()         # the script's arguments, for messages

# ---------------------------------------------------------------------------------------------
# Messages

sg_die() {
    printf '%s: error: %s\n' "${SG_NAME:-tuning}.sh" "$*" >&2
    exit 1
}

sg_usage_error() {
    printf '%s: error: %s\n' "${SG_NAME:-tuning}.sh" "$*" >&2
    printf "Run '%s --help' for usage.\n" "$0" >&2
    exit 2
}

sg_note() { printf 'note: %s\n' "$*"; }
sg_warn() { printf 'warning: %s\n' "$*"; }
sg_ok() { printf 'ok: %s\n' "$*"; }

sg_dry() { [[ $SG_MODE == dry-run ]]; }

# The flags every script shares, for its --help text.
sg_common_usage() {
    cat <<'EOF'
Common flags:
  --dry-run   print what would change and change nothing (the default)
  --apply     make the changes (needs root); previous values are saved for --undo
  --undo      put back the values saved by --apply (a dry run unless --apply is given too:
              `--undo --apply` restores)
  --force     with --undo: restore a file even if it was edited after --apply
  -h, --help  this text

Environment:
  SHARDGATE_TUNING_STATE  where previous values are saved (default /var/lib/shardgate-tuning)
EOF
}

# ---------------------------------------------------------------------------------------------
# Arguments

# sg_parse_args "$@": handles the common flags; every other argument is offered to the
# script's `sg_opt` function (if it defines one), which sets SG_SHIFT to the number of
# arguments it consumed (0 = not its flag). `--flag=value` is split into `--flag value`.
sg_parse_args() {
    SG_ARGS=("$@")
    while (($#)); do
        if [[ $1 == --*=* ]]; then
            set -- "${1%%=*}" "${1#*=}" "${@:2}"
        fi
        case $1 in
        --dry-run | -n) sg_set_mode dry-run "$1" ;;
        --apply) sg_set_mode apply "$1" ;;
        --undo) SG_UNDO=1 ;;
        --force) SG_FORCE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            SG_SHIFT=0
            if declare -F sg_opt >/dev/null; then
                sg_opt "$@"
            fi
            if ((SG_SHIFT == 0)); then
                sg_usage_error "unknown argument: $1"
            fi
            shift $((SG_SHIFT - 1))
            ;;
        esac
        shift
    done
    if ((SG_FORCE)) && ! ((SG_UNDO)); then
        sg_usage_error "--force only means something with --undo"
    fi
}

sg_set_mode() {
    if [[ -n $SG_MODE_SET && $SG_MODE != "$1" ]]; then
        sg_usage_error "$SG_MODE_SET and $2 contradict each other"
    fi
    SG_MODE=$1
    SG_MODE_SET=$2
}

# For a script's sg_opt: the value of option $1, which must be present and not a flag.
sg_optarg() {
    if (($# < 2)) || [[ -z $2 || $2 == --* ]]; then
        sg_usage_error "$1 needs a value"
    fi
    printf '%s' "$2"
}

# --apply changes the system: it needs root, unless everything goes below a sandbox.
sg_require_root() {
    if [[ $SG_MODE == apply && -z $SG_ROOT && $EUID -ne 0 ]]; then
        sg_die "--apply changes the system and must run as root (try: sudo bash $0 ${SG_ARGS[*]}); without --apply nothing is changed"
    fi
}

# The first line every script prints: what kind of run this is.
sg_banner() {
    local what="$SG_NAME.sh"
    ((SG_UNDO)) && what="$what --undo"
    if sg_dry; then
        printf '%s: dry run: nothing is changed (add --apply to make these changes)\n' "$what"
    else
        printf '%s: applying\n' "$what"
    fi
    if [[ -n $SG_ROOT ]]; then
        sg_note "sandbox: every /proc, /sys and /etc path is below $SG_ROOT"
    fi
}

# Sets SG_NAME and checks the environment; called first by every script.
sg_init() {
    SG_NAME=$1
    if [[ -n $SG_ROOT ]]; then
        [[ -d $SG_ROOT ]] || sg_die "SHARDGATE_TUNING_ROOT=$SG_ROOT is not a directory"
        [[ $(cd "$SG_ROOT" && pwd -P) != / ]] || sg_die "SHARDGATE_TUNING_ROOT must not be /"
    fi
}

# Last call of every script: a summary, and exit 1 if anything failed.
sg_finish() {
    if ((SG_FAILED)); then
        printf '%s.sh: %d change(s) failed (see above)\n' "$SG_NAME" "$SG_FAILED" >&2
        exit 1
    fi
    if ((SG_CHANGES == 0)); then
        printf '%s.sh: nothing to change\n' "$SG_NAME"
    elif sg_dry; then
        printf '%s.sh: dry run: %d change(s) shown, none made\n' "$SG_NAME" "$SG_CHANGES"
    else
        printf '%s.sh: %d change(s) made\n' "$SG_NAME" "$SG_CHANGES"
    fi
    exit 0
}

# ---------------------------------------------------------------------------------------------
# Running commands and reading/writing system files

# Quotes a command for display, leaving plain words as they are.
sg_quote() {
    local out="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            out+="$a "
        else
            out+="$(printf '%q' "$a") "
        fi
    done
    printf '%s' "${out% }"
}

# run CMD...: prints the command in a dry run (and in a sandbox), runs it with --apply.
run() {
    if sg_dry; then
        printf 'would run: %s\n' "$(sg_quote "$@")"
    elif [[ -n $SG_ROOT ]]; then
        printf 'sandbox: not run: %s\n' "$(sg_quote "$@")"
    else
        printf 'running: %s\n' "$(sg_quote "$@")"
        "$@"
    fi
}

# The real path of a system path (/proc/..., /sys/..., /etc/...): below the sandbox, if any.
sg_sys() { printf '%s%s' "$SG_ROOT" "$1"; }

# The path to show for a real path: without the sandbox prefix.
sg_show() {
    local p=$1
    if [[ -n $SG_ROOT && $p == "$SG_ROOT"/* ]]; then
        p=${p#"$SG_ROOT"}
    fi
    printf '%s' "$p"
}

# sg_read FILE: prints the file's first line. Returns 1 if it does not exist, 2 if it
# cannot be read (never fails the script).
sg_read() {
    local line
    [[ -e $1 ]] || return 1
    [[ -r $1 ]] || return 2
    { IFS= read -r line || [[ -n $line ]]; } <"$1" 2>/dev/null || return 2
    printf '%s' "$line"
}

# A sysctl key's file, e.g. net.core.somaxconn -> /proc/sys/net/core/somaxconn (real path).
sg_sysctl_path() { sg_sys "/proc/sys/${1//.//}"; }

# What to call a saved system file in messages: sysctls by their key, others by path.
sg_label() {
    local p
    p=$(sg_show "$1")
    if [[ $p == /proc/sys/* ]]; then
        p=${p#/proc/sys/}
        p=${p//\//.}
    fi
    printf '%s' "$p"
}

# sg_write FILE VALUE [CURRENT]: writes VALUE to a /proc or /sys file (real path), after saving
# CURRENT (the value now) for --undo. A dry run prints `would set: LABEL = VALUE (now CURRENT)`.
sg_write() {
    local file=$1 value=$2 current=${3-} now=""
    [[ -n $current ]] && now=" (now $current)"
    SG_CHANGES=$((SG_CHANGES + 1))
    if sg_dry; then
        printf 'would set: %s = %s%s\n' "$(sg_label "$file")" "$value" "$now"
        return 0
    fi
    if [[ -n $current ]]; then
        sg_value_save "$file" "$current"
    fi
    if printf '%s\n' "$value" 2>/dev/null >"$file"; then
        printf 'set: %s = %s%s\n' "$(sg_label "$file")" "$value" "$now"
    else
        printf 'FAILED: could not write %s to %s\n' "$value" "$(sg_show "$file")" >&2
        SG_FAILED=$((SG_FAILED + 1))
        return 1
    fi
}

# ---------------------------------------------------------------------------------------------
# Saved state: $SG_STATE_DIR/$SG_NAME/
#   values      `FILE=VALUE` lines: a /proc or /sys file (real path) and its value before --apply
#   files.list  `PATH<TAB>KIND<TAB>SHA256<TAB>BACKUP` lines for whole files written by --apply:
#               KIND is `created` (undo deletes it), `replaced` (undo copies BACKUP back) or
#               `mkdir` (undo removes the directory if it is empty); SHA256 is what --apply wrote
#   files/      the backups
#   (a script may keep more, e.g. irq-affinity's `irqbalance-stopped` marker)

sg_state() { printf '%s/%s' "$SG_STATE_DIR" "$SG_NAME"; }

# Creates the state dir (only ever with --apply).
sg_state_ensure() {
    local dir
    dir=$(sg_state)
    sg_dry && sg_die "internal error: state dir touched in a dry run"
    [[ -d $dir/files ]] && return 0
    # Only directories created here are made private (never chmod one that was there).
    if [[ ! -d $SG_STATE_DIR ]]; then
        mkdir -p "$SG_STATE_DIR" 2>/dev/null && chmod 700 "$SG_STATE_DIR" 2>/dev/null
    fi
    if ! { [[ -d $dir ]] || mkdir -m 700 "$dir" 2>/dev/null; } || ! mkdir -p "$dir/files" 2>/dev/null; then
        sg_die "cannot create the state dir $dir (set SHARDGATE_TUNING_STATE to a directory you can write)"
    fi
}

# sg_value_saved FILE: prints the value saved for FILE; returns 1 if there is none.
sg_value_saved() {
    local vf line
    vf="$(sg_state)/values"
    [[ -f $vf ]] || return 1
    while IFS= read -r line || [[ -n $line ]]; do
        if [[ ${line%%=*} == "$1" ]]; then
            printf '%s' "${line#*=}"
            return 0
        fi
    done <"$vf"
    return 1
}

# sg_value_save FILE VALUE: remembers FILE's value before the first --apply changed it.
sg_value_save() {
    local dir
    [[ $1 != *=* && $1 != *$'\n'* && $2 != *$'\n'* ]] || sg_die "internal error: cannot save '$1'"
    sg_value_saved "$1" >/dev/null && return 0
    sg_state_ensure
    dir=$(sg_state)
    printf '%s=%s\n' "$1" "$2" >>"$dir/values" || sg_die "cannot write $dir/values"
}

sg_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# sg_file_write PATH SHOW < CONTENT: writes the whole file PATH (real path) with the content
# read from stdin, saving what was there before. SHOW=show prints the content in a dry run.
sg_file_write() {
    local path=$1 show=$2 content dir list rec="" line kind backup n tmp
    content=$(
        cat
        printf x
    )
    content=${content%x}
    [[ $path != *$'\t'* && $path != *$'\n'* ]] || sg_die "unsupported file name: $path"
    SG_CHANGES=$((SG_CHANGES + 1))
    if sg_dry; then
        if [[ -e $path ]]; then
            printf 'would write: %s (replacing the file there now)\n' "$(sg_show "$path")"
        else
            printf 'would write: %s\n' "$(sg_show "$path")"
        fi
        if [[ $show == show ]]; then
            printf '%s' "$content" | sed 's/^/    | /'
        fi
        return 0
    fi
    if [[ -e $path && ! -w $path ]] || [[ ! -e $path && -d ${path%/*} && ! -w ${path%/*} ]]; then
        printf 'FAILED: cannot write %s as %s\n' "$(sg_show "$path")" "$(id -un)" >&2
        SG_FAILED=$((SG_FAILED + 1))
        return 1
    fi
    sg_state_ensure
    dir=$(sg_state)
    list="$dir/files.list"
    touch "$list"
    while IFS= read -r line || [[ -n $line ]]; do
        [[ ${line%%$'\t'*} == "$path" ]] && rec=$line
    done <"$list"
    if [[ -z $rec ]]; then
        # First write of this file: remember how to get back to what is there now.
        if [[ -n ${path%/*} && ! -d ${path%/*} ]]; then
            # Record each directory created (outermost first) so that --undo removes them.
            local d=${path%/*} missing=()
            while [[ -n $d && ! -d $d ]]; do
                missing=("$d" "${missing[@]}")
                d=${d%/*}
            done
            mkdir -p "${path%/*}" || sg_die "cannot create ${path%/*}"
            for d in "${missing[@]}"; do
                printf '%s\tmkdir\t-\t-\n' "$d" >>"$list"
            done
        fi
        if [[ -e $path ]]; then
            n=$(wc -l <"$list")
            backup="$dir/files/$((n + 1))"
            cp -p "$path" "$backup" || sg_die "cannot back up $path to $backup"
            kind=replaced
        else
            backup=-
            kind=created
        fi
    else
        IFS=$'\t' read -r _ kind _ backup <<<"$rec"
    fi
    if ! printf '%s' "$content" 2>/dev/null >"$path"; then
        printf 'FAILED: could not write %s\n' "$(sg_show "$path")" >&2
        SG_FAILED=$((SG_FAILED + 1))
        return 1
    fi
    # Record (or update) the file with the checksum of what was written.
    tmp="$list.tmp"
    {
        while IFS= read -r line || [[ -n $line ]]; do
            [[ ${line%%$'\t'*} == "$path" ]] || printf '%s\n' "$line"
        done <"$list"
        printf '%s\t%s\t%s\t%s\n' "$path" "$kind" "$(sg_sha256 "$path")" "$backup"
    } >"$tmp"
    mv "$tmp" "$list"
    printf 'wrote: %s\n' "$(sg_show "$path")"
}

# sg_has_state: true if --apply saved anything for this script.
sg_has_state() {
    local dir
    dir=$(sg_state)
    [[ -s $dir/values || -s $dir/files.list ]]
}

# sg_undo_saved: restores every saved value and file. Scripts with more state (irqbalance)
# handle that themselves before calling sg_undo_cleanup.
sg_undo_saved() {
    local dir line file value cur kind sum backup i mkdirs=()
    dir=$(sg_state)
    if [[ -s $dir/values ]]; then
        while IFS= read -r line || [[ -n $line ]]; do
            [[ -n $line ]] || continue
            file=${line%%=*}
            value=${line#*=}
            cur=$(sg_read "$file") || cur="?"
            cur=${cur//$'\t'/ }
            if [[ $cur == "$value" ]]; then
                sg_ok "$(sg_label "$file") is already $value"
                continue
            fi
            SG_CHANGES=$((SG_CHANGES + 1))
            if sg_dry; then
                printf 'would restore: %s = %s (now %s)\n' "$(sg_label "$file")" "$value" "$cur"
            elif printf '%s\n' "$value" 2>/dev/null >"$file"; then
                printf 'restored: %s = %s\n' "$(sg_label "$file")" "$value"
            else
                printf 'FAILED: could not restore %s = %s\n' "$(sg_label "$file")" "$value" >&2
                SG_FAILED=$((SG_FAILED + 1))
            fi
        done <"$dir/values"
    fi
    if [[ -s $dir/files.list ]]; then
        while IFS=$'\t' read -r file kind sum backup || [[ -n $file ]]; do
            [[ -n $file ]] || continue
            if [[ $kind == mkdir ]]; then
                mkdirs+=("$file")
                continue
            fi
            if [[ -e $file && $(sg_sha256 "$file") != "$sum" ]] && ! ((SG_FORCE)); then
                printf 'REFUSED: %s was changed after --apply; it is left as it is' "$(sg_show "$file")" >&2
                [[ $kind == replaced ]] && printf ' (its original is saved as %s)' "$backup" >&2
                printf '; --force restores it anyway\n' >&2
                SG_FAILED=$((SG_FAILED + 1))
                continue
            fi
            SG_CHANGES=$((SG_CHANGES + 1))
            if [[ $kind == created ]]; then
                if [[ ! -e $file ]]; then
                    SG_CHANGES=$((SG_CHANGES - 1))
                    sg_ok "$(sg_show "$file") is already gone"
                elif sg_dry; then
                    printf 'would remove: %s (written by --apply)\n' "$(sg_show "$file")"
                elif rm -f "$file"; then
                    printf 'removed: %s\n' "$(sg_show "$file")"
                else
                    SG_FAILED=$((SG_FAILED + 1))
                fi
            else
                if sg_dry; then
                    printf 'would restore: %s from its copy saved by --apply\n' "$(sg_show "$file")"
                elif cat "$backup" >"$file"; then
                    printf 'restored: %s\n' "$(sg_show "$file")"
                else
                    printf 'FAILED: could not restore %s from %s\n' "$(sg_show "$file")" "$backup" >&2
                    SG_FAILED=$((SG_FAILED + 1))
                fi
            fi
        done <"$dir/files.list"
    fi
    # Innermost directory first.
    for ((i = ${#mkdirs[@]} - 1; i >= 0; i--)); do
        file=${mkdirs[i]}
        if sg_dry; then
            printf 'would remove: %s/ if empty (created by --apply)\n' "$(sg_show "$file")"
        else
            rmdir "$file" 2>/dev/null || true
        fi
    done
}

# After a successful `--undo --apply`: forget the saved state.
sg_undo_cleanup() {
    local dir
    dir=$(sg_state)
    sg_dry && return 0
    ((SG_FAILED)) && return 0
    rm -rf "$dir"
}

# The standard --undo: restore, clean up, finish.
sg_undo_main() {
    if [[ -d $SG_STATE_DIR && ! -r $SG_STATE_DIR ]] || [[ -d $(sg_state) && ! -r $(sg_state) ]]; then
        sg_note "cannot read the saved state in $(sg_state) as $(id -un); run as root to see what --undo would restore"
        exit 0
    fi
    if ! sg_has_state; then
        printf '%s.sh: nothing to undo: no saved state in %s\n' "$SG_NAME" "$(sg_state)"
        exit 0
    fi
    sg_undo_saved
    sg_undo_cleanup
    sg_finish
}

# ---------------------------------------------------------------------------------------------
# CPU lists

# sg_parse_cpulist LIST WHAT: `2-7`, `0,2-4,6` -> SG_CPULIST=(2 3 4 ...), in the order given,
# without duplicates. Exits with a usage error naming WHAT (e.g. --cores) if LIST is invalid.
sg_parse_cpulist() {
    local spec=$1 what=$2 part lo hi c
    local -A seen=()
    local -a parts=()
    SG_CPULIST=()
    if ! [[ $spec =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]]; then
        sg_usage_error "invalid $what value '$spec': expected CPU numbers and ranges like 2-7 or 0,2-4,6"
    fi
    IFS=',' read -r -a parts <<<"$spec"
    for part in "${parts[@]}"; do
        lo=${part%-*}
        hi=${part#*-}
        if ((${#lo} > 5 || ${#hi} > 5 || 10#$hi > 8191)); then
            sg_usage_error "invalid $what value '$spec': CPU numbers go up to 8191"
        fi
        lo=$((10#$lo))
        hi=$((10#$hi))
        if ((lo > hi)); then
            sg_usage_error "invalid $what value '$spec': range $part goes backwards"
        fi
        for ((c = lo; c <= hi; c++)); do
            if [[ -z ${seen[$c]-} ]]; then
                seen[$c]=1
                SG_CPULIST+=("$c")
            fi
        done
    done
}

# sg_cpulist_compact CPU...: the shortest list form, e.g. 0 1 2 5 -> 0-2,5 (sorted).
sg_cpulist_compact() {
    local out="" start=-1 prev=-1 c
    local -a sorted=()
    (($#)) || return 0
    mapfile -t sorted < <(printf '%s\n' "$@" | sort -n -u)
    for c in "${sorted[@]}" -1; do
        if ((start >= 0 && c == prev + 1)); then
            prev=$c
            continue
        fi
        if ((start >= 0)); then
            if ((start == prev)); then out+="$start,"; else out+="$start-$prev,"; fi
        fi
        start=$c
        prev=$c
    done
    printf '%s' "${out%,}"
}

# sg_online_cpus: sets SG_CPULIST to the online CPUs (from /sys, else from nproc).
sg_online_cpus() {
    local online
    if online=$(sg_read "$(sg_sys /sys/devices/system/cpu/online)") && [[ -n $online ]]; then
        sg_parse_cpulist "$online" "/sys/devices/system/cpu/online"
    else
        local n c
        n=$(nproc --all)
        SG_CPULIST=()
        for ((c = 0; c < n; c++)); do SG_CPULIST+=("$c"); done
        sg_note "cannot read /sys/devices/system/cpu/online; assuming CPUs 0-$((n - 1))"
    fi
}
