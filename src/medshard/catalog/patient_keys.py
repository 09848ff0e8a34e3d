"""Patients' wrapped keys, as the audit seals events with them and a master-key rotation
re-wraps them.

Sealing runs for every audited event that names a patient (every store, every read), so
the key row (with the Patient ID) is read by one Core statement on the session's connection,
built once: loading the ORM row (and what it eagerly joins) for every audited read cost a
third of the service's time under QIDO-RS. Unwrapping is the key provider's
(:mod:`medshard.storage.keys`).
"""

from __future__ import annotations

from sqlalchemy import Connection, ScalarResult, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Patient
from medshard.catalog.writes import PatientKeyRow, patient_key_row_by_pk


def key_row_of(conn: Connection, patient_pk: int) -> PatientKeyRow | None:
    """A patient's key row by row key; None when there is no such patient, or their key
    was shredded (the patient erased)."""
    row = patient_key_row_by_pk(conn, patient_pk)
    return row if row is not None and row.wrapped_key is not None else None


def patients_with_keys(session: Session) -> ScalarResult[Patient]:
    """Every patient row that still has a wrapped key (erased ones have none), whole: a
    rotation re-wraps each in place."""
    return session.scalars(select(Patient).where(Patient.wrapped_key.is_not(None)))
