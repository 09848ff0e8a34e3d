"""A finding as a DICOM Structured Report, stored with the study it describes.

PACS viewers and other archives do not read medshard's JSON API, but every one of them can
store, query and show an SR. Each finding becomes a Comprehensive 3D SR holding a TID 1500
Measurement Report with one measurement group: the model's probability and decision threshold
as measurements and "pneumonia: present/absent" as a qualitative evaluation, the algorithm
(model id and weight hash) identified, and the source image referenced by the group's source
image, the evidence sequence and, when the image has what highdicom needs for it, the
report's image library.

A reader must know what the number means, so the SR says it: the probability is named
"Calibrated probability of pneumonia" (or plain "Probability of pneumonia" for an uncalibrated
model), its measurement method names the calibration and the prior it was adjusted to, the
assumed prior is a measurement of its own, and the threshold's method names the operating
point that set it (e.g. maximum balanced accuracy).

UIDs are derived from the source image and the model's hash, so analysing the same image with
the same weights again yields the same SR instance: a retried job or a re-run batch can never
put a second SR in the study.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medshard.errors import AnalysisError

#: Manufacturer written into the SR's equipment module; also how our own SRs are recognised.
MANUFACTURER = "medshard"
#: Series number of AI result series, high so viewers sort them after the acquired images.
SR_SERIES_NUMBER = 9000

_PROCEDURE = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
_PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
_PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
_ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
_FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
# No standard code exists for "model output probability of pneumonia" or its cut-off, so they
# use a local scheme; private coding scheme designators start with "99" (PS3.16 8.2).
_PROBABILITY = hd.sr.CodedConcept("PNEUMONIA-P", "99MEDSHARD", "Probability of pneumonia")
_THRESHOLD = hd.sr.CodedConcept("DECISION-T", "99MEDSHARD", "Decision threshold")
_CALIBRATED = hd.sr.CodedConcept(
    "PNEUMONIA-PCAL", "99MEDSHARD", "Calibrated probability of pneumonia"
)
_PRIOR = hd.sr.CodedConcept("PNEUMONIA-PRIOR", "99MEDSHARD", "Assumed prevalence of pneumonia")


def _method(code: str, meaning: str) -> hd.sr.CodedConcept:
    """A local method concept; DICOM limits a code meaning to 64 characters."""
    return hd.sr.CodedConcept(code, "99MEDSHARD", meaning[:64])


@dataclass(frozen=True)
class SrUids:
    """The UIDs of the SR for one (source image, model weights) pair."""

    series_instance_uid: str
    sop_instance_uid: str


def sr_uids(source_sop_instance_uid: str, model_sha256: str) -> SrUids:
    """Deterministic UIDs of the SR for a source image and model hash (see module docstring)."""
    key = f"{source_sop_instance_uid}:{model_sha256}"
    return SrUids(
        series_instance_uid=generate_uid(entropy_srcs=[key, "sr-series"]),
        sop_instance_uid=generate_uid(entropy_srcs=[key, "sr-instance"]),
    )


def build_finding_sr(
    source: pydicom.Dataset,
    *,
    model_id: str,
    model_sha256: str,
    probability: float,
    threshold: float,
    prior: float | None = None,
    operating_point: str = "",
    calibrated: bool = False,
) -> hd.sr.Comprehensive3DSR:
    """The SR of one finding on ``source``.

    Parameters
    ----------
    source
        The analysed image (its header is enough): patient, study and the image reference are
        taken from it.
    model_id, model_sha256
        Identify the algorithm exactly, so a reader knows which weights made the call.
    probability, threshold
        The model's output and the cut-off at or above which it calls pneumonia present.
    prior
        The share of pneumonia ``probability`` is adjusted to (calibrated models).
    operating_point
        Name of the rule that set ``threshold``, e.g. "maximum balanced accuracy".
    calibrated
        Whether ``probability`` is calibrated; decides how the SR names it.

    Raises
    ------
    AnalysisError
        If highdicom refuses the content (e.g. the source lacks a mandatory attribute).
    """
    uids = sr_uids(str(source.SOPInstanceUID), model_sha256)
    positive = probability >= threshold
    algorithm = hd.sr.AlgorithmIdentification(name=model_id, version=model_sha256[:12])
    try:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[uids.sop_instance_uid, "tracking"]),
                identifier=f"pneumonia classification ({model_id})",
            ),
            finding_type=_FINDING,
            algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
            measurements=_measurements(
                algorithm, probability, threshold, prior, operating_point, calibrated
            ),
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(
                    name=_PNEUMONIA, value=_PRESENT if positive else _ABSENT
                )
            ],
        )
        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(entropy_srcs=[model_sha256, "device"]),
                name=model_id,
                manufacturer_name=MANUFACTURER,
                model_name=model_id.split(":", 1)[0],
                serial_number=model_sha256[:16],
            ),
        )
        report = _report(observer, group, source)
        sr = hd.sr.Comprehensive3DSR(
            evidence=[source],
            content=report,
            series_instance_uid=uids.series_instance_uid,
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=uids.sop_instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise AnalysisError(f"could not build the SR of a finding: {exc}") from exc
    sr.SeriesDescription = f"AI findings ({model_id})"[:64]
    return sr


def _measurements(
    algorithm: hd.sr.AlgorithmIdentification,
    probability: float,
    threshold: float,
    prior: float | None,
    operating_point: str,
    calibrated: bool,
) -> list[hd.sr.Measurement]:
    """Probability, threshold and (calibrated models) prior, each saying what it is."""
    if calibrated and prior is not None:
        prob = hd.sr.Measurement(
            name=_CALIBRATED,
            value=float(probability),
            unit=_NO_UNITS,
            algorithm_id=algorithm,
            method=_method("PLATT-PRIOR", f"Platt-calibrated, adjusted to prior {prior:.4g}"),
        )
    else:
        prob = hd.sr.Measurement(
            name=_PROBABILITY, value=float(probability), unit=_NO_UNITS, algorithm_id=algorithm
        )
    op = (
        _method("OPERATING-POINT", f"Operating point: {operating_point}")
        if operating_point
        else None
    )
    out = [
        prob,
        hd.sr.Measurement(name=_THRESHOLD, value=float(threshold), unit=_NO_UNITS, method=op),
    ]
    if calibrated and prior is not None:
        out.append(hd.sr.Measurement(name=_PRIOR, value=float(prior), unit=_NO_UNITS))
    return out


def _report(
    observer: hd.sr.ObserverContext,
    group: hd.sr.MeasurementsAndQualitativeEvaluations,
    source: pydicom.Dataset,
) -> hd.sr.MeasurementReport:
    """The TID 1500 report, with an image library entry for ``source`` when it can have one.

    highdicom's image library descriptors need attributes that are optional in the image
    (e.g. Imager Pixel Spacing of a CR); without them the library is left out, and the image
    is still referenced by the measurement group and the evidence sequence.
    """
    context = hd.sr.ObservationContext(observer_device_context=observer)
    try:
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=_PROCEDURE,
            imaging_measurements=[group],
            referenced_images=[source],
        )
    except Exception:  # highdicom raises assorted errors on missing optional attributes
        return hd.sr.MeasurementReport(
            observation_context=context,
            procedure_reported=_PROCEDURE,
            imaging_measurements=[group],
        )


def sr_bytes(sr: pydicom.Dataset) -> bytes:
    """The SR as a DICOM Part 10 file in memory, ready to be ingested like any instance."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, sr, enforce_file_format=True)
    return buf.getvalue()
