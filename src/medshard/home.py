"""Creating (or upgrading) a deployment home: settings, master key, catalog schema."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medshard.catalog.db import migrate
from medshard.config import CONFIG_NAME, Settings, load_settings, new_settings
from medshard.storage.keys import LocalKeyFileProvider


def init_home(path: Path, **overrides: Any) -> tuple[Settings, bool]:
    """Initialise ``path`` (idempotent). Returns the settings and whether it was created now."""
    path.mkdir(parents=True, exist_ok=True)
    created = not (path / CONFIG_NAME).exists()
    if created:
        settings = new_settings(path, **overrides)
        settings.save()
        os.chmod(settings.config_path, 0o600)  # it holds the node secret
    else:
        settings = load_settings(path)
    if not settings.master_key_path.exists():
        LocalKeyFileProvider.create(settings.master_key_path)
    migrate(settings.database_url)
    return settings, created
