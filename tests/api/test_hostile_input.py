"""Hostile input through every entry point of a real `medshard serve` (and `medshard import`).

Each test runs the service process over real storage nodes and sends what a probe of the demo
sent: a deflate bomb, files with half their pixel data or a lying length, a DICOM/PE polyglot,
UIDs and query values carrying path traversal, SQL and control characters, numbers out of
range, clients that stop sending, endless headers and bodies. Every one must get a clear 4xx
(or a C-STORE failure status), store nothing, keep the service's memory bounded, and leave the
service answering. The hostile files themselves are built by :mod:`tests.hostile`.
"""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from medshard.api.dicomweb.multipart import (
    DEFAULT_MAX_PARTS,
    iter_parts_sync,
    multipart_content_type,
    multipart_stream,
)
from medshard.cluster.archive import Archive
from medshard.config import load_settings
from medshard.ingest.pipeline import Ingestor
from tests import hostile
from tests.conftest import Deployment, Service

BOUNDARY = "hostile-boundary-0123"
STOW_TYPE = multipart_content_type(BOUNDARY)
CANNOT_UNDERSTAND = 0xC000
CALLING_AE = "MEDTEST"  # allow-listed in every test deployment (tests/conftest.py)
MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def _body(*files: bytes) -> bytes:
    parts = [({"Content-Type": "application/dicom"}, f) for f in files]
    return b"".join(multipart_stream(parts, BOUNDARY))


def stow(svc: Service, *files: bytes, path: str = "/studies") -> httpx.Response:
    headers = {"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"}
    return httpx.post(
        svc.dicomweb + path,
        content=_body(*files),
        headers={**headers, **svc.auth_headers()},
        timeout=120,
    )


def get(svc: Service, path: str, **kwargs: Any) -> httpx.Response:
    headers = {**kwargs.pop("headers", {}), **svc.auth_headers()}
    return httpx.get(svc.url + path, headers=headers, timeout=60, **kwargs)


def instance_count(svc: Service) -> int:
    r = get(svc, "/dicom-web/instances", params={"limit": "1000"})
    assert r.status_code == 200, r.text
    return len(r.json())


def failures(r: httpx.Response) -> list[int]:
    items = r.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def uids(data: bytes) -> tuple[str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def status_kib(pid: int, key: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def assert_up(svc: Service) -> None:
    assert httpx.get(f"{svc.url}/healthz", timeout=10).status_code == 200


def raw_exchange(svc: Service, *chunks: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection, then read until the server closes or ``wait``."""
    host, port = svc.url.removeprefix("http://").split(":")
    reply = b""
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before taking everything
        try:
            while piece := sock.recv(65536):
                reply += piece
        except OSError:  # a timeout, or a reset after the answer
            pass
    return reply


def auth_lines(svc: Service) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in svc.auth_headers().items())


# --------------------------------------------------------------------------- STOW-RS


HOSTILE_FILES = {
    "half pixel data": (hostile.half_pixel_data, "truncated"),
    "half of 4 frames": (lambda: hostile.half_pixel_data(frames=4), "truncated"),
    "smuggled bytes after the image": (hostile.padded_pixel_data, "extra bytes"),
    "lying 0xFFFFFFF0 pixel length": (hostile.lying_length, "claims 4294967280 bytes"),
    "lying header length": (hostile.lying_header_length, "(0010,0010)"),
    "cut in transfer": (lambda: hostile.cut(hostile.valid_file(), 0.7), "truncated"),
    "fragments missing": (
        lambda: hostile.encapsulated([b"\xff\xd8" + bytes(64)], frames=3),
        "1 fragment(s) for 3 frame(s)",
    ),
    "no sequence delimiter": (
        lambda: hostile.encapsulated([b"\xff\xd8" + bytes(64)], delimiter=False),
        "truncated",
    ),
    "nested 40 deep": (lambda: hostile.deeply_nested(40), "nest deeper"),
    "cut deflated": (lambda: hostile.cut(hostile.deflated_file(), 0.8), "deflate"),
}


def test_hostile_files_over_stow_are_refused_storing_nothing_with_memory_bounded(
    service: Service,
) -> None:
    svc = service
    # A valid instance first: it also loads whatever the ingest path loads on first use, so
    # the memory measured below is the bomb's alone.
    good = hostile.valid_file()
    assert stow(svc, good).status_code == 200
    before = instance_count(svc)
    pid = svc.process.proc.pid
    peak_before = status_kib(pid, "VmHWM")

    # ~2 MB each, inflating to 2 GiB (past the 1 GiB default): one huge pixel data element,
    # and 2048 elements of 1 MiB that only counting inflated bytes can catch.
    for spread in (False, True):
        bomb = hostile.deflate_bomb(2 << 30, spread=spread)
        assert len(bomb) < 3 * MiB
        r = stow(svc, bomb)
        assert r.status_code == 409, r.text
        assert failures(r) == [CANNOT_UNDERSTAND]
        assert "max_decompressed_bytes" in r.headers["Warning"]
    grown = (status_kib(pid, "VmHWM") - peak_before) // 1024
    assert grown < 256, f"the service's peak RSS grew by {grown} MiB on a deflate bomb"

    for name, (make, reason) in HOSTILE_FILES.items():
        r = stow(svc, make())
        assert r.status_code == 409, (name, r.status_code, r.text)
        assert failures(r) == [CANNOT_UNDERSTAND], name
        assert reason in r.headers["Warning"], (name, r.headers["Warning"])

    # One bad part does not hide a good one, and is not stored with it.
    fresh = hostile.valid_file()
    mixed = stow(svc, hostile.half_pixel_data(), fresh)
    assert mixed.status_code == 202 and failures(mixed) == [CANNOT_UNDERSTAND]
    assert instance_count(svc) == before + 1
    _, _, sop = uids(fresh)
    found = get(svc, "/dicom-web/instances", params={"SOPInstanceUID": sop}).json()
    assert len(found) == 1
    assert_up(svc)


def test_a_polyglot_preamble_is_zeroed_on_store_and_the_response_says_so(
    service: Service,
) -> None:
    svc = service
    clean = hostile.valid_file()
    polyglot = hostile.with_preamble(clean, hostile.pe_preamble())
    r = stow(svc, polyglot)
    assert r.status_code == 200, r.text
    assert "zeroed" in r.headers["Warning"] and "MZ/PE" in r.headers["Warning"]
    study, series, sop = uids(polyglot)
    url = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    back = get(svc, url, headers={"Accept": accept})
    assert back.status_code == 200
    [part] = list(iter_parts_sync([back.content], back.headers["content-type"].split("=")[-1]))
    stored = part.read()
    assert stored[:128] == bytes(128)
    assert stored == clean  # only the preamble differs from what was sent
    again = stow(svc, polyglot)  # hashed as neutralised: a duplicate, not a conflict
    assert again.status_code == 200 and "already stored" in again.headers["Warning"]
    tiff = hostile.with_preamble(hostile.valid_file(), b"II*\x00\x08\x00\x00\x00".ljust(128, b"\0"))
    kept = stow(svc, tiff)
    assert kept.status_code == 200 and "Warning" not in kept.headers
    assert_up(svc)


# --------------------------------------------------------------------------- paths and queries

BAD_UIDS = [
    "1.2.3'%20OR%20'1'='1",
    "1.2.3;DROP%20TABLE%20instances",
    "1.02.3",
    "1." + "2" * 70,
    "%00",
    "%3Cscript%3E",
    "1.2.3%5C..%5C..%5Cwindows",
    "..%252F..%252Fetc",
]


def test_invalid_uids_in_every_path_are_400_and_traversal_reaches_nothing(
    service: Service,
) -> None:
    svc = service
    good = hostile.valid_file()
    assert stow(svc, good).status_code == 200
    study, series, sop = uids(good)
    inst = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for bad in BAD_UIDS:
        for path in (
            f"/dicom-web/studies/{bad}",
            f"/dicom-web/studies/{bad}/metadata",
            f"/dicom-web/studies/{bad}/series",
            f"/dicom-web/studies/{bad}/thumbnail",
            f"/dicom-web/studies/{study}/series/{bad}",
            f"/dicom-web/studies/{study}/series/{bad}/instances",
            f"/dicom-web/studies/{study}/series/{series}/instances/{bad}/metadata",
            f"/dicom-web/studies/{study}/series/{series}/instances/{bad}/frames/1",
            f"/dicom-web/studies/{study}/series/{series}/instances/{bad}/rendered",
        ):
            r = get(svc, path)
            assert r.status_code == 400, (path, r.status_code, r.text[:200])
            assert "not a valid DICOM UID" in r.json()["error"]
        r = httpx.post(
            f"{svc.dicomweb}/studies/{bad}",
            content=_body(good),
            headers={"Content-Type": STOW_TYPE, **svc.auth_headers()},
        )
        assert r.status_code == 400, (bad, r.text)
        wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
        assert get(svc, "/wado", params={**wado, "objectUID": bad}).status_code == 400
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    bad_ts = {**wado, "contentType": "application/dicom", "transferSyntax": "../1.2"}
    assert get(svc, "/wado", params=bad_ts).status_code == 400
    # Dot segments are resolved by the client or the router: whatever the form, no file leaks.
    for path in ("/dicom-web/studies/../../etc/passwd", "/dicom-web/studies/%2e%2e/%2e%2e"):
        assert get(svc, path).status_code in (400, 404), path
    assert get(svc, f"{inst}/bulkdata/../../../etc/passwd").status_code in (400, 404)
    assert get(svc, f"{inst}/frames/1,1,1").status_code == 400  # no frame multiplication
    assert get(svc, f"{inst}/metadata").status_code == 200
    assert_up(svc)


def test_hostile_query_parameters_are_400_and_sql_stays_data(service: Service) -> None:
    svc = service
    good = hostile.valid_file()
    assert stow(svc, good).status_code == 200
    study, series, sop = uids(good)
    inst = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for params in (
        {"offset": str(2**63)},
        {"offset": "2147483648"},
        {"limit": str(2**63)},
        {"limit": "9" * 5000},
        {"offset": "\uff11"},  # a full-width digit: isdigit() says yes, int() says no
        {"offset": "-1"},
        {"limit": "0"},
        {"StudyInstanceUID": "1.2.3' OR '1'='1"},
        {"SOPInstanceUID": f"{sop},1.2.3;--"},
        {"PatientID": "a\x00b"},
        {"PatientName": "x" * 20_000},
        {"PatientName": "*a" * 20},
        {"includefield": "PatientID\r\nX-Injected: 1"},
    ):
        r = get(svc, "/dicom-web/studies", params=params)
        assert r.status_code == 400, (params, r.status_code, r.text[:200])
    r = get(svc, "/dicom-web/studies", params={"offset": str(2**31 - 1)})
    assert r.status_code == 200 and r.json() == []
    # SQL metacharacters in a value are data: nothing matches, nothing breaks.
    for value in ("' OR '1'='1", "HOSTILE-1' --", "%", "_%", "HOSTILE%", '"; DROP TABLE x; --'):
        r = get(svc, "/dicom-web/studies", params={"PatientID": value})
        assert r.status_code == 200 and r.json() == [], value
    r = get(svc, "/dicom-web/studies", params={"PatientID": "HOSTILE-?"})
    assert r.status_code == 200 and len(r.json()) >= 1  # the DICOM wildcard still works
    for query in (
        "viewport=5000,5000",
        "viewport=1e400,10",
        "quality=\u00b2",
        "window=nan,40",
        "window=40,inf",
    ):
        r = get(svc, f"{inst}/rendered?{query}")
        assert r.status_code == 400, (query, r.status_code, r.text[:200])
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    for extra in ({"rows": "99999"}, {"frameNumber": "\u00b2"}, {"imageQuality": "1000"}):
        assert get(svc, "/wado", params={**wado, **extra}).status_code == 400, extra
    assert_up(svc)


# --------------------------------------------------------------------------- slow and endless


@pytest.fixture
def tight_service(sqlite_deployment: Deployment, request: pytest.FixtureRequest) -> Service:
    """The ``service`` fixture, started with a 2 s idle timeout and an 8 MiB STOW-RS cap."""
    settings = load_settings(sqlite_deployment.home)
    settings.http_idle_timeout_s = 2.0
    settings.stow_max_request_bytes = 8 * MiB
    settings.save()
    svc: Service = request.getfixturevalue("service")
    return svc


def test_clients_that_stop_sending_or_never_stop_are_cut_off(tight_service: Service) -> None:
    svc = tight_service
    before = instance_count(svc)
    start = time.monotonic()
    silent = raw_exchange(svc)  # connects, sends nothing
    assert silent.startswith(b"HTTP/1.1 408"), silent[:100]
    assert time.monotonic() - start < 8
    stalled_headers = raw_exchange(svc, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert stalled_headers.startswith(b"HTTP/1.1 408"), stalled_headers[:100]

    payload = _body(hostile.valid_file())
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: {STOW_TYPE}\r\nContent-Length: {len(payload)}\r\n".encode()
        + auth_lines(svc)
        + b"\r\n"
    )
    stalled_body = raw_exchange(svc, head, payload[: len(payload) // 2])
    assert stalled_body.startswith(b"HTTP/1.1 408"), stalled_body[:300]
    assert b"stopped arriving" in stalled_body

    endless_headers = raw_exchange(
        svc, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", *[b"X-Pad: " + b"a" * 1000 + b"\r\n"] * 100
    )
    assert endless_headers.startswith(b"HTTP/1.1 431"), endless_headers[:100]
    assert instance_count(svc) == before
    assert_up(svc)


def test_endless_oversized_and_shredded_multipart_bodies_are_413(tight_service: Service) -> None:
    svc = tight_service
    before = instance_count(svc)

    def endless() -> Iterator[bytes]:  # one part that never ends, sent as fast as it goes
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        while True:
            yield bytes(MiB)

    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: {STOW_TYPE}\r\n".encode()
        + auth_lines(svc)
        + b"\r\n"
    )
    host, port = svc.url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in endless():
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                if sent > 64 * MiB:
                    break
        except OSError:
            pass  # the server answered and closed while we were still sending
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 64 * MiB

    tiny = [({"Content-Type": "application/dicom"}, b"x")] * (DEFAULT_MAX_PARTS + 1)
    r = httpx.post(
        f"{svc.dicomweb}/studies",
        content=b"".join(multipart_stream(tiny, BOUNDARY)),
        headers={"Content-Type": STOW_TYPE, **svc.auth_headers()},
        timeout=60,
    )
    assert r.status_code == 413 and "parts" in r.json()["error"]
    assert instance_count(svc) == before
    assert_up(svc)


# --------------------------------------------------------------------------- DIMSE and import


def test_c_store_of_broken_data_sets_fails_and_stores_nothing(
    service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = service
    # Send files as their raw bytes: pynetdicom would otherwise decode and re-encode them,
    # mending the lying length on the way.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    valid = pydicom.dcmread(io.BytesIO(hostile.valid_file()))
    half = pydicom.dcmread(io.BytesIO(hostile.half_pixel_data()))
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(hostile.lying_length())
    assoc = ae.associate("127.0.0.1", svc.dimse_port, ae_title=svc.ae_title)
    assert assoc.is_established
    try:
        ok = assoc.send_c_store(valid)
        assert ok.Status == 0x0000
        truncated = assoc.send_c_store(half)
        assert truncated.Status == CANNOT_UNDERSTAND
        assert "truncated" in str(truncated.get("ErrorComment", ""))
        lied = assoc.send_c_store(lying)  # sent from the file, bytes as they are
        assert lied.Status == CANNOT_UNDERSTAND
    finally:
        assoc.release()
    found = get(svc, "/dicom-web/instances", params={"SOPInstanceUID": str(half.SOPInstanceUID)})
    assert found.json() == []
    assert len(get(svc, "/dicom-web/instances", params={"PatientID": "HOSTILE-1"}).json()) == 1
    assert_up(svc)


def test_import_refuses_hostile_files_and_zeroes_a_polyglot_preamble(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    clean = hostile.valid_file()
    files = {
        "bomb.dcm": hostile.deflate_bomb(2 << 30, spread=True),
        "half.dcm": hostile.half_pixel_data(),
        "lying.dcm": hostile.lying_length(),
        "cut.dcm": hostile.cut(hostile.valid_file()),
        "polyglot.dcm": hostile.with_preamble(clean, hostile.pe_preamble()),
    }
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    report = dep.cli_json("import", str(inbox))
    rejected = {Path(r["path"]).name: r["reason"] for r in report["rejected"]}
    assert sorted(rejected) == ["bomb.dcm", "cut.dcm", "half.dcm", "lying.dcm"]
    assert "max_decompressed_bytes" in rejected["bomb.dcm"]
    [imported] = report["imported"]
    out = tmp_path / "back.dcm"
    dep.cli("get", "--sop", imported["sop_instance_uid"], "-o", str(out))
    assert out.read_bytes() == clean
    # The pipeline's outcome carries the note that import and STOW-RS report.
    other = hostile.with_preamble(hostile.valid_file(), b"#!/bin/sh\nrm -rf /\n".ljust(128, b" "))
    with Archive.open(dep.home) as archive:
        outcome = Ingestor(archive).ingest_stream(io.BytesIO(other), "probe")
    assert outcome.status == "imported"
    assert "script interpreter" in outcome.note and "zeroed" in outcome.note
