"""The ingestor every entry point uses: the pipeline, with analysis attached when installed.

The application layer wires analysis into ingest (ingest/ never imports analysis/): STOW-RS,
C-STORE, `medshard import` and the demo all ingest through :func:`analysed_ingestor`, so an
instance the configured rules select is queued for analysis in its own commit, whatever door
it came through.
"""

from __future__ import annotations

import logging

from medshard.cluster.archive import Archive
from medshard.ingest.pipeline import Ingestor, PutObject

log = logging.getLogger(__name__)


def analysed_ingestor(archive: Archive, *, put: PutObject | None = None) -> Ingestor:
    """An ingestor that enqueues analysis of what the rules select (medshard[ai] installed).

    ``put``: in place of ``Archive.put_object`` (a restore re-recording journaled objects, so
    those stored after the last backup are queued for analysis as at first).
    """
    ingestor = Ingestor(archive, put=put)
    try:
        from medshard.analysis.queue import attach_to_ingestor
    except ImportError:  # medshard[ai] not installed: ingest works, nothing is analysed
        log.debug("analysis extra not installed; ingest without analysis")
        return ingestor
    attach_to_ingestor(ingestor)
    return ingestor
