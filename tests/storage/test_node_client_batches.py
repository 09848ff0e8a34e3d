"""NodeClient coalescing concurrent puts into batch requests, against a real node process."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from medshard.errors import (
    ChecksumMismatchError,
    InvalidInputError,
    NodeFullError,
    NodeUnavailableError,
)
from medshard.storage.node_client import NodeClient, Response
from medshard.storage.put_batcher import Outcome
from tests.node.conftest import SECRET, StartNode, chunk


def put_concurrently(client: NodeClient, items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
    """Each put from its own thread, released together; each caller's result or exception."""
    start = threading.Barrier(len(items))

    def one(item: tuple[str, bytes]) -> Outcome:
        start.wait()
        try:
            return client.put(*item)
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(one, items, timeout=60))


def test_concurrent_puts_take_fewer_requests_and_each_caller_gets_its_own_answer(
    start_node: StartNode,
) -> None:
    node = start_node(capacity_bytes=11 * 100_000)  # room for 11 chunks of 100 KB
    with NodeClient("n1", node.url, SECRET) as client:
        there = chunk(100_000)
        assert client.put(*there) is True  # alone: a plain PUT
        good = [chunk(100_000) for _ in range(17)]
        other = chunk(100_000)
        bad = (other[0], os.urandom(1000))  # bytes that do not hash to the id
        items = [there, bad, *good, ("not-a-hash", b"x")]
        outcomes = put_concurrently(client, items)
        assert outcomes[0] is False  # already there
        assert isinstance(outcomes[1], ChecksumMismatchError) and outcomes[1].expected == bad[0]
        assert isinstance(outcomes[-1], InvalidInputError)  # a malformed id goes alone: 400
        stored = [o for o in outcomes[2:-1] if o is True]
        full = [o for o in outcomes[2:-1] if isinstance(o, NodeFullError)]
        assert (len(stored), len(full)) == (10, 7)
        assert all("507" in str(e) for e in full)
        health = client.health()
        assert health["load"]["batches_total"] >= 1
        assert client.batcher is not None and client.batcher.batches < client.batcher.puts
        assert health["chunks"] == 1 + len(stored)
        assert not client.exists(bad[0])
        for (cid, data), outcome in zip(items[2:-1], outcomes[2:-1], strict=True):
            assert client.exists(cid) is (outcome is True)
            if outcome is True:
                assert client.get(cid) == data


def test_a_node_killed_mid_batch_fails_the_batch_callers_and_nothing_hangs(
    start_node: StartNode,
) -> None:
    node = start_node()
    assert node.pid is not None
    pid = node.pid
    with NodeClient("n1", node.url, SECRET, timeout=10, batch_in_flight=1) as client:
        assert client.batcher is not None
        client.health()
        real_send = client.batcher._send
        sizes: list[int] = []

        def send(items: Sequence[tuple[str, bytes]]) -> Sequence[Outcome]:
            sizes.append(len(items))
            if len(items) > 1:  # freeze the node under this batch, then kill it
                os.kill(pid, signal.SIGSTOP)
                threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
            return real_send(items)

        client.batcher._send = send
        os.kill(pid, signal.SIGSTOP)  # the first put stays in flight; the others queue
        items = [chunk(300_000) for _ in range(12)]
        with ThreadPoolExecutor(len(items)) as pool:
            first = pool.submit(client.put, *items[0])
            while not sizes:
                time.sleep(0.001)
            rest = [pool.submit(client.put, *item) for item in items[1:]]
            while client.batcher.puts < len(items):
                time.sleep(0.001)
            os.kill(pid, signal.SIGCONT)
            assert first.result(20) is True
            started = time.monotonic()
            for job in rest:
                with pytest.raises(NodeUnavailableError):
                    job.result(20)
            assert time.monotonic() - started < 15
        assert sizes == [1, len(items) - 1]  # one batch of all the queued ones, killed
        with pytest.raises(NodeUnavailableError):
            client.put(*chunk(100_000))


def test_a_node_without_batches_gets_every_chunk_as_a_put(
    start_node: StartNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older node answers POST /chunks 401 (it signs no body there) or 404: the chunks of
    the batch go one PUT each, and each caller still gets its own answer."""
    node = start_node()
    with NodeClient("n1", node.url, SECRET, batch_in_flight=1) as client:
        real_call = client._call
        refused: list[int] = []

        def old_node(method: str, path: str, *args: Any, **kwargs: Any) -> Response:
            if method == "POST":
                refused.append(1)
                return Response(401, {}, b'{"error": "bad signature"}')
            return real_call(method, path, *args, **kwargs)

        monkeypatch.setattr(client, "_call", old_node)
        items = [chunk(100_000) for _ in range(16)]
        bad = (chunk(100_000)[0], b"not these bytes")
        outcomes = put_concurrently(client, [*items, bad])
        assert refused and outcomes[:-1] == [True] * 16
        assert isinstance(outcomes[-1], ChecksumMismatchError)
        assert sorted(client.list_ids()) == sorted(cid for cid, _ in items)
