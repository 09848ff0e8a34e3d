"""The pneumonia classifier and its on-disk package.

A model package is a directory holding ``model.pt`` (a PyTorch state dict), ``sha256`` (hash of
``model.pt``), ``model_card.json`` (architecture, calibration, prior, operating point,
provenance, cross-validated metrics) and ``MODEL_CARD.md``. The card carries everything needed
to rebuild the network and turn its output into a calibrated probability and a call, so
loading never depends on code defaults that may change after the model was trained, and the
hash lets the archive record exactly which weights produced a finding.

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

from medshard.analysis.calibration import Calibration, adjust_to_prior, check_prior, logit
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
    "Assessment",
    "Ensemble",
    "FusedEnsemble",
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
    normal cases, which makes a threshold chosen on held-out cases transfer better to new data.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean pneumonia probability over members, shape ``(N,)``."""
        probs = [torch.softmax(m(x), dim=1)[:, 1] for m in self.members]
        return torch.stack(probs).mean(dim=0)


class FusedEnsemble(nn.Module):
    """Inference-only twin of an :class:`Ensemble`: all members in one pass.

    A single 28x28 image is far too small to keep a CPU busy, so per-image latency is the sum
    of per-layer call overheads, paid once per member. Here the members' convolutions are
    stacked side by side as grouped convolutions (the first layer shares its one input channel)
    with batch norm folded into them, so an ensemble of M members costs about as many layer
    calls as one member. Outputs equal the ensemble's up to float rounding (tested).
    """

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        members = [m for m in ensemble.members if isinstance(m, PneumoniaCNN)]
        if len(members) != len(ensemble.members) or not members:
            raise AnalysisError("only ensembles of PneumoniaCNN members can be fused")
        count = len(members)
        layers: list[nn.Module] = []
        stacks = zip(*(list(m.features) for m in members), strict=True)
        for depth, group in enumerate(stacks):
            if isinstance(group[0], nn.MaxPool2d):
                layers.append(nn.MaxPool2d(2))
                continue
            weights, biases = [], []
            for block in group:
                conv, norm = block.conv, block.adn.N
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                weights.append(conv.weight * scale[:, None, None, None])
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                biases.append((bias - norm.running_mean) * scale + norm.bias)
            first = group[0].conv
            fused = nn.Conv2d(
                first.in_channels * (1 if depth == 0 else count),
                first.out_channels * count,
                kernel_size=first.kernel_size,
                padding=first.padding,
                groups=1 if depth == 0 else count,
            )
            # Channels-last (weights here, inputs in forward) lets oneDNN run the grouped
            # convolutions without layout reorders: about a third faster per image on a CPU.
            weight = torch.cat(weights).detach().contiguous(memory_format=torch.channels_last)
            fused.weight = nn.Parameter(weight)
            fused.bias = nn.Parameter(torch.cat(biases).detach())
            layers += [fused, nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.count = count
        head_w = torch.stack([m.head.weight.detach() for m in members])  # (M, 2, C)
        head_b = torch.stack([m.head.bias.detach() for m in members])  # (M, 2)
        self.head_w = nn.Parameter(head_w, requires_grad=False)
        self.head_b = nn.Parameter(head_b, requires_grad=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean pneumonia probability over members, shape ``(N,)``."""
        x = x.contiguous(memory_format=torch.channels_last)
        h = self.features(x).mean(dim=(2, 3)).view(x.shape[0], self.count, -1)
        logits = torch.einsum("nmc,mkc->nmk", h, self.head_w) + self.head_b
        return torch.softmax(logits, dim=2)[:, :, 1].mean(dim=1)


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


@dataclass(frozen=True)
class Assessment:
    """One image's result as a finding records it: what the probability means and the call.

    Attributes
    ----------
    probability
        Calibrated probability of pneumonia for ``prior`` (raw output for old packages).
    threshold
        The operating point expressed as a probability at ``prior``.
    prior
        Share of pneumonia assumed where the image comes from (the site's or the card's).
    operating_point
        Name of the rule that set the threshold, e.g. "maximum balanced accuracy".
    calibrated
        Whether ``probability`` is calibrated; False only for packages without calibration.
    """

    probability: float
    threshold: float
    prior: float
    operating_point: str
    calibrated: bool

    @property
    def positive(self) -> bool:
        """The call: the calibrated probability at or above the operating point."""
        return self.probability >= self.threshold


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
        Probability at or above which an image is called pneumonia, at the card's default
        prior: the operating point of the card, applied by every worker.
    calibration
        Map from raw ensemble output to the log-likelihood ratio of pneumonia; None for old
        packages without one, whose probabilities are the raw ensemble output.
    prior
        The card's documented default share of pneumonia in deployment.
    threshold_llr
        The operating point as a log-likelihood ratio: prior-free, so a site with another prior
        gets the same calls and a probability that is right for it.
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
    network: nn.Module = field(repr=False)
    device: str = "cpu"
    batch_size: int = 256
    calibration: Calibration | None = None
    prior: float = 0.5
    threshold_llr: float | None = None

    @property
    def calibrated(self) -> bool:
        """Whether probabilities are calibrated and prior-adjusted (new packages)."""
        return self.calibration is not None and self.threshold_llr is not None

    @property
    def operating_point(self) -> str:
        """Short name of the operating point, as the finding and the SR state it."""
        op = self.card.get("operating_point") or {}
        return str(op.get("name") or "threshold chosen on validation (uncalibrated)")

    def resolve_prior(self, prior: float | None) -> float:
        """``prior``, or the card's default when None or 0 (0 means "not configured")."""
        return self.prior if not prior else check_prior(prior)

    def threshold_at(self, prior: float | None = None) -> float:
        """Probability threshold of the operating point where pneumonia has ``prior``.

        At the card's default prior this is exactly the card's ``threshold``; elsewhere it is
        the same likelihood-ratio cut-off expressed as that site's probability.
        """
        p = self.resolve_prior(prior)
        if not self.calibrated or p == self.prior:
            return self.threshold
        return float(adjust_to_prior(np.array([self.threshold_llr]), p)[0])

    def assess(self, batch: np.ndarray, priors: Sequence[float | None]) -> list[Assessment]:
        """Calibrated probability, threshold and call per image, each at its own prior.

        One forward pass for the whole batch; images from sites with different priors get
        the same likelihood-ratio cut-off, expressed in each site's probability.
        """
        if len(priors) != np.asarray(batch).shape[0]:
            raise AnalysisError("assess needs one prior (or None) per image")
        out: list[Assessment] = []
        if not self.calibrated:
            raw = self._run(batch)
            return [
                Assessment(float(p), self.threshold, self.prior, self.operating_point, False)
                for p in raw
            ]
        llr = self.llr(batch)
        for value, prior in zip(llr, priors, strict=True):
            p = self.resolve_prior(prior)
            prob = float(self.probability(np.array([value]), p)[0])
            out.append(Assessment(prob, self.threshold_at(p), p, self.operating_point, True))
        return out

    def raw_proba(self, batch: np.ndarray) -> np.ndarray:
        """Uncalibrated mean member probability (for calibration and diagnostics)."""
        return self._run(batch)

    def llr(self, batch: np.ndarray) -> np.ndarray:
        """Calibrated log-likelihood ratio of pneumonia per image (prior-free)."""
        raw = self._run(batch)
        if self.calibration is None:
            return logit(raw) - float(logit(self.prior))
        return self.calibration.llr(raw)

    def probability(self, llr: np.ndarray, prior: float | None = None) -> np.ndarray:
        """Probabilities for log-likelihood ratios where pneumonia has ``prior``."""
        return adjust_to_prior(llr, self.resolve_prior(prior))

    def predict_proba(self, batch: np.ndarray, prior: float | None = None) -> np.ndarray:
        """Calibrated probability of pneumonia per image, for ``prior`` (default: the card's).

        Old packages without calibration return the raw ensemble output unchanged.
        """
        if not self.calibrated:
            return self._run(batch)
        return self.probability(self.llr(batch), prior)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Raw pneumonia probability per image.

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

    def predict(self, batch: np.ndarray, prior: float | None = None) -> np.ndarray:
        """0/1 calls at the operating point (the same calls at every prior)."""
        p = self.resolve_prior(prior)
        return (self.predict_proba(batch, p) >= self.threshold_at(p)).astype(np.int64)


def load_model(name_or_dir: str | Path, *, device: str = "cpu", fuse: bool = True) -> LoadedModel:
    """Load and verify a model package.

    Parameters
    ----------
    name_or_dir
        A package directory, or the name of a shipped model such as ``pneumonia``.
    device
        ``cpu`` or ``cuda``.
    fuse
        Run the members as one :class:`FusedEnsemble` (default; about M times fewer layer
        calls per image). False runs the stored ensemble as trained.

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
    network.eval()
    runner: nn.Module = FusedEnsemble(network) if fuse else network
    runner.to(device).eval()
    try:
        threshold = float(card["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnalysisError(f"{model_dir}: model card has no numeric threshold") from exc
    calibration, prior, threshold_llr = _calibration_of(card, model_dir)
    name = str(card.get("name", model_dir.name))
    return LoadedModel(
        model_id=str(card.get("model_id", f"{name}:{actual[:12]}")),
        sha256=actual,
        threshold=threshold,
        card=card,
        path=model_dir,
        network=runner,
        device=device,
        calibration=calibration,
        prior=prior,
        threshold_llr=threshold_llr,
    )


def _calibration_of(
    card: dict[str, Any], model_dir: Path
) -> tuple[Calibration | None, float, float | None]:
    """(calibration, default prior, LLR threshold) from a card; (None, 0.5, None) for old cards.

    A card with calibration must be self-consistent: its ``threshold`` must be its LLR cut-off
    at its default prior, or the call a worker makes would differ from the one documented.
    """
    raw_cal = card.get("calibration")
    if not raw_cal:
        return None, 0.5, None
    calibration = Calibration.from_dict(raw_cal)
    try:
        prior = check_prior(float(card["prior"]["default"]))
        threshold_llr = float(card["operating_point"]["threshold_llr"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AnalysisError(f"{model_dir}: calibrated card lacks prior or operating point") from exc
    expected = float(adjust_to_prior(np.array([threshold_llr]), prior)[0])
    if abs(expected - float(card["threshold"])) > 1e-9:
        raise AnalysisError(
            f"{model_dir}: card threshold {card['threshold']} is not its operating point "
            f"({expected}) at its default prior {prior}"
        )
    return calibration, prior, threshold_llr
