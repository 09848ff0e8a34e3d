"""The catalog's named queries, on SQLite and PostgreSQL: what each answers, and what not."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import false, select, true

from medshard.catalog import analysis_queue as jobs
from medshard.catalog.db import Catalog, migrate
from medshard.catalog.findings import add_finding, findings_and_jobs, findings_present
from medshard.catalog.instances import instances_of_study, live_object_keys
from medshard.catalog.lookups import patient_pk_of, study_pk_of, visible_study_patients
from medshard.catalog.models import Instance, Patient, Series, StoredObject, Study, utcnow
from medshard.catalog.search import search


@pytest.fixture
def catalog(tmp_path: Path, db_url: str) -> Iterator[Catalog]:
    url = db_url or f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate(url)
    cat = Catalog(url)
    with cat.transaction() as session:  # one study: instances 1 and 2, and 3 deleted
        patient = Patient(patient_id="PAT-1", shard=3)
        session.add(patient)
        session.flush()
        series = Series(
            series_instance_uid="1.2.1.1",
            study=Study(study_instance_uid="1.2.1", patient=patient),
            series_number=1,
        )
        for n in (2, 1, 3):
            obj = StoredObject(
                object_key=f"key{n}",
                patient_pk=patient.id,
                shard=3,
                size=10,
                sha256="0" * 64,
                chunk_size=10,
                wrapped_key=b"k",
            )
            session.add(obj)
            session.flush()
            session.add(
                Instance(
                    sop_instance_uid=f"1.2.1.1.{n}",
                    series=series,
                    instance_number=n,
                    object_pk=obj.id,
                    deleted=n == 3,
                )
            )
    yield cat
    cat.dispose()


def test_instances_of_a_study_are_the_live_visible_ones_in_instance_order(
    catalog: Catalog,
) -> None:
    with catalog.session() as session:
        rows = instances_of_study(session, "1.2.1", visible=true())
        assert [r[2] for r in rows] == ["1.2.1.1.1", "1.2.1.1.2"]
        assert instances_of_study(session, "1.2.1", visible=false()) == []
        assert [
            r[2] for r in instances_of_study(session, "1.2.1", sop_uid="1.2.1.1.2", visible=true())
        ] == ["1.2.1.1.2"]
        keys = live_object_keys(session, [r[7] for r in rows] + [10**6])
        assert sorted(keys.values()) == ["key1", "key2"]
        assert visible_study_patients(session, ["1.2.1", "9.9"], true()) == [
            ("1.2.1", patient_pk_of(session, "PAT-1"))
        ]
        assert study_pk_of(session, "9.9") is None


def test_a_finding_is_added_once_per_instance_and_weights(catalog: Catalog) -> None:
    finding = {
        "sop_instance_uid": "1.2.1.1.1",
        "study_instance_uid": "1.2.1",
        "patient_id": "PAT-1",
        "model": "m",
        "model_id": "m:abc",
        "model_sha256": "abc",
        "label": "pneumonia",
        "probability": 0.9,
        "threshold": 0.5,
        "positive": True,
        "not_a_column": "ignored",
    }
    for _ in range(2):
        with catalog.transaction() as session:
            add_finding(session, finding)
            jobs.set_state(
                session,
                sop_instance_uid="1.2.1.1.1",
                study_instance_uid="1.2.1",
                model="m",
                state=jobs.DONE,
            )
    with catalog.session() as session:
        found, queued = findings_and_jobs(session, patient="PAT-1")
        assert findings_present(session, ["1.2.1.1.1", "1.2.1.1.2"], "abc") == {"1.2.1.1.1"}
    assert [f.label for f in found] == ["pneumonia"]
    assert [(j.state, j.attempts) for j in queued] == [(jobs.DONE, 2)]


def test_a_result_written_under_a_lost_lease_changes_nothing(catalog: Catalog) -> None:
    now = utcnow()
    with catalog.transaction() as session:
        jobs.add_job(
            session,
            sop_instance_uid="1.2.1.1.1",
            study_instance_uid="1.2.1",
            model="m",
            state=jobs.PENDING,
            error="",
            now=now,
        )
    with catalog.transaction() as session:
        [job] = jobs.lease_jobs(
            session,
            token="w/1",
            now=now,
            expires=now + timedelta(seconds=60),
            limit=8,
            sqlite=catalog.is_sqlite,
        )
    assert job.attempts == 1
    with catalog.transaction() as session:
        stale = replace(job, token="w/0")
        assert not jobs.finish_job(session, stale, jobs.DONE, error="", model_sha256="")
        assert jobs.finish_job(session, job, jobs.FAILED, error="x" * 2000, model_sha256="")
    with catalog.session() as session:
        assert jobs.job_counts(session)[jobs.FAILED] == 1
        assert not jobs.has_claimable(session, utcnow())


def test_a_study_search_counts_each_study_s_series_instances_and_modalities(
    catalog: Catalog,
) -> None:
    """The computed study attributes, from one query whatever the number of studies (an
    array of keys on PostgreSQL, an IN list on SQLite)."""
    with catalog.transaction() as session:
        patient = session.scalars(select(Patient)).one()
        study = Study(study_instance_uid="1.2.2", patient=patient, study_date="20240102")
        for number, modality, count in ((1, "CT", 2), (2, "MR", 1), (3, "CT", 0)):
            series = Series(series_instance_uid=f"1.2.2.{number}", study=study, modality=modality)
            session.add(series)
            for n in range(count):
                obj = StoredObject(
                    object_key=f"key-{number}-{n}", patient_pk=patient.id, shard=3, size=1,
                    sha256="0" * 64, chunk_size=1, wrapped_key=b"k",
                )  # fmt: skip
                session.add(obj)
                session.flush()
                session.add(
                    Instance(
                        sop_instance_uid=f"1.2.2.{number}.{n}", series=series, object_pk=obj.id
                    )
                )
    fields = ["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
    wanted = ["StudyInstanceUID", *fields]
    for limit in (1, 2, 100):  # a statement per count of keys would differ here
        with catalog.session() as session:
            rows = search(session, "STUDY", {}, fields=wanted, limit=limit, scope=None)
        found = {r["StudyInstanceUID"]: [r[f] for f in fields] for r in rows}
        assert len(found) == min(limit, 2)
        expected = {"1.2.1": [1, 3, []], "1.2.2": [3, 3, ["CT", "MR"]]}
        assert found == {uid: expected[uid] for uid in found}
