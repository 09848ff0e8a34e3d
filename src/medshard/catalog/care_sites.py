"""A patient's care sites as the catalog records them: when each site was last involved with
the patient, and which patients' care teams gained a site.

The care team is sites (``care_sites``) and doctors (``care_team_doctors``, each working at
their ``user_sites``); both carry the time of their last involvement with the patient. How
those times rank sites for placement is :func:`medshard.cluster.care.care_sites_of`'s rule;
here is only how they are read. Each function takes the caller's session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from medshard.catalog.access_models import CareTeamDoctor, UserSite
from medshard.catalog.models import CareSite, Patient, Site


def involvement_by_site(session: Session, patient_pk: int) -> dict[int, datetime]:
    """Site pk -> the latest moment the site was involved with the patient, directly (a care
    site) or through a doctor of the patient's care team who works there."""
    involved: dict[int, datetime] = {}
    for site_id, moment in session.execute(
        select(CareSite.site_id, CareSite.last_involved_at).where(CareSite.patient_pk == patient_pk)
    ):
        involved[site_id] = max(moment, involved.get(site_id, moment))
    for site_id, moment in session.execute(
        select(UserSite.site_id, CareTeamDoctor.last_involved_at)
        .join(UserSite, UserSite.user_pk == CareTeamDoctor.user_pk)
        .where(CareTeamDoctor.patient_pk == patient_pk)
    ):
        involved[site_id] = max(moment, involved.get(site_id, moment))
    return involved


def site_names(session: Session, site_pks: Sequence[int]) -> dict[int, str]:
    """Site pk -> name, for those of ``site_pks`` that exist."""
    return dict(session.execute(select(Site.id, Site.name).where(Site.id.in_(site_pks))).all())


def care_sites_added_since(
    session: Session, moment: datetime
) -> Sequence[Row[int, datetime, datetime]]:
    """(patient pk, care site's ``since``, patient's ``created_at``) of every care-site row
    added after ``moment``: the patients whose copies may have to follow a new site."""
    return session.execute(
        select(CareSite.patient_pk, CareSite.since, Patient.created_at)
        .join(Patient, Patient.id == CareSite.patient_pk)
        .where(CareSite.since > moment)
    ).all()
