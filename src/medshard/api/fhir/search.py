"""FHIR search parameters as the specification defines them, turned into SQL, and Bundles.

* ``patient`` / ``subject``: ``Patient/ID`` or ``ID``; a comma between values means "or";
* ``date``: each value an optional prefix (``eq`` by default, ``ne``, ``lt``, ``le``, ``gt``,
  ``ge``) and a date or dateTime of any precision, which stands for the whole period it names
  (``2026-03`` is March). For a resource whose date is a period ``[a, b]`` (an instant is
  ``a = b``) and a search period ``[lo, hi)``, as FHIR R4 §3.1.1.4.6 states them:
  ``eq``: ``lo <= a and b < hi``; ``gt``: ``b >= hi``; ``lt``: ``a < lo``;
  ``ge``: ``gt or eq``; ``le``: ``lt or eq``; ``ne``: ``not eq``. Several ``date``
  parameters must all hold (``date=ge2026-01&date=lt2026-04``);
* ``_count`` (page size, default 20, at most 1000) and ``_offset``; the Bundle carries
  ``self``, ``first``, ``previous`` and ``next`` links, so a client pages by following them;
* ``_sort`` (R4 search, "Sorting"): a comma-separated list of sort keys, each ascending
  or, with a leading ``-``, descending; the keys each resource type offers are in
  :data:`SORTS`;
* ``_include`` ("Including other resources"): ``Type:subject`` or ``Type:patient``
  (optionally ``:Patient``) adds the Patient of each match to the page, as an entry with
  ``search.mode = include`` (not counted in ``total``);
* ``_total`` ("Total number of matches"): ``none`` skips counting (``total`` is then left
  out unless the page shows it is the last one), ``estimate`` and ``accurate`` count.

Anything else is unknown or unsupported (R4 search, "Handling errors", and the ``Prefer:
handling`` header): under ``handling=strict`` the search answers 400 with an OperationOutcome;
under ``handling=lenient`` (the default) it is left out, the Bundle's ``self`` link shows
only what was used, and an OperationOutcome entry (``search.mode = outcome``) says what was
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
#: Result parameters every search type takes (``_format``: JSON is the only format served).
COMMON: Final = frozenset({"_count", "_offset", "_sort", "_include", "_total", "_format"})
#: The search parameters of each resource type (besides :data:`COMMON`).
PARAMETERS: Final[Mapping[str, frozenset[str]]] = {
    "Patient": frozenset({"_id", "identifier"}),
    "DocumentReference": frozenset({"patient", "subject", "date", "type"}),
    "ImagingStudy": frozenset({"patient", "subject", "date"}),
    "Observation": frozenset({"patient", "subject", "date", "code"}),
}
#: The ``_sort`` keys of each resource type.
SORTS: Final[Mapping[str, frozenset[str]]] = {
    "Patient": frozenset({"_id", "_lastUpdated"}),
    "DocumentReference": frozenset({"date", "_lastUpdated", "_id"}),
    "ImagingStudy": frozenset({"date", "started", "_id"}),
    "Observation": frozenset({"date", "_lastUpdated", "_id"}),
}
#: The reference parameters ``_include`` may follow (each to the Patient).
INCLUDES: Final[Mapping[str, frozenset[str]]] = {
    "Patient": frozenset(),
    "DocumentReference": frozenset({"subject", "patient"}),
    "ImagingStudy": frozenset({"subject", "patient"}),
    "Observation": frozenset({"subject", "patient"}),
}
TOTALS: Final = ("none", "estimate", "accurate")
_PREFER_SPLIT: Final = re.compile(r"[,;]")


class UnsupportedSearchError(InvalidInputError):
    """A search parameter the server does not support, under ``Prefer: handling=strict``."""


@dataclass(frozen=True)
class Accepted:
    """A search's parameters as the server will use them, and what it left out."""

    resource_type: str
    params: QueryParams
    ignored: list[str] = field(default_factory=list)

    @property
    def include_patient(self) -> bool:
        return bool(self.params.getlist("_include"))


@dataclass(frozen=True)
class Found:
    """One page of a search: the matches (FHIR resources as dicts), the total (``None``:
    not counted) and the resources ``_include`` added."""

    matches: list[dict[str, Any]]
    total: int | None
    included: list[dict[str, Any]] = field(default_factory=list)


def strict_handling(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header asks for ``handling=strict`` (lenient is the default)."""
    tokens = {t.strip().lower().replace(" ", "") for t in _PREFER_SPLIT.split(prefer or "")}
    return "handling=strict" in tokens


def _include_ok(resource_type: str, value: str) -> bool:
    source, _, rest = value.partition(":")
    param, _, target = rest.partition(":")
    return (
        source == resource_type and param in INCLUDES[resource_type] and target in ("", "Patient")
    )


def accept(resource_type: str, params: QueryParams, *, strict: bool) -> Accepted:
    """The parameters a search of ``resource_type`` will use.

    Raises
    ------
    UnsupportedSearchError
        Under strict handling, for any parameter, ``_sort`` key, ``_include`` or ``_total``
        value not supported here (lenient handling leaves them out instead).
    """
    known = PARAMETERS[resource_type] | COMMON
    kept: list[tuple[str, str]] = []
    ignored: list[str] = []
    for key, value in params.multi_items():
        if key not in known:
            ignored.append(f"{key}={value}")
        elif key == "_sort":
            keys = [k.strip() for k in value.split(",") if k.strip()]
            good = [k for k in keys if k.removeprefix("-") in SORTS[resource_type]]
            ignored += [f"_sort={k}" for k in keys if k not in good]
            if good:
                kept.append((key, ",".join(good)))
        elif key == "_include" and not _include_ok(resource_type, value):
            ignored.append(f"_include={value}")
        elif key == "_total" and value not in TOTALS:
            ignored.append(f"_total={value}")
        else:
            kept.append((key, value))
    if ignored and strict:
        raise UnsupportedSearchError(
            f"{resource_type} search does not support {', '.join(ignored)} "
            f"(supported: {', '.join(sorted(known))}; _sort keys: "
            f"{', '.join(sorted(SORTS[resource_type])) or 'none'}); send Prefer: "
            "handling=lenient to have unsupported parameters ignored"
        )
    return Accepted(resource_type, QueryParams(kept), ignored)


def sort_keys(params: QueryParams, default: str) -> list[tuple[str, bool]]:
    """``(key, descending)`` pairs of the search's ``_sort`` (or of ``default``)."""
    value = ",".join(params.getlist("_sort")) or default
    return [(k.removeprefix("-"), k.startswith("-")) for k in value.split(",") if k]


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


def patient_refs(params: QueryParams) -> list[list[str]]:
    """The patient ids each ``patient``/``subject`` parameter names (a comma means "or")."""
    values = params.getlist("patient") + params.getlist("subject")
    return [[patient_ref(v) for v in value.split(",")] for value in values]


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
    accepted: Accepted,
    found: Found,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of one page, with the links to the others."""
    params, resource_type = accepted.params, accepted.resource_type
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
    more = offset + count < found.total if found.total is not None else len(found.matches) == count
    if count and more:
        links.append(link("next", offset + count))

    def entry(resource: dict[str, Any], mode: str) -> dict[str, Any]:
        return {
            "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
            "resource": resource,
            "search": {"mode": mode},
        }

    entries = [entry(r, "match") for r in found.matches]
    entries += [entry(r, "include") for r in found.included]
    if accepted.ignored:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": f"ignored (not supported): {item}"[:2000],
                        }
                        for item in accepted.ignored[:50]
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if found.total is not None:
        bundle["total"] = found.total
    return {**bundle, "link": links, "entry": entries}


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
