"""`medshard bench catalog --prefill`: the record path measured over a bulk-prefilled catalog."""

from __future__ import annotations

from sqlalchemy import func, select

from medshard.bench.catalog import PREFILL_SHAPE, _generate_uid, run_catalog_bench
from medshard.bench.catalog_prefill import prefill
from medshard.catalog.models import CareSite, Instance, Patient, Replica, Series, Study
from medshard.catalog.writes import patient_key_row
from medshard.cluster.archive import Archive
from medshard.cluster.nodes import register_node
from medshard.home import init_home


def test_prefill_leaves_the_rows_the_record_path_would(tmp_path) -> None:
    settings, _ = init_home(tmp_path / "home")
    archive = Archive(settings, probe=False)
    try:
        for i in range(3):
            register_node(
                archive.catalog, name=f"node{i}", url=f"http://127.0.0.1:{9 + i}",
                site=PREFILL_SHAPE.sites[i], capacity_bytes=0,
            )  # fmt: skip
        made = prefill(
            archive, PREFILL_SHAPE, instances=90, seed=3, first_patient=1, uid=_generate_uid
        )
        with archive.catalog.session() as session:
            count = lambda model: session.scalar(select(func.count()).select_from(model))  # noqa: E731
            assert made == 3 == count(Patient) == count(CareSite)  # 40 instances a patient
            assert count(Study) == 6 and count(Series) == 12
            assert count(Instance) == 90 and count(Replica) == 270
            row = patient_key_row(session, "BENCH-3-0000001")
        assert row is not None  # named as the record path's bench names its patients
        assert len(archive.store.patient_key(row)) == 32  # a real wrapped key: it unwraps
    finally:
        archive.close()


def test_catalog_bench_compares_the_record_path_over_a_prefilled_catalog() -> None:
    result = run_catalog_bench(instances=60, prefill=400, queries=5, threads=4)
    assert result["failed"] == 0
    scale = result["at_scale"]
    assert scale["catalog_instances"] == 520 == result["qido_catalog_instances"]
    assert scale["ingest_inst_per_s"] > 0 and scale["over_empty_catalog"] > 0
    assert set(result["qido"]) == {"by_patient_id", "by_date_range", "by_modality"}
    assert result["qido"]["by_modality"]["mean_results"] > 0  # the doctor sees prefilled studies
