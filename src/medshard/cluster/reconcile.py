"""Reconciling a node with the catalog: what it holds versus what the catalog says it holds.

Run when a node comes back (and again while it has pending candidates). For every copy:

- named in the catalog for this node and present: kept;
- named in the catalog but absent from the node: the replica is marked ``missing`` at once, so
  the catalog never counts a copy the node no longer holds (repair then restores it);
- present but named nowhere for this node: if its chunk is short of k healthy copies, it is
  re-hashed on the node and adopted; otherwise it is stale (over-replicated) or an *orphan*
  (no catalog row names the chunk at all, e.g. left by a write that failed while the node was
  cut off) and is deleted, but only once it has stayed unnamed for ``orphan_grace_s``, so a
  write still on its way to the commit is never mistaken for an orphan.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from medshard.catalog.deletion_queue import chunk_ids_queued_for
from medshard.catalog.replicas import (
    add_or_restore_replica,
    mark_replicas,
    replica_ids_on_node,
    replicas_of_chunk_ids,
)
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import NodeHandle
from medshard.cluster.repair import copy_counts
from medshard.errors import MedshardError

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    node: str
    listed: int = 0
    kept: int = 0
    marked_missing: int = 0
    adopted: int = 0
    removed: int = 0
    waiting: int = 0


class Reconciler:
    """Remembers when each unnamed copy was first seen, across runs."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.first_seen: dict[tuple[str, str], float] = {}

    def pending_nodes(self) -> set[str]:
        """Nodes with unnamed copies whose grace period has run out."""
        due = time.monotonic() - self.archive.settings.orphan_grace_s
        return {node for (node, _c), seen in self.first_seen.items() if seen <= due}

    def run(self, handle: NodeHandle) -> ReconcileReport:
        report = ReconcileReport(handle.name)
        try:
            on_node = set(handle.client.list_ids())
        except MedshardError as exc:
            log.info("reconcile of %s deferred: %s", handle.name, exc)
            return report
        report.listed = len(on_node)
        catalog = self.archive.catalog
        with catalog.session() as session:
            named = replica_ids_on_node(session, handle.pk)
            queued = chunk_ids_queued_for(session, handle.pk)
        gone = [rid for cid, rid in named.items() if cid not in on_node]
        if gone:
            with catalog.transaction() as session:
                mark_replicas(session, gone, "missing")
            report.marked_missing = len(gone)
        report.kept = len(on_node) - len(set(on_node) - set(named))
        unnamed = sorted(on_node - set(named) - queued)
        known = self._healthy_counts(unnamed)
        now = time.monotonic()
        still: set[str] = set()
        k = self.archive.settings.replicas
        for cid in unnamed:
            chunk_pk, healthy = known.get(cid, (None, 0))
            if chunk_pk is not None and healthy < k and self._adopt(handle, chunk_pk, cid):
                report.adopted += 1
                continue
            still.add(cid)
            seen = self.first_seen.setdefault((handle.name, cid), now)
            if now - seen < self.archive.settings.orphan_grace_s:
                report.waiting += 1
                continue
            try:
                handle.client.delete(cid)
            except MedshardError:
                continue
            self.first_seen.pop((handle.name, cid), None)
            report.removed += 1
        for key in [
            key for key in self.first_seen if key[0] == handle.name and key[1] not in still
        ]:
            del self.first_seen[key]  # named meanwhile (a write committed), or deleted
        if report.marked_missing or report.adopted or report.removed:
            log.warning("reconciled %s: %s", handle.name, report)
        return report

    def _healthy_counts(self, chunk_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
        """chunk id -> (chunk pk, healthy copies) for the ids the catalog knows."""
        result: dict[str, tuple[int, int]] = {}
        pool = self.archive.pool
        with self.archive.catalog.session() as session:
            rows = replicas_of_chunk_ids(session, list(chunk_ids))
        for cid, chunk_pk, node_pk, state in rows:
            _pk, healthy = result.get(cid, (chunk_pk, 0))
            held = pool.by_pk(node_pk) if node_pk is not None else None  # None: no copy at all
            if state == "ok" and copy_counts(held, dead_only=True):
                healthy += 1
            result[cid] = (chunk_pk, healthy)
        return result

    def _adopt(self, handle: NodeHandle, chunk_pk: int, chunk_id: str) -> bool:
        """Re-hash the copy on the node and, if intact, record it as a replica."""
        try:
            handle.client.verify(chunk_id)
        except MedshardError:
            return False
        with self.archive.catalog.transaction() as session:
            add_or_restore_replica(session, chunk_pk, handle.pk)
        return True
