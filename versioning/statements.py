"""Capturing ORM-enabled statements: bulk ``update()``, ``delete()``, ``insert()`` and upserts.

These statements bypass the unit of work, so the flush hooks never see them. A ``do_orm_execute``
hook on every ``Session`` records them with the same history rows, changes and transaction row:

* ``update(Model).where(...)`` and ``delete(Model).where(...)`` (any ``synchronize_session``): the
  rows the statement may change are read first with its full ORM criteria, locked where the
  backend can (``FOR UPDATE``), the statement runs restricted to their keys, and they are read
  back by key: exactly the rows it changed are recorded (see ``_candidates`` below);
* bulk ``update(Model)`` with a list of dicts (by primary key): the same, by those keys;
* ``insert(Model)`` with a list of dicts or ``.values(...)``, the prefixes ``OR IGNORE`` /
  ``IGNORE`` / ``OR REPLACE`` and the dialect upserts are handed to :mod:`versioning.inserts`,
  which records each row as what the database did to it (an INSERT, an UPDATE, nothing, or for
  ``REPLACE`` a DELETE and an INSERT) or refuses the statement before it runs (see its docstring).

Statements on models that are not versioned are left alone at the cost of one dict lookup.
Statements on a bare ``Connection`` (Core, or ``session.connection().execute(...)``) are not seen:
:func:`versioning.guard_writes` can warn about or refuse them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, CursorResult, Result
from sqlalchemy.orm import ORMExecuteState, Session

from versioning import _compat, bulk_sql, cascades, guard, inserts, live_rows
from versioning.autocommit import refuse_autocommit
from versioning.declaration import ModelSpec, session_spec, versioned_spec
from versioning.errors import VersioningError
from versioning.history_rows import Change
from versioning.live_rows import Key, Rows
from versioning.operation import Operation
from versioning.recording import mark_failed, write_changes, write_staged

__all__: list[str] = []


@event.listens_for(Session, "do_orm_execute")
def _capture(orm: ORMExecuteState) -> Result[Any] | None:
    if not (orm.is_update or orm.is_delete or orm.is_insert):
        return None
    mapper = orm.bind_mapper
    if mapper is None or versioned_spec(mapper) is None:
        return None
    refuse_autocommit(
        orm.session.connection(bind_arguments={**orm.bind_arguments, "mapper": mapper}),
        mapper.class_.__name__,
    )
    spec = session_spec(mapper)
    if spec is None:
        return None
    session = orm.session
    if session.autoflush:
        # SQLAlchemy autoflushes only inside invoke_statement(); the rows read before the
        # statement must already include pending changes, recorded by their own flush.
        session.flush()
    outer = inserts.ran(orm, reset=True)  # a statement run from another's hook: its own flag
    try:
        with guard.writing():
            if orm.is_delete:
                return _delete(orm, spec)
            if orm.is_update:
                return _update(orm, spec)
            return inserts.capture(orm, spec, _connection(orm, spec))
    except BaseException:
        if inserts.ran(orm):
            # The statement ran and then failed, or something failed after it ran (a batch of
            # insertmanyvalues, a row of an executemany): rows it wrote may have no history.
            # Committing them is refused unless a savepoint around the statement rolls back.
            mark_failed(session, spec.model.__name__)
        raise
    finally:
        inserts.ran(orm, reset=True)
        if outer:
            inserts.mark_ran(orm)


def _connection(orm: ORMExecuteState, spec: ModelSpec) -> Connection:
    return orm.session.connection(bind_arguments={**orm.bind_arguments, "mapper": spec.mapper})


# --- update() and delete() -------------------------------------------------------------------
#
# The rows recorded must be exactly the rows the statement changed, with their true old values,
# whatever its criteria (single-table inheritance, with_loader_criteria, LIMIT, volatile
# expressions such as random()) and whatever other transactions commit meanwhile. So:
#
# 1. the candidate rows are read with the statement's full ORM criteria, through the session (an
#    ORM SELECT of the same class with the same options and parameters, as SQLAlchemy's own
#    synchronize_session="fetch" does), locked FOR UPDATE where the backend can;
# 2. the statement runs restricted to those keys (AND pk IN (...)), so it cannot touch a row that
#    was not read and locked: a matching row another transaction commits meanwhile (READ
#    COMMITTED) is simply not touched, as if this statement had run first;
# 3. the keys are read back: for DELETE the rows now gone were deleted, for UPDATE the rows whose
#    values differ were updated. A LIMIT or a volatile WHERE that makes the statement touch only
#    some candidates thus records exactly those.
#
# The same three statements as before (read, write, read back); a DELETE that removed every
# candidate, as its row count shows, needs no read back.
#
# Where versioning.history_sql can express the model's history rows, the rows stay in the
# database (versioning.bulk_sql): step 1 reads only the keys, the rows are copied server-side
# before the statement, and step 3 computes the history rows there instead of reading back.


def _options_of(statement: Any) -> tuple[Any, ...]:
    return _compat.orm_options(statement)


def _candidates(orm: ORMExecuteState, spec: ModelSpec, connection: Connection) -> Rows:
    """The rows the statement may change, read and locked through the session (step 1)."""
    statement: Any = orm.statement
    select = live_rows.orm_select(spec, lock=True, dialect_name=connection.dialect.name)
    select = select.options(*_options_of(statement))
    if statement.whereclause is not None:
        select = select.where(statement.whereclause)
    params = orm.parameters if isinstance(orm.parameters, Mapping) else None
    # Runs the session's do_orm_execute hooks: one that adds with_loader_criteria to every
    # statement adds it here too (ours ignores SELECTs). The execution option lets a hook
    # that filters only reads leave this one alone.
    options = {**orm.local_execution_options, "versioning_pre_read": True}
    rows = orm.session.execute(
        select, params, execution_options=options, bind_arguments=orm.bind_arguments
    )
    return live_rows.from_rows(connection, spec, rows, lock=True)


def _candidate_keys(
    orm: ORMExecuteState, spec: ModelSpec, connection: Connection, stager: bulk_sql.Stager
) -> list[Key]:
    """The keys of the rows the statement may change, read and locked through the session as
    :func:`_candidates` reads the rows (step 1); the read also copies the rows server-side
    (see versioning.bulk_sql.Stager)."""
    statement: Any = orm.statement
    model = spec.model
    columns = [getattr(model, k) for k in spec.pk_keys]
    select = sa.select(*columns)
    if connection.dialect.name != "sqlite":
        select = select.with_for_update().order_by(*columns)
    select = select.options(*_options_of(statement))
    if statement.whereclause is not None:
        select = select.where(statement.whereclause)
    params = orm.parameters if isinstance(orm.parameters, Mapping) else None
    options = {
        **orm.local_execution_options,
        "versioning_pre_read": True,
        bulk_sql.STAGER: stager,
    }
    rows = orm.session.execute(
        select, params, execution_options=options, bind_arguments=orm.bind_arguments
    )
    return [tuple(row) for row in rows]


def _server_side(
    orm: ORMExecuteState, spec: ModelSpec, connection: Connection, statement: Any
) -> Result[Any] | None:
    """Run an ``update().where()`` / ``delete().where()`` with its history rows made by the
    database (see versioning.bulk_sql); ``None`` (nothing run) where the SQL cannot make them,
    or this connection has no stages yet (made at commit for the next statements)."""
    option = orm.execution_options.get(bulk_sql.OPTION)
    if option is None:
        option = connection.get_execution_options().get(bulk_sql.OPTION, False)
    if not option:
        return None  # not switched on (the default, for now: see versioning.bulk_sql)
    plan = bulk_sql.plan_for(spec, connection.dialect)
    if plan is None:
        return None
    if not plan.ready(connection):
        bulk_sql.want(orm.session, plan)
        return None
    stager = bulk_sql.Stager(plan)
    keys = _candidate_keys(orm, spec, connection, stager)
    if keys:
        plan.copy_old(connection, stager, keys)
    result = inserts.invoke(orm, _restricted(statement, spec, keys, connection.dialect))
    if not keys:
        return result
    if statement.is_delete:
        all_gone = (
            isinstance(result, CursorResult)
            and not result.returns_rows
            and connection.dialect.supports_sane_rowcount
            and result.rowcount == len(keys)
        )
        staged = plan.stage_delete(connection, stager.batch, all_gone)
    else:
        staged = plan.stage_update(connection, stager.batch, len(keys))
    if staged is not None:
        write_staged(orm.session, connection, spec, staged)
    return result


def _restricted(statement: Any, spec: ModelSpec, keys: list[Key], dialect: Any) -> Any:
    """The statement limited to the candidate keys (step 2)."""
    columns = [getattr(spec.model, k) for k in spec.pk_keys]
    verb = "DELETE" if statement.is_delete else "UPDATE"
    what = f"this {verb} of {spec.model.__name__}"
    return statement.where(live_rows.keys_in(columns, keys, dialect, what))


def _delete(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
    done = _server_side(orm, spec, connection, orm.statement)
    if done is not None:
        return done
    candidates = _candidates(orm, spec, connection)
    cascade = cascades.before_statement(orm, connection, candidates)  # foreign-key actions
    result = inserts.invoke(
        orm, _restricted(orm.statement, spec, list(candidates), connection.dialect)
    )
    # The rows deleted, with their values as they were when deleted:
    deleted = _deleted(connection, spec, candidates, result)
    changes = [Change(s, None, Operation.DELETE, values, None) for s, values in deleted.values()]
    if cascade is not None:  # what ON DELETE did to versioned children of the rows deleted
        changes += cascade.finish(connection, partial=len(deleted) < len(candidates))
    write_changes(orm.session, changes)
    return result


def _deleted(connection: Connection, spec: ModelSpec, candidates: Rows, result: Any) -> Rows:
    """The candidates the DELETE removed (step 3)."""
    if not candidates:
        return {}
    if (
        isinstance(result, CursorResult)
        and not result.returns_rows
        and connection.dialect.supports_sane_rowcount
        and result.rowcount == len(candidates)
    ):
        return candidates  # every candidate is gone: no need to look
    # Fewer rows than read (a LIMIT, volatile criteria), or a row count we cannot trust (with
    # RETURNING): look. Locked, so that MariaDB reads the rows as they are, not as its
    # REPEATABLE READ snapshot had them (the rows are already ours: nothing waits).
    left = live_rows.by_key_set(connection, spec, list(candidates), lock=True)
    return {key: row for key, row in candidates.items() if key not in left}


def _set_keys(spec: ModelSpec, statement: Any, parameters: Any) -> set[str]:
    """Attribute keys of the columns an UPDATE's ``values()`` (or parameter dict) sets."""
    by_name = {}
    for key, column in spec.mapper.columns.items():
        by_name[key] = key
        by_name[column.key] = key
        by_name[column.name] = key
    by_column = {column: key for key, column in spec.mapper.columns.items()}
    targets = [target for target, _ in _compat.set_clause(statement)]
    if isinstance(parameters, Mapping):
        targets += list(parameters)
    found = set()
    for target in targets:
        if target in by_column:
            found.add(by_column[target])
            continue
        name = getattr(target, "key", target)
        if isinstance(name, str) and name in by_name:
            found.add(by_name[name])
    return found


def _sets_primary_key(spec: ModelSpec, statement: Any, parameters: Any = None) -> bool:
    return bool(_set_keys(spec, statement, parameters) & set(spec.pk_keys))


def _is_default_counter(generator: Any) -> bool:
    # SQLAlchemy's default version_id_generator is a lambda made in Mapper.__init__ (no public
    # name to compare with): ``lambda x: (x or 0) + 1``.
    return (
        getattr(generator, "__module__", None) == "sqlalchemy.orm.mapper"
        and getattr(generator, "__qualname__", "") == "Mapper.__init__.<locals>.<lambda>"
    )


def _bump_version(orm: ORMExecuteState, spec: ModelSpec, statement: Any) -> Any:
    """Add ``version = version + 1`` to an UPDATE ... WHERE of a model with a version counter.

    The unit of work trusts the session's values of such a model (a stale object fails its own
    UPDATE with StaleDataError), but SQLAlchemy's bulk UPDATE does not bump the counter: an
    object loaded before it would then pass the check and record stale values. Bumped, it
    fails as optimistic locking promises; with synchronize_session the session sees the new
    counter.
    """
    mapper = spec.mapper
    column = mapper.version_id_col
    if column is None:
        return statement
    key = mapper.get_property_by_column(column).key
    if key in _set_keys(spec, statement, orm.parameters):
        return statement
    generator = mapper.version_id_generator
    if generator is False:
        return statement  # the database bumps it (server-side version counter)
    name = spec.model.__name__
    if not _is_default_counter(generator):
        raise VersioningError(
            f"an UPDATE statement on {name} must set its version column {key!r}: {name} has a "
            f"custom version_id_generator, which a bulk UPDATE does not call, so objects loaded "
            f"before it would pass the optimistic-locking check with stale values. Add "
            f".values({key}=...) with the next version, or update through the unit of work; "
            f"nothing was executed"
        )
    attribute = getattr(spec.model, key)
    try:
        return statement.values({attribute: attribute + 1})
    except sa.exc.ArgumentError as error:  # ordered values cannot be extended
        raise VersioningError(
            f"cannot add the version counter {name}.{key} to this UPDATE ({error}): set "
            f"{key}={name}.{key} + 1 in the statement yourself; nothing was executed"
        ) from error


def _update(orm: ORMExecuteState, spec: ModelSpec) -> Result[Any]:
    connection = _connection(orm, spec)
    statement: Any = orm.statement
    parameters = orm.parameters
    bulk = parameters if isinstance(parameters, list) and parameters else None
    # A parameter dict given with an UPDATE ... WHERE sets the columns it names, like values().
    if _sets_primary_key(spec, statement, parameters if bulk is None else None):
        raise VersioningError(
            f"an UPDATE statement that sets the primary key of {spec.model.__name__} cannot be "
            f"versioned: the record could not be followed to its new key. Change keys through "
            f"the unit of work (obj.id = ...; session.flush()); nothing was executed"
        )
    if bulk is not None:
        # Bulk UPDATE by primary key: the rows are the ones the dicts name (SQLAlchemy checks
        # and bumps a version counter itself there). Read by key alone, a superset of what any
        # extra criteria let it touch; the read back below tells which really changed.
        keys = [_key_of(spec, row) for row in bulk]
        if any(key is None for key in keys):
            return orm.invoke_statement()  # SQLAlchemy refuses a bulk update without keys
        candidates = live_rows.by_key_set(
            connection, spec, [k for k in keys if k is not None], lock=True
        )
        cascade = cascades.before_statement(orm, connection, candidates)  # foreign-key actions
        result = inserts.invoke(orm)
    else:
        statement = _bump_version(orm, spec, statement)
        done = _server_side(orm, spec, connection, statement)
        if done is not None:
            return done
        candidates = _candidates(orm, spec, connection)
        cascade = cascades.before_statement(orm, connection, candidates)  # foreign-key actions
        restricted = _restricted(statement, spec, list(candidates), connection.dialect)
        result = inserts.invoke(orm, restricted)
    # Locked: MariaDB then reads the rows as they are, not as an older snapshot had them.
    after = live_rows.by_key_set(connection, spec, list(candidates), lock=True)
    # The rows updated, with old and new values (a candidate left as it was records nothing):
    updated: dict[Key, tuple[ModelSpec, dict[str, Any], dict[str, Any]]] = {}
    for key, (_, old) in candidates.items():
        found = after.get(key)
        if found is None:
            raise VersioningError(
                f"an UPDATE of {spec.model.__name__} changed or removed the primary key {key!r}; "
                f"versioning cannot follow the record: change keys through the ORM unit of work "
                f"(obj.id = ...; session.flush())"
            )
        updated[key] = (found[0], old, found[1])
    changes = [Change(s, None, Operation.UPDATE, old, new) for s, old, new in updated.values()]
    if cascade is not None:  # what ON UPDATE did to versioned children of the rows updated
        # Some candidates may be left as they were (criteria, LIMIT): children are read back.
        changes += cascade.finish(connection, partial=True)
    write_changes(orm.session, changes)
    return result


def _key_of(spec: ModelSpec, row: Mapping[Any, Any]) -> Key | None:
    try:
        return tuple(row[k] for k in spec.pk_keys)
    except KeyError:
        return None
