"""The queue of chunk copies to delete from nodes (``chunk_deletions``): add, read, settle.

A copy leaves the catalog first (an erasure, a move, a trimmed extra) and its DELETE is
queued in the same transaction; :func:`medshard.cluster.deletions.drain_deletions` sends them
later, so that no transaction waits on a node and a node that is down gets its DELETEs when it
answers again. Each function takes the caller's session and leaves the transaction to it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, delete, select, update
from sqlalchemy.orm import Session

from medshard.catalog.access_models import ChunkDeletion

#: Queued rows counted at most when the queue's depth is asked (a bounded read).
PENDING_COUNT_CAP = 100_000


def queue_chunk_delete(session: Session, chunk_id: str, node_pk: int) -> None:
    """Queue the DELETE of one copy; sent once the caller's transaction commits."""
    session.add(ChunkDeletion(chunk_id=chunk_id, node_pk=node_pk))


def queued_deletions(session: Session, limit: int) -> Sequence[Row[int, str, int]]:
    """The oldest ``limit`` queued DELETEs: (queue row pk, chunk id, node pk)."""
    return session.execute(
        select(ChunkDeletion.id, ChunkDeletion.chunk_id, ChunkDeletion.node_pk)
        .order_by(ChunkDeletion.id)
        .limit(limit)
    ).all()


def settle_deletions(session: Session, done: Sequence[int], failed: Sequence[int]) -> None:
    """Drop the queue rows of DELETEs that are done; count one more attempt on those that
    failed (they stay queued for the node's return)."""
    if done:
        session.execute(delete(ChunkDeletion).where(ChunkDeletion.id.in_(done)))
    if failed:
        session.execute(
            update(ChunkDeletion)
            .where(ChunkDeletion.id.in_(failed))
            .values(attempts=ChunkDeletion.attempts + 1)
        )


def pending_deletions(session: Session) -> int:
    """The queue's depth, counted up to :data:`PENDING_COUNT_CAP`."""
    return len(session.execute(select(ChunkDeletion.id).limit(PENDING_COUNT_CAP)).all())


def chunk_ids_queued_for(session: Session, node_pk: int) -> set[str]:
    """Chunk ids whose copy on this node is queued for deletion: reconciling the node must
    neither adopt nor count them."""
    return set(
        session.scalars(select(ChunkDeletion.chunk_id).where(ChunkDeletion.node_pk == node_pk))
    )
