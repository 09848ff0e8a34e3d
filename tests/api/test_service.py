"""The application service as a real process: health, status, metrics."""

from __future__ import annotations

import time

import httpx

from tests.conftest import Service


def test_service_reports_cluster_status_and_metrics(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    status = httpx.get(
        f"{service.url}/api/status", headers=service.auth_headers(), timeout=30
    ).json()
    cli_status = service.deployment.cli_json("status")
    assert [n["name"] for n in status["nodes"]] == [n["name"] for n in cli_status["nodes"]]
    assert all(n["state"] == "alive" for n in status["nodes"])
    assert {"nodes", "objects", "under_replicated"} <= status.keys()
    metrics = httpx.get(f"{service.url}/metrics").text
    assert "medshard_ingest_total" in metrics
    assert 'medshard_node_up{node="node0"' in metrics or "medshard_node_up" in metrics
    # background queues and work, as `medshard status` shows them (the monitor exports each tick)
    deadline = time.monotonic() + 30
    while 'medshard_background_queue_depth{queue="drain_copies"}' not in metrics:
        assert time.monotonic() < deadline, metrics[-2000:]
        time.sleep(0.5)
        metrics = httpx.get(f"{service.url}/metrics").text
    # the nodes' volume compaction, as one more queue (volumes waiting, summed over nodes)
    assert 'medshard_background_queue_depth{queue="compaction"}' in metrics
    assert "compaction" in status["background"]["queues"]
