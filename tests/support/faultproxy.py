"""Fault-injecting HTTP/1.1 reverse proxy for chaos tests against livekit-server.

The integration tests put a :class:`FaultProxy` between the system under test (a
Celery worker in another process, talking Twirp JSON over ``POST
/twirp/livekit.SIP/<Method>``) and a real livekit-server. The worker is pointed
at :attr:`FaultProxy.url`; the test process controls the faults in-process::

    with FaultProxy("http://127.0.0.1:7880") as proxy:
        proxy.add_rule(Rule(Action.RESPONSE_LOST, method="CreateSIPInboundTrunk", times=1))
        ...  # run the worker against proxy.url
        assert proxy.count("CreateSIPInboundTrunk") == 2

Design (stdlib only, threads + blocking sockets):

* One accept thread, one thread per client connection. Keep-alive is supported:
  a connection serves any number of requests until the client closes it or
  sends ``Connection: close``. Request bodies may use ``Content-Length`` or
  chunked transfer coding.
* Every request is forwarded on a *fresh* upstream connection (``http.client``);
  the upstream response is read completely (chunked is decoded) and re-serialised
  to the client with a ``Content-Length``. Hop-by-hop headers are dropped in both
  directions, ``Host`` is rewritten to the upstream, everything else (notably
  ``Authorization``) passes through unchanged.
* "Reset" means an abortive close: ``SO_LINGER`` ``{on, 0}`` then ``close()``,
  so the kernel sends a TCP RST (the client sees ``ECONNRESET`` ->
  ``httpx.ReadError``; occasionally ``httpx.RemoteProtocolError`` or
  ``httpx.WriteError`` depending on timing -- catch ``httpx.TransportError``).
* If the upstream cannot be reached (or fails mid-response) the client
  connection is reset too (logged as ``"upstream_error"``): the proxy never
  invents a 502 that a real livekit-server would not send.

Caller caveats:

* A request is logged (and counted) as soon as it has been read, *before* it is
  forwarded; ``upstream_status``/``client_status``/``done`` are filled in later.
  After a client-side timeout (DELAY) call :meth:`FaultProxy.wait_idle` before
  asserting on what upstream executed.
* DELAY uses an interruptible wait: the delayed request is forwarded after
  ``seconds`` even though the client has long given up -- unless the proxy is
  stopped first, in which case it is dropped and never forwarded.
* ``client_status`` means "written into the socket"; if the client process was
  SIGKILLed (CALLBACK) the kernel may still accept the bytes.
* ``down = True`` resets every open client connection, including requests in
  flight (which still complete upstream; their response is then dropped).
* Rules default to ``times=None`` (forever); pass ``times=1`` for a one-shot fault.
"""

from __future__ import annotations

import contextlib
import enum
import http.client
import json
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["Action", "DownMode", "FaultProxy", "RequestLog", "Rule"]

_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024

# RFC 9110 section 7.6.1 plus the classic RFC 2616 list. Headers named in the
# Connection header are treated as hop-by-hop as well.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

# HTTP status -> Twirp error code (https://twitchtv.github.io/twirp/docs/spec_v7.html).
_TWIRP_CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    408: "deadline_exceeded",
    409: "already_exists",
    412: "failed_precondition",
    429: "resource_exhausted",
    499: "canceled",
    500: "internal",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}


class Action(enum.Enum):
    """What a matching :class:`Rule` does to a request."""

    ERROR = "error"
    """Answer ``status`` with a Twirp JSON error body; the request never reaches upstream."""
    RESET_BEFORE = "reset_before"
    """Read the request, then reset the client connection; never forwarded."""
    RESPONSE_LOST = "response_lost"
    """Forward, read the whole upstream response, then reset the client connection.
    The request *was executed* upstream but the client never learns the result."""
    DELAY = "delay"
    """Wait ``seconds``, then forward normally. A client whose read timeout is shorter
    gets a timeout, yet the request is still executed upstream after the delay."""
    CALLBACK = "callback"
    """Forward, read the upstream response, call ``callback()``, then return the
    response to the client (if the client is still there)."""


class DownMode(enum.Enum):
    """How ``FaultProxy.down = True`` rejects clients."""

    RESET = "reset"
    """Keep listening; accept each connection, read the request if one arrives quickly
    (so it is logged with action ``"down"``), then reset it."""
    REFUSE = "refuse"
    """Close the listening socket so connects fail with ECONNREFUSED
    (``httpx.ConnectError``); nothing is logged. The same port is re-bound when
    ``down`` is set back to False."""


@dataclass(eq=False)
class Rule:
    """Apply ``action`` to the next ``times`` requests whose Twirp method is ``method``.

    ``method=None`` matches every request; ``times=None`` means forever. Rules are
    evaluated in the order they were added; the first matching rule that is not
    exhausted wins (so only one action applies to a request). ``hits`` counts how
    often the rule was applied.
    """

    action: Action
    method: str | None = None
    times: int | None = None
    status: int = 503
    """ERROR only: HTTP status returned to the client."""
    twirp_code: str | None = None
    """ERROR only: Twirp ``code``; derived from ``status`` when None (503 -> unavailable)."""
    msg: str = "injected"
    """ERROR only: Twirp ``msg``."""
    body: bytes | None = None
    """ERROR only: raw response body replacing the generated Twirp JSON."""
    headers: dict[str, str] = field(default_factory=dict)
    """ERROR only: extra response headers, e.g. ``{"Retry-After": "1"}``."""
    seconds: float = 0.0
    """DELAY only: how long to hold the request before forwarding it."""
    callback: Callable[[], None] | None = None
    """CALLBACK only: called after the upstream response arrived, before it is sent."""
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.action is Action.CALLBACK and self.callback is None:
            raise ValueError("Action.CALLBACK needs a callback")
        if self.action is Action.DELAY and self.seconds < 0:
            raise ValueError("Action.DELAY needs seconds >= 0")
        if self.action is Action.ERROR and not 100 <= self.status <= 599:
            raise ValueError("Action.ERROR needs an HTTP status in 100..599")

    @property
    def remaining(self) -> int | None:
        """How many more requests this rule will take (None = unlimited)."""
        if self.times is None:
            return None
        return max(self.times - self.hits, 0)

    def error_body(self) -> bytes:
        if self.body is not None:
            return self.body
        code = self.twirp_code or _TWIRP_CODES.get(self.status, "unknown")
        return json.dumps({"code": code, "msg": self.msg}).encode()


@dataclass(eq=False)
class RequestLog:
    """One request seen by the proxy.

    ``action`` is what the proxy decided: ``"forwarded"``, ``"error_<status>"``,
    ``"reset_before"``, ``"response_lost"``, ``"delayed"``, ``"callback"``,
    ``"down"``, ``"bad_request"`` or ``"upstream_error"``. The entry is created
    when the request has been read and updated in place afterwards; ``done``
    becomes True once the proxy has finished with it (see
    :meth:`FaultProxy.wait_idle`).
    """

    method: str
    """Twirp method: last path segment, e.g. ``"CreateSIPInboundTrunk"``."""
    http_method: str
    path: str
    time: float
    """``time.time()`` when the request had been read."""
    action: str
    headers: list[tuple[str, str]]
    body: bytes
    upstream_status: int | None = None
    """Status returned by upstream; None when the request was not (yet) executed."""
    client_status: int | None = None
    """Status actually written to the client; None when nothing was sent."""
    error: str | None = None
    """Upstream/client/callback failure description, if any."""
    done: bool = False

    @property
    def reached_upstream(self) -> bool:
        return self.upstream_status is not None

    def json(self) -> Any:
        """The request body decoded as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


_LABELS = {
    Action.RESET_BEFORE: "reset_before",
    Action.RESPONSE_LOST: "response_lost",
    Action.DELAY: "delayed",
    Action.CALLBACK: "callback",
}


class _BadRequestError(Exception):
    pass


class _ClientGoneError(Exception):
    pass


@dataclass
class _Request:
    http_method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def twirp_method(self) -> str:
        path = self.target.split("?", 1)[0].rstrip("/")
        return path.rsplit("/", 1)[-1]


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def _hop_by_hop(headers: list[tuple[str, str]]) -> set[str]:
    names = set(_HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


def _set_rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Conn:
    """A client connection plus a small buffered reader.

    ``kill()`` may be called from any thread; it only calls ``shutdown(SHUT_RD)``
    (which wakes a blocked ``recv``) under ``lock``, never ``close()``, so the
    file descriptor cannot be reused under the owning thread's feet.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.lock = threading.Lock()
        self.closed = False
        self.killed = False

    def kill(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.killed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)

    def close(self, *, reset: bool) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if reset or self.killed:
                _set_rst(self.sock)
            with contextlib.suppress(OSError):
                self.sock.close()

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except OSError as exc:
            raise _ClientGoneError(str(exc)) from exc
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_head(self) -> bytes | None:
        """Bytes up to the blank line; None on clean EOF between requests."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head, self.buf = self.buf[:end], self.buf[end + 4 :]
                return head
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise _BadRequestError("request head too large")
            if not self._fill():
                if self.buf:
                    raise _ClientGoneError("EOF inside request head")
                return None

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise _ClientGoneError("EOF inside request body")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                return line
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise _BadRequestError("line too long")
            if not self._fill():
                raise _ClientGoneError("EOF inside chunked body")

    def read_request(self) -> _Request | None:
        head = self.read_head()
        if head is None:
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequestError(f"bad request line {lines[0]!r}")
        http_method, target, version = parts
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if not sep or not key or key != key.strip():
                raise _BadRequestError(f"bad header line {line!r}")
            headers.append((key, value.strip()))
        req = _Request(http_method, target, version, headers, b"")
        te = (req.header("transfer-encoding") or "").lower()
        if te:
            if te.split(",")[-1].strip() != "chunked":
                raise _BadRequestError(f"unsupported transfer-encoding {te!r}")
            req.body = self._read_chunked()
        elif (length := req.header("content-length")) is not None:
            try:
                n = int(length)
            except ValueError as exc:
                raise _BadRequestError("bad content-length") from exc
            if not 0 <= n <= _MAX_BODY_BYTES:
                raise _BadRequestError("bad content-length")
            req.body = self.read_exact(n)
        return req

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = self.read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError as exc:
                raise _BadRequestError("bad chunk size") from exc
            if size == 0:
                while self.read_line():  # trailers, up to the blank line
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _BadRequestError("body too large")
            parts.append(self.read_exact(size))
            if self.read_exact(2) != b"\r\n":
                raise _BadRequestError("bad chunk terminator")


class FaultProxy:
    """Fault-injecting reverse proxy; see the module docstring.

    ``start()`` binds (``port=0`` picks a free port), starts a daemon thread and
    returns once listening. All public methods are thread-safe.
    """

    def __init__(
        self,
        upstream: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        upstream_timeout: float = 30.0,
        down_mode: DownMode = DownMode.RESET,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.upstream = upstream
        self._up_https = parts.scheme == "https"
        self._up_host = parts.hostname
        self._up_port = parts.port or (443 if self._up_https else 80)
        self._up_netloc = parts.netloc.rsplit("@", 1)[-1]
        self._up_base = parts.path.rstrip("/")
        self.host = host
        self.port = port
        self.upstream_timeout = upstream_timeout
        self.down_mode = down_mode

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._rules: list[Rule] = []
        self._log: list[RequestLog] = []
        self._in_flight = 0
        self._conns: set[_Conn] = set()
        self._threads: set[threading.Thread] = set()
        self._down = False

        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state_cv = threading.Condition()
        self._generation = 0
        self._applied = 0
        self._bind_error: OSError | None = None
        self._retry_started: dict[int, float] = {}
        self.errors: list[str] = []
        self.connections_accepted = 0
        """Client TCP connections accepted so far (keep-alive reuse keeps this low)."""
        """Unexpected internal failures (should stay empty; useful when debugging)."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._accept_thread is None:
            raise RuntimeError("FaultProxy is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        if self._accept_thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._listener = self._bind()
        self.port = self._listener.getsockname()[1]
        self._stop.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, reset every open client connection, join the threads.

        A request being forwarded at that moment finishes its upstream call (bounded
        by ``upstream_timeout``) but its response is not delivered; DELAY sleeps are
        cut short and the delayed request is then *not* forwarded.
        """
        thread = self._accept_thread
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        self._kill_all()
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                break
            for t in threads:
                t.join(max(deadline - time.monotonic(), 0.0))
            if time.monotonic() >= deadline:
                break
        if self._listener is not None:  # accept thread did not get to it
            self._listener.close()
            self._listener = None
        self._accept_thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ control

    def add_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules.append(rule)

    def remove_rule(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self, *, log: bool = False) -> None:
        """Remove all rules (and, with ``log=True``, the request log too)."""
        with self._lock:
            self._rules.clear()
            if log:
                self._log.clear()

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    @property
    def requests(self) -> list[RequestLog]:
        """Snapshot of the request log (entries themselves are updated in place)."""
        with self._lock:
            return list(self._log)

    def count(self, twirp_method: str | None = None) -> int:
        """Requests seen (optionally only those for one Twirp method), whatever happened."""
        with self._lock:
            return sum(1 for r in self._log if twirp_method is None or r.method == twirp_method)

    def executed(self, twirp_method: str | None = None) -> int:
        """Requests that got an upstream response (i.e. were executed by upstream)."""
        with self._lock:
            return sum(
                1
                for r in self._log
                if r.upstream_status is not None
                and (twirp_method is None or r.method == twirp_method)
            )

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no request is in flight inside the proxy (e.g. a DELAY finished
        forwarding after the client gave up). Returns False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        """Simulate upstream outage (see :class:`DownMode`). Setting True also resets
        every open client connection (keep-alive pools included). Takes effect before
        the setter returns."""
        self._down = value
        if value:
            self._kill_all()
        if self._accept_thread is None:
            return
        with self._state_cv:
            self._generation += 1
            gen = self._generation
            self._state_cv.wait_for(
                lambda: self._applied >= gen or self._stop.is_set(), timeout=10.0
            )
            error = self._bind_error
        if error is not None and not value:
            raise RuntimeError(f"could not re-bind {self.host}:{self.port}: {error}")

    # ------------------------------------------------------------------ internals

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _kill_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.kill()

    def _sync_listener(self) -> None:
        want = not (self._down and self.down_mode is DownMode.REFUSE)
        with self._state_cv:
            gen = self._generation
        error: OSError | None = None
        if want and self._listener is None:
            try:
                self._listener = self._bind()
            except OSError as exc:  # e.g. port briefly taken (TCP self-connect)
                error = exc
        elif not want and self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._state_cv:
            self._bind_error = error
            if error is None or self._bind_retry_expired(gen):
                self._applied = max(self._applied, gen)
                self._state_cv.notify_all()

    def _bind_retry_expired(self, gen: int) -> bool:
        # Keep retrying a failed re-bind for ~5 s before reporting it to the setter.
        started = self._retry_started.setdefault(gen, time.monotonic())
        return time.monotonic() - started > 5.0

    def _accept_loop(self) -> None:
        self._retry_started.clear()
        try:
            while not self._stop.is_set():
                self._sync_listener()
                listener = self._listener
                if listener is None:
                    self._stop.wait(0.02)
                    continue
                try:
                    ready, _, _ = select.select([listener], [], [], 0.05)
                except OSError:
                    continue
                if not ready:
                    continue
                try:
                    sock, _ = listener.accept()
                except OSError:  # BlockingIOError: another wake-up took it
                    continue
                try:
                    self._spawn(sock)
                except Exception as exc:  # never let the accept thread die
                    sock.close()
                    with self._lock:
                        self.errors.append(f"accept loop: {exc!r}")
        finally:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            with self._state_cv:
                self._state_cv.notify_all()

    def _spawn(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock)
        thread = threading.Thread(
            target=self._serve, args=(conn,), name="faultproxy-conn", daemon=True
        )
        with self._lock:
            self.connections_accepted += 1
            self._conns.add(conn)
            self._threads.add(thread)
        thread.start()

    def _serve(self, conn: _Conn) -> None:
        reset = True
        try:
            if self._down:
                self._serve_down(conn)
                return
            keep: bool | None = True
            while keep and not self._stop.is_set() and not conn.killed:
                keep = self._serve_one(conn)
            # None: clean EOF from the client; False: "Connection: close" honoured.
            reset = keep is True
        except (_ClientGoneError, OSError):
            reset = True
        except Exception as exc:  # a proxy thread must never raise
            with self._lock:
                self.errors.append(f"connection handler: {exc!r}")
        finally:
            conn.close(reset=reset)
            with self._lock:
                self._conns.discard(conn)
                self._threads.discard(threading.current_thread())

    def _serve_down(self, conn: _Conn) -> None:
        conn.sock.settimeout(1.0)
        try:
            req = conn.read_request()
        except (_ClientGoneError, _BadRequestError, OSError):
            return
        if req is not None:
            entry = self._new_entry(req, "down")
            self._finish(entry)

    def _new_entry(self, req: _Request, action: str) -> RequestLog:
        entry = RequestLog(
            method=req.twirp_method,
            http_method=req.http_method,
            path=req.target,
            time=time.time(),
            action=action,
            headers=list(req.headers),
            body=req.body,
        )
        with self._lock:
            self._log.append(entry)
            self._in_flight += 1
        return entry

    def _finish(self, entry: RequestLog) -> None:
        with self._idle:
            entry.done = True
            self._in_flight -= 1
            self._idle.notify_all()

    def _match(self, twirp_method: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.method is not None and rule.method != twirp_method:
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
                return rule
        return None

    def _serve_one(self, conn: _Conn) -> bool | None:
        """Handle one request. None: client closed cleanly; True: keep the connection;
        False: close it gracefully. Raises _ClientGoneError to reset it."""
        try:
            req = conn.read_request()
        except _BadRequestError as exc:
            self._send(conn, _Response(400, "Bad Request", [], str(exc).encode()), keep=False)
            return False
        if req is None:
            return None
        if self._down:
            self._finish(self._new_entry(req, "down"))
            raise _ClientGoneError("down")

        rule = self._match(req.twirp_method)
        if rule is None:
            label = "forwarded"
        elif rule.action is Action.ERROR:
            label = f"error_{rule.status}"
        else:
            label = _LABELS[rule.action]
        entry = self._new_entry(req, label)
        try:
            return self._apply(conn, req, rule, entry)
        finally:
            self._finish(entry)

    def _apply(self, conn: _Conn, req: _Request, rule: Rule | None, entry: RequestLog) -> bool:
        keep = req.keep_alive
        if rule is not None and rule.action is Action.ERROR:
            headers = [("Content-Type", "application/json"), *rule.headers.items()]
            reason = http.client.responses.get(rule.status, "")
            resp = _Response(rule.status, reason, headers, rule.error_body())
            self._send(conn, resp, keep=keep)
            entry.client_status = rule.status
            return keep
        if rule is not None and rule.action is Action.RESET_BEFORE:
            raise _ClientGoneError("reset_before")
        if rule is not None and rule.action is Action.DELAY and self._stop.wait(rule.seconds):
            entry.error = "proxy stopped during delay; not forwarded"
            raise _ClientGoneError("stopped")

        try:
            resp = self._forward(req)
        except (OSError, http.client.HTTPException) as exc:
            entry.action = "upstream_error"
            entry.error = f"upstream: {exc!r}"
            raise _ClientGoneError("upstream error") from exc
        entry.upstream_status = resp.status

        if rule is not None and rule.action is Action.RESPONSE_LOST:
            raise _ClientGoneError("response_lost")
        if rule is not None and rule.action is Action.CALLBACK and rule.callback is not None:
            try:
                rule.callback()
            except Exception as exc:  # report, never kill the thread
                entry.error = f"callback raised {exc!r}"
        if conn.killed or self._stop.is_set():
            entry.error = entry.error or "connection killed before the response was sent"
            raise _ClientGoneError("killed")
        try:
            self._send(conn, resp, keep=keep)
        except OSError as exc:
            entry.error = f"client: {exc!r}"
            raise _ClientGoneError("client gone") from exc
        entry.client_status = resp.status
        return keep

    def _forward(self, req: _Request) -> _Response:
        upstream: http.client.HTTPConnection
        if self._up_https:
            upstream = http.client.HTTPSConnection(
                self._up_host, self._up_port, timeout=self.upstream_timeout
            )
        else:
            upstream = http.client.HTTPConnection(
                self._up_host, self._up_port, timeout=self.upstream_timeout
            )
        try:
            upstream.putrequest(
                req.http_method,
                self._up_base + req.target,
                skip_host=True,
                skip_accept_encoding=True,
            )
            drop = _hop_by_hop(req.headers) | {"host", "content-length"}
            for key, value in req.headers:
                if key.lower() not in drop:
                    upstream.putheader(key, value)
            upstream.putheader("Host", self._up_netloc)
            if req.body or req.http_method in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(len(req.body)))
            upstream.endheaders(req.body or None)
            response = upstream.getresponse()
            body = response.read()
            return _Response(response.status, response.reason, response.getheaders(), body)
        finally:
            upstream.close()

    def _send(self, conn: _Conn, resp: _Response, *, keep: bool) -> None:
        drop = _hop_by_hop(resp.headers) | {"content-length"}
        lines = [f"HTTP/1.1 {resp.status} {resp.reason}".rstrip()]
        lines += [f"{k}: {v}" for k, v in resp.headers if k.lower() not in drop]
        lines.append(f"Content-Length: {len(resp.body)}")
        if not keep:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.sock.sendall(head + resp.body)
