"""Capturing changes: the session and mapper hooks that write history rows.

Listens on every ``Session`` (no per-session setup). The work is proportional to what a flush
changes, never to how many objects the session holds:

* ``before_flush`` reads the current row of every versioned record the flush updates (a versioned
  column changed) or deletes, in one ``SELECT`` per mapper, table by table in the order the unit
  of work writes them, locking the rows where the backend can: values the session loaded earlier
  may be stale. Only a mapper with a ``version_id_col`` trusts its session (a stale row fails its
  UPDATE); its records are read only when the session lacks some of their values;
* ``before_update`` / ``before_delete`` (per record, no I/O in the common case) note each record's
  values as they were before the flush; a record the flush itself changed after ``before_flush``
  is read then. This per-flush state is capture's own (:class:`_FlushState`), dropped when the
  flush ends;
* ``after_flush`` compares before and after and hands the changes to
  :mod:`versioning.recording`, which writes their history rows with the transaction row when the
  database transaction commits. Rows written with a value the database may store differently (see
  :mod:`versioning.stored`) or left unloaded are read back first, in one ``SELECT`` per mapper.

Everything runs on the flush's own connection, inside its transaction: history and data commit or
roll back together.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Mapper, Session, UOWTransaction
from sqlalchemy.orm.base import NO_VALUE

from versioning import cascades, guard, live_rows, stored, trusted
from versioning.autocommit import refuse_autocommit
from versioning.declaration import ModelSpec, Versioned, session_spec
from versioning.errors import VersioningError
from versioning.history_rows import Change
from versioning.operation import Operation
from versioning.recording import write_changes

__all__: list[str] = []

_NOTHING: frozenset[str] = frozenset()

#: ``Session.info`` key: the running flush's :class:`_FlushState`.
_FLUSH_STATE = "_versioning_flush_state"


@dataclass(eq=False)
class _FlushState:
    """What capture learns about records during one flush. Dropped when the flush ends."""

    #: Values of versioned records loaded before the flush (batched), by state.
    pre_images: dict[InstanceState[Any], dict[str, Any]] = field(default_factory=dict)
    #: Values before the flush of each record being updated or deleted.
    before: dict[InstanceState[Any], dict[str, Any]] = field(default_factory=dict)
    #: Versioned attributes each of those records had changed when its UPDATE was prepared.
    changed: dict[InstanceState[Any], frozenset[str]] = field(default_factory=dict)
    #: Records this flush updates or deletes whose row was not in the database when read.
    missing: set[InstanceState[Any]] = field(default_factory=set)


def _flush_state(session: Session) -> _FlushState:
    state: _FlushState | None = session.info.get(_FLUSH_STATE)
    if state is None:
        state = session.info[_FLUSH_STATE] = _FlushState()
    return state


def _trusts(state: InstanceState[Any], spec: ModelSpec, session: Session) -> bool:
    """Whether the session's values of the record are its row's: a mapper with a
    ``version_id_col`` (a stale row would fail its UPDATE), or values the database guarantees
    current for this transaction (see :mod:`versioning.trusted`)."""
    if spec.trusts_session:
        return True
    # A record with versioned children cascaded by the database keeps its locked read: the
    # lock also keeps new children from being added under it (see versioning.cascades).
    return trusted.is_current(state, session) and not _cascades(state.mapper)


def _cascades(mapper: Mapper[Any]) -> bool:
    return any(e.ondelete is not None or e.onupdate is not None for e in cascades.edges(mapper))


def _needs_pre_image(
    state: InstanceState[Any], spec: ModelSpec, deleting: bool, session: Session
) -> bool:
    """Whether this flush must read the record's current row before writing it.

    Values a session loaded earlier may be stale — another transaction may have committed a
    change since — so the row being updated or deleted is read (and locked) first, unless the
    session can be trusted (see :func:`_trusts`).
    """
    committed = state.committed_state
    loaded = state.dict
    if deleting:
        if not _trusts(state, spec, session):
            return True
        return any(committed.get(key, loaded.get(key, NO_VALUE)) is NO_VALUE for key in spec.attrs)
    changed = False
    for key, original in committed.items():
        if key in spec.attr_set:
            if original is NO_VALUE:
                return True
            changed = True
    if not changed:
        return False
    if not _trusts(state, spec, session):
        return True
    return any(key not in loaded and key not in committed for key in spec.attrs)


def _load_rows(
    connection: Connection,
    spec: ModelSpec,
    states: Sequence[tuple[tuple[Any, ...], InstanceState[Any]]],
    lock: bool,
) -> dict[InstanceState[Any], dict[str, Any]]:
    """Current values of the versioned columns of ``states`` (identity, state), batched."""
    rows = live_rows.by_keys(connection, spec, [identity for identity, _ in states], lock)
    out: dict[InstanceState[Any], dict[str, Any]] = {}
    for identity, state in states:
        found = rows.get(identity)
        if found is not None:
            out[state] = found[1]
    return out


def _identity(state: InstanceState[Any], spec: ModelSpec) -> tuple[Any, ...]:
    """The key the record has in the database before this flush."""
    if state.key is not None:
        return tuple(state.key[1])
    return tuple(state.dict.get(k) for k in spec.pk_keys)


def _new_identity(state: InstanceState[Any], spec: ModelSpec) -> tuple[Any, ...]:
    """The key the record has after this flush (a primary key may have been changed)."""
    loaded = state.dict
    if all(k in loaded for k in spec.pk_keys):
        return tuple(loaded[k] for k in spec.pk_keys)
    return _identity(state, spec)


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    state_of = sa.inspect
    session.info[_AUTOCOMMIT_CHECKED] = set()
    wanted: dict[Mapper[Any], list[tuple[tuple[Any, ...], InstanceState[Any]]]] = {}
    for objects, deleting in ((session.dirty, False), (session.deleted, True)):
        for obj in objects:
            state: InstanceState[Any] = state_of(obj)
            spec = session_spec(state.mapper)
            if (
                spec is not None
                and state.key is not None
                and _needs_pre_image(state, spec, deleting, session)
            ):
                wanted.setdefault(state.mapper, []).append((_identity(state, spec), state))
    session.info.pop(_FLUSH_STATE, None)  # what a previous (failed) flush left
    if not wanted:
        return
    tracker = _flush_state(session)
    # Lock rows table by table in the order the unit of work writes them (dependencies first).
    ordered = (
        sorted(wanted.items(), key=_write_order(wanted)) if len(wanted) > 1 else wanted.items()
    )
    for mapper, states in ordered:
        spec = session_spec(mapper)
        assert spec is not None
        connection = session.connection(bind_arguments={"mapper": mapper})
        found = _load_rows(connection, spec, states, lock=True)
        tracker.pre_images.update(found)
        if len(found) < len(states):  # deleted underneath the session: see _note_before
            tracker.missing.update(state for _, state in states if state not in found)


def _write_order(mappers: Iterable[Mapper[Any]]) -> Callable[[tuple[Mapper[Any], Any]], int]:
    """Sort key: the position of a mapper's table in its MetaData's dependency order."""
    position: dict[Any, int] = {}
    for mapper in mappers:
        metadata = getattr(mapper.local_table, "metadata", None)
        if metadata is not None and mapper.local_table not in position:
            position.update({t: i for i, t in enumerate(metadata.sorted_tables)})
    return lambda item: position.get(item[0].local_table, 0)


def _before_values(
    state: InstanceState[Any], spec: ModelSpec, pre_image: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The record's versioned values before this flush, or ``None`` if some are not known.

    The row read from the database wins; the session's own values serve only where they can be
    trusted (see :func:`_trusts`), with what the database stored for values a flush of this
    session sent and the database kept otherwise.
    """
    if pre_image is not None:
        return dict(pre_image)
    session = state.session
    if session is None or not _trusts(state, spec, session):
        return None
    committed = state.committed_state
    loaded = state.dict
    out: dict[str, Any] = {}
    for key in spec.attrs:
        if key in committed:
            value = committed[key]
            if value is NO_VALUE:
                return None
        elif key in loaded:
            value = loaded[key]
        else:
            return None
        out[key] = value
    return _stored_before(state, out) if _stored_values else out


def _note_before(state: InstanceState[Any], connection: Connection, deleting: bool) -> None:
    spec = session_spec(state.mapper)
    if spec is None:  # captured by the database's triggers
        return
    changed = frozenset(key for key in state.committed_state if key in spec.attr_set)
    if not deleting and not changed:
        return  # nothing versioned changes: only excluded columns or relationships
    session = state.session
    assert session is not None
    tracker = _flush_state(session)
    if state in tracker.missing:
        # Another transaction deleted the row: as without versioning, the UPDATE matches no row
        # and SQLAlchemy raises StaleDataError (for a DELETE it warns); nothing is recorded.
        if deleting:
            _watch_deletes(session, connection)
        return
    before = _before_values(state, spec, tracker.pre_images.get(state))
    if before is None:
        # Changed by code that ran after before_flush (e.g. a foreign key set by the flush
        # itself) and not fully loaded: read this one row now.
        rows = _load_rows(connection, spec, [(_identity(state, spec), state)], lock=True)
        row = rows.get(state)
        if row is None:
            tracker.missing.add(state)
            if deleting:
                _watch_deletes(session, connection)
            return
        before = _before_values(state, spec, row)
        if before is None:  # pragma: no cover - a row read holds every versioned column
            raise VersioningError(
                f"cannot read the current row of {spec.model.__name__} "
                f"{_identity(state, spec)!r} to record its history"
            )
    tracker.before[state] = before
    tracker.changed[state] = changed


_WATCH = "_versioning_delete_watch"


class _DeleteWatch:
    """Counts the rows this flush's DELETE statements match, table by table, on one connection.

    Only while the flush deletes a record whose row was not there when read (see _note_before):
    its DELETE should match nothing. Should it match a row after all (re-created by another
    transaction in between, which PostgreSQL's missing-row lock cannot prevent), that row would
    be deleted unrecorded; the count tells (_check_deletes).
    """

    __slots__ = ("connection", "matched")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.matched: dict[Any, int] = {}
        event.listen(connection, "after_cursor_execute", self.count)

    def count(
        self,
        conn: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if context is None or not context.isdelete or context.compiled is None:
            return
        table = getattr(context.compiled.statement, "table", None)
        if table is None:
            return
        rowcount = cursor.rowcount
        known = self.matched.get(table, 0)
        self.matched[table] = -1 if rowcount < 0 or known < 0 else known + rowcount

    def stop(self) -> None:
        event.remove(self.connection, "after_cursor_execute", self.count)


def _watch_deletes(session: Session, connection: Connection) -> None:
    watches: dict[Connection, _DeleteWatch] = session.info.setdefault(_WATCH, {})
    if connection not in watches:
        watches[connection] = _DeleteWatch(connection)


def _stop_watching(session: Session) -> dict[Any, int]:
    """Stop counting; the rows matched by table (-1: the driver did not say)."""
    watches: dict[Connection, _DeleteWatch] | None = session.info.pop(_WATCH, None)
    matched: dict[Any, int] = {}
    for watch in (watches or {}).values():
        watch.stop()
        matched.update(watch.matched)
    return matched


def _check_deletes(
    flush_context: UOWTransaction, missing: set[InstanceState[Any]], matched: dict[Any, int]
) -> None:
    """Refuse a flush whose DELETE removed a row the library found missing (see _DeleteWatch)."""
    for table, count in matched.items():
        if count < 0:
            continue
        expected = gone = 0
        for state, (deleting, listonly) in flush_context.states.items():
            if deleting and not listonly and table in state.mapper.tables:
                expected += 1
                gone += state in missing
        if gone and count > expected - gone:
            raise VersioningError(
                f"a row of {table.name!r} that was not in the database when this flush read it "
                f"was re-created by another transaction and then deleted by this flush, so its "
                f"values are unknown; the flush was rolled back: roll back and retry"
            )


def _mark_flush(state: InstanceState[Any], connection: Connection) -> None:
    """Let :func:`versioning.guard_writes` recognise this flush's own statements; refuse the
    first versioned write of the flush on each connection that autocommits (see
    :mod:`versioning.autocommit`), before its statement runs."""
    session = state.session
    guard.mark_flush(session)
    checked: set[Connection] | None = session.info.get(_AUTOCOMMIT_CHECKED) if session else None
    if checked is None or connection not in checked:
        refuse_autocommit(connection, state.class_.__name__)
        if checked is not None:
            checked.add(connection)


#: ``Session.info`` key: the connections of the current flush checked for autocommit.
_AUTOCOMMIT_CHECKED = "versioning_autocommit_checked"


def _before_insert(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _mark_flush(state, connection)


def _before_update(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _mark_flush(state, connection)
    _note_before(state, connection, deleting=False)


def _before_delete(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    _mark_flush(state, connection)
    _note_before(state, connection, deleting=True)


event.listen(Versioned, "before_insert", _before_insert, propagate=True, raw=True)
event.listen(Versioned, "before_update", _before_update, propagate=True, raw=True)
event.listen(Versioned, "before_delete", _before_delete, propagate=True, raw=True)


def _after_values(
    state: InstanceState[Any],
    spec: ModelSpec,
    before: dict[str, Any] | None,
    changed: frozenset[str],
    checks: dict[str, stored.Check],
) -> tuple[dict[str, Any], bool]:
    """Values after the flush; the flag says some must still be read from the database.

    A column the flush did not write keeps its value from before (the row as read, not what the
    session may hold from an older snapshot); a written one is what the session sent, unless it
    is no longer loaded (a SQL expression, a server-side ``onupdate``) or the database may have
    stored it differently (see :mod:`versioning.stored`): then it is read back.
    """
    loaded = state.dict
    out: dict[str, Any] = {}
    missing = False
    for key in spec.attrs:
        if before is not None and key not in changed and key not in spec.refresh_on_update:
            out[key] = before[key]
        elif key in loaded:
            value = out[key] = loaded[key]
            if missing or value is None:
                continue
            check = checks.get(key)
            if check is None:
                continue
            if check.__class__ is type:  # the common case, inline: the value's exact type
                missing = value.__class__ is not check
            else:
                missing = not stored.is_stored_as_sent(check, value)
        else:
            missing = True
    return out, missing


def _stored_before(state: InstanceState[Any], before: dict[str, Any]) -> dict[str, Any]:
    """``before`` with values the session sent earlier replaced by what the database stored.

    Only a mapper that trusts its session takes old values from it; after a flush the session
    holds the value sent (SQLAlchemy's behaviour), which the database may have rounded.
    """
    known = _stored_values.get(state)
    if known:
        for key, (sent, kept) in known.items():
            if key in before and before[key] is sent:
                before[key] = kept
    return before


#: Per record: values its last flush sent that the database stored differently (sent, stored).
_stored_values: weakref.WeakKeyDictionary[InstanceState[Any], dict[str, tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    guard.end_flush(session)
    tracker: _FlushState | None = session.info.get(_FLUSH_STATE)
    if _WATCH in session.info:
        _check_deletes(
            flush_context, tracker.missing if tracker else set(), _stop_watching(session)
        )
    before_map = tracker.before if tracker is not None else {}
    deletes: list[Change] = []
    updates: list[Change] = []
    inserts: list[Change] = []
    reload: dict[Mapper[Any], list[tuple[tuple[Any, ...], InstanceState[Any]]]] = {}
    deleted: set[InstanceState[Any]] | None = None
    checks_of: dict[ModelSpec, dict[str, stored.Check]] = {}
    for state, (deleting, listonly) in flush_context.states.items():
        if listonly:
            # A deleted record whose key a new object takes in the same flush ("row switch"):
            # SQLAlchemy turns its DELETE + INSERT into one UPDATE, history keeps both.
            if not deleting:
                continue
            if deleted is None:
                deleted = {sa.inspect(obj) for obj in session.deleted}
            if state not in deleted:
                continue
        spec = session_spec(state.mapper)
        if spec is None:
            continue
        if deleting:
            if tracker is not None and state in tracker.missing:
                continue  # its DELETE matched no row (SQLAlchemy warned): nothing was deleted
            before = before_map.get(state)
            if before is None:
                pre = tracker.pre_images.get(state) if tracker is not None else None
                before = _before_values(state, spec, pre)
                if before is None:
                    raise VersioningError(
                        f"cannot record the deletion of {spec.model.__name__} "
                        f"{_identity(state, spec)!r}: its values were not loaded"
                    )
            deletes.append(Change(spec, state, Operation.DELETE, before, None))
            continue
        if state.key is None:
            before = None
            target = inserts
            operation = Operation.INSERT
        else:
            before = before_map.get(state)
            if before is None:
                if tracker is not None and state in tracker.missing:
                    # Its row was not there when read, yet its UPDATE matched one (no
                    # StaleDataError): another transaction re-created it in between.
                    raise VersioningError(
                        f"{spec.model.__name__} {_identity(state, spec)!r} was re-created by "
                        f"another transaction while this flush updated it, so its old values "
                        f"are unknown; the flush was rolled back: roll back and retry"
                    )
                continue  # no versioned column changed
            target = updates
            operation = Operation.UPDATE
        changed = tracker.changed.get(state, _NOTHING) if tracker is not None else _NOTHING
        checks = checks_of.get(spec)
        if checks is None:
            dialect = session.get_bind(mapper=state.mapper).dialect
            checks = checks_of[spec] = stored.checks(spec, dialect)
        after, missing = _after_values(state, spec, before, changed, checks)
        if missing:
            reload.setdefault(state.mapper, []).append((_new_identity(state, spec), state))
        target.append(Change(spec, state, operation, before, after))
    session.info.pop(_FLUSH_STATE, None)
    if not (deletes or updates or inserts):
        return
    if reload:
        _read_back(session, reload, updates + inserts)
    for change in updates:
        assert change.before is not None and change.after is not None
        if any(change.before[k] != change.after[k] for k in change.spec.pk_keys):
            # The record moved to another key: its history under the old key ends here.
            deletes.append(Change(change.spec, change.state, Operation.DELETE, change.before, None))
    write_changes(session, deletes + updates + inserts)


def _read_back(
    session: Session,
    reload: dict[Mapper[Any], list[tuple[tuple[Any, ...], InstanceState[Any]]]],
    changes: list[Change],
) -> None:
    """Read back what the flush left unloaded (server defaults, SQL expressions) or what the
    database may have stored differently from what was sent; one query a mapper.

    A row read back is the truth for every versioned column: it replaces the values sent.
    """
    fresh: dict[InstanceState[Any], dict[str, Any]] = {}
    dialects: dict[ModelSpec, Any] = {}
    for mapper, states in reload.items():
        spec = session_spec(mapper)
        assert spec is not None
        connection = session.connection(bind_arguments={"mapper": mapper})
        dialects[spec] = connection.dialect
        fresh.update(_load_rows(connection, spec, states, lock=False))
    requested = {state for states in reload.values() for _, state in states}
    for change in changes:
        after = change.after
        assert after is not None
        spec = change.spec
        values = fresh.get(change.state)
        if values is None:
            if change.state not in requested:
                continue  # complete as it is: nothing of it was read back
            raise VersioningError(
                f"cannot read back {spec.model.__name__} "
                f"{_new_identity(change.state, spec)!r} after the flush to record its "
                f"history: the row is not there"
            )
        _remember_stored(change.state, stored.checks(spec, dialects[spec]), values)
        for key in spec.attrs:
            after[key] = values[key]


def _remember_stored(
    state: InstanceState[Any], checks: dict[str, stored.Check], values: dict[str, Any]
) -> None:
    """Note which values the session now holds that the database stored differently."""
    loaded = state.dict
    differs = {
        key: (loaded[key], values[key])
        for key, check in checks.items()
        if key in loaded and not stored.is_stored_as_sent(check, loaded[key])
    }
    if differs:
        _stored_values[state] = differs
    else:
        _stored_values.pop(state, None)


@event.listens_for(Session, "after_soft_rollback")
def _flush_failed(session: Session, previous_transaction: object) -> None:
    guard.end_flush(session)
    session.info.pop(_FLUSH_STATE, None)
    _stop_watching(session)
