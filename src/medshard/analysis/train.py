"""Deterministic training of the pneumonia classifier into a model package, with honest estimates.

The recipe: pool train + val, split off a stratified calibration part,
fit each ensemble member on the rest for a fixed number of epochs (class-weighted
cross-entropy, batch augmentation, no checkpoint picking: nothing is chosen by peeking at
held-out images), then on the calibration part fit Platt scaling of the ensemble's log-odds
and choose the operating point on the resulting log-likelihood ratios.

Before shipping, :func:`medshard.analysis.cv.cross_validate` runs that same recipe inside each
of k stratified folds, and the pooled out-of-fold predictions give the model card its
expected performance, with bootstrap intervals, and the ensemble size (the smallest that CV
shows to be as good as the largest tried). The out-of-fold predictions are shipped
(``cv_predictions.npz``) so ``medshard ai eval`` recomputes every CV figure from them.

Determinism: every random draw comes from seeded generators, deterministic algorithms are
enforced and the thread count is fixed; two runs with the same settings on the same machine
produce bit-identical weights.
"""

from __future__ import annotations

import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from medshard.analysis import card as model_card
from medshard.analysis import plots
from medshard.analysis.augment import AugmentSettings, augment_batch
from medshard.analysis.calibration import adjust_to_prior, check_prior, fit_calibration
from medshard.analysis.cv import (
    CV_PREDICTIONS_FILE,
    MAX_BALANCED_ACCURACY,
    MIN_SENSITIVITY,
    CVResult,
    choose_threshold,
    cross_validate,
    report,
    stratified_split,
    youden_threshold,
)
from medshard.analysis.dataset import load_split, sample_npz_path
from medshard.analysis.model import (
    ARCHITECTURE,
    HASH_FILE,
    WEIGHTS,
    Ensemble,
    PneumoniaCNN,
    file_sha256,
    load_model,
    models_dir,
)
from medshard.analysis.preprocess import scale_uint8
from medshard.errors import AnalysisError

#: The deployment prior documented in the card when none is given: the share of pneumonia in
#: PneumoniaMNIST's validation split (389 / 524), near the share in the published test split
#: (390 / 624) and in the clinic the images come from; sites override it in their settings.
DEFAULT_PRIOR = 0.74
#: Files written besides the weights and cards.
CV_PREDICTIONS = CV_PREDICTIONS_FILE
RELIABILITY_PNG = "reliability.png"
CV_ROC_PNG = "cv_roc.png"
CURVES_PNG = "training_curves.png"

__all__ = [
    "CV_PREDICTIONS",
    "DEFAULT_PRIOR",
    "TrainConfig",
    "choose_threshold",
    "deterministic",
    "pooled_data",
    "train",
    "youden_threshold",
]


@dataclass
class TrainConfig:
    """Every setting that influences the trained weights; all of it goes into the card."""

    data: Path
    out: Path
    epochs: int = 15
    seed: int = 0
    #: Most ensemble members tried; cross-validation picks how many ship (<= this).
    members: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    channels: tuple[int, ...] = (16, 32, 64)
    dropout: float = 0.2
    device: str = "cpu"
    threads: int = 1
    #: Use only about N images of train+val, class-stratified (quick tests); None uses all.
    train_limit: int | None = None
    augment: AugmentSettings | None = field(default_factory=AugmentSettings)
    name: str | None = None
    #: Cross-validation folds; 0 skips CV (quick tests only: the card then has no estimate).
    folds: int = 5
    #: Share of each training part held out for calibration and the operating point.
    cal_fraction: float = 0.2
    #: Documented default share of pneumonia where the model is used.
    prior: float = DEFAULT_PRIOR
    #: Operating point: max_balanced_accuracy, or min_sensitivity with ``min_sensitivity``.
    operating_point: str = MAX_BALANCED_ACCURACY
    min_sensitivity: float = 0.0

    def eval_command(self) -> str:
        """The CLI invocation that recomputes the card's cross-validated figures."""
        model = str(self.out)
        if self.out.resolve().parent == models_dir():
            model = self.out.name
        args = ["python", "-m", "medshard.analysis.cli", "eval", "--model", model]
        if not _is_bundled(self.data):
            args += ["--data", str(self.data)]
        return shlex.join(args)

    def command(self) -> str:
        """The CLI invocation that reproduces this configuration exactly."""
        args = ["python", "-m", "medshard.analysis.cli", "train"]
        if not _is_bundled(self.data):
            args += ["--data", str(self.data)]
        args += [
            "--out", str(self.out),
            "--epochs", str(self.epochs), "--seed", str(self.seed),
            "--members", str(self.members), "--batch-size", str(self.batch_size),
            "--lr", str(self.lr), "--weight-decay", str(self.weight_decay),
            "--channels", ",".join(str(c) for c in self.channels),
            "--dropout", str(self.dropout), "--device", self.device,
            "--threads", str(self.threads), "--folds", str(self.folds),
            "--cal-fraction", str(self.cal_fraction), "--prior", str(self.prior),
        ]  # fmt: skip
        if self.operating_point == MIN_SENSITIVITY:
            args += ["--min-sensitivity", str(self.min_sensitivity)]
        if self.train_limit is not None:
            args += ["--limit", str(self.train_limit)]
        if self.augment is None:
            args.append("--no-augment")
        elif self.augment != AugmentSettings():
            args += ["--augment", self.augment.spec()]
        return shlex.join(args)


def _is_bundled(data: Path) -> bool:
    """Whether ``data`` is the in-repo sample, which the CLI uses when ``--data`` is omitted."""
    return Path(data).resolve() == sample_npz_path()


@contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seed torch and force deterministic kernels, restoring global settings afterwards.

    Settings are restored so that training inside a long-lived process (tests, a server) does
    not silently change how the rest of that process runs.
    """
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    prev_bench = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.backends.cudnn.benchmark = prev_bench
        torch.set_num_threads(prev_threads)


@dataclass
class Pooled:
    """Train + val as one labelled set (cross-validation re-splits it), with provenance."""

    images: np.ndarray
    labels: np.ndarray
    #: Position of each image in the ``.npz``: (split name, index in that split).
    origin: list[tuple[str, int]]
    counts: dict[str, dict[str, int]]


def pooled_data(data: Path, limit: int | None = None) -> Pooled:
    """Train and val of ``data`` concatenated (train first), optionally a stratified subset."""
    parts = [load_split(data, "train"), load_split(data, "val")]
    counts = {
        p.name: {"n": len(p), "normal": p.class_counts()[0], "pneumonia": p.class_counts()[1]}
        for p in parts
    }
    images = np.concatenate([p.images for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    origin = [(p.name, i) for p in parts for i in range(len(p))]
    keep = np.arange(labels.size)
    if limit is not None and limit < labels.size:
        keep = _stratified_positions(labels, limit)
    if min(int((labels[keep] == c).sum()) for c in (0, 1)) == 0:
        raise AnalysisError("the data must contain both classes")
    return Pooled(images[keep], labels[keep], [origin[i] for i in keep], counts)


def _stratified_positions(labels: np.ndarray, limit: int) -> np.ndarray:
    """Evenly spaced images of each class, about ``limit`` in all, class shares kept."""
    keep = []
    for cls in (0, 1):
        idx = np.flatnonzero(labels == cls)
        share = max(2, round(limit * idx.size / labels.size))
        keep.append(idx[np.linspace(0, idx.size - 1, min(share, idx.size)).astype(np.int64)])
    return np.sort(np.concatenate(keep))


def train(cfg: TrainConfig, *, console: Console | None = None, quiet: bool = False) -> Path:
    """Cross-validate the recipe, fit it on all data and write a model package.

    Parameters
    ----------
    cfg
        All settings; see :class:`TrainConfig`.
    console
        Where the progress bar and summary go (a rich console on stderr by default).
    quiet
        Suppress the progress bar (tests, batch jobs).

    Returns
    -------
    Path
        The package directory ``cfg.out``.

    Raises
    ------
    AnalysisError
        On invalid settings or an unavailable device; InvalidInputError on unusable data.
    """
    _check(cfg)
    console = console or Console(stderr=True)
    pooled = pooled_data(cfg.data, cfg.train_limit)
    x = torch.from_numpy(scale_uint8(pooled.images))
    y = pooled.labels
    started = time.perf_counter()
    with (
        deterministic(cfg.seed, cfg.threads),
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
        ) as progress,
    ):
        total = cfg.epochs * cfg.members * (cfg.folds + 1)
        task = progress.add_task("training", total=total)

        def tick(what: str) -> None:
            progress.update(task, advance=1, description=what)

        cv: CVResult | None = None
        if cfg.folds:

            def fit(idx: np.ndarray, seed: int) -> Callable[[np.ndarray], np.ndarray]:
                nets = [
                    _fit_member(cfg, x[idx], y[idx], seed + m,
                                _ticker(tick, f"CV seed {seed} member {m + 1}"))
                    for m in range(cfg.members)
                ]  # fmt: skip

                def predict(j: np.ndarray) -> np.ndarray:
                    return np.stack([_predict(net, x[j], cfg.device) for net in nets])

                return predict

            cv = cross_validate(
                y,
                fit,
                k=cfg.folds,
                seed=cfg.seed,
                cal_fraction=cfg.cal_fraction,
                rule=cfg.operating_point,
                min_sensitivity=cfg.min_sensitivity,
            )
        members = cv.chosen_members if cv else cfg.members
        progress.update(task, total=cfg.epochs * cfg.members * cfg.folds + cfg.epochs * members)
        fit_idx, cal_idx = stratified_split(np.arange(y.size), y, cfg.cal_fraction, cfg.seed + 999)
        histories: list[list[dict[str, float]]] = []
        nets = []
        for m in range(members):
            history: list[dict[str, float]] = []
            nets.append(
                _fit_member(cfg, x[fit_idx], y[fit_idx], cfg.seed + 10_000 + m,
                            _ticker(tick, f"final member {m + 1}/{members}"), history)
            )  # fmt: skip
            histories.append(history)
    duration = time.perf_counter() - started
    return _write_package(
        cfg, pooled, nets, histories, fit_idx, cal_idx, cv, duration, console, quiet
    )


def _ticker(tick: Callable[[str], None], what: str) -> Callable[[int], None]:
    """Per-epoch progress callback naming the member being trained."""

    def on_epoch(epoch: int) -> None:
        tick(f"{what} epoch {epoch}")

    return on_epoch


def _check(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.members < 1 or cfg.batch_size < 1 or cfg.threads < 1:
        raise AnalysisError("epochs, members, batch size and threads must all be at least 1")
    if cfg.device not in ("cpu", "cuda"):
        raise AnalysisError(f"unknown device {cfg.device!r}; use cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("device cuda requested but CUDA is not available")
    if cfg.train_limit is not None and cfg.train_limit < 20:
        raise AnalysisError("--limit must keep at least 20 images")
    if cfg.folds == 1 or cfg.folds < 0:
        raise AnalysisError("--folds must be 0 (no cross-validation) or at least 2")
    if not 0.0 < cfg.cal_fraction < 0.5:
        raise AnalysisError("--cal-fraction must be between 0 and 0.5")
    check_prior(cfg.prior)
    if cfg.operating_point not in (MAX_BALANCED_ACCURACY, MIN_SENSITIVITY):
        raise AnalysisError(f"unknown operating point {cfg.operating_point!r}")


def _fit_member(
    cfg: TrainConfig,
    x_train: torch.Tensor,
    y_np: np.ndarray,
    seed: int,
    on_epoch: Callable[[int], Any],
    history: list[dict[str, float]] | None = None,
) -> nn.Module:
    """Train one member for ``cfg.epochs`` epochs and return it in eval mode.

    No checkpoint is picked: the one-cycle schedule ends at a tiny learning rate, so the last
    epoch is a settled model, and picking the "best" epoch on held-out images would make
    those images' figures optimistic.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(cfg.device)
    net = PneumoniaCNN(cfg.channels, cfg.dropout).to(device)
    y_train = torch.from_numpy(y_np)
    n = x_train.shape[0]
    counts = np.bincount(y_np, minlength=2).astype(np.float64)
    # Inverse-frequency weights: each class contributes equally to the loss.
    weights = torch.tensor(n / (2.0 * np.maximum(counts, 1)), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    steps = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for b in range(steps):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb = x_train[idx]
            if cfg.augment is not None:
                xb = augment_batch(xb, gen, cfg.augment)
            xb, yb = xb.to(device), y_train[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        if history is not None:
            history.append({"epoch": epoch, "train_loss": total / n})
        on_epoch(epoch)
    return net.eval()


def _predict(net: nn.Module, x: torch.Tensor, device: str) -> np.ndarray:
    """Pneumonia probability of one member, in fixed 256-image chunks."""
    net.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], 256):
            logits = net(x[start : start + 256].to(device))
            out.append(torch.softmax(logits, dim=1)[:, 1].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _write_package(
    cfg: TrainConfig,
    pooled: Pooled,
    nets: list[nn.Module],
    histories: list[list[dict[str, float]]],
    fit_idx: np.ndarray,
    cal_idx: np.ndarray,
    cv: CVResult | None,
    duration: float,
    console: Console,
    quiet: bool,
) -> Path:
    """Save weights, calibrate and set the operating point through the real loader, write
    the CV predictions, the cards and the figures."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble([PneumoniaCNN(cfg.channels, cfg.dropout) for _ in nets])
    for target, net in zip(ensemble.members, nets, strict=True):
        target.load_state_dict(net.state_dict())
    weights = out / WEIGHTS
    torch.save(ensemble.state_dict(), weights)
    sha = file_sha256(weights)
    (out / HASH_FILE).write_text(f"{sha}  {WEIGHTS}\n", encoding="utf-8")

    name = cfg.name or out.resolve().name
    arch = {
        "name": ARCHITECTURE,
        "channels": list(cfg.channels),
        "dropout": cfg.dropout,
        "members": len(nets),
        "parameters": sum(p.numel() for p in ensemble.parameters()),
        "blocks": "monai.networks.blocks.Convolution (conv3x3-BatchNorm-ReLU)",
    }
    card: dict[str, Any] = {"name": name, "model_id": f"{name}:{sha[:12]}", "threshold": 0.5}
    card["architecture"] = arch
    model_card.write_json(out, card)  # provisional: lets the real loader read the package

    y = pooled.labels
    loaded = load_model(out, device=cfg.device)
    cal_raw = loaded.raw_proba(scale_uint8(pooled.images[cal_idx]))
    calibration = fit_calibration(y[cal_idx], cal_raw)
    choice = choose_threshold(
        y[cal_idx],
        calibration.llr(cal_raw),
        cfg.seed,
        rule=cfg.operating_point,
        min_sensitivity=cfg.min_sensitivity,
    )
    threshold = float(adjust_to_prior(np.array([choice["threshold"]]), cfg.prior)[0])
    estimate: dict[str, Any] | None = None
    if cv is not None:
        estimate = report(cv, deployment_prior=cfg.prior)
        _save_cv_predictions(out / CV_PREDICTIONS, cv, pooled)
        plots.reliability(out / RELIABILITY_PNG, estimate)
        plots.cv_roc(out / CV_ROC_PNG, y, cv.oof()[1], estimate)
    plots.loss_curves(out / CURVES_PNG, histories)
    card = model_card.build(
        cfg=cfg,
        name=name,
        sha=sha,
        arch=arch,
        calibration=calibration,
        choice=choice,
        threshold=threshold,
        pooled=pooled,
        n_fit=int(fit_idx.size),
        n_cal=int(cal_idx.size),
        cv=estimate,
        cv_folds=_fold_params(cv) if cv else None,
        histories=histories,
        duration_s=duration,
    )
    model_card.write_json(out, card)
    model_card.write_markdown(out, card)
    if not quiet:
        summary = (
            f"CV accuracy {estimate['metrics']['accuracy']:.4f}  AUC "
            f"{estimate['metrics']['auc']:.4f}  ECE {estimate['calibration']['ece_calibrated']:.4f}"
            if estimate
            else "no cross-validation"
        )
        console.print(f"wrote {out}  {summary}  threshold {threshold:.4f}  ({duration:.0f} s)")
    return out


def _fold_params(cv: CVResult) -> list[dict[str, Any]]:
    """Per fold and ensemble size: the calibration and LLR threshold fitted on its cal part."""
    return [
        {
            "fold": fr.fold,
            "calibrations": [c.as_dict() for c in fr.calibrations],
            "thresholds_llr": list(fr.thresholds),
            "n_fit": int(fr.fit.size),
            "n_cal": int(fr.cal.size),
        }
        for fr in cv.results
    ]


def _save_cv_predictions(path: Path, cv: CVResult, pooled: Pooled) -> None:
    """Out-of-fold raw member probabilities with fold and calibration-part membership.

    Small (a few hundred kB) and shipped, so anyone can recompute the card's CV figures and
    check that no test fold took part in its own calibration or threshold.
    """
    n = cv.labels.size
    raw = np.zeros((cv.members, n), dtype=np.float64)
    in_fit = np.zeros((len(cv.results), n), dtype=bool)
    in_cal = np.zeros((len(cv.results), n), dtype=bool)
    for fr in cv.results:
        raw[:, fr.test] = fr.test_raw
        in_fit[fr.fold, fr.fit] = True
        in_cal[fr.fold, fr.cal] = True
    split = np.array([s for s, _ in pooled.origin])
    index = np.array([i for _, i in pooled.origin], dtype=np.int64)
    np.savez_compressed(
        path,
        labels=cv.labels,
        folds=cv.folds,
        raw=raw,
        in_fit=in_fit,
        in_cal=in_cal,
        split=split,
        index=index,
    )
