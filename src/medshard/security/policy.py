"""Who may see which patient: the authorization rules, as SQL the catalog can run.

One function, :func:`visible_studies`, states the whole read policy as a condition on
``studies``; every list (QIDO-RS, C-FIND, findings, worklists) and every single-object
lookup (WADO-RS, C-MOVE/C-GET, exports) is filtered by it in the database, so a study the
caller may not see answers exactly as one that does not exist. The rules:

* patient: their own record (``users.patient_id``);
* doctor: patients whose care team names them, or one of the sites they work at;
* expert: studies shared with them, until the share expires or is revoked;
* service account: studies its site sent (an instance with ``source_site_id`` = its site);
* admin: no clinical data, except a patient under an unexpired break-glass;
* a doctor may also break glass for a patient outside their care team;
* system (the archive's own workers): everything; never reachable from the network.

Writes: service accounts and doctors store; nobody else does (:func:`may_store`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, DateTime, and_, bindparam, exists, false, or_, select, true
from sqlalchemy.orm import aliased

from medshard.catalog.access_models import BreakGlass, CareTeamDoctor, Share
from medshard.catalog.models import CareSite, Instance, Patient, Series, Study, utcnow
from medshard.catalog.search import Scope
from medshard.errors import AccessDeniedError
from medshard.security.context import Caller
from medshard.security.principal import Principal

STORE_ROLES = frozenset({"service", "doctor", "system"})
#: Aliases for the service-account rule, made once: building one costs milliseconds.
_SERIES = aliased(Series, name="visible_series")
_INSTANCE = aliased(Instance, name="visible_instance")
CLINICAL_ROLES = frozenset({"doctor", "expert", "patient", "service", "admin", "system"})


#: Expiries (break glass, shares) are compared with the time a statement runs, not the time
#: its condition was built: a condition then depends on the caller alone, and is built once
#: per caller (building it was ~0.4 ms of a 3 ms QIDO-RS search).
_NOW = bindparam("policy_now", callable_=utcnow, type_=DateTime(timezone=True))


def _break_glass(role: str, user_pk: int | None, now: Any) -> ColumnElement[bool]:
    if role not in ("admin", "doctor") or user_pk is None:
        return false()
    return exists().where(
        BreakGlass.user_pk == user_pk,
        BreakGlass.patient_pk == Study.patient_pk,
        BreakGlass.expires_at > now,
    )


def visible_studies(principal: Principal, now: datetime | None = None) -> ColumnElement[bool]:
    """The condition on ``Study`` rows this caller may read (as of ``now``; by default, as of
    whenever the statement runs)."""
    key = (principal.role, principal.user_pk, principal.sites, principal.patient_id)
    return _visible(*key) if now is None else _condition(*key, now)


@functools.lru_cache(maxsize=4096)
def _visible(
    role: str, user_pk: int | None, sites: frozenset[int], patient_id: str | None
) -> ColumnElement[bool]:
    return _condition(role, user_pk, sites, patient_id, _NOW)


def _condition(
    role: str, user_pk: int | None, sites: frozenset[int], patient_id: str | None, now: Any
) -> ColumnElement[bool]:
    if role == "system":
        return true()
    if role == "patient":
        if not patient_id:
            return false()
        return Study.patient_pk.in_(select(Patient.id).where(Patient.patient_id == patient_id))
    if role == "doctor":
        by_doctor = exists().where(
            CareTeamDoctor.patient_pk == Study.patient_pk,
            CareTeamDoctor.user_pk == user_pk,
        )
        clauses: list[ColumnElement[bool]] = [by_doctor, _break_glass(role, user_pk, now)]
        if sites:
            clauses.append(
                exists().where(
                    CareSite.patient_pk == Study.patient_pk,
                    CareSite.site_id.in_(sorted(sites)),
                )
            )
        return or_(*clauses)
    if role == "expert":
        return exists().where(
            Share.study_pk == Study.id,
            Share.expert_pk == user_pk,
            Share.expires_at > now,
            Share.revoked.is_(False),
        )
    if role == "service":
        if not sites:
            return false()
        series, instance = _SERIES, _INSTANCE  # the outer query may use both tables
        return exists(
            select(instance.id)
            .join(series, instance.series_pk == series.id)
            .where(
                series.study_pk == Study.id,
                instance.source_site_id.in_(sorted(sites)),
            )
        )
    if role == "admin":
        return _break_glass(role, user_pk, now)
    return false()


def visible_patients(principal: Principal, now: datetime | None = None) -> ColumnElement[bool]:
    """The condition on ``Patient`` rows: patients with at least one visible study."""
    if principal.role == "system":
        return true()
    return Patient.id.in_(select(Study.patient_pk).where(visible_studies(principal, now)))


def may_store(principal: Principal) -> None:
    """Raise unless this caller may store clinical data at all."""
    if principal.role not in STORE_ROLES:
        raise AccessDeniedError(f"a {principal.role} may not store clinical data")
    if principal.role in ("service", "doctor") and not principal.sites:
        raise AccessDeniedError(f"{principal.username} has no site to store for")


def is_doctor_of(principal: Principal, patient_pk: int) -> ColumnElement[bool]:
    """Condition: the caller is a doctor in this patient's care team (by name or site)."""
    if principal.role != "doctor":
        return false()
    clauses: list[ColumnElement[bool]] = [
        exists().where(
            CareTeamDoctor.patient_pk == patient_pk,
            CareTeamDoctor.user_pk == principal.user_pk,
        )
    ]
    if principal.sites:
        clauses.append(
            exists().where(
                CareSite.patient_pk == patient_pk, CareSite.site_id.in_(sorted(principal.sites))
            )
        )
    return and_(true(), or_(*clauses))


def scope_of(principal: Principal) -> Scope:
    """The caller's visibility as the catalog search applies it.

    The patient condition is built on the same study condition object (building the
    expressions is most of a small search's CPU: a profile showed half of it twice).
    """
    return _scope(principal.role, principal.user_pk, principal.sites, principal.patient_id)


@functools.lru_cache(maxsize=4096)
def _scope(role: str, user_pk: int | None, sites: frozenset[int], patient_id: str | None) -> Scope:
    studies = _visible(role, user_pk, sites, patient_id)
    if role == "system":
        return Scope(studies, true())
    return Scope(studies, Patient.id.in_(select(Study.patient_pk).where(studies)))


def audit_results(
    caller: Caller, action: str, rows: Iterable[Mapping[str, Any]], *, detail: str = ""
) -> None:
    """Audit a search: one event per patient whose data the caller was shown (or one
    event without a patient when nothing matched)."""
    seen: dict[int, str | None] = {}
    for row in rows:
        pk = row.get("_patient_pk")
        if pk is not None and pk not in seen and len(seen) < 200:
            seen[pk] = row.get("StudyInstanceUID")
    if not seen:
        caller.gate.read(caller.principal, action, detail=f"{detail}: no match")
    for pk, study in seen.items():
        caller.gate.read(caller.principal, action, patient_pk=pk, study_uid=study, detail=detail)
