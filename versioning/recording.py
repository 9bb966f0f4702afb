"""Recording: the pending history rows, the transaction row and the INSERTs at commit.

Capture hands its changes to :func:`write_changes`: one transaction row per database transaction
that changes versioned records, one multi-row ``INSERT`` per history table. History rows of a
database transaction are kept in memory until it commits; then, in
``before_commit``, the session is flushed one last time, the transaction row is written and all
history rows follow in one multi-row ``INSERT`` per history table — still inside the database
transaction, so data and history commit or roll back together. Allocating the transaction id at
commit, after every row lock of the transaction is held, makes the ids of one record's history
follow commit order even under concurrency; its time is read from the database's clock in the
same INSERT, so time and id order agree (see _issued_at). The audit context is taken at the first
versioned flush. Flushes after that point (from other ``before_commit`` hooks) are written at once.
A transaction in which a statement failed is checked at commit: one the database has aborted or
rolled back is refused, never committed as if whole (see _check_not_lost).

Everything lives with the session (``session.info``), never in module globals. Rows and restore
reasons noted inside a savepoint are dropped when that savepoint rolls back; all is dropped when
the transaction ends. A restore gives its reason with :func:`note_reason` (and takes it back with
:func:`forget_reason` when it fails); the transaction row's reason lists them.
Reading history inside a transaction writes what was noted so far first (see write_pending).

Each history row is hashed as it is inserted (:mod:`versioning.canonical`), and at commit, after
the last history row, the transaction's digest row is written: segment 1 covers the transaction
row and every history row written so far, segment 2, 3... the rows of each later flush (see
:mod:`versioning.integrity`). Rows are never updated: restores noted after the transaction row
was written early go into segment 1's ``note``, which the readers show with the reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.orm import Mapper, Session, SessionTransaction

from versioning import personal
from versioning.bulk_sql import Staged
from versioning.canonical import (
    JSONText,
    SortedJSONText,
    prefixes,
    row_hashes,
    segment_digest,
    stored_text,
    transaction_bytes,
)
from versioning.context import AuditContext, current_context
from versioning.declaration import ModelSpec
from versioning.errors import VersioningError
from versioning.history_rows import Change, history_row
from versioning.schema import (
    CHANGES,
    TRANSACTION_ID,
    UTCDateTime,
    integrity_tables,
    issued_at_utc,
    opened_table,
)

__all__ = [
    "Change",
    "Recording",
    "forget_reason",
    "mark_failed",
    "note_event",
    "note_reason",
    "write_changes",
    "write_event",
    "write_pending",
    "write_rows",
    "write_staged",
]

_KEY = "_versioning"


@dataclass(eq=False)
class _Pending:
    """History rows waiting for their transaction row, and where they were noted."""

    noted_in: SessionTransaction
    history: sa.Table
    #: Rows built in Python, or a statement's rows staged in the database (see bulk_sql).
    rows: list[dict[str, Any]] | Staged


#: At most this many restores are listed in a transaction's reason, in at most this many bytes
#: (far within MariaDB's 65,535-byte TEXT); the others are counted.
_NOTES_MAX = 100
_NOTES_BYTES = 16_000


@dataclass(eq=False)
class _Note:
    """A line a restore asked to be written as the transaction's reason, and where it was noted."""

    noted_in: SessionTransaction
    text: str


@dataclass(eq=False)
class _Group:
    """One database (engine) and transaction table within the current database transaction."""

    table: sa.Table
    mapper: Mapper[Any]
    context: AuditContext
    pending: list[_Pending] = field(default_factory=list)
    tx_id: int | None = None
    #: The reason written in the transaction row.
    written_reason: str | None = None
    #: The digest segments written so far, and the last one's digest (before segment 1: the
    #: SHA-256 of the transaction row's canonical bytes).
    segments: int = 0
    previous: bytes = b""
    #: The history rows written since the last segment, one entry per INSERT: where they were
    #: written (a savepoint rolled back takes them back), their history table's name and their
    #: hashes in write order.
    hashes: list[tuple[SessionTransaction, str, list[bytes]]] = field(default_factory=list)
    #: Segments written after segment 1: where, and the segment count and digest before each.
    segment_log: list[tuple[SessionTransaction, int, bytes]] = field(default_factory=list)
    #: The reason of an event (see note_event): the transaction is its own, nothing else joins.
    event: str | None = None


@dataclass(eq=False)
class Recording:
    """What a session has to record in its database transaction. Reset when it ends."""

    groups: dict[tuple[Any, str], _Group] = field(default_factory=dict)
    #: What restores in this transaction asked to be written as its reason (see ``notes``).
    noted: list[_Note] = field(default_factory=list)
    #: Captured statements that failed after they ran (rows may be written without history):
    #: the model's name, and the transaction or savepoint it ran in (see ``mark_failed``).
    failed: list[tuple[SessionTransaction, str]] = field(default_factory=list)
    #: Segment 1 of every group has been written (the end of ``_write_at_commit``): later rows
    #: get a segment of their own at once.
    digested: bool = False

    @property
    def notes(self) -> list[str]:
        """The reason lines of the restores still in this transaction, in order, bounded.

        The reason column is a ``TEXT`` (65,535 bytes on MariaDB): past :data:`_NOTES_MAX`
        lines or :data:`_NOTES_BYTES` bytes, the rest is counted (``and 9000 more restores``);
        each restore's own history says what it did.
        """
        lines: list[str] = []
        size = 0
        for note in self.noted:
            size += len(note.text.encode()) + 2
            if len(lines) == _NOTES_MAX or size > _NOTES_BYTES:
                break
            lines.append(note.text)
        left = len(self.noted) - len(lines)
        if left:
            lines.append(f"and {left} more restore{'s' if left > 1 else ''}")
        return lines

    def note(self, session: Session, text: str) -> _Note:
        """Add a reason line; it goes if the savepoint (or transaction) it was noted in does."""
        noted_in = session.get_nested_transaction() or session.get_transaction()
        assert noted_in is not None
        note = _Note(noted_in, text)
        self.noted.append(note)
        return note

    def forget(self, note: _Note) -> None:
        """Take back a reason line (its restore failed)."""
        if note in self.noted:
            self.noted.remove(note)


def _existing(session: Session) -> Recording | None:
    """The session's recording if it has one, without creating it (cheap)."""
    state: Recording | None = session.info.get(_KEY)
    return state


def _recording(session: Session) -> Recording:
    state: Recording | None = session.info.get(_KEY)
    if state is None:
        state = session.info[_KEY] = Recording()
    return state


def note_reason(session: Session, text: str) -> _Note:
    """Add ``text`` (what a restore did) to the reason of the current transaction's row.

    Returns a handle for :func:`forget_reason`. The line goes with the savepoint (or transaction)
    it was noted in, if that rolls back.
    """
    return _recording(session).note(session, text)


def forget_reason(session: Session, note: _Note) -> None:
    """Take back a reason line of :func:`note_reason` (its restore failed)."""
    _recording(session).forget(note)


def note_event(session: Session, spec: ModelSpec, *, reason: str, extra: dict[str, Any]) -> None:
    """Record a transaction row for a library event that writes no history rows (an erasure).

    The event must be the transaction's first versioned work, so that the row says what it was:
    ``reason`` becomes its reason and ``extra`` is merged over the audit context's.
    """
    state = _recording(session)
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    key = (connection.engine, spec.transactions.fullname)
    if key in state.groups:
        raise VersioningError(
            f"{reason!r} must run in a transaction of its own, and this one already changed "
            f"versioned records: commit (or roll back) first"
        )
    context = current_context()
    merged = {**context.extra, **extra}
    group = state.groups[key] = _Group(
        spec.transactions,
        spec.root.mapper,
        AuditContext(context.actor, context.source_ip, context.request_id, reason, merged),
    )
    group.event = reason
    noted_in = session.get_nested_transaction() or session.get_transaction()
    assert noted_in is not None
    group.pending.append(_Pending(noted_in, spec.history, []))


def write_event(session: Session, spec: ModelSpec, *, reason: str, extra: dict[str, Any]) -> int:
    """:func:`note_event`, with its transaction row written now: its id (for rows that refer
    to it, such as a prune's horizon). The digest row follows at commit."""
    note_event(session, spec, reason=reason, extra=extra)
    write_pending(session)
    connection = session.connection(bind_arguments={"mapper": spec.mapper})
    group = _recording(session).groups[(connection.engine, spec.transactions.fullname)]
    assert group.tx_id is not None
    return group.tx_id


def write_changes(session: Session, changes: list[Change]) -> None:
    """Record the history rows of ``changes`` (updates that change nothing are dropped)."""
    grouped: dict[sa.Table, tuple[Connection, ModelSpec, list[dict[str, Any]]]] = {}
    for change in changes:
        spec = change.spec
        entry = grouped.get(spec.history)
        if entry is None:
            connection = session.connection(bind_arguments={"mapper": spec.mapper})
            entry = grouped[spec.history] = (connection, spec, [])
        row = history_row(change, entry[0])
        if row is not None:
            entry[2].append(row)
    for history, (connection, spec, rows) in grouped.items():
        if rows:
            _note_rows(session, connection, spec.transactions, spec.root.mapper, history, rows)


def write_rows(
    session: Session,
    mapper: Mapper[Any],
    transactions: sa.Table,
    history: sa.Table,
    rows: list[dict[str, Any]],
) -> None:
    """Record history rows built elsewhere (link history: :mod:`versioning.link_capture`), in the
    transaction of ``mapper``'s database, exactly as :func:`write_changes` records its rows."""
    connection = session.connection(bind_arguments={"mapper": mapper})
    _note_rows(session, connection, transactions, mapper, history, rows)


def write_staged(session: Session, connection: Connection, spec: ModelSpec, staged: Staged) -> None:
    """Record the history rows a statement staged in the database (see :mod:`versioning.bulk_sql`)
    exactly as :func:`write_changes` records rows built in Python: moved into the history table
    at commit, in their place among the transaction's other rows of that table."""
    _note_rows(session, connection, spec.transactions, spec.root.mapper, spec.history, staged)


def _note_rows(
    session: Session,
    connection: Connection,
    transactions: sa.Table,
    mapper: Mapper[Any],
    history: sa.Table,
    rows: list[dict[str, Any]] | Staged,
) -> None:
    """Note history rows of the current database transaction (written at commit)."""
    state = _recording(session)
    key = (connection.engine, transactions.fullname)
    group = state.groups.get(key)
    if group is None:
        # The context in force at the first versioned flush is the transaction's.
        group = state.groups[key] = _Group(transactions, mapper, current_context())
    elif group.event is not None:
        # A statement has run already: the transaction can no longer be committed.
        mark_failed(session, mapper.class_.__name__)
        raise VersioningError(
            f"this transaction records {group.event!r}, which must be a transaction of its own, "
            f"so it cannot also change versioned records: call session.rollback(), then redo "
            f"{group.event!r} and commit it before making other changes"
        )
    noted_in = session.get_nested_transaction() or session.get_transaction()
    assert noted_in is not None
    if group.tx_id is not None:
        # Written early (see write_pending): a restore's reason noted now goes into the digest
        # row's note at commit (the transaction row is never updated).
        _insert_history(connection, group, history, rows, noted_in)
        if state.digested:
            _write_digest(connection, group, None, noted_in)
        return
    group.pending.append(_Pending(noted_in, history, rows))
    if state.digested:
        # A new group after commit's writing (another before_commit hook's flush): now.
        _write_group(session, state, group)
        _write_digest(connection, group, None, noted_in)


def _insert_history(
    connection: Connection,
    group: _Group,
    history: sa.Table,
    rows: list[dict[str, Any]] | Staged,
    noted_in: SessionTransaction,
) -> None:
    """INSERT ``rows`` (in order: their version ids follow it) and hash each as written."""
    tx_id = group.tx_id
    assert tx_id is not None
    if isinstance(rows, Staged):  # moved by the database, hashed as it returns them
        group.hashes.append((noted_in, history.fullname, rows.move(connection, tx_id)))
        return
    if not rows:
        return  # an event without history rows (see note_event)
    template = dict.fromkeys(history.c.keys())
    del template[history.primary_key.columns.keys()[0]]
    batch = []
    for row in rows:
        full = template.copy()
        full.update(row)
        full[TRANSACTION_ID] = tx_id
        batch.append(full)
    group.hashes.append((noted_in, history.fullname, _hash_rows(history, batch)))
    connection.execute(_history_insert(history), batch)


def _hash_rows(history: sa.Table, batch: list[dict[str, Any]]) -> list[bytes]:
    """Each row's hash (see :func:`versioning.canonical.row_hashes`).

    Each ``changes`` document is replaced by its JSON text (:func:`stored_text`), which the
    INSERT sends as it is: one C encoder call, where the driver's JSON binding costs about
    twice that per row. Where that text is also the canonical one (an update's usual document:
    fields in sorted order, plain values), the hash takes it too rather than encoding the
    document again. Part of the digests' cost, which the benchmark switches off with them.
    """
    if personal.has_personal(history):
        # The hash covers the committed view, made from the documents themselves.
        hashes = row_hashes(history, [personal.committed_view(history, row) for row in batch])
        later = [(row, stored_text(row[CHANGES])) for row in batch if row[CHANGES] is not None]
    else:
        later = []
        for row in batch:
            changes = row[CHANGES]
            if changes is not None:
                text = stored_text(changes)
                if type(text) is SortedJSONText:
                    row[CHANGES] = text  # hashed as it is
                else:
                    later.append((row, text))
        hashes = row_hashes(history, batch)
    for row, text in later:
        if text is not None:
            row[CHANGES] = text
    return hashes


class _StoredJSON(sa.types.TypeDecorator[Any]):
    """The ``changes`` column's JSON, taking a :class:`JSONText` text as it is."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        serialize = self.impl_instance.dialect_impl(dialect).bind_processor(dialect)
        null = getattr(self.impl_instance, "none_as_null", True)

        def process(value: Any) -> Any:
            if value is None and null:
                return None  # SQL NULL
            if isinstance(value, JSONText):
                return str(value)  # an exact str: a driver may adapt by exact type
            return value if serialize is None else serialize(value)

        return process


#: Per history table, its INSERT (built once: a new statement's cache key costs as much again).
_INSERTS: weakref.WeakKeyDictionary[sa.Table, sa.Insert] = weakref.WeakKeyDictionary()


def _history_insert(history: sa.Table) -> sa.Insert:
    """The INSERT of ``history``'s rows: a plain ``insert()`` of a copy of the table (in a
    metadata of its own) whose ``changes`` column binds a :class:`JSONText` text as it is.

    A copy rather than ``insert().values(changes=bindparam(...))``: SQLAlchemy sends a statement
    with its own values clause through a slower path, which would cost what the text saves.
    """
    insert = _INSERTS.get(history)
    if insert is None:
        columns = []
        for column in history.columns:
            type_ = column.type
            if column.name == CHANGES:
                type_ = _StoredJSON(none_as_null=getattr(type_, "none_as_null", True))
            columns.append(
                sa.Column(
                    column.name,
                    type_,
                    key=column.key,
                    primary_key=column.primary_key,
                    autoincrement=column.autoincrement,
                    nullable=column.nullable,
                )
            )
        copy = sa.Table(
            history.name, sa.MetaData(), *columns, schema=history.schema, info=dict(history.info)
        )
        insert = _INSERTS[history] = copy.insert()
    return insert


def _note(state: Recording, group: _Group) -> str | None:
    """The restores' reason lines the transaction row does not hold (it was written before they
    were noted): segment 1's note."""
    if group.context.reason is not None or not state.noted:
        return None
    full = "; ".join(state.notes)
    written = group.written_reason
    if full == written:
        return None
    if written and full.startswith(written + "; "):
        return full[len(written) + 2 :]
    return full


def _write_digest(
    connection: Connection,
    group: _Group,
    note: str | None,
    written_in: SessionTransaction | None,
) -> None:
    """Write the group's next digest segment: the rows written since the last one.

    ``written_in``: the savepoint (or transaction) a later segment is written in; if that rolls
    back, so does the segment (see ``_forget_rolled_back``).
    """
    assert group.tx_id is not None
    if written_in is not None:
        group.segment_log.append((written_in, group.segments, group.previous))
    by_table: dict[str, list[bytes]] = {}
    for _, name, hashes in group.hashes:
        by_table.setdefault(name, []).extend(hashes)
    tables = sorted(by_table.items())
    rows = {name: prefixes(hashes) for name, hashes in tables}
    if group.segments == 0:
        # Where a changed transaction row shows (see versioning.integrity).
        rows[group.table.fullname] = prefixes([group.previous])
    value = segment_digest(group.previous, tables, note)
    group.segments += 1
    # A plain insert() with its parameters: built with .values(), the statement would be a new
    # one at each commit, its cache key computed anew (about twice the time).
    connection.execute(
        integrity_tables(group.table)[0].insert(),
        {
            "transaction_id": group.tx_id,
            "segment": group.segments,
            "digest": value.hex(),
            "rows": rows,
            "note": note,
        },
    )
    group.previous = value
    group.hashes.clear()


_MICROSECOND = sa.literal_column("INTERVAL '1 microsecond'", sa.Interval())


def _issued_at(transactions: sa.Table, dialect: str) -> Any:
    """The moment a transaction row is written, from the database's clock, in the same INSERT.

    The id comes from the database; so does the time, read when the row is written (at commit,
    after every row lock of the transaction is held). A record's changes are serialized by its row
    lock, so the transaction that changes it later gets both the larger id and the later time,
    whatever the clocks of the application servers say. On PostgreSQL and SQLite the time is also
    kept strictly after the latest committed transaction's (an index probe of ``(issued_at, id)``
    inside the same statement), so even a database clock stepping back keeps the order. MariaDB
    would take a shared lock on that index for a subquery of an INSERT, serializing every writer,
    and PostgreSQL at SERIALIZABLE a predicate lock that makes concurrent writers fail: there it
    is the database clock alone (see docs/concepts.md).
    """
    if dialect == "postgresql":
        # clock_timestamp(): the time now, not now() (the start of the transaction).
        now = sa.func.clock_timestamp()
        latest = sa.select(sa.func.max(transactions.c.issued_at) + _MICROSECOND)
        # Under SERIALIZABLE, reading the latest row would make every two concurrent writers
        # conflict (a predicate lock on the index tail that the other one inserts into): there
        # the database clock alone. PostgreSQL runs the subquery only if its branch is taken.
        serializable = sa.func.current_setting("transaction_isolation") == "serializable"
        return sa.case((serializable, now), else_=sa.func.greatest(now, latest.scalar_subquery()))
    if dialect in ("mysql", "mariadb"):
        # The time the INSERT statement started, in UTC, with microseconds.
        return sa.literal_column("UTC_TIMESTAMP(6)", UTCDateTime())
    if dialect == "sqlite":
        return _sqlite_issued_at(transactions)
    return dt.datetime.now(dt.UTC)  # pragma: no cover - the three backends above are supported


def _sqlite_issued_at(transactions: sa.Table) -> Any:
    """SQLite: ``max(now, latest + 1 µs)`` on the stored text ``YYYY-MM-DD HH:MM:SS.ffffff``.

    SQLite's clock has millisecond resolution, so the microsecond step also keeps transactions
    of the same millisecond apart. SQLite lets one connection write at a time, so the latest row
    read here is the latest there is.
    """
    now = sa.func.strftime("%Y-%m-%d %H:%M:%f", "now").concat("000")
    latest = sa.func.max(transactions.c.issued_at).label("latest")
    last = sa.select(latest).subquery()
    micro = sa.cast(sa.func.substr(last.c.latest, 21, 6), sa.Integer)
    following = sa.case(
        (
            micro == 999999,
            sa.func.strftime(
                "%Y-%m-%d %H:%M:%S", sa.func.substr(last.c.latest, 1, 19), "+1 second"
            ).concat(".000000"),
        ),
        else_=sa.func.substr(last.c.latest, 1, 20).concat(sa.func.printf("%06d", micro + 1)),
    )
    step = sa.select(following).scalar_subquery()
    return sa.func.max(now, sa.func.coalesce(step, now))


#: Where a transaction table keeps its INSERTs (see _transaction_insert): in its ``info``, so
#: that they go with the table.
_TRANSACTION_INSERTS = "versioning_transaction_inserts"


def _transaction_insert(table: sa.Table, dialect_name: str, returning: bool) -> sa.Insert:
    """The transaction row's INSERT on ``dialect_name``, built once per table and dialect: its
    time from the database's clock (see _issued_at), the audit context as parameters
    (``actor``, ``source_ip``, ``request_id``, ``reason``, ``extra``); ``returning``: it returns
    the row's id and its time as stored, read as verify reads it (for the digest).

    Built anew at each commit, the statement and its cache key cost about a tenth of a
    single-row commit's time in Python.
    """
    built: dict[tuple[str, bool], sa.Insert] = table.info.setdefault(_TRANSACTION_INSERTS, {})
    found = built.get((dialect_name, returning))
    # A copy of the table (Table.to_metadata()) copies its info, not what its statements are of.
    if found is None or found.table is not table:
        found = table.insert().values(issued_at=_issued_at(table, dialect_name))
        if returning:
            found = found.returning(table.c.id, issued_at_utc(table))
        built[(dialect_name, returning)] = found
    return found


#: ``Session.info`` key: the root transaction in which the session handed its audit context to
#: the capture triggers through the open-transaction table (SQLite, MariaDB; see
#: versioning.triggers), so that their transaction row may exist already.
CAPTURE_HANDED_OVER = "versioning_capture_handed_over"


def _opened_transaction(connection: Connection, table: sa.Table) -> dict[str, Any] | None:
    """SQLite, where capture triggers of this transaction already wrote its transaction row
    (see versioning.triggers): that row as stored, which the session path uses too."""
    dialect = connection.dialect
    mariadb = getattr(dialect, "is_mariadb", False) or dialect.name == "mariadb"
    opened = opened_table(table) if dialect.name == "sqlite" or mariadb else None
    if opened is None:
        return None
    if mariadb:
        # This connection's row, with the key this transaction handed over (its session
        # variable: see versioning.triggers._open_on_mariadb).
        where = (
            opened.c.id == sa.func.connection_id(),
            opened.c.key == sa.literal_column("@versioning_capture_token"),
        )
    else:
        where = (opened.c.id == 1, opened.c.key == "app")
    found = connection.execute(sa.select(opened.c.transaction_id).where(*where)).scalar()
    if found is None:
        return None
    row = (
        connection.execute(
            sa.select(
                table.c.id,
                issued_at_utc(table).label("issued_at"),
                table.c.actor,
                table.c.source_ip,
                table.c.request_id,
                table.c.reason,
                table.c.extra,
            ).where(table.c.id == found)
        )
        .mappings()
        .one()
    )
    return dict(row)


def _write_group(session: Session, state: Recording, group: _Group) -> None:
    connection = session.connection(bind_arguments={"mapper": group.mapper})
    context = group.context
    reason = context.reason
    if reason is None and state.notes:
        reason = "; ".join(state.notes)
    table = group.table
    extra = dict(context.extra) or None
    dialect = connection.dialect
    # Only where the session handed its context to capture triggers in this transaction.
    root = session.get_transaction()
    handed = root is not None and session.info.get(CAPTURE_HANDED_OVER) is root
    opened = _opened_transaction(connection, table) if handed else None
    if opened is not None:
        # The triggers wrote the transaction row at their first write: one row per transaction.
        group.tx_id = int(opened["id"])
        group.written_reason = opened["reason"]
        group.previous = hashlib.sha256(transaction_bytes(opened)).digest()
        _insert_pending(session, connection, group)
        return
    insert = _transaction_insert(table, dialect.name, dialect.insert_returning)
    parameters = {
        "actor": context.actor,
        "source_ip": context.source_ip,
        "request_id": context.request_id,
        "reason": reason,
        "extra": extra,
    }
    if dialect.insert_returning:
        tx_id, stamp = connection.execute(insert, parameters).one()
    else:  # pragma: no cover - the supported backends have RETURNING
        pk = connection.execute(insert, parameters).inserted_primary_key
        assert pk is not None
        tx_id = pk[0]
        stamp = connection.execute(
            sa.select(issued_at_utc(table)).where(table.c.id == tx_id)
        ).scalar_one()
    group.tx_id = int(tx_id)
    group.written_reason = reason
    values = {
        "id": group.tx_id,
        "issued_at": stamp,
        "actor": context.actor,
        "source_ip": context.source_ip,
        "request_id": context.request_id,
        "reason": reason,
        "extra": extra,
    }
    group.previous = hashlib.sha256(transaction_bytes(values)).digest()
    open_table = opened_table(table) if dialect.name == "sqlite" else None
    if open_table is not None:
        # Capture triggers firing later in this transaction use this row too.
        connection.execute(
            open_table.update()
            .where(
                open_table.c.id == 1,
                open_table.c.key == "app",
                open_table.c.transaction_id.is_(None),
            )
            .values(transaction_id=group.tx_id)
        )
    _insert_pending(session, connection, group)


def _insert_pending(session: Session, connection: Connection, group: _Group) -> None:
    # Per history table, its rows in the order noted: consecutive Python rows in one INSERT, a
    # staged statement's rows moved in their place (version ids follow that order).
    by_table: dict[sa.Table, list[list[dict[str, Any]] | Staged]] = {}
    for pending in group.pending:
        parts = by_table.setdefault(pending.history, [])
        if isinstance(pending.rows, Staged):
            parts.append(pending.rows)
        elif parts and isinstance(parts[-1], list):
            parts[-1].extend(pending.rows)
        else:
            parts.append(list(pending.rows))
    group.pending.clear()
    root = session.get_transaction()
    assert root is not None
    for history, parts in by_table.items():
        for rows in parts:
            _insert_history(connection, group, history, rows, root)


def write_pending(session: Session) -> None:
    """Write the history noted so far in this transaction, so that reading it shows it.

    Called by the readers. The transaction id is then allocated now rather than at commit.
    Inside a savepoint nothing is written (it could be rolled back with the savepoint while the
    changes it records stay): the reads then show the history committed before.
    """
    state = _existing(session)
    if state is None or session.in_nested_transaction():
        return
    for group in state.groups.values():
        if group.tx_id is None and group.pending:
            _write_group(session, state, group)


def mark_failed(session: Session, model: str) -> None:
    """Note that a captured statement on ``model`` failed after it ran (see ``_write_at_commit``).

    A statement may fail partway (a later batch of a multi-row INSERT, a row of an executemany
    UPDATE) with the rows of its earlier batches written and no history noted for them. Unless
    the savepoint it ran in is rolled back, the transaction cannot be committed.
    """
    noted_in = session.get_nested_transaction() or session.get_transaction()
    if noted_in is not None:
        _recording(session).failed.append((noted_in, model))


def _partly_failed(state: Recording) -> VersioningError:
    models = ", ".join(dict.fromkeys(model for _, model in state.failed))
    return VersioningError(
        f"cannot commit: a versioned statement on {models} failed partway, so rows it wrote "
        f"before the failure would be committed without history. Call session.rollback() and "
        f"redo the transaction's work (or run such a statement in session.begin_nested() and "
        f"roll that savepoint back when it fails)"
    )


@event.listens_for(Session, "before_commit")
def _write_at_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint is released: the database transaction goes on
    state = _existing(session)
    if state is not None and state.failed:
        raise _partly_failed(state)
    if state is None and not session.dirty and not session.new and not session.deleted:
        return
    # Take every row lock of the transaction before its id is allocated.
    session.flush()
    state = _existing(session)
    if state is None:
        return
    for group in state.groups.values():
        _check_not_lost(session, group)
    for group in state.groups.values():
        if group.tx_id is None and group.pending:
            _write_group(session, state, group)
    for group in state.groups.values():
        if group.tx_id is not None and group.segments == 0:
            connection = session.connection(bind_arguments={"mapper": group.mapper})
            _write_digest(connection, group, _note(state, group), None)
    state.digested = True


def written_context(
    session: Session, connection: Connection, first: AuditContext | None = None
) -> tuple[int | None, AuditContext, str | None]:
    """The id of the transaction row this commit wrote on ``connection`` (``None`` if none), the
    audit context of the transaction (taken at its first versioned flush; else ``first``, the
    one noted at its first write by other means; else now) and its reason (the context's, else
    the restores' noted lines)."""
    state = _existing(session)
    for group in state.groups.values() if state is not None else ():
        if session.connection(bind_arguments={"mapper": group.mapper}) is connection:
            return group.tx_id, group.context, group.written_reason
    context = current_context() if first is None else first
    reason = context.reason
    if reason is None and state is not None and state.notes:
        reason = "; ".join(state.notes)
    return None, context, reason


_FAILED = "versioning_failed_transaction"

#: MariaDB errors after which the server has rolled back the whole transaction (1205, a lock wait
#: timeout, only with innodb_rollback_on_timeout). Later statements run in a new transaction.
_MARIADB_DEADLOCK = 1213
_MARIADB_LOCK_WAIT_TIMEOUT = 1205


@event.listens_for(Engine, "handle_error")
def _note_failure(context: ExceptionContext) -> None:
    """Remember that the connection's current transaction saw a database error.

    Costs nothing until a statement fails. At commit, such a transaction is checked before its
    history is written (see _check_not_lost).
    """
    connection = context.connection
    if connection is None or context.is_disconnect:
        return
    transaction = connection.get_transaction()
    if transaction is not None:
        # The error's type and code only: the exception itself would keep its traceback's
        # frames (sessions, objects) alive as long as the pooled connection.
        error = context.original_exception
        code = error.args[0] if error.args and isinstance(error.args[0], int) else None
        connection.info[_FAILED] = (weakref.ref(transaction), type(error), code)


def _check_not_lost(session: Session, group: _Group) -> None:
    """Refuse to commit a transaction that the database has already aborted or rolled back.

    PostgreSQL turns the COMMIT of a transaction aborted by an error into a ROLLBACK without an
    error, and MariaDB rolls back a whole transaction on a deadlock and runs later statements in a
    new one: ``session.commit()`` would return normally with nothing (or only a part) committed,
    history written early by a reader (see write_pending) included. Only a transaction in which
    a statement failed is checked, so the extra statement runs on that rare path alone.
    """
    connection = session.connection(bind_arguments={"mapper": group.mapper})
    failed = connection.info.get(_FAILED)
    if failed is None or failed[0]() is not connection.get_transaction():
        return
    kind: type[BaseException] = failed[1]
    code: int | None = failed[2]
    dialect = connection.dialect.name
    try:
        if dialect in ("mysql", "mariadb"):
            lost = code == _MARIADB_DEADLOCK or (
                code == _MARIADB_LOCK_WAIT_TIMEOUT
                and bool(connection.exec_driver_sql("SELECT @@innodb_rollback_on_timeout").scalar())
            )
        elif dialect == "sqlite":
            driver = connection.connection.driver_connection
            lost = not getattr(driver, "in_transaction", True)
        else:
            lost = False
        if not lost and group.tx_id is not None:
            # The transaction row written early must still be there (on PostgreSQL, this
            # statement fails if the transaction is aborted).
            table = group.table
            row = connection.execute(sa.select(table.c.id).where(table.c.id == group.tx_id))
            lost = row.first() is None
        elif not lost and dialect == "postgresql":
            connection.exec_driver_sql("SELECT 1")  # fails if the transaction is aborted
    except sa.exc.DBAPIError as exc:
        raise _lost(kind) from exc
    if lost:
        raise _lost(kind)


def _lost(kind: type[BaseException]) -> VersioningError:
    # The error's type only: a database's message may quote a value of the failed statement.
    return VersioningError(
        f"cannot commit: the database aborted or rolled back this transaction after an earlier "
        f"error ({kind.__module__}.{kind.__qualname__}), so nothing of it (data or history) "
        f"would be committed. Call session.rollback() and redo the transaction's work"
    )


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    state = _existing(session)
    if state is None:
        return
    state.noted = [n for n in state.noted if not _within(n.noted_in, previous_transaction)]
    state.failed = [f for f in state.failed if not _within(f[0], previous_transaction)]
    for key, group in list(state.groups.items()):
        group.pending = [p for p in group.pending if not _within(p.noted_in, previous_transaction)]
        # The database took back the rows written in that savepoint: so does the digest.
        group.hashes = [h for h in group.hashes if not _within(h[0], previous_transaction)]
        for index, (written_in, segments, previous) in enumerate(group.segment_log):
            if _within(written_in, previous_transaction):
                # The database took back that segment and the ones after it.
                group.segments, group.previous = segments, previous
                del group.segment_log[index:]
                break
        if group.tx_id is None and not group.pending:
            del state.groups[key]


def _within(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


@event.listens_for(Session, "after_transaction_end")
def _reset(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and _KEY in session.info:
        del session.info[_KEY]
