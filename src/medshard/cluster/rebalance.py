"""Background data movement: draining nodes, following a patient's care team, and
rebalancing when nodes are added or re-weighted.

Every move is *copy, verify, switch, delete*: a hash-verified copy is read, written to the
target (which refuses bytes that do not hash to the id), re-hashed there on disk, and only
then does one catalog transaction add the new replica, drop the old one and queue the old
node's DELETE (sent by :mod:`medshard.cluster.deletions`). A crash between steps leaves at
worst an extra copy (trimmed by repair) or an orphan (removed by reconciliation), never an
object with fewer copies than before. Movement is rate-limited in bytes per second so client
I/O keeps its latency.

Rebalancing (:class:`Rebalancer`) walks the catalog after the topology changes (a node added,
removed, re-weighted, drained or undrained) and moves each *hash-placed* copy that is not
where placement would put it now. A copy that serves one of the patient's care sites (it is
on a node nearest that site) is never moved to balance load: it is kept, and the rest of the
replica set is placed around it (:meth:`CareAwarePlacement.place_group`'s ``keep``). With
rendezvous hashing, adding a node moves only the copies the new node wins: its share.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from medshard.catalog.chunks import (
    chunk_exists,
    chunks_after,
    chunks_of_patient,
    chunks_on_node,
    last_chunk_pk,
)
from medshard.catalog.models import Chunk
from medshard.catalog.replicas import add_or_restore_replica, copies_on_nodes, switch_out_replica
from medshard.catalog.topology_rows import mark_drained
from medshard.cluster.archive import Archive
from medshard.cluster.care import care_sites_of
from medshard.cluster.health import NodeState
from medshard.cluster.nodes import NodeHandle, NodePool
from medshard.cluster.placement import (
    CareAwarePlacement,
    NodeView,
    chunk_key,
    group_score,
    placement_group,
)
from medshard.cluster.ratelimit import RateLimiter
from medshard.cluster.repair import healthy_replicas
from medshard.errors import InsufficientNodesError, MedshardError

log = logging.getLogger(__name__)

__all__ = [
    "MoveReport",
    "RateLimiter",
    "Rebalancer",
    "drain_step",
    "migrate_patient",
    "move_copy",
    "pending_drain",
    "rebalance_chunks",
]


@dataclass
class MoveReport:
    moved: int = 0
    bytes_moved: int = 0
    trimmed: int = 0
    drained: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


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
        if not chunk_exists(session, chunk.id):
            return False  # the object was erased meanwhile; the orphan copy is reconciled
        add_or_restore_replica(session, chunk.id, handle.pk)
        if source_pk is not None:
            switch_out_replica(session, chunk.id, chunk.chunk_id, source_pk)
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
            chunks = chunks_on_node(session, handle.pk, limit=batch)
            if not chunks:
                if mark_drained(session, handle.pk):
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
                    chunk_key(chunk.obj.object_key, chunk.idx),
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
        chunks = chunks_of_patient(session, patient_pk)
    if not care:
        return report
    nearest = placement if isinstance(placement, CareAwarePlacement) else CareAwarePlacement()
    for chunk in chunks:
        healthy = healthy_replicas(archive.store, chunk)
        holders = {h.name: h for r in healthy if (h := pool.by_pk(r.node_pk))}
        wanted: set[str] = set()
        for site in care:
            candidates = [v for v in pool.views() if v.placeable or v.name in holders]
            key = chunk_key(chunk.obj.object_key, chunk.idx)
            near = nearest.near_nodes(site, _ranked(key, candidates), pool.site_views)
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
        switch_out_replica(session, chunk_pk, chunk_id, node_pk)


def pending_drain(archive: Archive) -> int:
    """Copies still on draining nodes (the drain queue's depth)."""
    draining = [h.pk for h in archive.pool.nodes.values() if h.admin_state == "draining"]
    if not draining:
        return 0
    with archive.catalog.session() as session:
        return copies_on_nodes(session, draining)


def rebalance_chunks(
    archive: Archive,
    limiter: RateLimiter,
    *,
    after: int = 0,
    batch: int = 500,
    report: MoveReport | None = None,
    dry_run: bool = False,
) -> tuple[MoveReport, int | None]:
    """Move the misplaced hash-placed copies of up to ``batch`` chunks whose primary key is
    above ``after``. Returns the report and the last chunk key looked at (None: no chunks
    left, the pass is complete). ``dry_run``: count them in ``report.moved``, move nothing.

    A chunk is looked at only when it has exactly k copies, all on available, active nodes:
    anything else is repair's or drain's work (and a node that is merely silent for a while
    must not have its copies moved away, as repair does not either).
    """
    report = report or MoveReport()
    pool = archive.pool
    k = archive.settings.replicas
    policy = archive.store.placement
    placement = policy if isinstance(policy, CareAwarePlacement) else CareAwarePlacement()
    with archive.catalog.session() as session:
        chunks = chunks_after(session, after, limit=batch)
        if not chunks:
            return report, None
        care: dict[int, list[str]] = {}
        for chunk in chunks:
            patient_pk = chunk.obj.patient_pk
            if patient_pk not in care:
                care[patient_pk] = care_sites_of(session, patient_pk=patient_pk, limit=k)
    views = pool.views()
    for chunk in chunks:
        handles = [pool.by_pk(r.node_pk) for r in chunk.replicas if r.state == "ok"]
        held = {h.name: h for h in handles if h is not None}
        if (
            len(chunk.replicas) != k
            or len(held) != k
            or not all(h.available and h.admin_state == "active" for h in held.values())
        ):
            continue
        care_sites = care[chunk.obj.patient_pk]
        key = chunk_key(chunk.obj.object_key, chunk.idx)
        kept, unserved = care_copies(placement, key, views, held, care_sites, pool)
        # a full node, or one over the load bound, keeps its copies: the bound steers new
        # copies only, never moves old ones (moving them off would only draw them back)
        crowded = placement.over_bound(views)
        kept += [n for n, h in held.items() if (h.full or n in crowded) and n not in kept]
        try:
            desired = placement.place(
                key,
                views,
                k,
                care_sites=unserved,
                sites=pool.site_views,
                keep=kept,
            )
        except InsufficientNodesError:
            continue
        if len(desired) < k:
            continue
        sources = [name for name in held if name not in desired and name not in kept]
        targets = [name for name in desired if name not in held]
        for source, target in zip(sources, targets, strict=False):
            if dry_run:
                report.moved += 1
                report.bytes_moved += chunk.size
                continue
            limiter.take(chunk.size)
            move_copy(archive, chunk, held[source].pk, target, report)
    return report, chunks[-1].id


def care_copies(
    placement: CareAwarePlacement,
    key: str,
    views: Sequence[NodeView],
    held: dict[str, NodeHandle],
    care_sites: Sequence[str],
    pool: NodePool,
) -> tuple[list[str], list[str]]:
    """Which held copies serve a care site (one per site, on a node that counts as nearest
    it), and the care sites no held copy serves."""
    over = placement.over_bound(views, placement.care_load_bound)
    candidates = [v for v in views if (v.placeable and v.name not in over) or v.name in held]
    ranked = _ranked(key, candidates)
    kept: list[str] = []
    unserved: list[str] = []
    for site in care_sites:
        near = placement.near_nodes(site, ranked, pool.site_views)
        serving = [n.name for n in near if n.name in held and n.name not in kept]
        if serving:
            kept.append(serving[0])
        elif near:
            unserved.append(site)
    return kept, unserved


class Rebalancer:
    """Runs rebalancing passes in the background, a batch of chunks per step.

    A pass starts whenever the topology an admin controls changes (nodes added or removed,
    weights, sites, drain states) and once when the service starts; it pauses while any
    active node is unavailable but not yet dead (its copies are neither moved nor counted
    lost during the dead delay), and resumes where it stopped.
    """

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.signature: tuple[tuple[str, str, float, str, int], ...] | None = None
        self.cursor: int | None = None
        #: The newest chunk when the pass began: chunks written since were placed by the
        #: current topology already, and a pass that chased an ongoing ingest would re-place
        #: every new chunk (measured: 9% of the service's CPU under STOW-RS).
        self.until = 0
        self.passes = 0
        self.moved = 0
        self.waiting = False

    def topology(self) -> tuple[tuple[str, str, float, str, int], ...]:
        return tuple(
            sorted(
                (h.name, h.site, h.weight, h.admin_state, h.capacity_bytes)
                for h in self.archive.pool.nodes.values()
            )
        )

    def request(self) -> None:
        """Start a pass from the first chunk (an admin asked, or the topology changed)."""
        with self.archive.catalog.session() as session:
            self.until = last_chunk_pk(session)
        self.cursor = 0 if self.until else None
        if self.cursor is None:
            self.passes += 1  # nothing stored yet: nothing to move

    @property
    def active(self) -> bool:
        return self.cursor is not None

    def step(self, limiter: RateLimiter, *, batch: int = 500, max_chunks: int = 5000) -> MoveReport:
        """Look at up to ``max_chunks`` chunks, ``batch`` at a time; move what is misplaced."""
        report = MoveReport()
        now = self.topology()
        if now != self.signature:
            self.signature = now
            self.request()
        if self.cursor is None:
            return report
        silent = [
            h.name
            for h in self.archive.pool.nodes.values()
            if h.admin_state == "active" and not h.available and h.state != NodeState.DEAD
        ]
        self.waiting = bool(silent)
        if silent:
            return report
        looked = 0
        while self.cursor is not None and looked < max_chunks:
            _, last = rebalance_chunks(
                self.archive, limiter, after=self.cursor, batch=batch, report=report
            )
            looked += batch
            if last is None or last >= self.until:
                self.cursor = None
                self.passes += 1
            else:
                self.cursor = last
        self.moved += report.moved
        return report

    def run_pass(
        self, limiter: RateLimiter, *, batch: int = 500, dry_run: bool = False
    ) -> MoveReport:
        """A whole pass, here and now (``medshard node rebalance --wait``); ``dry_run``
        counts the copies that would move."""
        total = MoveReport()
        cursor: int | None = 0
        while cursor is not None:
            _, cursor = rebalance_chunks(
                self.archive, limiter, after=cursor, batch=batch, report=total, dry_run=dry_run
            )
        if not dry_run:
            self.passes += 1
            self.moved += total.moved
        return total

    def stats(self) -> dict[str, object]:
        return {
            "active": self.active,
            "waiting_for_silent_nodes": self.waiting,
            "passes": self.passes,
            "moved": self.moved,
        }
