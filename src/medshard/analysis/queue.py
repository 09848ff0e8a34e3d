"""The durable analysis queue: jobs enqueued on ingest, claimed by workers under a lease.

Ingest never waits for a model. The ingest hook adds one ``analysis_jobs`` row per matching
rule in the *same* transaction as the instance, so an acknowledged image always has its job and
a job never points at an image that was rolled back; the rows survive any restart because
they are catalog rows. Workers (threads in ``medshard serve``, ``medshard ai worker``) claim
jobs by writing a lease: their owner token and an expiry. A worker that crashes simply stops
renewing nothing; once the lease expires the job is claimable again, up to ``max_attempts``
claims, after which it is failed with the reason rather than retried for ever.

Claiming is one short write transaction on either backend (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, one atomic ``UPDATE ... WHERE id IN (SELECT ...)`` on SQLite), and a result is
written only while its lease holds; the statements are in :mod:`medshard.catalog.analysis_queue`.
Times come from the workers' clocks (UTC), which are assumed to agree to well within a lease
(NTP).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from medshard.catalog import analysis_queue as jobs
from medshard.catalog.analysis_queue import DONE as DONE
from medshard.catalog.analysis_queue import FAILED as FAILED
from medshard.catalog.analysis_queue import NOT_ELIGIBLE as NOT_ELIGIBLE
from medshard.catalog.analysis_queue import PENDING as PENDING
from medshard.catalog.analysis_queue import RUNNING as RUNNING
from medshard.catalog.analysis_queue import STATES as STATES
from medshard.catalog.analysis_queue import ClaimedJob as ClaimedJob
from medshard.catalog.db import Catalog
from medshard.catalog.models import Instance, utcnow
from medshard.config import AnalysisRule
from medshard.ingest.dicom import InstanceFields

if TYPE_CHECKING:  # the pipeline imports this module lazily, from inside a call
    from medshard.ingest.pipeline import Ingestor

log = logging.getLogger(__name__)

#: SOP Class UIDs of every Structured Report family (PS3.4 B.5): never analysed as images.
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."

#: Seconds a claim is valid; far longer than one small batch takes, short enough that a
#: crashed worker's jobs are picked up again within minutes.
DEFAULT_LEASE_S = 120.0
#: Claims of one job before it is failed (a poison image that kills workers must not loop).
DEFAULT_MAX_ATTEMPTS = 3
#: First retry delay after a transient failure; doubles with every attempt.
DEFAULT_RETRY_DELAY_S = 5.0


def worker_identity(name: str = "worker") -> str:
    """``host:pid:name`` so an operator can tell from the table which process holds a job."""
    return f"{socket.gethostname()}:{os.getpid()}:{name}"[:100]


# -- rules and the ingest hook ------------------------------------------------------------


def is_structured_report(sop_class_uid: str, modality: str = "") -> bool:
    """Whether an instance is an SR (ours or anyone's); SRs are never analysed as images."""
    return sop_class_uid.startswith(SR_CLASS_PREFIX) or modality.strip().upper() == "SR"


def _norm(values: list[str]) -> set[str]:
    return {v.strip().upper() for v in values}


def rule_verdict(rule: AnalysisRule, modality: str, body_part: str) -> str | None:
    """How ``rule`` treats an instance: None if it does not apply, ``""`` if the instance is a
    candidate, else a ``not eligible: ...`` reason.

    A rule applies to the modalities it names (all, if it names none). Within those, an image
    of another body part is recorded as not eligible, so a knee radiograph shows *why* the
    chest model did not run instead of silently having no result; other modalities (MR, CT,
    ...) are simply not the model's business and get no record at all.
    """
    mod = modality.strip().upper()
    if rule.modalities and mod not in _norm(rule.modalities):
        return None
    body = body_part.strip().upper()
    if rule.body_parts and body not in _norm(rule.body_parts):
        wanted = ", ".join(sorted(b or "(blank)" for b in _norm(rule.body_parts)))
        return f"not eligible: body part {body or '(blank)'} is not one of {wanted}"
    return ""


def rule_for_model(rules: list[AnalysisRule], model: str) -> AnalysisRule | None:
    """The configured rule naming ``model``, if any (a job outlives a configuration change)."""
    return next((r for r in rules if r.model == model), None)


class AnalysisHook:
    """The ingest hook: enqueue a job per matching rule, inside the instance's transaction.

    Runs inside a group commit shared with other instances, so it only ``add``s rows (no
    flush) and links them by SOP Instance UID. Structured Reports, including the ones
    analysis itself stores, are never enqueued.
    """

    def __init__(self, rules: list[AnalysisRule]) -> None:
        self.rules = list(rules)

    def __call__(self, session: Session, instance: Instance, fields: InstanceFields) -> None:
        enqueue(session, fields, self.rules)

    def __repr__(self) -> str:
        return f"AnalysisHook(models={[r.model for r in self.rules]})"


def enqueue(session: Session, fields: InstanceFields, rules: list[AnalysisRule]) -> int:
    """Add the jobs ``rules`` call for one instance to ``session`` (no flush); how many."""
    if is_structured_report(fields.sop_class_uid, fields.modality):
        return 0
    seen: set[str] = set()
    for rule in rules:
        verdict = rule_verdict(rule, fields.modality, fields.body_part)
        if verdict is None or rule.model in seen:
            continue
        seen.add(rule.model)
        jobs.add_job(
            session,
            sop_instance_uid=fields.sop_instance_uid,
            study_instance_uid=fields.study_instance_uid,
            model=rule.model,
            state=NOT_ELIGIBLE if verdict else PENDING,
            error=verdict,
            now=utcnow(),
        )
    return len(seen)


def attach_to_ingestor(ingestor: Ingestor) -> None:
    """Called by every :class:`~medshard.ingest.pipeline.Ingestor`; adds the hook once.

    An empty ``analysis_rules`` setting disables analysis. Jobs are enqueued even where torch
    is not installed: the queue is durable, and a worker elsewhere (``medshard ai worker``)
    can serve them.
    """
    rules = list(ingestor.archive.settings.analysis_rules)
    if not rules or any(isinstance(h, AnalysisHook) for h in ingestor.hooks):
        return
    ingestor.hooks.append(AnalysisHook(rules))


# -- the queue ----------------------------------------------------------------------------


class JobQueue:
    """Claims, leases and finishes jobs in the catalog.

    Parameters
    ----------
    catalog
        The catalog holding ``analysis_jobs``.
    lease_s
        How long a claim is valid; an unfinished job is claimable again after it.
    max_attempts
        Claims before a job is failed for good.
    retry_delay_s
        Delay before the first retry of a transient failure; doubled per further attempt.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_delay_s: float = DEFAULT_RETRY_DELAY_S,
    ) -> None:
        self.catalog = catalog
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._claims = 0
        self._lock = threading.Lock()

    def has_claimable(self) -> bool:
        """A read-only check, so idle workers polling the queue never take the write lock."""
        with self.catalog.session() as session:
            return jobs.has_claimable(session, utcnow())

    def claim(self, owner: str, limit: int = 8) -> list[ClaimedJob]:
        """Lease up to ``limit`` jobs, oldest first, to ``owner``.

        Expired leases of jobs that have used up their attempts are failed first, so a job
        that crashes every worker that touches it stops being handed out.
        """
        with self._lock:
            self._claims += 1
            token = f"{owner}/{self._claims}-{uuid.uuid4().hex[:8]}"[:128]
        now = utcnow()
        expires = now + timedelta(seconds=self.lease_s)
        with self.catalog.transaction() as session:
            jobs.fail_abandoned(session, now=now, max_attempts=self.max_attempts)
            return jobs.lease_jobs(
                session,
                token=token,
                now=now,
                expires=expires,
                limit=limit,
                sqlite=self.catalog.is_sqlite,
            )

    def finish(
        self,
        session: Session,
        job: ClaimedJob,
        state: str,
        *,
        error: str = "",
        model_sha256: str = "",
    ) -> bool:
        """Record a final state in the caller's transaction; False if the lease was lost."""
        ok = jobs.finish_job(session, job, state, error=error, model_sha256=model_sha256)
        if not ok:
            log.warning("lease of analysis job %s was lost before it finished", job.id)
        return ok

    def retry_later(self, job: ClaimedJob, error: str) -> str:
        """After a transient failure: back to pending with a growing delay, or failed for good.

        Returns the state written.
        """
        now = utcnow()
        if job.attempts >= self.max_attempts:
            state, when = FAILED, now
            error = f"failed after {job.attempts} attempts: {error}"
        else:
            state = PENDING
            when = now + timedelta(seconds=self.retry_delay_s * 2 ** max(job.attempts - 1, 0))
        with self.catalog.transaction() as session:
            jobs.release_job(session, job, state, error=error, available_at=when, now=now)
        return state

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, zero if none)."""
        with self.catalog.session() as session:
            return jobs.job_counts(session)
