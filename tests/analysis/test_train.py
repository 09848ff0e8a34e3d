"""Short CPU trainings: reproducibility and the package layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from medshard.analysis.model import load_model
from medshard.analysis.train import TrainConfig, train


def _quick(npz: Path, out: Path, seed: int = 7) -> dict[str, Any]:
    cfg = TrainConfig(data=npz, out=out, epochs=1, members=1, seed=seed, train_limit=384)
    train(cfg, quiet=True)
    return json.loads((out / "model_card.json").read_text())


@pytest.fixture(scope="module")
def two_runs(
    npz: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], dict[str, Any]]:
    root = tmp_path_factory.mktemp("repro")
    return _quick(npz, root / "a"), _quick(npz, root / "b")


def test_same_seed_gives_identical_validation_metrics(
    two_runs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = two_runs
    assert a["validation"] == b["validation"]
    assert a["threshold"] == b["threshold"]
    assert a["sha256"] == b["sha256"]  # bit-identical weights


def test_training_restores_global_torch_settings(npz: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    _quick(npz, tmp_path / "c", seed=8)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_package_is_complete_and_loadable(
    two_runs: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    card = two_runs[0]
    out = Path(card["training"]["command"].split("--out ")[1].split()[0])
    for name in (
        "model.pt",
        "sha256",
        "model_card.json",
        "MODEL_CARD.md",
        "training_curves.png",
        "val_roc.png",
    ):
        assert (out / name).is_file(), name
    model = load_model(out)
    assert model.sha256 == card["sha256"]
    assert model.threshold == card["threshold"]
    assert card["data"]["licence"] == "CC BY 4.0"
    assert "MedMNIST v2" in card["data"]["citation"]
    assert {"torch", "monai", "numpy", "python"} <= set(card["software"])
    assert card["training"]["train_limit"] == 384
