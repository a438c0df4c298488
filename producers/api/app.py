"""The HTTP producer: the seed's createSipTrunkDispatch, the phone-number lifecycle (list,
get, update, release), the jobs API and CRM webhooks.

`create_api(settings)` builds the ASGI app; nothing connects at import time. Each route group
is an `APIRouter` in `producers/api/routes/`. Routes are async and hand every blocking call
(Redis, the Celery send) to the thread pool; waiting for a job wakes on the results stream
with asyncio, so a waiting request holds no thread.

Order of checks on a create: failed-authentication limit (429), credentials (401), rate
limit (429), body size by Content-Length (413), content type (415), body size while reading
(413), JSON (400), fields (400, all at once), headers (400), Idempotency-Key (422 on another
body), number taken or in flight (409), then the job is stored and enqueued. Anything rejected
before the last step creates no job.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from producers.api.admission import Admission
from producers.api.answers import job_view
from producers.api.docs import install_offline_docs
from producers.api.errors import REDIS_DOWN, install_error_handlers
from producers.api.metrics import MetricsMiddleware, metrics_endpoint
from producers.api.ops_page import install_ops_page
from producers.api.routes import health, jobs, numbers, provision, webhooks
from producers.api.settings import ApiSettings
from producers.api.state import ApiState, Probe
from producers.api.waiter import ResultWaiter
from producers.client import ProvisioningClient
from producers.keys import ApiKeys
from producers.ratelimit import RateLimiter
from worker.app import create_app
from worker.config import Settings
from worker.livekit import LiveKitSIP
from worker.runtime import redis_client
from worker.store import JobStore
from worker.tracing import instrument_api
from worker.vault import Vault

API_VERSION = "1.0.0"


def _default_probes(settings: Settings, api: ApiSettings,
                    closers: list[Callable[[], None]]) -> dict[str, Probe]:
    timeout = api.ready_timeout
    ping_client = redis_client(settings, socket_timeout=timeout,
                               socket_connect_timeout=timeout)
    closers.append(ping_client.close)
    livekit: list[LiveKitSIP] = []

    def redis_probe() -> None:
        ping_client.ping()

    def livekit_probe() -> None:
        if not livekit:
            settings.require_livekit()
            livekit.append(LiveKitSIP(settings.livekit_url, settings.livekit_api_key,
                                      settings.livekit_api_secret, timeout=timeout))
            closers.append(livekit[0].close)
        livekit[0].list_inbound_trunks(trunk_ids=["ST_trunkline_readyz_probe"])

    return {"redis": redis_probe, "livekit": livekit_probe}


def _require_both_credentials(app: FastAPI) -> None:
    """FastAPI lists two security dependencies as alternatives; the API needs both at once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    names = {name for entry in operation.get("security", []) for name in entry}
                    if names == {"ApiKey", "ApiSecret"}:
                        operation["security"] = [{"ApiKey": [], "ApiSecret": []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def create_api(
    settings: Settings | None = None,
    api_settings: ApiSettings | None = None,
    *,
    client: ProvisioningClient | None = None,
    probes: Mapping[str, Probe] | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """Build the ASGI app. Collaborators are injectable; by default they come from settings."""
    settings = settings or Settings.from_env()
    api = api_settings or ApiSettings.from_env()
    closers: list[Callable[[], None]] = []
    if client is None:
        settings.require_secret_keys()
        client = ProvisioningClient(
            JobStore.for_settings(redis_client(settings), settings),
            Vault(settings.secret_keys), create_app(settings), settings)
        closers.append(client.close)
    state = ApiState(
        settings=settings,
        api=api,
        client=client,
        keys=ApiKeys(client.redis),
        limiter=RateLimiter(client.redis, api.rate_limit, clock=clock),
        auth_failures=RateLimiter(client.redis, api.auth_failure_limit,
                                  prefix="trunkline:api:authfail", clock=clock),
        admission=Admission(client),
        probes=probes if probes is not None else _default_probes(settings, api, closers),
        waiter=ResultWaiter(client.redis, client.store.keys.results),
        clock=clock,
        closers=closers,
    )

    closers.insert(0, state.waiter.stop)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for close in state.closers:
            try:
                close()
            except Exception:  # noqa: S112 - best effort at shutdown
                continue

    app = FastAPI(
        title="Trunkline",
        version=API_VERSION,
        summary="Queued, idempotent, all-or-nothing SIP trunk provisioning for LiveKit",
        description="Every answer is the envelope `{message, status, error, data}`; errors "
        "carry `error: {code, message, field, retryable}`.",
        openapi_url="/openapi.json",
        # /docs is served offline by install_offline_docs; FastAPI's own pages use a CDN.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.trunkline = state
    instrument_api(app)  # OpenTelemetry, when the OTEL_* variables ask for it
    install_error_handlers(app)
    for group in (provision, numbers, jobs, webhooks):
        app.include_router(group.router)
    _require_both_credentials(app)
    app.add_middleware(MetricsMiddleware)
    app.add_api_route("/metrics", metrics_endpoint(client.store), methods=["GET"],
                      include_in_schema=False)
    app.include_router(health.router)
    install_offline_docs(app, title=app.title)
    install_ops_page(app, keys=state.keys, client=client, auth_failures=state.auth_failures,
                     clock=clock)
    return app


__all__ = ["REDIS_DOWN", "ApiState", "create_api", "job_view"]
