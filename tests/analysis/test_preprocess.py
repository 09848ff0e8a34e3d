from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from medshard.analysis.dataset import Split
from medshard.analysis.preprocess import (
    eligible,
    prepare_dataset,
    prepare_image,
    radiograph_to_uint8,
    scale_uint8,
)
from medshard.analysis.synth import upscale
from medshard.errors import AnalysisError

#: One grey level in model-input units ((u8 / 255 - 0.5) / 0.5).
LEVEL = 2.0 / 255.0


def _index(path: Path) -> int:
    return int(path.stem.split("_")[1])


def test_training_scaling_is_the_inference_scaling(val_split: Split) -> None:
    img = val_split.images[0]
    np.testing.assert_array_equal(prepare_image(img), scale_uint8(val_split.images[:1])[0])
    assert prepare_image(img).shape == (1, 28, 28) and prepare_image(img).dtype == np.float32


def test_synthesized_cr_maps_back_to_its_source(demo_files: list[Path], val_split: Split) -> None:
    for path in demo_files:
        ds = pydicom.dcmread(path)
        assert ds.Modality == "CR" and ds.Rows == 224
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert eligible(ds)[0]
        x = prepare_dataset(ds)
        ref = scale_uint8(val_split.images[_index(path)])
        assert np.abs(x - ref).max() <= 3 * LEVEL + 1e-6
        assert np.abs(x - ref).mean() <= 0.1 * LEVEL


def test_demo_files_are_reproducible(npz: Path, demo_files: list[Path], tmp_path: Path) -> None:
    from medshard.analysis.synth import chest_xray_dicoms

    again = chest_xray_dicoms(npz, "val", count=4, out_dir=tmp_path)
    assert [p.name for p in again] == [p.name for p in demo_files]
    a, b = pydicom.dcmread(again[0]), pydicom.dcmread(demo_files[0])
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.PixelData == b.PixelData
    labels = {pydicom.dcmread(p).ImageComments.rsplit(" ", 1)[1] for p in again}
    assert labels == {"normal", "pneumonia"}


def test_monochrome1_is_inverted(demo_ds: pydicom.Dataset) -> None:
    expected = prepare_dataset(demo_ds)
    inverted = 255 - demo_ds.pixel_array
    demo_ds.PhotometricInterpretation = "MONOCHROME1"
    demo_ds.PixelData = inverted.astype(np.uint8).tobytes()
    np.testing.assert_allclose(prepare_dataset(demo_ds), expected, atol=1e-6)
    raw = demo_ds.pixel_array
    as_mono1 = radiograph_to_uint8(raw, photometric="MONOCHROME1").astype(int)
    assert np.abs(as_mono1 - (255 - radiograph_to_uint8(raw).astype(int))).max() <= 1  # .5 ties


def test_deep_bit_depth_with_rescale_and_window(demo_ds: pydicom.Dataset) -> None:
    expected = prepare_dataset(demo_ds)
    # 12-bit stored values v = 16 * p; rescale to "HU-like" units; window spans the 8-bit range.
    stored = demo_ds.pixel_array.astype(np.uint16) * 16
    demo_ds.BitsAllocated, demo_ds.BitsStored, demo_ds.HighBit = 16, 12, 11
    demo_ds.PixelData = stored.tobytes()
    demo_ds.RescaleSlope, demo_ds.RescaleIntercept = 1, -1000
    demo_ds.WindowCenter, demo_ds.WindowWidth = 16 * 127.5 - 1000, 16 * 255
    demo_ds.VOILUTFunction = "LINEAR_EXACT"
    assert np.abs(prepare_dataset(demo_ds) - expected).max() <= 2 * LEVEL


def test_deep_bit_depth_without_window_is_stretched(val_split: Split) -> None:
    img = upscale(val_split.images[3])
    lo, hi = int(img.min()), int(img.max())
    stretched = np.rint((img.astype(float) - lo) / (hi - lo) * 4095).astype(np.uint16)
    out = prepare_image(stretched, bits_stored=12)
    ref = prepare_image(np.rint((img.astype(float) - lo) / (hi - lo) * 255).astype(np.uint8))
    assert np.abs(out - ref).max() <= 2 * LEVEL


def test_multiframe_takes_first_frame_and_rgb_becomes_gray(demo_ds: pydicom.Dataset) -> None:
    expected = prepare_dataset(demo_ds)
    frame = demo_ds.pixel_array
    demo_ds.NumberOfFrames = 2
    demo_ds.PixelData = np.stack([frame, 255 - frame]).astype(np.uint8).tobytes()
    np.testing.assert_allclose(prepare_dataset(demo_ds), expected, atol=1e-6)
    rgb = np.repeat(frame[..., None], 3, axis=2)
    np.testing.assert_allclose(prepare_image(rgb), expected, atol=LEVEL + 1e-6)


def test_non_square_is_centre_cropped(val_split: Split) -> None:
    big = upscale(val_split.images[5])
    padded = np.pad(big, ((0, 0), (56, 56)), constant_values=0)
    np.testing.assert_array_equal(radiograph_to_uint8(padded), radiograph_to_uint8(big))


@pytest.mark.parametrize(
    ("attr", "value", "reason"),
    [
        ("Modality", "MR", "modality MR"),
        ("Modality", "", "modality"),
        ("BodyPartExamined", "HAND", "body part HAND"),
        ("PhotometricInterpretation", "PALETTE COLOR", "PALETTE COLOR"),
        ("Rows", 16, "smaller than 28x28"),
    ],
)
def test_ineligible_headers_are_refused(
    demo_ds: pydicom.Dataset, attr: str, value: object, reason: str
) -> None:
    setattr(demo_ds, attr, value)
    ok, why = eligible(demo_ds)
    assert not ok and why.startswith("not eligible") and reason in why
    with pytest.raises(AnalysisError, match=rf"^not eligible: .*{reason}"):
        prepare_dataset(demo_ds)


def test_dx_and_missing_body_part_are_eligible(demo_ds: pydicom.Dataset) -> None:
    demo_ds.Modality = "DX"
    del demo_ds.BodyPartExamined
    assert eligible(demo_ds) == (True, "eligible: DX chest 224x224 MONOCHROME2")


def test_missing_and_corrupt_pixel_data(demo_ds: pydicom.Dataset) -> None:
    truncated = demo_ds.PixelData[:1000]
    del demo_ds.PixelData
    with pytest.raises(AnalysisError, match="not eligible: no pixel data"):
        prepare_dataset(demo_ds)
    demo_ds.PixelData = truncated
    with pytest.raises(AnalysisError, match="not eligible: pixel data could not be decoded"):
        prepare_dataset(demo_ds)


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((4, 64, 64), np.uint8), "not a 2D grayscale or RGB"),
        (np.zeros((64,), np.uint8), "not a 2D grayscale or RGB"),
        (np.zeros((10, 10), np.uint8), "smaller than 28x28"),
        (np.full((64, 64), 7, np.uint16), "no contrast"),
        (np.full((64, 64), np.nan), "NaN"),
    ],
)
def test_bad_arrays_are_not_eligible(array: np.ndarray, reason: str) -> None:
    with pytest.raises(AnalysisError, match=rf"^not eligible: .*{reason}"):
        prepare_image(array)
