"""The body of ``POST /chunks``: several chunks in one request to a storage node.

Framing (little endian): a *manifest*, then every chunk's bytes back to back, in its order::

    count u32 | count x (chunk id: 32 raw bytes | length u64) | data 1 | data 2 | ...

The request signs the SHA-256 of the manifest (:func:`manifest_sha256`) as its content hash,
so the node authenticates a batch before it reads the chunks, and neither side hashes the
body twice: the ids and lengths are signed, and the node refuses every chunk whose bytes do
not hash to its id, exactly as for ``PUT /chunks/{id}``. The node answers 200 with one result
per chunk, in order, each as the single PUT would have answered it::

    {"results": [{"status": 201}, {"status": 200}, {"status": 409, "error": ...,
                 "expected": ..., "actual": ...}, {"status": 507, "error": ...}, ...]}

This module is pure (no HTTP), shared by :mod:`medshard.storage.node_client` and
:mod:`medshard.node.server`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Final

#: The batch endpoint (``POST``); ``GET`` on it lists the node's chunks.
BATCH_PATH: Final = "/chunks"
#: Most chunks one batch may carry (the node answers 413 beyond).
MAX_BATCH_CHUNKS: Final = 1024
_COUNT: Final = struct.Struct("<I")
_ENTRY: Final = struct.Struct("<32sQ")


def manifest_size(count: int) -> int:
    """Bytes of the manifest of ``count`` chunks."""
    return _COUNT.size + count * _ENTRY.size


def encode_manifest(entries: Sequence[tuple[str, int]]) -> bytes:
    """The manifest of chunks given as (id as 64 hex, length)."""
    parts = [_COUNT.pack(len(entries))]
    parts.extend(_ENTRY.pack(bytes.fromhex(chunk_id), n) for chunk_id, n in entries)
    return b"".join(parts)


def manifest_count(head: bytes) -> int:
    """How many chunks a body starting with ``head`` (at least 4 bytes) carries."""
    (count,) = _COUNT.unpack_from(head)
    return int(count)


def decode_manifest(manifest: bytes) -> list[tuple[str, int]]:
    """(id, length) of every chunk; ``manifest`` is exactly ``manifest_size(count)`` bytes."""
    count = manifest_count(manifest)
    if len(manifest) != manifest_size(count):
        raise ValueError(f"manifest of {len(manifest)} bytes for {count} chunks")
    return [
        (digest.hex(), n)
        for digest, n in (
            _ENTRY.unpack_from(manifest, _COUNT.size + i * _ENTRY.size) for i in range(count)
        )
    ]


def manifest_sha256(manifest: bytes) -> str:
    """The content hash a batch request signs."""
    return hashlib.sha256(manifest).hexdigest()
