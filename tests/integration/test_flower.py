"""Flower, unchanged, monitors Trunkline's workers (it talks to them over the broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from producers import ProvisioningClient
from tests.integration.conftest import SEED_REQUEST, Stack, WorkerFactory
from worker.records import JobState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean")]


def test_flower_sees_the_worker_and_its_task(
    stack: Stack, worker_factory: WorkerFactory, client: ProvisioningClient,
    unused_tcp_port: int,
) -> None:
    """`celery -A worker flower` lists the worker, its queue and the provision task."""
    worker_factory()
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "flower", "--address=127.0.0.1",
         f"--port={unused_tcp_port}"],
        env=stack.env(FLOWER_UNAUTHENTICATED_API="1"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        workers: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and not workers:
            try:
                answer = httpx.get(f"http://127.0.0.1:{unused_tcp_port}/api/workers",
                                   params={"refresh": "1"}, timeout=10)
                workers = answer.json() if answer.status_code == 200 else {}
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert workers, "flower never listed a worker"
        (info,) = workers.values()
        assert "trunkline.provision" in str(info.get("registered"))
        assert "trunkline.provision" in str(info.get("active_queues"))
        job = client.wait(client.submit(org_id="org_fl", request=SEED_REQUEST), 60)
        assert job.state is JobState.SUCCEEDED
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(15)
