"""DICOM UID syntax (PS3.5 9.1), checked wherever a UID comes from outside.

A UID is at most 64 characters of digits and dots: components separated by single dots,
each a run of digits without a leading zero (a lone ``0`` is fine). Checking this at every
door (ingest, DICOMweb paths, QIDO-RS values, WADO-URI parameters) means no UID that reaches
the catalog, a log line or a URL can carry path separators, quotes, SQL or markup; and since
ingest applies the same rule, every stored instance stays addressable by its UIDs.
"""

from __future__ import annotations

import re
from typing import Final

from medshard.errors import InvalidInputError

__all__ = ["MAX_UID_LENGTH", "check_uid", "uid_problem"]

#: PS3.5 Table 6.2-1 (VR UI): at most 64 bytes, padding excluded.
MAX_UID_LENGTH: Final = 64
_CHARS: Final = re.compile(r"[0-9.]+")
_COMPONENT: Final = re.compile(r"0|[1-9][0-9]*")


def uid_problem(value: str) -> str | None:
    """What makes ``value`` an invalid UID, or ``None`` when it is valid.

    Examples
    --------
    >>> uid_problem("1.2.840.10008.1.2.1") is None
    True
    >>> uid_problem("1.02.3")
    "component '02' has a leading zero"
    """
    if not value:
        return "it is empty"
    if len(value) > MAX_UID_LENGTH:
        return f"it is {len(value)} characters long, more than {MAX_UID_LENGTH}"
    if not _CHARS.fullmatch(value):
        return "only digits and dots are allowed"
    for component in value.split("."):
        if not component:
            return "it has an empty component (a leading, trailing or doubled dot)"
        if not _COMPONENT.fullmatch(component):
            return f"component {component!r} has a leading zero"
    return None


def check_uid(value: str, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID.

    Raises
    ------
    InvalidInputError
        It is not (the message names ``what`` and the rule it breaks).
    """
    problem = uid_problem(value)
    if problem is not None:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidInputError(
            f"{what} {shown!r} is not a valid DICOM UID: {problem} "
            "(PS3.5 9.1: digits and dots, at most 64 characters, no leading zeros)"
        )
    return value
