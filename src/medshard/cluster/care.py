"""A patient's recent care sites, most recent first: what placement puts copies near.

The care team is sites and doctors (each working at their sites), both with the time of their
last involvement with the patient (read by :mod:`medshard.catalog.care_sites`). The site
storing an object right now is the most recent involvement of all, so it leads.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from medshard.catalog.care_sites import involvement_by_site, site_names
from medshard.catalog.lookups import patient_pk_of


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
        patient_pk = patient_pk_of(session, patient_id)
    involved = involvement_by_site(session, patient_pk) if patient_pk is not None else {}
    ordered = sorted(involved, key=lambda s: _naive(involved[s]), reverse=True)
    if storing_site_id is not None:
        ordered = [storing_site_id, *[s for s in ordered if s != storing_site_id]]
    ordered = ordered[:limit]
    if not ordered:
        return []
    names = site_names(session, ordered)
    return [names[s] for s in ordered if s in names]


def _naive(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes and PostgreSQL aware ones: compare them alike."""
    return moment.replace(tzinfo=None)
