"""DICOM attribute matching (PS3.4 C.2.2.2), shared by QIDO-RS, C-FIND and the catalog.

Conditions are plain data: the catalog turns them into SQL where it can (:func:`to_sql_like`),
and :func:`matches` checks them in memory. Person names match case-insensitively; a single
DA/TM/DT value is a one-point range; time-zone offsets in DT values are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Final, Literal

from medshard.errors import InvalidInputError

LIKE_ESCAPE: Final = "\\"

_DT = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
_VALUE_RE: Final = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?"),
    "DT": re.compile(_DT),
}
_RANGE_RE: Final = {
    vr: re.compile(f"({rx.pattern})?-({rx.pattern})?") for vr, rx in _VALUE_RE.items()
}
# Zero/maximum padding that turns a partial value into a comparable fixed-width digit string.
_LOW_PAD: Final = {"DA": "00000000", "TM": "000000000000", "DT": "00000101000000000000"}
_HIGH_PAD: Final = {"DA": "99999999", "TM": "235959999999", "DT": "99991231235959999999"}


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class SingleValue:
    """Exact match (after trimming DICOM space padding); case-insensitive for person names."""

    value: str
    ignore_case: bool = False


@dataclass(frozen=True)
class Wildcard:
    """``*`` matches any run of characters, ``?`` exactly one."""

    pattern: str
    ignore_case: bool = False

    @cached_property
    def regex(self) -> re.Pattern[str]:
        """The pattern compiled once, anchored at both ends."""
        body = "".join(
            ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.pattern
        )
        return re.compile(body, re.IGNORECASE | re.DOTALL if self.ignore_case else re.DOTALL)

    @property
    def sql_like(self) -> str:
        """The pattern for ``column.like(p, escape=LIKE_ESCAPE)``."""
        return to_sql_like(self.pattern)


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Matches any of the listed values (UID list matching, CS value lists)."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive DA / TM / DT range; either end may be open (``None``)."""

    vr: Literal["DA", "TM", "DT"]
    low: str | None
    high: str | None

    def bounds(self) -> tuple[str | None, str | None]:
        """Fixed-width digit strings for comparison (and for SQL on normalised columns)."""
        lo = _normalise(self.low, self.vr, high=False) if self.low else None
        hi = _normalise(self.high, self.vr, high=True) if self.high else None
        return lo, hi


Condition = SingleValue | Wildcard | AnyOf | Range


def _normalise(value: str, vr: str, *, high: bool) -> str:
    digits = value.strip()
    if vr == "DT":
        digits = re.sub(r"[+-]\d{4}$", "", digits)
    digits = digits.replace(".", "").replace(":", "").replace("-", "")
    pad = _HIGH_PAD[vr] if high else _LOW_PAD[vr]
    return (digits + pad[len(digits) :])[: len(pad)]


def _values(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return [v.strip() for v in items if v is not None and v.strip()]


def matches(value: str | Sequence[str] | None, condition: Condition) -> bool:
    """Return whether a stored attribute value satisfies a condition (PS3.4 C.2.2.2).

    ``value`` may be multi-valued (a list, or a backslash-separated string as DICOM stores
    it); one matching value suffices. An absent or empty value matches nothing.
    """
    candidates = _values(value)
    if not candidates:
        return False
    if isinstance(condition, SingleValue):
        want = condition.value.strip()
        if condition.ignore_case:
            return any(v.casefold() == want.casefold() for v in candidates)
        return want in candidates
    if isinstance(condition, Wildcard):
        rx = condition.regex
        return any(rx.fullmatch(v) is not None for v in candidates)
    if isinstance(condition, AnyOf):
        wanted = set(condition.values)
        return any(v in wanted for v in candidates)
    lo, hi = condition.bounds()
    pattern = _VALUE_RE[condition.vr]
    for v in candidates:
        if not pattern.fullmatch(v):
            continue  # a malformed stored value can't be placed in a range
        n = _normalise(v, condition.vr, high=False)
        if (lo is None or n >= lo) and (hi is None or n <= hi):
            return True
    return False


def to_sql_like(pattern: str) -> str:
    """Translate a DICOM wildcard pattern into an SQL LIKE pattern.

    ``%``, ``_`` and the escape character itself are escaped with :data:`LIKE_ESCAPE`, so use
    ``column.like(to_sql_like(p), escape=LIKE_ESCAPE)``; ``*`` becomes ``%``, ``?`` ``_``.
    """
    out = []
    for c in pattern:
        if c in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


#: The VRs matched by (single-point or open) ranges.
RANGE_VRS: Final = frozenset(_VALUE_RE)


def parse_range(keyword: str, vr: str, value: str) -> Range:
    """A DA/TM/DT matching value: a single value (a one-point range) or ``low-high`` with either
    end open. Shared by QIDO-RS and C-FIND, whose range syntax is the same (PS3.4 C.2.2.2.5)."""
    rvr: Literal["DA", "TM", "DT"] = "DA" if vr == "DA" else "TM" if vr == "TM" else "DT"
    if _VALUE_RE[vr].fullmatch(value):
        return Range(rvr, value, value)
    m = _RANGE_RE[vr].fullmatch(value)
    if m is None or value == "-":
        raise InvalidInputError(
            f"{keyword}: {value!r} is not a {vr} value or range "
            f"(e.g. {'20200101-20201231' if vr == 'DA' else '080000-120000'})"
        )
    result = Range(rvr, m.group(1), m.group(2))
    lo, hi = result.bounds()
    if lo is not None and hi is not None and lo > hi:
        raise InvalidInputError(f"{keyword}: range {value!r} ends before it starts")
    return result
