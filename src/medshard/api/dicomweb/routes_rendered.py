"""Rendered resources (PS3.18 10.4.1.1.3, 10.4.1.1.4): ``/rendered`` and ``/thumbnail``.

Media type comes from the ``accept`` query parameter or the ``Accept`` header: image/jpeg or
image/png (``*/*`` gives JPEG for /rendered, as the standard's default, and PNG for
/thumbnail, the format thumbnails are persisted in). Query parameters: ``window=center,width
[,linear|linear-exact|sigmoid]``, ``viewport=width,height`` and ``quality=1..100``; the
annotation and ICC profile parameters are ignored, cropping viewports are refused (400).
A series' or study's thumbnail is that of its representative instance. Numbers must be
finite, and a viewport side at most :data:`MAX_VIEWPORT` pixels: renderings upscale, so an
unbounded viewport would let one request allocate gigabytes.
"""

from __future__ import annotations

import math
import re
from typing import Final, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.frames import parse_frame_list
from medshard.api.dicomweb.lookup import InstanceRef, find_instances, representative
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.api.dicomweb.rendering import THUMBNAIL_SIDE, RenderRequest, rendered, thumbnail_png
from medshard.api.dicomweb.routes_common import ROOT, RenderCacheDep, negotiate_image
from medshard.cluster.archive import Archive
from medshard.errors import InvalidInputError
from medshard.ingest.render import RenderCache

router = APIRouter(prefix=ROOT, tags=["dicomweb"], dependencies=[Depends(valid_path_uids)])
#: Largest viewport width or height, in pixels (a 4096 x 4096 RGB rendering is 48 MiB).
MAX_VIEWPORT: Final = 4096
_DIGITS: Final = re.compile(r"[0-9]{1,9}")
_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"
_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


def _floats(name: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"{name} must be comma-separated numbers, got {text[:80]!r}")
    return values


def whole_number(name: str, text: str, low: int, high: int) -> int:
    """An ASCII decimal integer from ``low`` to ``high``.

    Raises
    ------
    InvalidInputError
        Anything else (signs, other digits such as "²", too many digits, out of range).
    """
    text = text.strip()
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise InvalidInputError(
            f"{name} must be an integer from {low} to {high}, got {text[:80]!r}"
        )
    return int(text)


def render_request(
    params: dict[str, str], fmt: Literal["png", "jpeg"], frame: int = 0
) -> RenderRequest:
    """Read ``window``, ``viewport`` and ``quality`` query parameters.

    Raises
    ------
    InvalidInputError
        Malformed numbers, a window without a positive width, or a cropping viewport.
    """
    window = voi = size = None
    if "window" in params:
        parts = params["window"].split(",")
        if len(parts) not in (2, 3):
            raise InvalidInputError("window takes center,width[,function]")
        center, width = _floats("window", ",".join(parts[:2]))
        if width <= 0:
            raise InvalidInputError(f"window width must be positive, got {width}")
        window, voi = (center, width), (parts[2] if len(parts) == 3 else None)
    if "viewport" in params:
        parts = params["viewport"].split(",")
        if len(parts) not in (2, 6) or any(p.strip() for p in parts[2:]):
            raise InvalidInputError("viewport takes width,height (cropping is not supported)")
        w, h = (whole_number("viewport", p, 1, MAX_VIEWPORT) for p in parts[:2])
        size = (w, h)
    quality = 90
    if "quality" in params:
        quality = whole_number("quality", params["quality"], 1, 100)
    return RenderRequest(fmt, frame, window, voi, size, quality)


def image_response(data: bytes, fmt: str) -> Response:
    # Stored instances never change, so their renderings may be cached by the browser.
    return Response(
        data, media_type=_MEDIA[fmt], headers={"Cache-Control": "private, max-age=3600"}
    )


async def _render(
    request: Request, archive: Archive, cache: RenderCache, ref: InstanceRef, frame: int
) -> Response:
    params = dict(request.query_params)
    fmt = negotiate_image(request.headers.get("accept"), params.get("accept"), "jpeg")
    req = render_request(params, fmt, frame)
    return image_response(await run_in_threadpool(rendered, archive, cache, ref, req), fmt)


async def _thumbnail(
    request: Request, archive: Archive, cache: RenderCache, ref: InstanceRef
) -> Response:
    params = dict(request.query_params)
    fmt = negotiate_image(request.headers.get("accept"), params.get("accept"), "png")
    req = render_request(params, fmt)
    if fmt == "png" and req.size is None and req.window is None:
        return image_response(await run_in_threadpool(thumbnail_png, archive, ref), fmt)
    if req.size is None:
        req = RenderRequest(
            fmt, 0, req.window, req.voi_function, (THUMBNAIL_SIDE,) * 2, req.quality
        )
    return image_response(await run_in_threadpool(rendered, archive, cache, ref, req), fmt)


async def _one(archive: Archive, study: str, series: str, instance: str) -> InstanceRef:
    return (await run_in_threadpool(find_instances, archive, study, series, instance))[0]


@router.get(_INSTANCE + "/rendered")
async def rendered_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    cache: RenderCacheDep,
) -> Response:
    """The instance's first frame, rendered."""
    ref = await _one(archive, study, series, instance)
    return await _render(request, archive, cache, ref, 0)


@router.get(_INSTANCE + "/frames/{frame_list}/rendered")
async def rendered_frame(
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    request: Request,
    archive: ArchiveDep,
    cache: RenderCacheDep,
) -> Response:
    """One frame, rendered (a list of frames would need a multipart response: 400)."""
    numbers = parse_frame_list(frame_list)
    if len(numbers) != 1:
        raise InvalidInputError("render one frame at a time")
    ref = await _one(archive, study, series, instance)
    return await _render(request, archive, cache, ref, numbers[0] - 1)


@router.get(_INSTANCE + "/thumbnail")
async def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    archive: ArchiveDep,
    cache: RenderCacheDep,
) -> Response:
    """The instance's persisted 128-pixel PNG thumbnail (or a JPEG / sized one)."""
    ref = await _one(archive, study, series, instance)
    return await _thumbnail(request, archive, cache, ref)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(
    study: str, series: str, request: Request, archive: ArchiveDep, cache: RenderCacheDep
) -> Response:
    """The thumbnail of the series' representative (middle) instance."""
    refs = await run_in_threadpool(find_instances, archive, study, series, None)
    return await _thumbnail(request, archive, cache, representative(refs))


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(
    study: str, request: Request, archive: ArchiveDep, cache: RenderCacheDep
) -> Response:
    """The thumbnail of the study's representative instance."""
    refs = await run_in_threadpool(find_instances, archive, study, None, None)
    return await _thumbnail(request, archive, cache, representative(refs))
