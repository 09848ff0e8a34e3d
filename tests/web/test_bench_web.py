"""`medshard bench web` at a small size: it drives the real viewer to every slice loaded and
reports positive timings (no thresholds here: figures are the benchmark's business)."""

from __future__ import annotations

from pathlib import Path

from medshard.bench.web import run_web_bench
from tests.web.conftest import CHROMIUM, _missing, require_bundle


def test_bench_web_reports_first_image_and_every_slice_loaded() -> None:
    require_bundle()
    if not Path(CHROMIUM).is_file():
        _missing(f"chromium not found at {CHROMIUM}: apt-get install chromium")
    try:
        import playwright  # noqa: F401
    except ImportError:
        _missing("playwright is not installed: pip install -e '.[dev]'")
    result = run_web_bench(slices=20, runs=1, nodes=3, chromium=CHROMIUM)
    assert result["workload"]["slices"] == 20
    assert result["conditions"]["replicas_k"] == 3 and result["conditions"]["browser"]
    for mode in ("cold", "warm"):
        summary = result[mode]
        assert summary["t_first_image_ms"] > 0
        assert summary["t_all_slices_ms"] >= summary["t_first_image_ms"]
        (run,) = summary["runs"]
        assert run["slices_loaded"] == 20
        assert run["frame_requests"] >= 20
    assert isinstance(result["pass"], bool)
