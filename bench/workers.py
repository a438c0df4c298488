"""The benchmark's own workers: `celery worker` subprocesses, and their memory.

Each worker is started in a session of its own, so it and its pool children share one process
group; that group is what is stopped at the end and what RSS is summed over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.stack import REPO

POOLS = ("prefork", "threads", "solo")


class WorkerError(RuntimeError):
    pass


@dataclass
class WorkerGroup:
    """`workers` times `celery -A app worker --pool P --concurrency C`, each in its own group."""

    app: str  # "worker" (the real app) or "bench.probe" (the real app plus a LiveKit timer)
    count: int
    concurrency: int
    pool: str
    env: Mapping[str, str]
    log_dir: Path
    loglevel: str = "INFO"
    label: str = "bench"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def slots(self) -> int:
        """Jobs the group can run at once."""
        return self.count * (1 if self.pool == "solo" else self.concurrency)

    def command(self, index: int) -> list[str]:
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker",
               f"--loglevel={self.loglevel}", f"--pool={self.pool}",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               f"--hostname={self.label}{index}@%h"]
        if self.pool != "solo":
            cmd.append(f"--concurrency={self.concurrency}")
        return cmd

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"{self.label}-worker{index}.log"

    def start(self, timeout: float = 60.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            with self.log_path(index).open("ab") as log:
                self.procs.append(subprocess.Popen(  # noqa: S603  # our own celery, fixed args
                    self.command(index), cwd=REPO, env=dict(self.env), stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                ))
        # "ready." is printed at INFO; at quieter levels the warm-up jobs prove readiness.
        if self.loglevel.upper() not in ("DEBUG", "INFO"):
            return
        deadline = time.monotonic() + timeout
        pending = set(range(self.count))
        while pending and time.monotonic() < deadline:
            for index in list(pending):
                if "ready." in self.log_path(index).read_text(errors="replace"):
                    pending.discard(index)
            self.check_alive()
            time.sleep(0.1)
        if pending:
            raise WorkerError(f"worker(s) not ready after {timeout:.0f}s; see "
                              f"{', '.join(str(self.log_path(i)) for i in sorted(pending))}")

    def check_alive(self) -> None:
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is not None:
                tail = self.log_path(index).read_text(errors="replace")[-3000:]
                raise WorkerError(f"worker {index} exited with {code}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            # Prefork children can outlive a parent stopped mid-shutdown: leave none behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()

    def pids(self) -> list[int]:
        """Every process of the group: each worker's main process and its pool children."""
        leaders = {proc.pid for proc in self.procs if proc.poll() is None}
        return sorted(pid for pid, pgrp in _process_groups().items() if pgrp in leaders)

    def rss_kb(self) -> dict[int, int]:
        """VmRSS of every process of the group, in KiB."""
        found: dict[int, int] = {}
        for pid in self.pids():
            rss = vm_rss_kb(pid)
            if rss is not None:
                found[pid] = rss
        return found


def vm_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _process_groups() -> dict[int, int]:
    """pid -> process group id, for every process in /proc."""
    groups: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                raw = stat.read()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = raw[raw.rfind(")") + 2:].split()
        if len(fields) > 2:
            groups[int(entry)] = int(fields[2])
    return groups
