"""Which values a session holds that the database guarantees are still the row's: no need to read
the row again before updating or deleting it.

A flush reads (and locks) the current row of each versioned record it updates or deletes, because
the values the session loaded may be stale: another transaction may have committed a change
since (see :mod:`versioning.capture`). The read is needless where the database itself guarantees
the session's values are the row's current ones, for the rest of the transaction:

* **rows this transaction locked**: loaded with ``with_for_update()`` (``FOR UPDATE`` or
  ``FOR SHARE``: no other transaction can change them until this one ends), or written by one of
  its flushes (an ``UPDATE`` or ``INSERT`` holds the row's lock until commit) — on PostgreSQL and
  MariaDB; on SQLite, a transaction that has written holds the database's write lock;
* **rows loaded under snapshot isolation** on PostgreSQL (``REPEATABLE READ`` or ``SERIALIZABLE``,
  set through SQLAlchemy's ``isolation_level``): if another transaction changes the row after
  this one's snapshot, this one's ``UPDATE`` or ``DELETE`` fails with a serialization error, so
  history is never written from stale values. MariaDB's ``REPEATABLE READ`` gives no such
  guarantee (an ``UPDATE`` acts on the latest committed row), nor does SQLite's driver (its
  reads run outside the transaction), so there the rows are read.

A mark (:data:`_MARK` in ``InstanceState.info``) notes the transaction and this module's count of
its *other* writes when the values were loaded or written. The mark holds only while both are
unchanged: any statement that may write, run in the transaction other than by a flush —
``session.execute(update(...))`` or ``text(...)``, ``session.connection().execute(...)``,
``exec_driver_sql`` — and a savepoint's rollback (its locks are released, its values gone)
make every earlier mark void, so those rows are read again. Writes made through the DB-API
connection itself bypass SQLAlchemy and are not seen: do not mix them with the ORM in one
transaction (as with a ``version_id_col``, whose mapper always trusts its session).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import InstanceState, Session, SessionTransaction, UOWTransaction
from sqlalchemy.orm.context import QueryContext

from versioning import _compat
from versioning.append_only import is_append_only
from versioning.declaration import Versioned, versioned_spec

__all__ = ["is_current", "may_write", "session_of", "wrote_outside_flushes"]

#: ``InstanceState.info`` key: ``(watch, generation, epoch)`` when the values were loaded.
_MARK = "versioning_current"
#: ``Session.info`` key: the session's :class:`_Watch`.
_WATCH = "_versioning_trust_watch"
#: ``QueryContext.attributes`` key: the mark of the rows this query loads (or ``None``).
_QUERY_MARK = "versioning_current_mark"

#: psycopg's isolation levels under which a concurrent change fails this transaction's write.
_SNAPSHOT_LEVELS = frozenset({"REPEATABLE_READ", "SERIALIZABLE"})


@dataclass(eq=False)
class _Watch:
    """One session's transaction generation and count of writes that were not its flushes."""

    session: weakref.ref[Session]
    generation: int = 0
    epoch: int = 0
    #: ``epoch`` when the current transaction began.
    begun_at: int = 0

    def mark(self) -> tuple[_Watch, int, int]:
        return (self, self.generation, self.epoch)

    def flushing(self) -> bool:
        session = self.session()
        return session is not None and _compat.session_flushing(session)


def _watch(session: Session) -> _Watch:
    watch: _Watch | None = session.info.get(_WATCH)
    if watch is None:
        watch = session.info[_WATCH] = _Watch(weakref.ref(session))
    return watch


#: The connections a session's transaction runs on, to their session's watch.
_CONNECTIONS: weakref.WeakKeyDictionary[Connection, _Watch] = weakref.WeakKeyDictionary()


def is_current(state: InstanceState[Any], session: Session) -> bool:
    """Whether the record's loaded values are its row's current ones, guaranteed by the
    database for the rest of this transaction (see the module's docstring)."""
    mark = state.info.get(_MARK)
    if mark is None:
        return False
    watch: _Watch | None = session.info.get(_WATCH)
    return watch is not None and mark == watch.mark()


def _mark_written(session: Session, flush_context: UOWTransaction) -> None:
    """After a flush: the rows it inserted or updated are locked by this transaction (unless
    the connection commits each statement on its own)."""
    watch = _watch(session)
    mark = watch.mark()
    holds: dict[Any, bool] = {}  # per mapper: whether its connection holds its locks
    for state, (deleting, _) in flush_context.states.items():
        if deleting or not isinstance(state.obj(), Versioned):
            continue
        mapper = state.mapper
        if mapper not in holds:
            holds[mapper] = _in_transaction(session.connection(bind_arguments={"mapper": mapper}))
        if holds[mapper]:
            state.info[_MARK] = mark


def _in_transaction(connection: Connection) -> bool:
    """Whether the DB-API connection is inside a transaction of its own, positively known: not
    in autocommit (where a lock ends with its statement). sqlite3 says so itself (its legacy
    mode runs reads outside any transaction); psycopg and the MySQL drivers by their
    autocommit flag; any other driver is not trusted."""
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return False
    dbapi = connection.connection.dbapi_connection
    name = connection.dialect.driver
    if name == "pysqlite":
        return bool(getattr(dbapi, "in_transaction", False))
    if name == "psycopg":
        return getattr(dbapi, "autocommit", True) is False
    if name in ("pymysql", "mysqldb", "mariadbconnector"):
        get = getattr(dbapi, "get_autocommit", None)
        flag = get() if callable(get) else getattr(dbapi, "autocommit", True)
        return flag is False or flag == 0
    return False


def _snapshot_isolated(connection: Connection) -> bool:
    """Whether the connection's transactions run under PostgreSQL snapshot isolation, as the
    driver itself begins them (psycopg's ``isolation_level``; a server default is not seen)."""
    dialect = connection.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return False
    level = getattr(connection.connection.dbapi_connection, "isolation_level", None)
    return getattr(level, "name", None) in _SNAPSHOT_LEVELS


def _query_mark(context: QueryContext, mapper: Any) -> tuple[_Watch, int, int] | None:
    """The mark of the rows a query loads: if they are locked or under snapshot isolation."""
    attributes = context.attributes
    if _QUERY_MARK in attributes:
        mark: tuple[_Watch, int, int] | None = attributes[_QUERY_MARK]
        return mark
    mark = None
    session = context.session
    if session.in_transaction():
        connection = session.connection(bind_arguments={"mapper": mapper})
        locking = _compat.locks_rows(context.query)
        if _in_transaction(connection) and (
            (locking and connection.dialect.name != "sqlite") or _snapshot_isolated(connection)
        ):
            mark = _watch(session).mark()
    attributes[_QUERY_MARK] = mark
    return mark


@event.listens_for(Versioned, "load", propagate=True, raw=True)
def _loaded(state: InstanceState[Any], context: QueryContext) -> None:
    mark = _query_mark(context, state.mapper)
    if mark is not None:
        state.info[_MARK] = mark


@event.listens_for(Versioned, "refresh", propagate=True, raw=True)
def _refreshed(state: InstanceState[Any], context: QueryContext, attrs: Any) -> None:
    # A refresh of every versioned attribute (of an instance expired at commit, say) is a
    # load; a partial one leaves the mark as it is: a mark holds because the row is locked or
    # under snapshot, whatever loaded the values, and a void one stays void.
    if attrs is None:
        _loaded(state, context)
        return
    spec = versioned_spec(state.mapper)
    if spec is not None and spec.attr_set.issubset(attrs):
        _loaded(state, context)


@event.listens_for(Session, "after_begin")
def _begun(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    _CONNECTIONS[connection] = _watch(session)


@event.listens_for(Session, "after_transaction_end")
def _ended(session: Session, transaction: SessionTransaction) -> None:
    watch: _Watch | None = session.info.get(_WATCH)
    if watch is None:
        return
    if transaction.parent is None or transaction.nested:
        # A new transaction, or a savepoint ended (released or rolled back: a rolled-back one
        # releases its locks): every mark so far is void.
        watch.generation += 1
    if transaction.parent is None:
        watch.begun_at = watch.epoch


def session_of(connection: Connection) -> Session | None:
    """The session whose transaction runs on ``connection``, if any."""
    watch = _CONNECTIONS.get(connection)
    return None if watch is None else watch.session()


def may_write(statement: str) -> bool:
    """Whether an SQL statement may write (see :func:`_may_write`)."""
    return _may_write(statement)


def wrote_outside_flushes(session: Session) -> bool:
    """Whether the session's current transaction ran a statement that may write, other than
    its flushes' (an ORM or Core statement, text, ``exec_driver_sql``)."""
    watch: _Watch | None = session.info.get(_WATCH)
    return watch is not None and watch.epoch != watch.begun_at


@event.listens_for(Session, "after_flush_postexec")
def _flush_ends(session: Session, flush_context: UOWTransaction) -> None:
    _mark_written(session, flush_context)


@event.listens_for(Session, "after_soft_rollback")
def _rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    watch: _Watch | None = session.info.get(_WATCH)
    if watch is not None:
        watch.generation += 1


def _may_write(statement: str) -> bool:
    """Whether an SQL statement may write: anything that does not start with ``SELECT`` or
    ``SHOW``."""
    return not statement.lstrip()[:6].lower().startswith(("select", "show"))


@event.listens_for(Engine, "before_cursor_execute")
def _executing(
    connection: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    # At the cursor: exec_driver_sql has no before_execute event.
    # A flush's own statements are not counted: the flush keeps its records' values current
    # (``Session._flushing``: a flush that finds nothing to write has no after_flush event).
    watch = _CONNECTIONS.get(connection)
    if (
        watch is not None
        and _may_write(statement)
        and not watch.flushing()
        and not _own_write(context)
    ):
        watch.epoch += 1


def _own_write(context: Any) -> bool:
    """Whether the statement is the library's own write of a history row, transaction row or
    digest (it changes no live row)."""
    compiled = getattr(context, "compiled", None)
    table = getattr(getattr(compiled, "statement", None), "table", None)
    return isinstance(table, sa.Table) and is_append_only(table)
