"""AI findings over HTTP, and the analysis workers that run inside ``medshard serve``.

``GET /api/findings?study=UID|patient=ID|sop=UID`` and ``GET /api/studies/{study}/findings``
return the findings (label, probability, threshold, model id and hash, time, SR reference)
together with the analysis jobs of the same instances, so a client can tell "not analysed
yet" (pending/running) from "not eligible" or "failed" (with the reason) from a finding.

:func:`install` registers the startup and shutdown hooks that run a queue worker thread
beside the HTTP service: ingest from any door (import, STOW-RS, C-STORE) only enqueues, and
this thread picks the jobs up, including those enqueued while the service was down.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query
from sqlalchemy import select

from medshard.analysis.findings import finding_json, job_json, query
from medshard.api.deps import ArchiveDep
from medshard.api.dicomweb.path_uids import valid_path_uids
from medshard.catalog.models import Study
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
        rows = session.execute(
            select(Study.study_instance_uid, Study.patient_pk).where(
                Study.study_instance_uid.in_(sorted(uids)), visible_studies(caller.principal)
            )
        ).all()
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
