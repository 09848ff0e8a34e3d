"""One handle on a deployment: settings, catalog, master key, node pool and object store.

Everything that runs against a home (CLI commands, the API service, workers) opens an
:class:`Archive`, uses it, and closes it.
"""

from __future__ import annotations

import os
from types import TracebackType

from medshard.catalog.db import Catalog
from medshard.cluster.nodes import NodePool
from medshard.cluster.objects import ObjectStore
from medshard.config import Settings, load_settings
from medshard.storage.keys import key_provider_for


class Archive:
    def __init__(self, settings: Settings, *, probe: bool = True) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.database_url)
        self.keys = key_provider_for(settings.master_key_path)
        self.pool = NodePool(self.catalog, settings)
        self.store = ObjectStore(self.catalog, self.pool, self.keys, settings)
        if probe:
            self.pool.probe()

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, probe: bool = True) -> Archive:
        return cls(load_settings(home), probe=probe)

    def close(self) -> None:
        self.pool.close()
        self.catalog.dispose()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
