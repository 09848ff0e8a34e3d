"""Builders of hostile DICOM inputs, shared by the ingest and API tests.

Every file is made here with pydicom (plus byte surgery where pydicom would refuse), so the
tests need no fixtures on disk: a deflate bomb, truncated or padded pixel data, lying
lengths, broken fragments, polyglot preambles.
"""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

PIXEL_TAG_EXPLICIT = b"\xe0\x7f\x10\x00"


def image(
    rows: int = 64,
    columns: int = 64,
    frames: int = 1,
    *,
    syntax: str = ExplicitVRLittleEndian,
    study: str | None = None,
    patient: str = "HOSTILE-1",
) -> Dataset:
    """A small, valid 16-bit CT image (fresh UIDs) with native pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient
    ds.PatientName = "Hostile^Input"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(range(256)) * (rows * columns * frames * 2 // 256) + bytes(
        rows * columns * frames * 2 % 256
    )
    return ds


def encode(ds: Dataset, preamble: bytes | None = None) -> bytes:
    """A Part 10 file of ``ds`` in its file meta's transfer syntax."""
    buf = io.BytesIO()
    ds.preamble = preamble or bytes(128)
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def valid_file(**kwargs: object) -> bytes:
    return encode(image(**kwargs))  # type: ignore[arg-type]


def half_pixel_data(**kwargs: object) -> bytes:
    """A consistent file (lengths agree) whose Pixel Data holds half the image."""
    ds = image(**kwargs)  # type: ignore[arg-type]
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return encode(ds)


def padded_pixel_data() -> bytes:
    """Pixel Data with 4 KiB more than the image needs (data smuggled after the image)."""
    ds = image()
    ds.PixelData = ds.PixelData + bytes(4096)
    return encode(ds)


def lying_length(length: int = 0xFFFFFFF0) -> bytes:
    """A valid file whose Pixel Data element claims ``length`` bytes."""
    data = bytearray(valid_file())
    at = data.rindex(PIXEL_TAG_EXPLICIT) + 8  # tag, VR "OW", two reserved bytes
    data[at : at + 4] = struct.pack("<I", length)
    return bytes(data)


def lying_header_length() -> bytes:
    """A Patient Name (before the pixel data) whose 2-byte length claims 0xFFF0 bytes."""
    data = bytearray(valid_file())
    at = data.index(b"\x10\x00\x10\x00PN") + 6
    data[at : at + 2] = struct.pack("<H", 0xFFF0)
    return bytes(data)


def cut(data: bytes, keep: float = 0.6) -> bytes:
    """The first ``keep`` of a file: what an interrupted transfer leaves."""
    return data[: int(len(data) * keep)]


def encapsulated(fragments: list[bytes], frames: int = 1, *, delimiter: bool = True) -> bytes:
    """A JPEG-LS file whose pixel data is the given fragments (after an empty offset table)."""
    ds = image(frames=frames, syntax=JPEGLSLossless)
    del ds.PixelData
    return encode(ds) + encapsulated_pixel_data(fragments, delimiter=delimiter)


def encapsulated_pixel_data(fragments: list[bytes], *, delimiter: bool = True) -> bytes:
    """The encapsulated Pixel Data element alone, to append to a header ending before it."""
    items = [b"\xfe\xff\x00\xe0" + struct.pack("<I", 0)]
    items += [b"\xfe\xff\x00\xe0" + struct.pack("<I", len(f)) + f for f in fragments]
    tail = b"\xfe\xff\xdd\xe0" + bytes(4) if delimiter else b""
    pixel = PIXEL_TAG_EXPLICIT + b"OB\x00\x00" + b"\xff\xff\xff\xff"
    return pixel + b"".join(items) + tail


def deflated_file(ds: Dataset | None = None) -> bytes:
    """A well-formed Deflated Explicit VR Little Endian file, written by pydicom."""
    ds = ds or image()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return encode(ds)


def deflate_bomb(inflated_bytes: int, *, spread: bool = False) -> bytes:
    """A deflated file whose data set inflates to about ``inflated_bytes``, mostly zeros.

    The zeros are written as 1 MiB blocks, each deflated with a full flush so that every block
    compresses to the same ~1 KiB: a 2 GiB bomb takes ~2 MB and no time to make. By default
    they are the pixel data of 1 MiB frames, the attributes describing exactly that much (its
    one length already says it is too big); with ``spread`` they are many 1 MiB private
    elements before a small image, so only counting inflated bytes can tell.
    """
    block = 1 << 20
    blocks = max(1, inflated_bytes // block)
    ds = image(rows=16, columns=16) if spread else image()
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if not spread:
        ds.Rows = ds.Columns = 1024  # 1024 x 1024 x 8 bits = 1 MiB per frame
        ds.NumberOfFrames = blocks
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plain = encode(ds)
    dataset = plain[_meta_end(plain) :]
    if spread:
        filler = b"\x29\x00\x10\x10OB\x00\x00" + struct.pack("<I", block) + bytes(block)
        tail = PIXEL_TAG_EXPLICIT + b"OB\x00\x00" + struct.pack("<I", 256) + bytes(256)
    else:
        filler = bytes(block)
        dataset += PIXEL_TAG_EXPLICIT + b"OB\x00\x00" + struct.pack("<I", blocks * block)
        tail = b""
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = squeeze.compress(dataset) + squeeze.flush(zlib.Z_FULL_FLUSH)
    segment = squeeze.compress(filler) + squeeze.flush(zlib.Z_FULL_FLUSH)
    body = head + segment * blocks + squeeze.compress(tail) + squeeze.flush()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return bytes(128) + b"DICM" + meta.getvalue() + body


def _meta_end(data: bytes) -> int:
    """Offset just past the file meta group of a Part 10 file."""
    (group_length,) = struct.unpack("<I", data[140:144])
    return 144 + group_length


def with_preamble(data: bytes, preamble: bytes) -> bytes:
    """``data`` (a Part 10 file) with its preamble replaced by ``preamble`` (128 bytes)."""
    assert len(preamble) == 128 and data[128:132] == b"DICM"
    return preamble + data[128:]


def pe_preamble() -> bytes:
    """The start of a Windows PE executable, as a DICOM/PE polyglot carries it."""
    stub = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    stub += b"\xb8" + bytes(7) + b"\x40" + bytes(35)
    stub += struct.pack("<I", 0x80)  # e_lfanew: the PE header right after the preamble
    stub += b"This program cannot be run in DOS mode.\r\r\n$"
    return stub.ljust(128, b"\x00")


def deeply_nested(depth: int) -> bytes:
    """A file whose sequences nest ``depth`` levels deep."""
    ds = image()
    inner = Dataset()
    inner.CodeValue = "1"
    for _ in range(depth):
        outer = Dataset()
        outer.ContentSequence = [inner]
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    return encode(ds)
