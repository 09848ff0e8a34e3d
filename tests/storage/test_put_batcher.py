"""PutBatcher on its own, with a fake ``send``: coalescing, caps, per-caller outcomes."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from medshard.errors import ChecksumMismatchError, NodeFullError, NodeUnavailableError
from medshard.storage.put_batcher import Outcome, PutBatcher


class FakeNode:
    """Records every batch; a chunk's outcome is decided by its id's first letter."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.batches: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def send(self, items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        with self._lock:
            self.batches.append([cid for cid, _ in items])
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
        out: list[Outcome] = []
        for cid, _data in items:
            if cid.startswith("full"):
                out.append(NodeFullError("n1", f"HTTP 507 on /chunks/{cid}"))
            elif cid.startswith("bad"):
                out.append(ChecksumMismatchError(f"chunk {cid}", cid, "0" * 64))
            else:
                out.append(not cid.startswith("old"))
        return out


def put_all(batcher: PutBatcher, ids: Sequence[str], size: int = 100) -> list[Outcome]:
    """Put every id from its own thread, all at once; each caller's result or exception."""
    start = threading.Barrier(len(ids))

    def one(cid: str) -> Outcome:
        start.wait()
        try:
            return batcher.put(cid, b"x" * size)
        except Exception as e:
            return e

    with ThreadPoolExecutor(len(ids)) as pool:
        return list(pool.map(one, ids, timeout=30))


def test_an_idle_put_goes_at_once_alone() -> None:
    node = FakeNode(delay=0)
    batcher = PutBatcher(node.send)
    assert batcher.put("new-1", b"x") is True
    assert batcher.put("old-1", b"x") is False
    assert node.batches == [["new-1"], ["old-1"]]
    assert (batcher.batches, batcher.puts) == (2, 2)


def test_concurrent_puts_share_requests_and_each_gets_its_own_outcome() -> None:
    node = FakeNode()
    batcher = PutBatcher(node.send, max_in_flight=1)
    ids = [f"{kind}-{i}" for i in range(8) for kind in ("new", "old", "full", "bad")]
    outcomes = put_all(batcher, ids)
    assert batcher.batches < len(ids) / 4  # coalesced
    assert sorted(cid for batch in node.batches for cid in batch) == sorted(ids)  # each once
    assert node.most_in_flight == 1
    for cid, outcome in zip(ids, outcomes, strict=True):
        if cid.startswith("new"):
            assert outcome is True
        elif cid.startswith("old"):
            assert outcome is False
        elif cid.startswith("full"):
            assert isinstance(outcome, NodeFullError) and cid in str(outcome)
        else:
            assert isinstance(outcome, ChecksumMismatchError) and outcome.expected == cid


def test_batches_respect_their_caps_and_the_in_flight_limit() -> None:
    node = FakeNode()
    batcher = PutBatcher(node.send, max_chunks=5, max_bytes=1000, max_in_flight=2)
    put_all(batcher, [f"new-{i}" for i in range(40)], size=300)  # 3 fit in 1000 bytes
    assert max(len(b) for b in node.batches) == 3
    assert node.most_in_flight <= 2
    node.batches.clear()
    big = PutBatcher(node.send, max_chunks=5, max_bytes=1000)
    assert put_all(big, [f"new-big-{i}" for i in range(4)], size=5000) == [True] * 4
    assert all(len(b) == 1 for b in node.batches)  # a chunk above the cap goes alone
    node.batches.clear()
    many = PutBatcher(node.send, max_chunks=5, max_in_flight=1)
    put_all(many, [f"new-{i}" for i in range(30)], size=10)
    assert max(len(b) for b in node.batches) == 5


def test_a_failed_batch_fails_its_callers_only_and_nothing_hangs() -> None:
    calls = 0
    gate = threading.Event()
    lock = threading.Lock()

    def send(items: Sequence[tuple[str, bytes]]) -> list[Outcome]:
        nonlocal calls
        with lock:
            calls += 1
            first = calls == 1
        if first:  # hold the first request so that the others queue behind it
            gate.wait(10)
            return [True] * len(items)
        raise NodeUnavailableError("n1", "ConnectionResetError: reset by peer")

    batcher = PutBatcher(send, max_in_flight=1)
    with ThreadPoolExecutor(12) as pool:
        first = pool.submit(batcher.put, "new-0", b"x")
        while calls < 1:
            time.sleep(0.001)
        rest = [pool.submit(batcher.put, f"new-{i}", b"x") for i in range(1, 12)]
        while batcher.puts < 12:
            time.sleep(0.001)
        gate.set()
        assert first.result(10) is True
        for job in rest:
            with pytest.raises(NodeUnavailableError, match="reset by peer"):
                job.result(10)
    assert batcher.batches == 2  # the held one, then all eleven queued behind it
    with pytest.raises(NodeUnavailableError):  # and the batcher still works afterwards
        batcher.put("new-12", b"x")


def test_a_sender_giving_the_wrong_number_of_outcomes_fails_the_batch() -> None:
    batcher = PutBatcher(lambda items: [])
    with pytest.raises(RuntimeError, match="0 outcomes for a batch of 1"):
        batcher.put("new-1", b"x")
