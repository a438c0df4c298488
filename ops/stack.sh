#!/usr/bin/env bash
# Trunkline local stack: installs, starts, reports and stops redis-server and
# livekit-server (v1.13.5, dev mode) on loopback. Run `ops/stack.sh --help`.
set -euo pipefail

readonly LIVEKIT_VERSION=1.13.5
readonly LIVEKIT_MODULE=github.com/livekit/livekit-server/cmd/server
# Dev-mode credentials: livekit-server --dev uses exactly these when the config has no keys.
readonly LIVEKIT_DEV_KEY=devkey
readonly LIVEKIT_DEV_SECRET=secret

# shellcheck source=ops/lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

REDIS_PORT=${TRUNKLINE_REDIS_PORT:-6390}
LK_REDIS_DB=${TRUNKLINE_LIVEKIT_REDIS_DB:-1}
LK_PORT=${LIVEKIT_PORT:-7880}
LK_UDP_PORT=${TRUNKLINE_LIVEKIT_UDP_PORT:-7882}
LK_LOG_LEVEL=${TRUNKLINE_LIVEKIT_LOG_LEVEL:-info}
GO_BUILD_WAIT=${TRUNKLINE_GO_BUILD_WAIT:-1800}
REDIS_WAIT=20
LIVEKIT_WAIT=30

usage() {
    cat <<EOF
Usage: $PROG COMMAND [OPTIONS]

Installs, starts, reports and stops Trunkline's local stack: redis-server and
livekit-server v$LIVEKIT_VERSION (dev mode), both on 127.0.0.1 only. Works from any cwd.

Commands:
  install          Install what is missing (redis-server via apt-get, livekit-server via
                   'go install $LIVEKIT_MODULE@v$LIVEKIT_VERSION'). Starts nothing.
                   Waits for an already running 'go install' of the same module instead
                   of starting a second one. The first livekit build takes several minutes.
  up               install (if needed), then start redis, then livekit. Idempotent: a service
                   that is already running and healthy is left alone (livekit is restarted
                   if its generated config changed). Waits until redis answers PING
                   (${REDIS_WAIT}s) and until livekit answers HTTP and a real Twirp call
                   (livekit.SIP/ListSIPInboundTrunk) returns 200 (${LIVEKIT_WAIT}s).
  down             Stop livekit, then redis. Idempotent.
  status [--json]  One line per service: name, up/down, pid, address. --json prints one
                   JSON object instead. Exit status 1 if any service is down.
  env              Print export lines for the clients:  eval "\$($PROG env)"
                   REDIS_URL, LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET.
  logs [-n N] [--no-follow]
                   Tail both logs (default: last 100 lines, then follow).
  twirp [Service/]Method [JSON]
                   POST one Twirp call to the local livekit with a freshly minted admin JWT
                   (Service defaults to livekit.SIP; JSON defaults to {}). Prints the body,
                   reports the HTTP status on stderr, exits 1 unless it is 2xx.
  -h, --help       This help.

Environment variables:
  TRUNKLINE_STACK_DIR          State folder (default: <repo root>/.stack = $STACK_DIR).
                               Holds redis/ (data, AOF), logs/, run/ (pid files) and
                               livekit.yaml (generated on every 'up'; do not edit).
  TRUNKLINE_REDIS_PORT         Redis port on 127.0.0.1 (default 6390; not 6379, so a system
                               redis does not matter). Trunkline uses database 0.
  TRUNKLINE_LIVEKIT_REDIS_DB   Redis database number for livekit (default 1; must not be 0).
  LIVEKIT_PORT                 livekit HTTP/Twirp/WebSocket port on 127.0.0.1 (default 7880).
  TRUNKLINE_LIVEKIT_UDP_PORT   livekit WebRTC UDP port on 127.0.0.1 (default 7882).
                               ICE/TCP is disabled: v1.13.5 would bind it on all interfaces.
  TRUNKLINE_LIVEKIT_LOG_LEVEL  livekit log level (default info; --dev alone means debug).
  LIVEKIT_SERVER_BIN           livekit-server binary (default: \$(go env GOBIN) or
                               \$(go env GOPATH)/bin, file 'server'). If set explicitly it must
                               already be v$LIVEKIT_VERSION; it is never rebuilt.
  TRUNKLINE_GO_BUILD_WAIT      Seconds to wait for a concurrent 'go install' (default 1800).

livekit runs with dev keys  $LIVEKIT_DEV_KEY / $LIVEKIT_DEV_SECRET  (what 'env' prints). Every other
LIVEKIT_*, REDIS_HOST, REDIS_PASSWORD, UDP_PORT and NODE_IP variable is removed from
livekit-server's environment: the server reads them as flags that override the config file.

Files: logs in \$TRUNKLINE_STACK_DIR/logs/{redis,livekit,go-install}.log,
       pids in \$TRUNKLINE_STACK_DIR/run/{redis,livekit}.pid.
EOF
}

# ---------------------------------------------------------------- helpers

validate_settings() {
    require_uint TRUNKLINE_REDIS_PORT "$REDIS_PORT" 1
    require_uint LIVEKIT_PORT "$LK_PORT" 1
    require_uint TRUNKLINE_LIVEKIT_UDP_PORT "$LK_UDP_PORT" 1
    require_uint TRUNKLINE_LIVEKIT_REDIS_DB "$LK_REDIS_DB" 1 15
    require_uint TRUNKLINE_GO_BUILD_WAIT "$GO_BUILD_WAIT" 0 86400
    REDIS_PORT=$((10#$REDIS_PORT))
    LK_PORT=$((10#$LK_PORT))
    LK_UDP_PORT=$((10#$LK_UDP_PORT))
    LK_REDIS_DB=$((10#$LK_REDIS_DB))
    [[ $REDIS_PORT != "$LK_PORT" ]] || die "TRUNKLINE_REDIS_PORT and LIVEKIT_PORT are both $LK_PORT"
    [[ $LK_LOG_LEVEL =~ ^(debug|info|warn|error)$ ]] \
        || die "TRUNKLINE_LIVEKIT_LOG_LEVEL=$LK_LOG_LEVEL must be debug, info, warn or error"
}

init_paths() {
    init_state_dir
    REDIS_DATA_DIR=$STACK_DIR/redis
    LOG_DIR=$STACK_DIR/logs
    RUN_DIR=$STACK_DIR/run
    REDIS_LOG=$LOG_DIR/redis.log
    LK_LOG=$LOG_DIR/livekit.log
    GO_LOG=$LOG_DIR/go-install.log
    REDIS_PIDFILE=$RUN_DIR/redis.pid
    LK_PIDFILE=$RUN_DIR/livekit.pid
    LK_CONFIG=$STACK_DIR/livekit.yaml
    mkdir -p -- "$REDIS_DATA_DIR" "$LOG_DIR" "$RUN_DIR"
}

# fd 9 (the lock of install/up/down) is closed for every daemon we start (9>&-): a daemon
# that inherited it would hold the lock for its whole life.

redis_pid() { our_pid "$REDIS_PIDFILE" redis-server; }

# Ours when its command line names our generated config.
livekit_pid() { our_pid "$LK_PIDFILE" "--config $LK_CONFIG"; }

redis_ping() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# Python helper: HTTP GET / and Twirp POST with an HS256 JWT (stdlib only).
# argv: mode(get|twirp) base_url [key secret path body grants_json]
# stdout: line 1 = HTTP status (000 on connection failure), rest = body.
readonly PY_HTTP='
import base64, hashlib, hmac, json, sys, time, urllib.error, urllib.request
mode, base = sys.argv[1], sys.argv[2].rstrip("/")
def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
try:
    if mode == "get":
        req = urllib.request.Request(base + "/", method="GET")
    else:
        key, secret, path, body, grants = sys.argv[3:8]
        now = int(time.time())
        claims = {"iss": key, "nbf": now - 10, "exp": now + 600}
        claims.update(json.loads(grants))
        signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + \
            b64(json.dumps(claims, separators=(",", ":")).encode())
        sig = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
        req = urllib.request.Request(base + "/twirp/" + path, data=body.encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": "Bearer " + signing_input + "." + b64(sig)})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, data = err.code, err.read()
except Exception as exc:
    print("000")
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(0)
print(status)
sys.stdout.write(data.decode("utf-8", "replace"))
'

http_get_status() { # -> prints status code of GET /
    local out
    out=$(python3 -c "$PY_HTTP" get "http://127.0.0.1:$LK_PORT")
    printf '%s\n' "${out%%$'\n'*}"
}

# twirp_call path body grants_json -> sets TWIRP_STATUS and TWIRP_BODY
twirp_call() {
    local out
    out=$(python3 -c "$PY_HTTP" twirp "http://127.0.0.1:$LK_PORT" \
        "$LIVEKIT_DEV_KEY" "$LIVEKIT_DEV_SECRET" "$1" "$2" "$3")
    TWIRP_STATUS=${out%%$'\n'*}
    TWIRP_BODY=""
    [[ $out == *$'\n'* ]] && TWIRP_BODY=${out#*$'\n'}
    return 0
}

readonly SIP_ADMIN_GRANTS='{"sip":{"admin":true}}'

livekit_healthy() { # sets LK_HEALTH_DETAIL
    local code
    code=$(http_get_status)
    if [[ $code != 200 ]]; then
        LK_HEALTH_DETAIL="GET http://127.0.0.1:$LK_PORT/ -> $code"
        return 1
    fi
    twirp_call livekit.SIP/ListSIPInboundTrunk '{}' "$SIP_ADMIN_GRANTS"
    if [[ $TWIRP_STATUS != 200 ]]; then
        LK_HEALTH_DETAIL="POST /twirp/livekit.SIP/ListSIPInboundTrunk -> $TWIRP_STATUS $(printf '%s' "${TWIRP_BODY:0:300}" | tr '\n' ' ')"
        return 1
    fi
    LK_HEALTH_DETAIL=ok
    return 0
}

# ---------------------------------------------------------------- install

resolve_livekit_bin() {
    if [[ -n ${LIVEKIT_SERVER_BIN:-} ]]; then
        LK_BIN=$LIVEKIT_SERVER_BIN
        LK_BIN_EXPLICIT=1
        return 0
    fi
    LK_BIN_EXPLICIT=0
    have go || die "'go' is not on PATH: install Go >= 1.26 (needed to build livekit-server v$LIVEKIT_VERSION), or set LIVEKIT_SERVER_BIN to an existing v$LIVEKIT_VERSION binary"
    local gobin gopath
    gobin=$(go env GOBIN)
    if [[ -z $gobin ]]; then
        gopath=$(go env GOPATH)
        [[ -n $gopath ]] || die "'go env GOPATH' is empty; set GOPATH or LIVEKIT_SERVER_BIN"
        gobin=${gopath%%:*}/bin
    fi
    LK_BIN=$gobin/server
}

livekit_bin_ok() {
    local v
    [[ -x $LK_BIN ]] || return 1
    v=$("$LK_BIN" --version 2>/dev/null) || return 1
    [[ $v == *"$LIVEKIT_VERSION"* ]]
}

running_go_install_pid() { # pid of a concurrent 'go install' of the livekit module, or nothing
    local p
    local -a argv
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" ]] && continue
        argv=()
        mapfile -d '' -t argv <"/proc/$p/cmdline" 2>/dev/null || continue
        # argv[0] must be go itself (not a shell whose script mentions the command)
        if [[ ${#argv[@]} -ge 3 && ${argv[0]##*/} == go && ${argv[1]} == install \
            && " ${argv[*]:2} " == *" $LIVEKIT_MODULE@"* ]]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 0
}

install_livekit() {
    resolve_livekit_bin
    livekit_bin_ok && return 0
    if [[ $LK_BIN_EXPLICIT == 1 ]]; then
        die "LIVEKIT_SERVER_BIN=$LK_BIN is missing, not executable, or its --version is not $LIVEKIT_VERSION; fix it or unset LIVEKIT_SERVER_BIN to let $PROG build it with go install"
    fi
    local pid waited=0
    pid=$(running_go_install_pid)
    if [[ -n $pid ]]; then
        info "a 'go install $LIVEKIT_MODULE' is already running (pid $pid); waiting for it (max ${GO_BUILD_WAIT}s)"
        while pid_alive "$pid"; do
            ((waited < GO_BUILD_WAIT)) || die "the running go install (pid $pid) did not finish within ${GO_BUILD_WAIT}s; wait for it or raise TRUNKLINE_GO_BUILD_WAIT"
            sleep 5
            waited=$((waited + 5))
            ((waited % 60 == 0)) && info "still waiting for go install (pid $pid), ${waited}s"
        done
        if livekit_bin_ok; then
            info "livekit-server v$LIVEKIT_VERSION is now at $LK_BIN"
            return 0
        fi
        info "the other go install finished but $LK_BIN is still not v$LIVEKIT_VERSION; building it here"
    fi
    have go || die "'go' is not on PATH: install Go >= 1.26 to build livekit-server"
    info "building livekit-server v$LIVEKIT_VERSION: go install $LIVEKIT_MODULE@v$LIVEKIT_VERSION (several minutes the first time; log: $GO_LOG)"
    local start=$SECONDS
    if ! (cd -- "$STACK_DIR" && go install "$LIVEKIT_MODULE@v$LIVEKIT_VERSION" 9>&-) >"$GO_LOG" 2>&1; then
        show_log_tail "$GO_LOG" 30
        die "'go install $LIVEKIT_MODULE@v$LIVEKIT_VERSION' failed (see above; full log $GO_LOG). Check Go >= 1.26 and access to the Go module proxy (GOPROXY)."
    fi
    livekit_bin_ok || die "go install succeeded but $LK_BIN does not report version $LIVEKIT_VERSION (is GOBIN elsewhere? set LIVEKIT_SERVER_BIN)"
    info "built $LK_BIN in $((SECONDS - start))s"
}

cmd_install() {
    install_redis
    install_livekit
    info "installed: $(command -v redis-server) ($(redis-server --version | awk '{print $3}')), $LK_BIN ($("$LK_BIN" --version))"
}

# ---------------------------------------------------------------- redis

redis_start() {
    local pid
    pid=$(redis_pid)
    if [[ -n $pid ]]; then
        if redis_ping; then
            info "redis already up (pid $pid, 127.0.0.1:$REDIS_PORT)"
            return 0
        fi
        if [[ $(cmdline_of "$pid") != *":$REDIS_PORT"* ]]; then
            info "our redis (pid $pid) runs on another port; restarting it on $REDIS_PORT"
            stop_pid "$pid" redis 20
        else
            info "redis (pid $pid) is running but not answering PING yet; waiting"
            redis_wait "$pid"
            return 0
        fi
    fi
    if redis_ping; then
        # Something answers on our port. Adopt it if it is ours (same data dir), else refuse.
        local dir rpid
        dir=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config get dir 2>/dev/null | sed -n 2p)
        rpid=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')
        if [[ $dir == "$REDIS_DATA_DIR" && -n $rpid ]]; then
            printf '%s\n' "$rpid" >"$REDIS_PIDFILE"
            info "redis already up (pid $rpid, 127.0.0.1:$REDIS_PORT; pid file restored)"
            return 0
        fi
        die "port 127.0.0.1:$REDIS_PORT is served by another redis (dir ${dir:-unknown}, pid ${rpid:-unknown}), not ours; stop it or set TRUNKLINE_REDIS_PORT"
    fi
    if tcp_port_open "$REDIS_PORT"; then
        die "port 127.0.0.1:$REDIS_PORT is taken by a process that is not redis; free it or set TRUNKLINE_REDIS_PORT"
    fi
    rm -f -- "$REDIS_PIDFILE"
    info "starting redis on 127.0.0.1:$REDIS_PORT (data $REDIS_DATA_DIR)"
    if ! run_redis_server "$REDIS_PORT" "$REDIS_DATA_DIR" "$REDIS_PIDFILE" "$REDIS_LOG"; then
        show_log_tail "$REDIS_LOG"
        die "redis-server failed to start (see $REDIS_LOG)"
    fi
    redis_wait ""
}

redis_wait() { # [pid]
    local i pid=${1:-}
    for ((i = 0; i < REDIS_WAIT * 5; i++)); do
        if redis_ping; then
            [[ -n $pid ]] || pid=$(redis_pid)
            info "redis up (pid ${pid:-?}, 127.0.0.1:$REDIS_PORT)"
            return 0
        fi
        sleep 0.2
    done
    show_log_tail "$REDIS_LOG"
    die "redis did not answer PING on 127.0.0.1:$REDIS_PORT within ${REDIS_WAIT}s (log $REDIS_LOG)"
}

redis_stop() {
    local pid
    pid=$(redis_pid)
    if [[ -z $pid ]]; then
        rm -f -- "$REDIS_PIDFILE"
        if redis_ping; then
            info "note: a redis not started by $PROG answers on 127.0.0.1:$REDIS_PORT; left alone"
        else
            info "redis already down"
        fi
        return 0
    fi
    info "stopping redis (pid $pid)"
    stop_pid "$pid" redis 30
    rm -f -- "$REDIS_PIDFILE"
}

# ---------------------------------------------------------------- livekit

write_livekit_config() { # path
    cat >"$1" <<EOF
# Generated by $PROG on every 'up'; edits are overwritten. Run with: server --config <this> --dev
# No 'keys' here on purpose: --dev then uses $LIVEKIT_DEV_KEY: $LIVEKIT_DEV_SECRET.
port: $LK_PORT
bind_addresses:
  - 127.0.0.1
redis:
  address: 127.0.0.1:$REDIS_PORT
  db: $LK_REDIS_DB
rtc:
  # v1.13.5 listens for ICE/TCP on all interfaces (it ignores bind_addresses): disabled.
  tcp_port: 0
  udp_port: $LK_UDP_PORT
  use_external_ip: false
  node_ip: 127.0.0.1
  # Without these filters the UDP port is opened on every non-loopback address.
  enable_loopback_candidate: true
  interfaces:
    includes: [lo]
  ips:
    includes: [127.0.0.1/32]
logging:
  level: $LK_LOG_LEVEL
EOF
}

# Waiting is hopeless (2) once livekit says its SIP service has no redis.
livekit_ready() {
    livekit_healthy && return 0
    [[ $LK_HEALTH_DETAIL != *"sip not connected"* ]] || return 2
    return 1
}

livekit_start() {
    local pid newcfg=$LK_CONFIG.new
    write_livekit_config "$newcfg"
    pid=$(livekit_pid)
    # Refuse before stopping the running one if the new port is someone else's.
    if [[ -n $pid ]] && ! cmp -s -- "$newcfg" "$LK_CONFIG" \
        && [[ $(sed -n 's/^port: //p' "$LK_CONFIG" 2>/dev/null) != "$LK_PORT" ]] && tcp_port_open "$LK_PORT"; then
        rm -f -- "$newcfg"
        die "port 127.0.0.1:$LK_PORT is taken by a process not started by $PROG; stop it or set LIVEKIT_PORT (livekit pid $pid left running)"
    fi
    if keep_or_stop livekit "$pid" "$newcfg" "$LK_CONFIG" livekit_healthy LK_HEALTH_DETAIL; then
        info "livekit already up (pid $pid, http://127.0.0.1:$LK_PORT)"
        return 0
    fi
    rm -f -- "$LK_PIDFILE"
    if tcp_port_open "$LK_PORT"; then
        die "port 127.0.0.1:$LK_PORT is taken by a process not started by $PROG; stop it or set LIVEKIT_PORT"
    fi
    info "starting livekit-server v$LIVEKIT_VERSION on http://127.0.0.1:$LK_PORT (redis db $LK_REDIS_DB, udp $LK_UDP_PORT)"
    # livekit-server reads these variables as flags that override the config file.
    start_daemon "$LK_PIDFILE" "$LK_LOG" '^(LIVEKIT_.*|REDIS_HOST|REDIS_PASSWORD|UDP_PORT|NODE_IP)$' \
        "$LK_BIN" --config "$LK_CONFIG" --dev
    LK_HEALTH_DETAIL="not checked yet"
    if await_daemon livekit-server "$DAEMON_PID" "$LK_PIDFILE" "$LK_LOG" "$LIVEKIT_WAIT" livekit_ready; then
        info "livekit up (pid $DAEMON_PID, http://127.0.0.1:$LK_PORT, Twirp SIP OK)"
        return 0
    fi
    if [[ $LK_HEALTH_DETAIL == *"sip not connected"* ]]; then
        die "livekit answers 'sip not connected (redis required)': its redis wiring is wrong; check 'redis:' in $LK_CONFIG and that redis answers on 127.0.0.1:$REDIS_PORT"
    fi
    die "livekit did not become healthy within ${LIVEKIT_WAIT}s: $LK_HEALTH_DETAIL (log $LK_LOG); stopped it"
}

livekit_stop() { stop_daemon livekit "$LK_PIDFILE" "$(livekit_pid)"; }

# ---------------------------------------------------------------- commands

cmd_up() {
    need_python "JWT minting and HTTP checks"
    install_redis
    install_livekit
    redis_start
    livekit_start
    info "stack up; load the client settings with: eval \"\$($PROG env)\""
}

cmd_down() {
    livekit_stop
    redis_stop
}

cmd_status() {
    local json r_pid r_up=false r_detail lk_pid lk_up=false lk_detail
    json=$(json_option "$@")
    r_pid=$(redis_pid)
    if [[ -n $r_pid ]] && have redis-cli && redis_ping; then
        r_up=true
        r_detail=ok
    elif [[ -n $r_pid ]]; then
        r_detail="process alive but no PONG on 127.0.0.1:$REDIS_PORT"
    elif have redis-cli && redis_ping; then
        r_detail="no pid file, but a redis answers on 127.0.0.1:$REDIS_PORT (up adopts it if its dir is $REDIS_DATA_DIR)"
    else
        r_detail="not running"
    fi
    lk_pid=$(livekit_pid)
    if [[ -n $lk_pid ]]; then
        need_python "JWT minting and HTTP checks"
        if livekit_healthy; then
            lk_up=true
            lk_detail=ok
        else
            lk_detail=$LK_HEALTH_DETAIL
        fi
    elif tcp_port_open "$LK_PORT"; then
        lk_detail="not running (port 127.0.0.1:$LK_PORT is used by a process not started by $PROG)"
    else
        lk_detail="not running"
    fi

    if ((json)); then
        need_python "JWT minting and HTTP checks"
        python3 - "$STACK_DIR" \
            redis "$r_up" "$r_pid" "127.0.0.1:$REDIS_PORT" "redis://127.0.0.1:$REDIS_PORT/0" "$REDIS_LOG" "$r_detail" \
            livekit "$lk_up" "$lk_pid" "127.0.0.1:$LK_PORT" "http://127.0.0.1:$LK_PORT" "$LK_LOG" "$lk_detail" \
            "$LK_REDIS_DB" "$LK_CONFIG" <<'PY'
import json, sys
a = sys.argv[1:]
def svc(name, up, pid, address, url, log, detail):
    return name, {"up": up == "true", "pid": int(pid) if pid else None, "address": address,
                  "url": url, "log": log, "detail": detail}
services = dict([svc(*a[1:8]), svc(*a[8:15])])
services["livekit"]["redis_db"] = int(a[15])
services["livekit"]["config"] = a[16]
print(json.dumps({"ok": all(s["up"] for s in services.values()), "stack_dir": a[0],
                  "services": services}, indent=2))
PY
    else
        local r_state=down lk_state=down
        [[ $r_up == true ]] && r_state=up
        [[ $lk_up == true ]] && lk_state=up
        printf '%-8s %-5s pid=%-8s %-28s %s\n' \
            redis "$r_state" "${r_pid:--}" "redis://127.0.0.1:$REDIS_PORT" "$r_detail" \
            livekit "$lk_state" "${lk_pid:--}" "http://127.0.0.1:$LK_PORT" "$lk_detail"
    fi
    [[ $r_up == true && $lk_up == true ]]
}

cmd_env() {
    printf 'export REDIS_URL=%q\n' "redis://127.0.0.1:$REDIS_PORT/0"
    printf 'export LIVEKIT_URL=%q\n' "http://127.0.0.1:$LK_PORT"
    printf 'export LIVEKIT_API_KEY=%q\n' "$LIVEKIT_DEV_KEY"
    printf 'export LIVEKIT_API_SECRET=%q\n' "$LIVEKIT_DEV_SECRET"
}

cmd_logs() { tail_logs "$REDIS_LOG" "$LK_LOG" -- "$@"; }

cmd_twirp() {
    [[ $# -ge 1 && $# -le 2 ]] || die "usage: $PROG twirp [Service/]Method [JSON]"
    need_python "JWT minting and HTTP checks"
    local path=$1 body=${2:-"{}"}
    [[ $path == */* ]] || path=livekit.SIP/$path
    twirp_call "$path" "$body" \
        '{"sip":{"admin":true,"call":true},"video":{"roomCreate":true,"roomList":true,"roomAdmin":true}}'
    printf '%s\n' "$TWIRP_BODY"
    printf 'HTTP %s\n' "$TWIRP_STATUS" >&2
    [[ $TWIRP_STATUS == 2?? ]]
}

run_main ops.lock "install up down status env logs twirp" "$@"
