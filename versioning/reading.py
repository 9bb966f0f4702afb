"""Reading history back: a record's versions, and the record as it was at any moment.

Every function here takes the session to read with and issues one query (on MariaDB, a moment
given as a ``datetime`` is first turned into a transaction id: two). Records are identified by
model and primary key (a scalar, or a tuple for composite keys), so deleted records are found too.
Like a query, each one first autoflushes the session (unless ``session.autoflush`` is off or in a
``no_autoflush`` block), and writes the history noted so far in the transaction
(:func:`versioning.recording.write_pending`), so that history includes the changes the session
holds.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from operator import itemgetter
from typing import Any, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, RowMapping
from sqlalchemy.orm import InstanceState, Mapper, Session

from versioning import _compat, arguments, horizon
from versioning.declaration import ModelSpec, require_spec, versioned_spec
from versioning.encoding import _unchanged, decoder
from versioning.errors import ArgumentError
from versioning.instances import Group
from versioning.operation import Operation
from versioning.personal import erased_keys
from versioning.recording import write_pending
from versioning.schema import (
    CHANGES,
    META_COLUMNS,
    OPERATION,
    PERSONAL,
    TRANSACTION_ID,
    VERSION_ID,
    UTCDateTime,
    integrity_tables,
    issued_at_utc,
)

__all__ = ["Transaction", "Version", "as_of", "history"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Transaction:
    """The transaction row a version belongs to: who, from where, which request, why, when.

    ``reason`` is the row's reason followed by what restores noted after the row was written
    (kept in the transaction's digest row: the transaction row is never updated).
    """

    id: int
    issued_at: dt.datetime
    actor: str | None
    source_ip: str | None
    request_id: str | None
    reason: str | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Version:
    """One recorded change of one record.

    ``state`` holds every versioned column after the change (before it, for a delete);
    ``changes`` maps each field that changed to ``(old, new)``. Masked columns hold the mask's
    output in both. ``erased`` names the personal columns whose values :func:`versioning.erase`
    removed from this version: ``None`` in ``state``, ``(None, None)`` in ``changes`` if they
    changed in it.
    """

    model: type[Any]
    operation: Operation
    state: Mapping[str, Any]
    changes: Mapping[str, tuple[Any, Any]]
    transaction_id: int
    transaction: Transaction | None
    version_id: int
    erased: frozenset[str] = frozenset()

    @property
    def primary_key(self) -> tuple[Any, ...]:
        """The record's primary key, as a tuple in the mapper's key order."""
        return tuple(self.state[key] for key in require_spec(self.model).pk_keys)

    def to_instance(self, session: Session | None = None) -> Any:
        """A new transient instance of the model holding this version's ``state``.

        Its relationships read as they were right after this version's transaction, through
        ``session`` (see :mod:`versioning.related`); without one, reading a relationship raises
        :class:`~versioning.errors.RelationshipHistoryError`.
        """
        from versioning.related import Moment

        without = "version.to_instance() was given no session: call version.to_instance(session)"
        return Moment(session, self.transaction_id, without).instance(self, Group())


def _setters(cls: type[Any], names: tuple[str, ...]) -> list[Callable[[Any, Any], None]]:
    """The slot setters of the frozen dataclass ``cls``, whose fields are ``names`` in order."""
    assert tuple(f.name for f in fields(cls)) == names and "__post_init__" not in cls.__dict__
    return [cls.__dict__[name].__set__ for name in names]


def _version_maker() -> Callable[..., Version]:
    """``Version(*fields)``, setting its slots directly: a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__``, which costs three times as much (a microsecond
    per object: a third of what reading a version costs). The object is the same."""
    s0, s1, s2, s3, s4, s5, s6, s7 = _setters(
        Version,
        (
            "model",
            "operation",
            "state",
            "changes",
            "transaction_id",
            "transaction",
            "version_id",
            "erased",
        ),
    )
    new = object.__new__

    def make(
        model: type[Any],
        operation: Operation,
        state: Mapping[str, Any],
        changes: Mapping[str, tuple[Any, Any]],
        transaction_id: int,
        transaction: Transaction | None,
        version_id: int,
        erased: frozenset[str],
    ) -> Version:
        made: Version = new(Version)
        s0(made, model)
        s1(made, operation)
        s2(made, state)
        s3(made, changes)
        s4(made, transaction_id)
        s5(made, transaction)
        s6(made, version_id)
        s7(made, erased)
        return made

    return make


def _transaction_maker() -> Callable[..., Transaction]:
    """``Transaction(*fields)``, setting its slots directly (see :func:`_version_maker`)."""
    s0, s1, s2, s3, s4, s5, s6 = _setters(
        Transaction, ("id", "issued_at", "actor", "source_ip", "request_id", "reason", "extra")
    )
    new = object.__new__

    def make(
        id: int,
        issued_at: dt.datetime,
        actor: str | None,
        source_ip: str | None,
        request_id: str | None,
        reason: str | None,
        extra: Mapping[str, Any],
    ) -> Transaction:
        made: Transaction = new(Transaction)
        s0(made, id)
        s1(made, issued_at)
        s2(made, actor)
        s3(made, source_ip)
        s4(made, request_id)
        s5(made, reason)
        s6(made, extra)
        return made

    return make


_new_version = _version_maker()
_new_transaction = _transaction_maker()


def _instance(model: type[T], state: Mapping[str, Any]) -> T:
    mapper: Mapper[T] = sa.inspect(model)
    if not mapper.configured:
        # The first ORM use of a process may be reading history: instrumentation needs it.
        sa.orm.configure_mappers()
    instance: T = mapper.class_manager.new_instance()
    for key, value in state.items():
        setattr(instance, key, value)
    return instance


def _key(spec: ModelSpec, pk: Any) -> tuple[Any, ...]:
    """``pk`` checked against the key columns' types (see :mod:`versioning.arguments`)."""
    return arguments.primary_key(spec, pk)


def _filters(spec: ModelSpec, key: tuple[Any, ...]) -> list[sa.ColumnElement[bool]]:
    """The conditions that a history row is of the record ``key`` (values, or parameters)."""
    history = spec.history
    out = [history.c[spec.history_names[k]] == v for k, v in zip(spec.pk_keys, key, strict=True)]
    root = spec.root
    if spec.discriminator is not None and spec is not root:
        identities = [m.polymorphic_identity for m in spec.mapper.self_and_descendants]
        out.append(history.c[spec.history_names[spec.discriminator]].in_(identities))
    return out


class _AsStored(sa.types.TypeDecorator[Any]):
    """A snapshot column's own type, except that a value it no longer accepts is returned raw.

    History outlives the model: an ``Enum`` member removed since, or a column whose type
    changed, would otherwise make every version of the record unreadable (``LookupError``).
    Such a value comes back as the driver gives it (for an ``Enum``, the stored ``str``).
    """

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, inner: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.inner = inner

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        return self.inner

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        process = self.impl_instance.result_processor(dialect, coltype)
        if process is None:
            return None

        def tolerant(value: Any) -> Any:
            try:
                return process(value)
            except (LookupError, ValueError, TypeError, ArithmeticError):
                return value

        return tolerant


#: What a result processor raises on a value its type does not accept.
_REFUSED = (LookupError, ValueError, TypeError, ArithmeticError)


def read_rows(
    connection: Connection, build: Callable[[bool], sa.Select[Any]]
) -> list[dict[str, Any]]:
    """The rows of ``build(tolerant)`` as dicts: typed, or, if some value no longer fits its
    column's type, read again with those values as stored (see ``versioning.reading``)."""
    for tolerant in (False, True):
        result = connection.execute(build(tolerant))
        keys = list(result.keys())
        try:
            return [dict(zip(keys, row, strict=True)) for row in result]
        except _REFUSED:
            if tolerant:
                raise
            result.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _select(history: sa.Table, tolerant: bool, *extra: sa.ColumnElement[Any]) -> sa.Select[Any]:
    """``SELECT`` of the history table (and ``extra``); ``tolerant`` reads snapshot columns with
    :class:`_AsStored`."""
    if not tolerant:
        return sa.select(history, *extra)
    columns = [
        column
        if column.name in META_COLUMNS
        else sa.type_coerce(column, _AsStored(column.type)).label(column.name)
        for column in history.c
    ]
    return sa.select(*columns, *extra)


def _fetch(
    connection: sa.Connection,
    build: Callable[[bool], sa.Select[Any]],
    first: bool = False,
    mapped: bool = True,
    parameters: Mapping[str, Any] | None = None,
) -> list[Any]:
    """The rows of ``build(tolerant)`` with ``parameters`` (as mappings, or as plain rows if not
    ``mapped``): typed, or, if some value no longer fits its column's type, read again with those
    values as stored (old history after a model changed)."""
    for tolerant in (False, True):
        executed = connection.execute(build(tolerant), parameters)
        result: Any = executed.mappings() if mapped else executed
        try:
            if first:
                row = result.first()
                return [] if row is None else [row]
            return list(result.all())  # fetchall: one driver call, not one per row
        except _REFUSED:
            if tolerant:
                raise
            result.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _decoders(spec: ModelSpec, dialect: Dialect) -> dict[str, Callable[[Any], Any]]:
    """Per versioned attribute of ``spec``, the decoder of its values in ``changes`` (see
    :func:`versioning.encoding.decoder`), worked out once per model and dialect."""
    cache_key = (_decoders, dialect.name, dialect.driver)
    found: dict[str, Callable[[Any], Any]] | None = spec.read_cache.get(cache_key)
    if found is None:
        found = spec.read_cache[cache_key] = {
            key: decoder(spec.type_of(key), dialect) for key in spec.attrs
        }
    return found


_NOTHING: frozenset[str] = frozenset()

#: Operations by their stored value (``Operation(value)`` costs a call per row).
_OPERATIONS = {operation.value: operation for operation in Operation}


def _changes(
    operation: Operation,
    stored: Any,
    state: dict[str, Any],
    decoders: dict[str, Callable[[Any], Any]],
) -> dict[str, tuple[Any, Any]]:
    """A version's ``changes``: an update's stored document decoded by the columns' types (its
    keys that are not versioned attributes of the class left out), or the state against nothing."""
    if operation is Operation.UPDATE:
        changes: dict[str, tuple[Any, Any]] = {}
        if stored:
            for key, pair in stored.items():
                decode = decoders.get(key)
                if decode is not None:
                    changes[key] = (
                        (None, None) if pair is None else (decode(pair[0]), decode(pair[1]))
                    )
        return changes
    if operation is Operation.INSERT:
        return {key: (None, value) for key, value in state.items() if value is not None}
    return {key: (value, None) for key, value in state.items() if value is not None}


def _version_spec(spec: ModelSpec, identity: Any) -> ModelSpec:
    """The spec of the class a row of a polymorphic hierarchy's history is of."""
    mapper = spec.mapper.polymorphic_map.get(identity)
    found = versioned_spec(mapper) if mapper is not None else None
    return spec if found is None else found


def _row_version(
    spec: ModelSpec, row: Mapping[Any, Any], dialect: Dialect, transaction: Transaction | None
) -> Version:
    vspec = spec
    if spec.discriminator is not None:
        vspec = _version_spec(spec, row[spec.history_names[spec.discriminator]])
    names = vspec.history_names
    state = {key: row[names[key]] for key in vspec.attrs}
    stored = row[OPERATION]
    operation = _OPERATIONS.get(stored) or Operation(stored)
    return Version(
        model=vspec.model,
        operation=operation,
        state=state,
        changes=_changes(operation, row[CHANGES], state, _decoders(vspec, dialect)),
        transaction_id=row[TRANSACTION_ID],
        transaction=transaction,
        version_id=row[VERSION_ID],
        erased=erased_keys(row.get(PERSONAL)) & vspec.attr_set if vspec.personal else frozenset(),
    )


@dataclass(frozen=True, slots=True)
class _ClassPlan:
    """How the rows of one statement become :class:`Version` objects of one class."""

    spec: ModelSpec
    keys: tuple[str, ...]
    #: The row's values of :attr:`keys`, as a tuple.
    values: Callable[[Sequence[Any]], tuple[Any, ...]]
    decoders: dict[str, Callable[[Any], Any]]
    #: Position of the personal column (for ``erased``), or ``None``.
    personal: int | None
    #: The keys whose values in ``changes`` decode to themselves (str, int...): no call.
    as_stored: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        same = frozenset(k for k, decode in self.decoders.items() if decode is _unchanged)
        object.__setattr__(self, "as_stored", same)


class _RowPlan:
    """How the rows of one statement (its columns' names in order) become versions: positions
    looked up once, per class of a hierarchy on first use; a row is then read by position."""

    def __init__(self, spec: ModelSpec, names: Sequence[str], dialect: Dialect) -> None:
        self.spec = spec
        self.dialect = dialect
        self.position = {name: i for i, name in enumerate(names)}
        position = self.position
        self.operation = position[OPERATION]
        self.changes = position[CHANGES]
        self.transaction_id = position[TRANSACTION_ID]
        self.version_id = position[VERSION_ID]
        self.discriminator = (
            None if spec.discriminator is None else position[spec.history_names[spec.discriminator]]
        )
        self.classes: dict[Any, _ClassPlan] = {}
        #: How to parse the ``changes`` column if it is read as text (see _JSON_AS_TEXT).
        self.changes_text: Callable[[str], Any] | None = None
        #: How to parse ``issued_at`` if it is read as text (see _sqlite_issued_at).
        self.issued_at_text: Callable[[Any], Any] | None = None
        self.plain = self._plan(spec) if spec.discriminator is None else None

    def _plan(self, vspec: ModelSpec) -> _ClassPlan:
        keys = vspec.attrs
        positions = [self.position[vspec.history_names[key]] for key in keys]
        values: Callable[[Sequence[Any]], tuple[Any, ...]]
        if len(positions) == 1:
            only = positions[0]
            values = lambda row: (row[only],)  # noqa: E731 - itemgetter of one is no tuple
        else:
            values = itemgetter(*positions)
        personal = self.position.get(PERSONAL) if vspec.personal else None
        return _ClassPlan(vspec, keys, values, _decoders(vspec, self.dialect), personal)

    def for_row(self, row: Sequence[Any]) -> _ClassPlan:
        if self.plain is not None:
            return self.plain
        assert self.discriminator is not None
        identity = row[self.discriminator]
        plan = self.classes.get(identity)
        if plan is None:
            plan = self.classes[identity] = self._plan(_version_spec(self.spec, identity))
        return plan

    def _parsed_documents(self, rows: Sequence[Any]) -> Iterator[Any] | None:
        """The ``changes`` documents of the update rows read as text, parsed, in row order:
        joined into one JSON array and parsed in one call (a call per document costs about three
        times as much); one by one if that fails (a deserializer of its own that does not take
        an array, say). ``None`` if the documents are not read as text."""
        parse = self.changes_text
        if parse is None:
            return None
        at, operation_at = self.changes, self.operation
        operations, update = _OPERATIONS, Operation.UPDATE
        texts = [
            row[at]
            for row in rows
            if row[at] is not None
            and (operations.get(row[operation_at]) or Operation(row[operation_at])) is update
        ]
        try:
            documents = parse("[" + ",".join(texts) + "]")
            if not isinstance(documents, list) or len(documents) != len(texts):
                raise ValueError("not one document per text")
        except (ValueError, TypeError):
            documents = [parse(text) for text in texts]
        return iter(documents)

    def versions(self, rows: Sequence[Sequence[Any]], joined: TransactionColumns) -> list[Version]:
        """The versions of ``rows``, each with its transaction (its columns those of ``joined``;
        the versions of one transaction share one :class:`Transaction`).

        One loop with everything it looks up per row bound before it: per version this is
        what is left over a bare ``SELECT`` returning dicts.
        """
        position = self.position
        meta = itemgetter(self.operation, self.changes, self.transaction_id, self.version_id)
        tx_values = itemgetter(*[position[label.name] for label in joined.labels])
        note_at = position["versioning_tx_note"]
        transactions: dict[Any, Transaction] = {}
        operations, update, insert = _OPERATIONS, Operation.UPDATE, Operation.INSERT
        new_version, new_transaction, nothing = _new_version, _new_transaction, _NOTHING
        plain, parse_time = self.plain, self.issued_at_text
        parsed = self._parsed_documents(rows)
        out: list[Version] = []
        append = out.append
        for row in rows:
            plan = plain or self.for_row(row)
            stored, document, tx_id, version_id = meta(row)
            state = dict(zip(plan.keys, plan.values(row), strict=False))  # as many as keys
            operation = operations.get(stored) or Operation(stored)
            changes: dict[str, tuple[Any, Any]]
            if operation is update:
                changes = {}
                if parsed is not None and document is not None:
                    document = next(parsed)
                if document:
                    decoders, as_stored = plan.decoders, plan.as_stored
                    for key, pair in document.items():
                        if pair is None:  # erased
                            if key in decoders:
                                changes[key] = (None, None)
                        elif key in as_stored:
                            changes[key] = (pair[0], pair[1])
                        else:
                            decode = decoders.get(key)
                            if decode is not None:
                                changes[key] = (decode(pair[0]), decode(pair[1]))
            elif operation is insert:
                changes = {key: (None, value) for key, value in state.items() if value is not None}
            else:
                changes = {key: (value, None) for key, value in state.items() if value is not None}
            transaction = transactions.get(tx_id)
            if transaction is None:
                _, issued_at, actor, source_ip, request_id, reason, extra = tx_values(row)
                if parse_time is not None:
                    issued_at = parse_time(issued_at)
                note = row[note_at]
                if note is not None:
                    reason = note if reason is None else f"{reason}; {note}"
                transaction = transactions[tx_id] = new_transaction(
                    tx_id, issued_at, actor, source_ip, request_id, reason, extra or {}
                )
            append(
                new_version(
                    plan.spec.model,
                    operation,
                    state,
                    changes,
                    tx_id,
                    transaction,
                    version_id,
                    nothing
                    if plan.personal is None
                    else erased_keys(row[plan.personal]) & plan.spec.attr_set,
                )
            )
        return out


_TX_FIELDS = ("id", "issued_at", "actor", "source_ip", "request_id", "reason", "extra")


def _resolve_target(target: Any, pk: Any) -> tuple[ModelSpec, tuple[Any, ...]]:
    if isinstance(target, type):
        if pk is _MISSING:
            raise ArgumentError(
                f"versioning.history(session, {target.__name__}) needs the record's primary key: "
                f"history(session, {target.__name__}, pk), or pass an instance alone"
            )
        spec = require_spec(target)
        return spec, _key(spec, pk)
    state = sa.inspect(target, raiseerr=False)
    if not isinstance(state, InstanceState):
        raise ArgumentError(
            f"versioning.history() takes a model instance, or a model class and a primary key, got "
            f"{target!r}"
        )
    if pk is not _MISSING:
        raise ArgumentError(
            f"versioning.history(session, obj) takes no primary key: the "
            f"{type(target).__name__} instance names the record; for another record, pass the "
            f"class: history(session, {type(target).__name__}, pk)"
        )
    spec = require_spec(type(target))
    if state.key is not None:
        return spec, tuple(state.key[1])
    key = tuple(state.dict.get(k) for k in spec.pk_keys)
    if any(value is None for value in key):
        raise ArgumentError(
            f"{type(target).__name__} instance has no primary key yet (flush it first)"
        )
    return spec, _key(spec, key)


def _autoflush(session: Session) -> None:
    """Flush pending changes first, as a query does, so that they are part of what is read.

    See :func:`versioning._compat.autoflush`.
    """
    if isinstance(session, Session):
        _compat.autoflush(session)


class _Missing:
    pass


_MISSING: Any = _Missing()


def history(
    session: Session, target: Any, pk: Any = _MISSING, *, since: dt.datetime | int | None = None
) -> list[Version]:
    """Every version of a record, oldest first; ``[]`` for a key that never existed.

    Call as ``history(session, obj)`` or ``history(session, Model, pk)``. ``since`` (a
    transaction id, or a timezone-aware ``datetime``) keeps the versions of that transaction
    and later ones (issued at or after that time). After a prune (see :func:`versioning.prune`),
    a record with versions before the horizon raises :class:`~versioning.ArchivedError` unless
    ``since`` is at or after the horizon: its list would be incomplete.
    """
    session = arguments.session(session, "history")
    if since is not None:
        since = arguments.moment(since, "history")
    if pk is _MISSING:
        _autoflush(session)  # an instance: its pending changes (and a new one's key) first
        spec, key = _resolve_target(target, pk)
    else:
        spec, key = _resolve_target(target, pk)  # a bad key is refused before anything is written
        _autoflush(session)
    transactions = spec.transactions
    parameters: dict[str, Any] = {f"versioning_pk_{i}": value for i, value in enumerate(key)}
    by = None if since is None else "id" if isinstance(since, int) else "time"
    if since is not None:
        parameters[_SINCE] = since
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    what = f"the history of {_label(spec, key)}"
    pruned = horizon.current(connection, transactions)
    if pruned is not None and since is not None:
        if isinstance(since, dt.datetime) and since <= pruned.issued_at:
            raise horizon.refuse(f"{what} since {since.isoformat()}", pruned)
        horizon.check_moment(connection, transactions, since, f"{what} since")
    statements: dict[bool, sa.Select[Any]] = {}
    dialect = connection.dialect

    def statement(tolerant: bool) -> sa.Select[Any]:
        statements[tolerant] = _history_statement(spec, tolerant, by, dialect.name)
        return statements[tolerant]

    found = _fetch(connection, statement, mapped=False, parameters=parameters)
    if not found:
        return []
    plan = _RowPlan(spec, list(statements[max(statements)].selected_columns.keys()), dialect)
    plan.changes_text = _compat.json_deserializer(dialect) or json.loads
    if dialect.name == "sqlite":
        plan.issued_at_text = _sqlite_issued_at(dialect)
    if (
        pruned is not None
        and since is None
        and found[0][plan.transaction_id] <= pruned.transaction_id
    ):
        raise horizon.refuse(what, pruned)
    return plan.versions(found, _transaction_columns(spec))


def _transaction_columns(spec: ModelSpec) -> TransactionColumns:
    """The :class:`TransactionColumns` of ``spec``'s transaction table, made once per model."""
    cache_key = (TransactionColumns, spec.transactions)
    found: TransactionColumns | None = spec.read_cache.get(cache_key)
    if found is None:
        found = spec.read_cache[cache_key] = TransactionColumns(spec.transactions)
    return found


#: The parameter of ``since`` in :func:`_history_statement`.
_SINCE = "versioning_since"

#: :func:`history` reads the ``changes`` document as text and parses it with the dialect's JSON
#: deserializer itself, the one SQLAlchemy (or psycopg) would use: the same values, for less
#: (psycopg's loading of a ``json`` value costs twice as much: a third of the query's time for
#: 200 versions). PostgreSQL needs a ``CAST`` for the driver to hand over the text.
_JSON_AS_TEXT = sa.Text()


def _changes_as_text(column: Any, dialect_name: str) -> Any:
    if dialect_name == "postgresql":
        return sa.cast(column, _JSON_AS_TEXT).label(CHANGES)
    return sa.type_coerce(column, _JSON_AS_TEXT).label(CHANGES)


_ISSUED_AT = "versioning_tx_issued_at"


def _sqlite_issued_at(dialect: Dialect) -> Callable[[Any], Any]:
    """SQLite: a transaction's ``issued_at`` read as its stored text, made the ``datetime`` that
    :class:`~versioning.schema.UTCDateTime` gives, by ``fromisoformat`` for the text the library
    writes (``YYYY-MM-DD HH:MM:SS.ffffff``: SQLAlchemy's parser, a regular expression, costs five
    times as much), by that type's own processing for any other."""
    slow = UTCDateTime().result_processor(dialect, None)
    utc = dt.UTC

    def parse(text: Any) -> Any:
        if type(text) is str and len(text) == 26 and text[10] == " " and text[19] == ".":
            try:
                return dt.datetime.fromisoformat(text).replace(tzinfo=utc)
            except ValueError:
                pass
        return text if slow is None else slow(text)

    return parse


def _history_statement(
    spec: ModelSpec, tolerant: bool, by: str | None, dialect_name: str
) -> sa.Select[Any]:
    """The statement of :func:`history`, built once per model (and way of reading values, of
    giving ``since``: ``None``, ``"id"``, ``"time"``, and dialect; kept in ``spec.read_cache``);
    the key's values are parameters ``versioning_pk_<i>``, ``since`` parameter :data:`_SINCE`.

    The ``changes`` document is read as its text (see :data:`_JSON_AS_TEXT`), and on SQLite
    the transaction's ``issued_at`` too (see :func:`_sqlite_issued_at`).
    """
    history_table = spec.history
    cache_key = (_history_statement, tuple(history_table.c.keys()), tolerant, by, dialect_name)
    found: sa.Select[Any] | None = spec.read_cache.get(cache_key)
    if found is not None:
        return found
    joined = _transaction_columns(spec)
    filters = _filters(
        spec, tuple(sa.bindparam(f"versioning_pk_{i}") for i in range(len(spec.pk_keys)))
    )
    if by == "id":
        filters.append(history_table.c[TRANSACTION_ID] >= sa.bindparam(_SINCE))
    elif by == "time":
        filters.append(issued_at_utc(spec.transactions) >= sa.bindparam(_SINCE))
    select = _select(history_table, tolerant, *joined.columns)
    # The operation as the stored text: the versions are made with a dict lookup
    # (_OPERATIONS), not through the Enum type's result processing as well.
    columns = []
    for column in select.selected_columns:
        if column.name == OPERATION:
            column = sa.type_coerce(column, sa.String()).label(OPERATION)
        elif column.name == CHANGES:
            column = _changes_as_text(column, dialect_name)
        elif column.name == _ISSUED_AT and dialect_name == "sqlite":
            column = sa.type_coerce(spec.transactions.c.issued_at, sa.String()).label(_ISSUED_AT)
        columns.append(column)
    select = select.with_only_columns(*columns)
    found = spec.read_cache[cache_key] = (
        joined.join(select, history_table)
        .where(*filters)
        .order_by(history_table.c[TRANSACTION_ID], history_table.c[VERSION_ID])
    )
    return found


class TransactionColumns:
    """The transaction row (and its digest's note) read along with history rows.

    :meth:`join` joins them to a ``SELECT`` of a history table that has :attr:`columns` among
    its columns; :meth:`transaction` makes each result row's :class:`Transaction`.
    """

    def __init__(self, transactions: sa.Table) -> None:
        self.transactions = transactions
        self.labels = [
            (issued_at_utc(transactions) if name == "issued_at" else transactions.c[name]).label(
                f"versioning_tx_{name}"
            )
            for name in _TX_FIELDS
        ]
        self.digests = integrity_tables(transactions)[0]
        self.columns = [*self.labels, self.digests.c.note.label("versioning_tx_note")]

    def join(self, select: sa.Select[Any], history: sa.Table) -> sa.Select[Any]:
        transactions, digests = self.transactions, self.digests
        return select.join(transactions, history.c[TRANSACTION_ID] == transactions.c.id).outerjoin(
            digests,
            sa.and_(digests.c.transaction_id == transactions.c.id, digests.c.segment == 1),
        )

    def by_id(self, connection: sa.Connection, ids: Iterable[int]) -> dict[int, Transaction]:
        """The transactions of ``ids``, by id (one query per 500)."""
        transactions, digests = self.transactions, self.digests
        wanted = sorted(set(ids))
        found: dict[int, Transaction] = {}
        for start in range(0, len(wanted), 500):
            select = (
                sa.select(*self.columns)
                .select_from(transactions)
                .outerjoin(
                    digests,
                    sa.and_(digests.c.transaction_id == transactions.c.id, digests.c.segment == 1),
                )
                .where(transactions.c.id.in_(wanted[start : start + 500]))
            )
            for row in connection.execute(select).mappings().all():  # one driver call
                made = self.transaction(row)
                found[made.id] = made
        return found

    def transaction(self, row: RowMapping) -> Transaction:
        tx = {name: row[label.name] for name, label in zip(_TX_FIELDS, self.labels, strict=True)}
        tx["extra"] = tx["extra"] or {}
        note = row["versioning_tx_note"]
        if note is not None:
            reason = tx["reason"]
            tx["reason"] = note if reason is None else f"{reason}; {note}"
        return Transaction(**tx)


def _label(spec: ModelSpec, key: tuple[Any, ...]) -> str:
    """How messages name a record: ``Invoice 1``, ``Item ('north', 7)``."""
    return f"{spec.model.__name__} {key[0] if len(key) == 1 else key!r}"


def _bound(spec: ModelSpec, at: dt.datetime | int | sa.BindParameter[dt.datetime]) -> Any:
    """The highest transaction id visible at ``at``: ``at`` itself for an id, else a scalar
    subquery (``at`` a ``datetime``, or a parameter of one)."""
    if isinstance(at, int):
        return at
    transactions = spec.transactions
    return (
        sa.select(transactions.c.id)
        .where(issued_at_utc(transactions) <= at)  # ``at`` bound as UTC, as the column holds it
        .order_by(transactions.c.issued_at.desc(), transactions.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )


#: The parameters of a statement whose bound is :func:`bound_parameter`'s.
BOUND, AT = "versioning_bound", "versioning_at"


def bound_parameter(spec: ModelSpec, by_datetime: bool) -> Any:
    """A bound for a statement built once and run many times: the transaction id given as
    parameter :data:`BOUND`, or (``by_datetime``) the last transaction issued by the moment given
    as parameter :data:`AT` (as :func:`_bound` gives it for a ``datetime``). See
    :func:`bound_parameters`."""
    if by_datetime:
        return _bound(spec, sa.bindparam(AT, type_=UTCDateTime()))
    return sa.bindparam(BOUND, type_=spec.history.c[TRANSACTION_ID].type)


def bound_parameters(bound: Any, at: dt.datetime | int) -> dict[str, Any]:
    """The parameters of :func:`bound_parameter`'s bound for ``bound`` (what :func:`_bound`, or
    :func:`versioning.snapshots.bound_for`, gave for ``at``; not ``None``); whether it is
    ``by_datetime`` is whether the result has :data:`AT`."""
    if isinstance(bound, sa.ScalarSelect):
        return {AT: at}
    return {BOUND: bound}


def _version_at_statement(spec: ModelSpec, tolerant: bool, by_datetime: bool) -> sa.Select[Any]:
    """The statement of :func:`version_at`, built once per model (and way of reading values and
    of giving the moment; kept in ``spec.read_cache``); the key's values are parameters
    ``versioning_pk_<i>``."""
    history_table = spec.history
    cache_key = (_version_at_statement, tuple(history_table.c.keys()), tolerant, by_datetime)
    found: sa.Select[Any] | None = spec.read_cache.get(cache_key)
    if found is not None:
        return found
    filters = _filters(
        spec, tuple(sa.bindparam(f"versioning_pk_{i}") for i in range(len(spec.pk_keys)))
    )
    transaction_id = history_table.c[TRANSACTION_ID]
    # max() over the (key, transaction) index is a single index probe on every backend; MariaDB
    # would otherwise walk the record's newer versions one by one with ORDER BY ... LIMIT 1.
    latest = (
        sa.select(sa.func.max(transaction_id))
        .where(*filters, transaction_id <= bound_parameter(spec, by_datetime))
        .scalar_subquery()
    )
    found = spec.read_cache[cache_key] = (
        _select(history_table, tolerant)
        .where(*filters, transaction_id == latest)
        .order_by(history_table.c[VERSION_ID].desc())
        .limit(1)
    )
    return found


def _version_row(
    session: Session, model: Any, pk: Any, at: dt.datetime | int, function: str, mapped: bool
) -> tuple[ModelSpec, Any, sa.Connection]:
    """The history row of the latest version of a record at ``at`` (a delete included), or
    ``None``; as a mapping, or (not ``mapped``) a plain row of all the history table's columns."""
    session = arguments.session(session, function)
    spec = arguments.model(model, function)
    key = _key(spec, pk)
    at = arguments.moment(at, function)
    bound = _bound(spec, at)
    _autoflush(session)  # after the checks: a refused call writes nothing
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    bound = horizon.resolve_bound(
        connection, spec.transactions, at, bound, f"reading {_label(spec, key)}"
    )
    if isinstance(bound, sa.ScalarSelect) and connection.dialect.name in ("mysql", "mariadb"):
        # MariaDB probes the index for max() only with a constant bound; with a subquery it walks
        # the record's whole history. So there, the moment is turned into an id first.
        moment: sa.Select[Any] = bound.element  # type: ignore[assignment]
        bound = connection.execute(moment).scalar()
        if bound is None:
            return spec, None, connection
    parameters = bound_parameters(bound, at)
    parameters.update((f"versioning_pk_{i}", value) for i, value in enumerate(key))
    by_datetime = AT in parameters

    def statement(tolerant: bool) -> sa.Select[Any]:
        return _version_at_statement(spec, tolerant, by_datetime)

    rows = _fetch(connection, statement, first=True, mapped=mapped, parameters=parameters)
    return spec, rows[0] if rows else None, connection


def version_at(
    session: Session, model: type[Any], pk: Any, at: dt.datetime | int
) -> Version | None:
    """The latest version of a record at ``at`` (a delete included), or ``None``."""
    spec, row, connection = _version_row(session, model, pk, at, "version_at", True)
    if row is None:
        return None
    return _row_version(spec, row, connection.dialect, None)


@overload
def as_of(
    session: Session, model: type[T], pk: Any, at: dt.datetime | int, *, load: Any = None
) -> T | None: ...
@overload
def as_of(
    session: Session, model: Any, pk: Any, at: dt.datetime | int, *, load: Any = None
) -> Any: ...
def as_of(session: Session, model: Any, pk: Any, at: dt.datetime | int, *, load: Any = None) -> Any:
    """The record as it was at ``at`` — a transient instance — or ``None`` if it did not exist.

    ``at`` is a timezone-aware ``datetime`` (the state after the last transaction issued at or
    before it) or a transaction id (the state after that transaction). One indexed query. Its
    relationships read as of the same moment, on access or now for the dotted paths in ``load``
    (see :mod:`versioning.related`).
    """
    from versioning.related import read_as_of

    return read_as_of(session, model, pk, at, load)[0]
