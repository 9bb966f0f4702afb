"""Foreign-key actions: recording what the database itself does to versioned rows.

A foreign key with ``ondelete="CASCADE"``, ``"SET NULL"`` or ``"SET DEFAULT"`` (or the same
``onupdate``) makes the database delete or change child rows when a parent row is deleted or its
referenced key changes. The ORM does not see those writes (with ``passive_deletes=True`` it does
not even load the children), so history must be taken here:

* before the parent's statement runs, the child rows it will reach are read, one ``SELECT`` per
  child table and level (grandchildren are followed the same way), locked where the backend can;
* after it, deleted children are recorded as DELETE versions with the values read; children set
  to NULL as UPDATE versions of the values read with those columns NULL; other changed children
  (``SET DEFAULT``, ``ON UPDATE CASCADE``) are read back by key (one ``SELECT`` per child table),
  so that their UPDATE versions hold what the database stored.

The foreign keys are known from the declaration (:class:`versioning.declaration.CascadeEdge`, on
the referenced table); a foreign key with an action from a table that is not versioned into a
versioned one is refused there. A parent write whose tables have no such foreign key costs one
dict lookup per table and no query. A connection can switch the actions off (SQLite without
``PRAGMA foreign_keys=ON``, MariaDB ``foreign_key_checks=0``, PostgreSQL
``session_replication_role=replica``): that is read when child rows were reached, and then
nothing is recorded, because nothing happens.

Objects in the session that the database deleted or changed this way are left as SQLAlchemy
leaves them with ``passive_deletes=True``/``passive_updates=True``: they are expired at commit and
a deleted one raises ``ObjectDeletedError`` when loaded again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, Session, UOWTransaction

from versioning import _compat, live_rows
from versioning.declaration import (
    CascadeEdge,
    ModelSpec,
    Versioned,
    cascade_edges,
    versioned_spec,
)
from versioning.errors import VersioningError
from versioning.history_rows import Change
from versioning.live_rows import Key, Rows
from versioning.operation import Operation
from versioning.recording import write_changes

__all__ = ["Plan", "before_statement", "edges", "install", "plan"]

_CHUNK = 500
_CASCADE = "CASCADE"
_SET_NULL = "SET NULL"
#: ``Session.info`` key: the cascade bookkeeping of the running flush.
_FLUSH = "_versioning_cascades"

#: What a frontier row went through: ``None`` for deleted, else the columns that changed.
_Changed = frozenset[sa.Column[Any]] | None


def edges(mapper: Mapper[Any]) -> list[CascadeEdge]:
    """The foreign keys with a database-side action that reference ``mapper``'s tables."""
    out: list[CascadeEdge] = []
    for table in mapper.tables:
        # A child captured by the database: its own triggers record what the action does.
        out.extend(edge for edge in cascade_edges(table) if edge.child.capture == "session")
    return out


def _enforced(connection: Connection) -> bool:
    """Whether the database performs foreign-key actions on this connection right now.

    Each can be switched off per connection, between transactions or within one: SQLite's
    ``PRAGMA foreign_keys``, MariaDB's ``foreign_key_checks``, PostgreSQL's
    ``session_replication_role = replica`` (foreign-key triggers do not fire). Asked only once a
    parent write has reached child rows, so this read costs nothing on the common path.
    """
    name = connection.dialect.name
    if name == "sqlite":
        return bool(connection.exec_driver_sql("PRAGMA foreign_keys").scalar())
    if name in ("mysql", "mariadb"):
        return bool(int(connection.exec_driver_sql("SELECT @@foreign_key_checks").scalar() or 0))
    if name == "postgresql":
        role = connection.exec_driver_sql("SELECT current_setting('session_replication_role')")
        return role.scalar() != "replica"
    return True


class Plan:
    """The child rows a parent statement reaches, read before it; :meth:`finish` after it."""

    __slots__ = ("deleted", "updated")

    def __init__(self) -> None:
        #: (history table, key) -> (spec of the row, values before).
        self.deleted: dict[tuple[sa.Table, Key], tuple[ModelSpec, dict[str, Any]]] = {}
        #: (history table, key) -> (spec, key, values before, values after if known without
        #: reading the row back: SET NULL; else None).
        self.updated: dict[
            tuple[sa.Table, Key], tuple[ModelSpec, Key, dict[str, Any], dict[str, Any] | None]
        ] = {}

    def __bool__(self) -> bool:
        return bool(self.deleted or self.updated)

    def finish(self, connection: Connection, partial: bool = False) -> list[Change]:
        """The history of what the statement did to the child rows (it has run by now).

        ``partial``: the statement may have left some of the parents it was planned for
        untouched (a LIMIT, volatile criteria), so every child is read back: one still there was
        not deleted, one left as it was records nothing (``write_changes`` drops it).
        """
        if partial and self.deleted:
            by_spec: dict[ModelSpec, list[Key]] = {}
            for (_, key), (spec, _) in self.deleted.items():
                by_spec.setdefault(spec, []).append(key)
            for spec, keys in by_spec.items():
                for key in live_rows.by_keys(connection, spec, keys, lock=False):
                    del self.deleted[(spec.history, key)]
        changes = [
            Change(spec, None, Operation.DELETE, values, None)
            for spec, values in self.deleted.values()
        ]
        wanted: dict[ModelSpec, list[Key]] = {}
        for spec, key, _, known in self.updated.values():
            if known is None or partial:
                wanted.setdefault(spec, []).append(key)
        after: dict[tuple[sa.Table, Key], tuple[ModelSpec, dict[str, Any]]] = {}
        for spec, keys in wanted.items():
            for key, found in live_rows.by_keys(connection, spec, keys, lock=False).items():
                after[(spec.history, key)] = found
        for ident, (spec, key, before, known) in self.updated.items():
            if known is not None and not partial:
                changes.append(Change(spec, None, Operation.UPDATE, before, known))
                continue
            now = after.get(ident)
            if now is None:
                raise VersioningError(
                    f"cannot record what a foreign key action did to {spec.model.__name__} "
                    f"{key!r}: the row is no longer there. Nothing was committed"
                )
            changes.append(Change(now[0], None, Operation.UPDATE, before, now[1]))
        self.deleted.clear()
        self.updated.clear()
        return changes


def _key_of(spec: ModelSpec, column: sa.Column[Any]) -> str | None:
    """The attribute key of a versioned column of ``spec`` (``None`` if not versioned)."""
    for key, own in spec.live_columns.items():
        if own is column:
            return key
    return None


def _in(columns: tuple[sa.ColumnElement[Any], ...], values: Any) -> sa.ColumnElement[bool]:
    if len(columns) == 1:
        if isinstance(values, list):
            return columns[0].in_([value[0] for value in values])
        return columns[0].in_(values)
    return sa.tuple_(*columns).in_(values)


def _children(connection: Connection, spec: ModelSpec, keys: list[Key], edge: CascadeEdge) -> Rows:
    """The rows of ``edge``'s child table that reference the rows of ``spec`` with ``keys``."""
    pk_columns = tuple(spec.mapper.primary_key)
    direct = edge.parent_columns == pk_columns
    found: Rows = {}
    for i in range(0, len(keys), _CHUNK):
        chunk = keys[i : i + _CHUNK]
        if direct:
            chunk = [key for key in chunk if None not in key]
            if not chunk:
                continue
            where = _in(edge.child_columns, chunk)
        else:  # references another unique key: read it from the parent rows, which still exist
            referenced = (
                sa.select(*edge.parent_columns)
                .select_from(spec.mapper.persist_selectable)
                .where(_in(pk_columns, chunk))
            )
            where = _in(edge.child_columns, referenced)
        found.update(live_rows.by_where(connection, edge.child, where, lock=True))
    return found


def plan(
    connection: Connection,
    parents: Iterable[tuple[ModelSpec, list[Key], _Changed]],
    skip: Any = None,
) -> Plan | None:
    """Read the rows the database will delete or change when ``parents`` are written.

    ``parents`` holds, per spec, the keys of rows about to be deleted (``None``) or to have the
    given columns changed. Call before the statement; ``None`` when nothing will cascade.
    ``skip(spec, key)`` tells rows the caller records itself.
    """
    frontier = [(spec, keys, changed) for spec, keys, changed in parents if keys]
    if not frontier:
        return None
    # The statement's own rows are recorded by the statement, even where one references another.
    own = {(spec.history, key) for spec, keys, _ in frontier for key in keys}
    result = Plan()
    while frontier:
        deleted: dict[ModelSpec, list[Key]] = {}
        updated: dict[tuple[ModelSpec, frozenset[sa.Column[Any]]], list[Key]] = {}
        for spec, keys, changed in frontier:
            for edge in edges(spec.mapper):
                if changed is None:
                    action = edge.ondelete
                elif edge.onupdate is not None and not changed.isdisjoint(edge.parent_columns):
                    action = edge.onupdate
                else:
                    action = None
                if action is None:
                    continue
                for key, (row_spec, values) in _children(connection, spec, keys, edge).items():
                    ident = (row_spec.history, key)
                    if ident in own or ident in result.deleted:
                        continue
                    if skip is not None and skip(row_spec, key):
                        continue
                    if action == _CASCADE and changed is None:
                        result.updated.pop(ident, None)
                        result.deleted[ident] = (row_spec, values)
                        deleted.setdefault(row_spec, []).append(key)
                    else:
                        entry = result.updated.get(ident)
                        known = entry[3] if entry is not None else dict(values)
                        if known is not None and action == _SET_NULL:
                            # NULL is stored as NULL: no need to read the row back.
                            for column in edge.child_columns:
                                attr = _key_of(row_spec, column)
                                if attr is not None:
                                    known[attr] = None
                        else:  # SET DEFAULT, ON UPDATE CASCADE: read back what was stored
                            known = None
                        result.updated[ident] = (row_spec, key, values, known)
                        if entry is None:
                            columns = frozenset(edge.child_columns)
                            updated.setdefault((row_spec, columns), []).append(key)
        frontier = [(spec, keys, None) for spec, keys in deleted.items()]
        frontier += [(spec, keys, columns) for (spec, columns), keys in updated.items()]
    if not result or not _enforced(connection):
        return None  # nothing reached, or the database will not act: nothing to record
    return result


# --- ORM-enabled statements (versioning.statements) ------------------------------------------


def _set_columns(spec: ModelSpec, orm: ORMExecuteState) -> frozenset[sa.Column[Any]]:
    """The columns an UPDATE statement sets (by attribute key, column name or column)."""
    statement: Any = orm.statement
    targets: list[Any] = [target for target, _ in _compat.set_clause(statement)]
    parameters = orm.parameters
    rows = parameters if isinstance(parameters, list) else [parameters] if parameters else []
    for row in rows:
        if isinstance(row, Mapping):
            targets.extend(row)
    mapper = spec.mapper
    attrs = mapper.column_attrs
    by_name = {column.name: column for column in mapper.columns}
    out: set[sa.Column[Any]] = set()
    for target in targets:
        if isinstance(target, sa.Column):
            out.add(target)
            continue
        name = getattr(target, "key", target)
        if isinstance(name, str):
            if name in attrs:
                out.update(c for c in attrs[name].columns if isinstance(c, sa.Column))
            elif name in by_name:
                out.add(by_name[name])
    return frozenset(out)


def before_statement(orm: ORMExecuteState, connection: Connection, rows: Rows) -> Plan | None:
    """The cascade plan of a ``delete()``/``update()``/upsert about to change ``rows``."""
    by_spec: dict[ModelSpec, list[Key]] = {}
    for key, (spec, _) in rows.items():
        if edges(spec.mapper):
            by_spec.setdefault(spec, []).append(key)
    if not by_spec:
        return None
    if orm.is_insert:
        effect = _insert_effect(orm.statement)
        if effect is False:
            return None
        parents = [
            (spec, keys, None if effect is None else _all_columns(spec))
            for spec, keys in by_spec.items()
        ]
        return plan(connection, parents)
    if orm.is_delete:
        return plan(connection, [(spec, keys, None) for spec, keys in by_spec.items()])
    parents = [(spec, keys, _set_columns(spec, orm)) for spec, keys in by_spec.items()]
    return plan(connection, [p for p in parents if p[2]])


def _all_columns(spec: ModelSpec) -> frozenset[sa.Column[Any]]:
    return frozenset(c for c in spec.mapper.columns if isinstance(c, sa.Column))


def _insert_effect(statement: Any) -> bool | None:
    """What an INSERT does to an existing row it meets: ``None`` deletes it (SQLite
    ``INSERT OR REPLACE``, which performs ON DELETE actions), ``True`` may update it (an upsert:
    its SET clause may change a referenced key; children are read back, so a guess costs only a
    read), ``False`` nothing."""
    for prefix, _ in _compat.prefixes(statement):
        if "REPLACE" in str(prefix).upper():
            return None
    return _compat.post_values_clause(statement) is not None


# --- the unit of work ------------------------------------------------------------------------


class _Flush:
    """What the running flush planned: parents already read, plans waiting for their statement."""

    __slots__ = ("changes", "context", "pending", "planned")

    def __init__(self, context: UOWTransaction) -> None:
        self.context = context
        self.planned: set[InstanceState[Any]] = set()
        self.pending: list[tuple[Plan, Connection]] = []
        self.changes: list[Change] = []


def _start_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    session.info[_FLUSH] = _Flush(flush_context)


def _per_state(context: UOWTransaction) -> bool:
    # With a dependency cycle the unit of work writes state by state: a row is read just before
    # its own statement rather than with its mapper's batch.
    return _compat.has_cycles(context)


def _changed_columns(state: InstanceState[Any]) -> frozenset[sa.Column[Any]]:
    attrs = state.mapper.column_attrs
    return frozenset(
        column
        for key in state.committed_state
        if key in attrs
        for column in attrs[key].columns
        if isinstance(column, sa.Column)
    )


def _row_switch(state: InstanceState[Any], context: UOWTransaction) -> bool:
    """Whether a new object takes the key of a row this flush deletes: the unit of work then
    UPDATEs that row ("row switch") instead of a DELETE and an INSERT."""
    obj = state.obj()
    session = state.session
    if obj is None or session is None:
        return False
    key = state.mapper.primary_key_from_instance(obj)
    if any(value is None for value in key):
        return False
    existing = session.identity_map.get(state.mapper.identity_key_from_primary_key(tuple(key)))
    if existing is None:
        return False
    entry = context.states.get(sa.inspect(existing))
    return entry is not None and entry[0]


def _before_write(connection: Connection, state: InstanceState[Any], deleting: bool) -> None:
    found = edges(state.mapper)
    if not any((e.ondelete if deleting else e.onupdate) is not None for e in found):
        return
    session = state.session
    flush: _Flush | None = session.info.get(_FLUSH) if session is not None else None
    if flush is None or state in flush.planned:
        return
    context = flush.context
    if state.key is None and not _row_switch(state, context):
        return
    if _per_state(context) or state.key is None:
        batch = [state]
    else:  # every row of the mapper's batch, before the first of its statements runs
        batch = [
            s
            for s in context.states_for_mapper_hierarchy(state.mapper, deleting, False)  # type: ignore[no-untyped-call]
            if s.key is not None and s not in flush.planned
        ]
    flush.planned.update(batch)
    parents: dict[tuple[ModelSpec, _Changed], list[Key]] = {}
    for s in batch:
        spec = versioned_spec(s.mapper)
        if spec is None:  # pragma: no cover - only versioned mappers are listened to
            continue
        if s.key is not None:
            key = tuple(s.key[1])
            changed = None if deleting else _changed_columns(s)
        else:  # a row switch may set any column of the row
            key = tuple(s.mapper.primary_key_from_instance(s.obj()))
            changed = frozenset(c for c in s.mapper.columns if isinstance(c, sa.Column))
        if changed is not None and not changed:
            continue
        parents.setdefault((spec, changed), []).append(key)
    if not parents:
        return
    if connection.dialect.name != "sqlite":
        for spec, _ in parents:
            if spec.trusts_session:
                # The capture reads (and locks) the parents of other mappers before the flush;
                # these it trusts, so lock them here: no child may be added under them now.
                keys = [k for (s, _), ks in parents.items() if s is spec for k in ks]
                live_rows.by_keys(connection, spec, keys, lock=True)

    def skip(spec: ModelSpec, key: Key) -> bool:
        """Rows this flush deletes itself (after its own DELETE they are not read again)."""
        identity = spec.mapper.identity_key_from_primary_key(tuple(key))
        obj = session.identity_map.get(identity) if session is not None else None
        if obj is None:
            return False
        entry = context.states.get(sa.inspect(obj))
        return entry is not None and entry[0] and not entry[1]

    found_plan = plan(
        connection, [(spec, keys, changed) for (spec, changed), keys in parents.items()], skip
    )
    if found_plan is not None:
        flush.pending.append((found_plan, connection))


def _finish(flush: _Flush) -> None:
    for pending, connection in flush.pending:
        flush.changes.extend(pending.finish(connection))
    flush.pending.clear()


def _after_write(state: InstanceState[Any]) -> None:
    session = state.session
    flush: _Flush | None = session.info.get(_FLUSH) if session is not None else None
    if flush is None or not flush.pending:
        return
    # The after_* hooks run once every statement of the batch has: what was planned happened.
    _finish(flush)


def _before_delete(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _before_write(connection, state, deleting=True)


def _before_update(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _before_write(connection, state, deleting=False)


def _after(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _after_write(state)


def _end_flush(session: Session, flush_context: UOWTransaction) -> None:
    flush: _Flush | None = session.info.pop(_FLUSH, None)
    if flush is None:
        return
    _finish(flush)  # normally done by an after_* hook already; by now every statement has run
    if flush.changes:
        write_changes(session, flush.changes)


def _flush_failed(session: Session, previous_transaction: object) -> None:
    session.info.pop(_FLUSH, None)


_installed = False


def install() -> None:
    """Install the unit-of-work hooks, once: when the first foreign key with an action between
    versioned tables is configured (so an application without one pays nothing per flush), and
    so after the capture's own hooks, which read and lock a parent's row before these run."""
    global _installed
    if _installed:
        return
    _installed = True
    event.listen(Session, "before_flush", _start_flush)
    event.listen(Session, "after_flush", _end_flush)
    event.listen(Session, "after_soft_rollback", _flush_failed)
    for name, fn in (
        ("before_insert", _before_update),  # a row switch (see _row_switch) is an UPDATE
        ("before_delete", _before_delete),
        ("before_update", _before_update),
        ("after_insert", _after),
        ("after_delete", _after),
        ("after_update", _after),
    ):
        event.listen(Versioned, name, fn, propagate=True, raw=True)
