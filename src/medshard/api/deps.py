"""Request dependencies as small typed aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medshard.cluster.archive import Archive


def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


ArchiveDep = Annotated[Archive, Depends(get_archive)]
