"""Unit tests for worker.runtime's Redis factory and broker settings: REDIS_URL or Sentinel,
chosen by settings alone. Nothing here opens a socket."""

from __future__ import annotations

from typing import Any

import kombu.transport
import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from worker import broker, runtime
from worker.app import create_app
from worker.config import Settings
from worker.runtime import (
    FollowingSentinelPool,
    broker_transport_options,
    broker_url,
    redis_client,
)

SENTINEL = Settings.from_env({
    "TRUNKLINE_REDIS_SENTINELS": "s1:26379,[::1]:26380",
    "TRUNKLINE_REDIS_SENTINEL_MASTER": "trunkline",
    "TRUNKLINE_REDIS_SENTINEL_PASSWORD": "sentinel-pw",
    "TRUNKLINE_REDIS_PASSWORD": "p@ss/word",
    "TRUNKLINE_REDIS_DB": "3",
    "TRUNKLINE_VISIBILITY_TIMEOUT": "120",
})
PLAIN = Settings.from_env({"REDIS_URL": "redis://cache:6380/4",
                           "TRUNKLINE_VISIBILITY_TIMEOUT": "120"})


def test_redis_url_gives_a_plain_client() -> None:
    """Without sentinels the client is REDIS_URL's, with the timeouts asked for."""
    client = redis_client(PLAIN, socket_timeout=2.5, socket_connect_timeout=1.5)
    pool = client.connection_pool
    assert not isinstance(pool, SentinelConnectionPool)
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache", 6380, 4)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)


def test_sentinels_give_a_master_client_that_follows_the_primary() -> None:
    """With sentinels the client asks them for the primary (master_for), with the primary's
    database and password, and the sentinels' own password only towards the sentinels."""
    client = redis_client(SENTINEL, socket_timeout=2.5)
    pool: Any = client.connection_pool
    assert isinstance(pool, FollowingSentinelPool)
    assert pool.service_name == "trunkline" and pool.is_master
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"]) == (3, "p@ss/word", 2.5)
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26379), ("::1", 26380)]
    assert {s["password"] for s in sentinels} == {"sentinel-pw"}


def test_no_sentinel_password_sends_none() -> None:
    """Without TRUNKLINE_REDIS_SENTINEL_PASSWORD / TRUNKLINE_REDIS_PASSWORD no AUTH is sent."""
    settings = Settings.from_env({"TRUNKLINE_REDIS_SENTINELS": "s1:26379",
                                  "TRUNKLINE_REDIS_SENTINEL_MASTER": "m"})
    pool: Any = redis_client(settings).connection_pool
    assert pool.connection_kwargs["password"] is None
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs.get(
        "password") is None


class CountingSentinels:
    """Stands in for redis.sentinel.Sentinel: answers discover_master, counting the calls."""

    def __init__(self, *answers: tuple[str, int] | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def discover_master(self, service_name: str) -> tuple[str, int]:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Connections handed out by the base pool, which is replaced so nothing connects."""
    handed: list[str] = []

    def get_connection(self: Any, *args: Any, **kwargs: Any) -> str:
        handed.append("connection")
        return "connection"

    monkeypatch.setattr(SentinelConnectionPool, "get_connection", get_connection)
    return handed


def test_pool_asks_the_sentinels_at_most_once_per_interval(
        monkeypatch: pytest.MonkeyPatch, taken: list[str]) -> None:
    """Taking connections re-asks for the primary only after PRIMARY_CHECK_INTERVAL."""
    sentinels = CountingSentinels(("10.0.0.1", 6379))
    pool = FollowingSentinelPool("trunkline", sentinels)
    monkeypatch.setattr(runtime, "PRIMARY_CHECK_INTERVAL", 3600.0)
    for _ in range(5):
        pool.get_connection()
    assert sentinels.calls == 0 and len(taken) == 5
    monkeypatch.setattr(runtime, "PRIMARY_CHECK_INTERVAL", 0.0)
    for _ in range(3):
        pool.get_connection()
    assert sentinels.calls == 3


def test_pool_drops_idle_connections_when_the_primary_moved(
        monkeypatch: pytest.MonkeyPatch, taken: list[str]) -> None:
    """A new primary address disconnects the idle connections (redis-py's own reaction);
    the same address leaves them alone."""
    monkeypatch.setattr(runtime, "PRIMARY_CHECK_INTERVAL", 0.0)
    sentinels = CountingSentinels(("10.0.0.1", 6379), ("10.0.0.1", 6379), ("10.0.0.2", 6379))
    pool = FollowingSentinelPool("trunkline", sentinels)
    dropped: list[bool] = []
    monkeypatch.setattr(pool, "disconnect",
                        lambda inuse_connections=True: dropped.append(inuse_connections))
    pool.get_connection()  # first answer: the address is learnt
    pool.get_connection()  # same address
    assert dropped == [False]
    pool.get_connection()  # moved
    assert dropped == [False, False]
    assert pool.master_address == ("10.0.0.2", 6379)


def test_pool_leaves_a_sentinel_outage_to_the_command(
        monkeypatch: pytest.MonkeyPatch, taken: list[str]) -> None:
    """No sentinel answering the periodic check does not fail the command by itself."""
    monkeypatch.setattr(runtime, "PRIMARY_CHECK_INTERVAL", 0.0)
    pool = FollowingSentinelPool("trunkline", CountingSentinels(redis.ConnectionError("down")))
    assert pool.get_connection() == "connection"


def test_broker_url_and_options() -> None:
    """REDIS_URL as is; with Sentinel, kombu's sentinel:// list carrying the primary's
    password (URL-quoted) and database, and the master name in the transport options."""
    assert broker_url(PLAIN) == "redis://cache:6380/4"
    assert broker_transport_options(PLAIN) == {"visibility_timeout": 120}
    assert broker_url(SENTINEL) == ("sentinel://:p%40ss%2Fword@s1:26379/3;"
                                    "sentinel://:p%40ss%2Fword@[::1]:26380/3")
    assert broker_transport_options(SENTINEL) == {
        "visibility_timeout": 120,
        "master_name": "trunkline",
        "sentinel_kwargs": {"socket_timeout": 5.0, "socket_connect_timeout": 5.0,
                            "password": "sentinel-pw"},
    }


def test_celery_app_uses_the_sentinel_transport() -> None:
    """create_app configures Celery's broker from the same settings."""
    app = create_app(SENTINEL)
    try:
        assert app.conf.broker_transport_options["master_name"] == "trunkline"
        assert app.conf.broker_transport_options["visibility_timeout"] == 120
        with app.connection_for_write() as conn:
            assert conn.transport_cls == "sentinel"
            assert conn.hostname == "s1" and conn.port == 26379
            assert conn.password == "p@ss/word" and conn.virtual_host == "3"
    finally:
        app.close()


def test_the_app_factory_gives_sentinel_urls_the_crash_safe_transport(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu's `sentinel://` scheme resolves to worker.broker's transport once an app with
    Sentinel settings exists (the URL builder itself changes nothing global)."""
    monkeypatch.setitem(kombu.transport.TRANSPORT_ALIASES, "sentinel",
                        "kombu.transport.redis:SentinelTransport")
    broker_url(SENTINEL)
    assert kombu.transport.TRANSPORT_ALIASES["sentinel"] != broker.TRANSPORT_PATH
    app = create_app(SENTINEL)
    try:
        assert kombu.transport.TRANSPORT_ALIASES["sentinel"] == broker.TRANSPORT_PATH
        with app.connection_for_write() as conn:
            assert isinstance(conn.transport, broker.FailoverSafeSentinelTransport)
    finally:
        app.close()
