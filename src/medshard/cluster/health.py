"""Node health as a state table: alive -> suspect -> dead, and back to alive on a heartbeat.

Heartbeats are pulled: the metadata service probes every node's ``/health``. A node that
stops answering is *suspect* once it has been silent for ``suspect_after_s`` and *dead* after
``dead_after_s``; repair re-replicates what dead (and unreachable) nodes held.
"""

from __future__ import annotations

from enum import StrEnum


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
