"""Digests of the history the database's triggers wrote: made by :func:`versioning.seal`.

The session path writes each transaction's digest at commit from the rows in memory (see
:mod:`versioning.recording`). The rows a table's capture triggers write (see
:mod:`versioning.triggers`) are written by the database at ``COMMIT``, where no Python runs: their
digest is made by the next :func:`versioning.seal`, before it links the digests, from the rows as
stored, as :func:`versioning.verify` reads and hashes them:

* a transaction written by the triggers alone (a transaction row and history rows of tables
  captured by the database, no digest) gets segment 1, covering its transaction row and those
  rows;
* a transaction in which the session path wrote too gets one more segment, after the session's,
  covering the rows of the tables captured by the database that no segment lists.

Until that seal, those rows are protected by the append-only triggers only (see
``docs/integrity.md``). A transaction without a digest that holds rows of a table the session
path writes is never taken in: that is not how the library writes, and verify reports it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versioning import personal
from versioning.canonical import (
    prefixes,
    row_hashes,
    segment_digest,
    transaction_bytes,
)
from versioning.reading import _select, read_rows
from versioning.schema import HISTORY_BY_DATABASE, TRANSACTION_ID, VERSION_ID, issued_at_utc

__all__ = ["captured_tables", "digest_captured"]


def captured_tables(histories: dict[str, sa.Table]) -> dict[str, sa.Table]:
    """The history tables (by full name) that the database's triggers write."""
    return {name: t for name, t in histories.items() if t.info.get(HISTORY_BY_DATABASE)}


def _rows(
    connection: Connection, tables: dict[str, sa.Table], ids: list[int]
) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """The rows of ``tables`` in transactions ``ids``, per transaction and table, in write order."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for name, history in sorted(tables.items()):
        column = history.c[TRANSACTION_ID]

        def build(tolerant: bool, history: sa.Table = history, column: Any = column) -> Any:
            return (
                _select(history, tolerant)
                .where(column.in_(ids))
                .order_by(column, history.c[VERSION_ID])
            )

        for record in read_rows(connection, build):
            out.setdefault(int(record[TRANSACTION_ID]), {}).setdefault(name, []).append(record)
    return out


def _hashes(history: sa.Table, rows: list[dict[str, Any]]) -> list[bytes]:
    return row_hashes(history, [personal.committed_view(history, row) for row in rows])


def digest_captured(
    connection: Connection, target: Any, unsealed: list[tuple[int, int, str]]
) -> list[tuple[int, int, str]]:
    """Write the digest segments of history the triggers wrote and no digest covers (see the
    module's docstring), for the transactions without a digest and those of ``unsealed`` (the
    segments the seal is about to link, read in the same transaction): the segments written,
    as ``(transaction id, segment, digest)``, for the seal to link too."""
    captured = captured_tables(target.histories)
    if not captured:
        return []
    transactions, digests = target.transactions, target.digests
    written: list[tuple[int, int, str]] = []
    # Transactions without any digest: written by the triggers alone, if their rows say so.
    bare = [
        int(i)
        for i in connection.execute(
            sa.select(transactions.c.id)
            .outerjoin(digests, digests.c.transaction_id == transactions.c.id)
            .where(digests.c.transaction_id.is_(None))
            .order_by(transactions.c.id)
        ).scalars()
    ]
    if bare:
        foreign: set[int] = set()
        for name, history in target.histories.items():
            if name not in captured:
                column = history.c[TRANSACTION_ID]
                query = sa.select(column).where(column.in_(bare)).distinct()
                foreign.update(int(i) for i in connection.execute(query).scalars())
        rows = _rows(connection, captured, [i for i in bare if i not in foreign])
        columns = [
            transactions.c.id,
            issued_at_utc(transactions).label("issued_at"),
            transactions.c.actor,
            transactions.c.source_ip,
            transactions.c.request_id,
            transactions.c.reason,
            transactions.c.extra,
        ]
        found = {
            int(row["id"]): dict(row)
            for row in connection.execute(
                sa.select(*columns).where(transactions.c.id.in_(list(rows)))
            ).mappings()
        }
        for tx_id in sorted(rows):
            tx_hash = hashlib.sha256(transaction_bytes(found[tx_id])).digest()
            tables = [(n, _hashes(captured[n], r)) for n, r in sorted(rows[tx_id].items())]
            listed = {n: prefixes(h) for n, h in tables}
            listed[transactions.fullname] = prefixes([tx_hash])
            value = segment_digest(tx_hash, tables, None)
            written.append(_write(connection, digests, tx_id, 1, value, listed))
    # Transactions with digests not sealed yet: rows of captured tables no segment lists.
    ids = sorted({tx_id for tx_id, _, _ in unsealed})
    if ids:
        rows = _rows(connection, captured, ids)
        for tx_id, by_table in sorted(rows.items()):
            existing = connection.execute(
                sa.select(digests.c.segment, digests.c.digest, digests.c.rows)
                .where(digests.c.transaction_id == tx_id)
                .order_by(digests.c.segment)
            ).all()
            listed_names = {
                str(name)
                for _, _, document in existing
                if isinstance(document, dict)
                for name in document
            }
            missing = {n: r for n, r in by_table.items() if n not in listed_names}
            if not missing:
                continue
            last_number, last_digest, _ = existing[-1]
            tables = [(n, _hashes(captured[n], r)) for n, r in sorted(missing.items())]
            value = segment_digest(bytes.fromhex(str(last_digest)), tables, None)
            listed = {n: prefixes(h) for n, h in tables}
            written.append(_write(connection, digests, tx_id, int(last_number) + 1, value, listed))
    return written


def _write(
    connection: Connection,
    digests: sa.Table,
    tx_id: int,
    segment: int,
    value: bytes,
    rows: dict[str, str],
) -> tuple[int, int, str]:
    connection.execute(
        digests.insert(),
        {"transaction_id": tx_id, "segment": segment, "digest": value.hex(), "rows": rows},
    )
    return (tx_id, segment, value.hex())
