"""Indexes for study searches at 10^6 instances: care_sites (site_id, patient_pk), series
(study_pk, modality)

Every search by a doctor or a site's PACS account is scoped to the patients cared for at the
caller's sites (``security.policy``: ``EXISTS care_sites WHERE patient_pk = ... AND site_id IN
(...)``). PostgreSQL turns that into one hashed set of the site's patients per query; without
an index led by the site it read the whole table for it (1.8 ms of a 6 ms study search at
10^6 instances, `medshard bench catalog --prefill 1000000`), and the cost grows with the
region's patients.

A search by modality keeps the studies that have a series of that modality: with the series'
modality in the index beside its study, SQLite answers that from the index alone (the
study search went from 6.3 to 2.6 ms at 10^6 instances; PostgreSQL keeps its own plan).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 08:40:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("care_sites", schema=None) as batch_op:
        batch_op.create_index("ix_care_sites_site_patient", ["site_id", "patient_pk"], unique=False)
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.create_index("ix_series_study_modality", ["study_pk", "modality"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_index("ix_series_study_modality")
    with op.batch_alter_table("care_sites", schema=None) as batch_op:
        batch_op.drop_index("ix_care_sites_site_patient")
