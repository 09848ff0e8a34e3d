"""Demo DICOM CR instances made from PneumoniaMNIST validation images.

Demos and end-to-end tests need real-looking chest radiographs that travel through the
archive like any other instance (C-STORE, STOW-RS, ``medshard import``) and are then analysed
on ingest. Each 28x28 image becomes one patient, study and series holding a CR Image Storage
instance with a 224x224 MONOCHROME2 8-bit image (bicubic x8 with block means kept, see
:func:`upscale`); the area-resize in :mod:`medshard.analysis.preprocess` maps it back to within
a couple of grey levels of the source, so the model sees the data it was validated on.

UIDs are derived from the data file's hash and the image index, so regenerating the demo
yields the same instances and re-importing them is idempotent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage as CRImageStorage
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medshard.analysis.dataset import CLASS_NAMES, load_split
from medshard.analysis.model import file_sha256
from medshard.errors import InvalidInputError

#: Side of the synthesized radiographs; 8x the source is large enough to look like an image in
#: a viewer and an integer factor keeps the round trip through area-resizing accurate.
DEMO_SIZE = 224
_BASE_DATE = dt.date(2024, 1, 15)


def chest_xray_dicoms(
    npz_path: str | Path,
    split: str = "val",
    count: int = 8,
    out_dir: str | Path = "demo_dicom",
    *,
    indices: Sequence[int] | None = None,
    size: int = DEMO_SIZE,
) -> list[Path]:
    """Write DICOM CR files from images of one split.

    Parameters
    ----------
    npz_path
        MedMNIST-style ``.npz`` (normally :func:`medshard.analysis.dataset.sample_npz_path`).
    split
        Which split to draw from; the validation split by default, never training images the
        model has memorised.
    count
        Number of instances when ``indices`` is not given: the first ``count // 2`` normal and
        the first ``count - count // 2`` pneumonia images, so a demo shows both outcomes.
    out_dir
        Created if needed; files are named ``<split>_<index>.dcm``.
    indices
        Explicit image indices instead of the balanced default.
    size
        Side of the output image in pixels (at least 28).

    Returns
    -------
    list[Path]
        The written files, in index order.

    Raises
    ------
    InvalidInputError
        On a missing split, out-of-range index or invalid size/count.
    """
    part = load_split(npz_path, split)
    if size < 28:
        raise InvalidInputError(f"size {size} is smaller than the 28x28 source")
    chosen = list(indices) if indices is not None else _balanced(part.labels, count)
    bad = [i for i in chosen if not 0 <= i < len(part)]
    if bad:
        raise InvalidInputError(f"indices {bad} out of range for {split} split of {len(part)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_hash = file_sha256(Path(npz_path))
    paths = []
    for i in sorted(chosen):
        pixels = upscale(part.images[i], size)
        ds = _cr_dataset(pixels, data_hash, split, i, int(part.labels[i]))
        path = out / f"{split}_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def upscale(image: np.ndarray, size: int = DEMO_SIZE) -> np.ndarray:
    """Enlarge a uint8 image smoothly while keeping each source pixel's block mean.

    Bicubic enlargement alone looks like a radiograph but blurs across blocks, so shrinking it
    back by area averaging differs from the source by up to ~16 grey levels. When ``size`` is a
    multiple of the source side, iterative back-projection (add the bicubically enlarged error
    of the block means, ten passes) removes that error while staying smooth, so the area-resize
    in preprocessing recovers the source to within a couple of grey levels.
    """
    src = np.ascontiguousarray(image, dtype=np.uint8).astype(np.float64)
    up = _bicubic(src, size)
    h, w = src.shape
    if size % h == 0 and size % w == 0:
        fy, fx = size // h, size // w
        for _ in range(10):
            means = up.reshape(h, fy, w, fx).mean(axis=(1, 3))
            up = np.clip(up + _bicubic(src - means, size), 0.0, 255.0)
    return np.clip(np.rint(up), 0, 255).astype(np.uint8)


def _bicubic(values: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize in floating point (PIL mode F), so residuals keep their sign."""
    img = Image.fromarray(values.astype(np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _balanced(labels: np.ndarray, count: int) -> list[int]:
    if count < 1:
        raise InvalidInputError(f"count must be at least 1, got {count}")
    normal = np.flatnonzero(labels == 0)[: count // 2]
    pneumonia = np.flatnonzero(labels == 1)[: count - normal.size]
    return sorted(int(i) for i in np.r_[normal, pneumonia])


def _cr_dataset(pixels: np.ndarray, data_hash: str, split: str, index: int, label: int) -> Dataset:
    """A CR Image Storage dataset with the mandatory modules filled in."""
    key = f"{data_hash}:{split}:{index}"
    sop_uid = generate_uid(entropy_srcs=[key, "sop"])
    when = _BASE_DATE + dt.timedelta(days=index)
    date, time = when.strftime("%Y%m%d"), f"{9 + index % 8:02d}{index % 60:02d}00"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    # SOP Common
    ds.SOPClassUID = CRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    # Patient
    ds.PatientName = f"DEMO^CXR{split.upper()}{index:04d}"
    ds.PatientID = f"PMNIST-{split}-{index:04d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.StudyDate = date
    ds.StudyTime = time
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"S{index:04d}"
    ds.AccessionNumber = f"PM{split.upper()}{index:04d}"
    ds.StudyDescription = "CHEST X-RAY (synthetic demo)"
    # General Series + CR Series
    ds.Modality = "CR"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.SeriesNumber = 1
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ""
    ds.Laterality = ""
    # General Equipment
    ds.Manufacturer = "medshard synthetic demo"
    # General Image + CR Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate = date
    ds.ContentTime = time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = (
        f"PneumoniaMNIST {split} image {index} (28x28) enlarged bicubically to "
        f"{pixels.shape[0]}x{pixels.shape[1]}"
    )
    ds.BurnedInAnnotation = "NO"
    ds.ImageComments = (
        f"Synthetic demo from PneumoniaMNIST (CC BY 4.0), {split} #{index}, "
        f"reference label: {CLASS_NAMES[label]}"
    )
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds
