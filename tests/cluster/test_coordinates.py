"""Vivaldi coordinates from real RTTs: a node behind a delaying proxy ends up far away.

The service times its heartbeats to every node and has nodes time each other (``/rtt``); a
node whose traffic crosses a 10 ms-each-way proxy must be placed about 20 ms from the rest,
with the predicted RTT close to the measured one, and ``medshard status`` must show it.
"""

from __future__ import annotations

import math
from pathlib import Path

from medshard.catalog.db import Catalog
from medshard.cluster.nodes import register_node
from tests.cluster.delay_proxy import DelayProxy
from tests.cluster.test_self_healing import status, wait_for
from tests.conftest import make_deployment, start_service


def test_coordinates_place_a_distant_node_far_away(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path, node_count=4, sites=["a", "b", "c", "far"])
    far = dep.nodes[3]
    proxy = DelayProxy(far.port, delay_s=0.010)
    catalog = Catalog(dep.settings.database_url)
    register_node(catalog, name=far.name, url=proxy.url, site=far.site, capacity_bytes=0)
    catalog.dispose()
    svc = start_service(dep, heartbeat_interval_s=0.2, scrub_bytes_per_s=0)
    try:

        def gaps(nodes: dict[str, dict]) -> dict[str, float]:
            """Predicted distance from the far node to each other node (from peer RTTs too)."""
            fc = nodes[far.name]["coordinate"]
            out = {}
            for name, n in nodes.items():
                if name != far.name:
                    c = n["coordinate"]
                    out[name] = math.hypot(fc["x"] - c["x"], fc["y"] - c["y"]) + fc["h"] + c["h"]
            return out

        last: dict[str, float] = {}

        def settled() -> bool:
            nodes = {n["name"]: n for n in status(svc)["nodes"]}
            f = nodes[far.name]
            last.clear()
            last.update(gaps(nodes))
            return (
                f["rtt_ms"] > 15
                and abs(f["predicted_rtt_ms"] - f["rtt_ms"]) < 0.3 * f["rtt_ms"]
                and all(gap > 10 for gap in last.values())
            )

        # Vivaldi converges step by step from noisy samples: wait for the whole picture (the
        # service's prediction and the far node's distance to every peer) rather than sampling
        # one moment after the first part holds.
        wait_for("coordinates to settle", settled, timeout=60)
        doc = status(svc)
        nodes = {n["name"]: n for n in doc["nodes"]}
        near = [n for name, n in nodes.items() if name != far.name]
        assert all(n["rtt_ms"] < 10 for n in near)
        assert all(gap > 8 for gap in gaps(nodes).values()), last
        assert doc["coordinates"]["median_rtt_error"] is not None
        text = dep.cli("status").stdout
        assert "Vivaldi" in text and "RTT error median" in text
    finally:
        svc.process.stop()
        proxy.close()
        for proc in dep.nodes:
            proc.stop()
