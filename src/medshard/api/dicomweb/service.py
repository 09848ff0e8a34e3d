"""What the DICOMweb routes do, without HTTP: find instances, stream or transcode their bytes,
build metadata, cut frames, render and persist thumbnails, ingest STOW-RS parts, run QIDO-RS.

The routes only negotiate media types and turn these results into responses, so every rule
below can be tested, and reused by the CLI or the viewer, without a server. Three choices shape
this module:

* Stored bytes are the truth. WADO-RS streams an instance's object as stored (chunk by chunk,
  hash-verified) whenever the client accepts its transfer syntax; only a request for an
  uncompressed syntax it was not stored in makes us decode and re-encode (lossless for
  lossless sources; the SOP Instance UID is kept, as PS3.5 8.2.1 allows for lossless changes).
* Metadata needs the header only: :class:`ObjectReader` pulls chunks lazily, so the metadata
  of a 1 GiB multi-frame instance costs one chunk of memory, not the whole file.
* STOW-RS stores nothing before the whole request has been parsed (a malformed body leaves no
  partial study behind), then ingests each part through the one ingest pipeline; every part
  gets a verdict with a PS3.18 Table I.2-2 failure reason.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Final, cast

import anyio
import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from sqlalchemy import select

from medshard.api.dicomweb.dicomjson import dataset_to_json
from medshard.api.dicomweb.multipart import Part, iter_parts
from medshard.api.dicomweb.query import Level as QidoLevel
from medshard.api.dicomweb.query import QidoQuery, SingleValue, default_attributes
from medshard.api.errors import NotAcceptableError, PayloadTooLargeError
from medshard.catalog.models import Instance, Patient, Series, StoredObject, Study
from medshard.catalog.search import ATTRIBUTES, DEPTH, Level, search, searchable
from medshard.cluster.archive import Archive
from medshard.errors import (
    InvalidDicomError,
    InvalidInputError,
    MedshardError,
    NotFoundError,
    UnsupportedContentError,
)
from medshard.ingest.dicom import instance_fields, read_header
from medshard.ingest.pipeline import Ingestor
from medshard.ingest.render import RenderCache, frame_count, frame_pixels, render_frame, thumbnail

log = logging.getLogger(__name__)

#: Transfer syntaxes we can transcode any decodable instance into.
UNCOMPRESSED: Final = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})
#: Longer side of persisted thumbnails, in pixels.
THUMBNAIL_SIDE: Final = 128
_PIXEL_TAGS: Final = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}

# PS3.18 Table I.2-2 failure reasons, plus PS3.7's "duplicate SOP instance" for a UID that is
# already stored with other bytes (the archive keeps the first copy); 0x0110 is for our bugs.
OUT_OF_RESOURCES: Final = 0xA700
DATASET_MISMATCH: Final = 0xA900
CANNOT_UNDERSTAND: Final = 0xC000
DUPLICATE_SOP_INSTANCE: Final = 0x0111
PROCESSING_FAILURE: Final = 0x0110


# --------------------------------------------------------------------------- lookup


@dataclass(frozen=True)
class InstanceRef:
    """What the catalog knows about one stored instance, enough to serve it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size: int
    instance_pk: int
    patient_pk: int
    has_pixels: bool

    def path(self) -> str:
        """The instance's WADO-RS path below the DICOMweb root."""
        return f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


def find_instances(
    archive: Archive, study: str, series: str | None = None, sop: str | None = None
) -> list[InstanceRef]:
    """Instances of a study (optionally one series or one instance), in series/instance order.

    Raises
    ------
    NotFoundError
        Nothing matches: the UIDs are unknown, or do not belong together.
    """
    query = (
        select(
            Study.study_instance_uid,
            Series.series_instance_uid,
            Instance.sop_instance_uid,
            Instance.sop_class_uid,
            Instance.transfer_syntax_uid,
            StoredObject.object_key,
            StoredObject.size,
            Instance.id,
            Study.patient_pk,
            Instance.rows,
        )
        .select_from(Instance)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(StoredObject, Instance.object_pk == StoredObject.id)
        .where(Study.study_instance_uid == study, Instance.deleted.is_(False))
        .order_by(
            Series.series_number,
            Series.series_instance_uid,
            Instance.instance_number,
            Instance.sop_instance_uid,
        )
    )
    if series is not None:
        query = query.where(Series.series_instance_uid == series)
    if sop is not None:
        query = query.where(Instance.sop_instance_uid == sop)
    with archive.catalog.session() as session:
        rows = session.execute(query).all()
    if not rows:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFoundError(f"no {what} in study {study}" if sop or series else f"no {what}")
    return [InstanceRef(*row[:9], has_pixels=row[9] is not None) for row in rows]


def representative(refs: Sequence[InstanceRef]) -> InstanceRef:
    """The instance that stands for a series or study: the middle image of its first series.

    Raises
    ------
    NotAcceptableError
        No instance has pixel data (e.g. a series of structured reports): nothing to render.
    """
    images = [r for r in refs if r.has_pixels]
    if not images:
        raise NotAcceptableError("no instance here has pixel data, so there is nothing to render")
    first = [r for r in images if r.series_uid == images[0].series_uid]
    return first[len(first) // 2]


# --------------------------------------------------------------------------- bytes


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
    return archive.store.read(ref.object_key)


def load_dataset(archive: Archive, ref: InstanceRef) -> Dataset:
    """The whole instance parsed, pixel data included (for frames and rendering)."""
    return pydicom.dcmread(io.BytesIO(archive.store.read_all(ref.object_key)), force=True)


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
        yield transcode(archive.store.read_all(ref.object_key), target)


# --------------------------------------------------------------------------- metadata


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


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class FrameFormat:
    """How frames go out: compressed as stored, or uncompressed little-endian bytes."""

    media_type: str
    transfer_syntax: str | None
    compressed: bool


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5]; frame numbers are 1-based (PS3.18 8.3.4)."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"frame list {text!r} must be comma-separated numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidInputError(f"frame numbers start at 1, got {text!r}")
    return numbers


def frames(ds: Dataset, numbers: Sequence[int], fmt: FrameFormat) -> list[bytes]:
    """The requested frames' bytes, compressed as stored or uncompressed (little endian).

    Raises
    ------
    NotFoundError
        A frame number beyond Number of Frames.
    NotAcceptableError
        Uncompressed frames were asked of pixel data no installed decoder handles.
    """
    count = frame_count(ds)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFoundError(f"frame {beyond[0]} does not exist: the instance has {count} frame(s)")
    tsyntax = transfer_syntax_of(ds)
    if fmt.compressed:
        return [get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
    bits = int(ds.get("BitsAllocated") or 0)
    if tsyntax in UNCOMPRESSED and bits % 8 == 0 and "PixelData" in ds:
        size = int(get_expected_length(ds, unit="bytes")) // count
        data = ds.PixelData
        return [bytes(data[(n - 1) * size : n * size]) for n in numbers]
    out = []
    for n in numbers:
        try:
            arr = frame_pixels(ds, n - 1)
        except MedshardError as exc:
            raise NotAcceptableError(f"frame {n} cannot be decoded: {exc}") from exc
        out.append(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes())
    return out


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderRequest:
    """A rendered view: format, 0-based frame, optional window, viewport and JPEG quality."""

    fmt: str = "jpeg"
    frame: int = 0
    window: tuple[float, float] | None = None
    voi_function: str | None = None
    size: tuple[int, int] | None = None
    quality: int = 90


def rendered(archive: Archive, cache: RenderCache, ref: InstanceRef, req: RenderRequest) -> bytes:
    """Render (or fetch from the cache) one frame of an instance as PNG or JPEG."""
    if not ref.has_pixels:
        raise NotAcceptableError(f"instance {ref.sop_uid} has no pixel data to render")
    key = RenderCache.key(
        ref.sop_uid, req.frame, req.window, req.fmt, req.size, req.quality, req.voi_function
    )

    def render() -> bytes:
        ds = load_dataset(archive, ref)
        with _undecodable_is_not_acceptable():
            return render_frame(
                ds,
                req.frame,
                window=req.window,
                fmt=req.fmt,
                size=req.size,
                quality=req.quality,
                voi_function=req.voi_function,
            )

    return cache.get_or_render(key, render)


@contextmanager
def _undecodable_is_not_acceptable() -> Iterator[None]:
    """Pixel data we cannot decode is no fault of the request: no image can be offered (406)."""
    try:
        yield
    except (InvalidDicomError, UnsupportedContentError) as exc:
        raise NotAcceptableError(f"the image cannot be rendered: {exc}") from exc


def thumbnail_png(archive: Archive, ref: InstanceRef) -> bytes:
    """The instance's persisted PNG thumbnail, made and stored on first request.

    The thumbnail is an object of kind ``thumbnail`` (encrypted and replicated like any other)
    linked from ``Instance.thumbnail_object_pk``. If it cannot be stored (no write quorum) it
    is still returned; the next request tries again.
    """
    if not ref.has_pixels:
        raise NotAcceptableError(f"instance {ref.sop_uid} has no pixel data to render")
    with archive.catalog.session() as session:
        key = session.scalar(
            select(StoredObject.object_key)
            .join(Instance, Instance.thumbnail_object_pk == StoredObject.id)
            .where(Instance.id == ref.instance_pk)
        )
    if key is not None:
        return archive.store.read_all(key)
    with _undecodable_is_not_acceptable():
        png = thumbnail(load_dataset(archive, ref), THUMBNAIL_SIDE)
    try:
        _persist_thumbnail(archive, ref, png)
    except MedshardError as exc:
        log.warning("thumbnail of %s not persisted: %s", ref.sop_uid, exc)
    return png


def _persist_thumbnail(archive: Archive, ref: InstanceRef, png: bytes) -> None:
    with archive.catalog.session() as session:
        patient = session.get(Patient, ref.patient_pk)
    if patient is None:
        raise NotFoundError(f"patient of instance {ref.sop_uid} is gone")
    written = archive.store.write(archive.store.patient_key(patient), io.BytesIO(png))
    linked = False
    try:
        with archive.catalog.transaction() as session:
            instance = session.get(Instance, ref.instance_pk)
            if instance is not None and instance.thumbnail_object_pk is None:
                obj = archive.store.record(
                    session, patient, written, kind="thumbnail", content_type="image/png"
                )
                session.flush()
                instance.thumbnail_object_pk = obj.id
                linked = True
    finally:
        if not linked:  # failed, or another request linked its thumbnail first
            archive.store.discard(written)


# --------------------------------------------------------------------------- STOW-RS


@dataclass(frozen=True)
class StowItem:
    """The verdict on one STOW-RS part; ``failure`` is None when the instance is stored."""

    sop_class_uid: str = ""
    sop_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None
    reason: str = ""
    duplicate: bool = False


async def receive_parts(
    chunks: AsyncIterable[bytes],
    boundary: str,
    *,
    max_bytes: int,
    memory_budget: int = 16 * 1024 * 1024,
) -> list[Part]:
    """Receive every part of a STOW-RS body before anything is stored.

    Parts stay in memory until they add up to ``memory_budget``; later parts go to temporary
    files, so a study of any size costs bounded memory. The caller owns (and closes) the parts.

    Raises
    ------
    InvalidInputError
        The body is not well-formed multipart (nothing is stored).
    PayloadTooLargeError
        The body exceeds ``max_bytes``.
    """
    parts: list[Part] = []
    in_memory = 0
    try:
        async for part in iter_parts(_capped(chunks, max_bytes), boundary):
            rollover = getattr(part.body, "rollover", None)
            if in_memory + part.size > memory_budget and rollover is not None:
                rollover()
            else:
                in_memory += part.size
            parts.append(part)
    except BaseException:
        for part in parts:
            part.close()
        raise
    return parts


async def _capped(chunks: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLargeError(
                f"request body exceeds {max_bytes} bytes; send the study in several requests"
            )
        yield chunk


async def store_parts(
    ingestor: Ingestor, parts: Sequence[Part], study: str | None, *, concurrency: int = 8
) -> list[StowItem]:
    """Ingest received parts, a few at a time in worker threads; verdicts in part order."""
    limiter = anyio.CapacityLimiter(concurrency)

    def one(number: int, part: Part) -> StowItem:
        try:
            media = part.media_type if part.content_type else None
        except InvalidInputError as exc:
            return StowItem(failure=CANNOT_UNDERSTAND, reason=f"part {number}: {exc}")
        try:
            body = cast(BinaryIO, part.body)  # a SpooledTemporaryFile opened "w+b"
            return store_part(ingestor, body, media, f"part {number}", study)
        except Exception as exc:  # a bug must not hide the verdicts on the other parts
            log.exception("STOW-RS part %d failed unexpectedly", number)
            return StowItem(failure=PROCESSING_FAILURE, reason=f"part {number}: {exc!r}")

    results: list[StowItem] = [StowItem()] * len(parts)

    async def run(i: int, part: Part) -> None:
        results[i] = await anyio.to_thread.run_sync(one, i + 1, part, limiter=limiter)

    async with anyio.create_task_group() as group:
        for i, part in enumerate(parts):
            group.start_soon(run, i, part)
    return results


def store_part(
    ingestor: Ingestor,
    body: BinaryIO,
    media_type: str | None,
    source: str,
    expected_study: str | None = None,
) -> StowItem:
    """Validate one part and ingest it; never raises for bad input, returns a failed item.

    The header is parsed here only to check the study of ``POST /studies/{study}`` before
    anything is written; otherwise the pipeline's own parse is the only one.
    """
    if media_type not in (None, "application/dicom"):
        return StowItem(
            failure=CANNOT_UNDERSTAND, reason=f"{source} is {media_type}, not application/dicom"
        )
    if expected_study is not None:
        try:
            fields = instance_fields(read_header(body, source))
        except InvalidInputError as exc:
            return StowItem(failure=CANNOT_UNDERSTAND, reason=f"{source}: {exc}")
        if fields.study_instance_uid != expected_study:
            return StowItem(
                fields.sop_class_uid,
                fields.sop_instance_uid,
                fields.study_instance_uid,
                fields.series_instance_uid,
                DATASET_MISMATCH,
                f"{source} belongs to study {fields.study_instance_uid}, not {expected_study}",
            )
    outcome = ingestor.ingest_stream(body, source)
    item = StowItem(
        outcome.sop_class_uid,
        outcome.sop_instance_uid,
        outcome.study_instance_uid,
        outcome.series_instance_uid,
    )
    if outcome.status in ("imported", "duplicate"):
        return replace(item, duplicate=outcome.status == "duplicate")
    if not outcome.sop_instance_uid:  # the header itself was refused
        code = CANNOT_UNDERSTAND
    elif _is_stored(ingestor.archive, outcome.sop_instance_uid):
        code = DUPLICATE_SOP_INSTANCE  # that UID is stored with other bytes; it was kept
    else:
        code = OUT_OF_RESOURCES  # storage refused: no write quorum, a node out of space...
    return replace(item, failure=code, reason=f"{source}: {outcome.reason}")


def _is_stored(archive: Archive, sop_uid: str) -> bool:
    with archive.catalog.session() as session:
        found = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))
    return found is not None


def stow_response(
    items: Sequence[StowItem], base: str, study: str | None
) -> tuple[int, dict[str, Any], list[str]]:
    """HTTP status, Store Instances Response (PS3.18 I.2) and Warning texts for the verdicts.

    200 when every instance is stored (a duplicate of what is stored counts as stored), 202
    when some failed, 409 when none was stored.
    """
    stored = [i for i in items if i.failure is None]
    failed = [i for i in items if i.failure is not None]
    body: dict[str, Any] = {}
    studies = {i.study_uid for i in stored}
    top = study or (studies.pop() if len(studies) == 1 else None)
    if top:
        body["00081190"] = _value("UR", f"{base}/studies/{top}")
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [_reference(i, base) for i in stored]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [_failure(i) for i in failed]}
    warnings = [i.reason for i in failed]
    duplicates = sum(1 for i in stored if i.duplicate)
    if duplicates:
        warnings.append(f"{duplicates} instance(s) were already stored with identical bytes")
    status = 200 if not failed else 202 if stored else 409
    return status, body, warnings


def _reference(item: StowItem, base: str) -> dict[str, Any]:
    path = f"/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}"
    return {
        "00081150": _value("UI", item.sop_class_uid),
        "00081155": _value("UI", item.sop_uid),
        "00081190": _value("UR", base + path),
    }


def _failure(item: StowItem) -> dict[str, Any]:
    return {
        "00081150": _value("UI", item.sop_class_uid),
        "00081155": _value("UI", item.sop_uid),
        "00081197": _value("US", item.failure),
    }


def _value(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element; empty values carry no "Value" (PS3.18 F.2.5)."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": str(v)} for v in values]
    return {"vr": vr, "Value": values}


# --------------------------------------------------------------------------- QIDO-RS

_CATALOG_LEVEL: Final[dict[str, Level]] = {
    "study": "STUDY",
    "series": "SERIES",
    "instance": "IMAGE",
}
_EXTRA_VRS: Final = {"RetrieveURL": "UR", "InstanceAvailability": "CS"}
_UID_KEYS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")  # for RetrieveURL


def qido_search(
    archive: Archive,
    query: QidoQuery,
    fixed: Mapping[str, str],
    base: str,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Run a parsed QIDO-RS query; returns DICOM JSON results and Warning texts.

    ``fixed`` holds the UIDs from the path (``StudyInstanceUID``, ``SeriesInstanceUID``); the
    levels above the deepest fixed one are returned too, as PS3.18 10.6.3.3 asks of searches
    for series or instances across studies. Matching keys this archive does not index are
    ignored with a warning rather than refused, so generic viewers keep working.
    """
    level = _CATALOG_LEVEL[query.level]
    warnings = list(query.warnings)
    conditions = {}
    for keyword, cond in query.matches.items():
        if keyword in ATTRIBUTES:
            conditions[keyword] = cond
        else:
            warnings.append(f"matching on {keyword} is not supported and was ignored")
    for keyword, uid in fixed.items():
        conditions[keyword] = SingleValue(uid)
    ancestors: tuple[QidoLevel, ...] = ("study", "series")
    parents = [lv for lv in ancestors if DEPTH[_CATALOG_LEVEL[lv]] < DEPTH[level]]
    anchored = {"study": "StudyInstanceUID" in fixed, "series": "SeriesInstanceUID" in fixed}
    wanted = dict.fromkeys(default_attributes(query.level))
    for lv in parents:
        if not anchored[lv] and not (lv == "study" and anchored["series"]):
            wanted.update(dict.fromkeys(default_attributes(lv)))
    wanted.update(dict.fromkeys(query.matches))
    wanted.update(dict.fromkeys(query.includefield))
    if query.include_all:
        wanted.update(dict.fromkeys(searchable(level)))
    keywords = [k for k in wanted if k in ATTRIBUTES or k in _EXTRA_VRS]
    unindexed = [k for k in query.includefield if k not in keywords]
    if unindexed:
        warnings.append(f"not indexed by this archive, so not returned: {', '.join(unindexed)}")
    with archive.catalog.session() as session:
        rows = search(
            session,
            level,
            conditions,
            fields=[k for k in keywords if k in ATTRIBUTES] + list(_UID_KEYS),
            limit=query.limit,
            offset=query.offset,
        )
    return [_qido_json(row, keywords, query.level, base) for row in rows], warnings


def _qido_json(
    row: Mapping[str, Any], keywords: Sequence[str], level: str, base: str
) -> dict[str, Any]:
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level != "study":
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{row['SOPInstanceUID']}"
    out: dict[str, Any] = {}
    for keyword in keywords:
        if keyword == "RetrieveURL":
            value: Any = url
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif keyword in row:
            value = row[keyword]
        else:
            continue  # computed at another level only (e.g. ModalitiesInStudy for series)
        vr = ATTRIBUTES[keyword].vr if keyword in ATTRIBUTES else _EXTRA_VRS[keyword]
        tag = tag_for_keyword(keyword)
        if tag is not None:
            out[f"{tag:08X}"] = _value(vr, value)
    return dict(sorted(out.items()))


def json_array_stream(
    objects: Iterator[dict[str, Any]], dumps: Callable[[Any], str]
) -> Iterator[bytes]:
    """A JSON array streamed object by object (study metadata can hold thousands)."""
    yield b"["
    for i, obj in enumerate(objects):
        yield (b"," if i else b"") + dumps(obj).encode()
    yield b"]"
