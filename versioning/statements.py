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

from sqlalchemy import event
from sqlalchemy.engine import Connection, Result
from sqlalchemy.orm import ORMExecuteState, Session

from versioning import inserts, live_rows, uncaptured
from versioning.declaration import ModelSpec, spec_of
from versioning.errors import VersioningError
from versioning.live_rows import Key
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
        return inserts.capture(orm, spec, _connection(orm, spec))


def _connection(orm: ORMExecuteState, spec: ModelSpec) -> Connection:
    return orm.session.connection(bind_arguments={**orm.bind_arguments, "mapper": spec.mapper})


def _delete(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
    before = live_rows.by_where(connection, spec, orm.statement.whereclause, lock=True)  # type: ignore[attr-defined]
    result = orm.invoke_statement()
    changes = [Change(s, None, Operation.DELETE, values, None) for s, values in before.values()]
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
    write_changes(orm.session, changes)
    return result


def _key_of(spec: ModelSpec, row: Mapping[Any, Any]) -> Key | None:
    try:
        return tuple(row[k] for k in spec.pk_keys)
    except KeyError:
        return None
