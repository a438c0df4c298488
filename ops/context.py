"""What every ops command needs: settings, Redis, LiveKit, and one way of failing.

Collaborators are built lazily, so a command that only reads Redis never needs LiveKit's
credentials. `ops_context()` turns an unreachable Redis or LiveKit into one line naming the
variable to check (exit code 3), and a bad setting into one line naming the setting (exit
code 2). Nothing here prints a secret: URLs are shown with their password masked.

Tests replace `make_context` to run commands against fakeredis and a fake LiveKit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import redis
import typer
from rich.console import Console
from rich.markup import escape

from worker.config import ConfigError, Settings, format_sentinels
from worker.livekit import (
    LiveKitError,
    LiveKitRetryableError,
    LiveKitSIP,
    LiveKitUnauthorized,
)
from worker.runtime import redis_client
from worker.store import JobStore, NotReplicated, UnreadableRecord
from worker.vault import Vault, VaultError

if TYPE_CHECKING:
    from producers.client import ProvisioningClient

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


class OpsContext:
    """Settings and the clients built from them, each made on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_conn: redis.Redis | None = None,
        livekit: LiveKitSIP | None = None,
        client_factory: Callable[[OpsContext], ProvisioningClient] | None = None,
    ) -> None:
        self.settings = settings
        self._redis = redis_conn
        self._livekit = livekit
        self._client_factory = client_factory
        self._owned: list[Callable[[], None]] = []

    @classmethod
    def from_env(cls) -> OpsContext:
        return cls(Settings.from_env())

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis_client(self.settings)
            self._owned.append(self._redis.close)
        return self._redis

    @cached_property
    def store(self) -> JobStore:
        return JobStore.for_settings(self.redis, self.settings)

    @property
    def livekit(self) -> LiveKitSIP:
        if self._livekit is None:
            self.settings.require_livekit()
            self._livekit = LiveKitSIP(
                self.settings.livekit_url, self.settings.livekit_api_key,
                self.settings.livekit_api_secret, timeout=self.settings.livekit_timeout,
            )
            self._owned.append(self._livekit.close)
        return self._livekit

    def vault(self, *, required: bool = False) -> Vault | None:
        """The vault from TRUNKLINE_SECRET_KEYS; None when unset and not required."""
        if not self.settings.secret_keys:
            if required:
                self.settings.require_secret_keys()
            return None
        return Vault(self.settings.secret_keys)

    def provisioning_client(self) -> ProvisioningClient:
        """A producer client sharing this context's Redis (needs TRUNKLINE_SECRET_KEYS)."""
        if self._client_factory is not None:
            return self._client_factory(self)
        # Celery is imported only by the commands that send messages.
        from producers.client import ProvisioningClient  # noqa: PLC0415
        from worker.app import create_app  # noqa: PLC0415

        vault = self.vault(required=True)
        assert vault is not None  # noqa: S101  # required=True raised otherwise
        app = create_app(self.settings)
        self._owned.append(app.close)
        return ProvisioningClient(self.store, vault, app, self.settings)

    def close(self) -> None:
        for close in reversed(self._owned):
            with contextlib.suppress(Exception):
                close()
        self._owned.clear()


def _from_env() -> OpsContext:
    return OpsContext.from_env()


# Replaced by tests; commands look it up on the module at call time.
make_context: Callable[[], OpsContext] = _from_env


def redact_url(url: str) -> str:
    """The URL with any password in it masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print one error line and return the Exit to raise (`raise fail(...)`)."""
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def redis_unreachable_message(settings: Settings, exc: BaseException) -> str:
    if settings.uses_sentinel:
        where = (f"Sentinel master {settings.redis_sentinel_master!r} via "
                 f"{format_sentinels(settings.redis_sentinels)} (check TRUNKLINE_REDIS_SENTINELS "
                 "and TRUNKLINE_REDIS_SENTINEL_MASTER)")
    else:
        where = f"{redact_url(settings.redis_url)} (check REDIS_URL)"
    return f"cannot reach Redis at {where}: {_one_line(exc)}"


@contextlib.contextmanager
def ops_context() -> Iterator[OpsContext]:
    """Yield a context; report outages and bad settings as one line and an exit code."""
    try:
        ctx = make_context()
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    try:
        yield ctx
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise fail(redis_unreachable_message(ctx.settings, exc), EXIT_UNREACHABLE) from None
    except LiveKitUnauthorized:
        raise fail(
            f"LiveKit at {redact_url(ctx.settings.livekit_url)} refused our credentials "
            "(check LIVEKIT_API_KEY and LIVEKIT_API_SECRET)", EXIT_UNREACHABLE,
        ) from None
    except LiveKitRetryableError as exc:
        raise fail(
            f"cannot reach LiveKit at {redact_url(ctx.settings.livekit_url)} (check "
            f"LIVEKIT_URL): {exc.code}: {_one_line(exc.message)}", EXIT_UNREACHABLE,
        ) from None
    except LiveKitError as exc:
        raise fail(f"LiveKit refused a call: {exc.code}: {_one_line(exc.message)}") from None
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    except VaultError as exc:
        raise fail(str(exc)) from None
    except NotReplicated as exc:
        raise fail(f"{exc}; it was not acknowledged, run the command again to check") from None
    except UnreadableRecord as exc:
        raise fail(f"{exc}; it is dead-lettered with code unreadable_record (see `trunkline "
                   "dlq list`); other records are unaffected") from None
    except Exception as exc:
        # The Celery broker is Redis too: kombu's OperationalError means Redis is down.
        if type(exc).__name__ == "OperationalError" and type(exc).__module__.startswith("kombu"):
            raise fail(redis_unreachable_message(ctx.settings, exc), EXIT_UNREACHABLE) from None
        raise
    finally:
        ctx.close()


def _one_line(value: object) -> str:
    return " ".join(str(value).split())[:300]
