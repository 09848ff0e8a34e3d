"""Patients' wrapped keys, as the audit seals events with them and a master-key rotation
re-wraps them.

Sealing runs for every audited event that names a patient (every store, every read), so
those two reads are Core statements on the session's connection, built once: loading the
ORM row (and what it eagerly joins) for every audited read cost a third of the service's
time under QIDO-RS. Unwrapping is the key provider's (:mod:`medshard.storage.keys`).
"""

from __future__ import annotations

from sqlalchemy import Connection, ScalarResult, bindparam, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Patient
from medshard.catalog.writes import PatientKeyRow, patient_key_row_by_pk

_PATIENT_ID_OF = select(Patient.patient_id).where(Patient.id == bindparam("pk"))


def key_row_of(conn: Connection, patient_pk: int) -> PatientKeyRow | None:
    """A patient's key row by row key; None when there is no such patient, or their key
    was shredded (the patient erased)."""
    row = patient_key_row_by_pk(conn, patient_pk)
    return row if row is not None and row.wrapped_key is not None else None


def patient_id_of_pk(conn: Connection, patient_pk: int) -> str | None:
    """The Patient ID of a patient row (None: no such patient), for sealing it into an
    event that names the patient by row key only."""
    return conn.scalar(_PATIENT_ID_OF, {"pk": patient_pk})


def patients_with_keys(session: Session) -> ScalarResult[Patient]:
    """Every patient row that still has a wrapped key (erased ones have none), whole: a
    rotation re-wraps each in place."""
    return session.scalars(select(Patient).where(Patient.wrapped_key.is_not(None)))
