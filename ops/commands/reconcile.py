"""`trunkline reconcile`: compare LiveKit's tagged objects with our records."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ops.commands import options
from ops.context import EXIT_CONFIG, err, fail, ops_context, out
from ops.views import cell, echo_json, table
from worker.reconcile import (
    DEFAULT_MAX_DELETIONS,
    Deletion,
    Finding,
    Reconciler,
    Report,
    save_report,
)


def _findings_table(title: str, findings: list[Finding], detail: str) -> None:
    view = table(title, ("kind", "livekit id", "number", "job", "org", detail),
                 ids=("livekit id", "job"))
    for finding in findings:
        if finding.fields:
            text = "; ".join(f.describe() for f in finding.fields)
        elif finding.job_state:
            text = f"{finding.reason} (job {finding.job_state})"
        else:
            text = finding.reason
        view.add_row(cell(finding.kind.value), cell(finding.livekit_id), cell(finding.number),
                     cell(finding.job_id), cell(finding.org_id), cell(text))
    out.print(view)


def _print_report(report: Report, console: Console) -> None:
    if report.orphans:
        _findings_table("orphans (tagged by Trunkline, not ours any more)", report.orphans,
                        "reason")
    if report.missing:
        _findings_table("missing (a record's object is gone from LiveKit)", report.missing,
                        "reason")
    if report.drifted:
        _findings_table("drifted (changed outside Trunkline)", report.drifted, "fields")
    counts = report.counts()
    checked = report.checked
    console.print(
        f"{counts['orphans']} orphans, {counts['missing']} missing, {counts['drifted']} "
        f"drifted; {counts['in_flight']} objects of jobs in flight left alone; checked "
        f"{checked.get('records', 0)} records against {checked.get('inbound_trunks', 0)} "
        f"inbound trunks, {checked.get('outbound_trunks', 0)} outbound trunks and "
        f"{checked.get('dispatch_rules', 0)} dispatch rules")
    for warning in report.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")


def _print_deletions(deletions: list[Deletion]) -> None:
    view = table("orphans deleted", ("kind", "livekit id", "number", "job", "result"),
                 ids=("livekit id", "job"))
    for deletion in deletions:
        finding = deletion.finding
        view.add_row(cell(finding.kind.value), cell(finding.livekit_id), cell(finding.number),
                     cell(finding.job_id), cell(deletion.detail))
    out.print(view)


def reconcile_command(
    as_json: options.Json = False,
    delete: Annotated[bool, typer.Option(
        "--delete", help="Delete the orphans (only them), dispatch rules before trunks.")] = False,
    yes: options.Yes = False,
    max_delete: Annotated[int, typer.Option(
        "--max-delete", min=1,
        help="Refuse to delete more orphans than this at once.")] = DEFAULT_MAX_DELETIONS,
) -> None:
    """Compare LiveKit's Trunkline-tagged trunks and rules with our phone-number records.

    Reports orphans (tagged objects no record uses, whose job failed, is unknown, or
    succeeded without them; objects of queued/running jobs are left alone), missing objects
    (a record's trunk or rule is gone) and drifted ones (changed outside Trunkline: address,
    numbers, transport, credentials, allowed addresses, rule trunk ids, room prefix, agent).
    Passwords are compared, never printed. The findings are kept in Redis as the latest
    report. Exit code 0 when clean, 1 when findings remain.
    """
    with ops_context() as ctx:
        reconciler = Reconciler(ctx.livekit, ctx.store, ctx.vault(), max_deletions=max_delete)
        report = reconciler.run()
        # Kept before anything is asked or deleted: what was found stands even if the
        # deletion is declined or fails.
        save_report(ctx.store, report, source="cli")
        deletions: list[Deletion] = []
        if delete and report.orphans:
            if len(report.orphans) > max_delete:
                raise fail(f"refusing to delete {len(report.orphans)} orphans at once (more "
                           f"than --max-delete {max_delete}): is another Trunkline deployment "
                           "using this LiveKit project?")
            if not yes:
                if as_json:
                    raise fail("--delete with --json needs --yes", EXIT_CONFIG)
                _print_report(report, out)
                typer.confirm(f"Delete these {len(report.orphans)} orphans from LiveKit?",
                              abort=True, err=True)
            deletions = reconciler.delete_orphans(report)
            save_report(ctx.store, report, source="cli", deletions=deletions)
    if as_json:
        document = report.as_json()
        if delete:
            document["deleted"] = [d.as_json() for d in deletions]
        echo_json(document)
    else:
        if not (delete and not yes and report.orphans):
            _print_report(report, out)
        if deletions:
            _print_deletions(deletions)
    undeleted = sum(1 for d in deletions if not d.deleted)
    remaining = len(report.missing) + len(report.drifted) + (
        undeleted if delete else len(report.orphans))
    if remaining:
        raise typer.Exit(1)
