"""AI findings over HTTP, and the analysis workers that run inside ``medshard serve``.

``GET /api/findings?study=UID|patient=ID|sop=UID`` and ``GET /api/studies/{study}/findings``
return the findings (label, probability, threshold, model id and hash, time, SR reference)
together with the analysis jobs of the same instances, so a client can tell "not analysed
yet" (pending/running) from "not eligible" or "failed" (with the reason) from a finding.
``POST /api/findings/summary`` answers a whole worklist in one request: per study, its
headline finding or where its analysis stands. ``GET /api/models/{name}/card`` is the model
card of a model that made findings (a shipped package, or one the analysis rules name).

:func:`install` registers the startup and shutdown hooks that run a queue worker thread
beside the HTTP service: ingest from any door (import, STOW-RS, C-STORE) only enqueues, and
this thread picks the jobs up, including those enqueued while the service was down.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, Field

from medshard.analysis.findings import finding_json, job_json, query
from medshard.analysis.package import models_dir, read_card, resolve_model_dir, shipped_models
from medshard.analysis.queue import FAILED, PENDING, RUNNING
from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.catalog.findings import findings_of_studies, job_states_of_studies
from medshard.catalog.lookups import visible_study_patients
from medshard.catalog.models import Finding
from medshard.errors import AnalysisError, NotFoundError
from medshard.ingest.uids import check_uid
from medshard.security.context import require_caller
from medshard.security.policy import audit_results, visible_studies

log = logging.getLogger(__name__)

router = APIRouter(tags=["findings"], dependencies=[Depends(valid_path_uids)])


@router.get("/api/findings")
def list_findings(
    archive: ArchiveDep,
    study: str | None = Query(None, description="Study Instance UID"),
    patient: str | None = Query(None, description="Patient ID"),
    sop: str | None = Query(None, description="SOP Instance UID of the analysed image"),
) -> dict[str, Any]:
    """Findings and analysis states matching every filter given (at least one), among the
    studies the caller may see."""
    caller = require_caller()
    with archive.catalog.session() as session:
        findings, jobs = query(session, study=study, patient=patient, sop=sop)
        uids = {f.study_instance_uid for f in findings} | {j.study_instance_uid for j in jobs}
        rows = visible_study_patients(session, sorted(uids), visible_studies(caller.principal))
        visible = {uid for uid, _pk in rows}
        audit_results(
            caller,
            "findings",
            [{"_patient_pk": pk, "StudyInstanceUID": uid} for uid, pk in rows],
            detail="findings list",
        )
        return {
            "findings": [finding_json(f) for f in findings if f.study_instance_uid in visible],
            "jobs": [job_json(j) for j in jobs if j.study_instance_uid in visible],
        }


@router.get("/api/studies/{study}/findings")
def study_findings(study: str, archive: ArchiveDep) -> dict[str, Any]:
    """Findings and analysis states of one study; 404 if there is no such study the caller
    may see (a forbidden study answers as a missing one)."""
    caller = require_caller()
    found = caller.gate.study_visible(caller.principal, study)
    caller.gate.read(caller.principal, "findings", patient_pk=found.patient_pk, study_uid=study)
    with archive.catalog.session() as session:
        findings, jobs = query(session, study=study)
        return {
            "study_instance_uid": study,
            "findings": [finding_json(f) for f in findings],
            "jobs": [job_json(j) for j in jobs],
        }


#: Most studies one summary request may name (a worklist page holds at most 500).
MAX_SUMMARY_STUDIES = 1000


class StudyList(BaseModel):
    studies: list[str] = Field(min_length=1, max_length=MAX_SUMMARY_STUDIES)


def _headline(found: list[Finding]) -> Finding:
    """The finding a list shows for a study: the most probable above its threshold, else
    the most probable of all."""
    return max(found, key=lambda f: (bool(f.positive), f.probability))


@router.post("/api/findings/summary")
def findings_summary(body: StudyList, archive: ArchiveDep) -> dict[str, Any]:
    """Per study named (among those the caller may see; others are left out as if absent):
    its headline finding and how many findings it has, or, with none yet, whether analysis
    is pending or failed. Studies with neither are left out. One audit event per patient."""
    caller = require_caller()
    uids = sorted(set(body.studies))
    for uid in uids:
        check_uid(uid, "study UID")
    with archive.catalog.session() as session:
        rows = visible_study_patients(session, uids, visible_studies(caller.principal))
        visible = sorted(uid for uid, _pk in rows)
        by_study = findings_of_studies(session, visible)
        states = job_states_of_studies(session, visible)
    audit_results(
        caller,
        "findings",
        [{"_patient_pk": pk, "StudyInstanceUID": uid} for uid, pk in rows],
        detail="findings summary",
    )
    out: dict[str, dict[str, Any]] = {}
    for uid in visible:
        open_jobs = states.get(uid, set()) & {PENDING, RUNNING}
        if uid in by_study:
            top = _headline(by_study[uid])
            out[uid] = {
                "state": "done",
                "label": top.label,
                "positive": bool(top.positive),
                "probability": top.probability,
                "threshold": top.threshold,
                "model": top.model,
                "model_id": top.model_id,
                "findings": len(by_study[uid]),
                "pending": bool(open_jobs),
            }
        elif open_jobs:
            out[uid] = {"state": "pending"}
        elif FAILED in states.get(uid, set()):
            out[uid] = {"state": "failed"}
    return {"studies": out}


def _model_dirs(archive_rules: list[str]) -> list[Path]:
    """Packages whose cards may be shown: the shipped ones and those the rules name."""
    dirs = [models_dir() / name for name in shipped_models()]
    for model in archive_rules:
        try:
            dirs.append(resolve_model_dir(model))
        except AnalysisError:
            continue  # a misconfigured rule: the worker reports it; no card to show
    return dirs


@router.get("/api/models/{name}/card")
def model_card(
    name: str,
    archive: ArchiveDep,
    sha256: str | None = Query(None, description="weights hash of a finding, to compare"),
) -> dict[str, Any]:
    """The JSON model card of a model by name (its package's directory name or its card's
    ``name``), for any signed-in user: it holds no patient data. Only shipped packages and
    those the deployment's analysis rules name are served, never an arbitrary path.
    ``sha256_matches`` says whether the card describes the weights given in ``sha256``."""
    caller = require_caller()
    rules = [rule.model for rule in archive.settings.analysis_rules]
    cards: list[dict[str, Any]] = []
    for directory in _model_dirs(rules):
        try:
            card = read_card(directory)
        except AnalysisError:
            continue
        if name in (directory.name, card.get("name")):
            cards.append(card)
    if not cards:
        caller.gate.read(caller.principal, "model-card", detail=f"no model {name}")
        raise NotFoundError(f"no model card for {name!r}")
    wanted = (sha256 or "").lower()
    card = next((c for c in cards if wanted and c.get("sha256") == wanted), cards[0])
    caller.gate.read(caller.principal, "model-card", detail=f"{card.get('model_id', name)}")
    return {**card, "sha256_matches": (card.get("sha256") == wanted) if wanted else None}


def _start_worker(app: FastAPI) -> None:
    """Startup hook: one analysis worker thread, if analysis is configured and installed."""
    archive = app.state.archive
    app.state.analysis_worker = None
    if not archive.settings.analysis_rules:
        return
    if importlib.util.find_spec("torch") is None:
        log.warning(
            "analysis rules are configured but torch is not installed: jobs stay queued for "
            "`medshard ai worker` on a machine with medshard[ai]"
        )
        return
    from medshard.analysis.worker import QueueWorker
    from medshard.security.principal import system_principal

    _site, audit_sr = app.state.gate.store_hook(system_principal("analysis"))
    app.state.analysis_worker = QueueWorker(archive, name="serve", on_commit=audit_sr).start()


def _stop_worker(app: FastAPI) -> None:
    """Shutdown hook: finish the batch in hand; leases of anything unfinished expire."""
    worker = getattr(app.state, "analysis_worker", None)
    if worker is not None:
        worker.stop(timeout=10)


def install(app: FastAPI) -> None:
    """Register the worker's lifespan hooks on an app made by ``create_app``."""
    app.state.startup_hooks.append(_start_worker)
    app.state.shutdown_hooks.append(_stop_worker)
