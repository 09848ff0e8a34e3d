"""Documents over REST on a real service: byte-identical round trips, versions, sniffing,
and who may see them (with the denials in the audit log)."""

from __future__ import annotations

import hashlib

from tests.records.conftest import call
from tests.records.samples import cda, fhir_bundle, pdf, png
from tests.security.conftest import World

DOCS = "/api/patients/PAT-A/documents"


def _post_raw(world: World, who: str, data: bytes, ctype: str, **params: str) -> dict:
    r = call(world, who, "POST", DOCS, content=data, headers={"Content-Type": ctype}, params=params)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_pdf_cda_and_fhir_bundle_round_trip_with_history(rworld: World) -> None:
    w = rworld
    the_pdf, the_cda, the_bundle = pdf(), cda(), fhir_bundle()
    doc_pdf = _post_raw(
        w,
        "doc-a",
        the_pdf,
        "application/pdf",
        type="discharge-summary",
        title="Discharge",
        author="Dr A",
        date="2026-03-01T10:00:00+02:00",
    )
    assert doc_pdf["content_type"] == "application/pdf" and doc_pdf["version"] == 1
    assert doc_pdf["date"] == "2026-03-01T08:00:00+00:00" and doc_pdf["source_site"] == "st-marys"
    assert doc_pdf["sha256"] == hashlib.sha256(the_pdf).hexdigest()
    r = call(
        w,
        "test-pacs",
        "POST",
        DOCS,
        files={"file": ("note.xml", the_cda, "text/xml")},
        data={"type": "consult-note", "title": "Consultation"},
    )
    assert r.status_code == 201, r.text
    doc_cda = r.json()
    assert (
        doc_cda["content_type"] == "application/hl7-cda+xml" and doc_cda["filename"] == "note.xml"
    )
    doc_fhir = _post_raw(w, "doc-a", the_bundle, "application/json", type="lab")
    assert doc_fhir["content_type"] == "application/fhir+json"

    for doc, data in ((doc_pdf, the_pdf), (doc_cda, the_cda), (doc_fhir, the_bundle)):
        r = call(w, "doc-a", "GET", f"{DOCS}/{doc['id']}/content")
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"].startswith(doc["content_type"])

    # an update must name the version it replaces: none, or a stale one, is a 409
    new_pdf = pdf("Discharge summary, corrected")
    path = f"{DOCS}/{doc_pdf['id']}"
    r = call(w, "doc-a", "PUT", path, content=new_pdf, headers={"Content-Type": "application/pdf"})
    assert r.status_code == 409, r.text
    r = call(
        w,
        "doc-a",
        "PUT",
        path,
        content=new_pdf,
        headers={"Content-Type": "application/pdf", "If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["title"] == "Discharge"  # metadata carried over
    r = call(
        w,
        "doc-a",
        "PUT",
        path,
        content=pdf("lost update"),
        headers={"Content-Type": "application/pdf", "If-Match": '"1"'},
    )
    assert r.status_code == 409 and "latest is 2" in r.text
    r = call(w, "doc-a", "PUT", path, params={"replaces": "2", "title": "Discharge (final)"})
    assert r.status_code == 200 and r.json()["version"] == 3  # metadata only: same bytes

    assert call(w, "doc-a", "GET", f"{path}/versions/1").content == the_pdf
    assert call(w, "doc-a", "GET", f"{path}/versions/2").content == new_pdf
    assert call(w, "doc-a", "GET", f"{path}/content").content == new_pdf
    assert call(w, "doc-a", "GET", f"{path}/versions/9").status_code == 404
    meta = call(w, "doc-a", "GET", path).json()
    assert [v["version"] for v in meta["versions"]] == [3, 2, 1]
    assert meta["title"] == "Discharge (final)" and meta["versions"][2]["title"] == "Discharge"
    listed = call(w, "doc-a", "GET", DOCS).json()["documents"]
    assert {d["id"] for d in listed} >= {doc_pdf["id"], doc_cda["id"], doc_fhir["id"]}


def test_a_forged_content_type_is_refused_and_nothing_is_stored(rworld: World) -> None:
    w = rworld
    before = len(call(w, "doc-a", "GET", DOCS).json()["documents"])
    for data, claim in (
        (pdf(), "image/png"),
        (png(), "application/pdf"),
        (b"MZ\x90\x00binary", "application/pdf"),
        (b"not json", "application/json"),
        (cda(), "application/fhir+json"),
    ):
        r = call(w, "doc-a", "POST", DOCS, content=data, headers={"Content-Type": claim})
        assert r.status_code == 415, (claim, r.text)
        assert "does not match" in r.text or "not a document" in r.text
    r = call(w, "doc-a", "POST", DOCS, files={"file": ("x.pdf", png(), "application/pdf")})
    assert r.status_code == 415
    assert len(call(w, "doc-a", "GET", DOCS).json()["documents"]) == before
    # the content decides: an undeclared PNG is stored as a PNG
    r = call(
        w,
        "doc-a",
        "POST",
        DOCS,
        content=png(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201 and r.json()["content_type"] == "image/png"


def test_outsiders_get_404_and_the_denial_is_audited(rworld: World) -> None:
    w = rworld
    doc = _post_raw(w, "doc-a", pdf("private"), "application/pdf", title="Private")
    path = f"{DOCS}/{doc['id']}"
    for who in ("doc-b", "expert", "admin", "pacs-b"):
        for method, sub in (
            ("GET", ""),
            ("GET", "/content"),
            ("GET", "/versions/1"),
            ("GET", "/versions"),
        ):
            r = call(w, who, method, path + sub)
            assert r.status_code == 404, (who, sub, r.status_code)
        assert call(w, who, "GET", DOCS).status_code == 404, who
    r = call(
        w,
        "doc-b",
        "PUT",
        path,
        content=pdf("x"),
        headers={"Content-Type": "application/pdf", "If-Match": '"1"'},
    )
    assert r.status_code == 404
    r = call(
        w, "doc-b", "POST", DOCS, content=pdf("x"), headers={"Content-Type": "application/pdf"}
    )
    assert r.status_code == 404
    # the same 404 as a document that does not exist
    assert call(w, "doc-b", "GET", f"{DOCS}/{'0' * 32}").status_code == 404
    # the patient sees their own record, and nobody else's
    r = call(w, "pat-a", "GET", path + "/content")
    assert r.status_code == 200 and r.content == pdf("private")
    assert call(w, "pat-a", "GET", "/api/patients/PAT-B/documents").status_code == 404
    assert (
        call(
            w, "pat-a", "POST", DOCS, content=pdf(), headers={"Content-Type": "application/pdf"}
        ).status_code
        == 403
    )
    events = w.audit()
    denied = [e for e in events if e["outcome"] == "denied" and e["actor"] == "doc-b"]
    assert {e["action"] for e in denied} >= {"document-read", "document-list", "document-update"}
    assert all(e["patient_id"] == "PAT-A" for e in denied if e["action"] == "document-read")
    reads = [e for e in events if e["action"] == "document-read" and e["outcome"] == "success"]
    assert any(e["role"] == "patient" and e["patient_id"] == "PAT-A" for e in reads)
    stored = [e for e in events if e["action"] == "document-store" and e["outcome"] == "success"]
    assert stored and all(e["patient_id"] == "PAT-A" for e in stored)


def test_concurrent_updates_of_one_version_let_exactly_one_win(rworld: World) -> None:
    from concurrent.futures import ThreadPoolExecutor

    w = rworld
    doc = _post_raw(w, "doc-a", pdf("base"), "application/pdf", title="Race")
    path = f"{DOCS}/{doc['id']}"

    def put(i: int) -> int:
        headers = {"Content-Type": "application/pdf", "If-Match": '"1"'}
        return call(w, "doc-a", "PUT", path, content=pdf(f"edit {i}"), headers=headers).status_code

    with ThreadPoolExecutor(6) as pool:
        codes = sorted(pool.map(put, range(6)))
    assert codes == [200] + [409] * 5
    history = call(w, "doc-a", "GET", f"{path}/versions").json()["versions"]
    assert [v["version"] for v in history] == [2, 1]
    winner = call(w, "doc-a", "GET", f"{path}/content").content
    assert winner in {pdf(f"edit {i}") for i in range(6)}
