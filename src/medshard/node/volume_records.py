"""The volume files' record format, and where a record lives: what the scan, the writer and
compaction of :mod:`medshard.node.volume` share.

Record format (little endian), back to back in ``vol-NNNNNNNN.dat``::

    magic "MSv1" | kind u8 | pad 3 | chunk id 32 bytes | length u64 | data crc32 u32 |
    header crc32 u32 | data

``kind`` is PUT or TOMBSTONE (a delete; length 0). The header crc lets a scan tell a torn
or rotten header from a real one; the data crc, a torn record's data.

A :class:`Volume` is one open volume file with its space accounting; a :class:`Loc` is where
the index finds a chunk's data (volume, offset of the data, length).
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from medshard.errors import ChecksumMismatchError, InvalidInputError

MAGIC = b"MSv1"
KIND_PUT = 1
KIND_TOMBSTONE = 2
_HEAD = struct.Struct("<4sB3x32sQI")  # everything the header crc covers
HEADER_SIZE = _HEAD.size + 4
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # far above the 4 MiB + tag the chunker makes; a sanity bound
_ID_RE = re.compile(r"[0-9a-f]{64}")
#: A chunk's bytes: a batch's chunks are views into its request body, not copies.
Bytes = bytes | memoryview


def check_chunk_id(chunk_id: str) -> None:
    """Refuse anything but a lowercase hex SHA-256, before it reaches a path or an index."""
    if not (isinstance(chunk_id, str) and _ID_RE.fullmatch(chunk_id)):
        raise InvalidInputError(f"malformed chunk id {chunk_id!r}: expected 64 lowercase hex")


def check_put(chunk_id: str, data: Bytes) -> None:
    """Refuse a chunk whose id is malformed, that is too large, or that does not hash to it."""
    check_chunk_id(chunk_id)
    if len(data) > MAX_CHUNK_BYTES:
        raise InvalidInputError(f"chunk of {len(data)} bytes exceeds {MAX_CHUNK_BYTES}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != chunk_id:
        raise ChecksumMismatchError(f"chunk {chunk_id}", chunk_id, actual)


def pack_header(kind: int, chunk_id: str, data: Bytes) -> bytes:
    """Header of one record; the header crc lets a scan tell a torn header from a real one."""
    head = _HEAD.pack(MAGIC, kind, bytes.fromhex(chunk_id), len(data), zlib.crc32(data))
    return head + struct.pack("<I", zlib.crc32(head))


@dataclass(frozen=True)
class RecordHeader:
    kind: int
    chunk_id: str
    length: int
    data_crc: int


def parse_header(raw: bytes) -> RecordHeader | None:
    """A header, or None when the bytes are not one (torn, rotten, or not a record at all)."""
    if len(raw) < HEADER_SIZE or raw[:4] != MAGIC:
        return None
    head = raw[: _HEAD.size]
    (header_crc,) = struct.unpack_from("<I", raw, _HEAD.size)
    if zlib.crc32(head) != header_crc:
        return None
    _, kind, digest, length, data_crc = _HEAD.unpack(head)
    if kind not in (KIND_PUT, KIND_TOMBSTONE) or length > MAX_CHUNK_BYTES:
        return None
    return RecordHeader(kind, digest.hex(), length, data_crc)


@dataclass(eq=False)
class Volume:
    number: int
    path: Path
    fd: int
    size: int
    live: int = 0  # bytes (headers included) of the PUT records the index points at
    dead_puts: set[str] = field(default_factory=set)  # ids of PUT records no longer live
    tombstones: set[str] = field(default_factory=set)  # ids with a tombstone record here
    pending: int = 0  # PUT records written here, not yet durable and indexed
    pins: int = 0  # readers using fd; a retired volume's fd is closed when the last one goes
    retired: bool = False


@dataclass(frozen=True)
class Loc:
    volume: Volume
    offset: int  # of the data, not the header
    length: int
