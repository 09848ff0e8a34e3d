"""The gate: the one object every entry point passes to reach patient data.

It authenticates bearer tokens (local sessions, API tokens, or an external OpenID Connect
provider's JWTs), states what the caller may see (:mod:`medshard.security.policy`), and
records every decision in the audit chain: changes in the transaction that makes them,
reads and denials through the batched background writer.

Token resolutions are cached for a few seconds per process, so a QIDO-RS or WADO-RS request
costs a dictionary lookup rather than a catalog round trip; a logout or revocation in this
process drops the entry at once, in another process within ``CACHE_S``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from medshard.catalog.access_models import CareTeamDoctor
from medshard.catalog.care_team import involve
from medshard.catalog.lookups import patient_pk_of
from medshard.catalog.models import CareSite, Instance, Study, utcnow
from medshard.catalog.studies import patient_pk_of_study, visible_study
from medshard.catalog.users import site_name_of
from medshard.cluster.archive import Archive
from medshard.errors import AccessDeniedError, AuthenticationError, NotFoundError
from medshard.security import tokens
from medshard.security.audit import AuditLog, Event, patient_key_lookup
from medshard.security.context import Caller
from medshard.security.policy import may_store, visible_studies
from medshard.security.principal import Principal
from medshard.storage.keys import KeyProvider

CACHE_S = 5.0
#: A session's last use is written at most this often (idle expiry granularity).
TOUCH_EVERY_S = 30.0

#: Runs in the instance's catalog transaction: (session, patient pk, instance, fields).
CommitHook = Callable[[Session, int, Instance, Any], None]


class Gate:
    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.settings = archive.settings
        self.catalog = archive.catalog
        self.patient_key_of = patient_key_lookup(archive.store.patient_key)
        self.audit = AuditLog(
            self.catalog, self._master_key, self.patient_key_of, unwrap=archive.store.patient_key
        )
        self._cache: dict[str, tuple[tokens.Resolved, float]] = {}
        self._touched: dict[int, float] = {}
        self._lock = threading.Lock()
        self._oidc: Any = None
        self._site_names: dict[int, str] = {}
        if self.settings.oidc_issuer:
            from medshard.security.oidc import OidcVerifier

            self._oidc = OidcVerifier(self.settings)

    def _master_key(self) -> KeyProvider:
        self.archive.store.reload_master_key()
        return self.archive.store.keys

    def close(self) -> None:
        self.audit.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def caller(self, principal: Principal) -> Caller:
        return Caller(principal, self)

    def site_of(self, principal: Principal) -> str | None:
        """The name of the caller's own site (a service account's, a doctor's first), which
        reads are served nearest to; None for callers without one (admins, patients)."""
        pk = principal.home_site
        if pk is None:
            return None
        name = self._site_names.get(pk)
        if name is None:  # site names never change; a site is never renumbered
            with self.catalog.session() as session:
                name = site_name_of(session, pk)
            if name is None:
                return None
            self._site_names[pk] = name
        return name

    # -- authentication ------------------------------------------------------------------
    def authenticate(self, token: str, source: str) -> Principal:
        """The caller a bearer token stands for, seen from ``source``.

        Raises
        ------
        AuthenticationError
            The token is unknown, expired, idle-expired or revoked.
        """
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[1] > now and hit[0].valid_until > utcnow():
            resolved = hit[0]
        else:
            resolved = self._resolve(token)
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[token] = (resolved, now + CACHE_S)
        if resolved.session_pk is not None:
            self._touch(resolved.session_pk, now)
        return resolved.principal.at(source)

    def cached(self, token: str, source: str) -> Principal | None:
        """The caller of a token answered from memory alone, or None when that needs the
        catalog (a miss, an expired entry, a session whose last use is due to be written).
        The HTTP layer calls this on the event loop and :meth:`authenticate` off it."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(token)
            if hit is None or hit[1] <= now or hit[0].valid_until <= utcnow():
                return None
            pk = hit[0].session_pk
            if pk is not None and now - self._touched.get(pk, 0.0) >= TOUCH_EVERY_S:
                return None
        return hit[0].principal.at(source)

    def _resolve(self, token: str) -> tokens.Resolved:
        if self._oidc is not None and token.count(".") == 2:
            username, until = self._oidc.verify(token)
            with self.catalog.session() as session:
                from medshard.security.identity import get_user, principal_of

                try:
                    user = get_user(session, username)
                except NotFoundError:
                    raise AuthenticationError(f"no medshard user {username!r}") from None
                if user.disabled:
                    raise AuthenticationError("the account is disabled")
                return tokens.Resolved(principal_of(session, user, via="oidc"), until)
        with self.catalog.session() as session:
            return tokens.resolve(session, self.settings, token)

    def _touch(self, session_pk: int, now: float) -> None:
        with self._lock:
            last = self._touched.get(session_pk, 0.0)
            if now - last < TOUCH_EVERY_S:
                return
            self._touched[session_pk] = now
        with self.catalog.transaction() as session:
            tokens.touch(session, session_pk)

    def dimse_principal(self, ae_title: str, address: str) -> Principal:
        """The service account a calling AE acts as (cached briefly, like tokens).

        Raises
        ------
        AccessDeniedError
            The AE title is not allowed (associations from it are rejected anyway).
        """
        from medshard.security.identity import peer_principal

        key = "ae:" + ae_title.strip()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            principal = hit[0].principal
        else:
            with self.catalog.session() as session:
                found = peer_principal(session, ae_title, address)
            if found is None:
                raise AccessDeniedError(f"calling AE {ae_title!r} is not allowed")
            principal = found
            with self._lock:
                self._cache[key] = (
                    tokens.Resolved(principal, utcnow() + timedelta(days=1)),
                    now + CACHE_S,
                )
        return principal.at(f"{ae_title.strip()}@{address}")

    def allowed_aes(self) -> list[str]:
        from medshard.security.identity import peers

        with self.catalog.session() as session:
            return sorted(peers(session))

    def forget(self, token: str) -> None:
        with self._lock:
            self._cache.pop(token, None)

    def login(self, username: str, password: str, source: str) -> tokens.TokenPair:
        """OAuth2 password flow; success and failure are both audited."""
        failure: AuthenticationError | None = None
        with self.catalog.transaction() as session:
            try:
                pair = tokens.login(session, self.settings, username, password, source)
            except AuthenticationError as exc:
                failure = exc
                event = Event(username[:128], "-", "login", "failed", source, detail=str(exc))
            else:
                p = pair.principal
                event = Event(p.username, p.role, "login", "success", source)
            self.audit.append(session, event)
        if failure is not None:
            raise failure
        return pair

    def refresh(self, refresh_token: str, source: str) -> tokens.TokenPair:
        with self.catalog.transaction() as session:
            pair = tokens.refresh(session, self.settings, refresh_token, source)
            p = pair.principal
            self.audit.append(session, Event(p.username, p.role, "token-refresh", source=source))
        return pair

    def logout(self, principal: Principal, access_token: str) -> None:
        self.forget(access_token)
        with self.catalog.transaction() as session:
            tokens.logout(session, access_token)
            self.audit.append(
                session, Event(principal.actor, principal.role, "logout", source=principal.source)
            )

    # -- authorization and audit ---------------------------------------------------------
    def event(self, principal: Principal, action: str, **kw: Any) -> Event:
        flagged = kw.pop("flagged", principal.role == "admin" and kw.get("patient_pk") is not None)
        return Event(
            principal.actor,
            principal.role,
            action,
            source=principal.source,
            sealed_actor=principal.role == "patient",
            flagged=flagged,
            **kw,
        )

    def read(self, principal: Principal, action: str, **kw: Any) -> None:
        """Audit a read that was allowed (batched; committed within milliseconds)."""
        self.audit.submit(self.event(principal, action, **kw))

    def denied(self, principal: Principal, action: str, **kw: Any) -> None:
        self.audit.submit(self.event(principal, action, outcome="denied", **kw))

    def require_role(self, principal: Principal, roles: set[str], action: str) -> None:
        """Raise 403 (audited) unless the caller has one of ``roles``."""
        if principal.role not in roles:
            self.denied(principal, action, detail=f"role {principal.role} may not {action}")
            raise AccessDeniedError(f"a {principal.role} may not {action}")

    def study_visible(self, principal: Principal, study_uid: str) -> Study:
        """The study, when the caller may see it; 404 (audited) otherwise, alike for both."""
        with self.catalog.session() as session:
            study = visible_study(session, study_uid, visible_studies(principal))
            if study is not None:
                return study
        self.not_visible(principal, "read", study_uid=study_uid)
        raise NotFoundError(f"no study {study_uid}")

    def not_visible(self, principal: Principal, action: str, *, study_uid: str) -> None:
        """Audit a lookup that found nothing visible: denied when the study exists."""
        with self.catalog.session() as session:
            patient_pk = patient_pk_of_study(session, study_uid)
        if patient_pk is not None:
            self.denied(principal, action, patient_pk=patient_pk, study_uid=study_uid)

    # -- writes --------------------------------------------------------------------------
    def store_hook(self, principal: Principal) -> tuple[int | None, CommitHook]:
        """Check the caller may store; the site to attribute to and the in-transaction hook.

        The hook adds the storing site (and a storing doctor) to the patient's care team
        with the time of involvement, and appends the audit event, all in the transaction
        that commits the instance.
        """
        try:
            may_store(principal)
        except AccessDeniedError as exc:
            self.denied(principal, "store", detail=str(exc))
            raise
        site = principal.home_site

        def hook(session: Session, patient_pk: int, instance: Instance, fields: Any) -> None:
            if site is not None:
                involve(session, CareSite, patient_pk=patient_pk, site_id=site)
            if principal.role == "doctor" and principal.user_pk is not None:
                involve(session, CareTeamDoctor, patient_pk=patient_pk, user_pk=principal.user_pk)
            self.audit.append_at_commit(
                session,
                self.event(
                    principal,
                    "store",
                    patient_pk=patient_pk,
                    patient_id=getattr(fields, "patient_id", None),
                    study_uid=getattr(fields, "study_instance_uid", None),
                    sop_uid=instance.sop_instance_uid,
                ),
            )

        return site, hook

    def store_refused(self, principal: Principal, reason: str, study_uid: str = "") -> None:
        """Audit a store that did not happen (rejected input, refused caller)."""
        patient_pk = None
        if study_uid:
            with self.catalog.session() as session:
                patient_pk = patient_pk_of_study(session, study_uid)
        self.audit.submit(
            self.event(principal, "store", outcome="failed", patient_pk=patient_pk, detail=reason)
        )

    def patient_pk(self, patient_id: str) -> int:
        with self.catalog.session() as session:
            pk = patient_pk_of(session, patient_id)
        if pk is None:
            raise NotFoundError(f"no patient {patient_id!r}")
        return pk


def expiry(days: float = 0, minutes: float = 0) -> datetime:
    return utcnow() + timedelta(days=days, minutes=minutes)
