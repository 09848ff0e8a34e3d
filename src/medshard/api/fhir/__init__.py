"""A FHIR R4 facade over the record: ``/fhir`` (Patient, DocumentReference, Binary,
ImagingStudy, Observation, Endpoint, and the CapabilityStatement at ``/fhir/metadata``).

It stores nothing of its own: every resource is a view of catalog rows that the rest of the
archive already keeps (patients, documents and their versions, studies, sensor segments),
read and written through the same services, rules and audit as the REST API. Resources are
checked with the ``fhir.resources`` models (the R4B package: the resources served here are
the same in R4 and R4B) before they leave, so a client never receives an invalid one.
"""
