"""The ``versioning`` command line: history from a database URL alone (the ``cli`` extra).

Built with click (commands, options) and rich (tables, progress bars), which the core library does
not need: ``versioning.__main__`` says what to install when they are missing. Every command but
``demo`` works from ``--url`` (or ``VERSIONING_DATABASE_URL``) and the database's registry of
history tables (:mod:`versioning.catalog`): no application model is imported.

Exit codes: 0 done (and, for ``verify``, nothing wrong); 1 ``verify`` found problems; 2 the command
line is wrong (click's usage errors); 3 the work could not be done (no or bad URL, database
unreachable, no registry...), said in one line on stderr with what to do.

Long work shows a progress bar on stderr when stderr is a terminal, never otherwise; results go to
stdout (``--format json`` for programs).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import click
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from versioning import catalog, integrity
from versioning.errors import CatalogError, VersioningError

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
@click.pass_obj
def verify(options: _Options, digests: tuple[str, ...], output: str, batch: int) -> None:
    """Recompute every hash, digest and seal; exit 1 and list the problems if anything is wrong.

    Writes nothing."""
    saved = _digests(digests)
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
                )
            except (VersioningError, sa.exc.DBAPIError) as error:
                _fail_on(error)
        connection.rollback()
    if output == "json":
        _print_json(
            {
                "ok": report.ok,
                "transactions_checked": report.transactions_checked,
                "versions_checked": report.versions_checked,
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
        for p in report.problems:
            where = ", ".join(
                part
                for part in (
                    p.table,
                    None if p.transaction_id is None else f"transaction {p.transaction_id}",
                    None if p.version_id is None else f"version {p.version_id}",
                )
                if part
            )
            click.echo(f"{p.kind}: {where}: {p.detail}")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="versioning")
    except SystemExit as done:
        code = done.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_USAGE)
    return 0
