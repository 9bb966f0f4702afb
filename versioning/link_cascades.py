"""Links the database deletes: a link table's foreign key with ``ondelete="CASCADE"``.

With ``passive_deletes=True`` the ORM leaves the links of a record it deletes to the database,
which deletes them with the record's row. So, before the unit of work deletes versioned records
whose table such a foreign key references, their links are read (one ``SELECT`` per link table
and batch of records, locked where the backend can) and, the flush done, recorded as deleted —
unless the connection does not enforce foreign keys then (SQLite without ``PRAGMA foreign_keys``,
...), in which case the database left them and nothing is recorded. Links the ORM deletes itself
are gone by then (it deletes them before their record), so each link is recorded once.

Deleting such records with an ORM ``delete()`` statement is refused before anything is written:
the links its rows take with them are recorded only through the unit of work
(``session.delete(obj)``). Refused at configuration (see :mod:`versioning.link_tables`): other
actions (``SET NULL``, ``onupdate``), a ``CASCADE`` to columns other than the primary key, and one
to a table whose own rows the database may delete through another foreign key.
"""

from __future__ import annotations

import weakref
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import InstanceState, Mapper
from sqlalchemy.sql.dml import Delete

from versioning import _compat, guard, link_capture, live_rows
from versioning.declaration import Versioned, versioned_spec
from versioning.errors import VersioningError
from versioning.link_tables import LinkSpec

__all__ = ["add_edge", "install"]

#: Per referenced (versioned) table: the link tables whose foreign key to it cascades deletes,
#: with that foreign key's columns in the link table (in the order of the primary key).
_EDGES: weakref.WeakKeyDictionary[sa.Table, list[tuple[LinkSpec, tuple[str, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def add_edge(referenced: sa.Table, spec: LinkSpec, columns: tuple[str, ...]) -> None:
    """Note that deleting rows of ``referenced`` deletes the links of ``spec`` naming them."""
    edges = _EDGES.setdefault(referenced, [])
    if not any(s is spec and c == columns for s, c in edges):
        edges.append((spec, columns))
    install()


def _edges(mapper: Mapper[Any]) -> list[tuple[LinkSpec, tuple[str, ...]]]:
    found: list[tuple[LinkSpec, tuple[str, ...]]] = []
    for table in mapper.tables:
        if isinstance(table, sa.Table):
            found.extend(_EDGES.get(table) or ())
    return found


def _before_delete(mapper: Mapper[Any], connection: Connection, state: InstanceState[Any]) -> None:
    edges = _edges(state.mapper)
    if not edges:
        return
    flush = link_capture.current_flush()
    if flush is None or flush.context is None or state in flush.planned:
        return
    context = flush.context
    if _compat.has_cycles(context):
        batch = [state]  # the unit of work writes state by state
    else:  # the mapper's whole batch, before the first of its statements runs
        batch = [
            s
            for s in context.states_for_mapper_hierarchy(state.mapper, True, False)  # type: ignore[no-untyped-call]
            if s.key is not None and s not in flush.planned
        ]
    flush.planned.update(batch)
    keys = [tuple(s.key[1]) for s in batch if s.key is not None]
    spec = versioned_spec(state.mapper)
    if spec is not None and spec.trusts_session and connection.dialect.name != "sqlite":
        # A record read from the session is not locked yet: no link may be added to it now.
        live_rows.by_keys(connection, spec.root, keys, lock=True)
    for link, columns in edges:
        rows = link_capture.read_links(connection, link, list(columns), keys, lock=True)
        if rows:
            flush.cascaded.append((connection, link, rows))


def _refuse_statement(
    connection: Connection,
    clauseelement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
) -> None:
    """An ORM ``delete()`` of records whose links the database deletes: refused before it runs."""
    if not isinstance(clauseelement, Delete):
        return
    table = getattr(clauseelement, "table", None)
    if not isinstance(table, sa.Table):
        return
    edges = _EDGES.get(table)
    if not edges or guard.flushing_session() is not None or not guard.capturing():
        return
    names = ", ".join(sorted({repr(spec.table.fullname) for spec, _ in edges}))
    raise VersioningError(
        f"a delete() statement on {table.fullname!r} would make the database delete links in "
        f"{names} (ondelete='CASCADE'), which versioning records only when the session deletes "
        f"the records: delete them with session.delete(obj) and flush"
    )


_installed = False


def install() -> None:
    """Listen to deletes (once, when the first link table with a cascading key is declared)."""
    global _installed
    if _installed:
        return
    _installed = True
    event.listen(Versioned, "before_delete", _before_delete, propagate=True, raw=True)
    event.listen(Engine, "before_execute", _refuse_statement)
