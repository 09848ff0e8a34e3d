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


def training_curves(path: Path, histories: list[list[dict[str, float]]], best: list[int]) -> None:
    """Train/val loss and val AUC per epoch for every member, chosen epochs marked."""
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_auc = fig.subplots(1, 2)
    for m, (hist, chosen) in enumerate(zip(histories, best, strict=True)):
        epochs = [h["epoch"] for h in hist]
        colour = f"C{m % 10}"
        ax_loss.plot(epochs, [h["train_loss"] for h in hist], colour, label=f"m{m} train")
        ax_loss.plot(epochs, [h["val_loss"] for h in hist], colour, ls="--", label=f"m{m} val")
        ax_auc.plot(epochs, [h["val_auc"] for h in hist], colour, label=f"member {m}")
        ax_auc.plot(chosen, hist[chosen - 1]["val_auc"], colour, marker="o")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (train weighted, val plain)")
    ax_auc.set(xlabel="epoch", ylabel="ROC AUC", title="validation AUC (dot: checkpoint)")
    ax_loss.legend(fontsize=7)
    ax_auc.legend(fontsize=7)
    ax_loss.grid(alpha=0.3)
    ax_auc.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def roc(
    path: Path,
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    metrics: dict[str, Any],
) -> None:
    """Validation ROC curve with the operating point of the chosen threshold."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fig = Figure(figsize=(5, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(fpr, tpr, "C0", label=f"ensemble (AUC {metrics['auc']:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.plot(
        1.0 - metrics["specificity"],
        metrics["sensitivity"],
        "ro",
        label=f"threshold {threshold:.3f}",
    )
    ax.set(
        xlabel="1 - specificity",
        ylabel="sensitivity",
        title="validation ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
