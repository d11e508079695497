"""Secrets at rest: encryption under SIR_MASTER_KEY and the pepper for secret-key hashes.

Two keys are derived from the one master key with HKDF, so the encryption key and the hashing
pepper are never the same bytes. Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) is the
authenticated encryption: a tampered ciphertext fails to decrypt instead of yielding garbage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(master_key: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(master_key)


class SecretBox:
    """Encrypts recoverable secrets (HMAC secrets, webhook secrets and headers, voucher codes)."""

    def __init__(self, master_key: bytes) -> None:
        self._fernet = Fernet(
            base64.urlsafe_b64encode(_derive(master_key, b"sir-engine/encrypt/v1"))
        )
        self._pepper = _derive(master_key, b"sir-engine/secret-key-pepper/v1")

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        return self._fernet.decrypt(bytes(token)).decode()

    def hash_secret_key(self, secret_key: str) -> bytes:
        """Keyed hash of a secret key. Checked on every request, so fast (not a password hash):
        the key already has 256 bits of entropy, which is what makes brute force hopeless."""
        return hmac.new(self._pepper, secret_key.encode(), hashlib.sha256).digest()


def generate_master_key() -> str:
    """A new master key, as SIR_MASTER_KEY expects it (url-safe base64 of 32 bytes)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def mask(secret: str) -> str:
    """How a key may appear in logs: its prefix and last four characters."""
    prefix = secret[:8] if secret.startswith(("sk_", "pk_")) else secret[:4]
    return f"{prefix}…{secret[-4:]}"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """32 bytes for one `purpose` (e.g. "sir-engine/portal-jwt/v1"), derived from the master key
    with HKDF, so no two uses ever share key material and rotating the master rotates them all."""
    return _derive(master_key, purpose.encode())
