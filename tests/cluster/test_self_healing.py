"""Heartbeats, the dead delay and repair, with real node processes and a real service.

Delays are seconds here (the default dead delay is 10 minutes): a node killed with SIGKILL
turns suspect, then dead only after ``dead_after_s``, and only then are its copies rebuilt;
a node restarted within the delay causes no copying at all. The admin REST topology routes
are checked on the same service.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from medshard.demo import sample_dicom_dir
from tests.conftest import Deployment, Service, make_deployment, start_service

FAST = {
    "suspect_after_s": 1.0,
    "dead_after_s": 6.0,
    "heartbeat_interval_s": 0.3,
    "scrub_bytes_per_s": 0,
}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Deployment, Service]]:
    dep = make_deployment(tmp_path, node_count=4, sites=["a", "b", "c", "d"])
    svc = start_service(dep, **FAST)
    try:
        yield dep, svc
    finally:
        svc.process.stop()
        for proc in dep.nodes:
            proc.stop()


def status(svc: Service) -> dict[str, Any]:
    r = httpx.get(f"{svc.url}/api/status", headers=svc.auth_headers(), timeout=30)
    r.raise_for_status()
    doc: dict[str, Any] = r.json()
    return doc


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - start


def health_of(svc: Service, name: str) -> str:
    return str(next(n["health"] for n in status(svc)["nodes"] if n["name"] == name))


def copies_made(svc: Service) -> int:
    return int(status(svc)["background"]["totals"]["copies_made"])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kill_9_is_suspect_then_dead_after_the_delay_and_only_then_repaired(
    fleet: tuple[Deployment, Service], tmp_path: Path
) -> None:
    dep, svc = fleet
    imported = dep.cli_json("import", str(sample_dicom_dir()))["imported"]
    assert imported
    wait_for("a healthy cluster", lambda: status(svc)["under_replicated"] == 0)
    victim = dep.nodes_by_copies()[0]

    # a blip: killed, suspect, back before the dead delay -> no copying at all
    victim.kill()
    wait_for("suspect", lambda: health_of(svc, victim.name) == "suspect")
    victim.restart().wait_ready()
    wait_for("alive again", lambda: health_of(svc, victim.name) == "alive")
    time.sleep(1.0)
    assert copies_made(svc) == 0

    # a real death: suspect at once, dead only after dead_after_s, repaired after that
    victim.kill()
    killed = time.monotonic()
    wait_for("suspect", lambda: health_of(svc, victim.name) == "suspect")
    suspect_at = time.monotonic() - killed
    assert copies_made(svc) == 0
    assert status(svc)["awaiting_dead_delay"] > 0
    wait_for("dead", lambda: health_of(svc, victim.name) == "dead")
    dead_at = time.monotonic() - killed
    assert suspect_at < FAST["dead_after_s"] <= dead_at + 0.5, (suspect_at, dead_at)
    wait_for("repair", lambda: status(svc)["under_replicated"] == 0, timeout=40)
    assert copies_made(svc) > 0
    for item in imported:  # every acknowledged object reads back intact
        target = tmp_path / f"{item['sop_instance_uid']}.dcm"
        dep.cli("get", "--sop", item["sop_instance_uid"], "-o", str(target))
        assert _sha(target) == _sha(Path(item["path"]))
    node = next(n for n in status(svc)["nodes"] if n["name"] == victim.name)
    assert node["reliability"] < 1.0


def test_topology_rest_is_admin_only(fleet: tuple[Deployment, Service]) -> None:
    dep, svc = fleet
    password = "correct horse battery staple 42"
    dep.cli("user", "add", "root", "--role", "admin", "--password", password)
    token = httpx.post(
        f"{svc.url}/api/auth/token", data={"username": "root", "password": password}, timeout=30
    ).json()["access_token"]
    admin = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{svc.url}/api/nodes", headers=svc.auth_headers()).status_code == 403
    r = httpx.post(
        f"{svc.url}/api/sites",
        json={"name": "rural-7", "kind": "rural", "latitude": 12.3, "longitude": 77.1},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    sites = httpx.get(f"{svc.url}/api/sites", headers=admin).json()
    assert {"name": "rural-7", "kind": "rural"}.items() <= next(
        s for s in sites if s["name"] == "rural-7"
    ).items()
    r = httpx.put(f"{svc.url}/api/nodes/node2/weight", json={"weight": 3}, headers=admin)
    assert r.status_code == 200, r.text
    nodes = {n["name"]: n for n in httpx.get(f"{svc.url}/api/nodes", headers=admin).json()}
    assert nodes["node2"]["weight"] == 3
    assert "coordinate" in nodes["node2"]
    assert httpx.delete(f"{svc.url}/api/nodes/node2", headers=svc.auth_headers()).status_code == 403
    removed = httpx.delete(f"{svc.url}/api/nodes/node2", headers=admin)  # holds nothing yet
    assert removed.status_code == 200, removed.text
    assert "node2" not in {
        n["name"] for n in httpx.get(f"{svc.url}/api/nodes", headers=admin).json()
    }
    bad_kind = httpx.post(f"{svc.url}/api/sites", json={"name": "x", "kind": "spa"}, headers=admin)
    assert bad_kind.status_code == 400
