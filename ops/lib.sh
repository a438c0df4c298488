# shellcheck shell=bash
# What ops/stack.sh, ops/sip.sh and ops/sentinel.sh share (sourced, not run): messages,
# settings checks, pid files, daemons, locks, apt, and the command line (run_main).
# The caller defines usage, validate_settings, init_paths and cmd_<command> for each command;
# init_paths sets RUN_DIR (for take_lock).

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[1]}")" && pwd -P)
REPO_ROOT=$(dirname -- "$SCRIPT_DIR")
PROG="ops/$(basename -- "${BASH_SOURCE[1]}")"
STACK_DIR=${TRUNKLINE_STACK_DIR:-$REPO_ROOT/.stack}

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

need_python() { # why
    have python3 || die "python3 is required ($1); install it (apt-get install -y python3)"
}

install_redis() {
    have redis-server && have redis-cli && return 0
    # The package may start a system redis on 6379; we never use that one.
    apt_install redis-server
    have redis-server || die "redis-server still not on PATH after installing the Debian package"
    have redis-cli || die "redis-cli not on PATH (Debian package redis-tools)"
}

# redis-server on 127.0.0.1 as ops/stack.sh and ops/sentinel.sh run it: the settings the
# README asks of Trunkline's Redis (AOF every second, no eviction), daemonized.
run_redis_server() { # port dir pidfile log [more options...]
    local port=$1 dir=$2 pidfile=$3 log=$4
    shift 4
    redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes --dir "$dir" \
        --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
        --daemonize yes --pidfile "$pidfile" --logfile "$log" "$@" 9>&-
}

init_state_dir() { # the state folder (TRUNKLINE_STACK_DIR), made absolute and kept out of git
    mkdir -p -- "$STACK_DIR" || die "cannot create state folder $STACK_DIR (TRUNKLINE_STACK_DIR)"
    STACK_DIR=$(cd -- "$STACK_DIR" && pwd -P)
    [[ -e $STACK_DIR/.gitignore ]] || printf '*\n' >"$STACK_DIR/.gitignore"
}

tcp_port_open() { # port: something accepts connections on 127.0.0.1:port
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

our_pid() { # pidfile pattern -> the pid in the file when that process lives and its command
    # line contains pattern (a pid file outlives its process, and pids are reused), or nothing
    local pid
    pid=$(read_pid "$1")
    if [[ -n $pid ]] && pid_alive "$pid" && [[ $(cmdline_of "$pid") == *"$2"* ]]; then
        printf '%s\n' "$pid"
    fi
}

# Starts a daemon in a session of its own, its output appended to log, without the variables
# whose names match drop_regex (servers that read them as flags over their config). Sets
# DAEMON_PID. No job control here, so setsid execs in place: $! is the daemon's own pid.
start_daemon() { # pidfile log drop_regex command...
    local pidfile=$1 log=$2 drop=$3 name
    shift 3
    local -a unset_env=()
    for name in $(compgen -e); do
        [[ $name =~ $drop ]] && unset_env+=(-u "$name")
    done
    printf '\n=== %s starting %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
    nohup setsid env "${unset_env[@]}" "$@" >>"$log" 2>&1 </dev/null 9>&- &
    DAEMON_PID=$!
    printf '%s\n' "$DAEMON_PID" >"$pidfile"
}

# Polls `ready` (0 ready, 1 not yet, 2 never will) until it says ready, for up to `seconds`.
# The daemon dying or not getting ready shows its log's tail; not ready, it is also stopped
# (with `signal`) and this returns 1.
await_daemon() { # name pid pidfile log seconds ready [signal]
    local name=$1 pid=$2 pidfile=$3 log=$4 deadline=$((SECONDS + $5)) ready=$6 verdict
    while ((SECONDS < deadline)); do
        if ! pid_alive "$pid"; then
            rm -f -- "$pidfile"
            show_log_tail "$log"
            die "$name exited during startup (see above; log $log)"
        fi
        verdict=0
        "$ready" || verdict=$?
        ((verdict == 0)) && return 0
        ((verdict == 2)) && break
        sleep 0.25
    done
    show_log_tail "$log"
    stop_pid "$pid" "$name" 10 "${7:-TERM}"
    rm -f -- "$pidfile"
    return 1
}

# A running daemon is kept when its config is unchanged and `healthy` says so (0); otherwise
# it is stopped (returns 1) and the new config takes the old one's place.
keep_or_stop() { # name pid new_config config healthy detail_variable [signal]
    local name=$1 pid=$2 new=$3 config=$4 healthy=$5 detail=$6
    if [[ -n $pid ]]; then
        if cmp -s -- "$new" "$config" && "$healthy"; then
            rm -f -- "$new"
            return 0
        fi
        if cmp -s -- "$new" "$config"; then
            info "$name (pid $pid) is not healthy (${!detail}); restarting it"
        else
            info "$name config changed; restarting $name (pid $pid)"
        fi
        stop_pid "$pid" "$name" 20 "${7:-TERM}"
    fi
    mv -f -- "$new" "$config"
    return 1
}

stop_daemon() { # name pidfile pid [signal]
    rm -f -- "$2"
    if [[ -z $3 ]]; then
        info "$1 already down"
        return 0
    fi
    info "stopping $1 (pid $3)"
    stop_pid "$3" "$1" 20 "${4:-TERM}"
}

json_option() { # status's options -> prints 1 for --json, 0 for none
    [[ $# -le 1 ]] || die "status takes at most one option (--json)"
    case ${1:-} in
        --json) echo 1 ;;
        "") echo 0 ;;
        *) die "status: unknown option '$1' (use --json)" ;;
    esac
}

tail_logs() { # log files... -- the logs command's options: [-n N] [--no-follow]
    local -a files=() present=()
    local lines=100 follow=1 file
    while [[ $1 != -- ]]; do files+=("$1"); shift; done
    shift
    while [[ $# -gt 0 ]]; do
        case $1 in
            -n) [[ $# -ge 2 ]] || die "logs: -n needs a number"; lines=$2; shift 2 ;;
            --no-follow) follow=0; shift ;;
            *) die "logs: unknown option '$1' (use -n N, --no-follow)" ;;
        esac
    done
    require_uint "logs -n" "$lines" 0 1000000
    if ((follow)); then
        touch -- "${files[@]}"
        exec tail -n "$lines" -F -- "${files[@]}"
    fi
    for file in "${files[@]}"; do [[ -e $file ]] && present+=("$file"); done
    [[ ${#present[@]} -gt 0 ]] || die "no logs yet (${files[*]}); run '$PROG up'"
    tail -n "$lines" -- "${present[@]}"
}

# The scripts' command line: help, an unknown command (exit 2), the settings check, then
# cmd_<command>. install, up and down take no arguments and run under the lock; env needs
# no state folder.
run_main() { # lock_file "commands" "$@"
    local lock=$1 commands=" $2 " cmd=${3:-}
    shift 2
    [[ $# -gt 0 ]] && shift
    case $cmd in
        -h | --help | help) usage; return 0 ;;
        "") usage >&2; return 2 ;;
    esac
    if [[ $commands != *" $cmd "* ]]; then
        printf '%s: unknown command %q\n\n' "$PROG" "$cmd" >&2
        usage >&2
        return 2
    fi
    validate_settings
    if [[ $cmd == env ]]; then
        [[ $# -eq 0 ]] || die "env takes no arguments"
        cmd_env
        return
    fi
    init_paths
    case $cmd in
        install | up | down) [[ $# -eq 0 ]] || die "$cmd takes no arguments"; take_lock "$lock" ;;
    esac
    "cmd_$cmd" "$@"
}
