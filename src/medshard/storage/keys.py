"""Key providers: where the deployment's master key lives.

The master key only ever wraps patient keys; it never touches data. Rotating it re-wraps
patient keys and nothing else. Two providers:

* :class:`LocalKeyFileProvider` (default): a 32-byte key in ``HOME/master.key``, mode 0600.
* :class:`EnvKeyProvider` (production): the key comes from the process environment, the way
  a secrets manager or orchestrator injects it, so no key material sits on the server's disk.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medshard.errors import ConfigError, CryptoError

KEY_BYTES = 32
NONCE_BYTES = 12


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps and unwraps patient keys with the master key."""

    @property
    def key_id(self) -> str:
        """A short fingerprint of the master key, stored beside each wrapped key."""
        ...

    def wrap(self, key: bytes, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...


def aead_wrap(kek: bytes, key: bytes, context: bytes) -> bytes:
    """AES-256-GCM key wrap: nonce || ciphertext+tag, bound to ``context`` as AAD."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, key, context)


def aead_unwrap(kek: bytes, wrapped: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError(f"cannot unwrap key for {context!r}: wrong key or tampered") from exc


class _StaticKeyProvider:
    def __init__(self, master: bytes) -> None:
        if len(master) != KEY_BYTES:
            raise ConfigError(f"master key must be {KEY_BYTES} bytes, got {len(master)}")
        self._master = master

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"medshard-key-id" + self._master).hexdigest()[:16]

    def wrap(self, key: bytes, context: bytes) -> bytes:
        return aead_wrap(self._master, key, context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        return aead_unwrap(self._master, wrapped, context)


class LocalKeyFileProvider(_StaticKeyProvider):
    """The master key in a 0600 file; refuses a file others can read."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise ConfigError(f"master key {path} missing: run `medshard init`")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"master key {path} has mode {oct(mode)}; run chmod 600 {path}")
        super().__init__(base64.b64decode(path.read_bytes().strip()))

    @staticmethod
    def create(path: Path) -> None:
        """Write a fresh random master key with mode 0600 (never overwrites)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")


class EnvKeyProvider(_StaticKeyProvider):
    """The master key, base64, from an environment variable (``MEDSHARD_MASTER_KEY``)."""

    def __init__(self, variable: str = "MEDSHARD_MASTER_KEY") -> None:
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"{variable} is not set")
        super().__init__(base64.b64decode(value))


def key_provider_for(master_key_path: Path) -> KeyProvider:
    """The environment's key when one is injected, else the home's key file."""
    if os.environ.get("MEDSHARD_MASTER_KEY"):
        return EnvKeyProvider()
    return LocalKeyFileProvider(master_key_path)
