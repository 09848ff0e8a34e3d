"""The encryption envelope: per-object data keys, per-patient keys, per-chunk AES-256-GCM.

Key hierarchy: master key (key provider) wraps each patient key; each patient key wraps the
fresh data key of every object of that patient; the data key encrypts the object's chunks.
Erasing a patient key makes every replica of that patient's data unreadable at once.

Each chunk is sealed separately so it can be verified and decrypted as it streams. The nonce is
the chunk index (safe because every data key encrypts exactly one object), and the AAD binds the
ciphertext to its object and position, so chunks cannot be swapped or reordered unnoticed.
"""

from __future__ import annotations

import secrets
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medshard.errors import CryptoError
from medshard.storage.keys import KEY_BYTES, aead_unwrap, aead_wrap

TAG_BYTES = 16


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def wrap_data_key(patient_key: bytes, data_key: bytes, object_key: str) -> bytes:
    return aead_wrap(patient_key, data_key, b"object:" + object_key.encode())


def unwrap_data_key(patient_key: bytes, wrapped: bytes, object_key: str) -> bytes:
    return aead_unwrap(patient_key, wrapped, b"object:" + object_key.encode())


def patient_key_context(patient_id: str) -> bytes:
    return b"patient:" + patient_id.encode()


def _nonce(index: int) -> bytes:
    return struct.pack(">IQ", 0, index)


def _aad(object_key: str, index: int) -> bytes:
    return object_key.encode() + struct.pack(">Q", index)


class ChunkCipher:
    """Seals and opens the chunks of one object with its data key."""

    def __init__(self, data_key: bytes, object_key: str) -> None:
        self._aead = AESGCM(data_key)
        self._object_key = object_key

    def seal(self, index: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(_nonce(index), plaintext, _aad(self._object_key, index))

    def open(self, index: int, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(_nonce(index), ciphertext, _aad(self._object_key, index))
        except InvalidTag as exc:
            raise CryptoError(
                f"chunk {index} of object {self._object_key} failed authentication"
            ) from exc
