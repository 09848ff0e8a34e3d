"""Frames of a multi-frame instance (PS3.18 8.3.4): frame lists, and the bytes of each frame.

Kept apart from :mod:`medshard.api.dicomweb.retrieve` because a frame is not a slice of the
stored file: it is cut from the parsed pixel data, either as the stored compressed fragment
or decoded to uncompressed little-endian bytes, whichever :class:`FrameFormat` the client
negotiated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.utils import get_expected_length

from medshard.api.dicomweb.retrieve import UNCOMPRESSED, transfer_syntax_of
from medshard.api.errors import NotAcceptableError
from medshard.errors import InvalidInputError, MedshardError, NotFoundError
from medshard.ingest.render import frame_count, frame_pixels


@dataclass(frozen=True)
class FrameFormat:
    """How frames go out: compressed as stored, or uncompressed little-endian bytes."""

    media_type: str
    transfer_syntax: str | None
    compressed: bool


def parse_frame_list(text: str) -> list[int]:
    """``"1,3,5"`` -> [1, 3, 5]; frame numbers are 1-based (PS3.18 8.3.4)."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInputError(f"frame list {text!r} must be comma-separated numbers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise InvalidInputError(f"frame numbers start at 1, got {text!r}")
    return numbers


def frames(ds: Dataset, numbers: Sequence[int], fmt: FrameFormat) -> list[bytes]:
    """The requested frames' bytes, compressed as stored or uncompressed (little endian).

    Raises
    ------
    NotFoundError
        A frame number beyond Number of Frames.
    NotAcceptableError
        Uncompressed frames were asked of pixel data no installed decoder handles.
    """
    count = frame_count(ds)
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise NotFoundError(f"frame {beyond[0]} does not exist: the instance has {count} frame(s)")
    tsyntax = transfer_syntax_of(ds)
    if fmt.compressed:
        return [get_frame(ds.PixelData, n - 1, number_of_frames=count) for n in numbers]
    bits = int(ds.get("BitsAllocated") or 0)
    if tsyntax in UNCOMPRESSED and bits % 8 == 0 and "PixelData" in ds:
        size = int(get_expected_length(ds, unit="bytes")) // count
        data = ds.PixelData
        return [bytes(data[(n - 1) * size : n * size]) for n in numbers]
    out = []
    for n in numbers:
        try:
            arr = frame_pixels(ds, n - 1)
        except MedshardError as exc:
            raise NotAcceptableError(f"frame {n} cannot be decoded: {exc}") from exc
        out.append(np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"))).tobytes())
    return out
