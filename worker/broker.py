"""kombu's Sentinel transport, made to survive the reconnection after a primary crash.

The bug (kombu 5.7 with Celery 5; upstream kombu #582 and #970 are the same family), traced on
a real Sentinel group (tests/integration/test_broker_failover.py). When the broker connection
fails, Celery's consumer (`on_connection_error_after_connected`) runs `connection.collect()`,
then `connection.close()`. `collect()` closes the default channel (the task consumer's), then
every channel of the transport, newest first, then drops the transport's `client`
(`transport.client = None`). While the sentinels still name the dead primary, two of those
closes stop half way, each with a ConnectionError that kombu swallows:

1. the default channel has a BRPOP in flight, so Channel.close reads its reply first
   (`_brpop_read`) and raises before the channel counts as closed;
2. the remote-control (pidbox) channel deletes its auto-delete fanout queue on the dead
   primary (`queue_delete`), which ends the transport's loop before it reaches the default
   channel a second time.

So the default channel, holding the unacked deliveries, is still open when `client` is None.
`connection.close()` then closes it: Channel.close disconnects its pools, and
QoS.restore_unacked ("Restoring N unacknowledged message(s)") asks for a new pool, whose
`_connparams` reads `self.connection.client.hostname`: AttributeError. That is no connection
error, so it escapes Celery's `ignore_errors` and the worker exits ("Unrecoverable error").

The fix: a channel remembers the kombu Connection it was opened for and builds that pool from
it when the transport has already let go of it, so the restore does what kombu meant: it asks
the sentinels for the primary and puts the deliveries back on its queue. If they still name the
dead server, the restore fails with a ConnectionError, which kombu ignores; the deliveries stay
in the broker's `unacked` hash, from where kombu's visibility-timeout restore (and, for a job,
our sweeper at its deadline) brings them back, as after any crash. Skipping the restore after
a collect would lose nothing either, but it is the less safe choice: whenever the primary is
reachable by the time of the close (a promotion already done, or a network blip rather than a
crash), the deliveries would wait for the visibility timeout (an hour by default) instead of
going back at once, and it would rely on the `unacked` entry having reached the replica.
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis

TRANSPORT_PATH = "worker.broker:FailoverSafeSentinelTransport"
# Logged each time the fix takes effect, where kombu alone would have raised AttributeError.
RESTORE_AFTER_COLLECT = "restoring unacked deliveries of a broker connection already released"

logger = logging.getLogger(__name__)

# kombu.transport.redis is unannotated and mypy sees only part of its classes; taken as Any,
# the overrides below can call the private methods they wrap.
_SentinelChannel: Any = kombu_redis.SentinelChannel
_SentinelTransport: Any = kombu_redis.SentinelTransport


class FailoverSafeSentinelChannel(_SentinelChannel):  # type: ignore[misc]  # see _SentinelChannel
    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        # The kombu Connection (URL, alternates, password, transport options) behind the
        # transport; kept because Connection.collect() clears the transport's reference.
        self._opened_for = connection.client
        super().__init__(connection, *args, **kwargs)

    def _get_pool(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is not None:
            return super()._get_pool(asynchronous)
        # Collected: only this channel's close is left to run (the restore of its unacked
        # deliveries). The consumer runs it on its own thread; the transport is discarded
        # right after, so lending it the connection back for the call affects nothing else.
        logger.info(RESTORE_AFTER_COLLECT)
        transport.client = self._opened_for
        try:
            return super()._get_pool(asynchronous)
        finally:
            transport.client = None

    def close(self) -> None:
        super().close()
        # The restore inside close() may have opened a pool (and sentinel connections) after
        # kombu closed them; close them too instead of waiting for the garbage collector.
        self._disconnect_pools()


class FailoverSafeSentinelTransport(_SentinelTransport):  # type: ignore[misc]  # as above
    Channel = FailoverSafeSentinelChannel


def use_failover_safe_sentinel_transport() -> None:
    """Make kombu's `sentinel://` scheme use FailoverSafeSentinelTransport in this process.

    The scheme itself has to be re-pointed: an own scheme would stop kombu from reading the
    sentinel list (SentinelChannel only takes alternates whose scheme is `sentinel`), and a
    transport class given as Celery's `broker_transport` is dropped on the first failover to
    the next sentinel URL (Connection.switch takes the transport from the URL's scheme again).
    """
    kombu.transport.TRANSPORT_ALIASES["sentinel"] = TRANSPORT_PATH
    # get_transport_cls caches by name; a connection made earlier may have cached kombu's own.
    kombu.transport._transport_cache.pop(  # type: ignore[attr-defined]  # private, unannotated
        "sentinel", None)
