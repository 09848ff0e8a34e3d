"""Model packages on disk, without torch: where they are, their card and their weights' hash.

A package is a directory holding ``model.pt``, ``sha256`` and ``model_card.json``; bare names
are packages shipped in ``analysis/models``. Batch drivers and the queue need a package's
identity (to skip work done by the same weights) without paying for importing torch, so this
lives apart from :mod:`medshard.analysis.model`, which loads and runs the weights.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from medshard.errors import AnalysisError

WEIGHTS = "model.pt"
CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
HASH_FILE = "sha256"

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def models_dir() -> Path:
    """Directory of the model packages shipped inside the medshard package."""
    return Path(__file__).resolve().parent / "models"


def shipped_models() -> list[str]:
    """Names of shipped models, for error messages and CLIs."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CARD_JSON).is_file())


def file_sha256(path: Path) -> str:
    """Lowercase hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_model_dir(name_or_dir: str | Path) -> Path:
    """A package directory from a path or a shipped model's name.

    A path that exists wins, so a locally trained package can shadow nothing by accident:
    bare names only ever resolve inside the shipped models directory.
    """
    p = Path(name_or_dir)
    if p.is_dir():
        return p
    name = str(name_or_dir)
    if _NAME.match(name):
        shipped = models_dir() / name
        if shipped.is_dir():
            return shipped
    known = ", ".join(shipped_models()) or "none"
    raise AnalysisError(
        f"no model {name!r}: not a directory and not a shipped model (shipped: {known})"
    )


def read_card(model_dir: Path) -> dict[str, Any]:
    """Parse ``model_card.json``; AnalysisError if it is missing or not a JSON object."""
    path = model_dir / CARD_JSON
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AnalysisError(f"{model_dir}: no {CARD_JSON}; not a model package") from exc
    except (OSError, ValueError) as exc:
        raise AnalysisError(f"{path}: unreadable model card ({exc})") from exc
    if not isinstance(card, dict):
        raise AnalysisError(f"{path}: model card is not a JSON object")
    return card


def package_identity(name_or_dir: str | Path) -> tuple[str, str]:
    """(weights sha256, model id) of a package, as recorded in it (hashing the weights only
    when no hash was recorded); ``load_model`` verifies the weights against the same hash."""
    directory = resolve_model_dir(name_or_dir)
    weights, recorded = directory / WEIGHTS, directory / HASH_FILE
    if not weights.is_file():
        raise AnalysisError(f"{directory}: no {WEIGHTS}; not a model package")
    text = recorded.read_text(encoding="utf-8").split() if recorded.is_file() else []
    sha = text[0].lower() if text else file_sha256(weights)
    card = read_card(directory)
    name = str(card.get("name", directory.name))
    return sha, str(card.get("model_id") or f"{name}:{sha[:12]}")
