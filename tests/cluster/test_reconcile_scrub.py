"""A returning node is reconciled; the scrubber finds damage nobody reads and repairs it.

Real node processes and a real service: an orphan chunk (a write that never committed) left on
a node that then goes down is removed when the node returns, while its live chunks are kept;
bytes flipped in a node's volume file, with no read at all, are found by the scrubber and the
copy rewritten; a copy deleted behind the catalog's back is marked missing and restored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from medshard.catalog.db import Catalog
from medshard.catalog.models import Chunk, Node, Replica
from medshard.demo import sample_dicom_dir
from medshard.errors import NotFoundError
from medshard.storage.node_client import NodeClient
from tests.cluster.test_self_healing import status, wait_for
from tests.conftest import Deployment, Service, make_deployment, start_service

FAST = {
    "suspect_after_s": 1.0,
    "dead_after_s": 600.0,
    "heartbeat_interval_s": 0.3,
    "orphan_grace_s": 1.0,
    "scrub_bytes_per_s": 50_000_000,
    "scrub_pass_interval_s": 0.5,
}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Deployment, Service]]:
    dep = make_deployment(tmp_path, node_count=4, sites=["a", "b", "c", "d"])
    svc = start_service(dep, **FAST)
    dep.cli_json("import", str(sample_dicom_dir()))
    try:
        yield dep, svc
    finally:
        svc.process.stop()
        for proc in dep.nodes:
            proc.stop()


def client(dep: Deployment, name: str) -> NodeClient:
    node = dep.node(name)
    return NodeClient(node.name, node.url, dep.settings.node_secret)


def held_by(dep: Deployment, name: str) -> list[str]:
    catalog = Catalog(dep.settings.database_url)
    with catalog.session() as session:
        ids = list(
            session.scalars(
                select(Chunk.chunk_id)
                .join(Replica, Replica.chunk_pk == Chunk.id)
                .join(Node, Node.id == Replica.node_pk)
                .where(Node.name == name)
            )
        )
    catalog.dispose()
    return ids


def test_returning_node_loses_its_orphans_and_keeps_live_chunks(
    fleet: tuple[Deployment, Service],
) -> None:
    dep, svc = fleet
    victim = dep.nodes_by_copies()[0]
    orphan_bytes = os.urandom(2048)
    orphan = hashlib.sha256(orphan_bytes).hexdigest()
    with client(dep, victim.name) as c:
        live = set(c.list_ids())
        c.put(orphan, orphan_bytes)  # as a write that failed before its commit leaves behind
    assert live and set(held_by(dep, victim.name)) == live
    victim.kill()
    wait_for("unreachable", lambda: _reachable(svc, victim.name) is False)
    victim.restart().wait_ready()
    with client(dep, victim.name) as c:
        wait_for("orphan removed", lambda: orphan not in set(c.list_ids()))
        assert live <= set(c.list_ids())
    assert status(svc)["background"]["totals"]["orphans_removed"] >= 1
    assert status(svc)["under_replicated"] == 0


def test_scrubber_finds_flipped_bytes_nobody_read_and_a_vanished_copy(
    fleet: tuple[Deployment, Service],
) -> None:
    dep, svc = fleet
    node, gone_node = dep.nodes_by_copies()[:2]
    chunk_id = held_by(dep, node.name)[0]
    with client(dep, node.name) as c:
        original = c.get(chunk_id)
    flipped = False
    for path in node.data_dir.rglob("vol-*.dat"):
        blob = path.read_bytes()
        at = blob.find(original[:4096])
        if at >= 0:
            with open(path, "r+b") as fh:
                fh.seek(at + 100)
                fh.write(bytes(b ^ 0xFF for b in original[100:116]))
            flipped = True
    assert flipped
    gone = held_by(dep, gone_node.name)[0]
    with client(dep, gone_node.name) as c:
        assert c.delete(gone)  # behind the catalog's back

    def healed() -> bool:
        with client(dep, node.name) as a, client(dep, gone_node.name) as b:
            try:  # a rotten copy is deleted, then rewritten: absent for a moment
                ok = hashlib.sha256(a.get(chunk_id)).hexdigest() == chunk_id and b.exists(gone)
            except NotFoundError:
                return False
        return ok and status(svc)["bad_replicas"] == 0

    wait_for("scrub and repair", healed, timeout=40)
    scrub = status(svc)["background"]["scrub"]
    assert scrub["corrupt_found"] >= 1
    assert scrub["missing_found"] >= 1
    assert status(svc)["under_replicated"] == 0


def _reachable(svc: Service, name: str) -> bool:
    return bool(next(n["reachable"] for n in status(svc)["nodes"] if n["name"] == name))
