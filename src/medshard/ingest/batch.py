"""Importing files and folders in parallel: what `medshard import` and the demo share.

Threads overlap the waits (node fsyncs, catalog commits), but parsing, hashing, encryption and
catalog work all hold the GIL, and a profile of a large import showed the importer saturating
one core while the storage nodes left the other partly idle. ``processes > 1`` therefore
spreads the files over several importer processes, each with its own archive handle and
threads; catalog group commit and node group commit keep their writes batched either way.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medshard.cluster.archive import Archive
from medshard.ingest.pipeline import CommitHook, Ingestor, IngestOutcome

ImportReport = dict[str, list[dict[str, str]]]
#: Given an archive, the site imports are attributed to and the per-instance commit hook
#: (authorization and audit, from the security layer). Picklable: importer processes get it.
StoreAccess = Callable[[Archive], tuple[int | None, CommitHook | None]]
#: Makes the ingestor each importer uses (picklable: importer processes get it), e.g. one that
#: also enqueues analysis.
IngestorFactory = Callable[[Archive], Ingestor]


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Files under the given paths, recursively, in a stable order."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for fname in sorted(files):
                    yield Path(root) / fname
        else:
            yield path


def _ingest_one(
    ingestor: Ingestor, site: int | None, hook: CommitHook | None
) -> Callable[[Path], IngestOutcome]:
    def one(path: Path) -> IngestOutcome:
        return ingestor.ingest_path(path, site_id=site, on_commit=hook)

    return one


def import_files(
    archive: Archive,
    paths: list[Path],
    *,
    access: StoreAccess,
    workers: int = 0,
    processes: int = 1,
    on_total: Callable[[int], Any] | None = None,
    on_done: Callable[[IngestOutcome], Any] | None = None,
    make_ingestor: IngestorFactory = Ingestor,
) -> ImportReport:
    """Ingest every file under ``paths``; the report has imported, duplicates, rejected."""
    results = [
        IngestOutcome("rejected", str(p), reason="no such file or directory")
        for p in paths
        if not p.exists()
    ]
    files = list(iter_files([p for p in paths if p.exists()]))
    if on_total:
        on_total(len(files))
    threads = workers or archive.settings.import_workers
    if processes > 1 and len(files) > BATCH_FILES:
        outcomes = _in_processes(
            archive.settings.home, files, processes, threads, access, make_ingestor
        )
        for outcome in outcomes:
            results.append(outcome)
            if on_done:
                on_done(outcome)
        return report_of(results)
    site, hook = access(archive)
    one = _ingest_one(make_ingestor(archive), site, hook)
    with ThreadPoolExecutor(threads) as pool:
        for outcome in pool.map(one, files):
            results.append(outcome)
            if on_done:
                on_done(outcome)
    return report_of(results)


#: Files handed to an importer process at a time.
BATCH_FILES = 16

_worker_one: Callable[[Path], IngestOutcome] | None = None
_worker_threads: ThreadPoolExecutor | None = None


def _start_worker(
    home: str, threads: int, access: StoreAccess, make_ingestor: IngestorFactory
) -> None:
    global _worker_one, _worker_threads
    archive = Archive.open(home)
    site, hook = access(archive)
    _worker_one = _ingest_one(make_ingestor(archive), site, hook)
    _worker_threads = ThreadPoolExecutor(threads)


def _import_batch(batch: list[Path]) -> list[IngestOutcome]:
    assert _worker_one is not None and _worker_threads is not None
    return list(_worker_threads.map(_worker_one, batch))


def _in_processes(
    home: Path,
    files: list[Path],
    processes: int,
    threads: int,
    access: StoreAccess,
    make_ingestor: IngestorFactory,
) -> Iterable[IngestOutcome]:
    batches = [files[i : i + BATCH_FILES] for i in range(0, len(files), BATCH_FILES)]
    with ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(str(home), threads, access, make_ingestor),
    ) as pool:
        for outcomes in pool.map(_import_batch, batches):
            yield from outcomes


def report_of(results: list[IngestOutcome]) -> ImportReport:
    report: ImportReport = {"imported": [], "duplicates": [], "rejected": []}
    for r in results:
        if r.status == "imported":
            report["imported"].append(
                {
                    "path": r.path,
                    "sop_instance_uid": r.sop_instance_uid,
                    "series_instance_uid": r.series_instance_uid,
                    "study_instance_uid": r.study_instance_uid,
                    "patient_id": r.patient_id,
                    **({"note": r.note} if r.note else {}),
                }
            )
        elif r.status == "duplicate":
            report["duplicates"].append({"path": r.path, "sop_instance_uid": r.sop_instance_uid})
        else:
            report["rejected"].append({"path": r.path, "reason": r.reason})
    return report
