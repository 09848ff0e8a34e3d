"""Security layer (application layer): identities, tokens, per-patient authorization, audit.

Every entry point (REST and DICOMweb routes, DIMSE handlers, CLI data commands) reaches
patient data through :class:`medshard.security.gate.Gate`, which authenticates the caller,
narrows every query to what they may see, and appends each decision to the hash-chained
audit log. Nothing else in the code decides who may see which patient.
"""
