"""Archives and the database as one chain: ``versioning.verify(session, archives=[...])``.

Each archive is checked on its own (:func:`versioning.verify_archive`); then their seals must
follow each other from seal 1 with no gap or overlap, each archived seal must be the database's
seal of that id (the database keeps every seal row), the archives must reach the newest
horizon, and the seal entries the database kept of archived seals (the transactions a prune
kept) must be the archives' — which ties what the database kept to what was archived.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from versioning.archive_check import Totals
from versioning.archiving import check_archive
from versioning.horizon import Horizon
from versioning.integrity import Digest, Problem, Report, _Target
from versioning.schema import TRANSACTION_ID

__all__ = ["check_archives"]


def check_archives(
    connection: Connection,
    target: _Target,
    report: Report,
    paths: list[str | os.PathLike[str]],
    saved: list[Digest],
    pruned: Horizon | None,
) -> None:
    """Add to ``report`` what the archives (and their tie to the database) show wrong."""
    seals, entries = target.seals, target.entries
    seal_name = seals.fullname
    expected: dict[tuple[int, int], tuple[int, str]] = {}
    if pruned is not None:
        for row in connection.execute(
            sa.select(
                entries.c.transaction_id, entries.c.segment, entries.c.seal_id, entries.c.digest
            ).where(entries.c.seal_id <= pruned.seal_id)
        ):
            expected[(int(row[0]), int(row[1]))] = (int(row[2]), str(row[3]))
    found: list[tuple[str, Totals]] = []
    # An archive made before any prune holds transactions the database still holds (and the
    # report counted already): the ids of those, to count them once.
    held_from = connection.execute(sa.select(sa.func.min(target.transactions.c.id))).scalar()
    for path in paths:
        archive_report, checker = check_archive(
            path,
            saved,
            collect=held_from is not None,
            expected=expected,
            collect_from=int(held_from or 0),
        )
        report.problems.extend(archive_report.problems)
        both_transactions, both_versions = _also_in_database(connection, target, checker.ids)
        report.transactions_checked += archive_report.transactions_checked - both_transactions
        report.versions_checked += archive_report.versions_checked - both_versions
        if checker.totals.first_seal_id is not None:
            found.append((Path(path).name, checker.totals))
    found.sort(key=lambda item: item[1].first_seal_id or 0)

    def problem(detail: str) -> None:
        report.problems.append(Problem("chain", seal_name, None, None, detail))

    next_id, previous_hash, previous_name = 1, None, None
    for name, totals in found:
        first, last = totals.first_seal_id or 0, totals.last_seal_id or 0
        if first > next_id:
            problem(
                f"seals {next_id}..{first - 1} are in none of the archives given (before "
                f"{name}): give every archive, from the first"
            )
        elif first < next_id:
            problem(
                f"archive {name} overlaps archive {previous_name} (seals {first}..{next_id - 1})"
            )
        elif totals.previous_hash != previous_hash:
            problem(f"archive {name} does not link to the archive before it ({previous_name})")
        next_id, previous_hash, previous_name = last + 1, totals.last_seal_hash, name
    # Each archived seal is the database's (it keeps every seal row).
    for name, totals in found:
        ids = sorted(totals.seals_seen)
        rows = {
            int(row[0]): (row[1], str(row[2]), int(row[3]), int(row[4]))
            for row in connection.execute(
                sa.select(
                    seals.c.id,
                    seals.c.previous_hash,
                    seals.c.hash,
                    seals.c.count,
                    seals.c.last_transaction_id,
                ).where(seals.c.id.between(ids[0], ids[-1]))
            )
        }
        for seal_id in ids:
            if rows.get(seal_id) != totals.seals_seen[seal_id]:
                problem(
                    f"seal {seal_id} of archive {name} is not the database's seal {seal_id}: "
                    f"the archive is of another database, or one of them was changed"
                )
    if pruned is not None and next_id - 1 < pruned.seal_id:
        problem(
            f"the database's history was pruned up to seal {pruned.seal_id} (archive "
            f"{pruned.archive}), but the archives given end at seal {next_id - 1}: give them all"
        )
    covered = {seal_id for _, totals in found for seal_id in totals.seals_seen}
    for (transaction_id, _), (seal_id, _) in sorted(expected.items()):
        if seal_id in covered:
            report.problems.append(
                Problem(
                    "added",
                    entries.fullname,
                    transaction_id,
                    None,
                    f"the database links transaction {transaction_id} in archived seal "
                    f"{seal_id}, but the archive of that seal does not",
                )
            )


def _also_in_database(connection: Connection, target: _Target, ids: set[int]) -> tuple[int, int]:
    """How many of the transactions ``ids`` the database holds, and how many history rows they
    have there: what its own verify counted of them already."""
    if not ids:
        return 0, 0
    low, high = min(ids), max(ids)
    column = target.transactions.c.id
    held = sum(
        1
        for (tx_id,) in connection.execute(sa.select(column).where(column.between(low, high)))
        if tx_id in ids
    )
    versions = 0
    for history in target.histories.values():
        tx = history.c[TRANSACTION_ID]
        for tx_id, rows in connection.execute(
            sa.select(tx, sa.func.count()).where(tx.between(low, high)).group_by(tx)
        ):
            if tx_id in ids:
                versions += int(rows)
    return held, versions
