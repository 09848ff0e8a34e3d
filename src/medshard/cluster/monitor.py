"""Background loop of the metadata service: heartbeats, and the self-healing built on them.

Every ``heartbeat_interval_s`` the monitor has each node measure its RTT to one random peer,
probes all nodes (state, usage, RTT, Vivaldi coordinates, reliability, all saved in the
catalog), then, each bounded in time or bytes:

- **reconcile** a node that came back (and nodes with orphan candidates past their grace);
- **repair** when a node was declared dead or a copy was found bad, and at a slow steady pace:
  only copies on *dead* nodes count as lost, so a node that reboots within ``dead_after_s``
  costs no copying (no repair storm on a short blip);
- **scrub** a slice of the stored copies (``scrub_bytes_per_s``);
- **drain** nodes an admin is draining, and **migrate** patients whose care team gained a
  site, both copy-verify-switch-delete at ``rebalance_bytes_per_s``;
- send queued chunk DELETEs;
- **back up** the catalog, settings and master key to the nodes, encrypted, every
  ``backup_interval_s`` and soon after a node joins, leaves or changes availability
  (:mod:`medshard.cluster.metadata_backup`; the backup runs on its own thread).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from medshard import metrics
from medshard.catalog.models import CareSite, Replica
from medshard.cluster.archive import Archive
from medshard.cluster.deletions import drain_deletions
from medshard.cluster.health import NodeState
from medshard.cluster.metadata_backup import BackupScheduler
from medshard.cluster.rebalance import RateLimiter, drain_step, migrate_patient, pending_drain
from medshard.cluster.reconcile import Reconciler
from medshard.cluster.repair import RepairReport, repair, under_replicated_objects
from medshard.cluster.scrub import Scrubber

log = logging.getLogger(__name__)


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
        self.reconciler = Reconciler(archive)
        self.scrubber = Scrubber(archive)
        self.backups = BackupScheduler(archive)
        self.limiter = RateLimiter(archive.settings.rebalance_bytes_per_s)
        self._care_cursor = datetime.now(UTC)
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
        }
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
        died = False
        for name, handle in nodes.items():
            metrics.NODE_STATE.labels(name, handle.site).set(1 if handle.available else 0)
            was = before.get(name)
            if was != (handle.state, handle.reachable):
                log.warning("node %s is now %s", name, handle.state.value)
                died |= handle.state == NodeState.DEAD
                if handle.available and was is not None and not was[1]:
                    self._reconcile(name)
        self.backups.step()  # after the probe: it picks live nodes and follows their changes
        for name in self.reconciler.pending_nodes():
            if name in nodes and nodes[name].available:
                self._reconcile(name)
        bad = self._bad_copies()
        if self.archive.settings.scrub_bytes_per_s > 0:
            bad += self.scrubber.step(self.interval_s)
        due = time.monotonic() - self.last_repair > self.repair_every_s
        if died or bad or due:
            self.last_repair = time.monotonic()
            if bad or under_replicated_objects(self.archive.store, dead_only=True):
                self._repair()
        self._move()
        drain_deletions(self.archive)

    def _reconcile(self, name: str) -> None:
        report = self.reconciler.run(self.archive.pool.get(name))
        self.totals["reconciled"] += 1
        self.totals["orphans_removed"] += report.removed
        self.totals["adopted"] += report.adopted

    def _bad_copies(self) -> int:
        with self.archive.catalog.session() as session:
            return int(session.scalar(select(func.count()).where(Replica.state != "ok")) or 0)

    def _repair(self) -> RepairReport:
        report = repair(self.archive.store, dead_only=True)
        self.totals["repair_runs"] += 1
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
        """Drain, then follow care-team changes, within this tick's byte budget."""
        moved = drain_step(self.archive, self.limiter)
        self.totals["moved"] += moved.moved
        for failure in moved.failures[:3]:
            log.warning("drain: %s", failure)
        with self.archive.catalog.session() as session:
            changed = session.execute(
                select(CareSite.patient_pk, CareSite.since).where(
                    CareSite.since > self._care_cursor
                )
            ).all()
        for patient_pk, since in changed:
            report = migrate_patient(self.archive, patient_pk, self.limiter)
            self.totals["moved"] += report.moved
            self.totals["migrated_patients"] += 1
            moment = since if since.tzinfo else since.replace(tzinfo=UTC)
            self._care_cursor = max(self._care_cursor, moment)

    def stats(self) -> dict[str, Any]:
        """Queue depths and totals, for `medshard status` and /api/status."""
        return {
            "totals": dict(self.totals),
            "queues": {
                "drain_copies": pending_drain(self.archive),
                "orphan_candidates": len(self.reconciler.first_seen),
            },
            "scrub": vars(self.scrubber.stats).copy(),
            "backup": self.backups.stats(),
        }

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the loop must survive a bad tick; the error is logged
                log.exception("health monitor tick failed")
