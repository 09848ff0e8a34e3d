"""``medshard ai``: train and evaluate the chest radiograph models.

The sub-app is mounted by the main CLI as ``medshard ai``; it also runs on its own as
``python -m medshard.analysis.cli``. torch is imported inside the commands so that building
the main CLI stays fast for users who never touch AI.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medshard.analysis.dataset import sample_npz_path
from medshard.errors import MedshardError

ai_app = typer.Typer(
    name="ai",
    help="Train and evaluate the chest radiograph (pneumonia) models.",
    no_args_is_help=True,
    add_completion=False,
)
_err = Console(stderr=True)


def _fail(exc: MedshardError) -> typer.Exit:
    _err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    return typer.Exit(code=2)


@ai_app.command("train")
def train_cmd(
    data: Path | None = typer.Option(
        None, "--data", help="MedMNIST-style .npz with train and val splits [default: bundled]"
    ),
    out: Path = typer.Option(..., "--out", help="Model package directory to write"),
    epochs: int = typer.Option(25, "--epochs", min=1, help="Epochs per ensemble member"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of all randomness"),
    members: int = typer.Option(3, "--members", min=1, help="Ensemble members (seeds)"),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (one-cycle)"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    channels: str = typer.Option("16,32,64", "--channels", help="Channels per CNN stage"),
    dropout: float = typer.Option(0.2, "--dropout"),
    threads: int = typer.Option(2, "--threads", min=1, help="torch CPU threads (fixed)"),
    limit: int | None = typer.Option(None, "--limit", help="Use only ~N train images (stratified)"),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable augmentation"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
) -> None:
    """Train a model package: weights, hash, model card and figures."""
    from medshard.analysis.augment import AugmentSettings
    from medshard.analysis.train import TrainConfig, train

    try:
        chans = tuple(int(c) for c in channels.split(",") if c.strip())
    except ValueError:
        raise typer.BadParameter("--channels must be comma-separated integers") from None
    cfg = TrainConfig(
        data=data or sample_npz_path(),
        out=out,
        epochs=epochs,
        seed=seed,
        members=members,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        channels=chans,
        dropout=dropout,
        device=device,
        threads=threads,
        train_limit=limit,
        augment=None if no_augment else AugmentSettings(),
    )
    try:
        train(cfg, console=_err, quiet=quiet)
    except MedshardError as exc:
        raise _fail(exc) from exc


@ai_app.command("eval")
def eval_cmd(
    model: str = typer.Option("pneumonia", "--model", help="Package directory or shipped name"),
    data: Path | None = typer.Option(
        None, "--data", help="MedMNIST-style .npz [default: bundled PneumoniaMNIST]"
    ),
    split: str = typer.Option("test", "--split", help="Split to evaluate (train, val, test)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
) -> None:
    """Metrics of a model at its threshold on one split, with 95% bootstrap intervals."""
    from medshard.analysis.evaluate import evaluate_model
    from medshard.analysis.model import load_model

    try:
        loaded = load_model(model, device=device)
        result = evaluate_model(loaded, data or sample_npz_path(), split)
    except MedshardError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(_json_safe(result)))
        return
    Console().print(_table(result))


def _table(r: dict[str, Any]) -> Table:
    """Readable summary of an evaluation."""
    table = Table(title=escape(f"{r['model_id']} on {r['data']} [{r['split']}], n={r['n']}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    acc_lo, acc_hi = r["accuracy_ci95"]
    auc_lo, auc_hi = r["auc_ci95"]
    table.add_row("accuracy", f"{r['accuracy']:.4f}", f"{acc_lo:.4f}-{acc_hi:.4f}")
    table.add_row("ROC AUC", f"{r['auc']:.4f}", f"{auc_lo:.4f}-{auc_hi:.4f}")
    for key in ("precision", "recall", "f1", "sensitivity", "specificity"):
        table.add_row(key, f"{r[key]:.4f}", "")
    table.add_row("threshold", f"{r['threshold']:.4f}", "")
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    table.add_row(
        escape("confusion [[tn, fp], [fn, tp]]"), escape(f"[[{tn}, {fp}], [{fn}, {tp}]]"), ""
    )
    return table


def _json_safe(value: Any) -> Any:
    """Replace NaN (e.g. AUC of a one-class split) with null so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


if __name__ == "__main__":
    ai_app()
