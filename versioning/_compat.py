"""Every read (and the one write) of a SQLAlchemy private attribute, in one place.

SQLAlchemy offers no public API for these. Each helper says what it reads and in which versions
it exists (the project supports SQLAlchemy 2.0.30 to 2.1), so that an upgrade that moves one of
them breaks here, in one file, and nowhere else. Nothing else in :mod:`versioning` may touch a
SQLAlchemy attribute whose name starts with an underscore.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, RelationshipProperty, Session, SessionTransaction
from sqlalchemy.orm.unitofwork import UOWTransaction
from sqlalchemy.sql import sqltypes as sql_sqltypes
from sqlalchemy.types import TypeEngine

__all__ = [
    "autoflush",
    "decimal_return_scale",
    "enum_stored_values",
    "has_cycles",
    "insert_multi_values",
    "insert_values",
    "is_interval",
    "is_remote",
    "json_deserializer",
    "locks_rows",
    "mapper_primary_key_argument",
    "mapper_properties",
    "open_connections",
    "orm_options",
    "post_values_clause",
    "prefixes",
    "relationship_secondary_argument",
    "replace_rollback_exception",
    "returning",
    "session_flushing",
    "set_clause",
    "set_loaders",
    "sqlite_storage",
    "type_affinity",
    "type_is_null",
    "variant_mapping",
]


# --- statements --------------------------------------------------------------------------------


def set_clause(statement: Any) -> list[tuple[Any, Any]]:
    """The ``(target, value)`` pairs an ``UPDATE`` (or an ``INSERT``'s ``.values()``) sets.

    Reads ``_values`` (2.0 and 2.1) and ``_ordered_values`` (2.0 only, filled by
    ``ordered_values()``; 2.1 keeps those in ``_values``). No public API lists them.
    """
    pairs = list((getattr(statement, "_values", None) or {}).items())
    pairs += list(getattr(statement, "_ordered_values", None) or ())
    return pairs


def insert_values(statement: Any) -> Any:
    """The single-row ``.values(...)`` of an ``INSERT``: ``_values`` (2.0 and 2.1), or ``None``."""
    return getattr(statement, "_values", None) or None


def insert_multi_values(statement: Any) -> Any:
    """The multi-row ``.values([...])`` groups of an ``INSERT``: ``_multi_values`` (2.0, 2.1).

    A tuple of groups, each a list of rows (dicts, or tuples in the table's column order).
    """
    return getattr(statement, "_multi_values", None) or ()


def prefixes(statement: Any) -> tuple[tuple[Any, str | None], ...]:
    """A statement's ``prefix_with()`` entries as ``(clause, dialect)``: ``_prefixes``
    (2.0, 2.1)."""
    return tuple(getattr(statement, "_prefixes", None) or ())


def post_values_clause(statement: Any) -> Any:
    """A dialect ``INSERT``'s upsert clause (``ON CONFLICT`` / ``ON DUPLICATE KEY UPDATE``), or
    ``None``: ``_post_values_clause`` (2.0, 2.1)."""
    return getattr(statement, "_post_values_clause", None)


def returning(statement: Any) -> tuple[Any, ...]:
    """The columns of a statement's own ``returning()``: ``_returning`` (2.0, 2.1)."""
    return tuple(getattr(statement, "_returning", None) or ())


def orm_options(statement: Any) -> tuple[Any, ...]:
    """A statement's ORM options (``with_loader_criteria`` ...): ``_with_options`` (2.0, 2.1).

    SQLAlchemy's own ``synchronize_session="fetch"`` SELECT copies this same attribute.
    """
    return tuple(getattr(statement, "_with_options", ()))


# --- session and unit of work ------------------------------------------------------------------


def autoflush(session: Session) -> None:
    """Flush as a query would: ``Session._autoflush()`` (2.0, 2.1).

    It is what ``Query`` and ``Session.execute`` call: it honours ``session.autoflush`` and
    ``no_autoflush``, does nothing during a flush, and names autoflush in the error of a failing
    flush. There is no public equivalent.
    """
    session._autoflush()


def replace_rollback_exception(
    transaction: SessionTransaction | None, error: BaseException
) -> None:
    """Make ``error`` the exception a later ``PendingRollbackError`` quotes, if there is one.

    Writes ``SessionTransaction._rollback_exception`` (2.0, 2.1), which SQLAlchemy sets to the
    exception that failed a flush and quotes in the ``PendingRollbackError`` of any later use.
    """
    if transaction is not None and getattr(transaction, "_rollback_exception", None) is not None:
        transaction._rollback_exception = error


def open_connections(session: Session) -> list[Connection]:
    """The connections the session's transaction holds now (none before its first statement):
    ``SessionTransaction._connections`` (2.0, 2.1). ``Session.connection()`` would begin one."""
    transaction = session.get_transaction()
    if transaction is None:
        return []
    entries = getattr(transaction, "_connections", None) or {}
    return list(dict.fromkeys(entry[0] for entry in entries.values()))


def session_flushing(session: Session) -> bool:
    """Whether ``session`` is inside ``flush()`` right now: ``Session._flushing`` (2.0, 2.1).
    ``before_flush`` has no matching event when a flush finds nothing to write."""
    return bool(session._flushing)


def locks_rows(statement: Any) -> bool:
    """Whether a ``SELECT`` has ``with_for_update()`` (``Select._for_update_arg``, 2.0 and
    2.1)."""
    return getattr(statement, "_for_update_arg", None) is not None


def has_cycles(context: UOWTransaction) -> bool:
    """Whether the flush has a dependency cycle, so that it writes state by state.

    Reads ``UOWTransaction.cycles`` (undocumented; 2.0, 2.1), set while the flush is planned.
    """
    return bool(getattr(context, "cycles", None))


# --- mapping and types ---------------------------------------------------------------------------


def relationship_secondary_argument(prop: RelationshipProperty[Any]) -> Any:
    """A relationship's ``secondary=`` as given (a table, a name or a callable), before the mapper
    is configured: ``RelationshipProperty._init_args.secondary.argument`` (2.0, 2.1)."""
    return prop._init_args.secondary.argument


def mapper_properties(mapper: Mapper[Any]) -> list[Any]:
    """A mapper's properties as declared so far, without configuring any mapper (which
    ``Mapper.relationships`` does): ``Mapper._props`` (2.0, 2.1)."""
    return list(mapper._props.values())


def mapper_primary_key_argument(mapper: Mapper[Any]) -> Any:
    """The ``primary_key=`` mapper argument, or ``None``: ``Mapper._primary_key_argument``
    (2.0, 2.1)."""
    return getattr(mapper, "_primary_key_argument", None)


def type_is_null(type_: TypeEngine[Any]) -> bool:
    """Whether a type is still ``NullType`` (a foreign key whose target is not declared yet):
    ``TypeEngine._isnull`` (2.0, 2.1)."""
    return bool(type_._isnull)


def type_affinity(type_: TypeEngine[Any]) -> Any:
    """The generic type class a type stores as (``Integer`` for ``BigInteger`` ...):
    ``TypeEngine._type_affinity`` (2.0, 2.1)."""
    return type_._type_affinity


def is_binary(type_: TypeEngine[Any]) -> bool:
    """Whether a type is one of SQLAlchemy's binary types (``LargeBinary``, ``BINARY``,
    ``VARBINARY``, dialect BLOBs): their common base ``sqltypes._Binary`` (2.0, 2.1)."""
    return isinstance(type_, sqltypes._Binary)


def is_interval(type_: TypeEngine[Any]) -> bool:
    """Whether a type holds ``timedelta`` values: ``Interval`` or a dialect's ``INTERVAL``,
    whose common base is ``sqltypes._AbstractInterval`` (2.0, 2.1)."""
    return isinstance(type_, sql_sqltypes._AbstractInterval)


def decimal_return_scale(type_: Any) -> int:
    """The digits after the point of the ``Decimal`` a ``Numeric`` gives on a backend without
    native decimals (SQLite): ``Numeric._effective_decimal_return_scale`` (2.0, 2.1)."""
    return int(type_._effective_decimal_return_scale)


def sqlite_storage(type_: TypeEngine[Any]) -> tuple[str | None, Any]:
    """A SQLite date/time type's text format and parsing pattern (``None``: the default one):
    ``_storage_format`` and ``_reg`` of SQLite's ``DATETIME``, ``DATE``, ``TIME`` (2.0, 2.1)."""
    return getattr(type_, "_storage_format", None), getattr(type_, "_reg", None)


def variant_mapping(type_: TypeEngine[Any]) -> dict[str, TypeEngine[Any]]:
    """A type's ``with_variant()`` types by dialect name: ``TypeEngine._variant_mapping`` (2.0,
    2.1). ``dialect_impl()`` would resolve it too, but drops what matters (PostgreSQL's ``CHAR``
    becomes a plain string)."""
    return dict(getattr(type_, "_variant_mapping", None) or {})


def json_deserializer(dialect: Any) -> Callable[[str], Any] | None:
    """The engine's ``create_engine(json_deserializer=...)``, or ``None`` for the default
    (``json.loads``): ``Dialect._json_deserializer`` (2.0, 2.1), which SQLAlchemy's ``JSON``
    type decodes with. Read to decode a JSON column read as its text the same way."""
    found: Callable[[str], Any] | None = getattr(dialect, "_json_deserializer", None)
    return found


# --- loading -------------------------------------------------------------------------------------


def set_loaders(state: Any, loaders: dict[str, Any]) -> None:
    """Install per-instance loader callables (attribute key -> callable) on an instance that has
    none yet: what SQLAlchemy calls, with ``(state, passive)``, when such an attribute is read and
    not yet in the instance's ``__dict__``. The callables may be shared by many instances; the
    ``dict`` is copied, since SQLAlchemy may remove an entry of one state's
    (``InstanceState._reset``).

    Writes ``InstanceState.callables`` (2.0, 2.1; undocumented), as the ORM's own deferred and
    lazy loaders do for each loaded instance (``InstanceState._instance_level_callable_processor``).
    """
    state.callables = dict(loaders)


def refuse_collection(
    manager: Any, key: str, refuse: Callable[[Any], BaseException | None]
) -> None:
    """Make a ``dynamic`` or ``write_only`` relationship ask ``refuse(state)`` before it builds
    its collection object for an instance, and raise what it returns.

    Such attributes never consult ``InstanceState.callables``: their implementation builds a
    query object from ``impl.query_class(impl, state)`` (2.0, 2.1). This installs a subclass of
    that class whose ``__init__`` asks first; idempotent.
    """
    impl = manager[key].impl
    original = impl.query_class
    if getattr(original, "_versioning_refuses", False):
        return

    def __init__(self: Any, attr: Any, state: Any) -> None:
        error = refuse(state)
        if error is not None:
            raise error
        original.__init__(self, attr, state)

    impl.query_class = type(
        original.__name__, (original,), {"__init__": __init__, "_versioning_refuses": True}
    )


def is_remote(column: Any) -> bool:
    """Whether a column of a relationship's ``primaryjoin`` is on its remote side (the related
    objects' side, also in a self-referential one): the ``"remote"`` annotation SQLAlchemy puts
    on it, in ``_annotations`` (2.0, 2.1)."""
    return bool(getattr(column, "_annotations", {}).get("remote"))


def enum_stored_values(type_: TypeEngine[Any]) -> dict[Any, Any]:
    """An ``Enum`` type's map of each member, and each stored string, to the string stored
    (``Enum._valid_lookup``, 2.0.30 to 2.1); empty if the type has none."""
    lookup = getattr(type_, "_valid_lookup", None)
    return dict(lookup) if isinstance(lookup, dict) else {}
