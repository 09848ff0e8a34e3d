"""Map medshard errors to HTTP statuses, once for the whole app."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from medshard.errors import (
    AccessDeniedError,
    InvalidInputError,
    MedshardError,
    NotFoundError,
    StorageError,
    UnsupportedContentError,
)

STATUS_OF: list[tuple[type[MedshardError], int]] = [
    (NotFoundError, 404),
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
    async def _medshard_error(_request: Request, exc: MedshardError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status_of(exc))
