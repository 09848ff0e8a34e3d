"""Care teams, shares with experts and break-glass: the relations authorization reads.

Each operation checks who may do it and appends its audit event in the same transaction as
the change, so the log and the relations can never disagree; the change is journaled on the
nodes before it commits (:mod:`medshard.catalog.care_journal`), so a restore of a lost
service keeps it. The rows are read and written
by :mod:`medshard.catalog.care_team`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from medshard.catalog import care_team as rows
from medshard.catalog.lookups import patient_named
from medshard.catalog.models import Patient, utcnow
from medshard.catalog.studies import has_visible_study, study_named
from medshard.errors import AccessDeniedError, InvalidInputError, NotFoundError
from medshard.security.gate import Gate
from medshard.security.identity import as_utc, get_user
from medshard.security.policy import is_doctor_of, visible_studies
from medshard.security.principal import Principal


@dataclass(frozen=True)
class CareTeam:
    patient_id: str
    sites: list[dict[str, str]]
    doctors: list[dict[str, str]]

    def as_dict(self) -> dict[str, object]:
        return {"patient_id": self.patient_id, "sites": self.sites, "doctors": self.doctors}


def _patient(session: Session, patient_id: str) -> Patient:
    patient = patient_named(session, patient_id)
    if patient is None:
        raise NotFoundError(f"no patient {patient_id!r}")
    return patient


def _may_manage(session: Session, principal: Principal, patient: Patient) -> bool:
    if principal.role in ("admin", "system"):
        return True
    return rows.in_care_team(session, is_doctor_of(principal, patient.id))


def _may_see(session: Session, principal: Principal, patient: Patient) -> bool:
    """Whoever may see one of the patient's studies (an admin only under break-glass)."""
    if principal.role == "system":
        return True
    return has_visible_study(session, patient.id, visible_studies(principal))


def show(gate: Gate, principal: Principal, patient_id: str) -> CareTeam:
    """The care team, for whoever may see the patient (404 otherwise, audited)."""
    with gate.catalog.session() as session:
        patient = _patient(session, patient_id)
        if not _may_see(session, principal, patient):
            gate.denied(principal, "careteam-show", patient_pk=patient.id, patient_id=patient_id)
            raise NotFoundError(f"no patient {patient_id!r}")
        sites = rows.care_sites_of(session, patient.id)
        doctors = rows.care_doctors_of(session, patient.id)
    gate.read(principal, "careteam-show", patient_pk=patient.id, patient_id=patient_id)
    return CareTeam(
        patient_id,
        [{"site": n, "since": _iso(s), "last_involved_at": _iso(li)} for n, s, li in sites],
        [{"username": u, "name": f, "last_involved_at": _iso(li)} for u, f, li in doctors],
    )


def _iso(value: datetime) -> str:
    return value.isoformat()


def change_doctor(
    gate: Gate, principal: Principal, patient_id: str, username: str, *, add: bool
) -> None:
    """Add or remove a doctor; by an admin or a doctor already in the care team."""
    action = "careteam-add" if add else "careteam-remove"
    with gate.archive.journaled_transaction() as session:
        patient = _patient(session, patient_id)
        if not _may_manage(session, principal, patient):
            gate.denied(principal, action, patient_pk=patient.id, patient_id=patient_id)
            raise NotFoundError(f"no patient {patient_id!r}")
        doctor = get_user(session, username)
        if doctor.role != "doctor":
            raise InvalidInputError(f"{username} is a {doctor.role}, not a doctor")
        if add:
            rows.add_care_doctor(session, patient.id, doctor.id)
        else:
            rows.remove_care_doctor(session, patient.id, doctor.id)
        gate.audit.append(
            session,
            gate.event(
                principal, action, patient_pk=patient.id, patient_id=patient_id, detail=username
            ),
        )


def share_study(
    gate: Gate, principal: Principal, study_uid: str, expert: str, days: float
) -> dict[str, str]:
    """Share a study with an expert for ``days``; only a doctor of that patient may."""
    if principal.role != "doctor":
        gate.denied(principal, "share", study_uid=study_uid)
        raise AccessDeniedError("only a doctor of the patient may share a study")
    if not 0 < days <= gate.settings.max_share_days:
        raise InvalidInputError(f"days must be between 0 and {gate.settings.max_share_days}")
    with gate.archive.journaled_transaction() as session:
        study = study_named(session, study_uid)
        allowed = study is not None and rows.in_care_team(
            session, is_doctor_of(principal, study.patient_pk)
        )
        if study is None or not allowed:
            if study is not None:
                gate.denied(principal, "share", patient_pk=study.patient_pk, study_uid=study_uid)
            raise NotFoundError(f"no study {study_uid}")
        user = get_user(session, expert)
        if user.role != "expert":
            raise InvalidInputError(f"{expert} is a {user.role}; studies are shared with experts")
        expires = utcnow() + timedelta(days=days)
        rows.add_share(
            session,
            study_pk=study.id,
            patient_pk=study.patient_pk,
            expert_pk=user.id,
            granted_by_pk=principal.user_pk,
            expires_at=expires,
        )
        gate.audit.append(
            session,
            gate.event(
                principal,
                "share",
                patient_pk=study.patient_pk,
                study_uid=study_uid,
                detail=f"with {expert} until {expires.isoformat()}",
            ),
        )
    return {"study": study_uid, "expert": expert, "expires_at": expires.isoformat()}


def shares_of(gate: Gate, principal: Principal) -> list[dict[str, object]]:
    """An expert's shares (with time left), or the shares a doctor granted."""
    now = utcnow()
    with gate.catalog.session() as session:
        shares = rows.shares_of(session, principal.user_pk, as_expert=principal.role == "expert")
    out: list[dict[str, object]] = []
    for share, uid, description, expert in shares:
        expires = as_utc(share.expires_at)
        out.append(
            {
                "study": uid,
                "description": description,
                "expert": expert,
                "expires_at": expires.isoformat(),
                "seconds_left": max(0, int((expires - now).total_seconds())),
                "active": expires > now,
            }
        )
    return out


def break_glass(gate: Gate, principal: Principal, patient_id: str, reason: str) -> dict[str, str]:
    """Emergency access to one patient for ``break_glass_minutes``; flagged in the audit."""
    if principal.role not in ("admin", "doctor"):
        gate.denied(principal, "break-glass", detail="role may not break glass")
        raise AccessDeniedError(f"a {principal.role} may not break glass")
    reason = reason.strip()
    if len(reason) < 10:
        raise InvalidInputError("break-glass needs a reason of at least 10 characters")
    with gate.archive.journaled_transaction() as session:
        patient = _patient(session, patient_id)
        expires = utcnow() + timedelta(minutes=gate.settings.break_glass_minutes)
        rows.add_break_glass(
            session,
            user_pk=principal.user_pk,
            patient_pk=patient.id,
            reason=reason[:1024],
            expires_at=expires,
        )
        gate.audit.append(
            session,
            gate.event(
                principal,
                "break-glass",
                patient_pk=patient.id,
                patient_id=patient_id,
                detail=reason[:1024],
                flagged=True,
            ),
        )
    return {"patient_id": patient_id, "expires_at": expires.isoformat()}
