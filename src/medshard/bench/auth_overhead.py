"""What authorization and audit add to a QIDO-RS or WADO-RS request, measured in-process on
the benchmark's own deployment and data, as the service runs them.

Per request the security layer costs: resolving the bearer token (a cache hit after the
first request), narrowing the catalog query to what the caller may see, and queueing the
audit event. Each part is timed ``rounds`` times and reported at p50 and p99; the scoped
query is timed beside the same query without the scope, so the difference is the policy's
own cost on this catalog, not the query's.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medshard.catalog.matching import SingleValue
from medshard.catalog.models import Instance, Series, StoredObject, Study
from medshard.catalog.search import search
from medshard.cluster.archive import Archive
from medshard.security.gate import Gate
from medshard.security.policy import scope_of, visible_studies


def _times(fn: Callable[[], Any], rounds: int) -> list[float]:
    for _ in range(min(20, rounds)):
        fn()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _ms(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": _ms(values, 0.5),
        "p99_ms": _ms(values, 0.99),
        "mean_ms": round(1000 * statistics.fmean(values), 3),
    }


def measure_overhead(
    home: Path, token: str, studies: Sequence[tuple[str, str, str, str]], rounds: int = 500
) -> dict[str, Any]:
    """``studies``: (study, series, sop, patient id) of stored instances the token may read."""
    with Archive.open(home, probe=False) as archive, Gate(archive) as gate:
        principal = gate.authenticate(token, "bench")
        study, series, sop, patient = studies[len(studies) // 2]
        conditions = {"PatientID": SingleValue(patient)}

        def qido(scoped: bool) -> Callable[[], Any]:
            def run() -> Any:  # the scope is built per request, as the service does
                scope = scope_of(principal) if scoped else None
                with archive.catalog.session() as session:
                    return search(session, "STUDY", conditions, fields=None, scope=scope)

            return run

        def lookup(scoped: bool) -> Callable[[], Any]:
            query = (
                select(StoredObject.object_key, Study.patient_pk)
                .select_from(Instance)
                .join(Series, Instance.series_pk == Series.id)
                .join(Study, Series.study_pk == Study.id)
                .join(StoredObject, Instance.object_pk == StoredObject.id)
                .where(
                    Study.study_instance_uid == study,
                    Series.series_instance_uid == series,
                    Instance.sop_instance_uid == sop,
                )
            )

            def run() -> Any:
                stmt = query.where(visible_studies(principal)) if scoped else query
                with archive.catalog.session() as session:
                    return session.execute(stmt).all()

            return run

        assert qido(True)() and lookup(True)(), "the token must see the sampled study"
        auth = _times(lambda: gate.authenticate(token, "bench"), rounds)
        audit = _times(
            lambda: gate.read(principal, "read", patient_pk=None, study_uid=study), rounds
        )
        qido_scoped, qido_plain = _times(qido(True), rounds), _times(qido(False), rounds)
        wado_scoped, wado_plain = _times(lookup(True), rounds), _times(lookup(False), rounds)
        gate.audit.flush(30)

    def added(scoped: list[float], plain: list[float]) -> float:
        return round(
            _ms(auth, 0.5) + _ms(audit, 0.5) + max(0.0, _ms(scoped, 0.5) - _ms(plain, 0.5)), 3
        )

    return {
        "rounds": rounds,
        "authenticate": _stats(auth),
        "audit_enqueue": _stats(audit),
        "qido_query_scoped": _stats(qido_scoped),
        "qido_query_unscoped": _stats(qido_plain),
        "wado_lookup_scoped": _stats(wado_scoped),
        "wado_lookup_unscoped": _stats(wado_plain),
        "added_p50_ms": {
            "qido": added(qido_scoped, qido_plain),
            "wado": added(wado_scoped, wado_plain),
        },
        "goal_p50_ms": 1.0,
    }
