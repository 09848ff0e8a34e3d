"""What a record's bytes are, told from the bytes: the declared content type is never trusted.

A sender's Content-Type (or a file name's extension) is a claim. :func:`sniff` reads the
content itself: magic numbers for binary formats, the root element for XML (an HL7 CDA
``ClinicalDocument``, a FHIR resource, or other XML), a full parse for JSON (a FHIR resource
has ``resourceType``), and strict UTF-8 for text. :func:`checked_type` then refuses a claim
that disagrees with the content, so a PDF labelled as an image, or an executable labelled as
a PDF, is caught before anything is stored; the type kept is always the sniffed one.

DICOM files are refused here on purpose: they belong to the image path (import, STOW-RS,
C-STORE), which indexes them; stored as a "document" they would be invisible to DICOMweb.
"""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from typing import Final

from medshard.errors import UnsupportedContentError

CDA_NS: Final = "urn:hl7-org:v3"
FHIR_NS: Final = "http://hl7.org/fhir"
CDA: Final = "application/hl7-cda+xml"
FHIR_JSON: Final = "application/fhir+json"
FHIR_XML: Final = "application/fhir+xml"
GENERIC: Final = "application/octet-stream"

_MAGIC: Final = [
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
]
#: Binary formats we recognise and refuse (a document archive is no place for programs).
_REFUSED_MAGIC: Final = [
    (b"MZ", "a Windows executable"),
    (b"\x7fELF", "an ELF executable"),
    (b"PK\x03\x04", "a ZIP archive"),
]
#: Declared types each sniffed type may be sent as (besides itself and the generic type).
_ALIASES: Final[dict[str, frozenset[str]]] = {
    FHIR_JSON: frozenset({"application/json"}),
    CDA: frozenset({"application/xml", "text/xml"}),
    FHIR_XML: frozenset({"application/xml", "text/xml"}),
    "application/xml": frozenset({"text/xml"}),
    "text/plain": frozenset({"text/csv", "text/markdown"}),
    "image/jpeg": frozenset({"image/jpg", "image/pjpeg"}),
}
#: Enough of the head of a file to decide; JSON and XML are read whole (they are small).
HEAD: Final = 4096


def _xml_root(data: bytes) -> str | None:
    """The root element's tag ({namespace}local), or None when this is not well-formed XML.

    Only the start of the root element is parsed; expat never fetches external entities.
    """
    try:
        for _event, element in ET.iterparse(io.BytesIO(data), events=("start",)):
            return str(element.tag)
    except ET.ParseError:
        return None
    return None


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    bad = sum(1 for c in text[:HEAD] if ord(c) < 32 and c not in "\t\r\n\f")
    return None if bad else text


def sniff(data: bytes) -> str:
    """The media type of ``data``, decided from its content alone.

    Raises
    ------
    UnsupportedContentError
        DICOM (use the image path), an executable or archive, or empty content.
    """
    if not data:
        raise UnsupportedContentError("the document is empty")
    if data[128:132] == b"DICM":
        raise UnsupportedContentError(
            "this is a DICOM file: store it with `medshard import` or STOW-RS, which index it"
        )
    for magic, what in _REFUSED_MAGIC:
        if data.startswith(magic):
            raise UnsupportedContentError(f"the content is {what}, which is not a document")
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    text = _text(data)
    if text is None:
        return GENERIC
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            parsed = json.loads(text)
        except ValueError:
            return "text/plain"
        if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
            return FHIR_JSON
        return "application/json"
    if stripped.startswith("<"):
        root = _xml_root(data)
        if root is None:
            return "text/plain"
        if root == f"{{{CDA_NS}}}ClinicalDocument":
            return CDA
        if root.startswith(f"{{{FHIR_NS}}}"):
            return FHIR_XML
        return "application/xml"
    return "text/plain"


def normalise(declared: str | None) -> str | None:
    """``Type/Sub; params`` -> ``type/sub`` (None for nothing declared)."""
    if not declared:
        return None
    media = declared.split(";", 1)[0].strip().lower()
    return media or None


def checked_type(data: bytes, declared: str | None) -> str:
    """The sniffed type, after checking that the declared one (if any) agrees with it.

    ``application/octet-stream`` declares nothing ("I do not know"), as does no header.

    Raises
    ------
    UnsupportedContentError
        The declared type disagrees with the content (a forged or mistaken label), or the
        content is of a kind :func:`sniff` refuses.
    """
    actual = sniff(data)
    claim = normalise(declared)
    if claim is None or claim in (GENERIC, actual):
        return actual
    if claim in _ALIASES.get(actual, frozenset()):
        return actual
    raise UnsupportedContentError(
        f"declared content type {claim} does not match the content, which is {actual}; "
        "nothing was stored (send the right type, or none to let the archive decide)"
    )
