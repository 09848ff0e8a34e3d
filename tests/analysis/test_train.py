"""Short CPU trainings: reproducibility, the package layout and an estimate that recomputes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medshard.analysis.calibration import adjust_to_prior
from medshard.analysis.cv import package_estimate
from medshard.analysis.model import load_model
from medshard.analysis.train import TrainConfig, pooled_data, train
from medshard.errors import AnalysisError


def _quick(npz: Path, out: Path, seed: int = 7, **kw: Any) -> dict[str, Any]:
    cfg = TrainConfig(
        data=npz, out=out, epochs=1, members=2, folds=2, seed=seed, train_limit=240, **kw
    )
    train(cfg, quiet=True)
    return json.loads((out / "model_card.json").read_text())


@pytest.fixture(scope="module")
def two_runs(
    npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("repro")
    return _quick(npz, root / "a"), _quick(npz, root / "b")


def test_same_seed_gives_identical_weights_and_estimates(
    two_runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = two_runs
    assert a["sha256"] == b["sha256"]  # bit-identical weights
    assert a["expected_performance"] == b["expected_performance"]
    assert a["threshold"] == b["threshold"] and a["calibration"] == b["calibration"]


def test_training_restores_global_torch_settings(npz: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    _quick(npz, tmp_path / "c", seed=8)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_package_is_complete_loadable_and_self_consistent(
    two_runs: tuple[dict[str, Any], dict[str, Any]], npz: Path
) -> None:
    card = two_runs[0]
    out = Path(card["training"]["command"].split("--out ")[1].split()[0])
    for name in (
        "model.pt",
        "sha256",
        "model_card.json",
        "MODEL_CARD.md",
        "training_curves.png",
        "reliability.png",
        "cv_roc.png",
        "cv_predictions.npz",
    ):
        assert (out / name).is_file(), name
    model = load_model(out)
    assert model.sha256 == card["sha256"]
    assert model.calibrated and model.prior == card["prior"]["default"] == 0.74
    # The card's threshold is its log-likelihood-ratio cut-off at its default prior.
    llr_cut = card["operating_point"]["threshold_llr"]
    assert (
        model.threshold
        == card["threshold"]
        == pytest.approx(float(adjust_to_prior(np.array([llr_cut]), 0.74)[0]), abs=1e-12)
    )
    assert card["data"]["licence"] == "CC BY 4.0"
    assert "MedMNIST v2" in card["data"]["citation"]
    assert {"torch", "monai", "numpy", "python"} <= set(card["software"])
    assert card["training"]["train_limit"] == 240
    # Expected performance is cross-validated, and recomputes from the shipped predictions.
    est = card["expected_performance"]
    assert est["folds"] == 2 and est["n"] == card["data"]["pooled"]["n"]
    again = package_estimate(out, card, npz)
    assert again["matches_card"] and again["labels_checked"]
    md = (out / "MODEL_CARD.md").read_text()
    assert "Expected performance (cross-validated)" in md and "ECE" in md


def test_pooled_data_keeps_both_classes_and_provenance(npz: Path) -> None:
    pooled = pooled_data(npz, limit=100)
    assert 90 <= pooled.labels.size <= 110
    assert 0.8 < pooled.labels.mean() < 0.95
    assert {s for s, _ in pooled.origin} == {"train", "val"}
    assert pooled.counts["val"] == {"n": 524, "normal": 135, "pneumonia": 389}


def test_bad_settings_are_refused(npz: Path, tmp_path: Path) -> None:
    with pytest.raises(AnalysisError, match="folds"):
        train(TrainConfig(data=npz, out=tmp_path / "x", folds=1), quiet=True)
    with pytest.raises(AnalysisError, match="prior"):
        train(TrainConfig(data=npz, out=tmp_path / "x", prior=1.0), quiet=True)
