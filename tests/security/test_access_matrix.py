"""Every role against every endpoint family, for own, others' and shared data, on a real
service: allowed combinations work, forbidden ones answer as missing (or 403 for actions a
role never has) and are audited as denied."""

from __future__ import annotations

import time

import httpx
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.conftest import TEST_ACCOUNT
from tests.security.conftest import OTHER_AE, World, ct_image, stow

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: who may read study A (stored at st-marys) and study B (stored at city-general)
READS = {
    TEST_ACCOUNT: (True, False),
    "pacs-b": (False, True),
    "doc-a": (True, False),
    "doc-b": (False, True),
    "expert": (True, False),  # A is shared with them
    "pat-a": (True, False),  # their own record
    "admin": (False, False),  # no clinical data without break-glass
}


def _paths(w: World, which: str) -> dict[str, str]:
    s = w.a if which == "a" else w.b
    assert s is not None
    inst = f"/dicom-web/studies/{s.study}/series/{s.series}/instances/{s.sop}"
    return {
        "wado-instance": inst,
        "wado-metadata": f"/dicom-web/studies/{s.study}/metadata",
        "wado-series": f"/dicom-web/studies/{s.study}/series/{s.series}",
        "rendered": f"{inst}/rendered",
        "thumbnail": f"/dicom-web/studies/{s.study}/thumbnail",
        "qido-series": f"/dicom-web/studies/{s.study}/series",
        "wado-uri": (
            f"/wado?requestType=WADO&studyUID={s.study}&seriesUID={s.series}"
            f"&objectUID={s.sop}&contentType=application/dicom"
        ),
        "findings": f"/api/studies/{s.study}/findings",
        "careteam": f"/api/patients/{s.patient_id}/careteam",
    }


def _ok(r: httpx.Response, path: str) -> bool:
    if r.status_code == 200:
        if path.endswith("/series") and "instances" not in path:
            return r.headers["content-type"].startswith("multipart") or bool(r.json())
        return True
    assert r.status_code in (404, 204), f"{path}: {r.status_code} {r.text[:200]}"
    return False


@pytest.mark.parametrize("who", sorted(READS))
def test_every_role_reads_exactly_what_it_may(world: World, who: str) -> None:
    for which, allowed in zip("ab", READS[who], strict=True):
        for name, path in _paths(world, which).items():
            bulk = name in ("wado-instance", "wado-series")
            r = world.get(who, path, headers={"Accept": ANY} if bulk else {})
            got = _ok(r, path)
            assert got == allowed, f"{who} {name} of study {which}: {r.status_code}"
    studies = world.get(who, "/dicom-web/studies").json()
    seen = {s["0020000D"]["Value"][0] for s in studies}
    assert world.a is not None and world.b is not None
    expected = {u for u, ok in zip((world.a.study, world.b.study), READS[who], strict=True) if ok}
    assert seen == expected
    patients = world.get(who, "/dicom-web/studies", params={"PatientID": "PAT-B"}).json()
    assert bool(patients) == READS[who][1]


def test_forbidden_reads_are_audited_as_denied_and_allowed_ones_as_reads(world: World) -> None:
    assert world.b is not None
    world.get("doc-a", f"/dicom-web/studies/{world.b.study}/metadata")
    world.get("doc-b", f"/dicom-web/studies/{world.b.study}/metadata")  # runs alone too
    events = world.audit()
    denied = [e for e in events if e["actor"] == "doc-a" and e["outcome"] == "denied"]
    assert any(e["study"] == world.b.study and e["patient_id"] == "PAT-B" for e in denied)
    reads = [e for e in events if e["actor"] == "doc-b" and e["outcome"] == "success"]
    assert any(e["study"] == world.b.study for e in reads)
    # a patient's own events name them only in the sealed part
    assert any(e["actor"] == "pat-a" and e["patient_id"] == "PAT-A" for e in events)


def test_anonymous_and_bad_tokens_get_401(world: World) -> None:
    assert world.a is not None
    for path in _paths(world, "a").values():
        assert world.get(None, path).status_code == 401
    r = httpx.get(
        f"{world.svc.url}/dicom-web/studies", headers={"Authorization": "Bearer msa_forged"}
    )
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{world.svc.url}/healthz").status_code == 200


def test_only_sites_and_doctors_store(world: World) -> None:
    for who, allowed in [("doc-b", True), ("expert", False), ("pat-a", False), ("admin", False)]:
        r = stow(world.svc.url, world.tokens[who], ct_image("PAT-NEW-" + who))
        assert (r.status_code == 200) == allowed, f"{who}: {r.status_code} {r.text[:200]}"
    # the storing doctor and their site joined the new patient's care team
    team = world.get("doc-b", "/api/patients/PAT-NEW-doc-b/careteam").json()
    assert [d["username"] for d in team["doctors"]] == ["doc-b"]
    assert [s["site"] for s in team["sites"]] == ["city-general"]
    refused = [e for e in world.audit() if e["action"] == "store" and e["outcome"] == "denied"]
    assert {e["actor"] for e in refused} >= {"expert", "admin"}


def test_only_a_doctor_of_the_patient_shares(world: World) -> None:
    assert world.a is not None
    body = {"study": world.a.study, "expert": "expert", "days": 1}
    for who, code in [("doc-b", 404), ("expert", 403), ("admin", 403), ("pat-a", 403)]:
        r = httpx.post(
            f"{world.svc.url}/api/shares",
            json=body,
            headers={"Authorization": f"Bearer {world.tokens[who]}"},
        )
        assert r.status_code == code, f"{who}: {r.status_code}"
    shares = world.get("expert", "/api/shares").json()
    assert shares[0]["study"] == world.a.study and shares[0]["seconds_left"] > 3600


def test_an_expired_share_stops_working(world: World) -> None:
    assert world.b is not None
    r = httpx.post(
        f"{world.svc.url}/api/shares",
        json={"study": world.b.study, "expert": "expert", "days": 2 / 86400},
        headers={"Authorization": f"Bearer {world.tokens['doc-b']}"},
    )
    assert r.status_code == 201
    path = f"/dicom-web/studies/{world.b.study}/metadata"
    assert world.get("expert", path).status_code == 200
    time.sleep(2.5)
    assert world.get("expert", path).status_code == 404


def test_break_glass_is_time_limited_and_flagged(world: World) -> None:
    assert world.b is not None
    path = f"/dicom-web/studies/{world.b.study}/metadata"
    assert world.get("admin", path).status_code == 404
    r = httpx.post(
        f"{world.svc.url}/api/break-glass",
        json={"patient_id": "PAT-B", "reason": "unconscious patient in the emergency room"},
        headers={"Authorization": f"Bearer {world.tokens['admin']}"},
    )
    assert r.status_code == 201, r.text
    assert world.get("admin", path).status_code == 200
    flagged = [e for e in world.audit() if e["flagged"]]
    assert any(e["action"] == "break-glass" and e["patient_id"] == "PAT-B" for e in flagged)
    assert any(e["action"] == "read" and e["study"] == world.b.study for e in flagged)
    time.sleep(3.5)  # break_glass_minutes=0.05 in this world
    assert world.get("admin", path).status_code == 404


def test_a_patient_reads_who_accessed_their_record(world: World) -> None:
    me = world.get("pat-a", "/api/audit/me").json()
    actors = {e["actor"] for e in me["events"]}
    assert {"doc-a", "expert", TEST_ACCOUNT} <= actors
    assert all(e["patient_id"] == "PAT-A" for e in me["events"] if e["patient_id"])
    assert world.get("doc-a", "/api/audit/me").status_code == 403


def _find(port: int, calling: str, patient: str = "") -> set[str]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSHARD")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientID = patient
    found = set()
    for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if status and status.Status in (0xFF00, 0xFF01) and ident is not None:
            found.add(str(ident.StudyInstanceUID))
    assoc.release()
    return found


def _get(port: int, calling: str, study: str) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    received: list[str] = []

    def on_store(event: object) -> int:
        received.append(str(event.dataset.SOPInstanceUID))  # type: ignore[attr-defined]
        return 0x0000

    from pynetdicom import evt

    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="MEDSHARD",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    for _status, _ident in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
        pass
    assoc.release()
    return len(received)


def test_dimse_find_and_get_see_only_what_the_calling_site_sent(world: World) -> None:
    assert world.a is not None and world.b is not None
    port = world.svc.dimse_port
    assert _find(port, "MEDTEST") >= {world.a.study}
    assert world.b.study not in _find(port, "MEDTEST")
    assert world.b.study in _find(port, OTHER_AE)
    assert world.a.study not in _find(port, OTHER_AE)
    assert _get(port, "MEDTEST", world.a.study) == 1
    assert _get(port, "MEDTEST", world.b.study) == 0
    assert _get(port, OTHER_AE, world.b.study) == 1


def test_dimse_rejects_unknown_calling_aes_at_association(world: World) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", world.svc.dimse_port, ae_title="MEDSHARD")
    assert assoc.is_rejected


def test_c_store_from_a_site_joins_the_care_team_and_is_attributed(world: World) -> None:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(ct_image("PAT-DIMSE")))
    ae = AE(ae_title=OTHER_AE)
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", world.svc.dimse_port, ae_title="MEDSHARD")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    team = world.get("doc-b", "/api/patients/PAT-DIMSE/careteam").json()
    assert [s["site"] for s in team["sites"]] == ["city-general"]
    assert world.get("doc-a", "/api/patients/PAT-DIMSE/careteam").status_code == 404


def test_a_doctor_of_the_patient_deletes_a_misfiled_study(world: World) -> None:
    from tests.security.conftest import stow as store

    r = store(world.svc.url, world.tokens["doc-a"], ct_image("PAT-MISFILED"))
    assert r.status_code == 200
    study = r.json()["00081190"]["Value"][0].rsplit("/", 1)[1]

    def delete(who: str) -> int:
        return httpx.delete(
            f"{world.svc.url}/api/studies/{study}",
            headers={"Authorization": f"Bearer {world.tokens[who]}"},
        ).status_code

    assert delete("doc-b") == 404  # not their patient: as if it did not exist
    assert delete("expert") == 404
    assert delete("doc-a") == 200
    assert world.get("doc-a", f"/dicom-web/studies/{study}/metadata").status_code == 404
    events = world.audit()
    assert any(e["action"] == "study-delete" and e["actor"] == "doc-a" for e in events)
