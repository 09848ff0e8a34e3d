"""DICOMweb building blocks (PS3.18): multipart codecs, the DICOM JSON model and QIDO-RS queries.

Everything here is transport-free so that the FastAPI routes, the CLI and tests share one
implementation; the HTTP layer only maps requests and errors onto these functions.

``lookup`` resolves UIDs to stored instances; ``retrieve`` streams or transcodes their bytes
and builds metadata; ``frames`` cuts frames; ``rendering`` renders and persists thumbnails;
``stow`` ingests STOW-RS parts; ``qido`` runs QIDO-RS searches. The ``routes_*`` modules are
the HTTP layer on top of them.
"""
