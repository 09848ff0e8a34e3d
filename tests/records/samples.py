"""Small, real documents made here: a PDF, an HL7 CDA document, a FHIR Bundle, a PNG."""

from __future__ import annotations

import io
import json

from PIL import Image

from medshard.records.demo import pdf_report


def pdf(text: str = "Discharge summary") -> bytes:
    """A minimal one-page PDF with a correct cross-reference table (the demo's generator)."""
    return pdf_report(text, [])


def cda(patient_id: str = "PAT-A", note: str = "Blood pressure 120/80") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="2.16.840.1.113883.19.5" extension="c266"/>
  <code code="11488-4" codeSystem="2.16.840.1.113883.6.1" displayName="Consultation note"/>
  <title>Consultation note</title>
  <effectiveTime value="20260301120000+0000"/>
  <recordTarget><patientRole><id extension="{patient_id}" root="2.16.840.1.113883.19.5"/>
  </patientRole></recordTarget>
  <component><nonXMLBody><text>{note}</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def fhir_bundle(patient_id: str = "PAT-A", hr: int = 72) -> bytes:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": f"Patient/{patient_id}"},
                    "valueQuantity": {"value": hr, "unit": "/min"},
                }
            }
        ],
    }
    return json.dumps(bundle, indent=1).encode()


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()
