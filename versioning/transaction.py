"""The transaction row: one per database transaction that changes versioned records.

Its state lives with the session (``session.info``), never in module globals: the id of the row
written in the current database transaction, per database and transaction table, and which
``SessionTransaction`` (savepoint) wrote it — so that rolling that savepoint back also forgets the
row, and a later flush writes a new one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import InstanceState, Session, SessionTransaction

from versioning.context import current_context

__all__ = ["SessionState", "existing_state", "session_state", "transaction_id"]

_KEY = "_versioning"


@dataclass(eq=False)
class _TxRow:
    id: int
    written_in: SessionTransaction
    has_reason: bool


@dataclass(eq=False)
class SessionState:
    """Per-session bookkeeping of the capture. Reset at the end of each database transaction."""

    root: SessionTransaction | None = None
    rows: dict[tuple[Any, str], _TxRow] = field(default_factory=dict)
    #: What restores in this transaction asked to be written as its reason.
    notes: list[str] = field(default_factory=list)
    #: Values of versioned records loaded before the flush (batched), by state.
    pre_images: dict[InstanceState[Any], dict[str, Any]] = field(default_factory=dict)
    #: Values before the flush of each record being updated or deleted.
    before: dict[InstanceState[Any], dict[str, Any]] = field(default_factory=dict)
    #: Versioned attributes each of those records had changed when its UPDATE was prepared.
    changed: dict[InstanceState[Any], frozenset[str]] = field(default_factory=dict)

    def start_flush(self) -> None:
        """Forget what the previous flush noted about records."""
        self.pre_images.clear()
        self.before.clear()
        self.changed.clear()


def existing_state(session: Session) -> SessionState | None:
    """The session's state if it has any, without creating it (cheap: used on every flush)."""
    state: SessionState | None = session.info.get(_KEY)
    return state


def session_state(session: Session) -> SessionState:
    state: SessionState | None = session.info.get(_KEY)
    if state is None:
        state = session.info[_KEY] = SessionState()
    return state


def transaction_id(
    session: Session, state: SessionState, connection: Connection, table: sa.Table
) -> int:
    """Id of the transaction row of the current database transaction, written on first need."""
    root = session.get_transaction()
    if state.root is not root:
        state.root = root
        state.rows.clear()
    key = (connection.engine, table.fullname)
    row = state.rows.get(key)
    if row is not None:
        if state.notes and not row.has_reason and current_context().reason is None:
            connection.execute(
                table.update()
                .where(table.c.id == row.id, table.c.reason.is_(None))
                .values(reason="; ".join(state.notes))
            )
            row.has_reason = True
        return row.id
    context = current_context()
    reason = context.reason
    if reason is None and state.notes:
        reason = "; ".join(state.notes)
    result = connection.execute(
        table.insert().values(
            issued_at=dt.datetime.now(dt.UTC),
            actor=context.actor,
            source_ip=context.source_ip,
            request_id=context.request_id,
            reason=reason,
            extra=dict(context.extra) or None,
        )
    )
    pk = result.inserted_primary_key
    assert pk is not None
    written_in = session.get_nested_transaction() or root
    assert written_in is not None
    state.rows[key] = _TxRow(int(pk[0]), written_in, reason is not None)
    return int(pk[0])


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    state = existing_state(session)
    if state is None or not state.rows:
        return
    for key, row in list(state.rows.items()):
        transaction: SessionTransaction | None = row.written_in
        while transaction is not None:
            if transaction is previous_transaction:
                del state.rows[key]
                break
            transaction = transaction.parent


@event.listens_for(Session, "after_transaction_end")
def _reset(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None and _KEY in session.info:
        del session.info[_KEY]
