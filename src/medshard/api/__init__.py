"""Application layer: REST, DICOMweb and DIMSE."""
