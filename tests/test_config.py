"""Settings live in one TOML file in the home and round-trip through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from medshard.config import AnalysisRule, load_settings, new_settings
from medshard.errors import ConfigError


def test_settings_round_trip(tmp_path: Path) -> None:
    settings = new_settings(tmp_path, replicas=5, write_quorum=3)
    settings.cors_origins = ['https://viewer.example "A"']
    settings.dimse_destinations = {"ORTHANC": ["127.0.0.1", 4242]}
    settings.analysis_rules = [AnalysisRule(model="m", modalities=["DX"])]
    settings.save()
    loaded = load_settings(tmp_path)
    assert loaded == settings


def test_bad_settings_are_refused_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="medshard init"):
        load_settings(tmp_path)
    with pytest.raises(ConfigError, match="write_quorum"):
        new_settings(tmp_path, replicas=2, write_quorum=3)
    (tmp_path / "medshard.toml").write_text("replicas = 3\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_settings(tmp_path)
