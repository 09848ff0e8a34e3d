"""Volume compaction on the storage nodes, as the service reports it.

Each node compacts its own volumes (:mod:`medshard.node.compaction`) and says how far it got
in its ``/health``, which the pool's probe keeps (:attr:`NodeHandle.health`). The service
only reports it: the volumes waiting, summed over the nodes, are the background queue
``compaction`` of `medshard status` and ``/metrics``, and the nodes' counters, which start
from zero again when a node restarts, are folded into totals that only grow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from medshard.cluster.nodes import NodeHandle

#: A node's counters of work done, added to the monitor's totals of the same names.
WORK_DONE = ("volumes_compacted", "bytes_reclaimed")


def node_compaction(health: dict[str, Any]) -> dict[str, Any]:
    """One node's space and compaction progress from its ``/health`` (zeros if unknown)."""
    progress = health.get("compaction") or {}
    return {
        "dead_bytes": int(health.get("dead_bytes", 0)),
        "reclaimable_bytes": int(health.get("reclaimable_bytes", 0)),
        "pending_volumes": int(progress.get("pending_volumes", 0)),
        "running": bool(progress.get("running", False)),
        "volumes_compacted": int(progress.get("volumes_compacted", 0)),
        "bytes_reclaimed": int(progress.get("bytes_reclaimed", 0)),
        "rate_limit_bytes_per_s": float(progress.get("rate_limit_bytes_per_s", 0.0)),
    }


def compaction_summary(handles: Iterable[NodeHandle]) -> dict[str, Any]:
    """Every node's figures summed, as the nodes last reported them."""
    nodes = [node_compaction(h.health) for h in handles if h.health]
    return {
        "dead_bytes": sum(n["dead_bytes"] for n in nodes),
        "reclaimable_bytes": sum(n["reclaimable_bytes"] for n in nodes),
        "pending_volumes": sum(n["pending_volumes"] for n in nodes),
        "nodes_compacting": sum(n["running"] for n in nodes),
        "volumes_compacted": sum(n["volumes_compacted"] for n in nodes),
        "bytes_reclaimed": sum(n["bytes_reclaimed"] for n in nodes),
    }


class CompactionTotals:
    """Adds what the nodes compacted since the last probe to a totals dict.

    A node's counter that went down means the node restarted: all of it is new work.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], int] = {}

    def add_to(self, totals: dict[str, int], handles: Iterable[NodeHandle]) -> None:
        for handle in handles:
            if not handle.health:
                continue
            figures = node_compaction(handle.health)
            for counter in WORK_DONE:
                now, before = figures[counter], self._seen.get((handle.name, counter), 0)
                totals[counter] = totals.get(counter, 0) + (now - before if now >= before else now)
                self._seen[(handle.name, counter)] = now
