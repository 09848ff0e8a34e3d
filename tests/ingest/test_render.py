"""Rendering real DICOM files: transfer syntaxes, photometric interpretations, VOI, frames."""

from __future__ import annotations

import copy
import io
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from pydicom.pixels import pixel_array

from medshard.errors import InvalidInputError, NotFoundError, UnsupportedContentError
from medshard.ingest.render import (
    RenderCache,
    frame_count,
    frame_pixels,
    render_frame,
    thumbnail,
)

try:
    from tests.data import shared_dicom
except ImportError:  # tests/ itself is on sys.path (rootdir conftest, no tests/__init__.py)
    from data import shared_dicom  # type: ignore[no-redef]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@cache
def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, force=True)


def dataset(name: str) -> pydicom.Dataset:
    """A parsed file from pydicom-data; cached, so tests must not modify it (copy first)."""
    return _read(shared_dicom("pydicom-data", name))


def decode(png: bytes) -> NDArray[np.int64]:
    return np.asarray(Image.open(io.BytesIO(png))).astype(np.int64)


def render(ds: pydicom.Dataset, **kwargs: object) -> NDArray[np.int64]:
    return decode(render_frame(ds, **kwargs))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- transfer syntaxes

TS_FILES = [f"{i}.dcm" for i in range(1, 10)]


@pytest.fixture(scope="module")
def ts_reference() -> NDArray[np.int64]:
    ds = _read(shared_dicom("transfer-syntaxes", "1.dcm"))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    ref = render(ds)
    implicit = render(_read(shared_dicom("transfer-syntaxes", "2.dcm")))
    assert np.array_equal(ref, implicit)
    return ref


@pytest.mark.parametrize("name", TS_FILES)
def test_every_lossless_transfer_syntax_renders_like_the_uncompressed_slice(
    name: str, ts_reference: NDArray[np.int64]
) -> None:
    ds = _read(shared_dicom("transfer-syntaxes", name))
    png = render_frame(ds)
    assert png.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(png))
    assert img.mode == "L" and img.size == (384, 384)
    got = np.asarray(img).astype(np.int64)
    assert np.abs(got - ts_reference).max() <= 1, ds.file_meta.TransferSyntaxUID.name


def test_dataset_window_follows_the_ps33_linear_formula() -> None:
    ds = _read(shared_dicom("transfer-syntaxes", "1.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)  # no rescale in this MR
    want = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0, 255)
    got = render(ds)
    assert np.abs(got - np.rint(want)).max() <= 1
    # window 763 +- 820 starts below 0 (so black maps above 0) and saturates the brightest
    assert got.min() > 0 and got.max() == 255


# --------------------------------------------------------------------------- monochrome


def test_monochrome1_is_the_inverse_of_the_same_pixels_as_monochrome2() -> None:
    ds = dataset("RG3_J2KR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    as_mono2 = copy.deepcopy(ds)  # the cached original must stay untouched
    as_mono2.PhotometricInterpretation = "MONOCHROME2"
    small = (440, 440)
    inverted, plain = render(ds, size=small), render(as_mono2, size=small)
    assert inverted.shape == (440, 440)
    assert np.abs(inverted - (255 - plain)).max() <= 1
    assert not np.array_equal(inverted, plain)


def test_signed_16_bit_ct_uses_rescale_and_dataset_window() -> None:
    ds = dataset("693_UNCR.dcm")
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 100.0)
    by_dataset = render(ds)
    assert np.array_equal(by_dataset, render(ds, window=(40, 100)))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert hu.min() < 0  # signed values and a negative intercept really are in play
    want = np.rint(np.clip(((hu - 39.5) / 99.0 + 0.5) * 255.0, 0, 255))
    assert np.abs(by_dataset - want).max() <= 1
    # The compressed twin (JPEG 2000 lossless) of the same slice renders identically.
    assert np.array_equal(by_dataset, render(dataset("693_J2KR.dcm")))


def test_query_window_overrides_the_dataset_window() -> None:
    ds = dataset("MR2_UNCR.dcm")  # WC 1000 / WW 2000 after a 3.77 rescale slope
    default = render(ds, size=(256, 256))
    same = render(ds, size=(256, 256), window=(1000, 2000))
    narrow = render(ds, size=(256, 256), window=(1000, 200))
    assert np.array_equal(default, same)
    assert not np.array_equal(default, narrow)
    saturated = lambda a: int(np.count_nonzero((a == 0) | (a == 255)))  # noqa: E731
    assert saturated(narrow) > saturated(default)
    sigmoid = render(ds, size=(256, 256), window=(1000, 2000), voi_function="sigmoid")
    assert not np.array_equal(sigmoid, default)
    with pytest.raises(InvalidInputError):
        render_frame(ds, window=(1000, 0))
    with pytest.raises(InvalidInputError):
        render_frame(ds, window=(1000, 100), voi_function="cubic")


def test_voi_lut_sequence_is_used_when_there_is_no_window() -> None:
    ds = dataset("vlut_04.dcm")
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    lut = np.asarray(item.LUTData, dtype=np.float64)
    idx = np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)
    want = np.rint(lut[idx] * 255.0 / (2**bits - 1))
    got = render(ds)
    assert np.abs(got - want).max() <= 1
    # an explicit window still wins over the LUT
    assert not np.array_equal(got, render(ds, window=(128, 64)))


def test_modality_lut_sequence_and_min_max_fallback() -> None:
    ds = dataset("mlut_18.dcm")
    assert "ModalityLUTSequence" in ds and "WindowCenter" not in ds
    got = render(ds)
    assert got.min() == 0 and got.max() == 255  # stretched to the frame's own range
    assert len(np.unique(got)) > 100


def test_float_pixel_data_and_one_bit_segmentations_render() -> None:
    pm = render(dataset("parametric_map_float.dcm"))
    assert pm.shape == (128, 128) and pm.min() == 0 and pm.max() == 255
    seg = render(dataset("liver.dcm"), frame=1)
    assert seg.shape == (512, 512) and set(np.unique(seg)) <= {0, 255}


# --------------------------------------------------------------------------- colour


def test_rgb_any_bit_depth_byte_order_and_planar_configuration() -> None:
    ref = render(dataset("SC_rgb.dcm"))
    assert ref.shape == (100, 100, 3)
    # pydicom's test image: horizontal bands red, light red, green, ..., black to white
    assert ref[5, 5].tolist() == [255, 0, 0]
    assert ref[25, 5].tolist() == [0, 255, 0]
    assert ref[45, 5].tolist() == [0, 0, 255]
    assert ref[95, 5].tolist() == [255, 255, 255]
    for name in ("SC_rgb_16bit.dcm", "SC_rgb_32bit.dcm", "SC_rgb_expb_16bit.dcm"):
        assert np.array_equal(render(dataset(name)), ref), name
    assert dataset("color-pl.dcm").PlanarConfiguration == 1
    planar = render(dataset("color-pl.dcm"))
    assert planar.shape == (120, 256, 3)
    assert np.array_equal(planar, render(dataset("color-px.dcm")))


def test_ybr_full_is_converted_to_rgb() -> None:
    ds = dataset("SC_ybr_full_uncompressed.dcm")
    assert ds.PhotometricInterpretation == "YBR_FULL"
    got = render(ds)
    ref = render(dataset("SC_rgb.dcm"))
    assert np.abs(got - ref).max() <= 8  # YBR quantisation only
    raw = pixel_array(ds, raw=True).astype(np.int64)  # unconverted YCbCr is far off
    assert np.abs(raw - ref).max() > 50
    assert frame_pixels(ds).shape == (100, 100, 3)


def test_ybr_rct_jpeg2000_matches_its_uncompressed_rgb_twin() -> None:
    assert dataset("US1_J2KR.dcm").PhotometricInterpretation == "YBR_RCT"
    assert np.array_equal(render(dataset("US1_J2KR.dcm")), render(dataset("US1_UNCR.dcm")))


def test_palette_colour_including_big_endian_tables() -> None:
    face = render(dataset("OT-PAL-8-face.dcm"))  # no file meta at all: implicit VR LE
    assert face.shape == (480, 640, 3)
    assert np.abs(face[..., 0] - face[..., 2]).max() > 50  # a real colour image, not grey
    little = render(dataset("OBXXXX1A.dcm"))
    assert little.shape == (600, 800, 3) and little.max() > 200
    assert np.array_equal(render(dataset("OBXXXX1A_expb.dcm")), little)
    assert np.array_equal(render(dataset("OBXXXX1A_rle.dcm")), little)


# --------------------------------------------------------------------------- frames


def test_multi_frame_indexing_and_bounds() -> None:
    ds = dataset("emri_small.dcm")
    assert frame_count(ds) == 10
    frames = [render(ds, frame=i) for i in (0, 4, 9)]
    assert not np.array_equal(frames[0], frames[1])
    # the same frame from an RLE multi-frame file decodes identically
    assert np.array_equal(render(dataset("emri_small_RLE.dcm"), frame=4), frames[1])
    assert np.array_equal(frame_pixels(ds, 9), ds.pixel_array[9])
    with pytest.raises(NotFoundError, match="10 frame"):
        render_frame(ds, frame=10)
    with pytest.raises(InvalidInputError):
        render_frame(ds, frame=-1)
    second = render(dataset("SC_rgb_2frame.dcm"), frame=1)
    assert np.array_equal(second, 255 - render(dataset("SC_rgb_2frame.dcm"), frame=0))


def test_no_pixel_data_is_a_clear_error() -> None:
    ds = pydicom.Dataset()
    ds.PatientID = "P1"
    with pytest.raises(InvalidInputError, match="no pixel data"):
        render_frame(ds)
    with pytest.raises(InvalidInputError, match="no pixel data"):
        thumbnail(ds)


# --------------------------------------------------------------------------- output


def test_viewport_jpeg_and_format_errors() -> None:
    ds = dataset("JPEG-LL.dcm")  # 256 wide, 1024 tall, JPEG lossless
    img = Image.open(io.BytesIO(render_frame(ds, size=(100, 100))))
    assert img.size == (25, 100)
    bigger = Image.open(io.BytesIO(render_frame(ds, size=(512, 2048))))
    assert bigger.size == (512, 2048)
    jpeg = render_frame(ds, fmt="image/jpeg", quality=80)
    assert jpeg[:2] == b"\xff\xd8"
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    assert len(render_frame(ds, fmt="jpg", quality=10)) < len(jpeg)
    with pytest.raises(UnsupportedContentError):
        render_frame(ds, fmt="gif")
    with pytest.raises(InvalidInputError):
        render_frame(ds, fmt="jpeg", quality=0)
    with pytest.raises(InvalidInputError):
        render_frame(ds, size=(0, 10))


def test_thumbnail_shrinks_but_never_enlarges() -> None:
    big = thumbnail(_read(shared_dicom("transfer-syntaxes", "1.dcm")))
    assert big.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(big)).size == (128, 128)
    colour = Image.open(io.BytesIO(thumbnail(dataset("US1_UNCR.dcm"), max_side=64)))
    assert colour.size == (64, 48) and colour.mode == "RGB"
    small = Image.open(io.BytesIO(thumbnail(dataset("emri_small.dcm"))))
    assert small.size == (64, 64)
    with pytest.raises(InvalidInputError):
        thumbnail(dataset("emri_small.dcm"), max_side=0)


# --------------------------------------------------------------------------- cache


def test_render_cache_is_a_bytes_bounded_lru() -> None:
    cache_ = RenderCache(max_bytes=100)
    cache_.put("a", b"x" * 40)
    cache_.put("b", b"y" * 40)
    assert cache_.get("a") == b"x" * 40  # a is now most recent
    cache_.put("c", b"z" * 40)  # evicts b, the least recently used
    assert "b" not in cache_ and "a" in cache_ and "c" in cache_
    assert cache_.nbytes == 80
    cache_.put("huge", b"h" * 101)  # larger than the budget: not kept
    assert "huge" not in cache_ and cache_.nbytes == 80
    calls: list[int] = []

    def make() -> bytes:
        calls.append(1)
        return b"r"

    assert cache_.get_or_render("r", make) == b"r"
    assert cache_.get_or_render("r", make) == b"r"
    assert len(calls) == 1
    assert RenderCache.key("1.2", fmt="jpg") == RenderCache.key("1.2", fmt="image/jpeg")
    assert RenderCache.key("1.2", window=(40, 400)) != RenderCache.key("1.2")
    cache_.put(RenderCache.key("1.2"), b"p")
    cache_.put(RenderCache.key("1.2", frame=3), b"q")
    assert cache_.invalidate("1.2") == 2


def test_render_cache_under_concurrent_use() -> None:
    cache_ = RenderCache(max_bytes=10_000)

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(2000):
            k = int(rng.integers(0, 50))
            if cache_.get(k) is None:
                cache_.put(k, bytes(int(rng.integers(1, 700))))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 0 < cache_.nbytes <= 10_000
    assert cache_.nbytes == sum(len(cache_.get(k) or b"") for k in range(50))
