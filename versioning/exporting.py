"""Exporting history for auditors: CSV (one row per changed field) or JSON Lines (one version per
line), streamed, in a stable format documented in docs/auditing.md#export.

:func:`export` reads :func:`versioning.searching.entries` — the history rows, decoded without the
models — and writes each as it comes, so memory stays flat however much is exported. Masked
values are written as history holds them (the mask's output); erased values stay erased (marked,
never a value). A path ending in ``.gz`` is written gzip-compressed.

Values are written the same way in both formats (:func:`plain`): text as is, numbers as JSON
numbers (``Decimal`` as its exact text), times in ISO 8601, bytes in base64. A CSV cell that a
spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return) is written with a leading ``'``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import enum
import gzip
import json
import math
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from itertools import chain
from pathlib import Path
from typing import IO, Any, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from versioning.activity import activity
from versioning.catalog import Catalog, from_session, load
from versioning.errors import ArgumentError
from versioning.event_log import Event
from versioning.operation import Operation
from versioning.reading import Transaction
from versioning.searching import Entry

__all__ = ["CSV_COLUMNS", "ERASED_TEXT", "export", "plain"]

#: The CSV header, in this order.
CSV_COLUMNS = (
    "transaction_id",
    "issued_at",
    "actor",
    "source_ip",
    "request_id",
    "reason",
    "table",
    "record",
    "operation",
    "field",
    "old",
    "new",
)
#: What an erased value is written as in a CSV cell (JSON Lines: ``null``, and the field is
#: listed in ``erased``).
ERASED_TEXT = "[erased]"

_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def plain(value: Any) -> Any:
    """``value`` as a JSON value, the same way in every export (the stable format).

    ``None``, ``bool``, ``int``, ``str`` as they are; a finite ``float`` as a number (NaN and the
    infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``); ``Decimal`` as its
    exact text; ``datetime`` in ISO 8601 (an aware one in UTC, ``+00:00``), ``date`` and ``time``
    in ISO 8601; ``timedelta`` as its number of seconds (text, exact to the microsecond);
    ``UUID`` as its canonical text; ``bytes`` in base64; an ``Enum`` member as its name; lists,
    tuples and dicts item by item; anything else as ``str()``.
    """
    exact = _EXACT.get(type(value))
    if exact is not None:
        return exact(value)
    if isinstance(value, enum.Enum):
        return value.name
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return _datetime(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(decimal.Decimal(value // dt.timedelta(microseconds=1)).scaleb(-6))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return str(value)


def _datetime(value: dt.datetime) -> str:
    if value.tzinfo is not None and value.utcoffset() is not None:
        value = value.astimezone(dt.UTC)
    return value.isoformat()


#: :func:`plain` of the common types, by exact type (one lookup, no ``isinstance`` chain).
_EXACT: dict[type, Callable[[Any], Any]] = {
    decimal.Decimal: str,
    dt.datetime: _datetime,
    dt.date: dt.date.isoformat,
    uuid.UUID: str,
}


def _encoder(default: Callable[[Any], Any] | None = None) -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)``, made
    once: the C encoder built once for every document (``JSONEncoder.encode`` builds one per
    call). No circular check: the documents are made of decoded JSON and plain values, never
    cyclic."""
    options = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), check_circular=False, default=default
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C encoder
        return options.encode
    chunks = make(
        None, options.default, json.encoder.encode_basestring, None, ":", ",", False, False, True
    )
    join = "".join

    def encode(value: Any) -> str:
        if type(value) is str:
            return json.encoder.encode_basestring(value)
        return join(chunks(value, 0))

    return encode


#: One encoder for every document.
_dumps = _encoder()
#: Values written as they are (the common case: no call per value).
_AS_IS = frozenset({str, int, type(None)})
#: Values the encoder writes as :func:`plain` gives them, as they are (``bool`` too) or through
#: its ``default`` (``plain`` of a type JSON does not have: text). Not ``float`` (NaN), not
#: containers (their items are not looked at) and not subclasses (an ``Enum`` of ``str``).
_DIRECT = frozenset(
    {str, int, bool, type(None), decimal.Decimal, dt.datetime, dt.date, dt.time, uuid.UUID}
)
#: ``plain`` as the encoder's default: for the types of :data:`_DIRECT` JSON does not have.
_dumps_plain = _encoder(plain)
_NONE_ERASED: list[str] = []


def _text(value: Any) -> str:
    """A value's text in a CSV cell, before neutralising (``None``: empty)."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is decimal.Decimal:
        return str(value)
    if value is None:
        return ""
    encoded = plain(value)
    if encoded is None:
        return ""
    if isinstance(encoded, str):
        return encoded
    if isinstance(encoded, bool):
        return "true" if encoded else "false"
    return _dumps(encoded)


def _cell(value: Any) -> str:
    """A CSV cell: the plain value as text (``None`` empty), formulas neutralised."""
    text = value if type(value) is str else _text(value)
    if text and text[0] in _FORMULA_STARTS:
        return "'" + text
    return text


_FORMULA_STARTS = frozenset(_FORMULA)


def record_text(key: tuple[Any, ...]) -> str:
    """A record's key as one text: a single key as its value's text, a composite one as a JSON
    array of its values (see :func:`plain`)."""
    if len(key) == 1:
        if type(key[0]) is str:
            return key[0]
        if type(key[0]) is int:
            return str(key[0])
        value = plain(key[0])
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "true" if value else "false"
        return _dumps(value)
    return _dumps([plain(v) for v in key])


#: An operation's text (``Enum.value`` is a property: a lookup per row otherwise).
_OPERATION_TEXT = {member: member.value for member in Operation}


def _issued_at(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


class CsvWriter:
    """One row per changed field of each version (see :data:`CSV_COLUMNS`)."""

    def __init__(self, stream: IO[str]) -> None:
        self._csv = csv.writer(stream, lineterminator="\r\n")
        self._csv.writerow(CSV_COLUMNS)
        self._transaction: Transaction | None = None
        self._head: list[str] = []
        #: Table and column names as cells (there are few).
        self._names: dict[str, str] = {}

    def _name(self, name: str) -> str:
        cell = self._names[name] = _cell(name)
        return cell

    def _transaction_cells(self, tx: Transaction) -> list[str]:
        if tx is not self._transaction:
            self._transaction = tx
            self._head = [
                str(tx.id),
                _issued_at(tx.issued_at),
                _cell(tx.actor),
                _cell(tx.source_ip),
                _cell(tx.request_id),
                _cell(tx.reason),
            ]
        return self._head

    def version(self, entry: Entry) -> None:
        names = self._names
        table = entry.table
        head = [
            *self._transaction_cells(entry.transaction),
            names.get(table) or self._name(table),
            _cell(record_text(entry.key)),
            _OPERATION_TEXT[entry.operation],
        ]
        erased = entry.erased
        cell = _cell
        rows = [
            [*head, names.get(name) or self._name(name), cell(old), cell(new)]
            for name, (old, new) in entry.changes.items()
            if name not in erased
        ]
        if erased:
            operation = entry.operation
            for name in sorted(erased):
                if operation is Operation.INSERT:
                    rows.append([*head, _cell(name), "", ERASED_TEXT])
                elif operation is Operation.DELETE:
                    rows.append([*head, _cell(name), ERASED_TEXT, ""])
                elif name in entry.changes:
                    rows.append([*head, _cell(name), ERASED_TEXT, ERASED_TEXT])
        self._csv.writerows(rows)

    def event(self, event: Event) -> None:
        """One row: table ``versioning_event``, record the target, operation ``event``, field
        the action, new the outcome (details are in JSON Lines only)."""
        self._csv.writerow(
            [
                *self._transaction_cells(event.transaction),
                EVENT_TABLE_TEXT,
                _cell(event.target),
                "event",
                _cell(event.action),
                "",
                _cell(event.outcome),
            ]
        )


#: The ``table`` cell of an event's CSV row.
EVENT_TABLE_TEXT = "versioning_event"


class JsonLinesWriter:
    """One JSON object per line and version: ``{"kind": "version", ...}`` (see docs)."""

    def __init__(self, stream: IO[str]) -> None:
        self._write = stream.write
        self._transaction: Transaction | None = None
        #: The transaction's JSON text: the same for every line of a transaction.
        self._text = ""

    def _transaction_text(self, tx: Transaction) -> str:
        if tx is not self._transaction:
            self._transaction = tx
            document = {
                "id": tx.id,
                "issued_at": _issued_at(tx.issued_at),
                "actor": tx.actor,
                "source_ip": tx.source_ip,
                "request_id": tx.request_id,
                "reason": tx.reason,
                "extra": plain(tx.extra),
            }
            self._text = _dumps(document)
        return self._text

    def version(self, entry: Entry) -> None:
        # The text json.dumps gives of the document {"kind", "transaction", "table", "record",
        # "version_id", "operation", "state", "changes", "erased"}, the transaction's made once.
        record: Any = entry.key
        state: Any = entry.state
        changes: Any = entry.changes
        direct = _DIRECT.issuperset
        if (
            direct(map(type, record))
            and direct(map(type, state.values()))
            and direct(map(type, chain.from_iterable(changes.values())))
        ):
            # Every value is one the encoder writes as plain() does, itself or through plain()
            # as its default (a tuple is written as a list): no copy of the documents.
            dumps = _dumps_plain
        else:
            as_is = _AS_IS
            record = [v if type(v) in as_is else plain(v) for v in record]
            state = {k: v if type(v) in as_is else plain(v) for k, v in state.items()}
            changes = {
                k: [
                    old if type(old) in as_is else plain(old),
                    new if type(new) in as_is else plain(new),
                ]
                for k, (old, new) in changes.items()
            }
            dumps = _dumps
        erased = entry.erased
        rest = {
            "table": entry.table,
            "record": record,
            "version_id": entry.version_id,
            "operation": _OPERATION_TEXT[entry.operation],
            "state": state,
            "changes": changes,
            "erased": sorted(erased) if erased else _NONE_ERASED,
        }
        # One encoder call: its text without the opening brace follows the transaction's.
        head = self._transaction_text(entry.transaction)
        self._write(f'{{"kind":"version","transaction":{head},{dumps(rest)[1:]}\n')

    def event(self, event: Event) -> None:
        rest = {
            "event_id": event.id,
            "action": event.action,
            "outcome": event.outcome,
            "target": event.target,
            "details": plain(event.details),
        }
        head = self._transaction_text(event.transaction)
        self._write(f'{{"kind":"event","transaction":{head},{_dumps(rest)[1:]}\n')


_WRITERS: dict[str, type[CsvWriter | JsonLinesWriter]] = {
    "csv": CsvWriter,
    "jsonl": JsonLinesWriter,
}


@contextmanager
def _opened(output: str | Path | IO[str]) -> Iterator[IO[str]]:
    if isinstance(output, str | Path):
        path = Path(output)
        if path.suffix == ".gz":
            with gzip.open(path, "wt", encoding="utf-8", newline="") as stream:
                yield stream
        else:
            with path.open("w", encoding="utf-8", newline="") as stream:
                yield stream
        return
    if not hasattr(output, "write"):
        raise ArgumentError(
            f"versioning export: output must be a file path or a text stream, got {output!r}"
        )
    yield output


@contextmanager
def _reading(
    bind: Any, catalog: Catalog | None
) -> Iterator[tuple[Session | sa.Connection, Catalog]]:
    """What to read with, and the history tables to read: through the caller's session (the
    models in process) or connection, or a connection of the engine's own in one snapshot
    (REPEATABLE READ where there is one); from a connection, the database's registry."""
    with ExitStack() as stack:
        if isinstance(bind, Session):
            reader: Session | sa.Connection = bind
            if catalog is None:
                catalog = from_session(bind)
        elif isinstance(bind, sa.Connection | sa.Engine):
            if isinstance(bind, sa.Engine):
                reader = stack.enter_context(bind.connect())
                if bind.dialect.name != "sqlite":
                    reader.execution_options(isolation_level="REPEATABLE READ")
            else:
                reader = bind
            if catalog is None:
                catalog = load(reader)
        else:
            raise ArgumentError(
                f"versioning export takes a Session, an Engine or a Connection, got "
                f"{type(bind).__name__}"
            )
        if not isinstance(catalog, Catalog):
            raise ArgumentError(
                f"versioning export takes catalog= a versioning.catalog.Catalog, got {catalog!r}"
            )
        yield reader, catalog


def export(
    bind: Session | sa.Engine | sa.Connection,
    output: str | Path | IO[str],
    *,
    format: Literal["csv", "jsonl"] = "csv",
    catalog: Catalog | None = None,
    newest_first: bool = False,
    events: bool = True,
    **filters: Any,
) -> int:
    """Write the versions matching ``filters`` (those of :func:`versioning.searching.entries`:
    :func:`versioning.search`'s, with ``table=`` and ``key=``) to ``output`` as ``format``; the
    number of versions and events written. Oldest first unless ``newest_first``.

    Events (failed and denied actions, :func:`versioning.record_event`) are written among the
    versions, in transaction order, unless ``events=False`` or a filter only versions have
    (``table``, ``key``, ``operation``) is given; ``action=`` and ``outcome=`` (a str or a list)
    keep only the matching events (see :mod:`versioning.activity`).

    ``output`` is a path (``.gz``: compressed) or a text stream. ``bind`` is a ``Session`` (its
    transaction is read), a ``Connection``, or an ``Engine`` (a connection of its own, in one
    snapshot). ``catalog`` names the history tables: by default, through a session the models in
    this process (:func:`versioning.catalog.from_session`), through a connection or engine the
    database's registry (:func:`versioning.catalog.load`: no model needed).
    """
    writer_class = _WRITERS.get(format)
    if writer_class is None:
        raise ArgumentError(f"versioning export: format must be 'csv' or 'jsonl', got {format!r}")
    count = 0
    with _reading(bind, catalog) as (reader, chosen):
        found = activity(reader, chosen, newest_first=newest_first, events=events, **filters)
        with _opened(output) as stream:
            writer = writer_class(stream)
            for item in found:
                if isinstance(item, Event):
                    writer.event(item)
                else:
                    writer.version(item)
                count += 1
    return count
