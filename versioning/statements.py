"""Capturing ORM-enabled statements: bulk ``update()``, ``delete()``, ``insert()`` and upserts.

These statements bypass the unit of work, so the flush hooks never see them. A ``do_orm_execute``
hook on every ``Session`` records them with the same history rows, changes and transaction row:

* ``update(Model).where(...)`` and ``delete(Model).where(...)`` (any ``synchronize_session``): the
  rows the WHERE clause selects are read first, locked where the backend can (``FOR UPDATE``), the
  statement runs unchanged, and updated rows are read back by key;
* bulk ``update(Model)`` with a list of dicts (by primary key): the same, by those keys;
* ``insert(Model)`` with a list of dicts or ``.values(...)``, and upserts — PostgreSQL/SQLite
  ``on_conflict_do_update()`` / ``on_conflict_do_nothing()``, MariaDB
  ``on_duplicate_key_update()``: rows are found by primary key, or else by the conflict target or
  a unique key the values carry, before (locked) and after the statement; each becomes an INSERT or
  an UPDATE as actually happened. An insert whose keys the database generates gets ``RETURNING``
  of the key added, so the caller's result then carries those rows.

Statements on models that are not versioned are left alone at the cost of one dict lookup.
Statements on a bare ``Connection`` (Core, or ``session.connection().execute(...)``) are not seen:
:func:`versioning.guard_writes` can warn about or refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.sql.dml import Insert

from versioning import cascades, live_rows, uncaptured
from versioning.declaration import ModelSpec, spec_of
from versioning.errors import VersioningError
from versioning.live_rows import Key, Rows
from versioning.operation import Operation
from versioning.recording import Change, write_changes

__all__: list[str] = []


@event.listens_for(Session, "do_orm_execute")
def _capture(orm: ORMExecuteState) -> Result[Any] | None:
    if not (orm.is_update or orm.is_delete or orm.is_insert):
        return None
    mapper = orm.bind_mapper
    spec = spec_of(mapper) if mapper is not None else None
    if spec is None:
        return None
    session = orm.session
    if session.autoflush:
        # SQLAlchemy autoflushes only inside invoke_statement(); the rows read before the
        # statement must already include pending changes, recorded by their own flush.
        session.flush()
    with uncaptured.writing():
        if orm.is_delete:
            return _delete(orm, spec)
        if orm.is_update:
            return _update(orm, spec)
        return _insert(orm, spec)


def _connection(orm: ORMExecuteState, spec: ModelSpec) -> Connection:
    return orm.session.connection(bind_arguments={**orm.bind_arguments, "mapper": spec.mapper})


def _delete(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
    before = live_rows.by_where(connection, spec, orm.statement.whereclause, lock=True)  # type: ignore[attr-defined]
    cascade = cascades.before_statement(orm, connection, before)  # issue 8 class 3: FK actions
    result = orm.invoke_statement()
    changes = [Change(s, None, Operation.DELETE, values, None) for s, values in before.values()]
    if cascade is not None:  # issue 8 class 3: what ON DELETE did to versioned children
        changes += cascade.finish(connection)
    write_changes(orm.session, changes)
    return result


def _sets_primary_key(spec: ModelSpec, statement: Any) -> bool:
    pk_columns = {spec.live_columns[k] for k in spec.pk_keys}
    pk_names = set(spec.pk_keys) | {c.key for c in pk_columns} | {c.name for c in pk_columns}
    values = dict(getattr(statement, "_values", None) or {})
    values.update(dict(getattr(statement, "_ordered_values", None) or ()))  # SQLAlchemy 2.0
    for target in values:
        if target in pk_columns or getattr(target, "key", target) in pk_names:
            return True
    return False


def _update(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
    statement: Any = orm.statement
    if _sets_primary_key(spec, statement):
        raise VersioningError(
            f"an UPDATE statement that sets the primary key of {spec.model.__name__} cannot be "
            f"versioned: the record could not be followed to its new key. Change keys through "
            f"the unit of work (obj.id = ...; session.flush()); nothing was executed"
        )
    parameters = orm.parameters
    if isinstance(parameters, list) and parameters and statement.whereclause is None:
        keys = [_key_of(spec, row) for row in parameters]
        if any(key is None for key in keys):
            return orm.invoke_statement()  # SQLAlchemy refuses a bulk update without keys
        before = live_rows.by_keys(connection, spec, [k for k in keys if k is not None], lock=True)
    else:
        before = live_rows.by_where(connection, spec, statement.whereclause, lock=True)
    cascade = cascades.before_statement(orm, connection, before)  # issue 8 class 3: FK actions
    result = orm.invoke_statement()
    after = live_rows.by_keys(connection, spec, list(before), lock=False)
    changes = []
    for key, (_, old) in before.items():
        found = after.get(key)
        if found is None:
            raise VersioningError(
                f"an UPDATE of {spec.model.__name__} changed or removed the primary key {key!r}; "
                f"versioning cannot follow the record: change keys through the ORM unit of work "
                f"(obj.id = ...; session.flush())"
            )
        changes.append(Change(found[0], None, Operation.UPDATE, old, found[1]))
    if cascade is not None:  # issue 8 class 3: what ON UPDATE did to versioned children
        changes += cascade.finish(connection)
    write_changes(orm.session, changes)
    return result


def _key_of(spec: ModelSpec, row: Mapping[Any, Any]) -> Key | None:
    try:
        return tuple(row[k] for k in spec.pk_keys)
    except KeyError:
        return None


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


def _insert(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
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
        cascade = cascades.before_statement(orm, connection, before)  # issue 8 class 3: FK actions
        result = orm.invoke_statement()
        after: Rows = {}
        for keys, values in wanted:
            after.update(live_rows.by_columns(connection, spec, keys, values, lock=False))
    else:
        cascade = None
        result, generated = _insert_returning_keys(orm, spec, statement)
        after = live_rows.by_keys(connection, spec, generated, lock=False)
    changes = []
    for key, (row_spec, new) in after.items():
        old = before.get(key)
        if old is None:
            changes.append(Change(row_spec, None, Operation.INSERT, None, new))
        else:  # an existing row the statement met: an update if it changed anything
            changes.append(Change(row_spec, None, Operation.UPDATE, old[1], new))
    if cascade is not None:  # issue 8 class 3: what an upsert or REPLACE did to children
        changes += cascade.finish(connection)
    write_changes(orm.session, changes)
    return result


def _returned_key(spec: ModelSpec, row: Any) -> Key | None:
    """The primary key in a RETURNING row: from its key columns, or from a returned entity."""
    for element in row:
        if isinstance(element, spec.root.model):
            return tuple(getattr(element, k) for k in spec.pk_keys)
    return _key_of(spec, row._mapping)


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
