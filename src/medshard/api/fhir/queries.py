"""FHIR searches and reads over the catalog, filtered by who is asking, and audited.

Each search is one filtered, ordered, paged query in the database (the caller's visibility
is part of the SQL, as for QIDO-RS), then one audit event per patient shown, and one per
Patient that ``_include`` added. A read by id that finds nothing the caller may see answers
404, audited as denied when the thing exists.

Measured over 10^5 documents (``medshard bench records``), a search costs what its page
costs, not what its matches cost (how, is in :mod:`medshard.catalog.fhir_queries`); and the
resources are built as dicts, of which one per type and page is checked against the
``fhir.resources`` models (validating every one was two thirds of a search's time; the tests
validate every resource returned).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, not_, or_
from starlette.datastructures import QueryParams

from medshard.api.fhir import resources as res
from medshard.api.fhir.model import check
from medshard.api.fhir.search import (
    Accepted,
    Found,
    accept,
    date_condition,
    paging,
    patient_refs,
    searchset,
    sort_keys,
)
from medshard.catalog import fhir_queries as fq
from medshard.catalog import record_reads as reads
from medshard.catalog.models import Patient, Series, Study
from medshard.catalog.records_models import Document, SensorSegment
from medshard.errors import InvalidInputError, NotFoundError
from medshard.ingest import series_codec
from medshard.ingest.signals import SIGNALS
from medshard.ingest.times import period_of
from medshard.records import access
from medshard.security.context import Caller, require_caller
from medshard.security.policy import visible_patients, visible_studies


def _audit(caller: Caller, kind: str, shown: dict[int, str]) -> None:
    """One read event per patient whose data a search showed (or one, when none)."""
    if not shown:
        caller.gate.read(caller.principal, "fhir-search", detail=f"{kind}: no match")
    for pk, pid in list(shown.items())[:200]:
        caller.gate.read(
            caller.principal, "fhir-search", patient_pk=pk, patient_id=pid, detail=kind
        )


def _page(params: QueryParams) -> fq.Page:
    """The page a search asks for (``_count``, ``_offset``), and whether to count its total."""
    count, offset = paging(params)
    return fq.Page(count, offset, total=params.get("_total") != "none")


def _order(
    params: QueryParams, default: str, columns: Mapping[str, Any], tiebreak: Any
) -> list[Any]:
    """ORDER BY of ``_sort`` (keys :func:`search.accept` kept), then ``tiebreak`` in the
    first key's direction, so that pages never overlap."""
    keys = [(k, desc) for k, desc in sort_keys(params, default) if k in columns]
    keys = keys or sort_keys(QueryParams(), default)
    out = [columns[k].desc() if desc else columns[k].asc() for k, desc in keys]
    return [*out, tiebreak.desc() if keys[0][1] else tiebreak.asc()]


def _patient_filter(params: QueryParams, column: Any) -> list[ColumnElement[bool]]:
    """``patient``/``subject`` on a patient pk column (a subquery, so no join is needed)."""
    return [fq.patient_pk_in(column, refs) for refs in patient_refs(params)]


def _dates(params: QueryParams, start: Any, end: Any) -> list[ColumnElement[bool]]:
    return [date_condition(v, start, end) for v in params.getlist("date")]


def _included(caller: Caller, accepted: Accepted, shown: dict[int, str]) -> list[dict[str, Any]]:
    """The Patients of a page's matches, when ``_include`` asks for them (each audited)."""
    if not accepted.include_patient or not shown:
        return []
    with caller.gate.catalog.session() as session:
        found = fq.patients_by_pk(session, sorted(shown), _patient_visible(caller))
    kept = [p for p in found if res.FHIR_ID.match(p.patient_id)]
    for p in kept:
        caller.gate.read(
            caller.principal,
            "fhir-search",
            patient_pk=p.id,
            patient_id=p.patient_id,
            detail=f"Patient (_include from {accepted.resource_type})",
        )
    return [res.patient(p) for p in kept]


def searchset_for(
    resource_type: str, params: QueryParams, base: str, *, strict: bool = False
) -> dict[str, Any]:
    """The ``searchset`` Bundle a ``GET /fhir/{resource_type}?params`` answers.

    The first match and the first included resource of the page are validated with
    ``fhir.resources`` (a mapping bug shows at once); the others are built the same way.
    """
    accepted = accept(resource_type, params, strict=strict)
    searches: dict[str, Callable[[Accepted], Found]] = {
        "Patient": search_patients,
        "DocumentReference": search_documents,
        "ImagingStudy": lambda a: search_studies(a, base),
        "Observation": search_observations,
    }
    found = searches[resource_type](accepted)
    for sample in (found.matches[:1], found.included[:1]):
        for resource in sample:
            check(resource)
    return searchset(base, accepted, found)


# ------------------------------------------------------------------------------- Patient


def _patient_visible(caller: Caller) -> ColumnElement[bool]:
    p = caller.principal
    return or_(visible_patients(p), access.in_reach(p, Patient.id))


_PATIENT_SORT = {"_id": Patient.patient_id, "_lastUpdated": Patient.created_at}


def search_patients(accepted: Accepted) -> Found:
    caller, params = require_caller(), accepted.params
    where = [_patient_visible(caller), Patient.wrapped_key.is_not(None)]
    where += [Patient.patient_id == v for v in params.getlist("_id")]
    for ident in params.getlist("identifier"):
        system, _, value = ident.rpartition("|")
        if system and system != res.PATIENT_ID_SYSTEM:
            where.append(Patient.id.is_(None))  # no other identifier system is kept
        where.append(Patient.patient_id == value)
    order = _order(params, "_id", _PATIENT_SORT, Patient.id)
    with caller.gate.catalog.session() as session:
        page, total = fq.patients_page(session, where, order, _page(params))
    found = [p for p in page if res.FHIR_ID.match(p.patient_id)]
    _audit(caller, "Patient", {p.id: p.patient_id for p in found})
    return Found([res.patient(p) for p in found], total)


def read_patient(patient_id: str) -> dict[str, Any]:
    caller = require_caller()
    with caller.gate.catalog.session() as session:
        found = fq.visible_patient(session, patient_id, _patient_visible(caller))
    if found is None:
        access.reach_patient(caller.gate, caller.principal, patient_id, "fhir-read")  # 404
        raise NotFoundError(f"no Patient/{patient_id}")
    caller.gate.read(
        caller.principal, "fhir-read", patient_pk=found.id, patient_id=patient_id, detail="Patient"
    )
    return res.patient(found)


# --------------------------------------------------------------------- DocumentReference


_DOC_SORT = {
    "date": Document.doc_date,
    "_lastUpdated": Document.updated_at,
    "_id": Document.doc_uid,
}


def search_documents(accepted: Accepted) -> Found:
    caller, params = require_caller(), accepted.params
    where = [access.visible(caller.principal, Document.patient_pk, Document.source_site_id)]
    where += _patient_filter(params, Document.patient_pk)
    where += _dates(params, Document.doc_date, Document.doc_date)
    for value in params.getlist("type"):
        where.append(Document.doc_type.in_([t.rpartition("|")[2] for t in value.split(",")]))
    order = _order(params, "-date", _DOC_SORT, Document.id)
    with caller.gate.catalog.session() as session:
        found, total = fq.documents_page(session, where, order, _page(params))
    shown = {r.patient_pk: r.patient_id for r in found}
    included = _included(caller, accepted, shown)
    _audit(caller, "DocumentReference", shown)
    return Found([res.document_reference(r) for r in found], total, included)


# ---------------------------------------------------------------------------- ImagingStudy


def _day(value: datetime) -> str:
    return value.strftime("%Y%m%d")


def _study_dates(params: QueryParams) -> list[ColumnElement[bool]]:
    """``date`` on a study's day (``study_date``, YYYYMMDD): the study spans that whole day."""
    out = []
    day = Study.study_date
    for value in params.getlist("date"):
        prefix = value[:2] if value[:2].isalpha() else "eq"
        lo, hi = period_of(value[2:] if value[:2].isalpha() else value)
        ceil_lo = (
            lo
            if lo == lo.replace(hour=0, minute=0, second=0, microsecond=0)
            else (lo + timedelta(days=1))
        )
        starts_in = and_(day != "", day >= _day(ceil_lo))  # a >= lo
        ends_in = and_(day != "", day < _day(hi))  # b < hi  (b = end of that day)
        within = and_(starts_in, ends_in)
        after = and_(day != "", day >= _day(hi))
        before = and_(day != "", day < _day(ceil_lo))
        table = {
            "eq": within,
            "ne": not_(within),
            "gt": after,
            "lt": before,
            "ge": or_(after, within),
            "le": or_(before, within),
        }
        if prefix not in table:
            raise InvalidInputError(f"date prefix {prefix!r} is not supported")
        out.append(table[prefix])
    return out


_STUDY_SORT = {
    "date": Study.study_date,
    "started": Study.study_date,
    "_id": Study.study_instance_uid,
}


def _studies(
    where: list[ColumnElement[bool]], accepted: Accepted | None, base: str
) -> tuple[list[dict[str, Any]], int | None, dict[int, str]]:
    caller = require_caller()
    params = accepted.params if accepted is not None else QueryParams()
    where = [visible_studies(caller.principal), *where]
    order = _order(params, "-date", _STUDY_SORT, Study.id)
    page = _page(params) if accepted is not None else None
    with caller.gate.catalog.session() as session:
        found, total = fq.studies_page(session, where, order, page)
        counts = fq.series_with_counts(session, [s.id for s, _pid in found])
    by_study: dict[int, list[tuple[Series, int]]] = {}
    for series, n in counts:
        by_study.setdefault(series.study_pk, []).append((series, n))
    out = [res.imaging_study(s, pid, by_study.get(s.id, []), base) for s, pid in found]
    return out, total, {s.patient_pk: pid for s, pid in found}


def search_studies(accepted: Accepted, base: str) -> Found:
    params = accepted.params
    where = _patient_filter(params, Study.patient_pk) + _study_dates(params)
    found, total, shown = _studies(where, accepted, base)
    caller = require_caller()
    included = _included(caller, accepted, shown)
    _audit(caller, "ImagingStudy", shown)
    return Found(found, total, included)


def read_study(uid: str, base: str) -> dict[str, Any]:
    caller = require_caller()
    study = caller.gate.study_visible(caller.principal, uid)  # 404, audited, when hidden
    found, _total, _shown = _studies([Study.id == study.id], None, base)
    caller.gate.read(
        caller.principal,
        "fhir-read",
        patient_pk=study.patient_pk,
        study_uid=uid,
        detail="ImagingStudy",
    )
    return found[0]


# ----------------------------------------------------------------------------- Observation


def _segment_visible(caller: Caller) -> ColumnElement[bool]:
    return access.visible(caller.principal, SensorSegment.patient_pk, SensorSegment.source_site_id)


def _code_filter(params: QueryParams) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    for token in params.getlist("code"):
        system, _, code = token.rpartition("|")
        names = [
            s.name
            for s in SIGNALS.values()
            if s.code == code and (not system or s.system == system)
        ]
        out.append(SensorSegment.signal.in_(names))
    return out


def _observations(found: Sequence[Any]) -> list[dict[str, Any]]:
    caller = require_caller()
    store, near = caller.gate.archive.store, caller.gate.site_of(caller.principal)
    out = []
    for seg, key, pid in found:
        t, v = series_codec.decode(store.read_all(key, near_site=near))
        out.append(res.observation(seg, pid, t, v))
    return out


_OBS_SORT = {
    "date": SensorSegment.start_at,
    "_lastUpdated": SensorSegment.created_at,
    "_id": SensorSegment.segment_uid,
}


def search_observations(accepted: Accepted) -> Found:
    caller, params = require_caller(), accepted.params
    where = [_segment_visible(caller), *_patient_filter(params, SensorSegment.patient_pk)]
    where += _dates(params, SensorSegment.start_at, SensorSegment.end_at)
    where += _code_filter(params)
    order = _order(params, "-date", _OBS_SORT, SensorSegment.id)
    with caller.gate.catalog.session() as session:
        found, total = fq.segments_page(session, where, order, _page(params))
    shown = {seg.patient_pk: pid for seg, _k, pid in found}
    included = _included(caller, accepted, shown)
    _audit(caller, "Observation", shown)
    return Found(_observations(found), total, included)


def read_observation(uid: str) -> dict[str, Any]:
    caller = require_caller()
    visible = _segment_visible(caller)
    with caller.gate.catalog.session() as session:
        found = reads.segments(session, SensorSegment.segment_uid == uid, visible)
        owner = reads.segment_owner(session, uid)
    if not found:
        if owner is not None:
            caller.gate.denied(
                caller.principal, "fhir-read", patient_pk=owner, detail=f"Observation/{uid}"
            )
        raise NotFoundError(f"no Observation/{uid}")
    seg, _key, pid = found[0]
    caller.gate.read(
        caller.principal,
        "fhir-read",
        patient_pk=seg.patient_pk,
        patient_id=pid,
        detail="Observation",
    )
    return _observations(found)[0]
