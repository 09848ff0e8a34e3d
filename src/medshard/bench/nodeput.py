"""CPU per chunk copy written to storage nodes: one PUT per chunk beside batched PUTs.

Two measurements, each mode beside the other in one run (alternating for ``rounds``):

``micro``
    One node process on loopback; ``writers`` threads of this process put fresh chunks of
    ``size`` bytes through :class:`~medshard.storage.node_client.NodeClient`, made beforehand
    so that only the copies are measured.
``service``
    The write path as the service runs it: a deployment of ``nodes`` node processes (k=3)
    and an in-process import of generated DICOM instances by ``writers`` threads (parse,
    encrypt, k copies through the node pool, catalog). Its client CPU is all of the import's.

CPU is process CPU time (user + system), not wall time, so the figures hold on a loaded
machine: a node's from ``/proc/PID/stat``, this process's from :func:`time.process_time`.
Run ``medshard bench nodeput [--instances N]`` (``--help`` for the sizes); it prints JSON.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medshard.node.launcher import NodeProcess, free_port, start_node_process
from medshard.storage.node_client import NodeClient

if TYPE_CHECKING:
    from medshard.cluster.archive import Archive

SECRET = "bench-node-secret"
MODES = ("single", "batched")
_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # utime, stime (fields 14, 15)


def _measured(nodes: Sequence[NodeProcess], copies: int, run: Callable[[], int]) -> dict[str, Any]:
    """Run ``run`` (it returns the requests it made) and report CPU per chunk copy."""
    pids = [node.pid for node in nodes if node.pid is not None]
    before = [process_cpu_s(pid) for pid in pids]
    mine, wall = time.process_time(), time.perf_counter()
    requests = run()
    wall, mine = time.perf_counter() - wall, time.process_time() - mine
    after = [process_cpu_s(pid) for pid in pids]
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return {
        "node_cpu_ms_per_copy": 1000 * (user + system) / copies,
        "node_user_ms_per_copy": 1000 * user / copies,
        "node_system_ms_per_copy": 1000 * system / copies,
        "client_cpu_ms_per_copy": 1000 * mine / copies,
        "requests_per_copy": requests / copies,
        "copies_per_s_wall": copies / wall,
    }


def _summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians per mode, and batched over single for CPU per copy."""
    out: dict[str, Any] = {
        mode: {k: round(statistics.median(f[k] for f in figures), 4) for k in figures[0]}
        for mode, figures in runs.items()
    }
    single, batched = out["single"], out["batched"]
    ratio = {
        key: round(batched[key] / single[key], 3)
        for key in ("node_cpu_ms_per_copy", "client_cpu_ms_per_copy")
    }
    total = [m["node_cpu_ms_per_copy"] + m["client_cpu_ms_per_copy"] for m in (single, batched)]
    ratio["total_cpu_per_copy"] = round(total[1] / total[0], 3)
    out["batched_over_single"] = ratio
    return out


def _chunks(n: int, size: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(n):
        data = os.urandom(size)
        out.append((hashlib.sha256(data).hexdigest(), data))
    return out


def _put_all(client: NodeClient, chunks: Sequence[tuple[str, bytes]], writers: int) -> int:
    todo, lock = iter(chunks), threading.Lock()

    def writer() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            client.put(*item)

    with ThreadPoolExecutor(writers) as pool:
        for job in [pool.submit(writer) for _ in range(writers)]:
            job.result()
    return client.batcher.batches if client.batcher else len(chunks)


def micro(
    root: Path, chunks: int, size: int, writers: int, rounds: int, in_flight: int
) -> dict[str, Any]:
    """``writers`` threads putting ``chunks`` chunks of ``size`` bytes to one node."""
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    node = start_node_process("bench", "site-a", free_port(), root / "node", SECRET)
    try:
        node.wait_ready()
        for _ in range(rounds):
            for mode in MODES:
                data = _chunks(chunks, size)
                with NodeClient(
                    "bench",
                    node.url,
                    SECRET,
                    batch_puts=mode == "batched",
                    batch_in_flight=in_flight,
                ) as client:
                    client.health()  # connected before measuring
                    run = partial(_put_all, client, data, writers)
                    runs[mode].append(_measured([node], len(data), run))
    finally:
        node.stop()
    return {"chunks": chunks, "chunk_bytes": size, "writers": writers, **_summary(runs)}


def _import(archive: Archive, folder: Path, token: str, writers: int, copies: int) -> int:
    """Import every file of ``folder``; the requests that took their copies to the nodes."""
    from medshard.ingest.batch import import_files
    from medshard.security.local import store_access_for

    report = import_files(archive, [folder], access=store_access_for(token), workers=writers)
    if report["rejected"]:
        raise RuntimeError(f"rejected: {report['rejected'][:1]}")
    batchers = [h.client.batcher for h in archive.pool.nodes.values() if h.client.batcher]
    return sum(b.batches for b in batchers) if batchers else copies


def service(root: Path, instances: int, writers: int, nodes: int, rounds: int) -> dict[str, Any]:
    """An in-process import of ``instances`` generated instances per run into a deployment."""
    from medshard.bench.data import generate_instances
    from medshard.bench.ingest import bench_account, start_cluster
    from medshard.cluster.archive import Archive

    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    home, procs = start_cluster(root, nodes)
    try:
        token = bench_account(home)
        for r in range(rounds):
            for i, mode in enumerate(MODES):
                folder = root / f"input-{r}-{mode}"
                size = generate_instances(folder, instances, seed=1 + 2 * r + i)
                with Archive.open(home) as archive:
                    if mode == "single":
                        for handle in archive.pool.nodes.values():
                            handle.client.batcher = None
                    copies = instances * archive.settings.replicas
                    run = partial(_import, archive, folder, token, writers, copies)
                    runs[mode].append(_measured(procs, copies, run))
                    runs[mode][-1]["instance_kb"] = size / instances / 1024
    finally:
        for proc in procs:
            proc.stop()
    return {"instances": instances, "writers": writers, "nodes": nodes, **_summary(runs)}


def run_nodeput_bench(
    *,
    chunks: int = 1500,
    size: int = 290_000,
    writers: int = 16,
    rounds: int = 2,
    in_flight: int = 1,
    instances: int = 0,
    nodes: int = 3,
) -> dict[str, Any]:
    """The micro-benchmark, and the service path too if ``instances``."""
    result: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="medshard-bench-nodeput-") as tmp:
        result["micro"] = micro(Path(tmp) / "micro", chunks, size, writers, rounds, in_flight)
        if instances:
            result["service"] = service(Path(tmp) / "service", instances, writers, nodes, rounds)
    return result
