"""Encryption at rest for third-party SIP passwords (Fernet, with key rotation).

Keys come from TRUNKLINE_SECRET_KEYS, never from the data store: whoever reads Redis
alone cannot read a password. The first key encrypts; every key decrypts, so a new key
can be put in front and old ciphertexts re-encrypted at leisure (`rotate`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class VaultError(Exception):
    """Keys are malformed, or a ciphertext cannot be read with any configured key."""


class Vault:
    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise VaultError("no encryption key: set TRUNKLINE_SECRET_KEYS")
        fernets: list[Fernet] = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                raise VaultError(
                    f"TRUNKLINE_SECRET_KEYS key #{position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from None
        self._fernet = MultiFernet(fernets)
        # A separate, derived key for fingerprints: HMACs of requests must not be computable
        # by someone who sees only Redis, and must not reuse the encryption key directly.
        self._fingerprint_key = hashlib.sha256(
            b"trunkline/fingerprint/v1" + keys[0].encode()
        ).digest()

    @staticmethod
    def generate_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultError(
                "a stored secret cannot be decrypted with any key in TRUNKLINE_SECRET_KEYS "
                "(was a key removed before its ciphertexts were rotated?)"
            ) from None

    def rotate(self, ciphertext: str) -> str:
        try:
            return self._fernet.rotate(ciphertext.encode()).decode()
        except InvalidToken:
            raise VaultError(
                "a stored secret cannot be rotated: no key in TRUNKLINE_SECRET_KEYS decrypts it"
            ) from None

    def fingerprint(self, material: Any) -> str:
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"))
        return hmac.new(self._fingerprint_key, canonical.encode(), hashlib.sha256).hexdigest()
