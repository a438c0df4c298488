"""Self-tests for the fault-injecting proxy, against a tiny in-process upstream."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from .faultproxy import Action, DownMode, FaultProxy, Rule

SIP = "/twirp/livekit.SIP/"


class Upstream:
    """Counts requests per Twirp method and answers JSON (HTTP/1.1, keep-alive)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.headers: list[dict[str, str]] = []
        self.bodies: list[bytes] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                method = self.path.rsplit("/", 1)[-1]
                with upstream.lock:
                    upstream.calls[method] += 1
                    n = upstream.calls[method]
                    upstream.headers.append({k.lower(): v for k, v in self.headers.items()})
                    upstream.bodies.append(body)
                payload = json.dumps({"method": method, "n": n}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if method == "Chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (payload[:5], payload[5:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return self.calls[method] if method else sum(self.calls.values())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    up.thread.start()
    yield up
    up.server.shutdown()
    up.server.server_close()
    up.thread.join(5)


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url) as p:
        yield p
    assert p.errors == []


@pytest.fixture
def client(proxy: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=5.0) as c:
        yield c


def call(
    client: httpx.Client,
    method: str = "CreateSIPInboundTrunk",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(SIP + method, json={"trunk": {"name": "t"}}, headers=headers)


def test_forwards_headers_and_logs(upstream: Upstream, proxy: FaultProxy) -> None:
    with httpx.Client(base_url=proxy.url, timeout=5.0) as c:
        r = c.post(
            SIP + "CreateSIPInboundTrunk",
            json={"trunk": {"name": "t"}},
            headers={
                "Authorization": "Bearer tok",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "dropped",
                "X-Trace": "kept",
            },
        )
    assert r.status_code == 200
    assert r.json() == {"method": "CreateSIPInboundTrunk", "n": 1}
    seen = upstream.headers[0]
    assert seen["authorization"] == "Bearer tok"
    assert seen["x-trace"] == "kept"
    assert "x-hop" not in seen
    assert seen["host"] == upstream.url.removeprefix("http://")
    assert json.loads(upstream.bodies[0]) == {"trunk": {"name": "t"}}

    # The client can read the answer before the proxy thread records that it sent it
    # (client_status is written after sendall returns): wait for the entry to be finished.
    assert proxy.wait_idle(5)
    assert proxy.count() == 1
    assert proxy.count("CreateSIPInboundTrunk") == 1
    assert proxy.count("DeleteSIPTrunk") == 0
    (entry,) = proxy.requests
    assert entry.done
    assert entry.method == "CreateSIPInboundTrunk"
    assert entry.action == "forwarded"
    assert entry.upstream_status == entry.client_status == 200
    assert entry.header("authorization") == "Bearer tok"
    assert entry.json() == {"trunk": {"name": "t"}}


@pytest.mark.parametrize(
    ("status", "code"), [(503, "unavailable"), (500, "internal"), (429, "resource_exhausted")]
)
def test_error_not_forwarded(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client, status: int, code: str
) -> None:
    proxy.add_rule(Rule(Action.ERROR, status=status, headers={"Retry-After": "1"}))
    r = call(client)
    assert r.status_code == status
    assert r.json() == {"code": code, "msg": "injected"}
    assert r.headers["retry-after"] == "1"
    assert upstream.count() == 0
    assert proxy.count() == 1
    assert proxy.requests[0].action == f"error_{status}"
    assert proxy.requests[0].upstream_status is None
    # the error response kept the connection usable
    proxy.clear()
    assert call(client).status_code == 200
    assert proxy.connections_accepted == 1


def test_reset_before(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add_rule(Rule(Action.RESET_BEFORE, times=1))
    with pytest.raises(httpx.ReadError):  # RST -> ECONNRESET
        call(client)
    assert upstream.count() == 0
    assert proxy.count() == 1
    assert proxy.requests[0].action == "reset_before"
    assert call(client).status_code == 200
    assert upstream.count() == 1


def test_response_lost(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.add_rule(Rule(Action.RESPONSE_LOST, method="CreateSIPInboundTrunk", times=1))
    with pytest.raises(httpx.TransportError):
        call(client)
    assert upstream.count("CreateSIPInboundTrunk") == 1  # executed, answer lost
    entry = proxy.requests[0]
    assert entry.action == "response_lost"
    assert entry.upstream_status == 200
    assert entry.client_status is None
    assert proxy.executed("CreateSIPInboundTrunk") == 1
    r = call(client)
    assert r.json()["n"] == 2


def test_delay_times_out_client_but_still_executes(upstream: Upstream, proxy: FaultProxy) -> None:
    # A delay ten times the client's timeout, so the client gives up first on a loaded
    # machine too; the elapsed-time check makes that premise explicit.
    delay = 2.0
    proxy.add_rule(Rule(Action.DELAY, seconds=delay, times=1))
    with httpx.Client(base_url=proxy.url, timeout=0.2) as c:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            call(c)
        assert time.monotonic() - started < delay
        assert upstream.count() == 0
        assert proxy.wait_idle(5)
        assert upstream.count() == 1  # executed after the client gave up
        entry = proxy.requests[0]
        assert entry.action == "delayed"
        assert entry.upstream_status == 200
        assert call(c).status_code == 200


def test_times_and_method_filter(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client
) -> None:
    rule = Rule(Action.ERROR, method="DeleteSIPTrunk", status=503, times=1)
    proxy.add_rule(rule)
    assert call(client, "CreateSIPInboundTrunk").status_code == 200
    assert call(client, "DeleteSIPTrunk").status_code == 503
    assert call(client, "DeleteSIPTrunk").status_code == 200
    assert rule.hits == 1
    assert rule.remaining == 0
    assert [e.action for e in proxy.requests] == ["forwarded", "error_503", "forwarded"]
    assert upstream.count("DeleteSIPTrunk") == 1


def test_first_matching_rule_wins_and_forever(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client
) -> None:
    proxy.add_rule(Rule(Action.ERROR, status=500, times=2))
    proxy.add_rule(Rule(Action.ERROR, status=429))  # forever
    assert [call(client).status_code for _ in range(4)] == [500, 500, 429, 429]
    proxy.clear()
    assert call(client).status_code == 200
    assert upstream.count() == 1


def test_keep_alive_twenty_requests(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client
) -> None:
    for i in range(20):
        r = call(client, "ListSIPInboundTrunk")
        assert r.status_code == 200
        assert r.json()["n"] == i + 1
    assert proxy.connections_accepted == 1
    assert proxy.count("ListSIPInboundTrunk") == 20
    assert upstream.count() == 20


def test_chunked_both_ways(upstream: Upstream, proxy: FaultProxy, client: httpx.Client) -> None:
    r = call(client, "Chunked")  # upstream answers chunked, proxy re-frames it
    assert r.status_code == 200
    assert r.json() == {"method": "Chunked", "n": 1}
    assert "transfer-encoding" not in r.headers

    def gen() -> Iterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    r = client.post(SIP + "Streamed", content=gen())  # chunked request body
    assert r.status_code == 200
    assert upstream.bodies[-1] == b'{"a":1}'
    assert upstream.headers[-1]["content-length"] == "7"
    assert "transfer-encoding" not in upstream.headers[-1]
    assert proxy.connections_accepted == 1


def test_client_connection_close(proxy: FaultProxy, client: httpx.Client) -> None:
    for _ in range(3):
        r = call(client, headers={"Connection": "close"})
        assert r.status_code == 200
        assert r.headers["connection"] == "close"
    assert proxy.connections_accepted == 3


def test_callback_runs_between_upstream_and_client(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client
) -> None:
    seen: list[int] = []
    proxy.add_rule(
        Rule(
            Action.CALLBACK,
            method="CreateSIPInboundTrunk",
            times=1,
            callback=lambda: seen.append(upstream.count()),
        )
    )
    r = call(client)
    assert r.status_code == 200
    assert seen == [1]  # upstream had executed the request when the callback ran
    assert proxy.requests[0].action == "callback"


def test_callback_exception_is_contained(proxy: FaultProxy, client: httpx.Client) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    proxy.add_rule(Rule(Action.CALLBACK, callback=boom, times=1))
    assert call(client).status_code == 200
    assert "boom" in (proxy.requests[0].error or "")


def test_down_resets_then_recovers(
    upstream: Upstream, proxy: FaultProxy, client: httpx.Client
) -> None:
    assert call(client).status_code == 200  # pooled keep-alive connection exists
    proxy.down = True
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            call(client)
    assert upstream.count() == 1
    assert [e.action for e in proxy.requests][1:] == ["down"] * 3
    proxy.down = False
    assert call(client).status_code == 200
    assert upstream.count() == 2


def test_down_refuse_mode(upstream: Upstream) -> None:
    with (
        FaultProxy(upstream.url, down_mode=DownMode.REFUSE) as proxy,
        httpx.Client(base_url=proxy.url, timeout=2.0) as c,
    ):
        assert call(c).status_code == 200
        port = proxy.port
        proxy.down = True
        with pytest.raises(httpx.ConnectError):
            call(c)
        proxy.down = False
        assert proxy.port == port
        assert call(c).status_code == 200
        assert proxy.count() == 2
        assert upstream.count() == 2
        assert proxy.errors == []


def test_upstream_unreachable_resets_client(upstream: Upstream) -> None:
    url = upstream.url
    upstream.server.shutdown()
    upstream.server.server_close()
    with FaultProxy(url) as proxy, httpx.Client(base_url=proxy.url, timeout=2.0) as c:
        with pytest.raises(httpx.TransportError):
            call(c)
        assert proxy.requests[0].action == "upstream_error"
        assert proxy.errors == []


def test_concurrent_rule_matching_is_exact(upstream: Upstream, proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(Action.ERROR, status=503, times=7))
    statuses: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=proxy.url, timeout=5.0) as c:
            for _ in range(10):
                code = call(c).status_code
                with lock:
                    statuses.append(code)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(statuses) == 60
    assert statuses.count(503) == 7
    assert upstream.count() == 53
    assert proxy.count() == 60


def test_stop_with_idle_and_in_flight_connections(upstream: Upstream) -> None:
    proxy = FaultProxy(upstream.url)
    proxy.start()
    with (
        httpx.Client(base_url=proxy.url, timeout=5.0) as idle,
        httpx.Client(base_url=proxy.url, timeout=5.0) as busy,
    ):
        assert call(idle).status_code == 200
        proxy.add_rule(Rule(Action.DELAY, seconds=30))
        errors: list[BaseException] = []

        def slow() -> None:
            try:
                call(busy)
            except httpx.TransportError as exc:
                errors.append(exc)

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 5
        while proxy.count() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        proxy.stop()
        # Far below the 30 s delay (stop does not wait it out), with room for a loaded machine.
        assert time.monotonic() - started < 10
        t.join(5)
        assert len(errors) == 1
    assert upstream.count() == 1  # the delayed request was never forwarded
    assert proxy.errors == []


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="callback"):
        Rule(Action.CALLBACK)
    with pytest.raises(ValueError, match="status"):
        Rule(Action.ERROR, status=42)
    with pytest.raises(ValueError, match="times"):
        Rule(Action.ERROR, times=-1)
    with pytest.raises(ValueError, match="http"):
        FaultProxy("ftp://x")
    with pytest.raises(RuntimeError):
        _ = FaultProxy("http://127.0.0.1:1").url
