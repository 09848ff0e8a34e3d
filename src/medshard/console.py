"""The terminal: consoles and the progress bar every CLI command shares (main CLI and `ai`)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def progress_bar() -> Progress:
    """A progress bar on stderr, shown on a terminal (or with MEDSHARD_PROGRESS=1)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal and os.environ.get("MEDSHARD_PROGRESS") != "1",
    )
