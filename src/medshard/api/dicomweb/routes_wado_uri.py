"""WADO-URI (PS3.18 9): ``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

Served at ``/wado`` (where legacy viewers and RIS links expect it) and ``/dicom-web/wado``.
``contentType`` may list alternatives; application/dicom returns the stored file (or one
transcoded to ``transferSyntax`` when that is uncompressed), image/jpeg (the default for
images) and image/png a rendering with ``frameNumber``, ``windowCenter``/``windowWidth``,
``rows``/``columns`` and ``imageQuality``. Anonymisation is refused rather than ignored.
The UIDs (and ``transferSyntax``) must be valid PS3.5 UIDs and the numbers plain, bounded
integers: anything else answers 400 before the catalog is asked.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.lookup import InstanceRef, find_instances
from medshard.api.dicomweb.rendering import RenderRequest, rendered
from medshard.api.dicomweb.retrieve import UNCOMPRESSED, instance_body, transcode
from medshard.api.dicomweb.routes_common import ROOT, RenderCacheDep
from medshard.api.dicomweb.routes_rendered import MAX_VIEWPORT, image_response, whole_number
from medshard.api.errors import NotAcceptableError
from medshard.cluster.archive import Archive
from medshard.errors import InvalidInputError
from medshard.ingest.uids import check_uid

router = APIRouter(tags=["dicomweb"])
_IMAGES = {"image/jpeg": "jpeg", "image/jpg": "jpeg", "image/png": "png"}


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise InvalidInputError(f"WADO-URI needs the {name} parameter")
    return value


def _int(params: dict[str, str], name: str, low: int, high: int) -> int | None:
    text = params.get(name, "").strip()
    return whole_number(name, text, low, high) if text else None


def _render_request(params: dict[str, str], fmt: str) -> RenderRequest:
    frame = _int(params, "frameNumber", 1, 2**31 - 1) or 1
    center, width = params.get("windowCenter"), params.get("windowWidth")
    window = None
    if center or width:
        try:
            window = (float(center or ""), float(width or ""))
        except ValueError:
            raise InvalidInputError(
                "windowCenter and windowWidth go together, as numbers"
            ) from None
        if not all(math.isfinite(v) for v in window) or window[1] <= 0:
            raise InvalidInputError("windowWidth must be positive, both finite numbers")
    rows = _int(params, "rows", 1, MAX_VIEWPORT)
    columns = _int(params, "columns", 1, MAX_VIEWPORT)
    size = (columns or rows or 0, rows or columns or 0) if rows or columns else None
    quality = _int(params, "imageQuality", 1, 100) or 90
    return RenderRequest(fmt, frame - 1, window, None, size, quality)


def _transcoded(archive: Archive, ref: InstanceRef, target: str) -> bytes:
    return transcode(archive.store.read_all(ref.object_key, near_site=ref.near_site), target)


@router.get("/wado")
@router.get(ROOT + "/wado")
async def wado_uri(request: Request, archive: ArchiveDep, cache: RenderCacheDep) -> Response:
    """A WADO-URI object request (PS3.18 9.1): the file, or a rendering of it."""
    params = dict(request.query_params)
    if _required(params, "requestType") != "WADO":
        raise InvalidInputError("requestType must be WADO")
    if params.get("anonymize", "").lower() == "yes":
        raise InvalidInputError("anonymize=yes is not supported: nothing was returned")
    study = check_uid(_required(params, "studyUID"), "studyUID")
    series = check_uid(_required(params, "seriesUID"), "seriesUID")
    sop = check_uid(_required(params, "objectUID"), "objectUID")
    ref = (await run_in_threadpool(find_instances, archive, study, series, sop))[0]
    default = "image/jpeg" if ref.has_pixels else "application/dicom"
    wanted = [
        t.split(";")[0].strip().lower() for t in params.get("contentType", default).split(",")
    ]
    for media in wanted:
        if media == "application/dicom":
            target = params.get("transferSyntax") or None
            if target is not None:
                check_uid(target, "transferSyntax")
            if target in (None, ref.transfer_syntax_uid):
                return StreamingResponse(
                    instance_body(archive, ref, None),
                    media_type=media,
                    headers={"Content-Length": str(ref.size)},
                )
            if target not in UNCOMPRESSED:
                raise NotAcceptableError(f"transferSyntax {target} is not available")
            data = await run_in_threadpool(_transcoded, archive, ref, target)
            return Response(data, media_type=media)
        if media in _IMAGES and ref.has_pixels:
            req = _render_request(params, _IMAGES[media])
            data = await run_in_threadpool(rendered, archive, cache, ref, req)
            return image_response(data, req.fmt)
    raise NotAcceptableError(
        f"contentType {params.get('contentType')!r} is not available for this object; "
        "use application/dicom" + (", image/jpeg or image/png" if ref.has_pixels else "")
    )
