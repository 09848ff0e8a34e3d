"""Small catalog questions the application layer asks by name (the SQL stays in catalog/)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from medshard.catalog.models import Instance, Patient, StoredObject


def patient_id_of(session: Session, patient_pk: int) -> str | None:
    """The Patient ID of a patient row (None: erased meanwhile)."""
    return session.scalar(select(Patient.patient_id).where(Patient.id == patient_pk))


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
