"""`trunkline retention show|apply` on fakeredis, with jobs run through the real runner.

Age is made by moving a job's index score into the past, as if it finished long ago.
"""

from __future__ import annotations

import time

import pytest

import ops.context
from ops.context import OpsContext
from tests.ops.conftest import World
from worker.records import Job


def age(world: World, job: Job, *, days: float) -> None:
    """Make a finished job (and its dead letter, if any) look that many days old."""
    at = time.time() - days * 86_400
    world.redis.zadd(world.store.keys.terminal, {job.job_id: at}, xx=True)
    world.redis.zadd(world.store.keys.dead_letters, {job.job_id: at}, xx=True)


def test_show_counts_what_is_kept_and_due(world: World) -> None:
    """Finished jobs and dead letters, kept and due, with the settings that decide it."""
    old = world.provision("+15551230001")
    world.provision("+15551230002")
    dead = world.dead_letter("+15551230003")
    age(world, old, days=31)
    age(world, dead, days=31)
    shown = world.cli_json("retention", "show")
    assert shown["finished_jobs"]["kept"] == 3 and shown["finished_jobs"]["due"] == 2
    assert shown["dead_letters"]["kept"] == 1 and shown["dead_letters"]["due"] == 0
    assert shown["results"]["kept"] == 3
    assert shown["policy"]["jobs_seconds"] == 30 * 86_400
    assert shown["retention_interval"] == world.settings.retention_interval
    human = world.cli("retention", "show")
    assert human.exit_code == 0, human.output
    assert "TRUNKLINE_RETAIN_JOBS_DAYS" in human.stdout and "30 days" in human.stdout


def test_apply_dry_run_then_apply(world: World) -> None:
    """A dry run counts and deletes nothing; apply deletes the old finished job only, keeps
    the dead-lettered one and every phone-number record."""
    old = world.provision("+15551230001")
    recent = world.provision("+15551230002")
    dead = world.dead_letter("+15551230003")
    age(world, old, days=31)
    age(world, dead, days=31)

    dry = world.cli_json("retention", "apply", "--dry-run")
    assert dry["dry_run"] and dry["deleted"]["jobs"] == 1 and dry["kept_dead_lettered"] == 1
    assert world.store.get(old.job_id) is not None

    applied = world.cli_json("retention", "apply")
    assert applied["deleted"]["jobs"] == 1 and applied["kept_dead_lettered"] == 1
    assert world.store.get(old.job_id) is None
    assert world.store.get(recent.job_id) is not None and world.store.get(dead.job_id) is not None
    number = world.store.get_number(old.number)
    assert number is not None and number.job_id == old.job_id

    human = world.cli("retention", "apply")
    assert human.exit_code == 0, human.output
    assert "deleted" in human.stdout and "finished jobs" in human.stdout


def test_apply_deletes_an_expired_dead_letter_with_its_job(world: World) -> None:
    """Past TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS the letter and its record go together."""
    dead = world.dead_letter("+15551230003")
    age(world, dead, days=91)
    applied = world.cli_json("retention", "apply")
    assert applied["deleted"]["dead_letters"] == 1
    assert world.store.get(dead.job_id) is None
    assert world.cli_json("dlq", "list") == []


def test_a_bad_retention_setting_is_named(world: World,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed setting: exit code 2 and one line naming the variable."""
    monkeypatch.setenv("TRUNKLINE_RETAIN_RESULTS_DAYS", "seven")
    monkeypatch.setattr(ops.context, "make_context", OpsContext.from_env)
    result = world.cli("retention", "show")
    assert result.exit_code == 2
    assert "TRUNKLINE_RETAIN_RESULTS_DAYS" in result.stderr
