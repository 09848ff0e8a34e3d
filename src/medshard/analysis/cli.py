"""``medshard ai``: train, evaluate and run the chest radiograph models.

``train`` cross-validates and builds model packages; ``eval`` reports their expected
performance (cross-validated, with intervals), calibration error and latency; ``worker``
serves the durable analysis queue that ingest fills (for deployments without ``medshard
serve``, or to add capacity); ``analyze`` runs a model over stored images in batch, locally
or on Ray.

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
    help="Train, evaluate and run the chest radiograph (pneumonia) models.",
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
    epochs: int = typer.Option(15, "--epochs", min=1, help="Epochs per ensemble member"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    seed: int = typer.Option(0, "--seed", help="Seed of all randomness"),
    members: int = typer.Option(
        3, "--members", min=1, help="Most ensemble members; cross-validation picks how many"
    ),
    batch_size: int = typer.Option(128, "--batch-size", min=1),
    lr: float = typer.Option(3e-3, "--lr", help="Peak learning rate (one-cycle)"),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    channels: str = typer.Option("16,32,64", "--channels", help="Channels per CNN stage"),
    dropout: float = typer.Option(0.2, "--dropout"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (fixed)"),
    limit: int | None = typer.Option(None, "--limit", help="Use only ~N images (stratified)"),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable augmentation"),
    augment: str = typer.Option(
        "", "--augment", help="Augmentation ranges, e.g. rotate_deg=15,shift_px=3"
    ),
    folds: int = typer.Option(5, "--folds", min=0, help="CV folds (0: no estimate, tests)"),
    cal_fraction: float = typer.Option(
        0.2, "--cal-fraction", help="Share held out for calibration and the threshold"
    ),
    prior: float = typer.Option(
        0.74, "--prior", help="Documented default share of pneumonia in deployment"
    ),
    min_sensitivity: float | None = typer.Option(
        None,
        "--min-sensitivity",
        help="Operating point: highest threshold keeping this sensitivity "
        "[default: maximum balanced accuracy]",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar"),
) -> None:
    """Cross-validate and train a model package: weights, hash, model card and figures."""
    from medshard.analysis.augment import AugmentSettings
    from medshard.analysis.cv import MAX_BALANCED_ACCURACY, MIN_SENSITIVITY
    from medshard.analysis.train import TrainConfig, train

    try:
        chans = tuple(int(c) for c in channels.split(",") if c.strip())
    except ValueError:
        raise typer.BadParameter("--channels must be comma-separated integers") from None
    try:
        settings = AugmentSettings.parse(augment)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"--augment: {exc}") from None
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
        augment=None if no_augment else settings,
        folds=folds,
        cal_fraction=cal_fraction,
        prior=prior,
        operating_point=MAX_BALANCED_ACCURACY if min_sensitivity is None else MIN_SENSITIVITY,
        min_sensitivity=min_sensitivity or 0.0,
    )
    try:
        train(cfg, console=_err, quiet=quiet)
    except MedshardError as exc:
        raise _fail(exc) from exc


#: Metrics of the CV estimate copied to the top level of ``ai eval --json``.
_TOP = ("accuracy", "auc", "precision", "recall", "f1", "balanced_accuracy", "specificity")


@ai_app.command("eval")
def eval_cmd(
    model: str = typer.Option("pneumonia", "--model", help="Package directory or shipped name"),
    data: Path | None = typer.Option(
        None, "--data", help="MedMNIST-style .npz [default: bundled PneumoniaMNIST]"
    ),
    split: str | None = typer.Option(
        None, "--split", help="Also evaluate on this split (train, val, test)"
    ),
    prior: float | None = typer.Option(
        None, "--prior", help="Share of pneumonia for --split probabilities [default: card]"
    ),
    latency_runs: int = typer.Option(
        300, "--latency-runs", min=0, help="Timed single-image runs (0: skip latency)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
) -> None:
    """Expected performance: cross-validated figures with 95% intervals (recomputed from the
    package's out-of-fold predictions), calibration error and single-image latency from DICOM
    bytes; with --split, also the figures on that split."""
    from medshard.analysis.cv import package_estimate
    from medshard.analysis.evaluate import evaluate_model
    from medshard.analysis.model import load_model
    from medshard.bench.ai import single_image_latency, synthesized_cr_bytes

    try:
        loaded = load_model(model, device=device)
        data_path = data or sample_npz_path()
        result: dict[str, Any] = {
            "model_id": loaded.model_id,
            "model_sha256": loaded.sha256,
            "calibrated": loaded.calibrated,
            "threshold": loaded.threshold,
            "prior": loaded.prior,
            "operating_point": loaded.card.get("operating_point"),
        }
        cv = None
        if loaded.card.get("expected_performance"):
            cv = package_estimate(loaded.path, loaded.card, data_path)
            result["cross_validation"] = cv
            for key in _TOP:
                result[key] = cv["metrics"][key]
                result[f"{key}_ci95"] = cv["ci95"][key]
            result["ece"] = cv["calibration"]["ece_calibrated"]
            result["ece_ci95"] = cv["calibration"]["ece_calibrated_ci95"]
            result["ece_at_deployment_prior"] = cv["calibration"]["ece_at_deployment_prior"]
            result["n"] = cv["n"]
            result["confusion_matrix"] = cv["confusion_matrix"]
        if split is not None:
            result["split"] = evaluate_model(loaded, data_path, split, prior=prior)
        if latency_runs:
            result["latency_ms"] = single_image_latency(
                loaded, synthesized_cr_bytes(16), runs=latency_runs
            )
    except MedshardError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(_json_safe(result)))
        return
    console = Console()
    if cv is not None:
        console.print(_cv_table(result))
    if split is not None:
        console.print(_table(result["split"]))
    if "latency_ms" in result:
        lat = result["latency_ms"]
        console.print(
            f"single-image latency from DICOM bytes: p50 {lat['p50']:.2f} ms, "
            f"p90 {lat['p90']:.2f} ms ({lat['runs']} runs)"
        )


def _cv_table(r: dict[str, Any]) -> Table:
    """Readable summary of the cross-validated estimate."""
    cv = r["cross_validation"]
    title = (
        f"{r['model_id']}: {cv['folds']}-fold cross-validation, n={cv['n']} "
        f"(operating point: {r['operating_point']['name']})"
    )
    table = Table(title=escape(title))
    table.add_column("metric")
    table.add_column("estimate", justify="right")
    table.add_column("95% CI", justify="right")
    for key in _TOP:
        lo, hi = r[f"{key}_ci95"]
        table.add_row(key, f"{r[key]:.4f}", f"{lo:.4f}-{hi:.4f}")
    lo, hi = r["ece_ci95"]
    table.add_row("ECE (15 bins)", f"{r['ece']:.4f}", f"{lo:.4f}-{hi:.4f}")
    table.add_row(f"ECE at prior {r['prior']}", f"{r['ece_at_deployment_prior']:.4f}", "")
    table.add_row("threshold at prior", f"{r['threshold']:.4f}", "")
    return table


@ai_app.command("worker")
def worker_cmd(
    home: Path | None = typer.Option(
        None, "--home", help="Deployment home (default: $MEDSHARD_HOME)"
    ),
    once: bool = typer.Option(False, "--once", help="Drain the queue, then exit"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Jobs claimed per round"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object at the end"),
) -> None:
    """Serve the analysis queue: jobs enqueued on ingest, with or without `medshard serve`."""
    import signal

    from medshard.analysis.queue import JobQueue
    from medshard.analysis.worker import QueueWorker
    from medshard.cluster.archive import Archive

    try:
        archive = Archive.open(home)
    except MedshardError as exc:
        raise _fail(exc) from exc
    from medshard.security.gate import Gate
    from medshard.security.principal import system_principal

    with archive, Gate(archive) as gate:
        _site, audit_sr = gate.store_hook(system_principal("analysis"))
        worker = QueueWorker(archive, name="cli", batch_size=batch_size, on_commit=audit_sr)
        if once:
            worker.run_once()
        else:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda _s, _f: worker.stop(timeout=0))
            _err.print("analysis worker running; Ctrl-C to stop")
            worker.run_forever()
        finished = worker.report.as_dict()
        queue = JobQueue(archive.catalog).counts()
    if as_json:
        typer.echo(json.dumps({**finished, "queue": queue}))
    else:
        Console().print(
            f"claimed {finished['claimed']} job(s); queue now: "
            + ", ".join(f"{k} {v}" for k, v in queue.items())
        )


@ai_app.command("analyze")
def analyze_cmd(
    shard: int | None = typer.Option(None, "--shard", help="Analyse one shard"),
    study: str | None = typer.Option(None, "--study", help="Analyse one study (UID)"),
    everything: bool = typer.Option(False, "--all", help="Analyse every shard"),
    executor: str = typer.Option("local", "--executor", help="local (process pool) or ray"),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Join this Ray cluster instead of starting a local one"
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Processes (local) or CPUs of a local Ray (default: one per CPU)",
    ),
    model: list[str] | None = typer.Option(
        None, "--model", help="Model(s) to run (default: those of the analysis rules)"
    ),
    home: Path | None = typer.Option(
        None, "--home", help="Deployment home (default: $MEDSHARD_HOME)"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Run models over stored images shard by shard, skipping what the same weights did."""
    from medshard.analysis.batch import Scope, run_batch
    from medshard.analysis.executors import make_executor
    from medshard.cluster.archive import Archive
    from medshard.console import progress_bar

    scope = Scope(shard=shard, study=study, everything=everything)
    try:
        archive = Archive.open(home)
    except MedshardError as exc:
        raise _fail(exc) from exc
    with archive, progress_bar() as bar:
        task = bar.add_task(f"analysing {scope.describe()}", total=None)
        try:
            scope.validate(archive.settings.shards)
            pool = make_executor(executor, workers=workers, ray_address=ray_address)
            try:
                report = run_batch(
                    archive,
                    scope,
                    pool,
                    models=model or None,
                    on_plan=lambda n: bar.update(task, total=n),
                    on_task=lambda r: bar.advance(task, r.instances),
                )
            finally:
                pool.close()
            _audit_batch(archive, scope.describe(), report)
        except MedshardError as exc:
            raise _fail(exc) from exc
    if as_json:
        typer.echo(json.dumps(report))
        return
    Console().print(
        f"{report['scope']}: analysed {report['analysed']}, not eligible "
        f"{report['not_eligible']}, failed {report['failed']}, already done "
        f"{report['already_done']} ({report['seconds']:.1f} s, {report['executor']})"
    )
    for entry in report["models"]:
        for line in entry["errors"]:
            _err.print(f"[yellow]failed[/yellow] {escape(line)}", soft_wrap=True)


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
    if r.get("ece") is not None:
        table.add_row("ECE (15 bins)", f"{r['ece']:.4f}", "")
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


def _audit_batch(archive: Any, what: str, report: dict[str, Any]) -> None:
    """A batch run reads many patients' images as the archive itself; the operator who
    started it is recorded in the audit log with what it covered."""
    from medshard.security.gate import Gate
    from medshard.security.local import operator

    with Gate(archive) as gate:
        caller = operator(gate)
        summary = {k: v for k, v in report.items() if isinstance(v, int | float | str)}
        gate.read(caller.principal, "batch-analysis", detail=f"{what}: {summary}"[:2000])
