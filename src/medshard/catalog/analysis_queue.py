"""The statements of the durable analysis queue (``analysis_jobs``): add, claim, finish, count.

The queue's rules (which rule enqueues what, lease length, retry delays, how many attempts)
live in :mod:`medshard.analysis.queue`; here is only how each step reads and writes the rows.
Every function takes the caller's session and leaves the transaction to it: a claim is one
short write transaction of :func:`fail_abandoned` then :func:`lease_jobs`, and a job's final
state commits together with its finding.

Claiming differs per backend, so that two claimers never hold one job:

* PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks rows no other claimer holds, then
  one ``UPDATE`` leases them; concurrent workers never block on or double-claim a row.
* SQLite: a single ``UPDATE ... WHERE id IN (SELECT ... LIMIT n)`` statement; SQLite runs one
  writer at a time, and a single statement is atomic.

Results are written with a conditional update (``WHERE lease_owner = token``), so a worker
whose lease was taken over cannot overwrite the newer owner's state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from medshard.catalog.models import AnalysisJob, utcnow

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
NOT_ELIGIBLE = "not_eligible"
STATES = (PENDING, RUNNING, DONE, FAILED, NOT_ELIGIBLE)


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to one worker; ``token`` proves the lease when the result is recorded."""

    id: int
    sop_instance_uid: str
    study_instance_uid: str
    model: str
    attempts: int
    token: str


def add_job(
    session: Session,
    *,
    sop_instance_uid: str,
    study_instance_uid: str,
    model: str,
    state: str,
    error: str,
    now: datetime,
) -> None:
    """Add a job row to ``session`` without flushing: the ingest hook runs inside a group
    commit shared with other instances, before the instance row is flushed."""
    job = _new_job(sop_instance_uid, study_instance_uid, model, now)
    job.state = state
    job.error = error
    session.add(job)


def _new_job(
    sop_instance_uid: str, study_instance_uid: str, model: str, now: datetime
) -> AnalysisJob:
    """A job row never claimed, due from ``now``."""
    return AnalysisJob(
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        model=model,
        attempts=0,
        available_at=now,
        created_at=now,
        updated_at=now,
    )


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Pending, or running under an expired lease; and due."""
    expired = and_(AnalysisJob.state == RUNNING, AnalysisJob.lease_expires_at < now)
    return and_(or_(AnalysisJob.state == PENDING, expired), AnalysisJob.available_at <= now)


def has_claimable(session: Session, now: datetime) -> bool:
    """Whether any job could be claimed now: a read, so idle pollers take no write lock."""
    return bool(session.scalar(select(exists().where(_claimable(now)))))


def fail_abandoned(session: Session, *, now: datetime, max_attempts: int) -> None:
    """Fail the expired leases of jobs that used up their attempts, so a job that crashes
    every worker touching it stops being handed out."""
    session.execute(
        update(AnalysisJob)
        .where(
            AnalysisJob.state == RUNNING,
            AnalysisJob.lease_expires_at < now,
            AnalysisJob.attempts >= max_attempts,
        )
        .values(
            state=FAILED,
            error=(
                f"abandoned after {max_attempts} attempts: the worker holding "
                "it stopped before finishing (crashed, killed or timed out)"
            ),
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def lease_jobs(
    session: Session,
    *,
    token: str,
    now: datetime,
    expires: datetime,
    limit: int,
    sqlite: bool,
) -> list[ClaimedJob]:
    """Lease up to ``limit`` claimable jobs, oldest first, under ``token`` until ``expires``;
    the jobs leased (each attempt counted)."""
    pick = select(AnalysisJob.id).where(_claimable(now)).order_by(AnalysisJob.id).limit(limit)
    if sqlite:
        target: ColumnElement[bool] = AnalysisJob.id.in_(pick.scalar_subquery())
    else:
        ids = list(session.scalars(pick.with_for_update(skip_locked=True)))
        if not ids:
            return []
        target = AnalysisJob.id.in_(ids)
    session.execute(
        update(AnalysisJob)
        .where(target, _claimable(now))
        .values(
            state=RUNNING,
            lease_owner=token,
            lease_expires_at=expires,
            attempts=AnalysisJob.attempts + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(
            AnalysisJob.id,
            AnalysisJob.sop_instance_uid,
            AnalysisJob.study_instance_uid,
            AnalysisJob.model,
            AnalysisJob.attempts,
        ).where(AnalysisJob.lease_owner == token)
    ).all()
    return [ClaimedJob(r[0], r[1], r[2], r[3], r[4], token) for r in rows]


def _write_leased(session: Session, job: ClaimedJob, **values: Any) -> bool:
    """Release a leased job with ``values``, only while ``job.token`` still holds its lease;
    whether it did (a lost lease writes nothing)."""
    result = session.execute(
        update(AnalysisJob)
        .where(AnalysisJob.id == job.id, AnalysisJob.lease_owner == job.token)
        .values(lease_owner=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def finish_job(
    session: Session, job: ClaimedJob, state: str, *, error: str, model_sha256: str
) -> bool:
    """Write a leased job's final state and release it; False if the lease was lost."""
    return _write_leased(
        session,
        job,
        state=state,
        error=error[:1024],
        model_sha256=model_sha256,
        updated_at=utcnow(),
    )


def release_job(
    session: Session,
    job: ClaimedJob,
    state: str,
    *,
    error: str,
    available_at: datetime,
    now: datetime,
) -> None:
    """Hand a leased job back: pending again from ``available_at``, or failed for good."""
    _write_leased(
        session, job, state=state, error=error[:1024], available_at=available_at, updated_at=now
    )


def job_counts(session: Session) -> dict[str, int]:
    """Jobs per state (every state present, zero if none)."""
    rows = session.execute(
        select(AnalysisJob.state, func.count()).group_by(AnalysisJob.state)
    ).all()
    found = {str(s): int(n) for s, n in rows}
    return {s: found.get(s, 0) for s in STATES}


def set_state(
    session: Session,
    *,
    sop_instance_uid: str,
    study_instance_uid: str,
    model: str,
    state: str,
    error: str = "",
    model_sha256: str = "",
) -> None:
    """Create or overwrite the job row of (instance, model) without a lease.

    Batch analysis uses it so that what it did is visible in the same table the API reads
    and so that queue workers do not redo it. Flushes: the caller owns the transaction.
    """
    now = utcnow()
    job = session.scalar(
        select(AnalysisJob).where(
            AnalysisJob.sop_instance_uid == sop_instance_uid, AnalysisJob.model == model
        )
    )
    if job is None:
        job = _new_job(sop_instance_uid, study_instance_uid, model, now)
        session.add(job)
    job.state = state
    job.error = error[:1024]
    job.model_sha256 = model_sha256
    job.attempts = (job.attempts or 0) + 1
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    session.flush()
