"""`trunkline jobs`: read job records."""

from __future__ import annotations

from typing import Annotated, cast

import typer

from ops.commands import options
from ops.context import EXIT_CONFIG, fail, ops_context, out
from ops.paging import BadCursor, zset_page
from ops.views import cell, echo_json, job_summary, render_job, table, when
from worker.records import Job, JobState

app = typer.Typer(help="Inspect jobs.", no_args_is_help=True)


@app.command("show")
def show_command(
    job_id: Annotated[str, typer.Argument(help="The job id (job_...).")],
    as_json: options.Json = False,
) -> None:
    """Show one job: state, attempts, steps, result or error (never a secret)."""
    with ops_context() as ctx:
        job = ctx.store.get(job_id)
    if job is None:
        raise fail(f"no job {job_id}")
    if as_json:
        echo_json(job.public_view())
        return
    render_job(job, out)


@app.command("list")
def list_command(
    org: options.Org = None,
    state: Annotated[JobState | None, typer.Option(
        "--state", case_sensitive=False, help="Only jobs in this state.")] = None,
    limit: options.Limit = 20,
    cursor: options.Cursor = None,
    as_json: options.Json = False,
) -> None:
    """List jobs, newest first, a page at a time (--limit, then --cursor for the next page).

    Without --org, every organisation's jobs are merged; --state queued/running without --org
    reads the active index (ordered by deadline instead of creation).
    """
    with ops_context() as ctx:
        store = ctx.store
        active = state in (JobState.QUEUED, JobState.RUNNING) and org is None
        if org is not None:
            keys = [store.keys.jobs_by_org(org)]
        elif active:
            keys = [store.keys.active]
        else:
            pattern = store.keys.jobs_by_org("*")
            keys = sorted(k.decode() if isinstance(k, bytes) else str(k)
                          for k in store.redis.scan_iter(match=pattern, count=500))

        def load(ids: list[str]) -> list[Job | None]:
            raws = cast(list[bytes | None], store.redis.mget([store.keys.job(i) for i in ids]))
            jobs = [None if raw is None else Job.model_validate_json(raw) for raw in raws]
            return [j if j is not None and (state is None or j.state is state) else None
                    for j in jobs]

        try:
            page = zset_page(store.redis, keys, cursor=cursor, limit=limit, load=load)
        except BadCursor as exc:
            raise fail(str(exc), EXIT_CONFIG) from None
    if as_json:
        echo_json({"jobs": [job_summary(j) for j in page.items],
                   "next_cursor": page.next_cursor})
        return
    if not page.items:
        out.print("no jobs")
    else:
        view = table(None, ("job", "org", "state", "number", "attempts", "run", "error",
                            "created (UTC)"), ids=("job",))
        for job in page.items:
            view.add_row(cell(job.job_id), cell(job.org_id), cell(job.state.value),
                         cell(job.number), cell(job.attempts), cell(job.run),
                         cell(job.error.code if job.error else ""), cell(when(job.created_at)))
        out.print(view)
    if page.next_cursor:
        out.print(f"more: --cursor {page.next_cursor}", soft_wrap=True)
