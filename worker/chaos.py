"""Fault injection for the project's own crash tests: SIGKILL the worker at named points.

Off unless TRUNKLINE_CHAOS_KILL_AT is set. It names points of the saga (see
`ProvisioningSaga.provision` and `JobRunner`): before_trunks, after_trunks, after_rule,
after_record, before_finish. With TRUNKLINE_CHAOS_MODE=once (the default) each point kills
once per job, remembered by a marker file in TRUNKLINE_CHAOS_DIR, so the job can then
complete; with `always` it kills on every attempt (a poison job).

It kills the whole process group, as an OOM killer or `kill -9` of a container would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

from worker.records import Job
from worker.saga import StepHooks


def hooks_from_env(env: Mapping[str, str]) -> StepHooks:
    points = {p.strip() for p in env.get("TRUNKLINE_CHAOS_KILL_AT", "").split(",") if p.strip()}
    if not points:
        return StepHooks()
    always = env.get("TRUNKLINE_CHAOS_MODE", "once").strip() == "always"
    markers = Path(env.get("TRUNKLINE_CHAOS_DIR", "/tmp/trunkline-chaos"))  # noqa: S108
    markers.mkdir(parents=True, exist_ok=True)

    def reached(point: str, job: Job) -> None:
        if point not in points:
            return
        if not always:
            try:
                (markers / f"{job.job_id}.{job.run}.{point}").touch(exist_ok=False)
            except FileExistsError:
                return
        os.killpg(os.getpgrp(), signal.SIGKILL)

    return StepHooks(reached=reached)
