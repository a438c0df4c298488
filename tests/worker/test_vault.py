"""Unit tests for worker.vault: SIP passwords encrypted at rest, with key rotation."""

from __future__ import annotations

import base64

import pytest
from cryptography.fernet import Fernet

from worker.vault import Vault, VaultError

PLAINTEXT = "Canary-Pw-7f3b9c1d"


@pytest.fixture
def old_key() -> str:
    return Vault.generate_key()


@pytest.fixture
def new_key() -> str:
    return Vault.generate_key()


@pytest.mark.parametrize("plaintext", [PLAINTEXT, "", "pässwörd ✓", "x" * 4096])
def test_round_trip(old_key: str, plaintext: str) -> None:
    """What one vault encrypts, a vault with the same key decrypts to the same text."""
    ciphertext = Vault([old_key]).encrypt(plaintext)
    assert Vault([old_key]).decrypt(ciphertext) == plaintext


def test_ciphertext_does_not_contain_the_plaintext(old_key: str) -> None:
    """The ciphertext holds neither the plaintext nor its base64 form."""
    ciphertext = Vault([old_key]).encrypt(PLAINTEXT)
    assert PLAINTEXT not in ciphertext
    assert base64.urlsafe_b64encode(PLAINTEXT.encode()).decode().rstrip("=") not in ciphertext
    assert PLAINTEXT.encode() not in base64.urlsafe_b64decode(ciphertext)


def test_encryption_is_randomised(old_key: str) -> None:
    """Encrypting the same text twice gives different ciphertexts (no equality leak)."""
    vault = Vault([old_key])
    assert vault.encrypt(PLAINTEXT) != vault.encrypt(PLAINTEXT)


def test_generate_key_makes_distinct_fernet_keys() -> None:
    """generate_key returns a fresh, valid Fernet key each time."""
    first, second = Vault.generate_key(), Vault.generate_key()
    assert first != second
    Fernet(first.encode())  # raises if malformed


def test_first_key_encrypts_every_key_decrypts(old_key: str, new_key: str) -> None:
    """With [new, old], new ciphertexts use the new key and old ciphertexts still decrypt."""
    old_ciphertext = Vault([old_key]).encrypt(PLAINTEXT)
    both = Vault([new_key, old_key])
    assert both.decrypt(old_ciphertext) == PLAINTEXT
    fresh = both.encrypt(PLAINTEXT)
    assert Vault([new_key]).decrypt(fresh) == PLAINTEXT
    with pytest.raises(VaultError):
        Vault([old_key]).decrypt(fresh)


def test_rotate_re_encrypts_under_the_new_key(old_key: str, new_key: str) -> None:
    """rotate moves a ciphertext to the first key, so the old key alone can no longer read it."""
    old_ciphertext = Vault([old_key]).encrypt(PLAINTEXT)
    rotated = Vault([new_key, old_key]).rotate(old_ciphertext)
    assert rotated != old_ciphertext
    assert Vault([new_key]).decrypt(rotated) == PLAINTEXT
    with pytest.raises(VaultError):
        Vault([old_key]).decrypt(rotated)


def test_rotate_unreadable_ciphertext_raises_vault_error(old_key: str, new_key: str) -> None:
    """rotate of a ciphertext no configured key can read raises VaultError, not InvalidToken."""
    ciphertext = Vault([old_key]).encrypt(PLAINTEXT)
    with pytest.raises(VaultError, match="TRUNKLINE_SECRET_KEYS"):
        Vault([new_key]).rotate(ciphertext)


def test_wrong_key_raises_vault_error_naming_the_setting(old_key: str, new_key: str) -> None:
    """Decrypting with an unrelated key raises VaultError pointing at TRUNKLINE_SECRET_KEYS."""
    ciphertext = Vault([old_key]).encrypt(PLAINTEXT)
    with pytest.raises(VaultError, match="TRUNKLINE_SECRET_KEYS") as info:
        Vault([new_key]).decrypt(ciphertext)
    assert PLAINTEXT not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.parametrize("ciphertext", ["", "not-a-token", "gAAAAA" + "A" * 80])
def test_garbage_ciphertext_raises_vault_error(old_key: str, ciphertext: str) -> None:
    """Text that is not a Fernet token raises VaultError, not a cryptography exception."""
    with pytest.raises(VaultError):
        Vault([old_key]).decrypt(ciphertext)


def test_tampered_ciphertext_raises_vault_error(old_key: str) -> None:
    """Flipping one byte of a ciphertext makes it undecryptable (it is authenticated)."""
    raw = bytearray(base64.urlsafe_b64decode(Vault([old_key]).encrypt(PLAINTEXT)))
    raw[-40] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(VaultError):
        Vault([old_key]).decrypt(tampered)


@pytest.mark.parametrize(
    ("bad", "position"),
    [
        (["not-a-fernet-key"], 1),
        ([Fernet.generate_key().decode(), "c2hvcnQ="], 2),
        ([Fernet.generate_key().decode(), Fernet.generate_key().decode(), ""], 3),
    ],
)
def test_malformed_key_raises_vault_error_naming_its_position(
    bad: list[str], position: int
) -> None:
    """A malformed key is reported by its 1-based position, without echoing its value."""
    with pytest.raises(VaultError, match=f"TRUNKLINE_SECRET_KEYS key #{position} ") as info:
        Vault(bad)
    assert bad[position - 1] == "" or bad[position - 1] not in str(info.value)


def test_no_keys_raises_vault_error() -> None:
    """A vault with no keys refuses to exist and names TRUNKLINE_SECRET_KEYS."""
    with pytest.raises(VaultError, match="TRUNKLINE_SECRET_KEYS"):
        Vault([])


def test_fingerprint_is_stable(old_key: str) -> None:
    """The same material gives the same fingerprint, across vaults and key orders in dicts."""
    material = {"number": "+15551234567", "authPassword": PLAINTEXT, "nested": {"a": 1, "b": 2}}
    reordered = {"nested": {"b": 2, "a": 1}, "authPassword": PLAINTEXT, "number": "+15551234567"}
    first = Vault([old_key]).fingerprint(material)
    assert first == Vault([old_key]).fingerprint(material)
    assert first == Vault([old_key]).fingerprint(reordered)
    assert len(first) == 64
    int(first, 16)  # hex digest


def test_fingerprint_differs_by_content(old_key: str) -> None:
    """Changing any value, the password included, changes the fingerprint."""
    vault = Vault([old_key])
    base = {"number": "+15551234567", "authPassword": PLAINTEXT}
    assert vault.fingerprint(base) != vault.fingerprint({**base, "authPassword": "other"})
    assert vault.fingerprint(base) != vault.fingerprint({**base, "number": "+14155552671"})


def test_fingerprint_differs_by_key(old_key: str, new_key: str) -> None:
    """The same material fingerprinted under another first key gives another fingerprint."""
    material = {"number": "+15551234567", "authPassword": PLAINTEXT}
    assert Vault([old_key]).fingerprint(material) != Vault([new_key]).fingerprint(material)


def test_fingerprint_does_not_reveal_the_password(old_key: str) -> None:
    """The fingerprint is a keyed hash: it contains no trace of the material."""
    fingerprint = Vault([old_key]).fingerprint({"authPassword": PLAINTEXT})
    assert PLAINTEXT not in fingerprint
    assert PLAINTEXT.lower() not in fingerprint
