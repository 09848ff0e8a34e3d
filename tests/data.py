"""The one accessor for test data in ../shared/data (beside the checkout, never at run time).

Missing data skips a test on a developer's machine, and fails it under ``CI=true``: CI must
never pass by skipping what it was meant to check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_dicom(*parts: str) -> Path:
    """A path under shared/data/dicom; skips the test if the shared data is absent."""
    return shared_data("dicom", *parts)


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared test data missing under CI: {path}")
        pytest.skip(f"shared test data missing: {path}")
    return path
