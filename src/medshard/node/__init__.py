"""The storage-node daemon (``medshard node``): an HTTP front on an append-only volume store.

Nodes hold encrypted, content-addressed chunks and never see plaintext or keys. See
:mod:`medshard.node.volume` for the on-disk engine, :mod:`medshard.node.compaction` for
reclaiming the space of deleted chunks, :mod:`medshard.node.server` for the protocol and
:mod:`medshard.node.launcher` for running nodes as child processes.
"""

from medshard.node.compaction import Compactor
from medshard.node.volume import VolumeStore

__all__ = ["Compactor", "VolumeStore"]
