"""Settings read from the environment, validated once, passed explicitly.

Every setting is documented in the README's "Configuration" table; keep the two in step.
Timing settings are derived from the visibility timeout so that no task run, lease or
backoff can outlive it (an unacked Redis message older than the visibility timeout is
delivered again, even while it still runs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from worker.gateway_policy import GatewayPolicy


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_LIVEKIT_URL = "http://127.0.0.1:7880"


def env_int(env: Mapping[str, str], name: str, default: int, minimum: int,
            maximum: int | None = None) -> int:
    """An integer setting, or ConfigError naming the variable and its allowed range."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def env_float(env: Mapping[str, str], name: str, default: float, minimum: float,
              maximum: float | None = None) -> float:
    """A finite number setting, or ConfigError naming the variable and its allowed range."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {raw!r}")
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name: str, value: float, minimum: float, maximum: float | None) -> None:
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    livekit_url: str = DEFAULT_LIVEKIT_URL
    livekit_api_key: str = ""
    livekit_api_secret: str = ""
    secret_keys: tuple[str, ...] = ()
    visibility_timeout: int = 3600
    # Ten attempts with 1 s base backoff wait about four minutes in all (full jitter): a
    # LiveKit outage of a minute or two does not dead-letter the jobs caught in it.
    max_attempts: int = 10
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    livekit_timeout: float = 10.0
    strict_numbers: bool = False
    gateway_policy: GatewayPolicy = field(default_factory=GatewayPolicy)
    results_maxlen: int = 100_000
    queue: str = "trunkline.provision"
    metrics_port: int | None = None
    reconcile_interval: int = 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        raw_keys = env.get("TRUNKLINE_SECRET_KEYS", "").split(",")
        keys = tuple(k.strip() for k in raw_keys if k.strip())
        visibility = env_int(env, "TRUNKLINE_VISIBILITY_TIMEOUT", 3600, minimum=10)
        return cls(
            redis_url=env.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
            livekit_url=env.get("LIVEKIT_URL", "").strip() or DEFAULT_LIVEKIT_URL,
            livekit_api_key=env.get("LIVEKIT_API_KEY", "").strip(),
            livekit_api_secret=env.get("LIVEKIT_API_SECRET", "").strip(),
            secret_keys=keys,
            visibility_timeout=visibility,
            max_attempts=env_int(env, "TRUNKLINE_MAX_ATTEMPTS", 10, minimum=1),
            backoff_base=env_float(env, "TRUNKLINE_BACKOFF_BASE", 1.0, minimum=0.01),
            backoff_cap=env_float(env, "TRUNKLINE_BACKOFF_MAX", 300.0, minimum=0.01),
            livekit_timeout=env_float(env, "TRUNKLINE_LIVEKIT_TIMEOUT", 10.0, minimum=0.1),
            strict_numbers=_bool(env, "TRUNKLINE_STRICT_NUMBERS", False),
            gateway_policy=_gateway_policy(env),
            results_maxlen=env_int(env, "TRUNKLINE_RESULTS_MAXLEN", 100_000, minimum=100),
            queue=env.get("TRUNKLINE_QUEUE", "").strip() or "trunkline.provision",
            metrics_port=env_int(env, "TRUNKLINE_METRICS_PORT", 0, minimum=0,
                                 maximum=65535) or None,
            reconcile_interval=env_int(env, "TRUNKLINE_RECONCILE_INTERVAL", 3600, minimum=0),
        )

    def require_livekit(self) -> None:
        missing = [
            name
            for name, value in (
                ("LIVEKIT_API_KEY", self.livekit_api_key),
                ("LIVEKIT_API_SECRET", self.livekit_api_secret),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} must be set to reach LiveKit")

    def require_secret_keys(self) -> None:
        if not self.secret_keys:
            raise ConfigError(
                "TRUNKLINE_SECRET_KEYS must be set: comma-separated Fernet keys, the first one "
                "encrypts (make one with `trunkline keygen`)"
            )

    # Derived timings. The hard time limit must end a run before its lease and lock expire,
    # and both must end well before the broker would redeliver the message.
    @property
    def task_time_limit(self) -> float:
        # A run makes a handful of LiveKit calls of at most TRUNKLINE_LIVEKIT_TIMEOUT each; two
        # minutes is ample, and it bounds how long a killed run's lock keeps its number.
        return min(120.0, self.visibility_timeout * 0.5)

    @property
    def task_soft_time_limit(self) -> float:
        return self.task_time_limit * 0.8

    @property
    def lease_seconds(self) -> float:
        return min(144.0, self.visibility_timeout * 0.6)

    @property
    def effective_backoff_cap(self) -> float:
        return min(self.backoff_cap, self.visibility_timeout * 0.5)

    @property
    def submit_grace(self) -> float:
        """How long a stored job may wait for its first enqueue before the sweeper sends it."""
        return min(30.0, self.visibility_timeout * 0.5)

    @property
    def sweep_interval(self) -> float:
        return max(1.0, min(30.0, self.visibility_timeout / 8))


def _gateway_policy(env: Mapping[str, str]) -> GatewayPolicy:
    try:
        return GatewayPolicy.parse(env.get("TRUNKLINE_GATEWAY_ALLOWLIST", "").split(","))
    except ValueError as exc:
        raise ConfigError(f"TRUNKLINE_GATEWAY_ALLOWLIST: {exc}") from None
