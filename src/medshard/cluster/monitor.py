"""Background heartbeat loop of the metadata service: probe nodes, heal what needs healing.

Every ``interval_s`` the monitor probes all nodes (updating alive/suspect/dead in the catalog).
When a node comes back, or when a node has been dead long enough that its replicas count as
lost, and at a slower steady pace otherwise, it runs repair, so an object written while a node
was down is healed without anyone typing `medshard repair`.
"""

from __future__ import annotations

import logging
import threading
import time

from medshard import metrics
from medshard.cluster.archive import Archive
from medshard.cluster.repair import repair, under_replicated_objects

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(
        self, archive: Archive, interval_s: float = 2.0, repair_every_s: float = 30.0
    ) -> None:
        self.archive = archive
        self.interval_s = interval_s
        self.repair_every_s = repair_every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
        self.last_repair: float = 0.0

    def start(self) -> HealthMonitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def tick(self) -> None:
        before = {n: (h.state, h.reachable) for n, h in self.archive.pool.nodes.items()}
        nodes = self.archive.pool.probe()
        changed = False
        for name, handle in nodes.items():
            metrics.NODE_STATE.labels(name, handle.site).set(1 if handle.available else 0)
            if before.get(name) != (handle.state, handle.reachable):
                changed = True
                log.warning("node %s is now %s", name, handle.state.value)
        due = time.monotonic() - self.last_repair > self.repair_every_s
        if (changed or due) and under_replicated_objects(self.archive.store):
            self._repair()
        elif due:
            self.last_repair = time.monotonic()

    def _repair(self) -> None:
        self.last_repair = time.monotonic()
        report = repair(self.archive.store)
        if report.copies_made or report.extras_removed:
            log.warning(
                "auto-repair: %d copies made, %d corrupt replaced, %d extras removed",
                report.copies_made,
                report.corrupt_replaced,
                report.extras_removed,
            )
        for failure in report.failures[:5]:
            log.warning("auto-repair could not fix %s", failure)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # the loop must survive a bad tick; the error is logged
                log.exception("health monitor tick failed")
