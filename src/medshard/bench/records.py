"""`medshard bench records`: documents, FHIR search and sensor series, with figures.

* documents stored per second: small PDFs through the whole write path (sniff, encrypt,
  chunk, replicate to three real storage-node processes, one commit with the version row,
  care team and audit event), from several threads as the service would;
* FHIR ``DocumentReference`` search p50/p99 with ``resources`` documents in the catalog: the
  bulk of them are catalog rows inserted directly (the bytes play no part in a search), then
  searches by patient and date, and by date alone, run as a doctor of one of five sites
  through the function the route calls (authorization SQL, paging, the total, resource
  mapping, the Bundle and its fhir.resources sample check included; HTTP left out);
* sensor ingest in readings per second for a day of 1 Hz heart rate (CSV parse, cleaning,
  raw and Parquet objects through the write path), the stored bytes of that day, and the
  latency of a one-day range query (downsampled to 2000 points, and every reading).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, select
from starlette.datastructures import QueryParams

from medshard.api.fhir import queries
from medshard.catalog.db import Catalog
from medshard.catalog.models import CareSite, Patient, Site, StoredObject, utcnow
from medshard.catalog.records import DocFields
from medshard.catalog.records_models import Document, DocumentVersion
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import register_node
from medshard.home import init_home
from medshard.node.launcher import free_port, start_node_process
from medshard.records import documents, series
from medshard.security.context import Caller, acting_as
from medshard.security.gate import Gate
from medshard.security.identity import add_user, get_user, principal_of

SITES = [f"hospital-{i}" for i in range(5)]
DOCS_PER_PATIENT = 20


def _pdf(n: int) -> bytes:
    body = f"BT /F1 12 Tf 10 50 Td (Bench report {n}) Tj ET".encode()
    head = b"%PDF-1.4\n1 0 obj\n<< /Length " + str(len(body)).encode() + b" >>\nstream\n"
    return head + body + b"\nendstream\nendobj\n%%EOF\n"


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def run_records_bench(
    *, documents_n: int = 300, resources: int = 100_000, searches: int = 200, db: str = ""
) -> dict[str, Any]:
    """Measure on a scratch deployment with three node processes; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="medshard-bench-records-") as tmp:
        root = Path(tmp)
        settings, _ = init_home(root / "home", db_url=db)
        settings.analysis_rules = []
        catalog = Catalog(settings.database_url)
        nodes = []
        try:
            for i in range(3):
                proc = start_node_process(
                    f"node{i}",
                    SITES[i],
                    free_port(),
                    root / f"n{i}",
                    settings.node_secret,
                    log_path=root / f"n{i}.log",
                )
                nodes.append(proc)
            for proc in nodes:
                proc.wait_ready()
                register_node(
                    catalog, name=proc.name, url=proc.url, site=proc.site, capacity_bytes=0
                )
            catalog.dispose()
            with Archive(settings) as archive, Gate(archive) as gate:
                return _measure(archive, gate, documents_n, resources, searches)
        finally:
            for proc in nodes:
                proc.stop()


def _measure(
    archive: Archive, gate: Gate, documents_n: int, resources: int, searches: int
) -> dict[str, Any]:
    with archive.catalog.transaction() as session:
        add_user(session, username="pacs-bench", role="service", sites=[SITES[0]])
        add_user(
            session, username="dr-bench", role="doctor", password=uuid.uuid4().hex, sites=[SITES[0]]
        )
    with archive.catalog.session() as session:
        pacs = Caller(principal_of(session, get_user(session, "pacs-bench")), gate)
        doctor = Caller(principal_of(session, get_user(session, "dr-bench")), gate)
    return {
        "benchmark": "records",
        "database": archive.catalog.engine.dialect.name,
        "documents": _documents(pacs, documents_n),
        "fhir_search": _fhir(archive, doctor, resources, searches),
        "sensor": _sensor(pacs),
        "goals": {"fhir_search_p99_ms": 50, "day_at_1hz_bytes": 200_000},
    }


def _documents(caller: Caller, n: int) -> dict[str, Any]:
    def one(i: int) -> None:
        with acting_as(caller):
            content = documents.Content(_pdf(i), "application/pdf")
            documents.add(f"DOC-BENCH-{i % 50:03d}", content, DocFields(title=f"report {i}"))

    began = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - began
    return {
        "stored": n,
        "per_s": round(n / elapsed, 1),
        "bytes_each": len(_pdf(0)),
        "what": "PDFs through the full write path to 3 node processes, 8 threads",
    }


def _fill(archive: Archive, resources: int) -> int:
    """``resources`` documents as catalog rows over patients of five sites; one shared object."""
    rng = random.Random(7)
    with archive.catalog.session() as session:
        obj = session.scalar(select(StoredObject.id).where(StoredObject.kind == "document"))
        sites = dict(session.execute(select(Site.name, Site.id)).tuples().all())
    assert obj is not None
    for name in SITES:
        if name not in sites:
            with archive.catalog.transaction() as session:
                sites[name] = session.execute(
                    insert(Site).values(name=name).returning(Site.id)
                ).scalar_one()
    patients = resources // DOCS_PER_PATIENT
    now, base = utcnow(), datetime(2016, 1, 1, tzinfo=UTC)
    for start in range(0, patients, 500):
        with archive.catalog.transaction() as session:
            chunk = range(start, min(patients, start + 500))
            pks = (
                session.execute(
                    insert(Patient).returning(Patient.id, sort_by_parameter_order=True),
                    [
                        {
                            "patient_id": f"FHIR-{p:06d}",
                            "shard": p % 128,
                            "wrapped_key": wrapped,
                            "master_key_id": key_id,
                            "created_at": now,
                        }
                        for p in chunk
                        for wrapped, key_id in [archive.store.new_patient_key(f"FHIR-{p:06d}")]
                    ],
                )
                .scalars()
                .all()
            )
            session.execute(
                insert(CareSite),
                [
                    {
                        "patient_pk": pk,
                        "site_id": sites[SITES[p % 5]],
                        "since": now,
                        "last_involved_at": now,
                    }
                    for p, pk in zip(chunk, pks, strict=True)
                ],
            )
            docs = []
            for pk in pks:
                for _ in range(DOCS_PER_PATIENT):
                    when = base + timedelta(minutes=rng.randrange(10 * 365 * 24 * 60))
                    docs.append(
                        {
                            "doc_uid": uuid.uuid4().hex,
                            "patient_pk": pk,
                            "latest_version": 1,
                            "doc_type": "report",
                            "title": "bench",
                            "author": "",
                            "doc_date": when,
                            "content_type": "application/pdf",
                            "source_site_id": None,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
            doc_pks = (
                session.execute(
                    insert(Document).returning(Document.id, sort_by_parameter_order=True), docs
                )
                .scalars()
                .all()
            )
            session.execute(
                insert(DocumentVersion),
                [
                    {
                        "document_pk": d,
                        "version": 1,
                        "object_pk": obj,
                        "content_type": "application/pdf",
                        "size": 100,
                        "sha256": "0" * 64,
                        "filename": "",
                        "doc_type": "report",
                        "title": "bench",
                        "author": "",
                        "doc_date": row["doc_date"],
                        "source_site_id": None,
                        "stored_by": "bench",
                        "created_at": now,
                    }
                    for d, row in zip(doc_pks, docs, strict=True)
                ],
            )
    if archive.catalog.engine.dialect.name == "postgresql":
        # what autovacuum does after a bulk load (statistics, the visibility map that lets
        # a search read an index alone), done now rather than whenever it comes round
        engine = archive.catalog.engine.execution_options(isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "VACUUM (ANALYZE) documents, document_versions, patients, care_sites"
            )
    return patients


def _fhir(archive: Archive, doctor: Caller, resources: int, searches: int) -> dict[str, Any]:
    began = time.perf_counter()
    patients = _fill(archive, resources)
    fill_s = time.perf_counter() - began
    rng = random.Random(3)
    mine = [p for p in range(patients) if p % 5 == 0]  # the doctor's site's patients
    kinds: dict[str, Callable[[], dict[str, Any]]] = {
        "by_patient_and_date": lambda: {
            "patient": f"FHIR-{rng.choice(mine):06d}",
            "date": [f"ge{rng.randint(2016, 2021)}-01", f"lt{rng.randint(2022, 2025)}-12"],
        },
        "by_date_month": lambda: {"date": f"{rng.randint(2016, 2025)}-{rng.randint(1, 12):02d}"},
    }
    out: dict[str, Any] = {"resources": resources, "patients": patients, "fill_s": round(fill_s, 1)}
    with acting_as(doctor):
        for name, make in kinds.items():
            samples, cpu, hits = [], [], 0
            for _ in range(searches):
                params = QueryParams(
                    [
                        (k, v)
                        for k, vs in make().items()
                        for v in (vs if isinstance(vs, list) else [vs])
                    ]
                )
                t0, c0 = time.perf_counter(), time.thread_time()
                bundle = queries.searchset_for("DocumentReference", params, "http://bench/fhir")
                samples.append(time.perf_counter() - t0)
                cpu.append(time.thread_time() - c0)
                hits += len(bundle["entry"])
            out[name] = {
                **_percentiles(samples),
                "cpu": _percentiles(cpu),
                "mean_entries": round(hits / searches, 1),
            }
    out["what"] = (
        "DocumentReference searches as a doctor of one of five sites, _count=20; wall time "
        "(p50_ms, p99_ms) and the searching thread's CPU time (cpu), which a shared machine "
        "disturbs less; the audit writer's thread works beside it, as in the service"
    )
    return out


def _day_csv() -> tuple[bytes, int]:
    rng = np.random.default_rng(5)
    seconds = np.arange(86_400)
    hr = np.round(68 + 10 * np.sin(seconds / 7200) + rng.normal(0, 1.5, len(seconds)))
    start = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    lines = ["timestamp,heart_rate"] + [
        f"{int(start + s)},{int(v)}" for s, v in zip(seconds, hr, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode(), len(seconds)


def _sensor(caller: Caller) -> dict[str, Any]:
    data, n = _day_csv()
    with acting_as(caller):
        began = time.perf_counter()
        stored = series.ingest("SENSOR-BENCH", documents.Content(data, "text/csv"), device="bench")
        ingest_s = time.perf_counter() - began
        start = datetime(2026, 3, 1, tzinfo=UTC)
        end = start + timedelta(days=1)
        timings: dict[str, list[float]] = {"lttb_2000": [], "every_reading": []}
        for _ in range(5):
            for mode, label in (("lttb", "lttb_2000"), ("none", "every_reading")):
                t0 = time.perf_counter()
                series.points(
                    "SENSOR-BENCH", "heart_rate", start, end, downsample=mode, audit=False
                )
                timings[label].append(time.perf_counter() - t0)
    return {
        "readings": n,
        "raw_csv_bytes": len(data),
        "ingest_readings_per_s": round(n / ingest_s, 1),
        "day_parquet_bytes": sum(s["bytes"] for s in stored["segments"]),
        "day_query_ms": {k: round(statistics.median(v) * 1000, 1) for k, v in timings.items()},
    }
