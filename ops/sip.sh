#!/usr/bin/env bash
# Trunkline's SIP bridge: installs, starts, reports and stops LiveKit's SIP service
# (livekit-sip v1.11.0) beside the local stack of ops/stack.sh, on loopback, and installs
# sipp (the test caller and the stand-in provider gateway). Run `ops/sip.sh --help`.
set -euo pipefail

readonly SIP_VERSION=1.11.0
readonly SIP_MODULE=github.com/livekit/sip/cmd/livekit-sip
readonly SIP_MAIN_MODULE=github.com/livekit/sip
# Debian packages the cgo build needs (pkg-config names in brackets): libopus [opus],
# libopusfile [opusfile], libsoxr [soxr], and a C compiler.
readonly BUILD_PACKAGES=(pkg-config gcc libc6-dev libopus-dev libopusfile-dev libsoxr-dev)
readonly PKG_CONFIG_NAMES=(opus opusfile soxr)

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(dirname -- "$SCRIPT_DIR")
PROG="ops/$(basename -- "${BASH_SOURCE[0]}")"
# shellcheck source=ops/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
STACK_SH=$SCRIPT_DIR/stack.sh

STACK_DIR=${TRUNKLINE_STACK_DIR:-$REPO_ROOT/.stack}
SIP_PORT=${TRUNKLINE_SIP_PORT:-5080}
RTP_PORTS=${TRUNKLINE_SIP_RTP_PORTS:-10000-10199}
SIP_LOG_LEVEL=${TRUNKLINE_SIP_LOG_LEVEL:-info}
GO_BUILD_WAIT=${TRUNKLINE_GO_BUILD_WAIT:-1800}
SIP_WAIT=30

usage() {
    cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

Installs, starts, reports and stops LiveKit's SIP bridge (livekit-sip v$SIP_VERSION) beside
the local stack of ops/stack.sh: the same redis (livekit's database), the same livekit-server
(API key/secret, ws_url), SIP signalling and announced media on 127.0.0.1. Also installs sipp.
Works from any cwd.

Commands:
  install          Install what is missing: sipp (Debian sip-tester), the cgo build
                   dependencies (${BUILD_PACKAGES[*]}) via apt-get, and livekit-sip via
                   'CGO_ENABLED=1 go install $SIP_MODULE@v$SIP_VERSION'.
                   Waits for an already running 'go install' of the same module. Starts nothing.
  up               install (if needed); 'ops/stack.sh up' (redis + livekit-server, idempotent);
                   then start the bridge with a generated config. Idempotent: a healthy bridge
                   with an unchanged config is left alone, otherwise it is restarted. Waits
                   (${SIP_WAIT}s) until the bridge answers a SIP OPTIONS on 127.0.0.1:\$TRUNKLINE_SIP_PORT
                   with 200 and has subscribed to livekit's SIPInternal/CreateSIPParticipant
                   RPC in redis (so inbound and outbound calls both work from then on).
  down             Stop the bridge (not the stack: use ops/stack.sh down). Idempotent.
  status [--json]  One line (or one JSON object) for the bridge: up/down, pid, SIP address,
                   RTP ports, redis db. Exit status 1 if it is down.
  env              Print export lines for tests:  eval "\$($PROG env)"
                   TRUNKLINE_SIP_HOST, TRUNKLINE_SIP_PORT, TRUNKLINE_SIP_RTP_PORTS, SIPP_BIN.
  logs [-n N] [--no-follow]
                   Tail the bridge's log (default: last 100 lines, then follow).
  -h, --help       This help.

Environment variables:
  TRUNKLINE_STACK_DIR       State folder shared with ops/stack.sh (default: <repo root>/.stack
                            = $STACK_DIR). The bridge adds livekit-sip.yaml (generated on
                            every 'up'; do not edit), logs/livekit-sip.log,
                            logs/go-install-sip.log and run/livekit-sip.pid.
  TRUNKLINE_SIP_PORT        SIP port (UDP and TCP) on 127.0.0.1 (default 5080).
  TRUNKLINE_SIP_RTP_PORTS   RTP port range START-END (default 10000-10199).
  TRUNKLINE_SIP_LOG_LEVEL   debug, info, warn or error (default info).
  LIVEKIT_SIP_BIN           livekit-sip binary (default: \$(go env GOBIN) or
                            \$(go env GOPATH)/bin, file 'livekit-sip'). If set explicitly it is
                            never rebuilt; it must be a build of $SIP_MAIN_MODULE v$SIP_VERSION.
  TRUNKLINE_GO_BUILD_WAIT   Seconds to wait for a concurrent 'go install' (default 1800).
  The stack's own variables (TRUNKLINE_REDIS_PORT, LIVEKIT_PORT, TRUNKLINE_LIVEKIT_UDP_PORT,
  TRUNKLINE_LIVEKIT_REDIS_DB, ...) are passed through to ops/stack.sh unchanged; the bridge
  reads livekit's redis address and database from 'ops/stack.sh status --json'.

Loopback: SIP listens on 127.0.0.1 only and the bridge announces 127.0.0.1 in Contact and SDP
(nat_1_to_1_ip; use_external_ip: false). livekit-sip v$SIP_VERSION binds its RTP sockets on
0.0.0.0 (not configurable in that version); peers are only ever told 127.0.0.1. No health or
metrics port is opened (those would bind every interface).
EOF
}

# ---------------------------------------------------------------- helpers





validate_settings() {
    require_uint TRUNKLINE_SIP_PORT "$SIP_PORT" 1
    SIP_PORT=$((10#$SIP_PORT))
    [[ $RTP_PORTS =~ ^([0-9]+)-([0-9]+)$ ]] \
        || die "TRUNKLINE_SIP_RTP_PORTS=$RTP_PORTS must look like START-END, e.g. 10000-10199"
    local start=${BASH_REMATCH[1]} end=${BASH_REMATCH[2]}
    require_uint "TRUNKLINE_SIP_RTP_PORTS start" "$start" 1024
    require_uint "TRUNKLINE_SIP_RTP_PORTS end" "$end" 1024
    RTP_START=$((10#$start))
    RTP_END=$((10#$end))
    ((RTP_END > RTP_START + 1)) \
        || die "TRUNKLINE_SIP_RTP_PORTS=$RTP_PORTS: END must be at least START+2 (one call needs an even port)"
    RTP_PORTS=$RTP_START-$RTP_END
    ((SIP_PORT < RTP_START || SIP_PORT > RTP_END)) \
        || die "TRUNKLINE_SIP_PORT=$SIP_PORT lies inside TRUNKLINE_SIP_RTP_PORTS=$RTP_PORTS"
    [[ $SIP_LOG_LEVEL =~ ^(debug|info|warn|error)$ ]] \
        || die "TRUNKLINE_SIP_LOG_LEVEL=$SIP_LOG_LEVEL must be debug, info, warn or error"
    require_uint TRUNKLINE_GO_BUILD_WAIT "$GO_BUILD_WAIT" 0 86400
}

init_paths() {
    mkdir -p -- "$STACK_DIR" || die "cannot create state folder $STACK_DIR (TRUNKLINE_STACK_DIR)"
    STACK_DIR=$(cd -- "$STACK_DIR" && pwd -P)
    LOG_DIR=$STACK_DIR/logs
    RUN_DIR=$STACK_DIR/run
    SIP_LOG=$LOG_DIR/livekit-sip.log
    GO_LOG=$LOG_DIR/go-install-sip.log
    SIP_PIDFILE=$RUN_DIR/livekit-sip.pid
    SIP_CONFIG=$STACK_DIR/livekit-sip.yaml
    mkdir -p -- "$LOG_DIR" "$RUN_DIR"
    [[ -e $STACK_DIR/.gitignore ]] || printf '*\n' >"$STACK_DIR/.gitignore"
}

# Serialises install/up/down of the bridge. Its own lock file: ops/stack.sh takes
# run/ops.lock itself when we call it. fd 9 is closed for every child (9>&-).

need_python() {
    have python3 || die "python3 is required (SIP OPTIONS probe, JSON); install it (apt-get install -y python3)"
}




# pid of our bridge (its command line names our generated config), or nothing
sip_pid() {
    local pid
    pid=$(read_pid "$SIP_PIDFILE")
    if [[ -n $pid ]] && pid_alive "$pid" && [[ $(cmdline_of "$pid") == *"--config $SIP_CONFIG"* ]]; then
        printf '%s\n' "$pid"
    fi
}



# Python helpers (stdlib only).
# udp-free PORT: exit 0 if 127.0.0.1:PORT can be bound for UDP and TCP.
# options PORT: send one SIP OPTIONS over UDP; print the status line of the answer or "none".
readonly PY_NET='
import os, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "free":
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(1)
        finally:
            s.close()
    sys.exit(0)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(1.0)
lport = s.getsockname()[1]
tag = os.urandom(6).hex()
msg = (
    f"OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\n"
    f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{tag};rport\r\n"
    f"Max-Forwards: 70\r\n"
    f"From: <sip:probe@127.0.0.1:{lport}>;tag={tag}\r\n"
    f"To: <sip:ping@127.0.0.1:{port}>\r\n"
    f"Call-ID: probe-{tag}@127.0.0.1\r\n"
    f"CSeq: 1 OPTIONS\r\n"
    f"Contact: <sip:probe@127.0.0.1:{lport}>\r\n"
    f"Content-Length: 0\r\n\r\n"
)
try:
    s.sendto(msg.encode(), ("127.0.0.1", port))
    data, _ = s.recvfrom(65535)
    print(data.decode("utf-8", "replace").split("\r\n", 1)[0])
except OSError:
    print("none")
'

port_free() { python3 -c "$PY_NET" free "$1"; }

sip_options_status() { python3 -c "$PY_NET" options "$SIP_PORT"; }

stack() { bash "$STACK_SH" "$@" 9>&-; }

# ---------------------------------------------------------------- install


install_sipp() {
    have sipp && return 0
    apt_install sip-tester
    have sipp || die "sipp still not on PATH after installing the Debian package sip-tester"
}

build_deps_ok() {
    have pkg-config && have gcc && pkg-config --exists "${PKG_CONFIG_NAMES[@]}" 2>/dev/null
}

install_build_deps() {
    build_deps_ok && return 0
    apt_install "${BUILD_PACKAGES[@]}"
    build_deps_ok || die "pkg-config still cannot find ${PKG_CONFIG_NAMES[*]} after installing ${BUILD_PACKAGES[*]}"
}

resolve_sip_bin() {
    if [[ -n ${LIVEKIT_SIP_BIN:-} ]]; then
        SIP_BIN=$LIVEKIT_SIP_BIN
        SIP_BIN_EXPLICIT=1
        return 0
    fi
    SIP_BIN_EXPLICIT=0
    have go || die "'go' is not on PATH: install Go >= 1.26 (needed to build livekit-sip v$SIP_VERSION), or set LIVEKIT_SIP_BIN to an existing v$SIP_VERSION binary"
    local gobin gopath
    gobin=$(go env GOBIN)
    if [[ -z $gobin ]]; then
        gopath=$(go env GOPATH)
        [[ -n $gopath ]] || die "'go env GOPATH' is empty; set GOPATH or LIVEKIT_SIP_BIN"
        gobin=${gopath%%:*}/bin
    fi
    SIP_BIN=$gobin/livekit-sip
}

# The module version baked into the binary by the Go toolchain (livekit-sip's own --version
# says 0.0.0-dev unless the release build sets it with -ldflags).
sip_bin_module_version() {
    have go || return 0
    { go version -m "$SIP_BIN" 2>/dev/null || true; } \
        | awk -v m="$SIP_MAIN_MODULE" '$1 == "mod" && $2 == m {print $3; exit}'
}

sip_bin_ok() {
    [[ -x $SIP_BIN ]] || return 1
    [[ $(sip_bin_module_version) == "v$SIP_VERSION" ]]
}

running_go_install_pid() { # pid of a concurrent 'go install' of the livekit-sip module, or nothing
    local p
    local -a argv
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" ]] && continue
        argv=()
        mapfile -d '' -t argv <"/proc/$p/cmdline" 2>/dev/null || continue
        if [[ ${#argv[@]} -ge 3 && ${argv[0]##*/} == go && ${argv[1]} == install \
            && " ${argv[*]:2} " == *" $SIP_MODULE@"* ]]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 0
}

install_livekit_sip() {
    resolve_sip_bin
    if [[ $SIP_BIN_EXPLICIT == 1 ]]; then
        [[ -x $SIP_BIN ]] || die "LIVEKIT_SIP_BIN=$SIP_BIN is missing or not executable; fix it or unset LIVEKIT_SIP_BIN to let $PROG build it with go install"
        local v
        v=$(sip_bin_module_version)
        case $v in
            "v$SIP_VERSION") ;;
            "(devel)" | "") info "note: cannot tell which livekit-sip version $SIP_BIN is (module version '${v:-unknown}'); using it as given" ;;
            *) die "LIVEKIT_SIP_BIN=$SIP_BIN is $SIP_MAIN_MODULE $v, not v$SIP_VERSION" ;;
        esac
        return 0
    fi
    sip_bin_ok && return 0
    local pid waited=0
    pid=$(running_go_install_pid)
    if [[ -n $pid ]]; then
        info "a 'go install $SIP_MODULE' is already running (pid $pid); waiting for it (max ${GO_BUILD_WAIT}s)"
        while pid_alive "$pid"; do
            ((waited < GO_BUILD_WAIT)) || die "the running go install (pid $pid) did not finish within ${GO_BUILD_WAIT}s; wait for it or raise TRUNKLINE_GO_BUILD_WAIT"
            sleep 5
            waited=$((waited + 5))
            ((waited % 60 == 0)) && info "still waiting for go install (pid $pid), ${waited}s"
        done
        if sip_bin_ok; then
            info "livekit-sip v$SIP_VERSION is now at $SIP_BIN"
            return 0
        fi
        info "the other go install finished but $SIP_BIN is still not v$SIP_VERSION; building it here"
    fi
    install_build_deps
    info "building livekit-sip v$SIP_VERSION: CGO_ENABLED=1 go install $SIP_MODULE@v$SIP_VERSION (several minutes the first time; log: $GO_LOG)"
    local start=$SECONDS
    if ! (cd -- "$STACK_DIR" && CGO_ENABLED=1 go install "$SIP_MODULE@v$SIP_VERSION" 9>&-) >"$GO_LOG" 2>&1; then
        show_log_tail "$GO_LOG" 30
        die "'CGO_ENABLED=1 go install $SIP_MODULE@v$SIP_VERSION' failed (see above; full log $GO_LOG). Check Go >= 1.26, the Debian packages ${BUILD_PACKAGES[*]}, and that the Go module proxy (GOPROXY) serves $SIP_MAIN_MODULE; or set LIVEKIT_SIP_BIN to a prebuilt v$SIP_VERSION binary."
    fi
    sip_bin_ok || die "go install succeeded but $SIP_BIN is not $SIP_MAIN_MODULE v$SIP_VERSION (is GOBIN elsewhere? set LIVEKIT_SIP_BIN)"
    info "built $SIP_BIN in $((SECONDS - start))s"
}

cmd_install() {
    install_sipp
    install_livekit_sip
    info "installed: $(command -v sipp) ($(sipp -v 2>&1 | awk '/SIPp v/ {print $2; exit}')), $SIP_BIN ($SIP_MAIN_MODULE $(sip_bin_module_version))"
}

# ---------------------------------------------------------------- the stack's settings

# Reads what ops/stack.sh reports for the running stack: sets LK_HTTP_URL, LK_WS_URL,
# LK_KEY, LK_SECRET, LK_REDIS_ADDR, LK_REDIS_DB.
read_stack_settings() {
    local status_json env_lines parsed
    status_json=$(stack status --json) || die "the stack is not up ('ops/stack.sh status' says so); run 'ops/stack.sh up' or '$PROG up'"
    parsed=$(printf '%s' "$status_json" | python3 -c '
import json, sys
s = json.load(sys.stdin)["services"]
print(s["livekit"]["url"]); print(s["livekit"]["redis_db"]); print(s["redis"]["address"])
') || die "cannot read 'ops/stack.sh status --json'"
    mapfile -t _lines <<<"$parsed"
    LK_HTTP_URL=${_lines[0]}
    LK_REDIS_DB=${_lines[1]}
    LK_REDIS_ADDR=${_lines[2]}
    [[ $LK_HTTP_URL == http://* ]] || die "unexpected livekit url '$LK_HTTP_URL' from ops/stack.sh"
    LK_WS_URL=ws://${LK_HTTP_URL#http://}
    env_lines=$(stack env) || die "'ops/stack.sh env' failed"
    LK_KEY=$(sed -n 's/^export LIVEKIT_API_KEY=//p' <<<"$env_lines")
    LK_SECRET=$(sed -n 's/^export LIVEKIT_API_SECRET=//p' <<<"$env_lines")
    [[ -n $LK_KEY && -n $LK_SECRET ]] || die "'ops/stack.sh env' printed no LIVEKIT_API_KEY/LIVEKIT_API_SECRET"
    # stack.sh prints them with printf %q; dev keys are plain words.
    [[ $LK_KEY =~ ^[A-Za-z0-9_.-]+$ && $LK_SECRET =~ ^[A-Za-z0-9_.-]+$ ]] \
        || die "API key/secret from ops/stack.sh contain characters this script does not quote for YAML"
}

# ---------------------------------------------------------------- the bridge

write_sip_config() { # path
    (
        umask 077
        cat >"$1" <<EOF
# Generated by $PROG on every 'up'; edits are overwritten. Run with: livekit-sip --config <this>
api_key: $LK_KEY
api_secret: $LK_SECRET
ws_url: $LK_WS_URL
redis:
  # The same redis as livekit-server, and livekit's own database in it.
  address: $LK_REDIS_ADDR
  db: $LK_REDIS_DB
sip_port: $SIP_PORT
listen_ip: 127.0.0.1
use_external_ip: false
# Announce loopback in Contact/Via/SDP instead of the first non-loopback interface.
nat_1_to_1_ip: 127.0.0.1
rtp_port: $RTP_PORTS
logging:
  level: $SIP_LOG_LEVEL
EOF
    )
}

# sets SIP_HEALTH_DETAIL; 0 when SIP answers OPTIONS and the RPC subscription exists
sip_healthy() {
    local status channels
    status=$(sip_options_status)
    if [[ $status != "SIP/2.0 200"* ]]; then
        SIP_HEALTH_DETAIL="SIP OPTIONS to 127.0.0.1:$SIP_PORT -> ${status}"
        return 1
    fi
    # Pub/sub channels are server-wide in redis (not per database).
    channels=$(redis-cli -h "${LK_REDIS_ADDR%:*}" -p "${LK_REDIS_ADDR##*:}" \
        pubsub channels 'SIPInternal|CreateSIPParticipant*' 2>/dev/null || true)
    if [[ -z $channels ]]; then
        SIP_HEALTH_DETAIL="SIP answers, but no SIPInternal|CreateSIPParticipant subscription in redis $LK_REDIS_ADDR yet"
        return 1
    fi
    SIP_HEALTH_DETAIL=ok
    return 0
}

sip_start() {
    local pid newcfg
    newcfg=$SIP_CONFIG.new
    write_sip_config "$newcfg"
    pid=$(sip_pid)
    if [[ -n $pid ]]; then
        if cmp -s -- "$newcfg" "$SIP_CONFIG" && sip_healthy; then
            rm -f -- "$newcfg"
            info "livekit-sip already up (pid $pid, sip:127.0.0.1:$SIP_PORT)"
            return 0
        fi
        if cmp -s -- "$newcfg" "$SIP_CONFIG"; then
            info "livekit-sip (pid $pid) is not healthy ($SIP_HEALTH_DETAIL); restarting it"
        else
            info "livekit-sip config changed; restarting livekit-sip (pid $pid)"
        fi
        # SIGINT: livekit-sip ends its calls and exits at once (SIGTERM waits for calls to end).
        stop_pid "$pid" livekit-sip 20 INT
    fi
    rm -f -- "$SIP_PIDFILE"
    mv -f -- "$newcfg" "$SIP_CONFIG"
    port_free "$SIP_PORT" \
        || die "127.0.0.1:$SIP_PORT (UDP or TCP) is taken by a process not started by $PROG; free it or set TRUNKLINE_SIP_PORT"

    # livekit-sip reads these variables as defaults or instead of --config.
    local -a unset_env=()
    local v
    for v in $(compgen -e); do
        case $v in
            LIVEKIT_* | SIP_CONFIG_FILE | SIP_CONFIG_BODY) unset_env+=(-u "$v") ;;
        esac
    done

    info "starting livekit-sip v$SIP_VERSION on sip:127.0.0.1:$SIP_PORT (rtp $RTP_PORTS, livekit $LK_WS_URL, redis $LK_REDIS_ADDR db $LK_REDIS_DB)"
    printf '\n=== %s starting %s --config %s\n' "$(date -u +%FT%TZ)" "$SIP_BIN" "$SIP_CONFIG" >>"$SIP_LOG"
    # No job control here, so setsid execs in place: $! is the bridge's own pid.
    nohup setsid env "${unset_env[@]}" "$SIP_BIN" --config "$SIP_CONFIG" \
        >>"$SIP_LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    printf '%s\n' "$pid" >"$SIP_PIDFILE"

    local i
    SIP_HEALTH_DETAIL="not checked yet"
    for ((i = 0; i < SIP_WAIT * 4; i++)); do
        if ! pid_alive "$pid"; then
            rm -f -- "$SIP_PIDFILE"
            show_log_tail "$SIP_LOG"
            die "livekit-sip exited during startup (see above; log $SIP_LOG, config $SIP_CONFIG)"
        fi
        if sip_healthy; then
            info "livekit-sip up (pid $pid, sip:127.0.0.1:$SIP_PORT, registered with livekit over redis)"
            return 0
        fi
        sleep 0.25
    done
    show_log_tail "$SIP_LOG"
    stop_pid "$pid" livekit-sip 10 INT
    rm -f -- "$SIP_PIDFILE"
    die "livekit-sip did not become ready within ${SIP_WAIT}s: $SIP_HEALTH_DETAIL (log $SIP_LOG); stopped it"
}

sip_stop() {
    local pid
    pid=$(sip_pid)
    if [[ -z $pid ]]; then
        rm -f -- "$SIP_PIDFILE"
        info "livekit-sip already down"
        return 0
    fi
    info "stopping livekit-sip (pid $pid)"
    stop_pid "$pid" livekit-sip 20 INT
    rm -f -- "$SIP_PIDFILE"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    install_sipp
    install_livekit_sip
    stack up
    read_stack_settings
    sip_start
    info "bridge up; load its settings with: eval \"\$($PROG env)\""
}

cmd_down() {
    sip_stop
}

cmd_status() {
    local json=0
    case ${1:-} in
        --json) json=1 ;;
        "") ;;
        *) die "status: unknown option '$1' (use --json)" ;;
    esac
    [[ $# -le 1 ]] || die "status takes at most one option (--json)"
    need_python
    local pid up=false detail db="" redis_addr=""
    pid=$(sip_pid)
    if [[ -n $pid ]]; then
        if stack status >/dev/null 2>&1 && read_stack_settings 2>/dev/null; then
            db=$LK_REDIS_DB
            redis_addr=$LK_REDIS_ADDR
            if sip_healthy; then
                up=true
                detail=ok
            else
                detail=$SIP_HEALTH_DETAIL
            fi
        else
            detail="process alive, but the stack (redis/livekit) is down"
        fi
    elif ! port_free "$SIP_PORT"; then
        detail="not running (127.0.0.1:$SIP_PORT is used by a process not started by $PROG)"
    else
        detail="not running"
    fi
    if ((json)); then
        python3 - "$STACK_DIR" "$up" "$pid" "127.0.0.1:$SIP_PORT" "$RTP_PORTS" "$SIP_LOG" \
            "$SIP_CONFIG" "$detail" "$db" "$redis_addr" <<'PY'
import json, sys
a = sys.argv[1:]
print(json.dumps({"ok": a[1] == "true", "stack_dir": a[0], "services": {"livekit-sip": {
    "up": a[1] == "true", "pid": int(a[2]) if a[2] else None, "address": a[3],
    "url": f"sip:{a[3]}", "rtp_ports": a[4], "log": a[5], "config": a[6], "detail": a[7],
    "redis_db": int(a[8]) if a[8] else None, "redis": a[9] or None}}}, indent=2))
PY
    else
        local state=down
        [[ $up == true ]] && state=up
        printf '%-12s %-5s pid=%-8s %-28s %s\n' livekit-sip "$state" "${pid:--}" \
            "sip:127.0.0.1:$SIP_PORT" "$detail (rtp $RTP_PORTS)"
    fi
    [[ $up == true ]]
}

cmd_env() {
    [[ $# -eq 0 ]] || die "env takes no arguments"
    printf 'export TRUNKLINE_SIP_HOST=%q\n' 127.0.0.1
    printf 'export TRUNKLINE_SIP_PORT=%q\n' "$SIP_PORT"
    printf 'export TRUNKLINE_SIP_RTP_PORTS=%q\n' "$RTP_PORTS"
    printf 'export SIPP_BIN=%q\n' "$(command -v sipp || echo sipp)"
}

cmd_logs() {
    local lines=100 follow=1
    while [[ $# -gt 0 ]]; do
        case $1 in
            -n) [[ $# -ge 2 ]] || die "logs: -n needs a number"; lines=$2; shift 2 ;;
            --no-follow) follow=0; shift ;;
            *) die "logs: unknown option '$1' (use -n N, --no-follow)" ;;
        esac
    done
    require_uint "logs -n" "$lines" 0 1000000
    if ((follow)); then
        touch -- "$SIP_LOG"
        exec tail -n "$lines" -F -- "$SIP_LOG"
    fi
    [[ -e $SIP_LOG ]] || die "no log yet at $SIP_LOG (run '$PROG up')"
    tail -n "$lines" -- "$SIP_LOG"
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        -h | --help | help) usage; return 0 ;;
        "") usage >&2; return 2 ;;
        install | up | down | status | env | logs) ;;
        *) printf '%s: unknown command %q\n\n' "$PROG" "$cmd" >&2; usage >&2; return 2 ;;
    esac
    validate_settings
    [[ $cmd == env ]] && { cmd_env "$@"; return; }
    init_paths
    case $cmd in
        install | up | down) [[ $# -eq 0 ]] || die "$cmd takes no arguments" ;;
    esac
    case $cmd in
        install) take_lock sip.lock; cmd_install ;;
        up) need_python; take_lock sip.lock; cmd_up ;;
        down) take_lock sip.lock; cmd_down ;;
        status) cmd_status "$@" ;;
        logs) cmd_logs "$@" ;;
    esac
}

main "$@"
