"""Reading the current values of live rows, batched: the only reads the write path makes.

Used before a change (old values the session does not hold, locked where the backend can) and
after it (values the database produced). Rows are read by key in chunks, or by a statement's own
WHERE clause; for a polymorphic hierarchy each row is completed with its subclass's columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versioning.concealed import conceal, reveal
from versioning.declaration import ModelSpec, spec_of

__all__ = ["Key", "Rows", "by_keys", "by_where"]

#: A primary key as a tuple, in the mapper's key order.
Key = tuple[Any, ...]
#: Rows found: key -> (spec of the row's own class, versioned values).
Rows = dict[Key, tuple[ModelSpec, dict[str, Any]]]

_CHUNK = 500


def _columns(spec: ModelSpec) -> tuple[str, ...]:
    return spec.pk_keys + tuple(k for k in spec.keys if k not in spec.pk_keys)


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


def _in(spec: ModelSpec, names: tuple[str, ...], values: Sequence[Key]) -> sa.ColumnElement[bool]:
    """``column IN (...)``, or a tuple comparison for several columns."""
    columns = [spec.live_columns[k] for k in names]
    if len(columns) == 1:
        return columns[0].in_([value[0] for value in values])
    return sa.tuple_(*columns).in_(values)


def _collect(
    connection: Connection,
    spec: ModelSpec,
    statements: Iterable[sa.Select[Any]],
    names: tuple[str, ...],
) -> Rows:
    npk = len(spec.pk_keys)
    out: Rows = {}
    for statement in statements:
        for row in connection.execute(statement):
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
    names, base = _select(spec, lock, connection.dialect.name)
    unique = list(dict.fromkeys(values))
    chunks = (
        base.where(_in(spec, columns, unique[i : i + _CHUNK]))
        for i in range(0, len(unique), _CHUNK)
    )
    return _complete(connection, spec, _collect(connection, spec, chunks, names), lock)


def by_keys(connection: Connection, spec: ModelSpec, keys: Sequence[Key], lock: bool) -> Rows:
    """The rows of ``spec``'s table(s) with these primary keys (missing ones are absent)."""
    return by_columns(connection, spec, spec.pk_keys, keys, lock)


def by_where(
    connection: Connection, spec: ModelSpec, where: sa.ColumnElement[bool] | None, lock: bool
) -> Rows:
    """The rows a statement's WHERE clause selects (all rows when there is none)."""
    names, statement = _select(spec, lock, connection.dialect.name)
    if where is not None:
        statement = statement.where(where)
    return _complete(connection, spec, _collect(connection, spec, [statement], names), lock)


def _complete(connection: Connection, spec: ModelSpec, rows: Rows, lock: bool) -> Rows:
    """Give rows of subclasses with columns of their own (joined inheritance) those columns."""
    if spec.discriminator is None or not rows:
        return rows
    wanted: dict[ModelSpec, list[Key]] = {}
    for key, (_, values) in rows.items():
        mapper = spec.mapper.polymorphic_map.get(values[spec.discriminator])
        concrete = spec_of(mapper) if mapper is not None else None
        if concrete is None or concrete is spec:
            continue
        if concrete.keyset <= spec.keyset:
            rows[key] = (concrete, values)
        else:
            wanted.setdefault(concrete, []).append(key)
    for concrete, keys in wanted.items():
        rows.update(by_keys(connection, concrete, keys, lock))
    return rows
