"""Recognising and parsing DICOM by content, never by file name.

A file is DICOM if it has the ``DICM`` marker after a 128-byte preamble, or (for files written
without the Part 10 header, as some modalities and DICOMDIR members are) if it starts with a
plausible data element of group 0002 or 0008. Only the header is parsed: pixel data is never
loaded here, so a 1 GiB file costs no more memory than a small one. A deflated data set
(PS3.5 A.5) is inflated lazily up to the pixel data, never whole: pydicom alone would inflate
all of it in memory, which is what a deflate bomb counts on. Whole-file checks (lengths, pixel
data, inflation cap) are :mod:`medshard.ingest.validate`'s.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError
from pydicom.filereader import read_dataset, read_preamble
from pydicom.tag import BaseTag

from medshard.errors import InvalidDicomError, InvalidInputError, UnsupportedContentError
from medshard.ingest.inflate import DEFLATED, InflatingReader
from medshard.ingest.uids import uid_problem

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Header values larger than this are skipped, not read, when a deflated header is parsed.
_DEFER_BYTES: Final = 1024 * 1024

_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP container (e.g. an Office spreadsheet or document)"),
    (0, b"\xd0\xcf\x11\xe0", "an OLE2 file (e.g. a legacy Excel or Word document)"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (344, b"n+1\x00", "a NIfTI-1 volume"),
    (344, b"ni1\x00", "a NIfTI-1 header"),
    (4, b"n+2\x00", "a NIfTI-2 volume"),
]


def sniff_non_dicom(head: bytes) -> str:
    """A one-line description of what a non-DICOM file looks like."""
    if not head:
        return "an empty file"
    for offset, magic, what in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return what
    if head and all(b in b"\t\n\r" or 32 <= b < 127 or b >= 128 for b in head[:512]):
        return "a text file"
    return "an unrecognised binary file"


def _plausible_raw_dataset(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a low tag of group 0002 or 0008."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = head[4:6]
    return (vr.isalpha() and vr.isupper()) or struct.unpack("<I", head[4:8])[0] < 0x10000


def check_signature(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 1 KiB) has a Part 10 preamble.

    Raises
    ------
    UnsupportedContentError
        Neither a preamble with ``DICM`` nor a plausible bare data set: not DICOM.
    """
    has_preamble = head[128:132] == b"DICM"
    if not has_preamble and not _plausible_raw_dataset(head):
        raise UnsupportedContentError(f"not DICOM: looks like {sniff_non_dicom(head)}")
    return has_preamble


def read_header(
    source: Path | BinaryIO, name: str = "", *, max_inflated_bytes: int = 1024**3
) -> Dataset:
    """Parse the header (everything before pixel data); raise if it is not usable DICOM.

    ``max_inflated_bytes`` bounds the inflation of a deflated data set (the header of a
    well-formed one comes long before it); the pipeline passes the deployment's
    ``max_decompressed_bytes``, whose default this is.
    """
    fh: BinaryIO = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
    try:
        start = fh.tell()
        head = fh.read(1024)
        fh.seek(start)
        has_preamble = check_signature(head)
        try:
            if _meta_syntax(fh, has_preamble) == DEFLATED:
                ds = _read_deflated_header(fh, has_preamble, max_inflated_bytes)
            else:
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=not has_preamble)
        except InvalidInputError:
            raise  # ours already says what is wrong (e.g. the inflation cap)
        except (PydicomInvalidDicomError, ValueError, KeyError, EOFError, OSError) as exc:
            raise InvalidDicomError(f"unreadable DICOM header: {exc}") from exc
        except Exception as exc:  # pydicom raises assorted errors on damaged files
            raise InvalidDicomError(
                f"unreadable DICOM header: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            fh.seek(start)
    finally:
        if isinstance(source, Path):
            fh.close()
    _validate(ds)
    return ds


def _at_pixel_data(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)


def _meta_syntax(fh: BinaryIO, has_preamble: bool) -> str:
    """The Transfer Syntax UID in the file meta, if any; ``fh`` is left where it was."""
    start = fh.tell()
    try:
        if has_preamble:
            fh.seek(132, 1)
        return str(_read_meta(fh).get("TransferSyntaxUID", ""))
    finally:
        fh.seek(start)


def _read_meta(fh: BinaryIO) -> FileMetaDataset:
    """File meta information (group 0002, empty when absent) from the current position."""
    start = fh.tell()
    if fh.read(2) != b"\x02\x00":
        fh.seek(start)
        return FileMetaDataset()
    fh.seek(start)
    meta = read_dataset(fh, False, True, stop_when=lambda tag, _vr, _len: tag.group != 2)
    return FileMetaDataset(meta)


def _read_deflated_header(fh: BinaryIO, has_preamble: bool, limit: int) -> Dataset:
    """The header of a Deflated Explicit VR Little Endian file, inflated only as far as it
    reaches; values over 1 MiB before the pixel data are skipped, not loaded."""
    preamble = read_preamble(fh, False) if has_preamble else None
    meta = _read_meta(fh)
    inflated = cast(BinaryIO, InflatingReader(fh, limit))
    ds = read_dataset(inflated, False, True, stop_when=_at_pixel_data, defer_size=_DEFER_BYTES)
    # No file to re-read deferred values from: they would be inflated offsets into raw bytes.
    out = FileDataset(io.BytesIO(), ds, preamble, meta, False, True)
    out.set_original_encoding(False, True, ds.original_character_set)
    return out


def _validate(ds: Dataset) -> None:
    meta_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) if ds.file_meta else ""
    if meta_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise UnsupportedContentError(
            "a DICOMDIR index: the files it references are imported on their own"
        )
    missing = [
        kw
        for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
        if not _text(ds, kw)
    ]
    if missing:
        raise InvalidDicomError(f"DICOM file lacks {', '.join(missing)}: an archive needs them")
    for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"):
        problem = uid_problem(_text(ds, kw, 256))
        if problem is not None:
            raise InvalidDicomError(f"{kw} {_text(ds, kw, 80)!r} is not a valid UID: {problem}")


@functools.cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"no DICOM keyword {keyword!r}")
    return tag


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    try:  # by tag: pydicom's lookup by keyword costs more than reading the value
        element = ds.get(_tag(keyword))
        value: Any = element.value if element is not None else None
    except Exception:  # a malformed element: treat as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword).split("\\")[0]
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


@dataclass(frozen=True)
class InstanceFields:
    """What the catalog indexes about one instance."""

    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    series_date: str
    series_time: str
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    bits_allocated: int | None


#: The top-level elements :func:`instance_fields` reads, plus the character set that decodes
#: them: validation keeps these raw as it walks the file, so the header is parsed once.
INDEXED_KEYWORDS: Final = (
    "SpecificCharacterSet", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "StudyDescription", "ReferringPhysicianName", "SeriesInstanceUID", "Modality",
    "SeriesNumber", "SeriesDescription", "BodyPartExamined", "SeriesDate", "SeriesTime",
    "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    "BitsAllocated",
)  # fmt: skip


def instance_fields(ds: Dataset) -> InstanceFields:
    tsuid = str(getattr(ds.file_meta, "TransferSyntaxUID", "")) if ds.file_meta else ""
    return InstanceFields(
        patient_id=_text(ds, "PatientID", 128),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate", 16),
        patient_sex=_text(ds, "PatientSex", 16),
        study_instance_uid=_text(ds, "StudyInstanceUID", 64),
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        series_instance_uid=_text(ds, "SeriesInstanceUID", 64),
        modality=_text(ds, "Modality", 16),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        body_part=_text(ds, "BodyPartExamined", 64),
        series_date=_text(ds, "SeriesDate", 8),
        series_time=_text(ds, "SeriesTime", 16),
        sop_instance_uid=_text(ds, "SOPInstanceUID", 64),
        sop_class_uid=_text(ds, "SOPClassUID", 64),
        instance_number=_int(ds, "InstanceNumber"),
        transfer_syntax_uid=tsuid,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        bits_allocated=_int(ds, "BitsAllocated"),
    )
