"""DIMSE retrieves read from the replicas nearest the calling AE's site.

The two-site layout of :mod:`tests.cluster.test_near_reads`: st-marys (the test account's
site) and far-away, whose nodes the service reaches only through a delaying proxy, so a read
that ignored the caller would prefer st-marys' nodes by measured latency. Each site's PACS
(its own service account and calling AE) imports its own studies, and every object has a copy
at each site. A C-GET from far-away's AE is then served wholly by far-away's nodes, one from
st-marys' AE by st-marys' nodes: the node-side GET counters say which (no timing).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from medshard.demo import sample_dicom_dir
from tests.cluster.test_near_reads import FAR, NEAR, gets, sites_of_copies, two_sites
from tests.conftest import Service, start_service

FAR_ACCOUNT, FAR_AE, NEAR_AE = "far-pacs", "FARPACS", "GETSCU"
#: Which sample instances each site's PACS sends (each its own study).
NEAR_FILES = ("JPEG-LL.dcm", "OBXXXX1A_rle.dcm")
FAR_FILES = ("SC_rgb.dcm", "emri_small.dcm", "liver_rle.dcm")


def stage(files: tuple[str, ...], target: Path) -> dict[str, Dataset]:
    """Copy sample files into ``target``; their headers by SOP Instance UID."""
    target.mkdir()
    headers = {}
    for name in files:
        shutil.copy(sample_dicom_dir() / name, target / name)
        ds = pydicom.dcmread(target / name, stop_before_pixels=True)
        headers[str(ds.SOPInstanceUID)] = ds
    return headers


def c_get(service: Service, calling: str, instances: dict[str, Dataset]) -> set[str]:
    """C-GET each instance's study as ``calling``; the SOP Instance UIDs received."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    pairs = {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in instances.values()}
    for sop_class, syntax in sorted(pairs):  # each in its stored syntax: sent as stored
        ae.add_requested_context(sop_class, [syntax])
    roles = [build_role(s, scp_role=True) for s in sorted({s for s, _ in pairs})]
    received: set[str] = set()

    def on_store(event: evt.Event) -> int:
        received.add(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        service.dimse_port,
        ae_title=service.ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        for study in sorted({str(d.StudyInstanceUID) for d in instances.values()}):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study
            statuses = [
                int(status.Status)
                for status, _ident in assoc.send_c_get(
                    query, StudyRootQueryRetrieveInformationModelGet
                )
                if status
            ]
            assert statuses and statuses[-1] == 0x0000, (study, [hex(s) for s in statuses])
    finally:
        assoc.release()
    return received


def test_dimse_c_get_reads_from_the_calling_sites_nodes(tmp_path: Path) -> None:
    with two_sites(tmp_path) as (dep, near_nodes, far_nodes):
        # far-away's PACS: a service account of that site, its calling AE allowed as it
        dep.cli("user", "add", FAR_ACCOUNT, "--role", "service", "--site", FAR)
        far_token = dep.cli_json("token", "create", FAR_ACCOUNT)["token"]
        dep.cli("dicom", "allow", FAR_AE, "--user", FAR_ACCOUNT)
        near_sent = stage(NEAR_FILES, tmp_path / "near")
        far_sent = stage(FAR_FILES, tmp_path / "far")
        dep.cli("import", str(tmp_path / "near"))  # as the test account, of st-marys
        dep.cli("import", str(tmp_path / "far"), token=far_token)
        assert all(sites == {NEAR, FAR} for sites in sites_of_copies(dep))

        service = start_service(dep, heartbeat_interval_s=3600.0, scrub_bytes_per_s=0)
        try:
            for calling, sent, served_by in (
                (FAR_AE, far_sent, far_nodes),
                (NEAR_AE, near_sent, near_nodes),
            ):
                before, before_site = gets(dep, dep.nodes), gets(dep, served_by)
                assert c_get(service, calling, sent) == set(sent), calling
                served = gets(dep, dep.nodes) - before
                assert served >= len(sent), calling  # every instance's chunks were fetched ...
                assert gets(dep, served_by) - before_site == served, calling  # ... at its site
        finally:
            service.process.stop()
