"""`trunkline numbers`: the organisations' phone-number records."""

from __future__ import annotations

from typing import Annotated, cast

import typer

from ops.commands import options
from ops.context import EXIT_CONFIG, fail, ops_context, out
from ops.paging import BadCursor, zset_page
from ops.views import cell, echo_json, table, when
from worker.contract import canonical_number
from worker.records import PhoneNumberRecord

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
