"""``ai eval`` / ``ai train`` through typer, as a user would run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medshard.analysis.cli import ai_app
from medshard.analysis.model import load_model

runner = CliRunner()

INTERVALS = ("accuracy", "auc", "precision", "recall", "f1", "balanced_accuracy")


@pytest.fixture(scope="module")
def eval_json(npz: Path) -> dict[str, Any]:
    result = runner.invoke(
        ai_app,
        ["eval", "--model", "pneumonia", "--data", str(npz), "--json", "--latency-runs", "30"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_reports_the_cross_validated_estimate_ece_and_latency(
    eval_json: dict[str, Any],
) -> None:
    card = load_model("pneumonia").card
    est = card["expected_performance"]
    for key in INTERVALS:
        lo, hi = eval_json[f"{key}_ci95"]
        assert lo <= eval_json[key] <= hi, key
        assert eval_json[key] == pytest.approx(est["metrics"][key], abs=1e-12), key
        assert eval_json[f"{key}_ci95"] == pytest.approx(est["ci95"][key], abs=1e-12)
    assert eval_json["ece"] == pytest.approx(est["calibration"]["ece_calibrated"], abs=1e-12)
    assert eval_json["cross_validation"]["matches_card"] is True
    assert eval_json["n"] == 4406 and eval_json["threshold"] == card["threshold"]
    assert eval_json["operating_point"]["name"] == card["operating_point"]["name"]
    latency = eval_json["latency_ms"]
    assert latency["runs"] == 30 and 0 < latency["p50"] <= latency["p90"]
    assert "DICOM" in latency["includes"]


def test_eval_on_a_split_uses_the_operating_point_and_flags_seen_data(npz: Path) -> None:
    result = runner.invoke(
        ai_app,
        ["eval", "--data", str(npz), "--split", "val", "--json", "--latency-runs", "0"],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    split = out["split"]
    model = load_model("pneumonia")
    assert split["n"] == 524 and split["threshold"] == model.threshold
    assert split["seen_in_training"] is True  # val is part of the pooled training data
    assert split["calibrated"] is True and 0.0 <= split["ece"] <= 1.0
    (tn, fp), (fn, tp) = split["confusion_matrix"]
    assert tn + fp == 135 and fn + tp == 389
    assert "latency_ms" not in out


def test_eval_table_and_errors(npz: Path) -> None:
    result = runner.invoke(ai_app, ["eval", "--model", "pneumonia", "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    assert "cross-validation" in result.stdout and "ECE" in result.stdout
    assert "p50" in result.stdout
    missing = runner.invoke(
        ai_app, ["eval", "--data", str(npz), "--split", "test", "--latency-runs", "0"]
    )
    assert missing.exit_code == 2
    assert "no split 'test'" in missing.output
    unknown = runner.invoke(ai_app, ["eval", "--model", "no-such-model"])
    assert unknown.exit_code == 2 and "no model" in unknown.output


def test_train_command_writes_a_package_that_eval_reads(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = runner.invoke(
        ai_app,
        ["train", "--data", str(npz), "--out", str(out), "--epochs", "1", "--members", "1",
         "--limit", "200", "--folds", "2", "--seed", "3", "--min-sensitivity", "0.9",
         "--augment", "rotate_deg=5", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model_card.json").read_text())
    assert "--epochs 1" in card["training"]["command"]
    assert "--augment rotate_deg=5.0" in card["training"]["command"]
    assert card["operating_point"]["name"] == "sensitivity >= 0.9"
    evaluated = runner.invoke(
        ai_app, ["eval", "--model", str(out), "--json", "--latency-runs", "0"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    out_json = json.loads(evaluated.stdout)
    assert out_json["accuracy"] == card["expected_performance"]["metrics"]["accuracy"]
    bad = runner.invoke(ai_app, ["train", "--out", str(out), "--augment", "spin=3"])
    assert bad.exit_code != 0 and "augment" in bad.output
