"""`trunkline submit`: one request or a bulk file (CRM backfills) into the queue."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import redis
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ops.bulk import FORMATS, BulkFileError, Row, detect_format, is_single_object, read_rows
from ops.commands import options
from ops.context import (
    EXIT_CONFIG,
    EXIT_UNREACHABLE,
    err,
    fail,
    ops_context,
    out,
    redis_unreachable_message,
)
from ops.views import cell, echo_json, table
from worker.contract import InvalidRequest
from worker.store import IdempotencyConflict

if TYPE_CHECKING:
    from producers.client import ProvisioningClient

OK_STATUSES = ("submitted", "existing")


def _read_text(request_file: Path) -> str:
    if str(request_file) == "-":
        return sys.stdin.read()
    try:
        return request_file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise fail(f"cannot read {request_file}: {exc.strerror or exc}", EXIT_CONFIG) from None
    except UnicodeDecodeError:
        raise fail(f"{request_file} is not UTF-8 text", EXIT_CONFIG) from None


def submit_command(
    org: Annotated[str, typer.Option("--org", help="Organisation that owns the numbers.")],
    request_file: Annotated[Path, typer.Argument(
        help="CSV (header row of request fields), JSON lines, a JSON array, or one JSON "
             "object; '-' reads stdin.", show_default=False)],
    fmt: Annotated[str | None, typer.Option(
        "--format", help="csv, jsonl or json (default: from the file name, else the content).",
    )] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        "--idempotency-key", help="Idempotency key, for a file holding one request.")] = None,
    key_prefix: Annotated[str | None, typer.Option(
        "--idempotency-prefix",
        help="Rows without an idempotencyKey column get PREFIX:<number> as key, so running "
             "the same file again submits nothing twice (for 24 hours).")] = None,
    wait: Annotated[float, typer.Option(
        "--wait", min=0.0, help="Seconds to wait for the jobs' results (0: don't).")] = 0.0,
    as_json: options.Json = False,
) -> None:
    """Validate and submit trunk-setup requests: one, or a whole file with a progress bar.

    Every row is validated first (all field errors named at once); valid rows are stored and
    queued, each with its own job. A per-row table (or --json) tells what became of each row.
    Exit code 0 when every row was submitted, 2 when some were invalid, 1 on other errors,
    3 when Redis is unreachable (rows after that point are reported as not submitted).
    """
    if fmt is not None and fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}", EXIT_CONFIG)
    text = _read_text(request_file)
    chosen = fmt if fmt is not None else detect_format(str(request_file), text)
    try:
        rows = read_rows(text, chosen)
    except BulkFileError as exc:
        raise fail(f"{request_file}: {exc}", EXIT_CONFIG) from None
    if not rows:
        raise fail(f"{request_file} holds no requests", EXIT_CONFIG)
    if idempotency_key and len(rows) != 1:
        raise fail("--idempotency-key is for a file with one request; use an idempotencyKey "
                   "column or --idempotency-prefix for bulk files", EXIT_CONFIG)
    single = is_single_object(text, chosen)
    results: list[dict[str, Any]] = []
    outage: str | None = None
    with ops_context() as ctx:
        client = ctx.provisioning_client()
        seen: dict[str, int] = {}
        progress = Progress(TextColumn("submitting"), BarColumn(), MofNCompleteColumn(),
                            console=err, transient=True)
        with progress:
            task = progress.add_task("submit", total=len(rows))
            for row in rows:
                if outage is not None:
                    results.append({"row": row.line, "status": "not_submitted",
                                    "message": "not submitted: Redis became unreachable"})
                    continue
                try:
                    results.append(_submit_row(client, org, row, seen=seen,
                                               idempotency_key=idempotency_key,
                                               key_prefix=key_prefix))
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    outage = redis_unreachable_message(ctx.settings, exc)
                    results.append({"row": row.line, "status": "not_submitted",
                                    "message": "not submitted: Redis became unreachable"})
                progress.advance(task)
        if wait > 0 and outage is None:
            _wait_for(client, results, wait)
    _print(results, single=single, as_json=as_json, waited=wait > 0)
    if outage is not None:
        raise fail(outage, EXIT_UNREACHABLE)
    statuses = {r["status"] for r in results}
    if statuses - {*OK_STATUSES, "invalid", "skipped"}:
        raise typer.Exit(1)
    if statuses - set(OK_STATUSES):
        raise typer.Exit(2)


def _submit_row(client: ProvisioningClient, org: str, row: Row, *, seen: dict[str, int],
                idempotency_key: str | None, key_prefix: str | None) -> dict[str, Any]:
    result: dict[str, Any] = {"row": row.line}
    if row.request is None:
        return {**result, "status": "invalid", "message": row.error or "cannot be read"}
    try:
        parsed = client.validate(row.request)
    except InvalidRequest as exc:
        return {**result, "status": "invalid",
                "errors": [e.model_dump() for e in exc.errors],
                "message": "; ".join(f"{e.field}: {e.message}" for e in exc.errors)}
    number = parsed.number
    result["number"] = number
    if number in seen:
        return {**result, "status": "skipped",
                "message": f"the same number as row {seen[number]}; submitted once"}
    seen[number] = row.line
    key = row.idempotency_key or idempotency_key or (
        f"{key_prefix}:{number}" if key_prefix else None)
    started = datetime.now(UTC)
    try:
        job_id = client.submit(org_id=org, request=parsed, idempotency_key=key, source="cli")
    except (IdempotencyConflict, ValueError) as exc:
        return {**result, "status": "error", "message": str(exc)}
    status = "submitted"
    if key is not None:
        job = client.store.get(job_id)
        if job is not None and job.created_at < started:
            status = "existing"
    return {**result, "status": status, "job_id": job_id,
            "message": "the same idempotency key already made this job"
            if status == "existing" else ""}


def _wait_for(client: ProvisioningClient, results: list[dict[str, Any]], seconds: float) -> None:
    from producers.client import WaitTimeout  # noqa: PLC0415  # imports Celery

    deadline = time.monotonic() + seconds
    for result in results:
        if result["status"] not in OK_STATUSES:
            continue
        try:
            job = client.wait(result["job_id"], max(0.0, deadline - time.monotonic()))
        except WaitTimeout as exc:
            job = exc.job
        result["state"] = job.state.value
        result["job"] = job.public_view()
        if job.error:
            result["error_code"] = job.error.code


def _print(results: list[dict[str, Any]], *, single: bool, as_json: bool,
           waited: bool) -> None:
    if as_json:
        if single:
            # The shape `trunkline submit` printed for one request before bulk files.
            only = results[0]
            if only["status"] == "invalid" and "errors" in only:
                echo_json({"errors": only["errors"]})
            elif waited and "job" in only:
                echo_json(only["job"])
            elif "job_id" in only:
                echo_json({"job_id": only["job_id"]})
            else:
                echo_json({"error": only.get("message", "")})
            return
        echo_json([{k: v for k, v in r.items() if k != "job"} for r in results])
        return
    columns = ["row", "status", "job", "number"] + (["state"] if waited else []) + ["message"]
    view = table(None, columns, ids=("job",))
    for result in results:
        message = result.get("message", "")
        if waited and result.get("error_code"):
            message = f"{result['error_code']}" + (f"; {message}" if message else "")
        cells = [result["row"], result["status"], result.get("job_id", ""),
                 result.get("number", "")]
        if waited:
            cells.append(result.get("state", ""))
        cells.append(message)
        view.add_row(*(cell(c) for c in cells))
    out.print(view)
    counts: dict[str, int] = {}
    for result in results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    out.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
