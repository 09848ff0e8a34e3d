"""One path from any chest radiograph to the model's input.

The model was trained on PneumoniaMNIST, whose images MedMNIST made from display-ready
chest X-ray exports by centre-cropping to a square, shrinking to 28x28 with an area-averaging
(anti-aliased) filter and storing uint8. A radiograph arriving as DICOM must go through the
same steps, or the model sees inputs from a distribution it never learnt:

1. decode the first frame, apply the modality LUT / rescale and the VOI window if there is one;
2. map to display intensities in [0, 1] (MONOCHROME1 inverted so bone is bright, RGB to luma);
3. quantise to uint8, centre-crop to a square and area-resize to 28x28 (as MedMNIST did);
4. scale uint8 exactly as training scaled the stored uint8 arrays (:func:`scale_uint8`).

Training calls :func:`scale_uint8` on the data set; everything else calls :func:`prepare_image`
or :func:`prepare_dataset`, which end in the same function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.pixels import pixel_array as decode_pixels

from medshard.errors import AnalysisError

#: Side of the square model input, in pixels.
SIZE = 28
#: Input normalisation of the training pipeline: ``(uint8 / 255 - MEAN) / STD``.
MEAN = 0.5
STD = 0.5
#: Defaults of :func:`eligible`; ``""`` accepts images without Body Part Examined.
MODALITIES: tuple[str, ...] = ("CR", "DX")
BODY_PARTS: tuple[str, ...] = ("CHEST", "")

_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


@dataclass(frozen=True)
class Window:
    """A DICOM VOI window (PS3.3 C.11.2.1.2), kept so bit depth never decides contrast."""

    center: float
    width: float
    function: str = "LINEAR"


def scale_uint8(images: np.ndarray) -> np.ndarray:
    """Scale uint8 28x28 images to model input, exactly as training does.

    Parameters
    ----------
    images
        uint8, ``(28, 28)`` or ``(N, 28, 28)``.

    Returns
    -------
    np.ndarray
        float32 ``(1, 28, 28)`` or ``(N, 1, 28, 28)``. One function for training and inference
        so the two cannot drift apart.
    """
    if images.dtype != np.uint8:
        raise AnalysisError(f"expected uint8 images, got {images.dtype}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[None] if x.ndim == 2 else x[:, None]


def radiograph_to_uint8(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """Turn a decoded radiograph into a 28x28 uint8 image as MedMNIST stored its data.

    Parameters
    ----------
    pixels
        ``(H, W)`` grayscale (after any modality LUT) or ``(H, W, 3)`` RGB.
    photometric
        DICOM Photometric Interpretation; MONOCHROME1 is inverted because the training images
        show bone bright on a dark background.
    bits_stored
        Bits Stored of the source. Data of at most 8 bits is already display-ready (as the
        JPEG exports behind PneumoniaMNIST were) and is divided by its full range; deeper data
        without a window is stretched min-to-max, as a viewer's automatic window would.
    window
        The VOI window to apply first, if the image carries one.

    Returns
    -------
    np.ndarray
        uint8 ``(28, 28)``.

    Raises
    ------
    AnalysisError
        ``not eligible: ...`` when the array is not a 2D grayscale or RGB image, is smaller
        than 28x28, holds non-finite values or has no contrast at all.
    """
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise AnalysisError(
            f"not eligible: pixel array of shape {arr.shape} is not a 2D grayscale or RGB image"
        )
    if min(arr.shape[:2]) < SIZE:
        raise AnalysisError(
            f"not eligible: image is {arr.shape[0]}x{arr.shape[1]}, smaller than {SIZE}x{SIZE}"
        )
    if arr.dtype.kind not in "uifb":
        raise AnalysisError(f"not eligible: pixel values of type {arr.dtype} are not numeric")
    values = arr.astype(np.float64)
    if not np.isfinite(values).all():
        raise AnalysisError("not eligible: pixel data holds NaN or infinite values")

    unit = _to_unit_range(values, arr.dtype, bits_stored, window)
    if unit.ndim == 3:
        # ITU-R 601-2 luma, the weights of PIL's "L" conversion used for the source JPEGs.
        unit = unit @ np.array([0.299, 0.587, 0.114])
    if photometric.strip().upper() == "MONOCHROME1":
        unit = 1.0 - unit

    u8 = np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)
    h, w = u8.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = u8[top : top + side, left : left + side]
    if side == SIZE:
        return np.ascontiguousarray(square)
    # Area-average in float (PIL mode F) and round once: PIL's 8-bit path rounds internally.
    img = Image.fromarray(square.astype(np.float32), mode="F")
    small = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def prepare_image(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: Window | None = None,
) -> np.ndarray:
    """Map any chest radiograph array to the model's input.

    Parameters are those of :func:`radiograph_to_uint8`.

    Returns
    -------
    np.ndarray
        float32 ``(1, 28, 28)``, scaled by :func:`scale_uint8` like the training data.
    """
    u8 = radiograph_to_uint8(
        pixels, photometric=photometric, bits_stored=bits_stored, window=window
    )
    return scale_uint8(u8)


def eligible(
    ds: pydicom.Dataset,
    *,
    modalities: tuple[str, ...] = MODALITIES,
    body_parts: tuple[str, ...] = BODY_PARTS,
) -> tuple[bool, str]:
    """Decide from the header alone whether the pneumonia model may be applied.

    The model has only seen frontal chest radiographs; running it on other images gives
    confident nonsense, so anything that is not a CR/DX chest image with 2D grayscale or RGB
    pixel data is refused before decoding.

    Returns
    -------
    tuple[bool, str]
        Whether it is eligible, and a reason fit for a log or an API response: ``eligible: ...``
        or ``not eligible: ...``.
    """
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality not in modalities:
        shown = modality or "(none)"
        return False, f"not eligible: modality {shown} is not one of {', '.join(modalities)}"
    body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if body not in body_parts:
        return False, f"not eligible: body part {body} is not CHEST"
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return False, "not eligible: float pixel data is not a radiograph"
        return False, "not eligible: no pixel data"
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    grey_ok = photometric in _GRAY and samples == 1
    colour_ok = photometric in _COLOUR and samples == 3
    if not (grey_ok or colour_ok):
        return False, (
            f"not eligible: photometric interpretation {photometric or '(none)'} with "
            f"{samples} sample(s) per pixel is not 2D grayscale or RGB"
        )
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < SIZE or cols < SIZE:
        return False, f"not eligible: image is {rows}x{cols}, smaller than {SIZE}x{SIZE}"
    return True, f"eligible: {modality} {body or 'chest'} {rows}x{cols} {photometric}"


def prepare_dataset(ds: pydicom.Dataset) -> np.ndarray:
    """Map a CR/DX chest instance to the model's input.

    Takes the first frame of a multi-frame image, applies the modality LUT (rescale) and the
    first VOI window, then :func:`prepare_image`.

    Returns
    -------
    np.ndarray
        float32 ``(1, 28, 28)``.

    Raises
    ------
    AnalysisError
        ``not eligible: ...`` when :func:`eligible` refuses the header or the pixel data cannot
        be decoded into a 2D image (corrupt, truncated, unsupported compression).
    """
    ok, reason = eligible(ds)
    if not ok:
        raise AnalysisError(reason)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = decode_pixels(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean the same to us
        raise AnalysisError(f"not eligible: pixel data could not be decoded ({exc})") from exc
    bits = int(ds.get("BitsStored", 8) or 8)
    if photometric in _COLOUR:
        # pydicom converts YBR to RGB on decoding; modality and VOI LUTs do not apply to colour.
        return prepare_image(arr, photometric="RGB", bits_stored=bits)
    try:
        values = apply_modality_lut(arr, ds)
        window = _first_window(ds)
        if window is None and "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0)
            bits = 16  # LUT output: stretch min to max below
    except AnalysisError:
        raise
    except Exception as exc:
        raise AnalysisError(f"not eligible: LUTs could not be applied ({exc})") from exc
    return prepare_image(values, photometric=photometric, bits_stored=bits, window=window)


def _first_window(ds: pydicom.Dataset) -> Window | None:
    """The first VOI window of ``ds``, or None if it has none or it is unusable."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    c = _first_number(center)
    w = _first_number(width)
    if c is None or w is None or not w > 0:
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return Window(center=c, width=w, function=function)


def _first_number(value: object) -> float | None:
    """First element of a possibly multi-valued DS, as float; None if not a finite number."""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _to_unit_range(
    values: np.ndarray, dtype: np.dtype, bits_stored: int | None, window: Window | None
) -> np.ndarray:
    """Display intensities in [0, 1]; see :func:`radiograph_to_uint8` for the rules."""
    if window is not None:
        return _apply_window(values, window)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        raise AnalysisError("not eligible: image has no contrast (every pixel has one value)")
    if dtype == np.uint8:
        return values / 255.0
    if bits_stored is not None and 1 <= bits_stored <= 8:
        top = float(2**bits_stored - 1)
        if lo >= 0.0 and hi <= top:
            return values / top
    return (values - lo) / (hi - lo)


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """DICOM VOI LUT functions (PS3.3 C.11.2.1.2.1 and C.11.2.1.3.1), output in [0, 1]."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    elif window.function == "LINEAR_EXACT":
        out = (values - c) / w + 0.5
    else:
        if w < 1.0:
            w = 1.0  # PS3.3: width must be >= 1 for LINEAR
        out = (values - (c - 0.5)) / max(w - 1.0, 1e-12) + 0.5
    out = np.clip(out, 0.0, 1.0)
    if float(out.max()) <= float(out.min()):
        raise AnalysisError("not eligible: image has no contrast inside its VOI window")
    return out
