"""Batches of chunks: VolumeStore.put_many (one group commit) and POST /chunks on a real node.

Per-chunk outcomes (stored, already there, hash mismatch, full) so one bad chunk fails only
itself, and the batch signs its manifest. That every chunk a batch acknowledged survives
kill -9 is tested in test_node_process.py, beside the same for single PUTs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    NodeUnavailableError,
    StorageError,
)
from medshard.node.launcher import NodeAuth
from medshard.node.volume import HEADER_SIZE, VolumeStore
from medshard.storage.chunk_batch import BATCH_PATH, encode_manifest, manifest_sha256
from medshard.storage.node_auth import AUTH_HEADER, RequestSigner
from medshard.storage.node_client import NodeClient
from tests.node.conftest import SECRET, StartNode, chunk


def batch_body(items: Sequence[tuple[str, bytes]]) -> bytes:
    manifest = encode_manifest([(cid, len(data)) for cid, data in items])
    return manifest + b"".join(data for _cid, data in items)


def statuses(r: httpx.Response) -> list[int]:
    assert r.status_code == 200, r.text
    return [result["status"] for result in r.json()["results"]]


# -- VolumeStore.put_many ----------------------------------------------------------------------


def test_put_many_stores_all_with_one_fdatasync_and_answers_per_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        syncs.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    a, b, c, there = chunk(50_000), chunk(50_000), chunk(50_000), chunk(50_000)
    with VolumeStore(tmp_path) as store:
        store.put(*there)
        syncs.clear()
        bad = (a[0], os.urandom(100))
        outcomes = store.put_many([a, bad, there, b, ("XYZ", b"1"), a, (c[0], memoryview(c[1]))])
        assert len(syncs) == 1  # one group commit for the whole batch
        assert outcomes[0] is True and outcomes[3] is True and outcomes[6] is True
        assert isinstance(outcomes[1], ChecksumMismatchError) and outcomes[1].expected == a[0]
        assert outcomes[2] is False  # already there
        assert isinstance(outcomes[4], InvalidInputError)
        assert outcomes[5] is False  # the same id twice: stored once
        assert store.chunk_count == 4
        assert store.used_bytes == sum(len(d) for _, d in (a, b, c, there))
        assert store.volume_usage()[0].dead_bytes == 0  # nothing stored twice
    with VolumeStore(tmp_path) as store:
        for cid, data in (a, b, c, there):
            assert store.get(cid) == data


def test_put_many_capacity_is_per_chunk(tmp_path: Path) -> None:
    items = [chunk(400) for _ in range(4)]
    with VolumeStore(tmp_path, capacity_bytes=1000) as store:
        outcomes = store.put_many(items)
        assert outcomes[:2] == [True, True]
        assert all(isinstance(o, NodeUnavailableError) for o in outcomes[2:])
        assert "capacity" in str(outcomes[2])
        assert store.used_bytes == 800 and store.chunk_count == 2
        assert sum(p.stat().st_size for p in tmp_path.glob("vol-*.dat")) == 2 * (HEADER_SIZE + 400)


def test_put_many_a_failed_sync_fails_every_written_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    items = [chunk(50_000), chunk(50_000)]
    with VolumeStore(tmp_path) as store:
        monkeypatch.setattr(os, "fdatasync", broken)
        outcomes = store.put_many([*items, ("bad", b"")])
        assert all(isinstance(o, StorageError) and "fdatasync" in str(o) for o in outcomes[:2])
        assert isinstance(outcomes[2], InvalidInputError)  # its own error, not the sync's
        assert store.chunk_count == 0 and store.used_bytes == 0
        assert store.volume_usage()[0].size > 0  # written, never indexed
        monkeypatch.undo()


def test_batches_sharing_ids_do_not_deadlock(tmp_path: Path) -> None:
    items = [chunk(2000) for _ in range(40)]
    with VolumeStore(tmp_path) as store:
        threads = [
            threading.Thread(target=store.put_many, args=(order,))
            for order in (items, items[::-1], items[::2], items[1::2] + items[::3])
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads)
        assert store.chunk_count == 40
        assert store.used_bytes == 40 * 2000


# -- POST /chunks on a node process ------------------------------------------------------------


def test_batch_endpoint_answers_per_chunk(start_node: StartNode) -> None:
    node = start_node()
    a, b, there = chunk(50_000), chunk(50_000), chunk(50_000)
    other = chunk(50_000)
    bad = (other[0], os.urandom(3000))
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, node.name)) as raw:
        assert raw.put(f"/chunks/{there[0]}", content=there[1]).status_code == 201
        r = raw.post(BATCH_PATH, content=batch_body([a, bad, there, b, a]))
        assert statuses(r) == [201, 409, 200, 201, 200]
        assert r.json()["results"][1]["expected"] == other[0]
        assert raw.head(f"/chunks/{bad[0]}").status_code == 404
        for cid, data in (a, b, there):
            assert raw.get(f"/chunks/{cid}").content == data
        assert raw.post(BATCH_PATH, content=batch_body([])).json() == {"results": []}
        health = raw.get("/health").json()
        assert health["load"]["batches_total"] == 2 and health["load"]["puts_total"] == 6
        # framing that does not add up
        body = batch_body([a])
        assert raw.post(BATCH_PATH, content=body[:-1]).status_code == 400
        assert raw.post(BATCH_PATH, content=body + b"x").status_code == 400
        assert raw.post(BATCH_PATH, content=b"\x01").status_code == 400
        too_many = (100_000).to_bytes(4, "little")
        assert raw.post(BATCH_PATH, content=too_many).status_code == 413


def test_batch_endpoint_refuses_unsigned_and_altered_batches(start_node: StartNode) -> None:
    node = start_node()
    a, b = chunk(50_000), chunk(50_000)
    body = batch_body([a, b])
    with httpx.Client(base_url=node.url) as raw:
        assert raw.post(BATCH_PATH, content=body).status_code == 401
        assert raw.post(BATCH_PATH, content=body, auth=NodeAuth("wrong", "n1")).status_code == 401
        assert raw.post(BATCH_PATH, content=body, auth=NodeAuth(SECRET, "n2")).status_code == 401
        # signed for one manifest, sent with another: the ids and lengths are what is signed
        signer = RequestSigner(SECRET, "n1")
        header = signer.header("POST", BATCH_PATH, manifest_sha256(batch_body([a])[:44]))
        r = raw.post(BATCH_PATH, content=body, headers={AUTH_HEADER: header})
        assert r.status_code == 401
        header = signer.header("POST", BATCH_PATH, manifest_sha256(body[:84]))
        assert raw.post(BATCH_PATH, content=body, headers={AUTH_HEADER: header}).status_code == 200
        replay = raw.post(BATCH_PATH, content=body, headers={AUTH_HEADER: header})
        assert replay.status_code == 401 and "replayed" in replay.text
    with NodeClient("n1", node.url, SECRET) as client:
        assert client.exists(a[0]) and client.exists(b[0])


def test_batch_full_node_and_full_disk_are_per_chunk_507(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(capacity_bytes=120_000)
    items = [chunk(50_000) for _ in range(3)]
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, node.name)) as raw:
        r = raw.post(BATCH_PATH, content=batch_body(items))
        assert statuses(r) == [201, 201, 507]
        assert "capacity" in r.json()["results"][2]["error"]
        assert raw.head(f"/chunks/{items[2][0]}").status_code == 404
    (tmp_path / "full").mkdir()
    os.symlink("/dev/full", tmp_path / "full" / "vol-00000001.dat")  # real ENOSPC on write
    full = start_node("full")
    with httpx.Client(base_url=full.url, auth=NodeAuth(SECRET, full.name)) as raw:
        r = raw.post(BATCH_PATH, content=batch_body(items))
        assert statuses(r) == [507, 507, 507]
        assert all("disk full" in x["error"] for x in r.json()["results"])
