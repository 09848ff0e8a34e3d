"""The catalog rows the security layer reads and writes, on SQLite and PostgreSQL: users and
peers, login sessions and API tokens, care teams and grants, the audit chain's rows, and
what an erasure removes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import false, func, select, true

from medshard.catalog import auth_tokens, care_team, users
from medshard.catalog.access_models import ChunkDeletion, User
from medshard.catalog.audit_rows import (
    add_audit_head,
    append_events,
    audit_head,
    event_rows,
    take_head,
)
from medshard.catalog.db import Catalog, migrate
from medshard.catalog.erasure_rows import erase_patient_rows
from medshard.catalog.models import CareSite, Node, Patient, Replica, utcnow
from medshard.catalog.patient_keys import key_row_of, patients_with_keys
from medshard.catalog.studies import has_visible_study, patient_pk_of_study, visible_study
from medshard.catalog.writes import (
    ObjectRow,
    PatientValues,
    ensure_patient,
    ensure_series,
    ensure_study,
    insert_instance,
    insert_object,
)


@pytest.fixture
def catalog(tmp_path: Path, db_url: str) -> Iterator[Catalog]:
    """A doctor at site A, and one patient with one study whose one object has a chunk
    copied on a node."""
    url = db_url or f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate(url)
    cat = Catalog(url)
    with cat.transaction() as session:  # through the write path's own functions
        site = users.add_site(session, "A")
        users.add_user(session, User(username="dr", role="doctor", full_name="Dr"), [site])
        node = Node(name="n0", url="http://n0", site_id=site)
        session.add(node)
        session.flush()
        patient = ensure_patient(
            session, PatientValues("PAT-1"), shard=1, wrapped_key=b"k", key_id="m"
        )
        chunks = [(0, "c" * 64, 10, [node.id])]
        obj = ObjectRow("key1", "dicom", "application/dicom", 10, "0" * 64, 10, b"k", chunks)
        object_pk = insert_object(session, patient, obj)
        study = ensure_study(session, patient.pk, {"study_instance_uid": "1.2.1"})
        series = ensure_series(session, study, {"series_instance_uid": "1.2.1.1"})
        insert_instance(
            session, {"sop_instance_uid": "1.2.1.1.1", "series_pk": series, "object_pk": object_pk}
        )
    yield cat
    cat.dispose()


def _pks(catalog: Catalog) -> tuple[int, int, int]:
    with catalog.session() as session:
        doctor = users.user_named(session, "dr")
        patient = session.scalar(select(Patient.id))
        assert doctor is not None and patient is not None
        return doctor.id, patient, users.site_pk_named(session, "A") or 0


def test_users_sites_and_peers_are_found_by_what_callers_name_them_by(catalog: Catalog) -> None:
    doctor, _, site = _pks(catalog)
    with catalog.transaction() as session:
        users.replace_peer(session, "PACS", doctor)
        users.replace_peer(session, "PACS", doctor)  # replaces, never doubles
    with catalog.session() as session:
        assert users.user_pk_named(session, "dr") == doctor
        assert users.user_named(session, "nobody") is None
        assert users.work_site_pks(session, doctor) == {site}
        assert [u.username for u in users.users_by_name(session)] == ["dr"]
        assert users.site_name_of(session, site) == "A"
        assert users.site_names_of(session, []) == []
        assert users.site_names_by_pk(session) == {site: "A"}
        assert users.peers(session) == {"PACS": "dr"}
        assert users.peer_user(session, "OTHER") is None
    with catalog.transaction() as session:
        users.delete_peer(session, "PACS")
        users.delete_peer(session, "PACS")  # gone already: nothing happens
    with catalog.session() as session:
        assert users.peers(session) == {}


def test_a_login_session_and_an_api_token_are_found_by_hash_until_revoked(
    catalog: Catalog,
) -> None:
    doctor, _, _ = _pks(catalog)
    now = utcnow()
    with catalog.transaction() as session:
        auth_tokens.add_login_session(
            session,
            user_pk=doctor,
            access_hash="a" * 64,
            refresh_hash="r" * 64,
            now=now,
            access_expires_at=now + timedelta(minutes=5),
            refresh_expires_at=now + timedelta(days=1),
            source="x" * 300,
        )
        auth_tokens.add_api_token(
            session,
            user_pk=doctor,
            name="t",
            token_hash="t" * 64,
            prefix="mst_abcdefgh",
            expires_at=None,
        )
    with catalog.transaction() as session:
        row = auth_tokens.login_session_of_access(session, "a" * 64)
        assert row is not None and len(row.source) == 128
        assert auth_tokens.login_session_of_refresh(session, "r" * 64) is row
        auth_tokens.touch_login_session(session, row.id)
        assert auth_tokens.end_login_session(session, "a" * 64)
        assert not auth_tokens.end_login_session(session, "b" * 64)
        assert auth_tokens.api_token_of(session, "t" * 64) is not None
        assert auth_tokens.revoke_api_tokens(session, prefix="mst_abcdefgh") == 1
        assert auth_tokens.revoke_api_tokens(session, token_hash="t" * 64) == 0  # revoked


def test_care_team_rows_and_grants(catalog: Catalog) -> None:
    doctor, patient, site = _pks(catalog)
    with catalog.transaction() as session:
        care_team.add_care_doctor(session, patient, doctor)
        care_team.add_care_doctor(session, patient, doctor)  # named once
        care_team.involve(session, CareSite, patient_pk=patient, site_id=site)
        study = visible_study(session, "1.2.1", true())
        assert study is not None
        care_team.add_share(
            session,
            study_pk=study.id,
            patient_pk=patient,
            expert_pk=doctor,
            granted_by_pk=doctor,
            expires_at=utcnow() + timedelta(days=1),
        )
        care_team.add_break_glass(
            session, user_pk=doctor, patient_pk=patient, reason="r", expires_at=utcnow()
        )
    with catalog.transaction() as session:  # a later transaction refreshes the time
        care_team.involve(session, CareSite, patient_pk=patient, site_id=site)
    with catalog.session() as session:
        assert [r[0] for r in care_team.care_doctors_of(session, patient)] == ["dr"]
        assert [r[0] for r in care_team.care_sites_of(session, patient)] == ["A"]
        assert [r[1] for r in care_team.shares_of(session, doctor, as_expert=True)] == ["1.2.1"]
        assert care_team.in_care_team(session, true())
        assert not has_visible_study(session, patient, false())
        assert visible_study(session, "1.2.1", false()) is None
        assert patient_pk_of_study(session, "1.2.1") == patient
    with catalog.transaction() as session:
        care_team.remove_care_doctor(session, patient, doctor)
    with catalog.session() as session:
        assert care_team.care_doctors_of(session, patient) == []


def test_the_audit_chain_appends_and_reads_back_in_order(catalog: Catalog) -> None:
    columns = ("seq", "actor", "flagged", "sealed", "prev_hash", "hash")
    event = {
        "at": "t", "actor": "a", "role": "r", "action": "x", "outcome": "success",
        "source": "", "patient_pk": None, "patient_tag": None, "sealed": b"s",
        "detail": "", "flagged": True, "prev_hash": "0", "hash": "h",
    }  # fmt: skip
    with catalog.transaction() as session:
        add_audit_head(session, genesis="0", wrapped_key=b"w", master_key_id="m")
    for _ in range(2):
        with catalog.transaction() as session:
            conn = session.connection()
            seq, prev = take_head(conn)
            row = {**event, "seq": seq + 1, "prev_hash": prev, "hash": f"h{seq + 1}"}
            append_events(conn, [row], seq + 1, row["hash"])
    with catalog.session() as session:
        head = audit_head(session)
        assert head is not None and (head.seq, head.hash) == (2, "h2")
        rows = list(event_rows(session, columns))
        assert [(r["seq"], r["prev_hash"]) for r in rows] == [(1, "0"), (2, "h1")]
        assert rows[0]["flagged"] is True and rows[0]["sealed"] == b"s"
        assert list(event_rows(session, columns, tag="nobody")) == []


def test_erasing_a_patient_shreds_the_key_removes_the_rows_and_queues_the_copies(
    catalog: Catalog,
) -> None:
    _, patient, _ = _pks(catalog)
    with catalog.session() as session:
        assert key_row_of(session.connection(), patient) is not None
        assert len(list(patients_with_keys(session))) == 1
    with catalog.transaction() as session:
        erased = erase_patient_rows(session, patient, "PAT-1")
    assert erased.as_dict() == {
        "studies": 1,
        "instances": 1,
        "objects": 1,
        "chunk_copies_queued": 1,
    }
    with catalog.session() as session:
        assert key_row_of(session.connection(), patient) is None
        assert session.scalar(select(func.count()).select_from(Patient)) == 0
        assert session.scalar(select(func.count()).select_from(Replica)) == 0
        assert session.scalar(select(ChunkDeletion.chunk_id)) == "c" * 64
