"""OAuth2 password flow (RFC 6749 4.3) and the session's own endpoints.

``POST /api/auth/token`` takes form fields ``username`` and ``password`` (or
``grant_type=refresh_token`` with ``refresh_token``) and answers ``{"access_token",
"token_type": "bearer", "expires_in", "refresh_token"}``; failures answer 401 with the
OAuth2 ``invalid_grant`` error, and every attempt is audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from medshard.api.auth import CallerDep, bearer_token, source_of
from medshard.errors import AuthenticationError, InvalidInputError
from medshard.security.gate import Gate
from medshard.security.identity import site_names

router = APIRouter(prefix="/api/auth", tags=["auth"])


@router.post("/token")
async def token(
    request: Request,
    grant_type: str = Form("password"),
    username: str = Form(""),
    password: str = Form(""),
    refresh_token: str = Form(""),
) -> JSONResponse:
    """Log in with a password, or exchange a refresh token for a new pair."""
    gate: Gate = request.app.state.gate
    source = source_of(request)
    try:
        if grant_type == "refresh_token":
            pair = await run_in_threadpool(gate.refresh, refresh_token, source)
        elif grant_type == "password":
            if not username or not password:
                raise InvalidInputError("username and password are required")
            pair = await run_in_threadpool(gate.login, username, password, source)
        else:
            return JSONResponse(
                {"error": "unsupported_grant_type", "error_description": grant_type[:64]},
                status_code=400,
            )
    except AuthenticationError as exc:
        return JSONResponse(
            {"error": "invalid_grant", "error_description": str(exc)},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return JSONResponse(pair.as_response(), headers={"Cache-Control": "no-store"})


@router.post("/refresh")
async def refresh(request: Request, refresh_token: str = Form(...)) -> JSONResponse:
    """Exchange a refresh token for a new pair (the old one stops working)."""
    gate: Gate = request.app.state.gate
    try:
        pair = await run_in_threadpool(gate.refresh, refresh_token, source_of(request))
    except AuthenticationError as exc:
        return JSONResponse(
            {"error": "invalid_grant", "error_description": str(exc)}, status_code=401
        )
    return JSONResponse(pair.as_response(), headers={"Cache-Control": "no-store"})


@router.post("/logout")
async def logout(request: Request, caller: CallerDep) -> dict[str, str]:
    """End this session: its access and refresh tokens stop working at once."""
    token = bearer_token(request) or ""
    await run_in_threadpool(caller.gate.logout, caller.principal, token)
    return {"status": "logged out"}


@router.get("/me")
def me(caller: CallerDep) -> dict[str, Any]:
    """Who the token stands for: name, role, sites, and (for a patient) their Patient ID."""
    p = caller.principal
    with caller.gate.catalog.session() as session:
        sites = site_names(session, p.sites)
    return {
        "username": p.username,
        "role": p.role,
        "sites": sites,
        "patient_id": p.patient_id,
        "via": p.via,
    }
