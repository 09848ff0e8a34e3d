"""The one accessor for test data in ../shared/data (beside the checkout, never at run time)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dicom(*parts: str) -> Path:
    """A path under shared/data/dicom; skips the test if the shared data is absent."""
    path = SHARED.joinpath("dicom", *parts)
    if not path.exists():
        pytest.skip(f"shared test data missing: {path}")
    return path


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data missing: {path}")
    return path
