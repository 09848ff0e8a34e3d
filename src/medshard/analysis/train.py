"""Deterministic training of the pneumonia classifier into a model package.

Each ensemble member is trained on the *train* split with class-weighted cross-entropy
(the split is 90% pneumonia) and batch augmentation; its checkpoint is the epoch with the best
*validation* ROC AUC. The operating threshold is then chosen on validation only (bootstrap
median of Youden's J), and the package is evaluated through the same loader and metric code
that ``medshard ai eval`` uses, so the card's figures are reproducible from the files alone.

Determinism: every random draw comes from seeded generators, deterministic algorithms are
enforced and the thread count is fixed; two runs with the same settings on the same machine
produce bit-identical weights.
"""

from __future__ import annotations

import copy
import math
import os
import shlex
import time
from collections.abc import Iterator
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
from medshard.analysis.dataset import Split, load_split, sample_npz_path
from medshard.analysis.evaluate import evaluate_scores, roc_auc, roc_curve
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

#: Bootstrap settings of the threshold choice (independent of the evaluation bootstrap).
THRESHOLD_RESAMPLES = 200


@dataclass
class TrainConfig:
    """Every setting that influences the trained weights; all of it goes into the card."""

    data: Path
    out: Path
    epochs: int = 25
    seed: int = 0
    members: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    channels: tuple[int, ...] = (16, 32, 64)
    dropout: float = 0.2
    device: str = "cpu"
    threads: int = 2
    #: Use only about N training images, class-stratified (quick tests); None uses all.
    train_limit: int | None = None
    augment: AugmentSettings | None = field(default_factory=AugmentSettings)
    name: str | None = None

    def eval_command(self) -> str:
        """The CLI invocation that reproduces the card's validation figures."""
        model = str(self.out)
        if self.out.resolve().parent == models_dir():
            model = self.out.name
        args = ["python", "-m", "medshard.analysis.cli", "eval", "--model", model]
        if not _is_bundled(self.data):
            args += ["--data", str(self.data)]
        return shlex.join([*args, "--split", "val"])

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
            "--threads", str(self.threads),
        ]  # fmt: skip
        if self.train_limit is not None:
            args += ["--limit", str(self.train_limit)]
        if self.augment is None:
            args.append("--no-augment")
        return shlex.join(args)


def _is_bundled(data: Path) -> bool:
    """Whether ``data`` is the in-repo sample, which the CLI uses when ``--data`` is omitted."""
    return Path(data).resolve() == sample_npz_path()


@dataclass
class MemberResult:
    """One trained member: its best state and the per-epoch history for the curves."""

    seed: int
    state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict[str, float]]


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


def train(cfg: TrainConfig, *, console: Console | None = None, quiet: bool = False) -> Path:
    """Train, select, calibrate the threshold and write a model package.

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
    train_split = load_split(cfg.data, "train")
    val_split = load_split(cfg.data, "val")
    if cfg.train_limit is not None:
        train_split = train_split.stratified_head(cfg.train_limit)
    if min(train_split.class_counts()) == 0 or min(val_split.class_counts()) == 0:
        raise AnalysisError("train and val splits must each contain both classes")

    started = time.perf_counter()
    members: list[MemberResult] = []
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
        task = progress.add_task("training", total=cfg.epochs * cfg.members)
        for m in range(cfg.members):
            members.append(_train_member(cfg, m, train_split, val_split, progress, task))
    duration = time.perf_counter() - started
    return _write_package(cfg, members, train_split, val_split, duration, console, quiet)


def _check(cfg: TrainConfig) -> None:
    if cfg.epochs < 1 or cfg.members < 1 or cfg.batch_size < 1 or cfg.threads < 1:
        raise AnalysisError("epochs, members, batch size and threads must all be at least 1")
    if cfg.device not in ("cpu", "cuda"):
        raise AnalysisError(f"unknown device {cfg.device!r}; use cpu or cuda")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("device cuda requested but CUDA is not available")
    if cfg.train_limit is not None and cfg.train_limit < 2:
        raise AnalysisError("--limit must keep at least 2 training images")


def _train_member(
    cfg: TrainConfig,
    index: int,
    train_split: Split,
    val_split: Split,
    progress: Progress,
    task: Any,
) -> MemberResult:
    """Train one member; keep the epoch with the highest val AUC (ties: lowest val loss)."""
    seed = cfg.seed + index
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(cfg.device)
    net = PneumoniaCNN(cfg.channels, cfg.dropout).to(device)

    x_train = torch.from_numpy(scale_uint8(train_split.images))
    y_train = torch.from_numpy(train_split.labels)
    x_val = torch.from_numpy(scale_uint8(val_split.images)).to(device)
    y_val = torch.from_numpy(val_split.labels).to(device)
    n = x_train.shape[0]
    counts = np.array(train_split.class_counts(), dtype=np.float64)
    # Inverse-frequency weights: each class contributes equally to the loss.
    weights = torch.tensor(n / (2.0 * counts), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    steps = math.ceil(n / cfg.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps)

    history: list[dict[str, float]] = []
    best: tuple[float, float] = (-1.0, math.inf)
    best_state: dict[str, torch.Tensor] = {}
    best_epoch = 0
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
        val_loss, val_scores = _validate(net, x_val, y_val)
        val_auc = roc_auc(val_split.labels, val_scores)
        history.append(
            {"epoch": epoch, "train_loss": total / n, "val_loss": val_loss, "val_auc": val_auc}
        )
        if (val_auc, -val_loss) > (best[0], -best[1]):
            best = (val_auc, val_loss)
            best_state = copy.deepcopy(net.state_dict())
            best_epoch = epoch
        progress.update(
            task,
            advance=1,
            description=(
                f"member {index + 1}/{cfg.members} epoch {epoch}/{cfg.epochs} "
                f"val AUC {val_auc:.4f} (best {best[0]:.4f} @ {best_epoch})"
            ),
        )
    return MemberResult(seed=seed, state=best_state, best_epoch=best_epoch, history=history)


def _validate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Unweighted val cross-entropy and pneumonia probabilities, in fixed 256-image chunks."""
    net.eval()
    logits = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], 256):
            logits.append(net(x[start : start + 256]))
    out = torch.cat(logits)
    loss = float(nn.functional.cross_entropy(out, y))
    return loss, torch.softmax(out, dim=1)[:, 1].double().cpu().numpy()


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Cut-off maximising sensitivity + specificity - 1, placed midway between scores.

    Youden's J weighs both classes equally, so unlike an accuracy-maximising cut-off it does
    not depend on the validation split's class balance, which differs from deployment data.
    The midpoint keeps the cut-off away from any validation score, so last-bit differences in
    floating point cannot flip a call.
    """
    fpr, tpr, cutoffs = roc_curve(labels, scores)
    i = int(np.argmax(tpr - fpr))
    hi = cutoffs[i]
    lo = cutoffs[i + 1] if i + 1 < cutoffs.size else hi
    if not np.isfinite(hi):
        return float(lo)
    return float((hi + lo) / 2.0)


def choose_threshold(labels: np.ndarray, scores: np.ndarray, seed: int) -> dict[str, Any]:
    """Median of Youden cut-offs over stratified bootstrap resamples of validation.

    A single Youden point on 524 images hinges on a handful of cases; the bootstrap median is a
    smoother estimate of the same optimum and transfers better to unseen data.
    """
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    cuts = []
    for _ in range(THRESHOLD_RESAMPLES):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        cuts.append(youden_threshold(y[idx], scores[idx]))
    return {
        "method": "median of Youden-J cut-offs over stratified bootstrap resamples of val",
        "resamples": THRESHOLD_RESAMPLES,
        "seed": seed,
        "threshold": float(np.median(cuts)),
        "youden_full_val": youden_threshold(y, scores),
    }


def _write_package(
    cfg: TrainConfig,
    members: list[MemberResult],
    train_split: Split,
    val_split: Split,
    duration: float,
    console: Console,
    quiet: bool,
) -> Path:
    """Save weights, choose the threshold through the real loader, evaluate, write the card."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    ensemble = Ensemble([PneumoniaCNN(cfg.channels, cfg.dropout) for _ in members])
    for net, result in zip(ensemble.members, members, strict=True):
        net.load_state_dict(result.state)
    weights = out / WEIGHTS
    torch.save(ensemble.state_dict(), weights)
    sha = file_sha256(weights)
    (out / HASH_FILE).write_text(f"{sha}  {WEIGHTS}\n", encoding="utf-8")

    name = cfg.name or out.resolve().name
    arch = {
        "name": ARCHITECTURE,
        "channels": list(cfg.channels),
        "dropout": cfg.dropout,
        "members": len(members),
        "parameters": sum(p.numel() for p in ensemble.parameters()),
        "blocks": "monai.networks.blocks.Convolution (conv3x3-BatchNorm-ReLU)",
    }
    card: dict[str, Any] = {"name": name, "model_id": f"{name}:{sha[:12]}", "threshold": 0.5}
    card["architecture"] = arch
    model_card.write_json(out, card)  # provisional: lets the real loader read the package

    loaded = load_model(out, device=cfg.device)
    val_scores = loaded.predict_proba(scale_uint8(val_split.images))
    choice = choose_threshold(val_split.labels, val_scores, cfg.seed)
    validation = evaluate_scores(val_split.labels, val_scores, choice["threshold"])
    card = model_card.build(
        cfg=cfg,
        name=name,
        sha=sha,
        arch=arch,
        threshold=choice,
        validation=validation,
        train_split=train_split,
        val_split=val_split,
        members=[
            {
                "seed": r.seed,
                "best_epoch": r.best_epoch,
                "best_val_auc": r.history[r.best_epoch - 1]["val_auc"],
                "history": r.history,
            }
            for r in members
        ],
        duration_s=duration,
    )
    plots.training_curves(out / "training_curves.png", [r.history for r in members],
                          [r.best_epoch for r in members])  # fmt: skip
    plots.roc(out / "val_roc.png", val_split.labels, val_scores, choice["threshold"], validation)
    model_card.write_json(out, card)
    model_card.write_markdown(out, card)
    if not quiet:
        console.print(
            f"wrote {out}  val accuracy {validation['accuracy']:.4f}  AUC {validation['auc']:.4f}"
            f"  threshold {choice['threshold']:.4f}  ({duration:.0f} s)"
        )
    return out
