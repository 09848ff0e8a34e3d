"""``medshard records add|list|get|history``: a patient's documents from the command line.

Like ``import`` and ``get``, these read and store patient data, so they act for a bearer
token (``--token`` or ``MEDSHARD_TOKEN``), through the same rules and audit as the REST API
(:mod:`medshard.records.documents`). ``medshard import --patient ID`` hands the files that
are not DICOM to :func:`import_documents`.
"""

from __future__ import annotations

import json
import mimetypes
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from medshard.errors import MedshardError, NotFoundError

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Deployment home (default: $MEDSHARD_HOME)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="MEDSHARD_TOKEN", help="Bearer token to act for",
                 show_default=False),
]  # fmt: skip

records_app = typer.Typer(help="A patient's documents (PDF, CDA, FHIR JSON, images, text)",
                          no_args_is_help=True)  # fmt: skip


def _fail(message: str, code: int = 1) -> typer.Exit:
    from medshard.cli import err

    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@contextmanager
def _acting(home: Path | None, token: str | None) -> Iterator[Any]:
    """The archive, acting as the token's caller (audit flushed on exit); errors printed."""
    from medshard.cluster.archive import Archive
    from medshard.security.context import acting_as
    from medshard.security.gate import Gate
    from medshard.security.local import token_caller

    try:
        with (
            Archive.open(home) as archive,
            Gate(archive) as gate,
            acting_as(token_caller(gate, token)),
        ):
            yield archive
    except NotFoundError as exc:
        raise _fail(str(exc), 2) from exc
    except MedshardError as exc:
        raise _fail(str(exc)) from exc


def _print(value: Any, as_json: bool) -> None:
    from medshard.cli import out

    if as_json:
        print(json.dumps(value, indent=2))
    elif isinstance(value, list):
        for row in value:
            out.print(
                f"{row['id']}  v{row['version']}  {row['date'][:19]}  {row['content_type']:<24} "
                f"{row['type'] or '-':<16} {row['title']}"
            )
    else:
        out.print(value)


def add_file(path: Path, patient: str, **meta: Any) -> dict[str, Any]:
    """Store one file as a document of ``patient`` (type declared from its extension, then
    checked against the content like any other claim)."""
    from medshard.catalog.records import DocFields
    from medshard.ingest.times import parse_instant
    from medshard.records import documents

    declared = mimetypes.guess_type(path.name)[0]
    fields = DocFields(
        doc_type=meta.get("doc_type") or "",
        title=meta.get("title") or path.stem,
        author=meta.get("author") or "",
        date=parse_instant(meta["date"]) if meta.get("date") else None,
        filename=path.name,
    )
    content = documents.Content(path.read_bytes(), declared)
    return documents.add(patient, content, fields).as_dict()


def import_documents(
    home: Path | None, token: str | None, patient: str, files: list[Path]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Store ``files`` as documents of ``patient``: (stored, rejected with reasons)."""
    stored, rejected = [], []
    with _acting(home, token):
        for path in files:
            try:
                stored.append({"path": str(path), **add_file(path, patient)})
            except MedshardError as exc:
                rejected.append({"path": str(path), "reason": str(exc)})
    return stored, rejected


def is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def split_documents(
    home: Path | None, token: str | None, patient: str, paths: list[Path]
) -> tuple[list[Path], list[dict[str, Any]], list[dict[str, str]]]:
    """For ``import --patient``: store the files that are not DICOM as documents; returns
    (the DICOM files and missing paths, left for the image import; stored; rejected)."""
    from medshard.ingest.batch import iter_files

    files = list(iter_files([p for p in paths if p.exists()]))
    stored, rejected = import_documents(home, token, patient, [f for f in files if not is_dicom(f)])
    rest = [f for f in files if is_dicom(f)] + [p for p in paths if not p.exists()]
    return rest, stored, rejected


@records_app.command("add")
def add(
    patient: Annotated[str, typer.Argument(help="Patient ID")],
    path: Annotated[Path, typer.Argument(help="The file", exists=True, dir_okay=False)],
    doc_type: Annotated[str, typer.Option("--type", help="e.g. discharge-summary, lab")] = "",
    title: Annotated[str, typer.Option(help="Title (default: the file name)")] = "",
    author: Annotated[str, typer.Option(help="Author")] = "",
    date: Annotated[str, typer.Option(help="Document date, ISO 8601 (default: now)")] = "",
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Attach a file to a patient's record (content type sniffed from the bytes)."""
    with _acting(home, token):
        row = add_file(path, patient, doc_type=doc_type, title=title, author=author, date=date)
    _print(row if as_json else f"stored {row['id']} v1 ({row['content_type']})", as_json)


@records_app.command("list")
def list_(
    patient: Annotated[str, typer.Argument(help="Patient ID")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """A patient's documents, newest first (latest versions)."""
    from medshard.records import documents

    with _acting(home, token):
        rows = [r.as_dict() for r in documents.list_for_patient(patient)]
    _print(rows, as_json)


@records_app.command("get")
def get(
    doc: Annotated[str, typer.Argument(help="Document id")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the bytes")],
    version: Annotated[int, typer.Option(help="Version (default: the latest)")] = 0,
    home: HomeOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a document version's bytes, byte-identical to what was stored."""
    from medshard.records import documents

    with _acting(home, token):
        row = documents.version_of(doc, version) if version else documents.get(doc)
        data = b"".join(documents.read_bytes(row))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    _print(f"wrote {output} (version {row.version}, {row.content_type})", False)


@records_app.command("history")
def history(
    doc: Annotated[str, typer.Argument(help="Document id")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Every version of a document, newest first."""
    from medshard.records import documents

    with _acting(home, token):
        rows = [r.as_dict() for r in documents.history(doc)]
    _print(rows, as_json)


def mount(app: typer.Typer) -> None:
    app.add_typer(records_app, name="records")
