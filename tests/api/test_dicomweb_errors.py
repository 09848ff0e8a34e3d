"""Bad DICOMweb requests get the right 4xx, store nothing partial, and the service stays up."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from medshard.api.dicomweb.multipart import multipart_content_type, multipart_stream
from tests.conftest import Service, make_deployment, start_service
from tests.data import shared_dicom

BOUNDARY = "test-boundary-1234"
STOW_TYPE = multipart_content_type(BOUNDARY)
DICOM_PART = {"Content-Type": "application/dicom"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    dep = make_deployment(tmp_path_factory.mktemp("dicomweb-errors"))
    service = start_service(dep)
    yield service
    service.process.stop()
    for node in dep.nodes:
        node.stop()


@pytest.fixture(scope="module")
def http(svc: Service) -> Iterator[httpx.Client]:
    """An HTTP client that authenticates as the deployment's test service account."""
    with httpx.Client(headers=svc.auth_headers()) as client:
        yield client


@pytest.fixture(scope="module")
def mr() -> list[Path]:
    return sorted(shared_dicom("mr-deident-series").glob("*.dcm"))[10:14]


def _body(*parts: tuple[dict[str, str], bytes]) -> bytes:
    return b"".join(multipart_stream(list(parts), BOUNDARY))


def _stow(
    svc: Service, body: bytes, path: str = "/studies", ctype: str = STOW_TYPE
) -> httpx.Response:
    return httpx.post(
        svc.dicomweb + path,
        content=body,
        headers={**svc.auth_headers(), "Content-Type": ctype},
        timeout=60,
    )


def _count(svc: Service) -> int:
    r = httpx.get(f"{svc.dicomweb}/instances", params={"limit": "1000"}, headers=svc.auth_headers())
    assert r.status_code == 200
    return len(r.json())


def _sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _failures(r: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in r.json().get("00081198", {}).get("Value", [])]


def test_malformed_or_mistyped_stow_requests_store_nothing(
    svc: Service, http: httpx.Client, mr: list[Path]
) -> None:
    before = _count(svc)
    good = _body((DICOM_PART, mr[0].read_bytes()))
    assert _stow(svc, good, ctype="application/json").status_code == 415
    assert (
        _stow(
            svc, good, ctype='multipart/related; type="application/dicom+json"; boundary=x'
        ).status_code
        == 415
    )
    assert http.post(f"{svc.dicomweb}/studies", content=good).status_code == 415
    assert _stow(svc, good, ctype="multipart/related; type=application/dicom").status_code == 400
    truncated = good[: -len(f"\r\n--{BOUNDARY}--\r\n")] + b"\r\n--" + BOUNDARY.encode()
    r = _stow(svc, truncated)
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    assert _stow(svc, good, ctype=multipart_content_type("other-boundary")).status_code == 400
    assert _stow(svc, b"not multipart at all").status_code == 400
    assert _count(svc) == before  # the complete first part was not stored either
    assert (
        http.get(f"{svc.dicomweb}/instances", params={"SOPInstanceUID": _sop(mr[0])}).json() == []
    )


def test_stow_reports_each_part_with_a_failure_reason(svc: Service, mr: list[Path]) -> None:
    before = _count(svc)
    r = _stow(svc, _body((DICOM_PART, b"hello, not DICOM"), ({}, b"%PDF-1.4 ...")))
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/dicom+json"
    assert _failures(r) == [0xC000, 0xC000]
    assert "00081199" not in r.json()

    r = _stow(svc, _body((DICOM_PART, mr[1].read_bytes()), (DICOM_PART, b"garbage")))
    assert r.status_code == 202
    assert _failures(r) == [0xC000]
    [ref] = r.json()["00081199"]["Value"]
    assert ref["00081155"]["Value"] == [_sop(mr[1])]
    assert ref["00081190"]["Value"][0].endswith(f"/instances/{_sop(mr[1])}")
    assert "Warning" in r.headers and "not DICOM" in r.headers["Warning"]

    again = _stow(svc, _body((DICOM_PART, mr[1].read_bytes())))
    assert again.status_code == 200 and "already stored" in again.headers["Warning"]

    other_study = shared_dicom("transfer-syntaxes", "1.dcm").read_bytes()
    study = str(pydicom.dcmread(mr[2], stop_before_pixels=True).StudyInstanceUID)
    wrong = _stow(svc, _body((DICOM_PART, other_study)), path=f"/studies/{study}")
    assert wrong.status_code == 409 and _failures(wrong) == [0xA900]
    right = _stow(svc, _body((DICOM_PART, mr[2].read_bytes())), path=f"/studies/{study}")
    assert right.status_code == 200 and right.json()["00081190"]["Value"][0].endswith(study)

    changed = pydicom.dcmread(mr[1])
    changed.StudyDescription = "edited"
    buf = io.BytesIO()
    changed.save_as(buf)
    conflict = _stow(svc, _body((DICOM_PART, buf.getvalue())))
    assert conflict.status_code == 409 and _failures(conflict) == [0x0111]
    assert _count(svc) == before + 2


def test_one_request_with_two_versions_of_an_instance_keeps_the_first(
    svc: Service, http: httpx.Client, mr: list[Path]
) -> None:
    ds = pydicom.dcmread(mr[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    versions = []
    for description in ("first", "second"):
        ds.StudyDescription = description
        buf = io.BytesIO()
        ds.save_as(buf)
        versions.append(buf.getvalue())
    r = _stow(svc, _body(*((DICOM_PART, v) for v in versions)))
    assert r.status_code == 202, r.text
    assert _failures(r) == [0x0111]
    assert len(r.json()["00081199"]["Value"]) == 1
    found = http.get(f"{svc.dicomweb}/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
    assert len(found.json()) == 1


def test_unknown_uids_are_404(svc: Service, http: httpx.Client, mr: list[Path]) -> None:
    assert _stow(svc, _body((DICOM_PART, mr[3].read_bytes()))).status_code == 200
    ds = pydicom.dcmread(mr[3], stop_before_pixels=True)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    root = svc.dicomweb
    for path in (
        "/studies/1.2.3",
        "/studies/1.2.3/metadata",
        f"/studies/{study}/series/1.2.3",
        f"/studies/{study}/series/{series}/instances/1.2.3",
        f"/studies/{study}/series/{series}/instances/1.2.3/metadata",
        f"/studies/{study}/series/{series}/instances/1.2.3/frames/1",
        f"/studies/{study}/series/{series}/instances/1.2.3/rendered",
        f"/studies/{study}/series/1.2.3/thumbnail",
        f"/studies/1.2.3/series/{series}/instances/{sop}",
        f"/studies/{study}/series/{series}/instances/{sop}/frames/9",
        f"/studies/{study}/series/{series}/instances/{sop}/bulkdata/00291010",
    ):
        assert http.get(root + path).status_code == 404, path
    wado = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": "1.2.3"}
    assert http.get(f"{svc.url}/wado", params=wado).status_code == 404
    assert http.get(f"{root}/studies/1.2.3/series").json() == []


def test_bogus_accept_is_406_and_malformed_queries_are_400(
    svc: Service, http: httpx.Client, mr: list[Path]
) -> None:
    ds = pydicom.dcmread(mr[3], stop_before_pixels=True)
    instance = (
        f"{svc.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    for url, accept in (
        (instance, "application/xml"),
        (
            instance,
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90',
        ),
        (f"{instance}/metadata", "application/dicom+xml"),
        (f"{svc.dicomweb}/studies", "application/dicom+xml"),
        (f"{instance}/frames/1", "image/jls"),
        (f"{instance}/rendered", "image/gif"),
        (f"{instance}/thumbnail", "text/html"),
    ):
        assert http.get(url, headers={"Accept": accept}).status_code == 406, (url, accept)
    assert http.get(f"{instance}/rendered?accept=image/tiff").status_code == 406
    for query in (
        "StudyDate=2020-01",
        "Foo=bar",
        "limit=abc",
        "offset=-1",
        "StudyInstanceUID=not-a-uid",
        "PatientID=a&PatientID=b",
        "includefield=NoSuchKeyword",
    ):
        assert http.get(f"{svc.dicomweb}/studies?{query}").status_code == 400, query
    for bad in (
        "window=abc",
        "window=40,0",
        "viewport=0,10",
        "quality=101",
        "viewport=1,2,3,4,5,6",
    ):
        assert http.get(f"{instance}/rendered?{bad}").status_code == 400, bad
    assert http.get(f"{instance}/frames/0").status_code == 400
    assert http.get(f"{instance}/frames/a,b").status_code == 400
    wado = {"studyUID": ds.StudyInstanceUID, "seriesUID": ds.SeriesInstanceUID}
    wado["objectUID"] = ds.SOPInstanceUID
    assert http.get(f"{svc.url}/wado", params=wado).status_code == 400
    assert (
        http.get(
            f"{svc.url}/wado", params={**wado, "requestType": "WADO", "contentType": "image/gif"}
        ).status_code
        == 406
    )
    assert (
        http.get(
            f"{svc.url}/wado", params={**wado, "requestType": "WADO", "windowCenter": "1"}
        ).status_code
        == 400
    )
    assert http.get(f"{svc.url}/healthz").json() == {"status": "ok"}


def test_an_oversized_stow_request_is_413_before_any_byte_is_read(
    svc: Service, http: httpx.Client
) -> None:
    host, port = svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: {STOW_TYPE}\r\n".encode()
            + f"Authorization: Bearer {svc.token}\r\n".encode()
            + b"Content-Length: 99999999999\r\n\r\n--"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert http.get(f"{svc.url}/healthz").status_code == 200


AWKWARD = [
    ("transfer-syntaxes", "3.dcm"),  # explicit VR big endian
    ("pydicom-data", "OT-PAL-8-face.dcm"),  # no Part 10 header, palette colour
    ("pydicom-data", "liver_deflate.dcm"),  # deflated image frames: no decoder here
    ("pydicom-data", "liver_rle.dcm"),  # RLE that does not decode
    ("pydicom-data", "OBXXXX1A_rle_2frame.dcm"),
    ("pydicom-data", "parametric_map_float.dcm"),  # float pixel data
]


def test_awkward_stored_files_never_get_a_server_error(svc: Service, http: httpx.Client) -> None:
    for folder, name in AWKWARD:
        path = shared_dicom(folder, name)
        stored = _stow(svc, _body((DICOM_PART, path.read_bytes())))
        assert stored.status_code == 200, (name, stored.text)
        base = stored.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        meta = http.get(f"{base}/metadata")
        assert meta.status_code == 200, name
        [pixels] = [v for k, v in meta.json()[0].items() if k.startswith("7FE0")]
        bulk = pixels["BulkDataURI"]
        for url, accept in (
            (base, "*/*"),
            (base, 'multipart/related; type="application/dicom"'),
            (f"{base}/frames/1", None),
            (
                f"{base}/frames/1",
                "multipart/related; type=application/octet-stream; transfer-syntax=*",
            ),
            (bulk, None),
            (f"{base}/rendered", None),
            (f"{base}/thumbnail", None),
        ):
            r = http.get(url, headers={"Accept": accept} if accept else {}, timeout=60)
            assert r.status_code in (200, 406), (name, url, accept, r.status_code, r.text[:200])
    assert http.get(f"{svc.url}/healthz").status_code == 200
