"""Bearer tokens: login sessions (OAuth2 password flow) and service accounts' API tokens.

Tokens are 256 random bits; the catalog keeps only their SHA-256, so a stolen catalog yields
no usable token. Access tokens expire after ``access_token_ttl_s`` or after
``session_idle_timeout_s`` without use, whichever comes first; a refresh token (single use,
rotated on every refresh) gets a new pair without the password. Repeated failed logins lock
the account for ``lockout_s``. The prefix of a token says what it is (``msa_`` access,
``msr_`` refresh, ``mst_`` API token), which helps secret scanners and people alike.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from medshard.catalog import auth_tokens as rows
from medshard.catalog.access_models import User
from medshard.catalog.models import utcnow
from medshard.catalog.users import user_named, user_of_pk
from medshard.config import Settings
from medshard.errors import AuthenticationError, InvalidInputError, NotFoundError
from medshard.security.identity import as_utc, get_user, principal_of
from medshard.security.passwords import verify_password
from medshard.security.principal import Principal

ACCESS_PREFIX = "msa_"
REFRESH_PREFIX = "msr_"
API_PREFIX = "mst_"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenPair:
    """The OAuth2 token response (RFC 6749 5.1) of a login or a refresh."""

    access_token: str
    refresh_token: str
    expires_in: int
    principal: Principal

    def as_response(self) -> dict[str, object]:
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "role": self.principal.role,
            "username": self.principal.username,
        }


def login(
    session: Session, settings: Settings, username: str, password: str, source: str
) -> TokenPair:
    """Check a password and open a session.

    Raises
    ------
    AuthenticationError
        Unknown user, wrong password, disabled or locked account; the message never says
        which, so that usernames cannot be probed.
    """
    user = user_named(session, username)
    now = utcnow()
    ok = verify_password(user.password_hash if user else None, password)
    if user is None or user.role == "service":
        raise AuthenticationError("wrong username or password")
    locked = user.locked_until is not None and as_utc(user.locked_until) > now
    if locked or user.disabled:
        raise AuthenticationError("wrong username or password, or the account is locked")
    if not ok:
        user.failed_logins += 1
        if user.failed_logins >= settings.lockout_after_failures:
            user.locked_until = now + timedelta(seconds=settings.lockout_s)
            user.failed_logins = 0
        raise AuthenticationError("wrong username or password")
    user.failed_logins = 0
    user.locked_until = None
    return _open_session(session, settings, user, source)


def _open_session(session: Session, settings: Settings, user: User, source: str) -> TokenPair:
    now = utcnow()
    access, refresh = _new(ACCESS_PREFIX), _new(REFRESH_PREFIX)
    rows.add_login_session(
        session,
        user_pk=user.id,
        access_hash=token_hash(access),
        refresh_hash=token_hash(refresh),
        now=now,
        access_expires_at=now + timedelta(seconds=settings.access_token_ttl_s),
        refresh_expires_at=now + timedelta(seconds=settings.refresh_token_ttl_s),
        source=source,
    )
    principal = principal_of(session, user, source=source)
    return TokenPair(access, refresh, settings.access_token_ttl_s, principal)


def refresh(session: Session, settings: Settings, refresh_token: str, source: str) -> TokenPair:
    """Exchange a refresh token for a new pair; the old session ends (rotation)."""
    row = rows.login_session_of_refresh(session, token_hash(refresh_token))
    now = utcnow()
    if row is None or row.revoked or as_utc(row.refresh_expires_at) <= now:
        raise AuthenticationError("the refresh token is invalid or expired; log in again")
    user = user_of_pk(session, row.user_pk)
    if user is None or user.disabled:
        raise AuthenticationError("the account is disabled")
    row.revoked = True
    return _open_session(session, settings, user, source)


def logout(session: Session, access_token: str) -> bool:
    """End the session of an access token; True when there was one."""
    return rows.end_login_session(session, token_hash(access_token))


@dataclass(frozen=True)
class Resolved:
    """A bearer token resolved to its caller, and until when that answer holds."""

    principal: Principal
    valid_until: datetime
    session_pk: int | None = None
    last_used_at: datetime | None = None


def resolve(session: Session, settings: Settings, token: str) -> Resolved:
    """The caller a bearer token stands for.

    Raises
    ------
    AuthenticationError
        Unknown, expired, idle-expired or revoked token, or a disabled user.
    """
    now = utcnow()
    digest = token_hash(token)
    if token.startswith(API_PREFIX):
        api = rows.api_token_of(session, digest)
        if api is None or api.revoked_at is not None:
            raise AuthenticationError("the API token is unknown or revoked")
        expires = as_utc(api.expires_at) if api.expires_at is not None else None
        if expires is not None and expires <= now:
            raise AuthenticationError("the API token has expired")
        user = user_of_pk(session, api.user_pk)
        if user is None or user.disabled:
            raise AuthenticationError("the account of this token is disabled")
        until = expires or now + timedelta(days=3650)
        return Resolved(principal_of(session, user, via="api-token"), until)
    row = rows.login_session_of_access(session, digest)
    if row is None or row.revoked:
        raise AuthenticationError("the access token is unknown or has been logged out")
    hard = as_utc(row.access_expires_at)
    idle = as_utc(row.last_used_at) + timedelta(seconds=settings.session_idle_timeout_s)
    if hard <= now:
        raise AuthenticationError("the access token has expired; refresh or log in again")
    if idle <= now:
        raise AuthenticationError("the session expired after inactivity; log in again")
    user = user_of_pk(session, row.user_pk)
    if user is None or user.disabled:
        raise AuthenticationError("the account is disabled")
    return Resolved(
        principal_of(session, user, via="local"),
        min(hard, idle),
        session_pk=row.id,
        last_used_at=as_utc(row.last_used_at),
    )


def touch(session: Session, session_pk: int) -> None:
    """Record use of a session (idle expiry counts from here)."""
    rows.touch_login_session(session, session_pk)


def create_api_token(
    session: Session, username: str, name: str = "", days: int | None = None
) -> str:
    """A new API token for a service account; the only time the token is ever shown."""
    user = get_user(session, username)
    if user.role != "service":
        raise InvalidInputError("API tokens are for service accounts; people log in")
    token = _new(API_PREFIX)
    rows.add_api_token(
        session,
        user_pk=user.id,
        name=name or "token",
        token_hash=token_hash(token),
        prefix=token[:12],
        expires_at=utcnow() + timedelta(days=days) if days else None,
    )
    return token


def revoke_api_token(session: Session, token_or_prefix: str) -> int:
    """Revoke a token given whole or by its shown prefix; returns how many were revoked."""
    if token_or_prefix.startswith(API_PREFIX) and len(token_or_prefix) > 20:
        count = rows.revoke_api_tokens(session, token_hash=token_hash(token_or_prefix))
    elif len(token_or_prefix) >= 8:
        count = rows.revoke_api_tokens(session, prefix=token_or_prefix[:12])
    else:
        raise InvalidInputError("give the whole token or its 12-character prefix")
    if not count:
        raise NotFoundError(f"no active API token {token_or_prefix[:12]}…")
    return count
