"""The write guard: finding writes that history cannot see.

History is captured from the ORM: the unit of work (``session.add``/``flush``/``commit``) and
ORM-enabled statements executed by ``session.execute(...)``. A Core ``insert``/``update``/
``delete`` on a versioned table executed on a ``Connection`` — ``engine.connect()``, or the
session's own ``session.connection().execute(...)`` — goes around both and leaves no history.

:func:`guard_writes` makes such writes visible on an engine (or connection) of your choice:
``action="raise"`` refuses them with :class:`UncapturedWriteError` before they run, ``"warn"``
emits an :class:`UncapturedWriteWarning` and lets them run. Raw SQL (``text()``,
``exec_driver_sql``) cannot be inspected and is not checked.

Tables are recognised by schema and name, not by object: a ``Table`` reflected with
``autoload_with``, a lightweight ``sa.table("items", ...)`` or a table of another ``MetaData``
naming a versioned table is one. Names compare case-insensitively (SQLite, and MariaDB on some
systems, ignore case), and a table without a schema is the same as one naming the connection's
default schema. History and transaction tables are recognised too: history is append-only, so an
``UPDATE`` or ``DELETE`` on them outside the library is flagged.

The library's own writes are let through: statements it runs inside :func:`writing`, and the
statements of a flush of versioned rows (marked by :func:`mark_flush` / :func:`end_flush`, which
:mod:`versioning.capture` calls). Tables carry :data:`versioning.schema.LIVE_TABLE_INFO`; the
errors are in :mod:`versioning.errors`.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase

from versioning import _compat
from versioning.errors import ArgumentError, UncapturedWriteError, UncapturedWriteWarning
from versioning.schema import CAPTURED_BY_DATABASE, EVENT_TABLE, LIVE_TABLE_INFO

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = [
    "UncapturedWriteError",
    "UncapturedWriteWarning",
    "capturing",
    "end_flush",
    "flushing_session",
    "guard_writes",
    "mark_flush",
    "register_link_table",
    "register_tables",
    "writing",
]

#: How many captured ORM-enabled statements are running in this context.
_writing: ContextVar[int] = ContextVar("versioning_writing", default=0)
#: Whether a flush that writes versioned rows is running in this context.
_flushing: ContextVar[bool] = ContextVar("versioning_flushing", default=False)

#: (schema or None, casefolded name) -> what the table is: "live", "link", "history",
#: "transaction" or "event".
_TABLES: dict[tuple[str | None, str], str] = {}
_KINDS = {
    "live": "versioned table",
    "history": "history table",
    "transaction": "transaction table",
    "event": "event table",
}


def register_tables(live: sa.Table, history: sa.Table, transactions: sa.Table) -> None:
    """Remember a versioned table and its history and transaction tables, by schema and name.

    Called when a versioned class is declared.
    """
    for table, kind in ((live, "live"), (history, "history"), (transactions, "transaction")):
        if kind == "live" and CAPTURED_BY_DATABASE in table.info:
            continue  # its triggers record any write
        _TABLES.setdefault(_key(table.schema, table.name), kind)
    _TABLES.setdefault(_key(transactions.schema, EVENT_TABLE), "event")


def register_link_table(link: sa.Table, history: sa.Table) -> None:
    """Remember an association table with link history (see :mod:`versioning.link_tables`)."""
    for table, kind in ((link, "link"), (history, "history")):
        _TABLES.setdefault(_key(table.schema, table.name), kind)
    if not event.contains(Session, "before_flush", _flush_starts):
        event.listen(Session, "before_flush", _flush_starts)


#: The session whose flush started last in this context (see :func:`flushing_session`).
_flush_session: ContextVar[weakref.ref[Session] | None] = ContextVar(
    "versioning_flush_session", default=None
)


def _flush_starts(session: Session, flush_context: Any, instances: Any) -> None:
    _flush_session.set(weakref.ref(session))


def flushing_session() -> Session | None:
    """The session whose flush is running in this context, if one is (known once a link table
    is declared). The unit of work writes links before any mapper event of a flush that only
    deletes, so the flush is noted from its start."""
    ref = _flush_session.get()
    session = ref() if ref is not None else None
    return session if session is not None and _compat.session_flushing(session) else None


def _key(schema: str | None, name: str) -> tuple[str | None, str]:
    return (schema.casefold() if schema else None, name.casefold())


@contextmanager
def writing() -> Iterator[None]:
    """Mark the statements run inside as captured (used by the library's own hooks)."""
    token = _writing.set(_writing.get() + 1)
    try:
        yield
    finally:
        _writing.reset(token)


def capturing() -> bool:
    """Whether a statement the library captures (an ORM-enabled statement) is running here."""
    return _writing.get() > 0


#: ``Session.info`` key: the token of :data:`_flushing` set by the session's running flush.
_FLUSH_MARK = "_versioning_writing"


def mark_flush(session: Session | None) -> None:
    """Mark a flush of versioned rows as running (once per flush): its own statements are then
    recognised. Called before each versioned row is written."""
    if session is not None and _FLUSH_MARK not in session.info:
        session.info[_FLUSH_MARK] = _flushing.set(True)


def end_flush(session: Session) -> None:
    """End the mark of :func:`mark_flush`, after the flush or when it failed."""
    token = session.info.pop(_FLUSH_MARK, None)
    if token is not None:
        _flushing.reset(token)


def _is_unit_of_work(execution_options: Any) -> bool:
    # The unit of work runs its INSERT/UPDATE/DELETE statements with the mapper's compiled
    # cache; a statement a user runs from an event hook during the flush does not.
    return _flushing.get() and "compiled_cache" in (execution_options or {})


def _written_tables(statement: UpdateBase) -> list[Any]:
    """The tables a statement may write: its target (each side of a joined target) and, for
    MariaDB's multi-table UPDATE, the tables of the columns it sets."""
    found: list[Any] = []
    pending = [getattr(statement, "table", None)]
    pending += [getattr(column, "table", None) for column, _ in _compat.set_clause(statement)]
    while pending:
        table = pending.pop()
        if isinstance(table, sa.Join):
            pending += [table.left, table.right]
        elif isinstance(table, sa.Alias):
            pending.append(table.element)
        elif table is not None and table not in found:
            found.append(table)
    return found


def _target(
    statement: UpdateBase, connection: Connection, execution_options: Any
) -> tuple[str, str] | None:
    """What the statement writes to, if the library knows it: (kind, name as written)."""
    table = getattr(statement, "table", None)
    if isinstance(table, sa.Table) and LIVE_TABLE_INFO in table.info:
        if CAPTURED_BY_DATABASE in table.info:
            return None  # its triggers record any write
        return "live", table.fullname  # the common case: a mapped versioned table
    if not _TABLES:
        return None
    translate = (execution_options or {}).get("schema_translate_map") or {}
    default = connection.dialect.default_schema_name
    for table in _written_tables(statement):
        name = getattr(table, "name", None)
        if not isinstance(name, str):
            continue
        schema = getattr(table, "schema", None)
        schema = translate.get(schema, schema)
        # A table without a schema and one naming the default schema are the same table.
        schemas = {schema}
        if schema is None:
            schemas.add(default)
        elif default is not None and schema.casefold() == default.casefold():
            schemas.add(None)
        for candidate in schemas:
            kind = _TABLES.get(_key(candidate, name))
            if kind is not None:
                return kind, f"{schema}.{name}" if schema else name
    return None


def guard_writes(
    bind: Engine | Connection | AsyncEngine | AsyncConnection,
    *,
    action: Literal["raise", "warn"] = "raise",
) -> None:
    """Raise or warn when a Core statement writes to a versioned table on ``bind`` uncaptured.

    ``bind`` may be an ``Engine`` or ``Connection``, or their asyncio forms.
    """
    # The asyncio forms wrap a sync engine or connection, where events are listened to.
    bind = getattr(bind, "sync_connection", None) or getattr(bind, "sync_engine", None) or bind
    if not isinstance(bind, Engine | Connection):
        raise ArgumentError(f"guard_writes() takes an Engine or a Connection, got {bind!r}")
    if action not in ("raise", "warn"):
        raise ArgumentError(f"guard_writes(action=...) must be 'raise' or 'warn', got {action!r}")

    def check(
        connection: Connection,
        clauseelement: Any,
        multiparams: Any,
        params: Any,
        execution_options: Any,
    ) -> None:
        if not isinstance(clauseelement, UpdateBase) or _writing.get():
            return
        if _is_unit_of_work(execution_options):
            return
        target = _target(clauseelement, connection, execution_options)
        if target is None:
            return
        kind, name = target
        verb = type(clauseelement).__name__.upper()
        if kind == "link":
            if flushing_session() is not None:
                return  # the flush's own links (recorded by versioning.link_capture)
            message = (
                f"a Core {verb} on link table {name!r} (the secondary of a relationship between "
                f"versioned models) runs outside the ORM, so no link history is recorded for "
                f"it; change the relationship's collection and flush instead"
            )
        elif kind == "live":
            message = (
                f"a Core {verb} on versioned table {name!r} runs outside the ORM, so no history "
                f"is recorded for it; use session.execute({verb.lower()}(Model)...) or the unit "
                f"of work instead"
            )
        elif verb == "INSERT":
            return  # history is appended to; only the library knows what to append
        else:
            message = (
                f"a Core {verb} on {_KINDS[kind]} {name!r}: history is append-only and is "
                f"written only by versioning; change the live records through the ORM instead, "
                f"or run maintenance on a connection without guard_writes()"
            )
        if action == "raise":
            raise UncapturedWriteError(message)
        warnings.warn(message, UncapturedWriteWarning, stacklevel=2)

    event.listen(bind, "before_execute", check)
