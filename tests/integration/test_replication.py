"""Acknowledged writes wait for a replica (Redis WAIT), on a real primary and replica."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producers import ProvisioningClient
from tests.integration.conftest import SEED_REQUEST, Stack, wait_for
from worker.app import create_app
from worker.config import Settings
from worker.records import JobState
from worker.store import JobStore, NotReplicated
from worker.vault import Vault

pytestmark = pytest.mark.integration

TIMEOUT_MS = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Pair:
    primary: redis.Redis
    replica: redis.Redis
    primary_port: int
    replica_proc: subprocess.Popen[bytes]

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.primary_port}/0"


def _server(port: int, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def pair(stack: Stack, tmp_path: Path) -> Iterator[Pair]:
    """A primary and its replica of our own (the stack's redis-server binary)."""
    primary_port, replica_port = _free_port(), _free_port()
    procs = [_server(primary_port, tmp_path / "primary"),
             _server(replica_port, tmp_path / "replica", "--replicaof", "127.0.0.1",
                     str(primary_port))]
    primary = redis.Redis(port=primary_port, socket_timeout=10)
    replica = redis.Redis(port=replica_port, socket_timeout=10)
    try:
        def synced() -> bool:
            try:
                info = replica.info("replication")
            except redis.ConnectionError:
                return False
            return bool(info.get("master_link_status") == "up")

        wait_for(synced, 30, "the replica to sync with its primary")
        yield Pair(primary, replica, primary_port, procs[1])
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        primary.close()
        replica.close()


def _client(pair: Pair, stack: Stack, replicas: int) -> ProvisioningClient:
    settings = Settings.from_env(stack.env(
        REDIS_URL=pair.url(), TRUNKLINE_REDIS_MIN_REPLICAS=str(replicas),
        TRUNKLINE_REDIS_REPLICA_TIMEOUT_MS=str(TIMEOUT_MS)))
    return ProvisioningClient(JobStore.for_settings(pair.primary, settings),
                              Vault(settings.secret_keys), create_app(settings), settings)


def test_a_confirmed_create_is_on_the_replica_when_it_returns(pair: Pair, stack: Stack) -> None:
    client = _client(pair, stack, replicas=1)

    job_id = client.submit(org_id="org_r", request=SEED_REQUEST)

    # No waiting here: WAIT returned only once the replica had processed the write.
    assert pair.replica.exists(client.store.keys.job(job_id)) == 1
    assert pair.replica.llen(client.settings.queue) == 1


def test_a_create_the_replica_cannot_confirm_is_refused_but_stands(
    pair: Pair, stack: Stack
) -> None:
    client = _client(pair, stack, replicas=1)
    os.kill(pair.replica_proc.pid, signal.SIGSTOP)  # alive but silent, like a cut link
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated, match="0 of the 1 replica"):
            client.submit(org_id="org_r", request=SEED_REQUEST, idempotency_key="k1")
        waited = time.monotonic() - started
    finally:
        os.kill(pair.replica_proc.pid, signal.SIGCONT)

    assert waited >= TIMEOUT_MS / 1000 * 0.9
    # The write stands on the primary: a retry with the key finds the same job.
    stored = pair.primary.keys("trunkline:job:*")
    assert len(stored) == 1
    again = client.submit(org_id="org_r", request=SEED_REQUEST, idempotency_key="k1")
    assert stored == [client.store.keys.job(again).encode()]


def test_an_unconfirmed_job_end_is_logged_not_raised(
    pair: Pair, stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A job's end cannot be taken back: too few confirmations are a warning."""
    client = _client(pair, stack, replicas=1)
    job = client.get(client.submit(org_id="org_r", request=SEED_REQUEST))
    store = client.store
    token = f"{job.job_id}:t"
    assert store.acquire_number_lock(job.number, token, 30)
    os.kill(pair.replica_proc.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="worker.store"):
            published, _ = store.finish(job.model_copy(update={"state": JobState.FAILED}),
                                        token, payload={}, dead_letter=True, release=True)
    finally:
        os.kill(pair.replica_proc.pid, signal.SIGCONT)

    assert published
    assert [r.getMessage() for r in caplog.records if "replica" in r.getMessage()]


def test_without_the_setting_nothing_waits(pair: Pair, stack: Stack) -> None:
    client = _client(pair, stack, replicas=0)
    os.kill(pair.replica_proc.pid, signal.SIGSTOP)
    try:
        job_id = client.submit(org_id="org_r", request=SEED_REQUEST)
    finally:
        os.kill(pair.replica_proc.pid, signal.SIGCONT)

    assert pair.primary.exists(client.store.keys.job(job_id)) == 1
