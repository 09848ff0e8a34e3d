"""Rendered frames and thumbnails (PS3.18 10.4.1.1.3-4): cached renderings, persisted PNGs.

Renderings are cheap to redo and vary with every window and viewport, so they live in the
:class:`RenderCache` only; a thumbnail has one form per instance, so it is stored once as an
archive object (encrypted and replicated like any other) and linked from the catalog. Pixel
data that cannot be decoded is reported as 406, no fault of the request.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from sqlalchemy.orm import Session

from medshard.api.dicomweb.lookup import InstanceRef
from medshard.api.dicomweb.retrieve import load_dataset
from medshard.api.errors import NotAcceptableError
from medshard.catalog.lookups import patient_id_of, thumbnail_key_of
from medshard.catalog.writes import PatientValues, link_thumbnail
from medshard.cluster.archive import Archive
from medshard.errors import InvalidDicomError, MedshardError, NotFoundError, UnsupportedContentError
from medshard.ingest.render import RenderCache, render_frame, thumbnail

log = logging.getLogger(__name__)

#: Longer side of persisted thumbnails, in pixels.
THUMBNAIL_SIDE: Final = 128


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
        key = thumbnail_key_of(session, ref.instance_pk)
    if key is not None:
        return archive.store.read_all(key, near_site=ref.near_site)
    with _undecodable_is_not_acceptable():
        png = thumbnail(load_dataset(archive, ref), THUMBNAIL_SIDE)
    try:
        _persist_thumbnail(archive, ref, png)
    except MedshardError as exc:
        log.warning("thumbnail of %s not persisted: %s", ref.sop_uid, exc)
    return png


class _ThumbnailLinkedMeanwhile(MedshardError):
    """Another request linked its thumbnail first: this one's write is undone."""


def _persist_thumbnail(archive: Archive, ref: InstanceRef, png: bytes) -> None:
    with archive.catalog.session() as session:
        patient_id = patient_id_of(session, ref.patient_pk)
    if patient_id is None:
        raise NotFoundError(f"patient of instance {ref.sop_uid} is gone")

    def link(session: Session, _patient_pk: int, object_pk: int) -> None:
        if not link_thumbnail(session, ref.instance_pk, object_pk):
            raise _ThumbnailLinkedMeanwhile(f"thumbnail of {ref.sop_uid} linked meanwhile")

    try:
        archive.put_object(
            PatientValues(patient_id),
            io.BytesIO(png),
            link,
            kind="thumbnail",
            content_type="image/png",
        )
    except _ThumbnailLinkedMeanwhile:
        pass
