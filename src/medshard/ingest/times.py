"""Instants as clients write them, read into aware UTC datetimes.

The record keeps every time in UTC: a time with an offset is converted, a time without one is
taken in the zone the caller names (UTC unless told otherwise), and epoch numbers are seconds
or, when too large to be seconds, milliseconds. FHIR's partial dates (``2026``, ``2026-03``,
``2026-03-01``) also stand for the whole period they name (:func:`period_of`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from medshard.errors import InvalidInputError

#: Epoch values above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 1e11
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def zone(name: str | None) -> tzinfo:
    """The zone a naive timestamp is read in (``UTC`` when none is named)."""
    if not name or name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInputError(f"unknown time zone {name!r} (use an IANA name)") from None


def parse_instant(value: str | float | int, tz: tzinfo = UTC) -> datetime:
    """An aware UTC datetime from ISO 8601 text or an epoch number.

    Raises
    ------
    InvalidInputError
        Not a time this reads.
    """
    if isinstance(value, bool):
        raise InvalidInputError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        seconds = value / 1000 if abs(value) > _MS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInputError(f"not a time: {value!r}") from None
    text = str(value).strip()
    try:
        return parse_instant(float(text), tz)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"not an ISO 8601 time: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def period_of(value: str) -> tuple[datetime, datetime]:
    """The half-open UTC period ``[start, end)`` a FHIR date or dateTime value stands for.

    ``2026`` is that year, ``2026-03`` that month, ``2026-03-01`` that day; a full time
    stands for its own second (or the precision it is written to, down to microseconds).
    """
    text = value.strip()
    match = _PARTIAL.match(text)
    if match:
        year, month, day = match.groups()
        try:
            start = datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
        except ValueError:
            raise InvalidInputError(f"not a date: {text!r}") from None
        if day:
            return start, start + timedelta(days=1)
        if month:
            nxt = datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=UTC)
            return start, nxt
        return start, datetime(start.year + 1, 1, 1, tzinfo=UTC)
    start = parse_instant(text)
    clock = re.sub(r"(Z|z|[+-]\d{2}:?\d{2})$", "", text.split("T", 1)[1]) if "T" in text else ""
    if clock.count(":") == 0:
        return start, start + timedelta(hours=1)
    if clock.count(":") == 1:
        return start, start + timedelta(minutes=1)
    fraction = clock.split(".", 1)[1] if "." in clock else ""
    return start, start + timedelta(seconds=1) / (10 ** min(len(fraction), 6))
