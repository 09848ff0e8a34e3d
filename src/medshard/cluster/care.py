"""A patient's recent care sites, most recent first: what placement puts copies near.

The care team is sites (``care_sites``) and doctors (``care_team_doctors``, each working at
their ``user_sites``); both carry the time of their last involvement with the patient. The
site storing an object right now is the most recent involvement of all, so it leads.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from medshard.catalog.access_models import CareTeamDoctor, UserSite
from medshard.catalog.models import CareSite, Patient, Site


def care_sites_of(
    session: Session,
    *,
    patient_pk: int | None = None,
    patient_id: str | None = None,
    storing_site_id: int | None = None,
    limit: int = 3,
) -> list[str]:
    """Site names, most recently involved first, at most ``limit`` (k: one copy per site)."""
    if patient_pk is None and patient_id is not None:
        patient_pk = session.scalar(select(Patient.id).where(Patient.patient_id == patient_id))
    involved: dict[int, datetime] = {}
    if patient_pk is not None:
        for site_id, moment in session.execute(
            select(CareSite.site_id, CareSite.last_involved_at).where(
                CareSite.patient_pk == patient_pk
            )
        ):
            involved[site_id] = max(moment, involved.get(site_id, moment))
        for site_id, moment in session.execute(
            select(UserSite.site_id, CareTeamDoctor.last_involved_at)
            .join(UserSite, UserSite.user_pk == CareTeamDoctor.user_pk)
            .where(CareTeamDoctor.patient_pk == patient_pk)
        ):
            involved[site_id] = max(moment, involved.get(site_id, moment))
    ordered = sorted(involved, key=lambda s: _naive(involved[s]), reverse=True)
    if storing_site_id is not None:
        ordered = [storing_site_id, *[s for s in ordered if s != storing_site_id]]
    ordered = ordered[:limit]
    if not ordered:
        return []
    names = dict(session.execute(select(Site.id, Site.name).where(Site.id.in_(ordered))).all())
    return [names[s] for s in ordered if s in names]


def _naive(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes and PostgreSQL aware ones: compare them alike."""
    return moment.replace(tzinfo=None)
