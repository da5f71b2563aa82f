"""Encryption of connector credentials at rest, and their masked hints.

Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from FIBRIC_SECRET_KEY. Plaintext
credentials exist only in memory of the process that uses them; they are never logged,
returned, or written to a topic, table or receipt.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, secret_key: str) -> None:
        if not secret_key:
            raise ValueError("a secret key is required")
        derived = hashlib.sha256(b"fibric-vault-v1\x00" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, credentials: dict[str, Any]) -> str:
        return self._fernet.encrypt(orjson.dumps(credentials)).decode()

    def open(self, ciphertext: str) -> dict[str, Any]:
        try:
            return orjson.loads(self._fernet.decrypt(ciphertext.encode()))
        except InvalidToken:
            raise ValueError(
                "credentials cannot be decrypted with this FIBRIC_SECRET_KEY"
            ) from None


def credential_hint(auth: dict[str, Any]) -> str | None:
    """``mg_live_9f4c2e8b1a41`` → ``mg_****41`` (seed 001); basic → ``user:****``."""
    kind = auth.get("type")
    if kind == "api_key":
        key = str(auth.get("key", ""))
        return f"{key[:3]}****{key[-2:]}" if len(key) >= 8 else "****"
    if kind == "basic":
        return f"{auth.get('username', '')}:****"
    return None
