"""Who may read and write a patient's documents and sensor series, as SQL conditions.

The same people as for images (:mod:`medshard.security.policy`), stated per patient rather
than per study, because a record need not belong to any study:

* patient: their own record;
* doctor: patients whose care team names them or one of their sites, or under break-glass;
* service account: records its own site stored (as it sees only the studies its site sent);
* admin: nobody, except under an unexpired break-glass;
* expert: nothing (shares are of one study, for a consult, not of the whole record);
* system: everything.

Reaching a patient at all (for lists, and for writing to an existing patient) is the
patient-level form: for a service account, its site in the care team. Anything else answers
as "no such patient" (404), and the refusal is audited as denied.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, exists, false, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute, Session

from medshard.catalog import care_team
from medshard.catalog.access_models import BreakGlass, CareTeamDoctor
from medshard.catalog.lookups import patient_meets, patient_pk_of
from medshard.catalog.models import CareSite, Patient, utcnow
from medshard.errors import AccessDeniedError, NotFoundError
from medshard.security.gate import Gate
from medshard.security.policy import may_store
from medshard.security.principal import Principal

PatientCol = InstrumentedAttribute[int]
SiteCol = InstrumentedAttribute[int | None]


def _break_glass(
    principal: Principal, patient: ColumnElement[int] | PatientCol, now: datetime
) -> ColumnElement[bool]:
    if principal.role not in ("admin", "doctor") or principal.user_pk is None:
        return false()
    return exists().where(
        BreakGlass.user_pk == principal.user_pk,
        BreakGlass.patient_pk == patient,
        BreakGlass.expires_at > now,
    )


def in_reach(principal: Principal, patient: ColumnElement[int] | PatientCol) -> ColumnElement[bool]:
    """Condition: the caller may reach this patient's record (``patient`` is a pk column)."""
    now = utcnow()
    role = principal.role
    if role == "system":
        return true()
    if role == "patient":
        if not principal.patient_id:
            return false()
        own = select(Patient.id).where(Patient.patient_id == principal.patient_id)
        return patient.in_(own.scalar_subquery())
    clauses: list[ColumnElement[bool]] = [_break_glass(principal, patient, now)]
    if role == "doctor" and principal.user_pk is not None:
        clauses.append(
            exists().where(
                CareTeamDoctor.patient_pk == patient, CareTeamDoctor.user_pk == principal.user_pk
            )
        )
    if role in ("doctor", "service") and principal.sites:
        clauses.append(
            exists().where(
                CareSite.patient_pk == patient, CareSite.site_id.in_(sorted(principal.sites))
            )
        )
    return or_(*clauses)


def visible(principal: Principal, patient: PatientCol, site: SiteCol) -> ColumnElement[bool]:
    """Condition on a record row (a document, a batch, a segment) the caller may read."""
    if principal.role == "service":
        if not principal.sites:
            return false()
        return site.in_(sorted(principal.sites))
    return in_reach(principal, patient)


def reach_patient(gate: Gate, principal: Principal, patient_id: str, action: str) -> int:
    """The pk of a patient the caller may reach; 404 (audited as denied) otherwise."""
    with gate.catalog.session() as session:
        pk = patient_pk_of(session, patient_id)
        allowed = pk is not None and patient_meets(session, pk, in_reach(principal, Patient.id))
    if pk is None or not allowed:
        if pk is not None:
            gate.denied(principal, action, patient_pk=pk, patient_id=patient_id)
        raise NotFoundError(f"no patient {patient_id!r}")
    return pk


def check_store(gate: Gate, principal: Principal, patient_id: str, action: str) -> int | None:
    """Refuse a write the caller may not make; the storing site to attribute it to.

    A write to an existing patient needs that patient in reach (a doctor outside the care
    team gets 404, audited); a new patient is created by the write, as with images, and the
    writer joins the care team.
    """
    try:
        may_store(principal)
    except AccessDeniedError as exc:
        gate.denied(principal, action, detail=str(exc))
        raise
    with gate.catalog.session() as session:
        pk = patient_pk_of(session, patient_id)
    if pk is not None:
        reach_patient(gate, principal, patient_id, action)
    return principal.home_site


def involve(session: Session, principal: Principal, patient_pk: int) -> None:
    """In the write's transaction: the writer's site (and a writing doctor) join the care
    team, as a store of images does, so the writer keeps reaching what they wrote."""
    site = principal.home_site
    if site is not None:
        care_team.involve(session, CareSite, patient_pk=patient_pk, site_id=site)
    if principal.role == "doctor" and principal.user_pk is not None:
        care_team.involve(session, CareTeamDoctor, patient_pk=patient_pk, user_pk=principal.user_pk)
