"""A Redis Sentinel group for real-stack tests, started with the project's own ops/sentinel.sh.

A group is a primary, a replica and three redis-sentinel processes on loopback. Its settings
(master name, ports, state folder) are given as ops/sentinel.sh's environment variables, so a
test can run a group of its own beside another test's.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

__all__ = ["SentinelGroup", "free_ports", "sentinel_group"]

SCRIPT = Path(__file__).resolve().parents[2] / "ops" / "sentinel.sh"
# Trunkline's database on the group's servers.
GROUP_DB = 2


@dataclass(frozen=True)
class SentinelGroup:
    master: str
    data_ports: tuple[int, int]  # the first is the primary when the group starts
    sentinel_ports: tuple[int, ...]
    script_env: Mapping[str, str]

    @property
    def env(self) -> dict[str, str]:
        """Trunkline's settings for this group; REDIS_URL is dead on purpose, so anything
        that still used it instead of Sentinel would fail."""
        return {
            "TRUNKLINE_REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "TRUNKLINE_REDIS_SENTINEL_MASTER": self.master,
            "TRUNKLINE_REDIS_DB": str(GROUP_DB),
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, db=GROUP_DB, socket_timeout=5)

    def role(self, port: int) -> str:
        with self.server(port) as conn:
            reply: Any = conn.execute_command("ROLE")
            return str(reply[0].decode())

    def primary_named_by(self, sentinel_port: int) -> int:
        with redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=5) as conn:
            reply: Any = conn.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master)
            return int(reply[1])

    def script(self, command: str) -> subprocess.CompletedProcess[str]:
        return run_script(command, self.script_env)


def run_script(command: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), command],
                          env=dict(env), capture_output=True, text=True, check=False,
                          timeout=120)


@contextlib.contextmanager
def sentinel_group(script_env: Mapping[str, str]) -> Iterator[SentinelGroup]:
    """A fresh group (ops/sentinel.sh down, then up) with `script_env`'s
    TRUNKLINE_SENTINEL_* settings and TRUNKLINE_STACK_DIR; stopped afterwards."""
    run_script("down", script_env)
    up = run_script("up", script_env)
    if up.returncode != 0:
        raise RuntimeError(f"ops/sentinel.sh up failed:\n{up.stdout}\n{up.stderr}")
    data = tuple(int(p) for p in script_env["TRUNKLINE_SENTINEL_REDIS_PORTS"].split(","))
    sentinels = tuple(int(p) for p in script_env["TRUNKLINE_SENTINEL_PORTS"].split(","))
    assert len(data) == 2
    try:
        yield SentinelGroup(script_env["TRUNKLINE_SENTINEL_MASTER"], (data[0], data[1]),
                            sentinels, script_env)
    finally:
        run_script("down", script_env)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on right now, all different (held open until all are chosen)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            sock = held.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports
