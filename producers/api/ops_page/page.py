"""The routes of /ops: login and logout, dead letters (with replay), jobs, a job's timeline, a
number's history and the latest reconcile report. Server-rendered HTML (Jinja2, autoescaped),
no script at all, one stylesheet served from this package."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from ops.paging import BadCursor
from producers.api.auth import auth_subjects
from producers.api.ops_page.auth import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_TOKEN_TTL_SECONDS,
    SESSION_COOKIE,
    CsrfRefused,
    FormError,
    OpsSession,
    OpsSessions,
    drop_cookie,
    read_form,
    same_origin,
    set_cookie,
    tokens_match,
)
from producers.api.ops_page.views import MAX_PAGE, OpsData, timeline
from producers.client import ProvisioningClient
from producers.keys import ApiKeys, valid_org_id
from producers.ratelimit import RateLimiter
from worker.contract import canonical_number
from worker.reconcile import latest_report
from worker.records import JobState, valid_job_id
from worker.store import NotReplicated, UnreadableRecord

log = logging.getLogger("trunkline.ops_page")

HERE = Path(__file__).parent
DEFAULT_PAGE = 25
HOME = "/ops/dead-letters"
# No script may run, nothing loads from elsewhere, and no other site may frame the page (a
# framed replay button could be clicked for the operator) or receive its forms.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

ReconcileReport = Callable[[], Mapping[str, Any] | None]

class LoginRequired(Exception):
    """No live operator session: the browser is sent to the login form."""


@dataclass
class OpsPage:
    keys: ApiKeys
    client: ProvisioningClient
    auth_failures: RateLimiter
    sessions: OpsSessions
    data: OpsData
    templates: Environment
    reconcile_report: ReconcileReport
    clock: Callable[[], float] = time.time

    def render(self, request: Request, template: str, *, status: int = 200,
               session: OpsSession | None = None, **context: Any) -> HTMLResponse:
        body = self.templates.get_template(template).render(
            path=request.url.path, session=session, first_link=_first_link(request),
            csrf=session.csrf_token if session else "", csrf_field=CSRF_FIELD, **context)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, session: OpsSession | None, status: int,
              message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, session=session,
                           message=message)


def _page(request: Request) -> OpsPage:
    page: OpsPage = request.app.state.ops_page
    return page


async def _operator(request: Request) -> OpsSession:
    page = _page(request)
    token = request.cookies.get(SESSION_COOKIE)

    def check() -> OpsSession | None:
        session = page.sessions.get(token)
        # Checked on every request, so a revoked key's sessions end at once.
        if session is None or not page.keys.live_operator(session.key_id):
            return None
        return session

    session = await run_in_threadpool(check)
    if session is None:
        raise LoginRequired
    return session


Operator = Annotated[OpsSession, Depends(_operator)]


async def _to_login(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/ops/login", status_code=303, headers=SECURITY_HEADERS)


async def _checked_form(request: Request, session: OpsSession) -> dict[str, str]:
    form = await read_form(request)
    if not same_origin(request) or not tokens_match(session.csrf_token, form.get(CSRF_FIELD)):
        raise CsrfRefused("this form did not come from this page (or the session changed); "
                          "reload the page and try again")
    return form


def _limit(raw: str | None) -> int:
    return min(int(raw), MAX_PAGE) if raw and raw.isdigit() and int(raw) > 0 else DEFAULT_PAGE


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def _next_link(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    query = {k: v for k, v in request.query_params.items() if k != "cursor"}
    return f"{request.url.path}?{urlencode({**query, 'cursor': cursor})}"


def _first_link(request: Request) -> str | None:
    """Back to the first page of a paged list (None on the first page)."""
    if "cursor" not in request.query_params:
        return None
    query = {k: v for k, v in request.query_params.items() if k != "cursor"}
    return f"{request.url.path}?{urlencode(query)}" if query else request.url.path


BAD_CURSOR = "That page link was not made by this page; start again from the first page."


# --------------------------------------------------------------------------- login


def _login_page(request: Request, *, error: str | None = None,
                status: int = 200) -> HTMLResponse:
    token = request.cookies.get(LOGIN_COOKIE)
    if not token or len(token) > 128:
        token = secrets.token_urlsafe(32)
    response = _page(request).render(request, "login.html", status=status, login_token=token,
                                     error=error)
    set_cookie(response, request, LOGIN_COOKIE, token, max_age=LOGIN_TOKEN_TTL_SECONDS)
    return response


async def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


async def login(request: Request) -> Response:
    page = _page(request)
    try:
        form = await read_form(request)
    except FormError as exc:
        return _login_page(request, error=str(exc), status=400)
    if not same_origin(request) or not tokens_match(request.cookies.get(LOGIN_COOKIE) or "",
                                                    form.get("login_token")):
        return _login_page(request, status=403, error="The login form expired or came from "
                           "another site; enter the key again.")
    key_id, secret = form.get("key_id", "").strip(), form.get("secret", "").strip()
    if not key_id or not secret:
        return _login_page(request, status=400, error="Enter the operator key and its secret.")
    subjects = auth_subjects(request, key_id, prefix="ops-")

    def check() -> tuple[str, OpsSession] | int:
        # Each wrong secret costs a password hash: past the limit, refuse before hashing.
        verdict = page.auth_failures.peek(*subjects)
        if not verdict.allowed:
            return verdict.reset_after
        operator = page.keys.authenticate_operator(key_id, secret)
        if operator is None:
            page.auth_failures.hit(*subjects)
            return 0
        return page.sessions.open(operator, page.clock())

    outcome = await run_in_threadpool(check)
    if isinstance(outcome, int):
        if outcome:
            return _login_page(request, status=429, error="Too many failed logins; try again "
                               f"in {outcome} s.")
        log.warning("ops login refused (unknown key, wrong secret, revoked, or not an "
                    "operator key)")
        return _login_page(request, status=401, error="Unknown operator key, wrong secret, or "
                           "a revoked key. Organisation API keys cannot open this page.")
    token, session = outcome
    log.info("ops login: operator key %s", session.key_id)
    response = _see_other(HOME)
    set_cookie(response, request, SESSION_COOKIE, token, max_age=page.sessions.ttl_seconds)
    drop_cookie(response, request, LOGIN_COOKIE)
    return response


async def logout(request: Request, session: Operator) -> Response:
    page = _page(request)
    await _checked_form(request, session)
    await run_in_threadpool(page.sessions.close, request.cookies.get(SESSION_COOKIE))
    response = _see_other("/ops/login")
    drop_cookie(response, request, SESSION_COOKIE)
    return response


async def _refused_form(request: Request, exc: Exception) -> Response:
    status = 403 if isinstance(exc, CsrfRefused) else 400
    return _page(request).error(request, None, status, str(exc))


# --------------------------------------------------------------------------- dead letters


async def home(session: Operator) -> Response:
    return _see_other(HOME)


def _dead_letters_page(request: Request, session: OpsSession, cursor: str | None,
                       limit: str | None, *, error: str | None = None,
                       status: int = 200) -> HTMLResponse:
    page = _page(request)
    try:
        listing = page.data.dead_letters(cursor, _limit(limit))
    except BadCursor:
        return page.error(request, session, 400, BAD_CURSOR)
    return page.render(request, "dead_letters.html", status=status, session=session,
                       letters=listing.items, total=page.data.dead_letter_count(),
                       next_link=_next_link(request, listing.next_cursor), error=error)


async def dead_letters(request: Request, session: Operator, cursor: str | None = None,
                       limit: str | None = None) -> HTMLResponse:
    return await run_in_threadpool(_dead_letters_page, request, session, cursor, limit)


async def replay(request: Request, job_id: str, session: Operator) -> Response:
    page = _page(request)
    await _checked_form(request, session)
    if not valid_job_id(job_id):
        return page.error(request, session, 404, "No such job.")
    try:
        job = await run_in_threadpool(page.client.replay, job_id)
    except (LookupError, ValueError, UnreadableRecord, NotReplicated) as exc:
        return await run_in_threadpool(_dead_letters_page, request, session, None, None,
                                       error=f"{job_id} was not replayed: {exc}", status=409)
    log.info("ops replay: operator key %s replayed %s (run %d)", session.key_id, job_id,
             job.run)
    return _see_other(f"/ops/jobs/{job_id}?notice=replayed")


# --------------------------------------------------------------------------- jobs


async def jobs(request: Request, session: Operator, *, cursor: str | None = None,
               limit: str | None = None, state: str | None = None,
               org: str | None = None) -> HTMLResponse:
    page = _page(request)
    wanted = JobState(state) if state in {s.value for s in JobState} else None
    org = org.strip() if org and valid_org_id(org.strip()) else None
    try:
        listing = await run_in_threadpool(
            lambda: page.data.jobs(cursor, _limit(limit), org=org, state=wanted))
    except BadCursor:
        return page.error(request, session, 400, BAD_CURSOR)
    return page.render(request, "jobs.html", session=session, rows=listing.items,
                       next_link=_next_link(request, listing.next_cursor), state=wanted,
                       org=org or "", states=[s.value for s in JobState])


async def job(request: Request, job_id: str, session: Operator,
              notice: str | None = None) -> HTMLResponse:
    page = _page(request)
    if not valid_job_id(job_id):
        return page.error(request, session, 404, "No such job.")
    try:
        found = await run_in_threadpool(page.data.job, job_id)
    except UnreadableRecord as exc:
        return page.error(request, session, 409, f"The record of {job_id} cannot be read "
                          f"({exc.reason}); it was dead-lettered without running.")
    if found is None:
        return page.error(request, session, 404, f"No job {job_id}.")
    return page.render(request, "job.html", session=session, job=found,
                       view=found.public_view(), timeline=timeline(found),
                       replayed=notice == "replayed")


# --------------------------------------------------------------------------- numbers


async def number_search(request: Request, session: Operator,
                        number: str | None = None) -> Response:
    page = _page(request)
    if not number:
        return page.render(request, "number_search.html", session=session, error=None,
                           number="")
    try:
        canonical = canonical_number(number, strict=False)
    except ValueError as exc:
        return page.render(request, "number_search.html", status=400, session=session,
                           error=f"The number {exc}", number=number[:40])
    return _see_other(f"/ops/numbers/{quote(canonical, safe='')}")


async def number_history(request: Request, number: str, session: Operator,
                         cursor: str | None = None, limit: str | None = None) -> HTMLResponse:
    page = _page(request)
    try:
        canonical = canonical_number(number, strict=False)
    except ValueError as exc:
        return page.render(request, "number_search.html", status=400, session=session,
                           error=f"The number {exc}", number=number[:40])

    def read() -> tuple[Mapping[str, Any] | None, str | None, Any, list[str]]:
        try:
            record, unreadable = page.data.number_record(canonical), None
        except UnreadableRecord as exc:
            record, unreadable = None, exc.reason
        listing = page.data.number_jobs(canonical, cursor, _limit(limit))
        return record, unreadable, listing, page.data.in_flight(canonical)

    try:
        record, unreadable, listing, in_flight = await run_in_threadpool(read)
    except BadCursor:
        return page.error(request, session, 400, BAD_CURSOR)
    return page.render(request, "number.html", session=session, number=canonical,
                       record=record, unreadable=unreadable, rows=listing.items,
                       scanned=listing.scanned, in_flight=in_flight,
                       next_link=_next_link(request, listing.next_cursor))


# --------------------------------------------------------------------------- reconcile


async def reconcile(request: Request, session: Operator) -> HTMLResponse:
    page = _page(request)
    report = await run_in_threadpool(page.reconcile_report)
    return page.render(request, "reconcile.html", session=session, report=report)


# --------------------------------------------------------------------------- wiring


def _when(moment: datetime | str | None) -> str:
    """A UTC time to the millisecond (steps take milliseconds)."""
    if moment is None:
        return ""
    if isinstance(moment, str):
        try:
            parsed = datetime.fromisoformat(moment)
        except ValueError:
            return moment
        return _when(parsed)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def templates() -> Environment:
    environment = Environment(loader=FileSystemLoader(HERE / "templates"),
                              autoescape=select_autoescape(["html"]),
                              undefined=StrictUndefined)
    environment.filters["when"] = _when
    environment.filters["duration"] = _duration
    environment.filters["quote"] = lambda text: quote(str(text), safe="")
    return environment


def install_ops_page(app: FastAPI, *, keys: ApiKeys, client: ProvisioningClient,
                     auth_failures: RateLimiter,
                     reconcile_report: ReconcileReport | None = None,
                     clock: Callable[[], float] = time.time) -> None:
    """Serve /ops on `app`, behind operator keys; none of it is in the OpenAPI schema.

    The reconcile view shows the report the beat task or `trunkline reconcile` saved last
    (`worker.reconcile.latest_report`) unless `reconcile_report` says otherwise.
    """
    if reconcile_report is None:
        reconcile_report = partial(latest_report, client.redis, client.store.keys)
    app.state.ops_page = OpsPage(
        keys=keys, client=client, auth_failures=auth_failures,
        sessions=OpsSessions(client.redis), data=OpsData(client.store),
        templates=templates(), reconcile_report=reconcile_report, clock=clock)
    app.add_exception_handler(LoginRequired, _to_login)
    app.add_exception_handler(FormError, _refused_form)
    app.mount("/ops/static", StaticFiles(directory=HERE / "static"), name="ops-static")
    routes: list[tuple[str, Callable[..., Any], str]] = [
        ("/ops", home, "GET"),
        ("/ops/login", login_form, "GET"),
        ("/ops/login", login, "POST"),
        ("/ops/logout", logout, "POST"),
        ("/ops/dead-letters", dead_letters, "GET"),
        ("/ops/dead-letters/{job_id}/replay", replay, "POST"),
        ("/ops/jobs", jobs, "GET"),
        ("/ops/jobs/{job_id}", job, "GET"),
        ("/ops/numbers", number_search, "GET"),
        ("/ops/numbers/{number}", number_history, "GET"),
        ("/ops/reconcile", reconcile, "GET"),
    ]
    for path, endpoint, method in routes:
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False,
                          response_class=HTMLResponse)
