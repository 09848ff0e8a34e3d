"""UIDs in DICOMweb paths, checked before any route runs.

Every DICOMweb router declares :func:`valid_path_uids` as a router-wide dependency, so a new
route gets the check without having to remember it: a ``{study}``, ``{series}`` or
``{instance}`` that is not a PS3.5 UID (a path traversal, quotes, SQL, an overlong value)
answers 400 before the catalog, storage or audit log sees it; a well-formed but unknown UID
still answers 404.
"""

from __future__ import annotations

from typing import Final

from fastapi import Request

from medshard.ingest.uids import check_uid

__all__ = ["valid_path_uids"]

_PATH_UIDS: Final = {
    "study": "study UID",
    "series": "series UID",
    "instance": "SOP instance UID",
}


async def valid_path_uids(request: Request) -> None:
    """Refuse a request whose path holds an invalid UID.

    Raises
    ------
    InvalidInputError
        A path UID breaks PS3.5 9.1 (HTTP 400).
    """
    for name, what in _PATH_UIDS.items():
        value = request.path_params.get(name)
        if value is not None:
            check_uid(value, what)
