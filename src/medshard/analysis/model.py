"""The pneumonia classifier and its on-disk package.

A model package is a directory holding ``model.pt`` (a PyTorch state dict), ``sha256`` (hash of
``model.pt``), ``model_card.json`` (architecture, threshold, provenance, validation metrics) and
``MODEL_CARD.md``. The card carries everything needed to rebuild the network, so loading never
depends on code defaults that may change after the model was trained, and the hash lets the
archive record exactly which weights produced a finding.

Shipped packages live in ``medshard/analysis/models/<name>/`` and are loaded by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.networks.blocks import Convolution
from torch import nn

from medshard.analysis.package import (
    CARD_JSON,
    CARD_MD,
    HASH_FILE,
    WEIGHTS,
    file_sha256,
    models_dir,
    read_card,
    resolve_model_dir,
    shipped_models,
)
from medshard.errors import AnalysisError

ARCHITECTURE = "PneumoniaCNN"

__all__ = [
    "ARCHITECTURE",
    "CARD_JSON",
    "CARD_MD",
    "HASH_FILE",
    "WEIGHTS",
    "Ensemble",
    "LoadedModel",
    "PneumoniaCNN",
    "build_network",
    "file_sha256",
    "load_model",
    "models_dir",
    "read_card",
    "resolve_model_dir",
    "shipped_models",
]


class PneumoniaCNN(nn.Module):
    """A VGG-style CNN for 1x28x28 inputs built from MONAI convolution blocks.

    Two 3x3 conv-batchnorm-ReLU blocks per stage, max-pooling between stages (28 -> 14 -> 7),
    global average pooling and one linear layer with two logits. At 28x28 deeper or pretrained
    networks mostly add parameters: this stays around 0.1-0.3 M parameters and trains in
    seconds per epoch on a CPU. Global *mean* rather than ``AdaptiveAvgPool2d`` keeps the
    backward pass deterministic on CUDA too.

    Parameters
    ----------
    channels
        Feature maps per stage; the number of stages is ``len(channels)``.
    dropout
        Dropout before the classifier, the main regulariser for a 3.9 k-image training set.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 1
        for i, ch in enumerate(channels):
            for j in range(2):
                layers.append(
                    Convolution(
                        spatial_dims=2,
                        in_channels=in_ch if j == 0 else ch,
                        out_channels=ch,
                        kernel_size=3,
                        act="RELU",
                        norm="BATCH",
                        adn_ordering="NA",
                    )
                )
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            in_ch = ch
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_ch, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two logits per image (normal, pneumonia)."""
        h = self.features(x).mean(dim=(2, 3))
        return self.head(self.dropout(h))  # type: ignore[no-any-return]


class Ensemble(nn.Module):
    """Independently trained members whose pneumonia probabilities are averaged.

    Averaging a few seeds smooths the decision function of small networks trained on few
    normal cases, which makes the validation-chosen threshold transfer better to new data.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean pneumonia probability over members, shape ``(N,)``."""
        probs = [torch.softmax(m(x), dim=1)[:, 1] for m in self.members]
        return torch.stack(probs).mean(dim=0)


def build_network(arch: dict[str, Any]) -> Ensemble:
    """Rebuild the network described by a model card's ``architecture`` entry."""
    if arch.get("name") != ARCHITECTURE:
        raise AnalysisError(f"unknown architecture {arch.get('name')!r}; expected {ARCHITECTURE}")
    try:
        channels = [int(c) for c in arch["channels"]]
        dropout = float(arch.get("dropout", 0.0))
        members = int(arch.get("members", 1))
    except (KeyError, TypeError, ValueError) as exc:
        raise AnalysisError(f"model card architecture is incomplete: {exc}") from exc
    if members < 1 or not channels:
        raise AnalysisError("model card architecture needs at least one member and one stage")
    return Ensemble([PneumoniaCNN(channels, dropout) for _ in range(members)])


@dataclass
class LoadedModel:
    """A verified model package ready for inference.

    Attributes
    ----------
    model_id
        ``<name>:<first 12 hex of sha256>``; what findings record as their producer.
    sha256
        Hash of ``model.pt``, checked against the package's ``sha256`` file on load.
    threshold
        Probability at or above which an image is called pneumonia (chosen on validation).
    card
        The parsed ``model_card.json``.
    path
        The package directory.
    """

    model_id: str
    sha256: str
    threshold: float
    card: dict[str, Any]
    path: Path
    network: Ensemble = field(repr=False)
    device: str = "cpu"
    batch_size: int = 256

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """Pneumonia probability per image.

        Parameters
        ----------
        batch
            float32 ``(N, 1, 28, 28)`` as made by :mod:`medshard.analysis.preprocess`.

        Returns
        -------
        np.ndarray
            float64 ``(N,)`` in [0, 1]. Runs in fixed-size chunks so results do not depend on
            how callers group images.
        """
        arr = np.asarray(batch)
        if arr.ndim != 4 or arr.shape[1:] != (1, 28, 28):
            raise AnalysisError(f"expected a batch of shape (N, 1, 28, 28), got {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        out: list[np.ndarray] = []
        self.network.eval()
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start : start + self.batch_size].to(self.device)
                out.append(self.network(chunk).double().cpu().numpy())
        return np.concatenate(out)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """0/1 calls at the model's threshold."""
        return (self.predict_proba(batch) >= self.threshold).astype(np.int64)


def load_model(name_or_dir: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Load and verify a model package.

    Parameters
    ----------
    name_or_dir
        A package directory, or the name of a shipped model such as ``pneumonia``.
    device
        ``cpu`` or ``cuda``.

    Raises
    ------
    AnalysisError
        If the package is missing, incomplete, its weights do not match the recorded hash (a
        tampered or half-copied package must never produce findings), or the weights do not
        fit the architecture in its card.
    """
    model_dir = resolve_model_dir(name_or_dir)
    card = read_card(model_dir)
    weights = model_dir / WEIGHTS
    if not weights.is_file():
        raise AnalysisError(f"{model_dir}: no {WEIGHTS}")
    actual = file_sha256(weights)
    hash_file = model_dir / HASH_FILE
    if hash_file.is_file():
        recorded = hash_file.read_text(encoding="utf-8").split()
        if not recorded or recorded[0].lower() != actual:
            raise AnalysisError(
                f"{weights}: sha256 {actual[:16]}... does not match the package's recorded hash"
            )
    network = build_network(card.get("architecture", {}))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        network.load_state_dict(state, strict=True)
    except Exception as exc:  # torch raises RuntimeError, pickle errors, ...
        raise AnalysisError(f"{weights}: weights do not load into {ARCHITECTURE} ({exc})") from exc
    if device == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("device cuda requested but CUDA is not available")
    network.to(device).eval()
    try:
        threshold = float(card["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnalysisError(f"{model_dir}: model card has no numeric threshold") from exc
    name = str(card.get("name", model_dir.name))
    return LoadedModel(
        model_id=str(card.get("model_id", f"{name}:{actual[:12]}")),
        sha256=actual,
        threshold=threshold,
        card=card,
        path=model_dir,
        network=network,
        device=device,
    )
