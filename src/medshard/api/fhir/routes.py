"""The ``/fhir`` routes: read, vread, history, search, create and update, as FHIR R4 REST.

Content type ``application/fhir+json`` both ways. Updates are version-aware: ``PUT`` must
carry ``If-Match: W/"N"`` naming the current version (428 without it, 412 when stale), and
creates a new version; earlier ones stay readable at ``/_history/N``. ``Binary`` reads give
the raw bytes, or the Binary resource when the client accepts ``application/fhir+json``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from medshard.api.fhir import queries
from medshard.api.fhir import resources as res
from medshard.api.fhir.model import (
    FHIR_JSON,
    PreconditionError,
    fhir_errors,
    fhir_response,
    parse_resource,
    validated,
)
from medshard.api.fhir.search import history_bundle, patient_ref, strict_handling
from medshard.catalog.records import DocFields, DocRow
from medshard.errors import InvalidInputError
from medshard.ingest.times import parse_instant
from medshard.records import documents

router = APIRouter(prefix="/fhir", tags=["fhir"])


def base_of(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/fhir"


def _search(request: Request, kind: str) -> Response:
    """A search, under the handling the client prefers for unsupported parameters."""
    strict = strict_handling(request.headers.get("prefer"))
    bundle = queries.searchset_for(kind, request.query_params, base_of(request), strict=strict)
    return fhir_response(bundle)


def _one(resource: dict[str, Any], status: int = 200, request: Request | None = None) -> Response:
    headers: dict[str, str] = {}
    version = resource.get("meta", {}).get("versionId")
    if version:
        headers["ETag"] = f'W/"{version}"'
        if request is not None and status == 201:
            headers["Location"] = (
                f"{base_of(request)}/{resource['resourceType']}/{resource['id']}/_history/{version}"
            )
    return fhir_response(validated(resource), status, **headers)


@router.get("/metadata")
@fhir_errors
def metadata(request: Request) -> Response:
    """The CapabilityStatement (public: it says what the server does, nothing about anyone)."""
    return fhir_response(validated(res.capability(base_of(request))))


# ---------------------------------------------------------------------------------- reads


@router.get("/Patient")
@fhir_errors
def search_patient(request: Request) -> Response:
    return _search(request, "Patient")


@router.get("/Patient/{pid}")
@fhir_errors
def read_patient(pid: str) -> Response:
    return _one(queries.read_patient(pid))


@router.get("/ImagingStudy")
@fhir_errors
def search_imaging_study(request: Request) -> Response:
    return _search(request, "ImagingStudy")


@router.get("/ImagingStudy/{uid}")
@fhir_errors
def read_imaging_study(uid: str, request: Request) -> Response:
    return _one(queries.read_study(uid, base_of(request)))


@router.get("/Endpoint/dicomweb")
@fhir_errors
def read_endpoint(request: Request) -> Response:
    return _one(res.endpoint(base_of(request)))


@router.get("/Observation")
@fhir_errors
def search_observation(request: Request) -> Response:
    return _search(request, "Observation")


@router.get("/Observation/{uid}")
@fhir_errors
def read_observation(uid: str) -> Response:
    return _one(queries.read_observation(uid))


@router.get("/DocumentReference")
@fhir_errors
def search_document_reference(request: Request) -> Response:
    return _search(request, "DocumentReference")


@router.get("/DocumentReference/{uid}")
@fhir_errors
def read_document_reference(uid: str) -> Response:
    return _one(res.document_reference(documents.get(uid)))


@router.get("/DocumentReference/{uid}/_history")
@fhir_errors
def history_document_reference(uid: str, request: Request) -> Response:
    versions = [validated(res.document_reference(r)) for r in documents.history(uid)]
    return fhir_response(history_bundle(base_of(request), "DocumentReference", versions))


@router.get("/DocumentReference/{uid}/_history/{vid}")
@fhir_errors
def vread_document_reference(uid: str, vid: int) -> Response:
    return _one(res.document_reference(documents.version_of(uid, vid)))


def _wants_resource(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "fhir+json" in accept or request.query_params.get("_format") in ("json", FHIR_JSON)


def _binary(row: DocRow, request: Request) -> Response:
    data = b"".join(documents.read_bytes(row))
    if _wants_resource(request):
        return _one(res.binary(row, data))
    return Response(data, media_type=row.content_type, headers={"ETag": f'W/"{row.version}"'})


@router.get("/Binary/{uid}")
@fhir_errors
def read_binary(uid: str, request: Request) -> Response:
    return _binary(documents.get(uid), request)


@router.get("/Binary/{uid}/_history/{vid}")
@fhir_errors
def vread_binary(uid: str, vid: int, request: Request) -> Response:
    return _binary(documents.version_of(uid, vid), request)


# --------------------------------------------------------------------------------- writes


def _decoded(data: str | None) -> bytes | None:
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError("attachment data is not valid base64") from None


def _doc_input(resource: dict[str, Any]) -> tuple[str, documents.Content | None, DocFields]:
    """(patient id, content, fields) of a DocumentReference a client sent."""
    subject = (resource.get("subject") or {}).get("reference")
    if not subject:
        raise InvalidInputError("DocumentReference.subject must reference the Patient")
    attachments = [c.get("attachment", {}) for c in resource.get("content", [])]
    if len(attachments) != 1:
        raise InvalidInputError("exactly one content.attachment is supported")
    att = attachments[0]
    if att.get("url") and not att.get("data"):
        raise InvalidInputError("send the document inline (attachment.data), not by url")
    data = _decoded(att.get("data"))
    kind = resource.get("type") or {}
    coding = (kind.get("coding") or [{}])[0]
    authors = resource.get("author") or [{}]
    fields = DocFields(
        doc_type=(kind.get("text") or coding.get("code") or "")[:64],
        title=resource.get("description") or att.get("title") or "",
        author=authors[0].get("display", ""),
        date=parse_instant(resource["date"]) if resource.get("date") else None,
        filename=att.get("title", ""),
    )
    content = documents.Content(data, att.get("contentType")) if data is not None else None
    return patient_ref(subject), content, fields


def _if_match(request: Request) -> int:
    raw = request.headers.get("if-match")
    if raw is None:
        raise PreconditionError(
            'updates are version-aware: send If-Match: W/"N" with the version you replace', 428
        )
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise PreconditionError(f"If-Match {raw!r} is not a version", 412)
    return int(text)


@router.post("/DocumentReference")
@fhir_errors
async def create_document_reference(request: Request) -> Response:
    resource = parse_resource(await request.body(), "DocumentReference")
    pid, content, fields = _doc_input(resource)
    if content is None:
        raise InvalidInputError("a new DocumentReference needs its content (attachment.data)")
    row = await run_in_threadpool(documents.add, pid, content, fields)
    return _one(res.document_reference(row), 201, request)


@router.put("/DocumentReference/{uid}")
@fhir_errors
async def update_document_reference(uid: str, request: Request) -> Response:
    resource = parse_resource(await request.body(), "DocumentReference")
    if resource.get("id") != uid:
        raise InvalidInputError("the resource's id must be the id in the URL")
    pid, content, fields = _doc_input(resource)
    replaces = _if_match(request)
    row = await run_in_threadpool(documents.update, uid, replaces, content, fields, patient_id=pid)
    return _one(res.document_reference(row))


async def _binary_input(request: Request) -> tuple[str, documents.Content]:
    """(patient id, content) of a Binary create or update: a Binary resource, or raw bytes
    with ``X-Security-Context: Patient/ID``."""
    body = await request.body()
    declared = request.headers.get("content-type", "")
    as_resource = None
    if "json" in declared:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("resourceType") == "Binary":
            as_resource = parse_resource(body, "Binary")
    if as_resource is not None:
        context = (as_resource.get("securityContext") or {}).get("reference")
        data = _decoded(as_resource.get("data"))
        if not context or data is None:
            raise InvalidInputError("a Binary needs securityContext (the Patient) and data")
        return patient_ref(context), documents.Content(data, as_resource.get("contentType"))
    context = request.headers.get("x-security-context")
    if not context:
        raise InvalidInputError("raw Binary content needs X-Security-Context: Patient/ID")
    return patient_ref(context), documents.Content(body, declared or None)


@router.post("/Binary")
@fhir_errors
async def create_binary(request: Request) -> Response:
    pid, content = await _binary_input(request)
    row = await run_in_threadpool(documents.add, pid, content, DocFields(doc_type="binary"))
    return _one(res.binary(row, None), 201, request)


@router.put("/Binary/{uid}")
@fhir_errors
async def update_binary(uid: str, request: Request) -> Response:
    pid, content = await _binary_input(request)
    replaces = _if_match(request)
    row = await run_in_threadpool(
        documents.update, uid, replaces, content, DocFields(), patient_id=pid
    )
    return _one(res.binary(row, None))
