"""The chaos suite runs on the integration suite's stack and fixtures."""

from tests.integration.conftest import (  # noqa: F401 - re-exported pytest fixtures
    clean,
    client,
    client_factory,
    livekit,
    redis_db,
    stack,
    unused_tcp_port,
    worker_factory,
)
