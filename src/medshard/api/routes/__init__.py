"""One router per resource, joined once in :mod:`medshard.api.app`."""
