"""`trunkline retention`: what Redis keeps, what is due, and deleting it (worker/retention.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from ops.commands import options
from ops.context import err, ops_context, out
from ops.views import cell, echo_json, table, when
from worker.retention import (
    DAY,
    DEFAULT_BATCH,
    KindStatus,
    Retention,
    RetentionPolicy,
    RetentionReport,
    RetentionStatus,
)

app = typer.Typer(help="Retention of finished jobs, dead letters and results: show, apply.",
                  no_args_is_help=True)

# What each kind is called on screen, and the setting that bounds it.
KINDS = (
    ("jobs", "finished jobs", "TRUNKLINE_RETAIN_JOBS_DAYS"),
    ("dead_letters", "dead letters", "TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS"),
    ("results", "results stream entries", "TRUNKLINE_RETAIN_RESULTS_DAYS"),
)


def _kept_for(seconds: float) -> str:
    return "forever" if seconds <= 0 else f"{seconds / DAY:g} days"


def _at(epoch: float | None) -> str:
    return when(None if epoch is None else datetime.fromtimestamp(epoch, UTC))


def _kind_status(status: RetentionStatus, kind: str) -> KindStatus:
    return {"jobs": status.finished_jobs, "dead_letters": status.dead_letters,
            "results": status.results}[kind]


def _policy_seconds(policy: RetentionPolicy, kind: str) -> float:
    return {"jobs": policy.jobs_seconds, "dead_letters": policy.dead_letters_seconds,
            "results": policy.results_seconds}[kind]


@app.command("show")
def show_command(as_json: options.Json = False) -> None:
    """What is kept, what is due for deletion now, and the settings that decide it."""
    with ops_context() as ctx:
        retention = Retention(ctx.store, RetentionPolicy.from_settings(ctx.settings))
        status = retention.status()
        interval = ctx.settings.retention_interval
    if as_json:
        document = status.as_json()
        document["retention_interval"] = interval
        echo_json(document)
        return
    view = table("retention", ("kind", "kept", "due now", "kept for", "oldest (UTC)",
                               "setting"))
    for kind, label, variable in KINDS:
        kept = _kind_status(status, kind)
        due = f"{kept.due}+" if kept.due_is_lower_bound else str(kept.due)
        view.add_row(cell(label), cell(kept.kept), cell(due),
                     cell(_kept_for(_policy_seconds(status.policy, kind))),
                     cell(_at(kept.oldest_at)), cell(variable))
    out.print(view)
    out.print(f"{status.active_jobs} jobs queued or running (never deleted); idempotency keys "
              f"expire after {status.idempotency_ttl_seconds} s "
              "(TRUNKLINE_IDEMPOTENCY_TTL_SECONDS)")
    out.print("finished jobs due include dead-lettered ones, kept until their dead letter "
              "expires" if status.finished_jobs.due else "nothing finished is due")
    memory = ("unknown" if status.used_memory_bytes is None
              else f"{status.used_memory_bytes / 1_048_576:.1f} MiB")
    record = ("" if status.job_record_bytes is None
              else f"; a finished job record takes about {status.job_record_bytes:.0f} bytes")
    out.print(f"Redis used_memory {memory}{record}")
    if not status.backfill_done:
        out.print("jobs finished before this version are indexed by the next `apply` "
                  "(a one-off scan)")
    out.print("scheduled by `celery -A worker beat` every "
              f"{interval} s (TRUNKLINE_RETENTION_INTERVAL)" if interval
              else "not scheduled (TRUNKLINE_RETENTION_INTERVAL=0): run `trunkline retention "
                   "apply`")


@app.command("apply")
def apply_command(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    batch: Annotated[int, typer.Option(
        "--batch", min=1, max=10_000,
        help="Records per Lua script (each one blocks Redis while it runs).")] = DEFAULT_BATCH,
    as_json: options.Json = False,
) -> None:
    """Delete what the retention settings say is due, in batches, with progress.

    Never touches a queued or running job, nor a phone-number record; a dead-lettered job
    stays while its dead letter does. Safe to run beside workers and the beat task.
    """
    with ops_context() as ctx:
        retention = Retention(ctx.store, RetentionPolicy.from_settings(ctx.settings),
                              batch=batch)
        # The bars' sizes cost a status read (counts, memory, samples); --json draws none.
        status = None if as_json else retention.status()
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), console=err, transient=True,
                            disable=as_json)
        tasks: dict[str, TaskID] = {}
        with progress:
            if status is not None:
                if not dry_run and not status.backfill_done:
                    # Once per deployment: jobs that finished before the terminal index existed.
                    tasks["backfill"] = progress.add_task("indexing older job records",
                                                          total=None)
                for kind, label, _ in KINDS:
                    tasks[kind] = progress.add_task(
                        f"{'counting' if dry_run else 'deleting'} {label}",
                        total=_kind_status(status, kind).due or None)

            def advance(kind: str, count: int) -> None:
                if kind in tasks:
                    progress.advance(tasks[kind], count)

            report = retention.apply(dry_run=dry_run, progress=advance)
    if as_json:
        echo_json(report.as_json())
        return
    _print_report(report)


def _print_report(report: RetentionReport) -> None:
    verb = "would delete" if report.dry_run else "deleted"
    view = table(f"retention ({'dry run' if report.dry_run else 'applied'})",
                 ("kind", verb))
    for kind, label, _ in KINDS:
        view.add_row(cell(label), cell(report.deleted[kind]))
    out.print(view)
    notes = []
    if report.kept_dead_lettered:
        notes.append(f"{report.kept_dead_lettered} finished jobs past their time kept: they "
                     "are dead-lettered")
    if report.skipped:
        notes.append(f"{report.skipped} left alone (replayed and running again, or gone)")
    if report.backfilled:
        notes.append(f"{report.backfilled} jobs finished before this version indexed")
    for note in notes:
        out.print(note)
    out.print(f"done in {report.seconds:.1f} s")
