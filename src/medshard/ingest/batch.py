"""Importing files and folders in parallel: what `medshard import` and the demo share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from medshard.cluster.archive import Archive
from medshard.ingest.pipeline import Ingestor, IngestOutcome

ImportReport = dict[str, list[dict[str, str]]]


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


def import_files(
    archive: Archive,
    paths: list[Path],
    *,
    workers: int = 0,
    on_total: Callable[[int], Any] | None = None,
    on_done: Callable[[IngestOutcome], Any] | None = None,
) -> ImportReport:
    """Ingest every file under ``paths``; the report has imported, duplicates, rejected."""
    ingestor = Ingestor(archive)
    results = [
        IngestOutcome("rejected", str(p), reason="no such file or directory")
        for p in paths
        if not p.exists()
    ]
    files = list(iter_files([p for p in paths if p.exists()]))
    if on_total:
        on_total(len(files))
    with ThreadPoolExecutor(workers or archive.settings.import_workers) as pool:
        for outcome in pool.map(ingestor.ingest_path, files):
            results.append(outcome)
            if on_done:
                on_done(outcome)
    return report_of(results)


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
                }
            )
        elif r.status == "duplicate":
            report["duplicates"].append({"path": r.path, "sop_instance_uid": r.sop_instance_uid})
        else:
            report["rejected"].append({"path": r.path, "reason": r.reason})
    return report


def import_paths(home: Path, paths: list[Path]) -> ImportReport:
    with Archive.open(home) as archive:
        return import_files(archive, paths)
