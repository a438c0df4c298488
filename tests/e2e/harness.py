"""What the end-to-end tests drive: LiveKit's Room API, sipp callers and sipp gateways.

* :class:`LiveKitRooms` - the few Twirp calls the suite asserts with (``livekit.RoomService``
  ListRooms / ListParticipants / DeleteRoom / CreateRoom, ``livekit.AgentDispatchService``
  ListDispatch, ``livekit.SIP`` CreateSIPParticipant) on httpx, with HS256 tokens carrying
  only the grant each call needs.
* :class:`Sipp` - one sipp process (a caller from ``scenarios/call.xml`` or a provider
  gateway from ``scenarios/gateway.xml``), always bounded: sipp's own ``-timeout`` plus a
  hard kill from here.
* :class:`Call` - a sipp caller with its RTP endpoint (tests/e2e/media.py).
* :class:`AgentProcess` - the test agent (tests/e2e/agent.py) under livekit-agents' own CLI,
  and what it reported.

Everything listens and sends on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx
import jwt
from jwt.algorithms import HMACAlgorithm

from tests.e2e.media import RtpEndpoint

SCENARIOS: Final = Path(__file__).resolve().parent / "scenarios"
GATEWAY_SCENARIO: Final = SCENARIOS / "gateway.xml"
AUTH_CALLER_SCENARIO: Final = SCENARIOS / "auth_caller.xml"
LOOPBACK: Final = "127.0.0.1"

T = TypeVar("T")


@dataclass(frozen=True)
class Bridge:
    """LiveKit's SIP bridge as ops/sip.sh runs it, and the sipp binary to call it with."""

    host: str
    port: int
    sipp: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        if not self.log_path.exists():
            return f"(no bridge log at {self.log_path})"
        return f"--- {self.log_path} ---\n" + self.log_path.read_text(errors="replace")[-chars:]


# ---------------------------------------------------------------------------- polling


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.25,
    stop: Callable[[], bool] = lambda: False,
) -> T | None:
    """Call ``probe`` until it returns something, ``timeout`` passes or ``stop()`` is true.

    After ``stop()`` turns true the probe runs once more (the event may have landed just
    before). Returns the probe's last non-None answer, or None.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if stop() or time.monotonic() >= deadline:
            return probe()
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing holds right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_port() -> int:
    """A port on 127.0.0.1 that is free for both UDP and TCP right now."""
    while True:
        port = free_udp_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return port


def tcp_port_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return True
        return False


def unique_prefix(kind: str) -> str:
    """A room prefix no other test (or earlier run) uses; LiveKit appends to it."""
    return f"e2e-{kind}-{secrets.token_hex(3)}-"


# ---------------------------------------------------------------------------- Room API


class _HS256(HMACAlgorithm):
    """HS256 without PyJWT's short-key warning (``livekit-server --dev`` signs with
    ``secret``; the suite runs with warnings as errors)."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)

    def check_key_length(self, key: bytes) -> str | None:
        return None


class TwirpError(Exception):
    def __init__(self, method: str, status: int, code: str, message: str) -> None:
        self.method = method
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{method}: HTTP {status} {code}: {message}")


class LiveKitRooms:
    """LiveKit's Room, AgentDispatch and SIP-call APIs over Twirp JSON."""

    def __init__(self, base_url: str, api_key: str, api_secret: str, *,
                 timeout: float = 10.0) -> None:
        self._key = api_key
        self._secret = api_secret
        self._timeout = timeout
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=3.0),
        )
        self._signer = jwt.PyJWS(algorithms=[])
        self._signer.register_algorithm("HS256", _HS256())

    def close(self) -> None:
        self._http.close()

    def token(self, grants: Mapping[str, Any], ttl: int = 300) -> str:
        now = int(time.time())
        claims = {"iss": self._key, "sub": self._key, "nbf": now - 60, "exp": now + ttl,
                  **grants}
        return self._signer.encode(json.dumps(claims, separators=(",", ":")).encode(),
                                   self._secret, algorithm="HS256")

    def call(self, method: str, body: Mapping[str, Any], grants: Mapping[str, Any], *,
             timeout: float | None = None) -> dict[str, Any]:
        """POST /twirp/<method>; the decoded answer, or TwirpError."""
        response = self._http.post(
            f"/twirp/{method}",
            content=json.dumps(body),
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.token(grants)}"},
            timeout=httpx.Timeout(timeout or self._timeout, connect=3.0),
        )
        if response.status_code != 200:
            code, message = "unknown", response.text[:500]
            with contextlib.suppress(ValueError):
                data = response.json()
                code, message = str(data.get("code")), str(data.get("msg"))
            raise TwirpError(method, response.status_code, code, message)
        answer: dict[str, Any] = response.json()
        return answer

    # --- livekit.RoomService / AgentDispatchService ----------------------------------

    def list_rooms(self) -> list[dict[str, Any]]:
        data = self.call("livekit.RoomService/ListRooms", {}, {"video": {"roomList": True}})
        return list(data.get("rooms") or [])

    def room_names(self, prefix: str = "") -> set[str]:
        return {r["name"] for r in self.list_rooms() if str(r.get("name", "")).startswith(prefix)}

    def list_participants(self, room: str) -> list[dict[str, Any]]:
        data = self.call("livekit.RoomService/ListParticipants", {"room": room},
                         {"video": {"roomAdmin": True, "room": room}})
        return list(data.get("participants") or [])

    def list_dispatch(self, room: str) -> list[dict[str, Any]]:
        data = self.call("livekit.AgentDispatchService/ListDispatch", {"room": room},
                         {"video": {"roomAdmin": True, "room": room}})
        return list(data.get("agent_dispatches") or [])

    def create_room(self, name: str, *, agents: Sequence[str] = ()) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "empty_timeout": 60}
        if agents:
            body["agents"] = [{"agent_name": a} for a in agents]
        return self.call("livekit.RoomService/CreateRoom", body, {"video": {"roomCreate": True}})

    def delete_room(self, room: str) -> None:
        with contextlib.suppress(TwirpError):  # already gone is fine
            self.call("livekit.RoomService/DeleteRoom", {"room": room},
                      {"video": {"roomCreate": True}})

    # --- livekit.SIP/CreateSIPParticipant --------------------------------------------

    def create_sip_participant(
        self, *, trunk_id: str, call_to: str, room: str, identity: str,
        ringing_timeout: int = 15, timeout: float = 45.0,
    ) -> dict[str, Any]:
        """Dial ``call_to`` through an outbound trunk; returns once the callee answered."""
        body = {
            "sip_trunk_id": trunk_id,
            "sip_call_to": call_to,
            "room_name": room,
            "participant_identity": identity,
            "wait_until_answered": True,
            "ringing_timeout": f"{ringing_timeout}s",
            "max_call_duration": "120s",
        }
        return self.call("livekit.SIP/CreateSIPParticipant", body, {"sip": {"call": True}},
                         timeout=timeout)

    # --- what the tests wait for ------------------------------------------------------

    def wait_for_room(self, prefix: str, *, timeout: float, exclude: set[str] | None = None,
                      stop: Callable[[], bool] = lambda: False) -> str | None:
        """The name of a room starting with ``prefix`` (and not in ``exclude``), or None."""
        skip = exclude or set()

        def probe() -> str | None:
            names = sorted(self.room_names(prefix) - skip)
            return names[0] if names else None

        return wait_until(probe, timeout=timeout, stop=stop)

    def wait_for_sip_participant(self, room: str, *, timeout: float,
                                 stop: Callable[[], bool] = lambda: False,
                                 ) -> dict[str, Any] | None:
        def probe() -> dict[str, Any] | None:
            for participant in self.list_participants(room):
                if participant.get("kind") == "SIP":
                    return participant
            return None

        return wait_until(probe, timeout=timeout, stop=stop)


# ---------------------------------------------------------------------------- sipp


@dataclass
class Sipp:
    """One sipp process with its logs in ``workdir``; stopped by :meth:`finish`."""

    name: str
    argv: list[str]
    workdir: Path
    deadline: float
    proc: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    _files: dict[str, Path] = field(default_factory=dict)

    def start(self) -> Sipp:
        self.workdir.mkdir(parents=True, exist_ok=True)
        files = {kind: self.workdir / f"{self.name}.{kind}.log"
                 for kind in ("screen", "messages", "errors", "actions")}
        self._files = files
        argv = [*self.argv,
                "-trace_msg", "-message_file", str(files["messages"]),
                "-trace_err", "-error_file", str(files["errors"]),
                "-trace_logs", "-log_file", str(files["actions"])]
        with files["screen"].open("wb") as screen:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=screen, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def finish(self, timeout: float | None = None) -> int:
        """Wait for sipp to end by itself (bounded), else kill it; its exit status."""
        if self.proc is None:
            raise RuntimeError(f"sipp {self.name} was never started")
        wait = max(0.0, self.deadline - time.monotonic()) if timeout is None else timeout
        try:
            self.returncode = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait(10)
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def read(self, kind: str) -> str:
        path = self._files.get(kind)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def received_statuses(self) -> list[int]:
        """Status codes of the SIP responses sipp received, in order."""
        return [int(code) for code in re.findall(
            r"message received[^\n]*\n\s*\n\s*SIP/2\.0 (\d{3})", self.read("messages"))]

    def invite_statuses(self) -> list[int]:
        """Status codes of the responses sipp received to its INVITE, in order."""
        return [int(code) for code, method in re.findall(
            r"message received[^\n]*\n\s*\n\s*SIP/2\.0 (\d{3})[^\n]*\n(?:[^\n]+\n)*?"
            r"\s*CSeq:\s*\d+\s+(\w+)", self.read("messages")) if method == "INVITE"]

    def diagnostics(self) -> str:
        parts = [f"--- sipp {self.name}: {' '.join(self.argv)} (exit {self.returncode})"]
        for kind in ("actions", "errors", "messages"):
            text = self.read(kind)
            if text:
                parts.append(f"--- {kind} (last 3000 chars)\n{text[-3000:]}")
        return "\n".join(parts)


def start_gateway(sipp_bin: str, *, port: int, username: str, password: str, workdir: Path,
                  name: str = "gateway", limit: int = 60, transport: str = "udp") -> Sipp:
    """The provider's gateway on 127.0.0.1:``port``, listening on ``transport`` only (udp or
    tcp): accepts one call, only with these digest credentials (scenarios/gateway.xml).
    Returns once it listens."""
    mode = {"udp": "u1", "tcp": "t1"}[transport]
    argv = [sipp_bin, "-sf", str(GATEWAY_SCENARIO), "-t", mode,
            "-i", LOOPBACK, "-bind_local", "-p", str(port), "-mi", LOOPBACK,
            "-m", "1", "-nostdin", "-timeout", f"{limit}s", "-timeout_error",
            "-key", "gw_user", username, "-key", "gw_password", password]
    gateway = Sipp(name, argv, workdir, time.monotonic() + limit + 10).start()
    taken = udp_port_taken if transport == "udp" else tcp_port_listening
    listening = wait_until(lambda: True if taken(port) else None, timeout=10,
                           interval=0.05, stop=lambda: not gateway.alive)
    if not listening or not gateway.alive:
        gateway.kill()
        raise RuntimeError(f"sipp gateway did not listen on {transport} {LOOPBACK}:{port}\n"
                           f"{gateway.read('screen')[-2000:]}\n{gateway.diagnostics()}")
    return gateway


def gateway_transports(gateway: Sipp) -> list[str]:
    """The transport named in the top Via of each INVITE the gateway received."""
    return re.findall(r"INVITE sip:[^\n]*\n(?:[^\n]+\n)*?Via: SIP/2\.0/(\w+)",
                      gateway.read("messages"))


def gateway_verdicts(gateway: Sipp) -> list[str]:
    """The gateway's auth decisions, e.g. ['AUTH_OK user=sip_user']."""
    return re.findall(r"GATEWAY (AUTH_(?:OK|BAD) user=\S*)", gateway.read("actions"))


# ---------------------------------------------------------------------------- calls with media

CALL_SCENARIO: Final = SCENARIOS / "call.xml"


@dataclass
class Call:
    """A sipp caller (scenarios/call.xml) and its RTP endpoint."""

    sipp: Sipp
    media: RtpEndpoint
    media_file: Path

    def wait_answered(self, timeout: float) -> bool:
        """Wait for the 200 OK (the bridge's media address written by sipp); then the tone
        starts. False when the call ended or was not answered in time."""
        return self.media.start_sending_from_file(self.media_file, timeout=timeout,
                                                  alive=lambda: self.sipp.alive)

    def logged(self, marker: str) -> bool:
        return marker in self.sipp.read("actions")

    def close(self) -> None:
        self.sipp.kill()
        self.media.close()


def place_call(sipp_bin: str, *, bridge_host: str, bridge_port: int, called: str, caller: str,
               workdir: Path, name: str, hold_seconds: float, ring_limit: int = 15) -> Call:
    """Dial ``called`` at the bridge; once answered the caller holds the call for
    ``hold_seconds`` unless the bridge hangs up first (scenarios/call.xml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / f"{name}.xml"
    scenario.write_text(CALL_SCENARIO.read_text()
                        .replace("@RING_LIMIT_S@", str(ring_limit))
                        .replace("@HOLD_MS@", str(int(hold_seconds * 1000))))
    media = RtpEndpoint()
    media_file = workdir / f"{name}.media"
    limit = int(ring_limit + hold_seconds + 15)
    argv = [sipp_bin, f"{bridge_host}:{bridge_port}", "-sf", str(scenario),
            "-s", called, "-key", "caller", caller,
            "-key", "rtp_port", str(media.port), "-key", "media_file", str(media_file),
            "-i", LOOPBACK, "-bind_local", "-p", str(free_udp_port()), "-mi", LOOPBACK,
            # -nd: only the scenario speaks (no automatic BYE when sipp aborts a call).
            "-m", "1", "-l", "1", "-nd", "-nostdin", "-timeout", f"{limit}s", "-timeout_error"]
    try:
        sipp = Sipp(name, argv, workdir, time.monotonic() + limit + 10).start()
    except BaseException:
        media.close()
        raise
    return Call(sipp, media, media_file)


# ---------------------------------------------------------------------------- the agents


@dataclass
class AgentProcess:
    """tests/e2e/agent.py run by livekit-agents' own CLI (`python -m livekit.agents start`),
    registered with livekit-server under ``name``; its observations go to ``report_path``."""

    name: str
    report_path: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    def events(self, room: str | None = None, event: str | None = None) -> list[dict[str, Any]]:
        if not self.report_path.exists():
            return []
        found = []
        for line in self.report_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if (room is None or item.get("room") == room) and \
                        (event is None or item.get("event") == event):
                    found.append(item)
        return found

    def wait_for(self, room: str, event: str, *, timeout: float,
                 where: Callable[[dict[str, Any]], bool] = lambda _: True,
                 ) -> dict[str, Any] | None:
        def probe() -> dict[str, Any] | None:
            return next((e for e in self.events(room, event) if where(e)), None)

        return wait_until(probe, timeout=timeout, interval=0.2)

    def rooms(self) -> set[str]:
        return {str(e["room"]) for e in self.events(event="job")}

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- agent {self.name} log ({self.log_path}) ---\n{text[-chars:]}"

    def stop(self) -> None:
        """SIGTERM (the framework drains its jobs), then SIGKILL for the whole group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


AGENT_SOURCE: Final = Path(__file__).resolve().parent / "agent.py"


def start_agent(name: str, *, python: str, ws_url: str, api_key: str, api_secret: str,
                workdir: Path, env: Mapping[str, str], timeout: float = 90.0) -> AgentProcess:
    """Start the test agent and wait until livekit-server accepted its registration."""
    workdir.mkdir(parents=True, exist_ok=True)
    report_path = workdir / f"agent-{name}.jsonl"
    log_path = workdir / f"agent-{name}.log"
    report_path.unlink(missing_ok=True)
    child_env = {**env, "LIVEKIT_URL": ws_url, "LIVEKIT_API_KEY": api_key,
                 "LIVEKIT_API_SECRET": api_secret, "TRUNKLINE_AGENT_NAME": name,
                 "TRUNKLINE_AGENT_REPORT": str(report_path), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [python, "-m", "livekit.agents", "start", str(AGENT_SOURCE), "--log-format",
             "json"],
            cwd=workdir, env=child_env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
    agent = AgentProcess(name, report_path, log_path, proc)
    registered = wait_until(
        lambda: True if '"registered worker"' in (log_path.read_text(errors="replace")
                                                  if log_path.exists() else "") else None,
        timeout=timeout, interval=0.2, stop=lambda: proc.poll() is not None)
    if not registered:
        agent.stop()
        raise RuntimeError(f"agent {name} did not register with {ws_url}\n{agent.log_tail()}")
    return agent
