"""The worker applies the card's operating point to calibrated probabilities, per site prior,
and the finding and its SR carry exactly what was applied (real node processes)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from medshard.analysis.findings import finding_json, record_outcome
from medshard.analysis.model import load_model
from medshard.analysis.preprocess import prepare_dataset
from medshard.analysis.queue import DONE
from medshard.analysis.worker import Analyser, prior_for
from medshard.catalog.models import Finding
from medshard.cluster.archive import Archive
from medshard.config import AnalysisRule, load_settings, new_settings, settings_from_dict
from medshard.errors import ConfigError
from tests.conftest import TEST_SITE, Deployment


def _numbers(ds: pydicom.Dataset) -> dict[str, str]:
    """Concept name -> value of every NUM and CODE item in an SR's content tree."""
    found: dict[str, str] = {}
    for item in ds.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            found[name] = str(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            found.setdefault(name, item.ConceptCodeSequence[0].CodeMeaning)
            if name == "Measurement Method":
                found[item.ConceptCodeSequence[0].CodeMeaning] = "method"
        found.update(_numbers(item))
    return found


def test_prior_for_prefers_the_site_then_the_rule_then_the_card() -> None:
    rule = AnalysisRule(prior=0.6, site_priors={"rural": 0.3, "unset": 0.0})
    assert prior_for(rule, "rural") == 0.3
    assert prior_for(rule, "city") == 0.6
    assert prior_for(rule, "unset") is None  # 0 means "not set": the card's default
    assert prior_for(AnalysisRule(), "city") is None
    assert prior_for(None, "rural") is None


def test_worker_applies_the_cards_operating_point_at_each_sites_prior(
    sqlite_deployment: Deployment, demo_files: list[Path], tmp_path: Path
) -> None:
    dep = sqlite_deployment
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for p in demo_files:
        (inbox / p.name).write_bytes(p.read_bytes())
    dep.cli("import", str(inbox))  # as the test account, so the images come from TEST_SITE
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in demo_files]
    model = load_model("pneumonia")
    card = model.card

    with Archive.open(dep.home) as archive:
        analyser = Analyser(archive)
        default = analyser.analyse(sops, "pneumonia", AnalysisRule())
        local = analyser.analyse(sops, "pneumonia", AnalysisRule(site_priors={TEST_SITE: 0.5}))
        for path, a, b in zip(demo_files, default, local, strict=True):
            assert a.state == b.state == DONE
            fa, fb = a.finding, b.finding
            assert fa is not None and fb is not None
            x = prepare_dataset(pydicom.dcmread(path))[None]
            # Default prior: exactly the card's threshold, on the calibrated probability.
            assert fa.threshold == card["threshold"] and fa.prior == card["prior"]["default"]
            assert fa.probability == pytest.approx(float(model.predict_proba(x)[0]), abs=1e-6)
            assert fa.positive == (fa.probability >= fa.threshold)
            assert fa.operating_point == card["operating_point"]["name"] and fa.calibrated
            # The site's prior: its own probability and threshold, the same call.
            assert fb.prior == 0.5 and fb.threshold == model.threshold_at(0.5)
            assert fb.probability == pytest.approx(float(model.predict_proba(x, 0.5)[0]), abs=1e-6)
            assert fb.positive == fa.positive
            assert fb.probability != fa.probability

        # The stored finding says what its numbers mean; so does the SR stored with the study.
        record_outcome(archive.catalog, default[0], model="pneumonia")
        with archive.catalog.session() as session:
            row = session.query(Finding).filter_by(sop_instance_uid=sops[0]).one()
            api = finding_json(row)
        assert api["calibrated"] is True
        assert api["operating_point"] == card["operating_point"]["name"]
        assert api["prior"] == pytest.approx(card["prior"]["default"], abs=1e-6)
        f = default[0].finding
        assert f is not None
        sr_key = archive.store.load_key_of_instance(f.sr_sop_instance_uid)
        sr = pydicom.dcmread(io.BytesIO(archive.store.read_all(sr_key)))
    numbers = _numbers(sr)
    assert float(numbers["Calibrated probability of pneumonia"]) == pytest.approx(f.probability)
    assert float(numbers["Decision threshold"]) == pytest.approx(card["threshold"])
    assert float(numbers["Assumed prevalence of pneumonia"]) == pytest.approx(0.74)
    assert numbers[f"Operating point: {card['operating_point']['name']}"] == "method"
    assert numbers["Pneumonia"] == ("Present" if f.positive else "Absent")


def test_site_priors_round_trip_through_the_settings_file(tmp_path: Path) -> None:
    settings = new_settings(tmp_path)
    settings.analysis_rules = [AnalysisRule(prior=0.6, site_priors={"rural-clinic": 0.35})]
    settings.save()
    [rule] = load_settings(tmp_path).analysis_rules
    assert rule.prior == 0.6 and rule.site_priors == {"rural-clinic": 0.35}
    with pytest.raises(ConfigError, match="prior"):
        settings_from_dict(tmp_path, {"analysis_rules": [{"site_priors": {"x": 1.0}}]})
