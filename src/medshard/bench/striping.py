"""`medshard bench striping`: one large object read back from striped chunks vs from one node.

Both layouts run in one go on this machine, through the archive's own read path (fetch,
verify, decrypt, hash), as the service reads: first a cluster of ``nodes`` nodes with k=3,
each chunk on its own replica set and read with read-ahead; then one node holding every
chunk (k=1). The ratio of the two read rates is the figure.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from medshard.bench.ingest import start_cluster
from medshard.catalog.lookups import object_key_of
from medshard.catalog.writes import PatientValues
from medshard.cluster.archive import Archive
from medshard.config import load_settings

MiB = 1 << 20


class _Pattern(io.RawIOBase):
    """``size`` bytes of incompressible-looking data without holding them in memory."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.block = os.urandom(MiB)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, MiB)
        buffer[:n] = self.block[:n]
        self.left -= n
        return n


def _read_rate(home: Path, size: int, replicas: int, runs: int) -> dict[str, Any]:
    settings = load_settings(home)
    settings.replicas, settings.write_quorum = replicas, min(2, replicas)
    settings.save()
    with Archive.open(home) as archive:
        stream = io.BufferedReader(_Pattern(size), buffer_size=MiB)
        put = archive.put_object(
            PatientValues("BENCH-STRIPE"), stream, lambda *_: None, kind="blob"
        )
        with archive.catalog.session() as session:
            key = object_key_of(session, put.object_pk)
        assert key is not None
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            read = sum(len(piece) for piece in archive.store.read(key))
            seconds.append(time.perf_counter() - start)
            assert read == size
    best = statistics.median(seconds)
    return {
        "replicas": replicas,
        "seconds_median": round(best, 3),
        "mb_s": round(size / MiB / best, 1),
    }


def run_striping_bench(*, size_mb: int = 1024, nodes: int = 4, runs: int = 3) -> dict[str, Any]:
    size = size_mb * MiB
    with tempfile.TemporaryDirectory(prefix="medshard-bench-stripe-", dir=os.getcwd()) as tmp:
        results = {}
        for label, count, replicas in (("striped", nodes, 3), ("one_node", 1, 1)):
            root = Path(tmp) / label
            home, procs = start_cluster(root, count)
            try:
                results[label] = {"nodes": count, **_read_rate(home, size, replicas, runs)}
            finally:
                for proc in procs:
                    proc.stop()
    return {
        "benchmark": "striping",
        "object_mb": size_mb,
        "machine": {"cpus": os.cpu_count()},
        **results,
        "ratio_striped_to_one_node": round(
            results["striped"]["mb_s"] / results["one_node"]["mb_s"], 2
        ),
        "goal_ratio": 2.0,
    }
