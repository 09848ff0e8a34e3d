"""The byte-rate limit every kind of background copying shares (repair, drain, migration,
rebalancing), so that client I/O keeps its latency. The limiter itself lives in the storage
layer, where storage nodes use it too (volume compaction)."""

from __future__ import annotations

from medshard.storage.ratelimit import RateLimiter

__all__ = ["RateLimiter"]
