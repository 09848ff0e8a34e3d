"""Users, sites of users, and DICOM peers: the identities authorization is decided for.

The rules that keep them sane live here: a doctor works at one or more sites, a service
account belongs to exactly one site, a patient-role user names their own patient record, an
admin has neither. Their rows are read and written by :mod:`medshard.catalog.users`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from medshard.catalog import users as rows
from medshard.catalog.access_models import User
from medshard.catalog.account_journal import note_account_change
from medshard.catalog.models import utcnow
from medshard.errors import InvalidInputError, NotFoundError
from medshard.security.passwords import hash_password
from medshard.security.principal import USER_ROLES, Principal, Role


@dataclass(frozen=True)
class UserInfo:
    username: str
    role: str
    full_name: str
    sites: list[str]
    patient_id: str | None
    disabled: bool
    locked: bool

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def site_pk(session: Session, name: str, *, create: bool = True) -> int:
    """The primary key of a site by name, created on first use when ``create``."""
    name = name.strip()
    if not name or len(name) > 64:
        raise InvalidInputError("a site name needs 1 to 64 characters")
    found = rows.site_pk_named(session, name)
    if found is not None:
        return found
    if not create:
        raise NotFoundError(f"no site named {name!r}")
    return rows.add_site(session, name)


def get_user(session: Session, username: str) -> User:
    user = rows.user_named(session, username)
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    return user


def add_user(
    session: Session,
    *,
    username: str,
    role: str,
    password: str | None = None,
    sites: Sequence[str] = (),
    patient_id: str | None = None,
    full_name: str = "",
) -> User:
    """Create a user; the role's rules are checked here, once for CLI and API."""
    username = username.strip()
    if not username or len(username) > 128 or any(c.isspace() for c in username):
        raise InvalidInputError("a username needs 1 to 128 characters and no spaces")
    if role not in USER_ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(USER_ROLES)}, not {role!r}")
    if rows.user_pk_named(session, username) is not None:
        raise InvalidInputError(f"user {username!r} already exists")
    if role == "service" and len(sites) != 1:
        raise InvalidInputError("a service account belongs to exactly one site (--site)")
    if role == "doctor" and not sites:
        raise InvalidInputError("a doctor works at one site at least (--site)")
    if role in ("admin", "patient") and sites:
        raise InvalidInputError(f"a {role} has no sites")
    if role == "patient" and not patient_id:
        raise InvalidInputError("a patient-role user names their Patient ID (--patient-id)")
    if role != "service" and not password:
        raise InvalidInputError(f"a {role} needs a password")
    pks = [site_pk(session, s) for s in sites]
    user = User(
        username=username,
        role=role,
        full_name=full_name,
        password_hash=hash_password(password) if password else None,
        site_id=pks[0] if role == "service" else None,
        patient_id=patient_id if role == "patient" else None,
        disabled=False,
        failed_logins=0,
    )
    rows.add_user(session, user, pks if role != "service" else ())
    return user


def set_password(session: Session, username: str, password: str) -> None:
    user = get_user(session, username)
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    note_account_change(session, "user", username)


def set_disabled(session: Session, username: str, disabled: bool = True) -> None:
    get_user(session, username).disabled = disabled
    note_account_change(session, "user", username)


def user_sites(session: Session, user: User) -> frozenset[int]:
    if user.role == "service":
        return frozenset([user.site_id]) if user.site_id is not None else frozenset()
    return rows.work_site_pks(session, user.id)


def principal_of(
    session: Session, user: User, *, source: str = "", via: str = "local"
) -> Principal:
    role: Role = user.role  # type: ignore[assignment]
    return Principal(
        user_pk=user.id,
        username=user.username,
        role=role,
        sites=user_sites(session, user),
        patient_id=user.patient_id,
        source=source,
        via=via,
    )


def list_users(session: Session) -> list[UserInfo]:
    names = rows.site_names_by_pk(session)
    now = utcnow()
    result = []
    for user in rows.users_by_name(session):
        locked = user.locked_until is not None and as_utc(user.locked_until) > now
        result.append(
            UserInfo(
                user.username,
                user.role,
                user.full_name,
                sorted(names[s] for s in user_sites(session, user)),
                user.patient_id,
                user.disabled,
                locked,
            )
        )
    return result


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: read them as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


# ----------------------------------------------------------------------------- DICOM peers


def allow_peer(session: Session, ae_title: str, username: str) -> None:
    """Allow a calling AE title and map it to a service account (replacing any mapping)."""
    ae = ae_title.strip()
    if not ae or len(ae) > 16 or "\\" in ae:
        raise InvalidInputError(f"{ae_title!r} is not a valid AE title (1-16 characters)")
    user = get_user(session, username)
    if user.role != "service":
        raise InvalidInputError(f"an AE title acts as a service account, not a {user.role}")
    rows.replace_peer(session, ae, user.id)


def remove_peer(session: Session, ae_title: str) -> None:
    """Stop accepting a calling AE title; NotFoundError if it was not allowed (a typo must
    not pass for a removal)."""
    if not rows.delete_peer(session, ae_title.strip()):
        raise NotFoundError(f"AE title {ae_title.strip()!r} is not an allowed calling AE")


def peers(session: Session) -> dict[str, str]:
    """Allowed calling AE titles and the service account each acts as."""
    return rows.peers(session)


def peer_principal(session: Session, ae_title: str, source: str) -> Principal | None:
    """The service account a calling AE acts as; None when the AE is not allowed."""
    user = rows.peer_user(session, ae_title.strip())
    if user is None or user.disabled:
        return None
    return principal_of(session, user, source=source, via="dimse")


def site_names(session: Session, pks: Iterable[int]) -> list[str]:
    return rows.site_names_of(session, pks)
