"""STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]`` with DICOM Part 10 parts.

The body streams through the multipart parser into spooled parts; nothing is stored until the
whole body has parsed, so a malformed request (400), a wrong Content-Type (415), an invalid
study UID in the path (400), an oversized body or one with too many parts (413, the size cap
is ``stow_max_request_bytes``) or one that stops arriving (408, see ``api/timeouts.py``)
leaves the archive untouched. Each part then gets its own verdict; a part whose preamble had
to be zeroed is stored and named in the response's Warning header.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Depends, Request, Response

from medshard.api.dicomweb.multipart import parse_content_type
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.api.dicomweb.routes_common import (
    ROOT,
    IngestorDep,
    base_url,
    dicom_json,
    require_json,
)
from medshard.api.dicomweb.stow import receive_parts, store_parts, stow_response
from medshard.api.errors import PayloadTooLargeError
from medshard.errors import InvalidInputError, UnsupportedContentError

router = APIRouter(prefix=ROOT, tags=["dicomweb"], dependencies=[Depends(valid_path_uids)])

#: Used when the app has no settings (tests building a bare app).
DEFAULT_MAX_REQUEST_BYTES: Final = 8 * 1024**3
_EXPECTED: Final = 'multipart/related; type="application/dicom"'


def stow_boundary(content_type: str | None) -> str:
    """The multipart boundary of a STOW-RS request, after checking its media type.

    Raises
    ------
    UnsupportedContentError
        Not ``multipart/related``, or parts announced as anything but ``application/dicom``
        (metadata-plus-bulk-data requests are not supported).
    InvalidInputError
        ``multipart/related`` without a usable boundary.
    """
    try:
        mime, params = parse_content_type(content_type or "")
    except InvalidInputError as exc:
        raise UnsupportedContentError(f"STOW-RS takes {_EXPECTED}: {exc}") from exc
    part_type = params.get("type", "application/dicom").lower()
    if mime != "multipart/related" or part_type != "application/dicom":
        raise UnsupportedContentError(f"STOW-RS takes {_EXPECTED}, not {content_type!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise InvalidInputError("the multipart/related Content-Type has no boundary parameter")
    return boundary


def max_request_bytes(request: Request) -> int:
    """The deployment's cap on a STOW-RS body (``stow_max_request_bytes``)."""
    settings = getattr(request.app.state, "settings", None)
    return int(getattr(settings, "stow_max_request_bytes", DEFAULT_MAX_REQUEST_BYTES))


async def _store(request: Request, ingestor: IngestorDep, study: str | None) -> Response:
    require_json(request.headers.get("accept"))
    boundary = stow_boundary(request.headers.get("content-type"))
    limit = max_request_bytes(request)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"request body of {declared[:30]} bytes exceeds {limit}; "
            "send the study in several requests"
        )
    parts = await receive_parts(request.stream(), boundary, max_bytes=limit)
    try:
        items = await store_parts(ingestor, parts, study)
    finally:
        for part in parts:
            part.close()
    status, body, warnings = stow_response(items, base_url(request), study)
    return dicom_json(body, status, warnings)


@router.post("/studies")
async def store_instances(request: Request, ingestor: IngestorDep) -> Response:
    """Store instances of any studies."""
    return await _store(request, ingestor, None)


@router.post("/studies/{study}")
async def store_study_instances(study: str, request: Request, ingestor: IngestorDep) -> Response:
    """Store instances of one study; parts of any other study fail with 0xA900."""
    return await _store(request, ingestor, study)
