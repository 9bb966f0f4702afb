"""Capturing link writes: the rows the unit of work inserts into and deletes from link tables.

SQLAlchemy writes the rows of a relationship's ``secondary`` table itself, during the flush, with
one ``INSERT`` and one ``DELETE`` (executemany) per association table; no mapper event sees them.
So they are taken from the connection's ``before_execute``/``after_execute`` events while a flush
runs, and recorded in the flush's transaction like every other history row
(:func:`versioning.recording.write_rows`, the same path as a model's rows):

* an ``INSERT`` is recorded with the values it sent, Python-side defaults included; a column the
  database filled in (a ``server_default``, an autoincrement id) is read back, one ``SELECT`` per
  statement;
* a ``DELETE`` first reads the rows it will match, one ``SELECT`` per statement, locked on
  PostgreSQL and MariaDB (``FOR UPDATE``), and records those rows: what the database deletes,
  duplicates of a table without primary key included. Should the ``DELETE`` match more rows than
  were read (a duplicate link inserted by another transaction in between), the flush is refused.
  A link the session removes that is no longer there makes SQLAlchemy raise ``StaleDataError``
  on backends that count the rows of an executemany; elsewhere nothing is deleted and nothing
  recorded for it;
* an ``UPDATE`` of links (a parent's key changed with ``passive_updates=False``) is refused.

Core statements on a link table outside a flush are not captured: :func:`versioning.guard_writes`
flags them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.orm import InstanceState, Session, UOWTransaction
from sqlalchemy.sql.dml import Delete, Insert, Update

from versioning import _compat, guard, stored
from versioning.cascades import _enforced as enforces_foreign_keys
from versioning.declaration import versioned_spec
from versioning.errors import VersioningError
from versioning.link_tables import LinkSpec, link_spec
from versioning.operation import Operation
from versioning.recording import write_rows
from versioning.schema import CHANGES, OPERATION

__all__ = ["Flush", "current_flush", "install", "read_links"]

_CHUNK = 500


@dataclass(eq=False)
class Flush:
    """The link rows one session's running flush wrote, table by table."""

    #: The flush (``None`` if its start was not seen).
    context: UOWTransaction | None = None
    rows: dict[LinkSpec, list[dict[str, Any]]] = field(default_factory=dict)
    #: The rows a DELETE about to run will match (read in before_execute).
    reading: dict[int, tuple[LinkSpec, list[dict[str, Any]]]] = field(default_factory=dict)
    #: Records whose links the database deletes were read for (:mod:`versioning.link_cascades`).
    planned: set[InstanceState[Any]] = field(default_factory=set)
    #: Links the database deletes with their records, if it enforces foreign keys then.
    cascaded: list[tuple[Connection, LinkSpec, list[dict[str, Any]]]] = field(default_factory=list)


#: ``Session.info`` key: the :class:`Flush` of the session's running flush.
_KEY = "_versioning_link_flush"


def _start(session: Session, flush_context: UOWTransaction, instances: object) -> None:
    session.info[_KEY] = Flush(flush_context)


def current_flush() -> Flush | None:
    """The bookkeeping of the flush running in this context, if any."""
    session = guard.flushing_session()
    if session is None:
        return None
    found: Flush | None = session.info.get(_KEY)
    if found is None:
        found = session.info[_KEY] = Flush()
    return found


def _in(spec: LinkSpec, names: list[str], values: list[tuple[Any, ...]]) -> Any:
    columns = [spec.table.c[name] for name in names]
    if len(columns) == 1:
        return columns[0].in_([value[0] for value in values])
    return sa.tuple_(*columns).in_(values)


def read_links(
    connection: Connection,
    spec: LinkSpec,
    names: list[str],
    values: list[tuple[Any, ...]],
    lock: bool,
) -> list[dict[str, Any]]:
    """The link rows whose ``names`` columns hold one of ``values``, by column name."""
    found: list[dict[str, Any]] = []
    unique = list(dict.fromkeys(values))
    for start in range(0, len(unique), _CHUNK):
        query = sa.select(*spec.columns).where(_in(spec, names, unique[start : start + _CHUNK]))
        if lock and connection.dialect.name != "sqlite":
            query = query.with_for_update()
        for row in connection.execute(query).mappings():
            found.append({column.name: row[column] for column in spec.columns})
    return found


def _parameter_sets(multiparams: Any, params: Any) -> list[dict[str, Any]]:
    if multiparams:
        first = multiparams[0] if isinstance(multiparams, list | tuple) else multiparams
        if isinstance(first, list | tuple):
            return list(first)
        return list(multiparams)
    return [params] if params else []


def _before(
    connection: Connection,
    clauseelement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
) -> None:
    if not isinstance(clauseelement, Insert | Delete | Update):
        return
    spec = link_spec(getattr(clauseelement, "table", None))
    flush = current_flush() if spec is not None else None
    if spec is None or flush is None:
        return
    if isinstance(clauseelement, Update):
        raise VersioningError(
            f"this flush would update links of {spec.table.fullname!r} (the key of a record "
            f"they link changed, with passive_updates=False): versioning records link inserts "
            f"and deletes only. Remove the links, change the key, then add them again"
        )
    sets = _parameter_sets(multiparams, params)
    if isinstance(clauseelement, Insert):
        if (
            clauseelement.select is None
            and not _compat.insert_multi_values(clauseelement)
            and not _compat.prefixes(clauseelement)
            and _compat.post_values_clause(clauseelement) is None
        ):
            return  # the unit of work's: its rows are its parameters, taken after it (_after)
    elif sets and all(
        isinstance(row, dict) and row and all(key in spec.table.c for key in row) for row in sets
    ):
        _read_before_delete(connection, flush, spec, clauseelement, sets)
        return  # the unit of work's DELETE: one set of link columns per link
    raise VersioningError(
        f"a {type(clauseelement).__name__.upper()} statement on link table "
        f"{spec.table.fullname!r} ran during a flush (from an event hook?): the rows it writes "
        f"are not known, so no link history can record them. Change the relationship's "
        f"collection instead"
    )


def _read_before_delete(
    connection: Connection, flush: Flush, spec: LinkSpec, statement: Any, sets: list[Any]
) -> None:
    """Read (and lock) the rows the DELETE will match, by the link columns of its parameters."""
    keys = list(sets[0])
    names = [spec.table.c[key].name for key in keys]
    values = [tuple(row[key] for key in keys) for row in sets]
    rows = read_links(connection, spec, names, values, lock=True)
    flush.reading[id(statement)] = (spec, rows)


def _after(
    connection: Connection,
    clauseelement: Any,
    multiparams: Any,
    params: Any,
    execution_options: Any,
    result: Any,
) -> None:
    if not isinstance(clauseelement, Insert | Delete):
        return
    spec = link_spec(getattr(clauseelement, "table", None))
    flush = current_flush() if spec is not None else None
    if spec is None or flush is None:
        return
    if isinstance(clauseelement, Delete):
        read = flush.reading.pop(id(clauseelement), None)
        if read is None:
            return
        rows = read[1]
        context = result.context
        sane = (
            connection.dialect.supports_sane_multi_rowcount
            if context.executemany
            else connection.dialect.supports_sane_rowcount
        )
        if sane and result.rowcount > len(rows):
            raise VersioningError(
                f"the DELETE of links of {spec.table.fullname!r} matched {result.rowcount} rows "
                f"where {len(rows)} were read just before: another transaction added a link in "
                f"between, whose values are unknown; the flush was rolled back: roll back and retry"
            )
        _note(flush, spec, Operation.DELETE, rows)
        return
    sent = [dict(row) for row in result.context.compiled_parameters]
    by_key = {column.key: column for column in spec.columns}
    rows = [
        {by_key[key].name: value for key, value in row.items() if key in by_key} for row in sent
    ]
    if rows and _incomplete(spec, connection.dialect, rows):
        rows = _read_back(connection, spec, rows)
    _note(flush, spec, Operation.INSERT, rows)


def _incomplete(spec: LinkSpec, dialect: Dialect, rows: list[dict[str, Any]]) -> bool:
    """Whether the database filled in columns of these rows, or may store a value otherwise
    than sent (see :mod:`versioning.stored`)."""
    checks = spec.stored_checks.get(dialect.name)
    if checks is None:
        checks = spec.stored_checks[dialect.name] = {
            column.name: check
            for column in spec.columns
            if (check := stored.exactness(column.type, dialect)) is not None
        }
    width = len(spec.columns)
    for row in rows:
        if len(row) < width:
            return True
        for name, check in checks.items():
            if not stored.is_stored_as_sent(check, row[name]):
                return True
    return False


def _read_back(
    connection: Connection, spec: LinkSpec, sent: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The inserted rows as stored, when the database filled in some of their columns."""
    names = [c.name for c in spec.keys if all(c.name in row for row in sent)]
    values = [tuple(row[name] for name in names) for row in sent]
    rows = read_links(connection, spec, names, values, lock=False) if names else []
    if len(rows) != len(sent):
        raise VersioningError(
            f"cannot read back the links just inserted into {spec.table.fullname!r} to record "
            f"the values the database gave them: {len(rows)} rows have their keys, "
            f"{len(sent)} were inserted. Give {spec.table.fullname!r} a primary key (or a "
            f"unique constraint) over its foreign keys so that a link is one row"
        )
    return rows


def _note(flush: Flush, spec: LinkSpec, operation: Operation, rows: list[dict[str, Any]]) -> None:
    target = flush.rows.setdefault(spec, [])
    for row in rows:
        target.append({**row, OPERATION: operation, CHANGES: None})


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    flush: Flush | None = session.info.pop(_KEY, None)
    if flush is None:
        return
    enforced: dict[Connection, bool] = {}
    for connection, spec, rows in flush.cascaded:
        if connection not in enforced:
            enforced[connection] = enforces_foreign_keys(connection)
        if enforced[connection]:
            _note(flush, spec, Operation.DELETE, rows)
    if not any(flush.rows.values()):
        return
    mappers = [versioned_spec(state.mapper) for state in flush_context.states]
    for spec, rows in flush.rows.items():
        if not rows:
            continue
        owner = next(
            (s for s in mappers if s is not None and s.transactions is spec.transactions), None
        )
        if owner is None:  # pragma: no cover - links change with a versioned record's collection
            raise VersioningError(
                f"cannot record the links written to {spec.table.fullname!r}: no versioned "
                f"record of the flush names its transaction table"
            )
        write_rows(session, owner.root.mapper, spec.transactions, spec.history, rows)


def _flush_failed(session: Session, previous_transaction: object) -> None:
    session.info.pop(_KEY, None)


_installed = False


def install() -> None:
    """Listen to flushes and statements (once, when the first link table is declared)."""
    global _installed
    if _installed:
        return
    _installed = True
    event.listen(Session, "before_flush", _start)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "after_soft_rollback", _flush_failed)
    event.listen(Engine, "before_execute", _before)
    event.listen(Engine, "after_execute", _after)
