"""DICOMweb codecs: multipart/related streaming, the DICOM JSON model, QIDO-RS query parsing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pydicom
import pytest

from medshard.api.dicomweb.dicomjson import (
    dataset_to_json,
    json_to_dataset,
    resolve_bulkdata_path,
)
from medshard.api.dicomweb.multipart import (
    Body,
    MultipartParser,
    PartData,
    PartEnd,
    PartHeaders,
    amultipart_stream,
    boundary_of,
    iter_parts,
    iter_parts_sync,
    multipart_content_type,
    multipart_stream,
    new_boundary,
    parse_content_type,
)
from medshard.api.dicomweb.query import (
    LIKE_ESCAPE,
    AnyOf,
    Range,
    SingleValue,
    Wildcard,
    default_attributes,
    matches,
    parse_qido,
    to_sql_like,
)
from medshard.errors import InvalidInputError, NotFoundError

try:
    from tests.data import shared_dicom
except ImportError:  # tests/ itself is on sys.path (rootdir conftest, no tests/__init__.py)
    from data import shared_dicom  # type: ignore[no-redef]

MiB = 1024 * 1024

# --------------------------------------------------------------------------- Content-Type


def test_parse_content_type_handles_quotes_case_and_escapes() -> None:
    mime, params = parse_content_type(
        'Multipart/Related; TYPE="application/dicom"; boundary="x:y=z"; '
        'transfer-syntax=1.2.840.10008.1.2.1; note="a;b \\"c\\""'
    )
    assert mime == "multipart/related"
    assert params == {
        "type": "application/dicom",
        "boundary": "x:y=z",
        "transfer-syntax": "1.2.840.10008.1.2.1",
        "note": 'a;b "c"',
    }
    assert boundary_of("multipart/related; boundary=abc; type=application/dicom") == "abc"
    b = new_boundary()
    assert boundary_of(multipart_content_type(b)) == b
    assert parse_content_type(multipart_content_type(b))[1]["type"] == "application/dicom"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "application/dicom",  # not multipart
        "multipart/related; type=application/dicom",  # no boundary
        "multipart/related; boundary=",  # empty boundary
        "multipart/related; boundary=" + "x" * 71,  # too long
        'multipart/related; boundary="a;b"',  # ';' is not a boundary character
        'multipart/related; boundary="unterminated',
        "multipart/related; boundary",  # parameter without '='
        "related; boundary=x",  # no subtype
    ],
)
def test_boundary_of_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(InvalidInputError):
        boundary_of(header)


# --------------------------------------------------------------------------- multipart


def _tricky_bodies(boundary: str) -> list[bytes]:
    b = boundary.encode()
    return [
        b"\r\n--" + b + b"x\r\n",  # delimiter lookalike followed by other bytes
        b"",  # empty part
        b"--" + b + b"\r\n\r\n",  # boundary without the leading CRLF is data
        b"\r\n\r\n\r\n",
        b"\r\n--" + b + b"-",  # '-' alone is not a close delimiter
        bytes(range(256)) * 37 + b"\r\n--" + b[:-1],
        os.urandom(100_000),
    ]


def _chunked(data: bytes, step: int) -> Iterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


@pytest.mark.parametrize("step", [1, 7, 64, 4096, 10**9])
def test_multipart_round_trip_with_binary_bodies(step: int) -> None:
    boundary = new_boundary()
    bodies = _tricky_bodies(boundary)
    parts: list[tuple[dict[str, str], Body]] = [
        ({"Content-Type": "application/dicom", "Content-Location": f"/p/{i}"}, body)
        for i, body in enumerate(bodies)
    ]
    # The writer also takes bodies as chunk iterables, consumed lazily.
    parts[-1] = (parts[-1][0], _chunked(bodies[-1], 999))
    encoded = b"".join(multipart_stream(parts, boundary))
    if step == 1:
        encoded_chunks: list[bytes] = [encoded[i : i + 1] for i in range(len(encoded))][:2000]
        encoded_chunks.append(encoded[2000:])  # byte by byte through the tricky prefix
    else:
        encoded_chunks = list(_chunked(encoded, step))
    got = list(iter_parts_sync(encoded_chunks, boundary))
    assert [p.read() for p in got] == bodies
    assert [p.headers["content-location"] for p in got] == [f"/p/{i}" for i in range(7)]
    assert all(p.media_type == "application/dicom" for p in got)
    assert [p.size for p in got] == [len(b) for b in bodies]
    for p in got:
        p.close()


def test_async_writer_and_parser_round_trip_a_dicom_file() -> None:
    path = shared_dicom("transfer-syntaxes", "5.dcm")
    data = path.read_bytes()
    boundary = "DICOMweb boundary:1=2"  # spaces and ':' are legal inside the boundary

    async def body_chunks() -> AsyncIterator[bytes]:
        for chunk in _chunked(data, 65536):
            await asyncio.sleep(0)
            yield chunk

    async def parts() -> AsyncIterator[tuple[dict[str, str], bytes | AsyncIterator[bytes]]]:
        yield (
            {"Content-Type": 'application/dicom; transfer-syntax="1.2.840.10008.1.2.4.70"'},
            body_chunks(),
        )
        yield {"Content-Type": "application/dicom+json"}, b"[]"

    async def run() -> list[tuple[dict[str, str], bytes]]:
        stream = amultipart_stream(parts(), boundary)
        out = []
        async for part in iter_parts(stream, boundary):
            with part:
                out.append((part.params, part.read()))
        return out

    (p1, b1), (p2, b2) = asyncio.run(run())
    assert b1 == data and p1 == {"transfer-syntax": "1.2.840.10008.1.2.4.70"}
    assert b2 == b"[]" and p2 == {}
    assert pydicom.dcmread(__import__("io").BytesIO(b1)).SeriesNumber == 5


def test_preamble_padding_epilogue_and_no_headers_are_accepted() -> None:
    body = (
        b"This is the preamble.\r\n--b \t\r\n\r\nfirst\r\n--b\r\n"
        b"X-Folded: one\r\n two\r\nX-Folded: three\r\n\r\nsecond\r\n--b--  \r\nepilogue --b"
    )
    parts = list(iter_parts_sync([body], "b"))
    assert [p.read() for p in parts] == [b"first", b"second"]
    assert parts[0].headers == {} and parts[0].media_type == "text/plain"
    assert parts[1].headers == {"x-folded": "one two, three"}


def test_parser_events_stream_bodies_incrementally() -> None:
    parser = MultipartParser("zz")
    events = parser.feed(b"--zz\r\n\r\n" + b"a" * 10_000)
    assert isinstance(events[0], PartHeaders)
    streamed = sum(len(e.data) for e in events if isinstance(e, PartData))
    assert streamed >= 10_000 - len(b"\r\n--zz")  # only a delimiter-sized tail is held back
    events = parser.feed(b"\r\n--zz--")
    assert isinstance(events[-1], PartEnd)
    assert parser.close() == [] and parser.parts_seen == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no boundary delimiter"),
        (b"just some garbage that is not multipart at all", "no boundary delimiter"),
        (b"--other\r\n\r\nx\r\n--other--", "no boundary delimiter"),
        (b"--b\r\nContent-Type: a\r\n\r\nbody without end", "truncated"),
        (b"--b\r\nContent-Type: a\r\n\r\nbody\r\n--b", "truncated"),
        (b"--b\r\nContent-Type: a", "inside a part's headers"),
        (b"--b\r\nnot a header\r\n\r\nx\r\n--b--", "malformed header"),
        (b"--b\r\n: empty name\r\n\r\nx\r\n--b--", "malformed header"),
        (b"--b--\r\n", "no parts"),
        (b"--b\r\n" + b"X-Long: " + b"a" * 20_000, "exceed"),
    ],
)
def test_malformed_bodies_are_rejected(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        for part in iter_parts_sync(_chunked(body, 1000) if body else [b""], "b"):
            part.close()


def test_writer_rejects_header_injection_and_empty_bodies() -> None:
    with pytest.raises(InvalidInputError, match="line break"):
        list(multipart_stream([({"X": "a\r\nInjected: 1"}, b"")], "b"))
    with pytest.raises(InvalidInputError, match="header name"):
        list(multipart_stream([({"Bad Name": "a"}, b"")], "b"))
    with pytest.raises(InvalidInputError, match="at least one part"):
        list(multipart_stream([], "b"))


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_a_50_mb_part_streams_through_without_growing_memory(tmp_path: Path) -> None:
    size = 50 * MiB
    boundary = new_boundary()
    block = os.urandom(MiB - 3) + b"\r\n-"  # odd size: boundaries fall mid-chunk
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        left = size
        while left:
            piece = block[: min(len(block), left)]
            sent.update(piece)
            left -= len(piece)
            yield piece

    parts: list[tuple[dict[str, str], Body]] = [
        ({"Content-Type": "application/dicom"}, body()),
        ({}, b"tail"),
    ]
    peak = 0

    async def network() -> AsyncIterator[bytes]:
        nonlocal peak
        pending = b""
        for piece in multipart_stream(parts, boundary):
            pending += piece
            while len(pending) >= 65536:  # re-chunk like a socket would
                yield pending[:65536]
                pending = pending[65536:]
                peak = max(peak, _rss())
        yield pending

    async def run() -> list[tuple[int, str, bool]]:
        out = []
        async for part in iter_parts(network(), boundary):
            with part:
                digest = hashlib.sha256()
                while chunk := part.body.read(MiB):
                    digest.update(chunk)
                rolled = bool(getattr(part.body, "_rolled", True))
                out.append((part.size, digest.hexdigest(), rolled))
        return out

    baseline = _rss()
    (big_size, big_hash, rolled), (tail_size, _, tail_rolled) = asyncio.run(run())
    assert big_size == size and big_hash == sent.hexdigest()
    assert rolled and not tail_rolled  # the big part went to disk, the small one did not
    assert tail_size == 4
    assert peak - baseline < 20 * MiB, f"RSS grew by {(peak - baseline) / MiB:.1f} MiB"


# --------------------------------------------------------------------------- DICOM JSON


def test_dicom_json_round_trip_with_bulk_data_uris() -> None:
    ds = pydicom.dcmread(shared_dicom("pydicom-data", "MR-SIEMENS-DICOM-WithOverlays.dcm"))
    uris: dict[str, str] = {}

    def make_uri(path: str) -> str:
        uri = f"https://pacs.example/studies/1/series/2/instances/3/bulkdata/{path}"
        uris[uri] = path
        return uri

    obj = dataset_to_json(ds, bulkdata_uri=make_uri, bulk_threshold=1024)
    text = json.dumps(obj)  # must be plain JSON
    assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": make_uri("7FE00010")}
    assert obj["60003000"]["BulkDataURI"].endswith("/60003000")  # overlay data
    # the icon image nested in a sequence gets a path through the item
    assert obj["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"].endswith("00880200/0/7FE00010")
    assert obj["00100010"]["Value"][0]["Alphabetic"] == str(ds.PatientName)
    assert "InlineBinary" not in text or all(
        len(e.get("InlineBinary", "")) <= 1368 for e in obj.values() if isinstance(e, dict)
    )

    def load(tag: str, vr: str, uri: str) -> bytes:
        return bytes(resolve_bulkdata_path(ds, uris[uri]).value)

    back = json_to_dataset(text, bulkdata_loader=load)
    for elem in ds:
        if elem.tag.element == 0:
            continue
        assert back[elem.tag] == elem, elem.keyword or str(elem.tag)


def test_dicom_json_thresholds_inline_binary_and_small_pixel_data() -> None:
    ds = pydicom.Dataset()
    ds.PatientName = "Doe^Jane"
    ds.add_new(0x00091010, "OB", b"\x01" * 1024)  # exactly at the threshold: inline
    ds.add_new(0x00091011, "OB", b"\x02" * 1026)  # above: bulk
    ds.add_new(0x7FE00010, "OW", b"\x00\x01" * 2)  # pixel data: bulk whatever its size
    ds.add_new(0x00080000, "UL", 42)  # a group length: not part of the model
    obj = dataset_to_json(ds, bulkdata_uri=lambda p: "u:" + p)
    assert "InlineBinary" in obj["00091010"]
    assert obj["00091011"] == {"vr": "OB", "BulkDataURI": "u:00091011"}
    assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": "u:7FE00010"}
    assert "00080000" not in obj
    plain = dataset_to_json(ds)  # no maker: everything inline, loss-free
    assert "InlineBinary" in plain["7FE00010"]
    assert json_to_dataset(plain).PixelData == ds.PixelData
    unloaded = json_to_dataset(obj)  # no loader: bulk elements stay empty
    assert not unloaded.get("PixelData")


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        {"00100010": {"vr": "XX", "Value": ["a"]}},
        {"zz": {"vr": "PN"}},
        {"00100010": "x"},
        {"00081115": {"vr": "SQ", "Value": [{"0020000E": {"Value": ["1.2"]}}]}},
    ],
)
def test_json_to_dataset_rejects_malformed_input(bad: object) -> None:
    with pytest.raises(InvalidInputError):
        json_to_dataset(bad)  # type: ignore[arg-type]


def test_resolve_bulkdata_path_errors() -> None:
    ds = pydicom.Dataset()
    ds.add_new(0x7FE00010, "OW", b"\x00\x00")
    assert resolve_bulkdata_path(ds, "7FE00010").value == b"\x00\x00"
    with pytest.raises(NotFoundError):
        resolve_bulkdata_path(ds, "60003000")
    with pytest.raises(InvalidInputError):
        resolve_bulkdata_path(ds, "7FE00010/0")
    with pytest.raises(InvalidInputError):
        resolve_bulkdata_path(ds, "zzzzzzzz")


# --------------------------------------------------------------------------- QIDO


def test_qido_parses_keywords_tags_ranges_wildcards_and_lists() -> None:
    q = parse_qido(
        [
            ("PatientName", "doe*"),
            ("00100020", "MRN-1"),
            ("StudyDate", "20200101-20201231"),
            ("StudyTime", "-1012"),
            ("StudyInstanceUID", "1.2.3,1.2.4\\1.2.5"),
            ("ModalitiesInStudy", "CT,MR"),
            ("AccessionNumber", ""),
            ("ReferringPhysicianName", "*"),
            ("includefield", "00081030,PatientAge"),
            ("includefield", "StudyDescription"),
            ("limit", "25"),
            ("offset", "50"),
            ("fuzzymatching", "false"),
        ],
        "study",
    )
    assert q.matches == {
        "PatientName": Wildcard("doe*", ignore_case=True),
        "PatientID": SingleValue("MRN-1"),
        "StudyDate": Range("DA", "20200101", "20201231"),
        "StudyTime": Range("TM", None, "1012"),
        "StudyInstanceUID": AnyOf(("1.2.3", "1.2.4", "1.2.5")),
        "ModalitiesInStudy": AnyOf(("CT", "MR")),
    }
    # universal matching (empty or '*') returns the attribute without filtering
    assert q.includefield == (
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientAge",
    )
    assert (q.limit, q.offset, q.include_all) == (25, 50, False)
    returned = q.return_attributes()
    assert returned[: len(default_attributes("study"))] == default_attributes("study")
    assert "PatientAge" in returned and "StudyDescription" in returned
    assert q.accepts(
        {
            "PatientName": "DOE^JOHN",
            "PatientID": "MRN-1",
            "StudyDate": "20200615",
            "StudyTime": "101259.5",
            "StudyInstanceUID": "1.2.4",
            "ModalitiesInStudy": "SR\\MR",
        }
    )


def test_qido_includefield_all_mapping_input_and_limit_cap() -> None:
    q = parse_qido({"includefield": ["all"], "limit": "5000"}, "instance", max_limit=1000)
    assert q.include_all and q.limit == 1000 and q.warnings
    assert parse_qido({}, "series", max_limit=100).limit == 100
    assert "StudyInstanceUID" in default_attributes("series", include_parents=True)
    assert "StudyInstanceUID" not in default_attributes("series")
    assert default_attributes("instance")[1:3] == ("SOPClassUID", "SOPInstanceUID")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("PatientIDX", "1")], "unknown attribute"),
        ([("patientid", "1")], "unknown attribute"),
        ([("00991234", "1")], "unknown attribute"),
        ([("ReferencedSeriesSequence.SeriesInstanceUID", "1.2")], "nested"),
        ([("includefield", "NoSuchThing")], "unknown attribute"),
        ([("fuzzymatching", "true")], "not supported"),
        ([("fuzzymatching", "maybe")], "true or false"),
        ([("limit", "-1")], "non-negative"),
        ([("limit", "ten")], "non-negative"),
        ([("limit", "0")], "at least 1"),
        ([("offset", "1.5")], "non-negative"),
        ([("StudyDate", "2020-01-01")], "DA value or range"),
        ([("StudyDate", "2020*")], "wildcards"),
        ([("StudyDate", "20201231-20200101")], "ends before"),
        ([("StudyDate", "-")], "DA value or range"),
        ([("StudyTime", "25h")], "TM value"),
        ([("StudyInstanceUID", "1.2.abc")], "not a valid UID"),
        ([("StudyInstanceUID", "1.2.*")], "wildcards"),
        ([("StudyInstanceUID", "1.2,,1.3")], "empty entry"),
        ([("PatientID", "a"), ("PatientID", "b")], "more than once"),
        ([("PixelData", "x")], "cannot be used"),
    ],
)
def test_qido_rejects_bad_queries(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_qido(params, "study")


def test_qido_rejects_unknown_levels() -> None:
    with pytest.raises(InvalidInputError):
        parse_qido([], "patient")  # type: ignore[arg-type]


def test_range_matching_semantics() -> None:
    da = parse_qido([("StudyDate", "20200101-")], "study").matches["StudyDate"]
    assert da == Range("DA", "20200101", None)
    before = parse_qido([("StudyDate", "-20200101")], "study").matches["StudyDate"]
    assert matches("19991231", before) and matches("20200101", before)
    assert not matches("20200102", before)
    assert matches("20200101", da) and matches("20991231", da) and not matches("20191231", da)
    assert matches("20190101\\20200301", da)  # multi-valued: any value
    assert not matches("garbage", da) and not matches(None, da) and not matches("", da)
    tm = parse_qido([("StudyTime", "10")], "study").matches["StudyTime"]
    assert matches("100000", tm) and matches("105959.999", tm) and not matches("110000", tm)
    tm_range = parse_qido([("StudyTime", "0800-1000")], "study").matches["StudyTime"]
    assert matches("0930", tm_range) and matches("100059", tm_range)
    assert not matches("075959", tm_range) and not matches("1001", tm_range)
    dt = parse_qido([("AcquisitionDateTime", "20200101-202001")], "study").matches[
        "AcquisitionDateTime"
    ]
    assert matches("20200115123000.5+0100", dt) and not matches("20200201", dt)


def test_wildcard_and_single_value_semantics() -> None:
    pn = Wildcard("DOE^J?HN*", ignore_case=True)
    assert matches("doe^john^m", pn) and matches("Doe^Jahn", pn) and not matches("Doe^Jhn", pn)
    lo = Wildcard("A.B(*", ignore_case=False)  # regex metacharacters are literal
    assert matches("A.B(1)", lo) and not matches("AxB(1)", lo) and not matches("a.b(1)", lo)
    assert matches("MRN-1 ", SingleValue("MRN-1"))  # DICOM space padding is insignificant
    assert not matches("mrn-1", SingleValue("MRN-1"))
    assert matches("smith^anne", SingleValue("Smith^Anne", ignore_case=True))
    assert matches(["1.2.3", "9.9"], AnyOf(("9.9",))) and not matches("1.2", AnyOf(("1.2.3",)))


@pytest.mark.parametrize(
    "pattern",
    ["DOE*", "*50%*", "a_b*", "?", "*\\*", "100%", "x?y", "*", "A.B(*", "O'Brien*"],
)
def test_to_sql_like_agrees_with_matches(pattern: str) -> None:
    values = ["DOE", "DOES", "doe", "50%off", "a_b", "axb", "a_bc", "x", "100%", "1000", "xzy"]
    values += ["xy", "\\", "a\\b\\", "A.B(1)", "O'Brien^P", ""]
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA case_sensitive_like = ON")
    like = to_sql_like(pattern)
    sql = {
        v
        for v in values
        if db.execute("SELECT ? LIKE ? ESCAPE ?", (v, like, LIKE_ESCAPE)).fetchone()[0]
    }
    py = {v for v in values if v and matches([v], Wildcard(pattern))}
    assert sql - {""} == py
