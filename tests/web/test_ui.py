"""The browser UI end to end: each role logs in through the page and sees what it may, the
viewer draws real pixels that answer to scrolling and window/level, uploads report per-file
outcomes, logout ends the session on the server too, and a phone-sized screen works.

One deployment for the module (``web_world``); each test opens its own browser context, so
sessions never leak from one test into the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import PASSWORD
from tests.web.conftest import (
    CANVAS_STATS,
    PHONE,
    SLICES,
    WebWorld,
    grid_distance,
    login,
    screenshot,
)

pytestmark = pytest.mark.timeout(120)

Page = Any


def _rows(page: Page) -> list[str]:
    page.get_by_test_id("result-count").wait_for()
    return [str(r.get_attribute("data-patient")) for r in page.get_by_test_id("study-row").all()]


def _search(page: Page, **fields: str) -> list[str]:
    page.get_by_test_id("result-count").wait_for()
    for label, value in fields.items():
        control = page.get_by_label(label, exact=True)
        if control.evaluate("e => e.tagName") == "SELECT":
            control.select_option(value)
        else:
            control.fill(value)
    page.evaluate("document.querySelector('[data-testid=result-count]').remove()")
    page.get_by_role("button", name="Search").click()
    return _rows(page)


def _canvas(page: Page) -> dict[str, Any]:
    stats = page.get_by_test_id("viewport").evaluate(CANVAS_STATS)
    assert stats is not None, "the viewport has no canvas"
    return dict(stats)


def _open_viewer(page: Page, url: str, study: str) -> None:
    page.goto(f"{url}/#/studies/{study}")
    page.locator("[data-testid=viewport][data-ready=true]").wait_for(timeout=30_000)
    page.wait_for_timeout(150)  # the first frame reaches the canvas


def _wait_changed(page: Page, before: dict[str, Any], min_distance: float = 2.0) -> float:
    """Poll the canvas until it differs from ``before``; returns the distance reached."""
    distance = 0.0
    for _ in range(40):
        distance = grid_distance(before, _canvas(page))
        if distance >= min_distance:
            break
        page.wait_for_timeout(100)
    return distance


# --------------------------------------------------------------------------- doctor


def test_doctor_worklist_holds_their_patients_and_searches(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-a")
    assert page.url.endswith("#/worklist")
    rows = _rows(page)
    assert "PAT-A" in rows and "PAT-B" not in rows  # PAT-B's care team is city-general's
    screenshot(page, "worklist-laptop")
    assert _search(page, **{"Patient name": "beta"}) == []
    assert set(_search(page, **{"Patient name": "alpha"})) == {"PAT-A"}
    assert _search(page, **{"Patient name": "", "Patient ID": "PAT-B"}) == []
    assert set(_search(page, **{"Patient ID": "AT-"})) == {"PAT-A"}
    assert set(_search(page, **{"Patient ID": "", "Modality": "CT"})) == {"PAT-A"}
    assert _search(page, **{"Modality": "MR"}) == []
    # the CT study is dated 2025-03-01, the single-image one 2026-01-01
    dated = _search(page, **{"Modality": "", "From": "2025-02-01", "To": "2025-03-31"})
    assert dated == ["PAT-A"]
    assert not page.errors


def test_doctor_cannot_open_another_doctors_patient_by_editing_the_url(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    other = web_world.world.b
    assert other is not None
    page = new_page()
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/#/studies/{other.study}")
    page.get_by_test_id("not-found").wait_for()
    assert page.get_by_test_id("viewport").count() == 0
    page.goto(f"{web_world.url}/#/patients/PAT-B")
    page.get_by_text("No study of this patient is visible to you").wait_for()
    assert page.get_by_test_id("timeline-study").count() == 0


def test_patient_timeline_lists_the_patients_studies(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-a")
    page.goto(f"{web_world.url}/#/patients/PAT-A")
    page.get_by_test_id("timeline-study").first.wait_for()
    studies = [s.get_attribute("data-study") for s in page.get_by_test_id("timeline-study").all()]
    assert web_world.ct_study in studies and web_world.world.a is not None
    assert web_world.world.a.study in studies
    page.get_by_test_id("careteam").get_by_text("st-marys").wait_for()
    screenshot(page, "patient-timeline-laptop")


def test_viewer_draws_scrolls_and_windows_the_stack(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-a")
    _open_viewer(page, web_world.url, web_world.ct_study)
    viewport = page.get_by_test_id("viewport")
    assert viewport.get_attribute("data-slices") == str(SLICES)
    first = _canvas(page)
    assert first["lit"] > 0.05, f"the canvas is blank: {first['lit']:.3f} lit"
    screenshot(page, "viewer-laptop")

    # scrolling with the wheel moves through the slices and redraws (the disc grows)
    box = viewport.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(8):
        page.mouse.wheel(0, 120)
        page.wait_for_timeout(40)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=viewport]').dataset.slice) >= 4"
    )
    scrolled = _canvas(page)
    assert grid_distance(first, scrolled) >= 1.0

    # keyboard: focus the image and step one slice
    slice_before = int(viewport.get_attribute("data-slice") or 0)
    viewport.focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_function(
        "(n) => document.querySelector('[data-testid=viewport]').dataset.slice == String(n)",
        arg=slice_before + 1,
    )

    # window/level by dragging with the primary button
    ww_before = float(viewport.get_attribute("data-ww") or 0)
    before = _canvas(page)
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(cx + step * 15, cy + step * 8)
    page.mouse.up()
    assert _wait_changed(page, before) >= 2.0, "window/level drag did not change the pixels"
    assert float(viewport.get_attribute("data-ww") or 0) != ww_before

    # presets, invert and reset
    page.get_by_test_id("preset").select_option(label="Lung 1500/-600")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=viewport]').dataset.ww == '1500.0'"
    )
    before = _canvas(page)
    page.get_by_test_id("invert").click()
    assert _wait_changed(page, before) >= 5.0
    assert viewport.get_attribute("data-invert") == "true"
    page.get_by_test_id("reset").click()
    page.wait_for_function(
        "() => document.querySelector('[data-testid=viewport]').dataset.invert == 'false'"
    )

    # the tag panel shows the current image's header; the findings panel is there
    tags = page.get_by_test_id("tags")
    assert "InstanceNumber" in tags.inner_text() and "PatientID" in tags.inner_text()
    page.get_by_test_id("findings").wait_for()
    assert not page.errors, page.errors


def test_doctor_shares_a_study_and_the_expert_sees_only_shared_ones(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    w = web_world.world
    assert w.a is not None and w.b is not None
    doctor = new_page()
    login(doctor, web_world.url, "doc-a")
    row = doctor.locator(f"[data-testid=study-row][data-study='{web_world.ct_study}']")
    row.get_by_test_id("share-study").click()
    dialog = doctor.get_by_test_id("share-dialog")
    dialog.get_by_label("Expert username").fill("expert")
    dialog.get_by_label("Days").fill("2")
    dialog.get_by_role("button", name="Share", exact=True).click()
    dialog.get_by_text("Shared with expert").wait_for()

    expert = new_page()
    login(expert, web_world.url, "expert")
    assert expert.url.endswith("#/shares")
    expert.get_by_test_id("share").first.wait_for()
    shared = {s.get_attribute("data-study"): s for s in expert.get_by_test_id("share").all()}
    assert set(shared) == {w.a.study, web_world.ct_study}
    assert "left" in shared[web_world.ct_study].get_by_test_id("time-left").inner_text()
    assert "1 d" in shared[web_world.ct_study].inner_text()  # 2 days less a moment
    screenshot(expert, "expert-shares-laptop")
    expert.goto(f"{web_world.url}/#/studies/{w.b.study}")
    expert.get_by_test_id("not-found").wait_for()
    _open_viewer(expert, web_world.url, web_world.ct_study)
    assert _canvas(expert)["lit"] > 0.05
    # no worklist for an expert: the page says so, and the server filters anyway
    expert.goto(f"{web_world.url}/#/worklist")
    expert.get_by_text("not available to an expert").wait_for()


def test_break_glass_needs_a_reason_and_opens_the_patient(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-b")
    page.get_by_role("link", name="Emergency access").click()
    page.get_by_label("Patient ID").fill("PAT-A")
    page.get_by_label("Reason (at least 10 characters)").fill("too short")
    page.get_by_role("button", name="Break the glass").click()
    page.get_by_text("at least 10 characters").last.wait_for()
    page.get_by_label("Reason (at least 10 characters)").fill("unconscious patient in ER")
    page.get_by_role("button", name="Break the glass").click()
    page.get_by_role("link", name="Open the patient").click()
    page.get_by_test_id("timeline-study").first.wait_for()


# --------------------------------------------------------------------------- patient


def test_patient_sees_own_studies_and_who_accessed_them(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    w = web_world.world
    r = w.get("doc-a", f"/dicom-web/studies/{web_world.ct_study}/metadata")
    assert r.status_code == 200
    page = new_page()
    login(page, web_world.url, "pat-a")
    assert page.url.endswith("#/me")
    page.get_by_test_id("timeline-study").first.wait_for()
    studies = {s.get_attribute("data-study") for s in page.get_by_test_id("timeline-study").all()}
    assert web_world.ct_study in studies and w.b is not None and w.b.study not in studies
    deadline = time.monotonic() + 10
    while True:  # the audit writer appends in the background, within moments
        page.get_by_test_id("access-log").wait_for()
        actors = {e.get_attribute("data-actor") for e in page.get_by_test_id("access-event").all()}
        if "doc-a" in actors or time.monotonic() > deadline:
            break
        page.reload()
    assert "doc-a" in actors and "admin" not in actors
    if "doc-b" in actors:  # not in PAT-A's care team: only by breaking the glass, flagged
        assert page.locator("[data-testid=access-event].flagged[data-actor=doc-b]").count()
    screenshot(page, "patient-me-laptop")
    # a patient has no admin pages, and the server refuses their data anyway
    page.goto(f"{web_world.url}/#/admin/users")
    page.get_by_text("not available to a patient").wait_for()
    assert w.get("pat-a", "/api/users").status_code == 403


# --------------------------------------------------------------------------- admin


def test_admin_sees_cluster_and_users_but_no_clinical_data(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    w = web_world.world
    assert w.a is not None
    page = new_page()
    login(page, web_world.url, "admin")
    assert page.url.endswith("#/admin")
    page.get_by_test_id("node").first.wait_for()
    states = [n.get_attribute("data-state") for n in page.get_by_test_id("node").all()]
    assert len(states) == len(w.dep.nodes) and set(states) == {"alive"}
    screenshot(page, "admin-cluster-laptop")
    page.get_by_role("link", name="Users").click()
    page.get_by_test_id("user").first.wait_for()
    users = {u.get_attribute("data-user") for u in page.get_by_test_id("user").all()}
    assert {"admin", "doc-a", "doc-b", "expert", "pat-a"} <= users
    page.get_by_role("link", name="Audit log").click()
    page.get_by_test_id("audit").locator("tbody tr").first.wait_for()
    assert page.get_by_test_id("audit").locator("tbody tr").count() > 5
    page.get_by_label("Emergency access only").check()
    rows = page.get_by_test_id("audit").locator("tbody tr")
    assert rows.count() == page.locator("[data-testid=audit] tbody tr.flagged").count()
    page.goto(f"{web_world.url}/#/studies/{w.a.study}")
    page.get_by_test_id("not-found").wait_for()


# --------------------------------------------------------------------------- upload


def _upload(page: Page, files: list[Path]) -> None:
    page.get_by_test_id("file-input").set_input_files([str(f) for f in files])


def _outcomes(page: Page, count: int) -> list[tuple[str, str, str]]:
    page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=upload][data-outcome]').length >= {count}",
        timeout=60_000,
    )
    out = []
    for row in page.get_by_test_id("upload").all():
        reason = row.get_by_test_id("reason")
        out.append(
            (
                str(row.get_attribute("data-name")),
                str(row.get_attribute("data-outcome")),
                reason.inner_text() if reason.count() else "",
            )
        )
    return out


def test_upload_reports_stored_duplicate_and_rejected_per_file(
    web_world: WebWorld, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    from medshard.analysis.dataset import sample_npz_path
    from medshard.analysis.synth import chest_xray_dicoms

    chest = chest_xray_dicoms(sample_npz_path(), count=1, indices=[3], out_dir=tmp_path)[0]
    bad = tmp_path / "notes.dcm"
    bad.write_bytes(b"this is not a DICOM file at all" * 10)
    page = new_page()
    login(page, web_world.url, "doc-a")
    page.get_by_role("link", name="Upload").click()
    _upload(page, [chest, bad])
    outcomes = {name: (outcome, reason) for name, outcome, reason in _outcomes(page, 2)}
    assert outcomes[chest.name][0] == "stored", outcomes
    assert outcomes[bad.name][0] == "rejected" and len(outcomes[bad.name][1]) > 5, outcomes
    assert page.get_by_test_id("overall-progress").evaluate("e => e.value >= e.max")
    summary = page.get_by_test_id("upload-summary").inner_text()
    assert "2 of 2 files" in summary and "1 stored" in summary and "1 rejected" in summary
    screenshot(page, "upload-laptop")

    # the same file again, this time dropped on the zone: a duplicate, not an error
    page.evaluate(
        """async (bytes) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], 'again.dcm'));
            const zone = document.querySelector('[data-testid=dropzone]');
            zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true }));
        }""",
        list(chest.read_bytes()),
    )
    again = {name: outcome for name, outcome, _ in _outcomes(page, 3)}
    assert again["again.dcm"] == "duplicate", again

    # the chest X-ray is in the worklist, and the AI finding shows beside it in the viewer
    page.get_by_role("link", name="Worklist").click()
    assert "PMNIST-val-0003" in _rows(page)
    row = page.locator("[data-testid=study-row][data-patient='PMNIST-val-0003']")
    study = str(row.get_attribute("data-study"))
    deadline = time.monotonic() + 45
    while True:  # the service's analysis worker runs the model in the background
        found = web_world.world.get("doc-a", f"/api/studies/{study}/findings").json()
        if found["findings"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert found["findings"], f"no AI finding after 45 s: {found['jobs']}"
    _open_viewer(page, web_world.url, study)
    finding = page.get_by_test_id("finding").first
    finding.wait_for()
    assert finding.get_by_test_id("finding-label").inner_text() == found["findings"][0]["label"]
    assert "threshold" in finding.get_by_test_id("finding-probability").inner_text()
    screenshot(page, "viewer-finding-laptop")


# --------------------------------------------------------------------------- session


def test_logout_returns_to_login_and_the_token_stops_working(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-b")
    token = page.evaluate("JSON.parse(sessionStorage.getItem('medshard.session')).access")
    me = httpx.get(f"{web_world.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "doc-b"
    page.get_by_test_id("logout").click()
    page.get_by_test_id("login-form").wait_for()
    assert page.get_by_text("You have logged out").is_visible()
    assert page.evaluate("sessionStorage.getItem('medshard.session')") is None
    after = httpx.get(f"{web_world.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401


def test_a_session_ended_on_the_server_sends_the_page_back_to_login(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-a")
    page.get_by_test_id("result-count").wait_for()
    token = page.evaluate("JSON.parse(sessionStorage.getItem('medshard.session')).access")
    r = httpx.post(f"{web_world.url}/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200
    page.get_by_role("button", name="Search").click()
    page.get_by_test_id("login-form").wait_for()
    page.get_by_text("session has expired").wait_for()
    # logging in again brings the user back
    login(page, web_world.url, "doc-a")


def test_the_access_token_is_refreshed_before_it_expires(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    login(page, web_world.url, "doc-a")
    old = page.evaluate("JSON.parse(sessionStorage.getItem('medshard.session')).access")
    # pretend the token is about to expire: the next load refreshes it first
    page.evaluate(
        """() => {
            const s = JSON.parse(sessionStorage.getItem('medshard.session'));
            s.expiresAt = Date.now() + 2000;
            sessionStorage.setItem('medshard.session', JSON.stringify(s));
        }"""
    )
    page.reload()
    page.get_by_test_id("result-count").wait_for()
    new = page.evaluate("JSON.parse(sessionStorage.getItem('medshard.session')).access")
    assert new != old
    headers = {"Authorization": f"Bearer {new}"}
    assert httpx.get(f"{web_world.url}/api/auth/me", headers=headers).status_code == 200


def test_wrong_password_says_so(web_world: WebWorld, new_page: Callable[..., Page]) -> None:
    page = new_page()
    page.goto(f"{web_world.url}/")
    page.get_by_label("Username").fill("doc-a")
    page.get_by_label("Password").fill(PASSWORD + "x")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("alert").get_by_text("Wrong username or password").wait_for()
    screenshot(page, "login-laptop")


# --------------------------------------------------------------------------- phone


def test_phone_sized_screen_shows_the_worklist_and_viewer(
    web_world: WebWorld, new_page: Callable[..., Page]
) -> None:
    page = new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    login(page, web_world.url, "doc-a")
    assert "PAT-A" in _rows(page)
    assert page.get_by_role("button", name="Menu").is_visible()
    assert not page.locator("table.studies thead").is_visible()  # rows become cards
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"] + 1, f"the page scrolls sideways: {width}px"
    screenshot(page, "worklist-phone")
    page.get_by_role("button", name="Menu").click()
    page.get_by_role("link", name="Upload").wait_for()
    _open_viewer(page, web_world.url, web_world.ct_study)
    assert _canvas(page)["lit"] > 0.05
    screenshot(page, "viewer-phone")
    page.get_by_test_id("logout").click()
    page.get_by_test_id("login-form").wait_for()
    screenshot(page, "login-phone")
    for user, page_name, ready in [
        ("pat-a", "patient-me-phone", "access-log"),
        ("expert", "expert-shares-phone", "share"),
        ("admin", "admin-cluster-phone", "node"),
    ]:
        login(page, web_world.url, user)
        page.get_by_test_id(ready).first.wait_for()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{page_name} scrolls sideways: {width}px"
        screenshot(page, page_name)
        page.get_by_test_id("logout").click()
        page.get_by_test_id("login-form").wait_for()
