"""The `trunkline` command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from ops.commands import dlq as ops_dlq
from ops.commands import jobs as ops_jobs
from ops.commands import numbers as ops_numbers
from ops.commands import reconcile as ops_reconcile
from ops.commands import results as ops_results
from ops.commands import retention as ops_retention
from ops.commands import submit as ops_submit
from worker.config import ConfigError, Settings
from worker.vault import Vault

if TYPE_CHECKING:
    from producers.keys import ApiKeys

app = typer.Typer(help="Trunkline: queued, idempotent SIP trunk provisioning for LiveKit.",
                  no_args_is_help=True)
dev = typer.Typer(help="The local stack (redis-server + livekit-server), via ops/stack.sh.",
                  no_args_is_help=True)
app.add_typer(dev, name="dev")
# What the people on call use (ops/commands/): dead letters, jobs, numbers, results,
# retention, reconciliation against LiveKit, and bulk submission.
app.add_typer(ops_dlq.app, name="dlq")
app.add_typer(ops_jobs.app, name="jobs")
app.add_typer(ops_numbers.app, name="numbers")
app.add_typer(ops_results.app, name="results")
app.add_typer(ops_retention.app, name="retention")
app.command("reconcile")(ops_reconcile.reconcile_command)
app.command("submit")(ops_submit.submit_command)

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


# --- HTTP producer and its API keys ---------------------------------------------------

keys = typer.Typer(help="API keys of the HTTP producer (the secret is shown once).",
                   no_args_is_help=True)
app.add_typer(keys, name="keys")


@app.command("api")
def api_serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port to listen on."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve the HTTP API (createSipTrunkDispatch, jobs, phone numbers, CRM webhooks, metrics)."""
    import uvicorn

    from producers.api import ApiSettings, create_api
    from worker.observability import configure_logging

    try:
        settings = Settings.from_env()
        settings.require_secret_keys()
        application = create_api(settings, ApiSettings.from_env())
    except ConfigError as exc:
        _fail(str(exc))
        return
    # log_config=None: uvicorn's loggers go through our JSON formatter like the worker's.
    configure_logging()
    uvicorn.run(application, host=host, port=port, log_level=log_level, access_log=True,
                server_header=False, proxy_headers=False, log_config=None)


def _api_keys() -> ApiKeys:
    from producers.keys import ApiKeys
    from worker.runtime import redis_client

    return ApiKeys(redis_client(Settings.from_env()))


@keys.command("create")
def keys_create(
    org: str | None = typer.Option(None, "--org", help="Organisation the key acts for."),
    operator: bool = typer.Option(False, "--operator", help="An operator key instead: it "
                                  "opens the /ops page (every organisation), not the API."),
    name: str = typer.Option("", "--name", help="A note on what uses the key."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Create an API key; prints its id and secret (the secret is never shown again)."""
    if (org is None) == (not operator):
        _fail("give --org ORG for an organisation key, or --operator for an operator key", 2)
        return
    try:
        created = (_api_keys().create_operator(name=name) if operator
                   else _api_keys().create(org or "", name=name))
    except ValueError as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(created.as_json()))
        return
    holder = "role:       operator (/ops)" if operator else f"org:        {created.org_id}"
    console.print(f"api key:    {created.api_key}\napi secret: {created.api_secret}\n"
                  f"{holder}\n[yellow]Store the secret now: only its hash is kept.[/yellow]")


@keys.command("list")
def keys_list(
    org: str | None = typer.Option(None, "--org", help="Only this organisation's keys."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List API keys (never their secrets)."""
    records = [record.public_view() for record in _api_keys().list(org)]
    if as_json:
        typer.echo(json.dumps(records))
        return
    table = Table(title="API keys")
    columns = ("api_key", "role", "org_id", "name", "created_at", "revoked")
    for column in columns:
        table.add_column(column)
    for view in records:
        table.add_row(*(str(view[c]) for c in columns))
    console.print(table)


@keys.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="The key id (sk_...)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Revoke an API key: it never authenticates again."""
    from producers.keys import UnknownKey

    try:
        record = _api_keys().revoke(key_id)
    except UnknownKey as exc:
        _fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps(record.public_view()))
        return
    console.print(f"revoked {record.key_id} ({record.org_id})")


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
