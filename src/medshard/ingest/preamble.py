"""The 128-byte Part 10 preamble: kept when harmless, zeroed when it could make a polyglot.

PS3.10 7.1 leaves the preamble to applications (its stated use is a TIFF header, so one file
can be read as DICOM and as TIFF) and asks for zeros otherwise. An attacker can put an
executable header there instead ("MZ" for Windows PE, ELF, a script, HTML, a PDF header): the
file stays valid DICOM and becomes a program too (the DICOM/PE polyglot, CVE-2019-11687).
So the archive keeps a zero or a TIFF preamble and zeroes any other one on store: the stored
bytes then differ from the input in those 128 bytes only, and the DICOM content is untouched.
"""

from __future__ import annotations

import io
from typing import BinaryIO, Final

__all__ = ["PREAMBLE_SIZE", "ZeroedPreamble", "preamble_threat"]

PREAMBLE_SIZE: Final = 128
_TIFF: Final = (b"II*\x00", b"MM\x00*")
#: Leading signatures named in the note; anything else non-zero is "unrecognised content".
_SIGNATURES: Final = (
    (b"MZ", "a Windows executable (MZ/PE) header"),
    (b"\x7fELF", "an ELF executable header"),
    (b"#!", "a script interpreter line"),
    (b"\xca\xfe\xba\xbe", "a Mach-O executable header"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable header"),
    (b"%PDF", "a PDF header"),
    (b"PK\x03\x04", "a ZIP header"),
)
#: Markers that turn even a TIFF preamble into another format's start (readers look for them).
_EMBEDDED: Final = (b"%pdf", b"<script", b"<html", b"<!doctype", b"<svg", b"<?xml")


def preamble_threat(preamble: bytes) -> str | None:
    """Why this preamble must be zeroed, or ``None`` when it can be stored as is.

    Examples
    --------
    >>> preamble_threat(bytes(128)) is None
    True
    >>> preamble_threat(b"MZ" + bytes(126))
    'a Windows executable (MZ/PE) header'
    """
    if not any(preamble):
        return None
    lowered = preamble.lower()
    if preamble[:4] in _TIFF and not any(m in lowered for m in _EMBEDDED):
        return None  # a dual-personality DICOM/TIFF file, as PS3.10 7.1 intends
    for magic, what in _SIGNATURES:
        if preamble.startswith(magic):
            return what
    return "unrecognised non-zero content"


class ZeroedPreamble(io.RawIOBase):
    """A view of a seekable stream whose preamble (``start`` .. ``start + 128``) reads as zeros.

    Reading, hashing and storing through the view all see the neutralised bytes, so the
    duplicate check and the stored object agree; the underlying file is never modified.
    """

    def __init__(self, raw: BinaryIO, start: int) -> None:
        super().__init__()
        self._raw = raw
        self._start = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._raw.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        pos = self._raw.tell()
        data = self._raw.read(-1 if size is None else size)
        low = max(self._start, pos)
        high = min(self._start + PREAMBLE_SIZE, pos + len(data))
        if low >= high:
            return data
        patched = bytearray(data)
        patched[low - pos : high - pos] = bytes(high - low)
        return bytes(patched)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)
