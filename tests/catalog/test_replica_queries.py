"""The catalog's replica, chunk, deletion-queue and topology statements that repair, drain,
rebalancing, reconciliation and the node pool call: on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from medshard.catalog.chunks import chunk_exists, chunks_on_node, chunks_sharing_nodes
from medshard.catalog.db import Catalog, migrate
from medshard.catalog.deletion_queue import (
    chunk_ids_queued_for,
    pending_deletions,
    queued_deletions,
    settle_deletions,
)
from medshard.catalog.models import utcnow
from medshard.catalog.replicas import (
    add_or_restore_replica,
    bad_replica_count,
    mark_replicas,
    replica_counts_per_node,
    replicas_of_chunk,
    replicas_of_chunk_ids,
    switch_out_replica,
)
from medshard.catalog.topology_rows import (
    mark_drained,
    new_node,
    new_site,
    node_named,
    nodes_by_name,
    save_node_health,
)
from medshard.catalog.writes import ObjectRow, PatientValues, ensure_patient, insert_object

#: Chunk "a" has copies on n1 and n2, chunk "b" on n1 only, chunk "c" none.
COPIES = {"a": ("n1", "n2"), "b": ("n1",), "c": ()}


@pytest.fixture
def catalog(tmp_path: Path, db_url: str) -> Iterator[Catalog]:
    url = db_url or f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate(url)
    cat = Catalog(url)
    with cat.transaction() as session:
        site = new_site(session, "st-marys")
        session.flush()
        for name in ("n1", "n2", "n3"):
            new_node(session, name=name, url=f"http://{name}", site_id=site.id, capacity_bytes=0)
        session.flush()
        pks = {name: node.id for name in ("n1", "n2", "n3") if (node := node_named(session, name))}
        patient = ensure_patient(
            session, PatientValues("PAT-1"), shard=1, wrapped_key=b"k", key_id="m"
        )
        chunks = [(i, cid, 10, [pks[n] for n in COPIES[cid]]) for i, cid in enumerate(COPIES)]
        insert_object(
            session, patient, ObjectRow("key", "dicom", "x", 30, "0" * 64, 10, b"w", chunks)
        )
    yield cat
    cat.dispose()


def _pk(catalog: Catalog, name: str) -> int:
    with catalog.session() as session:
        node = node_named(session, name)
        assert node is not None
        return node.id


def test_a_copy_restored_or_added_twice_is_one_ok_row(catalog: Catalog) -> None:
    n1, n3 = _pk(catalog, "n1"), _pk(catalog, "n3")
    with catalog.session() as session:
        [(_cid, chunk_pk, _node, _state)] = replicas_of_chunk_ids(session, ["b"])
        [replica] = replicas_of_chunk(session, chunk_pk)
    with catalog.transaction() as session:
        mark_replicas(session, [replica.id], "corrupt")
    with catalog.session() as session:
        assert bad_replica_count(session) == 1
        assert replica_counts_per_node(session, state="ok").get(n1) == 1
    for _ in range(2):
        with catalog.transaction() as session:
            add_or_restore_replica(session, chunk_pk, n1)
            add_or_restore_replica(session, chunk_pk, n3)
    with catalog.session() as session:
        assert sorted((r.node_pk, r.state) for r in replicas_of_chunk(session, chunk_pk)) == [
            (n1, "ok"),
            (n3, "ok"),
        ]
        assert bad_replica_count(session) == 0


def test_a_switched_out_copy_leaves_the_catalog_and_queues_its_delete(catalog: Catalog) -> None:
    n1, n2 = _pk(catalog, "n1"), _pk(catalog, "n2")
    with catalog.session() as session:
        chunk_pk = replicas_of_chunk_ids(session, ["a"])[0][1]
    with catalog.transaction() as session:
        switch_out_replica(session, chunk_pk, "a", n1)
    with catalog.session() as session:
        assert [r.node_pk for r in replicas_of_chunk(session, chunk_pk)] == [n2]
        assert chunk_ids_queued_for(session, n1) == {"a"}
        [(queue_pk, chunk_id, node_pk)] = queued_deletions(session, limit=10)
    assert (chunk_id, node_pk) == ("a", n1)
    with catalog.transaction() as session:
        settle_deletions(session, done=[], failed=[queue_pk])
    with catalog.session() as session:
        assert pending_deletions(session) == 1
    with catalog.transaction() as session:
        settle_deletions(session, done=[queue_pk], failed=[])
    with catalog.session() as session:
        assert pending_deletions(session) == 0


def test_chunks_are_found_by_the_nodes_holding_them(catalog: Catalog) -> None:
    n1, n2 = _pk(catalog, "n1"), _pk(catalog, "n2")
    with catalog.session() as session:
        shared = chunks_sharing_nodes(session, [n1, n2], copies=2)
        held = chunks_on_node(session, n1, limit=10)
        rows = replicas_of_chunk_ids(session, ["c", "unknown"])
    assert [c.chunk_id for c in shared] == ["a"]
    assert sorted(c.chunk_id for c in held) == ["a", "b"]
    assert [len(c.replicas) for c in shared] == [2]  # loaded with the batch, usable now
    assert [(r[0], r[2], r[3]) for r in rows] == [("c", None, None)]  # known, no copy
    with catalog.session() as session:
        assert chunk_exists(session, rows[0][1])
        assert not chunk_exists(session, 10**6)


def test_only_a_draining_node_is_marked_drained(catalog: Catalog) -> None:
    n1, n2 = _pk(catalog, "n1"), _pk(catalog, "n2")
    with catalog.transaction() as session:
        node = node_named(session, "n1")
        assert node is not None
        node.admin_state = "draining"
    with catalog.transaction() as session:
        assert mark_drained(session, n1)
        assert not mark_drained(session, n2)
        assert not mark_drained(session, 10**6)
    with catalog.session() as session:
        states = {n.name: n.admin_state for n in nodes_by_name(session)}
    assert states == {"n1": "drained", "n2": "active", "n3": "active"}


def _save(session: Session, pk: int, seen: tuple[datetime, int, int] | None) -> datetime | None:
    return save_node_health(
        session,
        pk,
        state="alive",
        reliability=0.5,
        coordinate=(1.0, 2.0, 3.0, 0.4),
        rtt_ms=1.0,
        seen=seen,
    )


def test_node_health_is_saved_and_the_last_answer_kept(catalog: Catalog) -> None:
    n1 = _pk(catalog, "n1")
    with catalog.transaction() as session:
        assert _save(session, n1, None) is None  # never answered yet
        seen = _save(session, n1, (utcnow(), 7, 3))
        assert _save(session, 10**6, None) is None  # removed meanwhile: nothing saved
    with catalog.transaction() as session:
        again = _save(session, n1, None)
        node = node_named(session, "n1")
        assert node is not None
        assert (node.used_bytes, node.chunk_count, node.coord_error) == (7, 3, 0.4)
    assert seen is not None and again is not None
    assert again.replace(tzinfo=None) == seen.replace(tzinfo=None)
