"""The demo's cast: the people and systems a first look at medshard needs.

Two hospitals' PACS service accounts (each with an API token and DICOM AE titles), two
doctors at different hospitals whose patients differ, an expert with one study shared, a
patient who can read their own record and access log, and an admin. Sample files are split
between the two PACS by patient, so each doctor's worklist holds different people.
Passwords are random per demo and written to ``demo.json`` (mode 0600), never fixed.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from medshard.api.ingestors import analysed_ingestor
from medshard.cluster.archive import Archive
from medshard.ingest.batch import ImportReport, import_files, iter_files
from medshard.security import careteam, identity, tokens
from medshard.security.gate import Gate
from medshard.security.local import store_access_for

#: calling AE titles allowed for the first PACS: its own, and dcmtk's / pynetdicom's defaults
PACS_AES = ["DEMO-PACS", "STORESCU", "FINDSCU", "MOVESCU", "GETSCU", "ECHOSCU", "ORTHANC"]
OTHER_PACS_AES = ["CITY-PACS"]


@dataclass
class Cast:
    users: list[dict[str, Any]] = field(default_factory=list)
    token: str = ""
    calling_ae_titles: list[str] = field(default_factory=list)
    report: ImportReport = field(default_factory=dict)


def _password() -> str:
    return secrets.token_urlsafe(12)


def _by_patient(files: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        try:
            pid = str(pydicom.dcmread(path, stop_before_pixels=True).get("PatientID", ""))
        except Exception:  # not DICOM: let the import reject it with its reason
            pid = ""
        groups[pid].append(path)
    return groups


def create_cast(home: Path, sites: list[str], samples: list[Path]) -> Cast:
    """Create the cast in ``home`` and import ``samples`` split over the two hospitals."""
    saved = home / "cast.json"
    if saved.exists():  # a demo home run before: same cast, samples come in as duplicates
        cast = Cast(**json.loads(saved.read_text()))
        with Archive.open(home) as archive:
            cast.report = import_files(
                archive,
                samples,
                access=store_access_for(cast.token),
                make_ingestor=analysed_ingestor,
            )
        return cast
    cast = _new_cast(home, sites, samples)
    saved.touch(mode=0o600)
    saved.write_text(json.dumps({k: v for k, v in cast.__dict__.items() if k != "report"}))
    return cast


def _new_cast(home: Path, sites: list[str], samples: list[Path]) -> Cast:
    first, second = sites[0], sites[1]
    cast = Cast(calling_ae_titles=PACS_AES + OTHER_PACS_AES)
    with Archive.open(home) as archive, Gate(archive) as gate:
        passwords = {name: _password() for name in ("admin", "dr-house", "dr-grey", "dr-wilson")}
        with gate.catalog.transaction() as session:
            identity.add_user(session, username="admin", role="admin", password=passwords["admin"])
            identity.add_user(
                session,
                username="dr-house",
                role="doctor",
                password=passwords["dr-house"],
                sites=[first],
                full_name="Gregory House",
            )
            identity.add_user(
                session,
                username="dr-grey",
                role="doctor",
                password=passwords["dr-grey"],
                sites=[second],
                full_name="Meredith Grey",
            )
            identity.add_user(
                session,
                username="dr-wilson",
                role="expert",
                password=passwords["dr-wilson"],
                full_name="James Wilson (oncology consultant)",
            )
            identity.add_user(session, username=f"pacs-{first}", role="service", sites=[first])
            identity.add_user(session, username=f"pacs-{second}", role="service", sites=[second])
            cast.token = tokens.create_api_token(session, f"pacs-{first}", "demo PACS")
            other_token = tokens.create_api_token(session, f"pacs-{second}", "demo PACS")
            for ae in PACS_AES:
                identity.allow_peer(session, ae, f"pacs-{first}")
            for ae in OTHER_PACS_AES:
                identity.allow_peer(session, ae, f"pacs-{second}")
        groups = _by_patient(list(iter_files(samples)))
        ordered = sorted(groups, key=lambda pid: (-len(groups[pid]), pid))
        mine = [pid for i, pid in enumerate(ordered) if i % 2 == 0]
        theirs = [pid for i, pid in enumerate(ordered) if i % 2 == 1]
        reports = [
            import_files(
                archive,
                [p for pid in pids for p in groups[pid]],
                access=store_access_for(token),
                make_ingestor=analysed_ingestor,
            )
            for pids, token in ((mine, cast.token), (theirs, other_token))
        ]
        cast.report = {k: reports[0][k] + reports[1][k] for k in reports[0]}
        patient_id = next((pid for pid in mine if pid), None)
        patient_password = _password()
        if patient_id:
            with gate.catalog.transaction() as session:
                identity.add_user(
                    session,
                    username="patient",
                    role="patient",
                    password=patient_password,
                    patient_id=patient_id,
                )
        house = gate.authenticate(
            gate.login("dr-house", passwords["dr-house"], "demo").access_token, "demo"
        )
        shared = _first_study(reports[0], patient_id)
        if shared:
            careteam.share_study(gate, house, shared, "dr-wilson", 7)
    mine_ids = sorted(p for p in mine if p)
    theirs_ids = sorted(p for p in theirs if p)
    cast.users = [
        {"username": "admin", "password": passwords["admin"], "role": "admin", "site": None,
         "patients": []},
        {"username": "dr-house", "password": passwords["dr-house"], "role": "doctor",
         "site": first, "patients": mine_ids},
        {"username": "dr-grey", "password": passwords["dr-grey"], "role": "doctor",
         "site": second, "patients": theirs_ids},
        {"username": "dr-wilson", "password": passwords["dr-wilson"], "role": "expert",
         "site": None, "patients": [patient_id] if shared else [], "shared_studies":
         [shared] if shared else []},
        {"username": "patient", "password": patient_password, "role": "patient", "site": None,
         "patients": [patient_id] if patient_id else []},
        {"username": f"pacs-{first}", "password": None, "role": "service", "site": first,
         "patients": mine_ids, "token": cast.token, "ae_titles": PACS_AES},
        {"username": f"pacs-{second}", "password": None, "role": "service", "site": second,
         "patients": theirs_ids, "token": other_token, "ae_titles": OTHER_PACS_AES},
    ]  # fmt: skip
    return cast


def _first_study(report: ImportReport, patient_id: str | None) -> str | None:
    for item in report.get("imported", []):
        if item.get("patient_id") == patient_id:
            return item.get("study_instance_uid")
    return None
