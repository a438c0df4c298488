#!/usr/bin/env bash
# Trunkline's SIP bridge: builds, starts, reports and stops LiveKit's SIP service
# (livekit-sip v1.10.0, built from the source tree beside the repository) next to the local
# stack of ops/stack.sh, on loopback, and installs sipp (the test caller and the stand-in
# provider gateway). Run `ops/sip.sh --help`.
set -euo pipefail

readonly SIP_VERSION=1.10.0
readonly SIP_LDFLAGS="-X github.com/livekit/sip/version.Version=$SIP_VERSION"
# Debian packages the cgo build needs (pkg-config names in brackets): libopus [opus],
# libopusfile [opusfile], libsoxr [soxr], and a C compiler.
readonly BUILD_PACKAGES=(pkg-config gcc libc6-dev libopus-dev libopusfile-dev libsoxr-dev)
readonly PKG_CONFIG_NAMES=(opus opusfile soxr)

# shellcheck source=ops/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"
STACK_SH=$SCRIPT_DIR/stack.sh

SIP_SRC=${TRUNKLINE_SIP_SRC:-$REPO_ROOT/../shared/third_party/livekit-sip}
SIP_BUILD_ROOT=${TRUNKLINE_SIP_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/trunkline/livekit-sip}
SIP_PORT=${TRUNKLINE_SIP_PORT:-5080}
HEALTH_PORT=${TRUNKLINE_SIP_HEALTH_PORT:-}
RTP_PORTS=${TRUNKLINE_SIP_RTP_PORTS:-10000-10199}
SIP_LOG_LEVEL=${TRUNKLINE_SIP_LOG_LEVEL:-info}
GO_BUILD_WAIT=${TRUNKLINE_GO_BUILD_WAIT:-1800}
SIP_WAIT=30

usage() {
    cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

Builds, starts, reports and stops LiveKit's SIP bridge (livekit-sip v$SIP_VERSION) beside
the local stack of ops/stack.sh: the same redis (livekit's database), the same livekit-server
(API key/secret, ws_url), SIP signalling and announced media on 127.0.0.1. Also installs sipp.
Works from any cwd.

Commands:
  install          Install what is missing: sipp (Debian sip-tester), the cgo build
                   dependencies (${BUILD_PACKAGES[*]}) via apt-get, and livekit-sip: the
                   source tree \$TRUNKLINE_SIP_SRC is copied into \$TRUNKLINE_SIP_BUILD_DIR and
                   built there with 'go build -p=1' (niced; 2 to 10 minutes the first time).
                   The build is reused until the tree, the Go version or the flags change
                   (a hash of all three names its folder). Waits for a concurrent build.
                   Starts nothing.
  up               install (if needed); 'ops/stack.sh up' (redis + livekit-server, idempotent);
                   then start the bridge with a generated config. Idempotent: a healthy bridge
                   with an unchanged config is left alone, otherwise it is restarted. Waits
                   (${SIP_WAIT}s) until the bridge's health port answers 200, it answers a SIP
                   OPTIONS on 127.0.0.1:\$TRUNKLINE_SIP_PORT with 200, and it has subscribed
                   to livekit's SIPInternal/CreateSIPParticipant RPC in redis (so inbound and
                   outbound calls both work from then on). The bridge exits 0 when it cannot
                   start, so a failed start is reported from these checks and its log.
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
                            logs/go-build-sip.log and run/livekit-sip.pid.
  TRUNKLINE_SIP_SRC         LiveKit's SIP bridge source, tag v$SIP_VERSION (default: the
                            repository's ../shared/third_party/livekit-sip). Read only.
  TRUNKLINE_SIP_BUILD_DIR   Where builds are kept (default: \${XDG_CACHE_HOME:-~/.cache}/
                            trunkline/livekit-sip = $SIP_BUILD_ROOT), one folder per build.
  TRUNKLINE_SIP_PORT        SIP port (UDP and TCP) on 127.0.0.1 (default 5080).
  TRUNKLINE_SIP_HEALTH_PORT The bridge's health port (default: SIP port + 1).
  TRUNKLINE_SIP_RTP_PORTS   RTP port range START-END (default 10000-10199).
  TRUNKLINE_SIP_LOG_LEVEL   debug, info, warn or error (default info).
  LIVEKIT_SIP_BIN           A livekit-sip binary to use as is instead of building one.
  TRUNKLINE_GO_BUILD_WAIT   Seconds to wait for a concurrent build (default 1800).
  The stack's own variables (TRUNKLINE_REDIS_PORT, LIVEKIT_PORT, TRUNKLINE_LIVEKIT_UDP_PORT,
  TRUNKLINE_LIVEKIT_REDIS_DB, ...) are passed through to ops/stack.sh unchanged; the bridge
  reads livekit's redis address and database from 'ops/stack.sh status --json'.

Loopback: SIP listens on 127.0.0.1 only and the bridge announces 127.0.0.1 in Contact and SDP
(listen_ip, nat_1_to_1_ip; use_external_ip: false). livekit-sip v$SIP_VERSION binds its RTP
sockets and its health port on every interface (not configurable in that version); peers are
only ever told 127.0.0.1, and this script probes the health port on 127.0.0.1.
EOF
}

# ---------------------------------------------------------------- helpers

validate_settings() {
    require_uint TRUNKLINE_SIP_PORT "$SIP_PORT" 1
    SIP_PORT=$((10#$SIP_PORT))
    [[ -n $HEALTH_PORT ]] || HEALTH_PORT=$((SIP_PORT + 1))
    require_uint TRUNKLINE_SIP_HEALTH_PORT "$HEALTH_PORT" 1
    HEALTH_PORT=$((10#$HEALTH_PORT))
    ((HEALTH_PORT != SIP_PORT)) || die "TRUNKLINE_SIP_HEALTH_PORT must differ from TRUNKLINE_SIP_PORT"
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
    ((HEALTH_PORT < RTP_START || HEALTH_PORT > RTP_END)) \
        || die "TRUNKLINE_SIP_HEALTH_PORT=$HEALTH_PORT lies inside TRUNKLINE_SIP_RTP_PORTS=$RTP_PORTS"
    [[ $SIP_LOG_LEVEL =~ ^(debug|info|warn|error)$ ]] \
        || die "TRUNKLINE_SIP_LOG_LEVEL=$SIP_LOG_LEVEL must be debug, info, warn or error"
    require_uint TRUNKLINE_GO_BUILD_WAIT "$GO_BUILD_WAIT" 0 86400
}

init_paths() {
    init_state_dir
    LOG_DIR=$STACK_DIR/logs
    RUN_DIR=$STACK_DIR/run
    SIP_LOG=$LOG_DIR/livekit-sip.log
    GO_LOG=$LOG_DIR/go-build-sip.log
    SIP_PIDFILE=$RUN_DIR/livekit-sip.pid
    SIP_CONFIG=$STACK_DIR/livekit-sip.yaml
    mkdir -p -- "$LOG_DIR" "$RUN_DIR"
}

# install/up/down of the bridge take their own lock file: ops/stack.sh takes run/ops.lock
# itself when we call it. fd 9 is closed for every child (9>&-).

# Ours when its command line names our generated config.
sip_pid() { our_pid "$SIP_PIDFILE" "--config $SIP_CONFIG"; }

# Python helpers (stdlib only).
# udp-free PORT: exit 0 if 127.0.0.1:PORT can be bound for UDP and TCP.
# options PORT: send one SIP OPTIONS over UDP; print the status line of the answer or "none".
readonly PY_NET='
import os, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
if mode == "free":
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        s = socket.socket(socket.AF_INET, kind)
        if kind == socket.SOCK_STREAM:
            # As Go listeners do: the probes leave TIME_WAIT connections behind.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            sys.exit(1)
        finally:
            s.close()
    sys.exit(0)
if mode == "health":
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1.0) as answer:
            print(answer.status, answer.read(100).decode("utf-8", "replace"))
    except urllib.error.HTTPError as error:
        print(error.code, error.read(100).decode("utf-8", "replace"))
    except OSError as error:
        print("none", error)
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

sip_health_status() { python3 -c "$PY_NET" health "$HEALTH_PORT"; }

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

# Where the tree is copied and built: one folder per build key (source tree, Go version, build
# flags), so a changed tree or toolchain builds anew and an unchanged one is reused.
build_key() {
    local tree
    tree=$(cd -- "$SIP_SRC" && find . -type f ! -path './.git/*' -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum | sha256sum | cut -c1-64)
    printf '%s\n%s\n%s\n%s\n' "$tree" "$(go version)" "$SIP_LDFLAGS" "$SIP_VERSION" \
        | sha256sum | cut -c1-16
}

resolve_sip_bin() {
    if [[ -n ${LIVEKIT_SIP_BIN:-} ]]; then
        SIP_BIN=$LIVEKIT_SIP_BIN
        SIP_BIN_EXPLICIT=1
        return 0
    fi
    SIP_BIN_EXPLICIT=0
    have go || die "'go' is not on PATH: install Go >= 1.26 (needed to build livekit-sip v$SIP_VERSION), or set LIVEKIT_SIP_BIN to an existing v$SIP_VERSION binary"
    [[ -f $SIP_SRC/go.mod && -d $SIP_SRC/cmd/livekit-sip ]] \
        || die "LiveKit's SIP bridge source is not at $SIP_SRC (no go.mod or cmd/livekit-sip): it is expected beside the repository as ../shared/third_party/livekit-sip (tag v$SIP_VERSION); set TRUNKLINE_SIP_SRC to where it is"
    SIP_SRC=$(cd -- "$SIP_SRC" && pwd -P)
    SIP_BUILD_KEY=$(build_key)
    SIP_BUILD_DIR=$SIP_BUILD_ROOT/$SIP_BUILD_KEY
    SIP_BIN=$SIP_BUILD_DIR/livekit-sip
}

sip_bin_ok() { [[ -x $SIP_BIN && -f $SIP_BUILD_DIR/built ]]; }

install_livekit_sip() {
    resolve_sip_bin
    if [[ $SIP_BIN_EXPLICIT == 1 ]]; then
        [[ -x $SIP_BIN ]] || die "LIVEKIT_SIP_BIN=$SIP_BIN is missing or not executable; fix it or unset LIVEKIT_SIP_BIN to let $PROG build it from $SIP_SRC"
        return 0
    fi
    sip_bin_ok && return 0
    mkdir -p -- "$SIP_BUILD_ROOT" || die "cannot create $SIP_BUILD_ROOT (TRUNKLINE_SIP_BUILD_DIR)"
    # A build in another checkout or stack instance uses the same folder: wait for it.
    if have flock; then
        exec 8>"$SIP_BUILD_ROOT/build.lock"
        if ! flock -n 8; then
            info "another build of livekit-sip is running; waiting for it (max ${GO_BUILD_WAIT}s)"
            flock -w "$GO_BUILD_WAIT" 8 || die "another livekit-sip build still holds $SIP_BUILD_ROOT/build.lock after ${GO_BUILD_WAIT}s; raise TRUNKLINE_GO_BUILD_WAIT"
        fi
        if sip_bin_ok; then
            exec 8>&-
            return 0
        fi
    fi
    install_build_deps
    local work=$SIP_BUILD_ROOT/.building-$$ start=$SECONDS
    rm -rf -- "$work"
    mkdir -p -- "$work"
    # The source may be read-only (shared/ is); Go writes nothing into it, but a copy also
    # keeps the build independent of later edits there.
    cp -R -- "$SIP_SRC" "$work/src" && chmod -R u+w -- "$work/src" \
        || die "cannot copy $SIP_SRC to $work/src"
    info "building livekit-sip v$SIP_VERSION from $SIP_SRC (2 to 10 minutes the first time on 2 cores, depending on load; log: $GO_LOG)"
    if ! (cd -- "$work/src" && CGO_ENABLED=1 nice -n 10 go build -p=1 -ldflags "$SIP_LDFLAGS" \
        -o "$work/livekit-sip" ./cmd/livekit-sip 8>&- 9>&-) >"$GO_LOG" 2>&1; then
        show_log_tail "$GO_LOG" 30
        rm -rf -- "$work"
        die "building livekit-sip failed (see above; full log $GO_LOG). Check Go >= 1.26, the Debian packages ${BUILD_PACKAGES[*]}, and that the Go module proxy (GOPROXY) serves the modules $SIP_SRC/go.mod pins."
    fi
    printf '%s\n' "$SIP_SRC" >"$work/built"
    rm -rf -- "$SIP_BUILD_DIR"
    mv -- "$work" "$SIP_BUILD_DIR" || die "cannot move the build to $SIP_BUILD_DIR"
    # Older builds (another tree or toolchain) are never used again.
    local old
    for old in "$SIP_BUILD_ROOT"/*; do
        [[ -d $old && $old != "$SIP_BUILD_DIR" ]] && rm -rf -- "$old"
    done
    exec 8>&-
    sip_bin_ok || die "the build finished but $SIP_BIN is missing"
    info "built $SIP_BIN in $((SECONDS - start))s"
}

cmd_install() {
    install_sipp
    install_livekit_sip
    info "installed: $(command -v sipp) ($(sipp -v 2>&1 | awk '/SIPp v/ {print $2; exit}')), $SIP_BIN (livekit-sip v$SIP_VERSION)"
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
# GET / answers 200 once the service is ready (probed on 127.0.0.1).
health_port: $HEALTH_PORT
listen_ip: 127.0.0.1
use_external_ip: false
# Announce loopback in Contact/Via/SDP instead of the first non-loopback interface.
nat_1_to_1_ip: 127.0.0.1
rtp_port: $RTP_PORTS
# Above this share of all cores busy the bridge reports itself under load and refuses
# outbound calls (CreateSIPParticipant). A developer's or CI's 2-core machine running the
# test suites is often that busy; 1.0 never refuses.
max_cpu_utilization: 1.0
logging:
  level: $SIP_LOG_LEVEL
EOF
    )
}

# sets SIP_HEALTH_DETAIL; 0 when SIP answers OPTIONS and the RPC subscription exists
sip_healthy() {
    local status channels
    status=$(sip_health_status)
    if [[ $status != "200 "* ]]; then
        SIP_HEALTH_DETAIL="health port http://127.0.0.1:$HEALTH_PORT/ -> ${status}"
        return 1
    fi
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

# SIGINT stops the bridge: it ends its calls and exits at once (SIGTERM waits for calls to end).
sip_start() {
    local newcfg=$SIP_CONFIG.new pid
    write_sip_config "$newcfg"
    pid=$(sip_pid)
    if keep_or_stop livekit-sip "$pid" "$newcfg" "$SIP_CONFIG" sip_healthy SIP_HEALTH_DETAIL INT; then
        info "livekit-sip already up (pid $pid, sip:127.0.0.1:$SIP_PORT)"
        return 0
    fi
    rm -f -- "$SIP_PIDFILE"
    port_free "$SIP_PORT" \
        || die "127.0.0.1:$SIP_PORT (UDP or TCP) is taken by a process not started by $PROG; free it or set TRUNKLINE_SIP_PORT"
    port_free "$HEALTH_PORT" \
        || die "127.0.0.1:$HEALTH_PORT (the bridge's health port) is taken by a process not started by $PROG; free it or set TRUNKLINE_SIP_HEALTH_PORT"

    info "starting livekit-sip v$SIP_VERSION on sip:127.0.0.1:$SIP_PORT (rtp $RTP_PORTS, livekit $LK_WS_URL, redis $LK_REDIS_ADDR db $LK_REDIS_DB)"
    # livekit-sip reads these variables as defaults or instead of --config.
    start_daemon "$SIP_PIDFILE" "$SIP_LOG" '^(LIVEKIT_.*|SIP_CONFIG_FILE|SIP_CONFIG_BODY)$' \
        "$SIP_BIN" --config "$SIP_CONFIG"
    SIP_HEALTH_DETAIL="not checked yet"
    if await_daemon livekit-sip "$DAEMON_PID" "$SIP_PIDFILE" "$SIP_LOG" "$SIP_WAIT" sip_healthy INT; then
        info "livekit-sip up (pid $DAEMON_PID, sip:127.0.0.1:$SIP_PORT, registered with livekit over redis)"
        return 0
    fi
    die "livekit-sip did not become ready within ${SIP_WAIT}s: $SIP_HEALTH_DETAIL (log $SIP_LOG); stopped it"
}

# ---------------------------------------------------------------- commands

cmd_up() {
    need_python "SIP OPTIONS probe, JSON"
    install_sipp
    install_livekit_sip
    stack up
    read_stack_settings
    sip_start
    info "bridge up; load its settings with: eval \"\$($PROG env)\""
}

cmd_down() { stop_daemon livekit-sip "$SIP_PIDFILE" "$(sip_pid)" INT; }

cmd_status() {
    local json pid up=false detail db="" redis_addr=""
    json=$(json_option "$@")
    need_python "SIP OPTIONS probe, JSON"
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
    printf 'export TRUNKLINE_SIP_HOST=%q\n' 127.0.0.1
    printf 'export TRUNKLINE_SIP_PORT=%q\n' "$SIP_PORT"
    printf 'export TRUNKLINE_SIP_RTP_PORTS=%q\n' "$RTP_PORTS"
    printf 'export SIPP_BIN=%q\n' "$(command -v sipp || echo sipp)"
}

cmd_logs() { tail_logs "$SIP_LOG" -- "$@"; }

run_main sip.lock "install up down status env logs" "$@"
