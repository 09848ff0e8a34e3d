"""Shared fixtures of the analysis tests: the bundled data and demo DICOM files."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from medshard.analysis.dataset import Split, load_split, sample_npz_path
from medshard.analysis.synth import chest_xray_dicoms


@pytest.fixture(scope="session")
def npz() -> Path:
    return sample_npz_path()


@pytest.fixture(scope="session")
def val_split(npz: Path) -> Split:
    return load_split(npz, "val")


@pytest.fixture(scope="session")
def demo_files(npz: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return chest_xray_dicoms(npz, "val", count=4, out_dir=tmp_path_factory.mktemp("demo"))


@pytest.fixture()
def demo_ds(demo_files: list[Path]) -> pydicom.Dataset:
    """A fresh copy of the first demo instance, safe to modify."""
    return pydicom.dcmread(demo_files[0])
