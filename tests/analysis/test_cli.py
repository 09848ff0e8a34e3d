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

KEYS = {"accuracy", "precision", "recall", "f1", "auc", "n", "threshold", "confusion_matrix"}


@pytest.fixture(scope="module")
def eval_val_json(npz: Path) -> dict[str, Any]:
    result = runner.invoke(
        ai_app, ["eval", "--model", "pneumonia", "--data", str(npz), "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_json_has_the_documented_keys(eval_val_json: dict[str, Any]) -> None:
    assert set(eval_val_json) >= KEYS
    assert {"accuracy_ci95", "auc_ci95", "sensitivity", "specificity"} <= set(eval_val_json)
    assert eval_val_json["n"] == 524
    (tn, fp), (fn, tp) = eval_val_json["confusion_matrix"]
    assert tn + fp == 135 and fn + tp == 389


def test_eval_reproduces_the_model_card(eval_val_json: dict[str, Any]) -> None:
    card = load_model("pneumonia").card
    figures = card["validation"]
    assert eval_val_json["confusion_matrix"] == figures["confusion_matrix"]
    assert eval_val_json["threshold"] == card["threshold"]
    for key in ("accuracy", "precision", "recall", "f1", "specificity"):
        assert eval_val_json[key] == figures[key], key
    for key in ("auc",):
        assert eval_val_json[key] == pytest.approx(figures[key], abs=1e-9)
    assert eval_val_json["accuracy_ci95"] == figures["accuracy_ci95"]
    assert eval_val_json["auc_ci95"] == pytest.approx(figures["auc_ci95"], abs=1e-9)


def test_eval_table_and_errors(npz: Path) -> None:
    result = runner.invoke(ai_app, ["eval", "--model", "pneumonia", "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "[[" in result.stdout and "[val]" in result.stdout
    missing = runner.invoke(ai_app, ["eval", "--model", "pneumonia", "--data", str(npz)])
    assert missing.exit_code == 2
    assert "no split 'test'" in missing.output
    unknown = runner.invoke(ai_app, ["eval", "--model", "no-such-model", "--split", "val"])
    assert unknown.exit_code == 2 and "no model" in unknown.output


def test_train_command_writes_a_package(npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    result = runner.invoke(
        ai_app,
        ["train", "--data", str(npz), "--out", str(out), "--epochs", "1", "--members", "1",
         "--limit", "256", "--seed", "3", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((out / "model_card.json").read_text())
    assert "--epochs 1" in card["training"]["command"]
    evaluated = runner.invoke(ai_app, ["eval", "--model", str(out), "--split", "val", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == card["validation"]["accuracy"]
