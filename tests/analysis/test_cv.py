"""Cross-validation: stratified folds, nested choices that never see the test fold, honest
pooled figures. A stand-in "network" (a noisy function of each case) runs the exact code
path of training in milliseconds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from medshard.analysis.cv import (
    MIN_SENSITIVITY,
    choose_threshold,
    cross_validate,
    report,
    sensitivity_floor_threshold,
    stratified_folds,
    stratified_split,
)
from medshard.analysis.evaluate import metrics_at
from medshard.errors import AnalysisError

N = 1500


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (~88% positive) and a per-case signal that separates them imperfectly."""
    rng = np.random.default_rng(seed)
    y = (rng.random(N) < 0.88).astype(np.int64)
    signal = rng.normal(np.where(y == 1, 1.2, -1.2), 1.0)
    return y, signal


def _fit(
    signal: np.ndarray,
    seen: list[np.ndarray],
    corrupt: set[int] | None = None,
    corrupt_seed: int = -1,
) -> Callable[[np.ndarray, int], Callable[[np.ndarray], np.ndarray]]:
    """A "training" that records what it was fitted on; its members' scores depend only on
    each case's signal (overconfident and biased, plus member noise), except that the model
    fitted with ``corrupt_seed`` gives garbage for ``corrupt`` cases."""

    def fit(idx: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        seen.append(np.asarray(idx).copy())
        rng = np.random.default_rng(seed)
        offsets = rng.normal(0.0, 0.3, size=(3, 1))

        def predict(j: np.ndarray) -> np.ndarray:
            z = 6.0 * signal[j][None, :] + 2.0 + offsets
            if corrupt and seed == corrupt_seed:
                bad = np.isin(j, list(corrupt))
                z[:, bad] = np.random.default_rng(99).normal(0, 5, size=(3, int(bad.sum())))
            return 1.0 / (1.0 + np.exp(-z))

        return predict

    return fit


def test_folds_are_stratified_disjoint_and_seeded() -> None:
    y, _ = _data()
    folds = stratified_folds(y, 5, seed=3)
    assert np.array_equal(folds, stratified_folds(y, 5, seed=3))
    assert not np.array_equal(folds, stratified_folds(y, 5, seed=4))
    for cls in (0, 1):
        sizes = np.bincount(folds[y == cls], minlength=5)
        assert sizes.max() - sizes.min() <= 1  # every fold gets its share of each class
    fit, cal = stratified_split(np.flatnonzero(folds != 0), y, 0.2, seed=1)
    assert np.intersect1d(fit, cal).size == 0
    assert np.array_equal(np.union1d(fit, cal), np.flatnonzero(folds != 0))
    assert abs(y[cal].mean() - y.mean()) < 0.03
    with pytest.raises(AnalysisError, match="fewer than"):
        stratified_folds(np.array([0, 1, 1, 1]), 2, seed=0)


def test_test_fold_is_never_used_for_fitting_calibration_or_threshold() -> None:
    y, signal = _data()
    seen: list[np.ndarray] = []
    result = cross_validate(y, _fit(signal, seen), k=4, seed=0)
    for fr, fitted in zip(result.results, seen, strict=True):
        assert np.array_equal(fitted, fr.fit)
        assert np.intersect1d(fr.test, fr.fit).size == 0
        assert np.intersect1d(fr.test, fr.cal).size == 0
        assert np.intersect1d(fr.fit, fr.cal).size == 0
        assert np.array_equal(np.sort(np.r_[fr.test, fr.fit, fr.cal]), np.arange(N))
    # Garbage predictions on fold 2's test cases must not move fold 2's calibration or
    # threshold (they are chosen on its calibration part only), while its figures drop.
    test2 = set(result.results[2].test.tolist())
    spoiled = cross_validate(y, _fit(signal, [], test2, corrupt_seed=200), k=4, seed=0)
    for a, b in zip(result.results, spoiled.results, strict=True):
        assert a.calibrations == b.calibrations
        assert a.thresholds == b.thresholds
    assert (
        report(spoiled, deployment_prior=0.74, resamples=50)["metrics"]["auc"]
        < (report(result, deployment_prior=0.74, resamples=50)["metrics"]["auc"])
    )


def test_pooled_report_has_intervals_calibration_and_uses_each_folds_threshold() -> None:
    y, signal = _data()
    result = cross_validate(y, _fit(signal, []), k=5, seed=1)
    out = report(result, deployment_prior=0.74, resamples=200)
    m, ci = out["metrics"], out["ci95"]
    for key in ("accuracy", "auc", "precision", "recall", "f1", "balanced_accuracy"):
        assert ci[key][0] <= m[key] <= ci[key][1], key
    # Each case is called by its own fold's threshold, on its own fold's calibration.
    _raw, llr, margin = result.oof()
    calls = np.empty(N, dtype=bool)
    for fr in result.results:
        m_ = result.chosen_members
        calls[fr.test] = llr[fr.test] >= fr.thresholds[m_ - 1]
    assert m["accuracy"] == pytest.approx(float((calls == (y == 1)).mean()))
    assert np.array_equal(calls, margin >= 0)
    # The stand-in is overconfident (x2.5 the true log-likelihood ratio 2.4 * signal, biased
    # by +2); calibration fixes that on the
    # held-out folds, at the data prior and re-weighted to the deployment prior.
    cal = out["calibration"]
    assert cal["ece_calibrated"] < cal["ece_uncalibrated"]
    assert cal["ece_at_deployment_prior"] < cal["ece_uncalibrated_at_deployment_prior"]
    assert 1 <= out["members_chosen"] <= 3
    assert len(out["per_fold"]) == 5 and sum(f["n_test"] for f in out["per_fold"]) == N


def test_operating_points() -> None:
    y, signal = _data(seed=5)
    floor = sensitivity_floor_threshold(y, signal, 0.98)
    assert metrics_at(y, signal, floor)["sensitivity"] >= 0.98
    assert metrics_at(y, signal, floor + 0.5)["sensitivity"] < 0.98  # the most specific one
    choice = choose_threshold(y, signal, seed=0, rule=MIN_SENSITIVITY, min_sensitivity=0.95)
    assert choice["rule"] == MIN_SENSITIVITY and choice["min_sensitivity"] == 0.95
    balanced = choose_threshold(y, signal, seed=0)
    assert balanced["min_sensitivity"] is None
    # Balanced accuracy at the chosen cut-off is near the best any cut-off reaches.
    best = max(metrics_at(y, signal, t)["balanced_accuracy"] for t in np.unique(signal))
    assert metrics_at(y, signal, balanced["threshold"])["balanced_accuracy"] > best - 0.02
    with pytest.raises(AnalysisError, match="operating point"):
        choose_threshold(y, signal, seed=0, rule="nope")
