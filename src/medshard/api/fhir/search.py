"""FHIR search parameters as the specification defines them, turned into SQL, and Bundles.

* ``patient`` / ``subject``: ``Patient/ID`` or ``ID``;
* ``date``: each value an optional prefix (``eq`` by default, ``ne``, ``lt``, ``le``, ``gt``,
  ``ge``) and a date or dateTime of any precision, which stands for the whole period it names
  (``2026-03`` is March). For a resource whose date is a period ``[a, b]`` (an instant is
  ``a = b``) and a search period ``[lo, hi)``, as FHIR R4 §3.1.1.4.6 states them:
  ``eq``: ``lo <= a and b < hi``; ``gt``: ``b >= hi``; ``lt``: ``a < lo``;
  ``ge``: ``gt or eq``; ``le``: ``lt or eq``; ``ne``: ``not eq``. Several ``date``
  parameters must all hold (``date=ge2026-01&date=lt2026-04``);
* ``_count`` (page size, default 20, at most 1000) and ``_offset``; the Bundle carries
  ``self``, ``first``, ``previous`` and ``next`` links, so a client pages by following them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, not_, or_
from starlette.datastructures import QueryParams

from medshard.errors import InvalidInputError
from medshard.ingest.times import period_of

DEFAULT_COUNT: Final = 20
MAX_COUNT: Final = 1000
MAX_OFFSET: Final = 10**9
PREFIXES: Final = ("eq", "ne", "lt", "le", "gt", "ge")


def date_condition(value: str, start: Any, end: Any) -> ColumnElement[bool]:
    """The condition for one ``date`` value on a resource dated ``[start, end]``."""
    prefix = "eq"
    if value[:2] in PREFIXES and not value[:2].isdigit():
        prefix, value = value[:2], value[2:]
    elif value[:2].isalpha():
        raise InvalidInputError(f"date prefix {value[:2]!r} is not supported (eq ne lt le gt ge)")
    lo, hi = period_of(value)
    within = and_(start >= lo, end < hi)
    after = end >= hi
    before = start < lo
    return {
        "eq": within,
        "ne": not_(within),
        "gt": after,
        "lt": before,
        "ge": or_(after, within),
        "le": or_(before, within),
    }[prefix]


def patient_ref(value: str) -> str:
    """The patient id of a ``patient``/``subject`` value (``Patient/ID`` or ``ID``)."""
    ref = value.strip()
    if ref.startswith("Patient/"):
        ref = ref[len("Patient/") :]
    elif "/" in ref:
        raise InvalidInputError(f"{value!r} is not a Patient reference")
    if not ref:
        raise InvalidInputError("empty patient reference")
    return ref


def paging(params: QueryParams) -> tuple[int, int]:
    """(``_count``, ``_offset``) of a search, checked."""
    try:
        count = int(params.get("_count", DEFAULT_COUNT))
        offset = int(params.get("_offset", 0))
    except ValueError:
        raise InvalidInputError("_count and _offset are whole numbers") from None
    if not (count >= 0 and 0 <= offset <= MAX_OFFSET):
        raise InvalidInputError(f"_count may not be negative, nor _offset outside 0..{MAX_OFFSET}")
    return min(count, MAX_COUNT), offset


def searchset(
    base: str,
    resource_type: str,
    params: QueryParams,
    resources: Sequence[dict[str, Any]],
    total: int,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of one page, with the links to the others."""
    count, offset = paging(params)
    kept = [(k, v) for k, v in params.multi_items() if k != "_offset"]

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*kept, ("_offset", str(at))]) if at else urlencode(kept)
        return {
            "relation": relation,
            "url": f"{base}/{resource_type}" + (f"?{query}" if query else ""),
        }

    links = [link("self", offset), link("first", 0)]
    if offset > 0:
        links.append(link("previous", max(0, offset - count)))
    if count and offset + count < total:
        links.append(link("next", offset + count))
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{resource_type}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def history_bundle(
    base: str, resource_type: str, versions: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A ``history`` Bundle of a resource's versions, newest first."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(versions),
        "entry": [
            {
                "fullUrl": f"{base}/{resource_type}/{v['id']}",
                "resource": v,
                "request": {
                    "method": "PUT" if v["meta"]["versionId"] != "1" else "POST",
                    "url": f"{resource_type}/{v['id']}",
                },
                "response": {
                    "status": "200" if v["meta"]["versionId"] != "1" else "201",
                    "lastModified": v["meta"]["lastUpdated"],
                },
            }
            for v in versions
        ],
    }
