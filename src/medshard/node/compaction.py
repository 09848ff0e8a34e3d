"""When and how fast a storage node compacts its volumes, on a background thread.

:meth:`VolumeStore.compact <medshard.node.volume.VolumeStore.compact>` does the work (and
its docstring says why it is crash-safe); this module picks the volumes and sets the pace.
Every ``interval_s``, or at once when :meth:`Compactor.trigger` is called (``POST /compact``),
a pass compacts, oldest first, every sealed volume whose reclaimable share of the file is at
least ``threshold``: oldest first because compacting an old volume drops the PUT records that
tombstones in newer ones still shadow, which lets those tombstones go in turn. Copying goes
through a :class:`~medshard.storage.ratelimit.RateLimiter` of ``bytes_per_s``, so client
reads and writes keep their latency; the node's ``/health`` reports :meth:`Compactor.stats`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from medshard.errors import MedshardError
from medshard.node.volume import CompactionResult, VolumeStore, VolumeUsage
from medshard.storage.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: Compact a sealed volume once this share of its bytes can be reclaimed.
DEFAULT_THRESHOLD = 0.5
#: Copy rate of compaction; 0 = unlimited. Well under a disk's sequential bandwidth.
DEFAULT_BYTES_PER_S = 32 * 1024 * 1024
#: Seconds between scheduled passes (a pass that finds nothing to do costs next to nothing).
DEFAULT_INTERVAL_S = 60.0


def _worth_compacting(usage: VolumeUsage, threshold: float) -> bool:
    return usage.sealed and usage.reclaimable_bytes > 0 and usage.reclaimable_fraction >= threshold


class CompactionStopped(Exception):
    """The compactor is stopping: the volume being copied is left as it was."""


class Compactor:
    """Compacts a :class:`VolumeStore`'s sealed volumes in the background, rate-limited.

    Parameters
    ----------
    store
        The engine; the compactor must be stopped before it is closed.
    threshold
        Reclaimable share of a sealed volume (0..1) that makes it worth compacting.
    bytes_per_s
        Copy rate limit; 0 means unlimited.
    interval_s
        Seconds between scheduled passes.
    """

    def __init__(
        self,
        store: VolumeStore,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        bytes_per_s: float = DEFAULT_BYTES_PER_S,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.store = store
        self.threshold = threshold
        self.interval_s = interval_s
        self.limiter = RateLimiter(bytes_per_s)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._asked: float | None = None  # threshold of a triggered pass
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the counters below
        self.running: int | None = None  # the volume being compacted
        self.passes = 0
        self.volumes_compacted = 0
        self.bytes_reclaimed = 0
        self.bytes_copied = 0
        self.seconds = 0.0  # spent compacting, rate limit included
        self.last_error: str | None = None

    def candidates(self, threshold: float | None = None) -> list[VolumeUsage]:
        """Sealed volumes worth compacting now, oldest first."""
        limit = self.threshold if threshold is None else threshold
        return [u for u in self.store.volume_usage() if _worth_compacting(u, limit)]

    def run_pass(self, threshold: float | None = None) -> list[CompactionResult]:
        """Compact every candidate (each volume at most once), in this thread."""
        done: list[CompactionResult] = []
        tried: set[int] = set()
        while not self._stop.is_set():
            todo = [u for u in self.candidates(threshold) if u.number not in tried]
            if not todo:
                break
            number = todo[0].number
            tried.add(number)
            with self._lock:
                self.running = number
            start = time.monotonic()
            try:
                result = self.store.compact(number, throttle=self._throttle)
            except CompactionStopped:
                break
            except MedshardError as e:
                log.error("node %s: compacting volume %d failed: %s", self.store.name, number, e)
                with self._lock:
                    self.last_error = str(e)
                continue
            finally:
                with self._lock:
                    self.running = None
                    self.seconds += time.monotonic() - start
            done.append(result)
            with self._lock:
                self.volumes_compacted += 1
                self.bytes_reclaimed += result.reclaimed_bytes
                self.bytes_copied += result.copied_bytes
        with self._lock:
            self.passes += 1
        return done

    def trigger(self, threshold: float | None = None) -> None:
        """Run a pass soon on the background thread (``threshold`` overrides it once); with
        no thread started, run one pass on a thread of its own."""
        if self._thread is None:
            threading.Thread(target=self.run_pass, args=(threshold,), daemon=True).start()
            return
        with self._lock:
            self._asked = threshold
        self._wake.set()

    def start(self) -> Compactor:
        self._thread = threading.Thread(
            target=self._run, name=f"node-{self.store.name}-compaction", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; a compaction in progress is abandoned at its next record."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        """Space and progress, for the node's ``/health``."""
        usage = self.store.volume_usage()
        pending = [u for u in usage if _worth_compacting(u, self.threshold)]
        with self._lock:
            return {
                "dead_bytes": sum(u.dead_bytes for u in usage),
                "reclaimable_bytes": sum(u.reclaimable_bytes for u in usage if u.sealed),
                "volumes": len(usage),
                "pending_volumes": len(pending),
                "running": self.running is not None,
                "volume": self.running,
                "passes": self.passes,
                "volumes_compacted": self.volumes_compacted,
                "bytes_reclaimed": self.bytes_reclaimed,
                "bytes_copied": self.bytes_copied,
                "seconds": round(self.seconds, 3),
                "threshold": self.threshold,
                "rate_limit_bytes_per_s": self.limiter.rate,
                "last_error": self.last_error,
            }

    def _throttle(self, n: int) -> None:
        if self._stop.is_set():
            raise CompactionStopped
        self.limiter.take(n)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                threshold, self._asked = self._asked, None
            try:
                self.run_pass(threshold)
            except Exception:  # the thread must survive a bad pass; the error is logged
                log.exception("node %s: compaction pass failed", self.store.name)
