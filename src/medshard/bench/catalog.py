"""`medshard bench catalog`: the catalog at scale, node I/O left out.

Instances are filled through the real record path (validate, parse, ``Archive.put_object``
with the pipeline's study/series/instance rows, the security layer's care-team and audit hook,
group commit from several threads, as the service runs it); only the node PUTs are skipped, by
an object store that seals the bytes and records three copies without sending them. Then
QIDO-RS study searches (the same ``qido_search`` the route calls) run as a doctor of one of
five sites, so the authorization condition is part of every measured query.

On PostgreSQL a scratch database is created beside the one in ``--db`` and dropped afterwards.
"""

from __future__ import annotations

import gc
import hashlib
import io
import itertools
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from medshard.api.dicomweb.qido import qido_search
from medshard.api.dicomweb.query import parse_qido
from medshard.bench import catalog_prefill
from medshard.catalog.db import Catalog
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import register_node
from medshard.cluster.objects import ObjectStore, WrittenChunk, WrittenObject
from medshard.home import init_home
from medshard.ingest.pipeline import Ingestor
from medshard.security.context import Caller, acting_as
from medshard.security.gate import Gate
from medshard.security.identity import add_user, get_user, principal_of
from medshard.storage.envelope import ChunkCipher, new_key

SITES = [f"hospital-{i}" for i in range(5)]
MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "PT", "NM"]
INSTANCES_PER_SERIES = 10
SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2
NODE_NAMES = ["node0", "node1", "node2"]
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
PREFILL_SHAPE = catalog_prefill.Shape(
    sites=SITES,
    modalities=MODALITIES,
    studies_per_patient=STUDIES_PER_PATIENT,
    series_per_study=SERIES_PER_STUDY,
    instances_per_series=INSTANCES_PER_SERIES,
    sop_class_uid=str(CT_IMAGE),
)


class NodeIoLeftOut(ObjectStore):
    """Seals and hashes like the real store, and records three copies it never sends."""

    def write(self, stream: BinaryIO, *, care_sites: Any = ()) -> WrittenObject:
        data = stream.read()
        object_key, data_key = uuid.uuid4().hex, new_key()
        sealed = ChunkCipher(data_key, object_key).seal(0, data)
        chunk = WrittenChunk(0, hashlib.sha256(sealed).hexdigest(), len(sealed), NODE_NAMES)
        return WrittenObject(
            object_key=object_key,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            data_key=data_key,
            chunk_size=self.settings.chunk_size,
            chunks=[chunk],
        )


def _generate_uid(rng: random.Random) -> str:
    """A 2.25 UUID-style UID; not `secrets`, which is slow here."""
    return f"2.25.{rng.getrandbits(122)}"


def _instances(count: int, seed: int, first_patient: int = 1) -> Iterator[tuple[str, bytes]]:
    """Small valid instances: patients of 2 studies x 2 series x 10 images, dated over 10 years."""
    rng = random.Random(seed * 1_000_003 + first_patient)

    made = 0
    patient_no = first_patient - 1
    while made < count:
        patient_no += 1
        patient = f"BENCH-{seed}-{patient_no:07d}"
        site = SITES[patient_no % len(SITES)]
        for _study in range(STUDIES_PER_PATIENT):
            study_uid = _generate_uid(rng)
            date = f"{rng.randint(2016, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            for _series in range(SERIES_PER_STUDY):
                series_uid, modality = _generate_uid(rng), rng.choice(MODALITIES)
                for number in range(1, INSTANCES_PER_SERIES + 1):
                    if made >= count:
                        return
                    made += 1
                    yield site, _encode(patient, study_uid, series_uid, modality, date, number)


def _encode(patient: str, study: str, series: str, modality: str, date: str, number: int) -> bytes:
    sop = UID(f"{series}.{number}")  # derived: generating costs no entropy
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName = patient, f"Bench^{patient[-7:]}"
    ds.StudyDate = ds.SeriesDate = date
    ds.Modality, ds.InstanceNumber = modality, number
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(128)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@contextmanager
def _scratch_database(url: str | None, root: Path) -> Iterator[str]:
    if not url or url.startswith("sqlite"):
        yield url or f"sqlite:///{root / 'catalog.db'}"
        return
    name = f"medshard_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def run_catalog_bench(
    *,
    instances: int,
    db: str | None = None,
    threads: int = 8,
    queries: int = 200,
    seed: int = 1,
    prefill: int = 0,
) -> dict[str, Any]:
    """Fill ``instances`` through the record path; measure ingest rate and QIDO-RS latency.

    With ``prefill``, side by side in one run: ``instances`` are recorded into the empty
    catalog, ``prefill`` more are bulk-inserted (:mod:`.catalog_prefill`), then ``instances``
    more are recorded on top; the two record-path rates are compared and the searches run
    over the big catalog.
    """
    with tempfile.TemporaryDirectory(prefix="medshard-bench-catalog-") as tmp:
        root = Path(tmp)
        with _scratch_database(db, root) as url:
            settings, _ = init_home(root / "home", db_url=url)
            settings.analysis_rules = []
            settings.journal = False  # its blobs go to the nodes: node I/O is left out
            catalog = Catalog(settings.database_url)
            for i, name in enumerate(NODE_NAMES):
                register_node(
                    catalog, name=name, url=f"http://127.0.0.1:{9 + i}", site=SITES[i],
                    capacity_bytes=0,
                )  # fmt: skip
            catalog.dispose()
            archive = Archive(settings, probe=False)
            try:
                archive.store = NodeIoLeftOut(archive.catalog, archive.pool, archive.keys, settings)
                return _measure(archive, instances, threads, queries, seed, prefill)
            finally:
                archive.close()


class _Recorder:
    """Records generated instances through the real pipeline as five sites' PACS accounts."""

    def __init__(self, archive: Archive, gate: Gate, threads: int) -> None:
        with archive.catalog.transaction() as session:
            for site in SITES:
                add_user(session, username=f"pacs-{site}", role="service", sites=[site])
        with archive.catalog.session() as session:
            principals = {s: principal_of(session, get_user(session, f"pacs-{s}")) for s in SITES}
        self.hooks = {site: gate.store_hook(p) for site, p in principals.items()}
        self.ingestor = Ingestor(archive)
        self.threads = threads
        self.failed = 0
        self._lock = threading.Lock()

    def _one(self, item: tuple[str, bytes]) -> None:
        site, data = item
        site_id, hook = self.hooks[site]
        outcome = self.ingestor.ingest_stream(
            io.BytesIO(data), "bench", site_id=site_id, on_commit=hook
        )
        if outcome.status != "imported":
            with self._lock:
                self.failed += 1

    def record(self, instances: int, seed: int, first_patient: int) -> dict[str, Any]:
        """Rate over ``instances`` (generating the next batch is not timed), and by decile."""
        elapsed, done = 0.0, 0
        marks: list[tuple[int, float]] = []
        generated = _instances(instances, seed, first_patient)
        with ThreadPoolExecutor(self.threads) as pool:
            while batch := list(itertools.islice(generated, max(1, instances // 10))):
                began = time.perf_counter()
                for _ in pool.map(self._one, batch):
                    pass
                elapsed += time.perf_counter() - began
                done += len(batch)
                marks.append((done, elapsed))
        deciles = []
        previous = (0, 0.0)
        for count, at in marks:
            deciles.append(round((count - previous[0]) / max(at - previous[1], 1e-9), 1))
            previous = (count, at)
        return {
            "ingest_inst_per_s": round(instances / max(elapsed, 1e-9), 1),
            "ingest_inst_per_s_by_decile": deciles,
            "last_over_first_decile": round(deciles[-1] / deciles[0], 3) if deciles else None,
        }


def _patients_for(instances: int) -> int:
    per_patient = INSTANCES_PER_SERIES * SERIES_PER_STUDY * STUDIES_PER_PATIENT
    return -(-instances // per_patient)


def _measure(
    archive: Archive, instances: int, threads: int, queries: int, seed: int, prefill: int
) -> dict[str, Any]:
    gate = Gate(archive)
    with archive.catalog.transaction() as session:
        add_user(
            session, username="dr-bench", role="doctor", password=uuid.uuid4().hex, sites=[SITES[0]]
        )
    with archive.catalog.session() as session:
        doctor = principal_of(session, get_user(session, "dr-bench"))
    recorder = _Recorder(archive, gate, threads)
    result: dict[str, Any] = {
        "benchmark": "catalog",
        "database": archive.catalog.engine.dialect.name,
        "instances": instances,
        "threads": threads,
        **recorder.record(instances, seed, first_patient=1),
    }
    patients = _patients_for(instances)
    total = instances
    if prefill:
        began = time.perf_counter()
        patients += catalog_prefill.prefill(
            archive, PREFILL_SHAPE, instances=prefill, seed=seed, first_patient=patients + 1,
            uid=_generate_uid,
        )  # fmt: skip
        at_scale = recorder.record(instances, seed, first_patient=patients + 1)
        patients += _patients_for(instances)
        total += prefill + instances
        result["at_scale"] = {
            "catalog_instances": total,
            "prefill_seconds": round(time.perf_counter() - began, 1),
            **at_scale,
            "over_empty_catalog": round(
                at_scale["ingest_inst_per_s"] / result["ingest_inst_per_s"], 3
            ),
        }
    gate.close()
    result["failed"] = recorder.failed
    gc.freeze()  # as `medshard serve` does once started (medshard/api/server.py)
    result["qido"] = _qido(archive, Caller(doctor, Gate(archive)), patients, queries, seed)
    result["qido_catalog_instances"] = total
    result["what"] = (
        "record path only (node PUTs skipped); QIDO-RS study searches as a doctor of one of five "
        "sites, through the function the route calls (no HTTP)"
        + (
            "; at_scale: the same record path over a catalog bulk-prefilled to that size"
            if prefill
            else ""
        )
    )
    return result


def _qido(
    archive: Archive, caller: Caller, patients: int, queries: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed + 1)
    kinds = {
        "by_patient_id": lambda: {"PatientID": f"BENCH-{seed}-{rng.randint(1, patients):07d}"},
        "by_date_range": lambda: {
            "StudyDate": (lambda y, m: f"{y}{m:02d}01-{y}{m:02d}28")(
                rng.randint(2016, 2025), rng.randint(1, 12)
            )
        },
        "by_modality": lambda: {"ModalitiesInStudy": rng.choice(MODALITIES)},
    }
    results: dict[str, Any] = {}
    with acting_as(caller):
        for name, params in kinds.items():
            samples, hits = [], 0
            for _ in range(queries):
                query = parse_qido({**params(), "limit": "100"}, "study")
                began = time.perf_counter()
                rows, _warnings = qido_search(archive, query, {}, "http://bench/dicomweb")
                samples.append(time.perf_counter() - began)
                hits += len(rows)
            results[name] = {**_percentiles(samples), "mean_results": round(hits / queries, 1)}
    caller.gate.close()
    return results
