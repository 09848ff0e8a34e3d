"""DIMSE building blocks without a network: identifiers, statuses, contexts, byte pass-through."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless
from pynetdicom import association as pynetdicom_association
from pynetdicom.dsutils import encode

from medshard.api.dimse.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    condition_of,
    parse_identifier,
    response_identifier,
    retrieve_query,
)
from medshard.api.dimse.retrieve import (
    MAX_CONTEXTS,
    Match,
    StoredInstance,
    data_set_offset,
    install_passthrough,
    requested_contexts,
    sendable,
)
from medshard.api.dimse.scp import STORAGE_SYNTAXES, build_ae
from medshard.api.dimse.status import failure, rejection_error, status_code
from medshard.catalog.matching import AnyOf, Range, SingleValue, Wildcard
from medshard.config import Settings
from medshard.errors import (
    AccessDeniedError,
    IdentityConflictError,
    InvalidDicomError,
    InvalidInputError,
    MedshardError,
    NoQuorumError,
    StorageError,
)
from medshard.ingest.pipeline import IngestOutcome, Rejection
from tests.data import shared_dicom

FIND_P = f"{PATIENT_ROOT}.1"
FIND_S = f"{STUDY_ROOT}.1"
MOVE_S = f"{STUDY_ROOT}.2"


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------- identifiers


def test_identifier_keys_become_catalog_conditions() -> None:
    ds = _identifier(
        "STUDY",
        PatientName="doe^*",
        StudyDate="20240101-20241231",
        StudyTime="",
        StudyInstanceUID="1.2.3\\1.2.4",
        ModalitiesInStudy="MR\\CT",
        AccessionNumber="A1",
        NumberOfStudyRelatedInstances="",
        OtherPatientIDs="X",  # not indexed: returned empty, never a silent filter elsewhere
    )
    query = parse_identifier(ds, FIND_S)
    assert query.level == "STUDY"
    assert query.conditions == {
        "PatientName": Wildcard("doe^*", ignore_case=True),
        "StudyDate": Range("DA", "20240101", "20241231"),
        "StudyInstanceUID": AnyOf(("1.2.3", "1.2.4")),
        "ModalitiesInStudy": AnyOf(("MR", "CT")),
        "AccessionNumber": SingleValue("A1"),
    }
    assert "StudyTime" in query.catalog_fields()
    assert "StudyInstanceUID" in query.catalog_fields()


@pytest.mark.parametrize(
    ("vr", "raw", "expected"),
    [
        ("DA", "", None),
        ("PN", "*", None),
        ("DA", "20240101", Range("DA", "20240101", "20240101")),
        ("DA", "-20240101", Range("DA", None, "20240101")),
        ("TM", "0800-1200", Range("TM", "0800", "1200")),
        ("UI", "1.2.840.1", SingleValue("1.2.840.1")),
        ("IS", "7", SingleValue("7")),
        ("LO", "AB?D", Wildcard("AB?D")),
        ("PN", "Smith^J", SingleValue("Smith^J", ignore_case=True)),
    ],
)
def test_condition_of_follows_ps3_4_matching(vr: str, raw: str, expected: object) -> None:
    assert condition_of("Key", vr, raw) == expected


@pytest.mark.parametrize(
    ("vr", "raw"),
    [("DA", "2024-01"), ("DA", "20241231-20240101"), ("UI", "1.2.x"), ("IS", "1*")],
)
def test_condition_of_rejects_malformed_values(vr: str, raw: str) -> None:
    with pytest.raises(InvalidInputError):
        condition_of("Key", vr, raw)


def test_levels_are_checked_against_the_information_model() -> None:
    with pytest.raises(InvalidInputError, match="QueryRetrieveLevel"):
        parse_identifier(_identifier("PATIENT"), FIND_S)  # Study Root has no PATIENT level
    with pytest.raises(InvalidInputError, match="QueryRetrieveLevel"):
        parse_identifier(Dataset(), FIND_P)
    with pytest.raises(InvalidInputError, match="not a supported"):
        parse_identifier(_identifier("STUDY"), "1.2.840.10008.5.1.4.31")  # worklist
    assert parse_identifier(_identifier("PATIENT"), FIND_P).level == "PATIENT"


def test_retrieve_needs_a_unique_key() -> None:
    with pytest.raises(InvalidInputError, match="unique key"):
        retrieve_query(_identifier("STUDY", StudyInstanceUID=""), MOVE_S)
    query = retrieve_query(_identifier("STUDY", StudyInstanceUID="1.2.3"), MOVE_S)
    assert query.conditions == {"StudyInstanceUID": SingleValue("1.2.3")}


def test_response_carries_requested_keys_and_service_attributes() -> None:
    ds = _identifier("STUDY", PatientName="", StudyDate="", ModalitiesInStudy="")
    ds.ReferencedStudySequence = []
    ds.NumberOfStudyRelatedInstances = None
    query = parse_identifier(ds, FIND_S)
    row = {
        "PatientName": "Müller^Anna",
        "StudyDate": "20240425",
        "ModalitiesInStudy": ["CT", "MR"],
        "StudyInstanceUID": "1.2.3",
        "NumberOfStudyRelatedInstances": 12,
    }
    rsp = response_identifier(query, row, retrieve_ae_title="MEDSHARD")
    assert rsp.QueryRetrieveLevel == "STUDY"
    assert rsp.RetrieveAETitle == "MEDSHARD"
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert list(rsp.ModalitiesInStudy) == ["CT", "MR"]
    assert rsp.StudyInstanceUID == "1.2.3"  # unique key, even when not requested
    assert rsp.ReferencedStudySequence == []
    assert rsp.NumberOfStudyRelatedInstances == 12
    encoded = encode(rsp, False, True)  # as pynetdicom sends it
    assert encoded is not None and "Müller".encode() in encoded  # UTF-8, as ISO_IR 192 says


# --------------------------------------------------------------------------- statuses


def test_errors_map_to_statuses_in_one_table() -> None:
    assert status_code(InvalidDicomError("x"), "C-STORE") == 0xC000
    assert status_code(InvalidInputError("x"), "C-STORE") == 0xA900
    assert status_code(NoQuorumError("x"), "C-STORE") == 0xA700
    assert status_code(AccessDeniedError("x"), "C-FIND") == 0x0124
    assert status_code(InvalidInputError("x"), "C-FIND") == 0xA900
    assert status_code(StorageError("x"), "C-MOVE") == 0xA701
    assert status_code(MedshardError("x"), "C-GET") == 0xC001
    assert status_code(RuntimeError("bug"), "C-FIND") == 0xC001
    status = failure(InvalidInputError("é " * 60), "C-FIND")
    assert status.Status == 0xA900
    assert len(status.ErrorComment) <= 64 and status.ErrorComment.isascii()


def test_rejected_ingest_outcomes_map_back_to_error_classes() -> None:
    unreadable = IngestOutcome("rejected", "x", reason="not DICOM", code=Rejection.INVALID)
    conflict = IngestOutcome(
        "rejected", "x", sop_instance_uid="1.2", reason="...", code=Rejection.CONFLICT
    )
    identity = IngestOutcome(
        "rejected", "x", sop_instance_uid="1.2", reason="...", code=Rejection.IDENTITY
    )
    no_nodes = IngestOutcome(
        "rejected", "x", sop_instance_uid="1.2", reason="no quorum", code=Rejection.STORAGE
    )
    assert type(rejection_error(unreadable)) is InvalidDicomError
    assert type(rejection_error(conflict)) is InvalidInputError
    assert type(rejection_error(identity)) is IdentityConflictError
    assert isinstance(rejection_error(no_nodes), StorageError)


# --------------------------------------------------------------------------- SCP setup


def test_ae_accepts_storage_in_both_roles_and_the_decodable_syntaxes(tmp_path: Path) -> None:
    ae = build_ae(Settings(home=tmp_path))
    assert ae.require_calling_aet == ["NO-PEER-ALLOWED"]  # nobody until the catalog says
    by_uid = {str(cx.abstract_syntax): cx for cx in ae.supported_contexts}
    ct = by_uid["1.2.840.10008.5.1.4.1.1.2"]
    assert (ct.scu_role, ct.scp_role) == (True, True)
    assert {JPEG2000Lossless, RLELossless, ExplicitVRLittleEndian} <= set(ct.transfer_syntax)
    assert STORAGE_SYNTAXES[0] == ExplicitVRLittleEndian
    for uid in ("1.2.840.10008.1.1", f"{PATIENT_ROOT}.3", f"{STUDY_ROOT}.2"):
        assert uid in by_uid


# --------------------------------------------------------------------------- retrieval


def _match(sop_class: str, ts: str, n: int = 0) -> Match:
    return Match(f"1.2.{n}", sop_class, ts, f"key{n}")


def test_requested_contexts_exact_first_and_capped() -> None:
    matches = [
        _match("1.2.840.10008.5.1.4.1.1.4", str(JPEG2000Lossless), 1),
        _match("1.2.840.10008.5.1.4.1.1.4", str(ExplicitVRLittleEndian), 2),
        _match("1.2.840.10008.5.1.4.1.1.4", str(JPEG2000Lossless), 3),
    ]
    contexts = requested_contexts(matches)
    assert [list(cx.transfer_syntax) for cx in contexts] == [
        [JPEG2000Lossless],
        [ExplicitVRLittleEndian],
        ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"],
    ]
    many = [_match(f"1.2.840.10008.5.1.4.1.1.{i}", str(RLELossless), i) for i in range(200)]
    assert len(requested_contexts(many)) == MAX_CONTEXTS


def test_stored_instance_is_sent_byte_for_byte() -> None:
    """pydicom drops group lengths when it re-encodes; the pass-through keeps them."""
    path = shared_dicom("pydicom-data", "693_UNCI.dcm")  # has (gggg,0000) group lengths
    data = path.read_bytes()
    inst = StoredInstance.from_bytes(data)
    body = data[data_set_offset(data) :]
    install_passthrough()
    encode = pynetdicom_association.encode
    assert encode(inst, False, True, False) == body
    assert encode(Dataset(inst), False, True, False) != body  # what pynetdicom alone sends
    assert encode(inst, True, True, False) != body  # another syntax: re-encoded, not raw


def test_compressed_instance_is_decompressed_only_when_the_peer_needs_it() -> None:
    data = shared_dicom("transfer-syntaxes", "9.dcm").read_bytes()  # JPEG 2000 lossless
    sop = "1.2.840.10008.5.1.4.1.1.4"
    inst = StoredInstance.from_bytes(data)
    assert sendable(inst, {(sop, str(JPEG2000Lossless))}) is inst
    assert inst.file_meta.TransferSyntaxUID == JPEG2000Lossless
    out = sendable(inst, {(sop, str(ExplicitVRLittleEndian))})
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert pynetdicom_association.encode(out, False, True, False) != data[data_set_offset(data) :]


def test_data_set_offset_handles_files_without_preamble() -> None:
    data = shared_dicom("transfer-syntaxes", "1.dcm").read_bytes()
    offset = data_set_offset(data)
    assert data[offset : offset + 2] == b"\x08\x00"
    assert data_set_offset(data[128 + 4 :]) == offset - 132
    assert data_set_offset(data[offset:]) == 0


def test_big_endian_instance_is_made_little_endian_for_a_peer_without_it() -> None:
    data = shared_dicom("transfer-syntaxes", "3.dcm").read_bytes()  # explicit VR big endian
    sop = "1.2.840.10008.5.1.4.1.1.4"
    expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
    out = sendable(StoredInstance.from_bytes(data), {(sop, str(ExplicitVRLittleEndian))})
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    encoded = pynetdicom_association.encode(out, False, True, False)
    assert encoded is not None
    back = pydicom.dcmread(io.BytesIO(encoded), force=True)
    back.file_meta = pydicom.dataset.FileMetaDataset()
    back.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert (back.pixel_array == expected).all()
    assert back.PatientName == pydicom.dcmread(io.BytesIO(data)).PatientName


def test_keys_sent_as_un_are_answered_with_their_dictionary_vr() -> None:
    ds = _identifier("STUDY")
    ds.add_new(0x00100010, "UN", b"")  # PatientName, as an implicit-VR peer may send it
    query = parse_identifier(ds, FIND_S)
    assert (0x00100010, "PatientName", "PN") in query.requested
    rsp = response_identifier(query, {"PatientName": "Doe^J"}, retrieve_ae_title="M")
    assert rsp.PatientName == "Doe^J"
