"""Background data movement: draining nodes and following a patient's care team.

Every move is *copy, verify, switch, delete*: a hash-verified copy is read, written to the
target (which refuses bytes that do not hash to the id), re-hashed there on disk, and only
then does one catalog transaction add the new replica, drop the old one and queue the old
node's DELETE (sent by :mod:`medshard.cluster.deletions`). A crash between steps leaves at
worst an extra copy (trimmed by repair) or an orphan (removed by reconciliation), never an
object with fewer copies than before. Movement is rate-limited in bytes per second so client
I/O keeps its latency.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select
from sqlalchemy.orm import selectinload

from medshard.catalog.access_models import ChunkDeletion
from medshard.catalog.models import Chunk, Node, Replica, StoredObject
from medshard.cluster.archive import Archive
from medshard.cluster.care import care_sites_of
from medshard.cluster.placement import CareAwarePlacement, NodeView, group_score, placement_group
from medshard.cluster.repair import healthy_replicas
from medshard.errors import InsufficientNodesError, MedshardError

log = logging.getLogger(__name__)


@dataclass
class MoveReport:
    moved: int = 0
    bytes_moved: int = 0
    trimmed: int = 0
    drained: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class RateLimiter:
    """A token bucket in bytes: ``take(n)`` sleeps as long as ``n`` bytes must wait."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = float(bytes_per_s)
        self.allowance = self.rate
        self.stamp = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.stamp) * self.rate)
        self.stamp = now
        self.allowance -= n
        if self.allowance < 0:
            time.sleep(-self.allowance / self.rate)


def move_copy(
    archive: Archive, chunk: Chunk, source_pk: int | None, target: str, report: MoveReport
) -> bool:
    """Copy ``chunk`` to ``target``, verify it there, then switch the catalog from the
    ``source_pk`` replica (None: just add a copy) and queue the source's DELETE."""
    pool = archive.pool
    try:
        data = archive.store.fetch_verified(chunk)
        handle = pool.get(target)
        handle.client.put(chunk.chunk_id, data)
        handle.client.verify(chunk.chunk_id)
    except MedshardError as exc:
        report.failures.append(f"copy of {chunk.chunk_id[:12]} to {target}: {exc}")
        return False
    with archive.catalog.transaction() as session:
        if session.scalar(select(Chunk.id).where(Chunk.id == chunk.id)) is None:
            return False  # the object was erased meanwhile; the orphan copy is reconciled
        exists = session.scalar(
            select(Replica).where(Replica.chunk_pk == chunk.id, Replica.node_pk == handle.pk)
        )
        if exists is None:
            session.add(Replica(chunk_pk=chunk.id, node_pk=handle.pk, state="ok"))
        else:
            exists.state = "ok"
        if source_pk is not None:
            session.execute(
                delete(Replica).where(Replica.chunk_pk == chunk.id, Replica.node_pk == source_pk)
            )
            session.add(ChunkDeletion(chunk_id=chunk.chunk_id, node_pk=source_pk))
    report.moved += 1
    report.bytes_moved += len(data)
    return True


def drain_step(archive: Archive, limiter: RateLimiter, *, batch: int = 200) -> MoveReport:
    """Move up to ``batch`` copies off draining nodes; mark a node drained once empty."""
    report = MoveReport()
    pool = archive.pool
    placement = archive.store.placement
    for handle in list(pool.nodes.values()):
        if handle.admin_state != "draining":
            continue
        with archive.catalog.session() as session:
            chunks = session.scalars(
                select(Chunk)
                .join(Replica, Replica.chunk_pk == Chunk.id)
                .where(Replica.node_pk == handle.pk)
                .options(selectinload(Chunk.replicas), selectinload(Chunk.obj))
                .limit(batch)
            ).all()
            if not chunks:
                node = session.get(Node, handle.pk)
                if node is not None and node.admin_state == "draining":
                    node.admin_state = "drained"
                    session.commit()
                handle.admin_state = "drained"
                report.drained.append(handle.name)
                continue
            care = {
                c.id: care_sites_of(
                    session, patient_pk=c.obj.patient_pk, limit=archive.settings.replicas
                )
                for c in chunks
            }
        for chunk in chunks:
            holders = {h.name for r in chunk.replicas if (h := pool.by_pk(r.node_pk))}
            try:
                targets = placement.place(
                    chunk.chunk_id,
                    pool.views(),
                    1,
                    exclude=holders,
                    care_sites=care[chunk.id],
                    sites=pool.site_views,
                )
            except InsufficientNodesError as exc:
                report.failures.append(f"drain {handle.name}: {exc}")
                return report
            if not targets:
                report.failures.append(f"drain {handle.name}: no node to move to")
                return report
            limiter.take(chunk.size)
            move_copy(archive, chunk, handle.pk, targets[0], report)
    return report


def migrate_patient(archive: Archive, patient_pk: int, limiter: RateLimiter) -> MoveReport:
    """Bring a patient's copies to their current care sites: for each care site without a
    nearby copy, copy to its nearest node; then trim copies beyond k that serve no care site."""
    report = MoveReport()
    pool = archive.pool
    placement = archive.store.placement
    k = archive.settings.replicas
    with archive.catalog.session() as session:
        care = care_sites_of(session, patient_pk=patient_pk, limit=k)
        chunks = session.scalars(
            select(Chunk)
            .join(StoredObject, StoredObject.id == Chunk.object_pk)
            .where(StoredObject.patient_pk == patient_pk)
            .options(selectinload(Chunk.replicas))
        ).all()
    if not care:
        return report
    nearest = placement if isinstance(placement, CareAwarePlacement) else CareAwarePlacement()
    for chunk in chunks:
        healthy = healthy_replicas(archive.store, chunk)
        holders = {h.name: h for r in healthy if (h := pool.by_pk(r.node_pk))}
        wanted: set[str] = set()
        for site in care:
            candidates = [v for v in pool.views() if v.placeable or v.name in holders]
            near = nearest.near_nodes(site, _ranked(chunk.chunk_id, candidates), pool.site_views)
            held = [n.name for n in near if n.name in holders]
            if held:
                wanted.add(held[0])
                continue
            if not near:
                continue
            best = near[0]
            limiter.take(chunk.size)
            if move_copy(archive, chunk, None, best.name, report):
                holders[best.name] = pool.get(best.name)
                wanted.add(best.name)
        extras = [name for name in holders if name not in wanted]
        while len(holders) > k and extras:
            name = extras.pop()
            _drop_copy(archive, chunk.id, chunk.chunk_id, holders.pop(name).pk)
            report.trimmed += 1
    return report


def _ranked(key: str, views: list[NodeView]) -> list[NodeView]:
    group = placement_group(key)
    return sorted(views, key=lambda n: group_score(group, n), reverse=True)


def _drop_copy(archive: Archive, chunk_pk: int, chunk_id: str, node_pk: int) -> None:
    """Switch a copy out of the catalog, then queue its DELETE on the node."""
    with archive.catalog.transaction() as session:
        session.execute(
            delete(Replica).where(Replica.chunk_pk == chunk_pk, Replica.node_pk == node_pk)
        )
        session.add(ChunkDeletion(chunk_id=chunk_id, node_pk=node_pk))


def pending_drain(archive: Archive) -> int:
    """Copies still on draining nodes (the drain queue's depth)."""
    draining = [h.pk for h in archive.pool.nodes.values() if h.admin_state == "draining"]
    if not draining:
        return 0
    with archive.catalog.session() as session:
        return int(session.scalar(select(func.count()).where(Replica.node_pk.in_(draining))) or 0)
