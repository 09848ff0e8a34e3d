"""Patients' wrapped keys, as the audit seals events with them and a master-key rotation
re-wraps them.

Sealing runs for every audited event that names a patient (every store, every read), so
the key row (with the Patient ID) is read by one Core statement on the session's connection,
built once: loading the ORM row (and what it eagerly joins) for every audited read cost a
third of the service's time under QIDO-RS. Unwrapping is the key provider's
(:mod:`medshard.storage.keys`).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, ScalarResult, bindparam, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Patient
from medshard.catalog.writes import PATIENT_KEY_COLUMNS, PatientKeyRow, patient_key_row_by_pk

_KEY_ROWS_OF = select(*PATIENT_KEY_COLUMNS).where(
    Patient.id.in_(bindparam("pks", expanding=True)), Patient.wrapped_key.is_not(None)
)


def key_row_of(conn: Connection, patient_pk: int) -> PatientKeyRow | None:
    """A patient's key row by row key; None when there is no such patient, or their key
    was shredded (the patient erased)."""
    row = patient_key_row_by_pk(conn, patient_pk)
    return row if row is not None and row.wrapped_key is not None else None


def key_rows_of(conn: Connection, patient_pks: Iterable[int]) -> dict[int, PatientKeyRow]:
    """The key rows of several patients in one query (erased ones left out): the audit
    writer seals a batch of events naming up to hundreds of patients."""
    pks = sorted(set(patient_pks))
    if not pks:
        return {}
    return {row[0]: PatientKeyRow(*row) for row in conn.execute(_KEY_ROWS_OF, {"pks": pks})}


def patients_with_keys(session: Session) -> ScalarResult[Patient]:
    """Every patient row that still has a wrapped key (erased ones have none), whole: a
    rotation re-wraps each in place."""
    return session.scalars(select(Patient).where(Patient.wrapped_key.is_not(None)))
