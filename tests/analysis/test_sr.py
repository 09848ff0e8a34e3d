"""The SR of a finding: valid DICOM that references its image and names the exact model."""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from medshard.analysis.queue import is_structured_report
from medshard.analysis.sr import build_finding_sr, sr_bytes, sr_uids

SHA = "c289dce4ce4f896a380576ebe640407e075e6abc32054907d4ea92f2820f037c"


def _codes(ds: pydicom.Dataset) -> list[tuple[str, str]]:
    """(concept name meaning, value) of every CODE and NUM item in the content tree."""
    found: list[tuple[str, str]] = []
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "CODE":
            found.append((name, item.ConceptCodeSequence[0].CodeMeaning))
        elif item.ValueType == "NUM":
            found.append((name, str(item.MeasuredValueSequence[0].NumericValue)))
        found.extend(_codes(item))
    return found


@pytest.mark.parametrize(("prob", "verdict"), [(0.9, "Present"), (0.1, "Absent")])
def test_sr_reports_probability_threshold_verdict_and_references_the_image(
    demo_ds: pydicom.Dataset, prob: float, verdict: str
) -> None:
    sr = build_finding_sr(
        demo_ds,
        model_id="pneumonia:c289dce4ce4f",
        model_sha256=SHA,
        probability=prob,
        threshold=0.28,
    )
    back = pydicom.dcmread(io.BytesIO(sr_bytes(sr)))
    assert back.SOPClassUID == Comprehensive3DSRStorage
    assert is_structured_report(back.SOPClassUID, back.Modality)
    assert back.Modality == "SR"
    # Same patient and study as the image, so it is stored and found with the study.
    assert back.PatientID == demo_ds.PatientID
    assert back.StudyInstanceUID == demo_ds.StudyInstanceUID
    assert back.SeriesInstanceUID != demo_ds.SeriesInstanceUID
    evidence = back.CurrentRequestedProcedureEvidenceSequence[0]
    refs = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert refs[0].ReferencedSOPInstanceUID == demo_ds.SOPInstanceUID
    codes = _codes(back)
    assert ("Pneumonia", verdict) in codes
    assert any(
        n == "Probability of pneumonia" and float(v) == pytest.approx(prob) for n, v in codes
    )
    assert any(n == "Decision threshold" and float(v) == pytest.approx(0.28) for n, v in codes)
    text = str(back)
    assert "pneumonia:c289dce4ce4f" in text and SHA[:12] in text
    assert back.Manufacturer == "medshard"
    # highdicom reads it back as the SR it wrote.
    assert isinstance(hd.sr.srread(io.BytesIO(sr_bytes(sr))), hd.sr.Comprehensive3DSR)


def test_sr_uids_are_deterministic_per_image_and_model_hash(demo_ds: pydicom.Dataset) -> None:
    a = build_finding_sr(demo_ds, model_id="m", model_sha256=SHA, probability=0.5, threshold=0.3)
    b = build_finding_sr(demo_ds, model_id="m", model_sha256=SHA, probability=0.5, threshold=0.3)
    assert (
        a.SOPInstanceUID
        == b.SOPInstanceUID
        == sr_uids(demo_ds.SOPInstanceUID, SHA).sop_instance_uid
    )
    other = sr_uids(demo_ds.SOPInstanceUID, "0" * 64)
    assert other.sop_instance_uid != a.SOPInstanceUID


def test_structured_reports_are_recognised_by_class_or_modality() -> None:
    assert is_structured_report("1.2.840.10008.5.1.4.1.1.88.34")
    assert is_structured_report("1.2.3", "SR")
    assert not is_structured_report("1.2.840.10008.5.1.4.1.1.1", "CR")


def test_sr_of_a_calibrated_model_says_what_the_probability_means(
    demo_ds: pydicom.Dataset,
) -> None:
    sr = build_finding_sr(
        demo_ds,
        model_id="pneumonia:c289dce4ce4f",
        model_sha256=SHA,
        probability=0.83,
        threshold=0.61,
        prior=0.74,
        operating_point="maximum balanced accuracy",
        calibrated=True,
    )
    codes = _codes(pydicom.dcmread(io.BytesIO(sr_bytes(sr))))
    assert any(
        n == "Calibrated probability of pneumonia" and float(v) == pytest.approx(0.83)
        for n, v in codes
    )
    assert not any(n == "Probability of pneumonia" for n, _v in codes)
    assert ("Measurement Method", "Platt-calibrated, adjusted to prior 0.74") in codes
    assert ("Measurement Method", "Operating point: maximum balanced accuracy") in codes
    assert any(
        n == "Assumed prevalence of pneumonia" and float(v) == pytest.approx(0.74) for n, v in codes
    )
    assert ("Pneumonia", "Present") in codes
