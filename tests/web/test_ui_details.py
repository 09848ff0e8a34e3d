"""The browser UI's details beyond the main flows: the admin's cluster page shows free space,
the ``full`` flag, the repair, migration and compaction queues, the metadata backup and a map
of the nodes' network coordinates; the doctor's worklist has an AI column filled by one
batched request; a patient's timeline holds their documents beside their studies, each
downloadable; and the model card is one click away from an AI finding in the viewer.

One deployment for the module (``web_world``) with one analysed chest X-ray (``chest``); each
test opens its own browser context.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from medshard.analysis.package import models_dir
from tests.records.samples import pdf
from tests.security.conftest import stow
from tests.web.conftest import PHONE, WebWorld, login, screenshot

pytestmark = pytest.mark.timeout(180)

Page = Any


@pytest.fixture(scope="module")
def chest(web_world: WebWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A chest X-ray stored by doc-a over STOW-RS, once the service's worker has analysed it:
    the study's findings as GET /api/studies/{study}/findings returns them."""
    from medshard.analysis.dataset import sample_npz_path
    from medshard.analysis.synth import chest_xray_dicoms

    out = tmp_path_factory.mktemp("chest")
    path = chest_xray_dicoms(sample_npz_path(), count=1, indices=[7], out_dir=out)[0]
    w = web_world.world
    r = stow(web_world.url, w.tokens["doc-a"], path.read_bytes())
    assert r.status_code == 200, r.text
    study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    deadline = time.monotonic() + 60
    while True:  # the service's analysis worker runs the model in the background
        found = w.get("doc-a", f"/api/studies/{study}/findings").json()
        if found["findings"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found["findings"], f"no AI finding after 60 s: {found['jobs']}"
    return dict(found)


# --------------------------------------------------------------------------- admin


def test_admin_cluster_shows_free_space_queues_backup_and_the_coordinate_map(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    w = web_world.world
    # the service backs its metadata up soon after it starts: wait for that first backup, so
    # the status read here and the one the page shows agree (the next is minutes away)
    deadline = time.monotonic() + 90
    status = w.admin("/api/status")
    while not status["backup"]["last_backup_at"] and time.monotonic() < deadline:
        time.sleep(1)
        status = w.admin("/api/status")
    full_node = status["nodes"][0]["name"]
    page = new_page()

    # the status the page gets is the service's own, with one node marked full (as a node
    # past its free-space reserve reports itself) and some space reclaimed by compaction, so
    # the flag's and the byte total's rendering are checked too
    assert status["background"] is not None  # the service runs its health monitor
    reclaimed = 3 * 1024 * 1024

    def mark_full(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        for node in body["nodes"]:
            node["full"] = node["name"] == full_node
        body["background"]["queues"]["compaction"] = 2
        body["background"]["totals"]["bytes_reclaimed"] = reclaimed
        route.fulfill(response=response, body=json.dumps(body))

    page.route("**/api/status", mark_full)
    login(page, web_world.url, "admin")
    page.get_by_test_id("node").first.wait_for()

    nodes = {n.get_attribute("data-node"): n for n in page.get_by_test_id("node").all()}
    assert set(nodes) == {n["name"] for n in status["nodes"]}
    for node in status["nodes"]:
        card = nodes[node["name"]]
        free = card.get_by_test_id("node-free").inner_text()
        assert "free" in free and "reliability" in free, free
        assert (card.get_by_test_id("node-full").count() == 1) == (node["name"] == full_node)
    assert nodes[full_node].get_by_test_id("node-full").inner_text() == "full"

    queues = page.get_by_test_id("queues")
    assert "Repair, migration and compaction queues" in queues.inner_text()
    shown = {q.get_attribute("data-queue"): q for q in queues.get_by_test_id("queue").all()}
    assert {"under_replicated", "bad_replicas", "drain_copies", "compaction"} <= set(shown)
    assert shown["under_replicated"].get_attribute("data-depth") == str(
        w.admin("/api/status")["under_replicated"]
    )
    compaction = shown["compaction"]
    assert compaction.get_attribute("data-depth") == "2"
    assert compaction.inner_text() == "2 volumes waiting for compaction (space reclaim)"
    queues.get_by_text("Background work since the service started").click()
    totals = queues.get_by_test_id("background-totals")
    text = totals.inner_text()
    assert "repair runs" in text and "patients migrated" in text, text
    assert "volumes compacted" in text and "space reclaimed by compaction" in text, text
    space = totals.locator('dd[data-total="bytes_reclaimed"]')
    assert space.inner_text() == "3.0 MB"
    assert space.get_attribute("data-value") == str(reclaimed)

    backup = page.get_by_test_id("backup")
    assert "Metadata backup" in backup.inner_text()
    last = status["backup"]["last_backup_at"]
    if last:
        copies = backup.get_by_test_id("backup-copies").inner_text()
        assert copies.startswith(f"{status['backup']['copies']} of "), copies
    else:
        assert "none yet" in backup.inner_text()

    # the map: one point per node and one for the metadata service, each titled with its
    # coordinate; the same figures as a table
    cmap = page.get_by_test_id("coord-map")
    cmap.wait_for()
    points = {p.get_attribute("data-node"): p for p in cmap.get_by_test_id("coord-node").all()}
    assert set(points) == {n["name"] for n in status["nodes"]}
    assert cmap.get_by_test_id("coord-service").count() == 1
    for node in status["nodes"]:
        title = points[node["name"]].locator("title").text_content() or ""
        assert node["site"] in title and "height" in title, title
    assert "Network coordinates of" in (cmap.locator("title").first.text_content() or "")
    page.get_by_text("Coordinates as a table").click()
    assert page.get_by_test_id("coord-table").locator("tbody tr").count() == len(status["nodes"])
    screenshot(page, "admin-cluster-details-laptop")
    assert not page.errors, page.errors


def test_admin_cluster_details_fit_a_phone(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    login(page, web_world.url, "admin")
    page.get_by_test_id("coord-map").wait_for()
    page.get_by_test_id("backup").wait_for()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, f"the cluster page scrolls sideways: {width}px"
    screenshot(page, "admin-cluster-details-phone")


# --------------------------------------------------------------------------- worklist AI


def test_worklist_ai_column_shows_findings_from_one_batched_request(
    web_world: WebWorld, new_page: Callable[..., Page], chest: dict[str, Any]
) -> None:
    finding = chest["findings"][0]
    study = finding["study_instance_uid"]
    page = new_page()
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.method, r.url)))
    login(page, web_world.url, "doc-a")
    page.get_by_test_id("result-count").wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=ai-cell]')]"
        ".every(c => c.dataset.ai && c.dataset.ai !== 'error')"
    )
    row = page.locator(f"[data-testid=study-row][data-study='{study}']")
    cell = row.get_by_test_id("ai-cell")
    assert cell.get_attribute("data-ai") == "done"
    assert cell.get_by_test_id("ai-label").inner_text() == finding["label"]
    assert cell.get_by_test_id("ai-probability").inner_text() == (
        f"{finding['probability'] * 100:.0f}%"
    )
    # the CT studies were never analysed (not a chest radiograph): a dash, not an error
    ct = page.locator(f"[data-testid=study-row][data-study='{web_world.ct_study}']")
    assert ct.get_by_test_id("ai-cell").get_attribute("data-ai") == "none"
    assert page.get_by_role("columnheader", name="AI").is_visible()
    rows = page.get_by_test_id("study-row").count()
    assert rows >= 3
    # one request for the whole table, not one per row
    finding_calls = [(m, u) for m, u in requests if "findings" in u]
    assert finding_calls == [("POST", f"{web_world.url}/api/findings/summary")], finding_calls
    screenshot(page, "worklist-ai-laptop")

    # the server answers only for studies the caller may see, and audits what it showed
    w = web_world.world
    other = httpx.post(
        f"{web_world.url}/api/findings/summary",
        json={"studies": [study]},
        headers={"Authorization": f"Bearer {w.tokens['doc-b']}"},
    )
    assert other.status_code == 200 and other.json() == {"studies": {}}
    bad = httpx.post(
        f"{web_world.url}/api/findings/summary",
        json={"studies": ["../etc/passwd"]},
        headers={"Authorization": f"Bearer {w.tokens['doc-a']}"},
    )
    assert bad.status_code == 400
    anonymous = httpx.post(f"{web_world.url}/api/findings/summary", json={"studies": [study]})
    assert anonymous.status_code == 401
    events = [
        e for e in w.audit() if e["action"] == "findings" and e["detail"] == "findings summary"
    ]
    assert any(e["actor"] == "doc-a" and e["patient_id"] == finding["patient_id"] for e in events)
    assert not page.errors, page.errors


# --------------------------------------------------------------------------- timeline documents


def test_patient_timeline_shows_documents_beside_studies_with_a_download(
    web_world: WebWorld, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    w = web_world.world
    data = pdf("Discharge summary for the timeline")
    r = httpx.post(
        f"{web_world.url}/api/patients/PAT-A/documents",
        content=data,
        params={
            "type": "discharge-summary",
            "title": "Discharge letter",
            "author": "Dr A",
            "date": "2025-06-01T10:00:00+00:00",
            "filename": "discharge.pdf",
        },
        headers={"Content-Type": "application/pdf", "Authorization": f"Bearer {w.tokens['doc-a']}"},
    )
    assert r.status_code == 201, r.text
    doc = r.json()

    page = new_page()
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/#/patients/PAT-A")
    item = page.locator(f"[data-testid=timeline-document][data-document='{doc['id']}']")
    item.wait_for()
    text = item.inner_text()
    assert "2025-06-01" in text and "Discharge letter" in text and "PDF" in text, text
    # newest first, studies and documents interleaved by date: the 2026 single CT image, the
    # 2025-06 letter, the 2025-03 CT series
    order = page.locator("[data-testid=timeline-study], [data-testid=timeline-document]")
    ids = [e.get_attribute("data-study") or e.get_attribute("data-document") for e in order.all()]
    assert web_world.world.a is not None
    assert (
        ids.index(web_world.world.a.study) < ids.index(doc["id"]) < ids.index(web_world.ct_study)
    ), ids
    with page.expect_download() as info:
        item.get_by_role("button", name="Download Discharge letter").click()
    download = info.value
    assert download.suggested_filename == "discharge.pdf"
    saved = tmp_path / "got.pdf"
    download.save_as(saved)
    assert saved.read_bytes() == data
    screenshot(page, "patient-timeline-documents-laptop")

    # the patient sees the letter on their own page too; another doctor's patient stays hidden
    patient = new_page()
    login(patient, web_world.url, "pat-a")
    patient.locator(f"[data-testid=timeline-document][data-document='{doc['id']}']").wait_for()
    outsider = new_page()
    login(outsider, web_world.url, "doc-b")
    outsider.goto(f"{web_world.url}/#/patients/PAT-A")
    outsider.get_by_text("No study of this patient is visible to you").wait_for()
    assert outsider.get_by_test_id("timeline-document").count() == 0
    assert not page.errors and not patient.errors, page.errors + patient.errors


# --------------------------------------------------------------------------- model card


def test_model_card_is_one_click_from_the_finding(
    web_world: WebWorld, new_page: Callable[..., Page], chest: dict[str, Any]
) -> None:
    finding = chest["findings"][0]
    card = json.loads((models_dir() / finding["model"] / "model_card.json").read_text())
    page = new_page()
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/#/studies/{finding['study_instance_uid']}")
    panel = page.get_by_test_id("finding").first
    panel.wait_for()
    opener = panel.get_by_role("button", name="Model card")
    opener.focus()
    page.keyboard.press("Enter")  # keyboard reachable: no mouse needed
    dialog = page.get_by_test_id("model-card")
    dialog.get_by_test_id("model-card-facts").wait_for()
    facts = dialog.get_by_test_id("model-card-facts").inner_text()
    assert card["model_id"] in facts and card["sha256"] in facts
    assert dialog.get_by_test_id("model-card-intended-use").inner_text() == card["intended_use"]
    auc = card["expected_performance"]["metrics"]["auc"]
    metrics = dialog.get_by_test_id("model-card-metrics")
    assert f"{auc * 100:.1f}%" in metrics.locator("tr[data-metric=auc]").inner_text()
    assert dialog.get_by_test_id("model-card-limitations").locator("li").count() == len(
        card["limitations"]
    )
    assert dialog.get_by_role("alert").count() == 0  # the card is of the finding's weights
    screenshot(page, "viewer-model-card-laptop")
    page.keyboard.press("Escape")
    dialog.wait_for(state="detached")
    assert page.evaluate("document.activeElement.dataset.testid") == "open-model-card"

    # the endpoint: any signed-in user, shipped or configured models only, hash compared
    w = web_world.world
    url = f"{web_world.url}/api/models/{finding['model']}/card"
    assert httpx.get(url).status_code == 401
    got = w.get("pat-a", f"/api/models/{finding['model']}/card", params={"sha256": "0" * 64})
    assert got.status_code == 200 and got.json()["sha256_matches"] is False
    assert w.get("doc-a", "/api/models/..%2F..%2Fetc/card").status_code == 404
    assert w.get("doc-a", "/api/models/no-such-model/card").status_code == 404
    assert not page.errors, page.errors
