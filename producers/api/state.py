"""What every route reads: the API's collaborators, built once by `create_api`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastapi import Request

from producers.api.admission import Admission
from producers.api.settings import ApiSettings
from producers.api.waiter import ResultWaiter
from producers.client import ProvisioningClient
from producers.keys import ApiKeys
from producers.ratelimit import RateLimiter
from worker.config import Settings

Probe = Callable[[], None]


@dataclass
class ApiState:
    settings: Settings
    api: ApiSettings
    client: ProvisioningClient
    keys: ApiKeys
    limiter: RateLimiter
    auth_failures: RateLimiter
    admission: Admission
    probes: Mapping[str, Probe]
    waiter: ResultWaiter
    clock: Callable[[], float] = time.time
    closers: list[Callable[[], None]] = field(default_factory=list)


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.trunkline
    return state
