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

        def settled() -> bool:
            nodes = {n["name"]: n for n in status(svc)["nodes"]}
            f = nodes[far.name]
            return f["rtt_ms"] > 15 and abs(f["predicted_rtt_ms"] - f["rtt_ms"]) < 0.3 * f["rtt_ms"]

        wait_for("coordinates to settle", settled, timeout=40)
        doc = status(svc)
        nodes = {n["name"]: n for n in doc["nodes"]}
        near = [n for name, n in nodes.items() if name != far.name]
        assert all(n["rtt_ms"] < 10 for n in near)
        fc = nodes[far.name]["coordinate"]
        for n in near:  # the far node is far from every other node too (peer RTTs)
            c = n["coordinate"]
            gap = math.hypot(fc["x"] - c["x"], fc["y"] - c["y"]) + fc["h"] + c["h"]
            assert gap > 10, (n["name"], gap)
        assert doc["coordinates"]["median_rtt_error"] is not None
        text = dep.cli("status").stdout
        assert "Vivaldi" in text and "RTT error median" in text
    finally:
        svc.process.stop()
        proxy.close()
        for proc in dep.nodes:
            proc.stop()
