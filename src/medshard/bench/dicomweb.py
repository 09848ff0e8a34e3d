"""`medshard bench dicomweb`: STOW-RS, QIDO-RS and WADO-RS throughput and latency, medshard
beside Orthanc, on this machine, in one run, with the same generated instances.

medshard runs as a fresh deployment (storage-node processes on loopback, k=3 replicas,
``medshard serve``); Orthanc, when it is on PATH, as a throwaway server with its DICOMweb plugin
in a temporary directory on free loopback ports. The two never run at the same time, and the
same client code drives both: STOW-RS with ``clients`` concurrent clients posting ``batch``
instances per request; QIDO-RS study searches one at a time (latency, not throughput); WADO-RS
retrieval of every instance as stored (``transfer-syntax=*``, so neither server transcodes)
with ``clients`` concurrent clients. Every figure is also given as a medshard/Orthanc ratio.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pydicom

from medshard.api.dicomweb.multipart import multipart_content_type, multipart_stream
from medshard.bench.auth_overhead import measure_overhead
from medshard.bench.data import generate_instances
from medshard.bench.ingest import bench_account, start_cluster
from medshard.bench.peers import orthanc
from medshard.demo import ServiceProcess
from medshard.errors import MedshardError
from medshard.node.launcher import free_port

ORTHANC_PLUGIN: Final = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
BOUNDARY: Final = "medshard-bench-boundary"
AS_STORED: Final = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TIMEOUT: Final = httpx.Timeout(120.0)
#: Wall-clock cap on each throughput phase; figures then cover the requests that completed.
PHASE_BUDGET_S: Final = 240.0


@dataclass(frozen=True)
class Instance:
    path: Path
    size: int
    study: str
    series: str
    sop: str
    patient_id: str


def _instances(folder: Path) -> list[Instance]:
    out = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            Instance(
                path,
                path.stat().st_size,
                ds.StudyInstanceUID,
                ds.SeriesInstanceUID,
                ds.SOPInstanceUID,
                str(ds.PatientID),
            )
        )
    return out


def _ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def _parallel(
    work: Sequence[Any],
    clients: int,
    call: Callable[[httpx.Client, Any], Sequence[Instance]],
    budget_s: float,
    auth: dict[str, str],
) -> tuple[float, list[Instance]]:
    """Run ``call(client, item)`` over ``work`` on ``clients`` threads, each with its own
    connection, until done or ``budget_s`` passed; returns elapsed seconds and the instances
    the completed calls moved."""
    local = threading.local()
    made: list[httpx.Client] = []
    done: list[Instance] = []
    start = time.perf_counter()

    def run(item: Any) -> None:
        if time.perf_counter() - start > budget_s:
            return
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=TIMEOUT, headers=auth)
            made.append(local.client)
        done.extend(call(local.client, item))

    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(run, work))
    finally:
        for client in made:
            client.close()
    return time.perf_counter() - start, done


def _studies_url(base: str, params: dict[str, str]) -> str:
    # Orthanc 1.10 does not decode %2A, so wildcards travel unescaped (RFC 3986 allows it).
    return f"{base}/studies?{urllib.parse.urlencode(params, safe='*^')}"


def _failed(what: str, r: httpx.Response) -> MedshardError:
    return MedshardError(f"{what} answered {r.status_code}: {r.text[:300]}")


def stow(
    base: str, items: Sequence[Instance], clients: int, batch: int, auth: dict[str, str]
) -> dict[str, Any]:
    """STOW-RS throughput: ``clients`` clients each posting ``batch`` instances per request."""
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    headers = {"Content-Type": multipart_content_type(BOUNDARY), "Accept": "application/dicom+json"}

    def post(client: httpx.Client, group: Sequence[Instance]) -> Sequence[Instance]:
        parts = [({"Content-Type": "application/dicom"}, i.path.read_bytes()) for i in group]
        body = b"".join(multipart_stream(parts, BOUNDARY))
        r = client.post(f"{base}/studies", content=body, headers=headers)
        if r.status_code != 200:
            raise _failed(f"STOW-RS to {base}", r)
        return group

    seconds, done = _parallel(batches, clients, post, PHASE_BUDGET_S, auth)
    return _rates(seconds, done)


def _rates(seconds: float, done: Sequence[Instance]) -> dict[str, Any]:
    return {
        "instances": len(done),
        "seconds": round(seconds, 2),
        "instances_s": round(len(done) / seconds, 1),
        "mb_s": round(sum(i.size for i in done) / 1e6 / seconds, 1),
    }


def qido(
    base: str, items: Sequence[Instance], searches: int, auth: dict[str, str]
) -> dict[str, Any]:
    """QIDO-RS latency of study searches, one at a time: exact PatientID, StudyInstanceUID,
    and a PatientID wildcard, over random studies."""
    rng = random.Random(11)
    studies = sorted({(i.study, i.patient_id) for i in items})
    queries = []
    for n in range(searches):
        study, patient = rng.choice(studies)
        kinds = [
            {"PatientID": patient},
            {"StudyInstanceUID": study},
            {"PatientID": patient[:-1] + "*"},
        ]
        queries.append(kinds[n % 3])
    latencies: list[float] = []
    with httpx.Client(timeout=TIMEOUT, headers=auth) as client:
        for params in queries[:5]:  # warm-up: connections, caches
            client.get(_studies_url(base, params))
        for params in queries:
            start = time.perf_counter()
            r = client.get(_studies_url(base, params), headers={"Accept": "application/dicom+json"})
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200 or not r.json():
                raise _failed(f"QIDO-RS {params} on {base}", r)
    return {
        "searches": len(latencies),
        "p50_ms": _ms(latencies, 0.50),
        "p99_ms": _ms(latencies, 0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 2),
    }


def wado(
    base: str, items: Sequence[Instance], clients: int, auth: dict[str, str]
) -> dict[str, Any]:
    """WADO-RS retrieval of every instance as stored, in random order, by ``clients`` clients."""
    latencies: list[float] = []
    lock = threading.Lock()

    def get(client: httpx.Client, item: Instance) -> Sequence[Instance]:
        start = time.perf_counter()
        r = client.get(
            f"{base}/studies/{item.study}/series/{item.series}/instances/{item.sop}",
            headers={"Accept": AS_STORED},
        )
        elapsed = time.perf_counter() - start
        if r.status_code != 200 or len(r.content) < item.size:
            raise _failed(f"WADO-RS of {item.sop} on {base}", r)
        with lock:
            latencies.append(elapsed)
        return [item]

    order = list(items)
    random.Random(12).shuffle(order)
    seconds, done = _parallel(order, clients, get, PHASE_BUDGET_S, auth)
    return {**_rates(seconds, done), "p50_ms": _ms(latencies, 0.50), "p99_ms": _ms(latencies, 0.99)}


def measure(
    base: str,
    items: Sequence[Instance],
    *,
    clients: int,
    batch: int,
    searches: int,
    auth: dict[str, str] | None = None,
) -> dict[str, Any]:
    """STOW, then QIDO, then WADO against one DICOMweb root; raises if any request fails."""
    headers = auth or {}
    return {
        "stow": stow(base, items, clients, batch, headers),
        "qido": qido(base, items, searches, headers),
        "wado": wado(base, items, clients, headers),
    }


@dataclass(frozen=True)
class MedshardUnderTest:
    base: str
    home: Path
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def medshard_service(root: Path, nodes: int) -> Iterator[MedshardUnderTest]:
    """A fresh deployment plus `medshard serve`, and a PACS account's token to call it with."""
    root.mkdir(parents=True, exist_ok=True)
    home, procs = start_cluster(root, nodes)
    try:
        token = bench_account(home)
        service = ServiceProcess(
            home, free_port(), root / "service.log", ["--dimse-port", str(free_port())]
        )
        try:
            service.wait_ready()
            yield MedshardUnderTest(f"{service.url}/dicom-web", home, token)
        finally:
            service.stop()
    finally:
        for proc in procs:
            proc.stop()


@contextmanager
def orthanc_service(root: Path) -> Iterator[str]:
    """A throwaway Orthanc with its DICOMweb plugin; yields its DICOMweb root."""
    dicomweb = {"Enable": True, "Root": "/dicom-web/"}
    with orthanc(root, Plugins=[str(ORTHANC_PLUGIN)], DicomWeb=dicomweb) as server:
        yield f"{server.url}/dicom-web"


_RATIOS: Final = {
    "stow_instances_s": ("stow", "instances_s"),
    "stow_mb_s": ("stow", "mb_s"),
    "qido_p50_ms": ("qido", "p50_ms"),
    "qido_p99_ms": ("qido", "p99_ms"),
    "wado_p50_ms": ("wado", "p50_ms"),
    "wado_p99_ms": ("wado", "p99_ms"),
    "wado_instances_s": ("wado", "instances_s"),
}


def run_dicomweb_bench(
    *, instances: int = 600, nodes: int = 4, clients: int = 8, batch: int = 10, searches: int = 200
) -> dict[str, Any]:
    """Generate instances, measure medshard, then Orthanc if installed; one JSON-able dict."""
    with tempfile.TemporaryDirectory(prefix="medshard-bench-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        total = generate_instances(root / "input", instances)
        items = _instances(root / "input")
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count()},
            "workload": {
                "instances": len(items),
                "mean_instance_kb": round(total / max(len(items), 1) / 1024, 1),
                "studies": len({i.study for i in items}),
                "clients": clients,
                "instances_per_stow_request": batch,
                "qido_searches": searches,
                "medshard_nodes": nodes,
            },
            "conditions": {
                "medshard": f"k=3 replicas over {nodes} node processes, every chunk fsync'd and "
                "AES-GCM encrypted, SQLite catalog with group commit; every request "
                "authenticated (a site PACS's API token), authorized and audited",
                "orthanc": "one unencrypted copy on local disk, default configuration",
                "ratios": "medshard/Orthanc: above 1 is better for rates, below 1 for latencies",
            },
        }
        with medshard_service(root / "medshard", nodes) as ms:
            result["medshard"] = measure(
                ms.base, items, clients=clients, batch=batch, searches=searches, auth=ms.auth
            )
            result["medshard"]["security_overhead"] = measure_overhead(
                ms.home,
                ms.token,
                [(i.study, i.series, i.sop, i.patient_id) for i in items[: len(items) // 2]],
            )
        if shutil.which("Orthanc") is None or not ORTHANC_PLUGIN.exists():
            result["orthanc"] = {"skipped": "Orthanc or its DICOMweb plugin is not installed"}
            return result
        with orthanc_service(root / "orthanc") as base:
            result["orthanc"] = measure(
                base, items, clients=clients, batch=batch, searches=searches
            )
        result["medshard_to_orthanc"] = {
            name: round(result["medshard"][a][b] / result["orthanc"][a][b], 3)
            for name, (a, b) in _RATIOS.items()
            if result["orthanc"][a][b]
        }
        return result
