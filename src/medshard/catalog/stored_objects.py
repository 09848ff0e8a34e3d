"""Stored objects as the read path finds them: by object key, or by the SOP Instance UID
whose bytes they hold.

Reads only; each takes the caller's session.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload, selectinload

from medshard.catalog.models import Chunk, Instance, Replica, StoredObject


def object_with_replicas(session: Session, object_key: str) -> StoredObject | None:
    """The object with this key, its chunks and their replicas loaded (None: no such object).

    Chunks and replicas come in two more statements, not one per chunk; nothing else is
    loaded, not even the replicas' nodes: readers rank replicas by node pk through the
    node pool, and a read of a small object is a few milliseconds all told.
    """
    return session.scalar(
        select(StoredObject)
        .where(StoredObject.object_key == object_key)
        .options(
            lazyload("*"),
            selectinload(StoredObject.chunks).selectinload(Chunk.replicas).lazyload(Replica.node),
        )
    )


def object_key_of_instance(session: Session, sop_instance_uid: str) -> str | None:
    """The key of the object holding a DICOM instance's bytes (None: never stored)."""
    return session.scalar(
        select(StoredObject.object_key)
        .join(Instance, Instance.object_pk == StoredObject.id)
        .where(Instance.sop_instance_uid == sop_instance_uid)
    )
