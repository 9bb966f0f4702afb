"""Failed commits on record (opt-in): a transaction of versioned changes that fails leaves an event.

:func:`record_failed_commits` switches it on for the sessions of a factory (or one session). When
such a session's flush fails and the database transaction is rolled back (a constraint violated,
a deadlock, ...), or its commit fails after the flush, an event is written with
:func:`versioning.event_log.record` — action ``"commit_failed"``, outcome ``"error"`` — naming the
error's class, the stage (``"flush"`` or ``"commit"``) and the versioned models and primary keys
the transaction tried to change; never a value (a masked or personal key column is named, not
given). It is written on a connection of its own, after the rollback, with the audit context in
force.

Which records: those the unit of work inserted, updated or deleted in the transaction (a new
record whose key the database was to assign is counted without a key). An ORM-enabled
``UPDATE``/``DELETE`` statement names no record before it runs: only its model is named. A flush
that fails inside ``session.begin_nested()`` rolls back that savepoint alone and the transaction
goes on: that is not a failed commit, and is not recorded.

The hooks listen on every ``Session`` and return at once unless the session was switched on. Writing
the event never raises into the application (it would hide the error being handled): a failure
to write it is logged (logger ``"versioning"``) with the error's class and the models.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import (
    InstanceState,
    ORMExecuteState,
    Session,
    SessionTransaction,
    SessionTransactionOrigin,
    scoped_session,
    sessionmaker,
)

from versioning.canonical import canonical_value
from versioning.declaration import ModelSpec, versioned_spec
from versioning.errors import ArgumentError, EventError
from versioning.event_log import DETAILS_MAX_BYTES, EventValues, record

__all__ = ["ACTION", "OUTCOME", "SWITCH", "record_failed_commits"]

_log = logging.getLogger("versioning")

#: The ``Session.info`` key that switches recording on for a session.
SWITCH = "versioning_record_failed_commits"
ACTION = "commit_failed"
OUTCOME = "error"

#: ``Session.info`` key: the :class:`_Attempt` of the session's current transaction.
_ATTEMPT = "_versioning_attempt"
#: At most this many keys are named per event; the others are counted.
_KEYS_MAX = 200

Key = tuple[Any, ...]


@dataclass(eq=False)
class _Attempt:
    """What the session's current transaction tried to change, and how its commit went."""

    #: Per versioned model: the keys of the records changed (a dict as an ordered set), and how
    #: many new records had no key yet (the database was to assign it).
    keys: dict[ModelSpec, dict[Key, None]] = field(default_factory=dict)
    unkeyed: dict[ModelSpec, int] = field(default_factory=dict)
    #: Models changed by ORM-enabled statements (no key is known before they run).
    statements: dict[ModelSpec, None] = field(default_factory=dict)
    #: The records of the flush running now, with their key when it began (a rollback may
    #: take a new record's key back).
    flushing: list[tuple[ModelSpec, InstanceState[Any], Key | None]] = field(default_factory=list)
    committing: bool = False
    committed: bool = False
    recorded: bool = False

    def note(self, spec: ModelSpec, state: InstanceState[Any], before: Key | None) -> None:
        key = _key(spec, state) or before
        if key is None:
            self.unkeyed[spec] = self.unkeyed.get(spec, 0) + 1
        else:
            self.keys.setdefault(spec, {})[key] = None

    def specs(self) -> list[ModelSpec]:
        found = dict.fromkeys(
            [*self.keys, *self.unkeyed, *self.statements, *(s for s, _, _ in self.flushing)]
        )
        return list(found)


def record_failed_commits(target: Any, *, enabled: bool = True) -> None:
    """Record an event for each failed commit of versioned changes by the sessions of ``target``.

    ``target``: a ``sessionmaker`` or ``async_sessionmaker`` (the sessions it makes from now on),
    a ``scoped_session`` or ``async_scoped_session`` (its factory), or one ``Session`` or
    ``AsyncSession``. ``enabled=False`` switches it off again. Anything else is refused at once.
    """
    if not isinstance(enabled, bool):
        raise ArgumentError(
            f"versioning.record_failed_commits(enabled=...) must be True or False, got {enabled!r}"
        )
    asyncio = sys.modules.get("sqlalchemy.ext.asyncio")
    if isinstance(target, scoped_session) or (
        asyncio is not None and isinstance(target, asyncio.async_scoped_session)
    ):
        target = target.session_factory
    if isinstance(target, sessionmaker) or (
        asyncio is not None and isinstance(target, asyncio.async_sessionmaker)
    ):
        info = dict(target.kw.get("info") or {})
        info[SWITCH] = enabled
        target.configure(info=info)
        return
    if asyncio is not None and isinstance(target, asyncio.AsyncSession):
        target = target.sync_session
    if isinstance(target, Session):
        target.info[SWITCH] = enabled
        return
    raise ArgumentError(
        f"versioning.record_failed_commits() takes a sessionmaker, async_sessionmaker, "
        f"scoped_session or a session, got {target!r}: e.g. "
        f"versioning.record_failed_commits(SessionFactory) after SessionFactory = sessionmaker(...)"
    )


def _attempt(session: Session) -> _Attempt | None:
    """The session's attempt, created if the session is switched on; ``None`` otherwise."""
    if not session.info.get(SWITCH):
        return None
    found: _Attempt | None = session.info.get(_ATTEMPT)
    if found is None:
        found = session.info[_ATTEMPT] = _Attempt()
    return found


def _key(spec: ModelSpec, state: InstanceState[Any]) -> Key | None:
    if state.key is not None:
        return tuple(state.key[1])
    values = tuple(state.dict.get(k) for k in spec.pk_keys)
    return None if any(v is None for v in values) else values


# --- the hooks ----------------------------------------------------------------------------------


@event.listens_for(Session, "before_flush")
def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    attempt = _attempt(session)
    if attempt is None:
        return
    attempt.flushing.clear()
    for objects, check in ((session.new, False), (session.dirty, True), (session.deleted, False)):
        for obj in objects:
            state: InstanceState[Any] = sa.inspect(obj)
            spec = versioned_spec(state.mapper)
            if spec is None or (check and not session.is_modified(obj)):
                continue
            attempt.flushing.append((spec, state, _key(spec, state)))


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: Any) -> None:
    attempt = session.info.get(_ATTEMPT)
    if attempt is None:
        return
    for spec, state, before in attempt.flushing:
        attempt.note(spec, state, before)
    attempt.flushing.clear()


@event.listens_for(Session, "do_orm_execute")
def _statement(orm_execute_state: ORMExecuteState) -> None:
    state = orm_execute_state
    if not (state.is_update or state.is_delete or state.is_insert):
        return
    attempt = _attempt(orm_execute_state.session)
    if attempt is None:
        return
    mapper = orm_execute_state.bind_mapper
    spec = versioned_spec(mapper) if mapper is not None else None
    if spec is not None:
        attempt.statements[spec] = None


def _rolls_back_transaction(transaction: SessionTransaction) -> bool:
    """Whether rolling back ``transaction`` rolled back the database transaction (not only a
    savepoint)."""
    current: SessionTransaction | None = transaction
    while current is not None:
        if current.nested:
            return False
        current = current.parent
    return True


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, previous_transaction: SessionTransaction) -> None:
    attempt: _Attempt | None = session.info.get(_ATTEMPT)
    if attempt is None:
        return
    error = sys.exc_info()[1]
    if (
        previous_transaction.origin is SessionTransactionOrigin.SUBTRANSACTION
        and error is not None
        and not attempt.recorded
        and _rolls_back_transaction(previous_transaction)
    ):
        # A flush failed, and the database transaction was rolled back with it.
        for spec, state, before in attempt.flushing:
            attempt.note(spec, state, before)
        attempt.recorded = True
        _record(session, attempt, type(error), "flush")
    attempt.flushing.clear()


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    attempt = _attempt(session)
    if attempt is not None:
        attempt.committing = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    attempt: _Attempt | None = session.info.get(_ATTEMPT)
    if attempt is not None and not session.in_nested_transaction():
        attempt.committed = True


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    attempt: _Attempt | None = session.info.pop(_ATTEMPT, None)
    if attempt is None or not attempt.committing or attempt.committed or attempt.recorded:
        return
    if attempt.specs():
        # The commit failed after the flush (a before_commit hook, or the database's COMMIT):
        # the transaction's connections are rolled back and released by now.
        error = sys.exc_info()[1]
        _record(session, attempt, None if error is None else type(error), "commit")


# --- the event ----------------------------------------------------------------------------------


def _error_name(kind: type[BaseException] | None) -> str | None:
    # The class only: a database's message may quote a value of the failed statement.
    return None if kind is None else f"{kind.__module__}.{kind.__qualname__}"


def _json_key(spec: ModelSpec, key: Key) -> list[Any]:
    """A key as JSON values; a masked or personal key column is named, never given."""
    out: list[Any] = []
    for attr, value in zip(spec.pk_keys, key, strict=True):
        if attr in spec.masks:
            out.append("<masked>")
        elif attr in spec.personal:
            out.append("<personal>")
        else:
            out.append(canonical_value(spec.live_columns[attr], value))
    return out


def _details(
    attempt: _Attempt, specs: list[ModelSpec], kind: type[BaseException] | None, stage: str
) -> dict[str, Any]:
    records: dict[str, dict[str, Any]] = {}
    left = _KEYS_MAX
    for spec in specs:
        keys = list(attempt.keys.get(spec, {}))
        named = keys[:left]
        left -= len(named)
        entry = records.setdefault(
            spec.model.__name__, {"keys": [], "keys_left_out": 0, "without_key": 0}
        )
        entry["keys"].extend(_json_key(spec, key) for key in named)
        entry["keys_left_out"] += len(keys) - len(named)
        entry["without_key"] += attempt.unkeyed.get(spec, 0)
        if spec in attempt.statements:
            entry["statement"] = True
    details = {"error": _error_name(kind), "stage": stage, "records": records}
    if len(json.dumps(details).encode()) > DETAILS_MAX_BYTES:
        for entry in records.values():
            entry["keys_left_out"] += len(entry["keys"])
            entry["keys"] = []
    return details


def _record(
    session: Session, attempt: _Attempt, kind: type[BaseException] | None, stage: str
) -> None:
    """Write one event per database and transaction table the attempt changed models of."""
    groups: dict[tuple[Any, str], list[ModelSpec]] = {}
    engines: dict[tuple[Any, str], Any] = {}
    for spec in attempt.specs():
        try:
            bind = session.get_bind(mapper=spec.mapper)
        except sa.exc.UnboundExecutionError:
            continue
        engine = bind.engine if isinstance(bind, Connection) else bind
        group = (engine, spec.transactions.fullname)
        groups.setdefault(group, []).append(spec)
        engines[group] = engine
    for group, specs in groups.items():
        names = ", ".join(dict.fromkeys(spec.model.__name__ for spec in specs))
        try:
            values = EventValues(
                ACTION, OUTCOME, names[:255], _details(attempt, specs, kind, stage)
            )
            record(engines[group], specs[0].transactions, values)
        except EventError as exc:
            _log.error("versioning: the failed commit of %s was not recorded: %s", names, exc)
        except Exception as exc:  # never hide the application's error with ours
            _log.error(
                "versioning: the failed commit of %s was not recorded (%s)",
                names,
                _error_name(type(exc)),
            )
