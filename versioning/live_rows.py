"""Reading the current values of live rows, batched: the only reads the write path makes.

Used before a change (the rows it will change, locked where the backend can) and after it (the
values the database produced). Rows are read by key in chunks, by a key set in one
statement, by a statement's own WHERE clause, or from the rows of an ORM ``SELECT`` the caller ran
(:func:`orm_select`, :func:`from_rows`); for a polymorphic hierarchy each row is completed with its
subclass's columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from versioning.concealed import conceal, reveal
from versioning.declaration import ModelSpec, versioned_spec
from versioning.errors import VersioningError

__all__ = [
    "Key",
    "Rows",
    "by_columns",
    "by_key_set",
    "by_keys",
    "by_where",
    "from_rows",
    "keys_in",
    "orm_select",
]

#: A primary key as a tuple, in the mapper's key order.
Key = tuple[Any, ...]
#: Rows found: key -> (spec of the row's own class, versioned values).
Rows = dict[Key, tuple[ModelSpec, dict[str, Any]]]

_CHUNK = 500
#: Bound parameters a statement may carry on any supported driver (SQLite's limit is 32,766,
#: psycopg's 65,535), with room left for the statement's own parameters.
_MAX_BINDS = 30_000


def _columns(spec: ModelSpec) -> tuple[str, ...]:
    return spec.pk_keys + tuple(k for k in spec.attrs if k not in spec.pk_keys)


def _select(
    spec: ModelSpec, lock: bool, dialect_name: str
) -> tuple[tuple[str, ...], sa.Select[Any]]:
    keys = _columns(spec)
    statement = sa.select(*[_column(spec, k) for k in keys]).select_from(
        spec.mapper.persist_selectable
    )
    if lock and dialect_name != "sqlite":
        # Lock in key order, as the unit of work writes, so that two sessions never take the
        # same locks in opposite orders.
        statement = statement.with_for_update().order_by(
            *[spec.live_columns[k] for k in spec.pk_keys]
        )
    return keys, statement


def _column(spec: ModelSpec, key: str) -> Any:
    """A column to select; a masked one is kept out of SQLAlchemy's debug log (see concealed)."""
    column = spec.live_columns[key]
    return conceal(column) if key in spec.masks else column


def _renders_literals(columns: Sequence[Any], dialect: Dialect) -> bool:
    """Whether every column's type can render its values as SQL literals on ``dialect``."""
    for column in columns:
        try:
            if column.type.dialect_impl(dialect).literal_processor(dialect) is None:
                return False
        except NotImplementedError:
            return False
    return True


def keys_in(
    columns: Sequence[Any], values: Sequence[Key], dialect: Dialect, what: str
) -> sa.ColumnElement[bool]:
    """``columns IN (values)`` as one expression, whatever the number of values.

    The values are rendered as SQL literals when the statement runs (``literal_execute``), so
    no driver's limit on bound parameters applies (SQLite 32,766, psycopg 65,535): a statement
    restricted to 100,000 keys stays one statement. The expression is still an ordinary ``IN``
    of an expanding parameter, which SQLAlchemy's ``synchronize_session="evaluate"`` can
    evaluate in Python. Key types that cannot render literals (a custom type without one) are bound
    as parameters, up to a limit every driver accepts; beyond it ``what`` is refused (nothing has
    been executed by then).
    """
    unique = list(dict.fromkeys(values))
    literal = _renders_literals(columns, dialect)
    if not literal and len(unique) * len(columns) > _MAX_BINDS:
        raise VersioningError(
            f"{what} would touch {len(unique)} rows whose key type cannot be written as SQL "
            f"literals, which needs more bound parameters than the database driver accepts; "
            f"nothing was executed: split the statement into batches of at most "
            f"{_MAX_BINDS // len(columns)} rows"
        )
    if len(columns) == 1:
        bound: sa.BindParameter[Any] = sa.bindparam(
            None, [v[0] for v in unique], expanding=True, literal_execute=literal
        )
        return columns[0].in_(bound)  # type: ignore[no-any-return]
    tuples: sa.BindParameter[Any] = sa.bindparam(
        None, unique, expanding=True, literal_execute=literal
    )
    return sa.tuple_(*columns).in_(tuples)


def _collect(
    connection: Connection,
    spec: ModelSpec,
    statements: Iterable[sa.Select[Any]],
    names: tuple[str, ...],
) -> Rows:
    out: Rows = {}
    for statement in statements:
        out.update(_rows(spec, names, connection.execute(statement)))
    return out


def _keyed_select(
    spec: ModelSpec, columns: tuple[str, ...], lock: bool, dialect_name: str
) -> tuple[tuple[str, ...], sa.Select[Any]]:
    """The read of rows by ``columns`` IN an expanding parameter ``versioning_keys``, built once
    per model (in ``spec.read_cache``): a new statement at each flush would cost its building
    and its cache key again, more than running it."""
    cache_key = (_keyed_select, columns, lock, dialect_name)
    found: tuple[tuple[str, ...], sa.Select[Any]] | None = spec.read_cache.get(cache_key)
    if found is None:
        names, base = _select(spec, lock, dialect_name)
        targets = [spec.live_columns[k] for k in columns]
        keys: sa.BindParameter[Any] = sa.bindparam("versioning_keys", expanding=True)
        where = targets[0].in_(keys) if len(targets) == 1 else sa.tuple_(*targets).in_(keys)
        found = spec.read_cache[cache_key] = (names, base.where(where))
    return found


def _rows(spec: ModelSpec, names: tuple[str, ...], rows: Iterable[Any]) -> Rows:
    """Result rows of versioned columns ``names`` as :data:`Rows`, masked values unwrapped."""
    npk = len(spec.pk_keys)
    out: Rows = {}
    for row in rows:
        values = dict(zip(names, row, strict=True))
        for key in spec.masks.keys() & values.keys():
            values[key] = reveal(values[key])
        out[tuple(row[:npk])] = (spec, values)
    return out


def by_columns(
    connection: Connection,
    spec: ModelSpec,
    columns: tuple[str, ...],
    values: Sequence[Key],
    lock: bool,
) -> Rows:
    """The rows whose ``columns`` (attribute keys of a unique key) hold one of ``values``."""
    names, statement = _keyed_select(spec, columns, lock, connection.dialect.name)
    unique = list(dict.fromkeys(values))
    if len(columns) == 1:
        unique = [value[0] for value in unique]
    found: Rows = {}
    for i in range(0, len(unique), _CHUNK):
        result = connection.execute(statement, {"versioning_keys": unique[i : i + _CHUNK]})
        found.update(_rows(spec, names, result))
    return _with_subclass_columns(connection, spec, found, lock)


def by_keys(connection: Connection, spec: ModelSpec, keys: Sequence[Key], lock: bool) -> Rows:
    """The rows of ``spec``'s table(s) with these primary keys (missing ones are absent)."""
    return by_columns(connection, spec, spec.pk_keys, keys, lock)


def by_key_set(connection: Connection, spec: ModelSpec, keys: Sequence[Key], lock: bool) -> Rows:
    """Like :func:`by_keys`, in one statement whatever the number of keys (see :func:`keys_in`)."""
    columns = [spec.live_columns[k] for k in spec.pk_keys]
    if not keys:
        return {}
    if len(keys) <= _CHUNK or not _renders_literals(columns, connection.dialect):
        return by_keys(connection, spec, keys, lock)
    names, statement = _select(spec, lock, connection.dialect.name)
    where = keys_in(columns, keys, connection.dialect, "reading rows")
    return _with_subclass_columns(
        connection, spec, _collect(connection, spec, [statement.where(where)], names), lock
    )


def orm_select(spec: ModelSpec, lock: bool, dialect_name: str) -> sa.Select[Any]:
    """An ORM ``SELECT`` of ``spec``'s versioned columns, through its mapped class.

    Selecting the class's attributes (not its table's columns) makes SQLAlchemy add what it adds
    to an ORM statement on that class: single-table-inheritance criteria, and the
    ``with_loader_criteria`` options the caller copies onto it. Run it through the session and
    pass the rows to :func:`from_rows`.
    """
    model = spec.model
    statement = sa.select(
        *[
            conceal(getattr(model, k)) if k in spec.masks else getattr(model, k)
            for k in _columns(spec)
        ]
    )
    if lock and dialect_name != "sqlite":
        statement = statement.with_for_update().order_by(*[getattr(model, k) for k in spec.pk_keys])
    return statement


def from_rows(connection: Connection, spec: ModelSpec, rows: Iterable[Any], lock: bool) -> Rows:
    """The rows of an :func:`orm_select` as :data:`Rows`, completed with subclass columns."""
    return _with_subclass_columns(connection, spec, _rows(spec, _columns(spec), rows), lock)


def by_where(
    connection: Connection, spec: ModelSpec, where: sa.ColumnElement[bool] | None, lock: bool
) -> Rows:
    """The rows a statement's WHERE clause selects (all rows when there is none)."""
    names, statement = _select(spec, lock, connection.dialect.name)
    if where is not None:
        statement = statement.where(where)
    return _with_subclass_columns(
        connection, spec, _collect(connection, spec, [statement], names), lock
    )


def _with_subclass_columns(connection: Connection, spec: ModelSpec, rows: Rows, lock: bool) -> Rows:
    """Give rows of subclasses with columns of their own (joined inheritance) those columns."""
    if spec.discriminator is None or not rows:
        return rows
    wanted: dict[ModelSpec, list[Key]] = {}
    for key, (_, values) in rows.items():
        mapper = spec.mapper.polymorphic_map.get(values[spec.discriminator])
        concrete = versioned_spec(mapper) if mapper is not None else None
        if concrete is None or concrete is spec:
            continue
        if concrete.attr_set <= spec.attr_set:
            rows[key] = (concrete, values)
        else:
            wanted.setdefault(concrete, []).append(key)
    for concrete, keys in wanted.items():
        rows.update(by_keys(connection, concrete, keys, lock))
    return rows
