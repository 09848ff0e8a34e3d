"""Classification metrics at a model's operating threshold, with bootstrap intervals.

Written with numpy only (no scikit-learn in the runtime), and used both by training, to fill
the model card, and by ``medshard ai eval``, so that the two can never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medshard.analysis.dataset import load_split
from medshard.analysis.model import LoadedModel, file_sha256
from medshard.analysis.preprocess import scale_uint8
from medshard.errors import AnalysisError

#: Bootstrap defaults: enough resamples for stable 95% percentile intervals, fixed seed so that
#: the card and ``ai eval`` print the same intervals.
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20240531


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count one half).

    Returns NaN when only one class is present, where AUC is undefined.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score used as a cut-off.

    Returns
    -------
    fpr, tpr, cutoffs
        ``cutoffs[i]`` is the lowest score called positive at point ``i``; the first point is
        ``(0, 0)`` with cut-off ``+inf``.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s_sorted)), y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    cutoffs = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, cutoffs


def metrics_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Point metrics when ``score >= threshold`` is called positive (pneumonia).

    Undefined ratios (e.g. precision with no positive calls) are reported as 0.0 rather than
    NaN so the JSON output stays valid and comparable.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise AnalysisError(f"labels {y.shape} and scores {s.shape} must be equal 1-D arrays")
    pred = s >= threshold
    tp = int((pred & y).sum())
    tn = int((~pred & ~y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    n = int(y.size)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "auc": roc_auc(y, s),
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "balanced_accuracy": (recall + _ratio(tn, tn + fp)) / 2.0,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "n": n,
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        "threshold": float(threshold),
    }


def bootstrap_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, list[float]]:
    """95% percentile bootstrap intervals for accuracy and AUC.

    Cases are resampled with replacement; resamples that lack a class are skipped for AUC.
    The seed is fixed so that repeated evaluations print identical intervals.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    correct = (s >= threshold) == y
    accs = np.empty(resamples)
    aucs: list[float] = []
    for i in range(resamples):
        idx = rng.integers(0, y.size, y.size)
        accs[i] = correct[idx].mean()
        auc = roc_auc(y[idx], s[idx])
        if not np.isnan(auc):
            aucs.append(auc)
    return {
        "accuracy_ci95": _interval(accs),
        "auc_ci95": _interval(np.asarray(aucs)) if aucs else [float("nan")] * 2,
    }


def evaluate_scores(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """All metrics of :func:`metrics_at` plus bootstrap intervals and their settings."""
    out = metrics_at(labels, scores, threshold)
    out.update(bootstrap_ci(labels, scores, threshold, resamples=resamples, seed=seed))
    out["bootstrap"] = {"resamples": resamples, "seed": seed, "method": "percentile"}
    return out


def evaluate_model(
    model: LoadedModel,
    data: str | Path,
    split: str = "test",
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    prior: float | None = None,
) -> dict[str, Any]:
    """Evaluate a loaded model on one split of a MedMNIST-style ``.npz``.

    The probabilities are the calibrated ones a worker stores (adjusted to ``prior``, default
    the card's) and the calls are made at the operating point, so these are the figures a
    deployment would see. A split the model was trained or calibrated on is flagged
    (``seen_in_training``): its figures are not an estimate for new patients.

    Returns
    -------
    dict
        Metrics at the operating point, calibration error on the split, provenance (model id
        and hash, data file hash and split), JSON-serialisable.
    """
    from medshard.analysis.calibration import reliability

    part = load_split(data, split)
    used_prior = model.resolve_prior(prior)
    threshold = model.threshold_at(used_prior)
    scores = model.predict_proba(scale_uint8(part.images), used_prior)
    out = evaluate_scores(part.labels, scores, threshold, resamples=resamples, seed=seed)
    data_sha = file_sha256(Path(data))
    trained_on = model.card.get("data", {})
    out.update(
        {
            "model_id": model.model_id,
            "model_sha256": model.sha256,
            "data": Path(data).name,
            "data_sha256": data_sha,
            "split": split,
            "prior": used_prior,
            "calibrated": model.calibrated,
            "ece": reliability(part.labels, scores)["ece"] if part.labels.size else None,
            "seen_in_training": data_sha == trained_on.get("sha256") and split in trained_on,
        }
    )
    return out


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (vectorised: bootstraps call it often)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    return ((ends - counts + 1.0 + ends) / 2.0)[inverse]


def _interval(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0
