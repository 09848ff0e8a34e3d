"""A FHIR R4 facade over the record: ``/fhir`` (Patient, DocumentReference, Binary,
ImagingStudy, Observation, Endpoint, and the CapabilityStatement at ``/fhir/metadata``).

It stores nothing of its own: every resource is a view of catalog rows that the rest of the
archive already keeps (patients, documents and their versions, studies, sensor segments),
read and written through the same services, rules and audit as the REST API. Resources are
checked with the ``fhir.resources`` models (the R4B package: the resources served here are
the same in R4 and R4B): every one a read, vread, history or write returns; on a search
page, the first of each kind (all of a page come from the same mapping, and validating each
one was most of a search's time), while the tests validate every resource of every Bundle
and check that each is exactly what the models would write.
"""
