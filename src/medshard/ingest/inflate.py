"""Inflate a Deflated Explicit VR Little Endian data set lazily, never past a cap.

PS3.5 A.5 deflates everything after the file meta. pydicom inflates that whole remainder in
memory before parsing a single element, so a 2 MB "deflate bomb" costs gigabytes. This reader
inflates on demand, a bounded slice at a time, keeps only a short window behind the read
position (enough for the few-byte rewinds of a parser), and raises once the inflated size
would exceed ``limit``. Memory is therefore bounded by the window plus what the caller keeps,
whatever the file claims.
"""

from __future__ import annotations

import io
import os
import zlib
from typing import BinaryIO, Final

from medshard.errors import InvalidInputError

__all__ = ["DEFLATED", "InflatingReader", "InflationLimitError"]

#: Deflated Explicit VR Little Endian (PS3.5 A.5).
DEFLATED: Final = "1.2.840.10008.1.2.1.99"
_IN_CHUNK: Final = 64 * 1024
_OUT_CHUNK: Final = 1024 * 1024
_WINDOW: Final = 1024 * 1024


class InflationLimitError(InvalidInputError):
    """The deflated data set inflates to more than the configured cap (a deflate bomb)."""


class InflatingReader(io.RawIOBase):
    """A read-only, forward-mostly file over the raw-deflate stream that starts at ``source``'s
    current position.

    ``tell``/``seek`` count inflated bytes from 0. Seeking forward inflates and discards;
    seeking back works within the last megabyte only (an ``OSError`` beyond it).

    Parameters
    ----------
    source : binary file
        Positioned at the first deflated byte (just after the file meta).
    limit : int
        Most inflated bytes allowed; more raises :class:`InflationLimitError`.
    """

    def __init__(self, source: BinaryIO, limit: int) -> None:
        super().__init__()
        self._source = source
        self._limit = limit
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buf = bytearray()
        self._base = 0  # inflated offset of self._buf[0]
        self._pos = 0
        self._done = False

    # -- io.RawIOBase --------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            chunks = []
            while piece := self.read(_OUT_CHUNK):
                chunks.append(piece)
            return b"".join(chunks)
        self._fill(self._pos + size)
        start = self._pos - self._base
        data = bytes(self._buf[start : start + size])
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence == os.SEEK_END:
            while not self._done:  # inflate to the end, keeping only the window
                self._pos = self.produced
                self._fill(self._pos + _OUT_CHUNK)
            offset += self.produced
        if offset < self._base:
            raise OSError(f"cannot seek back to {offset} in an inflating stream")
        self._pos = offset
        self._fill(offset)
        return offset

    # -- what the validator needs ----------------------------------------------------------

    @property
    def produced(self) -> int:
        """Inflated bytes produced so far."""
        return self._base + len(self._buf)

    @property
    def at_end(self) -> bool:
        """Whether the position is at the end of the inflated data (inflating to find out)."""
        self._fill(self._pos + 1)
        return self._pos >= self.produced

    def _fill(self, upto: int) -> None:
        """Inflate until ``upto`` bytes exist, dropping what lies a window behind the position."""
        while not self._done and self.produced < upto:
            # Never more than _OUT_CHUNK per call: 64 KiB of a bomb would inflate to 64 MiB.
            data = self._inflater.unconsumed_tail or self._source.read(_IN_CHUNK)
            try:
                out = self._inflater.decompress(data, _OUT_CHUNK)
            except zlib.error as exc:
                raise InvalidInputError(f"the deflated data set is corrupt: {exc}") from exc
            if not data and not out:  # the file ended and nothing is pending
                if not self._inflater.eof:
                    raise InvalidInputError(
                        "the deflated data set is truncated: the deflate stream has no end"
                    )
                self._done = True
                break
            if self.produced + len(out) > self._limit:
                raise InflationLimitError(
                    f"the deflated data set inflates to more than {self._limit} bytes, the "
                    "archive's max_decompressed_bytes: refused as a possible deflate bomb"
                )
            self._buf += out
            if self._inflater.eof:
                self._done = True
            keep_from = min(self._pos, self.produced) - _WINDOW
            if keep_from > self._base:
                del self._buf[: keep_from - self._base]
                self._base = keep_from
