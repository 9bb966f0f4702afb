"""Transaction rows written with no model and no session: events, and a prune from a URL.

A transaction that the library writes for itself (an event, see :mod:`versioning.event_log`; a
prune, see :mod:`versioning.pruning`) is a transaction row with the audit context, its own rows
(none, or an event row), and segment 1 of its digest covering them, as
:mod:`versioning.recording` writes a transaction's digest. :func:`write_transaction` writes the
row, :func:`write_digest` the digest, both on the caller's connection in its transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versioning.canonical import prefixes, segment_digest, transaction_bytes
from versioning.context import AuditContext
from versioning.reading import Transaction
from versioning.recording import _issued_at
from versioning.schema import integrity_tables, issued_at_utc

__all__ = ["write_digest", "write_transaction"]


def write_transaction(
    connection: Connection, transactions: sa.Table, context: AuditContext
) -> tuple[Transaction, bytes]:
    """Write a transaction row with ``context`` (who, from where, which request, why, extra);
    the transaction, and its row's hash (what its digest starts from)."""
    extra = dict(context.extra) or None
    insert = transactions.insert().values(
        issued_at=_issued_at(transactions, connection.dialect.name),
        actor=context.actor,
        source_ip=context.source_ip,
        request_id=context.request_id,
        reason=context.reason,
        extra=extra,
    )
    issued_at = issued_at_utc(transactions)
    if connection.dialect.insert_returning:
        tx_id, stamp = connection.execute(insert.returning(transactions.c.id, issued_at)).one()
    else:  # pragma: no cover - the supported backends have RETURNING
        key = connection.execute(insert).inserted_primary_key
        assert key is not None
        tx_id = key[0]
        stamp = connection.execute(
            sa.select(issued_at).where(transactions.c.id == tx_id)
        ).scalar_one()
    transaction = Transaction(
        id=int(tx_id),
        issued_at=stamp,
        actor=context.actor,
        source_ip=context.source_ip,
        request_id=context.request_id,
        reason=context.reason,
        extra=dict(context.extra),
    )
    row_hash = hashlib.sha256(
        transaction_bytes(
            {
                "id": transaction.id,
                "issued_at": stamp,
                "actor": context.actor,
                "source_ip": context.source_ip,
                "request_id": context.request_id,
                "reason": context.reason,
                "extra": extra,
            }
        )
    ).digest()
    return transaction, row_hash


def write_digest(
    connection: Connection,
    transactions: sa.Table,
    transaction_id: int,
    previous: bytes,
    tables: Sequence[tuple[str, list[bytes]]],
) -> None:
    """Write segment 1 of the transaction's digest: its row (hash ``previous``) and the rows of
    ``tables`` (name, row hashes; sorted by name)."""
    rows = {name: prefixes(hashes) for name, hashes in tables}
    rows[transactions.fullname] = prefixes([previous])
    connection.execute(
        integrity_tables(transactions)[0]
        .insert()
        .values(
            transaction_id=transaction_id,
            segment=1,
            digest=segment_digest(previous, list(tables), None).hex(),
            rows=rows,
            note=None,
        )
    )
