"""Replica rows: which node holds a copy of which chunk, and in what state.

A replica row is written only for a real, durable copy (``ok``); readers, the scrubber and
reconciliation mark a copy ``corrupt`` or ``missing`` when they find it so, and repair, drain,
migration and rebalancing add, restore and drop rows as they copy. These are the statements
they run, by what each answers or changes. Each function takes the caller's session and
leaves the transaction to it: a move adds the new copy and drops the old one in one commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from sqlalchemy import Result, Row, delete, func, select, update
from sqlalchemy.orm import Session

from medshard.catalog.deletion_queue import queue_chunk_delete
from medshard.catalog.models import Chunk, Replica

#: Chunk ids per SQL IN-list (keeps each statement well under every backend's limits).
IN_BATCH: Final = 500


# -- what is held where -----------------------------------------------------------------


def replicas_of_chunk(session: Session, chunk_pk: int) -> Sequence[Replica]:
    """Every replica row of one chunk, whatever its state: what repair sees after a fetch
    (states may have changed while it read the copy)."""
    return session.scalars(select(Replica).where(Replica.chunk_pk == chunk_pk)).all()


def ok_replica_nodes(session: Session) -> Result[int, int]:
    """(chunk pk, node pk) of every copy in state ``ok``, streamed: counting the copies of
    every chunk against the nodes' health without loading rows."""
    return session.execute(select(Replica.chunk_pk, Replica.node_pk).where(Replica.state == "ok"))


def replica_ids_on_node(session: Session, node_pk: int) -> dict[str, int]:
    """Chunk id -> replica pk of every copy the catalog names on one node."""
    return dict(
        session.execute(
            select(Chunk.chunk_id, Replica.id)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .where(Replica.node_pk == node_pk)
        ).all()
    )


def replicas_of_chunk_ids(
    session: Session, chunk_ids: Sequence[str]
) -> list[Row[str, int, int | None, str | None]]:
    """(chunk id, chunk pk, node pk, state) per copy of each known chunk among ``chunk_ids``;
    a known chunk with no copy at all answers one row with node pk and state None. Asked in
    IN-lists of :data:`IN_BATCH` ids; ids the catalog does not know answer nothing."""
    rows: list[Row[str, int, int | None, str | None]] = []
    for start in range(0, len(chunk_ids), IN_BATCH):
        rows.extend(
            session.execute(
                select(Chunk.chunk_id, Chunk.id, Replica.node_pk, Replica.state)
                .outerjoin(Replica, Replica.chunk_pk == Chunk.id)
                .where(Chunk.chunk_id.in_(chunk_ids[start : start + IN_BATCH]))
            ).all()
        )
    return rows


def ok_replicas_after(
    session: Session, after: int, limit: int
) -> Sequence[Row[int, int, str, int]]:
    """The next ``limit`` copies in state ``ok`` by replica pk above ``after``, as
    (replica pk, node pk, chunk id, chunk size): the scrubber's walk."""
    return session.execute(
        select(Replica.id, Replica.node_pk, Chunk.chunk_id, Chunk.size)
        .join(Chunk, Chunk.id == Replica.chunk_pk)
        .where(Replica.id > after, Replica.state == "ok")
        .order_by(Replica.id)
        .limit(limit)
    ).all()


# -- counts -------------------------------------------------------------------------------


def replica_counts_per_node(session: Session, *, state: str | None = None) -> dict[int, int]:
    """Copies per node pk (only those in ``state`` when given); nodes holding none absent."""
    query = select(Replica.node_pk, func.count())
    if state is not None:
        query = query.where(Replica.state == state)
    return dict(session.execute(query.group_by(Replica.node_pk)).all())


def bad_replica_count(session: Session) -> int:
    """Copies found corrupt or missing and not yet replaced: repair's queue."""
    return int(session.scalar(select(func.count()).where(Replica.state != "ok")) or 0)


def copies_on_nodes(session: Session, node_pks: Iterable[int]) -> int:
    """Copies, in any state, the catalog names on these nodes."""
    return int(session.scalar(select(func.count()).where(Replica.node_pk.in_(node_pks))) or 0)


# -- changes ------------------------------------------------------------------------------


def set_replica_state(session: Session, replica_pk: int, state: str) -> None:
    """Set one copy's state (a row removed meanwhile is left alone)."""
    replica = session.get(Replica, replica_pk)
    if replica is not None:
        replica.state = state


def mark_replicas(session: Session, replica_pks: Sequence[int], state: str) -> None:
    """Set the state of these copies in one statement (e.g. ``missing``: the node no longer
    holds them, so the catalog stops counting them and repair restores them)."""
    session.execute(update(Replica).where(Replica.id.in_(replica_pks)).values(state=state))


def add_or_restore_replica(session: Session, chunk_pk: int, node_pk: int) -> None:
    """Record a verified copy of a chunk on a node: a new ``ok`` row, or the node's existing
    row (a copy once marked bad, now rewritten) back to ``ok``; never two rows for one copy."""
    existing = session.scalar(
        select(Replica).where(Replica.chunk_pk == chunk_pk, Replica.node_pk == node_pk)
    )
    if existing is None:
        session.add(Replica(chunk_pk=chunk_pk, node_pk=node_pk, state="ok"))
    else:
        existing.state = "ok"


def switch_out_replica(session: Session, chunk_pk: int, chunk_id: str, node_pk: int) -> None:
    """Drop a node's copy of a chunk from the catalog and queue its DELETE on the node: the
    switch step of copy, verify, switch, delete (the bytes go only after the commit)."""
    session.execute(delete(Replica).where(Replica.chunk_pk == chunk_pk, Replica.node_pk == node_pk))
    queue_chunk_delete(session, chunk_id, node_pk)


def delete_replica(session: Session, replica_pk: int) -> None:
    """Forget one copy whose bytes were deleted already (a trimmed extra)."""
    row = session.get(Replica, replica_pk)
    if row is not None:
        session.delete(row)
