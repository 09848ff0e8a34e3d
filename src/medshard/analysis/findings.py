"""Findings in the catalog: recording a worker's outcome, and reading findings for the API.

The tables themselves (``findings``, ``analysis_jobs``) live in :mod:`medshard.catalog.models`
so Alembic sees one metadata, and their statements in :mod:`medshard.catalog.findings`.
Nothing here needs torch, so the API can serve findings on a machine that never runs a model.

An outcome is recorded in one transaction: the finding (if any) and the job's final state
commit together, so the API never shows a job "done" without its finding or the reverse.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medshard.analysis.package import read_card, resolve_model_dir
from medshard.analysis.queue import DONE, FAILED, ClaimedJob, JobQueue
from medshard.catalog import findings as rows
from medshard.catalog.analysis_queue import set_state
from medshard.catalog.db import Catalog
from medshard.catalog.models import AnalysisJob, Finding, utcnow
from medshard.errors import AnalysisError, InvalidInputError

log = logging.getLogger(__name__)

#: Outcome states besides the job states: the instance already has a finding by these weights.
SKIPPED = "skipped"


@dataclass(frozen=True)
class FindingRecord:
    """Everything a finding stores; built by the worker, written by :func:`record_outcome`."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    model: str
    model_id: str
    model_sha256: str
    label: str
    probability: float
    threshold: float
    positive: bool
    sr_sop_instance_uid: str = ""
    sr_series_instance_uid: str = ""
    created_at: datetime = field(default_factory=utcnow)
    #: What ``probability`` means: the prior it is adjusted to, the operating point that set
    #: ``threshold``, and whether it is calibrated. The SR states them; the catalog row keeps
    #: probability and threshold, and the rest is recoverable from the model card by hash.
    prior: float = 0.5
    operating_point: str = ""
    calibrated: bool = False


@dataclass(frozen=True)
class Outcome:
    """What analysing one instance came to.

    Attributes
    ----------
    state
        ``done`` (with ``finding``), ``skipped`` (a finding by the same weights exists),
        ``not_eligible`` or ``failed`` (with ``error`` saying why).
    transient
        For ``failed``: whether trying again later may succeed (storage unreachable, model
        not loadable) rather than being a property of the image.
    """

    sop_instance_uid: str
    state: str
    study_instance_uid: str = ""
    error: str = ""
    finding: FindingRecord | None = None
    transient: bool = False
    model_sha256: str = ""


def record_outcome(
    catalog: Catalog,
    outcome: Outcome,
    *,
    model: str,
    job: ClaimedJob | None = None,
    queue: JobQueue | None = None,
) -> str:
    """Commit an outcome: the finding and the job state together.

    With ``job`` (a queue worker), the leased job is finished, or for a transient failure
    handed back to the queue for a later retry. Without (batch analysis), the job row of
    (instance, model) is created or overwritten. A concurrent writer of the same finding
    (another worker, a batch beside the service) makes the insert conflict; the transaction
    is then retried once, finds the finding and only sets the state.

    Returns
    -------
    str
        The job state written.
    """
    if job is not None and queue is not None and outcome.state == FAILED and outcome.transient:
        return queue.retry_later(job, outcome.error)
    state = DONE if outcome.state in (DONE, SKIPPED) else outcome.state
    for attempt in (1, 2):
        try:
            with catalog.transaction() as session:
                if outcome.finding is not None:
                    rows.add_finding(session, asdict(outcome.finding))
                if job is not None and queue is not None:
                    queue.finish(
                        session,
                        job,
                        state,
                        error=outcome.error,
                        model_sha256=outcome.model_sha256,
                    )
                else:
                    set_state(
                        session,
                        sop_instance_uid=outcome.sop_instance_uid,
                        study_instance_uid=outcome.study_instance_uid,
                        model=model,
                        state=state,
                        error=outcome.error,
                        model_sha256=outcome.model_sha256,
                    )
            return state
        except IntegrityError:
            if attempt == 2:
                raise
            log.info("finding of %s written concurrently; retrying", outcome.sop_instance_uid)
    return state  # not reached


# -- reading, for the API -----------------------------------------------------------------


def query(
    session: Session,
    *,
    study: str | None = None,
    patient: str | None = None,
    sop: str | None = None,
) -> tuple[list[Finding], list[AnalysisJob]]:
    """Findings and analysis jobs matching every filter given (at least one is required).

    Raises
    ------
    InvalidInputError
        If no filter is given: the archive holds far too many findings to list them all.
    """
    if not (study or patient or sop):
        raise InvalidInputError("give at least one of study, patient or sop")
    return rows.findings_and_jobs(session, study=study, patient=patient, sop=sop)


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 in UTC; SQLite hands timezone-aware columns back naive (they are UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


@functools.lru_cache(maxsize=64)
def _card_meaning(model: str, sha: str) -> tuple[str, float] | None:
    """(operating point name, its log-likelihood-ratio cut-off) of the calibrated package that
    made a finding, if the package installed under that name still has those weights."""
    try:
        card = read_card(resolve_model_dir(model))
        if card.get("sha256") != sha or not card.get("calibration"):
            return None
        op = card["operating_point"]
        return str(op["name"]), float(op["threshold_llr"])
    except (AnalysisError, KeyError, TypeError, ValueError):
        return None


def meaning(f: Finding) -> dict[str, Any]:
    """What a finding's probability and threshold mean, from the card of the weights that made
    it: calibrated or not, the operating point, and the prior (recovered exactly from the stored
    threshold, which is the operating point's cut-off at that prior)."""
    known = _card_meaning(f.model, f.model_sha256)
    if known is None or not 0.0 < f.threshold < 1.0:
        return {"calibrated": None, "operating_point": None, "prior": None}
    name, llr_cut = known
    log_odds = math.log(f.threshold) - math.log1p(-f.threshold) - llr_cut
    return {
        "calibrated": True,
        "operating_point": name,
        "prior": round(1.0 / (1.0 + math.exp(-log_odds)), 6),
    }


def finding_json(f: Finding) -> dict[str, Any]:
    """The API form of a finding, with the DICOMweb path of its SR and what its probability
    means (calibrated, for which prior, at which operating point)."""
    sr_url = (
        f"/dicom-web/studies/{f.study_instance_uid}/series/{f.sr_series_instance_uid}"
        f"/instances/{f.sr_sop_instance_uid}"
        if f.sr_sop_instance_uid
        else None
    )
    return {
        "sop_instance_uid": f.sop_instance_uid,
        "series_instance_uid": f.series_instance_uid,
        "study_instance_uid": f.study_instance_uid,
        "patient_id": f.patient_id,
        "model": f.model,
        "model_id": f.model_id,
        "model_sha256": f.model_sha256,
        "label": f.label,
        "positive": bool(f.positive),
        "probability": f.probability,
        "threshold": f.threshold,
        **meaning(f),
        "created_at": _iso(f.created_at),
        "sr_sop_instance_uid": f.sr_sop_instance_uid or None,
        "sr_series_instance_uid": f.sr_series_instance_uid or None,
        "sr_url": sr_url,
    }


def job_json(j: AnalysisJob) -> dict[str, Any]:
    """The API form of a job: where analysis of an instance stands, and why if it stopped."""
    return {
        "sop_instance_uid": j.sop_instance_uid,
        "study_instance_uid": j.study_instance_uid,
        "model": j.model,
        "state": j.state,
        "attempts": j.attempts,
        "error": j.error or None,
        "model_sha256": j.model_sha256 or None,
        "updated_at": _iso(j.updated_at),
    }
