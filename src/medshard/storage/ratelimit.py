"""The byte-rate limit background copying shares, so that client I/O keeps its latency.

The service's copying (repair, drain, migration, rebalancing) shares one limiter (see
:mod:`medshard.cluster.ratelimit`); a storage node throttles its volume compaction with its own
(:mod:`medshard.node.compaction`). It lives in the storage layer so both can use it.
"""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """A token bucket in bytes: ``take(n)`` sleeps as long as ``n`` bytes must wait.

    A rate of 0 (or less) means unlimited. One limiter may be shared by several threads.
    """

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = float(bytes_per_s)
        self.allowance = self.rate
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self.allowance = min(self.rate, self.allowance + (now - self.stamp) * self.rate)
            self.stamp = now
            self.allowance -= n
            wait = -self.allowance / self.rate if self.allowance < 0 else 0.0
        if wait > 0:
            time.sleep(wait)
