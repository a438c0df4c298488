"""Fixtures for the end-to-end suite: real calls through LiveKit's SIP bridge.

The suite runs on its own stack instance and its own SIP bridge (state under .stack/e2e, the
ports in E2E_ENV_DEFAULTS), so it never touches `make run` or the other suites' data. For the
whole session it keeps one real worker, one real `trunkline api`, a customer's API key and two
test agents (tests/e2e/agent.py, registered as AGENT and OTHER_AGENT). Trunkline's database
and the SIP objects on that livekit-server are wiped once, before anything starts; each test
then uses numbers of its own.

The suite runs only when a marker expression selects it (`pytest -m e2e`, as `make e2e` and
`make test` do) and is deselected from a plain `pytest` run, which uses another stack
instance without the bridge.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from producers.keys import ApiKeys
from tests.e2e.harness import AgentProcess, Bridge, LiveKitRooms, start_agent
from tests.e2e.lifecycle import AGENT, ORG, OTHER_AGENT, PASSWORD, Customer
from tests.integration.apiserver import ApiServer, start_api
from tests.integration.conftest import (
    REPO,
    Stack,
    WorkerProcess,
    livekit,
    stack,
    wipe_livekit,
)
from worker.livekit import LiveKitSIP

# The integration suite's fixtures, re-exported so that pytest finds them for this folder.
__all__ = ["livekit", "stack"]

E2E_ENV_DEFAULTS = {
    "TRUNKLINE_STACK_DIR": str(REPO / ".stack" / "e2e"),
    "TRUNKLINE_REDIS_PORT": "6395",
    "LIVEKIT_PORT": "7896",
    "TRUNKLINE_LIVEKIT_UDP_PORT": "7898",
    "TRUNKLINE_SIP_PORT": "5096",
    "TRUNKLINE_SIP_RTP_PORTS": "20900-20959",
    # At info level the bridge says nothing about the calls it drops.
    "TRUNKLINE_SIP_LOG_LEVEL": "debug",
}
SIP_SH = REPO / "ops" / "sip.sh"
# `make e2e` starts the bridge before pytest; this bound covers a first build too.
BRIDGE_UP_TIMEOUT = 900


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Runs after `-m` selection: keep e2e tests only when a marker expression chose them."""
    e2e = [item for item in items if item.get_closest_marker("e2e") is not None]
    if not e2e:
        return
    if not config.getoption("markexpr"):
        config.hook.pytest_deselected(items=e2e)
        items[:] = [item for item in items if item.get_closest_marker("e2e") is None]
        return
    for key, value in E2E_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _sip_sh(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SIP_SH), *args], env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def bridge(stack: Stack) -> Bridge:
    """Starts (or adopts) the bridge with ops/sip.sh up; fails the test if it cannot."""
    up = _sip_sh("up", timeout=BRIDGE_UP_TIMEOUT)
    if up.returncode != 0:
        pytest.fail(f"LiveKit's SIP bridge did not start ('ops/sip.sh up' exited "
                    f"{up.returncode}):\n{up.stdout[-2000:]}\n{up.stderr[-6000:]}",
                    pytrace=False)
    printed = _sip_sh("env", timeout=30)
    values = dict(line.removeprefix("export ").split("=", 1)
                  for line in printed.stdout.splitlines() if "=" in line)
    stack_dir = Path(os.environ.get("TRUNKLINE_STACK_DIR", str(REPO / ".stack")))
    return Bridge(
        host=values["TRUNKLINE_SIP_HOST"],
        port=int(values["TRUNKLINE_SIP_PORT"]),
        sipp=values["SIPP_BIN"],
        log_path=stack_dir / "logs" / "livekit-sip.log",
    )


@pytest.fixture
def sipp_bin() -> str:
    """sipp for the tests that need no bridge (ops/sip.sh install puts it on PATH)."""
    found = subprocess.run(["bash", "-c", "command -v sipp"], capture_output=True, text=True,
                           check=False).stdout.strip()
    if not found:
        pytest.fail("sipp is not installed: run 'ops/sip.sh install' (Debian sip-tester)",
                    pytrace=False)
    return found


@pytest.fixture(scope="session")
def rooms(stack: Stack) -> Iterator[LiveKitRooms]:
    api = LiveKitRooms(stack.livekit_url, stack.api_key, stack.api_secret)
    yield api
    api.close()


@pytest.fixture(scope="session")
def e2e_redis(stack: Stack) -> Iterator[redis.Redis]:
    """Trunkline's database, emptied once, and no SIP objects left on livekit-server."""
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    with LiveKitSIP(stack.livekit_url, stack.api_key, stack.api_secret) as sip:
        wipe_livekit(sip)
    yield client
    client.close()


@pytest.fixture(scope="session")
def e2e_worker(stack: Stack, e2e_redis: redis.Redis,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(stack.env(TRUNKLINE_BACKOFF_BASE="0.2", TRUNKLINE_BACKOFF_MAX="2"),
                           tmp_path_factory.mktemp("e2e-worker") / "worker.log", 2)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def e2e_api(stack: Stack, e2e_worker: WorkerProcess,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    # The sipp "provider gateways" listen on loopback, which the default policy refuses.
    server = start_api(stack, tmp_path_factory.mktemp("e2e-api") / "api.log",
                       TRUNKLINE_API_RATE_LIMIT="0", TRUNKLINE_GATEWAY_ALLOWLIST="127.0.0.0/8")
    yield server
    server.stop()
    log = server.log()
    assert PASSWORD not in log
    assert "Traceback" not in log


@pytest.fixture(scope="session")
def customer(e2e_api: ApiServer, e2e_redis: redis.Redis) -> Iterator[Customer]:
    """The organisation ORG with an API key, on the real API; no answer may carry a
    password."""
    key = ApiKeys(e2e_redis).create(ORG)
    with httpx.Client(base_url=e2e_api.url, timeout=90) as http:
        who = Customer(http, {"X-API-KEY": key.api_key, "X-API-SECRET": key.api_secret})
        yield who
    for answer in who.answers:
        assert PASSWORD not in answer.text
        assert "authPassword" not in answer.text


@pytest.fixture(scope="session")
def agents(stack: Stack, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[dict[str, AgentProcess]]:
    """Two test agents registered with livekit-server, AGENT and OTHER_AGENT."""
    workdir = tmp_path_factory.mktemp("e2e-agents")
    ws_url = "ws://" + stack.livekit_url.removeprefix("http://")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRUNKLINE_", "LIVEKIT_"))}
    made: dict[str, AgentProcess] = {}
    try:
        for name in (AGENT, OTHER_AGENT):
            made[name] = start_agent(name, python=sys.executable, ws_url=ws_url,
                                     api_key=stack.api_key, api_secret=stack.api_secret,
                                     workdir=workdir, env=env)
        yield made
    finally:
        for agent in made.values():
            agent.stop()
