"""`medshard bench dimse`: C-STORE with dcmtk's storescu into medshard and into Orthanc.

Two workloads, each into a fresh server so that nothing arrives as a duplicate: every file of
a series over one association (a modality sending a study), then the same files split over
four associations at once (a PACS forwarding). Both servers get the same files from the same
storescu (dcmtk's, found outside the venv by its banner) with ``TCP_NODELAY=1``, as Debian's
dcmtk needs; medshard runs as `medshard serve` does in the demo (k=3 encrypted replicas over
storage-node processes, analysis workers, every association authenticated by its calling AE
and audited), Orthanc with its default configuration (one plaintext copy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from medshard.bench.data import generate_instances
from medshard.bench.ingest import start_cluster
from medshard.bench.peers import dcmtk, dcmtk_version, orthanc
from medshard.demo import ServiceProcess
from medshard.errors import ConfigError
from medshard.node.launcher import free_port

CALLING_AE: Final = "BENCHSCU"
ASSOCIATIONS: Final = 4


@dataclass(frozen=True)
class DimsePeer:
    ae_title: str
    port: int


def _allow_bench_ae(home: Path) -> None:
    from medshard.catalog.db import Catalog
    from medshard.config import load_settings
    from medshard.security import identity

    catalog = Catalog(load_settings(home).database_url)
    try:
        with catalog.transaction() as session:
            identity.add_user(session, username="bench-modality", role="service", sites=["bench"])
            identity.allow_peer(session, CALLING_AE, "bench-modality")
    finally:
        catalog.dispose()


@contextmanager
def medshard_dimse(root: Path, nodes: int) -> Iterator[DimsePeer]:
    """A fresh deployment and `medshard serve` with its DICOM port, the bench AE allowed."""
    home, procs = start_cluster(root, nodes)
    try:
        _allow_bench_ae(home)
        port = free_port()
        service = ServiceProcess(
            home, free_port(), root / "service.log", ["--dimse-port", str(port)]
        )
        try:
            service.wait_ready()
            yield DimsePeer("MEDSHARD", port)
        finally:
            service.stop()
    finally:
        for proc in procs:
            proc.stop()


@contextmanager
def orthanc_dimse(root: Path) -> Iterator[DimsePeer]:
    """A throwaway Orthanc with its DICOM port on loopback."""
    with orthanc(root) as server:
        yield DimsePeer(server.ae_title, server.dicom_port)


def _storescu(peer: DimsePeer, files: list[Path]) -> subprocess.Popen[bytes]:
    cmd = [dcmtk("storescu"), "-aet", CALLING_AE, "-aec", peer.ae_title, "-nh"]
    cmd += ["127.0.0.1", str(peer.port), *map(str, files)]
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def store(peer: DimsePeer, files: list[Path], associations: int) -> dict[str, Any]:
    """Send ``files`` over ``associations`` concurrent storescu associations; rate and time."""
    parts = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [_storescu(peer, part) for part in parts if part]
    failures = []
    for proc in procs:
        _out, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            failures.append(stderr.decode(errors="replace")[-500:])
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in files)
    return {
        "associations": associations,
        "instances": len(files),
        "seconds": round(seconds, 2),
        "instances_s": round(len(files) / seconds, 1),
        "mb_s": round(size / 1e6 / seconds, 1),
        "failures": failures,
    }


def run_dimse_bench(
    *, input_dir: Path | None = None, instances: int = 196, nodes: int = 4
) -> dict[str, Any]:
    """storescu into medshard and Orthanc, one association then four; ratios medshard/Orthanc."""
    with tempfile.TemporaryDirectory(prefix="medshard-bench-dimse-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        if input_dir is None:
            input_dir = root / "input"
            generate_instances(input_dir, instances, patients=1)
        files = sorted(p for p in input_dir.rglob("*") if p.is_file())
        if not files:
            raise ConfigError(f"no files under {input_dir}")
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count()},
            "workload": {
                "input": str(input_dir),
                "instances": len(files),
                "mean_instance_kb": round(sum(f.stat().st_size for f in files) / len(files) / 1024),
                "storescu": f"dcmtk {dcmtk_version()} ({dcmtk('storescu')}), TCP_NODELAY=1",
            },
        }
        servers = [("medshard", lambda r: medshard_dimse(r, nodes))]
        if shutil.which("Orthanc"):
            servers.append(("orthanc", orthanc_dimse))
        for name, server in servers:
            runs = []
            for associations in (1, ASSOCIATIONS):
                with server(root / f"{name}-{associations}") as peer:
                    runs.append(store(peer, files, associations))
            result[name] = {f"associations_{r['associations']}": r for r in runs}
        if "orthanc" in result:
            result["medshard_to_orthanc"] = {
                key: round(
                    result["medshard"][key]["instances_s"] / result["orthanc"][key]["instances_s"],
                    3,
                )
                for key in result["medshard"]
            }
        return result
