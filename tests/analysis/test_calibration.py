"""Calibration, prior adjustment and calibration error, on data with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from medshard.analysis.calibration import (
    Calibration,
    adjust_to_prior,
    ece,
    fit_calibration,
    prior_weights,
    reliability,
    sigmoid,
)
from medshard.errors import AnalysisError


def _overconfident(n: int, seed: int, prior: float = 0.88) -> tuple[np.ndarray, np.ndarray]:
    """Labels and raw scores with a known truth: x ~ N(+-1, 1) has log-likelihood ratio 2x,
    and the "model" reports sigmoid(3 * 2x + 1.5), overconfident and biased towards pneumonia
    like class-weighted training on 88% pneumonia data."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior).astype(np.int64)
    llr = 2.0 * rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    return y, sigmoid(3.0 * llr + 1.5)


def test_calibration_lowers_ece_on_held_out_data() -> None:
    y_fit, raw_fit = _overconfident(4000, seed=1)
    y_test, raw_test = _overconfident(4000, seed=2)
    data_prior = float(y_fit.mean())
    cal = fit_calibration(y_fit, raw_fit)
    calibrated = adjust_to_prior(cal.llr(raw_test), data_prior)
    before, after = ece(y_test, raw_test), ece(y_test, calibrated)
    assert after < before / 3
    assert after < 0.03
    # Equal class weights make the fit a likelihood ratio: the overconfidence and the bias
    # are undone up to sampling error.
    assert cal.slope == pytest.approx(1 / 3, rel=0.1)
    assert cal.intercept == pytest.approx(-0.5, abs=0.1)


def test_prior_adjustment_is_calibrated_at_another_prior() -> None:
    """Probabilities adjusted to a deployment prior are calibrated on data re-weighted to it,
    and the plain ones (for the training prior) are not."""
    y_fit, raw_fit = _overconfident(4000, seed=3)
    y, raw = _overconfident(6000, seed=4)
    cal = fit_calibration(y_fit, raw_fit)
    weights = prior_weights(y, 0.5)
    assert float((weights * y).sum() / weights.sum()) == pytest.approx(0.5)
    at_half = adjust_to_prior(cal.llr(raw), 0.5)
    at_data = adjust_to_prior(cal.llr(raw), float(y.mean()))
    assert ece(y, at_half, weights=weights) < 0.03
    assert ece(y, at_data, weights=weights) > 2 * ece(y, at_half, weights=weights)
    # The ranking, and therefore any likelihood-ratio cut-off's calls, does not move.
    assert (np.argsort(at_half, kind="stable") == np.argsort(at_data, kind="stable")).all()


def test_perfectly_separated_scores_still_give_a_finite_calibration() -> None:
    y = np.array([0] * 20 + [1] * 80)
    raw = np.where(y == 1, 0.999, 0.01)
    cal = fit_calibration(y, raw)
    assert np.isfinite([cal.slope, cal.intercept]).all() and cal.slope > 0
    p = adjust_to_prior(cal.llr(raw), 0.5)
    assert 0.5 < p[y == 1].min() < 1.0 and 0.0 < p[y == 0].max() < 0.5


def test_ece_and_reliability_bins() -> None:
    y = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95, 0.5, 0.5, 0.5, 0.5])
    rel = reliability(y, p, bins=10)
    assert [b["n"] for b in rel["bins"]] == [2, 4, 2]
    # bins: 0.05 vs 0/2, 0.5 vs 3/4, 0.95 vs 2/2 -> (2*0.05 + 4*0.25 + 2*0.05) / 8
    assert rel["ece"] == pytest.approx((0.1 + 1.0 + 0.1) / 8)
    assert ece(np.array([0, 1]), np.array([0.0, 1.0])) == 0.0


def test_card_calibration_round_trips_and_bad_ones_are_refused() -> None:
    cal = Calibration(0.8, -1.2)
    assert Calibration.from_dict(cal.as_dict()) == cal
    with pytest.raises(AnalysisError, match="positive slope"):
        Calibration.from_dict({"slope": -1.0, "intercept": 0.0})
    with pytest.raises(AnalysisError, match="incomplete"):
        Calibration.from_dict({"slope": 1.0})
    with pytest.raises(AnalysisError, match="prior"):
        adjust_to_prior(np.zeros(1), 1.0)
