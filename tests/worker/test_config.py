"""Unit tests for worker.config: settings from the environment and the timings derived from them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.config import (
    DEFAULT_LIVEKIT_URL,
    DEFAULT_REDIS_URL,
    ConfigError,
    Settings,
)


def test_defaults() -> None:
    """An empty environment gives the documented defaults."""
    s = Settings.from_env({})
    assert s == Settings()
    assert s.redis_url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert s.livekit_url == DEFAULT_LIVEKIT_URL == "http://127.0.0.1:7880"
    assert s.livekit_api_key == ""
    assert s.livekit_api_secret == ""
    assert s.secret_keys == ()
    assert s.visibility_timeout == 3600
    assert s.max_attempts == 10
    assert s.backoff_base == 1.0
    assert s.backoff_cap == 300.0
    assert s.livekit_timeout == 10.0
    assert s.strict_numbers is False
    assert s.results_maxlen == 100_000
    assert s.queue == "trunkline.provision"


def test_blank_values_fall_back_to_defaults() -> None:
    """Variables set to blanks behave as if unset."""
    names = [
        "REDIS_URL",
        "LIVEKIT_URL",
        "TRUNKLINE_VISIBILITY_TIMEOUT",
        "TRUNKLINE_MAX_ATTEMPTS",
        "TRUNKLINE_BACKOFF_BASE",
        "TRUNKLINE_BACKOFF_MAX",
        "TRUNKLINE_LIVEKIT_TIMEOUT",
        "TRUNKLINE_STRICT_NUMBERS",
        "TRUNKLINE_RESULTS_MAXLEN",
        "TRUNKLINE_QUEUE",
        "TRUNKLINE_SECRET_KEYS",
    ]
    assert Settings.from_env({name: "  " for name in names}) == Settings()


def test_every_variable_is_parsed() -> None:
    """Each documented variable lands, trimmed and typed, in its setting."""
    s = Settings.from_env(
        {
            "REDIS_URL": " redis://cache:6380/3 ",
            "LIVEKIT_URL": "https://lk.example.com",
            "LIVEKIT_API_KEY": " APIkey ",
            "LIVEKIT_API_SECRET": "apisecret",
            "TRUNKLINE_SECRET_KEYS": " k1 , ,k2,",
            "TRUNKLINE_VISIBILITY_TIMEOUT": "120",
            "TRUNKLINE_MAX_ATTEMPTS": "3",
            "TRUNKLINE_BACKOFF_BASE": "0.5",
            "TRUNKLINE_BACKOFF_MAX": "45",
            "TRUNKLINE_LIVEKIT_TIMEOUT": "2.5",
            "TRUNKLINE_STRICT_NUMBERS": "yes",
            "TRUNKLINE_RESULTS_MAXLEN": "500",
            "TRUNKLINE_QUEUE": "trunkline.test",
        }
    )
    assert s == Settings(
        redis_url="redis://cache:6380/3",
        livekit_url="https://lk.example.com",
        livekit_api_key="APIkey",
        livekit_api_secret="apisecret",
        secret_keys=("k1", "k2"),
        visibility_timeout=120,
        max_attempts=3,
        backoff_base=0.5,
        backoff_cap=45.0,
        livekit_timeout=2.5,
        strict_numbers=True,
        results_maxlen=500,
        queue="trunkline.test",
    )


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping, from_env reads the process environment."""
    monkeypatch.setenv("TRUNKLINE_VISIBILITY_TIMEOUT", "77")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:1/2")
    s = Settings.from_env()
    assert s.visibility_timeout == 77
    assert s.redis_url == "redis://elsewhere:1/2"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" On ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_strict_numbers_boolean_spellings(raw: str, expected: bool) -> None:
    """TRUNKLINE_STRICT_NUMBERS accepts the usual boolean spellings in any case."""
    assert Settings.from_env({"TRUNKLINE_STRICT_NUMBERS": raw}).strict_numbers is expected


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TRUNKLINE_VISIBILITY_TIMEOUT", "soon"),
        ("TRUNKLINE_VISIBILITY_TIMEOUT", "30.5"),
        ("TRUNKLINE_VISIBILITY_TIMEOUT", "9"),  # below the minimum of 10
        ("TRUNKLINE_MAX_ATTEMPTS", "0"),
        ("TRUNKLINE_MAX_ATTEMPTS", "many"),
        ("TRUNKLINE_RESULTS_MAXLEN", "99"),
        ("TRUNKLINE_BACKOFF_BASE", "fast"),
        ("TRUNKLINE_BACKOFF_BASE", "0"),
        ("TRUNKLINE_BACKOFF_BASE", "nan"),
        ("TRUNKLINE_BACKOFF_MAX", "-1"),
        ("TRUNKLINE_BACKOFF_MAX", "inf"),
        ("TRUNKLINE_BACKOFF_MAX", "NaN"),
        ("TRUNKLINE_LIVEKIT_TIMEOUT", "0.01"),
        ("TRUNKLINE_LIVEKIT_TIMEOUT", "infinity"),
        ("TRUNKLINE_STRICT_NUMBERS", "maybe"),
        ("TRUNKLINE_REDIS_MIN_REPLICAS", "-1"),
        ("TRUNKLINE_REDIS_MIN_REPLICAS", "17"),
        ("TRUNKLINE_REDIS_MIN_REPLICAS", "one"),
        ("TRUNKLINE_REDIS_REPLICA_TIMEOUT_MS", "0"),
        ("TRUNKLINE_REDIS_REPLICA_TIMEOUT_MS", "60001"),
    ],
)
def test_malformed_value_raises_config_error_naming_the_variable(name: str, raw: str) -> None:
    """A malformed, out-of-range or non-finite value raises ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw})


def test_config_error_is_a_value_error() -> None:
    """ConfigError is a ValueError, so generic callers can still catch it."""
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("visibility", [20, 3600])
def test_derived_timings_stay_inside_the_visibility_timeout(visibility: int) -> None:
    """soft limit < time limit < lease < visibility timeout; backoff cap <= half of it."""
    s = Settings.from_env({"TRUNKLINE_VISIBILITY_TIMEOUT": str(visibility)})
    assert 0 < s.task_soft_time_limit < s.task_time_limit < s.lease_seconds < visibility
    assert s.effective_backoff_cap <= visibility / 2
    assert 1.0 <= s.sweep_interval < visibility


def test_derived_timings_for_twenty_seconds() -> None:
    """With V=20 the limits are exactly 10s run, 12s lease and a 10s backoff cap."""
    s = Settings.from_env({"TRUNKLINE_VISIBILITY_TIMEOUT": "20"})
    assert s.task_time_limit == 10.0
    assert s.task_soft_time_limit == 8.0
    assert s.lease_seconds == 12.0
    assert s.effective_backoff_cap == 10.0
    assert s.sweep_interval == 2.5


def test_derived_timings_for_an_hour() -> None:
    """With V=3600 the absolute ceilings apply: 120s run, 144s lease, the 300s configured cap."""
    s = Settings.from_env({"TRUNKLINE_VISIBILITY_TIMEOUT": "3600"})
    assert s.task_time_limit == 120.0
    assert s.lease_seconds == 144.0
    assert s.effective_backoff_cap == 300.0
    assert s.sweep_interval == 30.0


@settings(max_examples=200, database=None, deadline=None)
@given(
    visibility=st.integers(min_value=10, max_value=10_000_000),
    cap=st.floats(min_value=0.01, max_value=1e9, allow_nan=False, allow_infinity=False),
)
def test_derived_timings_hold_for_any_visibility(visibility: int, cap: float) -> None:
    """For every allowed visibility timeout and backoff cap the ordering invariants hold."""
    s = Settings(visibility_timeout=visibility, backoff_cap=cap)
    assert s.task_soft_time_limit < s.task_time_limit < s.lease_seconds < visibility
    assert s.effective_backoff_cap <= min(cap, visibility / 2)


def test_require_livekit_names_what_is_missing() -> None:
    """require_livekit names both, or only the missing, LiveKit credential."""
    with pytest.raises(ConfigError, match="LIVEKIT_API_KEY and LIVEKIT_API_SECRET must be set"):
        Settings().require_livekit()
    with pytest.raises(ConfigError) as info:
        Settings(livekit_api_key="key").require_livekit()
    assert str(info.value) == "LIVEKIT_API_SECRET must be set to reach LiveKit"
    with pytest.raises(ConfigError) as info:
        Settings(livekit_api_secret="secret").require_livekit()
    assert str(info.value) == "LIVEKIT_API_KEY must be set to reach LiveKit"
    Settings(livekit_api_key="key", livekit_api_secret="secret").require_livekit()


def test_require_secret_keys_explains_how_to_get_one() -> None:
    """require_secret_keys names TRUNKLINE_SECRET_KEYS and the keygen command when unset."""
    with pytest.raises(ConfigError, match="TRUNKLINE_SECRET_KEYS must be set") as info:
        Settings().require_secret_keys()
    assert "trunkline keygen" in str(info.value)
    Settings(secret_keys=("k",)).require_secret_keys()


def test_secret_keys_from_env_are_not_echoed_on_error() -> None:
    """A ConfigError for another variable does not repeat the secret keys."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(
            {"TRUNKLINE_SECRET_KEYS": "very-secret-key", "TRUNKLINE_MAX_ATTEMPTS": "x"}
        )
    assert "very-secret-key" not in str(info.value)


# --------------------------------------------------------------------------- Redis Sentinel

SENTINEL_ENV = {
    "TRUNKLINE_REDIS_SENTINELS": " sentinel-a:26379, 10.0.0.2:26380 ,[::1]:26381,",
    "TRUNKLINE_REDIS_SENTINEL_MASTER": " trunkline ",
}


def test_sentinel_settings_are_parsed() -> None:
    """Sentinels (IPv6 in brackets), master name, passwords and database land in settings."""
    s = Settings.from_env({
        **SENTINEL_ENV,
        "TRUNKLINE_REDIS_SENTINEL_PASSWORD": "sentinel pw",
        "TRUNKLINE_REDIS_PASSWORD": "primary-pw ",
        "TRUNKLINE_REDIS_DB": "3",
        "REDIS_URL": "redis://ignored:1/0",
    })
    assert s.uses_sentinel
    assert s.redis_sentinels == (("sentinel-a", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert s.redis_sentinel_master == "trunkline"
    assert s.redis_sentinel_password == "sentinel pw"
    assert s.redis_password == "primary-pw "  # passwords are taken as given
    assert s.redis_db == 3
    assert "sentinel pw" not in repr(s) and "primary-pw" not in repr(s)


def test_without_sentinels_redis_url_is_used() -> None:
    """No TRUNKLINE_REDIS_SENTINELS (or only blanks): REDIS_URL, no Sentinel."""
    s = Settings.from_env({"TRUNKLINE_REDIS_SENTINELS": " , ", "REDIS_URL": "redis://h:1/4"})
    assert not s.uses_sentinel
    assert s.redis_url == "redis://h:1/4"
    assert (s.redis_sentinels, s.redis_sentinel_master, s.redis_db) == ((), "", 0)


@pytest.mark.parametrize(
    ("sentinels", "message"),
    [
        ("sentinel-a", "'sentinel-a' is not host:port"),
        (":26379", "':26379' is not host:port"),
        ("::1:26379", "write an IPv6 address as"),
        ("h:0", "'h:0' needs a port from 1 to 65535"),
        ("h:65536", "needs a port from 1 to 65535"),
        ("h:port", "'h:port' needs a port"),
        ("h:1,h:1", "'h:1' is listed twice"),
        ("user@h:1", "'user@h:1' is not host:port"),
        ("redis://h:1", "is not host:port"),
    ],
)
def test_malformed_sentinels_name_the_variable(sentinels: str, message: str) -> None:
    """Each malformed TRUNKLINE_REDIS_SENTINELS entry is refused, naming the variable."""
    with pytest.raises(ConfigError, match=r"^TRUNKLINE_REDIS_SENTINELS: ") as info:
        Settings.from_env({**SENTINEL_ENV, "TRUNKLINE_REDIS_SENTINELS": sentinels})
    assert message in str(info.value)


def test_sentinels_need_a_master_name() -> None:
    """Sentinels without TRUNKLINE_REDIS_SENTINEL_MASTER (or a name with a space) are refused."""
    with pytest.raises(ConfigError, match=r"^TRUNKLINE_REDIS_SENTINEL_MASTER must be set when "
                                          "TRUNKLINE_REDIS_SENTINELS is"):
        Settings.from_env({"TRUNKLINE_REDIS_SENTINELS": "h:26379"})
    with pytest.raises(ConfigError, match=r"^TRUNKLINE_REDIS_SENTINEL_MASTER must not contain"):
        Settings.from_env({**SENTINEL_ENV, "TRUNKLINE_REDIS_SENTINEL_MASTER": "my master"})


@pytest.mark.parametrize("name", ["TRUNKLINE_REDIS_SENTINEL_MASTER",
                                  "TRUNKLINE_REDIS_SENTINEL_PASSWORD", "TRUNKLINE_REDIS_DB",
                                  "TRUNKLINE_REDIS_PASSWORD"])
def test_sentinel_only_settings_without_sentinels_are_refused(name: str) -> None:
    """A Sentinel-only setting without TRUNKLINE_REDIS_SENTINELS is an error, not ignored."""
    with pytest.raises(ConfigError, match=f"^{name} is only used with TRUNKLINE_REDIS_SENTINELS"):
        Settings.from_env({name: "x", "REDIS_URL": "redis://h:1/0"})


def test_sentinel_database_is_validated() -> None:
    """TRUNKLINE_REDIS_DB is a non-negative integer."""
    for raw in ("-1", "two"):
        with pytest.raises(ConfigError, match=r"^TRUNKLINE_REDIS_DB must be"):
            Settings.from_env({**SENTINEL_ENV, "TRUNKLINE_REDIS_DB": raw})


def test_sentinel_passwords_are_not_echoed_on_error() -> None:
    """A bad Sentinel setting does not repeat the passwords."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**SENTINEL_ENV, "TRUNKLINE_REDIS_SENTINEL_PASSWORD": "pw-one",
                           "TRUNKLINE_REDIS_PASSWORD": "pw-two", "TRUNKLINE_REDIS_DB": "x"})
    assert "pw-one" not in str(info.value) and "pw-two" not in str(info.value)


def test_replica_confirmation_settings() -> None:
    """Off by default; read as given."""
    assert (Settings.from_env({}).redis_min_replicas,
            Settings.from_env({}).redis_replica_timeout_ms) == (0, 1000)
    given = Settings.from_env({"TRUNKLINE_REDIS_MIN_REPLICAS": "2",
                               "TRUNKLINE_REDIS_REPLICA_TIMEOUT_MS": "250"})
    assert (given.redis_min_replicas, given.redis_replica_timeout_ms) == (2, 250)
