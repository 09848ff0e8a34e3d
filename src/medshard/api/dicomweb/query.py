"""QIDO-RS query parsing and attribute matching (PS3.18 8.3.4, PS3.4 C.2.2.2), transport-free.

The HTTP route hands over the query string as ``(key, value)`` pairs and gets back a
:class:`QidoQuery`: matching conditions keyed by DICOM keyword, the return attributes, paging
and any ``Warning`` texts owed to the client. The conditions are plain data so that the same
map serves the catalog's SQL (see :func:`to_sql_like`), an in-memory :func:`matches` (tests,
small result sets) and, later, DIMSE C-FIND, whose matching rules are the same PS3.4 ones.

Decisions worth knowing:

* Person names match case-insensitively, everything else exactly (PS3.4 C.2.2.2.1 lets PN
  be case-insensitive; radiology staff type names in any case).
* A single DA/TM/DT value is a one-point range, so ``StudyTime=10`` finds 10:00-10:59:59.
  Partial upper bounds are padded with maxima (``-1012`` includes 10:12:59), lower bounds with
  zeros; time-zone offsets in DT values are ignored.
* UI and CS values may list alternatives separated by ``,`` or ``\\`` (UID list matching and
  ``ModalitiesInStudy=CT,MR``); other VRs take the value literally.
* An empty value or a lone ``*`` is universal matching: the attribute is returned, not filtered.
* Hostile values are refused (400) here rather than handed to SQL: UIDs must follow PS3.5 9.1,
  ``limit``/``offset`` must be ASCII integers that fit a 32-bit signed column (``offset=2**63``
  used to overflow the database driver: a 500), values may not hold control characters (NUL
  is an error in PostgreSQL strings) or exceed :data:`MAX_VALUE_CHARS`, and a pattern may hold
  at most :data:`MAX_WILDCARDS` wildcards (SQL LIKE matching can be exponential in them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword

from medshard.catalog.matching import (
    LIKE_ESCAPE,
    RANGE_VRS,
    AnyOf,
    Condition,
    Range,
    SingleValue,
    Wildcard,
    matches,
    parse_range,
    to_sql_like,
)
from medshard.errors import InvalidInputError
from medshard.ingest.uids import uid_problem

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "LIKE_ESCAPE",
    "MAX_OFFSET",
    "MAX_VALUE_CHARS",
    "MAX_WILDCARDS",
    "REQUIRED_MATCHING_KEYS",
    "AnyOf",
    "Condition",
    "Level",
    "QidoQuery",
    "Range",
    "SingleValue",
    "Wildcard",
    "attribute_of",
    "default_attributes",
    "matches",
    "parse_qido",
    "to_sql_like",
]

Level = Literal["study", "series", "instance"]

#: Attributes every result carries at each level (PS3.18 Table 6.7.1-2, -2a, -2b).
DEFAULT_ATTRIBUTES: Final[dict[Level, tuple[str, ...]]] = {
    "study": (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "RetrieveURL",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "SpecificCharacterSet",
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "RetrieveURL",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    ),
    "instance": (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "RetrieveURL",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

#: Matching keys an origin server must support (PS3.18 Table 10.6.1-5); sequence keys omitted.
REQUIRED_MATCHING_KEYS: Final[dict[Level, frozenset[str]]] = {
    "study": frozenset(
        {
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "ModalitiesInStudy",
            "ReferringPhysicianName",
            "PatientName",
            "PatientID",
            "StudyInstanceUID",
            "StudyID",
        }
    ),
    "series": frozenset(
        {
            "Modality",
            "SeriesInstanceUID",
            "SeriesNumber",
            "PerformedProcedureStepStartDate",
            "PerformedProcedureStepStartTime",
        }
    ),
    "instance": frozenset({"SOPClassUID", "SOPInstanceUID", "InstanceNumber"}),
}

_NO_WILDCARD_VRS: Final = frozenset(
    {"DA", "TM", "DT", "UI", "UR", "SQ", "AT", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}
)
_LIST_VRS: Final = frozenset({"UI", "CS"})
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW"})
#: Largest ``limit`` or ``offset``: fits every database's LIMIT/OFFSET column type.
MAX_OFFSET: Final = 2**31 - 1
#: Longest matching value (a list of a few hundred UIDs fits).
MAX_VALUE_CHARS: Final = 16 * 1024
#: Most ``*``/``?`` wildcards in one matching value.
MAX_WILDCARDS: Final = 16
_DIGITS: Final = re.compile(r"[0-9]{1,10}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


# --------------------------------------------------------------------------- attributes


def attribute_of(key: str) -> tuple[str, int, str]:
    """Resolve a keyword (``PatientID``) or 8-digit hex tag (``00100020``).

    Returns
    -------
    tuple of (keyword, tag, VR)

    Raises
    ------
    InvalidInputError
        Unknown attribute, private or repeating-group tag, or a sequence path (``a.b``).
    """
    key = key.strip()
    if "." in key:
        raise InvalidInputError(
            f"attribute {key!r}: nested sequence attributes are not supported in queries"
        )
    tag: int | None
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        tag = int(key, 16)
        keyword = keyword_for_tag(tag) if dictionary_has_tag(tag) else ""
    else:
        tag = tag_for_keyword(key)
        keyword = key if tag is not None else ""
    if tag is None or not keyword:
        raise InvalidInputError(
            f"unknown attribute {key!r}: use a DICOM keyword (e.g. PatientID, "
            "case-sensitive) or an 8-digit tag (e.g. 00100020)"
        )
    return keyword, tag, dictionary_VR(tag)


def default_attributes(level: Level, *, include_parents: bool = False) -> tuple[str, ...]:
    """Return the attributes a result at ``level`` carries without any ``includefield``.

    ``include_parents`` adds the higher levels' defaults, as a search for series or instances
    outside a given study must (PS3.18 10.6.3.3), so the client can tell studies apart.
    """
    _check_level(level)
    order: tuple[Level, ...] = get_args(Level)
    levels = order[: order.index(level) + 1] if include_parents else (level,)
    seen: dict[str, None] = {}
    for lv in levels:
        seen.update(dict.fromkeys(DEFAULT_ATTRIBUTES[lv]))
    return tuple(seen)


def _check_level(level: str) -> None:
    if level not in get_args(Level):
        raise InvalidInputError(f"unknown query level {level!r}: study, series or instance")


# --------------------------------------------------------------------------- the query


@dataclass
class QidoQuery:
    """A parsed QIDO-RS search.

    Attributes
    ----------
    level : {"study", "series", "instance"}
        What the route searches for.
    matches : dict
        Keyword -> condition; every condition must hold (logical AND).
    includefield : tuple of str
        Extra attributes requested, plus universal-matching keys, in request order.
    include_all : bool
        ``includefield=all``: return every attribute the archive holds at that level.
    limit, offset : int or None, int
        Paging; ``limit`` is already capped at the server maximum if one was given.
    warnings : list of str
        Texts for ``Warning: 299 <host>: ...`` headers (e.g. the limit was reduced).
    """

    level: Level
    matches: dict[str, Condition] = field(default_factory=dict)
    includefield: tuple[str, ...] = ()
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    fuzzymatching: bool = False
    warnings: list[str] = field(default_factory=list)

    def return_attributes(self, *, include_parents: bool = False) -> tuple[str, ...]:
        """Keywords to return: level defaults, then matched keys, then ``includefield``.

        Meaningless when :attr:`include_all` is set; callers then return everything.
        """
        seen = dict.fromkeys(default_attributes(self.level, include_parents=include_parents))
        seen.update(dict.fromkeys(self.matches))
        seen.update(dict.fromkeys(self.includefield))
        return tuple(seen)

    def unsupported(self, supported: Iterable[str]) -> list[str]:
        """Matching keys outside ``supported``; the route may reject or warn about them."""
        allowed = set(supported)
        return [k for k in self.matches if k not in allowed]

    def accepts(self, record: Mapping[str, str | Sequence[str] | None]) -> bool:
        """Whether a record (keyword -> value) satisfies every condition."""
        return all(matches(record.get(k), c) for k, c in self.matches.items())


def _condition(keyword: str, vr: str, raw: str) -> Condition | None:
    """Parse one matching value; ``None`` means universal matching."""
    value = raw.strip()
    if value in ("", "*"):
        return None
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidInputError(f"{keyword}: value longer than {MAX_VALUE_CHARS} characters")
    if vr in ("SQ", *_BINARY_VRS):
        raise InvalidInputError(f"{keyword} ({vr}) cannot be used as a matching key")
    wild = "*" in value or "?" in value
    if value.count("*") + value.count("?") > MAX_WILDCARDS:
        raise InvalidInputError(f"{keyword}: more than {MAX_WILDCARDS} wildcards")
    if wild and vr in _NO_WILDCARD_VRS:
        raise InvalidInputError(f"{keyword}: wildcards are not allowed for {vr} values")
    if vr in RANGE_VRS:
        return parse_range(keyword, vr, value)
    if vr in _LIST_VRS:
        items = tuple(v.strip() for v in re.split(r"[,\\]", value))
        if any(not v for v in items):
            raise InvalidInputError(f"{keyword}: empty entry in value list {value!r}")
        if vr == "UI":
            for item in items:
                if (problem := uid_problem(item)) is not None:
                    raise InvalidInputError(
                        f"{keyword}: {item[:80]!r} is not a valid UID: {problem}"
                    )
        if len(items) > 1:
            if wild:
                raise InvalidInputError(f"{keyword}: wildcards cannot be combined with a list")
            return AnyOf(tuple(dict.fromkeys(items)))
        value = items[0]
    ignore_case = vr == "PN"
    return Wildcard(value, ignore_case) if wild else SingleValue(value, ignore_case)


def _pairs(
    params: Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]],
) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        out: list[tuple[str, str]] = []
        for k, v in params.items():
            out.extend((k, x) for x in ([v] if isinstance(v, str) else v))
        return out
    return list(params)


def _non_negative(name: str, value: str) -> int:
    text = value.strip()
    if not _DIGITS.fullmatch(text) or int(text) > MAX_OFFSET:
        raise InvalidInputError(
            f"{name} must be a non-negative integer up to {MAX_OFFSET}, got {value[:40]!r}"
        )
    return int(text)


def parse_qido(
    params: Iterable[tuple[str, str]] | Mapping[str, str | Sequence[str]],
    level: Level,
    *,
    max_limit: int | None = None,
) -> QidoQuery:
    """Parse QIDO-RS query parameters into a :class:`QidoQuery`.

    Parameters
    ----------
    params : iterable of (key, value) or mapping
        The decoded query string, e.g. Starlette's ``request.query_params.multi_items()``.
        Repeated keys are kept (``includefield`` may repeat; a matching key may not).
    level : {"study", "series", "instance"}
        From the route. UIDs in the path (``/studies/{uid}/series``) are the caller's to add
        to :attr:`QidoQuery.matches` as :class:`SingleValue` conditions.
    max_limit : int, optional
        Server cap on ``limit``; a larger or missing limit is reduced to it with a warning.

    Raises
    ------
    InvalidInputError
        Unknown attribute or parameter, a repeated matching key, a malformed value, range,
        UID or number, ``fuzzymatching=true`` (not supported) — all worth a 400.
    """
    _check_level(level)
    query = QidoQuery(level=level)
    include: dict[str, None] = {}
    for raw_key, raw_value in _pairs(params):
        key = raw_key.strip()
        name = key.lower()
        value = raw_value if isinstance(raw_value, str) else str(raw_value)
        if _CONTROL.search(key) or _CONTROL.search(value):
            raise InvalidInputError(
                f"query parameter {key[:40]!r} holds a control character (e.g. NUL)"
            )
        if name == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    query.include_all = True
                elif item:
                    include[attribute_of(item)[0]] = None
        elif name == "limit":
            query.limit = _non_negative("limit", value)
            if query.limit == 0:
                raise InvalidInputError("limit must be at least 1")
        elif name == "offset":
            query.offset = _non_negative("offset", value)
        elif name == "fuzzymatching":
            flag = value.strip().lower()
            if flag == "true":
                raise InvalidInputError("fuzzymatching=true is not supported by this archive")
            if flag != "false":
                raise InvalidInputError(f"fuzzymatching must be true or false, got {value!r}")
        elif name in ("accept", "charset"):
            continue  # media type and charset negotiation belong to the HTTP layer
        else:
            keyword, _tag, vr = attribute_of(key)
            if keyword in query.matches:
                raise InvalidInputError(f"matching key {keyword} given more than once")
            condition = _condition(keyword, vr, value)
            if condition is None:
                include[keyword] = None
            else:
                query.matches[keyword] = condition
    if max_limit is not None and (query.limit is None or query.limit > max_limit):
        if query.limit is not None:
            query.warnings.append(
                f"The number of results has been limited to {max_limit} (requested {query.limit})"
            )
        query.limit = max_limit
    query.includefield = tuple(include)
    return query
