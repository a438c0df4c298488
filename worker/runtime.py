"""Wiring: builds the collaborators a worker process needs, once per process.

Built lazily and per process id, because a prefork pool forks after the app is created and an
httpx connection pool or a Redis connection must not be shared across a fork.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from worker.chaos import hooks_from_env
from worker.config import Settings, format_sentinels
from worker.lifecycle import ReleaseSaga, UpdateSaga
from worker.livekit import LiveKitSIP
from worker.records import JobKind
from worker.runner import JobRunner, Saga
from worker.saga import ProvisioningSaga
from worker.store import JobStore
from worker.tracing import SERVICE_WORKER, configure_tracing
from worker.vault import Vault


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    vault: Vault
    livekit: LiveKitSIP
    saga: ProvisioningSaga
    runner: JobRunner

    @classmethod
    def build(
        cls,
        settings: Settings,
        env: Mapping[str, str] | None = None,
        interruptions: tuple[type[BaseException], ...] = (),
    ) -> Runtime:
        settings.require_secret_keys()
        settings.require_livekit()
        # Per process, like the clients: a prefork child exports its spans from its own thread.
        configure_tracing(SERVICE_WORKER)
        client = redis_client(settings)
        store = JobStore.for_settings(client, settings)
        vault = Vault(settings.secret_keys)
        livekit = LiveKitSIP(settings.livekit_url, settings.livekit_api_key,
                             settings.livekit_api_secret, timeout=settings.livekit_timeout)
        saga = ProvisioningSaga(livekit, store, vault,
                                hooks=hooks_from_env(os.environ if env is None else env))
        lifecycle: dict[JobKind, Saga] = {
            JobKind.UPDATE: UpdateSaga(livekit, store, vault),
            JobKind.RELEASE: ReleaseSaga(livekit, store),
        }
        runner = JobRunner(store, saga, settings, interruptions=interruptions,
                           lifecycle=lifecycle)
        return cls(settings, client, store, vault, livekit, saga, runner)

    def close(self) -> None:
        self.saga.close()
        self.livekit.close()
        self.redis.close()


def redis_client(settings: Settings, *, socket_timeout: float = 10.0,
                 socket_connect_timeout: float = 5.0) -> redis.Redis:
    """The one way every part of Trunkline opens Redis: REDIS_URL, or the Sentinel master.

    A Sentinel client asks the sentinels for the primary's address whenever it opens a
    connection, and at most every PRIMARY_CHECK_INTERVAL seconds when it takes one from its
    pool (FollowingSentinelPool); a changed address drops the idle connections, so the next
    command opens one to the new primary. A demoted primary answers writes with READONLY,
    which redis-py turns into a ConnectionError for these clients; that error, and the
    connections a failover closes, reach the caller at once: redis-py gives its default Retry
    only to clients that build their own pool, not to these (from_url, master_for), so a
    command is never sent twice. The next command opens a connection to the freshly resolved
    primary. Registered Lua scripts reload themselves on the new primary (EVALSHA, then EVAL
    on NOSCRIPT).
    """
    if not settings.uses_sentinel:
        return redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=30,
        )
    # redis.sentinel has no annotations; master_for returns a redis_class instance.
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(settings.redis_sentinels),
        sentinel_kwargs=sentinel_connection_options(settings, socket_connect_timeout),
    )
    client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        redis_class=redis.Redis,
        connection_pool_class=FollowingSentinelPool,
        db=settings.redis_db,
        password=settings.redis_password or None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=30,
    )
    return client


# After `SENTINEL FAILOVER` the sentinels name the new primary within about a second, but
# they demote the old one only about ten seconds later: until then it still takes writes,
# which its resync then discards. Connections opened earlier would keep writing there for
# that whole time; asking the sentinels once a second bounds it to about a second.
PRIMARY_CHECK_INTERVAL = 1.0


class FollowingSentinelPool(SentinelConnectionPool):
    """A Sentinel master pool that also re-asks for the primary when a connection is taken,
    at most every PRIMARY_CHECK_INTERVAL seconds (one SENTINEL MASTERS round trip)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # redis.sentinel
        self._checked_at = time.monotonic()
        self._check_lock = threading.Lock()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= PRIMARY_CHECK_INTERVAL and self._check_lock.acquire(
                blocking=False):
            try:
                self._checked_at = now
                # Drops the idle connections when the address changed (redis-py's own
                # method); a sentinel outage is left to the command's own error handling.
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    self.get_master_address()  # type: ignore[no-untyped-call]
            finally:
                self._check_lock.release()
        return super().get_connection(*args, **kwargs)


def sentinel_connection_options(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """How to talk to the sentinels themselves (not the primary): short timeouts, so one dead
    sentinel only delays the look-up until the next one answers."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    return options


def broker_url(settings: Settings) -> str:
    """Celery's broker URL: REDIS_URL, or kombu's `sentinel://h:p;sentinel://h:p` form.

    kombu takes the primary's password and database from the first sentinel URL and tries
    the others in turn; the sentinels' own password goes in the transport options. The app
    factory (worker.app) points the scheme at worker.broker's transport, which survives a
    primary crash.
    """
    if not settings.uses_sentinel:
        return settings.redis_url
    auth = f":{quote(settings.redis_password, safe='')}@" if settings.redis_password else ""
    return ";".join(f"sentinel://{auth}{format_sentinels(((host, port),))}/{settings.redis_db}"
                    for host, port in settings.redis_sentinels)


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.uses_sentinel:
        options["master_name"] = settings.redis_sentinel_master
        options["sentinel_kwargs"] = sentinel_connection_options(settings)
    return options


class RuntimeHolder:
    """One Runtime per process, made on first use."""

    def __init__(self, settings: Settings,
                 interruptions: tuple[type[BaseException], ...] = ()) -> None:
        self.settings = settings
        self.interruptions = interruptions
        self._lock = threading.Lock()
        self._runtime: Runtime | None = None
        self._pid = 0

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime = Runtime.build(self.settings, interruptions=self.interruptions)
                self._pid = os.getpid()
            return self._runtime
