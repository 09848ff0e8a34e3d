"""The one rendering path from stored DICOM pixels to 8-bit PNG/JPEG.

WADO-RS ``/rendered``, thumbnails made at ingest and the browser viewer all call
:func:`render_frame`, so a radiologist sees the same grey levels whichever way they reach an
image. The pipeline follows PS3.3 C.11 (Modality LUT, then VOI LUT, then photometric
interpretation) and PS3.18 8.3.5.1 (rendered media types and windowing):

1. decode one frame (pydicom + pylibjpeg plugins; YBR data arrives converted to RGB);
2. monochrome: Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence), then VOI
   (explicit window > dataset Window Center/Width > VOI LUT Sequence > the frame's min/max),
   then MONOCHROME1 inversion; colour: scale to 8 bits; palette colour: apply the palette;
3. optional resize to fit a viewport, then encode.

Nothing here caches decoded pixels: decoding a single frame with ``index=`` is cheap compared
with encoding, so callers cache the *rendered bytes* in a :class:`RenderCache` instead.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Final, Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from medshard.errors import (
    InvalidDicomError,
    InvalidInputError,
    NotFoundError,
    UnsupportedContentError,
)

__all__ = [
    "RenderCache",
    "frame_count",
    "frame_pixels",
    "normalize_format",
    "render_frame",
    "thumbnail",
]

ImageFormat = Literal["png", "jpeg"]

_PIXEL_TAGS: Final = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel, Float, Double Float
_FORMATS: Final[dict[str, ImageFormat]] = {
    "png": "png",
    "image/png": "png",
    "jpeg": "jpeg",
    "jpg": "jpeg",
    "image/jpeg": "jpeg",
}
_VOI_FUNCTIONS: Final = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


# --------------------------------------------------------------------------- decoding


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """Return the dataset's transfer syntax, inferring it for files without file meta.

    Old files (e.g. ACR-NEMA style, written without a preamble) carry no (0002,0010); pydicom
    still knows how it read them, and that encoding is necessarily a native one.
    """
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        return UID(str(tsyntax))
    implicit, little = ds.original_encoding
    if implicit is None or implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _require_pixels(ds: pydicom.Dataset) -> None:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise InvalidInputError(
            "the dataset has no pixel data (7FE0,0010/0008/0009) to render; "
            "it may be a structured report, a key object or a presentation state"
        )
    missing = [kw for kw in ("Rows", "Columns", "BitsAllocated") if ds.get(kw) in (None, "")]
    if missing:
        raise InvalidDicomError(
            f"the dataset has pixel data but lacks {', '.join(missing)}; it cannot be decoded"
        )


def frame_count(ds: pydicom.Dataset) -> int:
    """Return the number of frames, treating a missing or broken Number of Frames as 1.

    Raises
    ------
    InvalidInputError
        If the dataset holds no pixel data at all.
    """
    _require_pixels(ds)
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def _decode(ds: pydicom.Dataset, frame: int) -> tuple[NDArray[Any], str]:
    """Decode one frame and report the photometric interpretation of the *decoded* array."""
    n = frame_count(ds)
    if isinstance(frame, bool) or not isinstance(frame, int | np.integer) or frame < 0:
        raise InvalidInputError(f"frame index must be an integer >= 0, got {frame!r}")
    if frame >= n:
        raise NotFoundError(
            f"frame {frame} does not exist: the instance has {n} frame(s), indexed from 0"
        )
    tsyntax = _transfer_syntax(ds)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UnsupportedContentError(
            f"pixel data in transfer syntax {tsyntax} ({tsyntax.name}) cannot be decoded here"
        ) from exc
    opts = as_pixel_options(ds)
    opts["number_of_frames"] = n
    try:
        arr, meta = decoder.as_array(ds, index=int(frame), **opts)
    except NotImplementedError as exc:  # e.g. no plugin for this syntax is installed
        raise UnsupportedContentError(f"cannot decode {tsyntax.name} pixel data: {exc}") from exc
    except (ValueError, RuntimeError, AttributeError, TypeError, KeyError) as exc:
        raise InvalidDicomError(f"pixel data could not be decoded: {exc}") from exc
    photometric = str(meta.get("photometric_interpretation") or "MONOCHROME2").strip()
    return arr, photometric


def frame_pixels(ds: pydicom.Dataset, frame: int = 0) -> NDArray[Any]:
    """Return one decoded frame as stored values, colour data converted to RGB.

    This is the array analysis and the renderer start from: stored values (no Modality LUT),
    shape ``(rows, columns)`` or ``(rows, columns, 3)`` whatever the planar configuration,
    YBR_FULL / YBR_FULL_422 / YBR_ICT / YBR_RCT already in RGB.

    Parameters
    ----------
    ds : pydicom.Dataset
        A dataset with pixel data; it is not modified.
    frame : int
        0-based frame index.

    Raises
    ------
    InvalidInputError
        No pixel data, or a negative frame index.
    NotFoundError
        The frame index is beyond Number of Frames.
    UnsupportedContentError
        No installed decoder handles the transfer syntax.
    InvalidDicomError
        The pixel data is corrupt or inconsistent with its description.
    """
    arr, photometric = _decode(ds, frame)
    if photometric.startswith("YBR") and arr.ndim == 3:
        arr = convert_color_space(arr, photometric, "RGB")
    return arr


# --------------------------------------------------------------------------- grey levels


def _scalar(value: Any) -> float | None:
    """First value of a possibly multi-valued DS/IS, or None when absent or unparsable."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | MultiValue):
        if not value:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _window(
    values: NDArray[Any], center: float, width: float, function: str
) -> NDArray[np.float64]:
    """Map values to [0, 255] by the PS3.3 C.11.2.1.2 VOI LUT functions."""
    x = values.astype(np.float64, copy=False)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if width <= 1.0:  # LINEAR with width 1 is a threshold at center - 0.5
        return np.where(x > center - 0.5, 255.0, 0.0)
    return np.clip(((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0, 0.0, 255.0)


def _check_function(function: str | None) -> str:
    name = (function or "LINEAR").strip().upper().replace("-", "_")
    if name not in _VOI_FUNCTIONS:
        raise InvalidInputError(
            f"unknown VOI LUT function {function!r}; use linear, linear-exact or sigmoid"
        )
    return name


def _voi_lut_to_8bit(values: NDArray[Any], ds: pydicom.Dataset) -> NDArray[np.float64] | None:
    """Apply the first VOI LUT Sequence item, scaled by its declared output bit depth."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    try:
        bits = int(seq[0].LUTDescriptor[2])
        out = apply_voi(values, ds, index=0)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None  # a broken LUT should not make the image unviewable: fall back
    top = float(2**bits - 1) if 0 < bits <= 16 else float(np.max(out) or 1)
    return np.clip(out.astype(np.float64) * (255.0 / top), 0.0, 255.0)


def _minmax(values: NDArray[Any]) -> NDArray[np.float64]:
    x = values.astype(np.float64, copy=False)
    finite = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    if finite.size == 0:
        return np.zeros(x.shape, dtype=np.float64)
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float64)
    return np.clip((np.nan_to_num(x, nan=lo) - lo) * (255.0 / (hi - lo)), 0.0, 255.0)


def _monochrome(
    arr: NDArray[Any],
    ds: pydicom.Dataset,
    photometric: str,
    window: tuple[float, float] | None,
    voi_function: str | None,
) -> NDArray[np.uint8]:
    try:  # float pixel data are real-world values already: no Modality LUT applies
        values = arr if arr.dtype.kind == "f" else apply_modality_lut(arr, ds)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise InvalidDicomError(f"the Modality LUT / rescale cannot be applied: {exc}") from exc
    if window is not None:
        center, width = (float(window[0]), float(window[1]))
        if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
            raise InvalidInputError(f"window width must be a positive number, got {window[1]!r}")
        grey = _window(values, center, width, _check_function(voi_function))
    else:
        center_ds = _scalar(ds.get("WindowCenter"))
        width_ds = _scalar(ds.get("WindowWidth"))
        if center_ds is not None and width_ds is not None and width_ds > 0:
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
            if function not in _VOI_FUNCTIONS:
                function = "LINEAR"
            grey = _window(values, center_ds, width_ds, function)
        elif (lut := _voi_lut_to_8bit(values, ds)) is not None:
            grey = lut
        else:
            grey = _minmax(values)
    out = np.rint(grey).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = np.uint8(255) - out
    return out


def _colour_to_8bit(arr: NDArray[Any], ds: pydicom.Dataset) -> NDArray[np.uint8]:
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    top = float(2**bits - 1)
    return np.rint(np.clip(arr.astype(np.float64) * (255.0 / top), 0.0, 255.0)).astype(np.uint8)


def _palette_source(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Return ``ds``, or a byte-swapped copy of its palette for big-endian files.

    pydicom 3.0 reads non-segmented 16-bit palette data with the host's byte order, so a
    big-endian file renders nearly black; swapping the three tables here fixes that without
    copying the pixel data.
    """
    if "RedPaletteColorLookupTableData" not in ds or _transfer_syntax(ds) != ExplicitVRBigEndian:
        return ds
    proxy = pydicom.Dataset()
    for colour in ("Red", "Green", "Blue", "Alpha"):
        desc, data = (
            f"{colour}PaletteColorLookupTableDescriptor",
            f"{colour}PaletteColorLookupTableData",
        )
        if desc in ds:
            proxy[desc] = ds[desc]
        if data in ds:
            raw = bytes(ds[data].value)
            nr_entries = (int(ds[desc].value[0]) or 65536) if desc in ds else 0
            if nr_entries and len(raw) >= 2 * nr_entries:
                raw = np.frombuffer(raw, dtype=">u2").astype("<u2").tobytes()
            setattr(proxy, data, raw)
    return proxy


def _palette(arr: NDArray[Any], ds: pydicom.Dataset) -> NDArray[np.uint8]:
    try:
        rgb = apply_color_lut(arr, _palette_source(ds))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise InvalidDicomError(f"PALETTE COLOR image with an unusable palette: {exc}") from exc
    top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind == "u" else 255.0
    rgb = rgb[..., :3]  # an alpha table, if any, has no place in an opaque rendering
    return np.rint(np.clip(rgb.astype(np.float64) * (255.0 / top), 0.0, 255.0)).astype(np.uint8)


def _to_8bit(
    ds: pydicom.Dataset,
    frame: int,
    window: tuple[float, float] | None,
    voi_function: str | None,
) -> NDArray[np.uint8]:
    arr, photometric = _decode(ds, frame)
    if arr.ndim == 3:  # colour: YBR was converted by pydicom unless it says otherwise
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, photometric, "RGB")
        return _colour_to_8bit(arr[..., :3], ds)
    if photometric == "PALETTE COLOR":
        return _palette(arr, ds)
    return _monochrome(arr, ds, photometric, window, voi_function)


# --------------------------------------------------------------------------- encoding


def normalize_format(fmt: str) -> ImageFormat:
    """Map ``png``, ``jpeg``, ``jpg`` or a rendered media type to the canonical name.

    Raises
    ------
    UnsupportedContentError
        For any other format; the HTTP layer maps it to 406 Not Acceptable.
    """
    key = (fmt or "").strip().lower()
    if key not in _FORMATS:
        raise UnsupportedContentError(
            f"cannot render as {fmt!r}: supported are image/png and image/jpeg"
        )
    return _FORMATS[key]


def _fit(img: Image.Image, size: tuple[int, int], upscale: bool) -> Image.Image:
    """Scale to fit within ``size`` = (width, height), keeping the aspect ratio."""
    max_w, max_h = int(size[0]), int(size[1])
    if max_w <= 0 or max_h <= 0:
        raise InvalidInputError(f"viewport size must be positive, got {size!r}")
    scale = min(max_w / img.width, max_h / img.height)
    if scale >= 1.0 and not upscale:
        return img
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if new == img.size:
        return img
    method = Image.Resampling.LANCZOS if scale < 1.0 else Image.Resampling.BICUBIC
    return img.resize(new, method)


def _encode(img: Image.Image, fmt: ImageFormat, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        # Level 6 trades ~2x encode time for ~20 % smaller files than level 1; renders are cached.
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_frame(
    ds: pydicom.Dataset,
    frame: int = 0,
    *,
    window: tuple[float, float] | None = None,
    fmt: str = "png",
    size: tuple[int, int] | None = None,
    quality: int = 90,
    voi_function: str | None = None,
) -> bytes:
    """Render one frame as an 8-bit greyscale or RGB PNG (or JPEG).

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance; not modified, so one parsed dataset can serve concurrent renders.
    frame : int
        0-based frame index (WADO-RS frame numbers are 1-based: subtract one).
    window : tuple of (center, width), optional
        Overrides the dataset's VOI, as the ``window=`` query parameter of ``/rendered``
        does. Ignored for colour images, which have no VOI.
    fmt : str
        ``"png"`` (lossless, default) or ``"jpeg"``; media types are accepted too.
    size : tuple of (width, height), optional
        A viewport: the image is scaled (up or down) to fit inside it, aspect kept.
    quality : int
        JPEG quality 1-100; ignored for PNG.
    voi_function : str, optional
        ``linear`` (default), ``linear-exact`` or ``sigmoid`` for an explicit ``window``.
        Dataset windows use the dataset's own VOI LUT Function.

    Returns
    -------
    bytes
        The encoded image.

    Raises
    ------
    InvalidInputError
        No pixel data, bad frame index, non-positive window width or size, bad quality.
    NotFoundError
        Frame index beyond the number of frames.
    UnsupportedContentError
        Unknown output format or undecodable transfer syntax.
    InvalidDicomError
        Corrupt pixel data or palette.
    """
    kind = normalize_format(fmt)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidInputError(f"JPEG quality must be an integer from 1 to 100, got {quality!r}")
    pixels = _to_8bit(ds, frame, window, voi_function)
    img = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.ndim == 3 else "L")
    if size is not None:
        img = _fit(img, size, upscale=True)
    return _encode(img, kind, quality)


def thumbnail(ds: pydicom.Dataset, max_side: int = 128, *, frame: int = 0) -> bytes:
    """Render a PNG whose longer side is at most ``max_side`` (never enlarged).

    For multi-frame instances the first frame stands for the whole, as in most viewers'
    series strips; pass ``frame`` to pick a more representative one (e.g. the middle).
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side <= 0:
        raise InvalidInputError(f"thumbnail size must be a positive integer, got {max_side!r}")
    pixels = _to_8bit(ds, frame, None, None)
    img = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB" if pixels.ndim == 3 else "L")
    return _encode(_fit(img, (max_side, max_side), upscale=False), "png", 90)


# --------------------------------------------------------------------------- cache


class RenderCache:
    """A small thread-safe LRU of rendered images, bounded by total bytes.

    Rendering a 1024x1024 MR slice costs tens of milliseconds, while viewers request the same
    frames repeatedly while scrolling and windowing; bounding by bytes rather than entries keeps
    memory predictable whatever the mix of thumbnails and full-size frames.

    Keys are any hashable; use :meth:`key` so every caller builds them the same way. A value
    larger than the whole budget is returned but not kept. Two threads missing the same key at
    once may both render it (no per-key locking): wasted work, never a wrong answer.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise InvalidInputError(f"cache size must be positive, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(
        sop_instance_uid: str,
        frame: int = 0,
        window: tuple[float, float] | None = None,
        fmt: str = "png",
        size: tuple[int, int] | None = None,
        quality: int = 90,
        voi_function: str | None = None,
    ) -> tuple[Hashable, ...]:
        """Build the canonical cache key, normalising aliases so ``jpg`` and ``jpeg`` share."""
        win = (float(window[0]), float(window[1])) if window is not None else None
        dims = (int(size[0]), int(size[1])) if size is not None else None
        kind = normalize_format(fmt)
        func = _check_function(voi_function) if window is not None else None
        return (str(sop_instance_uid), int(frame), win, func, kind, dims, int(quality))

    def get(self, key: Hashable) -> bytes | None:
        """Return the cached bytes and mark them recently used, or None."""
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: bytes) -> None:
        """Store ``value``, evicting least recently used entries beyond the byte budget."""
        size = len(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            if size > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= len(evicted)

    def get_or_render(self, key: Hashable, render: Callable[[], bytes]) -> bytes:
        """Return the cached value or call ``render`` (outside the lock) and cache it."""
        value = self.get(key)
        if value is None:
            value = render()
            self.put(key, value)
        return value

    def invalidate(self, sop_instance_uid: str) -> int:
        """Drop every rendering of one instance (after de-identification or deletion)."""
        with self._lock:
            doomed = [
                k
                for k in self._items
                if isinstance(k, tuple) and k and k[0] == str(sop_instance_uid)
            ]
            for k in doomed:
                self._bytes -= len(self._items.pop(k))
            return len(doomed)

    def clear(self) -> None:
        """Forget everything (e.g. when a deployment changes its rendering defaults)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
