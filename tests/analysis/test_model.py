from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medshard.analysis.calibration import reliability
from medshard.analysis.cv import package_estimate
from medshard.analysis.dataset import Split
from medshard.analysis.model import load_model, models_dir, shipped_models
from medshard.analysis.preprocess import prepare_dataset, scale_uint8
from medshard.errors import AnalysisError


def test_shipped_model_is_small_verified_calibrated_and_predicts(val_split: Split) -> None:
    assert "pneumonia" in shipped_models()
    model = load_model("pneumonia")
    assert model.path == models_dir() / "pneumonia"
    assert (model.path / "model.pt").stat().st_size < 5 * 1024 * 1024
    assert sum(p.stat().st_size for p in model.path.iterdir()) < 3 * 1024 * 1024
    assert model.model_id == f"pneumonia:{model.sha256[:12]}"
    assert model.calibrated and 0.0 < model.threshold < 1.0
    for name in ("MODEL_CARD.md", "training_curves.png", "reliability.png", "cv_roc.png"):
        assert (model.path / name).is_file()
    probs = model.predict_proba(scale_uint8(val_split.images[:40]))
    assert probs.shape == (40,) and ((probs >= 0) & (probs <= 1)).all()
    # Chunking must not change results: one image at a time gives the same numbers.
    single = np.concatenate(
        [model.predict_proba(scale_uint8(val_split.images[i : i + 1])) for i in range(3)]
    )
    np.testing.assert_allclose(single, probs[:3], rtol=0, atol=1e-6)


def test_fused_inference_equals_the_stored_ensemble(val_split: Split) -> None:
    fused, plain = load_model("pneumonia"), load_model("pneumonia", fuse=False)
    x = scale_uint8(val_split.images[:100])
    np.testing.assert_allclose(fused.raw_proba(x), plain.raw_proba(x), rtol=0, atol=1e-5)


def test_priors_move_probabilities_but_not_calls(val_split: Split) -> None:
    model = load_model("pneumonia")
    card = model.card
    assert model.threshold_at(None) == model.threshold_at(card["prior"]["default"])
    assert model.threshold_at(None) == card["threshold"]  # exactly the card's number
    x = scale_uint8(val_split.images[:200])
    calls = model.predict(x)
    llr = model.llr(x)
    np.testing.assert_allclose(model.probability(llr), model.predict_proba(x), atol=1e-12)
    for prior in (0.3, 0.5, 0.9):
        p = model.probability(llr, prior)
        assert model.threshold_at(prior) != model.threshold
        assert np.array_equal((p >= model.threshold_at(prior)).astype(np.int64), calls)
    # A higher prior means a higher probability for every image.
    assert (model.probability(llr, 0.9) > model.probability(llr, 0.3)).all()


def test_shipped_estimate_is_cross_validated_and_recomputes(npz: Path) -> None:
    model = load_model("pneumonia")
    est = model.card["expected_performance"]
    assert est["folds"] == 5 and est["n"] == 3882 + 524
    again = package_estimate(model.path, model.card, npz)
    assert again["matches_card"] and again["labels_checked"]
    with np.load(model.path / "cv_predictions.npz") as cv:
        folds, in_fit, in_cal = cv["folds"], cv["in_fit"], cv["in_cal"]
    for f in range(5):
        test = folds == f
        assert not (in_fit[f] & test).any() and not (in_cal[f] & test).any()
        assert not (in_fit[f] & in_cal[f]).any()
        assert (in_fit[f] | in_cal[f] | test).all()
    # Calibration (fitted per fold on its calibration part) lowers the held-out error.
    cal = est["calibration"]
    assert cal["ece_calibrated"] < cal["ece_uncalibrated"]
    assert cal["ece_at_deployment_prior"] < cal["ece_uncalibrated_at_deployment_prior"]
    # A regression guard, far below what the card states, not a pinned figure.
    assert est["metrics"]["auc"] > 0.97 and est["metrics"]["balanced_accuracy"] > 0.9


def test_calibrated_probabilities_are_calibrated_on_validation(val_split: Split) -> None:
    """Val has ~the deployment prior (74%); the shipped probabilities (default prior) should be
    close to calibrated there. Val was in the pooled data, so this is a sanity check, not an
    estimate; the cross-validated ECE is the estimate."""
    model = load_model("pneumonia")
    raw = model.raw_proba(scale_uint8(val_split.images))
    assert model.calibration is not None
    p = model.probability(model.calibration.llr(raw))
    assert reliability(val_split.labels, p)["ece"] < reliability(val_split.labels, raw)["ece"]


def test_bad_batches_and_unknown_models_are_refused() -> None:
    model = load_model("pneumonia")
    with pytest.raises(AnalysisError, match=r"\(N, 1, 28, 28\)"):
        model.predict_proba(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(AnalysisError, match=r"no model 'nope'.*shipped: .*pneumonia"):
        load_model("nope")


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "pneumonia"
    shutil.copytree(models_dir() / "pneumonia", copy)
    data = bytearray((copy / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(AnalysisError, match="does not match"):
        load_model(copy)


def test_a_card_whose_threshold_is_not_its_operating_point_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "pneumonia"
    shutil.copytree(models_dir() / "pneumonia", copy)
    card = json.loads((copy / "model_card.json").read_text())
    card["threshold"] = card["threshold"] + 0.01
    (copy / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(AnalysisError, match="not its operating point"):
        load_model(copy)


def test_demo_dicoms_get_the_same_calls_as_their_source_images(
    demo_files: list[Path], val_split: Split
) -> None:
    model = load_model("pneumonia")
    indices = [int(p.stem.split("_")[1]) for p in demo_files]
    from_dicom = model.predict_proba(
        np.stack([prepare_dataset(pydicom.dcmread(p)) for p in demo_files])
    )
    from_npz = model.predict_proba(scale_uint8(val_split.images[indices]))
    np.testing.assert_allclose(from_dicom, from_npz, atol=0.05)
    assert ((from_dicom >= model.threshold) == (from_npz >= model.threshold)).all()
