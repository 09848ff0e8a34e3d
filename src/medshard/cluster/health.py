"""Node health as a state table: alive -> suspect -> dead, and back to alive on a heartbeat.

Heartbeats are pulled: the metadata service probes every node's ``/health``. A node that
stops answering is *suspect* once it has been silent for ``suspect_after_s`` and *dead* after
``dead_after_s``. Only a dead node's copies count as lost to the service's automatic repair: a
node that reboots within the delay costs no copying (no repair storm on a short blip). An
operator's ``medshard repair`` still treats every unreachable node's copies as missing.
"""

from __future__ import annotations

import math
from enum import StrEnum

#: Memory of the reliability score: an outage this long ago weighs half as much as one now.
RELIABILITY_HALF_LIFE_S = 6 * 3600.0


class NodeState(StrEnum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class HealthEvent(StrEnum):
    HEARTBEAT = "heartbeat"
    MISSED_SUSPECT = "missed_suspect"  # silent longer than suspect_after_s
    MISSED_DEAD = "missed_dead"  # silent longer than dead_after_s


TRANSITIONS: dict[tuple[NodeState, HealthEvent], NodeState] = {
    (NodeState.ALIVE, HealthEvent.HEARTBEAT): NodeState.ALIVE,
    (NodeState.ALIVE, HealthEvent.MISSED_SUSPECT): NodeState.SUSPECT,
    (NodeState.ALIVE, HealthEvent.MISSED_DEAD): NodeState.DEAD,
    (NodeState.SUSPECT, HealthEvent.HEARTBEAT): NodeState.ALIVE,
    (NodeState.SUSPECT, HealthEvent.MISSED_SUSPECT): NodeState.SUSPECT,
    (NodeState.SUSPECT, HealthEvent.MISSED_DEAD): NodeState.DEAD,
    (NodeState.DEAD, HealthEvent.HEARTBEAT): NodeState.ALIVE,
    (NodeState.DEAD, HealthEvent.MISSED_SUSPECT): NodeState.DEAD,
    (NodeState.DEAD, HealthEvent.MISSED_DEAD): NodeState.DEAD,
}


def next_state(state: NodeState, event: HealthEvent) -> NodeState:
    return TRANSITIONS[(state, event)]


def missed_event(
    silent_for_s: float, suspect_after_s: float, dead_after_s: float
) -> HealthEvent | None:
    """The event a failed probe amounts to after ``silent_for_s`` seconds without a heartbeat
    (None: too soon to say anything)."""
    if silent_for_s >= dead_after_s:
        return HealthEvent.MISSED_DEAD
    if silent_for_s >= suspect_after_s:
        return HealthEvent.MISSED_SUSPECT
    return None


def update_reliability(score: float, up: bool, elapsed_s: float) -> float:
    """Observed availability as a time-weighted moving average of heartbeat outcomes.

    Each probe outcome stands for the ``elapsed_s`` seconds since the previous heartbeat, so a
    node's score reflects the share of recent *time* it answered, whatever the probe rate.
    """
    alpha = 1.0 - math.exp(-math.log(2) * max(elapsed_s, 0.0) / RELIABILITY_HALF_LIFE_S)
    return min(1.0, max(0.0, score + alpha * ((1.0 if up else 0.0) - score)))
