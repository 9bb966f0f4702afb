"""The ``versioning`` command line: history from a database URL alone (the ``cli`` extra).

Built with click (commands, options) and rich (tables, progress bars), which the core library does
not need: ``versioning.__main__`` says what to install when they are missing. Every command but
``demo`` works from ``--url`` (or ``VERSIONING_DATABASE_URL``) and the database's registry of
history tables (:mod:`versioning.catalog`): no application model is imported — except by
``check-triggers --models MODULE``, which needs the models to tell a stale capture trigger.

Exit codes: 0 done (and, for ``verify`` and ``check-triggers``, nothing wrong); 1 ``verify`` or
``check-triggers`` found problems; 2 the command line is wrong (click's usage errors); 3 the work
could not be done (no or bad URL, database unreachable, no registry...), said in one line on
stderr with what to do.

Long work shows a progress bar on stderr when stderr is a terminal, never otherwise; results go to
stdout (``--format json`` for programs).
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime as dt
import enum
import importlib
import inspect
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from versioning import catalog, integrity, triggers
from versioning import horizon as horizons
from versioning.declaration import all_specs, database_captured_specs
from versioning.errors import ArchivedError, CatalogError, VersioningError
from versioning.exporting import record_text
from versioning.operation import Operation
from versioning.schema import HISTORY_BY_DATABASE, issued_at_utc
from versioning.triggers import TriggerProblem

__all__ = ["EXIT_PROBLEMS", "EXIT_UNAVAILABLE", "EXIT_USAGE", "cli", "main"]

EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

URL_VARIABLE = "VERSIONING_DATABASE_URL"


class Failure(click.ClickException):
    """The work could not be done: one line on stderr, exit code 3."""

    exit_code = EXIT_UNAVAILABLE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"versioning: {self.format_message()}", err=True)


class BadValue(click.BadParameter):
    """A value given on the command line is not one: one line on stderr, exit code 2."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"versioning: {self.format_message()}", err=True)


@dataclass
class _Options:
    url: str | None
    schema: str | None


def _masked(url: str) -> str:
    """``url`` without its password (never shown), or a placeholder if it is no URL."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "the URL given"


def _refuse_a_new_sqlite_file(url: str) -> None:
    """SQLite creates a database file that does not exist: a mistyped path would read as an
    empty database."""
    try:
        parsed = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return  # said by create_engine
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:") or parsed.query.get("mode"):
        return  # a URI filename: its own mode= says what to do
    if not Path(database).is_file():
        raise Failure(f"no SQLite database at {database}: check the path in the URL")


def _first_line(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text = str(original).strip().splitlines()
    return text[0] if text else type(original).__name__


@contextmanager
def _connection(options: _Options) -> Iterator[sa.Connection]:
    """A connection to the database of ``--url``, in a transaction the caller commits."""
    if not options.url:
        raise Failure(
            f"no database given: pass --url URL or set {URL_VARIABLE} (a SQLAlchemy URL, e.g. "
            f"postgresql+psycopg://user@host/db)"
        )
    shown = _masked(options.url)
    _refuse_a_new_sqlite_file(options.url)
    try:
        engine = sa.create_engine(options.url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError, ValueError) as error:
        raise Failure(
            f"cannot use {shown} as a database URL ({_first_line(error)}); pass a SQLAlchemy URL "
            f"such as sqlite:///path.db or postgresql+psycopg://user@host/db, with its driver "
            f"installed"
        ) from None
    try:
        try:
            connection = engine.connect()
        except sa.exc.DBAPIError as error:
            raise Failure(
                f"cannot connect to {shown}: {_first_line(error)}; check the URL and that the "
                f"database is running and reachable"
            ) from None
        with connection:
            try:
                yield connection
            except sa.exc.DBAPIError as error:
                raise Failure(f"the database refused the work: {_first_line(error)}") from None
    finally:
        engine.dispose()


def _catalog(connection: sa.Connection, options: _Options) -> catalog.Catalog:
    try:
        return catalog.load(connection, schema=options.schema)
    except CatalogError as error:
        raise Failure(str(error)) from None


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A function to report how far the work is: a bar on stderr if it is a terminal."""
    if not _stderr_is_terminal():
        yield lambda done: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=done)


def _digests(values: Sequence[str]) -> list[integrity.Digest]:
    """Digests given as JSON text or as files of JSON lines (what ``versioning digest`` prints)."""
    found: list[integrity.Digest] = []
    for value in values:
        path = Path(value)
        texts = [value]
        if not value.lstrip().startswith("{"):
            try:
                texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line]
            except OSError as error:
                raise Failure(
                    f"cannot read the digest file {value}: {error.strerror or error}; pass a "
                    f"file of digests (one JSON per line, as `versioning digest` prints) or the "
                    f"JSON itself"
                ) from None
        for text in texts:
            try:
                found.append(integrity.Digest.from_json(text))
            except VersioningError as error:
                raise Failure(f"--digest {value}: {error}") from None
    return found


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False, sort_keys=True))


def _fail_on(error: Exception) -> NoReturn:
    """A library or database error while working: one line, exit code 3."""
    if isinstance(error, sa.exc.DBAPIError):
        raise Failure(f"the database refused the work: {_first_line(error)}") from None
    raise Failure(str(error)) from None


# --- the horizon of pruned history ---------------------------------------------------------------


def horizon_of(connection: sa.Connection, found: catalog.Catalog) -> dict[str, Any] | None:
    """The horizon of the database's pruned history (``None``: never pruned): the last archived
    transaction and when it was issued, the archive holding it, and the first transaction after
    it that the database holds, and when it was issued."""
    pruned = horizons.current(connection, found.transaction)
    if pruned is None:
        return None
    return {
        **_first_after(connection, found, pruned.transaction_id),
        "archived_up_to": pruned.transaction_id,
        "archived_issued_at": plain(pruned.issued_at),
        "archive": pruned.archive,
    }


def _first_after(
    connection: sa.Connection, found: catalog.Catalog, transaction_id: int
) -> dict[str, Any]:
    """The first transaction after ``transaction_id`` the database holds, and when it was."""
    table = found.transaction
    row = connection.execute(
        sa.select(table.c.id, issued_at_utc(table))
        .where(table.c.id > transaction_id)
        .order_by(table.c.id)
        .limit(1)
    ).first()
    return {
        "first_transaction_id": None if row is None else int(row[0]),
        "first_issued_at": None if row is None else plain(row[1]),
    }


def horizon_line(found: Mapping[str, Any], label: str = "horizon") -> str:
    """The horizon in one line, the same in every command's output."""
    first = found["first_transaction_id"]
    held = (
        "the database holds no transaction after it yet"
        if first is None
        else f"the database holds history from transaction {first} "
        f"(issued {found['first_issued_at']}) on"
    )
    return (
        f"{label}: {held}; up to transaction {found['archived_up_to']} (issued "
        f"{found['archived_issued_at']}) it is in archive {found['archive']}"
    )


def _refused(connection: sa.Connection, found: catalog.Catalog, error: ArchivedError) -> NoReturn:
    """A search reaching before the horizon, refused: one line with the horizon and what to do."""
    where = horizon_of(connection, found)
    if where is None:  # pragma: no cover - refused means pruned
        raise Failure(str(error)) from None
    first = where["first_transaction_id"]
    ask = (
        f"pass --since after {where['archived_issued_at']} or --transaction {first} or later"
        if first is not None
        else f"pass --since after {where['archived_issued_at']}"
    )
    raise Failure(
        f"{error.what}: refused, it would lack the archived history; {horizon_line(where)}; "
        f"{ask}, or read the archive (versioning.read_archive)"
    ) from None


# --- parts of the library this command line calls when they are there ----------------------------


def feature(name: str, modules: Sequence[str], what: str) -> Any:
    """The function ``name`` of the first of ``modules`` that has it (archives, search and export
    are separate parts of the library): a clear error if this version has none."""
    for module in modules:
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        return found
    raise Failure(
        f"{what} needs {modules[0]}.{name}, which this version of sqlalchemy-versioning does not "
        f"have: upgrade it (pip install -U 'sqlalchemy-versioning[cli]')"
    )


def _takes(function: Callable[..., Any], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _entries(connection: sa.Connection, found: catalog.Catalog, **filters: Any) -> Iterator[Any]:
    """The history rows matching ``filters``, decoded (``versioning.searching.entries``), and
    the events they keep (``versioning.activity``), in transaction order."""
    read = feature("activity", ["versioning.activity"], "this command")
    try:
        yield from read(connection, found, **filters)
    except ArchivedError as error:
        _refused(connection, found, error)
    except (VersioningError, sa.exc.DBAPIError) as error:
        _fail_on(error)


def _is_event(item: Any) -> bool:
    return hasattr(item, "action") and hasattr(item, "outcome")


def event_document(event: Any) -> dict[str, Any]:
    """One event (``versioning.Event``) as a JSON object."""
    return {
        "kind": "event",
        "event_id": event.id,
        "transaction_id": event.transaction_id,
        "action": event.action,
        "outcome": event.outcome,
        "target": event.target,
        "details": plain(event.details),
        "transaction": transaction_document(event.transaction),
    }


# --- filters, keys and values as the command line takes and shows them ---------------------------

_AGE = re.compile(r"^\s*(\d+)\s*([smhdwy])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}


def moment(text: str, option: str) -> dt.datetime:
    """An ISO 8601 date or time (UTC unless it says otherwise) as an aware datetime."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadValue(
            f"{text!r} is not a date or time: use ISO 8601, e.g. 2025-03-04 or "
            f"2025-03-04T09:30:00+01:00 (UTC unless a zone is given)",
            param_hint=option,
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _transaction_or_moment(text: str, option: str) -> int | dt.datetime:
    """A transaction id (digits) or a moment (:func:`moment`)."""
    value = text.strip()
    return int(value) if value.isdigit() else moment(value, option)


def moment_or_age(text: str, option: str) -> dt.datetime | dt.timedelta:
    """A moment (:func:`moment`) or an age: ``90d``, ``12h``, ``7y`` (a year is 365 days)."""
    match = _AGE.match(text)
    if match:
        return dt.timedelta(seconds=int(match.group(1)) * _AGE_UNITS[match.group(2)])
    return moment(text, option)


def key_values(entry: catalog.TableEntry, texts: Sequence[str]) -> tuple[Any, ...]:
    """A record's key given on the command line, as the values of its key columns' types."""
    names = entry.primary_key
    if len(texts) != len(names):
        raise BadValue(
            f"{entry.live} has the key ({', '.join(names)}): give {len(names)} value(s), got "
            f"{len(texts)}",
            param_hint="PK",
        )
    return tuple(_typed(entry, name, text) for name, text in zip(names, texts, strict=True))


def _typed(entry: catalog.TableEntry, name: str, text: str) -> Any:
    type_ = entry.history.c[name].type
    try:
        python_type: type | None = type_.python_type
    except NotImplementedError:
        python_type = None
    try:
        if python_type is None or python_type is str or issubclass(python_type, enum.Enum):
            return text
        if python_type is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        if python_type is int:
            return int(text)
        if python_type is uuid.UUID:
            value = uuid.UUID(text)
            as_uuid = getattr(type_, "as_uuid", True)
            return value if as_uuid else str(value)
        if python_type in (dt.datetime, dt.date, dt.time):
            return python_type.fromisoformat(text)
        if python_type is Decimal:
            return Decimal(text)
        made: Any = python_type
        return made(text)
    except (ValueError, KeyError, ArithmeticError):
        raise BadValue(
            f"{text!r} is not a value of {entry.live}.{name} ({type_})",
            param_hint="PK",
        ) from None


def plain(value: Any) -> Any:
    """A value as plain JSON (what ``--format json`` prints)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return str(value)


def shown(value: Any) -> str:
    """A value for people: ``repr`` of strings (so spaces show), plain text of the rest."""
    if value is None:
        return "∅"
    if isinstance(value, str):
        return repr(value)
    return str(plain(value))


def _key_text(key: Sequence[Any]) -> str:
    return ", ".join(str(plain(v)) for v in key)


def entry_document(entry: Any) -> dict[str, Any]:
    """One history row (``versioning.searching.Entry``) as a JSON object."""
    tx = entry.transaction
    return {
        "kind": "version",
        "table": entry.table,
        "version_id": entry.version_id,
        "transaction_id": entry.transaction_id,
        "operation": getattr(entry.operation, "value", entry.operation),
        "key": plain(list(entry.key)),
        "state": plain(dict(entry.state)),
        "changes": {name: plain(list(pair)) for name, pair in entry.changes.items()},
        "erased": sorted(entry.erased),
        "transaction": transaction_document(tx),
    }


def transaction_document(tx: Any) -> dict[str, Any]:
    return {
        "id": tx.id,
        "issued_at": plain(tx.issued_at),
        "actor": tx.actor,
        "source_ip": tx.source_ip,
        "request_id": tx.request_id,
        "reason": tx.reason,
        "extra": plain(dict(tx.extra or {})),
    }


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text (never runs as a formula)."""
    text = "" if value is None else str(plain(value))
    return "'" + text if text.startswith(_FORMULA) else text


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _print_entries(entries: Iterable[Any], output: str, timeline: bool = False) -> int:
    """Print history rows as ``output`` says; how many."""
    count = 0
    if output == "json":
        documents = [
            event_document(item) if _is_event(item) else entry_document(item) for item in entries
        ]
        _print_json(documents)
        return len(documents)
    if output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(
            [
                "transaction_id",
                "issued_at",
                "actor",
                "source_ip",
                "request_id",
                "reason",
                "table",
                "record",
                "operation",
                "fields",
            ]
        )
        for entry in entries:
            tx = entry.transaction
            if _is_event(entry):
                writer.writerow(
                    [
                        cell(x)
                        for x in (
                            entry.transaction_id,
                            tx.issued_at,
                            tx.actor,
                            tx.source_ip,
                            tx.request_id,
                            tx.reason,
                            "versioning_event",
                            entry.target,
                            "event",
                            f"{entry.action}: {entry.outcome}",
                        )
                    ]
                )
                count += 1
                continue
            writer.writerow(
                [
                    cell(x)
                    for x in (
                        entry.transaction_id,
                        tx.issued_at,
                        tx.actor,
                        tx.source_ip,
                        tx.request_id,
                        tx.reason,
                        entry.table,
                        record_text(entry.key),
                        getattr(entry.operation, "value", entry.operation),
                        " ".join(sorted(entry.changes)),
                    )
                ]
            )
            count += 1
        return count
    if _stdout_is_terminal() and not timeline:
        table = RichTable(
            "transaction", "issued at", "actor", "table", "record", "operation", "changed"
        )
        for entry in entries:
            tx = entry.transaction
            if _is_event(entry):
                table.add_row(
                    str(entry.transaction_id),
                    str(plain(tx.issued_at)),
                    tx.actor or "",
                    "event",
                    entry.target or "",
                    entry.action,
                    entry.outcome,
                )
                count += 1
                continue
            table.add_row(
                str(entry.transaction_id),
                str(plain(tx.issued_at)),
                tx.actor or "",
                entry.table,
                _key_text(entry.key),
                str(getattr(entry.operation, "value", entry.operation)),
                ", ".join(sorted(entry.changes)),
            )
            count += 1
        Console().print(table)
        return count
    for entry in entries:
        tx = entry.transaction
        who = f" by {tx.actor}" if tx.actor else ""
        where = f" from {tx.source_ip}" if tx.source_ip else ""
        if _is_event(entry):
            on = f" on {entry.target}" if entry.target else ""
            click.echo(
                f"transaction {entry.transaction_id}  {plain(tx.issued_at)}{who}{where}  "
                f"event {entry.action}{on}: {entry.outcome}"
            )
            count += 1
            continue
        operation = getattr(entry.operation, "value", entry.operation)
        click.echo(
            f"transaction {entry.transaction_id}  {plain(tx.issued_at)}{who}{where}  "
            f"{operation} {entry.table} [{_key_text(entry.key)}]"
        )
        if timeline:
            for name, (old, new) in sorted(entry.changes.items()):
                mark = " (erased)" if name in entry.erased else ""
                click.echo(f"    {name}: {shown(old)} → {shown(new)}{mark}")
        count += 1
    return count


# --- the commands --------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar=URL_VARIABLE,
    metavar="URL",
    help=f"SQLAlchemy database URL (default: ${URL_VARIABLE}).",
)
@click.option(
    "--schema",
    metavar="SCHEMA",
    help="Schema of the transaction table and the registry (default: the connection's).",
)
@click.version_option(package_name="sqlalchemy-versioning", prog_name="versioning")
@click.pass_context
def cli(context: click.Context, url: str | None, schema: str | None) -> None:
    """Read, check and seal the history that sqlalchemy-versioning recorded, from a database URL
    alone (no application code needed)."""
    context.obj = _Options(url=url, schema=schema)


@cli.command()
@click.option(
    "--digest",
    "digests",
    multiple=True,
    metavar="FILE|JSON",
    help="A digest saved earlier (`versioning digest`), or a file of them, one per line: "
    "each must still match its seal. Repeatable.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for programs.",
)
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=integrity.BATCH,
    show_default=True,
    help="Transactions read at a time.",
)
@click.option(
    "--archive",
    "archives",
    multiple=True,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Archive files (`versioning archive`), oldest first: without a URL they are checked "
    "alone, with one as one chain with the database. Repeatable.",
)
@click.option(
    "--since",
    metavar="ID|WHEN",
    help="Check a range only: from this transaction id, or this moment (ISO 8601; UTC).",
)
@click.option(
    "--until",
    metavar="ID|WHEN",
    help="Check a range only: before this transaction id, or this moment (ISO 8601; UTC).",
)
@click.pass_obj
def verify(
    options: _Options,
    digests: tuple[str, ...],
    output: str,
    batch: int,
    archives: tuple[str, ...],
    since: str | None,
    until: str | None,
) -> None:
    """Recompute every hash, digest and seal; exit 1 and list the problems if anything is wrong.

    With --since/--until, only the transactions of that range and the seals linking them.
    Writes nothing."""
    saved = _digests(digests)
    if (since is not None or until is not None) and archives:
        raise BadValue("--archive checks the whole chain: leave out --since and --until")
    if archives and not options.url:
        _report(_verify_archives(archives, saved), output)
        return
    extra: dict[str, Any] = {}
    if archives:
        if not _takes(integrity.verify, "archives"):
            feature("verify_archive", ["versioning.archiving"], "verify --archive")
            raise Failure(
                "verify --archive with a database needs versioning.verify(archives=...), which "
                "this version of sqlalchemy-versioning does not have: upgrade it"
            )
        extra["archives"] = list(archives)
    for name, text in (("since", since), ("until", until)):
        if text is not None:
            extra[name] = _transaction_or_moment(text, f"--{name}")
    with _connection(options) as connection:
        found = _catalog(connection, options)
        transactions = found.transaction
        total = connection.execute(sa.select(sa.func.count()).select_from(transactions)).scalar()
        with _progress("verifying", int(total or 0)) as advance:
            try:
                report = integrity.verify(
                    connection,
                    saved,
                    catalog=found,
                    batch=batch,
                    progress=lambda so_far: advance(so_far.transactions_checked),
                    **extra,
                )
            except (VersioningError, sa.exc.DBAPIError) as error:
                _fail_on(error)
        where = horizon_of(connection, found)
        connection.rollback()
    _report(report, output, where)


def _report(report: integrity.Report, output: str, where: Mapping[str, Any] | None = None) -> None:
    """Print what verify found (and the horizon, ``where`` there is one); exit 1 if anything is
    wrong."""
    if output == "json":
        _print_json(
            {
                "ok": report.ok,
                "horizon": None if where is None else dict(where),
                "transactions_checked": report.transactions_checked,
                "versions_checked": report.versions_checked,
                "events_checked": report.events_checked,
                "unsealed": report.unsealed,
                "problems": [
                    {
                        "kind": p.kind,
                        "table": p.table,
                        "transaction_id": p.transaction_id,
                        "version_id": p.version_id,
                        "detail": p.detail,
                    }
                    for p in report.problems
                ],
            }
        )
    else:
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"{verdict}: {report.transactions_checked} transaction(s), "
            f"{report.versions_checked} version(s) checked, {report.unsealed} not sealed yet"
        )
        if where is not None:
            click.echo(horizon_line(where))
        for p in report.problems:
            place = ", ".join(
                part
                for part in (
                    p.table,
                    None if p.transaction_id is None else f"transaction {p.transaction_id}",
                    None if p.version_id is None else f"version {p.version_id}",
                )
                if part
            )
            click.echo(f"{p.kind}: {place}: {p.detail}")
    if not report.ok:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for programs.",
)
@click.pass_obj
def seal(options: _Options, output: str) -> None:
    """Seal every digest not sealed yet into a new seal, and commit.

    Prints the new digest (keep it outside the database), or says there was nothing to seal."""
    with _connection(options) as connection:
        found = _catalog(connection, options)
        try:
            made = integrity.seal(connection, catalog=found)
            connection.commit()
        except (VersioningError, sa.exc.DBAPIError) as error:
            _fail_on(error)
    if made is None:
        if output == "json":
            _print_json(None)
        else:
            click.echo("nothing to seal: every digest is sealed already")
        return
    digest = integrity.Digest(made.id, made.last_transaction_id, made.hash, made.sealed_at)
    if output == "json":
        click.echo(digest.to_json())
    else:
        click.echo(
            f"seal {made.id}: {made.count} digest(s), transactions up to {made.last_transaction_id}"
        )
        click.echo(digest.to_json())


@cli.command()
@click.pass_obj
def digest(options: _Options) -> None:
    """Print the newest seal's digest as JSON (keep it outside the database; give it back to
    `versioning verify --digest`)."""
    with _connection(options) as connection:
        found = _catalog(connection, options)
        try:
            newest = integrity.digest(connection, catalog=found)
        except (VersioningError, sa.exc.DBAPIError) as error:
            _fail_on(error)
        connection.rollback()
    if newest is None:
        raise Failure("nothing is sealed yet: run `versioning seal` first")
    click.echo(newest.to_json())


# --- capture triggers ----------------------------------------------------------------------------


def _import_models(modules: Sequence[str]) -> None:
    """Import the modules that declare the application's models (from the working directory or
    ``PYTHONPATH``, as ``python -m`` would)."""
    here = os.getcwd()
    if "" not in sys.path and here not in sys.path:
        sys.path.insert(0, here)
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                raise BadValue(
                    f"no module {name!r}: pass the module that declares your versioned models "
                    f"(e.g. myapp.models), importable from the working directory or PYTHONPATH",
                    param_hint="--models",
                ) from None
            raise Failure(f"importing {name} failed: {_first_line(error)}") from None
        except Exception as error:
            raise Failure(
                f"importing {name} failed: {type(error).__name__}: {_first_line(error)}"
            ) from None


@dataclass(frozen=True)
class _Captured:
    """A live table captured by the database: its full name, schema and name."""

    fullname: str
    schema: str | None
    name: str


def _missing_triggers(connection: sa.Connection, table: _Captured) -> list[str]:
    """The operations whose capture trigger ``table`` lacks (all of them: ``["all"]``), by the
    triggers' names alone (see :func:`versioning.triggers.missing_triggers`)."""
    lacking = triggers.missing_triggers(connection, table.name, table.schema)
    if lacking is None:
        raise Failure(
            f"{table.fullname} is captured by the database, whose triggers this command finds "
            f"from the registry alone on PostgreSQL, MariaDB and SQLite only: pass --models "
            f"MODULE to check them on {connection.dialect.name}"
        )
    return lacking


def _missing_problem(table: str, lacking: Sequence[str]) -> TriggerProblem:
    install = "versioning.migrations.install_capture_triggers in a migration"
    if list(lacking) == ["all"]:
        detail = (
            f"{table} has no capture trigger: its writes are not recorded; install it ({install})"
        )
    else:
        detail = (
            f"{table} has no capture trigger for {', '.join(lacking)}: those writes are not "
            f"recorded; install it ({install})"
        )
    return TriggerProblem(table, "missing", detail)


@cli.command("check-triggers")
@click.option(
    "--models",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="A module declaring your versioned models (e.g. myapp.models), imported to tell "
    "whether each trigger is current. Repeatable.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for programs.",
)
@click.pass_obj
def check_capture_triggers(options: _Options, modules: tuple[str, ...], output: str) -> None:
    """Name the tables captured by the database whose capture trigger is missing or stale;
    exit 1 if there is one.

    From the registry alone it finds missing triggers; whether a trigger is current (installed
    for the columns, types and masks the model has now) needs the models: --models MODULE.
    Writes nothing."""
    _import_models(modules)
    with _connection(options) as connection:
        try:
            found: catalog.Catalog | None = catalog.load(connection, schema=options.schema)
        except CatalogError as error:
            if not modules:
                raise Failure(str(error)) from None
            found = None  # the models say what to check
        inspector = sa.inspect(connection)

        def exists(table: _Captured) -> bool:
            return inspector.has_table(table.name, schema=table.schema)

        # The models given say which of their tables are captured by the database, and how
        # their triggers must read; the registry names the others (whose triggers can be found
        # missing, not stale).
        modelled: dict[str, _Captured] = {}
        for spec in database_captured_specs():
            live = spec.mapper.local_table
            if isinstance(live, sa.Table):
                modelled[live.fullname] = _Captured(live.fullname, live.schema, live.name)
        declared = {
            spec.mapper.local_table.fullname
            for spec in all_specs()
            if isinstance(spec.mapper.local_table, sa.Table)
        }
        registered: dict[str, _Captured] = {}
        for entry in found.tables if found is not None else ():
            if entry.history.info.get(HISTORY_BY_DATABASE) and entry.live not in declared:
                schema, _, name = entry.live.rpartition(".")
                registered[entry.live] = _Captured(entry.live, schema or None, name)
        checked = {n: t for n, t in (modelled | registered).items() if exists(t)}
        absent = sorted(name for name in modelled if name not in checked)
        try:
            problems: dict[str, TriggerProblem] = {}
            for name in sorted(checked):
                if triggers.captures_on(connection.dialect) or name in registered:
                    lacking = _missing_triggers(connection, checked[name])
                    if lacking:
                        problems[name] = _missing_problem(name, lacking)
            if modelled:
                for problem in triggers.check_triggers(connection):
                    problems.setdefault(problem.table, problem)
        except (VersioningError, sa.exc.DBAPIError) as error:
            _fail_on(error)
        connection.rollback()
    unchecked = sorted(name for name in checked if name in registered and name not in problems)
    _trigger_report(
        [problems[name] for name in sorted(problems)], len(checked), unchecked, absent, output
    )


def _trigger_report(
    problems: Sequence[TriggerProblem],
    checked: int,
    unchecked: Sequence[str],
    absent: Sequence[str],
    output: str,
) -> None:
    """Print what check-triggers found; exit 1 if a trigger is missing or stale. Tables it could
    not check whether current (``unchecked``), and the models' tables this database does not
    have (``absent``: the URL of another database?), are said too (on stderr with json)."""
    notes = []
    if unchecked:
        notes.append(
            f"not checked whether current (that needs the models): {', '.join(unchecked)}; "
            f"pass --models MODULE, the module declaring them"
        )
    if absent:
        notes.append(
            f"not in this database, left out: {', '.join(absent)} (the models given declare "
            f"them captured by the database)"
        )
    if output == "json":
        _print_json([{"table": p.table, "kind": p.kind, "detail": p.detail} for p in problems])
        for note in notes:
            click.echo(f"versioning: {note}", err=True)
    else:
        tables = f"{checked} table(s) captured by the database checked"
        if problems:
            click.echo(f"{len(problems)} problem(s): {tables}")
        elif not checked:
            click.echo("no table captured by the database: nothing to check")
        elif unchecked:
            click.echo(f"no capture trigger is missing: {tables}")
        else:
            click.echo(f"all capture triggers are current: {tables}")
        for p in problems:
            click.echo(f"{p.kind}: {p.table}: {p.detail}")
        for note in notes:
            click.echo(note)
    if problems:
        sys.exit(EXIT_PROBLEMS)


@cli.command()
@click.argument(
    "path",
    required=False,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    default=Path("versioning-demo.sqlite"),
)
def demo(path: Path) -> None:
    """Record, read and restore the history of a model in a SQLite database file PATH
    (default: versioning-demo.sqlite), replaced if it exists."""
    from versioning.demo import run

    try:
        run(path)
    except BrokenPipeError:  # e.g. `versioning demo | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


F = Callable[..., Any]


def _format_option(command: F) -> F:
    """``--format json|text`` of the commands that print JSON by default."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(["json", "text"]),
        default="json",
        show_default=True,
        help="json for programs, text for people.",
    )(command)


def _filter_options(command: F) -> F:
    """The filters of ``versioning.search``, as options."""
    options = [
        click.option("--table", metavar="TABLE", help="One table (live or history name)."),
        click.option("--actor", metavar="ACTOR", help="Changes made by this actor."),
        click.option(
            "--operation",
            type=click.Choice([o.value for o in Operation]),
            help="insert, update or delete.",
        ),
        click.option("--since", metavar="WHEN", help="At or after this moment (ISO 8601; UTC)."),
        click.option("--until", metavar="WHEN", help="Before this moment (ISO 8601; UTC)."),
        click.option("--transaction", "transaction_id", type=int, metavar="ID"),
        click.option("--request-id", metavar="ID"),
        click.option("--source-ip", metavar="IP"),
        click.option("--action", metavar="ACTION", help="Events of this action only."),
        click.option("--outcome", metavar="OUTCOME", help="Events of this outcome only."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _filters(
    table: str | None,
    actor: str | None,
    operation: str | None,
    since: str | None,
    until: str | None,
    transaction_id: int | None,
    request_id: str | None,
    source_ip: str | None,
    action: str | None,
    outcome: str | None,
) -> dict[str, Any]:
    """The options given, as the keyword arguments of ``versioning.searching.entries``."""
    given: dict[str, Any] = {
        "table": table,
        "actor": actor,
        "operation": None if operation is None else Operation(operation),
        "since": None if since is None else moment(since, "--since"),
        "until": None if until is None else moment(until, "--until"),
        "transaction_id": transaction_id,
        "request_id": request_id,
        "source_ip": source_ip,
        "action": action,
        "outcome": outcome,
    }
    return {name: value for name, value in given.items() if value is not None}


@cli.command()
@_filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="At most this many versions (0: all).",
)
@click.option("--oldest-first", is_flag=True, help="Oldest first (default: newest first).")
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
    help="text (a table on a terminal), json or csv.",
)
@click.pass_obj
def log(options: _Options, /, limit: int, oldest_first: bool, output: str, **chosen: Any) -> None:
    """The versions recorded, across tables, newest first: who changed what, when, from where."""
    filters = _filters(**chosen)
    with _connection(options) as connection:
        found = _catalog(connection, options)
        if "table" in filters:
            _table(found, filters["table"])
        rows = _entries(
            connection,
            found,
            newest_first=not oldest_first,
            limit=limit or None,
            **filters,
        )
        _print_entries(rows, output)
        connection.rollback()


def _table(found: catalog.Catalog, name: str) -> catalog.TableEntry:
    try:
        return found.entry(name)
    except CatalogError as error:
        raise Failure(str(error)) from None


@cli.command()
@click.argument("transaction_id", metavar="TX", type=int)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.pass_obj
def show(options: _Options, transaction_id: int, output: str) -> None:
    """One transaction: who, when, from where, why, and each change as old → new."""
    with _connection(options) as connection:
        found = _catalog(connection, options)
        rows = list(_entries(connection, found, transaction_id=transaction_id, newest_first=False))
        connection.rollback()
    if not rows:
        raise Failure(
            f"transaction {transaction_id} recorded no change and no event (or does not exist)"
        )
    tx = rows[0].transaction
    events = [row for row in rows if _is_event(row)]
    changes = [row for row in rows if not _is_event(row)]
    if output == "json":
        _print_json(
            {
                "transaction": transaction_document(tx),
                "changes": [entry_document(entry) for entry in changes],
                "events": [event_document(event) for event in events],
            }
        )
        return
    click.echo(f"transaction {tx.id} at {plain(tx.issued_at)}")
    for label, value in (
        ("actor", tx.actor),
        ("source ip", tx.source_ip),
        ("request id", tx.request_id),
        ("reason", tx.reason),
    ):
        if value:
            click.echo(f"  {label}: {value}")
    for event in events:
        on = f" on {event.target}" if event.target else ""
        click.echo(f"event {event.action}{on}: {event.outcome}")
        if event.details:
            click.echo(f"    details: {json.dumps(plain(event.details), ensure_ascii=False)}")
    for entry in changes:
        operation = getattr(entry.operation, "value", entry.operation)
        click.echo(f"{operation} {entry.table} [{_key_text(entry.key)}]")
        for name, (old, new) in sorted(entry.changes.items()):
            mark = " (erased)" if name in entry.erased else ""
            click.echo(f"    {name}: {shown(old)} → {shown(new)}{mark}")


@cli.command()
@click.argument("table", metavar="TABLE")
@click.argument("pk", metavar="PK...", nargs=-1, required=True)
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json", "csv"]),
    default="text",
    show_default=True,
)
@click.pass_obj
def record(options: _Options, table: str, pk: tuple[str, ...], output: str) -> None:
    """One record's timeline, oldest first: TABLE (live or history name) and its key's values."""
    with _connection(options) as connection:
        found = _catalog(connection, options)
        entry = _table(found, table)
        key = key_values(entry, pk)
        rows = _entries(
            connection, found, table=entry.name, key=key, newest_first=False, limit=None
        )
        if _print_entries(rows, output, timeline=True) == 0 and output == "text":
            click.echo(f"no history of {entry.live} [{_key_text(key)}]")
        connection.rollback()


@cli.command()
@_filter_options
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "jsonl"]),
    required=True,
    help="csv: one row per changed field; jsonl: one version per line (docs/auditing.md).",
)
@click.option(
    "--output",
    required=True,
    metavar="FILE",
    help="File to write (.gz: compressed), or - for stdout.",
)
@click.option("--newest-first", is_flag=True, help="Newest first (default: oldest first).")
@click.pass_obj
def export(
    options: _Options, /, output_format: str, output: str, newest_first: bool, **chosen: Any
) -> None:
    """Write the versions matching the filters to a file, for a spreadsheet or another tool."""
    filters = _filters(**chosen)
    write = feature("export", ["versioning.exporting"], "versioning export")
    with _connection(options) as connection:
        found = _catalog(connection, options)
        if "table" in filters:
            _table(found, filters["table"])
        target: Any = sys.stdout if output == "-" else output
        try:
            count = write(
                connection,
                target,
                format=output_format,
                catalog=found,
                newest_first=newest_first,
                **filters,
            )
        except ArchivedError as error:
            _refused(connection, found, error)
        except (VersioningError, sa.exc.DBAPIError) as error:
            _fail_on(error)
        except OSError as error:
            raise Failure(f"cannot write {output}: {error.strerror or error}") from None
        connection.rollback()
    if output != "-":
        click.echo(f"{count} version(s) and event(s) written to {output}")


@cli.command()
@click.option(
    "--before",
    required=True,
    metavar="DATE|AGE",
    help="Archive what was sealed before this moment (ISO 8601) or age (90d, 12h, 7y).",
)
@click.option("--output", required=True, metavar="FILE", help="The archive (.jsonl.gz).")
@_format_option
@click.pass_obj
def archive(options: _Options, before: str, output: str, output_format: str) -> None:
    """Write every sealed transaction before the horizon, with its versions, to an archive file
    that `versioning verify --archive` checks without a database.

    Prints its manifest, with the horizon a prune of it would set."""
    horizon = moment_or_age(before, "--before")
    write = feature("archive", ["versioning.archiving", "versioning"], "versioning archive")
    with _connection(options) as connection:
        found = _catalog(connection, options)
        arguments: dict[str, Any] = {"before": horizon, "output": output}
        if _takes(write, "catalog"):
            arguments["catalog"] = found
        with _progress("archiving", None) as advance:
            if _takes(write, "progress"):
                arguments["progress"] = advance
            try:
                manifest = write(connection, **arguments)
            except (VersioningError, sa.exc.DBAPIError) as error:
                _fail_on(error)
            except OSError as error:
                raise Failure(f"cannot write {output}: {error.strerror or error}") from None
        where = {
            **_first_after(connection, found, manifest.last_transaction_id),
            "archived_up_to": manifest.last_transaction_id,
            "archived_issued_at": plain(manifest.latest_issued_at),
            "archive": Path(output).name,
        }
        connection.rollback()
    if output_format == "json":
        _print_json({**plain(manifest), "horizon": where})
        return
    click.echo(
        f"archived {manifest.transactions} transaction(s), {manifest.versions} version(s) and "
        f"{manifest.events} event(s) (transactions {manifest.first_transaction_id}.."
        f"{manifest.last_transaction_id}, seals {manifest.first_seal_id}..{manifest.last_seal_id}) "
        f"to {output}"
    )
    click.echo(horizon_line(where, f"horizon once pruned (versioning prune --archive {output})"))


@cli.command()
@click.option(
    "--archive",
    "path",
    required=True,
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="A verified archive: exactly what it holds is deleted.",
)
@_format_option
@click.pass_obj
def prune(options: _Options, path: str, output_format: str) -> None:
    """Delete from the database exactly what an archive holds, and record the prune.

    Prints the new horizon."""
    delete = feature("prune", ["versioning.pruning", "versioning"], "versioning prune")
    if not _takes(delete, "catalog"):
        raise Failure(
            "versioning prune cannot work from a URL alone yet: the prune is recorded as a "
            "transaction through your versioned models. Run versioning.prune(session, "
            f"archive={path!r}) from Python with the models imported, then `versioning verify "
            f"--archive {path}`"
        )
    with _connection(options) as connection:
        found = _catalog(connection, options)
        arguments: dict[str, Any] = {"archive": path}
        if _takes(delete, "catalog"):
            arguments["catalog"] = found
        try:
            horizon = delete(connection, **arguments)
            connection.commit()
        except (VersioningError, sa.exc.DBAPIError) as error:
            _fail_on(error)
        where = horizon_of(connection, found)
        connection.rollback()
    if output_format == "json":
        _print_json({**plain(horizon), "horizon": where})
        return
    click.echo(
        f"pruned what {Path(path).name} holds: transactions up to {horizon.transaction_id}, "
        f"seals up to {horizon.seal_id}; recorded as transaction {horizon.prune_transaction_id}"
    )
    if where is not None:
        click.echo(horizon_line(where))


def _verify_archives(paths: Sequence[str], saved: list[integrity.Digest]) -> integrity.Report:
    """Archive files checked with no database (``versioning.verify_archive``), one report."""
    check = feature("verify_archive", ["versioning.archiving", "versioning"], "verify --archive")
    report = integrity.Report()
    for path in paths:
        try:
            found = check(path, saved)
        except VersioningError as error:
            raise Failure(f"{path}: {error}") from None
        report.problems.extend(found.problems)
        report.transactions_checked += found.transactions_checked
        report.versions_checked += found.versions_checked
        report.unsealed += found.unsealed
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="versioning")
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return 0
