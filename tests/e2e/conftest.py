"""Fixtures for the end-to-end suite: real calls through LiveKit's SIP bridge.

The stack fixtures (redis-server, livekit-server, a real worker, the producer client) are the
integration suite's, imported below. This suite runs on its own stack instance and its own
SIP bridge: unless the environment says otherwise, state under .stack/e2e and the ports in
E2E_ENV_DEFAULTS, so it never touches `make run` or `make test` data.

The suite is opt-in: its tests run only when selected with a marker expression (`pytest -m
e2e`, as `make e2e` does) and are deselected from a plain `pytest` run (`make test`), because
they need the SIP bridge (ops/sip.sh), which takes a cgo build.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Bridge, LiveKitRooms
from tests.integration.conftest import (
    REPO,
    Stack,
    clean,
    client,
    client_factory,
    livekit,
    redis_db,
    stack,
    worker_factory,
)

# The integration suite's fixtures, re-exported so that pytest finds them for this folder.
__all__ = ["clean", "client", "client_factory", "livekit", "redis_db", "stack",
           "worker_factory"]

E2E_ENV_DEFAULTS = {
    "TRUNKLINE_STACK_DIR": str(REPO / ".stack" / "e2e"),
    "TRUNKLINE_REDIS_PORT": "6395",
    "LIVEKIT_PORT": "7896",
    "TRUNKLINE_LIVEKIT_UDP_PORT": "7898",
    "TRUNKLINE_SIP_PORT": "5096",
    "TRUNKLINE_SIP_RTP_PORTS": "20900-20959",
}
SIP_SH = REPO / "ops" / "sip.sh"
# `make e2e` starts the bridge before pytest; this bound covers a start, not a first build.
BRIDGE_UP_TIMEOUT = 280


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


@pytest.fixture
def rooms(stack: Stack) -> Iterator[LiveKitRooms]:
    api = LiveKitRooms(stack.livekit_url, stack.api_key, stack.api_secret)
    yield api
    api.close()
