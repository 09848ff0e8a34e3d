"""Background loop of the metadata service: heartbeats, and the self-healing built on them.

Every ``heartbeat_interval_s`` the monitor has each node measure its RTT to one random peer,
probes all nodes (state, usage, RTT, Vivaldi coordinates, reliability, all saved in the
catalog), then, each bounded in time or bytes:

- **reconcile** a node that came back (and nodes with orphan candidates past their grace);
- **repair** when a node was declared dead or a copy was found bad, and at a slow steady pace:
  only copies on *dead* nodes count as lost, so a node that reboots within ``dead_after_s``
  costs no copying (no repair storm on a short blip);
- **scrub** a slice of the stored copies (``scrub_bytes_per_s``);
- **drain** nodes an admin is draining, **migrate** patients whose care team gained a
  site, and **rebalance** hash-placed copies after nodes are added or re-weighted
  (:class:`~medshard.cluster.rebalance.Rebalancer`), all copy-verify-switch-delete;
- repair, drain, migration and rebalancing share one byte budget,
  ``rebalance_bytes_per_s`` (repair first: lost redundancy before balance);
- send queued chunk DELETEs;
- report the nodes' own volume compaction (:mod:`medshard.cluster.compaction`): volumes
  waiting as the queue ``compaction``, volumes compacted and bytes reclaimed as work done;
- **back up** the catalog, settings and master key to the nodes, encrypted, every
  ``backup_interval_s`` and soon after a node joins, leaves or changes availability
  (:mod:`medshard.cluster.metadata_backup`; the backup runs on its own thread).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from medshard import metrics
from medshard.catalog.care_sites import care_sites_added_since
from medshard.catalog.replicas import bad_replica_count
from medshard.cluster.archive import Archive
from medshard.cluster.compaction import CompactionTotals, compaction_summary
from medshard.cluster.deletions import drain_deletions
from medshard.cluster.health import NodeState
from medshard.cluster.metadata_backup import BackupScheduler
from medshard.cluster.rebalance import (
    RateLimiter,
    Rebalancer,
    drain_step,
    migrate_patient,
    pending_drain,
)
from medshard.cluster.reconcile import Reconciler
from medshard.cluster.repair import RepairReport, repair, under_replicated_objects
from medshard.cluster.scrub import Scrubber

log = logging.getLogger(__name__)


#: A patient's care-site row this close to the patient's own creation came with its first
#: store (the same transaction). A second site storing the same new patient within it would
#: not pull the first copies over; the window is kept far below human timescales for that.
FOUNDING_WINDOW = timedelta(seconds=0.2)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class HealthMonitor:
    def __init__(
        self,
        archive: Archive,
        interval_s: float | None = None,
        repair_every_s: float = 30.0,
    ) -> None:
        self.archive = archive
        self.interval_s = interval_s or archive.settings.heartbeat_interval_s
        self.repair_every_s = repair_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
        self.last_repair: float = 0.0
        #: Where the running repair pass stopped (None: none running); each tick repairs for
        #: at most ``repair_slice_s`` so heartbeats, and a second failure, are seen in time.
        self.repair_cursor: int | None = None
        self.repair_slice_s = max(2.0, 2 * self.interval_s)
        self._silent: frozenset[str] = frozenset()
        self.reconciler = Reconciler(archive)
        self.scrubber = Scrubber(archive)
        self.backups = BackupScheduler(archive)
        self.limiter = RateLimiter(archive.settings.rebalance_bytes_per_s)
        self.rebalancer = Rebalancer(archive)
        self._care_cursor = datetime.now(UTC)
        self._exported: dict[str, int] = {}  # totals already added to /metrics
        self.totals: dict[str, int] = {
            "repair_runs": 0,
            "copies_made": 0,
            "corrupt_replaced": 0,
            "extras_removed": 0,
            "reconciled": 0,
            "orphans_removed": 0,
            "adopted": 0,
            "moved": 0,
            "migrated_patients": 0,
            "rebalanced": 0,
            "volumes_compacted": 0,
            "bytes_reclaimed": 0,
        }
        self._compaction = CompactionTotals()
        archive.monitor = self

    def start(self) -> HealthMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        # A daemon thread: never hold up shutdown for long. A backup cut short is harmless:
        # its manifest is written last, so restore never sees a half-written one.
        self.backups.wait(timeout=1)

    def tick(self) -> None:
        pool = self.archive.pool
        before = {n: (h.state, h.reachable) for n, h in pool.nodes.items()}
        pool.measure_peers()  # node-to-node RTTs; saved with the probe's results below
        nodes = pool.probe()
        self._compaction.add_to(self.totals, nodes.values())
        died = changed = False
        for name, handle in nodes.items():
            metrics.NODE_STATE.labels(name, handle.site).set(1 if handle.available else 0)
            was = before.get(name)
            if was != (handle.state, handle.reachable):
                log.warning("node %s is now %s", name, handle.state.value)
                died |= handle.state == NodeState.DEAD
                changed = True  # a second silent node may leave chunks with one copy
                if handle.available and was is not None and not was[1]:
                    self._reconcile(name)
        self.backups.step()  # after the probe: it picks live nodes and follows their changes
        for name in self.reconciler.pending_nodes():
            if name in nodes and nodes[name].available:
                self._reconcile(name)
        bad = self._bad_copies()
        if self.archive.settings.scrub_bytes_per_s > 0:
            bad += self.scrubber.step(self.interval_s)
        silent = frozenset(n for n, h in nodes.items() if not h.available)
        at_risk = bool(silent - self._silent) and len(silent) >= 2
        self._silent = silent
        due = time.monotonic() - self.last_repair > self.repair_every_s
        if self.repair_cursor is not None and not at_risk:
            self._repair(self.repair_cursor)  # the pass in progress goes on
        elif died or bad or due or changed:
            self.last_repair = time.monotonic()
            if bad or under_replicated_objects(self.archive.store, dead_only=True):
                self._repair(0, at_risk_first=at_risk)
        self._move()
        drain_deletions(self.archive)
        self._export()

    def _export(self) -> None:
        """Queue depths and work done to /metrics (Prometheus takes the rates from the
        counters), as `medshard status` shows them."""
        for queue, depth in self.queues().items():
            metrics.BACKGROUND_QUEUE.labels(queue).set(depth)
        for kind, total in self.totals.items():
            done = total - self._exported.get(kind, 0)
            if done > 0:
                metrics.BACKGROUND_WORK.labels(kind).inc(done)
                self._exported[kind] = total

    def _reconcile(self, name: str) -> None:
        report = self.reconciler.run(self.archive.pool.get(name))
        self.totals["reconciled"] += 1
        self.totals["orphans_removed"] += report.removed
        self.totals["adopted"] += report.adopted

    def _bad_copies(self) -> int:
        with self.archive.catalog.session() as session:
            return bad_replica_count(session)

    def _repair(self, start_shard: int, *, at_risk_first: bool = False) -> RepairReport:
        report = repair(
            self.archive.store,
            dead_only=True,
            limiter=self.limiter,
            deadline=time.monotonic() + self.repair_slice_s,
            start_shard=start_shard,
            at_risk_first=at_risk_first,
        )
        self.repair_cursor = report.resume_shard
        self.totals["repair_runs"] += report.resume_shard is None
        self.totals["copies_made"] += report.copies_made
        self.totals["corrupt_replaced"] += report.corrupt_replaced
        self.totals["extras_removed"] += report.extras_removed
        if report.copies_made or report.extras_removed or report.corrupt_replaced:
            log.warning(
                "auto-repair: %d copies made, %d corrupt replaced, %d extras removed",
                report.copies_made,
                report.corrupt_replaced,
                report.extras_removed,
            )
        for failure in report.failures[:5]:
            log.warning("auto-repair could not fix %s", failure)
        return report

    def _move(self) -> None:
        """Drain, follow care-team changes, then rebalance, within the shared byte budget."""
        moved = drain_step(self.archive, self.limiter)
        self.totals["moved"] += moved.moved
        for failure in moved.failures[:3]:
            log.warning("drain: %s", failure)
        with self.archive.catalog.session() as session:
            changed = care_sites_added_since(session, self._care_cursor)
        to_migrate: set[int] = set()
        for patient_pk, since, created in changed:
            moment, born = _aware(since), _aware(created)
            self._care_cursor = max(self._care_cursor, moment)
            # A care site that came with the patient's first store holds its copies already
            # (they were placed there); migrating would only re-check every new patient
            # during an ingest (measured: 8% of the service's CPU under STOW-RS).
            if moment - born > FOUNDING_WINDOW:
                to_migrate.add(patient_pk)
        for patient_pk in sorted(to_migrate):
            report = migrate_patient(self.archive, patient_pk, self.limiter)
            self.totals["moved"] += report.moved
            self.totals["migrated_patients"] += 1
        balanced = self.rebalancer.step(self.limiter)
        self.totals["moved"] += balanced.moved
        self.totals["rebalanced"] += balanced.moved
        for failure in balanced.failures[:3]:
            log.warning("rebalance: %s", failure)

    def queues(self) -> dict[str, int]:
        return {
            "drain_copies": pending_drain(self.archive),
            "orphan_candidates": len(self.reconciler.first_seen),
            "compaction": compaction_summary(self.archive.pool.nodes.values())["pending_volumes"],
        }

    def stats(self) -> dict[str, Any]:
        """Queue depths and totals, for `medshard status` and /api/status."""
        return {
            "totals": dict(self.totals),
            "queues": self.queues(),
            "rebalance": self.rebalancer.stats(),
            "scrub": vars(self.scrubber.stats).copy(),
            "backup": self.backups.stats(),
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the loop must survive a bad tick; the error is logged
                log.exception("health monitor tick failed")
