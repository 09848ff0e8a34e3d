"""Batch analysis: shard-by-shard planning, a worker killed mid-batch, the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medshard.analysis.batch import Scope, model_hash, plan, run_batch
from medshard.analysis.executors import Executor, LocalExecutor, make_executor
from medshard.analysis.queue import DONE, SR_CLASS_PREFIX
from medshard.analysis.synth import chest_xray_dicoms
from medshard.catalog.db import Catalog
from medshard.catalog.models import AnalysisJob, Finding, Instance
from medshard.cluster.archive import Archive
from medshard.demo import sample_dicom_dir
from medshard.errors import ConfigError, InvalidInputError, NotFoundError
from tests.conftest import Deployment

IMAGES = 24


def _batch_workers(parent: int) -> list[int]:
    """Pool worker processes of a batch (not multiprocessing's resource tracker)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except FileNotFoundError:
        return []
    workers = []
    for pid in map(int, children):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except FileNotFoundError:
            continue
    return workers


def _count(catalog: Catalog, column: object) -> int:
    with catalog.session() as session:
        return int(session.scalar(select(func.count(column))) or 0)  # type: ignore[call-overload]


def test_killed_batch_worker_then_rerun_finishes_only_the_remaining_work(
    sqlite_deployment: Deployment, npz: Path, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    inbox = tmp_path / "inbox"
    files = chest_xray_dicoms(npz, "val", count=IMAGES, out_dir=inbox)
    (inbox / "mr.dcm").write_bytes((sample_dicom_dir() / "emri_small.dcm").read_bytes())
    dep.cli("import", str(inbox))

    with Archive.open(dep.home) as archive:
        sha, _model_id = model_hash("pneumonia")
        rule = archive.settings.analysis_rules[0]
        tasks, done = plan(
            archive, Scope(everything=True), model="pneumonia", model_sha256=sha, rule=rule
        )
        planned = [s for t in tasks for s in t.sop_instance_uids]
        assert len(planned) == IMAGES and done == 0  # the MR is not the chest model's business
        assert all(len({t.shard}) == 1 for t in tasks)  # tasks never span shards
        one = tasks[0]
        [study_task], _ = plan(
            archive,
            Scope(study=_study_of(archive, one.sop_instance_uids[0])),
            model="pneumonia",
            model_sha256=sha,
            rule=rule,
        )
        assert study_task.sop_instance_uids == (one.sop_instance_uids[0],)
        shard_tasks, _ = plan(
            archive, Scope(shard=one.shard), model="pneumonia", model_sha256=sha, rule=rule
        )
        assert {t.shard for t in shard_tasks} == {one.shard}
        with pytest.raises(InvalidInputError):
            Scope(shard=1, everything=True).validate(archive.settings.shards)
        with pytest.raises(InvalidInputError):
            Scope(shard=archive.settings.shards).validate(archive.settings.shards)
        with pytest.raises(NotFoundError):
            plan(archive, Scope(study="1.2.3"), model="pneumonia", model_sha256=sha, rule=rule)

    catalog = Catalog(dep.settings.database_url)
    cmd = [
        sys.executable, "-m", "medshard", "ai", "analyze", "--all", "--workers", "2",
        "--home", str(dep.home), "--json",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while _count(catalog, Finding.id) < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the batch made no progress"
            time.sleep(0.02)
        victims = _batch_workers(proc.pid)
        assert victims, "no pool worker process found"
        os.kill(victims[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, out + err
    assert "worker process died" in err and "run the same command again" in err
    first = _count(catalog, Finding.id)
    assert 3 <= first < IMAGES, "the kill came too late to interrupt the batch"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["already_done"] == first
    assert report["planned"] == report["analysed"] == IMAGES - first
    assert report["failed"] == report["not_eligible"] == 0

    with catalog.session() as session:
        sops = list(session.scalars(select(Finding.sop_instance_uid)))
        assert sorted(sops) == sorted(planned)  # every image once: no duplicate findings
        srs = session.scalar(
            select(func.count(Instance.id)).where(
                Instance.sop_class_uid.startswith(SR_CLASS_PREFIX)
            )
        )
        assert srs == IMAGES  # one SR per image, even for an image interrupted mid-way
        states = set(session.scalars(select(AnalysisJob.state)))
        assert states == {DONE}  # the queue will not redo what the batch did
    catalog.dispose()
    with Archive.open(dep.home) as archive:
        tasks, done = plan(
            archive, Scope(everything=True), model="pneumonia", model_sha256=sha, rule=rule
        )
        assert tasks == [] and done == IMAGES
    assert len(files) == IMAGES


def _study_of(archive: Archive, sop: str) -> str:
    with archive.catalog.session() as session:
        inst = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop))
        assert inst is not None
        return inst.series.study.study_instance_uid


def test_local_executor_follows_the_protocol() -> None:
    executor: Executor = LocalExecutor(workers=2)
    try:
        assert sorted(executor.map(json.dumps, [3, 1, 2])) == ["1", "2", "3"]
        assert list(executor.map(json.dumps, [])) == []
    finally:
        executor.close()
    with pytest.raises(ConfigError):
        make_executor("threads")


def test_ray_executor_runs_the_same_batch(
    sqlite_deployment: Deployment, demo_files: list[Path]
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'medshard[ray]')")
    from medshard.analysis.executors import RayExecutor

    dep = sqlite_deployment
    for path in demo_files:
        dep.cli("import", str(path))
    executor = RayExecutor(num_cpus=2)
    try:
        assert sorted(executor.map(json.dumps, [2, 1])) == ["1", "2"]
        with Archive.open(dep.home) as archive:
            report = run_batch(archive, Scope(everything=True), executor)
            again = run_batch(archive, Scope(everything=True), executor)
            with archive.catalog.session() as session:
                findings = session.scalar(select(func.count(Finding.id)))
    finally:
        executor.close()
    assert report["executor"] == "ray"
    assert report["analysed"] == len(demo_files) and report["failed"] == 0
    assert again["planned"] == 0 and again["already_done"] == len(demo_files)
    assert findings == len(demo_files)
