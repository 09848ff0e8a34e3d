"""Node processes for the tests of tests/node and tests/storage: started on free loopback
ports, ready when handed out, and every one stopped (or killed) after its test."""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from medshard.node.launcher import NodeProcess, free_port, start_node_process

SECRET = "test-node-secret"
StartNode = Callable[..., NodeProcess]


def chunk(n: int = 300_000) -> tuple[str, bytes]:
    data = os.urandom(n)
    return hashlib.sha256(data).hexdigest(), data


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    """Start nodes named ``name`` with data under ``tmp_path / name``."""
    started: list[NodeProcess] = []

    def start(
        name: str = "n1", wait: bool = True, secret: str = SECRET, capacity_bytes: int = 0
    ) -> NodeProcess:
        data_dir = tmp_path / name
        node = start_node_process(name, "site-a", free_port(), data_dir, secret, capacity_bytes)
        started.append(node)
        if wait:
            node.wait_ready()
        return node

    yield start
    for node in started:
        if node.is_alive() and node.pid is not None:
            os.kill(node.pid, signal.SIGCONT)  # a test may have frozen it
        node.stop(timeout=5)
