"""Batch augmentation for training on 28x28 radiographs.

Radiographs of one class differ in patient position, field of view and exposure; the training
set holds only 388 normal images, so the network must be told that small rotations, shifts,
zooms and contrast/brightness changes do not change the diagnosis. Everything runs on whole
batches in torch with an explicit generator, so augmentation is both fast on a CPU and exactly
reproducible for a given seed. Horizontal flips are left out: they put the heart on the wrong
side, an image the model never meets in practice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the random transforms (uniformly sampled per image)."""

    rotate_deg: float = 10.0
    shift_px: float = 2.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    contrast_min: float = 0.8
    contrast_max: float = 1.2
    brightness: float = 0.1

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for the model card."""
        return asdict(self)

    def spec(self) -> str:
        """``name=value,...`` of the fields that differ from the defaults (for ``--augment``)."""
        default = AugmentSettings()
        return ",".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        )

    @classmethod
    def parse(cls, spec: str) -> AugmentSettings:
        """Settings from ``name=value,...`` (unnamed fields keep their defaults).

        Raises ValueError on unknown names or non-numeric values, for the CLI to report.
        """
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in known:
                raise ValueError(f"unknown augmentation setting {part!r}; known: {sorted(known)}")
            values[key.strip()] = float(value)
        return cls(**values)


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, settings: AugmentSettings | None = None
) -> torch.Tensor:
    """Randomly transform a batch of normalised images.

    Parameters
    ----------
    x
        float ``(N, 1, H, W)`` in the model's input scale ([-1, 1]).
    generator
        CPU generator that owns all randomness, so runs with one seed are identical.
    settings
        Transform ranges; defaults suit chest radiographs at 28x28.

    Returns
    -------
    torch.Tensor
        Same shape, clamped to [-1, 1]. Edges are filled by replicating border pixels, as a
        collimated radiograph has no black frame to invent.
    """
    s = settings or AugmentSettings()
    n, _, h, w = x.shape
    u = torch.rand(n, 6, generator=generator, dtype=torch.float32)
    angle = (u[:, 0] * 2.0 - 1.0) * math.radians(s.rotate_deg)
    scale = s.scale_min + u[:, 1] * (s.scale_max - s.scale_min)
    tx = (u[:, 2] * 2.0 - 1.0) * s.shift_px * 2.0 / w
    ty = (u[:, 3] * 2.0 - 1.0) * s.shift_px * 2.0 / h
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (s.contrast_min + u[:, 4] * (s.contrast_max - s.contrast_min)).view(n, 1, 1, 1)
    brightness = ((u[:, 5] * 2.0 - 1.0) * s.brightness).view(n, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast.to(x.dtype) + mean + brightness.to(x.dtype)).clamp(-1.0, 1.0)
