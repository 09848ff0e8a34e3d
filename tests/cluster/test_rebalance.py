"""Rebalancing when a node is added or re-weighted, with real node processes.

The measured copies are *hash-placed* ones: the deployment's four nodes are each at a site of
their own, and the measured patients have no care site at all, so every copy of theirs is
placed by capacity-weighted hashing (what rebalancing may move). One more patient's care site
is ``site-a`` (node0): its copy there serves that site and must never move to balance load;
its objects are left out of the counts. The ideal share when one node joins n equal nodes is
1/(n+1) of the hash-placed copies.
"""

from __future__ import annotations

import io
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from medshard.catalog.models import CareSite, Chunk, Patient, Replica, Site, StoredObject
from medshard.catalog.writes import PatientValues
from medshard.cluster.archive import Archive
from medshard.cluster.monitor import HealthMonitor
from medshard.node.launcher import NodeProcess, free_port, start_node_process
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, make_deployment

SITES = ["site-a", "site-b", "site-c", "site-d"]
HASHED_OBJECTS = 1000
CARED_OBJECTS = 60
CARED = "CARED-AT-A"


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    d = make_deployment(tmp_path, node_count=4, sites=SITES)
    try:
        yield d
    finally:
        for proc in d.nodes:
            proc.stop()


def _no_link(session: object, patient_pk: int, object_pk: int) -> None:
    return None


def fill(archive: Archive) -> None:
    """HASHED_OBJECTS small objects over 50 patients without care sites, and CARED_OBJECTS
    for one patient whose care site is site-a."""

    def put(i: int) -> None:
        care = ["site-a"] if i >= HASHED_OBJECTS else []
        patient = CARED if care else f"HASHED-{i % 50:02d}"
        data = os.urandom(2048)
        archive.put_object(PatientValues(patient), io.BytesIO(data), _no_link, care_sites=care)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, range(HASHED_OBJECTS + CARED_OBJECTS)))
    with archive.catalog.transaction() as session:
        patient_pk = session.scalar(select(Patient.id).where(Patient.patient_id == CARED))
        site_a = session.scalar(select(Site.id).where(Site.name == "site-a"))
        now = datetime.now(UTC)
        session.add(
            CareSite(patient_pk=patient_pk, site_id=site_a, since=now, last_involved_at=now)
        )


def placement(archive: Archive) -> tuple[dict[int, set[str]], dict[int, set[str]]]:
    """(hash-placed chunk -> nodes, cared chunk -> nodes), as the catalog records them."""
    hashed: dict[int, set[str]] = {}
    cared: dict[int, set[str]] = {}
    names = {h.pk: h.name for h in archive.pool.nodes.values()}
    with archive.catalog.session() as session:
        rows = session.execute(
            select(Chunk.id, Replica.node_pk, Patient.patient_id)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .join(StoredObject, StoredObject.id == Chunk.object_pk)
            .join(Patient, Patient.id == StoredObject.patient_pk)
        ).all()
    for chunk_pk, node_pk, patient_id in rows:
        into = cared if patient_id == CARED else hashed
        into.setdefault(chunk_pk, set()).add(names[node_pk])
    return hashed, cared


def spread(hashed: dict[int, set[str]]) -> Counter[str]:
    return Counter(name for nodes in hashed.values() for name in nodes)


def add_node(dep: Deployment, tmp_path: Path, name: str, site: str) -> NodeProcess:
    proc = start_node_process(
        name, site, free_port(), tmp_path / name, dep.settings.node_secret,
        log_path=tmp_path / f"{name}.log",
    )  # fmt: skip
    dep.nodes.append(proc)
    proc.wait_ready()
    dep.cli("node", "add", name, "--url", proc.url, "--site", site)
    return proc


def read_all_while(
    archive: Archive, work: threading.Event
) -> tuple[list[int], list[BaseException]]:
    """Read every object in a loop on a thread until ``work`` is set."""
    reads = [0]
    errors: list[BaseException] = []
    with archive.catalog.session() as session:
        keys = list(session.scalars(select(StoredObject.object_key)))

    def reader() -> None:
        while not work.is_set():
            for key in keys[:: 7 if reads[0] else 1]:
                try:
                    archive.store.read_all(key)
                    reads[0] += 1
                except BaseException as exc:  # every read during the moves must succeed
                    errors.append(exc)
                    return

    threading.Thread(target=reader, daemon=True).start()
    return reads, errors


def test_adding_a_node_moves_its_share_and_evens_the_load(dep: Deployment, tmp_path: Path) -> None:
    with Archive.open(dep.home) as archive:
        fill(archive)
        before, cared_before = placement(archive)
    copies = sum(len(n) for n in before.values())
    assert copies == 3 * HASHED_OBJECTS
    assert all("node0" in nodes for nodes in cared_before.values())  # site-a's copy

    add_node(dep, tmp_path, "node4", "site-e")
    ideal = copies / 5
    planned = dep.cli_json("node", "rebalance")  # a dry run: counts, moves nothing
    assert planned["misplaced"] > 0

    done = threading.Event()
    with Archive.open(dep.home) as reader_archive:
        reads, errors = read_all_while(reader_archive, done)
        try:
            result = dep.cli_json("node", "rebalance", "--wait")
        finally:
            done.set()
        assert not errors, errors[:3]
        assert reads[0] > 0
    assert result["moved"] == planned["misplaced"]
    assert result["failures"] == 0

    with Archive.open(dep.home) as archive:
        after, cared_after = placement(archive)
        moved = sum(len(after[c] - before[c]) for c in before)
        load = spread(after)
        mean = copies / 5
        top, bottom = max(load.values()) / mean, min(load.values()) / mean
        print(f"moved {moved} of {copies} hash-placed copies = {moved / copies:.4f} "
              f"(ideal {ideal / copies:.4f}, {moved / ideal:.3f}x); per node {dict(load)}, "
              f"max/mean {top:.3f} min/mean {bottom:.3f}")  # fmt: skip
        assert all(len(nodes) == 3 for nodes in after.values())
        assert moved <= 1.1 * ideal
        assert all(abs(load[n] - mean) <= 0.1 * mean for n in [f"node{i}" for i in range(5)])
        # the care-site copies stayed put; the patient's other copies may have moved
        assert all("node0" in cared_after[c] for c in cared_before)
        # the old copies are gone from the nodes the catalog moved them off
        for proc in dep.nodes:
            with NodeClient(proc.name, proc.url, dep.settings.node_secret) as client:
                held = set(client.list_ids())
            named = set(_chunk_ids_on(archive, proc.name))
            assert named == held, proc.name
        for key in _keys(archive):
            archive.store.read_all(key)
    assert dep.cli_json("node", "rebalance")["misplaced"] == 0  # nothing left to move

    # re-weighting: node1 to weight 2; the service's monitor moves the data on its own
    dep.cli("node", "weight", "node1", "2")
    with Archive.open(dep.home) as archive:
        archive.settings.backup_interval_s = 0
        archive.settings.scrub_bytes_per_s = 0
        monitor = HealthMonitor(archive, interval_s=60)
        for _ in range(10):
            monitor.tick()
            if not monitor.rebalancer.active:
                break
        assert not monitor.rebalancer.active
        assert monitor.totals["rebalanced"] > 0
        assert monitor.stats()["rebalance"]["passes"] >= 1
        reweighted, _ = placement(archive)
        grown = spread(reweighted)
        assert grown["node1"] > load["node1"] * 1.2, (grown, load)
        assert all(len(nodes) == 3 for nodes in reweighted.values())


def _chunk_ids_on(archive: Archive, name: str) -> list[str]:
    pk = archive.pool.get(name).pk
    with archive.catalog.session() as session:
        return list(
            session.scalars(
                select(Chunk.chunk_id)
                .join(Replica, Replica.chunk_pk == Chunk.id)
                .where(Replica.node_pk == pk)
            )
        )


def _keys(archive: Archive) -> list[str]:
    with archive.catalog.session() as session:
        return list(session.scalars(select(StoredObject.object_key)))
