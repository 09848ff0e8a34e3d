"""Figures for model packages, drawn headless.

Uses matplotlib's object API with the Agg canvas directly, never ``pyplot``: training may run
inside servers and test processes where a GUI backend or global figure state would be wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medshard.analysis.evaluate import roc_curve


def loss_curves(path: Path, histories: list[list[dict[str, float]]]) -> None:
    """Training loss per epoch of each shipped member (no validation: nothing was picked)."""
    fig = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for m, hist in enumerate(histories):
        ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], f"C{m % 10}",
                label=f"member {m}")  # fmt: skip
    ax.set(xlabel="epoch", ylabel="class-weighted cross-entropy", title="training loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def reliability(path: Path, estimate: dict[str, Any]) -> None:
    """Reliability diagram of the out-of-fold probabilities, raw against calibrated."""
    calib = estimate["calibration"]
    prior = estimate["at_deployment_prior"]["prior"]
    fig = Figure(figsize=(5.5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    series = [
        ("reliability_uncalibrated", f"raw (ECE {calib['ece_uncalibrated']:.3f})", "C3"),
        ("reliability_calibrated", f"calibrated (ECE {calib['ece_calibrated']:.3f})", "C0"),
        (
            "reliability_at_deployment_prior",
            f"prior {prior}, re-weighted (ECE {calib['ece_at_deployment_prior']:.3f})",
            "C2",
        ),
    ]
    for key, label, colour in series:
        bins = calib[key]
        ax.plot([b["mean_probability"] for b in bins], [b["observed_rate"] for b in bins],
                colour, marker="o", ms=3, label=label)  # fmt: skip
    ax.set(
        xlabel="predicted probability of pneumonia",
        ylabel="observed share of pneumonia",
        title=f"out-of-fold reliability ({calib['bins']} bins)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def cv_roc(path: Path, labels: np.ndarray, scores: np.ndarray, estimate: dict[str, Any]) -> None:
    """Pooled out-of-fold ROC curve with the cross-validated operating point."""
    metrics = estimate["metrics"]
    fpr, tpr, _ = roc_curve(labels, scores)
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(fpr, tpr, "C0", label=f"out-of-fold (AUC {metrics['auc']:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.plot(1.0 - metrics["specificity"], metrics["recall"], "ro", label="operating point")
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="cross-validated ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
