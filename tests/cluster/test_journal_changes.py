"""Changes that store no object, made after the last backup, survive losing the service's
disk: care-team changes, metadata-only document versions and accounts.

Real node processes and a real service. After a backup: a doctor is taken out of a
patient's care team and another put in (CLI), a study is shared with an expert and a doctor
breaks the glass (REST), and a doctor at another site stores a new patient's image
(STOW-RS), which puts that site and doctor in the new patient's care team; a document's
title is changed without new bytes (a version reusing its object). The home is deleted and
``medshard restore`` rebuilds it: every one of those changes is there, and the doctor taken
out stays out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from medshard.bench.data import generate_instances
from medshard.catalog.access_models import ApiToken, BreakGlass, Share, User
from medshard.catalog.care_journal import apply_care_change
from medshard.catalog.care_team import care_doctors_of, care_sites_of
from medshard.catalog.lookups import patient_named
from medshard.cluster.archive import Archive
from medshard.demo import sample_dicom_dir
from medshard.errors import AuthenticationError
from medshard.security import identity, tokens
from tests.cluster.test_object_journal import _patient_and_study, _stow
from tests.conftest import Deployment, start_service
from tests.records.samples import pdf

PASSWORD = "correct horse battery staple 42"


def _token(url: str, username: str) -> dict[str, str]:
    response = httpx.post(
        f"{url}/api/auth/token", data={"username": username, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _team(dep: Deployment, patient: str) -> tuple[set[str], set[str]]:
    """(doctors, sites) of the patient's care team, read from the catalog."""
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        found = patient_named(session, patient)
        assert found is not None, patient
        doctors = {row[0] for row in care_doctors_of(session, found.id)}
        sites = {row[0] for row in care_sites_of(session, found.id)}
    return doctors, sites


def test_care_team_changes_after_the_backup_survive_losing_the_home(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    imported = dep.cli_json("import", str(sample_dicom_dir()))["imported"]
    patient, study = next(
        (p, s)
        for p, s in (_patient_and_study(Path(i["path"])) for i in imported)
        if p  # filed under its own Patient ID
    )
    for name, site in (("dr-a", "st-marys"), ("dr-b", "st-marys"), ("dr-c", "city-general")):
        dep.cli("user", "add", name, "--role", "doctor", "--site", site, "--password", PASSWORD)
    dep.cli("user", "add", "dr-far", "--role", "doctor", "--site", "rural-clinic",
            "--password", PASSWORD)  # fmt: skip
    dep.cli("user", "add", "expert", "--role", "expert", "--password", PASSWORD)
    dep.cli("careteam", "add", patient, "dr-a")
    dep.cli("careteam", "add", patient, "dr-b")
    dep.cli_json("backup")
    before_doctors, _sites = _team(dep, patient)
    assert {"dr-a", "dr-b"} <= before_doctors

    # after the backup: the care team changes, a share, a break-glass, a store elsewhere
    dep.cli("careteam", "remove", patient, "dr-b")
    dep.cli("careteam", "add", patient, "dr-c")
    later = tmp_path / "later"
    generate_instances(later, 2, patients=1, seed=31)
    new_patient, _new_study = _patient_and_study(next(later.glob("*.dcm")))
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        shared = httpx.post(
            f"{svc.url}/api/shares",
            json={"study": study, "expert": "expert", "days": 3},
            headers=_token(svc.url, "dr-a"),
        )
        assert shared.status_code == 201, shared.text
        glass = httpx.post(
            f"{svc.url}/api/break-glass",
            json={"patient_id": patient, "reason": "unconscious in the emergency room"},
            headers=_token(svc.url, "dr-far"),
        )
        assert glass.status_code == 201, glass.text
        _stow(f"{svc.url}/dicom-web", _token(svc.url, "dr-far"), sorted(later.glob("*.dcm")))
    finally:
        svc.process.stop()
    doctors, sites = _team(dep, patient)
    new_doctors, new_sites = _team(dep, new_patient)
    assert "dr-b" not in doctors and {"dr-a", "dr-c"} <= doctors
    assert new_doctors == {"dr-far"} and "rural-clinic" in new_sites

    replay = dep.lose_home_and_restore(key)["journal"]
    # remove, add, share, break-glass, and the store's site and doctor (maybe more involvements)
    assert replay["care_changes_applied"] >= 6, replay
    assert replay["care_changes_skipped"] == 0, replay

    assert _team(dep, patient) == (doctors, sites)
    assert _team(dep, new_patient) == (new_doctors, new_sites)
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        experts = session.scalars(
            select(User.username).join(Share, Share.expert_pk == User.id)
        ).all()
        glass_users = session.scalars(
            select(User.username).join(BreakGlass, BreakGlass.user_pk == User.id)
        ).all()
    assert experts == ["expert"]
    assert glass_users == ["dr-far"]


def test_a_care_change_naming_what_the_catalog_lacks_is_skipped(
    sqlite_deployment: Deployment,
) -> None:
    """A change naming a user or patient the restored catalog does not have is not applied
    (and does not fail the restore); applying one twice changes nothing the second time."""
    dep = sqlite_deployment
    imported = dep.cli_json("import", str(sample_dicom_dir()))["imported"]
    patient = next(p for p, _s in (_patient_and_study(Path(i["path"])) for i in imported) if p)
    dep.cli("user", "add", "dr-a", "--role", "doctor", "--site", "st-marys", "--password", PASSWORD)
    add = {"op": "add-doctor", "patient": patient, "user": "dr-a", "at": "2026-01-01T00:00:00"}
    with Archive.open(dep.home) as archive, archive.catalog.transaction() as session:
        assert not apply_care_change(session, {**add, "user": "nobody"})
        assert not apply_care_change(session, {**add, "patient": "no-such-patient"})
        assert apply_care_change(session, add)
        assert apply_care_change(session, add)
    doctors, _sites = _team(dep, patient)
    assert doctors == {"dr-a"}


def test_metadata_only_document_versions_after_the_backup_survive_losing_the_home(
    sqlite_deployment: Deployment, tmp_path: Path
) -> None:
    """A title changed without new bytes (before and after the backup's document came) is
    a version in the restored catalog, pointing at the same bytes."""
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    dep.cli_json("import", str(sample_dicom_dir()))
    first, second = tmp_path / "first.pdf", tmp_path / "second.pdf"
    first.write_bytes(pdf("stored before the backup"))
    second.write_bytes(pdf("stored after the backup"))
    old = json.loads(dep.cli("records", "add", "JOURNAL-1", str(first), "--json").stdout)
    dep.cli_json("backup")
    new = json.loads(dep.cli("records", "add", "JOURNAL-1", str(second), "--json").stdout)
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        for doc in (old, new):
            url = f"{svc.url}/api/patients/JOURNAL-1/documents/{doc['id']}"
            changed = httpx.put(
                url, params={"replaces": "1", "title": "Final"}, headers=svc.auth_headers()
            )
            assert changed.status_code == 200 and changed.json()["version"] == 2, changed.text
    finally:
        svc.process.stop()

    replay = dep.lose_home_and_restore(key)["journal"]
    assert replay["versions_replayed"] == 2 and replay["versions_orphaned"] == 0, replay
    for doc, path in ((old, first), (new, second)):
        history = json.loads(dep.cli("records", "history", doc["id"], "--json").stdout)
        assert (history[0]["version"], history[0]["title"]) == (2, "Final"), history
        assert [v["version"] for v in history] == [2, 1]
        out = tmp_path / f"{doc['id']}.out"
        dep.cli("records", "get", doc["id"], "-o", str(out))
        assert out.read_bytes() == path.read_bytes()


def test_accounts_changed_after_the_backup_survive_losing_the_home(
    sqlite_deployment: Deployment,
) -> None:
    """A PACS account, its token and its AE title added after the last backup, a token
    revoked, a password changed and an account disabled: a restore puts every one back as it
    was, so the new token authenticates and the old password and revoked token do not."""
    dep = sqlite_deployment
    key = (dep.home / "recovery.key").read_text().strip()
    dep.cli("user", "add", "dr-a", "--role", "doctor", "--site", "st-marys", "--password", PASSWORD)
    dep.cli("user", "add", "dr-b", "--role", "doctor", "--site", "st-marys", "--password", PASSWORD)
    dep.cli("user", "add", "old-pacs", "--role", "service", "--site", "st-marys")
    old_token = dep.cli_json("token", "create", "old-pacs")["token"]
    dep.cli_json("backup")

    new_password = "a different horse battery staple 7"
    dep.cli("user", "passwd", "dr-a", "--password", new_password)
    dep.cli("user", "disable", "dr-b")
    dep.cli("user", "add", "new-pacs", "--role", "service", "--site", "far-site")
    new_token = dep.cli_json("token", "create", "new-pacs", "--name", "radiology PACS")["token"]
    dep.cli("token", "revoke", old_token)
    dep.cli("dicom", "allow", "NEWPACS", "--user", "new-pacs")
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        before = _accounts(session)
    peers = identity_peers(dep)
    assert peers["NEWPACS"] == "new-pacs"

    replay = dep.lose_home_and_restore(key)["journal"]
    assert replay["accounts_applied"] >= 6 and replay["accounts_skipped"] == 0, replay
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        assert _accounts(session) == before
        settings = archive.settings
        assert tokens.resolve(session, settings, new_token).principal.username == "new-pacs"
        with pytest.raises(AuthenticationError):
            tokens.resolve(session, settings, old_token)
    assert identity_peers(dep) == peers
    svc = start_service(dep, backup_interval_s=0.0)
    try:
        for username, password, status in (
            ("dr-a", new_password, 200),
            ("dr-a", PASSWORD, 401),
            ("dr-b", PASSWORD, 401),
        ):
            response = httpx.post(
                f"{svc.url}/api/auth/token", data={"username": username, "password": password}
            )
            assert response.status_code == status, (username, response.text)
    finally:
        svc.process.stop()


def _accounts(session: Session) -> list[tuple[Any, ...]]:
    users = session.execute(
        select(User.username, User.role, User.password_hash, User.disabled, User.site_id).order_by(
            User.username
        )
    ).all()
    tokens_ = session.execute(
        select(ApiToken.token_hash, ApiToken.name, ApiToken.revoked_at.is_(None)).order_by(
            ApiToken.token_hash
        )
    ).all()
    return [tuple(u) for u in users] + [tuple(t) for t in tokens_]


def identity_peers(dep: Deployment) -> dict[str, str]:
    with Archive.open(dep.home) as archive, archive.catalog.session() as session:
        return identity.peers(session)
