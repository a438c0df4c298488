"""Every part of Trunkline through Redis Sentinel, and a failover under running processes.

A group of its own (ops/sentinel.sh: a primary, a replica, three redis-sentinel processes) holds
Trunkline's data; livekit-server keeps the test stack's Redis. REDIS_URL points at a dead port,
so anything that still used it instead of Sentinel would fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from producers import ProvisioningClient
from tests.integration.apiserver import ApiServer, start_api
from tests.integration.conftest import (
    REPO,
    SEED_REQUEST,
    STACK_DEFAULTS,
    Stack,
    WorkerFactory,
    wait_for,
)
from tests.support.sentinel import SentinelGroup, sentinel_group
from worker.livekit import LiveKitSIP
from worker.records import JobState
from worker.store import Keys

pytestmark = pytest.mark.integration

SENTINEL_DEFAULTS = {
    "TRUNKLINE_SENTINEL_MASTER": "trunkline-test",
    "TRUNKLINE_SENTINEL_REDIS_PORTS": "6430,6431",
    "TRUNKLINE_SENTINEL_PORTS": "26430,26431,26432",
}
CREATE = "/api/sio/createSipTrunkDispatch"
RECONCILE_LINE = re.compile(r'"event": "reconcile: ')
# Bounds, not expectations: a clean failover on loopback takes about a second.
FAILOVER_BOUND = 30.0
JOB_BOUND = 60.0


def _script_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {**STACK_DEFAULTS, **SENTINEL_DEFAULTS}.items():
        env.setdefault(key, value)
    return env


@pytest.fixture(scope="module")
def group(stack: Stack) -> Iterator[SentinelGroup]:
    """A fresh group (down, then up), stopped after the module."""
    with sentinel_group(_script_env()) as made:
        yield made


def trunkline(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from ops.cli import main; main()", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, check=False,
                          timeout=60)


def job_key(job_id: str) -> str:
    return Keys().job(job_id)


def request_for(number: str) -> dict[str, str]:
    return {**SEED_REQUEST, "number": number}


def test_every_process_follows_a_sentinel_failover_without_a_restart(
    stack: Stack, group: SentinelGroup, clean: None, worker_factory: WorkerFactory,
    livekit: LiveKitSIP, tmp_path: Path,
) -> None:
    """A worker, the API, a producer client, beat and `trunkline` commands all configured
    through Sentinel keep working across `SENTINEL FAILOVER`, without a restart; the jobs
    after it are written on the promoted replica."""
    old_primary, replica = group.data_ports
    assert group.role(old_primary) == "master" and group.role(replica) == "slave"
    with group.server(old_primary) as conn:
        conn.flushdb()
    env = stack.env(**group.env)

    keys = trunkline(env, "keys", "create", "--org", "org_sentinel", "--json")
    assert keys.returncode == 0, keys.stderr
    key = json.loads(keys.stdout)
    headers = {"X-API-KEY": key["api_key"], "X-API-SECRET": key["api_secret"]}

    worker = worker_factory(**group.env)
    worker_pid = worker.proc.pid if worker.proc else 0
    api: ApiServer = start_api(stack, tmp_path / "api.log", **group.env)
    client = ProvisioningClient.from_env(env)
    # Beat sends the reconcile report every second; the worker logs each one it runs.
    with (tmp_path / "beat.log").open("ab") as beat_log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel=INFO",
             f"--schedule={tmp_path / 'beat-schedule'}"],
            cwd=REPO, env={**env, "TRUNKLINE_RECONCILE_INTERVAL": "1"}, stdout=beat_log,
            stderr=subprocess.STDOUT, start_new_session=True)

    def reconciles() -> int:
        return len(RECONCILE_LINE.findall(worker.read_log()))

    try:
        wait_for(lambda: reconciles() > 0, 30, "beat's first reconcile report is run")
        with httpx.Client(base_url=api.url, timeout=JOB_BOUND) as http:
            before = [
                client.submit(org_id="org_sentinel", request=request_for("+15557000001")),
                _create_over_http(http, headers, "+15557000002"),
            ]
            for job_id in before:
                assert client.wait(job_id, JOB_BOUND).state is JobState.SUCCEEDED
            with group.server(old_primary) as conn:
                assert all(conn.exists(job_key(j)) for j in before)

            started = _ask_for_failover(group)
            named = time.monotonic()
            # A client follows once the sentinels name the new primary, about a second after
            # it last asked them, not only when the old primary is demoted (which closes its
            # connections) about ten seconds later.
            wait_for(lambda: _writes_land_on(client.redis, group, replica), 8,
                     "the producer client's writes land on the new primary", interval=0.05)
            followed = time.monotonic()
            assert group.role(old_primary) == "master", "followed only at the demotion"
            wait_for(lambda: group.role(old_primary) == "slave", FAILOVER_BOUND,
                     "the old primary is demoted to a replica", interval=0.02)
            demoted = time.monotonic()
            assert group.role(replica) == "master"
            reports_at_demotion = reconciles()

            # The same processes, after the failover: none was restarted.
            after_client = client.submit(org_id="org_sentinel",
                                         request=request_for("+15557000003"))
            client_done = client.wait(after_client, JOB_BOUND)
            client_seconds = time.monotonic() - demoted
            after_http = _create_over_http(http, headers, "+15557000004")
            http_seconds = time.monotonic() - demoted
            assert client_done.state is JobState.SUCCEEDED, client_done
            assert client.get(after_http).state is JobState.SUCCEEDED
        # Beat published these after the demotion: its broker connection followed too.
        wait_for(lambda: reconciles() >= reports_at_demotion + 2, 30,
                 "beat's reconcile reports reach the worker after the failover")
        beat_alive = beat.poll() is None
    finally:
        api_alive = api.proc.poll() is None
        api.stop()
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(15)
    assert api_alive, api.log()[-3000:]
    assert beat_alive, (tmp_path / "beat.log").read_text()[-3000:]
    assert worker.alive and worker.starts == 1 and worker.proc and worker.proc.pid == worker_pid

    # Written on the promoted replica, which Sentinel now names as primary; the demoted
    # server refuses writes, so a process still holding it would have failed, not succeeded.
    assert {group.primary_named_by(p) for p in group.sentinel_ports} == {replica}
    with group.server(replica) as conn:
        assert all(conn.exists(job_key(j)) for j in (after_client, after_http))
    assert group.role(old_primary) == "slave"
    numbers = sorted(n for t in livekit.list_inbound_trunks() for n in t.numbers)
    assert numbers == ["+15557000001", "+15557000002", "+15557000003", "+15557000004"]

    # Operator commands through Sentinel, after the failover.
    listed = trunkline(env, "jobs", "list", "--org", "org_sentinel", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {j["job_id"] for j in json.loads(listed.stdout)["jobs"]} == {
        *before, after_client, after_http}
    dlq = trunkline(env, "dlq", "list", "--json")
    assert dlq.returncode == 0, dlq.stderr
    assert json.loads(dlq.stdout) == []
    print(f"\nSENTINEL FAILOVER: every sentinel named the replica after {named - started:.2f}s, "
          f"the producer client wrote there after {followed - started:.2f}s, the old primary "
          f"was demoted after {demoted - started:.2f}s; then a client job took "
          f"{client_seconds:.2f}s and an API job (after it) ended {http_seconds:.2f}s after "
          "the demotion")


def test_commands_name_sentinel_when_it_is_unreachable(stack: Stack,
                                                       group: SentinelGroup) -> None:
    """With no sentinel answering, a command fails with exit 3 and one line naming the
    Sentinel settings (not REDIS_URL), and no password."""
    env = stack.env(**{**group.env, "TRUNKLINE_REDIS_SENTINELS": "127.0.0.1:1,127.0.0.1:2",
                       "TRUNKLINE_REDIS_PASSWORD": "hunter2-primary",
                       "TRUNKLINE_REDIS_SENTINEL_PASSWORD": "hunter2-sentinel"})
    result = trunkline(env, "dlq", "list")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "TRUNKLINE_REDIS_SENTINELS" in result.stderr
    assert "127.0.0.1:1,127.0.0.1:2" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr


def _create_over_http(http: httpx.Client, headers: dict[str, str], number: str) -> str:
    """POST a create and wait for its answer (the API's own wait); returns the job id."""
    answer = http.post(CREATE, json=request_for(number),
                       headers={**headers, "Prefer": "respond-async"})
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["data"]["job_id"]
    deadline = time.monotonic() + JOB_BOUND
    while True:
        state = http.get(f"/api/jobs/{job_id}", headers=headers)
        assert state.status_code == 200, state.text
        if state.json()["data"]["state"] in ("succeeded", "failed"):
            return job_id
        assert time.monotonic() < deadline, f"job {job_id} not done in {JOB_BOUND}s"
        time.sleep(0.1)


def _ask_for_failover(group: SentinelGroup) -> float:
    """SENTINEL FAILOVER, then wait until every sentinel names the replica as primary.
    Returns when the failover was asked for (time.monotonic)."""
    replica = group.data_ports[1]
    with redis.Redis(host="127.0.0.1", port=group.sentinel_ports[0], socket_timeout=5) as conn:
        started = time.monotonic()
        assert conn.execute_command("SENTINEL", "FAILOVER", group.master) in (b"OK", "OK", True)
    wait_for(lambda: {group.primary_named_by(p) for p in group.sentinel_ports} == {replica},
             FAILOVER_BOUND, "every sentinel names the replica as primary", interval=0.02)
    return started


def _writes_land_on(client: redis.Redis, group: SentinelGroup, port: int) -> bool:
    marker = os.urandom(8).hex()
    client.set("trunkline:test:sentinel-probe", marker)
    with group.server(port) as conn:
        return bool(conn.get("trunkline:test:sentinel-probe") == marker.encode())
