"""ATNA rendering of audit events (DICOM PS3.15 A.5 / RFC 3881 AuditMessage XML).

Hospitals that run an Audit Record Repository collect these; medshard keeps its own
verifiable chain as the record and renders from it, so the two can never disagree.
Event IDs and type codes are DICOM's (DCM code system, PS3.16 CID 400-405).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from typing import Any

#: action -> (EventID code, meaning, EventActionCode: C/R/U/D/E)
_EVENTS: dict[str, tuple[str, str, str]] = {
    "read": ("110103", "DICOM Instances Accessed", "R"),
    "query": ("110112", "Query", "E"),
    "retrieve": ("110106", "Export", "R"),
    "get": ("110106", "Export", "R"),
    "export": ("110106", "Export", "R"),
    "store": ("110107", "Import", "C"),
    "findings": ("110110", "Patient Record", "R"),
    "careteam-show": ("110110", "Patient Record", "R"),
    "careteam-add": ("110110", "Patient Record", "U"),
    "careteam-remove": ("110110", "Patient Record", "U"),
    "share": ("110110", "Patient Record", "U"),
    "break-glass": ("110113", "Security Alert", "E"),
    "study-delete": ("110105", "DICOM Study Deleted", "D"),
    "patient-erase": ("110110", "Patient Record", "D"),
    "login": ("110114", "User Authentication", "E"),
    "logout": ("110114", "User Authentication", "E"),
    "token-refresh": ("110114", "User Authentication", "E"),
    "keys-rotate": ("110113", "Security Alert", "E"),
}
_OUTCOME = {"success": "0", "denied": "4", "failed": "8"}


def _event_of(action: str) -> tuple[str, str, str]:
    if action.startswith("move"):
        return ("110106", "Export", "R")
    return _EVENTS.get(action, ("110100", "Application Activity", "E"))


def atna_message(event: Mapping[str, Any]) -> ET.Element:
    code, meaning, action_code = _event_of(str(event["action"]))
    msg = ET.Element("AuditMessage")
    ident = ET.SubElement(
        msg,
        "EventIdentification",
        EventActionCode=action_code,
        EventDateTime=str(event["at"]),
        EventOutcomeIndicator=_OUTCOME.get(str(event["outcome"]), "4"),
    )
    ET.SubElement(ident, "EventID", csd_code=code, codeSystemName="DCM", originalText=meaning)
    host = str(event.get("source") or "")
    ET.SubElement(
        msg,
        "ActiveParticipant",
        UserID=str(event["actor"]),
        UserIsRequestor="true",
        NetworkAccessPointID=host.rsplit(":", 1)[0],
        NetworkAccessPointTypeCode="2",
        AlternativeUserID=str(event["role"]),
    )
    ET.SubElement(msg, "AuditSourceIdentification", AuditSourceID="medshard")
    if event.get("patient_id"):
        patient = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            ParticipantObjectID=str(event["patient_id"]),
            ParticipantObjectTypeCode="1",
            ParticipantObjectTypeCodeRole="1",
        )
        ET.SubElement(
            patient, "ParticipantObjectIDTypeCode", csd_code="2", originalText="Patient Number"
        )
    if event.get("study"):
        study = ET.SubElement(
            msg,
            "ParticipantObjectIdentification",
            ParticipantObjectID=str(event["study"]),
            ParticipantObjectTypeCode="2",
            ParticipantObjectTypeCodeRole="3",
        )
        ET.SubElement(
            study, "ParticipantObjectIDTypeCode", csd_code="110180", codeSystemName="DCM",
            originalText="Study Instance UID",
        )  # fmt: skip
    return msg


def atna_xml(events: Iterable[Mapping[str, Any]]) -> str:
    """A sequence of AuditMessage elements, one per event, in chain order."""
    root = ET.Element("AuditMessages")
    for event in events:
        root.append(atna_message(event))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
