"""`medshard bench ingest`: ingest throughput against the disk's physical limit, and the peak
memory of importing one very large file.

Everything runs on this machine in one run: the disk's durable sequential write speed and
small-file fsync rate, then a real deployment (node processes on loopback, SQLite catalog)
ingesting generated instances with k=3, so the ratio to raw/k is measured side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medshard.bench.data import generate_instances, write_big_dicom
from medshard.bench.disk import durable_sequential_write, small_file_fsync_rate
from medshard.catalog.db import Catalog
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import register_node
from medshard.config import load_settings
from medshard.home import init_home
from medshard.ingest.batch import import_files
from medshard.node.launcher import NodeProcess, free_port, start_node_process
from medshard.security.local import store_access_for

SITES = ["site-a", "site-b", "site-c"]


def bench_account(home: Path) -> str:
    """A site PACS service account for the benchmark's clients; returns its API token.

    Benchmarks store as a real caller would, through authentication, authorization and audit.
    """
    from medshard.security import identity, tokens

    catalog = Catalog(load_settings(home).database_url)
    try:
        with catalog.transaction() as session:
            identity.add_user(session, username="bench-pacs", role="service", sites=["bench"])
            return tokens.create_api_token(session, "bench-pacs", "bench")
    finally:
        catalog.dispose()


def start_cluster(root: Path, nodes: int) -> tuple[Path, list[NodeProcess]]:
    home = root / "home"
    settings, _ = init_home(home)
    settings.analysis_rules = []  # measure storage ingest alone
    settings.save()
    catalog = Catalog(settings.database_url)
    procs = [
        start_node_process(
            f"node{i}",
            SITES[i % len(SITES)],
            free_port(),
            root / f"node{i}",
            settings.node_secret,
            log_path=root / f"node{i}.log",
        )
        for i in range(nodes)
    ]
    for proc in procs:
        proc.wait_ready()
        register_node(catalog, name=proc.name, url=proc.url, site=proc.site, capacity_bytes=0)
    catalog.dispose()
    return home, procs


def peak_rss_of_import(
    home: Path, path: Path, token: str
) -> tuple[float, float, int, dict[str, Any]]:
    """(peak RSS MB, seconds, exit code, import report) of `medshard import` of one file, in a
    child process."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medshard", "import", str(path), "--home", str(home), "--json"],
            stdout=out,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MEDSHARD_TOKEN": token},
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        try:
            report: dict[str, Any] = json.loads(out.read() or b"{}")
        except ValueError:
            report = {}
    return usage.ru_maxrss / 1024, time.perf_counter() - start, proc.returncode, report


def run_ingest_bench(
    *, instances: int = 400, big_file_mb: int = 1024, nodes: int = 4, workers: int = 16
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="medshard-bench-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        raw_mb_s = durable_sequential_write(root)
        small_files_s = small_file_fsync_rate(root)
        home, procs = start_cluster(root, nodes)
        try:
            token = bench_account(home)
            runs = []
            for processes in (1, 2):
                data_dir = root / f"input-{processes}"
                total_bytes = generate_instances(data_dir, instances, seed=processes)
                with Archive.open(home) as archive:
                    k = archive.settings.replicas
                    start = time.perf_counter()
                    report = import_files(
                        archive,
                        [data_dir],
                        access=store_access_for(token),
                        workers=workers,
                        processes=processes,
                    )
                    elapsed = time.perf_counter() - start
                runs.append(
                    (
                        processes,
                        len(report["imported"]),
                        len(report["rejected"]),
                        total_bytes,
                        elapsed,
                    )
                )
            limit = raw_mb_s / k
            result: dict[str, Any] = {
                "machine": {"cpus": os.cpu_count()},
                "disk": {
                    "durable_sequential_write_mb_s": round(raw_mb_s, 1),
                    "small_file_fsync_files_s": round(small_files_s, 1),
                },
                "ingest": [
                    {
                        "importer_processes": processes,
                        "threads_per_process": workers,
                        "instances": imported,
                        "rejected": rejected,
                        "mean_instance_kb": round(total / max(instances, 1) / 1024, 1),
                        "replicas": k,
                        "nodes": nodes,
                        "seconds": round(elapsed, 2),
                        "instances_s": round(imported / elapsed, 1),
                        "mb_s": round(total / 1e6 / elapsed, 1),
                        "physical_limit_mb_s": round(limit, 1),
                        "ratio_to_physical_limit": round(total / 1e6 / elapsed / limit, 3),
                        "goal_ratio": 0.7,
                    }
                    for processes, imported, rejected, total, elapsed in runs
                ],
            }
            if big_file_mb:
                big = root / "big.dcm"
                size = write_big_dicom(big, big_file_mb)
                rss_mb, seconds, code, report = peak_rss_of_import(home, big, token)
                big.unlink()
                rejected = report.get("rejected") or []
                result["big_file"] = {
                    "size_mb": round(size / 2**20, 1),
                    "exit_code": code,
                    "imported": bool(report.get("imported")),
                    "rejected": rejected[0].get("reason", "") if rejected else "",
                    "seconds": round(seconds, 2),
                    "peak_rss_mb": round(rss_mb, 1),
                    "goal_peak_rss_mb": 300,
                }
            return result
        finally:
            for proc in procs:
                proc.stop()
