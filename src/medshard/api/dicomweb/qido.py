"""QIDO-RS searches (PS3.18 10.6): a parsed query run on the catalog, rows to DICOM JSON.

:mod:`medshard.api.dicomweb.query` turns the URL into a :class:`QidoQuery`; this module maps
it onto the catalog's search (its levels, indexed attributes and parent levels) and builds
each result's DICOM JSON, RetrieveURL included. It reads the catalog only, never stored bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from pydicom.datadict import tag_for_keyword

from medshard.api.dicomweb.dicomjson import value_json
from medshard.api.dicomweb.query import Level as QidoLevel
from medshard.api.dicomweb.query import QidoQuery, SingleValue, default_attributes
from medshard.catalog.search import ATTRIBUTES, DEPTH, Level, search, searchable
from medshard.cluster.archive import Archive
from medshard.security.context import require_caller
from medshard.security.policy import audit_results, scope_of

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
    caller = require_caller()
    with archive.catalog.reads() as session:
        rows = search(
            session,
            level,
            conditions,
            fields=[k for k in keywords if k in ATTRIBUTES] + list(_UID_KEYS),
            limit=query.limit,
            offset=query.offset,
            scope=scope_of(caller.principal),
        )
    audit_results(caller, "query", rows, detail=f"QIDO-RS {query.level}")
    plan = _json_plan(keywords)
    return [_qido_json(row, plan, query.level, base) for row in rows], warnings


def _json_plan(keywords: Sequence[str]) -> list[tuple[str, str, str]]:
    """(tag, keyword, VR) of each returned attribute, in tag order: worked out once per
    search, not once per result (a 100-result search asked pydicom's dictionary 1,500 times)."""
    plan = []
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            vr = ATTRIBUTES[keyword].vr if keyword in ATTRIBUTES else _EXTRA_VRS[keyword]
            plan.append((f"{tag:08X}", keyword, vr))
    return sorted(plan)


def _qido_json(
    row: Mapping[str, Any], plan: Sequence[tuple[str, str, str]], level: str, base: str
) -> dict[str, Any]:
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level != "study":
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "instance":
        url += f"/instances/{row['SOPInstanceUID']}"
    out: dict[str, Any] = {}
    for tag, keyword, vr in plan:
        if keyword == "RetrieveURL":
            value: Any = url
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif keyword in row:
            value = row[keyword]
        else:
            continue  # computed at another level only (e.g. ModalitiesInStudy for series)
        out[tag] = value_json(vr, value)
    return out
