"""The security commands of ``medshard`` (access layer): users, tokens, DICOM peers, care
teams, audit, keys and erasure. Thin, like the rest of the CLI: open the archive, call
:mod:`medshard.security`, print. They run as the host operator (see
:mod:`medshard.security.local`) and every change is audited."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from medshard.errors import MedshardError

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Deployment home (default: $MEDSHARD_HOME)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]

user_app = typer.Typer(help="People and service accounts", no_args_is_help=True)
token_app = typer.Typer(help="API tokens of service accounts", no_args_is_help=True)
dicom_app = typer.Typer(help="DICOM peers: calling AE titles allowed", no_args_is_help=True)
careteam_app = typer.Typer(help="A patient's care team", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log", no_args_is_help=True)
keys_app = typer.Typer(help="The master key", no_args_is_help=True)
patient_app = typer.Typer(help="Patients: erasure", no_args_is_help=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    from medshard.cli import err

    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@contextmanager
def _operator(home: Path | None) -> Iterator[Any]:
    """The gate and the host-operator caller, closed (audit flushed) on exit."""
    from medshard.cluster.archive import Archive
    from medshard.security.gate import Gate
    from medshard.security.local import operator

    try:
        with Archive.open(home, probe=False) as archive, Gate(archive) as gate:
            yield operator(gate)
    except MedshardError as exc:
        raise _fail(str(exc)) from exc


def _record(caller: Any, session: Any, action: str, detail: str) -> None:
    """Append the audit event of an administrative change in its own transaction."""
    caller.gate.audit.append(session, caller.gate.event(caller.principal, action, detail=detail))


def _print(obj: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    from medshard.cli import out

    if as_json or human is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        human()
    out.file.flush()


# ----------------------------------------------------------------------------- users


@user_app.command("add")
def user_add(
    username: str,
    role: Annotated[str, typer.Option(help="admin, doctor, expert, patient or service")],
    password: Annotated[
        str | None, typer.Option(help="Password (prompted when omitted, except for service)")
    ] = None,
    site: Annotated[list[str] | None, typer.Option(help="Site (repeatable for doctors)")] = None,
    patient_id: Annotated[str | None, typer.Option("--patient-id")] = None,
    full_name: Annotated[str, typer.Option("--name")] = "",
    home: HomeOpt = None,
) -> None:
    """Add a user; a service account gets no password (create a token for it)."""
    from medshard.security import identity

    if password is None and role != "service":
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            identity.add_user(
                session,
                username=username,
                role=role,
                password=password,
                sites=site or [],
                patient_id=patient_id,
                full_name=full_name,
            )
            _record(caller, session, "user-add", f"{username} {role}")
    print(f"added {role} {username}")


@user_app.command("list")
def user_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Every user, with role, sites and state."""
    from medshard.cli import out
    from medshard.security import identity

    with _operator(home) as caller, caller.gate.catalog.session() as session:
        users = [u.as_dict() for u in identity.list_users(session)]

    def human() -> None:
        table = Table("username", "role", "sites", "patient", "state")
        for u in users:
            state = "disabled" if u["disabled"] else "locked" if u["locked"] else "active"
            table.add_row(
                str(u["username"]), str(u["role"]), ", ".join(u["sites"]),  # type: ignore[arg-type]
                str(u["patient_id"] or ""), state,
            )  # fmt: skip
        out.print(table)

    _print(users, as_json, human)


@user_app.command("disable")
def user_disable(username: str, home: HomeOpt = None) -> None:
    """Disable an account: its sessions and tokens stop working."""
    from medshard.security import identity

    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            identity.set_disabled(session, username, True)
            _record(caller, session, "user-disable", username)
    print(f"disabled {username}")


@user_app.command("passwd")
def user_passwd(
    username: str,
    password: Annotated[str | None, typer.Option(help="New password (prompted if omitted)")] = None,
    home: HomeOpt = None,
) -> None:
    """Set a user's password (and unlock the account)."""
    from medshard.security import identity

    if password is None:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            identity.set_password(session, username, password)
            _record(caller, session, "user-passwd", username)
    print(f"password of {username} changed")


# ----------------------------------------------------------------------------- tokens


@token_app.command("create")
def token_create(
    username: str,
    name: Annotated[str, typer.Option(help="What the token is for")] = "",
    days: Annotated[int | None, typer.Option(help="Expire after this many days")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token for a service account; it is shown once, keep it safe."""
    from medshard.security import tokens

    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            token = tokens.create_api_token(session, username, name, days)
            _record(caller, session, "token-create", f"{username} {token[:12]}")
    _print(
        {"username": username, "token": token, "prefix": token[:12]}, as_json, lambda: print(token)
    )


@token_app.command("revoke")
def token_revoke(token_or_prefix: str, home: HomeOpt = None) -> None:
    """Revoke an API token, given whole or by its 12-character prefix."""
    from medshard.security import tokens

    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            count = tokens.revoke_api_token(session, token_or_prefix)
            _record(caller, session, "token-revoke", token_or_prefix[:12])
    print(f"revoked {count} token(s)")


# ----------------------------------------------------------------------------- DICOM peers


@dicom_app.command("allow")
def dicom_allow(
    ae_title: str,
    user: Annotated[str, typer.Option(help="The service account this AE acts as")],
    home: HomeOpt = None,
) -> None:
    """Allow a calling AE title, acting as a site's service account."""
    from medshard.security import identity

    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            identity.allow_peer(session, ae_title, user)
            _record(caller, session, "dicom-allow", f"{ae_title} {user}")
    print(f"AE {ae_title} allowed, acting as {user}")


@dicom_app.command("remove")
def dicom_remove(ae_title: str, home: HomeOpt = None) -> None:
    """Stop accepting associations from an AE title."""
    from medshard.security import identity

    with _operator(home) as caller:
        gate = caller.gate
        with gate.archive.journaled_transaction() as session:
            identity.remove_peer(session, ae_title)
            _record(caller, session, "dicom-remove", ae_title)
    print(f"AE {ae_title} removed")


@dicom_app.command("list")
def dicom_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Allowed calling AE titles and their service accounts."""
    from medshard.security import identity

    with _operator(home) as caller, caller.gate.catalog.session() as session:
        found = identity.peers(session)

    def human() -> None:
        for ae, user in found.items():
            print(f"{ae}\t{user}")

    _print(found, as_json, human)


# ----------------------------------------------------------------------------- care teams


@careteam_app.command("show")
def careteam_show(patient_id: str, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Sites and doctors of a patient's care team, with their last involvement."""
    from medshard.security import careteam

    with _operator(home) as caller:
        team = careteam.show(caller.gate, caller.principal, patient_id).as_dict()
    _print(team, as_json)


@careteam_app.command("add")
def careteam_add(patient_id: str, doctor: str, home: HomeOpt = None) -> None:
    """Add a doctor to a patient's care team."""
    from medshard.security import careteam

    with _operator(home) as caller:
        careteam.change_doctor(caller.gate, caller.principal, patient_id, doctor, add=True)
    print(f"{doctor} added to the care team of {patient_id}")


@careteam_app.command("remove")
def careteam_remove(patient_id: str, doctor: str, home: HomeOpt = None) -> None:
    """Remove a doctor from a patient's care team."""
    from medshard.security import careteam

    with _operator(home) as caller:
        careteam.change_doctor(caller.gate, caller.principal, patient_id, doctor, add=False)
    print(f"{doctor} removed from the care team of {patient_id}")


# ----------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Walk the chain; exit 1 and name the first bad event if anything was altered."""
    from medshard.security.audit import verify

    with _operator(home) as caller:
        verdict = verify(caller.gate.catalog, caller.gate._master_key())
    if as_json:
        print(json.dumps(verdict.as_dict(), indent=2))
    elif verdict.ok:
        print(f"audit chain intact: {verdict.events} events, head at {verdict.head_seq}")
    else:
        print(f"AUDIT CHAIN BROKEN at event {verdict.first_bad_seq}: {verdict.reason}")
    if not verdict.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="ISO time to start from")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json, csv or atna")] = "json",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    home: HomeOpt = None,
) -> None:
    """Export events (patient identities opened where their key still exists)."""
    from medshard.security.atna import atna_xml
    from medshard.security.audit import events

    if fmt not in ("json", "csv", "atna"):
        raise _fail("--format is json, csv or atna")
    with _operator(home) as caller:
        gate = caller.gate
        with gate.catalog.session() as session:
            found = [e.as_dict() for e in events(session, gate.patient_key_of, since=since)]
        gate.read(caller.principal, "audit-export", detail=f"{len(found)} events as {fmt}")
    fh = open(output, "w", newline="") if output else sys.stdout  # noqa: SIM115
    try:
        if fmt == "json":
            json.dump(found, fh, indent=2)
            fh.write("\n")
        elif fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=list(found[0]) if found else ["seq"])
            writer.writeheader()
            writer.writerows(found)
        else:
            fh.write(atna_xml(found))
    finally:
        if output:
            fh.close()


# ----------------------------------------------------------------------------- keys, erasure


@keys_app.command("rotate")
def keys_rotate(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """New master key; every patient key re-wrapped; no data re-encrypted."""
    from medshard.security.rotation import rotate_master_key

    with _operator(home) as caller:
        result = rotate_master_key(caller.gate, caller.principal)
    _print(
        result.as_dict(),
        as_json,
        lambda: print(
            f"master key {result.old_key_id} -> {result.new_key_id}; "
            f"{result.patients} patient keys re-wrapped"
        ),
    )


@patient_app.command("erase")
def patient_erase(
    patient_id: str,
    reason: Annotated[str, typer.Option(help="Why (kept, sealed, in the audit log)")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Crypto-shred a patient: key erased, catalog rows removed, chunks deleted from nodes."""
    from medshard.cluster.deletions import drain_deletions
    from medshard.security.erasure import erase_patient

    if not yes:
        typer.confirm(f"erase every record of patient {patient_id} for good?", abort=True)
    with _operator(home) as caller:
        result = erase_patient(caller.gate, caller.principal, patient_id, reason)
        caller.gate.archive.pool.probe()
        deleted, pending = drain_deletions(caller.gate.archive)
    summary = {**result.as_dict(), "chunk_copies_deleted": deleted, "pending": pending}
    _print(summary, as_json, lambda: print(f"patient erased: {summary}"))


def mount(app: typer.Typer) -> None:
    for sub, name in [
        (user_app, "user"),
        (token_app, "token"),
        (dicom_app, "dicom"),
        (careteam_app, "careteam"),
        (audit_app, "audit"),
        (keys_app, "keys"),
        (patient_app, "patient"),
    ]:
        app.add_typer(sub, name=name)
