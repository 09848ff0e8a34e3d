"""Catalog rows as FHIR R4 resources (plain dicts, validated by :func:`model.validated`).

Ids: a patient's is its Patient ID, a document's (``DocumentReference`` and its ``Binary``)
its public document id, a study's its Study Instance UID, an ``Observation``'s the id of the
sensor segment (one signal, one UTC day, one batch) it shows. Patient IDs that are not valid
FHIR ids (``[A-Za-z0-9.-]{1,64}``) cannot be named in FHIR and are left out of it.
"""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from medshard.api.fhir.search import INCLUDES, SORTS
from medshard.catalog.models import Patient, Series, Study
from medshard.catalog.records import DocRow, as_utc
from medshard.catalog.records_models import SensorSegment
from medshard.ingest.signals import LOINC, signal_named

FHIR_ID: Final = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
PATIENT_ID_SYSTEM: Final = "urn:medshard:patient-id"
UCUM: Final = "http://unitsofmeasure.org"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
#: Sampled data cells per Observation at most (a day of ECG is coarsened to fit).
MAX_CELLS: Final = 20_000


def instant(value: datetime) -> str:
    """An instant to the millisecond, written as ``fhir.resources`` writes it (no fraction
    when it is zero, else six digits), so that a resource is the same text whether or not it
    went through the models."""
    at = as_utc(value)
    return at.replace(microsecond=at.microsecond // 1000 * 1000).isoformat().replace("+00:00", "Z")


def patient(row: Patient) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "id": row.patient_id,
        "meta": {"lastUpdated": instant(row.created_at)},
        "identifier": [{"system": PATIENT_ID_SYSTEM, "value": row.patient_id}],
    }
    if row.name:
        family, _, given = row.name.partition("^")
        name: dict[str, Any] = {"text": row.name.replace("^", " ").strip()}
        if family:
            name["family"] = family
        if given:
            name["given"] = [g for g in given.split("^") if g][:3] or None
        out["name"] = [{k: v for k, v in name.items() if v}]
    if re.fullmatch(r"\d{8}", row.birth_date or ""):
        b = row.birth_date
        out["birthDate"] = f"{b[:4]}-{b[4:6]}-{b[6:]}"
    gender = {"M": "male", "F": "female", "O": "other"}.get((row.sex or "").upper())
    if gender:
        out["gender"] = gender
    return out


def document_reference(row: DocRow) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": row.content_type,
        "url": f"Binary/{row.doc_uid}/_history/{row.version}",
        "size": row.size,
        "creation": instant(row.date),
    }
    if row.filename or row.title:
        attachment["title"] = row.filename or row.title
    out: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": row.doc_uid,
        "meta": {"versionId": str(row.version), "lastUpdated": instant(row.created_at)},
        "status": "current" if row.version == row.latest_version else "superseded",
        "subject": {"reference": f"Patient/{row.patient_id}"},
        "date": instant(row.date),
        "content": [{"attachment": attachment}],
    }
    if row.doc_type:
        out["type"] = {"text": row.doc_type}
    if row.title:
        out["description"] = row.title
    if row.author:
        out["author"] = [{"display": row.author}]
    if row.site:
        out["custodian"] = {"display": row.site}
    return out


def binary(row: DocRow, data: bytes | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Binary",
        "id": row.doc_uid,
        "meta": {"versionId": str(row.version), "lastUpdated": instant(row.created_at)},
        "contentType": row.content_type,
        "securityContext": {"reference": f"Patient/{row.patient_id}"},
    }
    if data is not None:
        out["data"] = base64.b64encode(data).decode()
    return out


def imaging_study(
    study: Study, patient_id: str, series: list[tuple[Series, int]], base: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.study_instance_uid,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_instance_uid}"}],
        "status": "available",
        "subject": {"reference": f"Patient/{patient_id}"},
        "endpoint": [{"reference": "Endpoint/dicomweb"}],
        "numberOfSeries": len(series),
        "numberOfInstances": sum(n for _s, n in series),
        "series": [
            {
                "uid": s.series_instance_uid,
                "modality": {"system": DCM, "code": s.modality or "OT"},
                "numberOfInstances": n,
                **({"number": s.series_number} if s.series_number is not None else {}),
                **({"description": s.series_description} if s.series_description else {}),
            }
            for s, n in series
        ],
    }
    if re.fullmatch(r"\d{8}", study.study_date or ""):
        d, t = study.study_date, re.sub(r"\D", "", study.study_time or "")[:6]
        clock = f"T{t[:2]}:{t[2:4]}:{t[4:6]}Z" if len(t) == 6 else ""
        out["started"] = f"{d[:4]}-{d[4:6]}-{d[6:]}{clock}"
    if study.study_description:
        out["description"] = study.study_description
    return out


def endpoint(base: str) -> dict[str, Any]:
    """The archive's DICOMweb service, where each ImagingStudy's images are fetched."""
    return {
        "resourceType": "Endpoint",
        "id": "dicomweb",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "medshard DICOMweb (QIDO-RS, WADO-RS, STOW-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": f"{base.removesuffix('/fhir')}/dicom-web",
    }


def sampled(t: np.ndarray, v: np.ndarray, period_ms: int) -> tuple[int, str]:
    """Readings on a regular grid from the first one (cell means; ``E``: no reading)."""
    if len(t) == 0:
        return period_ms, ""
    span = int(t[-1] - t[0])
    while span // period_ms + 1 > MAX_CELLS:
        period_ms *= 2
    cell = ((t - t[0]) // period_ms).astype(np.int64)
    n = int(cell[-1]) + 1
    sums = np.bincount(cell, weights=v, minlength=n)
    counts = np.bincount(cell, minlength=n)
    means = np.divide(sums, counts, out=np.zeros(n), where=counts > 0)
    data = " ".join(f"{m:.4g}" if c else "E" for m, c in zip(means, counts, strict=True))
    return period_ms, data


def observation(
    seg: SensorSegment, patient_id: str, t: np.ndarray, v: np.ndarray
) -> dict[str, Any]:
    """A day of one signal: its period, and its readings as SampledData (1-minute means for
    vital signs, the sampling interval itself for ECG leads, coarsened past 20 000 cells)."""
    signal = signal_named(seg.signal)
    if signal.system == LOINC:
        period = 60_000
        category = "vital-signs"
    else:
        period = max(1, int(np.median(np.diff(t)))) if len(t) > 1 else 1
        category = "procedure"
    period, data = sampled(t, v, period)
    start = datetime.fromtimestamp(int(t[0]) / 1000, UTC) if len(t) else as_utc(seg.start_at)
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": seg.segment_uid,
        "meta": {"lastUpdated": instant(seg.created_at)},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": category,
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": signal.system, "code": signal.code, "display": signal.display}],
            "text": signal.display,
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectivePeriod": {"start": instant(start), "end": instant(seg.end_at)},
        "valueSampledData": {
            "origin": {"value": 0, "unit": seg.unit, "system": UCUM, "code": seg.unit},
            "period": period,
            "dimensions": 1,
            **({"data": data} if data else {}),
        },
        "note": [{"text": f"{seg.points} cleaned readings; device {seg.device or 'unknown'}"}],
    }
    if seg.device:
        out["device"] = {"display": seg.device}
    return out


def capability(base: str) -> dict[str, Any]:
    """What this server does, for clients that ask before they call."""

    def resource(
        kind: str, interactions: list[str], params: list[tuple[str, str]], **kw: Any
    ) -> dict[str, Any]:
        out = {
            "type": kind,
            "interaction": [{"code": i} for i in interactions],
            "searchParam": [{"name": n, "type": t} for n, t in params],
            **kw,
        }
        if kind in SORTS:
            out["searchInclude"] = [f"{kind}:{p}" for p in sorted(INCLUDES[kind])] or None
            out["documentation"] = (
                f"_sort keys: {', '.join(sorted(SORTS[kind]))} (a leading - descends); "
                "_total: none, estimate or accurate; unsupported parameters are ignored "
                "unless the request says Prefer: handling=strict (then 400)"
            )
        return {k: v for k, v in out.items() if v is not None}

    paged = [("_count", "number")]
    docs = [("patient", "reference"), ("subject", "reference"), ("date", "date"), *paged]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-12-01",
        "kind": "instance",
        "software": {"name": "medshard"},
        "implementation": {"description": "medshard FHIR facade", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [{"text": "OAuth2 bearer token (POST /api/auth/token)"}],
                    "description": "Every request but this one needs a bearer token.",
                },
                "resource": [
                    resource(
                        "Patient",
                        ["read", "search-type"],
                        [("_id", "token"), ("identifier", "token"), *paged],
                    ),
                    resource(
                        "DocumentReference",
                        ["read", "vread", "history-instance", "search-type", "create", "update"],
                        docs,
                        versioning="versioned-update",
                        readHistory=True,
                        updateCreate=False,
                    ),
                    resource(
                        "Binary",
                        ["read", "vread", "create", "update"],
                        [],
                        versioning="versioned-update",
                        readHistory=True,
                        updateCreate=False,
                    ),
                    resource(
                        "ImagingStudy",
                        ["read", "search-type"],
                        [
                            ("patient", "reference"),
                            ("subject", "reference"),
                            ("date", "date"),
                            *paged,
                        ],
                    ),
                    resource(
                        "Observation",
                        ["read", "search-type"],
                        [*docs[:3], ("code", "token"), *paged],
                    ),
                    resource("Endpoint", ["read"], []),
                ],
            }
        ],
    }
