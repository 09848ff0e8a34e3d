"""Model cards: what a model is, how it was made and how well it did, in JSON and Markdown.

The JSON card is what :func:`medshard.analysis.model.load_model` reads (architecture and
threshold) and what reviewers and ``medshard ai eval`` compare against; the Markdown card is
its human-readable rendering. Every figure in either comes from the training run that wrote it.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medshard.analysis.dataset import CLASS_NAMES, Split
from medshard.analysis.model import CARD_JSON, CARD_MD, WEIGHTS, file_sha256
from medshard.analysis.preprocess import MEAN, STD

if TYPE_CHECKING:
    from medshard.analysis.train import TrainConfig

LICENCE = "CC BY 4.0"
LICENCE_URL = "https://creativecommons.org/licenses/by/4.0/"
CITATION = (
    'Yang J. et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D '
    'biomedical image classification", Scientific Data 10, 41 (2023); source images from '
    "Kermany D. et al., Cell 172(5), 2018."
)
_PACKAGES = ("torch", "monai", "numpy", "pydicom", "matplotlib", "rich", "typer", "medshard")


def software_versions() -> dict[str, str]:
    """Versions of the interpreter and the libraries that shape training results."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def build(
    *,
    cfg: TrainConfig,
    name: str,
    sha: str,
    arch: dict[str, Any],
    threshold: dict[str, Any],
    validation: dict[str, Any],
    train_split: Split,
    val_split: Split,
    members: list[dict[str, Any]],
    duration_s: float,
) -> dict[str, Any]:
    """Assemble the JSON card from a finished training run."""
    n_normal, n_pneu = train_split.class_counts()
    v_normal, v_pneu = val_split.class_counts()
    return {
        "name": name,
        "model_id": f"{name}:{sha[:12]}",
        "sha256": sha,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": "binary classification of frontal chest radiographs",
        "classes": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "intended_use": (
            "Research and demonstration of AI-on-ingest in medshard. Not a medical device: "
            "not validated for diagnosis; outputs must not guide patient care."
        ),
        "limitations": [
            "Trained on 28x28 downsampled paediatric chest X-rays from one source "
            "(Guangzhou Women and Children's Medical Center); performance on adults, other "
            "hospitals, lateral views or other resolutions is unknown.",
            "The threshold was chosen on the validation split, which also selected the "
            "checkpoints; validation figures are therefore optimistic for unseen data.",
        ],
        "architecture": arch,
        "input": {
            "shape": [1, 28, 28],
            "preprocessing": "medshard.analysis.preprocess.prepare_image / prepare_dataset",
            "scaling": f"(uint8 / 255 - {MEAN}) / {STD}",
        },
        "output": "mean over members of softmax probability of pneumonia",
        "threshold": threshold["threshold"],
        "threshold_selection": threshold,
        "data": {
            "name": "PneumoniaMNIST (MedMNIST v2), train + val",
            "file": Path(cfg.data).name,
            "sha256": file_sha256(Path(cfg.data)),
            "licence": LICENCE,
            "licence_url": LICENCE_URL,
            "citation": CITATION,
            "train": {"n": len(train_split), "normal": n_normal, "pneumonia": n_pneu},
            "val": {"n": len(val_split), "normal": v_normal, "pneumonia": v_pneu},
        },
        "training": {
            "command": cfg.command(),
            "eval_command": cfg.eval_command(),
            "seed": cfg.seed,
            "epochs": cfg.epochs,
            "members": members,
            "batch_size": cfg.batch_size,
            "optimizer": "AdamW",
            "lr": cfg.lr,
            "lr_schedule": "OneCycleLR (cosine), stepped per batch",
            "weight_decay": cfg.weight_decay,
            "dropout": cfg.dropout,
            "loss": "cross-entropy with inverse-frequency class weights (train split)",
            "augmentation": cfg.augment.as_dict() if cfg.augment else None,
            "checkpoint_selection": "per member, epoch with the highest val ROC AUC "
            "(ties: lowest val loss)",
            "device": cfg.device,
            "threads": cfg.threads,
            "deterministic": True,
            "train_limit": cfg.train_limit,
            "duration_s": round(duration_s, 1),
        },
        "validation": validation,
        "software": software_versions(),
        "files": {
            WEIGHTS: sha,
            "training_curves.png": "loss and val AUC per epoch and member",
            "val_roc.png": "validation ROC of the shipped ensemble with the operating point",
        },
    }


def write_json(out: Path, card: dict[str, Any]) -> None:
    """Write ``model_card.json`` (sorted keys off: the order above reads top-down)."""
    (out / CARD_JSON).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def write_markdown(out: Path, card: dict[str, Any]) -> None:
    """Render ``MODEL_CARD.md`` from the JSON card."""
    (out / CARD_MD).write_text(render_markdown(card), encoding="utf-8")


def render_markdown(card: dict[str, Any]) -> str:
    """The human-readable model card."""
    arch, data, tr, val = card["architecture"], card["data"], card["training"], card["validation"]
    cm = val["confusion_matrix"]
    thr = card["threshold_selection"]
    chosen = ", ".join(
        f"seed {m['seed']} epoch {m['best_epoch']} (val AUC {m['best_val_auc']:.4f})"
        for m in tr["members"]
    )
    aug = tr["augmentation"]
    aug_text = ", ".join(f"{k}={v}" for k, v in aug.items()) if aug else "none"
    soft = ", ".join(f"{k} {v}" for k, v in card["software"].items())
    lines = [
        f"# Model card: `{card['name']}`",
        "",
        f"Model id `{card['model_id']}`; weights `{WEIGHTS}` sha256 `{card['sha256']}`.",
        f"Created {card['created']}.",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        f"Task: {card['task']}; classes {', '.join(card['classes'])}; positive class "
        f"`{card['positive_class']}`, called when the probability is >= the threshold.",
        "",
        "## Architecture",
        "",
        f"{arch['name']}: ensemble of {arch['members']} CNN(s), each two "
        f"{arch['blocks']} per stage with channels {arch['channels']}, 2x2 max-pooling "
        f"between stages, global mean pooling, dropout {arch['dropout']}, linear layer to 2 "
        f"logits. {arch['parameters']:,} parameters in total. Output: {card['output']}.",
        "",
        f"Input: {card['input']['shape']} from `{card['input']['preprocessing']}`, scaled "
        f"{card['input']['scaling']}.",
        "",
        "## Data",
        "",
        f"{data['name']} (`{data['file']}`, sha256 `{data['sha256']}`).",
        f"Train: {data['train']['n']} images ({data['train']['normal']} normal / "
        f"{data['train']['pneumonia']} pneumonia). Val: {data['val']['n']} images "
        f"({data['val']['normal']} normal / {data['val']['pneumonia']} pneumonia).",
        "",
        f"Licence: [{data['licence']}]({data['licence_url']}). Cite: {data['citation']}",
        "",
        "## Training",
        "",
        "```",
        tr["command"],
        "```",
        "",
        f"- seed {tr['seed']}, {tr['epochs']} epoch(s) per member, batch {tr['batch_size']}, "
        f"{tr['optimizer']} lr {tr['lr']} ({tr['lr_schedule']}), weight decay "
        f"{tr['weight_decay']}",
        f"- loss: {tr['loss']}",
        f"- augmentation: {aug_text}",
        f"- checkpoint selection: {tr['checkpoint_selection']}; chosen: {chosen}",
        f"- device {tr['device']}, {tr['threads']} threads, deterministic algorithms; "
        f"took {tr['duration_s']} s",
        "",
        "## Threshold",
        "",
        f"{card['threshold']:.6f}: {thr['method']} ({thr['resamples']} resamples, seed "
        f"{thr['seed']}); Youden cut-off on the full val split: {thr['youden_full_val']:.6f}.",
        "",
        "## Validation metrics (val split, at the threshold)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| accuracy | {val['accuracy']:.4f} (95% CI {val['accuracy_ci95'][0]:.4f}-"
        f"{val['accuracy_ci95'][1]:.4f}) |",
        f"| ROC AUC | {val['auc']:.4f} (95% CI {val['auc_ci95'][0]:.4f}-"
        f"{val['auc_ci95'][1]:.4f}) |",
        f"| precision | {val['precision']:.4f} |",
        f"| recall / sensitivity | {val['recall']:.4f} |",
        f"| specificity | {val['specificity']:.4f} |",
        f"| F1 | {val['f1']:.4f} |",
        f"| n | {val['n']} ({val['n_negative']} normal / {val['n_positive']} pneumonia) |",
        "",
        f"Confusion matrix [[tn, fp], [fn, tp]]: {cm}. Intervals: {val['bootstrap']['method']} "
        f"bootstrap, {val['bootstrap']['resamples']} resamples, seed {val['bootstrap']['seed']}.",
        "",
        f"Reproduce (adds `--json` for machine-readable output): `{tr['eval_command']}`",
        "",
        "![training curves](training_curves.png) ![validation ROC](val_roc.png)",
        "",
        "## Limitations",
        "",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Software",
        "",
        soft,
        "",
    ]
    return "\n".join(lines)
