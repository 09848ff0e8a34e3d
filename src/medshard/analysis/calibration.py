"""Probabilities that mean what they say: calibration, prior adjustment and calibration error.

The ensemble is trained with class-weighted cross-entropy on data that is ~88% pneumonia, so
its softmax output is neither the pneumonia rate of the training data nor that of a hospital
(validation and real use are nearer 74%). We therefore separate two things:

1. *Calibration* (Platt scaling of the ensemble's log-odds, i.e. temperature scaling with a
   bias): ``llr = slope * logit(raw) + intercept``, fitted on images the network never saw,
   with both classes given equal total weight. With equal class weights the fitted log-odds
   are those of a 50% prior, i.e. the *log-likelihood ratio* of pneumonia, which does not
   depend on how common pneumonia is.
2. *Prior adjustment* (Bayes' rule): ``p = sigmoid(llr + logit(prior))`` for the deployment's
   prior. Changing the prior moves the probability but not the ranking, so an operating point
   defined on the likelihood ratio (balanced accuracy, a sensitivity floor) makes the same calls
   at every site while the probability shown to a clinician stays truthful for that site.

numpy only: runs at inference in the workers, where scikit-learn is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from medshard.errors import AnalysisError

#: Bins of the expected calibration error and reliability diagram (Guo et al. 2017 use 15).
ECE_BINS = 15
#: Probabilities are clipped this far from 0 and 1 before taking log-odds, so a saturated
#: softmax (exactly 1.0 in float32) still maps to a finite, ordered value.
_EPS = 1e-7
#: Slope given to scores that carry no information on the calibration cases.
_MIN_SLOPE = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    """Log-odds of ``p``, clipped to finite values."""
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def check_prior(prior: float) -> float:
    """A class prior must be strictly between 0 and 1 (0 or 1 would make every call certain)."""
    value = float(prior)
    if not 0.0 < value < 1.0:
        raise AnalysisError(f"class prior must be strictly between 0 and 1, got {prior!r}")
    return value


def adjust_to_prior(llr: np.ndarray, prior: float) -> np.ndarray:
    """Probability of pneumonia for log-likelihood ratios ``llr`` where pneumonia has ``prior``."""
    return sigmoid(np.asarray(llr, dtype=np.float64) + float(logit(check_prior(prior))))


@dataclass(frozen=True)
class Calibration:
    """Affine map from the ensemble's raw log-odds to the log-likelihood ratio of pneumonia.

    ``slope`` is the inverse temperature; ``intercept`` absorbs the class weighting of training.
    """

    slope: float = 1.0
    intercept: float = 0.0
    method: str = "platt"

    def llr(self, raw_probability: np.ndarray) -> np.ndarray:
        """Log-likelihood ratios for raw ensemble probabilities."""
        return self.slope * logit(raw_probability) + self.intercept

    def as_dict(self) -> dict[str, Any]:
        """Card form; ``from_dict`` reads it back."""
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Calibration:
        """Parse a card's ``calibration`` entry; AnalysisError if it is unusable."""
        try:
            cal = cls(float(raw["slope"]), float(raw["intercept"]), str(raw.get("method", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise AnalysisError(f"model card calibration is incomplete: {exc}") from exc
        if not (np.isfinite(cal.slope) and np.isfinite(cal.intercept)) or cal.slope <= 0:
            raise AnalysisError("model card calibration needs a finite, positive slope")
        return cal


def fit_calibration(labels: np.ndarray, raw_probability: np.ndarray) -> Calibration:
    """Platt scaling with class-balanced weights, fitted by Newton's method.

    Platt's smoothed targets (``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)``) keep the fit finite
    when held-out scores separate the classes perfectly, which happens with ~100 normal images
    and an AUC near 1; without them the slope would run off to infinity and every probability
    would become 0 or 1.
    """
    y = np.asarray(labels).astype(bool)
    z = logit(raw_probability)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0 or y.shape != z.shape:
        raise AnalysisError("calibration needs scores of both classes, one per label")
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    weight = np.where(y, 0.5 / n_pos, 0.5 / n_neg)  # equal total weight per class -> LLR
    design = np.stack([z, np.ones_like(z)], axis=1)

    def loss(theta: np.ndarray) -> float:
        s = design @ theta  # weighted cross-entropy, written stably in the log-odds
        return float((weight * (np.logaddexp(0.0, s) - target * s)).sum())

    params = np.array([1.0, 0.0])
    current = loss(params)
    for _ in range(100):
        p = sigmoid(design @ params)
        grad = design.T @ (weight * (p - target))
        hess = design.T @ (design * (weight * p * (1.0 - p))[:, None]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        # Newton with backtracking: a full step from far away (saturated probabilities, where
        # the Hessian is nearly zero) can overshoot; halving until the loss drops cannot.
        for _halving in range(60):
            trial = params - step
            trial_loss = loss(trial)
            if trial_loss <= current:
                break
            step = step / 2.0
        else:
            break
        params, current = trial, trial_loss
        if np.abs(step).max() < 1e-10:
            break
    slope, intercept = float(params[0]), float(params[1])
    if not np.isfinite([slope, intercept]).all():
        raise AnalysisError("calibration did not converge")
    if slope <= 0:
        # Scores that do not rank the held-out cases (an untrained or broken network): the
        # honest calibration is "no information", a constant at the balanced target mean,
        # kept an increasing map so the operating point stays well defined.
        slope = _MIN_SLOPE
        mean_target = float((weight * target).sum() / weight.sum())
        intercept = float(logit(mean_target)) - slope * float((weight * z).sum() / weight.sum())
    return Calibration(slope, intercept, "platt")


def prior_weights(labels: np.ndarray, prior: float) -> np.ndarray:
    """Per-case weights that make a labelled set look as if pneumonia had ``prior``.

    Used to measure calibration and accuracy for the deployment's prior on cross-validation
    data that has another one (importance weighting by class).
    """
    y = np.asarray(labels).astype(bool)
    share = float(y.mean())
    if not 0.0 < share < 1.0:
        raise AnalysisError("prior weighting needs both classes")
    prior = check_prior(prior)
    return np.where(y, prior / share, (1.0 - prior) / (1.0 - share))


def reliability(
    labels: np.ndarray,
    probability: np.ndarray,
    *,
    bins: int = ECE_BINS,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Expected calibration error of the pneumonia probability and its reliability diagram.

    Equal-width bins over [0, 1]; in each, the (weighted) mean predicted probability against
    the (weighted) observed pneumonia rate. ECE is the weighted mean absolute gap over bins.

    Returns
    -------
    dict
        ``ece`` and ``bins`` (one entry per non-empty bin: ``lo``, ``hi``, ``n``, ``weight``,
        ``mean_probability``, ``observed_rate``), JSON-ready.
    """
    y = np.asarray(labels).astype(np.float64)
    p = np.asarray(probability, dtype=np.float64)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=True), 0, bins - 1)
    # Per-bin sums in one pass each (bootstraps call this thousands of times).
    count = np.bincount(which, minlength=bins)
    weight = np.bincount(which, weights=w, minlength=bins)
    conf_sum = np.bincount(which, weights=w * p, minlength=bins)
    rate_sum = np.bincount(which, weights=w * y, minlength=bins)
    used = count > 0
    conf = np.divide(conf_sum, weight, out=np.zeros(bins), where=used)
    rate = np.divide(rate_sum, weight, out=np.zeros(bins), where=used)
    total = float(weight.sum())
    ece = float((weight[used] / total * np.abs(conf[used] - rate[used])).sum())
    table = [
        {
            "lo": float(edges[b]),
            "hi": float(edges[b + 1]),
            "n": int(count[b]),
            "weight": float(weight[b] / total),
            "mean_probability": float(conf[b]),
            "observed_rate": float(rate[b]),
        }
        for b in np.flatnonzero(used)
    ]
    return {"ece": float(ece), "bins_count": bins, "bins": table}


def ece(
    labels: np.ndarray,
    probability: np.ndarray,
    *,
    bins: int = ECE_BINS,
    weights: np.ndarray | None = None,
) -> float:
    """Expected calibration error alone (see :func:`reliability`)."""
    return float(reliability(labels, probability, bins=bins, weights=weights)["ece"])
