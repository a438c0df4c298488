"""A worker's broker connection after the Redis primary is SIGKILLed behind Sentinel (issue #14).

kombu's Sentinel transport used to raise AttributeError("'NoneType' object has no attribute
'hostname'") from the close Celery runs on the failed connection, which took the worker down
(worker/broker.py says how). These tests put a kombu connection in the state a worker's is in
at the crash, on a Sentinel group of their own, and run the same calls Celery's consumer runs
(`on_connection_error_after_connected`): the unacked delivery is given back, never lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from kombu.common import ignore_errors

from tests.integration.conftest import wait_for
from tests.support.sentinel import SentinelGroup, free_ports, sentinel_group
from worker.broker import (
    RESTORE_AFTER_COLLECT,
    FailoverSafeSentinelTransport,
    use_failover_safe_sentinel_transport,
)
from worker.config import Settings
from worker.runtime import broker_transport_options, broker_url

pytestmark = pytest.mark.integration

QUEUE = "broker-failover"
BAIT = {"job": "caught-in-the-crash"}
# Bounds, not expectations: the group's sentinels promote the replica about 3 s after the kill.
FAILOVER_BOUND = 30.0
REDELIVERY_BOUND = 15.0
# Celery's COLLECT_SOCKET_TIMEOUT.
COLLECT_SOCKET_TIMEOUT = 5.0


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    ports = [str(port) for port in free_ports(5)]
    with sentinel_group({**os.environ, "TRUNKLINE_STACK_DIR": str(tmp_path / "sentinels"),
                         "TRUNKLINE_SENTINEL_MASTER": "trunkline-broker-failover",
                         "TRUNKLINE_SENTINEL_REDIS_PORTS": ",".join(ports[:2]),
                         "TRUNKLINE_SENTINEL_PORTS": ",".join(ports[2:])}) as made:
        yield made


def broker_connection(settings: Settings, **options: Any) -> kombu.Connection:
    use_failover_safe_sentinel_transport()  # as the app factory does
    return kombu.Connection(broker_url(settings),
                            transport_options={**broker_transport_options(settings), **options})


def promoted(group: SentinelGroup, port: int) -> bool:
    return {group.primary_named_by(sentinel) for sentinel in group.sentinel_ports} == {port}


@pytest.mark.parametrize("promoted_before_close", [True, False],
                         ids=["closed-after-promotion", "closed-before-promotion"])
def test_the_connection_a_primary_crash_broke_closes_and_its_delivery_comes_back(
    group: SentinelGroup, promoted_before_close: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """Celery's close of the broken connection raises nothing, and the delivery it held
    unacked is consumed again from the new primary: put back at once when the sentinels
    already name it, else from the `unacked` hash after the visibility timeout."""
    old_port, new_port = group.data_ports
    old_primary, new_primary = group.server(old_port), group.server(new_port)
    settings = Settings.from_env(group.env)
    connection = broker_connection(settings)
    queue = kombu.Queue(QUEUE, routing_key=QUEUE)
    try:
        assert isinstance(connection.transport, FailoverSafeSentinelTransport)
        with connection.Producer() as producer:
            producer.publish(BAIT, routing_key=QUEUE, declare=[queue])
        delivered: list[Any] = []
        # Celery's task consumer: the default channel, acknowledging late.
        task_consumer = kombu.Consumer(connection, queues=[queue],
                                       callbacks=[lambda body, _: delivered.append(body)])
        task_consumer.consume()
        connection.drain_events(timeout=10)
        assert delivered == [BAIT]
        # In the worker's event loop the next BRPOP is already sent when the primary dies.
        task_channel: Any = task_consumer.channel
        task_channel._brpop_start()
        # Celery's remote-control mailbox: an auto-delete fanout queue on a channel of its own.
        mailbox = kombu.Queue(f"{QUEUE}.pidbox", kombu.Exchange(f"{QUEUE}.pidbox", "fanout"),
                              auto_delete=True)
        kombu.Consumer(connection.channel(), queues=[mailbox], no_ack=True).consume()
        # The replica has the delivery's `unacked` entry before the crash.
        assert old_primary.wait(1, 5000) >= 1
        os.kill(int(old_primary.info("server")["process_id"]), signal.SIGKILL)
        if promoted_before_close:
            wait_for(lambda: promoted(group, new_port), FAILOVER_BOUND,
                     "every sentinel names the replica as primary", interval=0.05)

        # What Celery's consumer runs on the connection error. Before worker/broker.py the
        # close raised AttributeError, which ignore_errors does not ignore.
        with caplog.at_level(logging.INFO, logger="worker.broker"):
            with contextlib.suppress(Exception):  # as Celery does
                connection.collect(socket_timeout=COLLECT_SOCKET_TIMEOUT)
            ignore_errors(connection, connection.close)
    finally:
        with contextlib.suppress(Exception):
            connection.release()

    if promoted_before_close:
        # Put back on the new primary's queue by the close itself.
        assert new_primary.llen(QUEUE) == 1
        assert new_primary.hlen("unacked") == 0
    else:
        # The state kombu alone failed in: the task channel still open once the connection
        # was released. Its close could not reach a primary; the entry waits in `unacked`.
        assert RESTORE_AFTER_COLLECT in caplog.messages
        wait_for(lambda: promoted(group, new_port), FAILOVER_BOUND,
                 "every sentinel names the replica as primary", interval=0.05)
        assert new_primary.hlen("unacked") == 1
    # Either way, the next worker to connect gets it (after a one-second visibility timeout
    # when it was left unacked: kombu's restore of overdue deliveries).
    redelivered: list[Any] = []

    def take(body: Any, message: kombu.Message) -> None:
        redelivered.append(body)
        message.ack()

    with (broker_connection(settings, visibility_timeout=1) as reconnected,
          reconnected.Consumer(queues=[queue], callbacks=[take])):
        wait_for(lambda: drain_once(reconnected) or bool(redelivered), REDELIVERY_BOUND,
                 "the delivery caught in the crash comes back", interval=0)
    assert redelivered == [BAIT]
    assert new_primary.hlen("unacked") == 0


def drain_once(connection: kombu.Connection) -> bool:
    with contextlib.suppress(TimeoutError):
        connection.drain_events(timeout=0.5)
    return False
