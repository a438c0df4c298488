"""Optional: py-spy on the workers during the pipeline batches, summarised by library.

`--py-spy PATH` names a py-spy binary (``pip install py-spy`` in any environment). Each
worker (with its pool children) is sampled while pipeline jobs run; the raw folded stacks
are kept in the log folder and summarised here: each sample is charged to the library of
its deepest frame that belongs to a known library, so "redis-py 20 %" means a fifth of the
workers' busy samples were inside the Redis client (sending, parsing, waiting on a reply).
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

LIBRARIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern)) for name, pattern in (
        ("logging (structlog, logging)", r"structlog/|/logging/|celery/app/log|celery/utils/log"),
        ("LiveKit HTTP (httpx, httpcore, h11)", r"httpx/|httpcore/|h11/"),
        ("JWT", r"jwt/"),
        ("Redis client (redis-py)", r"redis/"),
        ("kombu (broker)", r"kombu/"),
        ("billiard (prefork pool)", r"billiard/"),
        ("celery", r"celery/"),
        ("pydantic", r"pydantic"),
        ("encryption (cryptography)", r"cryptography/"),
        ("prometheus_client", r"prometheus_client/"),
        ("json", r"/json/"),
        ("trunkline worker code", r"worker/[a-z_/]+\.py"),
        ("threads, futures", r"threading\.py|concurrent/futures"),
    ))


@contextlib.contextmanager
def sampling(py_spy: str | None, pids: Iterable[int], out_dir: Path,
             name: str) -> Iterator[list[Path]]:
    """Run py-spy on each pid (and its subprocesses) for the duration of the block."""
    if not py_spy:
        yield []
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    paths: list[Path] = []
    for pid in pids:
        path = out_dir / f"{name}-{pid}.folded"
        paths.append(path)
        procs.append(subprocess.Popen(  # noqa: S603  # the binary the user named
            [py_spy, "record", "-p", str(pid), "--subprocesses", "--nonblocking", "-r", "200",
             "-f", "raw", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy attaches before the measured work starts
    try:
        yield paths
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def summarise(paths: Iterable[Path]) -> dict[str, float]:
    """Share of samples (percent) per library, largest first."""
    by_library: Counter[str] = Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            samples = int(count)
            total += samples
            by_library[_library(stack.split(";")[1:])] += samples
    if not total:
        return {}
    return {name: round(n * 100 / total, 1) for name, n in by_library.most_common()}


def _library(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in LIBRARIES:
            if pattern.search(frame):
                return name
    return "other"
