"""Retention by verifiable archives: :func:`archive`, :func:`verify_archive`, :func:`read_archive`.

:func:`archive` writes every transaction of the seals wholly before a moment — with its history
rows, digest segments and seal entries, and the seals — to a gzip-compressed JSON-lines file
(:mod:`versioning.archive_format`) whose last line is a manifest. It rounds down to a seal
boundary, so that the file proves itself: its rows give its digests, its digests its seals, its
seals a chain that the database's next seal links to. The file is checked as it is written
(:mod:`versioning.archive_check`); history that does not verify is not archived.

:func:`verify_archive` checks a file with no database; :func:`read_archive` yields its versions
back; :func:`versioning.prune` (:mod:`versioning.pruning`) deletes from the database what a
verified archive holds. See docs/auditing.md, "Retention and archives".
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from versioning import horizon
from versioning.archive_check import Checker
from versioning.archive_format import (
    FORMAT,
    VERSION,
    TableDescription,
    decode,
    describe,
    line,
)
from versioning.canonical import converter
from versioning.catalog import Catalog
from versioning.errors import ArchiveError, ArgumentError
from versioning.event_log import Event, has_event_table
from versioning.integrity import Digest, Report, _from_connection, _single, _Target
from versioning.operation import Operation
from versioning.reading import Transaction, _select, read_rows
from versioning.schema import (
    CHANGES,
    OPERATION,
    PERSONAL,
    TRANSACTION_ID,
    VERSION_ID,
    UTCDateTime,
    event_table,
    issued_at_utc,
)

__all__ = [
    "ArchiveManifest",
    "ArchivedVersion",
    "archive",
    "check_archive",
    "read_archive",
    "read_archive_events",
    "read_manifest",
    "verify_archive",
]

#: Transactions read from the database at a time while archiving.
BATCH = 1000


@dataclass(frozen=True, slots=True)
class ArchiveManifest:
    """What an archive holds: its manifest (the file's last line)."""

    transactions: int
    versions: int
    digests: int
    entries: int
    seals: int
    first_transaction_id: int
    last_transaction_id: int
    first_seal_id: int
    last_seal_id: int
    #: The hash the first seal links to (``None`` for seal 1), and the first and last seals'.
    previous_hash: str | None
    first_seal_hash: str
    last_seal_hash: str
    #: The archived transaction issued last (the horizon in time), and when.
    latest_transaction_id: int
    latest_issued_at: dt.datetime
    #: The moment asked for: every archived transaction was issued before it.
    before: dt.datetime
    #: History rows per history table.
    tables: Mapping[str, int]
    #: The SHA-256 of every line of the file before the manifest.
    data_sha256: str
    #: Event rows (``versioning_event``: failed and denied actions) the transactions hold.
    events: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "t": "manifest",
            "transactions": self.transactions,
            "versions": self.versions,
            "digests": self.digests,
            "entries": self.entries,
            "seals": self.seals,
            "first_transaction_id": self.first_transaction_id,
            "last_transaction_id": self.last_transaction_id,
            "first_seal_id": self.first_seal_id,
            "last_seal_id": self.last_seal_id,
            "previous_hash": self.previous_hash,
            "first_seal_hash": self.first_seal_hash,
            "last_seal_hash": self.last_seal_hash,
            "latest_transaction_id": self.latest_transaction_id,
            "latest_issued_at": self.latest_issued_at.isoformat(),
            "before": self.before.isoformat(),
            "tables": dict(self.tables),
            "data_sha256": self.data_sha256,
            "events": self.events,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "archive") -> ArchiveManifest:
        try:
            return cls(
                transactions=int(data["transactions"]),
                versions=int(data["versions"]),
                digests=int(data["digests"]),
                entries=int(data["entries"]),
                seals=int(data["seals"]),
                first_transaction_id=int(data["first_transaction_id"]),
                last_transaction_id=int(data["last_transaction_id"]),
                first_seal_id=int(data["first_seal_id"]),
                last_seal_id=int(data["last_seal_id"]),
                previous_hash=None if data["previous_hash"] is None else str(data["previous_hash"]),
                first_seal_hash=str(data["first_seal_hash"]),
                last_seal_hash=str(data["last_seal_hash"]),
                latest_transaction_id=int(data["latest_transaction_id"]),
                latest_issued_at=dt.datetime.fromisoformat(data["latest_issued_at"]),
                before=dt.datetime.fromisoformat(data["before"]),
                tables={str(k): int(v) for k, v in data["tables"].items()},
                data_sha256=str(data["data_sha256"]),
                events=int(data["events"]),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ArchiveError(f"{source}: the manifest is not readable ({exc!r})") from None


@dataclass(frozen=True, slots=True)
class ArchivedVersion:
    """One history row of an archive, decoded, with its transaction (no model needed).

    ``table`` is the live table's name, ``history_table`` the history table's; ``key`` the
    record's key (for link history: the link's columns); ``state`` the snapshot by column name;
    ``changes`` each changed field's ``(old, new)``; ``erased`` the personal columns erased.
    """

    table: str
    history_table: str
    version_id: int
    transaction_id: int
    operation: Operation
    key: tuple[Any, ...]
    state: Mapping[str, Any]
    changes: Mapping[str, tuple[Any, Any]]
    erased: frozenset[str]
    transaction: Transaction


# --- the caller's bind ----------------------------------------------------------------------


@contextlib.contextmanager
def session_of(bind: Any, function: str) -> Iterator[tuple[Session, bool]]:
    """A session on ``bind`` (a ``Session``, ``Engine`` or ``Connection``), and whether it is
    the library's own (to commit and close)."""
    if isinstance(bind, Session):
        yield bind, False
        return
    if isinstance(bind, sa.Engine | Connection):
        with Session(bind) as session:
            yield session, True
        return
    raise ArgumentError(
        f"versioning.{function}() takes a Session, an Engine or a Connection, got {bind!r}"
    )


def target_of(
    session: Session,
    metadata: sa.MetaData | None,
    function: str,
    catalog: Catalog | None = None,
    *,
    models_only: bool = False,
) -> tuple[_Target, Connection]:
    """The history to work on, and the connection to its database: ``catalog``'s; else that of
    the models the session reaches; else (``models_only`` false: the caller gave an ``Engine``
    or a ``Connection``, no ``metadata``) the database's registry (:func:`versioning.catalog.load`:
    no model needed)."""
    if catalog is not None:
        if not isinstance(catalog, Catalog):
            raise ArgumentError(
                f"versioning.{function}() takes catalog= a versioning.catalog.Catalog, got "
                f"{catalog!r}"
            )
        if metadata is not None:
            raise ArgumentError(f"versioning.{function}(): pass metadata= or catalog=, not both")
        if models_only:
            raise ArgumentError(
                f"versioning.{function}(catalog=) takes an Engine or a Connection; through a "
                f"Session it works on the models the session reaches (pass metadata=)"
            )
        return _from_connection(session.connection(), catalog, function), session.connection()
    target = _single(session, metadata, function)
    if target is not None:
        return target, session.connection(bind_arguments={"mapper": target.mapper})
    if models_only or metadata is not None:
        raise ArchiveError(
            f"versioning.{function}(): the session reaches no versioning transaction table "
            f"(import the versioned models, and create their tables; or pass an Engine or a "
            f"Connection, to work from the database's registry alone)"
        )
    connection = session.connection()
    return _from_connection(connection, None, function), connection


def _moment(before: Any) -> dt.datetime:
    if isinstance(before, dt.timedelta):
        if before < dt.timedelta(0):
            raise ArgumentError(f"versioning.archive(before=) takes a positive age, got {before}")
        return dt.datetime.now(dt.UTC) - before
    if isinstance(before, dt.datetime):
        if before.tzinfo is None:
            raise ArgumentError(
                f"versioning.archive(before=) takes a timezone-aware datetime, got {before!r}: "
                f"e.g. datetime(2020, 1, 1, tzinfo=timezone.utc)"
            )
        return before.astimezone(dt.UTC)
    raise ArgumentError(
        f"versioning.archive(before=) takes a datetime or a timedelta (an age), got {before!r}"
    )


# --- which seals ----------------------------------------------------------------------------


def archivable(connection: Connection, target: _Target, before: dt.datetime) -> tuple[int, int]:
    """The first and last seal to archive: from the seal after the horizon (or seal 1) to the
    last seal such that every transaction up to the highest id they link is issued before
    ``before`` and linked by them (a prefix of the history in id order). ``last < first``:
    nothing to archive."""
    pruned = horizon.current(connection, target.transactions)
    first = 1 if pruned is None else pruned.seal_id + 1
    seals, entries, digests, tx = target.seals, target.entries, target.digests, target.transactions
    too_late = connection.execute(
        sa.select(sa.func.min(entries.c.seal_id))
        .join(tx, tx.c.id == entries.c.transaction_id)
        .where(entries.c.seal_id >= first, issued_at_utc(tx) >= before)
    ).scalar()
    newest = connection.execute(sa.select(sa.func.max(seals.c.id))).scalar()
    last = int(newest or 0) if too_late is None else int(too_late) - 1
    while last >= first:
        highest = connection.execute(
            sa.select(sa.func.max(seals.c.last_transaction_id)).where(
                seals.c.id.between(first, last)
            )
        ).scalar()
        if highest is None:
            return first, first - 1
        outside = connection.execute(
            sa.select(sa.func.max(sa.func.coalesce(entries.c.seal_id, last + 1)))
            .select_from(digests)
            .outerjoin(
                entries,
                sa.and_(
                    entries.c.transaction_id == digests.c.transaction_id,
                    entries.c.segment == digests.c.segment,
                ),
            )
            .where(
                digests.c.transaction_id <= highest,
                sa.or_(entries.c.seal_id.is_(None), entries.c.seal_id > last),
            )
        ).scalar()
        if outside is None:
            return first, last
        last -= 1  # a transaction up to it is linked later (it committed late): round down
    return first, last


# --- archive --------------------------------------------------------------------------------


def archive(
    bind: Any,
    *,
    before: dt.datetime | dt.timedelta,
    output: str | os.PathLike[str],
    metadata: sa.MetaData | None = None,
    progress: Callable[[int], None] | None = None,
    catalog: Catalog | None = None,
) -> ArchiveManifest:
    """Write every transaction sealed before ``before`` (a time, or an age) to ``output``.

    The horizon rounds down to a seal boundary: the last seal whose transactions, and every
    transaction with a lower id, were issued before ``before`` and are sealed. Reads only; the
    file is written next to ``output`` and renamed into place once complete. ``progress`` is
    called with the number of versions written so far, after each batch.

    ``bind`` is a ``Session`` (the models it reaches; ``metadata`` picks one ``MetaData``); a
    ``Connection`` (the history tables of ``catalog``, by default those the database's registry
    lists: :func:`versioning.catalog.load`, no model needed, as for ``verify``); or an
    ``Engine`` (the models that reach it, or with none imported, the registry's). Each
    transaction's event rows (``versioning_event``) are archived with it. Raises
    :class:`~versioning.ArchiveError` when there is nothing sealed to archive, or when the
    history to archive does not verify (run :func:`versioning.verify`).
    """
    moment = _moment(before)
    path = Path(output)
    if isinstance(bind, Connection):
        target = _from_connection(bind, catalog, "archive")
        return _archive(bind, target, path, moment, progress)
    with session_of(bind, "archive") as (session, own):
        target, connection = target_of(session, metadata, "archive", catalog, models_only=not own)
        return _archive(connection, target, path, moment, progress)


def _archive(
    connection: Connection,
    target: _Target,
    path: Path,
    moment: dt.datetime,
    progress: Callable[[int], None] | None,
) -> ArchiveManifest:
    first, last = archivable(connection, target, moment)
    if last < first:
        raise ArchiveError(
            f"nothing to archive before {moment.isoformat()}: no seal after the horizon "
            f"links only transactions issued before it (seal first: versioning.seal())"
        )
    events: sa.Table | None = event_table(target.transactions)
    if not has_event_table(connection, target.transactions):
        events = None
    return _Writer(connection, target, events, path, moment, progress).write(first, last)


class _Writer:
    def __init__(
        self,
        connection: Connection,
        target: _Target,
        events: sa.Table | None,
        path: Path,
        before: dt.datetime,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.connection = connection
        self.target = target
        self.events = events
        self.path = path
        self.before = before
        self.progress = progress
        self.tables = {name: describe(table) for name, table in sorted(target.histories.items())}
        #: Per history table: each snapshot column's converter to canonical form.
        self.converters = {
            name: [converter(table.c[c].type) for c in self.tables[name].columns]
            for name, table in target.histories.items()
        }
        self.report = Report()
        self.checker = Checker(self.report, path.name)
        self.sha = hashlib.sha256()
        #: Lines not yet given to gzip (one write per thousand lines).
        self.buffer: list[bytes] = []

    def write(self, first: int, last: int) -> ArchiveManifest:
        temporary = self.path.with_name(f".{self.path.name}.partial")
        try:
            with gzip.open(temporary, "wb", compresslevel=3) as file:
                header = {
                    "t": "header",
                    "format": FORMAT,
                    "version": VERSION,
                    "names": {
                        "transaction": self.target.transactions.fullname,
                        "digest": self.target.digests.fullname,
                        "seal": self.target.seals.fullname,
                        "seal_entry": self.target.entries.fullname,
                        **({} if self.events is None else {"event": self.events.fullname}),
                    },
                    "tables": [t.to_json() for t in self.tables.values()],
                }
                self._emit(file, header)
                self.checker.header(header)
                for group in self._groups(first, last):
                    self._group(file, group)
                    if self.progress is not None:
                        self.progress(self.checker.totals.versions)
                self._flush(file)
                data_sha256 = self.sha.hexdigest()
                self.checker.end()
                problems = self.report.problems
                if problems:
                    raise ArchiveError(
                        f"cannot archive to {self.path}: the history to archive does not verify "
                        f"({len(problems)} problem(s), the first: {problems[0].detail}); run "
                        f"versioning.verify() and resolve them first"
                    )
                manifest = self._manifest(data_sha256)
                file.write(line(manifest.to_json()))
            temporary.replace(self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        return manifest

    def _emit(self, file: Any, document: Mapping[str, Any]) -> None:
        data = line(document)
        self.sha.update(data)
        self.buffer.append(data)
        if len(self.buffer) >= 1000:
            self._flush(file)

    def _flush(self, file: Any) -> None:
        file.write(b"".join(self.buffer))
        self.buffer.clear()

    def _manifest(self, data_sha256: str) -> ArchiveManifest:
        totals = self.checker.totals
        assert totals.latest is not None and totals.first_seal_hash is not None
        assert totals.last_seal_hash is not None
        return ArchiveManifest(
            transactions=totals.transactions,
            versions=totals.versions,
            digests=totals.digests,
            entries=totals.entries,
            seals=totals.seals,
            first_transaction_id=totals.first_transaction_id or 0,
            last_transaction_id=totals.last_transaction_id or 0,
            first_seal_id=totals.first_seal_id or 0,
            last_seal_id=totals.last_seal_id or 0,
            previous_hash=totals.previous_hash,
            first_seal_hash=totals.first_seal_hash,
            last_seal_hash=totals.last_seal_hash,
            latest_transaction_id=totals.latest[1],
            latest_issued_at=totals.latest[0],
            before=self.before,
            tables=dict(totals.tables),
            data_sha256=data_sha256,
            events=totals.events,
        )

    def _groups(self, first: int, last: int) -> Iterator[list[tuple[Any, list[Any]]]]:
        """The seals ``first..last`` with their entries (in position order), in groups of at
        least :data:`BATCH` transactions."""
        seals, entries = self.target.seals, self.target.entries
        group: list[tuple[Any, list[Any]]] = []
        size = 0
        at = first
        while at <= last:
            rows = (
                self.connection.execute(
                    sa.select(
                        seals.c.id,
                        seals.c.previous_hash,
                        seals.c.hash,
                        sa.type_coerce(seals.c.sealed_at, UTCDateTime()).label("sealed_at"),
                        seals.c.count,
                        seals.c.last_transaction_id,
                    )
                    .where(seals.c.id.between(at, min(last, at + 99)))
                    .order_by(seals.c.id)
                )
                .mappings()
                .all()
            )
            links: dict[int, list[Any]] = {}
            for entry in self.connection.execute(
                sa.select(
                    entries.c.seal_id,
                    entries.c.position,
                    entries.c.transaction_id,
                    entries.c.segment,
                    entries.c.digest,
                )
                .where(entries.c.seal_id.between(at, min(last, at + 99)))
                .order_by(entries.c.seal_id, entries.c.position)
            ):
                links.setdefault(int(entry[0]), []).append(entry)
            for row in rows:
                found = links.get(int(row["id"]), [])
                group.append((row, found))
                size += len(found)
                if size >= BATCH:
                    yield group
                    group, size = [], 0
            at += 100
        if group:
            yield group

    def _group(self, file: Any, group: list[tuple[Any, list[Any]]]) -> None:
        t = self.target
        c = self.connection
        ids = sorted({int(entry[2]) for _, found in group for entry in found})
        if not ids:
            wanted: set[int] = set()
            low = high = 0
        else:
            wanted, low, high = set(ids), ids[0], ids[-1]
        txs = {
            int(row["id"]): row
            for row in c.execute(
                sa.select(
                    t.transactions.c.id,
                    issued_at_utc(t.transactions).label("issued_at"),
                    t.transactions.c.actor,
                    t.transactions.c.source_ip,
                    t.transactions.c.request_id,
                    t.transactions.c.reason,
                    t.transactions.c.extra,
                ).where(t.transactions.c.id.between(low, high))
            ).mappings()
            if int(row["id"]) in wanted
        }
        segments: dict[int, list[Any]] = {}
        for row in c.execute(
            sa.select(t.digests)
            .where(t.digests.c.transaction_id.between(low, high))
            .order_by(t.digests.c.transaction_id, t.digests.c.segment)
        ).mappings():
            if int(row["transaction_id"]) in wanted:
                segments.setdefault(int(row["transaction_id"]), []).append(row)
        rows: dict[int, list[dict[str, Any]]] = {}
        events = self.events
        if events is not None and wanted:
            for event in c.execute(
                sa.select(
                    events.c.id,
                    events.c.transaction_id,
                    events.c.action,
                    events.c.outcome,
                    events.c.target,
                    events.c.details,
                )
                .where(events.c.transaction_id.between(low, high))
                .order_by(events.c.transaction_id, events.c.id)
            ).mappings():
                tx_id = int(event["transaction_id"])
                if tx_id in wanted:
                    rows.setdefault(tx_id, []).append(
                        {
                            "t": "event",
                            "id": int(event["id"]),
                            "transaction_id": tx_id,
                            "action": event["action"],
                            "outcome": event["outcome"],
                            "target": event["target"],
                            "details": event["details"],
                        }
                    )
        for name, history in sorted(t.histories.items()):
            column = history.c[TRANSACTION_ID]

            def build(tolerant: bool, history: sa.Table = history, column: Any = column) -> Any:
                return (
                    _select(history, tolerant)
                    .where(column.between(low, high))
                    .order_by(column, history.c[VERSION_ID])
                )

            for record in read_rows(c, build) if wanted else []:
                tx_id = int(record[TRANSACTION_ID])
                if tx_id in wanted:
                    rows.setdefault(tx_id, []).append(self._version(name, record))
        for seal, found in group:
            done: set[int] = set()
            for entry in found:
                tx_id = int(entry[2])
                if tx_id in done:
                    continue
                done.add(tx_id)
                tx = txs.get(tx_id)
                if tx is not None:
                    self._document(file, _transaction_document(tx))
                for segment in segments.get(tx_id, []):
                    self._document(
                        file,
                        {
                            "t": "digest",
                            "transaction_id": tx_id,
                            "segment": int(segment["segment"]),
                            "digest": str(segment["digest"]),
                            "rows": segment["rows"],
                            "note": segment["note"],
                        },
                    )
                for document in rows.get(tx_id, []):
                    self._document(file, document)
            for entry in found:
                self._document(
                    file,
                    {
                        "t": "entry",
                        "seal_id": int(entry[0]),
                        "position": int(entry[1]),
                        "transaction_id": int(entry[2]),
                        "segment": int(entry[3]),
                        "digest": str(entry[4]),
                    },
                )
            self._document(
                file,
                {
                    "t": "seal",
                    "id": int(seal["id"]),
                    "previous_hash": seal["previous_hash"],
                    "hash": str(seal["hash"]),
                    "sealed_at": seal["sealed_at"].isoformat(),
                    "count": int(seal["count"]),
                    "last_transaction_id": int(seal["last_transaction_id"]),
                },
            )

    def _document(self, file: Any, document: Mapping[str, Any]) -> None:
        self._emit(file, document)
        self.checker.feed(document)

    def _version(self, name: str, row: Mapping[str, Any]) -> dict[str, Any]:
        description = self.tables[name]
        values = []
        for column, convert in zip(description.columns, self.converters[name], strict=True):
            value = row[column]
            values.append(None if value is None else convert(value))
        operation = row[OPERATION]
        return {
            "t": "version",
            "table": name,
            "id": int(row[VERSION_ID]),
            "transaction_id": int(row[TRANSACTION_ID]),
            "operation": getattr(operation, "value", operation),
            "values": values,
            "changes": row[CHANGES],
            "personal": row.get(PERSONAL),
        }


def _transaction_document(row: Any) -> dict[str, Any]:
    issued_at: dt.datetime = row["issued_at"]
    return {
        "t": "transaction",
        "id": int(row["id"]),
        "issued_at": issued_at.astimezone(dt.UTC).isoformat(),
        "actor": row["actor"],
        "source_ip": row["source_ip"],
        "request_id": row["request_id"],
        "reason": row["reason"],
        "extra": row["extra"],
    }


# --- reading a file -------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of an archive file (``ArchiveError`` if it cannot be opened at all)."""
    if not path.is_file():
        raise ArchiveError(f"{path}: no such archive file")
    with gzip.open(path, "rb") as file:
        yield from file


def documents(path: str | os.PathLike[str]) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Each line of an archive with its document; a line that is not JSON raises
    ``ValueError``, a damaged file ``OSError``/``EOFError``."""
    for raw in _lines(Path(path)):
        yield raw, json.loads(raw)


def _header(document: Mapping[str, Any], source: str) -> None:
    if document.get("t") != "header" or document.get("format") != FORMAT:
        raise ArchiveError(f"{source} is not a versioning archive (its first line has no header)")
    if document.get("version") != VERSION:
        raise ArchiveError(
            f"{source} is an archive of format version {document.get('version')!r}; this "
            f"version of versioning reads version {VERSION}"
        )


def verify_archive(path: str | os.PathLike[str], digests: Sequence[Digest] = ()) -> Report:
    """Check an archive file with no database: every row hash, digest and seal, the chain of
    its seals, and its manifest (counts, first and last, seal hashes, data SHA-256).

    ``digests`` are :class:`~versioning.Digest` objects saved earlier: each one whose seal is
    in the file must match it. Returns a :class:`~versioning.Report`; a file that is not an
    archive raises :class:`~versioning.ArchiveError`.
    """
    return check_archive(path, digests)[0]


def check_archive(
    path: str | os.PathLike[str],
    digests: Sequence[Digest] = (),
    *,
    collect: bool = False,
    expected: dict[tuple[int, int], tuple[int, str]] | None = None,
    collect_from: int = 0,
) -> tuple[Report, Checker]:
    """:func:`verify_archive`, and the checker with what it found (with ``collect``: the ids
    of the archived transactions, those from ``collect_from`` up). ``expected`` seal entries
    are checked against the file's and taken out of it as they are found."""
    source = Path(path)
    report = Report()
    checker = Checker(report, source.name, collect)
    checker.collect_from = collect_from
    if expected is not None:
        checker.expected = expected
    sha = hashlib.sha256()
    pending: tuple[bytes, dict[str, Any]] | None = None
    first = True
    try:
        for raw, document in documents(source):
            if first:
                _header(document, source.name)
                checker.header(document)
                sha.update(raw)
                first = False
                continue
            if pending is not None:
                sha.update(pending[0])
                checker.feed(pending[1])
            pending = (raw, document)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        if first:
            raise ArchiveError(f"{source} is not a readable archive ({exc})") from None
        checker.problem(
            "altered",
            None,
            None,
            None,
            f"the file is damaged and cannot be read past a point ({type(exc).__name__}: {exc})",
        )
        pending = None
    if first:
        raise ArchiveError(f"{source} is empty: not a versioning archive")
    manifest = None
    if pending is not None:
        if pending[1].get("t") == "manifest":
            manifest = pending[1]
        else:
            sha.update(pending[0])
            checker.feed(pending[1])
    checker.finish(manifest, sha.hexdigest())
    seen = checker.totals.seals_seen
    for saved in digests:
        if not isinstance(saved, Digest):
            raise ArgumentError(
                f"versioning.verify_archive() takes digests=[Digest, ...], got {saved!r}"
            )
        known = seen.get(saved.seal_id)
        if known is not None and (known[1] != saved.hash or known[3] != saved.last_transaction_id):
            checker.problem(
                "digest",
                checker.seal_name,
                None,
                None,
                f"seal {saved.seal_id} differs from the saved digest: the archive was rewritten",
            )
    report.transactions_checked = checker.totals.transactions
    report.versions_checked = checker.totals.versions
    return report, checker


def read_manifest(path: str | os.PathLike[str]) -> ArchiveManifest:
    """The manifest of an archive (its last line), unchecked: see :func:`verify_archive`."""
    source = Path(path)
    last: dict[str, Any] | None = None
    for _, document in documents(source):
        last = document
    if last is None or last.get("t") != "manifest":
        raise ArchiveError(f"{source} has no manifest: it is not a complete archive")
    return ArchiveManifest.from_json(last, source.name)


def read_archive(path: str | os.PathLike[str]) -> Iterator[ArchivedVersion]:
    """The versions an archive holds, in the order written (seal by seal, transaction by
    transaction), decoded. Does not check the file: :func:`verify_archive` does. Event rows
    (failed and denied actions) are not versions: :func:`read_archive_events` yields them."""
    for item in _archived(path):
        if isinstance(item, ArchivedVersion):
            yield item


def read_archive_events(path: str | os.PathLike[str]) -> Iterator[Event]:
    """The events (:func:`versioning.record_event`) an archive holds, in the order written, as
    :class:`~versioning.Event` with their transaction. Does not check the file:
    :func:`verify_archive` does."""
    for item in _archived(path):
        if isinstance(item, Event):
            yield item


def _archived(path: str | os.PathLike[str]) -> Iterator[ArchivedVersion | Event]:
    source = Path(path)
    tables: dict[str, TableDescription] = {}
    transaction: Transaction | None = None
    documents_ = documents(source)
    for _, document in documents_:
        _header(document, source.name)
        for table in document.get("tables", []):
            description = TableDescription.from_json(table)
            tables[description.name] = description
        break
    for _, document in documents_:
        kind = document.get("t")
        if kind == "transaction":
            transaction = Transaction(
                id=int(document["id"]),
                issued_at=dt.datetime.fromisoformat(document["issued_at"]),
                actor=document.get("actor"),
                source_ip=document.get("source_ip"),
                request_id=document.get("request_id"),
                reason=document.get("reason"),
                extra=document.get("extra") or {},
            )
        elif kind == "digest" and transaction is not None and document.get("segment") == 1:
            note = document.get("note")
            if note is not None:
                reason = transaction.reason
                transaction = Transaction(
                    transaction.id,
                    transaction.issued_at,
                    transaction.actor,
                    transaction.source_ip,
                    transaction.request_id,
                    note if reason is None else f"{reason}; {note}",
                    transaction.extra,
                )
        elif kind == "version" and transaction is not None:
            yield _archived_version(tables[document["table"]], document, transaction)
        elif kind == "event" and transaction is not None:
            yield Event(
                id=int(document["id"]),
                transaction_id=transaction.id,
                action=str(document["action"]),
                outcome=str(document["outcome"]),
                target=document.get("target"),
                details=document.get("details"),
                transaction=transaction,
            )


def _archived_version(
    table: TableDescription, document: Mapping[str, Any], transaction: Transaction
) -> ArchivedVersion:
    kinds = dict(zip(table.columns, table.kinds, strict=True))
    state = {
        name: decode(kind, value)
        for name, kind, value in zip(table.columns, table.kinds, document["values"], strict=True)
    }
    operation = Operation(document["operation"])
    personal = document.get("personal") or {}
    erased = frozenset(
        key
        for key, entry in personal.items()
        if isinstance(entry, Mapping) and entry.get("erased") is True
    )
    changes: dict[str, tuple[Any, Any]]
    if operation is Operation.UPDATE:
        changes = {
            key: (None, None)
            if pair is None
            else (
                decode(kinds.get(key, "other"), pair[0]),
                decode(kinds.get(key, "other"), pair[1]),
            )
            for key, pair in (document.get("changes") or {}).items()
        }
    elif operation is Operation.INSERT:
        changes = {k: (None, v) for k, v in state.items() if v is not None}
    else:
        changes = {k: (v, None) for k, v in state.items() if v is not None}
    return ArchivedVersion(
        table=table.live,
        history_table=table.name,
        version_id=int(document["id"]),
        transaction_id=transaction.id,
        operation=operation,
        key=tuple(state.get(k) for k in table.key),
        state=state,
        changes=changes,
        erased=erased,
        transaction=transaction,
    )
