"""Whole-file structural validation, run before a single byte of an instance is stored.

Header parsing (:mod:`medshard.ingest.dicom`) stops before the pixel data, so on its own it
acknowledges files that are broken further on and serves them back broken. This module walks
every data element of the file, nested sequences and pixel data fragments included, reading
only element headers and a few small values (memory stays bounded whatever the file's size),
and refuses:

* an element, item or fragment whose length runs past its container or the end of the file
  (a truncated file, or a "lying" length such as 0xFFFFFFF0);
* malformed sequences and encapsulated pixel data (items where items belong, a delimiter);
* native pixel data whose length is not Rows x Columns x Samples per Pixel x Bits Allocated
  / 8 x Number of Frames (half an image is not an image), and encapsulated pixel data with
  fewer fragments than frames;
* a deflated data set (PS3.5 A.5) that inflates past ``max_decompressed_bytes``, inflated as
  a stream that never holds more than a window in memory, and a frame whose decoded size
  would exceed that cap (what a render or transcode would have to allocate).

It also reports a preamble that must be zeroed (:mod:`medshard.ingest.preamble`). The
ingest pipeline calls :func:`validate_stream` once, so file import, STOW-RS and C-STORE all
get the same checks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Final, cast

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from medshard.errors import InvalidDicomError
from medshard.ingest.dicom import INDEXED_KEYWORDS, check_signature
from medshard.ingest.inflate import DEFLATED, InflatingReader, InflationLimitError
from medshard.ingest.preamble import PREAMBLE_SIZE, ZeroedPreamble, preamble_threat

__all__ = ["MAX_DEPTH", "NATIVE", "Validation", "validate_stream"]

#: Transfer syntaxes whose pixel data is native (uncompressed, one defined length).
NATIVE: Final = frozenset(
    {"", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", DEFLATED}
)
#: Sequence nesting deeper than this is refused (real objects nest a handful of levels).
MAX_DEPTH: Final = 32

_UNDEFINED: Final = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ROWS, _COLUMNS, _SAMPLES, _BITS = 0x00280010, 0x00280011, 0x00280002, 0x00280100
_FRAMES, _PHOTOMETRIC, _TSYNTAX = 0x00280008, 0x00280004, 0x00020010
#: Small top-level values the checks need (the transfer syntax is read from the file meta).
_CAPTURED: Final = frozenset({_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES, _PHOTOMETRIC, _TSYNTAX})
#: Top-level elements kept raw for the catalog's fields (see ``Validation.header``); longer
#: values than this are not index material and are skipped.
_INDEXED: Final = frozenset(cast(int, tag_for_keyword(k)) for k in INDEXED_KEYWORDS)
_MAX_INDEXED_LENGTH: Final = 1024
_VRS: Final = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF"}
    | {"OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN"}
    | {"UR", "US", "UT", "UV"}
)
_LONG_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)


@dataclass(frozen=True)
class Validation:
    """What validation found out about an acceptable file."""

    transfer_syntax: str
    #: Offset of the 128-byte preamble in the stream, when the file has one.
    preamble_at: int | None = None
    #: Why the preamble must be zeroed on store (``None``: store it as it is).
    preamble_threat: str | None = None
    #: The top-level elements the catalog indexes, as pydicom decodes them (character set
    #: included) from the raw bytes the walk kept: what ``read_header`` would give for them,
    #: without parsing the header a second time.
    header: Dataset | None = field(default=None, compare=False, repr=False)

    @property
    def note(self) -> str:
        """A line for the caller when the stored bytes will differ from the input."""
        if self.preamble_threat is None:
            return ""
        return (
            f"the 128-byte file preamble held {self.preamble_threat} and was zeroed; the "
            "stored file differs from the one sent only in those bytes"
        )

    def stored_stream(self, fh: BinaryIO) -> BinaryIO:
        """``fh`` as it must be stored: with its preamble zeroed when that is needed."""
        if self.preamble_threat is None or self.preamble_at is None:
            return fh
        return cast(BinaryIO, ZeroedPreamble(fh, self.preamble_at))


def validate_stream(fh: BinaryIO, *, max_decompressed_bytes: int) -> Validation:
    """Check a whole Part 10 file (or bare data set) before it is stored; ``fh`` is rewound.

    Parameters
    ----------
    fh : seekable binary stream
        Positioned at the start of the file.
    max_decompressed_bytes : int
        Cap on the inflated size of a deflated data set and on one decoded frame.

    Raises
    ------
    UnsupportedContentError
        Not DICOM at all (the same one-line description as header parsing gives).
    InvalidDicomError
        Truncated or malformed: the message names the element and what is wrong.
    """
    start = fh.tell()
    try:
        return _validate(fh, start, max_decompressed_bytes)
    except (struct.error, UnicodeDecodeError, OSError) as exc:
        raise InvalidDicomError(f"malformed DICOM: {exc}") from exc
    finally:
        fh.seek(start)


def _validate(fh: BinaryIO, start: int, cap: int) -> Validation:
    head = fh.read(1024)  # as much as header parsing sniffs, for the same verdict
    has_preamble = check_signature(head)
    end = fh.seek(0, 2)
    fh.seek(start + (PREAMBLE_SIZE + 4 if has_preamble else 0))
    plain = _Cursor(fh, end, cap)
    meta = _Walker(plain, implicit=not _looks_explicit(plain.peek(6)), little=True)
    if plain.peek_group() == 0x0002:
        meta.dataset(None, 0, until_group=0x0002)
    tsyntax = meta.text(_TSYNTAX)
    if tsyntax == DEFLATED:
        cursor = _Cursor(cast(BinaryIO, InflatingReader(fh, cap)), None, cap)
    else:
        cursor = plain
    implicit, little = _encoding(tsyntax, cursor)
    walker = _Walker(cursor, implicit=implicit, little=little)
    walker.dataset(None, 0)
    _check_pixels(walker, tsyntax, cap)
    preamble = head[:PREAMBLE_SIZE] if has_preamble else b""
    header = Dataset(walker.raw)
    header.file_meta = FileMetaDataset()
    if tsyntax:
        header.file_meta.TransferSyntaxUID = UID(tsyntax)
    return Validation(
        tsyntax,
        preamble_at=start if has_preamble else None,
        preamble_threat=preamble_threat(preamble) if has_preamble else None,
        header=header,
    )


def _encoding(tsyntax: str, cursor: _Cursor) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the data set; like pydicom, the bytes have the last word
    when the first element's VR contradicts the declared syntax."""
    declared_implicit = tsyntax == "1.2.840.10008.1.2"
    first = cursor.peek(6)
    looks_explicit = _looks_explicit(first)
    if not tsyntax:  # a bare data set: guess as pydicom does
        group = struct.unpack("<H", first[:2])[0] if len(first) >= 2 else 0
        return (not looks_explicit, not (looks_explicit and group >= 1024))
    if tsyntax == "1.2.840.10008.1.2.2":
        return False, False
    return (not looks_explicit if first else declared_implicit), True


def _looks_explicit(first: bytes) -> bool:
    """Whether an element header (its first 6 bytes) carries an explicit VR."""
    return len(first) == 6 and first[4:6].decode("latin-1") in _VRS


class _Cursor:
    """Reads a data set from a plain stream (bounded by its size) or an inflating one."""

    def __init__(self, fh: BinaryIO, end: int | None, cap: int) -> None:
        self.fh = fh
        self.end = end  # None: inflating, the size is unknown until the stream ends
        self.cap = cap

    def tell(self) -> int:
        return self.fh.tell()

    def read(self, size: int, what: str) -> bytes:
        data = self.fh.read(size)
        if len(data) != size:
            raise InvalidDicomError(f"the file is truncated: it ends inside {what}")
        return data

    def peek(self, size: int) -> bytes:
        pos = self.fh.tell()
        data = self.fh.read(size)
        self.fh.seek(pos)
        return data

    def peek_group(self) -> int | None:
        data = self.peek(2)
        return struct.unpack("<H", data)[0] if len(data) == 2 else None

    def at_end(self) -> bool:
        if self.end is not None:
            return self.fh.tell() >= self.end
        return cast(InflatingReader, self.fh).at_end

    def room(self, limit: int | None) -> int:
        """Bytes left before ``limit`` (a container's end), the file's end or the cap."""
        bound = self.end if self.end is not None else self.cap
        if limit is not None:
            bound = min(bound, limit)
        return bound - self.fh.tell()

    def skip(self, size: int, what: str) -> None:
        target = self.fh.tell() + size
        self.fh.seek(target)
        if self.end is None and cast(InflatingReader, self.fh).produced < target:
            raise InvalidDicomError(f"the file is truncated: it ends inside {what}")


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class _Walker:
    """Walks data elements, checking every length against the room its container leaves."""

    cur: _Cursor
    implicit: bool
    little: bool
    values: dict[int, bytes] = field(default_factory=dict)
    raw: dict[BaseTag, DataElement | RawDataElement] = field(default_factory=dict)
    pixel_tag: int | None = None
    pixel_length: int | None = None  # None: encapsulated
    fragments: int = 0

    def text(self, tag: int) -> str:
        return self.values.get(tag, b"").decode("latin-1").strip(" \x00")

    def number(self, tag: int) -> int | None:
        raw = self.values.get(tag)
        if raw is None or len(raw) < 2:
            return None
        return int(struct.unpack("<H" if self.little else ">H", raw[:2])[0])

    # -- data sets, sequences, fragments --------------------------------------------------

    def dataset(
        self, limit: int | None, depth: int, *, delimited: bool = False, until_group: int = 0
    ) -> None:
        """Elements up to ``limit``, the item delimiter, the end of the stream or of a group."""
        cur = self.cur
        while True:
            pos = cur.tell()
            if limit is not None and pos >= limit:
                if delimited or pos > limit:
                    raise InvalidDicomError(f"a data set overruns its item at offset {pos}")
                return
            if limit is None and not delimited and cur.at_end():
                return
            if until_group and cur.peek_group() != until_group:
                return
            tag, vr, length = self._header(depth)
            if tag == _ITEM_END:
                if not delimited:
                    raise InvalidDicomError(f"an item delimiter outside an item at offset {pos}")
                return
            if tag >> 16 == 0xFFFE:
                raise InvalidDicomError(f"item tag {_tag(tag)} inside a data set at offset {pos}")
            self._value(tag, vr, length, limit, depth)

    def _header(self, depth: int) -> tuple[int, str | None, int]:
        cur, e = self.cur, "<" if self.little else ">"
        raw = cur.read(8, "an element header")
        group, elem = struct.unpack(e + "HH", raw[:4])
        tag = group << 16 | elem
        if group == 0xFFFE or self.implicit:
            (length,) = struct.unpack(e + "I", raw[4:])
            return tag, None if group == 0xFFFE else _implicit_vr(tag), length
        vr = raw[4:6].decode("latin-1")
        if vr not in _VRS:
            raise InvalidDicomError(f"element {_tag(tag)} has an invalid VR {vr!r}")
        if vr in _LONG_VRS:
            (length,) = struct.unpack(e + "I", cur.read(4, f"the header of {_tag(tag)}"))
        else:
            (length,) = struct.unpack(e + "H", raw[6:])
        return tag, vr, length

    def _value(self, tag: int, vr: str | None, length: int, limit: int | None, depth: int) -> None:
        cur, top = self.cur, depth == 0
        if top and tag in _PIXEL_TAGS:
            self.pixel_tag, self.pixel_length = tag, None if length == _UNDEFINED else length
        if length == _UNDEFINED:
            if tag in _PIXEL_TAGS or vr in ("OB", "OW"):
                count = self._fragments(tag, limit)
                self.fragments = count if top else self.fragments
            elif vr in (None, "SQ"):
                self._sequence(tag, limit, depth + 1)
            elif vr == "UN":  # PS3.5 6.2.2: its items are encoded Implicit VR Little Endian
                inner = _Walker(cur, implicit=True, little=True)
                inner._sequence(tag, limit, depth + 1)
            else:
                raise InvalidDicomError(f"element {_tag(tag)} ({vr}) has an undefined length")
            return
        room = cur.room(limit)
        if length > room:
            if cur.end is None and length > cur.cap - cur.tell():
                raise InflationLimitError(
                    f"the deflated data set would inflate to more than {cur.cap} bytes (element "
                    f"{_tag(tag)} claims {length}), the archive's max_decompressed_bytes: "
                    "refused as a possible deflate bomb"
                )
            raise InvalidDicomError(
                f"element {_tag(tag)} claims {length} bytes but only {max(room, 0)} "
                "remain: the file is truncated or the length is corrupt"
            )
        if vr == "SQ":
            self._sequence(tag, cur.tell() + length, depth + 1, defined=True)
        elif top and (tag in _CAPTURED or tag in _INDEXED) and length <= _MAX_INDEXED_LENGTH:
            tell = cur.tell()
            value = cur.read(length, f"element {_tag(tag)}")
            if tag in _CAPTURED and length <= 64:
                self.values[tag] = value
            if tag in _INDEXED:
                key = BaseTag(tag)
                self.raw[key] = RawDataElement(
                    key, vr, length, value, tell, self.implicit, self.little, True, False
                )
        else:
            cur.skip(length, f"element {_tag(tag)}")

    def _items(self, tag: int, limit: int | None, defined: bool) -> tuple[int, int] | None:
        """The next item's (tag, length), or None at the end of a defined-length container."""
        cur = self.cur
        pos = cur.tell()
        if limit is not None and pos >= limit:
            if defined and pos == limit:
                return None
            raise InvalidDicomError(f"{_tag(tag)} runs past its container at offset {pos}")
        raw = cur.read(8, f"an item of {_tag(tag)}")
        group, elem, length = struct.unpack("<HHI" if self.little else ">HHI", raw)
        return group << 16 | elem, length

    def _sequence(self, tag: int, limit: int | None, depth: int, *, defined: bool = False) -> None:
        if depth > MAX_DEPTH:
            raise InvalidDicomError(f"sequences nest deeper than {MAX_DEPTH} levels")
        while (item := self._items(tag, limit, defined)) is not None:
            item_tag, length = item
            if item_tag == _SEQ_END and not defined:
                return
            if item_tag != _ITEM:
                raise InvalidDicomError(
                    f"sequence {_tag(tag)} holds {_tag(item_tag)} where an item belongs"
                )
            if length == _UNDEFINED:
                self.dataset(limit, depth, delimited=True)
                continue
            if length > self.cur.room(limit):
                raise InvalidDicomError(
                    f"an item of sequence {_tag(tag)} claims {length} bytes, more than remain"
                )
            self.dataset(self.cur.tell() + length, depth)

    def _fragments(self, tag: int, limit: int | None) -> int:
        """Encapsulated pixel data (PS3.5 A.4): offset table item, fragments, delimiter.

        Returns the number of fragments after the offset table.
        """
        count, first = 0, True
        while (item := self._items(tag, limit, False)) is not None:
            item_tag, length = item
            if item_tag == _SEQ_END:
                return count
            if item_tag != _ITEM or length == _UNDEFINED:
                raise InvalidDicomError(
                    f"encapsulated {_tag(tag)} holds {_tag(item_tag)} (length {length:#x}) "
                    "where a fragment belongs"
                )
            if length > self.cur.room(limit):
                raise InvalidDicomError(
                    f"a fragment of {_tag(tag)} claims {length} bytes but fewer remain: "
                    "the pixel data is truncated"
                )
            self.cur.skip(length, f"a fragment of {_tag(tag)}")
            count += 0 if first else 1
            first = False
        return count  # pragma: no cover - _items returns None only for defined lengths


def _implicit_vr(tag: int) -> str | None:
    """The dictionary VR of an Implicit VR element (None when unknown, e.g. private)."""
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    return "SQ" if vr == "SQ" else vr.split(" ")[0]


def _check_pixels(walker: _Walker, tsyntax: str, cap: int) -> None:
    """Pixel data must hold the image its attributes describe (see the module docstring)."""
    if walker.pixel_tag is None:
        return
    name = _tag(walker.pixel_tag)
    rows, columns = walker.number(_ROWS), walker.number(_COLUMNS)
    samples, bits = walker.number(_SAMPLES) or 1, walker.number(_BITS)
    frames_text = walker.text(_FRAMES).split("\\")[0].strip()
    if frames_text and not frames_text.lstrip("+").isdigit():
        raise InvalidDicomError(f"Number of Frames {frames_text!r} is not a whole number")
    frames = int(frames_text) if frames_text else 1
    if rows is None or columns is None or bits is None:
        if walker.pixel_length is None or walker.pixel_length > 0:
            raise InvalidDicomError(f"{name} is present without Rows, Columns or Bits Allocated")
        return
    frame_bits = rows * columns * samples * bits
    if walker.text(_PHOTOMETRIC) == "YBR_FULL_422" and walker.pixel_length is not None:
        frame_bits = frame_bits // 3 * 2  # two chroma samples shared by each pixel pair
    if frame_bits // 8 > cap:
        raise InflationLimitError(
            f"one frame of {rows} x {columns} x {samples} samples of {bits} bits decodes to "
            f"{frame_bits // 8} bytes, more than the archive's max_decompressed_bytes ({cap})"
        )
    if walker.pixel_length is None:
        if walker.fragments < max(frames, 1):
            raise InvalidDicomError(
                f"encapsulated {name} has {walker.fragments} fragment(s) for {frames} frame(s): "
                "the pixel data is truncated"
            )
        return
    if tsyntax not in NATIVE:
        raise InvalidDicomError(
            f"{name} of transfer syntax {tsyntax} must be encapsulated, not one plain value"
        )
    expected = (frame_bits * frames + 7) // 8
    if walker.pixel_length not in (expected, expected + (expected & 1)):
        what = "truncated" if walker.pixel_length < expected else "has extra bytes"
        raise InvalidDicomError(
            f"pixel data {what}: {name} holds {walker.pixel_length} bytes but {rows} rows x "
            f"{columns} columns x {samples} samples x {bits} bits x {frames} frame(s) need "
            f"{expected}"
        )
