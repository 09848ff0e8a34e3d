"""Small catalog questions the application layer asks by name (the SQL stays in catalog/).

Each takes the caller's session and neither commits nor rolls back: the caller owns the
transaction. Where the answer depends on who asks, the caller passes the security layer's
condition (``visible``), so the catalog applies a policy without knowing it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Instance, Patient, StoredObject, Study


def patient_id_of(session: Session, patient_pk: int) -> str | None:
    """The Patient ID of a patient row (None: erased meanwhile)."""
    return session.scalar(select(Patient.patient_id).where(Patient.id == patient_pk))


def patient_pk_of(session: Session, patient_id: str) -> int | None:
    """The row key of a patient by Patient ID (None: no such patient), whoever may see it."""
    return session.scalar(select(Patient.id).where(Patient.patient_id == patient_id))


def patient_named(session: Session, patient_id: str) -> Patient | None:
    """The patient row with this Patient ID, whole (its wrapped key included)."""
    return session.scalar(select(Patient).where(Patient.patient_id == patient_id))


def patient_meets(session: Session, patient_pk: int, condition: ColumnElement[bool]) -> bool:
    """Whether ``condition`` (a policy on ``Patient.id``) holds for one patient row."""
    return bool(session.scalar(select(condition).where(Patient.id == patient_pk)))


def study_pk_of(session: Session, study_uid: str) -> int | None:
    """The row key of a study by Study Instance UID (None: unknown), whoever may see it."""
    return session.scalar(select(Study.id).where(Study.study_instance_uid == study_uid))


def visible_study_patients(
    session: Session, study_uids: Sequence[str], visible: ColumnElement[bool]
) -> list[tuple[str, int]]:
    """(Study Instance UID, patient pk) of those of ``study_uids`` that ``visible`` admits:
    what a caller may be shown, and whom to audit it against."""
    rows = session.execute(
        select(Study.study_instance_uid, Study.patient_pk).where(
            Study.study_instance_uid.in_(study_uids), visible
        )
    ).all()
    return [(uid, pk) for uid, pk in rows]


def instance_pk_of(session: Session, sop_uid: str) -> int | None:
    """The row key of an instance by SOP Instance UID (deleted ones included): whether it
    was ever stored."""
    return session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_uid))


def thumbnail_key_of(session: Session, instance_pk: int) -> str | None:
    """The object key of an instance's stored thumbnail, if one was made."""
    return session.scalar(
        select(StoredObject.object_key)
        .join(Instance, Instance.thumbnail_object_pk == StoredObject.id)
        .where(Instance.id == instance_pk)
    )


def object_key_of(session: Session, object_pk: int) -> str | None:
    """The key under which an object's chunks are sealed and read."""
    return session.scalar(select(StoredObject.object_key).where(StoredObject.id == object_pk))
