"""Unit tests for producers.api.settings: the HTTP producer's environment."""

from __future__ import annotations

import pytest

from producers.api.settings import DEFAULT_MAX_BODY, ApiSettings
from worker.config import ConfigError


def test_defaults() -> None:
    """Unset variables give the documented defaults."""
    settings = ApiSettings.from_env({})
    assert settings.wait_seconds == 30.0
    assert settings.max_body == DEFAULT_MAX_BODY == 1024 * 1024
    assert settings.rate_limit == 60
    assert settings.webhook_sources == {}
    assert settings.webhook_tolerance == 300
    assert settings.ready_timeout == 2.0


def test_values_are_read() -> None:
    """Each variable is read."""
    settings = ApiSettings.from_env({
        "TRUNKLINE_API_WAIT_SECONDS": "2.5", "TRUNKLINE_API_MAX_BODY": "4096",
        "TRUNKLINE_API_RATE_LIMIT": "0", "TRUNKLINE_WEBHOOK_TOLERANCE": "60",
        "TRUNKLINE_API_READY_TIMEOUT": "0.5",
        "TRUNKLINE_WEBHOOK_SOURCES": '{"crm": {"secret": "whsec_' + "A" * 24 + '", '
                                     '"org_id": "o"}}',
    })
    assert (settings.wait_seconds, settings.max_body, settings.rate_limit) == (2.5, 4096, 0)
    assert settings.webhook_tolerance == 60
    assert settings.ready_timeout == 0.5
    assert set(settings.webhook_sources) == {"crm"}


@pytest.mark.parametrize(("name", "value"), [
    ("TRUNKLINE_API_WAIT_SECONDS", "-1"), ("TRUNKLINE_API_WAIT_SECONDS", "nan"),
    ("TRUNKLINE_API_MAX_BODY", "10"), ("TRUNKLINE_API_MAX_BODY", "2048.5"),
    ("TRUNKLINE_API_RATE_LIMIT", "x"), ("TRUNKLINE_WEBHOOK_SOURCES", "{"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """A malformed variable raises ConfigError naming it."""
    with pytest.raises(ConfigError, match=name):
        ApiSettings.from_env({name: value})
