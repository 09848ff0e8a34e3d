"""What the catalog holds, counted: for `medshard status` and ``/api/status``.

Each function takes the caller's session; the status page asks them all in one session.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshard.catalog.models import Instance, Patient, StoredObject


@dataclass(frozen=True)
class StoredTotals:
    """Objects and their plaintext bytes, DICOM instances and patients in the catalog."""

    objects: int
    stored_bytes: int
    instances: int
    patients: int


def stored_totals(session: Session) -> StoredTotals:
    """How many objects (and bytes), instances and patients the catalog holds."""
    return StoredTotals(
        objects=session.scalar(select(func.count(StoredObject.id))) or 0,
        stored_bytes=session.scalar(select(func.coalesce(func.sum(StoredObject.size), 0))) or 0,
        instances=session.scalar(select(func.count(Instance.id))) or 0,
        patients=session.scalar(select(func.count(Patient.id))) or 0,
    )


def objects_per_shard(session: Session) -> dict[int, int]:
    """Shard -> objects stored in it (empty shards absent)."""
    return dict(
        session.execute(select(StoredObject.shard, func.count()).group_by(StoredObject.shard)).all()
    )
