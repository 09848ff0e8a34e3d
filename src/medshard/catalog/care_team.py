"""Care teams, shares with experts and break-glass grants: the rows authorization reads.

Who may change them, and what they let a caller see, is the security layer's
(:mod:`medshard.security.careteam`, :mod:`medshard.security.policy`); here is only how the
rows are read and written. Each function takes the caller's session and neither commits
nor rolls back: the caller owns the transaction, and appends its audit event in it.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Row, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from medshard.catalog.access_models import BreakGlass, CareTeamDoctor, Share, User
from medshard.catalog.care_journal import note_care_change
from medshard.catalog.db import transaction_scratch
from medshard.catalog.models import CareSite, Site, Study, utcnow

# ------------------------------------------------------------------------------ care team


def in_care_team(session: Session, is_doctor_of: ColumnElement[bool]) -> bool:
    """Whether the security layer's care-team condition on one patient holds (it names
    its own rows: :func:`medshard.security.policy.is_doctor_of`)."""
    return bool(session.scalar(select(is_doctor_of)))


def care_sites_of(session: Session, patient_pk: int) -> list[Row[str, datetime, datetime]]:
    """(site name, since, last involved) of each site in a patient's care team, by name."""
    return list(
        session.execute(
            select(Site.name, CareSite.since, CareSite.last_involved_at)
            .join(Site, Site.id == CareSite.site_id)
            .where(CareSite.patient_pk == patient_pk)
            .order_by(Site.name)
        ).all()
    )


def care_doctors_of(session: Session, patient_pk: int) -> list[Row[str, str, datetime]]:
    """(username, full name, last involved) of each doctor in a patient's care team, by
    username."""
    return list(
        session.execute(
            select(User.username, User.full_name, CareTeamDoctor.last_involved_at)
            .join(User, User.id == CareTeamDoctor.user_pk)
            .where(CareTeamDoctor.patient_pk == patient_pk)
            .order_by(User.username)
        ).all()
    )


def add_care_doctor(session: Session, patient_pk: int, user_pk: int) -> None:
    """Name a doctor in a patient's care team, since now (already named: no change);
    flushed."""
    if session.get(CareTeamDoctor, (patient_pk, user_pk)) is None:
        now = utcnow()
        session.add(
            CareTeamDoctor(patient_pk=patient_pk, user_pk=user_pk, since=now, last_involved_at=now)
        )
        note_care_change(session, "add-doctor", patient_pk=patient_pk, user_pk=user_pk, at=now)
    session.flush()


def remove_care_doctor(session: Session, patient_pk: int, user_pk: int) -> None:
    """Take a doctor out of a patient's care team (not in it: no change); flushed."""
    session.execute(
        delete(CareTeamDoctor).where(
            CareTeamDoctor.patient_pk == patient_pk, CareTeamDoctor.user_pk == user_pk
        )
    )
    note_care_change(session, "remove-doctor", patient_pk=patient_pk, user_pk=user_pk)
    session.flush()


def involve(session: Session, table: type[CareSite] | type[CareTeamDoctor], **key: int) -> None:
    """Record involvement in a care team now: refresh the row's time, or add the row.

    Once per transaction: a group commit of a series' slices touches the row once. On the
    ingest hot path, so Core statements built once, on the session's connection."""
    done_here = transaction_scratch(session).setdefault("involved", set())
    marker = (table.__name__, *sorted(key.items()))
    if marker in done_here:
        return
    done_here.add(marker)
    now = utcnow()
    note_care_change(session, "involve", **key, at=now)
    refresh, add = _involvement_statements(table, tuple(key))
    conn = session.connection()  # Core, as on the rest of the write path
    done = conn.execute(refresh, {**{f"k_{c}": v for c, v in key.items()}, "now": now})
    if not done.rowcount:
        conn.execute(add, [{**key, "since": now, "last_involved_at": now}])


@functools.cache
def _involvement_statements(
    table: type[CareSite] | type[CareTeamDoctor], columns: tuple[str, ...]
) -> tuple[Any, Any]:
    """(refresh the time, add the row), built once per table: statements built per store cost
    SQLAlchemy more than running them."""
    where = [getattr(table, c) == bindparam(f"k_{c}") for c in columns]
    refresh = update(table).where(*where).values(last_involved_at=bindparam("now"))
    return refresh, insert(table)


# -------------------------------------------------------------------- shares, break-glass


def add_share(
    session: Session,
    *,
    study_pk: int,
    patient_pk: int,
    expert_pk: int,
    granted_by_pk: int | None,
    expires_at: datetime,
) -> None:
    """Share a study with an expert, from now until ``expires_at`` (flushed)."""
    values: dict[str, Any] = {
        "study_pk": study_pk,
        "patient_pk": patient_pk,
        "expert_pk": expert_pk,
        "granted_by_pk": granted_by_pk,
        "created_at": utcnow(),
        "expires_at": expires_at,
    }
    session.add(Share(**values, revoked=False))
    note_care_change(session, "share", **values)
    session.flush()


def shares_of(
    session: Session, user_pk: int | None, *, as_expert: bool
) -> list[Row[Share, str, str, str]]:
    """(share, Study Instance UID, study description, expert's username) of the unrevoked
    shares granted to an expert (``as_expert``) or by a doctor, soonest to expire first;
    expired ones included (the caller says which are still active)."""
    column = Share.expert_pk if as_expert else Share.granted_by_pk
    return list(
        session.execute(
            select(Share, Study.study_instance_uid, Study.study_description, User.username)
            .join(Study, Study.id == Share.study_pk)
            .join(User, User.id == Share.expert_pk)
            .where(column == user_pk, Share.revoked.is_(False))
            .order_by(Share.expires_at)
        ).all()
    )


def add_break_glass(
    session: Session, *, user_pk: int | None, patient_pk: int, reason: str, expires_at: datetime
) -> None:
    """Grant a user emergency access to one patient, from now until ``expires_at``
    (flushed)."""
    values: dict[str, Any] = {
        "user_pk": user_pk,
        "patient_pk": patient_pk,
        "reason": reason,
        "created_at": utcnow(),
        "expires_at": expires_at,
    }
    session.add(BreakGlass(**values))
    note_care_change(session, "break-glass", **values)
    session.flush()
