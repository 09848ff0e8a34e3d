"""The one write path under real faults: bytes first, then every row in one commit, or nothing.

Nodes are real processes killed with SIGKILL in the middle of a write (the stream being
stored pulls the trigger after a set number of bytes, so "the middle" is the same every run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medshard.catalog.lookups import object_key_of
from medshard.catalog.models import (
    Chunk,
    Instance,
    Node,
    Patient,
    Replica,
    Series,
    StoredObject,
    Study,
)
from medshard.catalog.writes import PatientValues, ensure_series, ensure_study
from medshard.cluster.archive import Archive
from medshard.errors import NoQuorumError
from medshard.ingest.pipeline import Ingestor, Rejection
from medshard.storage.node_client import NodeClient
from tests import hostile
from tests.conftest import Deployment, make_deployment

KiB = 1024
CHUNK = 256 * KiB


class KillingStream(io.BytesIO):
    """A stream that runs ``trigger`` once, when ``after`` bytes have been read from it."""

    def __init__(self, data: bytes, after: int, trigger: Callable[[], None]) -> None:
        super().__init__(data)
        self.after, self.trigger, self.fired = after, trigger, False

    def read(self, size: int | None = -1, /) -> bytes:
        piece = super().read(size)
        if not self.fired and self.tell() >= self.after:
            self.fired = True
            self.trigger()
        return piece


@pytest.fixture
def three_nodes(tmp_path: Path, db_url: str) -> Iterator[Deployment]:
    """Three nodes for k=3: every object's replica set is all of them."""
    dep = make_deployment(tmp_path, db_url, node_count=3)
    yield dep
    for proc in dep.nodes:
        proc.stop()


@pytest.fixture
def archive(three_nodes: Deployment) -> Iterator[Archive]:
    settings = dataclasses.replace(three_nodes.settings, chunk_size=CHUNK)
    with Archive(settings) as opened:
        yield opened


def _counts(archive: Archive) -> dict[str, int]:
    with archive.catalog.session() as session:
        return {
            model.__name__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Patient, Study, Series, Instance, StoredObject, Chunk, Replica)
        }


def _link_study(session: Session, patient_pk: int, object_pk: int) -> int:
    study = ensure_study(session, patient_pk, {"study_instance_uid": "1.2.826.0.1.99.1"})
    return ensure_series(session, study, {"series_instance_uid": "1.2.826.0.1.99.1.1"})


def _held_by(dep: Deployment, node_name: str) -> set[str]:
    node = dep.node(node_name)
    with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
        return set(client.list_ids())


def test_a_write_that_loses_its_quorum_midway_leaves_no_row_and_no_chunk(
    three_nodes: Deployment, archive: Archive
) -> None:
    before = _counts(archive)
    victims = three_nodes.nodes[1:]
    data = os.urandom(40 * CHUNK)
    stream = KillingStream(data, 8 * CHUNK, lambda: [v.kill() for v in victims])
    with pytest.raises(NoQuorumError):
        archive.put_object(PatientValues("KILLED-MIDWAY"), stream, _link_study)
    assert stream.fired
    assert _counts(archive) == before  # not the patient, nor the study, nor any object row
    # The chunks that reached the survivor before the quorum was lost were removed again.
    assert _held_by(three_nodes, three_nodes.nodes[0].name) == set()


def test_a_write_that_loses_one_node_midway_records_only_durable_copies(
    three_nodes: Deployment, archive: Archive
) -> None:
    victim = three_nodes.nodes[2]
    data = os.urandom(40 * CHUNK)
    stream = KillingStream(data, 8 * CHUNK, victim.kill)
    put = archive.put_object(PatientValues("LOST-ONE"), stream, _link_study)
    assert stream.fired and put.copies == 2  # acknowledged at the quorum, and reported so
    assert archive.store.read_all(archive_key(archive, put.object_pk)) == data

    victim.restart().wait_ready()  # its disk keeps what it acknowledged before the kill
    names = {archive.pool.get(n.name).pk: n.name for n in three_nodes.nodes}
    with archive.catalog.session() as session:
        rows = session.execute(
            select(Chunk.chunk_id, Replica.node_pk)
            .join(Replica, Replica.chunk_pk == Chunk.id)
            .where(Chunk.object_pk == put.object_pk)
        ).all()
    assert len({cid for cid, _ in rows}) == 40
    on_victim = [cid for cid, pk in rows if names[pk] == victim.name]
    assert 0 < len(on_victim) < 40  # it took the early chunks only
    for chunk_id, node_pk in rows:  # every replica row names a verified, durable copy
        node = three_nodes.node(names[node_pk])
        with NodeClient(node.name, node.url, three_nodes.settings.node_secret) as client:
            assert hashlib.sha256(client.get(chunk_id)).hexdigest() == chunk_id


def archive_key(archive: Archive, object_pk: int) -> str:
    with archive.catalog.session() as session:
        key = object_key_of(session, object_pk)
    assert key is not None
    return key


def test_an_import_refused_for_want_of_nodes_leaves_no_patient_study_or_series(
    three_nodes: Deployment, archive: Archive
) -> None:
    for node in three_nodes.nodes[1:]:
        node.kill()
    ds = hostile.image(patient="NO-NODES")
    outcome = Ingestor(archive).ingest_stream(io.BytesIO(hostile.encode(ds)), "no-nodes.dcm")
    assert outcome.status == "rejected" and outcome.code == Rejection.STORAGE, outcome
    with archive.catalog.session() as session:
        assert session.scalar(select(Patient).where(Patient.patient_id == "NO-NODES")) is None
        assert session.scalar(select(func.count()).select_from(Study)) == 0
        assert session.scalar(select(func.count()).select_from(Series)) == 0
        assert session.scalar(select(func.count()).select_from(Node)) == 3


def test_a_refused_identity_undoes_the_written_bytes(
    three_nodes: Deployment, archive: Archive
) -> None:
    ingestor = Ingestor(archive)
    first = hostile.image(patient="OWNER")
    assert ingestor.ingest_stream(io.BytesIO(hostile.encode(first)), "a.dcm").status == "imported"
    held = {n.name: _held_by(three_nodes, n.name) for n in three_nodes.nodes}
    intruder = hostile.image(patient="SOMEONE-ELSE", study=first.StudyInstanceUID)
    outcome = ingestor.ingest_stream(io.BytesIO(hostile.encode(intruder)), "b.dcm")
    assert outcome.code == Rejection.IDENTITY, outcome
    assert {n.name: _held_by(three_nodes, n.name) for n in three_nodes.nodes} == held
    with archive.catalog.session() as session:
        assert session.scalar(select(Patient).where(Patient.patient_id == "SOMEONE-ELSE")) is None
        assert session.scalar(select(func.count()).select_from(StoredObject)) == 1


def test_a_study_deleted_or_a_patient_erased_meanwhile_is_filed_afresh(
    three_nodes: Deployment, archive: Archive
) -> None:
    """The ingestor remembers rows it filed; deleting them must not make it refuse or fail."""
    from medshard.security.erasure import delete_study, erase_patient
    from medshard.security.gate import Gate
    from medshard.security.principal import system_principal

    ingestor, gate, admin = Ingestor(archive), Gate(archive), system_principal("t")
    first = hostile.image(patient="FILED-1")
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID

    def again(patient: str = "FILED-1") -> str:
        ds = hostile.image(patient=patient, study=study)
        ds.SeriesInstanceUID = series
        return ingestor.ingest_stream(io.BytesIO(hostile.encode(ds)), "again.dcm").status

    assert ingestor.ingest_stream(io.BytesIO(hostile.encode(first)), "first.dcm").status == (
        "imported"
    )
    assert again() == "imported"  # from the cache
    delete_study(gate, admin, study, "mis-filed")
    assert again() == "imported"  # the cached series is gone: filed afresh
    erase_patient(gate, admin, "FILED-1", "erasure request")
    assert again() == "imported"  # a new patient row: not mistaken for another patient
    with archive.catalog.session() as session:
        owner = session.scalar(select(Study.patient_pk).where(Study.study_instance_uid == study))
        assert owner == session.scalar(select(Patient.id).where(Patient.patient_id == "FILED-1"))
    gate.close()


def test_the_duplicate_check_hashes_the_whole_stream_wherever_it_stands() -> None:
    from medshard.ingest.pipeline import file_sha256

    stream = io.BytesIO(b"x" * 3_000_000)
    stream.read()  # e.g. after a write that failed on a concurrent duplicate
    assert file_sha256(stream) == hashlib.sha256(b"x" * 3_000_000).hexdigest()
    assert stream.tell() == 0


def test_a_large_object_is_striped_over_the_nodes_and_reads_back_whole(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path, node_count=4)
    try:
        settings = dataclasses.replace(dep.settings, chunk_size=CHUNK)
        with Archive(settings) as opened:
            data = os.urandom(32 * CHUNK + 123)
            put = opened.put_object(PatientValues("STRIPED"), io.BytesIO(data), _link_study)
            with opened.catalog.session() as session:
                rows = session.execute(
                    select(Chunk.idx, Replica.node_pk)
                    .join(Replica, Replica.chunk_pk == Chunk.id)
                    .where(Chunk.object_pk == put.object_pk)
                ).all()
            sets: dict[int, set[int]] = {}
            for idx, node_pk in rows:
                sets.setdefault(idx, set()).add(node_pk)
            assert len(sets) == 33 and all(len(nodes) == 3 for nodes in sets.values())
            assert len({frozenset(nodes) for nodes in sets.values()}) > 1  # not one replica set
            assert opened.store.read_all(archive_key(opened, put.object_pk)) == data
            reader = opened.store.read(archive_key(opened, put.object_pk))
            assert next(reader) == data[:CHUNK]
            reader.close()  # a reader that stops early cancels its read-ahead
    finally:
        for proc in dep.nodes:
            proc.stop()
