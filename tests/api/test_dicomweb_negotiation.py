"""DICOMweb rules without a server: content negotiation, frames, transcoding, STOW verdicts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medshard.api.dicomweb.frames import FrameFormat, frames, parse_frame_list
from medshard.api.dicomweb.multipart import multipart_stream
from medshard.api.dicomweb.retrieve import ObjectReader, transcode
from medshard.api.dicomweb.routes_common import (
    negotiate_frames,
    negotiate_image,
    negotiate_instances,
    parse_accept,
    require_json,
)
from medshard.api.dicomweb.routes_rendered import render_request
from medshard.api.dicomweb.stow import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    StowItem,
    receive_parts,
    stow_response,
)
from medshard.api.errors import NotAcceptableError, PayloadTooLargeError, status_of
from medshard.errors import InvalidInputError, NotFoundError
from tests.data import shared_dicom

EXPLICIT = "1.2.840.10008.1.2.1"
JLS = "1.2.840.10008.1.2.4.80"
RLE = "1.2.840.10008.1.2.5"
OCTET = FrameFormat("application/octet-stream", EXPLICIT, False)


def test_accept_ranges_are_ordered_by_q_and_keep_quoted_commas() -> None:
    ranges = parse_accept('image/png;q=0.5, multipart/related; type="a,b"; q=0.9, */*;q=0')
    assert [(r.mime, r.q) for r in ranges] == [("multipart/related", 0.9), ("image/png", 0.5)]
    assert ranges[0].params == {"type": "a,b"}
    assert [r.mime for r in parse_accept(None)] == ["*/*"]
    with pytest.raises(InvalidInputError):
        parse_accept("image/png; q=high")


def test_instances_go_as_stored_unless_another_syntax_is_named() -> None:
    assert negotiate_instances(None, {JLS}) is None
    assert negotiate_instances("*/*", {JLS}) is None
    assert (
        negotiate_instances('multipart/related; type="application/dicom"; transfer-syntax=*', {JLS})
        is None
    )
    assert negotiate_instances('multipart/related; type="application/dicom"', {JLS}) == EXPLICIT
    assert (
        negotiate_instances(
            f"multipart/related; type=application/dicom; transfer-syntax={JLS}", {JLS}
        )
        == JLS
    )
    with pytest.raises(NotAcceptableError):
        negotiate_instances(
            f"multipart/related; type=application/dicom; transfer-syntax={JLS}", {JLS, EXPLICIT}
        )
    with pytest.raises(NotAcceptableError):
        negotiate_instances("application/xml, text/html", {EXPLICIT})
    fallback = f"multipart/related; type=application/dicom; transfer-syntax={RLE}, */*;q=0.1"
    assert negotiate_instances(fallback, {JLS}) is None


def test_frames_are_uncompressed_by_default_and_compressed_on_request() -> None:
    assert negotiate_frames(None, JLS) == OCTET
    assert negotiate_frames("image/jls", JLS) == FrameFormat("image/jls", JLS, True)
    assert negotiate_frames('multipart/related; type="image/*"', RLE).compressed
    ohif = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    assert negotiate_frames(ohif, JLS) == FrameFormat("application/octet-stream", JLS, True)
    assert negotiate_frames(ohif, EXPLICIT) == OCTET
    with pytest.raises(NotAcceptableError):
        negotiate_frames("image/jls", EXPLICIT)
    with pytest.raises(NotAcceptableError):
        negotiate_frames(
            f"multipart/related; type=application/octet-stream; transfer-syntax={JLS}", EXPLICIT
        )
    with pytest.raises(NotAcceptableError):
        negotiate_frames("image/jp2", JLS)


def test_rendered_media_types_and_json_only_metadata() -> None:
    assert negotiate_image("image/png", None, "jpeg") == "png"
    assert negotiate_image("image/png", "image/jpeg", "png") == "jpeg"  # the parameter wins
    assert negotiate_image(None, None, "jpeg") == "jpeg"
    assert negotiate_image("image/*", None, "png") == "png"
    with pytest.raises(NotAcceptableError):
        negotiate_image("image/gif", None, "png")
    require_json("application/dicom+json, application/json")
    require_json(None)
    with pytest.raises(NotAcceptableError) as info:
        require_json("application/dicom+xml")
    assert status_of(info.value) == 406


def test_render_parameters_are_parsed_or_refused() -> None:
    req = render_request({"window": "40,400,sigmoid", "viewport": "64,32", "quality": "70"}, "jpeg")
    assert (req.window, req.voi_function, req.size, req.quality) == (
        (40.0, 400.0),
        "sigmoid",
        (64, 32),
        70,
    )
    assert render_request({"viewport": "64,64,,,,"}, "png").size == (64, 64)
    for bad in ({"window": "a,b"}, {"window": "1"}, {"viewport": "0,3"}, {"quality": "0"}):
        with pytest.raises(InvalidInputError):
            render_request(bad, "png")
    assert parse_frame_list("3,1") == [3, 1]
    for bad_list in ("0", "", "1,x"):
        with pytest.raises(InvalidInputError):
            parse_frame_list(bad_list)


def test_native_frames_are_sliced_and_compressed_frames_decoded() -> None:
    native = pydicom.dcmread(shared_dicom("pydicom-data", "SC_rgb_2frame.dcm"))
    second = frames(native, [2], OCTET)[0]
    assert second == native.pixel_array[1].astype("<u1").tobytes()
    rle = pydicom.dcmread(shared_dicom("pydicom-data", "OBXXXX1A_rle_2frame.dcm"))
    decoded = frames(rle, [1, 2], OCTET)
    assert decoded == [rle.pixel_array[i].tobytes() for i in (0, 1)]
    raw = frames(rle, [2], FrameFormat("image/dicom-rle", RLE, True))[0]
    assert raw != decoded[1] and len(raw) < len(decoded[1])
    with pytest.raises(NotFoundError):
        frames(rle, [3], OCTET)


def test_transcoding_is_lossless_and_keeps_the_sop_instance_uid() -> None:
    path = shared_dicom("transfer-syntaxes", "7.dcm")
    original = pydicom.dcmread(path)
    out = pydicom.dcmread(io.BytesIO(transcode(path.read_bytes(), EXPLICIT)))
    assert out.file_meta.TransferSyntaxUID == EXPLICIT
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(out.pixel_array, original.pixel_array)
    with pytest.raises(NotAcceptableError):
        transcode(path.read_bytes(), JLS)
    big_endian = shared_dicom("transfer-syntaxes", "3.dcm").read_bytes()
    with pytest.raises(NotAcceptableError):
        transcode(big_endian, EXPLICIT)


def test_the_header_reader_fetches_only_the_chunks_it_needs() -> None:
    data = shared_dicom("pydicom-data", "MR2_UNCR.dcm").read_bytes()
    fetched = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 4096):
            fetched.append(i)
            yield data[i : i + 4096]

    reader = ObjectReader(chunks())
    ds = pydicom.dcmread(reader, stop_before_pixels=True, force=True)
    assert ds.Rows == 1024 and "PixelData" not in ds
    assert reader.read(4) == b"\xe0\x7f\x10\x00"  # positioned at Pixel Data
    assert len(fetched) < len(data) // 4096 // 10
    reader.close()


def test_stow_status_follows_the_verdicts() -> None:
    ok = StowItem("1.2", "1.2.3", "9.9", "8.8")
    dup = StowItem("1.2", "1.2.4", "9.9", "8.8", duplicate=True)
    bad = StowItem(failure=CANNOT_UNDERSTAND, reason="part 2: not DICOM")
    wrong = StowItem("1.2", "1.2.5", "7.7", "8.8", failure=DATASET_MISMATCH, reason="other study")
    status, body, warnings = stow_response([ok, dup], "http://h/dicom-web", None)
    assert status == 200 and body["00081190"]["Value"] == ["http://h/dicom-web/studies/9.9"]
    assert len(body["00081199"]["Value"]) == 2 and "already stored" in warnings[0]
    status, body, warnings = stow_response([ok, bad], "http://h/dicom-web", None)
    assert status == 202 and warnings == ["part 2: not DICOM"]
    [failed] = body["00081198"]["Value"]
    assert failed == {
        "00081150": {"vr": "UI"},
        "00081155": {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [0xC000]},
    }
    status, body, _ = stow_response([wrong], "http://h/dicom-web", "9.9")
    assert status == 409 and "00081199" not in body
    assert body["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_received_parts_roll_over_to_disk_beyond_the_memory_budget(tmp_path: Path) -> None:
    payloads = [bytes([i]) * 300_000 for i in range(4)]
    body = b"".join(multipart_stream([({}, p) for p in payloads], "b0undary"))
    parts = asyncio.run(
        receive_parts(_chunks(body), "b0undary", max_bytes=10**7, memory_budget=700_000)
    )
    try:
        assert [p.read() for p in parts] == payloads
        on_disk = [getattr(p.body, "_rolled", False) for p in parts]
        assert on_disk == [False, False, True, True]
    finally:
        for p in parts:
            p.close()
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(receive_parts(_chunks(body), "b0undary", max_bytes=500_000))
