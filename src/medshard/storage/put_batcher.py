"""Coalescing of concurrent chunk PUTs to one node into batch requests (Nagle-like).

Most of a storage node's CPU per chunk copy goes to the request, not the bytes (HTTP parsing,
the ASGI hops, the signature, the thread-pool hop), so many small chunks travel best in one
request, as Haystack and SeaweedFS batch them. :class:`PutBatcher` does that without a timer
and without adding latency when idle: a put finding fewer than ``max_in_flight`` requests in
flight to the node goes at once (alone, if nobody else is waiting); while requests are in
flight, further puts queue up, and the next caller to find a free slot sends everything
queued (up to ``max_chunks`` and ``max_bytes``) in one request on behalf of all. No extra
thread: a caller sends, like the leader of a group commit. Each caller gets its own outcome:
the batch's ``send`` returns one per chunk, and an exception it raises fails every chunk of
that batch, never another.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

#: Defaults: a batch carries at most this many chunk bytes (one chunk above it goes alone)...
MAX_BATCH_BYTES: Final = 8 * 1024 * 1024
#: ... and at most this many chunks.
MAX_BATCH_CHUNKS: Final = 64

#: One outcome per chunk: True stored, False already there, or the error for that chunk.
Outcome = bool | BaseException
SendBatch = Callable[[Sequence[tuple[str, bytes]]], Sequence[Outcome]]


@dataclass(eq=False)
class _Put:
    chunk_id: str
    data: bytes
    taken: bool = False  # in a batch being sent
    outcome: Outcome | None = None


class PutBatcher:
    """Coalesces concurrent :meth:`put` calls into calls of ``send`` with several chunks.

    Parameters
    ----------
    send
        Sends one batch (one request) and returns one outcome per chunk, in order.
    max_bytes, max_chunks
        Caps of one batch (a single chunk larger than ``max_bytes`` goes alone).
    max_in_flight
        Batches in flight at once; a put waits only while this many are.

    Examples
    --------
    >>> batcher = PutBatcher(lambda items: [True] * len(items))
    >>> batcher.put("ab" * 32, b"x")
    True
    """

    def __init__(
        self,
        send: SendBatch,
        *,
        max_bytes: int = MAX_BATCH_BYTES,
        max_chunks: int = MAX_BATCH_CHUNKS,
        max_in_flight: int = 1,
    ) -> None:
        if max_chunks < 1 or max_in_flight < 1:
            raise ValueError("max_chunks and max_in_flight must be at least 1")
        self._send = send
        self._max_bytes = max_bytes
        self._max_chunks = max_chunks
        self._max_in_flight = max_in_flight
        self._cv = threading.Condition()
        self._queue: deque[_Put] = deque()
        self._in_flight = 0
        #: Batches sent and chunks put so far (``puts / batches`` is the mean batch size).
        self.batches = 0
        self.puts = 0

    def put(self, chunk_id: str, data: bytes) -> bool:
        """Put one chunk through a batch; returns or raises what ``send`` gave for it."""
        item = _Put(chunk_id, data)
        with self._cv:
            self._queue.append(item)
            self.puts += 1
        while True:
            with self._cv:
                while item.outcome is None and (
                    item.taken or self._in_flight >= self._max_in_flight
                ):
                    self._cv.wait()
                if item.outcome is not None:
                    break
                batch = self._take()  # item is still queued, so the batch is not empty
                self._in_flight += 1
                self.batches += 1
            self._send_batch(batch)
        if isinstance(item.outcome, BaseException):
            raise item.outcome
        return item.outcome

    def _take(self) -> list[_Put]:
        """The oldest queued puts that fit in one batch (the caller holds the lock)."""
        batch: list[_Put] = []
        size = 0
        while self._queue and len(batch) < self._max_chunks:
            n = len(self._queue[0].data)
            if batch and size + n > self._max_bytes:
                break
            item = self._queue.popleft()
            item.taken = True
            batch.append(item)
            size += n
        return batch

    def _send_batch(self, batch: list[_Put]) -> None:
        outcomes: Sequence[Outcome]
        interrupt: BaseException | None = None
        try:
            outcomes = self._send([(p.chunk_id, p.data) for p in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)}")
        except BaseException as e:  # every caller of this batch gets it, and nobody hangs
            outcomes = [e] * len(batch)
            interrupt = None if isinstance(e, Exception) else e
        with self._cv:
            self._in_flight -= 1
            for item, outcome in zip(batch, outcomes, strict=True):
                item.outcome = outcome
            self._cv.notify_all()
        if interrupt is not None:  # KeyboardInterrupt, SystemExit: the sender's own too
            raise interrupt
