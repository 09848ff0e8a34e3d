"""REST for a patient's documents: ``/api/patients/{patient_id}/documents``.

* ``POST``: a new document, as ``multipart/form-data`` (a ``file`` part and the fields
  ``type``, ``title``, ``author``, ``date``) or as the raw body, its type in Content-Type and
  the fields in the query string. The content type is sniffed; a declared type that
  disagrees is refused (415) and nothing is stored.
* ``PUT /{doc}``: a new version; it must name the version it replaces (``If-Match: "N"``,
  or ``replaces=N``), else 409, as is a stale one. Without a body only metadata changes.
* ``GET``: the list; ``GET /{doc}``: metadata and history; ``GET /{doc}/content`` and
  ``GET /{doc}/versions/{n}``: the bytes, byte-identical to what was stored.

Thin: the rules, the audit and the write path are in :mod:`medshard.records.documents`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from medshard.api.errors import PayloadTooLargeError
from medshard.catalog.records import DocFields, DocRow
from medshard.errors import InvalidInputError
from medshard.ingest.times import parse_instant
from medshard.records import documents
from medshard.records.documents import MAX_DOCUMENT_BYTES, Content

router = APIRouter(prefix="/api/patients/{patient_id}/documents", tags=["documents"])
FIELDS = ("type", "title", "author", "date", "filename")


def fields_of(values: dict[str, str]) -> DocFields:
    """Document fields from form or query values (a date is read into UTC)."""
    when = values.get("date") or None
    return DocFields(
        doc_type=values.get("type", "")[:64],
        title=values.get("title", "")[:256],
        author=values.get("author", "")[:256],
        date=parse_instant(when) if when else None,
        filename=values.get("filename", "")[:256],
    )


async def read_upload(request: Request) -> tuple[Content | None, dict[str, str]]:
    """The content and fields of a POST or PUT, multipart or raw (None: no body)."""
    declared = request.headers.get("content-type")
    values = {k: v for k, v in request.query_params.items() if k in (*FIELDS, "replaces")}
    if declared and declared.lower().startswith("multipart/form-data"):
        form = await request.form(max_part_size=MAX_DOCUMENT_BYTES)
        upload: UploadFile | None = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                upload = upload or value
            elif key in (*FIELDS, "replaces"):
                values[key] = value
        if upload is None:
            return None, values
        values.setdefault("filename", upload.filename or "")
        data = await upload.read()
        return Content(data, upload.content_type), values
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_DOCUMENT_BYTES:
            raise PayloadTooLargeError(f"documents are limited to {MAX_DOCUMENT_BYTES} bytes")
    return (Content(bytes(body), declared) if body else None), values


def replaced_version(request: Request, values: dict[str, str]) -> int | None:
    """The version an update replaces: ``If-Match: "N"`` (or ``W/"N"``), or ``replaces``."""
    raw = request.headers.get("if-match") or values.get("replaces")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise InvalidInputError(f"If-Match / replaces must be a version number, not {raw!r}")
    return int(text)


def _json(row: DocRow) -> dict[str, Any]:
    return row.as_dict()


@router.post("", status_code=201)
async def add_document(patient_id: str, request: Request) -> dict[str, Any]:
    """Attach a document to a patient's record (its version 1)."""
    content, values = await read_upload(request)
    if content is None:
        raise InvalidInputError("no document in the request (send a file part or a raw body)")
    row = await run_in_threadpool(documents.add, patient_id, content, fields_of(values))
    return _json(row)


@router.get("")
def list_documents(patient_id: str) -> dict[str, Any]:
    """The patient's documents (latest versions), newest first."""
    found = documents.list_for_patient(patient_id)
    return {"patient_id": patient_id, "documents": [_json(r) for r in found]}


@router.get("/{doc}")
def get_document(patient_id: str, doc: str) -> dict[str, Any]:
    """A document's latest metadata and its whole history (newest first)."""
    versions = documents.history(doc, patient_id=patient_id)
    return {**_json(versions[0]), "versions": [_json(v) for v in versions]}


@router.put("/{doc}")
async def update_document(patient_id: str, doc: str, request: Request) -> dict[str, Any]:
    """A new version, replacing the one named by If-Match (or ``replaces``)."""
    content, values = await read_upload(request)
    replaces = replaced_version(request, values)
    row = await run_in_threadpool(
        documents.update, doc, replaces, content, fields_of(values), patient_id=patient_id
    )
    return _json(row)


def _bytes(row: DocRow) -> StreamingResponse:
    body: Iterator[bytes] = documents.read_bytes(row)
    headers = {"ETag": f'"{row.version}"', "X-Document-Version": str(row.version)}
    if row.filename:
        headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(row.filename)}"
    return StreamingResponse(body, media_type=row.content_type, headers=headers)


@router.get("/{doc}/content")
def document_content(patient_id: str, doc: str) -> StreamingResponse:
    """The latest version's bytes, as stored."""
    row = documents.get(doc, patient_id=patient_id)
    return _bytes(row)


@router.get("/{doc}/versions")
def document_versions(patient_id: str, doc: str) -> dict[str, Any]:
    """Every version's metadata, newest first."""
    versions = documents.history(doc, patient_id=patient_id)
    return {"id": doc, "versions": [_json(v) for v in versions]}


@router.get("/{doc}/versions/{version}")
def document_version(patient_id: str, doc: str, version: int) -> StreamingResponse:
    """One version's bytes (earlier versions stay readable)."""
    documents.get(doc, patient_id=patient_id, audit=False)
    return _bytes(documents.version_of(doc, version))
