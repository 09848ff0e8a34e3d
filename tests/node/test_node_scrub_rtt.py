"""The node endpoints behind scrubbing and network coordinates, on real node processes.

``GET /chunks/{id}/verify`` re-hashes the copy on the node's own disk (only the verdict
travels); ``GET /rtt`` has one node time signed /health calls to another.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medshard.errors import ChecksumMismatchError, InvalidInputError, NotFoundError
from medshard.node.launcher import NodeProcess, free_port, start_node_process
from medshard.storage.node_client import NodeClient

SECRET = "test-secret-for-scrub-and-rtt"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    nodes = [
        start_node_process(f"n{i}", "s", free_port(), tmp_path / f"n{i}", SECRET) for i in range(2)
    ]
    for node in nodes:
        node.wait_ready()
    yield nodes
    for node in nodes:
        node.stop()


def test_verify_tells_an_intact_copy_from_a_rotten_or_missing_one(
    pair: list[NodeProcess],
) -> None:
    node = pair[0]
    data = os.urandom(200_000)
    cid = hashlib.sha256(data).hexdigest()
    with NodeClient(node.name, node.url, SECRET) as client:
        client.put(cid, data)
        client.verify(cid)
        for path in node.data_dir.rglob("vol-*.dat"):
            blob = path.read_bytes()
            at = blob.find(data[:4096])
            if at >= 0:
                with open(path, "r+b") as fh:
                    fh.seek(at + 5000)
                    fh.write(bytes(b ^ 0x5A for b in data[5000:5008]))
        with pytest.raises(ChecksumMismatchError):
            client.verify(cid)
        with pytest.raises(NotFoundError):
            client.verify("0" * 64)
        with pytest.raises(InvalidInputError):
            client.verify("not-a-chunk-id")


def test_a_node_measures_its_rtt_to_a_peer(pair: list[NodeProcess]) -> None:
    a, b = pair
    with NodeClient(a.name, a.url, SECRET) as client:
        rtt = client.rtt_to(b.name, b.url)
        assert 0 < rtt < 1000
        with pytest.raises(InvalidInputError):
            client.rtt_to(b.name, "file:///etc/passwd")
