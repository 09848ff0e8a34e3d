"""Chunks that repair, drain, migration and rebalancing look at, each loaded with its
replicas and its object (the object key places a chunk; its patient names the care sites).

Every query loads ``Chunk.replicas`` and ``Chunk.obj`` in one more statement each for the
whole batch (``selectinload``), never one per chunk, so the rows can be used after the
session closes: the background loops read a batch, close the session, then copy bytes for
minutes. Each function takes the caller's session and neither commits nor rolls back.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Result, func, select
from sqlalchemy.orm import Session, selectinload

from medshard.catalog.models import Chunk, Replica, StoredObject

#: Every chunk query's loading: its replicas and its object, batched.
_WITH_COPIES = (selectinload(Chunk.replicas), selectinload(Chunk.obj))


def chunks_of_shard(session: Session, shard: int) -> Sequence[Chunk]:
    """Every chunk of the objects in one shard: repair's unit of work."""
    return session.scalars(
        select(Chunk).join(StoredObject).where(StoredObject.shard == shard).options(*_WITH_COPIES)
    ).all()


def chunks_sharing_nodes(session: Session, node_pks: Sequence[int], copies: int) -> Sequence[Chunk]:
    """Chunks with at least ``copies`` copies on the nodes ``node_pks`` (one indexed query):
    with those nodes silent, what may be down to its last copy."""
    sharing = (
        select(Replica.chunk_pk)
        .where(Replica.node_pk.in_(node_pks))
        .group_by(Replica.chunk_pk)
        .having(func.count() >= copies)
    )
    return session.scalars(select(Chunk).where(Chunk.id.in_(sharing)).options(*_WITH_COPIES)).all()


def chunks_on_node(session: Session, node_pk: int, limit: int) -> Sequence[Chunk]:
    """Up to ``limit`` chunks with a copy on the node: the next batch to drain off it."""
    return session.scalars(
        select(Chunk)
        .join(Replica, Replica.chunk_pk == Chunk.id)
        .where(Replica.node_pk == node_pk)
        .options(*_WITH_COPIES)
        .limit(limit)
    ).all()


def chunks_of_patient(session: Session, patient_pk: int) -> Sequence[Chunk]:
    """Every chunk of a patient's objects: what follows the patient's care team."""
    return session.scalars(
        select(Chunk)
        .join(StoredObject, StoredObject.id == Chunk.object_pk)
        .where(StoredObject.patient_pk == patient_pk)
        .options(*_WITH_COPIES)
    ).all()


def chunks_after(session: Session, after: int, limit: int) -> Sequence[Chunk]:
    """The next ``limit`` chunks by primary key above ``after``: a rebalancing pass's batch."""
    return session.scalars(
        select(Chunk).where(Chunk.id > after).order_by(Chunk.id).options(*_WITH_COPIES).limit(limit)
    ).all()


def last_chunk_pk(session: Session) -> int:
    """The newest chunk's primary key (0: nothing stored): where a pass may stop, since
    chunks written later were placed by the current topology already."""
    return int(session.scalar(select(func.max(Chunk.id))) or 0)


def chunk_exists(session: Session, chunk_pk: int) -> bool:
    """Whether the chunk is still catalogued (its object may have been erased meanwhile)."""
    return session.scalar(select(Chunk.id).where(Chunk.id == chunk_pk)) is not None


def chunk_objects(session: Session) -> Result[int, int]:
    """(chunk pk, object pk) of every chunk, streamed: which object each chunk belongs to."""
    return session.execute(select(Chunk.id, Chunk.object_pk))
