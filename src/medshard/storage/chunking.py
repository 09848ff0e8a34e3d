"""Fixed-size chunking of a stream, so no object is ever held whole in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO


def iter_chunks(stream: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    """Yield consecutive ``chunk_size`` pieces (the last may be shorter; an empty stream
    yields one empty chunk so that every object has at least one chunk)."""
    first = True
    while True:
        buf = _read_exact(stream, chunk_size)
        if not buf and not first:
            return
        first = False
        yield buf
        if len(buf) < chunk_size:
            return


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    remaining = n
    while remaining > 0:
        piece = stream.read(remaining)
        if not piece:
            break
        parts.append(piece)
        remaining -= len(piece)
    return b"".join(parts)
