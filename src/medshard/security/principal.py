"""Who is asking: the authenticated caller every authorization decision is made for."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Final, Literal

Role = Literal["admin", "doctor", "expert", "patient", "service", "system"]
#: Roles a person or account in the ``users`` table can have ("system" is internal only).
USER_ROLES: Final = ("admin", "doctor", "expert", "patient", "service")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``sites``: the sites a doctor works at, or a service account's one site. ``patient_id``:
    a patient-role user's own record. ``source`` is where the request came from (address or
    calling AE), recorded in the audit log. ``system`` principals are the archive's own
    processes (analysis workers writing their reports); they never come from the network.
    """

    user_pk: int | None
    username: str
    role: Role
    sites: frozenset[int] = field(default_factory=frozenset)
    patient_id: str | None = None
    source: str = ""
    via: str = "local"  # local | api-token | oidc | dimse | cli

    @property
    def actor(self) -> str:
        """The name the audit log records (a patient's own name is sealed, not this)."""
        return self.username

    def at(self, source: str) -> Principal:
        """The same caller, seen from ``source``."""
        return replace(self, source=source)

    @property
    def home_site(self) -> int | None:
        """The site a store by this caller is attributed to (the first of their sites)."""
        return min(self.sites) if self.sites else None


def system_principal(name: str) -> Principal:
    """The archive acting for itself (e.g. ``analysis`` storing a finding's SR)."""
    return Principal(user_pk=None, username=f"system:{name}", role="system", via="local")
