"""Benchmark inputs generated from the real sample files shipped in the package."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data" / "dicom"
#: Instance shapes giving 128-450 KB files, the typical size range of CT/MR/CR instances.
SHAPES = [(256, 256), (384, 384), (512, 448)]


def generate_instances(out_dir: Path, count: int, *, patients: int = 40, seed: int = 7) -> int:
    """Write ``count`` uncompressed 16-bit MR instances cropped from a real MR slice, each
    with its own UIDs, over ``patients`` patients. Returns the total bytes written."""
    rng = random.Random(seed)
    template = pydicom.dcmread(SAMPLE_DIR / "MR2_J2KR.dcm")
    image = template.pixel_array.astype(np.uint16)
    out_dir.mkdir(parents=True, exist_ok=True)
    studies = {p: generate_uid() for p in range(patients)}
    series = {p: generate_uid() for p in range(patients)}
    total = 0
    for i in range(count):
        rows, cols = SHAPES[i % len(SHAPES)]
        top = rng.randrange(0, image.shape[0] - rows)
        left = rng.randrange(0, image.shape[1] - cols)
        crop = np.ascontiguousarray(image[top : top + rows, left : left + cols])
        patient = rng.randrange(patients)
        ds = pydicom.Dataset()
        ds.update(template)
        del ds.PixelData
        ds.file_meta = FileMetaDataset(template.file_meta)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = studies[patient]
        ds.SeriesInstanceUID = series[patient]
        ds.PatientID = f"BENCH-{patient:04d}"
        ds.PatientName = f"Bench^Patient{patient:04d}"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = crop.tobytes()
        path = out_dir / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def write_big_dicom(path: Path, size_mb: int) -> int:
    """A DICOM file whose pixel data is ``size_mb`` MiB, written in pieces (never in memory)."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BENCH-BIG"
    ds.PatientName = "Bench^Big"
    ds.Modality = "OT"
    # a valid multi-frame image (validation refuses pixel data that does not fit the image):
    # size_mb frames of 1024 x 1024 8-bit samples, one MiB each
    ds.Rows = ds.Columns = 1024
    ds.NumberOfFrames = size_mb
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.save_as(path, enforce_file_format=True)
    length = size_mb * 1024 * 1024
    block = np.random.default_rng(0).integers(0, 255, 4 * 1024 * 1024, dtype=np.uint8).tobytes()
    with open(path, "ab") as fh:
        fh.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        for _ in range(length // len(block)):
            fh.write(block)
    return path.stat().st_size
