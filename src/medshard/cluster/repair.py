"""Repair: bring every chunk back to k healthy replicas on available nodes.

A replica is healthy when its state is ``ok`` and its node is available. Repair walks the
catalog shard by shard (the unit of rebalancing), and for each chunk with fewer than k
healthy copies reads one verified copy and writes it to nodes the placement policy picks
among those not holding it. A corrupt copy is deleted from its node first and rewritten, so
the bad bytes are replaced, not merely outvoted. Copies beyond k (a node came back after its
data was re-replicated) are trimmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from medshard.catalog.models import Chunk, Replica, StoredObject
from medshard.cluster.health import NodeState
from medshard.cluster.nodes import NodeHandle
from medshard.cluster.objects import ObjectStore
from medshard.errors import InsufficientNodesError, MedshardError

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    chunks_checked: int = 0
    chunks_repaired: int = 0
    copies_made: int = 0
    corrupt_replaced: int = 0
    extras_removed: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def copy_counts(handle: NodeHandle | None, dead_only: bool) -> bool:
    """Whether a copy on this node counts as present: on an available node, or (``dead_only``,
    the service's automatic repair) on any node not yet declared dead, so that a node that is
    merely silent for a while costs no copying."""
    if handle is None:
        return False
    if dead_only:
        return handle.state != NodeState.DEAD
    return handle.available


def healthy_replicas(store: ObjectStore, chunk: Chunk, *, dead_only: bool = False) -> list[Replica]:
    result = []
    for replica in chunk.replicas:
        handle = store.pool.by_pk(replica.node_pk)
        if replica.state == "ok" and copy_counts(handle, dead_only):
            result.append(replica)
    # copies on draining nodes go last, so trimming removes those first
    result.sort(key=lambda r: _draining(store, r))
    return result


def _draining(store: ObjectStore, replica: Replica) -> bool:
    handle = store.pool.by_pk(replica.node_pk)
    return handle is None or handle.admin_state != "active"


def under_replicated_objects(store: ObjectStore, *, dead_only: bool = False) -> int:
    """Objects with at least one chunk below k healthy replicas (nodes as last probed)."""
    k = store.settings.replicas
    available = {h.pk for h in store.pool.nodes.values() if copy_counts(h, dead_only)}
    counts: dict[int, int] = {}
    object_of: dict[int, int] = {}
    with store.catalog.session() as session:
        for chunk_pk, object_pk in session.execute(select(Chunk.id, Chunk.object_pk)):
            object_of[chunk_pk] = object_pk
            counts.setdefault(chunk_pk, 0)
        for chunk_pk, node_pk in session.execute(
            select(Replica.chunk_pk, Replica.node_pk).where(Replica.state == "ok")
        ):
            if node_pk in available:
                counts[chunk_pk] = counts.get(chunk_pk, 0) + 1
    return len({object_of[c] for c, n in counts.items() if n < k and c in object_of})


def repair(
    store: ObjectStore,
    progress: Callable[[int, int], None] | None = None,
    *,
    dead_only: bool = False,
) -> RepairReport:
    """Repair every shard; ``progress(done_shards, total_shards)`` is called as it goes.

    ``dead_only``: copies on nodes that are unreachable but not yet dead still count (the
    service's automatic repair); without it every unavailable node's copies are replaced (an
    operator's explicit ``medshard repair``).
    """
    report = RepairReport()
    shards = store.settings.shards
    for shard in range(shards):
        repair_shard(store, shard, report, dead_only=dead_only)
        if progress:
            progress(shard + 1, shards)
    return report


def repair_shard(
    store: ObjectStore, shard: int, report: RepairReport, *, dead_only: bool = False
) -> None:
    k = store.settings.replicas
    with store.catalog.session() as session:
        chunks = session.scalars(
            select(Chunk)
            .join(StoredObject)
            .where(StoredObject.shard == shard)
            .options(selectinload(Chunk.replicas))
        ).all()
    for chunk in chunks:
        report.chunks_checked += 1
        healthy = healthy_replicas(store, chunk, dead_only=dead_only)
        if len(healthy) > k:
            _trim(store, chunk, healthy[k:], report)
        elif len(healthy) < k:
            try:
                _restore(store, chunk, k, report, dead_only=dead_only)
            except MedshardError as exc:
                report.failures.append(f"chunk {chunk.chunk_id[:16]}: {exc}")


def _restore(
    store: ObjectStore, chunk: Chunk, k: int, report: RepairReport, *, dead_only: bool = False
) -> None:
    data = store.fetch_verified(chunk)
    pool = store.pool
    with store.catalog.session() as session:  # states may have changed during the fetch
        replicas = session.scalars(select(Replica).where(Replica.chunk_pk == chunk.id)).all()
    healthy_nodes: set[str] = set()
    holders: set[str] = set()
    bad: list[tuple[Replica, str]] = []
    for replica in replicas:
        handle = pool.by_pk(replica.node_pk)
        if handle is None:
            continue
        holders.add(handle.name)
        if replica.state == "ok" and copy_counts(handle, dead_only):
            healthy_nodes.add(handle.name)
        elif handle.available:
            bad.append((replica, handle.name))
    made = 0
    for replica, name in bad:  # rewrite corrupt/missing copies in place first
        if len(healthy_nodes) >= k:
            break
        client = pool.get(name).client
        try:
            if client.exists(chunk.chunk_id):
                client.delete(chunk.chunk_id)
            client.put(chunk.chunk_id, data)
        except MedshardError as exc:
            pool.mark_failed(name)
            report.failures.append(f"rewrite on {name}: {exc}")
            continue
        _set_state(store, replica.id, "ok")
        healthy_nodes.add(name)
        report.corrupt_replaced += 1
        made += 1
    need = k - len(healthy_nodes)
    if need > 0:
        targets = store.placement.place(
            chunk.chunk_id,
            pool.views(),
            need,
            exclude=holders | healthy_nodes,
            sites=pool.site_views,
        )
        for name in targets:
            try:
                pool.get(name).client.put(chunk.chunk_id, data)
            except MedshardError as exc:
                pool.mark_failed(name)
                report.failures.append(f"copy to {name}: {exc}")
                continue
            _add_replica(store, chunk.id, pool.get(name).pk)
            healthy_nodes.add(name)
            made += 1
    report.copies_made += made
    if made:
        report.chunks_repaired += 1
    if len(healthy_nodes) < k:
        raise InsufficientNodesError(
            f"only {len(healthy_nodes)} of {k} replicas possible: too few live nodes "
            "(start more nodes, or lower `replicas`)"
        )


def _trim(store: ObjectStore, chunk: Chunk, extras: list[Replica], report: RepairReport) -> None:
    for replica in extras:
        handle = store.pool.by_pk(replica.node_pk)
        if handle is None:
            continue
        try:
            handle.client.delete(chunk.chunk_id)
        except MedshardError:
            continue
        with store.catalog.transaction() as session:
            row = session.get(Replica, replica.id)
            if row is not None:
                session.delete(row)
        report.extras_removed += 1


def _set_state(store: ObjectStore, replica_pk: int, state: str) -> None:
    with store.catalog.transaction() as session:
        row = session.get(Replica, replica_pk)
        if row is not None:
            row.state = state


def _add_replica(store: ObjectStore, chunk_pk: int, node_pk: int) -> None:
    with store.catalog.transaction() as session:
        existing = session.scalar(
            select(Replica).where(Replica.chunk_pk == chunk_pk, Replica.node_pk == node_pk)
        )
        if existing is None:
            session.add(Replica(chunk_pk=chunk_pk, node_pk=node_pk, state="ok"))
        else:
            existing.state = "ok"
