"""medshard: a regional medical image archive.

DICOM images and patient records are sharded by patient, encrypted per object, split into
fixed-size chunks and replicated over storage-node processes at hospital sites.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
