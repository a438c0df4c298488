# shellcheck shell=bash
# Shell functions shared by ops/stack.sh and ops/sip.sh (sourced, not run).
# The caller sets PROG (its name in messages) and, before take_lock, RUN_DIR.

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

info() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

have() { command -v "$1" >/dev/null 2>&1; }

require_uint() { # name value [min] [max]
    local name=$1 value=$2 min=${3:-0} max=${4:-65535}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < min || 10#$value > max)); then
        die "$name=$value is not an integer in [$min, $max]; fix or unset $name"
    fi
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

read_pid() { # pidfile -> prints pid or nothing
    local pid=""
    if [[ -f $1 ]]; then
        read -r pid <"$1" 2>/dev/null || true
    fi
    [[ $pid =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
    return 0
}

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

show_log_tail() { # file [lines]
    if [[ -s $1 ]]; then
        printf -- '--- last %s lines of %s ---\n' "${2:-40}" "$1" >&2
        tail -n "${2:-40}" -- "$1" >&2
        printf -- '---\n' >&2
    else
        printf '(log %s is empty or missing)\n' "$1" >&2
    fi
}

stop_pid() { # pid name timeout [signal, default TERM]
    local pid=$1 name=$2 timeout=$3 signal=${4:-TERM} i
    kill "-$signal" "$pid" 2>/dev/null || return 0
    for ((i = 0; i < timeout * 5; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    info "$name (pid $pid) did not stop within ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 25; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.2
    done
    die "could not stop $name (pid $pid)"
}

take_lock() { # lock file name under $RUN_DIR
    have flock || return 0
    local lock=$RUN_DIR/$1
    exec 9>"$lock"
    if ! flock -n 9; then
        info "waiting for another $PROG install/up/down (lock $lock)"
        flock -w 2400 9 || die "another $PROG still holds $lock after 2400s; check 'fuser $lock'"
    fi
}

apt_install() { # packages...
    local -a sudo=()
    if [[ $(id -u) != 0 ]]; then
        have sudo || die "need root or sudo to run 'apt-get install -y $*'; install it yourself"
        sudo=(sudo)
    fi
    have apt-get || die "apt-get not found; install the Debian package(s) $* by hand"
    info "installing $* (apt-get update && apt-get install -y $*)"
    "${sudo[@]}" apt-get update 9>&- || die "'apt-get update' failed (see above)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@" 9>&- \
        || die "'apt-get install -y $*' failed (see above)"
}
