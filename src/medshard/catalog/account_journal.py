"""Accounts a transaction changed (users, API tokens, DICOM peers), as the object journal
writes them, and made again on restore (see :mod:`medshard.cluster.journal`).

A user added, a password changed, an account disabled, an API token created or revoked, a
calling AE allowed or removed after the last metadata backup would otherwise be lost with
the service's disk: a PACS whose new token no longer works, a disabled account that works
again. Each change notes what it touched (a username, a token's digest, an AE title); the
journal's flush writes the touched rows as they stand at commit, by name, and a restore
puts them back as they were (:func:`apply_account`). Writing the whole row, not the change,
makes replaying one the backup already holds harmless. Password hashes and token digests
travel as the catalog keeps them (never a secret in clear), sealed with the recovery key
like the rest of the journal.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from medshard.catalog.access_models import ApiToken, DicomPeer, User, UserSite
from medshard.catalog.db import peek_scratch, transaction_scratch
from medshard.catalog.models import Site

_SCRATCH_KEY: Final = "account-changes"
AccountKind = Literal["user", "api-token", "peer"]


def note_account_change(session: Session, kind: AccountKind, key: str) -> None:
    """Remember that this transaction changed the user ``key`` (a username), the API token
    of digest ``key`` or the DICOM peer of AE title ``key``."""
    transaction_scratch(session).setdefault(_SCRATCH_KEY, {})[(kind, key)] = None


def account_snapshots(session: Session) -> list[dict[str, Any]]:
    """The rows this transaction's account changes touched, as they stand now, by name."""
    scratch = peek_scratch(session)
    touched = scratch.get(_SCRATCH_KEY, {}) if scratch else {}
    return [_snapshot(session, kind, key) for kind, key in touched]


def _snapshot(session: Session, kind: AccountKind, key: str) -> dict[str, Any]:
    if kind == "user":
        user = session.scalar(select(User).where(User.username == key))
        if user is None:
            return {"kind": kind, "username": key, "gone": True}
        return {
            "kind": kind,
            "username": key,
            "role": user.role,
            "full_name": user.full_name,
            "password_hash": user.password_hash,
            "site": _site_name(session, user.site_id),
            "patient_id": user.patient_id,
            "disabled": user.disabled,
            "created_at": user.created_at.isoformat(),
            "work_sites": sorted(
                session.scalars(
                    select(Site.name)
                    .join(UserSite, UserSite.site_id == Site.id)
                    .where(UserSite.user_pk == user.id)
                )
            ),
        }
    if kind == "api-token":
        row = session.execute(
            select(ApiToken, User.username)
            .join(User, User.id == ApiToken.user_pk)
            .where(ApiToken.token_hash == key)
        ).first()
        if row is None:
            return {"kind": kind, "token_hash": key, "gone": True}
        token, username = row
        return {
            "kind": kind,
            "token_hash": key,
            "user": username,
            "name": token.name,
            "prefix": token.prefix,
            "created_at": token.created_at.isoformat(),
            "expires_at": _iso(token.expires_at),
            "revoked_at": _iso(token.revoked_at),
        }
    acting_as = session.scalar(
        select(User.username)
        .join(DicomPeer, DicomPeer.user_pk == User.id)
        .where(DicomPeer.ae_title == key)
    )
    return {"kind": kind, "ae_title": key, "user": acting_as}


def apply_account(session: Session, snap: dict[str, Any]) -> bool:
    """Put a journaled account row back as it was at its commit: False when it names a user
    the restored catalog does not have (a token or peer of an account not restored)."""
    kind = snap["kind"]
    if kind == "user":
        _apply_user(session, snap)
    elif kind == "api-token":
        return _apply_token(session, snap)
    elif kind == "peer":
        session.execute(delete(DicomPeer).where(DicomPeer.ae_title == snap["ae_title"]))
        if snap["user"] is not None:
            user_pk = _user_pk(session, snap["user"])
            if user_pk is None:
                return False
            session.add(DicomPeer(ae_title=snap["ae_title"], user_pk=user_pk))
    else:
        return False
    session.flush()
    return True


def _apply_user(session: Session, snap: dict[str, Any]) -> None:
    user = session.scalar(select(User).where(User.username == snap["username"]))
    if snap.get("gone"):
        if user is not None:
            session.delete(user)
        return
    if user is None:
        user = User(
            username=snap["username"],
            created_at=datetime.fromisoformat(snap["created_at"]),
            failed_logins=0,
        )
        session.add(user)
    user.role = snap["role"]
    user.full_name = snap["full_name"]
    user.password_hash = snap["password_hash"]
    user.site_id = _site_pk(session, snap["site"])
    user.patient_id = snap["patient_id"]
    user.disabled = snap["disabled"]
    session.flush()
    session.execute(delete(UserSite).where(UserSite.user_pk == user.id))
    for name in snap["work_sites"]:
        site_pk = _site_pk(session, name)
        if site_pk is not None:
            session.add(UserSite(user_pk=user.id, site_id=site_pk))


def _apply_token(session: Session, snap: dict[str, Any]) -> bool:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == snap["token_hash"]))
    if snap.get("gone"):
        if token is not None:
            session.delete(token)
        session.flush()
        return True
    user_pk = _user_pk(session, snap["user"])
    if user_pk is None:
        return False
    if token is None:
        token = ApiToken(token_hash=snap["token_hash"])
        session.add(token)
    token.user_pk = user_pk
    token.name = snap["name"]
    token.prefix = snap["prefix"]
    token.created_at = datetime.fromisoformat(snap["created_at"])
    token.expires_at = _parse(snap["expires_at"])
    token.revoked_at = _parse(snap["revoked_at"])
    session.flush()
    return True


def _user_pk(session: Session, username: str) -> int | None:
    return session.scalar(select(User.id).where(User.username == username))


def _site_name(session: Session, site_pk: int | None) -> str | None:
    return None if site_pk is None else session.scalar(select(Site.name).where(Site.id == site_pk))


def _site_pk(session: Session, name: str | None) -> int | None:
    """The site of this name, added if the restored catalog lacks it (as a user's add does)."""
    if name is None:
        return None
    found = session.scalar(select(Site.id).where(Site.name == name))
    if found is None:
        site = Site(name=name)
        session.add(site)
        session.flush()
        found = site.id
    return found


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)
