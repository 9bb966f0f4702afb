"""Capturing ORM-enabled ``insert()`` statements and upserts.

Called by :mod:`versioning.statements` for ``insert(Model)`` with a list of dicts or ``.values()``
and for the dialect upserts (PostgreSQL/SQLite ``on_conflict_do_update()`` /
``on_conflict_do_nothing()``, MariaDB ``on_duplicate_key_update()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql.dml import Insert

from versioning import live_rows
from versioning.declaration import ModelSpec
from versioning.errors import VersioningError
from versioning.live_rows import Key, Rows
from versioning.operation import Operation
from versioning.recording import Change, write_changes

__all__ = ["capture"]


def _value_rows(orm: ORMExecuteState, spec: ModelSpec) -> list[dict[str, Any]]:
    """The rows an INSERT writes, by attribute key, from its parameters or ``.values()``."""
    parameters = orm.parameters
    if isinstance(parameters, list) and parameters:
        return [dict(row) for row in parameters]
    statement: Any = orm.statement
    by_name = {column.key: key for key, column in spec.live_columns.items()}
    by_name.update({column.name: key for key, column in spec.live_columns.items()})
    raw: list[Mapping[Any, Any]] = []
    if statement._multi_values:
        raw = [row for group in statement._multi_values for row in group]
    elif statement._values:
        raw = [statement._values]
    if isinstance(parameters, dict) and parameters:
        raw = [{**row, **parameters} for row in raw] if raw else [parameters]
    rows = []
    for row in raw:
        values: dict[str, Any] = {}
        for name, value in row.items():
            label = getattr(name, "key", name)
            key = by_name.get(label, label) if isinstance(label, str) else label
            if isinstance(value, sa.BindParameter):
                value = value.value
            values[key] = value
        rows.append(values)
    return rows


def _unique_keys(spec: ModelSpec, statement: Any) -> list[tuple[str, ...]]:
    """Attribute-key sets that identify a row: primary key, the upsert target, unique keys."""
    by_column = {column: key for key, column in spec.live_columns.items()}
    sets: list[tuple[str, ...]] = [spec.pk_keys]
    post = getattr(statement, "_post_values_clause", None)
    target = getattr(post, "inferred_target_elements", None) or ()
    columns: list[Any] = [
        spec.live_columns.get(element) if isinstance(element, str) else element
        for element in target
    ]
    if columns and all(c in by_column for c in columns):
        sets.append(tuple(by_column[c] for c in columns))
    table = spec.mapper.local_table
    if isinstance(table, sa.Table):
        constraints = [c for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
        for constraint in constraints:
            cols = list(constraint.columns)
            if cols and all(c in by_column for c in cols):
                sets.append(tuple(by_column[c] for c in cols))
        for index in table.indexes:
            cols = [c for c in index.columns if isinstance(c, sa.Column)]
            if index.unique and cols and all(c in by_column for c in cols):
                sets.append(tuple(by_column[c] for c in cols))
    return list(dict.fromkeys(sets))


def capture(orm: ORMExecuteState, spec: ModelSpec, connection: Connection) -> Result[Any]:
    """Run the INSERT or upsert of ``orm`` on ``connection`` and record what it did."""
    statement: Any = orm.statement
    rows = _value_rows(orm, spec)
    # Every unique key the values carry: an upsert (or INSERT IGNORE) may meet an existing row
    # on any of them, so rows are read by all of them, before (locked) and after.
    lookups = [
        keys
        for keys in _unique_keys(spec, statement)
        if rows and all(all(k in row and row[k] is not None for k in keys) for row in rows)
    ]
    before: Rows = {}
    if lookups:
        wanted = [(keys, [tuple(row[k] for k in keys) for row in rows]) for keys in lookups]
        for keys, values in wanted:
            before.update(live_rows.by_columns(connection, spec, keys, values, lock=True))
        result = orm.invoke_statement()
        after: Rows = {}
        for keys, values in wanted:
            after.update(live_rows.by_columns(connection, spec, keys, values, lock=False))
    else:
        result, generated = _insert_returning_keys(orm, spec, statement)
        after = live_rows.by_keys(connection, spec, generated, lock=False)
    changes = []
    for key, (row_spec, new) in after.items():
        old = before.get(key)
        if old is None:
            changes.append(Change(row_spec, None, Operation.INSERT, None, new))
        else:  # an existing row the statement met: an update if it changed anything
            changes.append(Change(row_spec, None, Operation.UPDATE, old[1], new))
    write_changes(orm.session, changes)
    return result


def _returned_key(spec: ModelSpec, row: Any) -> Key | None:
    """The primary key in a RETURNING row: from its key columns, or from a returned entity."""
    for element in row:
        if isinstance(element, spec.root.model):
            return tuple(getattr(element, k) for k in spec.pk_keys)
    return live_rows.key_of(spec, row._mapping)


def _insert_returning_keys(
    orm: ORMExecuteState, spec: ModelSpec, statement: Insert
) -> tuple[Result[Any], list[Key]]:
    """Run an INSERT whose keys the database generates, learning them through RETURNING."""
    if getattr(statement, "_post_values_clause", None) is not None:
        raise VersioningError(
            f"cannot version this upsert of {spec.model.__name__}: its rows carry neither the "
            f"primary key nor the conflict target, so the rows it touched cannot be found; "
            f"include the key columns in the values"
        )
    if statement._returning:
        returned = {getattr(c, "key", None) for c in statement._returning}
        # returning(Model) puts the (annotated) table in the clause: every column comes back.
        entity_returned = any(isinstance(c, sa.FromClause) for c in statement._returning)
        if not entity_returned and not set(spec.pk_keys) <= returned:
            raise VersioningError(
                f"cannot version this INSERT of {spec.model.__name__}: the database generates "
                f"its keys and its RETURNING clause does not include the primary key "
                f"{spec.pk_keys!r}; add the key to returning(). Nothing was executed"
            )
        frozen = orm.invoke_statement().freeze()
        found: list[Key] = []
        for row in frozen().all():
            key = _returned_key(spec, row)
            if key is None:
                raise VersioningError(
                    f"cannot version this INSERT of {spec.model.__name__}: it has a RETURNING "
                    f"clause without the primary key {spec.pk_keys!r}; add the key to returning()"
                )
            found.append(key)
        return frozen(), found
    pk_columns = [getattr(spec.model, key) for key in spec.pk_keys]
    result = orm.invoke_statement(statement=statement.returning(*pk_columns))
    frozen = result.freeze()
    keys = [tuple(row) for row in frozen().all()]
    return frozen(), keys
