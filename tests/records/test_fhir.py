"""The FHIR facade with a FHIR client from PyPI (fhirpy) and fhir.resources models over
httpx: create, read, version, search with date prefixes and paging; every resource returned
validates; outsiders find nothing and their denials are audited."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.documentreference import DocumentReference
from fhirpy import SyncFHIRClient

from tests.records.conftest import call
from tests.records.samples import cda, pdf, png
from tests.security.conftest import World

FHIR = "application/fhir+json"


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate a resource (and, for a Bundle, every entry) with fhir.resources; each entry
    must be exactly what the models write (searches build them without the models)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    for entry in resource.get("entry", []):
        inner = entry["resource"]
        model = get_fhir_model_class(inner["resourceType"]).model_validate(inner)
        assert json.loads(model.model_dump_json()) == inner
        valid(inner)
    return resource


def client(world: World, who: str) -> SyncFHIRClient:
    return SyncFHIRClient(f"{world.svc.url}/fhir", authorization=f"Bearer {world.tokens[who]}")


def fhir(world: World, who: str | None, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Accept": FHIR, **kw.pop("headers", {})}
    return call(world, who, method, f"/fhir{path}", headers=headers, **kw)


def doc_ref(patient: str, data: bytes, ctype: str, date: str, title: str) -> dict[str, Any]:
    resource = DocumentReference.model_validate(
        {
            "resourceType": "DocumentReference",
            "status": "current",
            "subject": {"reference": f"Patient/{patient}"},
            "date": date,
            "description": title,
            "type": {"text": "clinical-note"},
            "author": [{"display": "Dr A"}],
            "content": [
                {"attachment": {"contentType": ctype, "data": base64.b64encode(data).decode()}}
            ],
        }
    )
    return dict(resource.model_dump(mode="json", exclude_none=True))


@pytest.fixture(scope="module")
def dated(rworld: World) -> dict[str, str]:
    """Three documents of PAT-A created through fhirpy, on known dates: date -> id."""
    fc = client(rworld, "doc-a")
    out = {}
    for date, data in (
        ("2026-01-15T09:00:00Z", cda(note="jan")),
        ("2026-02-10T23:30:00Z", pdf("feb")),
        ("2026-03-05T12:00:00+01:00", png()),
    ):
        ctype = {b"<": "application/hl7-cda+xml", b"%": "application/pdf"}.get(
            data[:1], "image/png"
        )
        created = fc.resource("DocumentReference", **doc_ref("PAT-A", data, ctype, date, date))
        created.save()
        assert created.id and created["meta"]["versionId"] == "1"
        valid(created.serialize())
        out[date] = created.id
    return out


def test_metadata_is_public_and_everything_else_needs_a_token(rworld: World) -> None:
    r = fhir(rworld, None, "GET", "/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    cap = valid(r.json())
    assert cap["fhirVersion"] == "4.0.1"
    kinds = {x["type"] for x in cap["rest"][0]["resource"]}
    assert {"Patient", "DocumentReference", "Binary", "ImagingStudy", "Observation"} <= kinds
    r = fhir(rworld, None, "GET", "/Patient")
    assert r.status_code == 401 and valid(r.json())["resourceType"] == "OperationOutcome"


def test_fhirpy_creates_reads_and_searches_with_date_prefixes(
    rworld: World, dated: dict[str, str]
) -> None:
    w, fc = rworld, client(rworld, "doc-a")
    jan, feb, mar = (dated[k] for k in sorted(dated))
    got = fc.reference("DocumentReference", feb).to_resource()
    valid(got.serialize())
    assert got["subject"]["reference"] == "Patient/PAT-A" and got["date"] == "2026-02-10T23:30:00Z"
    url = got["content"][0]["attachment"]["url"]
    raw = call(w, "doc-a", "GET", f"/fhir/{url}")
    assert raw.status_code == 200 and raw.content == pdf("feb")
    as_resource = valid(fhir(w, "doc-a", "GET", f"/Binary/{feb}").json())
    assert base64.b64decode(as_resource["data"]) == pdf("feb")

    def ids(**params: Any) -> set[str]:
        found = fc.resources("DocumentReference").search(patient="PAT-A", **params).fetch_all()
        for resource in found:
            valid(resource.serialize())
        return {r.id for r in found} & {jan, feb, mar}

    assert ids() == {jan, feb, mar}
    assert ids(date=["ge2026-02-01", "lt2026-03-01"]) == {feb}
    assert ids(date="2026-03") == {mar}
    assert ids(date="eq2026-01-15") == {jan}
    assert ids(date="gt2026-02-10") == {mar}  # the whole of 10 February is excluded
    assert ids(date="le2026-02-10") == {jan, feb}
    assert ids(date="lt2026-02-10T23:30:00Z") == {jan}
    assert ids(date="ne2026-02") == {jan, mar}

    # paging: _count=1 pages, linked; fhirpy follows the next links to the end
    r = fhir(w, "doc-a", "GET", "/DocumentReference", params={"patient": "PAT-A", "_count": 1})
    page = valid(r.json())
    total = page["total"]
    relations = {link["relation"]: link["url"] for link in page["link"]}
    assert len(page["entry"]) == 1 and total >= 3 and "_offset=1" in relations["next"]
    nxt = valid(
        httpx.get(
            relations["next"], headers={"Authorization": f"Bearer {w.tokens['doc-a']}"}
        ).json()
    )
    assert "previous" in {link["relation"] for link in nxt["link"]}
    assert nxt["entry"][0]["resource"]["id"] != page["entry"][0]["resource"]["id"]
    assert (
        len(fc.resources("DocumentReference").search(patient="PAT-A").limit(1).fetch_all()) == total
    )
    assert fc.resources("DocumentReference").search(subject="Patient/PAT-A").count() == total

    patient = fc.reference("Patient", "PAT-A").to_resource()
    valid(patient.serialize())
    assert patient["name"][0]["family"] == "Alpha"
    assert [p.id for p in fc.resources("Patient").search(_id="PAT-A").fetch()] == ["PAT-A"]

    studies = fc.resources("ImagingStudy").search(patient="PAT-A").fetch_all()
    assert w.a is not None and [s.id for s in studies] == [w.a.study]
    study = valid(studies[0].serialize())
    assert study["series"][0]["uid"] == w.a.series and study["numberOfInstances"] == 1
    endpoint = valid(fc.reference("Endpoint", "dicomweb").to_resource().serialize())
    assert endpoint["address"] == f"{w.svc.url}/dicom-web"
    assert fc.resources("ImagingStudy").search(patient="PAT-A", date="2026-01-01").count() == 1
    assert fc.resources("ImagingStudy").search(patient="PAT-A", date="gt2026-01-01").count() == 0


def test_versioned_updates_history_and_binary(rworld: World, dated: dict[str, str]) -> None:
    w = rworld
    uid = dated[sorted(dated)[0]]
    current = valid(fhir(w, "doc-a", "GET", f"/DocumentReference/{uid}").json())
    assert current["meta"]["versionId"] == "1"
    changed = {**current, "description": "January, amended"}
    changed["content"] = [
        {
            "attachment": {
                "contentType": "text/xml",
                "data": base64.b64encode(cda(note="amended")).decode(),
            }
        }
    ]
    put = {"headers": {"Content-Type": FHIR}, "json": changed}
    assert fhir(w, "doc-a", "PUT", f"/DocumentReference/{uid}", **put).status_code == 428
    r = fhir(
        w,
        "doc-a",
        "PUT",
        f"/DocumentReference/{uid}",
        headers={"Content-Type": FHIR, "If-Match": 'W/"1"'},
        json=changed,
    )
    assert r.status_code == 200, r.text
    assert valid(r.json())["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    r = fhir(
        w,
        "doc-a",
        "PUT",
        f"/DocumentReference/{uid}",
        headers={"Content-Type": FHIR, "If-Match": 'W/"1"'},
        json=changed,
    )
    assert r.status_code == 412 and valid(r.json())["issue"][0]["code"] == "conflict"
    history = valid(fhir(w, "doc-a", "GET", f"/DocumentReference/{uid}/_history").json())
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    old = valid(fhir(w, "doc-a", "GET", f"/DocumentReference/{uid}/_history/1").json())
    assert old["status"] == "superseded" and old["description"] == "2026-01-15T09:00:00Z"
    v1 = call(w, "doc-a", "GET", f"/fhir/Binary/{uid}/_history/1")
    assert v1.content == cda(note="jan")
    assert call(w, "doc-a", "GET", f"/fhir/Binary/{uid}").content == cda(note="amended")

    # Binary: raw bytes with X-Security-Context, then a version-aware update
    r = fhir(
        w,
        "doc-a",
        "POST",
        "/Binary",
        content=pdf("binary"),
        headers={"Content-Type": "application/pdf", "X-Security-Context": "Patient/PAT-A"},
    )
    assert r.status_code == 201, r.text
    binary = valid(r.json())
    assert r.headers["location"].endswith(f"/Binary/{binary['id']}/_history/1")
    r = fhir(
        w,
        "doc-a",
        "PUT",
        f"/Binary/{binary['id']}",
        content=pdf("binary v2"),
        headers={
            "Content-Type": "application/pdf",
            "X-Security-Context": "Patient/PAT-A",
            "If-Match": 'W/"1"',
        },
    )
    assert r.status_code == 200 and valid(r.json())["meta"]["versionId"] == "2"
    assert call(w, "doc-a", "GET", f"/fhir/Binary/{binary['id']}").content == pdf("binary v2")
    # a forged type inside a DocumentReference is caught like any other
    r = fhir(
        w,
        "doc-a",
        "POST",
        "/DocumentReference",
        headers={"Content-Type": FHIR},
        json=doc_ref("PAT-A", png(), "application/pdf", "2026-01-01T00:00:00Z", "forged"),
    )
    assert r.status_code == 415 and valid(r.json())["resourceType"] == "OperationOutcome"


def test_observations_and_who_may_see_what(rworld: World, dated: dict[str, str]) -> None:
    w = rworld
    points = [
        {"t": f"2026-04-01T10:{m:02d}:00Z", "signal": "hr", "value": 60 + m} for m in range(5)
    ]
    assert call(w, "doc-a", "POST", "/api/patients/PAT-A/series", json=points).status_code == 201
    fc = client(w, "doc-a")
    found = (
        fc.resources("Observation")
        .search(patient="PAT-A", code="http://loinc.org|8867-4", date="2026-04-01")
        .fetch_all()
    )
    assert len(found) == 1
    obs = valid(found[0].serialize())
    assert obs["valueSampledData"]["data"] == "60 61 62 63 64"
    assert obs["valueSampledData"]["period"] == 60000
    assert obs["effectivePeriod"]["start"] == "2026-04-01T10:00:00Z"
    assert valid(fhir(w, "doc-a", "GET", f"/Observation/{obs['id']}").json())["id"] == obs["id"]

    outsider = client(w, "doc-b")
    assert outsider.resources("DocumentReference").search(patient="PAT-A").count() == 0
    assert outsider.resources("Observation").search(patient="PAT-A").count() == 0
    assert outsider.resources("ImagingStudy").search(patient="PAT-A").count() == 0
    doc = dated[sorted(dated)[1]]
    for path in (
        f"/DocumentReference/{doc}",
        f"/Binary/{doc}",
        "/Patient/PAT-A",
        f"/Observation/{obs['id']}",
        f"/ImagingStudy/{w.a.study if w.a else ''}",
    ):
        r = fhir(w, "doc-b", "GET", path)
        assert r.status_code == 404, (path, r.status_code)
        assert valid(r.json())["issue"][0]["code"] == "not-found"
    r = fhir(
        w,
        "doc-b",
        "POST",
        "/DocumentReference",
        headers={"Content-Type": FHIR},
        json=doc_ref("PAT-A", pdf(), "application/pdf", "2026-01-01T00:00:00Z", "x"),
    )
    assert r.status_code == 404

    mine = client(w, "pat-a").resources("DocumentReference").search().fetch_all()
    assert mine and {d["subject"]["reference"] for d in mine} == {"Patient/PAT-A"}
    assert client(w, "pat-a").resources("Patient").search().count() == 1
    events = w.audit()
    denied = {e["action"] for e in events if e["actor"] == "doc-b" and e["outcome"] == "denied"}
    assert {"document-read", "fhir-read", "read"} <= denied
    searched = [e for e in events if e["action"] == "fhir-search" and e["actor"] == "doc-a"]
    assert any(e["patient_id"] == "PAT-A" for e in searched)


def _dated_ids(resources: list[Any], dated: dict[str, str]) -> list[str]:
    wanted = set(dated.values())
    return [r.id for r in resources if r.id in wanted]


def test_sort_by_date_and_last_updated(rworld: World, dated: dict[str, str]) -> None:
    """``_sort`` as R4 defines it: keys ascending, ``-`` descending, pages in that order."""
    fc = client(rworld, "doc-a")
    jan, feb, mar = (dated[k] for k in sorted(dated))
    search = fc.resources("DocumentReference").search(patient="PAT-A")
    assert _dated_ids(search.sort("date").fetch_all(), dated) == [jan, feb, mar]
    assert _dated_ids(search.sort("-date").fetch_all(), dated) == [mar, feb, jan]
    for key in ("_lastUpdated", "-_lastUpdated", "date", "-date"):
        found = search.sort(key).fetch_all()
        values = [r["meta"]["lastUpdated"] if "lastUpdated" in key else r["date"] for r in found]
        stamps = [datetime.fromisoformat(v.replace("Z", "+00:00")) for v in values]
        assert stamps == sorted(stamps, reverse=key.startswith("-")), key
        for resource in found:
            valid(resource.serialize())
    # pages of one follow the sort, with no resource twice
    paged = search.sort("date").limit(1).fetch_all()
    assert [r.id for r in paged] == [r.id for r in search.sort("date").fetch_all()]
    assert len({r.id for r in paged}) == len(paged)
    r = fhir(rworld, "doc-a", "GET", "/DocumentReference", params={"_sort": "-date"})
    assert "_sort=-date" in valid(r.json())["link"][0]["url"]  # the self link says it


def test_include_adds_the_patient_once_and_only_where_visible(
    rworld: World, dated: dict[str, str]
) -> None:
    w, fc = rworld, client(rworld, "doc-a")
    search = fc.resources("DocumentReference").search(patient="PAT-A")
    raw = search.include("DocumentReference", "subject").fetch_raw()
    modes = [(e.search.mode, e.resource.resourceType) for e in raw.entry]
    assert ("include", "Patient") in modes
    assert [m for m in modes if m[0] == "include"] == [("include", "Patient")]  # once
    assert {rt for mode, rt in modes if mode == "match"} == {"DocumentReference"}
    assert raw.total == len([m for m in modes if m[0] == "match"])  # includes not counted
    # fhirpy hands back the matches only; every resource of the Bundle validates
    assert {r.resourceType for r in search.include("DocumentReference", "subject").fetch()} == {
        "DocumentReference"
    }
    for value in ("DocumentReference:subject", "DocumentReference:patient:Patient"):
        r = fhir(
            w, "doc-a", "GET", "/DocumentReference", params={"patient": "PAT-A", "_include": value}
        )
        bundle = valid(r.json())
        included = [e for e in bundle["entry"] if e["search"]["mode"] == "include"]
        assert [e["resource"]["id"] for e in included] == ["PAT-A"]
        assert included[0]["fullUrl"].endswith("/fhir/Patient/PAT-A")
        assert included[0]["resource"] == valid(fhir(w, "doc-a", "GET", "/Patient/PAT-A").json())
    studies = valid(
        fhir(
            w,
            "doc-a",
            "GET",
            "/ImagingStudy",
            params={"patient": "PAT-A", "_include": "ImagingStudy:patient"},
        ).json()
    )
    assert [e["resource"]["resourceType"] for e in studies["entry"]] == ["ImagingStudy", "Patient"]
    # a search entry is the resource a read returns, field for field
    match = next(e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match")
    assert match == valid(fhir(w, "doc-a", "GET", f"/DocumentReference/{match['id']}").json())

    outsider = fhir(
        w,
        "doc-b",
        "GET",
        "/DocumentReference",
        params={"patient": "PAT-A", "_include": "DocumentReference:subject"},
    )
    assert valid(outsider.json())["total"] == 0 and valid(outsider.json())["entry"] == []
    events = w.audit()
    assert any(
        e["actor"] == "doc-a"
        and e["action"] == "fhir-search"
        and e["patient_id"] == "PAT-A"
        and "_include" in (e.get("detail") or "")
        for e in events
    )
    assert not any(e["actor"] == "doc-b" and "_include" in (e.get("detail") or "") for e in events)


def test_unsupported_parameters_lenient_by_default_strict_when_asked(
    rworld: World, dated: dict[str, str]
) -> None:
    w = rworld
    plain = valid(fhir(w, "doc-a", "GET", "/DocumentReference", params={"patient": "PAT-A"}).json())
    for extra in (
        {"author": "x"},
        {"_sort": "author"},
        {"_include": "DocumentReference:author"},
        {"date:missing": "true"},
        {"_total": "maybe"},
    ):
        params = {"patient": "PAT-A", **extra}
        for prefer in ({}, {"Prefer": "handling=lenient"}):
            r = fhir(w, "doc-a", "GET", "/DocumentReference", params=params, headers=prefer)
            assert r.status_code == 200, (extra, r.text)
            bundle = valid(r.json())
            assert bundle["total"] == plain["total"]
            matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
            assert len(matches) == len(plain["entry"])
            outcome = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
            key = next(iter(extra))
            assert outcome and outcome[0]["resourceType"] == "OperationOutcome"
            assert outcome[0]["issue"][0]["code"] == "not-supported"
            assert key in outcome[0]["issue"][0]["diagnostics"]
            assert key not in bundle["link"][0]["url"].split("?")[1]  # self: what was used
        strict = fhir(
            w,
            "doc-a",
            "GET",
            "/DocumentReference",
            params=params,
            headers={"Prefer": "return=representation, handling=strict"},
        )
        assert strict.status_code == 400, (extra, strict.text)
        issue = valid(strict.json())["issue"][0]
        assert issue["code"] == "not-supported" and next(iter(extra)) in issue["diagnostics"]
    # every supported parameter passes strict handling
    ok = fhir(
        w,
        "doc-a",
        "GET",
        "/DocumentReference",
        params={
            "patient": "PAT-A",
            "date": "ge2026",
            "_sort": "-date,_id",
            "_count": 2,
            "_total": "accurate",
            "_include": "DocumentReference:subject",
        },
        headers={"Prefer": "handling=strict"},
    )
    assert ok.status_code == 200, ok.text
    # _total=none: a full page leaves the total out (and still links the next page)
    r = valid(
        fhir(
            w,
            "doc-a",
            "GET",
            "/DocumentReference",
            params={"patient": "PAT-A", "_count": 1, "_total": "none"},
        ).json()
    )
    assert "total" not in r and "next" in {link["relation"] for link in r["link"]}
    cap = valid(fhir(w, None, "GET", "/metadata").json())
    docs = next(x for x in cap["rest"][0]["resource"] if x["type"] == "DocumentReference")
    assert "DocumentReference:subject" in docs["searchInclude"]
