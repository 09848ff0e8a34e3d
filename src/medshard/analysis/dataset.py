"""Reading PneumoniaMNIST-style ``.npz`` archives.

MedMNIST ships every split of a data set in one ``.npz`` holding ``<split>_images`` (uint8,
``(N, 28, 28)``) and ``<split>_labels`` (``(N, 1)``). Training, evaluation and the demo data all
read through :func:`load_split`, so a malformed archive fails in one place with one message
instead of as a shape error deep inside PyTorch.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medshard.errors import InvalidInputError

#: Label meanings of PneumoniaMNIST; index = label value.
CLASS_NAMES: tuple[str, str] = ("normal", "pneumonia")


def sample_npz_path() -> Path:
    """The in-repo copy of PneumoniaMNIST train + val, the only data the program itself reads.

    Returns
    -------
    Path
        ``medshard/sample_data/pneumoniamnist/pneumoniamnist_trainval.npz`` inside the installed
        package, so tests and demos never depend on a shared or network location.
    """
    return (
        Path(__file__).resolve().parent.parent
        / "sample_data"
        / "pneumoniamnist"
        / "pneumoniamnist_trainval.npz"
    )


@dataclass(frozen=True)
class Split:
    """One split of a data set, validated.

    Attributes
    ----------
    name
        The split name (``train``, ``val``, ``test``), kept for messages and model cards.
    images
        uint8 array ``(N, 28, 28)``, exactly as stored, so preprocessing stays in one place.
    labels
        int64 array ``(N,)`` of 0 (normal) / 1 (pneumonia).
    """

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def stratified_head(self, limit: int) -> Split:
        """A smaller split keeping the class balance: the first images of each class.

        Quick trainings (tests, smoke runs) need both classes, but stored splits may be sorted
        by label, so the plain first ``limit`` images can all be one class.
        """
        if limit >= len(self):
            return self
        keep: list[np.ndarray] = []
        for cls in (0, 1):
            idx = np.flatnonzero(self.labels == cls)
            share = max(1, round(limit * idx.size / len(self))) if idx.size else 0
            keep.append(idx[:share])
        order = np.sort(np.concatenate(keep))
        return Split(self.name, self.images[order], self.labels[order])

    def class_counts(self) -> tuple[int, int]:
        """Number of normal and pneumonia cases; training needs them to weigh the classes."""
        return int((self.labels == 0).sum()), int((self.labels == 1).sum())


def available_splits(path: str | Path) -> list[str]:
    """Split names that have both images and labels in ``path`` (for error messages and CLIs)."""
    with _open(path) as data:
        keys = set(data.files)
    return sorted(
        k[: -len("_images")]
        for k in keys
        if k.endswith("_images") and f"{k[: -len('_images')]}_labels" in keys
    )


def load_split(path: str | Path, split: str) -> Split:
    """Load and validate one split.

    Parameters
    ----------
    path
        A MedMNIST-style ``.npz``.
    split
        ``train``, ``val`` or ``test``; any name with ``<split>_images``/``<split>_labels`` works.

    Returns
    -------
    Split

    Raises
    ------
    InvalidInputError
        If the file is missing or unreadable, the split is absent, or arrays have the wrong
        shape, dtype or label values; the message names the file and what was found instead.
    """
    with _open(path) as data:
        img_key, lab_key = f"{split}_images", f"{split}_labels"
        if img_key not in data.files or lab_key not in data.files:
            found = sorted(k[: -len("_images")] for k in data.files if k.endswith("_images"))
            raise InvalidInputError(
                f"{path}: no split {split!r} (needs arrays {img_key!r} and {lab_key!r}); "
                f"splits present: {', '.join(found) or 'none'}"
            )
        images = np.asarray(data[img_key])
        labels = np.asarray(data[lab_key])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise InvalidInputError(f"{path}: {img_key} has shape {images.shape}, expected (N, 28, 28)")
    if images.dtype != np.uint8:
        raise InvalidInputError(f"{path}: {img_key} has dtype {images.dtype}, expected uint8")
    labels = labels.reshape(labels.shape[0], -1) if labels.ndim else labels
    if labels.ndim != 2 or labels.shape[1] != 1 or labels.shape[0] != images.shape[0]:
        raise InvalidInputError(
            f"{path}: {lab_key} has shape {labels.shape}, expected ({images.shape[0]}, 1)"
        )
    flat = labels[:, 0].astype(np.int64)
    if flat.size and not np.isin(flat, (0, 1)).all():
        raise InvalidInputError(f"{path}: {lab_key} holds values other than 0 and 1")
    return Split(name=split, images=images, labels=flat)


def _open(path: str | Path) -> np.lib.npyio.NpzFile:
    """Open an ``.npz`` without pickles, turning I/O and format errors into InvalidInputError."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{p}: no such data file")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{p}: not a readable .npz archive ({exc})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"{p}: a single .npy array, expected an .npz archive of splits")
    return data
