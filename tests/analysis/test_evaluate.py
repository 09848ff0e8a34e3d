from __future__ import annotations

import numpy as np

from medshard.analysis.evaluate import evaluate_scores, metrics_at, roc_auc, roc_curve
from medshard.analysis.train import youden_threshold


def test_auc_counts_ties_as_half() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(labels, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_metrics_at_threshold() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.6, 0.8, 0.3])
    m = metrics_at(labels, scores, 0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == 4 / 6
    assert m["precision"] == m["recall"] == m["f1"] == 2 / 3
    assert m["specificity"] == 2 / 3
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.4 + rng.normal(0.3, 0.2, 300), 0, 1)
    a = evaluate_scores(labels, scores, 0.5, resamples=200)
    b = evaluate_scores(labels, scores, 0.5, resamples=200)
    assert a == b
    lo, hi = a["auc_ci95"]
    assert lo <= a["auc"] <= hi


def test_youden_threshold_separates_perfectly_separable_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    t = youden_threshold(labels, np.array([0.1, 0.3, 0.6, 0.9]))
    assert 0.3 < t < 0.6
