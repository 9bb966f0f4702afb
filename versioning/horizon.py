"""The horizon of pruned history: before it, history is in an archive, not in the database.

:func:`versioning.prune` deletes the history an archive holds (see :mod:`versioning.pruning`)
and writes one row of ``versioning_horizon``: the highest archived transaction id (``H``), the
latest ``issued_at`` of the archived transactions, the last archived seal and its hash, and the
archive's data SHA-256. The readers ask :func:`current` and refuse a moment before the horizon
with :class:`~versioning.ArchivedError` (:func:`check_moment`, :func:`resolve_bound`).

Reading the horizon is one primary-key probe of a table of one row per prune, made once per
database transaction of a connection (cached in ``Connection.info`` with that transaction).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versioning.errors import ArchivedError
from versioning.schema import UTCDateTime, horizon_table

__all__ = [
    "Horizon",
    "check_moment",
    "current",
    "forget",
    "pruned_horizon",
    "refuse",
    "refuse_range",
    "resolve_bound",
]

#: ``Connection.info`` key: ``(transaction, {transaction table name: Horizon | None})``.
_CACHE = "versioning_horizon"


@dataclass(frozen=True, slots=True)
class Horizon:
    """The newest prune's horizon. Moments (transaction ids) ``>= transaction_id`` and times
    ``>= issued_at`` are answered exactly as before the prune; earlier ones raise
    :class:`~versioning.ArchivedError`."""

    #: The highest transaction id the archive holds (every transaction up to it is archived).
    transaction_id: int
    #: The latest ``issued_at`` of the archived transactions.
    issued_at: dt.datetime
    #: The last archived seal, and its hash (the chain goes on from it in the database).
    seal_id: int
    seal_hash: str
    #: Seal entries of seals up to ``seal_id`` the prune left (the transactions it kept).
    kept_entries: int
    #: The archive's file name and the SHA-256 of its data (its manifest's ``data_sha256``).
    archive: str
    archive_sha256: str
    #: The transaction that recorded the prune.
    prune_transaction_id: int


def _read(connection: Connection, transactions: sa.Table) -> Horizon | None:
    table = horizon_table(transactions)
    row = (
        connection.execute(
            sa.select(
                table.c.transaction_id,
                table.c.horizon_transaction_id,
                sa.type_coerce(table.c.horizon_issued_at, UTCDateTime()).label("issued_at"),
                table.c.seal_id,
                table.c.seal_hash,
                table.c.kept_entries,
                table.c.archive,
                table.c.archive_sha256,
            )
            .order_by(table.c.transaction_id.desc())
            .limit(1)
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    return Horizon(
        transaction_id=int(row["horizon_transaction_id"]),
        issued_at=row["issued_at"],
        seal_id=int(row["seal_id"]),
        seal_hash=str(row["seal_hash"]),
        kept_entries=int(row["kept_entries"]),
        archive=str(row["archive"]),
        archive_sha256=str(row["archive_sha256"]),
        prune_transaction_id=int(row["transaction_id"]),
    )


def current(connection: Connection, transactions: sa.Table) -> Horizon | None:
    """The horizon of ``transactions``' history on this connection, ``None`` if never pruned.

    Read once per database transaction (a prune that commits meanwhile is seen by the next).
    """
    transaction = connection.get_transaction()
    cached = connection.info.get(_CACHE)
    if cached is None or cached[0] is not transaction or transaction is None:
        cached = (transaction, {})
        if transaction is not None:
            connection.info[_CACHE] = cached
    known: dict[str, Horizon | None] = cached[1]
    name = transactions.fullname
    if name not in known:
        known[name] = _read(connection, transactions)
    return known[name]


def forget(connection: Connection) -> None:
    """Drop the cached horizon of this connection (a prune in its transaction changed it)."""
    connection.info.pop(_CACHE, None)


def refuse(what: str, horizon: Horizon) -> ArchivedError:
    """The :class:`~versioning.ArchivedError` for ``what``, which reaches before ``horizon``."""
    return ArchivedError(
        what,
        horizon.transaction_id,
        horizon.issued_at,
        horizon.archive,
        horizon.archive_sha256,
    )


def check_moment(
    connection: Connection, transactions: sa.Table, at: dt.datetime | int, what: str
) -> Horizon | None:
    """Refuse a moment before the horizon; the horizon (``None`` if none) otherwise.

    A transaction id before the horizon's, or a time before the latest archived transaction's,
    is before it. A time at or after it may still name a transaction before the horizon (its
    clock ran ahead of a later id's): :func:`resolve_bound` checks the transaction it names.
    """
    horizon = current(connection, transactions)
    if horizon is None:
        return None
    if isinstance(at, int):
        if at < horizon.transaction_id:
            raise refuse(f"{what} at transaction {at}", horizon)
    elif at < horizon.issued_at:
        raise refuse(f"{what} at {at.isoformat()}", horizon)
    return horizon


def resolve_bound(
    connection: Connection, transactions: sa.Table, at: dt.datetime | int, bound: Any, what: str
) -> Any:
    """``bound`` (the highest transaction id visible at ``at``: an int, ``None`` or a scalar
    subquery) once ``at`` is checked against the horizon: unchanged without a horizon; with
    one, for a time, its value, which must not be before the horizon."""
    horizon = check_moment(connection, transactions, at, what)
    if horizon is None or isinstance(at, int):
        return bound
    if isinstance(bound, sa.ScalarSelect):
        moment: sa.Select[Any] = bound.element  # type: ignore[assignment]
        bound = connection.execute(moment).scalar()
    if bound is None or int(bound) < horizon.transaction_id:
        assert isinstance(at, dt.datetime)
        raise refuse(f"{what} at {at.isoformat()}", horizon)
    return int(bound)


def refuse_range(
    connection: Connection,
    transactions: sa.Table,
    since: dt.datetime | None,
    transaction_id: int | None,
    what: str,
) -> None:
    """After a prune, refuse a search (of versions, of events) whose range reaches before the
    horizon: its answer would silently lack the archived history. A range stays after it when
    it starts after the horizon's time (``since``) or names a transaction after the horizon's
    (``transaction_id``)."""
    pruned = current(connection, transactions)
    if pruned is None:
        return
    if transaction_id is not None:
        if transaction_id > pruned.transaction_id:
            return
        raise refuse(f"{what} of transaction {transaction_id}", pruned)
    if since is not None and since > pruned.issued_at:
        return
    start = "with no since=" if since is None else f"since {since.isoformat()}"
    raise refuse(f"{what} {start}", pruned)


def pruned_horizon(session: Any, *, metadata: sa.MetaData | None = None) -> Horizon | None:
    """The horizon of the newest prune of the history ``session`` reaches; ``None`` if its
    history was never pruned. Moments at or after it are answered as before the prune."""
    from versioning import arguments
    from versioning.integrity import _single

    session = arguments.session(session, "pruned_horizon")
    target = _single(session, metadata, "pruned_horizon")
    if target is None:
        return None
    connection = session.connection(bind_arguments={"mapper": target.mapper})
    return current(connection, target.transactions)
