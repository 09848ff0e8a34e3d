"""FHIR JSON in and out: validation against ``fhir.resources``, responses, OperationOutcome.

Errors inside ``/fhir`` answer as FHIR does (an ``OperationOutcome`` with the HTTP status the
rest of the API would give), not as the archive's own ``{"error": ...}``, so FHIR clients can
read them; :func:`fhir_errors` wraps each route to do that.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any, Final, TypeVar

from fastapi.responses import Response
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from medshard.api.errors import status_of
from medshard.api.fhir.search import UnsupportedSearchError
from medshard.errors import InvalidInputError, MedshardError, VersionConflictError

FHIR_JSON: Final = "application/fhir+json"
F = TypeVar("F", bound=Callable[..., Any])
_ISSUE_CODE: Final = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    428: "conflict",
}


class PreconditionError(InvalidInputError):
    """An update's If-Match names a version that is not the latest (FHIR: 412), or is
    missing where the server requires version-aware updates (428)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as ``fhir.resources`` serialises it, after validating it.

    A failure here is a bug of this facade (500), never the client's fault.
    """
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    loaded: dict[str, Any] = json.loads(model.model_dump_json())
    return loaded


def check(resource: dict[str, Any]) -> None:
    """Validate a resource with ``fhir.resources`` (a failure is this facade's bug: 500)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def parse_resource(body: bytes, expected: str) -> dict[str, Any]:
    """A client's resource, validated; 400 with the validation errors otherwise."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise InvalidInputError(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("resourceType") != expected:
        raise InvalidInputError(f"the body must be a {expected} resource")
    try:
        get_fhir_model_class(expected).model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid {expected}: {exc}") from None
    return data


def fhir_response(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type=FHIR_JSON,
        headers=headers,
    )


def outcome(status: int, message: str, code: str | None = None) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code or _ISSUE_CODE.get(status, "exception"),
                "diagnostics": message[:2000],
            }
        ],
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return fhir_response(validated(body), status, **headers)


def _answer(exc: MedshardError) -> Response:
    if isinstance(exc, PreconditionError):
        return outcome(exc.status, str(exc))
    if isinstance(exc, UnsupportedSearchError):
        return outcome(400, str(exc), "not-supported")
    if isinstance(exc, VersionConflictError):
        return outcome(412, str(exc))
    return outcome(status_of(exc), str(exc))


def fhir_errors(route: F) -> F:
    """Answer the archive's errors raised by ``route`` as OperationOutcome resources."""
    if inspect.iscoroutinefunction(route):

        @functools.wraps(route)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await route(*args, **kwargs)
            except MedshardError as exc:
                return _answer(exc)

        return run_async  # type: ignore[return-value]

    @functools.wraps(route)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except MedshardError as exc:
            return _answer(exc)

    return run  # type: ignore[return-value]
