from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medshard.analysis.dataset import available_splits, load_split, sample_npz_path
from medshard.errors import InvalidInputError


def test_bundled_copy_is_inside_the_package() -> None:
    path = sample_npz_path()
    assert path.is_file()
    assert "shared" not in path.parts
    assert (path.parent / "README.md").read_text().count("CC BY 4.0") >= 1


def test_splits_have_documented_shapes_and_balance(npz: Path) -> None:
    assert available_splits(npz) == ["train", "val"]
    train = load_split(npz, "train")
    val = load_split(npz, "val")
    assert train.images.shape == (3882, 28, 28) and train.images.dtype == np.uint8
    assert train.class_counts() == (388, 3494)
    assert val.class_counts() == (135, 389)


def test_missing_split_names_what_is_there(npz: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no split 'test'.*train, val"):
        load_split(npz, "test")


def test_wrong_shape_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, val_images=np.zeros((2, 32, 32), np.uint8), val_labels=np.zeros((2, 1)))
    with pytest.raises(InvalidInputError, match="expected"):
        load_split(bad, "val")
    with pytest.raises(InvalidInputError, match="no such data file"):
        load_split(tmp_path / "absent.npz", "val")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match="not a readable"):
        load_split(tmp_path / "junk.npz", "val")
