"""Unit tests for producers.keys: API keys with a secret shown once and only a hash stored."""

from __future__ import annotations

import json

import fakeredis
import pytest
from typer.testing import CliRunner

import ops.cli
import producers.keys as module
from producers.keys import (
    ApiKeys,
    UnknownKey,
    hash_secret,
    valid_org_id,
    verify_secret,
)
from tests.producers.conftest import redis_bytes


@pytest.fixture
def keys() -> ApiKeys:
    return ApiKeys(fakeredis.FakeRedis(), iterations=1000)


def test_created_key_has_the_documented_formats(keys: ApiKeys) -> None:
    """Key ids start with sk_, secrets with s3cr3t_; the JSON form names all three."""
    created = keys.create("org_1")
    assert created.api_key.startswith("sk_")
    assert created.api_secret.startswith("s3cr3t_")
    assert len(created.api_secret) > 40
    assert created.as_json() == {"api_key": created.api_key, "api_secret": created.api_secret,
                                 "org_id": "org_1"}


def test_only_a_hash_is_stored(keys: ApiKeys) -> None:
    """The secret appears nowhere in Redis; the record holds a salted PBKDF2 hash."""
    created = keys.create("org_1")
    assert created.api_secret.encode() not in redis_bytes(keys.redis)
    record = keys.get(created.api_key)
    assert record is not None
    assert record.secret_hash.startswith("pbkdf2_sha256$1000$")
    assert "secret_hash" not in record.public_view()


def test_authenticate(keys: ApiKeys) -> None:
    """The right secret gives the org; a wrong one, an unknown id or a revoked key gives None."""
    created = keys.create("org_1")
    assert keys.authenticate(created.api_key, created.api_secret) == "org_1"
    assert keys.authenticate(created.api_key, created.api_secret[:-1]) is None
    assert keys.authenticate("sk_" + "f" * 32, created.api_secret) is None
    assert keys.authenticate("garbage" * 50, "x" * 1000) is None
    keys.revoke(created.api_key)
    assert keys.authenticate(created.api_key, created.api_secret) is None


def test_revoke_is_idempotent_and_unknown_keys_raise(keys: ApiKeys) -> None:
    """Revoking twice keeps the first revocation time; an unknown id raises UnknownKey."""
    created = keys.create("org_1")
    first = keys.revoke(created.api_key)
    assert first.revoked
    assert keys.revoke(created.api_key).revoked_at == first.revoked_at
    with pytest.raises(UnknownKey):
        keys.revoke("sk_" + "0" * 32)


def test_list_by_org_and_all(keys: ApiKeys) -> None:
    """list() shows every key, list(org) only that organisation's."""
    a1, a2, b1 = keys.create("org_a"), keys.create("org_a"), keys.create("org_b")
    assert {r.key_id for r in keys.list("org_a")} == {a1.api_key, a2.api_key}
    assert {r.key_id for r in keys.list()} == {a1.api_key, a2.api_key, b1.api_key}


@pytest.mark.parametrize("org", ["", " x", "a" * 129, "org/1", "org 1"])
def test_bad_org_ids_are_refused(keys: ApiKeys, org: str) -> None:
    """Organisation ids are short, printable identifiers."""
    assert not valid_org_id(org)
    with pytest.raises(ValueError, match="org id"):
        keys.create(org)


@pytest.mark.parametrize("encoded", ["", "pbkdf2_sha256$x$y$z", "md5$1$AA$AA",
                                     "pbkdf2_sha256$0$AA$AA", "a$b"])
def test_malformed_hashes_never_verify(encoded: str) -> None:
    """A malformed or foreign hash string verifies nothing."""
    assert not verify_secret("anything", encoded)


def test_hash_round_trip_and_salt() -> None:
    """The same secret hashes differently each time and verifies against each."""
    one, two = hash_secret("s", iterations=100), hash_secret("s", iterations=100)
    assert one != two
    assert verify_secret("s", one) and verify_secret("s", two)
    assert not verify_secret("t", one)


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    original = module.verify_secret

    def counting(secret: str, encoded: str) -> bool:
        calls.append(secret)
        return original(secret, encoded)

    monkeypatch.setattr(module, "verify_secret", counting)
    return calls


def test_a_verified_secret_skips_the_slow_check_next_time(
    keys: ApiKeys, pbkdf2_calls: list[str]
) -> None:
    created = keys.create("org_1")

    for _ in range(3):
        assert keys.authenticate(created.api_key, created.api_secret) == "org_1"

    assert pbkdf2_calls == [created.api_secret]


def test_wrong_secrets_pay_the_slow_check_every_time(
    keys: ApiKeys, pbkdf2_calls: list[str]
) -> None:
    created = keys.create("org_1")
    assert keys.authenticate(created.api_key, created.api_secret) == "org_1"

    for _ in range(3):
        assert keys.authenticate(created.api_key, created.api_secret + "x") is None

    assert len(pbkdf2_calls) == 4


def test_a_remembered_key_stops_at_once_when_revoked(keys: ApiKeys) -> None:
    created = keys.create("org_1")
    assert keys.authenticate(created.api_key, created.api_secret) == "org_1"

    keys.revoke(created.api_key)

    assert keys.authenticate(created.api_key, created.api_secret) is None


def test_a_remembered_key_whose_hash_changed_is_checked_again(
    keys: ApiKeys, pbkdf2_calls: list[str]
) -> None:
    """A key re-hashed in the store (e.g. new iterations) is verified against the new hash."""
    created = keys.create("org_1")
    assert keys.authenticate(created.api_key, created.api_secret) == "org_1"
    record = keys.get(created.api_key)
    assert record is not None
    keys.redis.set(keys._key(created.api_key), record.model_copy(update={
        "secret_hash": hash_secret("another secret", iterations=1000)}).model_dump_json())

    assert keys.authenticate(created.api_key, created.api_secret) is None
    assert len(pbkdf2_calls) == 2


def test_operator_keys_open_only_the_operator_check(keys: ApiKeys) -> None:
    """An operator key never acts for an organisation, and an organisation key is no
    operator key: each check accepts its own role only, with the right secret, while live."""
    operator = keys.create_operator(name="on-call")
    org_key = keys.create("org_1")

    assert keys.authenticate_operator(operator.api_key, operator.api_secret) == operator.api_key
    assert keys.authenticate(operator.api_key, operator.api_secret) is None
    assert keys.authenticate_operator(org_key.api_key, org_key.api_secret) is None
    assert keys.authenticate_operator(operator.api_key, operator.api_secret + "x") is None
    assert keys.live_operator(operator.api_key)
    assert not keys.live_operator(org_key.api_key)

    keys.revoke(operator.api_key)
    assert keys.authenticate_operator(operator.api_key, operator.api_secret) is None
    assert not keys.live_operator(operator.api_key)


def test_operator_keys_are_listed_with_their_role_and_in_no_organisation(
    keys: ApiKeys,
) -> None:
    """The JSON form names the role; list() shows the key, no organisation's list does."""
    operator = keys.create_operator()
    org_key = keys.create("org_1")
    assert operator.as_json() == {"api_key": operator.api_key,
                                  "api_secret": operator.api_secret, "role": "operator"}
    roles = {r.key_id: r.public_view()["role"] for r in keys.list()}
    assert roles == {operator.api_key: "operator", org_key.api_key: "org"}
    assert [r.key_id for r in keys.list("org_1")] == [org_key.api_key]
    assert operator.api_secret.encode() not in redis_bytes(keys.redis)


def test_records_from_before_roles_are_organisation_keys(keys: ApiKeys) -> None:
    """A stored key without a role (written before roles existed) stays an organisation key."""
    created = keys.create("org_1")
    raw = keys.redis.get(keys._key(created.api_key))
    assert isinstance(raw, bytes)
    stored = json.loads(raw)
    del stored["role"]
    keys.redis.set(keys._key(created.api_key), json.dumps(stored))

    assert keys.authenticate(created.api_key, created.api_secret) == "org_1"
    assert keys.authenticate_operator(created.api_key, created.api_secret) is None


def test_the_cli_makes_operator_keys_and_wants_exactly_one_kind(
    keys: ApiKeys, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`trunkline keys create --operator` prints an operator key once; --org with --operator,
    or neither, is a usage error (exit 2) that makes no key."""
    monkeypatch.setattr(ops.cli, "_api_keys", lambda: keys)
    runner = CliRunner()

    made = runner.invoke(ops.cli.app, ["keys", "create", "--operator", "--name", "on-call",
                                       "--json"])
    neither = runner.invoke(ops.cli.app, ["keys", "create"])
    both = runner.invoke(ops.cli.app, ["keys", "create", "--org", "org_1", "--operator"])
    listed = runner.invoke(ops.cli.app, ["keys", "list", "--json"])

    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert created["role"] == "operator"
    assert keys.authenticate_operator(created["api_key"], created["api_secret"])
    assert (neither.exit_code, both.exit_code) == (2, 2)
    assert "--operator" in neither.output
    assert [(k["api_key"], k["role"]) for k in json.loads(listed.stdout)] == [
        (created["api_key"], "operator")]
    assert created["api_secret"] not in listed.stdout
