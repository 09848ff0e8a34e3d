"""The durable analysis queue: leases, expiry, retries and concurrent claimers.

Every test runs on SQLite and on PostgreSQL (``db_url``), because the claim is written
differently for each (one UPDATE statement; SELECT ... FOR UPDATE SKIP LOCKED).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from medshard.analysis.queue import (
    DONE,
    FAILED,
    NOT_ELIGIBLE,
    PENDING,
    RUNNING,
    JobQueue,
    rule_verdict,
)
from medshard.catalog.db import Catalog, migrate
from medshard.catalog.models import AnalysisJob
from medshard.config import AnalysisRule


@pytest.fixture
def catalog(tmp_path: Path, db_url: str) -> Iterator[Catalog]:
    url = db_url or f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate(url)
    cat = Catalog(url)
    yield cat
    cat.dispose()


def _add_jobs(catalog: Catalog, n: int) -> list[int]:
    with catalog.transaction() as session:
        jobs = [
            AnalysisJob(sop_instance_uid=f"1.2.3.{i}", study_instance_uid="1.2", model="pneumonia")
            for i in range(n)
        ]
        session.add_all(jobs)
        session.flush()
        return [j.id for j in jobs]


def _state(catalog: Catalog, job_id: int) -> AnalysisJob:
    with catalog.session() as session:
        job = session.get(AnalysisJob, job_id)
        assert job is not None
        return job


def test_claims_are_disjoint_and_an_expired_lease_is_claimed_again(catalog: Catalog) -> None:
    ids = _add_jobs(catalog, 5)
    queue = JobQueue(catalog, lease_s=0.5)
    assert queue.has_claimable()
    first = queue.claim("worker-a", 3)
    second = queue.claim("worker-b", 10)
    assert [j.id for j in first] == ids[:3]  # oldest first
    assert {j.id for j in second} == set(ids[3:])
    assert queue.claim("worker-c") == []
    assert not queue.has_claimable()
    assert queue.counts()[RUNNING] == 5
    assert _state(catalog, ids[0]).lease_owner == first[0].token

    # worker-a finishes one job; then it "crashes" and its other leases expire.
    with catalog.transaction() as session:
        assert queue.finish(session, first[0], DONE, model_sha256="ab" * 32)
    time.sleep(0.6)
    again = queue.claim("worker-c", 10)
    assert {j.id for j in again} == {j.id for j in first[1:]} | {j.id for j in second}
    assert all(j.attempts == 2 for j in again)
    # The crashed worker comes back late: its stale token no longer finishes anything.
    with catalog.transaction() as session:
        assert not queue.finish(session, first[1], DONE)
    assert _state(catalog, first[1].id).state == RUNNING
    assert _state(catalog, ids[0]).state == DONE


def test_a_job_that_keeps_losing_its_worker_is_failed_with_the_reason(catalog: Catalog) -> None:
    [job_id] = _add_jobs(catalog, 1)
    queue = JobQueue(catalog, lease_s=0.05, max_attempts=2)
    for _ in range(2):
        assert len(queue.claim("crashing-worker")) == 1
        time.sleep(0.1)
    assert queue.claim("crashing-worker") == []
    job = _state(catalog, job_id)
    assert job.state == FAILED
    assert "abandoned after 2 attempts" in job.error


def test_transient_failures_are_retried_later_then_failed(catalog: Catalog) -> None:
    [job_id] = _add_jobs(catalog, 1)
    queue = JobQueue(catalog, max_attempts=2, retry_delay_s=0.2)
    [job] = queue.claim("w")
    assert queue.retry_later(job, "storage node down") == PENDING
    assert queue.claim("w") == []  # not before its retry delay
    time.sleep(0.25)
    [job] = queue.claim("w")
    assert job.attempts == 2
    assert queue.retry_later(job, "storage node down") == FAILED
    final = _state(catalog, job_id)
    assert final.state == FAILED and "after 2 attempts: storage node down" in final.error


_CLAIMER = """
import json, sys
from medshard.analysis.queue import JobQueue
from medshard.catalog.db import Catalog
catalog = Catalog(sys.argv[1])
queue = JobQueue(catalog)
mine = []
while True:
    jobs = queue.claim(sys.argv[2], 2)
    if not jobs:
        break
    mine.extend(j.id for j in jobs)
print(json.dumps(mine))
"""


def test_concurrent_worker_processes_never_claim_the_same_job(catalog: Catalog) -> None:
    ids = _add_jobs(catalog, 60)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, catalog.url, f"proc{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    claimed = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    flat = [i for part in claimed for i in part]
    assert sorted(flat) == ids  # every job once, none twice
    with catalog.session() as session:
        owners = {o.split("/")[0] for o in session.scalars(select(AnalysisJob.lease_owner)) if o}
    assert owners <= {"proc0", "proc1", "proc2"}


def test_rules_select_modalities_and_explain_other_body_parts() -> None:
    rule = AnalysisRule()  # the default: CR/DX, chest or blank body part
    assert rule_verdict(rule, "CR", "CHEST") == ""
    assert rule_verdict(rule, "dx", "") == ""
    assert rule_verdict(rule, "MR", "HEAD") is None  # not the model's business: no record
    reason = rule_verdict(rule, "CR", "HAND")
    assert reason is not None and reason.startswith("not eligible: body part HAND")
    assert rule_verdict(AnalysisRule(modalities=[], body_parts=[]), "US", "ABDOMEN") == ""
    assert NOT_ELIGIBLE == "not_eligible"
