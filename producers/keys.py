"""API keys for the HTTP producer: an `sk_` key id and a random secret, shown once.

Only a salted PBKDF2-SHA256 hash of the secret is stored, under `trunkline:api:key:<id>`.
The secret is 256 random bits, so no search over it is feasible whatever the hash costs; the
iteration count only has to make the stored hash useless on its own, and stays small enough
to verify on every request. Comparison is constant-time, and an unknown key id costs the same
work as a known one. Revoking a key marks its record; a revoked key never authenticates again.

A key has a role. An organisation key acts for its organisation in the API; an operator key
(`create_operator`) opens the operators' page `/ops` and nothing else. Each check accepts its
own role only, so neither kind of key can stand in for the other.

    keys = ApiKeys(redis)
    created = keys.create("org_1", name="billing service")   # created.api_secret: show once
    org_id = keys.authenticate(key_id, secret)               # None when wrong or revoked
    operator = keys.create_operator(name="on-call")
    key_id = keys.authenticate_operator(key_id, secret)      # None unless an operator key
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import cast

from pydantic import BaseModel
from redis import Redis
from redis.exceptions import WatchError

KEY_PREFIX = "sk_"
SECRET_PREFIX = "s3cr3t_"  # noqa: S105 - a prefix, not a secret (the seed's format)
HASH_SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 10_000
VERIFIED_CACHE_SIZE = 1024  # keys remembered per process once verified
_KEY_ID = re.compile(r"^sk_[A-Za-z0-9]{24,64}$")
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class UnknownKey(LookupError):
    """No such API key."""


def valid_org_id(org_id: str) -> bool:
    return bool(_ORG_ID.match(org_id))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, *, salt: bytes | None = None,
                iterations: int = DEFAULT_ITERATIONS) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hash>` for a secret; the scheme travels with it."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Constant-time check of a secret against `hash_secret` output."""
    try:
        scheme, raw_iterations, raw_salt, raw_digest = encoded.split("$")
        iterations = int(raw_iterations)
        salt, expected = _unb64(raw_salt), _unb64(raw_digest)
    except ValueError:
        return False
    if scheme != HASH_SCHEME or not 1 <= iterations <= 10_000_000:
        return False
    actual = hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations)
    return hmac.compare_digest(actual, expected)


# Verified against when the key id is unknown, so that costs what a known id costs.
_DUMMY_HASH = hash_secret("trunkline-dummy-secret", salt=b"\0" * 16)


class KeyRole(StrEnum):
    ORG = "org"
    OPERATOR = "operator"


class ApiKeyRecord(BaseModel):
    key_id: str
    # Empty for an operator key: it acts for no organisation.
    org_id: str
    # Records written before roles existed are organisation keys.
    role: KeyRole = KeyRole.ORG
    name: str = ""
    secret_hash: str
    created_at: datetime
    revoked_at: datetime | None = None
    last_four: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public_view(self) -> dict[str, object]:
        """Everything but the hash."""
        return {
            "api_key": self.key_id,
            "org_id": self.org_id,
            "role": self.role.value,
            "name": self.name,
            "secret_hint": f"{SECRET_PREFIX}…{self.last_four}",
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoked": self.revoked,
        }


@dataclass(frozen=True)
class CreatedKey:
    """A new key: the only time the secret exists outside its holder."""

    api_key: str
    api_secret: str
    org_id: str
    role: KeyRole = KeyRole.ORG

    def as_json(self) -> dict[str, str]:
        if self.role is KeyRole.OPERATOR:
            return {"api_key": self.api_key, "api_secret": self.api_secret,
                    "role": self.role.value}
        return {"api_key": self.api_key, "api_secret": self.api_secret, "org_id": self.org_id}


class ApiKeys:
    def __init__(self, redis: Redis, *, prefix: str = "trunkline:api",
                 iterations: int = DEFAULT_ITERATIONS) -> None:
        self.redis = redis
        self.prefix = prefix
        self.iterations = iterations
        # Secrets that passed PBKDF2 once, as SHA-256 digests, by key id and stored hash: a
        # client sending the same key on every request pays the slow check once per process.
        # The record is still read each time, so a revoked or rotated key stops at once; a
        # wrong secret is never remembered, so guessing still costs PBKDF2 every try.
        self._verified: OrderedDict[str, bytes] = OrderedDict()
        self._verified_lock = threading.Lock()

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:key:{key_id}"

    @property
    def _all(self) -> str:
        return f"{self.prefix}:keys"

    def _by_org(self, org_id: str) -> str:
        return f"{self.prefix}:keys:org:{org_id}"

    def create(self, org_id: str, *, name: str = "") -> CreatedKey:
        if not valid_org_id(org_id):
            raise ValueError("org id must be 1-128 letters, digits, '.', '_', ':' or '-', "
                             "starting with a letter or digit")
        return self._create(org_id, KeyRole.ORG, name)

    def create_operator(self, *, name: str = "") -> CreatedKey:
        """A key for the operators' page: every organisation's jobs, replays; no API calls."""
        return self._create("", KeyRole.OPERATOR, name)

    def _create(self, org_id: str, role: KeyRole, name: str) -> CreatedKey:
        if len(name) > 200:
            raise ValueError("key name must be at most 200 characters")
        key_id = KEY_PREFIX + secrets.token_hex(16)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        record = ApiKeyRecord(key_id=key_id, org_id=org_id, role=role, name=name,
                              secret_hash=hash_secret(secret, iterations=self.iterations),
                              created_at=now, last_four=secret[-4:])
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._key(key_id), record.model_dump_json(), nx=True)
        pipe.zadd(self._all, {key_id: now.timestamp()})
        if role is KeyRole.ORG:
            pipe.zadd(self._by_org(org_id), {key_id: now.timestamp()})
        pipe.execute()
        return CreatedKey(api_key=key_id, api_secret=secret, org_id=org_id, role=role)

    def get(self, key_id: str) -> ApiKeyRecord | None:
        if not _KEY_ID.match(key_id):
            return None
        raw = self.redis.get(self._key(key_id))
        return None if raw is None else ApiKeyRecord.model_validate_json(cast(bytes, raw))

    def authenticate(self, key_id: str, secret: str) -> str | None:
        """The key's organisation when the secret matches and the key is a live organisation
        key, else None (an operator key acts for no organisation)."""
        record = self._verified_record(key_id, secret)
        return record.org_id if record is not None and record.role is KeyRole.ORG else None

    def authenticate_operator(self, key_id: str, secret: str) -> str | None:
        """The key id when the secret matches and the key is a live operator key, else None."""
        record = self._verified_record(key_id, secret)
        return record.key_id if record is not None and record.role is KeyRole.OPERATOR else None

    def live_operator(self, key_id: str) -> bool:
        """Whether `key_id` is an operator key that is not revoked (no secret checked: for a
        session opened with the secret, so revoking the key ends its sessions at once)."""
        record = self.get(key_id)
        return record is not None and record.role is KeyRole.OPERATOR and not record.revoked

    def _verified_record(self, key_id: str, secret: str) -> ApiKeyRecord | None:
        record = self.get(key_id) if len(key_id) <= 80 else None
        if len(secret) > 200:
            secret = secret[:200]  # bounded work; a 200-char prefix never matches anyway
        digest = hashlib.sha256(secret.encode()).digest()
        if record is not None and not record.revoked and self._seen(record, digest):
            return record
        ok = verify_secret(secret, record.secret_hash if record else _DUMMY_HASH)
        if record is None or not ok or record.revoked:
            return None
        self._remember(record, digest)
        return record

    def _seen(self, record: ApiKeyRecord, digest: bytes) -> bool:
        with self._verified_lock:
            known = self._verified.get(f"{record.key_id}${record.secret_hash}")
        return known is not None and hmac.compare_digest(known, digest)

    def _remember(self, record: ApiKeyRecord, digest: bytes) -> None:
        with self._verified_lock:
            self._verified[f"{record.key_id}${record.secret_hash}"] = digest
            while len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Mark a key revoked (idempotent); raises UnknownKey for an unknown key."""
        key = self._key(key_id)
        for _ in range(10):
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]  # redis-py stub gap
                    record = self.get(key_id)
                    if record is None:
                        raise UnknownKey(f"no API key {key_id}")
                    if record.revoked:
                        return record
                    record = record.model_copy(update={"revoked_at": datetime.now(UTC)})
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    pipe.execute()
                    return record
                except WatchError:
                    continue
        raise RuntimeError(f"could not revoke {key_id}: too much contention")

    def list(self, org_id: str | None = None) -> Iterator[ApiKeyRecord]:
        index = self._by_org(org_id) if org_id else self._all
        for member, _score in self.redis.zscan_iter(index):
            record = self.get(member.decode() if isinstance(member, bytes) else str(member))
            if record is not None:
                yield record
