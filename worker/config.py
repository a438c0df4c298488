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
from typing import Any

from worker.gateway_policy import GatewayPolicy


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_LIVEKIT_URL = "http://127.0.0.1:7880"
# Only meaningful with Sentinel: with REDIS_URL the database and password are in the URL.
SENTINEL_ONLY = ("TRUNKLINE_REDIS_SENTINEL_MASTER", "TRUNKLINE_REDIS_SENTINEL_PASSWORD",
                 "TRUNKLINE_REDIS_DB", "TRUNKLINE_REDIS_PASSWORD")


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


# How long an idempotency key names its job (TRUNKLINE_IDEMPOTENCY_TTL_SECONDS).
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


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
    # Sentinel (TRUNKLINE_REDIS_SENTINELS): when set it replaces redis_url for the store and
    # the broker. The passwords stay out of repr, which shows up in tracebacks and logs.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = ""
    redis_sentinel_password: str = field(default="", repr=False)
    redis_db: int = 0
    redis_password: str = field(default="", repr=False)
    # Replicas that must confirm an acknowledged write (Redis WAIT; 0: do not wait).
    redis_min_replicas: int = 0
    redis_replica_timeout_ms: int = 1000
    # Retention (worker/retention.py): days a finished job, a dead letter and a results entry
    # are kept (0: forever); the beat task applies it every retention_interval s (0: never).
    retain_jobs_days: int = 30
    retain_dead_letters_days: int = 90
    retain_results_days: int = 7
    idempotency_ttl_seconds: int = IDEMPOTENCY_TTL_SECONDS
    retention_interval: int = 3600

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
            redis_min_replicas=env_int(env, "TRUNKLINE_REDIS_MIN_REPLICAS", 0, minimum=0,
                                       maximum=16),
            redis_replica_timeout_ms=env_int(env, "TRUNKLINE_REDIS_REPLICA_TIMEOUT_MS", 1000,
                                             minimum=1, maximum=60_000),
            **_sentinel_settings(env),
            **_retention_settings(env),
        )

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.redis_sentinels)

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
    def sweep_interval(self) -> float:
        return max(1.0, min(30.0, self.visibility_timeout / 8))


def _retention_settings(env: Mapping[str, str]) -> dict[str, Any]:
    days = {name: env_int(env, variable, default, minimum=0, maximum=36_500)
            for name, variable, default in (
                ("retain_jobs_days", "TRUNKLINE_RETAIN_JOBS_DAYS", 30),
                ("retain_dead_letters_days", "TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS", 90),
                ("retain_results_days", "TRUNKLINE_RETAIN_RESULTS_DAYS", 7))}
    ttl = env_int(env, "TRUNKLINE_IDEMPOTENCY_TTL_SECONDS", IDEMPOTENCY_TTL_SECONDS,
                  minimum=60)
    # Retention cannot name a job's idempotency key (it is a SHA-256, which Redis' Lua lacks),
    # so a key must expire before its job may be deleted, or a retry would name a deleted job.
    for name, variable in (("retain_jobs_days", "TRUNKLINE_RETAIN_JOBS_DAYS"),
                           ("retain_dead_letters_days", "TRUNKLINE_RETAIN_DEAD_LETTERS_DAYS")):
        if days[name] and ttl > days[name] * 86_400:
            raise ConfigError(
                f"TRUNKLINE_IDEMPOTENCY_TTL_SECONDS ({ttl}) must not exceed {variable} "
                f"({days[name]} days = {days[name] * 86_400} s): an idempotency key would "
                "outlive the job it names")
    interval = env_int(env, "TRUNKLINE_RETENTION_INTERVAL", 3600, minimum=0)
    return {**days, "idempotency_ttl_seconds": ttl, "retention_interval": interval}


def _gateway_policy(env: Mapping[str, str]) -> GatewayPolicy:
    try:
        return GatewayPolicy.parse(env.get("TRUNKLINE_GATEWAY_ALLOWLIST", "").split(","))
    except ValueError as exc:
        raise ConfigError(f"TRUNKLINE_GATEWAY_ALLOWLIST: {exc}") from None


def format_sentinels(sentinels: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                    for host, port in sentinels)


def parse_sentinels(raw: str) -> tuple[tuple[str, int], ...]:
    """`host:port,host:port,...` (an IPv6 host in brackets), or ConfigError naming the variable."""
    name = "TRUNKLINE_REDIS_SENTINELS"
    found: list[tuple[str, int]] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        host, sep, port_text = entry.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            sep = ""  # an unbracketed IPv6 address: which colon ends the host is ambiguous
        if not sep or not host or any(c.isspace() or c in "/@[]" for c in host):
            raise ConfigError(f"{name}: {entry!r} is not host:port (write an IPv6 address as "
                              "[addr]:port)")
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(f"{name}: {entry!r} needs a port from 1 to 65535")
        address = (host, int(port_text))
        if address in found:
            raise ConfigError(f"{name}: {entry!r} is listed twice")
        found.append(address)
    return tuple(found)


def _sentinel_settings(env: Mapping[str, str]) -> dict[str, Any]:
    sentinels = parse_sentinels(env.get("TRUNKLINE_REDIS_SENTINELS", ""))
    if not sentinels:
        stray = [name for name in SENTINEL_ONLY if env.get(name, "").strip()]
        if stray:
            raise ConfigError(f"{stray[0]} is only used with TRUNKLINE_REDIS_SENTINELS, which is "
                              "not set (with REDIS_URL, put the database and password in the URL)")
        return {}
    master = env.get("TRUNKLINE_REDIS_SENTINEL_MASTER", "").strip()
    if not master:
        raise ConfigError("TRUNKLINE_REDIS_SENTINEL_MASTER must be set when "
                          "TRUNKLINE_REDIS_SENTINELS is: the name the sentinels monitor the "
                          "primary under (`sentinel monitor <name> ...`)")
    if any(c.isspace() for c in master):
        raise ConfigError(
            f"TRUNKLINE_REDIS_SENTINEL_MASTER must not contain spaces, got {master!r}")
    return {
        "redis_sentinels": sentinels,
        "redis_sentinel_master": master,
        "redis_sentinel_password": _password(env, "TRUNKLINE_REDIS_SENTINEL_PASSWORD"),
        "redis_db": env_int(env, "TRUNKLINE_REDIS_DB", 0, minimum=0),
        "redis_password": _password(env, "TRUNKLINE_REDIS_PASSWORD"),
    }


def _password(env: Mapping[str, str], name: str) -> str:
    # Not stripped: a space may be part of a password. Only a blank value means "none".
    raw = env.get(name, "")
    return raw if raw.strip() else ""
