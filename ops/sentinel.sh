#!/usr/bin/env bash
# A Redis Sentinel group on loopback for tests and local trials: a primary, one replica
# (redis-server --replicaof) and three redis-sentinel processes. Run `ops/sentinel.sh --help`.
set -euo pipefail

# shellcheck source=ops/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

MASTER_NAME=${TRUNKLINE_SENTINEL_MASTER:-trunkline}
DATA_PORTS=${TRUNKLINE_SENTINEL_REDIS_PORTS:-6410,6411}
SENTINEL_PORTS=${TRUNKLINE_SENTINEL_PORTS:-26410,26411,26412}
DOWN_AFTER_MS=${TRUNKLINE_SENTINEL_DOWN_AFTER_MS:-2000}
QUORUM=2
UP_WAIT=30

usage() {
    cat <<EOF
Usage: $PROG COMMAND

A Redis Sentinel group on 127.0.0.1 for tests and local trials: a primary and one replica
(redis-server, appendonly everysec, like ops/stack.sh's redis) and three redis-sentinel
processes (Debian package redis-sentinel) monitoring them under the name '$MASTER_NAME'
(quorum $QUORUM). Separate from ops/stack.sh's redis, which livekit-server keeps using.

Commands:
  install          Install redis-server and redis-sentinel via apt-get if missing.
  up               install (if needed); if the whole group runs and becomes healthy within
                   ${UP_WAIT}s (the sentinels agree on a primary, whichever it is after a
                   failover; the replica is in sync; every sentinel sees the replica and the two
                   other sentinels), leave it alone. Otherwise stop what is left of it and start
                   a FRESH group (data and sentinel files wiped), the first data port as primary,
                   and wait (${UP_WAIT}s) until it is healthy.
  down             Stop the sentinels, then the redis servers. Idempotent.
  status           One line per process: port, up/down, pid, role (ROLE) or the primary the
                   sentinel names. Exit status 1 if any process is down.
  env              Print export lines for Trunkline:  eval "\$($PROG env)"
                   TRUNKLINE_REDIS_SENTINELS, TRUNKLINE_REDIS_SENTINEL_MASTER.
  -h, --help       This help.

Environment variables:
  TRUNKLINE_STACK_DIR             State folder (default <repo root>/.stack); the group lives in
                                  its sentinel/ folder (data, sentinel files, logs, pids).
  TRUNKLINE_SENTINEL_MASTER       Name the sentinels monitor the primary under (default trunkline).
  TRUNKLINE_SENTINEL_REDIS_PORTS  primary,replica ports (default 6410,6411).
  TRUNKLINE_SENTINEL_PORTS        three sentinel ports (default 26410,26411,26412).
  TRUNKLINE_SENTINEL_DOWN_AFTER_MS  sentinel down-after-milliseconds (default 2000): how long
                                  a silent primary takes to be declared down.

Sentinel rewrites its own file, so each sentinel gets its own, regenerated on every fresh 'up'.
Trigger a clean failover with:  redis-cli -p <sentinel port> SENTINEL FAILOVER $MASTER_NAME
EOF
}

split_ports() { # name value count -> sets PORTS array
    local name=$1 value=$2 count=$3 port
    IFS=, read -r -a PORTS <<<"$value"
    [[ ${#PORTS[@]} -eq $count ]] || die "$name=$value must list exactly $count ports"
    for port in "${PORTS[@]}"; do
        require_uint "$name" "$port" 1
    done
}

validate_settings() {
    split_ports TRUNKLINE_SENTINEL_REDIS_PORTS "$DATA_PORTS" 2
    PRIMARY_PORT=$((10#${PORTS[0]}))
    REPLICA_PORT=$((10#${PORTS[1]}))
    split_ports TRUNKLINE_SENTINEL_PORTS "$SENTINEL_PORTS" 3
    SENTINELS=("${PORTS[@]}")
    require_uint TRUNKLINE_SENTINEL_DOWN_AFTER_MS "$DOWN_AFTER_MS" 100 600000
    [[ $MASTER_NAME =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "TRUNKLINE_SENTINEL_MASTER=$MASTER_NAME: use letters, digits, '.', '_' or '-'"
    local all
    all=$(printf '%s\n' "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINELS[@]}" | sort | uniq -d)
    [[ -z $all ]] || die "port $all is listed twice in TRUNKLINE_SENTINEL_REDIS_PORTS/TRUNKLINE_SENTINEL_PORTS"
}

init_paths() {
    init_state_dir
    GROUP_DIR=$STACK_DIR/sentinel
    RUN_DIR=$GROUP_DIR/run
    LOG_DIR=$GROUP_DIR/logs
    mkdir -p -- "$RUN_DIR" "$LOG_DIR"
}

cli() { # port args... (bounded: a hung server must not hang the script)
    local port=$1
    shift
    timeout 5 redis-cli -h 127.0.0.1 -p "$port" "$@" 2>/dev/null
}

pidfile_of() { printf '%s/%s.pid\n' "$RUN_DIR" "$1"; }

pid_of() { # port -> pid of our process on it, or nothing
    local pid
    pid=$(our_pid "$(pidfile_of "$1")" "127.0.0.1:$1")
    if [[ -n $pid ]]; then
        printf '%s\n' "$pid"
        return 0
    fi
    # No pid file (a run interrupted between start and pid file): still ours if its files are
    # in our folder. A stray sentinel of an earlier group would otherwise live on and teach a
    # fresh group its old primary.
    local server dir
    server=$(cli "$1" info server | tr -d '\r') || true
    pid=$(sed -n 's/^process_id://p' <<<"$server")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if [[ $(sed -n 's/^config_file://p' <<<"$server") != "$GROUP_DIR"/sentinel-"$1".conf ]]; then
        dir=$(cli "$1" config get dir | sed -n 2p) || true
        [[ $dir == "$GROUP_DIR/redis-$1" ]] || return 0
    fi
    printf '%s\n' "$pid" >"$(pidfile_of "$1")"
    printf '%s\n' "$pid"
}

answers() { [[ $(cli "$1" ping) == PONG ]]; }

# ---------------------------------------------------------------- install

cmd_install() {
    install_redis
    if ! have redis-sentinel; then
        # The package may start a system sentinel on 26379; this group never uses it.
        apt_install redis-sentinel
    fi
    have redis-sentinel || die "redis-sentinel still not on PATH after installing the Debian package"
}

# ---------------------------------------------------------------- start and stop

start_redis() { # port [primary port to replicate]
    local port=$1 dir=$GROUP_DIR/redis-$1
    local -a replica=()
    [[ -z ${2:-} ]] || replica=(--replicaof 127.0.0.1 "$2")
    mkdir -p -- "$dir"
    tcp_port_free "$port"
    run_redis_server "$port" "$dir" "$(pidfile_of "$port")" "$LOG_DIR/redis-$port.log" \
        --repl-diskless-sync-delay 0 "${replica[@]}" \
        || die "redis-server on $port failed to start (log $LOG_DIR/redis-$port.log)"
}

start_sentinel() { # port
    local port=$1 conf=$GROUP_DIR/sentinel-$1.conf
    tcp_port_free "$port"
    cat >"$conf" <<EOF
# Generated by $PROG on a fresh 'up'; sentinel rewrites this file as it learns the group.
bind 127.0.0.1
port $port
protected-mode no
daemonize yes
pidfile $(pidfile_of "$port")
logfile $LOG_DIR/sentinel-$port.log
dir $GROUP_DIR
sentinel monitor $MASTER_NAME 127.0.0.1 $PRIMARY_PORT $QUORUM
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME 10000
sentinel parallel-syncs $MASTER_NAME 1
EOF
    redis-sentinel "$conf" 9>&- || die "redis-sentinel on $port failed to start (log $LOG_DIR/sentinel-$port.log)"
}

tcp_port_free() { # port: nothing of ours is on it; refuse a port someone else holds
    if tcp_port_open "$1"; then
        die "port 127.0.0.1:$1 is taken by a process not started by $PROG; free it or change TRUNKLINE_SENTINEL_REDIS_PORTS/TRUNKLINE_SENTINEL_PORTS"
    fi
}

stop_port() { # port what
    local pid
    pid=$(pid_of "$1")
    rm -f -- "$(pidfile_of "$1")"
    [[ -n $pid ]] || return 0
    info "stopping $2 on 127.0.0.1:$1 (pid $pid)"
    stop_pid "$pid" "$2 on $1" 20
}

cmd_down() {
    local port
    # Sentinels first, or they would fail the primary over while it shuts down.
    for port in "${SENTINELS[@]}"; do stop_port "$port" sentinel; done
    stop_port "$REPLICA_PORT" redis
    stop_port "$PRIMARY_PORT" redis
}

# ---------------------------------------------------------------- health

sentinel_field() { # sentinel port field -> value from SENTINEL MASTER <name>
    cli "$1" sentinel master "$MASTER_NAME" | awk -v f="$2" 'NR % 2 == 1 && $0 == f { getline; print }'
}

sentinel_primary() { # sentinel port -> "ip port" of the primary it names
    cli "$1" sentinel get-master-addr-by-name "$MASTER_NAME" | paste -sd ' '
}

group_healthy() { # sets GROUP_DETAIL
    local port primary="" named
    for port in "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINELS[@]}"; do
        if [[ -z $(pid_of "$port") ]] || ! answers "$port"; then
            GROUP_DETAIL="nothing of ours answers on 127.0.0.1:$port"
            return 1
        fi
    done
    for port in "${SENTINELS[@]}"; do
        named=$(sentinel_primary "$port")
        [[ -n $primary ]] || primary=$named
        if [[ -z $named || $named != "$primary" ]]; then
            GROUP_DETAIL="sentinels disagree on the primary ('$primary' vs '$named')"
            return 1
        fi
        if [[ $(sentinel_field "$port" num-other-sentinels) != 2 \
            || $(sentinel_field "$port" num-slaves) != 1 ]]; then
            GROUP_DETAIL="sentinel $port does not see the other two sentinels and the replica yet"
            return 1
        fi
        if [[ $(sentinel_field "$port" flags) != master ]]; then
            GROUP_DETAIL="sentinel $port flags the primary $(sentinel_field "$port" flags)"
            return 1
        fi
    done
    local replica_port=$PRIMARY_PORT
    [[ $primary == "127.0.0.1 $PRIMARY_PORT" ]] && replica_port=$REPLICA_PORT
    # Read the whole reply first: grep -q stopping early would fail the pipe (pipefail).
    local replication
    replication=$(cli "$replica_port" info replication | tr -d '\r')
    if [[ $'\n'$replication$'\n' != *$'\nmaster_link_status:up\n'* ]]; then
        GROUP_DETAIL="the replica on $replica_port is not in sync with the primary yet"
        return 1
    fi
    GROUP_DETAIL="primary ${primary/ /:}"
    return 0
}

all_running() {
    local port
    for port in "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINELS[@]}"; do
        [[ -n $(pid_of "$port") ]] || return 1
    done
}

wait_healthy() { # up to UP_WAIT seconds; sets GROUP_DETAIL
    local i
    for ((i = 0; i < UP_WAIT * 5; i++)); do
        group_healthy && return 0
        sleep 0.2
    done
    return 1
}

cmd_up() {
    cmd_install
    if group_healthy; then
        info "sentinel group already up ($GROUP_DETAIL)"
        return 0
    fi
    if all_running; then
        # Right after a failover the demoted primary resyncs for a moment: wait for that
        # rather than throwing the group away.
        info "sentinel group running but not healthy yet ($GROUP_DETAIL); waiting up to ${UP_WAIT}s"
        if wait_healthy; then
            info "sentinel group already up ($GROUP_DETAIL)"
            return 0
        fi
    fi
    info "starting a fresh sentinel group (was: $GROUP_DETAIL)"
    cmd_down
    rm -rf -- "$GROUP_DIR"/redis-* "$GROUP_DIR"/sentinel-*.conf
    start_redis "$PRIMARY_PORT"
    start_redis "$REPLICA_PORT" "$PRIMARY_PORT"
    local port i
    for ((i = 0; i < 50; i++)); do
        answers "$PRIMARY_PORT" && answers "$REPLICA_PORT" && break
        sleep 0.2
    done
    for port in "${SENTINELS[@]}"; do start_sentinel "$port"; done
    if wait_healthy; then
        info "sentinel group up: $GROUP_DETAIL, replica, sentinels ${SENTINELS[*]} (master name $MASTER_NAME)"
        return 0
    fi
    for port in "${SENTINELS[@]}"; do show_log_tail "$LOG_DIR/sentinel-$port.log" 10; done
    die "the sentinel group did not become healthy within ${UP_WAIT}s: $GROUP_DETAIL"
}

cmd_status() {
    [[ $# -eq 0 ]] || die "status takes no arguments"
    local port pid state detail ok=1
    for port in "$PRIMARY_PORT" "$REPLICA_PORT" "${SENTINELS[@]}"; do
        pid=$(pid_of "$port")
        state=down
        detail="not running"
        if [[ -n $pid ]] && answers "$port"; then
            state=up
            if [[ " ${SENTINELS[*]} " == *" $port "* ]]; then
                detail="sentinel; primary $(sentinel_primary "$port" | tr ' ' ':')"
            else
                detail="redis; role $(cli "$port" role | sed -n 1p)"
            fi
        else
            ok=0
        fi
        printf '%-6s %-5s pid=%-8s %s\n' "$port" "$state" "${pid:--}" "$detail"
    done
    ((ok))
}

cmd_env() {
    local port list=""
    for port in "${SENTINELS[@]}"; do list+=${list:+,}127.0.0.1:$port; done
    printf 'export TRUNKLINE_REDIS_SENTINELS=%s\n' "$list"  # validated: no quoting needed
    printf 'export TRUNKLINE_REDIS_SENTINEL_MASTER=%q\n' "$MASTER_NAME"
}

run_main sentinel.lock "install up down status env" "$@"
