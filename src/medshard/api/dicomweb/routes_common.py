"""What every DICOMweb router shares: content negotiation, per-app singletons, URLs, responses.

This is HTTP plumbing only (it reads headers and builds responses); what is served comes from
the transport-free modules beside it (``lookup``, ``retrieve``, ``frames``, ``rendering``,
``stow``, ``qido``). Negotiation follows PS3.18 8.7: ``Accept`` is a list of media ranges with
``type`` and ``transfer-syntax`` parameters; the first range (by ``q``) that can be honoured
wins, and none honoured is 406.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from medshard.api.deps import get_archive
from medshard.api.dicomweb.frames import FrameFormat
from medshard.api.dicomweb.multipart import (
    Body,
    multipart_content_type,
    multipart_stream,
    new_boundary,
    parse_content_type,
)
from medshard.api.dicomweb.retrieve import UNCOMPRESSED
from medshard.api.errors import NotAcceptableError
from medshard.api.ingestors import analysed_ingestor
from medshard.errors import InvalidInputError
from medshard.ingest.pipeline import Ingestor
from medshard.ingest.render import RenderCache

ROOT: Final = "/dicom-web"
DICOM_JSON: Final = "application/dicom+json"
OCTET_STREAM: Final = "application/octet-stream"
#: Media types of compressed pixel data by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA_TYPES: Final = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
_COMMA_OUTSIDE_QUOTES: Final = re.compile(r',(?=(?:[^"]*"[^"]*")*[^"]*$)')


# --------------------------------------------------------------------------- Accept


@dataclass(frozen=True)
class MediaRange:
    """One entry of an ``Accept`` header."""

    mime: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def parse_accept(header: str | None) -> list[MediaRange]:
    """Media ranges in preference order (by ``q``, then as written); absent means ``*/*``.

    Raises
    ------
    InvalidInputError
        A range that is not ``type/subtype[; params]`` or a ``q`` that is not a number.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    for item in _COMMA_OUTSIDE_QUOTES.split(header):
        if not item.strip():
            continue
        mime, params = parse_content_type(item)
        try:
            q = float(params.pop("q", "1"))
        except ValueError:
            raise InvalidInputError(f"Accept has a malformed q value in {item.strip()!r}") from None
        if q > 0:
            ranges.append(MediaRange(mime, params, q))
    return sorted(ranges, key=lambda r: -r.q)


def _part_type(r: MediaRange, default: str) -> tuple[str, str | None]:
    """(part media type, transfer syntax) a range asks for; multipart ranges carry ``type``."""
    typ = r.params.get("type", default).lower() if r.mime == "multipart/related" else r.mime
    return typ, r.params.get("transfer-syntax")


def require_json(header: str | None) -> None:
    """Check the client accepts DICOM JSON (QIDO-RS, metadata, STOW-RS responses).

    Raises
    ------
    NotAcceptableError
        Only XML (``application/dicom+xml``) or other types are acceptable.
    """
    ok = {DICOM_JSON, "application/json", "application/*", "*/*"}
    if any(_part_type(r, DICOM_JSON)[0] in ok for r in parse_accept(header)):
        return
    raise NotAcceptableError(f"only {DICOM_JSON} is produced here, not {header!r}")


def negotiate_instances(header: str | None, stored: Collection[str]) -> str | None:
    """The transfer syntax to send instances in; None means each one as stored.

    ``transfer-syntax=*``, or a plain ``*/*``, takes instances as stored. ``application/dicom``
    without the parameter means Explicit VR Little Endian (PS3.18 8.7.3.5.2); a syntax every
    instance is stored in, or an uncompressed one we transcode to, is honoured.
    """
    for r in parse_accept(header):
        typ, tsyntax = _part_type(r, "application/dicom")
        if typ not in ("application/dicom", "application/*", "*/*"):
            continue
        if tsyntax == "*" or (typ == "*/*" and tsyntax is None):
            return None
        target = tsyntax or ExplicitVRLittleEndian
        if target in UNCOMPRESSED or all(s == target for s in stored):
            return target
    raise NotAcceptableError(
        f"cannot provide instances stored as {', '.join(sorted(stored))} for Accept {header!r}; "
        'ask for multipart/related; type="application/dicom"; transfer-syntax=*'
    )


def negotiate_frames(header: str | None, stored: str) -> FrameFormat:
    """How to send pixel data (frames, bulk data) of an instance stored in ``stored``.

    Uncompressed little-endian ``application/octet-stream`` is the default; the stored
    compressed bitstream goes out when the client names its media type (``image/jls``...),
    ``image/*``, or takes octet-stream with ``transfer-syntax=*`` or the stored syntax.
    """
    natural = FRAME_MEDIA_TYPES.get(stored)
    for r in parse_accept(header):
        typ, tsyntax = _part_type(r, OCTET_STREAM)
        as_stored = tsyntax in (None, "*", stored)
        if typ in (OCTET_STREAM, "application/*", "*/*"):
            if tsyntax in ("*", stored) and natural is not None:
                return FrameFormat(OCTET_STREAM, stored, True)
            if tsyntax is None or tsyntax == "*" or tsyntax in UNCOMPRESSED:
                return FrameFormat(OCTET_STREAM, ExplicitVRLittleEndian, False)
        elif natural is not None and typ in (natural, "image/*") and as_stored:
            return FrameFormat(natural, stored, True)
    raise NotAcceptableError(
        f"pixel data stored as {stored} cannot be sent as {header!r}; "
        f"accept {OCTET_STREAM}" + (f" or {natural}" if natural else "")
    )


def negotiate_image(
    header: str | None, param: str | None, default: Literal["png", "jpeg"]
) -> Literal["png", "jpeg"]:
    """PNG or JPEG for rendered resources; the ``accept`` query parameter overrides the header."""
    for r in parse_accept(param if param else header):
        typ = _part_type(r, "image/jpeg")[0]
        if typ == "image/png":
            return "png"
        if typ == "image/jpeg":
            return "jpeg"
        if typ in ("image/*", "*/*"):
            return default
    raise NotAcceptableError(
        f"rendered images are image/jpeg or image/png, not {param or header!r}"
    )


# --------------------------------------------------------------------------- singletons

# Both are created on the event loop's thread with no await in between, so never twice.


async def get_ingestor(request: Request) -> Ingestor:
    """One ingest pipeline per app (analysis hook included), so its patient/study/series
    caches and group commits serve every STOW-RS request."""
    state = request.app.state
    if getattr(state, "dicomweb_ingestor", None) is None:
        state.dicomweb_ingestor = analysed_ingestor(get_archive(request))
    found: Ingestor = state.dicomweb_ingestor
    return found


async def get_render_cache(request: Request) -> RenderCache:
    """One rendered-image cache per app, shared by /rendered, /thumbnail and WADO-URI."""
    state = request.app.state
    if getattr(state, "render_cache", None) is None:
        state.render_cache = RenderCache()
    cache: RenderCache = state.render_cache
    return cache


IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
RenderCacheDep = Annotated[RenderCache, Depends(get_render_cache)]


# --------------------------------------------------------------------------- responses


def base_url(request: Request) -> str:
    """Absolute URL of the DICOMweb root, for RetrieveURL and BulkDataURI values."""
    return str(request.base_url).rstrip("/") + ROOT


def _warning_header(texts: Iterable[str]) -> dict[str, str]:
    """A ``Warning: 299 medshard "..."`` header (RFC 7234 5.5) carrying every text."""
    items = []
    for text in list(texts)[:20]:
        clean = " ".join(text.split()).replace("\\", "/").replace('"', "'")
        clean = clean.encode("latin-1", "replace").decode("latin-1")[:300]
        items.append(f'299 medshard "{clean}"')
    return {"Warning": ", ".join(items)} if items else {}


def dicom_json(content: Any, status: int = 200, warnings: Iterable[str] = ()) -> Response:
    """A DICOM JSON response, with any warnings in one ``Warning`` header."""
    return JSONResponse(
        content, status_code=status, media_type=DICOM_JSON, headers=_warning_header(warnings)
    )


def multipart_response(
    parts: Iterable[tuple[Mapping[str, str], Body]], part_type: str | None
) -> StreamingResponse:
    """A streamed ``multipart/related`` response; bodies are consumed lazily, off the loop."""
    boundary = new_boundary()
    return StreamingResponse(
        multipart_stream(parts, boundary),
        media_type=multipart_content_type(boundary, part_type),
    )
