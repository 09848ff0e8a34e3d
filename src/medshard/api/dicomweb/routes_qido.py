"""QIDO-RS (PS3.18 10.6): searches for studies, series and instances as DICOM JSON.

A search with no match answers 200 with ``[]`` (PS3.18 2026a Table 11.9.3-1 and what Orthanc
does); a malformed query answers 400 (an invalid UID in the path or a value, a number out of
range, a control character); ``application/dicom+xml`` alone is 406.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.api.dicomweb.qido import qido_search
from medshard.api.dicomweb.query import Level, parse_qido
from medshard.api.dicomweb.routes_common import ROOT, base_url, dicom_json, require_json

router = APIRouter(prefix=ROOT, tags=["dicomweb"], dependencies=[Depends(valid_path_uids)])

#: Most results one search returns; clients page past it with ``offset``.
MAX_RESULTS: Final = 1000


async def _search(
    request: Request, archive: ArchiveDep, level: Level, fixed: dict[str, str]
) -> Response:
    require_json(request.headers.get("accept"))
    query = parse_qido(request.query_params.multi_items(), level, max_limit=MAX_RESULTS)
    results, warnings = await run_in_threadpool(
        qido_search, archive, query, fixed, base_url(request)
    )
    return dicom_json(results, 200, warnings)


@router.get("/studies")
async def search_studies(request: Request, archive: ArchiveDep) -> Response:
    """Studies matching the query (PS3.18 10.6.1, Search for Studies)."""
    return await _search(request, archive, "study", {})


@router.get("/series")
async def search_series(request: Request, archive: ArchiveDep) -> Response:
    """Series of any study; study attributes come along to tell them apart."""
    return await _search(request, archive, "series", {})


@router.get("/instances")
async def search_instances(request: Request, archive: ArchiveDep) -> Response:
    """Instances of any study; study and series attributes come along."""
    return await _search(request, archive, "instance", {})


@router.get("/studies/{study}/series")
async def search_study_series(study: str, request: Request, archive: ArchiveDep) -> Response:
    """Series of one study."""
    return await _search(request, archive, "series", {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances")
async def search_study_instances(study: str, request: Request, archive: ArchiveDep) -> Response:
    """Instances of one study; series attributes come along."""
    return await _search(request, archive, "instance", {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances")
async def search_series_instances(
    study: str, series: str, request: Request, archive: ArchiveDep
) -> Response:
    """Instances of one series."""
    fixed = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    return await _search(request, archive, "instance", fixed)
