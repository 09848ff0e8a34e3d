"""Repair: bring every chunk back to k healthy replicas on available nodes.

A replica is healthy when its state is ``ok`` and its node is available. Repair walks the
catalog shard by shard (the unit of rebalancing), and for each chunk with fewer than k
healthy copies reads one verified copy and writes it to nodes the placement policy picks
among those not holding it. A corrupt copy is deleted from its node first and rewritten, so
the bad bytes are replaced, not merely outvoted. Copies beyond k (a node came back after its
data was re-replicated) are trimmed.

The service's automatic repair (``dead_only``) waits out the dead delay before it counts a
silent node's copies as lost, so that a reboot costs no copying, with one exception: a chunk
with a single reachable copy left is at risk of loss, so its silent copies stop counting at
once and it is repaired first, before any chunk that still has two (HDFS's
under-replication priorities). Only chunks shared by two silent nodes qualify, a few per
node pair, so this costs no repair storm. Automatic repair copies through the same byte-rate
limiter as the other background work; an operator's explicit ``medshard repair`` runs
unlimited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medshard.catalog.chunks import chunk_objects, chunks_of_shard, chunks_sharing_nodes
from medshard.catalog.models import Chunk, Replica
from medshard.catalog.replicas import (
    add_or_restore_replica,
    delete_replica,
    ok_replica_nodes,
    replicas_of_chunk,
    set_replica_state,
)
from medshard.cluster.health import NodeState
from medshard.cluster.nodes import NodeHandle
from medshard.cluster.objects import ObjectStore
from medshard.cluster.placement import chunk_key
from medshard.cluster.ratelimit import RateLimiter
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
    #: The shard a time-bounded repair stopped before (None: it went through every shard).
    resume_shard: int | None = None

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


#: With this many reachable copies left (and at least two of k missing), a chunk's copies
#: on silent (not yet dead) nodes stop counting: it is one failure from loss, so it is
#: repaired without waiting out the dead delay.
AT_RISK_COPIES = 1


def at_risk(reachable: int, counted: int, k: int) -> bool:
    """Whether a chunk with ``reachable`` copies on available nodes, and ``counted`` once
    silent nodes' copies are included, must be repaired now despite the dead delay: it has
    a copy to repair from, at most :data:`AT_RISK_COPIES` of them, two or more of k are
    gone, and some silent copy is still being counted."""
    return 0 < reachable <= AT_RISK_COPIES and k - reachable >= 2 and reachable < counted


def healthy_replicas(store: ObjectStore, chunk: Chunk, *, dead_only: bool = False) -> list[Replica]:
    result = []
    reachable = 0
    for replica in chunk.replicas:
        handle = store.pool.by_pk(replica.node_pk)
        if replica.state == "ok" and copy_counts(handle, dead_only):
            result.append(replica)
            reachable += handle is not None and handle.available
    if dead_only and at_risk(reachable, len(result), store.settings.replicas):
        return healthy_replicas(store, chunk, dead_only=False)
    # copies on draining nodes go last, so trimming removes those first
    result.sort(key=lambda r: _draining(store, r))
    return result


def _draining(store: ObjectStore, replica: Replica) -> bool:
    handle = store.pool.by_pk(replica.node_pk)
    return handle is None or handle.admin_state != "active"


def under_replicated_objects(store: ObjectStore, *, dead_only: bool = False) -> int:
    """Objects with at least one chunk below k healthy replicas (nodes as last probed)."""
    k = store.settings.replicas
    counted = {h.pk for h in store.pool.nodes.values() if copy_counts(h, dead_only)}
    reachable = {h.pk for h in store.pool.nodes.values() if h.available}
    counts: dict[int, int] = {}
    live: dict[int, int] = {}
    object_of: dict[int, int] = {}
    with store.catalog.session() as session:
        for chunk_pk, object_pk in chunk_objects(session):
            object_of[chunk_pk] = object_pk
            counts.setdefault(chunk_pk, 0)
        for chunk_pk, node_pk in ok_replica_nodes(session):
            if node_pk in counted:
                counts[chunk_pk] = counts.get(chunk_pk, 0) + 1
            if node_pk in reachable:
                live[chunk_pk] = live.get(chunk_pk, 0) + 1

    def short(chunk_pk: int, n: int) -> bool:
        if n < k:
            return True
        return dead_only and at_risk(live.get(chunk_pk, 0), n, k)

    return len({object_of[c] for c, n in counts.items() if short(c, n) and c in object_of})


def repair(
    store: ObjectStore,
    progress: Callable[[int, int], None] | None = None,
    *,
    dead_only: bool = False,
    limiter: RateLimiter | None = None,
    deadline: float | None = None,
    start_shard: int = 0,
    at_risk_first: bool = False,
) -> RepairReport:
    """Repair every shard; ``progress(done_shards, total_shards)`` is called as it goes.

    ``dead_only``: copies on nodes that are unreachable but not yet dead still count (the
    service's automatic repair); without it every unavailable node's copies are replaced (an
    operator's explicit ``medshard repair``). ``limiter``: bytes copied are taken from it
    (the service's background budget); None copies as fast as the nodes allow.

    The service's monitor repairs in slices: from ``start_shard`` until ``deadline`` (a
    :func:`time.monotonic` value), reporting where it stopped in ``resume_shard``; with
    ``at_risk_first`` it first restores, regardless of the deadline, the chunks down to
    their last copies (a second node just went silent: :func:`repair_at_risk`).
    """
    report = RepairReport()
    shards = store.settings.shards
    if at_risk_first:
        repair_at_risk(store, report, dead_only=dead_only, limiter=limiter)
    for shard in range(start_shard, shards):
        if deadline is not None and time.monotonic() > deadline:
            report.resume_shard = shard
            return report
        repair_shard(store, shard, report, dead_only=dead_only, limiter=limiter)
        if progress:
            progress(shard + 1, shards)
    return report


def repair_at_risk(
    store: ObjectStore,
    report: RepairReport,
    *,
    dead_only: bool = False,
    limiter: RateLimiter | None = None,
) -> None:
    """Restore the chunks down to their last copies, found by one indexed query: those
    with two or more copies on unavailable nodes (seconds, not a walk of the catalog)."""
    k = store.settings.replicas
    gone = [h.pk for h in store.pool.nodes.values() if not h.available]
    if len(gone) < 2 or k - AT_RISK_COPIES < 2:
        return
    with store.catalog.session() as session:
        chunks = chunks_sharing_nodes(session, gone, copies=2)
    for chunk in chunks:
        if len(healthy_replicas(store, chunk, dead_only=dead_only)) > AT_RISK_COPIES:
            continue
        try:
            _restore(store, chunk, k, report, dead_only=dead_only, limiter=limiter)
        except MedshardError as exc:
            report.failures.append(f"chunk {chunk.chunk_id[:16]}: {exc}")


def repair_shard(
    store: ObjectStore,
    shard: int,
    report: RepairReport,
    *,
    dead_only: bool = False,
    limiter: RateLimiter | None = None,
) -> None:
    """Repair one shard: trim extras, then restore the chunks with the fewest copies first."""
    k = store.settings.replicas
    with store.catalog.session() as session:
        chunks = chunks_of_shard(session, shard)
    short: list[tuple[int, Chunk]] = []
    for chunk in chunks:
        report.chunks_checked += 1
        healthy = healthy_replicas(store, chunk, dead_only=dead_only)
        if len(healthy) > k:
            _trim(store, chunk, healthy[k:], report)
        elif len(healthy) < k:
            short.append((len(healthy), chunk))
    short.sort(key=lambda item: item[0])  # the fewest copies left first
    for _count, chunk in short:
        try:
            _restore(store, chunk, k, report, dead_only=dead_only, limiter=limiter)
        except MedshardError as exc:
            report.failures.append(f"chunk {chunk.chunk_id[:16]}: {exc}")


def _restore(
    store: ObjectStore,
    chunk: Chunk,
    k: int,
    report: RepairReport,
    *,
    dead_only: bool = False,
    limiter: RateLimiter | None = None,
) -> None:
    data = store.fetch_verified(chunk)
    pool = store.pool
    with store.catalog.session() as session:  # states may have changed during the fetch
        replicas = replicas_of_chunk(session, chunk.id)
    healthy_nodes: set[str] = set()
    holders: set[str] = set()
    bad: list[tuple[Replica, str]] = []
    reachable = 0
    for replica in replicas:
        handle = pool.by_pk(replica.node_pk)
        if handle is None:
            continue
        holders.add(handle.name)
        if replica.state == "ok" and copy_counts(handle, dead_only):
            healthy_nodes.add(handle.name)
            reachable += handle.available
        elif handle.available:
            bad.append((replica, handle.name))
    if dead_only and at_risk(reachable, len(healthy_nodes), k):  # silent copies don't count
        healthy_nodes = {n for n in healthy_nodes if pool.get(n).available}
    made = 0
    for replica, name in bad:  # rewrite corrupt/missing copies in place first
        if len(healthy_nodes) >= k:
            break
        client = pool.get(name).client
        if limiter is not None:
            limiter.take(len(data))
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
            chunk_key(chunk.obj.object_key, chunk.idx),
            pool.views(),
            need,
            exclude=holders | healthy_nodes,
            sites=pool.site_views,
        )
        for name in targets:
            if limiter is not None:
                limiter.take(len(data))
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
            delete_replica(session, replica.id)
        report.extras_removed += 1


def _set_state(store: ObjectStore, replica_pk: int, state: str) -> None:
    with store.catalog.transaction() as session:
        set_replica_state(session, replica_pk, state)


def _add_replica(store: ObjectStore, chunk_pk: int, node_pk: int) -> None:
    with store.catalog.transaction() as session:
        add_or_restore_replica(session, chunk_pk, node_pk)
