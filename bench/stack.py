"""Where the benchmark runs: REDIS_URL/LIVEKIT_* from the environment, or the local stack.

When none of the four variables is set, the local stack is started with ``ops/stack.sh up``
(which honours TRUNKLINE_STACK_DIR, TRUNKLINE_REDIS_PORT, LIVEKIT_PORT, ...) and its
settings are read from ``ops/stack.sh env``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
STACK_SCRIPT = REPO / "ops" / "stack.sh"
REQUIRED = ("REDIS_URL", "LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


class StackError(RuntimeError):
    """The benchmark cannot reach or start what it needs; the message says what to do."""


@dataclass(frozen=True)
class Endpoints:
    redis_url: str  # as given (any database); see with_db()
    livekit_url: str
    api_key: str
    api_secret: str
    local_stack: bool  # True when this run started/used ops/stack.sh itself

    def redis_url_for(self, db: int) -> str:
        return with_db(self.redis_url, db)


def with_db(url: str, db: int) -> str:
    """The same Redis server, another database number."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise StackError(f"REDIS_URL must be redis:// or rediss://, got {parts.scheme}://")
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", "", ""))


def resolve(env: Mapping[str, str] | None = None) -> Endpoints:
    env = os.environ if env is None else env
    given = {name: env.get(name, "").strip() for name in REQUIRED}
    if all(given.values()):
        return Endpoints(given["REDIS_URL"], given["LIVEKIT_URL"], given["LIVEKIT_API_KEY"],
                         given["LIVEKIT_API_SECRET"], local_stack=False)
    if any(given.values()):
        missing = ", ".join(name for name, value in given.items() if not value)
        raise StackError(f"set all of {', '.join(REQUIRED)} or none of them (missing: {missing})")
    return _local_stack(env)


def run_stack(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # the project's own script, fixed arguments
        ["bash", str(STACK_SCRIPT), *args],  # noqa: S607
        env=dict(env), capture_output=True, text=True, check=False, cwd=REPO,
    )


def _local_stack(env: Mapping[str, str]) -> Endpoints:
    up = run_stack(env, "up")
    if up.returncode != 0:
        raise StackError(f"`bash ops/stack.sh up` failed:\n{up.stdout}{up.stderr}")
    printed = run_stack(env, "env")
    if printed.returncode != 0:
        raise StackError(f"`bash ops/stack.sh env` failed:\n{printed.stderr}")
    values = dict(
        line.removeprefix("export ").split("=", 1)
        for line in printed.stdout.splitlines() if "=" in line
    )
    return Endpoints(values["REDIS_URL"], values["LIVEKIT_URL"], values["LIVEKIT_API_KEY"],
                     values["LIVEKIT_API_SECRET"], local_stack=True)


def local_livekit_version(env: Mapping[str, str] | None = None) -> str | None:
    """`livekit-server --version` of the local stack's running server, if there is one."""
    env = os.environ if env is None else env
    status = run_stack(env, "status", "--json")
    try:
        pid = json.loads(status.stdout)["services"]["livekit"]["pid"]
        exe = os.readlink(f"/proc/{int(pid)}/exe")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True,  # noqa: S603
                             check=False, timeout=10)
    except (ValueError, KeyError, TypeError, OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
