"""One handle on a deployment: settings, catalog, master key, node pool and object store.

Everything that runs against a home (CLI commands, the API service, workers) opens an
:class:`Archive`, uses it, and closes it. :meth:`Archive.put_object` is the one write path:
import, STOW-RS, C-STORE, thumbnails and AI reports all store their bytes through it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, BinaryIO, Generic, TypeVar

from sqlalchemy.orm import Session

from medshard import metrics
from medshard.catalog.db import Catalog
from medshard.catalog.journal_rows import RECORD_KINDS, link_facts
from medshard.catalog.writes import PatientKeyRow, PatientValues, ensure_patient, patient_key_row
from medshard.cluster.journal import REDERIVABLE_KINDS, Journal
from medshard.cluster.nodes import NodePool
from medshard.cluster.objects import ObjectStore, shard_of
from medshard.config import Settings, load_settings
from medshard.storage.envelope import wrap_data_key
from medshard.storage.keys import key_provider_for

T = TypeVar("T")
#: Runs inside the object's commit with (session, patient pk, object pk): adds the rows that
#: point at the object (an instance, a thumbnail link, a care-team entry, an audit event).
#: Raising aborts the whole write: no row is kept and the object's chunks are removed.
Link = Callable[[Session, int, int], T]


@dataclass(frozen=True)
class Put(Generic[T]):
    """A committed write: its rows, how many copies every chunk has, and what ``link`` returned."""

    patient_pk: int
    object_pk: int
    size: int
    copies: int
    linked: T


class Archive:
    def __init__(self, settings: Settings, *, probe: bool = True) -> None:
        self.settings = settings
        self.catalog = Catalog(settings.database_url)
        self.keys = key_provider_for(settings.master_key_path)
        self.pool = NodePool(self.catalog, settings)
        self.store = ObjectStore(self.catalog, self.pool, self.keys, settings)
        #: The write-ahead object journal (see medshard/cluster/journal.py); it writes only
        #: when hooked into the group commit, on a SQLite catalog with ``journal`` set.
        self.journal = Journal(settings, self.pool)
        self.journaling = settings.journal and self.catalog.is_sqlite
        if self.journaling:
            self.catalog.before_group_commit = self.journal.flush
        self._care_sites: dict[tuple[str, int | None], tuple[float, list[str]]] = {}
        #: The service's HealthMonitor when one runs over this archive (for status).
        self.monitor: Any = None
        if probe:
            self.pool.probe()

    def put_object(
        self,
        patient: PatientValues,
        stream: BinaryIO,
        link: Link[T],
        *,
        kind: str = "dicom",
        content_type: str = "application/dicom",
        care_sites: Sequence[str] = (),
        facts: Mapping[str, Any] | None = None,
    ) -> Put[T]:
        """Encrypt, place and replicate ``stream``, then commit its rows in one transaction.

        The bytes go first: only once every chunk is durable at the write quorum are the
        patient (if new), object, chunk, replica and ``link`` rows committed, together, in a
        group commit, whose leader first writes the manifests of the group's objects to the
        object journal (a quorum of nodes). If anything fails, before or during the commit,
        no row is kept and the chunks already written are removed from their nodes.

        ``facts``: what a restore needs to rebuild the rows ``link`` adds, for the journal
        (DICOM: ``source`` and ``site_id``); for record kinds they are read from those rows.
        """
        store = self.store
        with self.catalog.engine.connect() as conn:
            known = patient_key_row(conn, patient.patient_id)
        if known is None:  # a new patient: a key is offered now, the row made in the commit
            wrapped, key_id = store.new_patient_key(patient.patient_id)
            shard = shard_of(patient.patient_id, self.settings.shards)
            offered = PatientKeyRow(0, patient.patient_id, shard, wrapped, key_id)
        else:
            offered = known
        patient_key = store.patient_key(offered)  # refuses a crypto-shredded patient
        written = store.write(stream, care_sites=care_sites)
        journaling = self.journaling and kind not in REDERIVABLE_KINDS

        def commit(session: Session) -> tuple[int, int, T]:
            row = known or ensure_patient(
                session,
                patient,
                shard=offered.shard,
                wrapped_key=offered.wrapped_key or b"",
                key_id=offered.master_key_id,
            )
            key = patient_key if row.wrapped_key == offered.wrapped_key else store.patient_key(row)
            wrapped = wrap_data_key(key, written.data_key, written.object_key)
            object_pk = store.record(
                session, row, wrapped, written, kind=kind, content_type=content_type
            )
            linked = link(session, row.pk, object_pk)
            if journaling:
                self.journal.note(
                    session,
                    patient=patient,
                    row=row,
                    written=written,
                    wrapped_key=wrapped,
                    kind=kind,
                    content_type=content_type,
                    facts=link_facts(session, kind, object_pk)
                    if kind in RECORD_KINDS
                    else facts or {},
                )
            return row.pk, object_pk, linked

        try:
            patient_pk, object_pk, linked = self.catalog.commit_grouped(commit)
        except BaseException:
            store.discard(written)
            raise
        metrics.PUT_TOTAL.labels(kind).inc()
        return Put(patient_pk, object_pk, written.size, written.min_copies, linked)

    @contextmanager
    def journaled_transaction(self) -> Iterator[Session]:
        """A catalog transaction whose journal entries (removals, noted with
        ``self.journal.note_removal``) are written to a quorum of nodes before it commits,
        as a group commit's are; a journal short of quorum rolls it back."""
        settled: Callable[[], None] | None = None
        try:
            with self.catalog.transaction() as session:
                yield session
                if self.journaling:
                    settled = self.journal.flush(session)
        finally:
            if settled is not None:
                settled()

    #: Seconds a patient's care sites are remembered for placement: a series of 200 slices
    #: asks once, not 200 times (four queries each); a care-team change is seen within this.
    CARE_SITES_TTL_S = 5.0

    def care_sites(self, patient_id: str, storing_site_id: int | None = None) -> list[str]:
        """The patient's recent care sites, the storing site first: where copies should go."""
        from medshard.cluster.care import care_sites_of

        key = (patient_id, storing_site_id)
        now = time.monotonic()
        cached = self._care_sites.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.catalog.session() as session:
            sites = care_sites_of(
                session,
                patient_id=patient_id,
                storing_site_id=storing_site_id,
                limit=self.settings.replicas,
            )
        if len(self._care_sites) > 10_000:
            self._care_sites.clear()
        self._care_sites[key] = (now + self.CARE_SITES_TTL_S, sites)
        return sites

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, probe: bool = True) -> Archive:
        return cls(load_settings(home), probe=probe)

    def close(self) -> None:
        self.journal.close()
        self.pool.close()
        self.catalog.dispose()

    def __enter__(self) -> Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
