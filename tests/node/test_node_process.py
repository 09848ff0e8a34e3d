"""Real node processes on 127.0.0.1, driven over HTTP through NodeClient.

Faults are real: SIGKILL in the middle of a stream of writes, bytes flipped in the node's
files on disk, a capacity limit, a second node fighting for the same data directory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import nullcontext
from pathlib import Path

import httpx
import pytest

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    NodeUnavailableError,
    NotFoundError,
)
from medshard.node.launcher import NodeAuth, free_port, start_node_process
from medshard.storage.chunkstore import ChunkStat
from medshard.storage.node_client import NodeClient
from tests.node.conftest import SECRET, StartNode, chunk


def test_put_get_head_delete_list_on_two_nodes(start_node: StartNode) -> None:
    n1, n2 = start_node("n1"), start_node("n2")
    with NodeClient("n1", n1.url, SECRET) as c1, NodeClient("n2", n2.url, SECRET) as c2:
        a, b = chunk(), chunk(4 * 1024 * 1024 + 16)  # a typical and the largest chunk
        assert c1.put(*a) is True
        assert c1.put(*a) is False
        assert c1.put(*b) is True
        assert c1.get(a[0]) == a[1]
        assert c1.get(b[0]) == b[1]  # streamed in pieces by the node
        assert c1.stat(b[0]) == ChunkStat(b[0], len(b[1]))
        assert sorted(c1.list_ids()) == sorted([a[0], b[0]])
        assert not c2.exists(a[0])  # nodes are independent
        with pytest.raises(NotFoundError):
            c2.get(a[0])
        with pytest.raises(NotFoundError):
            c2.stat(a[0])

        assert c1.delete(a[0]) is True
        assert c1.delete(a[0]) is False
        assert not c1.exists(a[0])

        health = c1.health()
        assert health["name"] == "n1" and health["site"] == "site-a"
        assert health["chunks"] == 1 and health["used_bytes"] == len(b[1])
        assert health["version"] == 3 and health["free_disk_bytes"] > 0
        assert health["load"]["puts_total"] == 3 and health["load"]["gets_total"] >= 2
        assert set(health) >= {"capacity_bytes", "uptime_s"}


def test_every_request_needs_the_secret(start_node: StartNode) -> None:
    node = start_node()
    cid, data = chunk(1000)
    with httpx.Client(base_url=node.url) as raw:
        assert raw.get("/health").status_code == 401
        assert raw.put(f"/chunks/{cid}", content=data).status_code == 401
        assert raw.get("/chunks", auth=NodeAuth("wrong", "n1")).status_code == 401
        ok = raw.put(f"/chunks/{cid}", content=data, auth=NodeAuth(SECRET, "n1"))
        assert ok.status_code == 201
        assert raw.get(f"/chunks/{cid}").status_code == 401
    with NodeClient("n1", node.url, "wrong") as client, pytest.raises(NodeUnavailableError):
        client.get(cid)


def test_bad_requests_are_refused_with_their_status(start_node: StartNode) -> None:
    node = start_node()
    cid, data = chunk(1000)
    with NodeClient("n1", node.url, SECRET) as client:
        with pytest.raises(ChecksumMismatchError) as err:
            client.put(cid, data + b"!")
        assert err.value.expected == cid
        assert not client.exists(cid)
        with pytest.raises(InvalidInputError):
            client.put("not-a-hash", data)
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, node.name)) as raw:
        assert raw.put(f"/chunks/{cid}", content=data + b"!").status_code == 409
        assert raw.get("/chunks/ABC").status_code == 400
        assert raw.head(f"/chunks/{cid}").status_code == 404
        assert raw.delete(f"/chunks/{cid}").status_code == 404
        assert raw.post(f"/chunks/{cid}").status_code == 405
        assert raw.get("/nope").status_code == 404


@pytest.mark.parametrize("shared", [False, True], ids=["client-each", "shared-batched"])
def test_kill_9_mid_write_loses_no_acknowledged_chunk(start_node: StartNode, shared: bool) -> None:
    """Writers with a client each send one PUT per chunk; writers sharing one client send
    batches (POST /chunks): either way, whatever was acknowledged survives kill -9."""
    node = start_node()
    acked: dict[str, bytes] = {}
    lock = threading.Lock()
    enough = threading.Event()
    common = NodeClient("n1", node.url, SECRET, timeout=5)

    def writer() -> None:
        own = nullcontext(common) if shared else NodeClient("n1", node.url, SECRET, timeout=5)
        with own as client:
            while True:
                cid, data = chunk(200_000)
                try:
                    client.put(cid, data)
                except NodeUnavailableError:
                    return  # killed under us: this one was never acknowledged
                with lock:
                    acked[cid] = data
                    if len(acked) >= 60:
                        enough.set()

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    assert enough.wait(20), "writers made no progress"
    node.kill()  # SIGKILL while writes are in flight
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    if shared:
        assert common.batcher is not None and common.batcher.batches < common.batcher.puts / 2
    common.close()

    node.restart().wait_ready()
    with NodeClient("n1", node.url, SECRET) as client:
        stored = set(client.list_ids())
        assert set(acked) <= stored
        for cid, data in acked.items():
            assert client.get(cid) == data


def test_flipped_bytes_on_disk_are_served_so_readers_catch_them(start_node: StartNode) -> None:
    node = start_node()
    cid, data = chunk()
    with NodeClient("n1", node.url, SECRET) as client:
        client.put(cid, data)
        flipped = 0
        for path in node.data_dir.rglob("vol-*.dat"):
            blob = path.read_bytes()
            at = blob.find(data[:4096])
            if at >= 0:
                with open(path, "r+b") as fh:
                    fh.seek(at + 1000)
                    fh.write(bytes(x ^ 0xFF for x in data[1000:1016]))
                flipped += 1
        assert flipped == 1
        served = client.get(cid)
        assert len(served) == len(data)
        assert hashlib.sha256(served).hexdigest() != cid
        assert client.put(cid, data) is True  # a repair's re-put replaces the rotten copy
        assert client.get(cid) == data


def test_capacity_exceeded_is_507(start_node: StartNode) -> None:
    node = start_node(capacity_bytes=700_000)
    a, b, c = chunk(), chunk(), chunk()
    with NodeClient("n1", node.url, SECRET) as client:
        client.put(*a)
        client.put(*b)
        with pytest.raises(NodeUnavailableError, match="507"):
            client.put(*c)
        assert not client.exists(c[0])
        assert client.health()["capacity_bytes"] == 700_000
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, node.name)) as raw:
        r = raw.put(f"/chunks/{c[0]}", content=c[1])
        assert r.status_code == 507 and "capacity" in r.json()["error"]


def test_disk_full_is_507(start_node: StartNode, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    os.symlink("/dev/full", tmp_path / "full" / "vol-00000001.dat")  # real ENOSPC on write
    node = start_node("full")
    cid, data = chunk(1000)
    with httpx.Client(base_url=node.url, auth=NodeAuth(SECRET, node.name)) as raw:
        r = raw.put(f"/chunks/{cid}", content=data)
        assert r.status_code == 507 and "disk full" in r.json()["error"]
        assert raw.head(f"/chunks/{cid}").status_code == 404


def test_stop_is_clean_and_failures_to_start_show_the_log(start_node: StartNode) -> None:
    node = start_node()
    cid, data = chunk(1000)
    with NodeClient("n1", node.url, SECRET) as client:
        client.put(cid, data)
        node.stop()
        assert node._proc is not None and node._proc.returncode == 0
        with pytest.raises(NodeUnavailableError):
            client.get(cid)
        node.restart().wait_ready()
        assert client.get(cid) == data  # the pooled client reconnects by itself

    rival = start_node_process("rival", "site-a", free_port(), node.data_dir, SECRET)
    try:
        with pytest.raises(NodeUnavailableError, match="in use by another node"):
            rival.wait_ready(timeout=10)
    finally:
        rival.stop()
    nosecret = start_node("n3", wait=False, secret="")
    with pytest.raises(NodeUnavailableError, match="MEDSHARD_NODE_SECRET"):
        nosecret.wait_ready(timeout=10)
