"""Options several commands share (typer `Annotated` style)."""

from __future__ import annotations

from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
Org = Annotated[str | None, typer.Option("--org", help="Only this organisation.")]
Code = Annotated[str | None, typer.Option(
    "--code", help="Only jobs that failed with this error code, e.g. number_conflict.")]
Since = Annotated[str | None, typer.Option(
    "--since", help="Only jobs dead-lettered since then: 30m, 2h, 7d, or an ISO 8601 time.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Limit = Annotated[int, typer.Option("--limit", min=1, max=1000, help="Items per page.")]
Cursor = Annotated[str | None, typer.Option(
    "--cursor", help="Continue after the page that printed this cursor.")]
