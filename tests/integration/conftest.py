"""Fixtures for tests against the real stack: redis-server, livekit-server, worker processes.

The stack is started with the project's own script (ops/stack.sh) as its own instance under
.stack/test, on ports of its own, so tests never touch the data of `make run`. Tests delete
every SIP trunk and dispatch rule on that livekit-server and flush their Redis database.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from producers import ProvisioningClient
from worker.app import create_app
from worker.config import Settings
from worker.livekit import LiveKitNotFound, LiveKitSIP
from worker.store import JobStore
from worker.vault import Vault

REPO = Path(__file__).resolve().parents[2]
STACK_DEFAULTS = {
    "TRUNKLINE_STACK_DIR": str(REPO / ".stack" / "test"),
    "TRUNKLINE_REDIS_PORT": "6391",
    "LIVEKIT_PORT": "7890",
    "TRUNKLINE_LIVEKIT_UDP_PORT": "7892",
}
# Trunkline's database in the test Redis (livekit-server uses 1).
TEST_DB = 2
CANARY_PASSWORD = "canary-Pw-7f3a9c1e"
SEED_REQUEST = {
    "name": "Main Office SIP Trunk",
    "number": "+15551234567",
    "outboundPstn": "sip.gateway.com",
    "authUserName": "sip_user",
    "authPassword": "sip_password",
}


@dataclass(frozen=True)
class Stack:
    redis_url: str
    livekit_url: str
    api_key: str
    api_secret: str
    secret_key: str

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("TRUNKLINE_", "LIVEKIT_", "CELERY_")) and k != "REDIS_URL"
        }
        env.update(
            REDIS_URL=self.redis_url,
            LIVEKIT_URL=self.livekit_url,
            LIVEKIT_API_KEY=self.api_key,
            LIVEKIT_API_SECRET=self.api_secret,
            TRUNKLINE_SECRET_KEYS=self.secret_key,
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        return env


def _stack_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in STACK_DEFAULTS.items():
        env.setdefault(key, value)
    return env


@pytest.fixture(scope="session")
def stack() -> Stack:
    script = str(REPO / "ops" / "stack.sh")
    up = subprocess.run(["bash", script, "up"], env=_stack_env(), capture_output=True, text=True,
                        check=False)
    if up.returncode != 0:
        pytest.fail(f"the local stack did not start:\n{up.stdout}\n{up.stderr}")
    printed = subprocess.run(["bash", script, "env"], env=_stack_env(), capture_output=True,
                             text=True, check=True).stdout
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in printed.splitlines() if "=" in line
    )
    base_redis = values["REDIS_URL"].rsplit("/", 1)[0]
    return Stack(
        redis_url=f"{base_redis}/{TEST_DB}",
        livekit_url=values["LIVEKIT_URL"],
        api_key=values["LIVEKIT_API_KEY"],
        api_secret=values["LIVEKIT_API_SECRET"],
        secret_key=Vault.generate_key(),
    )


@pytest.fixture
def livekit(stack: Stack) -> Iterator[LiveKitSIP]:
    with LiveKitSIP(stack.livekit_url, stack.api_key, stack.api_secret) as client:
        yield client


def wipe_livekit(client: LiveKitSIP) -> None:
    for rule in client.list_dispatch_rules():
        with contextlib.suppress(LiveKitNotFound):
            client.delete_dispatch_rule(rule.sip_dispatch_rule_id)
    for inbound in client.list_inbound_trunks():
        client.delete_trunk(inbound.sip_trunk_id)
    for outbound in client.list_outbound_trunks():
        client.delete_trunk(outbound.sip_trunk_id)


@pytest.fixture
def redis_db(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def clean(redis_db: redis.Redis, livekit: LiveKitSIP) -> None:
    """A clean Trunkline database and no SIP objects on LiveKit."""
    wipe_livekit(livekit)


@dataclass
class WorkerProcess:
    """A real `celery -A worker worker` in its own process group, logging to a file."""

    env: dict[str, str]
    log_path: Path
    concurrency: int = 2
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _log_offset: int = field(default=0, init=False)

    def start(self, timeout: float = 30.0) -> None:
        self.starts += 1
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel=INFO",
             f"--concurrency={self.concurrency}", "--pool=prefork", "--without-gossip",
             "--without-mingle", "--without-heartbeat", f"--hostname=test{self.starts}@%h"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready." in self.read_log()[self._log_offset:]:
                return
            if self.proc.poll() is not None:
                tail = self.read_log()[-3000:]
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{tail}")
            time.sleep(0.1)
        pytest.fail(f"worker not ready after {timeout}s:\n{self.read_log()[-3000:]}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM killer or `kill -9` would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
        # Prefork children outlive a parent killed mid-shutdown; leave none behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tasks(self, outcome: str) -> set[str]:
        """Ids of the provision deliveries this worker logged with `outcome` (received,
        succeeded, retry, ...). A retry keeps its delivery's id, so a delivery has ended once
        its id is `succeeded`."""
        return {task_id for task_id, seen in _TASK_LINE.findall(self.read_log())
                if seen == outcome}

    def received_jobs(self) -> list[str]:
        """The job id of every provision delivery this worker received, in order."""
        return [match.group(1) for line in self.read_log().splitlines()
                if "] received" in line and (match := _JOB_ID.search(line))]


_TASK_LINE = re.compile(r"Task trunkline\.provision\[([0-9a-f-]+)\] (\w+)")
_JOB_ID = re.compile(r"\b(job_[0-9a-f]{32})\b")


def wait_for(condition: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1) -> None:
    """Wait until `condition()` holds; fail the test, naming `what`, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g}s: {what}")
        time.sleep(interval)


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def worker_factory(stack: Stack, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Make workers with extra environment; each is stopped at the end of the test."""
    made: list[WorkerProcess] = []

    def make(concurrency: int = 2, start: bool = True, **env: str) -> WorkerProcess:
        # Celery's task lines are how these tests see deliveries (WorkerProcess.tasks).
        defaults = {"TRUNKLINE_BACKOFF_BASE": "0.2", "TRUNKLINE_BACKOFF_MAX": "2",
                    "TRUNKLINE_CELERY_LOG_LEVEL": "INFO"}
        worker = WorkerProcess(stack.env(**{**defaults, **env}),
                               tmp_path / f"worker{len(made)}.log", concurrency)
        made.append(worker)
        if start:
            worker.start()
        return worker

    yield make
    for worker in made:
        worker.stop()


@pytest.fixture
def client_factory(stack: Stack) -> Iterator[Callable[..., ProvisioningClient]]:
    made: list[ProvisioningClient] = []

    def make(**env: str) -> ProvisioningClient:
        settings = Settings.from_env(stack.env(**env))
        client = ProvisioningClient(
            JobStore(redis.Redis.from_url(settings.redis_url)), Vault(settings.secret_keys),
            create_app(settings), settings,
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(client_factory: Callable[..., ProvisioningClient]) -> ProvisioningClient:
    return client_factory()


def everything_on_livekit(client: LiveKitSIP) -> dict[str, list[str]]:
    return {
        "inbound": sorted(t.sip_trunk_id for t in client.list_inbound_trunks()),
        "outbound": sorted(t.sip_trunk_id for t in client.list_outbound_trunks()),
        "rules": sorted(r.sip_dispatch_rule_id for r in client.list_dispatch_rules()),
    }


def redis_dump(db: redis.Redis) -> bytes:
    """Every byte stored in the database: keys and values of every type."""
    client: Any = db  # redis-py's return types are unions of every RESP shape
    chunks: list[bytes] = []
    for key in client.scan_iter(count=500):
        chunks.append(key)
        kind = client.type(key)
        if kind == b"string":
            chunks.append(client.get(key) or b"")
        elif kind == b"hash":
            for k, v in client.hgetall(key).items():
                chunks += [k, v]
        elif kind == b"list":
            chunks += client.lrange(key, 0, -1)
        elif kind == b"set":
            chunks += list(client.smembers(key))
        elif kind == b"zset":
            chunks += [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                for k, v in fields.items():
                    chunks += [k, v]
    return b"\n".join(chunks)



def stream_events(db: redis.Redis, stream: str, job_id: str) -> list[dict[str, str]]:
    """The entries of `stream` that belong to `job_id`, decoded."""
    client: Any = db
    found = []
    for _, fields in client.xrange(stream):
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        if decoded["job_id"] == job_id:
            found.append(decoded)
    return found


def trunkline_keys(db: redis.Redis) -> list[bytes]:
    client: Any = db
    return [k for k in client.scan_iter(match="trunkline:*", count=500)]


@pytest.fixture
def unused_tcp_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
