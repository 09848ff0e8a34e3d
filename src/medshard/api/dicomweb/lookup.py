"""Which stored instances a DICOMweb path names: study, series and instance UIDs to catalog rows.

Every WADO-RS, rendered and WADO-URI request starts here, so the UIDs are resolved (and a 404
raised) before any byte is read or any response begins. The result, :class:`InstanceRef`,
carries what the other modules need to serve an instance without asking the catalog again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medshard.api.errors import NotAcceptableError
from medshard.catalog.instances import instances_of_study
from medshard.cluster.archive import Archive
from medshard.errors import NotFoundError
from medshard.security.context import require_caller
from medshard.security.policy import visible_studies


@dataclass(frozen=True)
class InstanceRef:
    """What the catalog knows about one stored instance, enough to serve it."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    object_key: str
    size: int
    instance_pk: int
    patient_pk: int
    has_pixels: bool
    #: The requesting caller's site: the instance is read from the replica nearest it.
    near_site: str | None = None

    def path(self) -> str:
        """The instance's WADO-RS path below the DICOMweb root."""
        return f"/studies/{self.study_uid}/series/{self.series_uid}/instances/{self.sop_uid}"


def find_instances(
    archive: Archive,
    study: str,
    series: str | None = None,
    sop: str | None = None,
    *,
    action: str = "read",
) -> list[InstanceRef]:
    """Instances of a study (optionally one series or one instance), in series/instance order,
    among those the current caller may see; the read is audited here, once per request.

    Raises
    ------
    NotFoundError
        Nothing matches: the UIDs are unknown, or do not belong together.
    """
    caller = require_caller()  # fails closed: nobody authenticated, nothing read
    with archive.catalog.reads() as session:
        rows = instances_of_study(
            session,
            study,
            series_uid=series,
            sop_uid=sop,
            visible=visible_studies(caller.principal),
        )
    if not rows:  # missing and forbidden answer alike; a forbidden one is audited as denied
        caller.gate.not_visible(caller.principal, action, study_uid=study)
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFoundError(f"no {what} in study {study}" if sop or series else f"no {what}")
    caller.gate.read(caller.principal, action, patient_pk=rows[0][8], study_uid=study, sop_uid=sop)
    site = caller.gate.site_of(caller.principal)
    return [InstanceRef(*row[:9], has_pixels=row[9] is not None, near_site=site) for row in rows]


def representative(refs: Sequence[InstanceRef]) -> InstanceRef:
    """The instance that stands for a series or study: the middle image of its first series.

    Raises
    ------
    NotAcceptableError
        No instance has pixel data (e.g. a series of structured reports): nothing to render.
    """
    images = [r for r in refs if r.has_pixels]
    if not images:
        raise NotAcceptableError("no instance here has pixel data, so there is nothing to render")
    first = [r for r in images if r.series_uid == images[0].series_uid]
    return first[len(first) // 2]
