"""The demo's patient record beyond images: a few documents and a day of heart rate.

Everything is made here, in code (no files are shipped): a discharge summary as a one-page
PDF, a lab report as plain text, an HL7 CDA consultation note, and 24 hours of 1 Hz heart
rate from a wrist-worn sensor (a day-night rhythm with noise, a few sensor spikes, readings
no heart makes and a ten-minute dropout, which the cleaning removes or reports). They go in
through the write path of ``medshard records add`` and of the series API
(:func:`documents.add`, :func:`series.ingest`) as the caller a token stands for, so they are
sniffed, encrypted, placed, replicated and audited like everything else.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np

from medshard.catalog.records import DocFields
from medshard.errors import NotFoundError
from medshard.records import documents, series

#: The wearable named as the series' device.
DEVICE: Final = "demo-wristband"


def pdf_report(title: str, lines: list[str]) -> bytes:
    """A minimal one-page PDF (Helvetica text, a correct cross-reference table)."""

    def escaped(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    body = [f"BT /F1 16 Tf 50 780 Td ({escaped(title)}) Tj ET"]
    body += [
        f"BT /F1 11 Tf 50 {750 - 16 * i} Td ({escaped(line)}) Tj ET" for i, line in enumerate(lines)
    ]
    stream = "\n".join(body).encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def lab_report(patient_id: str, when: datetime) -> bytes:
    rows = [
        ("Haemoglobin", "13.9", "g/dL", "13.0-17.0"),
        ("White cells", "7.2", "10^9/L", "4.0-11.0"),
        ("Platelets", "251", "10^9/L", "150-400"),
        ("Creatinine", "88", "umol/L", "60-110"),
        ("CRP", "12", "mg/L", "< 5  HIGH"),
    ]
    lines = [
        "LABORATORY REPORT (synthetic demo data)",
        f"Patient: {patient_id}    Collected: {when:%Y-%m-%d %H:%M} UTC",
        "",
        f"{'Test':<14}{'Result':>8}  {'Unit':<8}Reference",
        *(f"{name:<14}{value:>8}  {unit:<8}{ref}" for name, value, unit, ref in rows),
        "",
        "Comment: mildly raised CRP; repeat in one week.",
    ]
    return ("\n".join(lines) + "\n").encode()


def consultation_note(patient_id: str, when: datetime) -> bytes:
    """An HL7 CDA R2 consultation note (header and one narrative section)."""
    stamp = when.strftime("%Y%m%d%H%M%S+0000")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <id root="2.25.{int(when.timestamp())}"/>
  <code code="11488-4" codeSystem="2.16.840.1.113883.6.1" displayName="Consultation note"/>
  <title>Cardiology consultation (synthetic demo data)</title>
  <effectiveTime value="{stamp}"/>
  <confidentialityCode code="N" codeSystem="2.16.840.1.113883.5.25"/>
  <recordTarget><patientRole>
    <id extension="{patient_id}" root="2.25.1"/>
  </patientRole></recordTarget>
  <component><structuredBody><component><section>
    <title>Assessment</title>
    <text>Palpitations at night. A day of wrist-sensor heart rate was reviewed:
    sinus rhythm, resting rate 55-70/min, no sustained tachycardia.</text>
  </section></component></structuredBody></component>
</ClinicalDocument>
""".encode()


def heart_rate_day(day: date, seed: int = 11) -> tuple[bytes, int]:
    """A day of 1 Hz heart rate as CSV (epoch seconds), with faults; (bytes, rows)."""
    rng = np.random.default_rng(seed)
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
    seconds = np.arange(86_400)
    hours = seconds / 3600
    rhythm = 66 - 10 * np.cos((hours - 3) / 24 * 2 * np.pi)  # lowest near 03:00
    active = np.where((hours > 17.5) & (hours < 18.25), 45, 0)  # an evening walk
    hr = np.round(rhythm + active + rng.normal(0, 1.5, len(seconds)))
    spikes = rng.choice(len(seconds), 40, replace=False)
    hr[spikes] += rng.choice([-35, 40, 55], len(spikes))
    hr[rng.choice(len(seconds), 10, replace=False)] = 0  # a lost contact reads 0
    keep = ~((seconds >= 13 * 3600) & (seconds < 13 * 3600 + 600))  # a ten-minute dropout
    lines = ["timestamp,heart_rate"]
    lines += [f"{start + int(s)},{int(v)}" for s, v in zip(seconds[keep], hr[keep], strict=True)]
    return ("\n".join(lines) + "\n").encode(), int(keep.sum())


def add_records(patient_id: str, day: date) -> dict[str, Any]:
    """Store the demo documents and the day of heart rate for ``patient_id``, acting for the
    caller in the context; nothing when the patient already has documents (a demo home run
    again). Returns what was stored."""
    try:
        if documents.list_for_patient(patient_id):
            return {"patient_id": patient_id, "documents": [], "series": None}
    except NotFoundError:
        pass  # a patient not in the archive yet: the first document creates them
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    summary = pdf_report(
        "Discharge summary (synthetic demo data)",
        [
            f"Patient: {patient_id}",
            f"Admitted {noon - timedelta(days=3):%Y-%m-%d}, discharged {noon:%Y-%m-%d}",
            "Diagnosis: community-acquired pneumonia, right lower lobe",
            "Treatment: amoxicillin 1 g three times daily for 5 days",
            "Follow-up: chest X-ray in 6 weeks; wear the heart-rate sensor for a day",
        ],
    )
    made = [
        (summary, "application/pdf", "discharge-summary", "Discharge summary", "summary.pdf"),
        (
            lab_report(patient_id, noon - timedelta(days=2)),
            "text/plain",
            "lab",
            "Full blood count and CRP",
            "labs.txt",
        ),
        (
            consultation_note(patient_id, noon + timedelta(hours=20)),
            "application/xml",
            "consultation-note",
            "Cardiology consultation",
            "consultation.xml",
        ),
    ]
    stored = []
    for i, (data, declared, kind, title, filename) in enumerate(made):
        fields = DocFields(
            doc_type=kind,
            title=title,
            author="Demo Hospital",
            date=noon - timedelta(days=2 - i),
            filename=filename,
        )
        stored.append(documents.add(patient_id, documents.Content(data, declared), fields))
    csv_bytes, rows = heart_rate_day(day)
    batch = series.ingest(patient_id, documents.Content(csv_bytes, "text/csv"), device=DEVICE)
    return {
        "patient_id": patient_id,
        "documents": [r.doc_uid for r in stored],
        "series": {
            "batch": batch["batch"],
            "day": day.isoformat(),
            "rows": rows,
            "kept": sum(s["points"] for s in batch["segments"]),
        },
    }


def load_demo_records(
    home: Path | None, token: str, patient_id: str, day: date | None = None
) -> dict[str, Any]:
    """:func:`add_records` in the deployment at ``home``, acting for ``token`` (as
    ``medshard records add --token`` does); ``day`` defaults to yesterday (UTC)."""
    from medshard.cluster.archive import Archive
    from medshard.security.context import acting_as
    from medshard.security.gate import Gate
    from medshard.security.local import token_caller

    when = day or (datetime.now(UTC) - timedelta(days=1)).date()
    with Archive.open(home) as archive, Gate(archive) as gate, acting_as(token_caller(gate, token)):
        return add_records(patient_id, when)
