"""DICOMweb against a real `medshard serve` over real storage nodes, driven by real clients.

dicomweb-client (the PyPI library viewers and pipelines use) stores, searches and retrieves a
study; httpx checks what dicomweb-client re-parses away: the raw bytes of each multipart part,
media types, BulkDataURIs, frames, renderings, thumbnails, WADO-URI and CORS headers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from medshard.api.dicomweb.multipart import boundary_of, iter_parts_sync
from tests.conftest import Service, make_deployment, start_service
from tests.data import shared_dicom

ORIGIN = "http://viewer.example"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    dep = make_deployment(tmp_path_factory.mktemp("dicomweb"))
    service = start_service(dep, cors_origins=[ORIGIN])
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
def mr_files() -> list[Path]:
    return sorted(shared_dicom("mr-deident-series").glob("*.dcm"))[:4]


@pytest.fixture(scope="module")
def client(svc: Service) -> DICOMwebClient:
    return DICOMwebClient(url=svc.dicomweb, headers=svc.auth_headers())


@pytest.fixture(scope="module")
def stored(client: DICOMwebClient, mr_files: list[Path]) -> dict[str, bytes]:
    """The MR files stored through dicomweb-client, by SOP Instance UID."""
    datasets = [pydicom.dcmread(p) for p in mr_files]
    result = client.store_instances(datasets=datasets)
    assert len(result.ReferencedSOPSequence) == len(mr_files)
    assert "FailedSOPSequence" not in result
    by_uid = {}
    for path, ds in zip(mr_files, datasets, strict=True):
        by_uid[ds.SOPInstanceUID] = path.read_bytes()
    return by_uid


def _parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.status_code == 200, response.text
    boundary = boundary_of(response.headers["content-type"])
    return [(p.headers, p.read()) for p in iter_parts_sync([response.content], boundary)]


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def test_dicomweb_client_stores_searches_and_retrieves_a_study(
    client: DICOMwebClient, http: httpx.Client, stored: dict[str, bytes], mr_files: list[Path]
) -> None:
    study, series, sop = _uids(mr_files[0])
    studies = client.search_for_studies(search_filters={"PatientID": "FRUIT"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study]
    hit = studies[0]
    assert hit["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "FRUIT"}]}
    assert hit["00201208"]["Value"] == [len(mr_files)]
    assert hit["00080061"]["Value"] == ["MR"]
    assert hit["00081190"]["Value"][0].endswith(f"/dicom-web/studies/{study}")
    assert client.search_for_studies(search_filters={"PatientName": "fru*"})
    assert client.search_for_studies(search_filters={"StudyDate": "20240101-20241231"})
    assert client.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    assert client.search_for_studies(search_filters={"ModalitiesInStudy": "CT"}) == []

    series_hits = client.search_for_series(study_instance_uid=study)
    assert [s["0020000E"]["Value"][0] for s in series_hits] == [series]
    assert series_hits[0]["00080060"]["Value"] == ["MR"]
    everywhere = client.search_for_series(search_filters={"Modality": "MR"})
    assert everywhere[0]["0020000D"]["Value"] == [study]  # study attributes come along

    instances = client.search_for_instances(
        study_instance_uid=study, series_instance_uid=series, fields=["Rows"]
    )
    assert {i["00080018"]["Value"][0] for i in instances} == set(stored)
    assert instances[0]["00280010"] == {"vr": "US", "Value": [256]}
    paged = client.search_for_instances(study_instance_uid=study, limit=2, offset=1)
    assert len(paged) == 2
    asked = http.get(f"{client.base_url}/studies", params={"includefield": "InstitutionName"})
    assert asked.status_code == 200 and "InstitutionName" in asked.headers["Warning"]
    one = client.search_for_instances(search_filters={"SOPInstanceUID": sop})
    assert len(one) == 1 and one[0]["0020000E"]["Value"] == [series]

    retrieved = client.retrieve_study(study)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(stored)
    instance = client.retrieve_instance(study, series, sop)
    assert instance.SOPInstanceUID == sop and instance.pixel_array.shape == (256, 256)


def test_retrieved_parts_are_byte_identical_to_what_was_stored(
    svc: Service, http: httpx.Client, stored: dict[str, bytes], mr_files: list[Path]
) -> None:
    study, series, sop = _uids(mr_files[0])
    parts = _parts(http.get(f"{svc.dicomweb}/studies/{study}", headers={"Accept": ANY_SYNTAX}))
    assert len(parts) == len(stored)
    for headers, body in parts:
        assert headers["content-type"].startswith("application/dicom; transfer-syntax=")
        assert body in stored.values()
    url = f"{svc.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    for accept in (ANY_SYNTAX, 'multipart/related; type="application/dicom"', None):
        headers = {"Accept": accept} if accept else {}
        [(_h, body)] = _parts(http.get(url, headers=headers))
        assert body == stored[sop]  # stored as Explicit VR Little Endian, the default syntax
    series_parts = _parts(
        http.get(f"{svc.dicomweb}/studies/{study}/series/{series}", headers={"Accept": ANY_SYNTAX})
    )
    assert sorted(b for _h, b in series_parts) == sorted(stored.values())
    wado_uri = http.get(
        f"{svc.url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "application/dicom",
        },
    )
    assert wado_uri.headers["content-type"] == "application/dicom"
    assert wado_uri.content == stored[sop]


def test_metadata_bulkdata_frames_and_renderings(
    svc: Service, http: httpx.Client, stored: dict[str, bytes], mr_files: list[Path]
) -> None:
    study, series, sop = _uids(mr_files[0])
    base = f"{svc.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    meta = http.get(f"{base}/metadata")
    assert meta.headers["content-type"] == "application/dicom+json"
    [item] = meta.json()
    assert item["00080018"]["Value"] == [sop]
    uri = item["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{base}/bulkdata/") and "InlineBinary" not in item["7FE00010"]
    original = pydicom.dcmread(io.BytesIO(stored[sop]))
    [(headers, pixels)] = _parts(http.get(uri))
    assert headers["content-type"].startswith("application/octet-stream")
    assert pixels == original.PixelData
    study_meta = http.get(f"{svc.dicomweb}/studies/{study}/metadata").json()
    assert len(study_meta) == len(stored)
    assert all("BulkDataURI" in m["7FE00010"] for m in study_meta)

    [(headers, frame)] = _parts(http.get(f"{base}/frames/1"))
    assert headers["content-type"].startswith("application/octet-stream")
    assert frame == original.PixelData[: 256 * 256 * 2]
    assert http.get(f"{base}/frames/2").status_code == 404

    for accept, kind in (("image/png", "PNG"), ("image/jpeg", "JPEG")):
        r = http.get(f"{base}/rendered", headers={"Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"] == accept
        image = Image.open(io.BytesIO(r.content))
        assert image.format == kind and image.size == (256, 256)
        assert image.getextrema() != (0, 0)  # not a blank image
    windowed = http.get(f"{base}/frames/1/rendered?accept=image/png&window=300,600&viewport=64,64")
    assert Image.open(io.BytesIO(windowed.content)).size == (64, 64)
    assert windowed.content != http.get(f"{base}/rendered?accept=image/png&viewport=64,64").content

    thumb = http.get(f"{base}/thumbnail")
    assert thumb.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 128
    assert http.get(f"{base}/thumbnail").content == thumb.content  # persisted, served again
    for path in (f"/studies/{study}/series/{series}/thumbnail", f"/studies/{study}/thumbnail"):
        r = http.get(svc.dicomweb + path, headers={"Accept": "image/jpeg"})
        assert r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).format == "JPEG"

    wado = http.get(
        f"{svc.dicomweb}/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "image/png",
            "windowCenter": "300",
            "windowWidth": "600",
            "rows": "100",
        },
    )
    assert wado.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(wado.content)).size == (100, 100)
    default = http.get(wado.url.copy_remove_param("contentType"))
    assert default.headers["content-type"] == "image/jpeg"


def test_thumbnail_is_persisted_as_a_thumbnail_object(
    svc: Service, http: httpx.Client, mr_files: list[Path]
) -> None:
    study, series, sop = _uids(mr_files[1])
    http.get(f"{svc.dicomweb}/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    import sqlite3

    db = sqlite3.connect(svc.deployment.home / "catalog.db")
    kind, ctype = db.execute(
        "SELECT o.kind, o.content_type FROM instances i JOIN objects o"
        " ON o.id = i.thumbnail_object_pk WHERE i.sop_instance_uid = ?",
        (sop,),
    ).fetchone()
    db.close()
    assert (kind, ctype) == ("thumbnail", "image/png")


def test_compressed_instances_keep_their_syntax_or_are_transcoded(
    svc: Service, http: httpx.Client
) -> None:
    jls = shared_dicom("transfer-syntaxes", "7.dcm")
    data = jls.read_bytes()
    study, series, sop = _uids(jls)
    client = DICOMwebClient(url=svc.dicomweb, headers=svc.auth_headers())
    client.store_instances(datasets=[pydicom.dcmread(jls)], study_instance_uid=study)
    base = f"{svc.dicomweb}/studies/{study}/series/{series}/instances/{sop}"
    [(headers, body)] = _parts(http.get(base, headers={"Accept": ANY_SYNTAX}))
    assert body == data and headers["content-type"].endswith(
        "transfer-syntax=1.2.840.10008.1.2.4.80"
    )
    [(headers, body)] = _parts(
        http.get(base, headers={"Accept": 'multipart/related; type="application/dicom"'})
    )
    assert "1.2.840.10008.1.2.1" in headers["content-type"]
    explicit = pydicom.dcmread(io.BytesIO(body))
    original = pydicom.dcmread(jls)
    assert explicit.SOPInstanceUID == sop
    assert (explicit.pixel_array == original.pixel_array).all()
    lossy = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert http.get(base, headers={"Accept": lossy}).status_code == 406

    [(headers, frame)] = _parts(http.get(f"{base}/frames/1", headers={"Accept": "image/jls"}))
    assert headers["content-type"] == "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
    assert frame[:2] == b"\xff\xd8"  # a JPEG-LS bitstream
    [(headers, raw)] = _parts(http.get(f"{base}/frames/1"))
    assert headers["content-type"].startswith("application/octet-stream")
    assert raw == original.pixel_array.astype("<u2").tobytes()
    ohif = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    [(headers, same)] = _parts(http.get(f"{base}/frames/1", headers={"Accept": ohif}))
    assert same == frame and "1.2.840.10008.1.2.4.80" in headers["content-type"]
    assert http.get(f"{base}/frames/1", headers={"Accept": "image/jp2"}).status_code == 406


def test_cors_headers_for_a_configured_origin(svc: Service, http: httpx.Client) -> None:
    r = http.get(f"{svc.dicomweb}/studies", headers={"Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    # A browser's preflight carries no credentials: it must succeed without a token.
    preflight = httpx.options(
        f"{svc.dicomweb}/studies",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 200
    assert "POST" in preflight.headers["access-control-allow-methods"]
    other = http.get(f"{svc.dicomweb}/studies", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    assert json.loads(r.content) == json.loads(other.content)
