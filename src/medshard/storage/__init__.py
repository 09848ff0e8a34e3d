"""Storage layer: chunk stores, chunking and the encryption envelope. Knows nothing of DICOM."""
