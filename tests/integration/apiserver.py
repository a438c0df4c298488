"""A real `trunkline api` on loopback for the tests against the real stack, and helpers for
its answers (shared by test_api.py and test_api_lifecycle.py)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import REPO, Stack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ApiServer:
    """`trunkline api` in its own process group, logging to a file."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_api(stack: Stack, log_path: Path, **env: str) -> ApiServer:
    port = _free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ops.cli import main; main()", "api", "--host",
             "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=stack.env(**env), stdout=log, stderr=subprocess.STDOUT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the API exited with {proc.returncode}:\n{server.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"the API did not come up:\n{server.log()[-3000:]}")


def job_keys(db: redis.Redis) -> list[bytes]:
    client: Any = db
    return list(client.scan_iter(match="trunkline:job:*", count=500))


def wait_for_job(http: httpx.Client, headers: dict[str, str], job_id: str,
                 timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = http.get(f"/api/jobs/{job_id}", headers=headers)
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        if data["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return data
        time.sleep(0.2)


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == "error"
    assert body["data"] is None
    error: dict[str, Any] = body["error"]
    assert error["code"] == code
    assert set(error) >= {"code", "message", "field", "retryable"}
    assert "Traceback" not in answer.text
    return error
