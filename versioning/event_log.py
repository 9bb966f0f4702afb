"""Failed and denied actions on record: :func:`record_event` writes an event, :func:`events` reads.

An event — a login refused, a permission denied, a validation that failed, a commit that rolled
back (see :mod:`versioning.failed_commits`) — is one transaction row (who, from where, which
request: the audit context in force) and one row of ``versioning_event`` (action, outcome, target,
details). Both are written on a connection of the bind's engine of their own, in a transaction of
their own, committed before :func:`record_event` returns: whatever the caller's transaction does
next, a rollback included, the event stays.

The event's digest row (segment 1 of its transaction, see :mod:`versioning.integrity`) covers the
transaction row and the event row as it covers a transaction's history rows, so :func:`seal`
links events into the chain and :func:`verify` names an event row that was changed, deleted or
added.

SQLite lets one connection write at a time. An event's connection would wait for the caller's
open transaction on the same database file (until SQLite's busy timeout, then fail): given a
``Session`` or ``Connection`` whose transaction is open on SQLite, :func:`record_event` refuses
with :class:`~versioning.EventError` before writing anything — roll back (or commit) first. On
PostgreSQL and MariaDB nothing waits.

The module is ``event_log`` so that the package's reader function ``versioning.events`` does not
hide it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping
from sqlalchemy.orm import Mapper, Session, scoped_session

from versioning import _compat, arguments, horizon
from versioning.bare_transactions import write_digest, write_transaction
from versioning.canonical import event_hash
from versioning.context import (
    _CONTROL,
    AuditContext,
    _char_at,
    _check_json_value,
    current_context,
)
from versioning.declaration import all_specs
from versioning.errors import ArgumentError, ContextError, EventError
from versioning.reading import Transaction
from versioning.schema import (
    EVENT_ACTION_MAX,
    EVENT_OUTCOME_MAX,
    EVENT_TABLE,
    EVENT_TARGET_MAX,
    event_table,
    issued_at_utc,
    transaction_table_for,
)

__all__ = ["DETAILS_MAX_BYTES", "Event", "EventValues", "events", "record_event", "write_event"]

#: Longest ``details`` document, in bytes of its JSON text (the same on every backend).
DETAILS_MAX_BYTES = 65_535


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event: what was attempted (``action``), how it ended (``outcome``), on what
    (``target``), ``details`` (a JSON object or ``None``), and its transaction: who, from where,
    which request and when."""

    id: int
    transaction_id: int
    action: str
    outcome: str
    target: str | None
    details: Mapping[str, Any] | None
    transaction: Transaction


@dataclass(frozen=True, slots=True)
class EventValues:
    """An event's checked values, as they will be stored (see :func:`checked`)."""

    action: str
    outcome: str
    target: str | None
    details: dict[str, Any] | None


# --- checking the values ------------------------------------------------------------------------


def _text(function: str, name: str, value: object, limit: int, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        kind = "a str" if required else "a str or None"
        raise ArgumentError(
            f"versioning.{function}(): {name} must be {kind}, got {type(value).__name__} {value!r}"
        )
    if not value.strip() or len(value) > limit:
        raise ArgumentError(
            f"versioning.{function}(): {name} {value[:40]!r}{'...' if len(value) > 40 else ''} "
            f"has {len(value)} characters; it must be 1 to {limit} characters (the {name} "
            f"column of {EVENT_TABLE}), not only spaces: shorten it, and put more in details="
        )
    bad = _char_at(_CONTROL, value)
    if bad is not None:
        raise ArgumentError(
            f"versioning.{function}(): {name} {value[:40]!r} contains the control character "
            f"{bad}; it must be printable text: pass a fixed name, never raw input"
        )
    return value


def _details(function: str, details: object) -> dict[str, Any] | None:
    if details is None:
        return None
    if not isinstance(details, Mapping):
        raise ArgumentError(
            f"versioning.{function}(): details must be a dict (a JSON object) or None, got "
            f"{type(details).__name__} {details!r}"
        )
    try:
        text = json.dumps(dict(details), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArgumentError(
            f"versioning.{function}(): details must be JSON-serializable ({exc}); pass str, "
            f"int, float, bool, None, lists and dicts with str keys (e.g. str(value) for others)"
        ) from None
    try:
        _check_json_value("details", dict(details))
    except ContextError as exc:
        raise ArgumentError(f"versioning.{function}(): {exc}") from None
    size = len(text.encode("utf-8"))
    if size > DETAILS_MAX_BYTES:
        raise ArgumentError(
            f"versioning.{function}(): details are {size} bytes of JSON, more than the "
            f"{DETAILS_MAX_BYTES} an event may hold; keep details short and reference the rest"
        )
    copy: dict[str, Any] = json.loads(text)
    return copy


def checked(
    function: str, action: object, outcome: object, target: object, details: object
) -> EventValues:
    """The event's values, checked (:class:`~versioning.ArgumentError` names the one refused)."""
    checked_action = _text(function, "action", action, EVENT_ACTION_MAX, True)
    checked_outcome = _text(function, "outcome", outcome, EVENT_OUTCOME_MAX, True)
    assert checked_action is not None and checked_outcome is not None
    return EventValues(
        checked_action,
        checked_outcome,
        _text(function, "target", target, EVENT_TARGET_MAX, False),
        _details(function, details),
    )


# --- which tables, on which engine --------------------------------------------------------------


def transaction_table(
    metadata: sa.MetaData | None, function: str
) -> tuple[sa.Table, Mapper[Any] | None]:
    """The transaction table events go to, and a mapper of a model recorded in it (to find the
    session's bind), from ``metadata`` or from the versioned models declared in the process."""
    if metadata is not None:
        if not isinstance(metadata, sa.MetaData):
            raise ArgumentError(
                f"versioning.{function}() takes metadata=MetaData (your versioned models'), got "
                f"{metadata!r}"
            )
        table = transaction_table_for(metadata)
        mapper = next((s.mapper for s in all_specs() if s.transactions.metadata is metadata), None)
        return table, mapper
    by_name: dict[str, Any] = {}
    for spec in all_specs():
        by_name.setdefault(spec.transactions.fullname, spec)
    if len(by_name) == 1:
        (spec,) = by_name.values()
        return spec.transactions, spec.mapper
    if not by_name:
        raise ArgumentError(
            f"versioning.{function}(): no versioned model is declared in this process, so the "
            f"transaction table is unknown: pass metadata= (the MetaData of your versioned models)"
        )
    raise ArgumentError(
        f"versioning.{function}() reaches several transaction tables "
        f"({', '.join(sorted(by_name))}): pass metadata= (the MetaData whose tables to use)"
    )


def _engine(bind: Engine | Connection) -> Engine:
    return bind.engine if isinstance(bind, Connection) else bind


def refuse_if_sqlite_waits(engine: Engine, connections: Iterable[Connection], whose: str) -> None:
    """On SQLite, refuse while one of ``connections`` has a transaction open on ``engine``'s
    database: the event's own connection would wait for it (in this very thread)."""
    if engine.dialect.name != "sqlite":
        return
    for connection in connections:
        if connection.closed or connection.invalidated:
            continue
        if connection.engine.url.database != engine.url.database:
            continue
        driver = connection.connection.driver_connection
        # pysqlite knows whether it began a transaction (its own, or a BEGIN sent to it).
        if getattr(driver, "in_transaction", connection.in_transaction()):
            raise EventError(
                f"versioning.record_event() cannot write on SQLite while the {whose} transaction "
                f"is open on the same database: SQLite lets one connection write at a time, and "
                f"the event's own connection would wait for yours. Call rollback() (or commit()) "
                f"first, then record the event (PostgreSQL and MariaDB need no such order)"
            )


def _bind(bind: object, metadata: sa.MetaData | None) -> tuple[Engine, sa.Table]:
    """The engine the event is written on and its transaction table, for a sync bind."""
    if isinstance(bind, scoped_session):
        bind = bind()
    if isinstance(bind, Session):
        transactions, mapper = transaction_table(metadata, "record_event")
        engine = _engine(bind.get_bind(mapper=mapper) if mapper is not None else bind.get_bind())
        refuse_if_sqlite_waits(engine, _compat.open_connections(bind), "session's")
        return engine, transactions
    if isinstance(bind, Engine | Connection):
        transactions, _ = transaction_table(metadata, "record_event")
        engine = _engine(bind)
        if isinstance(bind, Connection):
            refuse_if_sqlite_waits(engine, [bind], "connection's")
        return engine, transactions
    name = type(bind).__name__
    if name in {"AsyncSession", "AsyncEngine", "AsyncConnection", "async_scoped_session"}:
        advice = "with asyncio, call await versioning.asyncio.record_event(bind, ...)"
    else:
        advice = "pass a Session, an Engine or a Connection"
    raise ArgumentError(
        f"versioning.record_event() takes a Session, Engine or Connection, got {name}: {advice}"
    )


# --- writing ------------------------------------------------------------------------------------


def write_event(
    connection: Connection,
    transactions: sa.Table,
    values: EventValues,
    context: AuditContext | None = None,
) -> Event:
    """Write one event in ``connection``'s transaction (the caller commits): its transaction row
    with the audit ``context`` (the one in force by default), its event row and its digest row."""
    if context is None:
        context = current_context()
    events = event_table(transactions)
    row = {
        "action": values.action,
        "outcome": values.outcome,
        "target": values.target,
        "details": values.details,
    }
    transaction, previous = write_transaction(connection, transactions, context)
    insert = events.insert().values(transaction_id=transaction.id, **row)
    if connection.dialect.insert_returning:
        event_id = connection.execute(insert.returning(events.c.id)).scalar_one()
    else:  # pragma: no cover - the supported backends have RETURNING
        event_key = connection.execute(insert).inserted_primary_key
        assert event_key is not None
        event_id = event_key[0]
    write_digest(
        connection, transactions, transaction.id, previous, [(events.fullname, [event_hash(row)])]
    )
    return Event(
        id=int(event_id),
        transaction_id=transaction.id,
        action=values.action,
        outcome=values.outcome,
        target=values.target,
        details=values.details,
        transaction=transaction,
    )


def has_event_table(connection: Connection, transactions: sa.Table) -> bool:
    return sa.inspect(connection).has_table(EVENT_TABLE, schema=transactions.schema)


def no_event_table(engine_name: str, transactions: sa.Table) -> EventError:
    where = f" in schema {transactions.schema!r}" if transactions.schema else ""
    return EventError(
        f"the database of {engine_name} has no {EVENT_TABLE} table{where}, so no event can be "
        f"recorded: create it (metadata.create_all(engine), or an Alembic migration of your "
        f"models' MetaData; see docs/migrations.md)"
    )


def record(engine: Engine, transactions: sa.Table, values: EventValues) -> Event:
    """Write one event on a connection of ``engine`` of its own, and commit it."""
    try:
        with engine.begin() as connection:
            return write_event(connection, transactions, values)
    except sa.exc.DBAPIError:
        with engine.connect() as connection:
            exists = has_event_table(connection, transactions)
        if not exists:
            raise no_event_table(repr(engine), transactions) from None
        raise


def record_event(
    bind: Session | Engine | Connection,
    action: str,
    *,
    outcome: str,
    target: str | None = None,
    details: Mapping[str, Any] | None = None,
    metadata: sa.MetaData | None = None,
) -> Event:
    """Record that ``action`` ended with ``outcome`` (e.g. ``"login"``, ``outcome="denied"``),
    with the audit context's actor, source IP and request id, in a transaction of its own.

    ``bind`` is a ``Session`` (or ``scoped_session``), an ``Engine`` or a ``Connection``: the
    event is written on another connection of its engine and committed before this returns, so
    it survives the caller's rollback. ``target`` names what the action was on (at most 255
    characters), ``details`` is a JSON object (at most 64 KiB). ``metadata`` chooses the
    transaction table when the process declares several. Returns the :class:`Event` written.
    """
    values = checked("record_event", action, outcome, target, details)
    engine, transactions = _bind(bind, metadata)
    return record(engine, transactions, values)


# --- reading ------------------------------------------------------------------------------------


def _strings(function: str, name: str, value: object) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset) or not all(
        isinstance(item, str) for item in items
    ):
        raise ArgumentError(
            f"versioning.{function}(): {name} must be a str or a list of str, got {value!r}"
        )
    return list(items)


def _moment(function: str, name: str, value: object) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise ArgumentError(
            f"versioning.{function}(): {name} must be a timezone-aware datetime, got {value!r}"
        )
    moment = arguments.moment(value, function)
    assert isinstance(moment, dt.datetime)
    return moment


def _one_string(function: str, name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ArgumentError(f"versioning.{function}(): {name} must be a str, got {value!r}")
    return value


def _event_key(after: object, function: str) -> tuple[int, int]:
    """The keyset ``(transaction id, event id)`` of an Event, or that pair itself."""
    if isinstance(after, Event):
        return after.transaction_id, after.id
    if (
        isinstance(after, tuple)
        and len(after) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in after)
    ):
        return after[0], after[1]
    raise ArgumentError(
        f"versioning.{function}(): after must be the last Event of the previous page (or its "
        f"keyset, a (transaction_id, event_id) tuple), got {after!r}"
    )


def event_query(
    transactions: sa.Table,
    *,
    action: object = None,
    outcome: object = None,
    target: object = None,
    actor: object = None,
    since: object = None,
    until: object = None,
    transaction_id: object = None,
    request_id: object = None,
    source_ip: object = None,
    newest_first: bool = True,
    limit: object = 100,
    after: object = None,
    function: str = "events",
) -> sa.Select[Any]:
    """The ``SELECT`` of events matching every filter given (checked), in order."""
    events = event_table(transactions)
    issued_at = issued_at_utc(transactions)
    query = sa.select(
        events.c.id,
        events.c.transaction_id,
        events.c.action,
        events.c.outcome,
        events.c.target,
        events.c.details,
        issued_at.label("issued_at"),
        transactions.c.actor,
        transactions.c.source_ip,
        transactions.c.request_id,
        transactions.c.reason,
        transactions.c.extra,
    ).join_from(events, transactions, events.c.transaction_id == transactions.c.id)
    for column, name, value in (
        (events.c.action, "action", action),
        (events.c.outcome, "outcome", outcome),
    ):
        wanted = _strings(function, name, value)
        if wanted is not None:
            query = query.where(column.in_(wanted))
    for column, name, value in (
        (events.c.target, "target", target),
        (transactions.c.actor, "actor", actor),
        (transactions.c.request_id, "request_id", request_id),
        (transactions.c.source_ip, "source_ip", source_ip),
    ):
        text = _one_string(function, name, value)
        if text is not None:
            query = query.where(column == text)
    start = _moment(function, "since", since)
    if start is not None:
        query = query.where(issued_at >= start)
    end = _moment(function, "until", until)
    if end is not None:
        query = query.where(issued_at < end)
    if transaction_id is not None:
        if isinstance(transaction_id, bool) or not isinstance(transaction_id, int):
            raise ArgumentError(
                f"versioning.{function}(): transaction_id must be an int, got {transaction_id!r}"
            )
        query = query.where(events.c.transaction_id == transaction_id)
    if not isinstance(newest_first, bool):
        raise ArgumentError(
            f"versioning.{function}(): newest_first must be True or False, got {newest_first!r}"
        )
    if after is not None:
        last, last_id = _event_key(after, function)
        tx, own = events.c.transaction_id, events.c.id
        if newest_first:
            query = query.where(sa.or_(tx < last, sa.and_(tx == last, own < last_id)))
        else:
            query = query.where(sa.or_(tx > last, sa.and_(tx == last, own > last_id)))
    if newest_first:
        query = query.order_by(events.c.transaction_id.desc(), events.c.id.desc())
    else:
        query = query.order_by(events.c.transaction_id, events.c.id)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ArgumentError(
                f"versioning.{function}(): limit must be a positive int or None (no limit), got "
                f"{limit!r}"
            )
        query = query.limit(limit)
    return query


def event_of(row: RowMapping) -> Event:
    """An :class:`Event` from a row of :func:`event_query`."""
    return Event(
        id=int(row["id"]),
        transaction_id=int(row["transaction_id"]),
        action=row["action"],
        outcome=row["outcome"],
        target=row["target"],
        details=row["details"],
        transaction=Transaction(
            id=int(row["transaction_id"]),
            issued_at=row["issued_at"],
            actor=row["actor"],
            source_ip=row["source_ip"],
            request_id=row["request_id"],
            reason=row["reason"],
            extra=row["extra"] or {},
        ),
    )


def read_events(
    session: Session, metadata: sa.MetaData | None, filters: dict[str, Any]
) -> list[Event]:
    transactions, mapper = transaction_table(metadata, "events")
    query = event_query(transactions, **filters)
    connection = (
        session.connection(bind_arguments={"mapper": mapper})
        if mapper is not None
        else session.connection()
    )
    if not has_event_table(connection, transactions):
        raise no_event_table("the session", transactions)
    horizon.refuse_range(
        connection,
        transactions,
        _moment("events", "since", filters.get("since")),
        filters.get("transaction_id"),
        "versioning.events()",
    )
    return [event_of(row) for row in connection.execute(query).mappings()]


def events(
    session: Session,
    *,
    action: str | Iterable[str] | None = None,
    outcome: str | Iterable[str] | None = None,
    target: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    transaction_id: int | None = None,
    request_id: str | None = None,
    source_ip: str | None = None,
    newest_first: bool = True,
    limit: int | None = 100,
    after: Event | None = None,
    metadata: sa.MetaData | None = None,
) -> list[Event]:
    """The recorded events matching every filter given, newest first (or oldest first).

    ``action`` and ``outcome`` take a str or a list of them; ``since`` (inclusive) and ``until``
    (exclusive) are timezone-aware datetimes. A page holds at most ``limit`` events (``None``:
    all); the next page is ``after=`` the last event of this one (keyset pagination: events
    recorded meanwhile never shift a page). Reads in the session's transaction.
    """
    session = arguments.session(session, "events")
    return read_events(
        session,
        metadata,
        {
            "action": action,
            "outcome": outcome,
            "target": target,
            "actor": actor,
            "since": since,
            "until": until,
            "transaction_id": transaction_id,
            "request_id": request_id,
            "source_ip": source_ip,
            "newest_first": newest_first,
            "limit": limit,
            "after": after,
        },
    )
