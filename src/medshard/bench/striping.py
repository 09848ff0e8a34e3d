"""`medshard bench striping`: one large object read back from striped chunks vs from one node.

Both layouts run in one go on this machine, through the archive's own read path (fetch,
verify, decrypt, hash), as the service reads: first a cluster of ``nodes`` nodes with k=3,
each chunk on its own replica set and read with read-ahead; then one node holding every
chunk (k=1). The ratio of the two read rates is the figure.

Each pair runs twice: over bare loopback, where every node shares this machine's page cache
and the reader's CPU is the limit, and with every node behind a link of ``link_mb_s``
(:mod:`.link`, a hospital node's uplink), where one node's link is the limit, as in a region.
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medshard.bench.ingest import start_cluster
from medshard.catalog.db import Catalog
from medshard.catalog.lookups import object_key_of
from medshard.catalog.writes import PatientValues
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import register_node
from medshard.config import load_settings
from medshard.node.launcher import NodeProcess, free_port

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


@contextmanager
def _links(home: Path, procs: list[NodeProcess], mb_s: float) -> Iterator[None]:
    """Every node reached through its own link of ``mb_s`` (none when 0)."""
    if not mb_s:
        yield
        return
    ports = [free_port() for _ in procs]
    specs = [f"{port}=127.0.0.1:{proc.port}" for port, proc in zip(ports, procs, strict=True)]
    link = subprocess.Popen(
        [sys.executable, "-m", "medshard.bench.link", "--mb-s", str(mb_s), *specs],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert link.stdout is not None and link.stdout.readline().strip() == "ready"
        catalog = Catalog(load_settings(home).database_url)
        for port, proc in zip(ports, procs, strict=True):
            register_node(
                catalog, name=proc.name, url=f"http://127.0.0.1:{port}", site=proc.site,
                capacity_bytes=0,
            )  # fmt: skip
        catalog.dispose()
        yield
    finally:
        link.terminate()
        link.wait(10)


def _pair(root: Path, size: int, nodes: int, runs: int, link_mb_s: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, count, replicas in (("striped", nodes, 3), ("one_node", 1, 1)):
        home, procs = start_cluster(root / label, count)
        try:
            with _links(home, procs, link_mb_s):
                results[label] = {"nodes": count, **_read_rate(home, size, replicas, runs)}
        finally:
            for proc in procs:
                proc.stop()
    results["ratio_striped_to_one_node"] = round(
        results["striped"]["mb_s"] / results["one_node"]["mb_s"], 2
    )
    return results


def run_striping_bench(
    *, size_mb: int = 1024, nodes: int = 4, runs: int = 3, link_mb_s: float = 125.0
) -> dict[str, Any]:
    size = size_mb * MiB
    with tempfile.TemporaryDirectory(prefix="medshard-bench-stripe-", dir=os.getcwd()) as tmp:
        loopback = _pair(Path(tmp) / "loopback", size, nodes, runs, 0)
        linked = _pair(Path(tmp) / "links", size, nodes, runs, link_mb_s) if link_mb_s else None
    return {
        "benchmark": "striping",
        "object_mb": size_mb,
        "machine": {"cpus": os.cpu_count()},
        "loopback": loopback,
        **({"links": {"link_mb_s": link_mb_s, **linked}} if linked else {}),
        "goal_ratio": 2.0,
        "what": "read of one object through the archive's read path (fetch, verify, decrypt); "
        "loopback: nodes share this machine's page cache and CPU; links: each node behind its "
        "own link of link_mb_s (medshard.bench.link), as nodes at hospitals are",
    }
