"""``medshard keys rotate``: a new master key, every patient key re-wrapped, no data touched.

Order of work, chosen so that a crash at any point loses nothing:

1. the new key is written beside the old one (``master.key.new``, 0600);
2. one catalog transaction re-wraps every patient key and the audit chain key under it,
   records the new key id, and appends the audit event;
3. the new key file replaces the old one (an atomic rename).

A crash before 2 commits leaves the old key in force (the stray new file is discarded on
the next run); a crash between 2 and 3 is finished by the next run, which finds the
catalog already on the new key's id.
"""

from __future__ import annotations

import base64
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from medshard.catalog.audit_rows import audit_head
from medshard.catalog.patient_keys import patients_with_keys
from medshard.errors import ConfigError
from medshard.security.audit import CHAIN_CONTEXT
from medshard.security.gate import Gate
from medshard.security.principal import Principal
from medshard.storage.envelope import patient_key_context
from medshard.storage.keys import KEY_BYTES, LocalKeyFileProvider


@dataclass(frozen=True)
class Rotation:
    old_key_id: str
    new_key_id: str
    patients: int

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _write_new_key(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def rotate_master_key(gate: Gate, principal: Principal) -> Rotation:
    """Rotate the master key of a home whose key lives in its key file."""
    gate.require_role(principal, {"admin", "system"}, "rotate keys")
    current_path = gate.settings.master_key_path
    new_path = current_path.with_name(current_path.name + ".new")
    if os.environ.get("MEDSHARD_MASTER_KEY"):
        raise ConfigError(
            "the master key comes from MEDSHARD_MASTER_KEY: rotate it in your secrets manager"
        )
    old = LocalKeyFileProvider(current_path)
    if new_path.exists():
        pending = LocalKeyFileProvider(new_path)
        with gate.catalog.session() as session:
            head = audit_head(session)
        if head is not None and head.master_key_id == pending.key_id:
            os.replace(new_path, current_path)  # finish an interrupted rotation
            return Rotation(old.key_id, pending.key_id, 0)
        new_path.unlink()
    _write_new_key(new_path)
    new = LocalKeyFileProvider(new_path)
    count = 0
    with gate.catalog.transaction() as session:
        gate.audit.chain_key(session)  # unwrapped under the old key, before it is replaced
        for patient in patients_with_keys(session):
            assert patient.wrapped_key is not None
            context = patient_key_context(patient.patient_id)
            plain = old.unwrap(patient.wrapped_key, context)
            patient.wrapped_key = new.wrap(plain, context)
            patient.master_key_id = new.key_id
            count += 1
        head = audit_head(session)
        if head is not None:
            chain = old.unwrap(head.wrapped_key, CHAIN_CONTEXT)
            head.wrapped_key = new.wrap(chain, CHAIN_CONTEXT)
            head.master_key_id = new.key_id
        session.flush()
        gate.audit.append(
            session,
            gate.event(
                principal,
                "keys-rotate",
                detail=f"{old.key_id} -> {new.key_id}, {count} patient keys",
            ),
        )
    os.replace(new_path, current_path)
    gate.archive.store.reload_master_key()
    return Rotation(old.key_id, new.key_id, count)


__all__ = ["Rotation", "rotate_master_key"]
