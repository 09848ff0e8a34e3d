"""Analysis on ingest, end to end: real node processes, real ``medshard serve``, real CLI.

An image imported through any door gets a job in the same transaction; a worker (the
service's thread, or ``medshard ai worker``) turns it into a finding and an SR stored with the
study. Non-chest and corrupt images get a "not eligible" record instead, never a crash.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from medshard.analysis.findings import query
from medshard.analysis.model import load_model
from medshard.analysis.preprocess import prepare_dataset
from medshard.analysis.queue import (
    DONE,
    NOT_ELIGIBLE,
    PENDING,
    SR_CLASS_PREFIX,
    JobQueue,
)
from medshard.analysis.worker import QueueWorker
from medshard.bench.peers import dcmtk
from medshard.catalog.models import AnalysisJob, Finding, Instance
from medshard.cluster.archive import Archive
from medshard.demo import sample_dicom_dir
from tests.conftest import Deployment, Service, start_service


def _variant(
    src: Path,
    out: Path,
    *,
    body_part: str | None = None,
    corrupt: bool = False,
    truncated: bool = False,
) -> Path:
    """A copy of a demo CR as a new patient/study, optionally of another body part, with a
    well-formed but undecodable JPEG bitstream (``corrupt``: the archive takes it, the model
    cannot read it), or with pixel data cut short (``truncated``: refused at ingest)."""
    ds = pydicom.dcmread(src)
    tag = out.stem
    ds.PatientID = f"VARIANT-{tag}"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[tag, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, "series"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if body_part is not None:
        ds.BodyPartExamined = body_part
    if corrupt:
        from pydicom.encaps import encapsulate
        from pydicom.uid import JPEGBaseline8Bit

        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    if truncated:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.PatientID)


def test_worker_turns_imported_images_into_findings_srs_and_refusals(
    deployment: Deployment, demo_files: list[Path], tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    chest = [_variant(p, inbox / f"chest{i}.dcm") for i, p in enumerate(demo_files[:2])]
    hand = _variant(demo_files[2], inbox / "hand.dcm", body_part="HAND")
    corrupt = _variant(demo_files[3], inbox / "corrupt.dcm", corrupt=True)
    _variant(demo_files[3], inbox / "truncated.dcm", truncated=True)
    mr = inbox / "mr.dcm"
    mr.write_bytes((sample_dicom_dir() / "emri_small.dcm").read_bytes())
    report = deployment.cli_json("import", str(inbox))
    assert len(report["imported"]) == 5
    [refused] = report["rejected"]  # half its pixel data missing: never acknowledged
    assert refused["path"].endswith("truncated.dcm") and "truncated" in refused["reason"]

    with Archive.open(deployment.home) as archive:
        queue = JobQueue(archive.catalog)
        # Enqueued in the ingest transaction: chest and corrupt CRs pending, the hand
        # radiograph refused at once with its reason, the MR not the model's business.
        assert queue.counts()[PENDING] == 3
        assert queue.counts()[NOT_ELIGIBLE] == 1
        drained = deployment.cli_json("ai", "worker", "--once")  # `medshard ai worker --once`
        assert drained["claimed"] == 3 and drained["done"] == 2
        assert drained["queue"][PENDING] == drained["queue"]["running"] == 0
        assert queue.counts()[DONE] == 2
        assert queue.counts()[NOT_ELIGIBLE] == 2
        assert QueueWorker(archive).run_once().claimed == 0  # nothing left, nothing redone

        model = load_model("pneumonia")
        with archive.catalog.session() as session:
            findings = list(session.scalars(select(Finding)))
            assert len(findings) == 2
            for path in chest:
                study, sop, patient = _uids(path)
                [f] = [f for f in findings if f.sop_instance_uid == sop]
                expected = model.predict_proba(prepare_dataset(pydicom.dcmread(path))[None])[0]
                assert f.probability == pytest.approx(float(expected), abs=1e-6)
                assert f.threshold == model.threshold
                assert f.model_sha256 == model.sha256 and f.model_id == model.model_id
                assert f.label == ("pneumonia" if f.probability >= f.threshold else "normal")
                assert f.patient_id == patient and f.study_instance_uid == study
                sr = session.scalar(
                    select(Instance).where(Instance.sop_instance_uid == f.sr_sop_instance_uid)
                )
                assert sr is not None and sr.sop_class_uid.startswith(SR_CLASS_PREFIX)
                assert sr.series.study.study_instance_uid == study  # stored with the study
            # The SRs were ingested like any instance but never enqueued for analysis.
            srs = [f.sr_sop_instance_uid for f in findings]
            jobs_of_srs = session.scalar(
                select(func.count())
                .select_from(AnalysisJob)
                .where(AnalysisJob.sop_instance_uid.in_(srs))
            )
            assert jobs_of_srs == 0

            for path, reason in ((hand, "body part HAND"), (corrupt, "could not be decoded")):
                study, sop, _p = _uids(path)
                got, jobs = query(session, study=study)
                assert got == []  # a refusal is never a finding
                assert [j.state for j in jobs] == [NOT_ELIGIBLE]
                assert jobs[0].error.startswith("not eligible") and reason in jobs[0].error
            mr_sop = str(pydicom.dcmread(mr, stop_before_pixels=True).SOPInstanceUID)
            assert query(session, sop=mr_sop) == ([], [])


def _poll(fn: Callable[[], Any], timeout: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def _findings_of(svc: Service, study: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{svc.url}/api/findings", params={"study": study}, headers=svc.auth_headers(), timeout=10
    )
    r.raise_for_status()
    found: list[dict[str, Any]] = r.json()["findings"]
    return found


def _stow(svc: Service, path: Path) -> httpx.Response:
    boundary = "medshard-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return httpx.post(
        f"{svc.dicomweb}/studies",
        content=body,
        headers={
            **svc.auth_headers(),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=30,
    )


@pytest.fixture
def http(sqlite_deployment: Deployment) -> Iterator[httpx.Client]:
    """An HTTP client that authenticates as the deployment's test service account."""
    auth = {"Authorization": f"Bearer {sqlite_deployment.token}"}
    with httpx.Client(headers=auth) as client:
        yield client


def test_service_analyses_cli_imports_and_stow_and_keeps_jobs_over_a_restart(
    sqlite_deployment: Deployment, http: httpx.Client, demo_files: list[Path], tmp_path: Path
) -> None:
    dep = sqlite_deployment
    svc = start_service(dep, dimse_allowed_aes=["MODALITY"])  # storescu's calling AE, below
    try:
        # 1. `medshard import` (no service involved in the import) -> finding and SR.
        study, sop, patient = _uids(demo_files[0])
        dep.cli("import", str(demo_files[0]))
        [finding] = _poll(lambda: _findings_of(svc, study))
        assert finding["sop_instance_uid"] == sop and finding["patient_id"] == patient
        assert finding["label"] in ("normal", "pneumonia")
        assert 0.0 <= finding["probability"] <= 1.0 and finding["model_sha256"]
        assert finding["model_id"].startswith("pneumonia:") and finding["created_at"]
        qido = http.get(f"{svc.dicomweb}/studies/{study}/instances", timeout=10)
        assert qido.status_code == 200
        sops = {i["00080018"]["Value"][0] for i in qido.json()}
        assert {sop, finding["sr_sop_instance_uid"]} <= sops
        sr = http.get(f"{svc.url}{finding['sr_url']}", timeout=10)
        assert sr.status_code == 200 and finding["sr_sop_instance_uid"].encode() in sr.content
        by_study = http.get(f"{svc.url}/api/studies/{study}/findings", timeout=10).json()
        assert by_study["findings"] == [finding]
        assert [j["state"] for j in by_study["jobs"]] == ["done"]
        for params in ({"patient": patient}, {"sop": sop}):
            assert http.get(f"{svc.url}/api/findings", params=params).json()["findings"] == [
                finding
            ]
        assert http.get(f"{svc.url}/api/findings").status_code == 400
        assert http.get(f"{svc.url}/api/studies/1.2.3.4/findings").status_code == 404

        # 2. STOW-RS.
        stow_study, stow_sop, _p = _uids(demo_files[1])
        stored = _stow(svc, demo_files[1])
        assert stored.status_code == 200, stored.text
        [stow_finding] = _poll(lambda: _findings_of(svc, stow_study))
        assert stow_finding["sop_instance_uid"] == stow_sop

        # 3. DIMSE C-STORE from a real modality-side tool (dcmtk's storescu).
        storescu = dcmtk("storescu")  # dcmtk's, not pynetdicom's look-alike in the venv
        dimse_study, dimse_sop, _p = _uids(demo_files[3])
        subprocess.run(
            [
                storescu,
                "-aet",
                "MODALITY",
                "-aec",
                svc.ae_title,
                "127.0.0.1",
                str(svc.dimse_port),
                str(demo_files[3]),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            check=True,
            capture_output=True,
            timeout=60,
        )
        [dimse_finding] = _poll(lambda: _findings_of(svc, dimse_study))
        assert dimse_finding["sop_instance_uid"] == dimse_sop
    finally:
        svc.process.stop()

    # 3. Enqueued while the service is down: the jobs wait in the catalog ...
    late_study, late_sop, _p = _uids(demo_files[2])
    dep.cli("import", str(demo_files[2]))
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        [job] = query(session, sop=late_sop)[1]
        assert job.state == PENDING
    # ... and the restarted service's worker picks them up.
    svc = start_service(dep)
    try:
        [late] = _poll(lambda: _findings_of(svc, late_study))
        assert late["sop_instance_uid"] == late_sop
        every = [
            f
            for s in (study, stow_study, dimse_study, late_study)
            for f in json.loads(http.get(f"{svc.url}/api/studies/{s}/findings").text)["findings"]
        ]
        assert len(every) == 4  # one finding per image, none twice
    finally:
        svc.process.stop()
    assert np.isfinite([f["probability"] for f in every]).all()
