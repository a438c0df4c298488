"""`trunkline results tail`: the reference downstream consumer of `trunkline:results`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from ops.commands import options
from ops.context import EXIT_CONFIG, fail, ops_context, out
from ops.results import DEFAULT_GROUP, ResultEvent, ResultsConsumer

app = typer.Typer(help="The results stream trunkline:results.", no_args_is_help=True)


def _line(event: ResultEvent) -> str:
    payload = event.payload
    number = payload.get("number", "")
    if event.status == "succeeded":
        detail = (f"inbound {payload.get('inbound_trunk_id', '')}  outbound "
                  f"{payload.get('outbound_trunk_id', '')}  rule "
                  f"{payload.get('dispatch_rule_id', '')}")
        status = "[green]succeeded[/green]"
    elif event.status == "failed":
        detail = f"{payload.get('error_code', '')}: {payload.get('error_message', '')}"
        status = "[red]failed[/red]"
    else:
        detail = json.dumps(payload, default=str)
        status = escape(event.status)
    claimed = "  (claimed)" if event.source == "claimed" else ""
    return (f"{escape(event.entry_id)}  {status}  {escape(event.job_id)}  "
            f"{escape(event.org_id)}  {escape(str(number))}  run {payload.get('run', '?')}  "
            f"{escape(detail)}{claimed}")


@app.command("tail")
def tail_command(
    group: Annotated[str, typer.Option(
        "--group", help="Consumer group: one per downstream service.")] = DEFAULT_GROUP,
    consumer: Annotated[str | None, typer.Option(
        "--consumer", help="This reader's name in the group (default: host-pid).")] = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="Stop after this many entries.")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.0, help="Stop when nothing arrived for this many seconds.")] = None,
    claim_idle: Annotated[float, typer.Option(
        "--claim-idle", min=0.0,
        help="Claim entries other consumers left unacknowledged this long (seconds).")] = 60.0,
    start_id: Annotated[str, typer.Option(
        "--start-id", help="Where a NEW group starts: 0 = everything still in the stream, "
                           "$ = only entries added from now on.")] = "0",
    as_json: options.Json = False,
) -> None:
    """Read results as a consumer group, printing then acknowledging each entry.

    The reference downstream consumer: it first re-reads its own unacknowledged entries, then
    claims (XAUTOCLAIM) entries that dead consumers of the group left pending for
    --claim-idle seconds, then blocks on new entries (XREADGROUP). An entry is acknowledged
    (XACK) only after it was printed. Delivery is at-least-once: deduplicate on job_id + run.
    """
    if start_id not in ("0", "$") and "-" not in start_id and not start_id.isdigit():
        raise fail("--start-id must be 0, $ or a stream id", EXIT_CONFIG)
    with ops_context() as ctx:
        reader = ResultsConsumer(ctx.redis, group=group, consumer=consumer,
                                 stream=ctx.store.keys.results, claim_idle=claim_idle,
                                 start_id=start_id)

        def show(event: ResultEvent) -> None:
            if as_json:
                typer.echo(json.dumps(event.view(), default=str, separators=(",", ":")))
            else:
                out.print(_line(event), soft_wrap=True)

        try:
            reader.run(show, limit=count, idle_timeout=timeout)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
