"""Management layer: the catalog of patients, studies, series, instances, objects, chunks,
replicas and nodes. The catalog, not a formula, is the truth for where data lives.

Nothing here knows about HTTP; callers get sessions from :mod:`medshard.catalog.db`.
"""

from medshard.catalog import access_models as _access_models  # noqa: F401  (registers tables)
from medshard.catalog import records_models as _records_models  # noqa: F401  (registers tables)
from medshard.catalog.db import Catalog, migrate
from medshard.catalog.models import (
    Base,
    Chunk,
    Instance,
    Node,
    Patient,
    Replica,
    Series,
    Site,
    StoredObject,
    Study,
)

__all__ = [
    "Base",
    "Catalog",
    "Chunk",
    "Instance",
    "Node",
    "Patient",
    "Replica",
    "Series",
    "Site",
    "StoredObject",
    "Study",
    "migrate",
]
