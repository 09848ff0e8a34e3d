from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medshard.analysis.dataset import Split
from medshard.analysis.model import load_model, models_dir, shipped_models
from medshard.analysis.preprocess import prepare_dataset, scale_uint8
from medshard.errors import AnalysisError


def test_shipped_model_is_small_verified_and_predicts(val_split: Split) -> None:
    assert "pneumonia" in shipped_models()
    model = load_model("pneumonia")
    assert model.path == models_dir() / "pneumonia"
    assert (model.path / "model.pt").stat().st_size < 5 * 1024 * 1024
    assert model.model_id == f"pneumonia:{model.sha256[:12]}"
    assert 0.0 < model.threshold < 1.0
    for name in ("MODEL_CARD.md", "training_curves.png", "val_roc.png"):
        assert (model.path / name).is_file()
    probs = model.predict_proba(scale_uint8(val_split.images[:40]))
    assert probs.shape == (40,) and ((probs >= 0) & (probs <= 1)).all()
    # Chunking must not change results: one image at a time gives the same numbers.
    single = np.concatenate(
        [model.predict_proba(scale_uint8(val_split.images[i : i + 1])) for i in range(3)]
    )
    np.testing.assert_allclose(single, probs[:3], rtol=0, atol=1e-6)


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
