"""Vivaldi network coordinates with height (Dabek et al., SIGCOMM 2004; as in Serf/Consul).

Why coordinates: placement wants "the healthy nodes nearest a patient's care sites" and reads
want "the nearest replica", for every pair of parties, without measuring every pair all the
time. Each party keeps a point in a 2-D plane plus a *height* (its access-link latency, which no
direction can shorten); the predicted RTT between two parties is the distance of their points
plus both heights. Every measured RTT nudges the measuring party's coordinate like a spring,
weighted by how sure each side is of its own position (``error``), so a newcomer moves fast and a
settled node barely moves on one noisy sample.

Units are milliseconds throughout.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

#: Tuning constants of the paper (c_e, c_c) and a floor for the height so that two nodes at
#: one site still predict a positive RTT.
ERROR_GAIN = 0.25
MOVE_GAIN = 0.25
MIN_HEIGHT_MS = 0.01
MAX_ERROR = 1.5
_TINY = 1e-9


@dataclass
class Coordinate:
    """A position (x, y, ms), a height (ms) and the owner's relative error estimate."""

    x: float = 0.0
    y: float = 0.0
    h: float = MIN_HEIGHT_MS
    error: float = 1.0

    def rtt_to(self, other: Coordinate) -> float:
        """Predicted round-trip time to ``other`` in ms."""
        return math.hypot(self.x - other.x, self.y - other.y) + self.h + other.h

    def as_dict(self) -> dict[str, float]:
        return {
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "h": round(self.h, 3),
            "error": round(self.error, 3),
        }


def update(
    local: Coordinate, remote: Coordinate, rtt_ms: float, rng: random.Random | None = None
) -> Coordinate:
    """Move ``local`` (in place, and returned) after measuring ``rtt_ms`` to ``remote``.

    A non-positive or absurd sample (a timeout recorded as 0, a clock jump) is ignored rather
    than allowed to fling the coordinate across the plane.
    """
    if not (0.0 < rtt_ms < 60_000.0) or not math.isfinite(rtt_ms):
        return local
    predicted = local.rtt_to(remote)
    weight = local.error / max(local.error + remote.error, _TINY)
    sample_error = abs(predicted - rtt_ms) / rtt_ms
    local.error = min(
        MAX_ERROR, sample_error * ERROR_GAIN * weight + local.error * (1 - ERROR_GAIN * weight)
    )
    force = MOVE_GAIN * weight * (rtt_ms - predicted)  # > 0: too close, push apart
    dx, dy = local.x - remote.x, local.y - remote.y
    planar = math.hypot(dx, dy)
    if planar < _TINY:  # coincident points: push in a random direction so they can separate
        angle = (rng or random).uniform(0, 2 * math.pi)
        dx, dy, planar = math.cos(angle), math.sin(angle), 1.0
    local.x += force * dx / planar
    local.y += force * dy / planar
    span = planar + local.h + remote.h
    local.h = max(MIN_HEIGHT_MS, local.h + force * (local.h + remote.h) / max(span, _TINY))
    return local


def relative_error(predicted: float, measured: float) -> float:
    """|predicted - measured| / measured, the figure ``medshard status`` reports."""
    return abs(predicted - measured) / measured if measured > 0 else 0.0
