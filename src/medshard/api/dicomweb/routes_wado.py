"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data of studies and series.

Instances stream as ``multipart/related; type="application/dicom"`` straight from storage; the
UIDs are resolved and the media type negotiated before the first byte, so 404 and 406 come
back as statuses, not as a broken stream. A single instance that needs transcoding is
transcoded before responding for the same reason; in a series or study, instances are
transcoded one by one as the stream reaches them, so one that cannot be decoded cuts the
response short (the error is logged), which is why viewers should ask for
``transfer-syntax=*``. Study and series metadata stream as a JSON array; an instance whose
header cannot be read is left out and logged. Path UIDs are checked before anything else
(400); a frame list may not name a frame twice, so a URL cannot multiply one frame's bytes.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.dicomjson import resolve_bulkdata_path
from medshard.api.dicomweb.frames import FrameFormat, frames, parse_frame_list
from medshard.api.dicomweb.lookup import InstanceRef, find_instances
from medshard.api.dicomweb.multipart import Body
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.api.dicomweb.retrieve import (
    element_bytes,
    instance_body,
    instance_metadata,
    is_encapsulated,
    json_array_stream,
    load_dataset,
    transcode,
    transfer_syntax_of,
)
from medshard.api.dicomweb.routes_common import (
    DICOM_JSON,
    OCTET_STREAM,
    ROOT,
    base_url,
    dicom_json,
    multipart_response,
    negotiate_frames,
    negotiate_instances,
    require_json,
)
from medshard.cluster.archive import Archive
from medshard.errors import InvalidInputError, MedshardError, NotFoundError
from medshard.ingest.render import frame_count

log = logging.getLogger(__name__)
router = APIRouter(prefix=ROOT, tags=["dicomweb"], dependencies=[Depends(valid_path_uids)])
_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


# --------------------------------------------------------------------------- instances


async def _retrieve(
    request: Request, archive: Archive, study: str, series: str | None, sop: str | None
) -> Response:
    refs = await run_in_threadpool(find_instances, archive, study, series, sop)
    target = negotiate_instances(
        request.headers.get("accept"), {r.transfer_syntax_uid for r in refs}
    )
    base = base_url(request)

    def part(ref: InstanceRef, body: Body) -> tuple[dict[str, str], Body]:
        tsyntax = target if target is not None else ref.transfer_syntax_uid
        media = f"application/dicom; transfer-syntax={tsyntax}" if tsyntax else "application/dicom"
        headers = {"Content-Type": media, "Content-Location": base + ref.path()}
        if tsyntax == ref.transfer_syntax_uid:
            headers["Content-Length"] = str(ref.size)
        return headers, body

    if sop is not None and target not in (None, refs[0].transfer_syntax_uid):
        data = await run_in_threadpool(
            lambda: transcode(
                archive.store.read_all(refs[0].object_key, near_site=refs[0].near_site), target
            )
        )
        return multipart_response([part(refs[0], data)], "application/dicom")
    # The first instance's first chunk is read before the response starts: when no copy of it
    # can be read, the client gets 503 with a reason, not 200 and a cut connection. (An
    # instance further into a series can still only cut the stream short; it is logged.)
    first = instance_body(archive, refs[0], target)
    head = await run_in_threadpool(next, first, b"")
    parts = itertools.chain(
        [part(refs[0], itertools.chain([head], first))],
        (part(r, instance_body(archive, r, target)) for r in refs[1:]),
    )
    return multipart_response(parts, "application/dicom")


@router.get("/studies/{study}")
async def retrieve_study(study: str, request: Request, archive: ArchiveDep) -> Response:
    """Every instance of a study, in series and instance order."""
    return await _retrieve(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}")
async def retrieve_series(
    study: str, series: str, request: Request, archive: ArchiveDep
) -> Response:
    """Every instance of a series."""
    return await _retrieve(request, archive, study, series, None)


@router.get(_INSTANCE)
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    """One instance; byte-identical to what was stored when its syntax is accepted."""
    return await _retrieve(request, archive, study, series, instance)


# --------------------------------------------------------------------------- metadata


#: Instances whose metadata a series/study metadata request reads at once.
METADATA_READERS = 4


async def _metadata(
    request: Request, archive: Archive, study: str, series: str | None, sop: str | None
) -> Response:
    require_json(request.headers.get("accept"))
    refs = await run_in_threadpool(find_instances, archive, study, series, sop)
    base = base_url(request)

    def one(ref: InstanceRef) -> dict[str, Any]:
        return instance_metadata(archive, ref, f"{base}{ref.path()}/bulkdata")

    if sop is not None:
        return dicom_json([await run_in_threadpool(one, refs[0])])

    def objects() -> Iterator[dict[str, Any]]:
        # a few instances read at once, in order: each is a node round trip, a decrypt and a
        # parse, and a viewer waits for the whole series' metadata before its first image;
        # each read runs in a copy of this context, which carries the authenticated caller
        with ThreadPoolExecutor(METADATA_READERS, thread_name_prefix="metadata") as pool:
            pending: deque[tuple[InstanceRef, Future[dict[str, Any]]]] = deque()
            upcoming = iter(refs)
            for ref in itertools.islice(upcoming, METADATA_READERS):
                pending.append((ref, pool.submit(copy_context().run, one, ref)))
            while pending:
                ref, job = pending.popleft()
                following = next(upcoming, None)
                if following is not None:
                    job_for = pool.submit(copy_context().run, one, following)
                    pending.append((following, job_for))
                try:
                    yield job.result()
                except MedshardError as exc:  # one unreadable instance must not sink the study
                    log.error("metadata of instance %s left out: %s", ref.sop_uid, exc)

    return StreamingResponse(json_array_stream(objects(), json.dumps), media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
async def study_metadata(study: str, request: Request, archive: ArchiveDep) -> Response:
    """DICOM JSON of every instance of a study, streamed as one array."""
    return await _metadata(request, archive, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata")
async def series_metadata(
    study: str, series: str, request: Request, archive: ArchiveDep
) -> Response:
    """DICOM JSON of every instance of a series, streamed as one array."""
    return await _metadata(request, archive, study, series, None)


@router.get(_INSTANCE + "/metadata")
async def instance_metadata_route(
    study: str, series: str, instance: str, request: Request, archive: ArchiveDep
) -> Response:
    """DICOM JSON of one instance, pixel data as a BulkDataURI."""
    return await _metadata(request, archive, study, series, instance)


# --------------------------------------------------------------------------- pixel data


def distinct_frames(frame_list: str) -> list[int]:
    """The frame numbers of a ``/frames/{list}`` path, each at most once.

    Raises
    ------
    InvalidInputError
        Not 1-based numbers, or a number repeated (``frames/1,1,1,...`` would make one small
        request cost as many decoded frames as the URL can name).
    """
    numbers = parse_frame_list(frame_list)
    if len(set(numbers)) != len(numbers):
        raise InvalidInputError(f"frame list {frame_list[:80]!r} names a frame more than once")
    return numbers


def _frame_headers(fmt: FrameFormat, location: str) -> dict[str, str]:
    media = fmt.media_type
    if fmt.transfer_syntax:
        media += f"; transfer-syntax={fmt.transfer_syntax}"
    return {"Content-Type": media, "Content-Location": location}


@router.get(_INSTANCE + "/frames/{frame_list}")
async def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frame_list: str,
    request: Request,
    archive: ArchiveDep,
) -> Response:
    """Frames (1-based, comma-separated), uncompressed unless a compressed type is asked for."""
    numbers = distinct_frames(frame_list)
    ref = (await run_in_threadpool(find_instances, archive, study, series, instance))[0]
    if not ref.has_pixels:
        raise NotFoundError(f"instance {instance} has no pixel data, so no frames")
    fmt = negotiate_frames(request.headers.get("accept"), ref.transfer_syntax_uid)
    data = await run_in_threadpool(lambda: frames(load_dataset(archive, ref), numbers, fmt))
    location = f"{base_url(request)}{ref.path()}/frames/"
    parts = [
        (_frame_headers(fmt, location + str(n)), d) for n, d in zip(numbers, data, strict=True)
    ]
    return multipart_response(parts, fmt.media_type)


@router.get(_INSTANCE + "/bulkdata/{path:path}")
async def retrieve_bulkdata(
    study: str,
    series: str,
    instance: str,
    path: str,
    request: Request,
    archive: ArchiveDep,
) -> Response:
    """A value the metadata gave a BulkDataURI; pixel data is negotiated like frames."""
    ref = (await run_in_threadpool(find_instances, archive, study, series, instance))[0]
    fmt = negotiate_frames(request.headers.get("accept"), ref.transfer_syntax_uid)

    def values() -> tuple[FrameFormat, list[bytes]]:
        ds = load_dataset(archive, ref)
        elem = resolve_bulkdata_path(ds, path)
        if elem.tag == 0x7FE00010 and is_encapsulated(transfer_syntax_of(ds)):
            chunks = frames(ds, range(1, frame_count(ds) + 1), fmt)
            return fmt, chunks if fmt.compressed else [b"".join(chunks)]
        plain = FrameFormat(OCTET_STREAM, None, False)
        return plain, [element_bytes(elem, path=path)]

    out_fmt, data = await run_in_threadpool(values)
    location = f"{base_url(request)}{ref.path()}/bulkdata/{path}"
    return multipart_response(
        [(_frame_headers(out_fmt, location), d) for d in data], out_fmt.media_type
    )
