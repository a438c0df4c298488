"""The `trunkline` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from worker.config import ConfigError, Settings
from worker.contract import InvalidRequest
from worker.store import IdempotencyConflict
from worker.vault import Vault

app = typer.Typer(help="Trunkline: queued, idempotent SIP trunk provisioning for LiveKit.",
                  no_args_is_help=True)
dev = typer.Typer(help="The local stack (redis-server + livekit-server), via ops/stack.sh.",
                  no_args_is_help=True)
jobs = typer.Typer(help="Inspect jobs.", no_args_is_help=True)
app.add_typer(dev, name="dev")
app.add_typer(jobs, name="jobs")

console = Console()
errors = Console(stderr=True)

STACK_SCRIPT = Path(__file__).with_name("stack.sh")


def _fail(message: str, code: int = 1) -> None:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def keygen() -> None:
    """Print a new Fernet key for TRUNKLINE_SECRET_KEYS."""
    typer.echo(Vault.generate_key())


@dev.command("up")
def dev_up() -> None:
    """Install what is missing and start the local stack."""
    raise typer.Exit(subprocess.call(["bash", str(STACK_SCRIPT), "up"]))  # noqa: S603, S607


@dev.command("down")
def dev_down() -> None:
    """Stop the local stack."""
    raise typer.Exit(subprocess.call(["bash", str(STACK_SCRIPT), "down"]))  # noqa: S603, S607


@dev.command("status")
def dev_status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Report whether each service of the local stack is up."""
    args = ["bash", str(STACK_SCRIPT), "status"] + (["--json"] if as_json else [])
    raise typer.Exit(subprocess.call(args))  # noqa: S603


@app.command()
def submit(
    org: str = typer.Option(..., "--org", help="Organisation that owns the number."),
    request_file: Path = typer.Argument(..., help="JSON file with the request ('-' for stdin)."),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key"),
    wait: float = typer.Option(0.0, "--wait", help="Seconds to wait for the result (0: don't)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Submit one trunk-setup request and print its job id (and result with --wait)."""
    from producers import ProvisioningClient, WaitTimeout

    text = sys.stdin.read() if str(request_file) == "-" else request_file.read_text()
    try:
        body = json.loads(text)
    except ValueError as exc:
        _fail(f"{request_file} is not valid JSON: {exc}")
    try:
        client = ProvisioningClient.from_env()
        job_id = client.submit(org_id=org, request=body, idempotency_key=idempotency_key,
                               source="cli")
    except InvalidRequest as exc:
        if as_json:
            typer.echo(json.dumps({"errors": [e.model_dump() for e in exc.errors]}))
        else:
            for error in exc.errors:
                errors.print(f"[red]{error.field}[/red]: {error.message}")
        raise typer.Exit(2) from None
    except (ConfigError, IdempotencyConflict) as exc:
        _fail(str(exc))
    view: dict[str, object] = {"job_id": job_id}
    if wait > 0:
        try:
            view = client.wait(job_id, wait).public_view()
        except WaitTimeout as exc:
            view = exc.job.public_view()
    typer.echo(json.dumps(view, indent=None if as_json else 2))


@jobs.command("show")
def jobs_show(
    job_id: str,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one job: state, attempts, steps, result or error (never a secret)."""
    from worker.runtime import redis_client
    from worker.store import JobStore

    settings = Settings.from_env()
    job = JobStore(redis_client(settings)).get(job_id)
    if job is None:
        _fail(f"no job {job_id}")
        return
    if as_json:
        typer.echo(json.dumps(job.public_view()))
        return
    table = Table(title=f"{job.job_id} ({job.org_id})")
    table.add_column("step")
    table.add_column("status")
    table.add_column("id")
    for name, step in job.steps.items():
        table.add_row(name.value, step.status.value, step.resource_id or "")
    console.print(f"state: [bold]{job.state.value}[/bold]  attempts: {job.attempts}  "
                  f"number: {job.request.number}")
    console.print(table)
    if job.error:
        console.print(f"[red]{job.error.code}[/red]: {job.error.message}")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
