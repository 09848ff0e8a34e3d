"""DICOMweb building blocks (PS3.18): multipart codecs, the DICOM JSON model and QIDO-RS queries.

Everything here is transport-free so that the FastAPI routes, the CLI and tests share one
implementation; the HTTP layer only maps requests and errors onto these functions.
"""
