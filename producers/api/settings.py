"""Settings of the HTTP producer, read from the environment once and passed explicitly.

| variable                      | default   | meaning                                        |
|-------------------------------|-----------|------------------------------------------------|
| TRUNKLINE_API_WAIT_SECONDS    | 30        | how long a create waits for its job (0: never) |
| TRUNKLINE_API_MAX_BODY        | 1048576   | largest request body in bytes (413 above)      |
| TRUNKLINE_API_RATE_LIMIT      | 60        | requests per organisation in any 60 s (0: off) |
| TRUNKLINE_API_AUTH_FAILURE_LIMIT | 10     | failed logins per address, per key id, in 60 s |
| TRUNKLINE_WEBHOOK_SOURCES     | {}        | CRM webhook sources (see producers.webhooks)   |
| TRUNKLINE_WEBHOOK_TOLERANCE   | 300       | webhook timestamp tolerance in seconds         |
| TRUNKLINE_API_READY_TIMEOUT   | 2         | seconds /readyz gives Redis and LiveKit each   |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from producers.ratelimit import MAX_LIMIT
from producers.webhooks import DEFAULT_TOLERANCE_SECONDS, WebhookSource, parse_sources
from worker.config import ConfigError, env_float, env_int

DEFAULT_MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class ApiSettings:
    wait_seconds: float = 30.0
    max_body: int = DEFAULT_MAX_BODY
    rate_limit: int = 60
    auth_failure_limit: int = 10
    webhook_sources: Mapping[str, WebhookSource] = field(default_factory=dict)
    webhook_tolerance: int = DEFAULT_TOLERANCE_SECONDS
    ready_timeout: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiSettings:
        env = os.environ if env is None else env
        try:
            sources = parse_sources(env.get("TRUNKLINE_WEBHOOK_SOURCES", ""))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            wait_seconds=env_float(env, "TRUNKLINE_API_WAIT_SECONDS", 30.0, 0.0, 600.0),
            max_body=env_int(env, "TRUNKLINE_API_MAX_BODY", DEFAULT_MAX_BODY, 1024, 64 << 20),
            rate_limit=env_int(env, "TRUNKLINE_API_RATE_LIMIT", 60, 0, MAX_LIMIT),
            auth_failure_limit=env_int(env, "TRUNKLINE_API_AUTH_FAILURE_LIMIT", 10, 0,
                                       MAX_LIMIT),
            webhook_sources=sources,
            webhook_tolerance=env_int(env, "TRUNKLINE_WEBHOOK_TOLERANCE",
                                       DEFAULT_TOLERANCE_SECONDS, 1, 3600),
            ready_timeout=env_float(env, "TRUNKLINE_API_READY_TIMEOUT", 2.0, 0.1, 30.0),
        )
