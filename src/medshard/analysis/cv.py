"""Honest performance estimates: stratified k-fold cross-validation with nested choices.

Validation figures of a model whose checkpoints and threshold were chosen on validation are
optimistic. Here every choice a training run makes from data (calibration, threshold) is made
*inside* each fold, on a calibration part split off that fold's own training part; the fold's
test images only ever receive predictions. The pooled out-of-fold predictions then estimate
how the whole procedure (train, calibrate, choose a threshold) does on patients it never saw,
which is what the model card reports as expected performance.

Layout of one fold ``k`` of ``K``::

    all images --stratified K folds--> test = fold k | rest
    rest --stratified split--> fit (network weights) | cal (calibration + threshold)

The final shipped model is made by the same recipe on all images (one fit/cal split), so the
estimate describes it, slightly pessimistically (its networks see 1/K more data).

The network is passed in as a function, so tests can run the exact same code with a tiny
model in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medshard.analysis.calibration import (
    Calibration,
    adjust_to_prior,
    check_prior,
    fit_calibration,
    prior_weights,
    reliability,
)
from medshard.analysis.dataset import load_split
from medshard.analysis.evaluate import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, metrics_at, roc_auc
from medshard.analysis.evaluate import roc_curve as _roc_curve
from medshard.analysis.package import file_sha256
from medshard.errors import AnalysisError

#: Out-of-fold predictions shipped in a package (see :func:`package_estimate`).
CV_PREDICTIONS_FILE = "cv_predictions.npz"
#: Bootstrap settings of the threshold choice (independent of the evaluation bootstrap).
THRESHOLD_RESAMPLES = 200
#: Operating-point rules.
MAX_BALANCED_ACCURACY = "max_balanced_accuracy"
MIN_SENSITIVITY = "min_sensitivity"
#: Metrics that get bootstrap intervals in a CV report.
INTERVAL_METRICS = (
    "accuracy",
    "auc",
    "precision",
    "recall",
    "f1",
    "balanced_accuracy",
    "specificity",
)

#: ``fit(indices, seed)`` trains on those images and returns a predictor: images (by index)
#: -> raw pneumonia probability per ensemble member, shape ``(members, n)``.
Predictor = Callable[[np.ndarray], np.ndarray]
FitFn = Callable[[np.ndarray, int], Predictor]


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) per case, each class dealt round-robin after a seeded shuffle.

    Every fold then holds the same share of normal images (there are only ~500), so no fold's
    estimate rests on a handful of them.
    """
    y = np.asarray(labels)
    if k < 2:
        raise AnalysisError("cross-validation needs at least 2 folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(y.size, dtype=np.int64)
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        if idx.size < k:
            raise AnalysisError(f"class {cls} has {idx.size} case(s), fewer than {k} folds")
        rng.shuffle(idx)
        folds[idx] = np.arange(idx.size) % k
    return folds


def stratified_split(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (fit, cal) with ``fraction`` of each class in cal, sorted."""
    if not 0.0 < fraction < 1.0:
        raise AnalysisError("the calibration fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    idx = np.asarray(indices)
    y = np.asarray(labels)[idx]
    cal: list[np.ndarray] = []
    for cls in np.unique(y):
        members = idx[y == cls].copy()
        rng.shuffle(members)
        take = max(1, round(fraction * members.size))
        if take >= members.size:
            raise AnalysisError(f"class {cls} has too few cases for a calibration split")
        cal.append(members[:take])
    cal_idx = np.sort(np.concatenate(cal))
    fit_idx = np.setdiff1d(idx, cal_idx)
    return fit_idx, cal_idx


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Cut-off maximising sensitivity + specificity - 1, placed midway between scores.

    Youden's J is 2 x balanced accuracy - 1, so this maximises balanced accuracy, which weighs
    both classes equally and therefore does not depend on the class balance of the data it is
    chosen on. The midpoint keeps the cut-off away from any score, so last-bit floating-point
    differences cannot flip a call.
    """
    fpr, tpr, cutoffs = _roc_curve(labels, scores)
    i = int(np.argmax(tpr - fpr))
    return _midpoint(cutoffs, i)


def sensitivity_floor_threshold(labels: np.ndarray, scores: np.ndarray, floor: float) -> float:
    """Highest cut-off whose sensitivity is at least ``floor`` (most specific such point)."""
    _fpr, tpr, cutoffs = _roc_curve(labels, scores)
    i = int(np.argmax(tpr >= floor - 1e-12))
    return _midpoint(cutoffs, i)


def _midpoint(cutoffs: np.ndarray, i: int) -> float:
    hi = cutoffs[i]
    lo = cutoffs[i + 1] if i + 1 < cutoffs.size else hi - 1.0
    if not np.isfinite(hi):
        return float(lo)
    return float((hi + lo) / 2.0)


def choose_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    seed: int,
    *,
    rule: str = MAX_BALANCED_ACCURACY,
    min_sensitivity: float = 0.0,
) -> dict[str, Any]:
    """Median of the rule's cut-offs over stratified bootstrap resamples of ``labels``.

    A single optimum on ~100 normal images hinges on a handful of cases; the bootstrap median
    is a smoother estimate of the same point and transfers better to unseen data.
    """
    if rule not in (MAX_BALANCED_ACCURACY, MIN_SENSITIVITY):
        raise AnalysisError(f"unknown operating point {rule!r}")
    if rule == MIN_SENSITIVITY and not 0.0 < min_sensitivity <= 1.0:
        raise AnalysisError("a sensitivity floor must be in (0, 1]")

    def cut(y: np.ndarray, s: np.ndarray) -> float:
        if rule == MIN_SENSITIVITY:
            return sensitivity_floor_threshold(y, s, min_sensitivity)
        return youden_threshold(y, s)

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    cuts = []
    for _ in range(THRESHOLD_RESAMPLES):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        cuts.append(cut(y[idx], s[idx]))
    return {
        "rule": rule,
        "min_sensitivity": min_sensitivity if rule == MIN_SENSITIVITY else None,
        "method": f"median of {rule} cut-offs over {THRESHOLD_RESAMPLES} stratified bootstrap "
        "resamples of the calibration part, on the log-likelihood ratio",
        "resamples": THRESHOLD_RESAMPLES,
        "seed": seed,
        "threshold": float(np.median(cuts)),
        "single_cut": cut(y, s),
    }


@dataclass
class FoldResult:
    """One fold: which cases it tested and what was fitted on its own training part."""

    fold: int
    test: np.ndarray
    fit: np.ndarray
    cal: np.ndarray
    #: Raw pneumonia probability per member on the test cases, ``(members, n_test)``.
    test_raw: np.ndarray
    #: Per ensemble size m (1..members): calibration and LLR threshold chosen on ``cal``.
    calibrations: list[Calibration] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


@dataclass
class CVResult:
    """All folds of one cross-validation, and the ensemble size it chose."""

    labels: np.ndarray
    folds: np.ndarray
    results: list[FoldResult]
    members: int
    chosen_members: int = 0
    selection: list[dict[str, float]] = field(default_factory=list)

    def oof(self, members: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pooled out-of-fold (raw probability, LLR, LLR minus its fold's threshold)."""
        m = members or self.chosen_members or self.members
        n = self.labels.size
        raw, llr, margin = np.empty(n), np.empty(n), np.empty(n)
        for fr in self.results:
            r = fr.test_raw[:m].mean(axis=0)
            cal = fr.calibrations[m - 1]
            raw[fr.test] = r
            llr[fr.test] = cal.llr(r)
            margin[fr.test] = llr[fr.test] - fr.thresholds[m - 1]
        return raw, llr, margin


def cross_validate(
    labels: np.ndarray,
    fit: FitFn,
    *,
    k: int = 5,
    seed: int = 0,
    cal_fraction: float = 0.2,
    rule: str = MAX_BALANCED_ACCURACY,
    min_sensitivity: float = 0.0,
    on_fold: Callable[[int], Any] | None = None,
) -> CVResult:
    """Run ``k``-fold CV of the whole recipe; see the module docstring for the layout.

    The ensemble size is chosen afterwards from the pooled out-of-fold predictions
    (:func:`choose_members`); every size's calibration and threshold were fitted per fold on
    that fold's calibration part only.
    """
    y = np.asarray(labels).astype(np.int64)
    folds = stratified_folds(y, k, seed)
    results: list[FoldResult] = []
    members = 0
    for f in range(k):
        test = np.flatnonzero(folds == f)
        rest = np.flatnonzero(folds != f)
        fit_idx, cal_idx = stratified_split(rest, y, cal_fraction, seed + 1000 + f)
        predictor = fit(fit_idx, seed + 100 * f)
        cal_raw = np.atleast_2d(predictor(cal_idx))
        test_raw = np.atleast_2d(predictor(test))
        members = cal_raw.shape[0]
        fr = FoldResult(f, test, fit_idx, cal_idx, test_raw)
        for m in range(1, members + 1):
            ens = cal_raw[:m].mean(axis=0)
            calib = fit_calibration(y[cal_idx], ens)
            choice = choose_threshold(
                y[cal_idx], calib.llr(ens), seed + f, rule=rule, min_sensitivity=min_sensitivity
            )
            fr.calibrations.append(calib)
            fr.thresholds.append(choice["threshold"])
        results.append(fr)
        if on_fold:
            on_fold(f)
    result = CVResult(y, folds, results, members)
    choose_members(result)
    return result


def choose_members(result: CVResult, tolerance: float = 0.01) -> int:
    """The smallest ensemble whose pooled out-of-fold log loss is within ``tolerance``
    (relative) of the best size's: each member costs inference time on every image, so one
    is only added where cross-validation shows it helps."""
    y = result.labels
    weights = prior_weights(y, 0.5)  # class-balanced: the normal class must count as much
    scores = []
    for m in range(1, result.members + 1):
        _raw, llr, _margin = result.oof(m)
        p = adjust_to_prior(llr, 0.5)
        loss = float(-(weights * np.where(y == 1, np.log(p), np.log1p(-p))).mean())
        scores.append({"members": m, "balanced_log_loss": loss, "auc": roc_auc(y, llr)})
    best = min(s["balanced_log_loss"] for s in scores)
    chosen = next(
        int(s["members"]) for s in scores if s["balanced_log_loss"] <= best * (1 + tolerance)
    )
    result.selection = scores
    result.chosen_members = chosen
    return chosen


def _point_metrics(y: np.ndarray, llr: np.ndarray, margin: np.ndarray) -> dict[str, float]:
    m = metrics_at(y, margin, 0.0)
    m["auc"] = roc_auc(y, llr)  # ranking quality of the calibrated scores, pooled over folds
    return {k: float(m[k]) for k in INTERVAL_METRICS}


def _at_prior(sens: float, spec: float, prior: float) -> dict[str, float]:
    """Accuracy and predictive values expected where pneumonia has ``prior``."""
    ppv_den = prior * sens + (1 - prior) * (1 - spec)
    npv_den = (1 - prior) * spec + prior * (1 - sens)
    return {
        "accuracy": prior * sens + (1 - prior) * spec,
        "precision": prior * sens / ppv_den if ppv_den else 0.0,
        "npv": (1 - prior) * spec / npv_den if npv_den else 0.0,
    }


def report(
    result: CVResult,
    *,
    deployment_prior: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The CV estimate: pooled out-of-fold metrics with 95% percentile bootstrap intervals,
    per-fold figures, and calibration before and after (ECE, reliability diagram data).

    Calibration is measured twice: at the pooled data's own prior (calibrated probabilities for
    that prior), and at the deployment prior (probabilities adjusted to it, the cases weighted
    so that the classes have the deployment's shares).
    """
    check_prior(deployment_prior)
    y = result.labels
    raw, llr, margin = result.oof()
    data_prior = float(y.mean())
    point = _point_metrics(y, llr, margin)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in (*INTERVAL_METRICS, "ece")}
    dep: dict[str, list[float]] = {"accuracy": [], "precision": [], "npv": [], "ece": []}
    p_data = adjust_to_prior(llr, data_prior)
    p_dep = adjust_to_prior(llr, deployment_prior)
    w_dep = prior_weights(y, deployment_prior)
    for _ in range(resamples):
        idx = rng.integers(0, y.size, y.size)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        pm = _point_metrics(yb, llr[idx], margin[idx])
        for key in INTERVAL_METRICS:
            samples[key].append(pm[key])
        samples["ece"].append(reliability(yb, p_data[idx])["ece"])
        at = _at_prior(pm["recall"], pm["specificity"], deployment_prior)
        for key in ("accuracy", "precision", "npv"):
            dep[key].append(at[key])
        w_b = prior_weights(yb, deployment_prior)
        dep["ece"].append(reliability(yb, p_dep[idx], weights=w_b)["ece"])

    def ci(values: list[float]) -> list[float]:
        lo, hi = np.percentile(np.asarray(values), [2.5, 97.5])
        return [float(lo), float(hi)]

    rel_raw = reliability(y, raw)
    rel_data = reliability(y, p_data)
    rel_dep_raw = reliability(y, raw, weights=w_dep)
    rel_dep = reliability(y, p_dep, weights=w_dep)
    at_dep = _at_prior(point["recall"], point["specificity"], deployment_prior)
    confusion = metrics_at(y, margin, 0.0)["confusion_matrix"]
    per_fold = []
    for fr in result.results:
        m = result.chosen_members or result.members
        yt = y[fr.test]
        fm = _point_metrics(yt, llr[fr.test], margin[fr.test])
        per_fold.append(
            {
                "fold": fr.fold,
                "n_test": int(fr.test.size),
                "n_fit": int(fr.fit.size),
                "n_cal": int(fr.cal.size),
                "threshold_llr": fr.thresholds[m - 1],
                "calibration": fr.calibrations[m - 1].as_dict(),
                **{k: fm[k] for k in ("accuracy", "auc", "balanced_accuracy")},
            }
        )
    return {
        "method": (
            f"stratified {len(result.results)}-fold cross-validation over train+val; in each "
            "fold the networks were fitted on a stratified part of the other folds and the "
            "calibration and threshold chosen on the rest of them, never on the test fold; "
            "out-of-fold predictions pooled"
        ),
        "folds": len(result.results),
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "n_negative": int((y == 0).sum()),
        "data_prior": data_prior,
        "members_evaluated": result.members,
        "members_chosen": result.chosen_members,
        "member_selection": result.selection,
        "metrics": {k: point[k] for k in INTERVAL_METRICS},
        "ci95": {k: ci(samples[k]) for k in INTERVAL_METRICS},
        "confusion_matrix": confusion,
        "bootstrap": {"resamples": resamples, "seed": seed, "method": "percentile"},
        "at_deployment_prior": {
            "prior": deployment_prior,
            "note": "sensitivity and specificity are prior-free; accuracy and predictive "
            "values re-weighted to the deployment prior",
            **at_dep,
            "ci95": {k: ci(dep[k]) for k in ("accuracy", "precision", "npv")},
        },
        "calibration": {
            "bins": rel_raw["bins_count"],
            "ece_uncalibrated": rel_raw["ece"],
            "ece_calibrated": rel_data["ece"],
            "ece_calibrated_ci95": ci(samples["ece"]),
            "ece_uncalibrated_at_deployment_prior": rel_dep_raw["ece"],
            "ece_at_deployment_prior": rel_dep["ece"],
            "ece_at_deployment_prior_ci95": ci(dep["ece"]),
            "reliability_uncalibrated": rel_raw["bins"],
            "reliability_calibrated": rel_data["bins"],
            "reliability_at_deployment_prior": rel_dep["bins"],
        },
        "per_fold": per_fold,
    }


def load_result(
    arrays: dict[str, np.ndarray], fold_params: list[dict[str, Any]], chosen: int
) -> CVResult:
    """Rebuild a :class:`CVResult` from a package's ``cv_predictions.npz`` arrays and its
    card's per-fold calibrations and thresholds, so its report can be recomputed exactly.

    Raises AnalysisError if a test fold took part in fitting or calibrating its own model:
    shipped predictions are checked, not trusted.
    """
    try:
        labels = np.asarray(arrays["labels"]).astype(np.int64)
        folds = np.asarray(arrays["folds"]).astype(np.int64)
        raw = np.asarray(arrays["raw"], dtype=np.float64)
        in_fit = np.asarray(arrays["in_fit"]).astype(bool)
        in_cal = np.asarray(arrays["in_cal"]).astype(bool)
        results = []
        for f, params in enumerate(fold_params):
            test = np.flatnonzero(folds == f)
            if (in_fit[f] & (folds == f)).any() or (in_cal[f] & (folds == f)).any():
                raise AnalysisError(f"fold {f}: test cases were used to fit or calibrate it")
            fr = FoldResult(
                f, test, np.flatnonzero(in_fit[f]), np.flatnonzero(in_cal[f]), raw[:, test]
            )
            fr.calibrations = [Calibration.from_dict(c) for c in params["calibrations"]]
            fr.thresholds = [float(t) for t in params["thresholds_llr"]]
            results.append(fr)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise AnalysisError(f"cross-validation predictions are incomplete: {exc}") from exc
    result = CVResult(labels, folds, results, raw.shape[0])
    choose_members(result)
    if result.chosen_members != chosen:
        raise AnalysisError(
            f"recomputed ensemble size {result.chosen_members} differs from the card's {chosen}"
        )
    return result


def package_estimate(model_dir: Path, card: dict[str, Any], data: Path | None) -> dict[str, Any]:
    """A package's cross-validated figures, recomputed from its shipped out-of-fold predictions.

    Parameters
    ----------
    model_dir, card
        The package and its parsed card.
    data
        The ``.npz`` it was trained on, if at hand: the stored labels are then checked against
        it (same file hash and same labels at every recorded position).

    Returns
    -------
    dict
        :func:`report` of the rebuilt result, plus ``matches_card`` (every figure equal to the
        card's) and ``labels_checked``.
    """
    expected = card.get("expected_performance")
    path = model_dir / CV_PREDICTIONS_FILE
    if not expected or not path.is_file():
        raise AnalysisError(f"{model_dir}: no cross-validation in this package")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    result = load_result(arrays, card.get("cv_folds") or [], int(expected["members_chosen"]))
    out = report(
        result,
        deployment_prior=float(expected["at_deployment_prior"]["prior"]),
        resamples=int(expected["bootstrap"]["resamples"]),
        seed=int(expected["bootstrap"]["seed"]),
    )
    out["labels_checked"] = False
    if data is not None and file_sha256(Path(data)) == card.get("data", {}).get("sha256"):
        splits = {name: load_split(data, str(name)).labels for name in set(arrays["split"])}
        stored = [splits[s][i] for s, i in zip(arrays["split"], arrays["index"], strict=True)]
        if not np.array_equal(np.asarray(stored), result.labels):
            raise AnalysisError(f"{path}: labels differ from {data}")
        out["labels_checked"] = True
    out["matches_card"] = _same(out, expected)
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal JSON-like values, floats to 1e-9 (JSON round-trips them exactly anyway)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"labels_checked", "matches_card"}
        return all(_same(a.get(k), b.get(k)) for k in keys)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int):
        return bool(abs(float(a) - float(b)) <= 1e-9 or (np.isnan(a) and np.isnan(b)))
    return bool(a == b)
