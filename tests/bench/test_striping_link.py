"""The emulated node link of `bench striping`, and reads of a striped object spread over nodes."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from medshard.catalog.lookups import object_key_of
from medshard.catalog.writes import PatientValues
from medshard.cluster.archive import Archive
from medshard.node.launcher import NodeAuth, free_port
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment


@pytest.fixture
def linked_node(deployment: Deployment) -> Iterator[str]:
    """The first node behind a 20 MB/s link; yields the link's URL."""
    node, port = deployment.nodes[0], free_port()
    spec = f"{port}=127.0.0.1:{node.port}"
    link = subprocess.Popen(
        [sys.executable, "-m", "medshard.bench.link", "--mb-s", "20", spec],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert link.stdout is not None and link.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        link.terminate()
        link.wait(10)


def test_the_link_caps_what_a_node_sends(deployment: Deployment, linked_node: str) -> None:
    node, secret = deployment.nodes[0], deployment.settings.node_secret
    data = os.urandom(6_000_000)
    chunk_id = hashlib.sha256(data).hexdigest()
    with NodeClient(node.name, node.url, secret) as direct:
        direct.put(chunk_id, data)
    with NodeClient(node.name, linked_node, secret) as client:
        began = time.perf_counter()
        assert client.get(chunk_id) == data  # the bytes pass through unchanged
        seconds = time.perf_counter() - began
    assert seconds >= 0.25, seconds  # 6 MB at 20 MB/s is 0.3 s, less the first burst


def test_a_striped_objects_chunks_are_read_from_several_nodes(deployment: Deployment) -> None:
    settings = dataclasses.replace(deployment.settings, chunk_size=256 * 1024)
    data = os.urandom(8 * 1024 * 1024)  # 32 chunks over 4 nodes, k=3
    with Archive(settings) as archive:
        put = archive.put_object(
            PatientValues("STRIPE-1"), io.BytesIO(data), lambda *_: None, kind="blob"
        )
        with archive.catalog.session() as session:
            key = object_key_of(session, put.object_pk)
        assert key is not None
        before = _gets(deployment)
        assert archive.store.read_all(key) == data
        after = _gets(deployment)
    served = {name: after[name] - before[name] for name in after}
    assert sum(served.values()) == 32
    # read ahead keeps 4 chunks in flight: they go to several nodes, not all to the fastest
    # (before reads were spread, one node served 25 of the 32)
    assert sum(1 for n in served.values() if n) >= 3 and max(served.values()) <= 21, served


def _gets(dep: Deployment) -> dict[str, int]:
    counts = {}
    for node in dep.nodes:
        auth = NodeAuth(dep.settings.node_secret, node.name)
        health = httpx.get(f"{node.url}/health", auth=auth, timeout=10).json()
        counts[node.name] = int(health["load"]["gets_total"])
    return counts
