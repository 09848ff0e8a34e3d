"""The write-ahead object journal: losing the service's disk loses no acknowledged object.

Real node processes and a real service: instances imported before a backup, more stored
through STOW-RS (new patients and a known one) and a document added after it; the home is
deleted; ``medshard restore`` brings back the backup and replays the journal, and a service
on the new home lists and serves every acknowledged instance byte-identical. A journal
short of its write quorum fails the writes and leaves nothing behind; a backup trims the
journal blobs its snapshot holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from medshard.api.dicomweb.multipart import boundary_of, iter_parts_sync
from medshard.bench.data import generate_instances
from medshard.catalog.models import AnalysisJob, Instance, Patient, StoredObject, Study
from medshard.cluster import journal, metadata_backup
from medshard.cluster.archive import Archive
from medshard.cluster.journal import JournalMark, journal_name, parse_journal_name
from medshard.cluster.metadata_backup import take_backup
from medshard.cluster.reconcile import Reconciler
from medshard.config import load_settings
from medshard.demo import sample_dicom_dir
from medshard.errors import NodeUnavailableError
from medshard.ingest.pipeline import Ingestor, Rejection
from medshard.storage.node_client import NodeClient
from tests.conftest import Deployment, start_service
from tests.records.samples import pdf

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: Heart rate over midnight (UTC): one sensor batch, stored as its raw object and two days.
HEART_RATE = b"""timestamp,heart_rate (bpm)
2026-03-01T23:56:00+00:00,70
2026-03-01T23:57:00+00:00,71
2026-03-01T23:58:00+00:00,72
2026-03-01T23:59:00+00:00,70
2026-03-02T00:00:00+00:00,71
2026-03-02T00:01:00+00:00,72
2026-03-02T00:02:00+00:00,70
2026-03-02T00:03:00+00:00,71
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _journal_on(dep: Deployment) -> dict[str, set[str]]:
    """node name -> the journal blobs it holds."""
    held = {}
    for node in dep.nodes:
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            held[node.name] = {
                str(b["name"]) for b in client.list_meta() if parse_journal_name(str(b["name"]))
            }
    return held


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _later_instances(folder: Path, known_patient: str) -> list[Path]:
    """Instances of three new patients, and two of a patient the backup knows."""
    generate_instances(folder, 10, patients=3, seed=11)
    files = sorted(folder.glob("*.dcm"))
    study, series = generate_uid(), generate_uid()
    for path in files[:2]:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = known_patient, study, series
        ds.save_as(path, enforce_file_format=True)
    return files


def _stow(url: str, headers: dict[str, str], files: list[Path]) -> None:
    boundary = "journal-test-boundary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in files
    )
    body += f"--{boundary}--\r\n".encode()
    media = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = httpx.post(
        f"{url}/studies",
        content=body,
        headers={**headers, "Content-Type": media, "Accept": "application/dicom+json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert "00081198" not in response.json(), response.text  # no FailedSOPSequence


def _wado(http: httpx.Client, url: str, uids: tuple[str, str, str]) -> bytes:
    study, series, sop = uids
    response = http.get(
        f"{url}/studies/{study}/series/{series}/instances/{sop}", headers={"Accept": ANY_SYNTAX}
    )
    assert response.status_code == 200, response.text
    boundary = boundary_of(response.headers["content-type"])
    parts = [p.read() for p in iter_parts_sync([response.content], boundary)]
    assert len(parts) == 1
    return parts[0]


# -- units -------------------------------------------------------------------------------------


def test_journal_names_and_what_a_mark_covers() -> None:
    name = journal_name("20250101t120000000000z", "0a1b2c3d", 7)
    assert parse_journal_name(name) == ("20250101t120000000000z", "0a1b2c3d", 7)
    assert parse_journal_name("backup-20250101t120000000000z.manifest") is None
    mark = JournalMark("0a1b2c3d", settled_below=7, before="20250101t110000000000z")
    assert not mark.covers(name)  # this writer's seq 7 was still in flight
    assert mark.covers(journal_name("20250101t120000000000z", "0a1b2c3d", 6))
    assert not mark.covers(journal_name("20250101t120000000000z", "ffffffff", 1))
    assert mark.covers(journal_name("20250101t100000000000z", "ffffffff", 1))  # old enough


# -- real nodes --------------------------------------------------------------------------------


def test_a_journal_short_of_quorum_fails_the_writes_and_leaves_nothing(
    sqlite_deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = sqlite_deployment
    files = sorted(sample_dicom_dir().glob("*.dcm"))[:3]
    setup = _journal_on(dep)  # the fixture's accounts (journaled too)
    with Archive.open(dep.home) as archive:
        ingestor = Ingestor(archive)
        keeper = sorted(archive.pool.nodes)[0]
        for name, handle in archive.pool.nodes.items():
            if name != keeper:

                def refuse(blob: str, data: bytes, name: str = name) -> bool:
                    raise NodeUnavailableError(name, "refuses named blobs (test)")

                monkeypatch.setattr(handle.client, "put_meta", refuse)
        outcomes = []
        threads = [  # concurrent writers: one group commit, one journal blob for them all
            threading.Thread(target=lambda p=p: outcomes.append(ingestor.ingest_path(p)))
            for p in files
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [o.status for o in outcomes] == ["rejected"] * len(files)
        assert {o.code for o in outcomes} == {Rejection.STORAGE}
        assert "journal" in outcomes[0].reason
        with archive.catalog.session() as session:
            for model in (Patient, StoredObject, Instance):
                assert session.scalar(select(func.count()).select_from(model)) == 0
        for node in dep.nodes:  # the chunks were discarded, the blob the keeper took too
            with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
                assert list(client.list_ids()) == [], node.name
        assert _journal_on(dep) == setup

        monkeypatch.undo()
        archive.pool.probe()  # the refusing nodes were marked failed
        assert ingestor.ingest_path(files[0]).status == "imported"
    held = _journal_on(dep)
    new = {node: names - setup[node] for node, names in held.items()}
    assert sum(len(names) for names in new.values()) == 3  # one blob, on k=3 nodes


def test_objects_acknowledged_after_the_backup_survive_losing_the_home(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()

    imported = dep.cli_json("import", str(sample_dicom_dir()))
    first = [Path(i["path"]).read_bytes() for i in imported["imported"]]
    known_patient = pydicom.dcmread(sample_dicom_dir() / "MR2_J2KR.dcm").PatientID
    backup = dep.cli_json("backup")
    assert backup["journal_trimmed"] == 0  # the import's blobs are another process's, new

    # after the backup: STOW-RS to the service (three new patients, one the backup knows)
    later = _later_instances(tmp_path / "later", str(known_patient))
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        _stow(svc.dicomweb, svc.auth_headers(), later[:6])
        _stow(svc.dicomweb, svc.auth_headers(), later[6:])
        sensed = httpx.post(
            f"{svc.url}/api/patients/JOURNAL-2/series",
            content=HEART_RATE,
            headers={**svc.auth_headers(), "Content-Type": "text/csv"},
            timeout=60,
        )
        assert sensed.status_code == 201, sensed.text
        batch = sensed.json()
        assert len(batch["segments"]) == 2
    finally:
        svc.process.stop()
    report = tmp_path / "report.pdf"
    report.write_bytes(pdf("after the backup"))
    added = json.loads(dep.cli("records", "add", "JOURNAL-1", str(report), "--json").stdout)
    acknowledged = {_uids(data): data for data in first + [p.read_bytes() for p in later]}

    shutil.rmtree(dep.home)  # the metadata service's disk is gone

    home = dep.home.parent / "restored"
    result = dep.restore(home, key)
    assert result.exit_code == 0, result.output
    restored = json.loads(result.stdout)
    assert restored["backup_id"] == backup["backup_id"]
    replay = restored["journal"]
    assert replay["unrecoverable"] == [], replay
    assert replay["replayed"] == len(later) + 1 + 3  # STOW'd instances, document, batch
    assert replay["present"] == len(first)

    # Reconciliation deletes what the catalog does not name, here at once: the journaled
    # objects are named again, so nothing of theirs goes.
    with Archive.open(home) as archive:
        archive.settings.orphan_grace_s = 0.0
        reconciler = Reconciler(archive)
        for _ in range(2):
            for handle in archive.pool.nodes.values():
                assert reconciler.run(handle).removed == 0

    dep.home, dep.settings = home, load_settings(home)
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        with httpx.Client(headers=svc.auth_headers(), timeout=60) as http:
            listed = http.get(f"{svc.dicomweb}/instances", params={"limit": 1000})
            assert listed.status_code == 200, listed.text
            sops = {item["00080018"]["Value"][0] for item in listed.json()}
            assert {uids[2] for uids in acknowledged} <= sops
            for uids, data in acknowledged.items():
                assert _sha(_wado(http, svc.dicomweb, uids)) == _sha(data), uids
            sensor = f"{svc.url}/api/patients/JOURNAL-2/series"
            raw = http.get(f"{sensor}/batches/{batch['batch']}/raw")
            assert raw.status_code == 200 and raw.content == HEART_RATE
            readings = http.get(f"{sensor}/heart_rate", params={"downsample": "none"})
            assert readings.status_code == 200, readings.text
            assert readings.json()["total"] == 8
    finally:
        svc.process.stop()
    out = tmp_path / "out.pdf"
    dep.cli("records", "get", added["id"], "-o", str(out))
    assert out.read_bytes() == report.read_bytes()


def test_a_backup_trims_the_journal_it_holds(
    sqlite_deployment: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dep = sqlite_deployment
    dep.cli_json("import", str(sample_dicom_dir()))
    written = _journal_on(dep)
    assert sum(len(names) for names in written.values()) >= 3
    assert dep.cli_json("backup")["journal_trimmed"] == 0  # another process's, too recent
    assert _journal_on(dep) == written
    monkeypatch.setattr(journal, "TRIM_SLACK_S", 0.0)
    trimmed = dep.cli_json("backup")["journal_trimmed"]
    assert trimmed == sum(len(names) for names in written.values())
    assert not any(_journal_on(dep).values())
    monkeypatch.undo()

    # this process's own blobs go as soon as they settled before the snapshot
    generate_instances(tmp_path / "more", 4, patients=2, seed=5)
    with Archive.open(dep.home) as archive:
        ingestor = Ingestor(archive)
        for path in sorted((tmp_path / "more").glob("*.dcm")):
            assert ingestor.ingest_path(path).status == "imported"
        assert archive.journal.blobs == 4
        assert any(_journal_on(dep).values())
        report = take_backup(archive)
        assert report.journal_trimmed == 4 * 3
    assert not any(_journal_on(dep).values())


def test_a_backup_recopies_the_journal_a_dead_node_took(
    sqlite_deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journal blobs the backup does not hold (another process's, recent) and that lost a
    copy with a node killed by SIGKILL are copied to live nodes again, from a copy that
    opens under the recovery key; then every one has k copies on live nodes."""
    dep = sqlite_deployment
    dep.cli_json("import", str(sample_dicom_dir()))
    written = _journal_on(dep)
    victim = max(written, key=lambda name: len(written[name]))
    lost = written[victim]
    assert lost, written
    dep.node(victim).kill()
    monkeypatch.setattr(metadata_backup, "RECOPY_AFTER_S", 0.0)
    with Archive.open(dep.home) as archive:
        assert not archive.pool.nodes[victim].available
        report = take_backup(archive)
        assert report.journal_trimmed == 0  # another process's, too recent for a trim
        assert report.blobs_recopied == len(lost)
        assert take_backup(archive).blobs_recopied == 0  # nothing short any more
    survivors = [n for n in dep.nodes if n.name != victim]
    held: dict[str, int] = {}
    for node in survivors:
        with NodeClient(node.name, node.url, dep.settings.node_secret) as client:
            for blob in client.list_meta():
                if parse_journal_name(str(blob["name"])):
                    held[str(blob["name"])] = held.get(str(blob["name"]), 0) + 1
    assert set(held) == set().union(*written.values())
    assert set(held.values()) == {dep.settings.replicas}, held


def _patient_and_study(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.get("PatientID", "")), str(ds.StudyInstanceUID)


def test_erasures_and_study_deletions_after_the_backup_survive_losing_the_home(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    """A patient erased, or a study deleted, after the last backup stays gone after a restore:
    whether the backup held them or they came later, their objects are not replayed."""
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    first = [Path(i["path"]) for i in dep.cli_json("import", str(sample_dicom_dir()))["imported"]]
    by_patient: dict[str, dict[str, int]] = {}
    for path in first:
        patient, study = _patient_and_study(path)
        if not patient:  # filed under an id the archive makes up
            continue
        by_patient.setdefault(patient, {}).setdefault(study, 0)
        by_patient[patient][study] += 1
    assert len(by_patient) >= 3, by_patient
    old_erased, old_deleter, old_kept = sorted(by_patient)[:3]
    (old_study, old_study_count), *_ = by_patient[old_deleter].items()
    dep.cli_json("backup")

    later = tmp_path / "later"
    generate_instances(later, 12, patients=3, seed=12)
    later_by_patient: dict[str, dict[str, int]] = {}
    for path in later.glob("*.dcm"):
        patient, study = _patient_and_study(path)
        later_by_patient.setdefault(patient, {}).setdefault(study, 0)
        later_by_patient[patient][study] += 1
    assert len(later_by_patient) == 3, later_by_patient
    new_erased, new_deleter, new_kept = sorted(later_by_patient)
    (new_study, new_study_count), *_ = later_by_patient[new_deleter].items()
    assert len(dep.cli_json("import", str(later))["imported"]) == 12

    for patient in (old_erased, new_erased):
        assert dep.cli_json("patient", "erase", patient, "--yes")["studies"] >= 1
    password = "correct horse battery staple 42"
    dep.cli("user", "add", "root", "--role", "admin", "--password", password)
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        token = httpx.post(
            f"{svc.url}/api/auth/token", data={"username": "root", "password": password}
        ).json()["access_token"]
        for study in (old_study, new_study):
            deleted = httpx.delete(
                f"{svc.url}/api/studies/{study}",
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            assert deleted.status_code == 200, deleted.text
    finally:
        svc.process.stop()

    replay = dep.lose_home_and_restore(key)["journal"]
    # the backup held the old patient and study: their rows go again; the new ones never came
    assert replay["removals_applied"] == 2
    taken = (
        sum(by_patient[old_erased].values())
        + old_study_count
        + sum(later_by_patient[new_erased].values())
        + new_study_count
    )
    assert replay["removed"] == taken
    assert replay["replayed"] == 12 - sum(later_by_patient[new_erased].values()) - new_study_count

    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        patients = set(session.scalars(select(Patient.patient_id)))
        studies = set(session.scalars(select(Study.study_instance_uid)))
        instances = session.scalar(select(func.count()).select_from(Instance))
    assert old_erased not in patients and new_erased not in patients
    # (a patient whose only study was deleted before any backup held them does not come back:
    # nothing of theirs is left to restore)
    assert {old_kept, new_kept, old_deleter} <= patients
    assert old_study not in studies and new_study not in studies
    assert instances == len(first) + 12 - taken


def test_an_image_stored_after_the_backup_is_queued_for_analysis_again(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    """Analysis jobs are not journaled; the replayed image's commit queues its job again, as
    its first did, so nothing stored after the backup goes unanalysed."""
    from medshard.analysis.dataset import sample_npz_path
    from medshard.analysis.synth import chest_xray_dicoms

    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    dep.cli_json("backup")
    chest = chest_xray_dicoms(sample_npz_path(), count=1, indices=[3], out_dir=tmp_path)[0]
    assert len(dep.cli_json("import", str(chest))["imported"]) == 1
    sop = str(pydicom.dcmread(chest, stop_before_pixels=True).SOPInstanceUID)

    def jobs(home: Path) -> list[tuple[str, str]]:
        with Archive.open(home, probe=False) as archive, archive.catalog.session() as session:
            return [
                (job.model, job.state)
                for job in session.scalars(
                    select(AnalysisJob).where(AnalysisJob.sop_instance_uid == sop)
                )
            ]

    assert jobs(dep.home) == [("pneumonia", "pending")]
    shutil.rmtree(dep.home)
    result = dep.restore(dep.home.parent / "restored", key)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["journal"]["replayed"] == 1
    assert jobs(dep.home.parent / "restored") == [("pneumonia", "pending")]
