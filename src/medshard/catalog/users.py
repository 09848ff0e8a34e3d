"""Users, the sites they work at, and the DICOM peers that act as them: the rows identity
and authentication read and write.

The rules that keep identities sane (a doctor works at a site at least, a service account
belongs to exactly one, ...) are the security layer's (:mod:`medshard.security.identity`);
here is only how the rows are found and added. Each function takes the caller's session
and neither commits nor rolls back: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import ScalarResult, delete, select
from sqlalchemy.orm import Session

from medshard.catalog.access_models import DicomPeer, User, UserSite
from medshard.catalog.account_journal import note_account_change
from medshard.catalog.models import Site

# ----------------------------------------------------------------------------------- users


def user_named(session: Session, username: str) -> User | None:
    """The user row with this username, whole (None: no such user)."""
    return session.scalar(select(User).where(User.username == username))


def user_pk_named(session: Session, username: str) -> int | None:
    """The row key of a user by username: whether the name is taken, without loading it."""
    return session.scalar(select(User.id).where(User.username == username))


def user_of_pk(session: Session, user_pk: int) -> User | None:
    """The user a session or token row points at (from the session's identity map when it
    is loaded already)."""
    return session.get(User, user_pk)


def add_user(session: Session, user: User, work_site_pks: Sequence[int]) -> None:
    """Add a user row, and the sites they work at (a doctor's; none for a service account,
    whose one site is on the row itself); flushed, so ``user.id`` is set."""
    session.add(user)
    session.flush()
    note_account_change(session, "user", user.username)
    if work_site_pks:
        session.add_all(UserSite(user_pk=user.id, site_id=pk) for pk in work_site_pks)
        session.flush()


def work_site_pks(session: Session, user_pk: int) -> frozenset[int]:
    """The sites a (non-service) user works at: a doctor sees their care-team patients."""
    return frozenset(session.scalars(select(UserSite.site_id).where(UserSite.user_pk == user_pk)))


def users_by_name(session: Session) -> ScalarResult[User]:
    """Every user, in username order (the admin's list)."""
    return session.scalars(select(User).order_by(User.username))


# ----------------------------------------------------------------------------------- sites


def site_pk_named(session: Session, name: str) -> int | None:
    """The row key of a site by name (None: no such site yet)."""
    return session.scalar(select(Site.id).where(Site.name == name))


def add_site(session: Session, name: str) -> int:
    """Add a site by name; its new row key (flushed)."""
    site = Site(name=name)
    session.add(site)
    session.flush()
    return site.id


def site_name_of(session: Session, site_pk: int) -> str | None:
    """The name of a site by row key (None: no such site)."""
    return session.scalar(select(Site.name).where(Site.id == site_pk))


def site_names_by_pk(session: Session) -> dict[int, str]:
    """Every site's name by row key (to name many users' sites with one statement)."""
    return dict(session.execute(select(Site.id, Site.name)).all())


def site_names_of(session: Session, site_pks: Iterable[int]) -> list[str]:
    """The names of these sites, sorted (nothing asked for: no statement)."""
    wanted = list(site_pks)
    if not wanted:
        return []
    return sorted(session.scalars(select(Site.name).where(Site.id.in_(wanted))))


# ----------------------------------------------------------------------------- DICOM peers


def replace_peer(session: Session, ae_title: str, user_pk: int) -> None:
    """Map a calling AE title to a service account, replacing any mapping it had."""
    session.execute(delete(DicomPeer).where(DicomPeer.ae_title == ae_title))
    session.add(DicomPeer(ae_title=ae_title, user_pk=user_pk))
    note_account_change(session, "peer", ae_title)


def delete_peer(session: Session, ae_title: str) -> bool:
    """Forget a calling AE title; False if it was not known."""
    done = session.execute(delete(DicomPeer).where(DicomPeer.ae_title == ae_title))
    note_account_change(session, "peer", ae_title)
    return bool(cast(Any, done).rowcount)


def peers(session: Session) -> dict[str, str]:
    """Allowed calling AE titles and the username of the service account each acts as."""
    rows = session.execute(
        select(DicomPeer.ae_title, User.username).join(User, User.id == DicomPeer.user_pk)
    )
    return dict(rows.all())


def peer_user(session: Session, ae_title: str) -> User | None:
    """The service account a calling AE title acts as (None: the AE is not allowed)."""
    return session.scalar(
        select(User)
        .join(DicomPeer, DicomPeer.user_pk == User.id)
        .where(DicomPeer.ae_title == ae_title)
    )
