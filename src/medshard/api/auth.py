"""Authentication of every HTTP request, in one app-wide dependency.

The dependency runs before every route. Paths in :data:`PUBLIC` need no token (liveness,
the token endpoint itself, the OpenAPI document, Prometheus metrics, the browser UI's one
page, which carry no patient data; the UI's hashed scripts are a static mount under
``/assets``, see :mod:`medshard.api.web`); every other request must carry
``Authorization: Bearer <token>`` and gets 401 otherwise. The authenticated caller is set
in the request's context (:mod:`medshard.security.context`), where the data-access
functions look for it and fail closed: a route added tomorrow cannot forget
authentication, because without a caller it cannot read patient data at all.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer

from medshard.errors import AuthenticationError
from medshard.security.context import Caller, require_caller, set_caller
from medshard.security.gate import Gate

PUBLIC: Final = frozenset(
    {
        "/healthz",
        "/metrics",
        "/api/auth/token",
        "/api/auth/refresh",
        "/openapi.json",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/",  # the web UI's page (medshard.api.web): the same static HTML for everyone
        "/index.html",
        "/fhir/metadata",  # the FHIR CapabilityStatement: what the server does, about nobody
    }
)
#: Declares the scheme in the OpenAPI document (so Swagger UI and schemathesis can log in).
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/auth/token", auto_error=False)


def source_of(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "unknown"


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def authenticate(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)] = None
) -> None:
    """App-wide dependency: resolve the bearer token and set the caller for this request."""
    if request.url.path in PUBLIC or request.method == "OPTIONS":
        return
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError("authentication required: send Authorization: Bearer <token>")
    gate: Gate = request.app.state.gate
    source = source_of(request)
    principal = gate.cached(token, source)
    if principal is None:  # catalog work: off the event loop
        principal = await run_in_threadpool(gate.authenticate, token, source)
    set_caller(gate.caller(principal))


def current(request: Request) -> Caller:
    """The caller set by :func:`authenticate` (routes that need the principal)."""
    return require_caller()


CallerDep = Annotated[Caller, Depends(current)]
