"""An instance's stored bytes, as stored or transcoded, and its metadata (WADO-RS retrieve).

Two choices shape this module:

* Stored bytes are the truth. WADO-RS streams an instance's object as stored (chunk by chunk,
  hash-verified) whenever the client accepts its transfer syntax; only a request for an
  uncompressed syntax it was not stored in makes us decode and re-encode (lossless for
  lossless sources; the SOP Instance UID is kept, as PS3.5 8.2.1 allows for lossless changes).
* Metadata needs the header only: :class:`ObjectReader` pulls chunks lazily, so the metadata
  of a 1 GiB multi-frame instance costs one chunk of memory, not the whole file.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medshard.api.dicomweb.dicomjson import dataset_to_json
from medshard.api.dicomweb.lookup import InstanceRef
from medshard.api.errors import NotAcceptableError
from medshard.cluster.archive import Archive
from medshard.errors import InvalidInputError

#: Transfer syntaxes we can transcode any decodable instance into.
UNCOMPRESSED: Final = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
_PIXEL_TAGS: Final = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}


class ObjectReader:
    """A seekable, read-only file over an object's plaintext chunks, fetched only when needed.

    Parsing a header touches the first chunk alone; everything read is kept so pydicom may
    seek back, which is why this is for headers, not for whole large objects.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self.name = None  # pydicom looks for a file name

    def _fill(self, upto: int | None) -> None:
        while not self._eof and (upto is None or len(self._buf) < upto):
            piece = next(self._chunks, None)
            if piece is None:
                self._eof = True
            else:
                self._buf += piece

    def read(self, size: int | None = -1) -> bytes:
        end = None if size is None or size < 0 else self._pos + size
        self._fill(end)
        data = bytes(self._buf[self._pos : end])
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(None)
            offset += len(self._buf)
        elif whence == 1:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def stored_bytes(archive: Archive, ref: InstanceRef) -> Iterator[bytes]:
    """The instance exactly as stored, chunk by chunk (verified, decrypted)."""
    return archive.store.read(ref.object_key, near_site=ref.near_site)


def load_dataset(archive: Archive, ref: InstanceRef) -> Dataset:
    """The whole instance parsed, pixel data included (for frames and rendering)."""
    data = archive.store.read_all(ref.object_key, near_site=ref.near_site)
    return pydicom.dcmread(io.BytesIO(data), force=True)


def transfer_syntax_of(ds: Dataset) -> UID:
    """The dataset's transfer syntax; files without a Part 10 header were read as native."""
    stored = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta is not None else None
    if stored:
        return UID(str(stored))
    implicit, little = ds.original_encoding
    return ImplicitVRLittleEndian if implicit is not False and little else ExplicitVRLittleEndian


def is_encapsulated(tsyntax: UID) -> bool:
    """Whether pixel data in this syntax is encapsulated; False for syntaxes pydicom does
    not know (a private one), which are then treated as native."""
    try:
        return bool(tsyntax.is_encapsulated)
    except ValueError:
        return False


def transcode(data: bytes, target: str) -> bytes:
    """Re-encode a Part 10 file in an uncompressed transfer syntax (decoding pixel data).

    Raises
    ------
    NotAcceptableError
        ``target`` is not uncompressed, or the instance cannot be decoded or re-encoded
        (e.g. big-endian pixel data, a codec that is not installed).
    """
    if target not in UNCOMPRESSED:
        raise NotAcceptableError(f"cannot transcode to {target}: only to uncompressed syntaxes")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        if is_encapsulated(transfer_syntax_of(ds)):
            ds.decompress(generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(target)
        out = io.BytesIO()
        ds.save_as(
            out,
            implicit_vr=target == ImplicitVRLittleEndian,
            little_endian=True,
            enforce_file_format=True,
        )
    except Exception as exc:  # pydicom and its plugins raise many kinds
        raise NotAcceptableError(
            f"the instance cannot be transcoded to {target} ({exc}); "
            "ask for transfer-syntax=* to get it as stored"
        ) from exc
    return out.getvalue()


def instance_body(archive: Archive, ref: InstanceRef, target: str | None) -> Iterator[bytes]:
    """The instance in ``target`` syntax (None: as stored), produced lazily for streaming."""
    if target is None or target == ref.transfer_syntax_uid:
        yield from stored_bytes(archive, ref)
    else:
        yield transcode(archive.store.read_all(ref.object_key, near_site=ref.near_site), target)


def instance_metadata(archive: Archive, ref: InstanceRef, bulk_base: str) -> dict[str, Any]:
    """The instance's DICOM JSON, large binary values and pixel data as BulkDataURIs.

    ``bulk_base`` is the instance's ``.../bulkdata`` URL; paths below it are those of
    :func:`medshard.api.dicomweb.dicomjson.resolve_bulkdata_path`.
    """
    reader = ObjectReader(stored_bytes(archive, ref))
    try:
        ds = pydicom.dcmread(reader, stop_before_pixels=True, force=True)
        head = reader.read(4)
    finally:
        reader.close()
    out = dataset_to_json(ds, bulkdata_uri=lambda path: f"{bulk_base}/{path}")
    tsyntax = transfer_syntax_of(ds)
    tag = 0
    if len(head) == 4 and tsyntax != DeflatedExplicitVRLittleEndian:
        group, element = struct.unpack(
            "<HH" if ds.original_encoding[1] is not False else ">HH", head
        )
        tag = (group << 16) | element
    if tag not in _PIXEL_TAGS and ref.has_pixels:
        tag = 0x7FE00010
    if tag in _PIXEL_TAGS:
        vr = _PIXEL_TAGS[tag]
        if tag == 0x7FE00010 and (
            is_encapsulated(tsyntax) or int(ds.get("BitsAllocated") or 16) <= 8
        ):
            vr = "OB"
        out[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{bulk_base}/{tag:08X}"}
    return out


def element_bytes(elem: DataElement, *, path: str) -> bytes:
    """The raw value of a binary element resolved from a bulk data path."""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise InvalidInputError(f"bulk data path {path!r} does not name a binary value")


def json_array_stream(
    objects: Iterator[dict[str, Any]], dumps: Callable[[Any], str]
) -> Iterator[bytes]:
    """A JSON array streamed object by object (study metadata can hold thousands)."""
    yield b"["
    for i, obj in enumerate(objects):
        yield (b"," if i else b"") + dumps(obj).encode()
    yield b"]"
