"""The chunk store interface: content-addressed, immutable, encrypted chunks.

A chunk's id is the lowercase hex SHA-256 of its (already encrypted) bytes, so a store can
verify every write and every reader can verify every read. Stores never see plaintext.

Implementations:

* :class:`MemoryChunkStore` here, for unit tests;
* :class:`medshard.node.volume.VolumeStore`, the on-disk engine inside ``medshard node``;
* :class:`medshard.storage.node_client.NodeClient`, the HTTP client of a storage node: the
  production store that the write and read paths use.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from medshard.errors import ChecksumMismatchError, NotFoundError


def chunk_id_of(data: bytes) -> str:
    """Content address of a chunk."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ChunkStat:
    chunk_id: str
    size: int


@runtime_checkable
class ChunkStore(Protocol):
    """What the write, read and repair paths need from a place that holds chunks."""

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Store durably; verify ``chunk_id``; return False if it was already there."""
        ...

    def get(self, chunk_id: str) -> bytes:
        """The chunk's bytes as stored (callers verify the hash); NotFoundError if absent."""
        ...

    def delete(self, chunk_id: str) -> bool:
        """Remove; return False if it was not there."""
        ...

    def exists(self, chunk_id: str) -> bool: ...

    def stat(self, chunk_id: str) -> ChunkStat: ...

    def list_ids(self) -> Iterator[str]: ...


class MemoryChunkStore:
    """A dict-backed store for unit tests of the paths above the storage layer."""

    def __init__(self) -> None:
        self._chunks: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, chunk_id: str, data: bytes) -> bool:
        actual = chunk_id_of(data)
        if actual != chunk_id:
            raise ChecksumMismatchError(f"chunk {chunk_id}", chunk_id, actual)
        with self._lock:
            if chunk_id in self._chunks:
                return False
            self._chunks[chunk_id] = bytes(data)
            return True

    def get(self, chunk_id: str) -> bytes:
        try:
            return self._chunks[chunk_id]
        except KeyError:
            raise NotFoundError(f"chunk {chunk_id} not found") from None

    def delete(self, chunk_id: str) -> bool:
        with self._lock:
            return self._chunks.pop(chunk_id, None) is not None

    def exists(self, chunk_id: str) -> bool:
        return chunk_id in self._chunks

    def stat(self, chunk_id: str) -> ChunkStat:
        return ChunkStat(chunk_id, len(self.get(chunk_id)))

    def list_ids(self) -> Iterator[str]:
        return iter(list(self._chunks))
