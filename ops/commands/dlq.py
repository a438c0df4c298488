"""`trunkline dlq`: the dead-letter list."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from ops.commands import options
from ops.context import EXIT_CONFIG, err, fail, ops_context, out
from ops.dlq import DeadLetter, DeadLetters
from ops.views import cell, echo_json, render_job, shorten, since_option, table, when
from worker.store import NotReplicated, UnreadableRecord

app = typer.Typer(help="Dead-lettered jobs: list, show, replay, purge.", no_args_is_help=True)


def _letters(ctx_letters: DeadLetters, org: str | None, code: str | None,
             since: str | None, limit: int | None = None) -> list[DeadLetter]:
    return ctx_letters.entries(org=org, code=code, since=since_option(since), limit=limit)


@app.command("list")
def list_command(
    org: options.Org = None,
    code: options.Code = None,
    since: options.Since = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 200,
    as_json: options.Json = False,
) -> None:
    """List dead-lettered jobs, newest first: who, which number, why (never a password)."""
    with ops_context() as ctx:
        letters = DeadLetters(ctx.store)
        found = _letters(letters, org, code, since, limit)
        total = letters.count()
    if as_json:
        echo_json([letter.summary() for letter in found])
        return
    if not found:
        out.print(f"no dead-lettered jobs match ({total} on the list)")
        return
    view = table("dead-lettered jobs", ("job", "org", "number", "error", "message", "attempts",
                                        "run", "dead-lettered (UTC)"), ids=("job",))
    for letter in found:
        job = letter.job
        if job is None:
            view.add_row(cell(letter.job_id), cell("?"), cell("?"), cell("record missing"),
                         cell(""), cell(""), cell(""), cell(when(letter.dead_lettered_at)))
            continue
        view.add_row(cell(job.job_id), cell(job.org_id), cell(job.number),
                     cell(letter.code or ""),
                     cell(shorten(job.error.message if job.error else "", 90)),
                     cell(job.attempts), cell(job.run), cell(when(letter.dead_lettered_at)))
    out.print(view)
    out.print(f"{len(found)} shown, {total} on the dead-letter list")


@app.command("show")
def show_command(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    as_json: options.Json = False,
) -> None:
    """Show one dead-lettered job: its error, steps and attempts (never a password)."""
    with ops_context() as ctx:
        letter = DeadLetters(ctx.store).get(job_id)
        job = ctx.store.get(job_id) if letter is None else letter.job
    if letter is None:
        if job is None:
            raise fail(f"no job {job_id}")
        raise fail(f"job {job_id} is not on the dead-letter list (it is {job.state.value}); "
                   "see `trunkline jobs show`")
    if as_json:
        echo_json(letter.detail())
        return
    if letter.unreadable is not None:
        out.print(f"{job_id} was dead-lettered at {when(letter.dead_lettered_at)} UTC without "
                  f"running: its job record cannot be read ({letter.unreadable})")
        return
    if letter.job is None:
        out.print(f"{job_id} was dead-lettered at {when(letter.dead_lettered_at)} UTC, but its "
                  "job record is gone")
        return
    render_job(letter.job, out, note=f"dead-lettered {when(letter.dead_lettered_at)} UTC")


@app.command("replay")
def replay_command(
    job_ids: Annotated[list[str] | None, typer.Argument(
        help="Jobs to replay (or --all with filters).", show_default=False)] = None,
    all_: Annotated[bool, typer.Option(
        "--all", help="Replay every dead-lettered job matching the filters.")] = False,
    org: options.Org = None,
    code: options.Code = None,
    since: options.Since = None,
    as_json: options.Json = False,
) -> None:
    """Re-run dead-lettered jobs under the same id, attempts reset.

    The objects a job already has on LiveKit are adopted, not created twice; a replayed job
    leaves the dead-letter list. Needs TRUNKLINE_SECRET_KEYS (as any producer does).
    """
    if bool(job_ids) == all_:
        raise fail("name the jobs to replay, or use --all (with --org/--code/--since)",
                   EXIT_CONFIG)
    if job_ids and (org or code or since):
        raise fail("--org, --code and --since filter --all; they do not apply to named jobs",
                   EXIT_CONFIG)
    results: list[dict[str, Any]] = []
    with ops_context() as ctx:
        if all_:
            ids = [letter.job_id for letter in _letters(DeadLetters(ctx.store), org, code, since)]
        else:
            ids = list(dict.fromkeys(job_ids or []))
        if not ids:
            if as_json:
                echo_json([])
            else:
                out.print("nothing to replay")
            return
        client = ctx.provisioning_client()
        progress = Progress(TextColumn("replaying"), BarColumn(), MofNCompleteColumn(),
                            console=err, transient=True)
        with progress:
            task = progress.add_task("replay", total=len(ids))
            for job_id in ids:
                try:
                    job = client.replay(job_id)
                    results.append({"job_id": job_id, "replayed": True, "run": job.run,
                                    "org_id": job.org_id, "number": job.number})
                except (LookupError, ValueError, UnreadableRecord, NotReplicated) as exc:
                    results.append({"job_id": job_id, "replayed": False, "error": str(exc)})
                progress.advance(task)
    failed = [r for r in results if not r["replayed"]]
    if as_json:
        echo_json(results)
    else:
        _print_replays(results, len(failed))
    if failed:
        raise typer.Exit(1)


def _print_replays(results: list[dict[str, Any]], failed: int) -> None:
    view = table("replay", ("job", "org", "number", "result"), ids=("job",))
    for result in results:
        outcome = (f"queued again (run {result['run']})" if result["replayed"]
                   else f"not replayed: {result['error']}")
        view.add_row(cell(result["job_id"]), cell(result.get("org_id", "")),
                     cell(result.get("number", "")), cell(outcome))
    out.print(view)
    out.print(f"{len(results) - failed} replayed, {failed} not replayed")


@app.command("purge")
def purge_command(
    org: options.Org = None,
    code: options.Code = None,
    since: options.Since = None,
    yes: options.Yes = False,
    as_json: options.Json = False,
) -> None:
    """Remove entries from the dead-letter list (all, or those matching the filters).

    The job records stay (state `failed`, readable with `jobs show`, still replayable by id).
    Asks for confirmation unless --yes.
    """
    with ops_context() as ctx:
        letters = DeadLetters(ctx.store)
        ids = [letter.job_id for letter in _letters(letters, org, code, since)]
        if not ids:
            if as_json:
                echo_json({"purged": 0})
            else:
                out.print("nothing to purge")
            return
        if not yes:
            typer.confirm(f"Remove {len(ids)} entries from the dead-letter list? Their job "
                          "records stay", abort=True, err=True)
        purged = letters.purge(ids)
    if as_json:
        echo_json({"purged": purged, "job_ids": ids})
    else:
        out.print(f"purged {purged} dead-letter entries")
