"""The patient record beyond images: documents (versioned) and sensor series.

Application-layer services over the one write path (``Archive.put_object``) and the security
gate; the REST routes, the FHIR facade and the CLI all call these, so each rule is stated once.
"""
