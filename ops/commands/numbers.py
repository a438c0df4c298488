"""`trunkline numbers`: the organisations' phone-number records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, cast

import typer

from ops.commands import options
from ops.context import EXIT_CONFIG, EXIT_FAILED, err, fail, ops_context, out
from ops.paging import BadCursor, zset_page
from ops.views import cell, echo_json, table, when
from producers.client import NumberNotFound, ProvisioningClient, WaitTimeout
from worker.contract import InvalidRequest, canonical_number
from worker.records import JobState, PhoneNumberRecord

app = typer.Typer(help="Phone-number records by organisation.", no_args_is_help=True)


def _normalise(number: str) -> str:
    try:
        return canonical_number(number)
    except ValueError:
        return number.strip()


@app.command("list")
def list_command(
    org: Annotated[str, typer.Option("--org", help="The organisation.")],
    limit: options.Limit = 50,
    cursor: options.Cursor = None,
    as_json: options.Json = False,
) -> None:
    """List an organisation's numbers, newest first, a page at a time."""
    with ops_context() as ctx:
        store = ctx.store

        def load(numbers: list[str]) -> list[PhoneNumberRecord | None]:
            raws = cast(list[bytes | None],
                        store.redis.mget([store.keys.number(n) for n in numbers]))
            records = [None if r is None else PhoneNumberRecord.model_validate_json(r)
                       for r in raws]
            # The org index may briefly name a number another org now holds: skip it.
            return [r if r is not None and r.org_id == org else None for r in records]

        try:
            page = zset_page(store.redis, [store.keys.numbers_by_org(org)], cursor=cursor,
                             limit=limit, load=load)
        except BadCursor as exc:
            raise fail(str(exc), EXIT_CONFIG) from None
    if as_json:
        echo_json({"numbers": [r.public_view() for r in page.items],
                   "next_cursor": page.next_cursor})
        return
    if not page.items:
        out.print(f"no numbers for {org}")
    else:
        view = table(f"numbers of {org}", ("number", "name", "gateway", "transport",
                                           "inbound trunk", "outbound trunk", "dispatch rule",
                                           "created (UTC)"),
                     ids=("number", "inbound trunk", "outbound trunk", "dispatch rule"))
        for record in page.items:
            view.add_row(cell(record.number), cell(record.name), cell(record.outbound_pstn),
                         cell(record.transport.value), cell(record.inbound_trunk_id),
                         cell(record.outbound_trunk_id), cell(record.dispatch_rule_id),
                         cell(when(record.created_at)))
        out.print(view)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}", soft_wrap=True)


@app.command("show")
def show_command(
    number: Annotated[str, typer.Argument(help="The number, E.164 (+15551234567).")],
    org: Annotated[str | None, typer.Option(
        "--org", help="Fail unless the number belongs to this organisation.")] = None,
    as_json: options.Json = False,
) -> None:
    """Show one number's record: its LiveKit ids, gateway and job (never the password)."""
    canonical = _normalise(number)
    with ops_context() as ctx:
        record = ctx.store.get_number(canonical)
    if record is None or (org is not None and record.org_id != org):
        raise fail(f"no record of {canonical}" + (f" for {org}" if org else ""))
    if as_json:
        echo_json(record.public_view())
        return
    view = table(f"{record.number} ({record.org_id})", ("field", "value"))
    for key, value in record.public_view().items():
        view.add_row(cell(key), cell(value))
    out.print(view)


Wait = Annotated[float, typer.Option(
    "--wait", min=0, help="Seconds to wait for the job to finish (0: print the job id only).")]


def _finish(client: ProvisioningClient, job_id: str, wait: float, as_json: bool) -> None:
    """Print the job (after waiting for it, with --wait); exit 1 if it failed."""
    job = client.get(job_id)
    if wait > 0:
        try:
            job = client.wait(job_id, wait)
        except WaitTimeout as timeout:
            job = timeout.job
    if as_json:
        echo_json(job.public_view())
    else:
        out.print(f"job {job.job_id}: {job.state.value}")
        if job.error is not None:
            out.print(f"{job.error.code}: {job.error.message}")
    if job.state is JobState.FAILED:
        raise typer.Exit(EXIT_FAILED)


@app.command("release")
def release_command(
    number: Annotated[str, typer.Argument(help="The number, E.164 (+15551234567).")],
    org: Annotated[str, typer.Option("--org", help="The organisation that owns it.")],
    yes: options.Yes = False,
    wait: Wait = 30.0,
    as_json: options.Json = False,
) -> None:
    """Release a number: delete its dispatch rule, both trunks and the record (a queued job).

    A number the organisation does not hold (already released, never set up, or another
    organisation's) is refused and nothing is queued.
    """
    canonical = _normalise(number)
    if not yes and not typer.confirm(f"Release {canonical} of {org} on LiveKit?"):
        raise typer.Exit(EXIT_FAILED)
    with ops_context() as ctx:
        client = ctx.provisioning_client()
        try:
            job_id = client.release(org_id=org, number=canonical, source="cli")
        except NumberNotFound as exc:
            raise fail(str(exc)) from None
        _finish(client, job_id, wait, as_json)


@app.command("update")
def update_command(
    number: Annotated[str, typer.Argument(help="The number, E.164 (+15551234567).")],
    org: Annotated[str, typer.Option("--org", help="The organisation that owns it.")],
    changes_file: Annotated[Path, typer.Option(
        "--changes", help="JSON file with the fields to change ('-' for stdin), e.g. "
                          '{"authPassword": "…"}; any request field except number.')],
    wait: Wait = 30.0,
    as_json: options.Json = False,
) -> None:
    """Change a number's setup in place (same LiveKit ids): credentials, gateway, agent, ..."""
    text = sys.stdin.read() if str(changes_file) == "-" else changes_file.read_text()
    try:
        changes = json.loads(text)
    except ValueError as exc:
        raise fail(f"{changes_file} is not valid JSON: {exc}", EXIT_CONFIG) from None
    canonical = _normalise(number)
    with ops_context() as ctx:
        client = ctx.provisioning_client()
        try:
            job_id = client.update(org_id=org, number=canonical, changes=changes, source="cli")
        except NumberNotFound as exc:
            raise fail(str(exc)) from None
        except InvalidRequest as exc:
            for error in exc.errors:
                err.print(f"{error.field}: {error.message}")
            raise typer.Exit(EXIT_CONFIG) from None
        _finish(client, job_id, wait, as_json)
