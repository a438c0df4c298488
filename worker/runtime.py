"""Wiring: builds the collaborators a worker process needs, once per process.

Built lazily and per process id, because a prefork pool forks after the app is created and an
httpx connection pool or a Redis connection must not be shared across a fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from worker.chaos import hooks_from_env
from worker.config import Settings
from worker.lifecycle import ReleaseSaga, UpdateSaga
from worker.livekit import LiveKitSIP
from worker.records import JobKind
from worker.runner import JobRunner, Saga
from worker.saga import ProvisioningSaga
from worker.store import JobStore
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
        client = redis_client(settings)
        store = JobStore(client, results_maxlen=settings.results_maxlen)
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


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )


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
