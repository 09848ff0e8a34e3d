"""Care-team changes a transaction made, by name for the object journal, and made again on
restore (see :mod:`medshard.cluster.journal` and ``journal_replay``).

Care teams decide who may read a patient and where the patient's copies go. A change made
after the last metadata backup (a doctor added or removed, a study shared, a break-glass
grant, a site or doctor involved by a write) would otherwise be lost with the service's
disk: a removed doctor back in the team, a new care site forgotten by placement. So
:mod:`medshard.catalog.care_team` notes each change in the transaction's scratch space, by
row keys, and the journal's flush (:func:`named_care_changes`) writes them by name (Patient
ID, site name, username, Study Instance UID, times as ISO text), the only keys that mean
the same thing in a restored catalog. :func:`apply_care_change` applies one again;
applying one the backup already holds changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from medshard.catalog.access_models import BreakGlass, CareTeamDoctor, Share, User
from medshard.catalog.db import peek_scratch, transaction_scratch
from medshard.catalog.models import CareSite, Patient, Site, Study

_SCRATCH_KEY: Final = "care-changes"
#: What each change's row key is named by: (field name, the row key, the name column).
_NAMES: Final[dict[str, tuple[str, InstrumentedAttribute[int], InstrumentedAttribute[str]]]] = {
    "patient_pk": ("patient", Patient.id, Patient.patient_id),
    "site_id": ("site", Site.id, Site.name),
    "user_pk": ("user", User.id, User.username),
    "expert_pk": ("expert", User.id, User.username),
    "granted_by_pk": ("granted_by", User.id, User.username),
    "study_pk": ("study", Study.id, Study.study_instance_uid),
}


def note_care_change(session: Session, op: str, **fields: Any) -> None:
    """Remember a change this transaction made (row keys, datetimes) for the journal."""
    transaction_scratch(session).setdefault(_SCRATCH_KEY, []).append({"op": op, **fields})


def named_care_changes(
    session: Session, patients: dict[int, str], site_name: Callable[[Session, int], str | None]
) -> list[dict[str, Any]]:
    """This transaction's care-team changes, keys replaced by names; ``patients`` (row key
    to Patient ID) and ``site_name`` (the journal's cache) spare the write path's lookups."""
    scratch = peek_scratch(session)
    changes = scratch.get(_SCRATCH_KEY, []) if scratch else []
    out = []
    for change in changes:
        named: dict[str, Any] = {}
        for field, value in change.items():
            if field == "patient_pk" and value in patients:
                named["patient"] = patients[value]
            elif field == "site_id" and value is not None:
                named["site"] = site_name(session, value)
            elif field in _NAMES:
                name, pk, column = _NAMES[field]
                named[name] = (
                    None if value is None else session.scalar(select(column).where(pk == value))
                )
            elif isinstance(value, datetime):
                named[field] = value.isoformat()
            else:
                named[field] = value
        out.append(named)
    return out


def _pk(session: Session, field: str, name: str | None) -> int | None:
    _name, pk, column = _NAMES[field]
    return None if name is None else session.scalar(select(pk).where(column == name))


def apply_care_change(session: Session, change: dict[str, Any]) -> bool:
    """Make a journaled change again in a restored catalog: False when what it names is not
    there (a user or study created after the backup and not restored), else True (also when
    the backup held it already)."""
    op = change["op"]
    patient = _pk(session, "patient_pk", change.get("patient"))
    if patient is None:
        return False
    if op == "involve" or op == "add-doctor":  # adding a named doctor: involvement too
        return _involve(session, patient, change)
    if op == "remove-doctor":
        user = _pk(session, "user_pk", change.get("user"))
        if user is None:
            return False
        session.execute(
            delete(CareTeamDoctor).where(
                CareTeamDoctor.patient_pk == patient, CareTeamDoctor.user_pk == user
            )
        )
        return True
    if op == "share":
        return _apply_share(session, patient, change)
    if op == "break-glass":
        return _apply_break_glass(session, patient, change)
    return False


def _involve(session: Session, patient: int, change: dict[str, Any]) -> bool:
    """A site's or doctor's involvement at its journaled time (a later one already there
    stays)."""
    at = datetime.fromisoformat(change["at"])
    row: CareSite | CareTeamDoctor | None
    if change.get("site") is not None:
        site = _pk(session, "site_id", change["site"])
        if site is None:
            return False
        row = session.get(CareSite, (patient, site))
        if row is None:
            row = CareSite(patient_pk=patient, site_id=site, since=at, last_involved_at=at)
    else:
        user = _pk(session, "user_pk", change.get("user"))
        if user is None:
            return False
        row = session.get(CareTeamDoctor, (patient, user))
        if row is None:
            row = CareTeamDoctor(patient_pk=patient, user_pk=user, since=at, last_involved_at=at)
    if _naive(row.last_involved_at) < _naive(at):
        row.last_involved_at = at
    session.add(row)
    session.flush()
    return True


def _apply_share(session: Session, patient: int, change: dict[str, Any]) -> bool:
    study = _pk(session, "study_pk", change.get("study"))
    expert = _pk(session, "expert_pk", change.get("expert"))
    granted_by = _pk(session, "granted_by_pk", change.get("granted_by"))
    if study is None or expert is None or granted_by is None:
        return False
    created = datetime.fromisoformat(change["created_at"])
    same = [s for s in _shares(session, study, expert) if _naive(s.created_at) == _naive(created)]
    if not same:
        session.add(
            Share(
                study_pk=study,
                patient_pk=patient,
                expert_pk=expert,
                granted_by_pk=granted_by,
                created_at=created,
                expires_at=datetime.fromisoformat(change["expires_at"]),
                revoked=False,
            )
        )
    session.flush()
    return True


def _shares(session: Session, study: int, expert: int) -> list[Share]:
    return list(
        session.scalars(select(Share).where(Share.study_pk == study, Share.expert_pk == expert))
    )


def _apply_break_glass(session: Session, patient: int, change: dict[str, Any]) -> bool:
    user = _pk(session, "user_pk", change.get("user"))
    if user is None:
        return False
    created = datetime.fromisoformat(change["created_at"])
    grants = session.scalars(
        select(BreakGlass).where(BreakGlass.user_pk == user, BreakGlass.patient_pk == patient)
    )
    if not any(_naive(g.created_at) == _naive(created) for g in grants):
        session.add(
            BreakGlass(
                user_pk=user,
                patient_pk=patient,
                reason=change.get("reason", ""),
                created_at=created,
                expires_at=datetime.fromisoformat(change["expires_at"]),
            )
        )
    session.flush()
    return True


def _naive(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (UTC) and PostgreSQL aware ones: compare them alike."""
    return moment.replace(tzinfo=None)
