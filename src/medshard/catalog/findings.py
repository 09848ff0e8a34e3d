"""Findings and their analysis jobs as the API and batch analysis read and write them.

A finding is unique per (instance, model hash), so every writer checks for the one it would
add, and the unique constraint backs that up against a concurrent writer (the caller's
transaction is then retried, by :func:`medshard.analysis.findings.record_outcome`). Each
function takes the caller's session and leaves the transaction to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, exists, func, select
from sqlalchemy.orm import Session

from medshard.catalog.analysis_queue import NOT_ELIGIBLE
from medshard.catalog.models import AnalysisJob, Finding, Instance, Patient, Series, Study

#: SOP UIDs per SQL IN-list when checking a group of instances for findings.
_IN_BATCH = 500
#: Fields of a finding that the catalog row stores.
_COLUMNS = frozenset(c.name for c in Finding.__table__.columns) - {"id"}


def findings_present(session: Session, sop_uids: Sequence[str], model_sha256: str) -> set[str]:
    """Which of ``sop_uids`` already have a finding by the weights with this hash."""
    found: set[str] = set()
    for start in range(0, len(sop_uids), _IN_BATCH):
        part = sop_uids[start : start + _IN_BATCH]
        found.update(
            session.scalars(
                select(Finding.sop_instance_uid).where(
                    Finding.sop_instance_uid.in_(part), Finding.model_sha256 == model_sha256
                )
            )
        )
    return found


def add_finding(session: Session, values: Mapping[str, Any]) -> None:
    """Add a finding (``values`` may carry more fields than the row keeps) unless one by the
    same weights exists: a retried or duplicated run adds nothing."""
    exists_already = session.scalar(
        select(Finding.id).where(
            Finding.sop_instance_uid == values["sop_instance_uid"],
            Finding.model_sha256 == values["model_sha256"],
        )
    )
    if exists_already is None:
        session.add(Finding(**{k: v for k, v in values.items() if k in _COLUMNS}))


def findings_and_jobs(
    session: Session,
    *,
    study: str | None = None,
    patient: str | None = None,
    sop: str | None = None,
) -> tuple[list[Finding], list[AnalysisJob]]:
    """Findings and analysis jobs matching every filter given, each in insertion order.

    Jobs carry no Patient ID, so ``patient`` selects them through the patient's studies.
    """
    fq = select(Finding)
    jq = select(AnalysisJob)
    if study:
        fq = fq.where(Finding.study_instance_uid == study)
        jq = jq.where(AnalysisJob.study_instance_uid == study)
    if sop:
        fq = fq.where(Finding.sop_instance_uid == sop)
        jq = jq.where(AnalysisJob.sop_instance_uid == sop)
    if patient:
        fq = fq.where(Finding.patient_id == patient)
        studies = (
            select(Study.study_instance_uid)
            .join(Patient, Study.patient_pk == Patient.id)
            .where(Patient.patient_id == patient)
        )
        jq = jq.where(AnalysisJob.study_instance_uid.in_(studies))
    findings = list(session.scalars(fq.order_by(Finding.id)))
    jobs = list(session.scalars(jq.order_by(AnalysisJob.id)))
    return findings, jobs


def findings_of_studies(session: Session, study_uids: Sequence[str]) -> dict[str, list[Finding]]:
    """The findings of each of these studies that has any (a worklist's summary)."""
    by_study: dict[str, list[Finding]] = {}
    for f in session.scalars(select(Finding).where(Finding.study_instance_uid.in_(study_uids))):
        by_study.setdefault(f.study_instance_uid, []).append(f)
    return by_study


def job_states_of_studies(session: Session, study_uids: Sequence[str]) -> dict[str, set[str]]:
    """The states the analysis jobs of each of these studies are in (studies with jobs)."""
    states: dict[str, set[str]] = {}
    for uid, state in session.execute(
        select(AnalysisJob.study_instance_uid, AnalysisJob.state).where(
            AnalysisJob.study_instance_uid.in_(study_uids)
        )
    ):
        states.setdefault(uid, set()).add(state)
    return states


def unanalysed_instances(
    session: Session,
    *,
    model: str,
    model_sha256: str,
    skip_sop_class_prefix: str,
    modalities: Sequence[str] = (),
    shard: int | None = None,
    study: str | None = None,
) -> tuple[list[tuple[int, str]], int]:
    """What a batch run still has to analyse, and how many instances are already done.

    Live instances (of ``modalities``, if any; of one shard or one study, if given; never of
    SOP classes starting with ``skip_sop_class_prefix``) without a finding by the weights
    ``model_sha256`` nor a not-eligible verdict of ``model``: as (shard, SOP UID), by shard
    then storage order; and the count of those in scope that have such a finding.
    """
    done = exists().where(
        and_(
            Finding.sop_instance_uid == Instance.sop_instance_uid,
            Finding.model_sha256 == model_sha256,
        )
    )
    refused = exists().where(
        and_(
            AnalysisJob.sop_instance_uid == Instance.sop_instance_uid,
            AnalysisJob.model == model,
            AnalysisJob.state == NOT_ELIGIBLE,
        )
    )
    base = (
        select(Patient.shard, Instance.sop_instance_uid)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
        .where(
            Instance.deleted.is_(False), ~Instance.sop_class_uid.startswith(skip_sop_class_prefix)
        )
    )
    if modalities:
        base = base.where(func.upper(Series.modality).in_([m.upper() for m in modalities]))
    if shard is not None:
        base = base.where(Patient.shard == shard)
    if study:
        base = base.where(Study.study_instance_uid == study)
    already = session.scalar(select(func.count()).select_from(base.where(done).subquery()))
    rows = session.execute(base.where(~done, ~refused).order_by(Patient.shard, Instance.id)).all()
    return [(int(s), str(sop)) for s, sop in rows], int(already or 0)
