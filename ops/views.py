"""Small helpers the ops commands share to show things: times, cells, JSON, durations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from worker.records import Job

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def echo_json(value: Any) -> None:
    """One JSON document on stdout (for scripts)."""
    typer.echo(json.dumps(value, default=str, separators=(",", ":")))


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`30m`, `2h`, `7d`, `1w`, `45s`, or an ISO 8601 time (UTC when it has no zone)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(seconds=amount * _UNIT_SECONDS[unit])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO 8601 time"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def since_option(text: str | None) -> datetime | None:
    return None if text is None else parse_since(text)


def when(moment: datetime | None) -> str:
    """A compact UTC time for tables."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str | None, width: int = 80) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cell(value: object) -> Text:
    """A table cell shown literally (no rich markup is interpreted in data)."""
    return Text("" if value is None else str(value))


def table(title: str | None, columns: Iterable[str], *, ids: Iterable[str] = ()) -> Table:
    """A table whose id columns never wrap (ids must stay copyable)."""
    keep_whole = set(ids)
    result = Table(title=title, title_justify="left")
    for column in columns:
        if column in keep_whole:
            result.add_column(column, no_wrap=True, overflow="fold")
        else:
            result.add_column(column, overflow="fold")
    return result


def job_summary(job: Job) -> dict[str, Any]:
    """One line of a job list (never a secret)."""
    return {
        "job_id": job.job_id,
        "org_id": job.org_id,
        "kind": job.kind.value,
        "state": job.state.value,
        "number": job.number,
        "attempts": job.attempts,
        "run": job.run,
        "error_code": job.error.code if job.error else None,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def render_job(job: Job, console: Console, *, note: str | None = None) -> None:
    """A job for people: summary, steps, attempts, result or error (never a secret)."""
    lines = [
        f"[bold]{escape(job.job_id)}[/bold]  org {escape(job.org_id)}  "
        f"kind {job.kind.value}  number {escape(job.number)}",
        f"state [bold]{job.state.value}[/bold]  run {job.run}  attempts {job.attempts}"
        + (f"  compensation attempts {job.compensation_attempts}"
           if job.compensation_attempts else ""),
    ]
    request = job.request
    if request is not None:
        lines += [
            f"name {escape(request.name)}  gateway {escape(request.outbound_pstn)}  transport "
            f"{request.transport.value}  auth user {escape(request.auth_user_name)}  "
            "password (set, never shown)",
        ]
    if job.change is not None:
        changed = ", ".join(f.removesuffix("_ciphertext") for f in job.change.fields)
        lines.append(f"changes {escape(changed or 'none')}")
    lines.append(
        f"created {when(job.created_at)}  updated {when(job.updated_at)}"
        + (f"  finished {when(job.finished_at)}" if job.finished_at else "")
        + (f"  next attempt {when(job.next_attempt_at)}" if job.next_attempt_at else ""))
    if note:
        lines.append(escape(note))
    for line in lines:
        console.print(line)
    steps = table("steps", ("step", "status", "livekit / record id", "adopted", "finished"),
                  ids=("livekit / record id",))
    for name, step in job.steps.items():
        steps.add_row(cell(name.value), cell(step.status.value), cell(step.resource_id or ""),
                      cell("yes" if step.adopted else ""), cell(when(step.finished_at)))
    console.print(steps)
    if job.history:
        attempts = table("attempts", ("#", "started", "finished", "error"))
        for attempt in job.history:
            error = attempt.error
            attempts.add_row(cell(attempt.number), cell(when(attempt.started_at)),
                             cell(when(attempt.finished_at)),
                             cell(f"{error.code}: {shorten(error.message, 100)}" if error else ""))
        console.print(attempts)
    if job.error:
        field = f" (field {job.error.field})" if job.error.field else ""
        console.print(f"[red]{escape(job.error.code)}[/red]{escape(field)}: "
                      f"{escape(job.error.message)}")
    if job.leftovers:
        console.print(f"[yellow]left on LiveKit by a compensation that gave up:[/yellow] "
                      f"{escape(', '.join(job.leftovers))} (trunkline reconcile --delete)")
    if job.result:
        console.print("result: " + escape(", ".join(
            f"{k}={v}" for k, v in job.result.model_dump().items())))
