"""DIMSE (the DICOM network protocol) beside DICOMweb: the pynetdicom SCP and its handlers.

``scp`` runs the server (associations, AE allow-list, TLS); ``handlers`` answers C-ECHO,
C-STORE, C-FIND, C-MOVE and C-GET as the calling AE's account; ``query`` turns identifiers
into catalog searches; ``retrieve`` sends stored instances back; ``status`` maps outcomes and
errors to DIMSE status codes.
"""
