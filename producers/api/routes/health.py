"""Liveness and readiness: the process is up; Redis and LiveKit answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from producers.api.errors import NO_STORE, envelope
from producers.api.schemas import HealthEnvelope
from producers.api.state import Probe, api_state

router = APIRouter(tags=["health"])


async def healthz() -> JSONResponse:
    """The process is up (no dependency is checked)."""
    return JSONResponse(envelope("ok", "success", {"process": "up"}), headers=NO_STORE)


async def readyz(request: Request) -> JSONResponse:
    """Redis and LiveKit are reachable (each within TRUNKLINE_API_READY_TIMEOUT)."""
    state = api_state(request)
    checks: dict[str, str] = {}

    async def run(name: str, probe: Probe) -> None:
        try:
            await asyncio.wait_for(run_in_threadpool(probe), state.api.ready_timeout + 1.0)
            checks[name] = "ok"
        except Exception as exc:  # a probe's failure is the answer, whatever it is
            checks[name] = f"unreachable ({type(exc).__name__})"

    await asyncio.gather(*(run(name, probe) for name, probe in state.probes.items()))
    if all(value == "ok" for value in checks.values()):
        return JSONResponse(envelope("ready", "success", checks), headers=NO_STORE)
    failed = sorted(name for name, value in checks.items() if value != "ok")
    error = {"code": "not_ready", "message": f"unreachable: {', '.join(failed)}",
             "field": None, "retryable": True}
    return JSONResponse(envelope(f"not ready: {', '.join(failed)}", "error", checks, error),
                        status_code=503, headers=NO_STORE)


for _path, _endpoint in (("/healthz", healthz), ("/readyz", readyz)):
    _route_endpoint: Callable[..., Awaitable[JSONResponse]] = _endpoint
    router.add_api_route(_path, _route_endpoint, methods=["GET"], response_class=JSONResponse,
                         operation_id=_path.strip("/"),
                         responses={200: {"model": HealthEnvelope, "description": "OK"},
                                    503: {"model": HealthEnvelope,
                                          "description": "Not ready"}})
