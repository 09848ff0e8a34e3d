"""Map medshard errors to HTTP statuses, once for the whole app.

Three statuses belong to HTTP alone and have no counterpart in the transport-free hierarchy of
:mod:`medshard.errors`, so their classes live here, each a subclass of the medshard error it
refines (so that a caller outside HTTP still sees "invalid input" or "unsupported content"):

* :class:`NotAcceptableError` (406): no representation the client's ``Accept`` allows can be
  produced, e.g. a transfer syntax we cannot transcode to, or an image format we cannot render.
* :class:`ConflictError` (409): the request is well formed but conflicts with what is stored.
* :class:`PayloadTooLargeError` (413): the request body is larger than the service accepts.

The table is ordered from specific to general: the first class an error is an instance of wins.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from medshard.errors import (
    AccessDeniedError,
    AuthenticationError,
    InvalidInputError,
    MedshardError,
    NotFoundError,
    StorageError,
    UnsupportedContentError,
    VersionConflictError,
)


class NotAcceptableError(UnsupportedContentError):
    """Nothing the client accepts can be produced (HTTP 406 Not Acceptable)."""


class ConflictError(InvalidInputError):
    """The request conflicts with the archive's current state (HTTP 409 Conflict)."""


class PayloadTooLargeError(InvalidInputError):
    """The request body exceeds what the service accepts (HTTP 413 Content Too Large)."""


STATUS_OF: list[tuple[type[MedshardError], int]] = [
    (NotAcceptableError, 406),
    (ConflictError, 409),
    (VersionConflictError, 409),
    (PayloadTooLargeError, 413),
    (NotFoundError, 404),
    (AuthenticationError, 401),
    (AccessDeniedError, 403),
    (UnsupportedContentError, 415),
    (InvalidInputError, 400),
    (StorageError, 503),
]


def status_of(exc: MedshardError) -> int:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return 500


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MedshardError)
    async def _medshard_error(request: Request, exc: MedshardError) -> Response:
        status = status_of(exc)
        if request.url.path.startswith("/fhir/"):  # FHIR clients read OperationOutcome
            from medshard.api.fhir.model import outcome

            return outcome(status, str(exc))
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
