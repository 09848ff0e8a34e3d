"""The running service heals data written while a node was down, once the node is back."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from medshard.demo import sample_dicom_dir
from medshard.storage.node_client import NodeClient
from tests.conftest import make_deployment, start_service


def test_service_heals_under_replicated_objects_when_the_node_returns(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path, node_count=3, sites=["a", "b", "c"])
    service = None
    try:
        service = start_service(dep)
        down = dep.nodes[0]
        down.stop()
        report = dep.cli_json("import", str(sample_dicom_dir()))
        assert report["imported"]
        status = httpx.get(
            f"{service.url}/api/status", headers=service.auth_headers(), timeout=30
        ).json()
        assert status["under_replicated"] == len(report["imported"])

        down.restart()
        down.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(
                f"{service.url}/api/status", headers=service.auth_headers(), timeout=30
            ).json()
            if status["under_replicated"] == 0:
                break
            time.sleep(1)
        assert status["under_replicated"] == 0, status
        node = next(n for n in status["nodes"] if n["name"] == down.name)
        assert node["state"] == "alive"
        with NodeClient(down.name, down.url, dep.settings.node_secret) as client:
            assert len(list(client.list_ids())) >= len(report["imported"])
    finally:
        if service is not None:
            service.process.stop()
        for proc in dep.nodes:
            proc.stop()
