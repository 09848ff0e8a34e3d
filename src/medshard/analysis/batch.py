"""Batch analysis: run a model over stored images, shard by shard, on any executor.

The driver plans the work from the catalog: every stored image in scope (one shard, one
study, or everything) that the rule's modalities select, minus those that already have a
finding by the *same model hash* and those already recorded as not eligible. The plan is cut
into tasks of a few instances, never spanning shards (the shard is the unit of batch work),
and an :class:`~medshard.analysis.executors.Executor` runs :func:`run_task` over them.

Each task commits every instance's outcome as soon as it has it, so killing a worker (or the
whole batch) loses at most the instance in hand: running the same command again plans only
what is still missing. The SR of an instance has a UID derived from the image and the model
hash, and findings are unique per (image, hash), so even an instance interrupted between
storing its SR and committing its finding is finished without a duplicate of either.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medshard.analysis.executors import Executor
from medshard.analysis.findings import SKIPPED, record_outcome
from medshard.analysis.package import package_identity
from medshard.analysis.queue import NOT_ELIGIBLE, SR_CLASS_PREFIX
from medshard.analysis.worker import Analyser
from medshard.catalog.findings import unanalysed_instances
from medshard.catalog.lookups import study_pk_of
from medshard.cluster.archive import Archive
from medshard.config import AnalysisRule
from medshard.errors import InvalidInputError, NotFoundError

log = logging.getLogger(__name__)

#: Instances per task: small enough to spread a shard over workers and to keep a killed
#: task's loss small, large enough that scheduling costs little next to the work.
DEFAULT_CHUNK = 16
#: Instances run through the model together inside a task; each is committed on its own.
INFER_GROUP = 4


@dataclass(frozen=True)
class Scope:
    """What to analyse: exactly one of a shard, a study or everything."""

    shard: int | None = None
    study: str | None = None
    everything: bool = False

    def validate(self, shards: int) -> None:
        """InvalidInputError unless exactly one choice is made and it is in range."""
        chosen = sum([self.shard is not None, bool(self.study), self.everything])
        if chosen != 1:
            raise InvalidInputError("choose exactly one of --shard N, --study UID or --all")
        if self.shard is not None and not 0 <= self.shard < shards:
            raise InvalidInputError(f"shard {self.shard} is out of range 0..{shards - 1}")

    def describe(self) -> str:
        if self.shard is not None:
            return f"shard {self.shard}"
        if self.study:
            return f"study {self.study}"
        return "all shards"


@dataclass(frozen=True)
class BatchTask:
    """One unit of work for an executor; plain data so it pickles to any process or node."""

    home: str
    model: str
    rule: AnalysisRule | None
    shard: int
    sop_instance_uids: tuple[str, ...]


@dataclass
class TaskResult:
    """Outcome counts of one task (``done``, ``skipped``, ``not_eligible``, ``failed``)."""

    shard: int
    instances: int
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    pid: int = 0


def plan(
    archive: Archive,
    scope: Scope,
    *,
    model: str,
    model_sha256: str,
    rule: AnalysisRule | None,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[list[BatchTask], int]:
    """The tasks still to run for ``scope``, and how many instances are already done.

    Raises
    ------
    InvalidInputError, NotFoundError
        For a bad scope or an unknown study.
    """
    scope.validate(archive.settings.shards)
    with archive.catalog.session() as session:
        if scope.study and study_pk_of(session, scope.study) is None:
            raise NotFoundError(f"no study with Study Instance UID {scope.study}")
        rows, already = unanalysed_instances(
            session,
            model=model,
            model_sha256=model_sha256,
            skip_sop_class_prefix=SR_CLASS_PREFIX,
            modalities=rule.modalities if rule is not None else (),
            shard=scope.shard,
            study=scope.study,
        )
    by_shard: dict[int, list[str]] = defaultdict(list)
    for shard, sop in rows:
        by_shard[shard].append(sop)
    home = str(archive.settings.home)
    tasks = [
        BatchTask(home, model, rule, shard, tuple(sops[i : i + chunk]))
        for shard, sops in sorted(by_shard.items())
        for i in range(0, len(sops), chunk)
    ]
    return tasks, already


# -- inside the worker processes ----------------------------------------------------------

_ANALYSERS: dict[str, Analyser] = {}


def _analyser_for(home: str) -> Analyser:
    """One archive and model cache per worker process, opened on its first task."""
    analyser = _ANALYSERS.get(home)
    if analyser is None:
        warnings.filterwarnings("ignore", module="pydicom")
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        try:
            import torch

            torch.set_num_threads(1)  # one process per CPU already; threads would contend
        except ImportError:
            pass
        analyser = Analyser(Archive.open(home))
        _ANALYSERS[home] = analyser
    return analyser


def run_task(task: BatchTask) -> TaskResult:
    """Analyse one task's instances, committing each outcome as soon as it is known."""
    analyser = _analyser_for(task.home)
    catalog = analyser.archive.catalog
    result = TaskResult(task.shard, len(task.sop_instance_uids), pid=os.getpid())
    counts: dict[str, int] = defaultdict(int)
    sops = list(task.sop_instance_uids)
    for start in range(0, len(sops), INFER_GROUP):
        for outcome in analyser.analyse(sops[start : start + INFER_GROUP], task.model, task.rule):
            record_outcome(catalog, outcome, model=task.model)
            counts[outcome.state] += 1
            if outcome.error and outcome.state != NOT_ELIGIBLE and len(result.errors) < 5:
                result.errors.append(f"{outcome.sop_instance_uid}: {outcome.error}")
    result.counts = dict(counts)
    return result


# -- the driver ---------------------------------------------------------------------------


def model_hash(model: str) -> tuple[str, str]:
    """(sha256, model id) of the model that will run, without importing torch: the driver
    only needs to know which weights will run, to skip what they already did."""
    return package_identity(model)


def run_batch(
    archive: Archive,
    scope: Scope,
    executor: Executor,
    *,
    models: list[str] | None = None,
    chunk: int = DEFAULT_CHUNK,
    on_plan: Callable[[int], Any] | None = None,
    on_task: Callable[[TaskResult], Any] | None = None,
) -> dict[str, Any]:
    """Analyse everything in ``scope`` not yet analysed by each model's current weights.

    Parameters
    ----------
    archive
        The deployment (its home is what worker processes open).
    scope
        One shard, one study or all.
    executor
        Local process pool or Ray.
    models
        Models to run; default: those of the configured analysis rules (each with its rule).
    on_plan, on_task
        Progress callbacks: instances planned in total, then each finished task.

    Returns
    -------
    dict
        JSON-ready report: counts per outcome, planned and skipped instances, seconds.

    Raises
    ------
    AnalysisError
        If workers die mid-batch (what they committed stays; re-run to finish).
    """
    rules = archive.settings.analysis_rules
    if models:
        pairs = [(m, next((r for r in rules if r.model == m), None)) for m in models]
    else:
        pairs = [(r.model, r) for r in rules]
        if not pairs:
            raise InvalidInputError("analysis_rules is empty (analysis disabled): pass --model")
    start = time.perf_counter()
    planned: list[tuple[str, list[BatchTask], int, str, str]] = []
    for model, rule in pairs:
        sha, model_id = model_hash(model)
        tasks, already = plan(archive, scope, model=model, model_sha256=sha, rule=rule, chunk=chunk)
        planned.append((model, tasks, already, sha, model_id))
    total = sum(len(t.sop_instance_uids) for _m, tasks, *_r in planned for t in tasks)
    if on_plan:
        on_plan(total)
    report: dict[str, Any] = {
        "scope": scope.describe(),
        "executor": executor.name,
        "models": [],
        "planned": total,
        "already_done": sum(p[2] for p in planned),
    }
    totals: dict[str, int] = defaultdict(int)
    for model, tasks, already, sha, model_id in planned:
        counts: dict[str, int] = defaultdict(int)
        errors: list[str] = []
        shards = sorted({t.shard for t in tasks})
        for res in executor.map(run_task, tasks):
            for state, n in res.counts.items():
                counts[state] += n
                totals[state] += n
            errors.extend(res.errors)
            if on_task:
                on_task(res)
        report["models"].append(
            {
                "model": model,
                "model_id": model_id,
                "model_sha256": sha,
                "already_done": already,
                "planned": sum(len(t.sop_instance_uids) for t in tasks),
                "shards": shards,
                "analysed": counts["done"],
                "skipped": counts[SKIPPED],
                "not_eligible": counts[NOT_ELIGIBLE],
                "failed": counts["failed"],
                "errors": errors[:20],
            }
        )
    report.update(
        analysed=totals["done"],
        skipped=totals[SKIPPED],
        not_eligible=totals[NOT_ELIGIBLE],
        failed=totals["failed"],
        seconds=round(time.perf_counter() - start, 3),
    )
    return report
