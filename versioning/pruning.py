"""Deleting archived history from the database: :func:`prune`.

A prune takes an archive written by :func:`versioning.archive`, checks it (with no database,
then against the database's seals), and deletes from the database the transactions it holds —
their history rows, digest rows, seal entries and transaction rows — through the append-only
triggers' maintenance switch, except the transactions that must stay for the readers to answer
as before at and after the horizon (:func:`kept`):

* for each record, the transaction of its newest version up to the horizon (so its state at the
  horizon, a delete included, is still known);
* for link history, every transaction with a row of a link still counted at the horizon (and, so
  that the count stays right, every other row of a link that keeps a row);
* the transaction issued last (the horizon in time: a time after it finds the same transaction
  as before).

Transactions are kept whole, so that ``verify`` checks them against their digests and seal
entries as before. The seals stay (one row each): the last archived one anchors the chain, which
the database goes on from. The prune is a transaction of its own, whose ``extra`` records the
horizon; so does a row of ``versioning_horizon``, which the readers consult
(:mod:`versioning.horizon`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from versioning import guard, horizon, recording
from versioning.append_only import maintenance
from versioning.archive_format import key_columns
from versioning.archiving import (
    ArchiveManifest,
    check_archive,
    read_manifest,
    session_of,
    target_of,
)
from versioning.bare_transactions import write_digest, write_transaction
from versioning.catalog import Catalog
from versioning.context import AuditContext, current_context
from versioning.declaration import versioned_spec
from versioning.errors import ArchiveError
from versioning.event_log import has_event_table
from versioning.horizon import Horizon
from versioning.integrity import _Target
from versioning.operation import Operation
from versioning.schema import (
    OPERATION,
    TRANSACTION_ID,
    UTCDateTime,
    event_table,
    horizon_table,
)

__all__ = ["kept", "prune"]

#: Transactions deleted per statement.
CHUNK = 500


def prune(
    bind: Any,
    *,
    archive: str | os.PathLike[str],
    metadata: sa.MetaData | None = None,
    catalog: Catalog | None = None,
) -> Horizon:
    """Delete from the database the history ``archive`` holds, and record the prune.

    The archive must verify (:func:`versioning.verify_archive`), start where the database's
    history after its horizon starts (prune archives in order), and its seals must be the
    database's. Nothing is deleted otherwise: :class:`~versioning.ArchiveError` says why.
    ``bind`` is a ``Session`` (the caller commits) or an ``Engine``/``Connection`` (committed
    here). As :func:`versioning.archive`, from an ``Engine`` or ``Connection`` with no model
    imported it works on the history the database's registry describes (or ``catalog``'s): the
    prune's own transaction is then written directly, with its digest. Event rows of deleted
    transactions are deleted with them. Returns the new :class:`~versioning.horizon.Horizon`.
    """
    path = Path(archive)
    report, checker = check_archive(path, collect=True)
    if not report.ok:
        first = report.problems[0]
        raise ArchiveError(
            f"{path.name} does not verify ({len(report.problems)} problem(s); the first: "
            f"{first.detail}): nothing was deleted. Use an intact copy of the archive"
        )
    manifest = read_manifest(path)
    archived = checker.ids
    with session_of(bind, "prune") as (session, own):
        target, connection = target_of(session, metadata, "prune", catalog, models_only=not own)
        session.flush()  # pending changes are their own: write_event refuses them below
        _check_against_database(connection, target, manifest, checker.totals.seals_seen, path)
        keep = kept(connection, target, manifest, archived)
        doomed = sorted(archived - keep)
        deleted = _delete(connection, target, doomed, manifest)
        entries = target.entries
        kept_entries = int(
            connection.execute(
                sa.select(sa.func.count()).where(entries.c.seal_id <= manifest.last_seal_id)
            ).scalar_one()
        )
        details = {
            "archive": path.name,
            "archive_sha256": manifest.data_sha256,
            "horizon_transaction_id": manifest.last_transaction_id,
            "horizon_issued_at": manifest.latest_issued_at.isoformat(),
            "seal_id": manifest.last_seal_id,
            "seal_hash": manifest.last_seal_hash,
            "kept_entries": kept_entries,
            "kept_transactions": len(archived) - len(doomed),
            "deleted_transactions": len(doomed),
            "deleted_versions": deleted,
        }
        reason = (
            f"prune: history up to transaction {manifest.last_transaction_id} archived to "
            f"{path.name} (data SHA-256 {manifest.data_sha256})"
        )
        prune_id = _record(session, connection, target, reason, {"prune": details})
        connection.execute(
            horizon_table(target.transactions)
            .insert()
            .values(
                transaction_id=prune_id,
                horizon_transaction_id=manifest.last_transaction_id,
                horizon_issued_at=sa.literal(manifest.latest_issued_at, UTCDateTime()),
                seal_id=manifest.last_seal_id,
                seal_hash=manifest.last_seal_hash,
                kept_entries=kept_entries,
                archive_sha256=manifest.data_sha256,
                archive=path.name[:255],
            )
        )
        horizon.forget(connection)
        if own:
            session.commit()
    return Horizon(
        transaction_id=manifest.last_transaction_id,
        issued_at=manifest.latest_issued_at,
        seal_id=manifest.last_seal_id,
        seal_hash=manifest.last_seal_hash,
        kept_entries=kept_entries,
        archive=path.name,
        archive_sha256=manifest.data_sha256,
        prune_transaction_id=prune_id,
    )


def _record(
    session: Session,
    connection: Connection,
    target: _Target,
    reason: str,
    extra: dict[str, Any],
) -> int:
    """Write the prune's transaction (``reason``; ``extra`` over the audit context's); its id.
    Through the models' recording when they are imported (it refuses a session that changed
    versioned records); without them, the transaction row and its digest directly."""
    if target.mapper is not None:
        spec = versioned_spec(target.mapper)
        assert spec is not None
        return recording.write_event(session, spec, reason=reason, extra=extra)
    context = current_context()
    merged = AuditContext(
        context.actor,
        context.source_ip,
        context.request_id,
        reason,
        {**context.extra, **extra},
    )
    transaction, previous = write_transaction(connection, target.transactions, merged)
    write_digest(connection, target.transactions, transaction.id, previous, [])
    return transaction.id


def _check_against_database(
    connection: Connection,
    target: _Target,
    manifest: ArchiveManifest,
    seals_seen: dict[int, tuple[str | None, str, int, int]],
    path: Path,
) -> None:
    """The archive starts after the horizon, its seals are the database's, and no transaction
    up to its last one is outside it."""
    pruned = horizon.current(connection, target.transactions)
    expected = 1 if pruned is None else pruned.seal_id + 1
    if manifest.first_seal_id != expected:
        raise ArchiveError(
            f"{path.name} holds seals {manifest.first_seal_id}..{manifest.last_seal_id}, but the "
            f"history in the database starts at seal {expected}: prune archives in order, each "
            f"once (archive again for an archive that fits). Nothing was deleted"
        )
    seals = target.seals
    found = {
        int(row[0]): (row[1], str(row[2]), int(row[3]), int(row[4]))
        for row in connection.execute(
            sa.select(
                seals.c.id,
                seals.c.previous_hash,
                seals.c.hash,
                seals.c.count,
                seals.c.last_transaction_id,
            ).where(seals.c.id.between(manifest.first_seal_id, manifest.last_seal_id))
        )
    }
    for seal_id, values in seals_seen.items():
        if found.get(seal_id) != values:
            raise ArchiveError(
                f"seal {seal_id} of {path.name} is not the database's seal {seal_id}: the "
                f"archive is of another database, or one of them was changed (run "
                f"versioning.verify()). Nothing was deleted"
            )
    entries, digests = target.entries, target.digests
    late = connection.execute(
        sa.select(sa.func.min(digests.c.transaction_id))
        .select_from(digests)
        .outerjoin(
            entries,
            sa.and_(
                entries.c.transaction_id == digests.c.transaction_id,
                entries.c.segment == digests.c.segment,
            ),
        )
        .where(
            digests.c.transaction_id <= manifest.last_transaction_id,
            sa.or_(entries.c.seal_id.is_(None), entries.c.seal_id > manifest.last_seal_id),
        )
    ).scalar()
    if late is not None:
        raise ArchiveError(
            f"transaction {late} committed with an id below the archive's last "
            f"({manifest.last_transaction_id}) but is not in {path.name}: seal, archive again "
            f"and prune that archive. Nothing was deleted"
        )


def kept(
    connection: Connection, target: _Target, manifest: ArchiveManifest, archived: set[int]
) -> set[int]:
    """The archived transactions a prune keeps (see the module's docstring)."""
    bound = manifest.last_transaction_id
    keep = {manifest.latest_transaction_id}
    links: list[tuple[int, set[int]]] = []  # per link: its net count, its transactions
    for history in target.histories.values():
        keys = [history.c[name] for name in key_columns(history)]
        tx = history.c[TRANSACTION_ID]
        if "link_table" in history.info:
            by_link: dict[tuple[Any, ...], tuple[int, set[int]]] = {}
            for row in connection.execute(
                sa.select(*keys, tx, history.c[OPERATION]).where(tx <= bound)
            ):
                link = tuple(row[: len(keys)])
                count, txs = by_link.get(link, (0, set()))
                step = 1 if row[-1] in (Operation.INSERT, Operation.INSERT.value) else -1
                txs.add(int(row[-2]))
                by_link[link] = (count + step, txs)
            links.extend(by_link.values())
            continue
        newest = (
            sa.select(sa.func.max(tx).label("t"))
            .where(tx <= bound)
            .group_by(*keys)
            .subquery("versioning_newest")
        )
        for value in connection.execute(sa.select(newest.c.t).distinct()).scalars():
            if int(value) in archived:
                keep.add(int(value))
    changed = True
    while changed:
        changed = False
        for count, txs in links:
            stays = count != 0 or any(t in keep or t not in archived for t in txs)
            if stays and not txs <= keep:
                before = len(keep)
                keep |= {t for t in txs if t in archived}
                changed = changed or len(keep) != before
    return keep & archived


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _delete(
    connection: Connection, target: _Target, doomed: list[int], manifest: ArchiveManifest
) -> int:
    """Delete the transactions ``doomed`` whole; the number of history rows deleted."""
    versions = 0
    entries, digests, transactions = target.entries, target.digests, target.transactions
    events: sa.Table | None = event_table(transactions)
    if not has_event_table(connection, transactions):
        events = None
    with guard.writing(), maintenance(connection):
        for chunk in _chunks(doomed):
            for history in target.histories.values():
                result = connection.execute(
                    history.delete().where(history.c[TRANSACTION_ID].in_(chunk))
                )
                versions += max(result.rowcount, 0)
            if events is not None:  # before their transaction rows, which they refer to
                connection.execute(events.delete().where(events.c.transaction_id.in_(chunk)))
            connection.execute(digests.delete().where(digests.c.transaction_id.in_(chunk)))
            connection.execute(
                entries.delete().where(
                    entries.c.transaction_id.in_(chunk),
                    entries.c.seal_id.between(manifest.first_seal_id, manifest.last_seal_id),
                )
            )
            connection.execute(transactions.delete().where(transactions.c.id.in_(chunk)))
    return versions
