"""Login sessions and service accounts' API tokens, found by the hash a token is presented as.

Only SHA-256 digests of tokens are stored; what a token is worth (expiry, idle timeout,
rotation, lockout) is decided by :mod:`medshard.security.tokens`. Each function takes the
caller's session and neither commits nor rolls back: the caller owns the transaction.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from medshard.catalog.access_models import ApiToken, AuthSession
from medshard.catalog.account_journal import note_account_change
from medshard.catalog.models import utcnow

# -------------------------------------------------------------------------- login sessions


def add_login_session(
    session: Session,
    *,
    user_pk: int,
    access_hash: str,
    refresh_hash: str,
    now: datetime,
    access_expires_at: datetime,
    refresh_expires_at: datetime,
    source: str,
) -> None:
    """Open a login session (flushed): used ``now``, until the two expiry times."""
    session.add(
        AuthSession(
            user_pk=user_pk,
            access_hash=access_hash,
            refresh_hash=refresh_hash,
            created_at=now,
            last_used_at=now,
            access_expires_at=access_expires_at,
            refresh_expires_at=refresh_expires_at,
            revoked=False,
            source=source[:128],
        )
    )
    session.flush()


def login_session_of_refresh(session: Session, refresh_hash: str) -> AuthSession | None:
    """The login session a refresh token belongs to, revoked or not."""
    return session.scalar(select(AuthSession).where(AuthSession.refresh_hash == refresh_hash))


def login_session_of_access(session: Session, access_hash: str) -> AuthSession | None:
    """The login session an access token belongs to, revoked or not."""
    return session.scalar(select(AuthSession).where(AuthSession.access_hash == access_hash))


def end_login_session(session: Session, access_hash: str) -> bool:
    """Revoke the login session of an access token; True when there was one."""
    result = session.execute(
        update(AuthSession).where(AuthSession.access_hash == access_hash).values(revoked=True)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def touch_login_session(session: Session, session_pk: int) -> None:
    """Record use of a login session now (its idle expiry counts from here)."""
    session.execute(
        update(AuthSession).where(AuthSession.id == session_pk).values(last_used_at=utcnow())
    )


# ------------------------------------------------------------------------------ API tokens


def api_token_of(session: Session, token_hash: str) -> ApiToken | None:
    """The API token row with this digest, revoked or not."""
    return session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash))


def add_api_token(
    session: Session,
    *,
    user_pk: int,
    name: str,
    token_hash: str,
    prefix: str,
    expires_at: datetime | None,
) -> None:
    """Add a service account's API token, created now (flushed)."""
    session.add(
        ApiToken(
            user_pk=user_pk,
            name=name,
            token_hash=token_hash,
            prefix=prefix,
            created_at=utcnow(),
            expires_at=expires_at,
        )
    )
    note_account_change(session, "api-token", token_hash)
    session.flush()


def revoke_api_tokens(
    session: Session, *, token_hash: str | None = None, prefix: str | None = None
) -> int:
    """Revoke the active API token with this digest, or those shown with this prefix; how
    many were revoked."""
    if token_hash is not None:
        where = ApiToken.token_hash == token_hash
    else:
        where = ApiToken.prefix == prefix
    revoked = session.scalars(
        select(ApiToken.token_hash).where(where, ApiToken.revoked_at.is_(None))
    ).all()
    result = session.execute(
        update(ApiToken).where(where, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    for digest in revoked:
        note_account_change(session, "api-token", digest)
    return int(result.rowcount)  # type: ignore[attr-defined]
