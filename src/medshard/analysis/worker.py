"""Running models over stored instances: the analyser shared by queue workers and batches.

:class:`Analyser` takes SOP Instance UIDs and a model, and for each instance reads the bytes
from the storage nodes (decrypted in memory only; plaintext never touches the disk), checks
eligibility, preprocesses, runs the model on the whole group at once, stores the SR with the
study (ingested like any instance, so DICOMweb and DIMSE serve it) and returns an
:class:`~medshard.analysis.findings.Outcome` per instance. Nothing an image contains can make
it raise: a corrupt or non-chest image becomes a ``not_eligible`` outcome with the reason.

:class:`QueueWorker` drives an analyser from the durable queue, in a background thread of
``medshard serve`` or in ``medshard ai worker``.

torch is imported only when the first model loads, so starting the service stays fast.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from medshard.analysis.findings import SKIPPED, FindingRecord, Outcome, record_outcome
from medshard.analysis.preprocess import prepare_dataset
from medshard.analysis.queue import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    DONE,
    FAILED,
    NOT_ELIGIBLE,
    ClaimedJob,
    JobQueue,
    rule_for_model,
    rule_verdict,
    worker_identity,
)
from medshard.analysis.sr import build_finding_sr, sr_bytes
from medshard.catalog.findings import findings_present
from medshard.catalog.instances import studies_and_sites_of
from medshard.catalog.lookups import instance_pk_of
from medshard.cluster.archive import Archive
from medshard.config import AnalysisRule
from medshard.errors import AnalysisError, MedshardError, NotFoundError
from medshard.ingest.pipeline import CommitHook, Ingestor

if TYPE_CHECKING:
    from medshard.analysis.model import Assessment, LoadedModel

log = logging.getLogger(__name__)


class ModelCache:
    """Models loaded once per process (thread-safe), by rule model name."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        """The loaded model; AnalysisError if it cannot be loaded (or torch is missing)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                try:
                    from medshard.analysis.model import load_model
                except ImportError as exc:
                    raise AnalysisError(
                        f"cannot run model {name!r}: the analysis extra is not installed "
                        f"({exc}); pip install 'medshard[ai]'"
                    ) from exc
                model = load_model(name, device=self.device)
                self._models[name] = model
            return model


@dataclass
class _Prepared:
    sop: str
    ds: pydicom.Dataset
    x: np.ndarray
    prior: float | None = None


def prior_for(rule: AnalysisRule | None, site: str) -> float | None:
    """The class prior configured for images from ``site`` under ``rule``.

    A site's own prior wins, then the rule's; None (also for 0, "not set") lets the model
    card's documented default apply. Probabilities are adjusted to this prior; the call is the
    same at every prior, because the operating point is a likelihood-ratio cut-off.
    """
    if rule is None:
        return None
    if site and site in rule.site_priors:
        return float(rule.site_priors[site]) or None
    return float(rule.prior) or None


class Analyser:
    """Runs a model over stored instances and stores each result's SR with its study.

    Parameters
    ----------
    archive
        The deployment to read images from and store SRs into.
    models
        Shared model cache; one per process so each model loads once.
    """

    def __init__(
        self,
        archive: Archive,
        models: ModelCache | None = None,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.archive = archive
        self.models = models or ModelCache()
        # SRs are stored without the analysis hook: they must never be analysed themselves.
        self.ingestor = Ingestor(archive)
        #: Runs in each SR's commit: the security layer's audit of the archive's own writes.
        self.on_commit = on_commit

    def analyse(
        self, sops: list[str], model: str, rule: AnalysisRule | None = None
    ) -> list[Outcome]:
        """Analyse ``sops`` with ``model``; one outcome per SOP, in order.

        Parameters
        ----------
        sops
            SOP Instance UIDs of stored instances.
        model
            A shipped model name or package directory (as in an analysis rule).
        rule
            Narrows eligibility to the rule's modalities and body parts; the model's own
            checks (:func:`medshard.analysis.preprocess.eligible`) always apply.
        """
        try:
            loaded = self.models.get(model)
        except AnalysisError as exc:
            return [Outcome(s, FAILED, error=str(exc), transient=True) for s in sops]
        with self.archive.catalog.session() as session:
            done = findings_present(session, sops, loaded.sha256)
            rows = studies_and_sites_of(session, sops)
        studies = {str(sop): str(study) for sop, study, _site in rows}
        sites = {str(sop): str(site or "") for sop, _study, site in rows}
        results: dict[str, Outcome] = {
            s: Outcome(s, SKIPPED, model_sha256=loaded.sha256) for s in sops if s in done
        }
        prepared: list[_Prepared] = []
        for sop in sops:
            if sop in results:
                continue
            item = self._prepare(sop, rule)
            if isinstance(item, Outcome):
                results[sop] = item
            else:
                item.prior = prior_for(rule, sites.get(sop, ""))
                prepared.append(item)
        if prepared:
            try:
                assessed = loaded.assess(
                    np.stack([p.x for p in prepared]), [p.prior for p in prepared]
                )
            except Exception as exc:  # torch errors too: fail these jobs, keep the worker
                assessed = None
                for p in prepared:
                    results[p.sop] = Outcome(
                        p.sop, FAILED, error=f"inference failed: {exc}", transient=True
                    )
            if assessed is not None:
                for p, result in zip(prepared, assessed, strict=True):
                    results[p.sop] = self._store(p, result, model, loaded)
        # Every outcome names its study, so the API can list refusals by study as well.
        return [
            replace(results[s], study_instance_uid=studies.get(s, ""))
            if not results[s].study_instance_uid
            else results[s]
            for s in sops
        ]

    def _prepare(self, sop: str, rule: AnalysisRule | None) -> _Prepared | Outcome:
        """Read, parse and preprocess one instance, or the outcome saying why not."""
        try:
            key = self.archive.store.load_key_of_instance(sop)
            data = self.archive.store.read_all(key)
        except NotFoundError as exc:
            return Outcome(sop, FAILED, error=f"instance is no longer stored: {exc}")
        except MedshardError as exc:  # nodes down, quorum lost: may work later
            return Outcome(sop, FAILED, error=f"could not read the image: {exc}", transient=True)
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # pydicom raises assorted errors on damaged files
            return Outcome(
                sop, NOT_ELIGIBLE, error=f"not eligible: unreadable DICOM ({type(exc).__name__})"
            )
        study = str(ds.get("StudyInstanceUID", "") or "")
        if rule is not None:
            modality = str(ds.get("Modality", "") or "")
            verdict = rule_verdict(rule, modality, str(ds.get("BodyPartExamined", "") or ""))
            if verdict is None:
                verdict = f"not eligible: modality {modality or '(none)'} is not in the rule"
            if verdict:
                return Outcome(sop, NOT_ELIGIBLE, study_instance_uid=study, error=verdict)
        try:
            x = prepare_dataset(ds)
        except AnalysisError as exc:
            state = NOT_ELIGIBLE if str(exc).startswith("not eligible") else FAILED
            return Outcome(sop, state, study_instance_uid=study, error=str(exc))
        except Exception as exc:  # defensive: an image must never crash a worker
            return Outcome(
                sop,
                NOT_ELIGIBLE,
                study_instance_uid=study,
                error=f"not eligible: image could not be preprocessed ({exc})",
            )
        return _Prepared(sop, ds, x)

    def _store(self, p: _Prepared, result: Assessment, model: str, loaded: LoadedModel) -> Outcome:
        """Store the SR of one result and return the outcome carrying its finding.

        The call is made here, once (``result.positive``: calibrated probability >= the
        operating point's threshold at the image's prior), and the SR and the finding both
        carry that same probability, threshold, prior and operating point.
        """
        ds = p.ds
        study = str(ds.StudyInstanceUID)
        try:
            sr = build_finding_sr(
                ds,
                model_id=loaded.model_id,
                model_sha256=loaded.sha256,
                probability=result.probability,
                threshold=result.threshold,
                prior=result.prior,
                operating_point=result.operating_point,
                calibrated=result.calibrated,
            )
        except AnalysisError as exc:  # the image lacks what an SR needs: retrying cannot help
            return Outcome(p.sop, FAILED, study_instance_uid=study, error=str(exc))
        try:
            self._ingest_sr(sr)
        except MedshardError as exc:  # quorum lost, nodes down: retry later
            return Outcome(
                p.sop,
                FAILED,
                study_instance_uid=study,
                error=f"could not store the SR: {exc}",
                transient=True,
            )
        classes = loaded.card.get("classes") or ["normal", "pneumonia"]
        positive = result.positive
        record = FindingRecord(
            sop_instance_uid=p.sop,
            series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            study_instance_uid=study,
            patient_id=str(ds.get("PatientID", "") or "")[:128],
            model=model,
            model_id=loaded.model_id,
            model_sha256=loaded.sha256,
            label=str(classes[1] if positive else classes[0])[:64],
            probability=result.probability,
            threshold=result.threshold,
            positive=positive,
            sr_sop_instance_uid=str(sr.SOPInstanceUID),
            sr_series_instance_uid=str(sr.SeriesInstanceUID),
            prior=result.prior,
            operating_point=result.operating_point,
            calibrated=result.calibrated,
        )
        return Outcome(
            p.sop, DONE, study_instance_uid=study, finding=record, model_sha256=loaded.sha256
        )

    def _sr_stored(self, sop_instance_uid: str) -> bool:
        with self.archive.catalog.session() as session:
            found = instance_pk_of(session, sop_instance_uid)
        return found is not None

    def _ingest_sr(self, sr: pydicom.Dataset) -> None:
        """Store the SR unless it already is.

        Its UID is fixed by the image and the model hash, so a stored one means an earlier try
        (or a concurrent worker: a batch beside the service) got this far; its bytes differ
        only in creation times, so the ingestor's "different bytes" refusal means the same.
        """
        uid = str(sr.SOPInstanceUID)
        if self._sr_stored(uid):
            return
        outcome = self.ingestor.ingest_stream(
            io.BytesIO(sr_bytes(sr)), f"analysis-sr:{uid}", on_commit=self.on_commit
        )
        if outcome.status == "rejected" and not self._sr_stored(uid):
            raise AnalysisError(f"the archive refused the SR: {outcome.reason}")


@dataclass
class WorkerReport:
    """Jobs a worker finished, by final state."""

    claimed: int = 0
    states: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, **dict(self.states)}


class QueueWorker:
    """Claims jobs from the durable queue and analyses them, batch by batch.

    Parameters
    ----------
    archive
        The deployment whose queue to serve.
    name
        Part of the lease owner string, to tell workers apart in the table.
    batch_size
        Jobs claimed per round; the model runs once over all of them.
    lease_s, max_attempts
        See :class:`~medshard.analysis.queue.JobQueue`.
    poll_s
        Sleep between looks at an empty queue (the look is a cheap read, not a write).
    """

    def __init__(
        self,
        archive: Archive,
        *,
        name: str = "worker",
        batch_size: int = 8,
        lease_s: float = DEFAULT_LEASE_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        poll_s: float = 1.0,
        models: ModelCache | None = None,
        on_commit: CommitHook | None = None,
    ) -> None:
        self.archive = archive
        self.queue = JobQueue(archive.catalog, lease_s=lease_s, max_attempts=max_attempts)
        self.analyser = Analyser(archive, models, on_commit)
        self.owner = worker_identity(name)
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.report = WorkerReport()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def process_batch(self) -> int:
        """Claim and finish one batch of jobs; how many were claimed (0: queue empty)."""
        if not self.queue.has_claimable():
            return 0
        jobs = self.queue.claim(self.owner, self.batch_size)
        by_model: dict[str, list[ClaimedJob]] = defaultdict(list)
        for job in jobs:
            by_model[job.model].append(job)
        rules = self.archive.settings.analysis_rules
        for model, group in by_model.items():
            outcomes = self.analyser.analyse(
                [j.sop_instance_uid for j in group], model, rule_for_model(rules, model)
            )
            for job, outcome in zip(group, outcomes, strict=True):
                state = record_outcome(
                    self.archive.catalog, outcome, model=model, job=job, queue=self.queue
                )
                self.report.states[state] += 1
                log.info("analysis of %s by %s: %s", job.sop_instance_uid, model, state)
        self.report.claimed += len(jobs)
        return len(jobs)

    def run_once(self) -> WorkerReport:
        """Work until nothing is claimable (retries waiting for their delay are left)."""
        while not self._stop.is_set() and self.process_batch():
            pass
        return self.report

    def run_forever(self) -> None:
        """Work until :meth:`stop`; errors are logged and the loop goes on after a pause."""
        while not self._stop.is_set():
            try:
                claimed = self.process_batch()
            except Exception:  # the catalog may be briefly unreachable: keep serving
                log.exception("analysis worker round failed; retrying")
                claimed = 0
            if not claimed:
                self._stop.wait(self.poll_s)

    def start(self) -> QueueWorker:
        """Run :meth:`run_forever` in a daemon thread."""
        self._thread = threading.Thread(
            target=self.run_forever, name=f"analysis-{self.owner}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand, then stop; unfinished leases simply expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
