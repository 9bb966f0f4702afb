"""Searching history across models: by who, when, from where, which request, what and which record.

:func:`search` gives a page of :class:`~versioning.Version` objects matching every filter given,
newest first (or oldest first), and the next page with ``after=`` the last version of the page:
keyset pagination, so that writes committed meanwhile never shift a page (nothing is skipped or
shown twice). :func:`iter_search` streams every match in the same order in bounded memory, and
:func:`transaction_changes` lists what one transaction wrote. :func:`entries` is the
model-independent form the exports read (:class:`Entry`: column names, no model classes).

The order is the key ``(transaction id, history table name, version id)``: the transactions in id
(commit) order and, within one, the digest's order (see :mod:`versioning.integrity`): each history
table, by name, with its rows in write order. Each history table is read by a query of its own,
bounded by the page size (or a chunk when streaming), and the tables' results are merged: their
rows have different columns, so one ``UNION ALL`` cannot carry them. A filter on the transaction
(actor, time, request id, source IP) is an indexed lookup in the transaction table, joined to each
history table by its transaction index: history is never scanned whole (see
docs/auditing.md#search-and-export).
"""

from __future__ import annotations

import datetime as dt
import heapq
import ipaddress
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import islice
from operator import itemgetter
from typing import Any, Literal, overload

import sqlalchemy as sa
from sqlalchemy.engine import Dialect, RowMapping
from sqlalchemy.orm import Session

from versioning import arguments, horizon
from versioning._compat import json_deserializer
from versioning.catalog import Catalog, TableEntry, from_metadata, session_catalogs
from versioning.declaration import ModelSpec, require_spec
from versioning.encoding import decode
from versioning.errors import ArgumentError, CatalogError
from versioning.event_log import Event, event_of, event_query, has_event_table
from versioning.operation import Operation
from versioning.personal import erased_keys
from versioning.reading import (
    _MISSING,
    Transaction,
    TransactionColumns,
    Version,
    _autoflush,
    _fetch,
    _filters,
    _row_version,
    _select,
)
from versioning.recording import write_pending
from versioning.schema import (
    CHANGES,
    OPERATION,
    PERSONAL,
    TRANSACTION_ID,
    VERSION_ID,
    event_table,
    issued_at_utc,
)

__all__ = ["Entry", "entries", "iter_search", "search", "transaction_changes"]

#: Rows read per history table and query by the streaming forms.
CHUNK = 2_000

#: The order of results: ``(transaction id, history table name, version id)``.
Key = tuple[int, str, int]


@dataclass(frozen=True, slots=True)
class Entry:
    """One history row, decoded, without the model: what the exports (and the CLI) read.

    ``table`` is the live table's name (``schema.name`` in another schema); ``key`` the record's
    primary key values in key order; ``state`` every versioned column after the change (before it,
    for a delete) and ``changes`` ``{column: (old, new)}``, both by column name, as
    :class:`~versioning.Version` has them by attribute. Masked columns hold the mask's output;
    ``erased`` names the columns whose values :func:`versioning.erase` removed.
    """

    table: str
    version_id: int
    transaction_id: int
    operation: Operation
    key: tuple[Any, ...]
    state: Mapping[str, Any]
    changes: Mapping[str, tuple[Any, Any]]
    erased: frozenset[str]
    transaction: Transaction
    #: The history table's name (``schema.name``): the second part of the order.
    history: str = field(default="", compare=False)


# --- the tables searched ----------------------------------------------------------------------


def reach(
    session: Session, metadata: sa.MetaData | None, function: str
) -> tuple[Any, Catalog] | None:
    """The catalog of the history tables ``session`` reaches (in-process, from the models), with
    a mapper bound to their database; ``None`` when none exists there yet."""
    found = session_catalogs(session, metadata, function)
    if not found:
        return None
    if len(found) > 1:
        names = ", ".join(catalog.transaction.fullname for _, catalog in found)
        raise ArgumentError(
            f"versioning.{function}() reaches several transaction tables ({names}): pass metadata="
        )
    return found[0]


def table_entry(catalog: Catalog, name: str, function: str) -> TableEntry:
    """The catalog's entry of a live or history table name; an ``ArgumentError`` naming the
    tables there are otherwise."""
    try:
        return catalog.entry(name)
    except CatalogError:
        known = ", ".join(sorted(entry.live for entry in catalog.tables)) or "none"
        raise ArgumentError(
            f"versioning.{function}(): no history is recorded for a table named {name!r}: the "
            f"versioned tables are {known}; pass one of them (the live table's name, schema.name "
            f"in another schema)"
        ) from None


def _root(entry: TableEntry) -> ModelSpec | None:
    """The root model of a model history table known in-process (what Versions are built of)."""
    if entry.kind != "model" or entry.model is None:
        return None
    return require_spec(entry.model).root


# --- the filters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The checked filters of a search (what every table's query shares)."""

    actor: str | None = None
    operation: Operation | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    transaction_id: int | None = None
    request_id: str | None = None
    source_ip: str | None = None
    newest_first: bool = True

    def transaction_where(self, transactions: sa.Table) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        for name in ("actor", "request_id", "source_ip"):
            value = getattr(self, name)
            if value is not None:
                out.append(transactions.c[name] == value)
        if self.since is not None:
            out.append(issued_at_utc(transactions) >= self.since)
        if self.until is not None:
            out.append(issued_at_utc(transactions) < self.until)
        return out

    def history_where(self, history: sa.Table) -> list[sa.ColumnElement[bool]]:
        out: list[sa.ColumnElement[bool]] = []
        if self.operation is not None:
            out.append(history.c[OPERATION] == self.operation)
        if self.transaction_id is not None:
            out.append(history.c[TRANSACTION_ID] == self.transaction_id)
        return out


def check_filters(
    function: str,
    *,
    actor: Any = None,
    operation: Any = None,
    since: Any = None,
    until: Any = None,
    transaction_id: Any = None,
    request_id: Any = None,
    source_ip: Any = None,
    newest_first: Any = True,
) -> Filters:
    """The filters, each checked; a value that cannot match is refused with what to pass."""
    where = f"versioning.{function}()"
    if actor is not None:
        if isinstance(actor, bool) or not isinstance(actor, str | int):
            raise ArgumentError(f"{where}: actor must be a str (or an int id), got {actor!r}")
        actor = str(actor)
    if operation is not None:
        try:
            operation = Operation(operation)
        except ValueError:
            raise ArgumentError(
                f"{where}: operation must be an Operation or one of 'insert', 'update', "
                f"'delete', got {operation!r}"
            ) from None
    for name, value in (("since", since), ("until", until)):
        if value is not None and (
            not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None
        ):
            raise ArgumentError(
                f"{where}: {name} must be a timezone-aware datetime, got {value!r}; e.g. "
                f"datetime(2026, 3, 3, tzinfo=timezone.utc)"
            )
    if transaction_id is not None and (
        isinstance(transaction_id, bool) or not isinstance(transaction_id, int)
    ):
        raise ArgumentError(
            f"{where}: transaction_id must be an int (a Transaction's id), got {transaction_id!r}"
        )
    if request_id is not None and not isinstance(request_id, str):
        raise ArgumentError(f"{where}: request_id must be a str, got {request_id!r}")
    if source_ip is not None:
        try:
            source_ip = str(ipaddress.ip_address(source_ip))
        except ValueError:
            raise ArgumentError(
                f"{where}: source_ip must be an IPv4 or IPv6 address (as recorded, e.g. "
                f"'203.0.113.7'), got {source_ip!r}"
            ) from None
    if not isinstance(newest_first, bool):
        raise ArgumentError(f"{where}: newest_first must be True or False, got {newest_first!r}")
    return Filters(
        actor, operation, since, until, transaction_id, request_id, source_ip, newest_first
    )


def check_limit(limit: Any, function: str) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ArgumentError(
            f"versioning.{function}(): limit must be a positive int (or None for every match), "
            f"got {limit!r}"
        )
    return limit


# --- reading: one keyset query per table, merged ----------------------------------------------


@dataclass(frozen=True, eq=False)
class Source:
    """One history table to read, with the filters of its own (a model, a record)."""

    info: TableEntry
    where: tuple[sa.ColumnElement[bool], ...] = ()
    #: The root model, for Versions (``None``: read as Entries only).
    spec: ModelSpec | None = None


def _after_where(
    history: sa.Table, name: str, after: Key, newest_first: bool
) -> sa.ColumnElement[bool]:
    """The rows of ``history`` (named ``name``) that come after ``after`` in the order."""
    tx, other, version = after
    t, v = history.c[TRANSACTION_ID], history.c[VERSION_ID]
    # Within one transaction, the tables follow each other by name: in that order, the rows of a
    # table before ``other`` come before every row of ``other``.
    if newest_first:
        if name < other:
            return t <= tx
        if name > other:
            return t < tx
        return sa.and_(t <= tx, sa.or_(t < tx, v < version))
    if name > other:
        return t >= tx
    if name < other:
        return t > tx
    return sa.and_(t >= tx, sa.or_(t > tx, v > version))


def stream(
    connection: sa.Connection,
    catalog: Catalog,
    sources: Sequence[Source],
    filters: Filters,
    after: Key | None,
    chunk: int,
    changes_as_text: bool = False,
) -> Iterator[tuple[Source, RowMapping, Transaction]]:
    """Every matching row of ``sources``, in the order, read ``chunk`` rows per table at a time;
    with ``changes_as_text``, each row's ``changes`` document as the JSON text stored (for
    :class:`EntryReader`, which decodes it)."""
    transactions = catalog.transaction
    joined = TransactionColumns(transactions)
    tx_where = filters.transaction_where(transactions)
    newest_first = filters.newest_first

    def chunks(source: Source) -> Iterator[tuple[list[RowMapping], dict[int, Transaction]]]:
        """The matching rows of ``source``, a chunk at a time, with their transactions."""
        history = source.info.history
        name = history.fullname
        where = [*source.where, *filters.history_where(history), *tx_where]
        t, v = history.c[TRANSACTION_ID], history.c[VERSION_ID]
        order = (t.desc(), v.desc()) if newest_first else (t, v)
        position = after
        while True:
            keyset = (
                () if position is None else (_after_where(history, name, position, newest_first),)
            )

            def build(tolerant: bool, keyset: tuple[Any, ...] = keyset) -> sa.Select[Any]:
                select = _select(history, tolerant)
                if changes_as_text:
                    select = _changes_as_text(select, history, connection.dialect.name)
                if tx_where:  # joined for the filter only: its rows are read once per chunk
                    select = select.join(transactions, t == transactions.c.id)
                return select.where(*where, *keyset).order_by(*order).limit(chunk)

            found = _fetch(connection, build)
            made = joined.by_id(connection, (row[TRANSACTION_ID] for row in found))
            yield found, made
            if len(found) < chunk:
                return
            last = found[-1]
            position = (last[TRANSACTION_ID], name, last[VERSION_ID])
            found = made = last = None  # type: ignore[assignment]  # one chunk in memory at a time

    def rows(source: Source) -> Iterator[tuple[Key, Source, RowMapping, Transaction]]:
        name = source.info.history.fullname
        for found, made in chunks(source):
            for row in found:
                tx_id = row[TRANSACTION_ID]
                yield (tx_id, name, row[VERSION_ID]), source, row, made[tx_id]

    if len(sources) == 1:  # no merge: no order key to make per row
        (source,) = sources
        for found, made in chunks(source):
            for row in found:
                yield source, row, made[row[TRANSACTION_ID]]
            found = made = None  # type: ignore[assignment]
        return
    merged = heapq.merge(
        *(rows(source) for source in sources), key=lambda item: item[0], reverse=newest_first
    )
    for _, source, row, transaction in merged:
        yield source, row, transaction


def _changes_as_text(select: sa.Select[Any], history: sa.Table, dialect: str) -> sa.Select[Any]:
    """``select`` with the ``changes`` column read as its JSON text, which :class:`EntryReader`
    decodes with one shared decoder: the driver does not (psycopg decodes a ``json`` column
    itself, so PostgreSQL casts it to text; a ``json`` column keeps the text as written)."""
    column = history.c[CHANGES]
    text = sa.cast(column, sa.Text) if dialect == "postgresql" else sa.type_coerce(column, sa.Text)
    return select.with_only_columns(
        *(
            text.label(CHANGES) if getattr(c, "name", None) == CHANGES else c
            for c in select.selected_columns
        )
    )


# --- Versions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """A search checked and ready to run: where to read, what to read."""

    session: Session
    mapper: Any
    catalog: Catalog | None
    sources: tuple[Source, ...]
    filters: Filters
    after: Key | None
    limit: int | None
    function: str = "search"


def _plan(
    function: str,
    session: Any,
    *,
    model: Any = None,
    pk: Any = _MISSING,
    table: Any = None,
    after: Any = None,
    limit: Any = None,
    metadata: Any = None,
    **given: Any,
) -> _Plan:
    session = arguments.session(session, function)
    filters = check_filters(function, **given)
    limit = check_limit(limit, function)
    spec = arguments.model(model, function) if model is not None else None
    has_pk = pk is not _MISSING
    if has_pk and spec is None:
        raise ArgumentError(
            f"versioning.{function}(): pk= needs model= (the record's class), e.g. "
            f"{function}(session, model=Order, pk=7)"
        )
    key = arguments.primary_key(spec, pk) if spec is not None and has_pk else None
    if table is not None and not isinstance(table, str):
        raise ArgumentError(
            f"versioning.{function}(): table must be a table's name (a str), got {table!r}; "
            f"for a model class, pass model="
        )
    after_key = _version_key(after, function)
    _autoflush(session)
    if spec is not None and table is None:
        # One model: its own history table, as history() reads it (no other table is looked at).
        root = spec.root
        own = from_metadata(root.history.metadata)
        reached: tuple[Any, Catalog] | None = (
            root.mapper,
            Catalog(own.transaction, (own.entry(root.history.fullname),)),
        )
    else:
        reached = reach(session, metadata, function)
    if reached is None:
        return _Plan(session, None, None, (), filters, after_key, limit, function)
    mapper, catalog = reached
    sources = [Source(entry, spec=_root(entry)) for entry in catalog.tables]
    sources = [source for source in sources if source.spec is not None]
    if table is not None:
        chosen = table_entry(catalog, table, function)
        root_spec = _root(chosen)
        if root_spec is None:
            raise ArgumentError(
                f"versioning.{function}(): {table!r} is a link table (or its model is not "
                f"imported): there is no model to build Versions of; read it with "
                f"versioning.searching.entries() or export it"
            )
        sources = [Source(chosen, spec=root_spec)]
    if spec is not None:
        root = spec.root
        found = [source for source in sources if source.spec is root]
        if not found and table is not None:
            raise ArgumentError(
                f"versioning.{function}(): model {spec.model.__name__} is not recorded in the "
                f"history of table {table!r}; pass one of them, or both of the same table"
            )
        if not found:
            return _Plan(session, mapper, catalog, (), filters, after_key, limit, function)
        where: list[sa.ColumnElement[bool]] = []
        if key is not None:
            where = _filters(spec, key)
        elif spec.discriminator is not None and spec is not root:
            identities = [m.polymorphic_identity for m in spec.mapper.self_and_descendants]
            where = [spec.history.c[spec.history_names[spec.discriminator]].in_(identities)]
        sources = [Source(found[0].info, tuple(where), root)]
    return _Plan(session, mapper, catalog, tuple(sources), filters, after_key, limit, function)


def _version_key(after: Any, function: str) -> Key | None:
    if after is None:
        return None
    if not isinstance(after, Version):
        raise ArgumentError(
            f"versioning.{function}(): after must be the last Version of the previous page, got "
            f"{arguments.shown(after)}"
        )
    return (after.transaction_id, require_spec(after.model).history.fullname, after.version_id)


def _versions(plan: _Plan, chunk: int) -> Iterator[Version]:
    if plan.catalog is None or not plan.sources:
        return
    session = plan.session
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": plan.mapper})
    f = plan.filters
    what = f"versioning.{plan.function}()"
    horizon.refuse_range(connection, plan.catalog.transaction, f.since, f.transaction_id, what)
    dialect: Dialect = connection.dialect
    found = stream(connection, plan.catalog, plan.sources, plan.filters, plan.after, chunk)
    if plan.limit is not None:
        found = islice(found, plan.limit)
    for source, row, transaction in found:
        assert source.spec is not None
        yield _row_version(source.spec, row, dialect, transaction)


@overload
def search(
    session: Session,
    *,
    model: type[Any] | None = ...,
    pk: Any = ...,
    table: str | None = ...,
    actor: str | None = ...,
    operation: Operation | str | None = ...,
    since: dt.datetime | None = ...,
    until: dt.datetime | None = ...,
    transaction_id: int | None = ...,
    request_id: str | None = ...,
    source_ip: str | None = ...,
    newest_first: bool = ...,
    limit: int | None = ...,
    after: Version | None = ...,
    metadata: sa.MetaData | None = ...,
    include_events: Literal[False] = ...,
) -> list[Version]: ...


@overload
def search(
    session: Session,
    *,
    model: type[Any] | None = ...,
    pk: Any = ...,
    table: str | None = ...,
    actor: str | None = ...,
    operation: Operation | str | None = ...,
    since: dt.datetime | None = ...,
    until: dt.datetime | None = ...,
    transaction_id: int | None = ...,
    request_id: str | None = ...,
    source_ip: str | None = ...,
    newest_first: bool = ...,
    limit: int | None = ...,
    after: Version | Event | None = ...,
    metadata: sa.MetaData | None = ...,
    include_events: Literal[True],
    action: str | Iterable[str] | None = ...,
    outcome: str | Iterable[str] | None = ...,
) -> list[Version | Event]: ...


def search(
    session: Session,
    *,
    model: type[Any] | None = None,
    pk: Any = _MISSING,
    table: str | None = None,
    actor: str | None = None,
    operation: Operation | str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    transaction_id: int | None = None,
    request_id: str | None = None,
    source_ip: str | None = None,
    newest_first: bool = True,
    limit: int | None = 100,
    after: Version | Event | None = None,
    metadata: sa.MetaData | None = None,
    include_events: bool = False,
    action: str | Iterable[str] | None = None,
    outcome: str | Iterable[str] | None = None,
) -> list[Version] | list[Version | Event]:
    """The versions matching every filter given, across models: a page of at most ``limit``.

    Newest first (``newest_first=False``: oldest first), by transaction id, then history table
    name, then version id. The next page: ``after=`` the last version of this one. ``since`` is
    inclusive, ``until`` exclusive (timezone-aware datetimes). Each version's ``transaction`` is
    filled in.

    With ``include_events=True`` the page holds the recorded events too
    (:class:`~versioning.Event`: failed and denied actions), among the versions in transaction
    order, unless a filter only versions have (``model``, ``pk``, ``table``, ``operation``) is
    given; ``action=`` and ``outcome=`` (a str or a list) keep only the matching events. The
    next page: ``after=`` the last item, a Version or an Event.
    """
    if not isinstance(include_events, bool):
        raise ArgumentError(
            f"versioning.search(): include_events must be True or False, got {include_events!r}"
        )
    if not include_events and (action is not None or outcome is not None):
        raise ArgumentError(
            "versioning.search(): action= and outcome= filter events: pass include_events=True "
            "(search returns versions only otherwise), or call versioning.events()"
        )
    event_after = after if isinstance(after, Event) else None
    if event_after is not None and not include_events:
        raise ArgumentError(
            "versioning.search(): after= is an Event: pass include_events=True (the page it "
            "comes from held events)"
        )
    versions_wanted = action is None and outcome is None
    plan = _plan(
        "search",
        session,
        model=model,
        pk=pk,
        table=table,
        after=None if event_after is not None else after,
        limit=limit,
        metadata=metadata,
        actor=actor,
        operation=operation,
        since=since,
        until=until,
        transaction_id=transaction_id,
        request_id=request_id,
        source_ip=source_ip,
        newest_first=newest_first,
    )
    if event_after is not None:
        # No version shares an event's transaction: the versions after it are those of the
        # transactions after its own.
        plan = replace(plan, after=(event_after.transaction_id, "", 0))
    if not include_events:
        return list(_versions(plan, plan.limit or CHUNK))
    events_wanted = model is None and pk is _MISSING and table is None and operation is None
    streams: list[Iterator[Version | Event]] = []
    if versions_wanted:
        streams.append(_versions(plan, plan.limit or CHUNK))
    if events_wanted and plan.catalog is not None:
        streams.append(
            _events(
                plan,
                after,
                action=action,
                outcome=outcome,
                actor=plan.filters.actor,
                since=since,
                until=until,
                transaction_id=transaction_id,
                request_id=request_id,
                source_ip=plan.filters.source_ip,
            )
        )
    merged = heapq.merge(*streams, key=lambda item: item.transaction_id, reverse=newest_first)
    if plan.limit is not None:
        return list(islice(merged, plan.limit))
    return list(merged)


def _events(plan: _Plan, after: Version | Event | None, **filters: Any) -> Iterator[Event]:
    """The events of a search with ``include_events``, one page (``plan.limit``) at most."""
    assert plan.catalog is not None
    transactions = plan.catalog.transaction
    newest_first = plan.filters.newest_first
    query = event_query(
        transactions,
        newest_first=newest_first,
        limit=plan.limit,
        after=after if isinstance(after, Event) else None,
        function="search",
        **filters,
    )
    if isinstance(after, Version):  # no event shares a version's transaction
        tx = event_table(transactions).c.transaction_id
        last = after.transaction_id
        query = query.where(tx < last if newest_first else tx > last)
    connection = plan.session.connection(bind_arguments={"mapper": plan.mapper})
    if not has_event_table(connection, transactions):
        return
    horizon.refuse_range(
        connection,
        transactions,
        plan.filters.since,
        plan.filters.transaction_id,
        f"versioning.{plan.function}()",
    )
    for row in connection.execute(query).mappings():
        yield event_of(row)


def iter_search(session: Session, **filters: Any) -> Iterator[Version]:
    """Every version :func:`search` would find with the same filters (``limit`` counts them all,
    ``None`` by default), streamed: read :data:`CHUNK` rows per history table at a time.

    The arguments are checked at the call; reading starts at the first ``next()``.
    """
    filters.setdefault("limit", None)
    plan = _plan("iter_search", session, **filters)
    return _versions(plan, CHUNK)


def transaction_changes(
    session: Session, transaction_id: int, *, metadata: sa.MetaData | None = None
) -> list[Version]:
    """Every version transaction ``transaction_id`` wrote, across models, in the digest's order:
    by history table name, each table's versions in write order. ``[]`` for an unknown id."""
    plan = _plan(
        "transaction_changes",
        session,
        transaction_id=transaction_id,
        newest_first=False,
        limit=None,
        metadata=metadata,
    )
    return list(_versions(plan, CHUNK))


# --- Entries: without the models --------------------------------------------------------------


class EntryReader:
    """Makes the :class:`Entry` of each history row of one table (what it can, worked out once)."""

    def __init__(self, info: TableEntry, dialect: Dialect) -> None:
        self.info = info
        self.dialect = dialect
        self.live = info.live
        self.history = info.history.fullname
        self.columns = info.columns
        self.key = info.primary_key
        attribute = {column: key for key, column in info.attributes.items()}
        #: (column, attribute key in ``changes``, decoder of a stored JSON value)
        self.changed = [
            (name, attribute.get(name, name), self._decoder(info.history.c[name].type))
            for name in info.columns
        ]
        self.personal = [(name, attribute.get(name, name)) for name in sorted(info.personal)]
        #: A row's versioned columns' values then its meta columns', and the key's values of a
        #: state, each in one call.
        self.width = len(self.columns)
        self.values = _getter([*self.columns, OPERATION, CHANGES, VERSION_ID, TRANSACTION_ID])
        self.key_values = _getter(self.key)
        #: The ``changes`` text's decoder: the engine's (``create_engine(json_deserializer=)``),
        #: as the column's type would have used, else one shared ``json`` decoder.
        self.json: Callable[[str], Any] = json_deserializer(dialect) or _JSON_DECODE

    def _decoder(self, type_: sa.types.TypeEngine[Any]) -> Any:
        try:
            python_type = type_.python_type
        except NotImplementedError:
            python_type = None
        dialect = self.dialect
        plain = not isinstance(type_, sa.Enum | sa.types.TypeDecorator | sa.ARRAY)
        if plain and python_type in (str, int):
            kind = python_type

            def simple(data: Any) -> Any:
                return data if type(data) is kind else decode(type_, data, dialect)

            return simple
        if plain and python_type is Decimal:
            # What decode gives for a Numeric's stored text, without its type checks per value.

            def number(data: Any) -> Any:
                if type(data) is str:
                    try:
                        return Decimal(data)
                    except ArithmeticError:
                        return data
                return decode(type_, data, dialect)

            return number
        return lambda data: decode(type_, data, dialect)

    def __call__(self, row: RowMapping, transaction: Transaction) -> Entry:
        values = self.values(row)
        state = dict(zip(self.columns, values, strict=False))  # the meta columns follow
        stored_operation, stored, version_id, transaction_id = values[self.width :]
        operation = _OPERATIONS[stored_operation]
        changes: dict[str, tuple[Any, Any]]
        erased: frozenset[str] = frozenset()
        if self.personal:
            gone = erased_keys(row.get(PERSONAL))
            if gone:
                erased = frozenset(name for name, attribute in self.personal if attribute in gone)
        if operation is Operation.UPDATE:
            if type(stored) is str:
                stored = self.json(stored)
            elif isinstance(stored, bytes | bytearray | memoryview):
                stored = self.json(bytes(stored).decode("utf-8"))
            stored = stored or {}
            changes = {}
            for name, attribute, decoder in self.changed:
                pair = stored.get(attribute, _ABSENT)
                if pair is _ABSENT:
                    continue
                if pair is None:  # erased
                    changes[name] = (None, None)
                else:
                    changes[name] = (decoder(pair[0]), decoder(pair[1]))
        elif operation is Operation.INSERT:
            changes = {name: (None, value) for name, value in state.items() if value is not None}
        else:
            changes = {name: (value, None) for name, value in state.items() if value is not None}
        return Entry(
            self.live,
            version_id,
            transaction_id,
            operation,
            self.key_values(state),
            state,
            changes,
            erased,
            transaction,
            self.history,
        )


_ABSENT: Any = object()
_JSON_DECODE = json.JSONDecoder().decode


def _getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``lambda row: tuple(row[name] for name in names)``, in one C call."""
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    if not names:
        return lambda row: ()
    return itemgetter(*names)


#: An operation as read (the member, or its value where a type gives the text back).
_OPERATIONS: dict[Any, Operation] = {
    **{member: member for member in Operation},
    **{member.value: member for member in Operation},
}


def entry_key(after: object, function: str) -> Key:
    """The keyset of an :class:`Entry`, or a ``(transaction id, history table name, version
    id)`` tuple checked."""
    if isinstance(after, Entry):
        return (after.transaction_id, after.history, after.version_id)
    if isinstance(after, tuple) and len(after) == 3:
        tx, name, version = after
        numbers = all(isinstance(n, int) and not isinstance(n, bool) for n in (tx, version))
        if numbers and isinstance(name, str):
            return (tx, name, version)
    raise ArgumentError(
        f"versioning.{function}(): after must be the last Entry of the previous page (or its "
        f"keyset, a (transaction_id, history_table_name, version_id) tuple), got {after!r}"
    )


def entries(
    bind: Session | sa.Connection,
    catalog: Catalog,
    *,
    table: str | None = None,
    key: Any = None,
    after: Entry | Key | None = None,
    limit: int | None = None,
    chunk: int = CHUNK,
    **filters: Any,
) -> Iterator[Entry]:
    """Every history row matching the filters, as :class:`Entry`, in :func:`search`'s order,
    streamed ``chunk`` rows per table at a time (bounded memory: for exports).

    ``catalog`` names the history tables (:mod:`versioning.catalog`: ``from_session(session)``
    in-process, ``load(connection)`` from the database alone); ``table`` keeps one of them (live or
    history table name), ``key`` one record of it (its key values, a tuple for a composite key);
    the other filters are :func:`search`'s. ``after`` is the last Entry of the previous page, or
    its keyset: ``(transaction id, history table name, version id)``.
    """
    checked = check_filters("entries", **filters)
    limit = check_limit(limit, "entries")
    infos: Iterable[TableEntry] = catalog.tables
    where: tuple[sa.ColumnElement[bool], ...] = ()
    if table is not None:
        chosen = table_entry(catalog, table, "entries")
        infos = [chosen]
        if key is not None:
            values = key if isinstance(key, tuple) else (key,)
            if len(values) != len(chosen.primary_key):
                raise ArgumentError(
                    f"versioning.entries(): table {chosen.live!r} has the key "
                    f"({', '.join(chosen.primary_key)}): pass {len(chosen.primary_key)} "
                    f"value(s), got {key!r}"
                )
            where = tuple(
                chosen.history.c[name] == value
                for name, value in zip(chosen.primary_key, values, strict=True)
            )
    elif key is not None:
        raise ArgumentError("versioning.entries(): key= needs table= (the record's table)")
    after_key = None if after is None else entry_key(after, "entries")
    if isinstance(bind, Session):
        write_pending(bind)
        models = [entry.model for entry in catalog.tables if entry.model is not None]
        connection = bind.connection(bind_arguments={"mapper": models[0]} if models else None)
    else:
        connection = bind
    horizon.refuse_range(
        connection,
        catalog.transaction,
        checked.since,
        checked.transaction_id,
        "versioning.entries()",
    )
    dialect = connection.dialect
    sources = [Source(info, where) for info in infos]
    found = stream(connection, catalog, sources, checked, after_key, chunk, changes_as_text=True)
    if limit is not None:
        found = islice(found, limit)
    if len(sources) == 1:
        read = EntryReader(sources[0].info, dialect)
        return (read(row, tx) for _, row, tx in found)
    readers = {id(source): EntryReader(source.info, dialect) for source in sources}
    return (readers[id(source)](row, tx) for source, row, tx in found)
