"""Tamper evidence: seal the transactions' digests into a hash chain, verify everything, digests.

At commit, each transaction writes its digest row (see :mod:`versioning.recording`): a SHA-256
over its transaction row and every history row it wrote, in write order, in canonical form
(:mod:`versioning.canonical`), with a prefix of each row's hash (its first 6 bytes) to locate a
change.

* :func:`seal` links every digest row not sealed yet, in ``(transaction_id, segment)`` order,
  into a new seal: SHA-256 over the previous seal's hash, the seal's id and each digest. Seal ids
  follow each other (``previous + 1``): two sealers at once cannot fork the chain, the second
  one's INSERT fails and it retries on the new chain. Writers never wait for a sealer.
* :func:`verify` reads everything in batches of transactions and recomputes each row's hash,
  each digest and each seal, and names what does not match (:class:`Problem`). Writes nothing.
* :func:`digest` gives the newest seal's :class:`Digest`: keep it outside the database, and
  give it back to :func:`verify` (``digests=[...]``) to catch a chain rewritten consistently or
  cut at its end.

See docs/integrity.md for the design, the threat model and the operations.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.orm import Session

from versioning import arguments, horizon, personal
from versioning.canonical import (
    event_hash,
    listed_prefixes,
    row_hashes,
    row_prefix,
    segment_digest,
    transaction_bytes,
)
from versioning.captured_digests import captured_tables, digest_captured
from versioning.catalog import Catalog, load, session_catalogs
from versioning.errors import ArgumentError, CatalogError, SealConflictError
from versioning.reading import _select, read_rows
from versioning.schema import (
    TRANSACTION_ID,
    VERSION_ID,
    UTCDateTime,
    event_table,
    horizon_table,
    integrity_tables,
    issued_at_utc,
)

__all__ = [
    "AutoSealer",
    "Digest",
    "Problem",
    "Report",
    "Seal",
    "digest",
    "seal",
    "seal_hash",
    "verify",
]

_log = logging.getLogger("versioning")

Kind = Literal["altered", "missing", "added", "chain", "digest"]

#: Transactions read and checked at a time by :func:`verify`.
BATCH = 500
#: Seal entries inserted per statement.
_ENTRY_BATCH = 5_000
#: Attempts of :func:`seal` when another sealer took the next seal id.
_ATTEMPTS = 5
_ZERO = bytes(32)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing :func:`verify` found wrong.

    ``kind`` is ``"altered"`` (content changed), ``"missing"`` (deleted), ``"added"`` (not
    written by versioning), ``"chain"`` (a seal or a link between seals) or ``"digest"`` (a
    saved :class:`Digest` does not match). ``table`` names the history, transaction, digest or
    seal table concerned; ``detail`` says what was found and what to do.
    """

    kind: Kind
    table: str | None
    transaction_id: int | None
    version_id: int | None
    detail: str


@dataclass(slots=True)
class Report:
    """What :func:`verify` checked and found."""

    problems: list[Problem] = field(default_factory=list)
    transactions_checked: int = 0
    versions_checked: int = 0
    #: Transactions with a digest segment that no seal links yet: their rows are checked
    #: against their own digest only (see docs/integrity.md).
    unsealed: int = 0
    #: Event rows (see :mod:`versioning.event_log`) checked, apart from ``versions_checked``.
    events_checked: int = 0
    #: With ``since``/``until``: the first and last transaction ids of the range checked
    #: (``None`` when no transaction falls in it); ``None`` for a whole verify.
    transaction_range: tuple[int, int] | None = None
    #: Whether only a range was checked (``verify(since=..., until=...)``).
    partial: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Seal:
    """A seal: it links ``count`` digests, of transactions up to ``last_transaction_id``."""

    id: int
    previous_hash: str | None
    hash: str
    sealed_at: dt.datetime
    count: int
    last_transaction_id: int


@dataclass(frozen=True, slots=True)
class Digest:
    """The newest seal, to keep outside the database: ``to_json()`` / ``Digest.from_json()``."""

    seal_id: int
    last_transaction_id: int
    hash: str
    sealed_at: dt.datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "seal_id": self.seal_id,
                "last_transaction_id": self.last_transaction_id,
                "hash": self.hash,
                "sealed_at": self.sealed_at.isoformat(),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Digest:
        try:
            data = json.loads(text)
            sealed_at = dt.datetime.fromisoformat(data["sealed_at"])
            made = cls(
                int(data["seal_id"]),
                int(data["last_transaction_id"]),
                str(data["hash"]),
                sealed_at,
            )
            if len(bytes.fromhex(made.hash)) != 32:
                raise ValueError("the hash is not a SHA-256")
        except (ValueError, KeyError, TypeError) as exc:
            raise ArgumentError(
                f"not a versioning digest ({exc}): pass the text Digest.to_json() returned"
            ) from None
        return made


def seal_hash(previous: str | None, seal_id: int, entries: Iterable[tuple[int, int, str]]) -> str:
    """SHA-256 over the previous seal's hash, the seal id and each ``(transaction_id, segment,
    digest)``, in order."""
    digest = hashlib.sha256(bytes.fromhex(previous) if previous else _ZERO)
    digest.update(seal_id.to_bytes(8, "big"))
    for transaction_id, segment, value in entries:
        digest.update(transaction_id.to_bytes(8, "big") + segment.to_bytes(4, "big"))
        digest.update(bytes.fromhex(value))
    return digest.hexdigest()


# --- what a session reaches -------------------------------------------------------------------


@dataclass(eq=False)
class _Target:
    """One transaction table on one database, with its digest, seal and history tables."""

    #: A mapper bound to it (how a session gives its connection); ``None`` from a connection.
    mapper: Any
    transactions: sa.Table
    digests: sa.Table
    seals: sa.Table
    entries: sa.Table
    histories: dict[str, sa.Table]
    #: Where the history tables are known from, for messages.
    source: str = "the models imported here"
    #: Per history table: columns a loaded catalog cannot hash as the models do.
    inexact: dict[str, frozenset[str]] = field(default_factory=dict)


def _target(mapper: Any, catalog: Catalog, source: str) -> _Target:
    digests, seals, entries = integrity_tables(catalog.transaction)
    return _Target(
        mapper,
        catalog.transaction,
        digests,
        seals,
        entries,
        {entry.history.fullname: entry.history for entry in catalog.tables},
        source,
        {entry.history.fullname: entry.inexact for entry in catalog.tables if entry.inexact},
    )


def _targets(session: Session, metadata: sa.MetaData | None, name: str) -> list[_Target]:
    """The transaction tables (with their history tables) that ``session`` reaches and that
    exist in its databases; ``metadata`` restricts them to those of that ``MetaData``."""
    return [
        _target(mapper, catalog, "the models imported here")
        for mapper, catalog in session_catalogs(session, metadata, name)
    ]


def _single(session: Session, metadata: sa.MetaData | None, name: str) -> _Target | None:
    targets = _targets(session, metadata, name)
    if len(targets) > 1:
        raise ArgumentError(
            f"versioning.{name}() reaches several transaction tables "
            f"({', '.join(t.transactions.fullname for t in targets)}): pass metadata="
        )
    return targets[0] if targets else None


def _from_connection(connection: Connection, catalog: Catalog | None, name: str) -> _Target:
    """The target of a connection: ``catalog``, or the one its database's registry holds."""
    if catalog is None:
        catalog = load(connection)
    elif not isinstance(catalog, Catalog):
        raise ArgumentError(
            f"versioning.{name}() takes catalog= a versioning.catalog.Catalog, got {catalog!r}"
        )
    return _target(None, catalog, f"the registry {catalog.registry.fullname}")


# --- seal -------------------------------------------------------------------------------------


def _now(dialect: str) -> Any:
    """The database's clock, in UTC, with microseconds."""
    if dialect == "postgresql":
        return sa.func.clock_timestamp()
    if dialect in ("mysql", "mariadb"):
        return sa.literal_column("UTC_TIMESTAMP(6)", UTCDateTime())
    if dialect == "sqlite":
        return sa.func.strftime("%Y-%m-%d %H:%M:%f", "now").concat("000")
    return dt.datetime.now(dt.UTC)  # pragma: no cover - the three backends above are supported


def _seal_row(row: RowMapping) -> Seal:
    return Seal(
        id=int(row["id"]),
        previous_hash=row["previous_hash"],
        hash=row["hash"],
        sealed_at=row["sealed_at"],
        count=int(row["count"]),
        last_transaction_id=int(row["last_transaction_id"]),
    )


def _seal_columns(seals: sa.Table) -> list[Any]:
    return [
        seals.c.id,
        seals.c.previous_hash,
        seals.c.hash,
        sa.type_coerce(seals.c.sealed_at, UTCDateTime()).label("sealed_at"),
        seals.c.count,
        seals.c.last_transaction_id,
    ]


def seal(
    session: Session | Connection,
    *,
    metadata: sa.MetaData | None = None,
    catalog: Catalog | None = None,
) -> Seal | None:
    """Link every digest not sealed yet into a new seal; ``None`` if there is none. The caller
    commits.

    Given a ``Connection`` instead of a session, seals the transaction table its database's
    registry names (or ``catalog``'s), with no model imported.

    Another sealer committing the next seal first makes this one retry on the new chain (in a
    SAVEPOINT); if that cannot succeed in this transaction (MariaDB's repeatable read keeps the
    old chain in view), :class:`~versioning.SealConflictError` says to roll back and seal again.
    """
    if isinstance(session, Connection):
        connection = session
        target: _Target | None = _from_connection(connection, catalog, "seal")
        assert target is not None
        for _ in range(_ATTEMPTS):
            try:
                with connection.begin_nested():
                    return _seal_once(connection, target)
            except sa.exc.IntegrityError:
                continue
            except sa.exc.OperationalError as exc:
                raise SealConflictError(_conflict(target)) from exc
        raise SealConflictError(_conflict(target))
    session = arguments.session(session, "seal")
    target = _single(session, metadata, "seal")
    if target is None:
        return None
    for _ in range(_ATTEMPTS):
        try:
            with session.begin_nested():
                # Asked for within the savepoint: the SAVEPOINT is emitted now.
                connection = session.connection(bind_arguments={"mapper": target.mapper})
                return _seal_once(connection, target)
        except sa.exc.IntegrityError:
            continue  # another sealer took this id (or these digests): look again
        except sa.exc.OperationalError as exc:  # a deadlock between two sealers (MariaDB)
            raise SealConflictError(_conflict(target)) from exc
    raise SealConflictError(_conflict(target))


def _conflict(target: _Target) -> str:
    return (
        f"another sealer sealed {target.seals.fullname} at the same time: roll back this "
        f"transaction and call versioning.seal() again (run one sealer at a time to avoid this)"
    )


def _lock_key(seals: sa.Table) -> int:
    """The PostgreSQL advisory lock key of a seal table: a signed 64-bit number of its name."""
    name = f"versioning seal {seals.fullname}".encode()
    return int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)


def _seal_once(connection: Connection, target: _Target) -> Seal | None:
    seals, entries, digests = target.seals, target.entries, target.digests
    latest_seal = sa.select(seals.c.id, seals.c.hash).order_by(seals.c.id.desc()).limit(1)
    if connection.dialect.name == "postgresql":
        # One sealer at a time, without UPDATE rights: a row lock (FOR UPDATE) needs them on
        # PostgreSQL, a transaction-level advisory lock does not. Writers never take it.
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_key(seals))))
    else:
        latest_seal = latest_seal.with_for_update()
    latest = connection.execute(latest_seal).mappings().first()
    unsealed = connection.execute(
        sa.select(digests.c.transaction_id, digests.c.segment, digests.c.digest)
        .outerjoin(
            entries,
            sa.and_(
                entries.c.transaction_id == digests.c.transaction_id,
                entries.c.segment == digests.c.segment,
            ),
        )
        .where(entries.c.transaction_id.is_(None))
        .order_by(digests.c.transaction_id, digests.c.segment)
    ).all()
    links = [(int(t), int(s), str(d)) for t, s, d in unsealed]
    # History the database's triggers wrote gets its digests now (see captured_digests).
    links = sorted(links + digest_captured(connection, target, links))
    if not links:
        return None
    seal_id = 1 if latest is None else int(latest["id"]) + 1
    previous = None if latest is None else str(latest["hash"])
    value = seal_hash(previous, seal_id, links)
    connection.execute(
        seals.insert().values(
            id=seal_id,
            previous_hash=previous,
            hash=value,
            sealed_at=_now(connection.dialect.name),
            count=len(links),
            last_transaction_id=max(link[0] for link in links),
        )
    )
    for start in range(0, len(links), _ENTRY_BATCH):
        connection.execute(
            entries.insert(),
            [
                {
                    "transaction_id": t,
                    "segment": s,
                    "seal_id": seal_id,
                    "position": start + i,
                    "digest": d,
                }
                for i, (t, s, d) in enumerate(links[start : start + _ENTRY_BATCH])
            ],
        )
    row = (
        connection.execute(sa.select(*_seal_columns(seals)).where(seals.c.id == seal_id))
        .mappings()
        .one()
    )
    return _seal_row(row)


def digest(
    session: Session | Connection,
    *,
    metadata: sa.MetaData | None = None,
    catalog: Catalog | None = None,
) -> Digest | None:
    """The :class:`Digest` of the newest seal, or ``None`` if nothing was sealed yet.

    Given a ``Connection`` instead of a session: of the transaction table its database's
    registry names (or ``catalog``'s)."""
    if isinstance(session, Connection):
        connection = session
        target: _Target | None = _from_connection(connection, catalog, "digest")
        assert target is not None
    else:
        session = arguments.session(session, "digest")
        target = _single(session, metadata, "digest")
        if target is None:
            return None
        connection = session.connection(bind_arguments={"mapper": target.mapper})
    seals = target.seals
    row = (
        connection.execute(sa.select(*_seal_columns(seals)).order_by(seals.c.id.desc()).limit(1))
        .mappings()
        .first()
    )
    if row is None:
        return None
    newest = _seal_row(row)
    return Digest(newest.id, newest.last_transaction_id, newest.hash, newest.sealed_at)


# --- verify -----------------------------------------------------------------------------------


def verify(
    session: Session | Connection,
    digests: Sequence[Digest] = (),
    *,
    archives: Sequence[str | os.PathLike[str]] = (),
    metadata: sa.MetaData | None = None,
    catalog: Catalog | None = None,
    batch: int = BATCH,
    progress: Callable[[Report], None] | None = None,
    since: dt.datetime | int | None = None,
    until: dt.datetime | int | None = None,
) -> Report:
    """Recompute every row hash, digest and seal the session reaches; writes nothing.

    ``digests`` are :class:`Digest` objects saved earlier (see :func:`digest`): each must
    match the seal of its id, which must still exist. ``archives`` are archive files
    (:func:`versioning.archive`): each is checked (:func:`versioning.verify_archive`), and
    they and the database are checked as one chain, from seal 1 to the newest. Reads
    ``batch`` transactions at a time.

    Given a ``Connection`` instead of a session, verifies what its database's registry
    (``versioning_catalog``, see :mod:`versioning.catalog`) describes, or ``catalog``, with no
    model imported. ``progress`` is called with the report so far after each batch.

    ``since`` and ``until`` (a transaction id or a timezone-aware ``datetime``; ``since``
    inclusive, ``until`` exclusive, as :func:`versioning.search` has them) check a range only:
    its transactions against their digest rows, and the seals that link them (each recomputed,
    and linked to the seal before it; with ``digests``, every seal up to theirs too). Nothing
    outside the range is read; the report counts the range only.
    """
    bounds = _bounds(since, until)
    if isinstance(archives, str | os.PathLike):
        raise ArgumentError(
            f"versioning.verify() takes archives=[path, ...], got a single path {archives!r}: "
            f"pass archives=[{str(archives)!r}]"
        )
    saved = list(digests)
    for item in saved:
        if not isinstance(item, Digest):
            raise ArgumentError(
                f"versioning.verify() takes digests=[Digest, ...], got {item!r}: read saved ones "
                f"with versioning.Digest.from_json(text)"
            )
    if not isinstance(batch, int) or batch < 1:
        raise ArgumentError(f"versioning.verify() takes batch= a positive int, got {batch!r}")
    if bounds is not None and archives:
        raise ArgumentError(
            "versioning.verify(): archives= checks the whole chain, since=/until= a range of the "
            "database: pass one or the other"
        )
    report = Report(partial=bounds is not None)
    if isinstance(session, Connection):
        target = _from_connection(session, catalog, "verify")
        _refuse_inexact(target)
        _verify_target(session, target, report, batch, progress, saved, archives, bounds)
        return report
    session = arguments.session(session, "verify")
    targets = _targets(session, metadata, "verify")
    if (saved or archives) and len(targets) != 1:
        raise ArgumentError(
            "versioning.verify(digests=..., archives=...) needs exactly one transaction table: "
            "pass metadata="
        )
    if bounds is not None and len(targets) > 1:
        raise ArgumentError(
            "versioning.verify(since=..., until=...) needs exactly one transaction table: "
            "pass metadata="
        )
    for target in targets:
        connection = session.connection(bind_arguments={"mapper": target.mapper})
        _verify_target(connection, target, report, batch, progress, saved, archives, bounds)
    return report


Bound = dt.datetime | int | None


def _bounds(since: Any, until: Any) -> tuple[Bound, Bound] | None:
    """``since`` and ``until`` checked (``None``: no range asked for)."""
    if since is None and until is None:
        return None
    checked: list[Bound] = []
    for name, value in (("since", since), ("until", until)):
        if value is None:
            checked.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | dt.datetime):
            raise ArgumentError(
                f"versioning.verify(): {name} must be a transaction id (an int) or a "
                f"timezone-aware datetime, got {value!r}"
            )
        checked.append(arguments.moment(value, "verify"))
    return checked[0], checked[1]


def _range(
    connection: Connection, target: _Target, bounds: tuple[Bound, Bound]
) -> tuple[int, int] | None:
    """The transaction ids ``[low, high]`` of ``since``/``until``; ``None`` if empty. A moment
    is the ids of the transactions issued from it (inclusive) or before it (exclusive)."""
    since, until = bounds
    tx = target.transactions
    issued = issued_at_utc(tx)
    low = 1
    high = 2**63 - 1
    if isinstance(since, int):
        low = max(since, 1)
    elif since is not None:
        found = connection.execute(sa.select(sa.func.min(tx.c.id)).where(issued >= since)).scalar()
        if found is None:
            return None
        low = int(found)
    if isinstance(until, int):
        high = until - 1
    elif until is not None:
        found = connection.execute(sa.select(sa.func.max(tx.c.id)).where(issued < until)).scalar()
        if found is None:
            return None
        high = int(found)
    return (low, high) if low <= high else None


def _verify_target(
    connection: Connection,
    target: _Target,
    report: Report,
    batch: int,
    progress: Callable[[Report], None] | None,
    saved: list[Digest],
    archives: Sequence[str | os.PathLike[str]],
    bounds: tuple[Bound, Bound] | None = None,
) -> None:
    if bounds is not None:
        _verify_range(connection, target, report, batch, progress, saved, bounds)
        return
    _Verifier(connection, target, report, batch, progress).run()
    pruned = horizon.current(connection, target.transactions)
    _check_chain(connection, target, report, saved, pruned)
    if pruned is not None:
        _check_horizons(connection, target, report, pruned)
    if archives:
        from versioning.archive_chain import check_archives

        check_archives(connection, target, report, list(archives), saved, pruned)


def _verify_range(
    connection: Connection,
    target: _Target,
    report: Report,
    batch: int,
    progress: Callable[[Report], None] | None,
    saved: list[Digest],
    bounds: tuple[Bound, Bound],
) -> None:
    """Check the transactions of a range and the seals that link them; read nothing else."""
    span = _range(connection, target, bounds)
    pruned = horizon.current(connection, target.transactions)
    if span is not None and pruned is not None and span[0] <= pruned.transaction_id:
        error = horizon.refuse("versioning.verify()", pruned)
        error.args = (
            f"versioning.verify() of a range from transaction {span[0]}: history up to "
            f"transaction {pruned.transaction_id} was archived to {pruned.archive!r} and pruned "
            f"from the database; start the range after it (since={pruned.transaction_id + 1}), "
            f"or verify the archives with versioning.verify(archives=[...])",
        )
        raise error
    covering: set[int] = set()
    if span is not None:
        verifier = _Verifier(connection, target, report, batch, progress, span)
        verifier.run()
        if verifier.seen is not None:
            report.transaction_range = verifier.seen
        entries = target.entries
        covering = {
            int(seal_id)
            for seal_id in connection.execute(
                sa.select(entries.c.seal_id)
                .where(entries.c.transaction_id.between(*span))
                .distinct()
            ).scalars()
        }
    wanted = set(covering)
    if saved and (covering or span is None):
        # A saved digest proves the seals before it only through every seal in between.
        start = min(covering) if covering else min(item.seal_id for item in saved)
        wanted |= set(range(start, max(item.seal_id for item in saved) + 1))
    elif saved:
        wanted |= {item.seal_id for item in saved}
    _check_seals(connection, target, report, sorted(wanted), saved, pruned)


def _links_match(
    connection: Connection, entries: sa.Table, seal_id: int, seal_row: RowMapping
) -> bool:
    """Whether seal ``seal_id`` (its row) is the hash of the digests its entries link, and links
    as many as it says."""
    links = connection.execute(
        sa.select(entries.c.transaction_id, entries.c.segment, entries.c.digest)
        .where(entries.c.seal_id == seal_id)
        .order_by(entries.c.position)
    ).all()
    value = seal_hash(
        seal_row["previous_hash"], seal_id, ((int(t), int(s), str(d)) for t, s, d in links)
    )
    return bool(value == seal_row["hash"] and len(links) == seal_row["count"])


def _check_seals(
    connection: Connection,
    target: _Target,
    report: Report,
    wanted: list[int],
    saved: list[Digest],
    pruned: horizon.Horizon | None,
) -> None:
    """Recompute the seals ``wanted`` (ascending ids), each linked to the seal before it, and
    check the saved digests of them. A seal up to a prune's horizon lost the entries of the
    pruned transactions: its link is checked, and the horizon's seal against the hash the prune
    recorded (as a whole verify does)."""
    seals, entries = target.seals, target.entries
    name = seals.fullname
    rows: dict[int, RowMapping] = {}
    needed = sorted(set(wanted) | {i - 1 for i in wanted if i > 1})
    for start in range(0, len(needed), 1000):
        chunk = needed[start : start + 1000]
        for row in connection.execute(
            sa.select(
                seals.c.id,
                seals.c.previous_hash,
                seals.c.hash,
                seals.c.count,
                seals.c.last_transaction_id,
            ).where(seals.c.id.in_(chunk))
        ).mappings():
            rows[int(row["id"])] = row

    def chain(detail: str) -> None:
        report.problems.append(Problem("chain", name, None, None, detail))

    for seal_id in wanted:
        current = rows.get(seal_id)
        if current is None:
            if seal_id not in {item.seal_id for item in saved}:
                chain(
                    f"seal {seal_id}, which links transactions checked, is missing; restore the "
                    f"seals from a backup"
                )
            continue
        before = rows.get(seal_id - 1)
        if seal_id > 1 and before is None:
            chain(
                f"seal(s) before seal {seal_id} are missing (seal {seal_id - 1} is not there); "
                f"restore them from a backup"
            )
        elif current["previous_hash"] != (None if before is None else before["hash"]):
            chain(
                f"seal {seal_id} does not link to seal {seal_id - 1}: its previous hash differs "
                f"from that seal's hash; restore the seals from a backup"
            )
        if pruned is not None and seal_id <= pruned.seal_id:
            if seal_id == pruned.seal_id and current["hash"] != pruned.seal_hash:
                chain(
                    f"seal {seal_id}, the last one archived, differs from the hash its prune "
                    f"recorded: the seal was changed; restore it from a backup"
                )
            continue
        if not _links_match(connection, entries, seal_id, current):
            chain(
                f"seal {seal_id} does not match the digests it links: the seal or its entries "
                f"in {entries.fullname} were changed; restore them from a backup"
            )
    found = {k: (str(r["hash"]), int(r["last_transaction_id"])) for k, r in rows.items()}
    report.problems.extend(_saved_digest_problems(name, saved, found, None))


def _refuse_inexact(target: _Target) -> None:
    """Refuse, before reading anything, a table whose hashes the catalog cannot recompute."""
    for name, columns in sorted(target.inexact.items()):
        raise CatalogError(
            f"cannot verify {name} from {target.source}: the type of column(s) "
            f"{', '.join(sorted(columns))} is a custom type whose stored values do not give the "
            f"model's hashes (see docs/integrity.md); verify from Python with the models imported "
            f"(versioning.verify(session)), or install the library that defines the type"
        )


def _check_horizons(
    connection: Connection, target: _Target, report: Report, pruned: horizon.Horizon
) -> None:
    """Each horizon row says what its prune's transaction row (covered by its digest) says,
    and the seal entries the newest prune kept are all there."""
    table = horizon_table(target.transactions)
    tx = target.transactions
    rows = connection.execute(
        sa.select(
            table.c.transaction_id,
            table.c.horizon_transaction_id,
            sa.type_coerce(table.c.horizon_issued_at, UTCDateTime()).label("issued_at"),
            table.c.seal_id,
            table.c.seal_hash,
            table.c.kept_entries,
            table.c.archive_sha256,
            tx.c.extra,
        ).outerjoin(tx, tx.c.id == table.c.transaction_id)
    ).mappings()
    for row in rows:
        recorded = (row["extra"] or {}).get("prune") or {}
        issued = recorded.get("horizon_issued_at")
        same = (
            recorded.get("horizon_transaction_id") == row["horizon_transaction_id"]
            and issued is not None
            and dt.datetime.fromisoformat(issued) == row["issued_at"]
            and recorded.get("seal_id") == row["seal_id"]
            and recorded.get("seal_hash") == row["seal_hash"]
            and recorded.get("kept_entries") == row["kept_entries"]
            and recorded.get("archive_sha256") == row["archive_sha256"]
        )
        if not same:
            report.problems.append(
                Problem(
                    "altered",
                    table.fullname,
                    int(row["transaction_id"]),
                    None,
                    f"the horizon of the prune in transaction {row['transaction_id']} differs "
                    f"from what that transaction recorded: the horizon row was changed; "
                    f"restore it from a backup",
                )
            )
    entries = target.entries
    left = connection.execute(
        sa.select(sa.func.count()).where(entries.c.seal_id <= pruned.seal_id)
    ).scalar_one()
    if int(left) != pruned.kept_entries:
        report.problems.append(
            Problem(
                "missing",
                entries.fullname,
                None,
                None,
                f"the prune in transaction {pruned.prune_transaction_id} kept "
                f"{pruned.kept_entries} transaction segment(s) sealed up to seal "
                f"{pruned.seal_id}; {left} are there: kept transactions were deleted (or "
                f"added); compare with a backup, or verify with the archives",
            )
        )


class _Verifier:
    """Checks one target's transactions, ``batch`` transaction ids at a time."""

    def __init__(
        self,
        connection: Connection,
        target: _Target,
        report: Report,
        batch: int,
        progress: Callable[[Report], None] | None = None,
        span: tuple[int, int] | None = None,
    ):
        #: The transaction ids read (all of them without a range).
        self.low: int = 1 if span is None else span[0]
        self.high: int | None = None if span is None else span[1]
        #: The first and last transaction ids checked.
        self.seen: tuple[int, int] | None = None
        self.progress = progress
        self.connection = connection
        self.target = target
        self.report = report
        self.batch = batch
        self.tx_name = target.transactions.fullname
        self.digest_name = target.digests.fullname
        #: History tables the database's triggers write: their rows get digests at the next
        #: seal (see versioning.captured_digests), so until then none lists them.
        self.captured = set(captured_tables(target.histories))
        # The event table, when the database has it (one created before events has not).
        events = event_table(target.transactions)
        exists = sa.inspect(connection).has_table(events.name, schema=events.schema)
        self.events = events if exists else None
        self.event_name = events.fullname if exists else None

    def problem(
        self, kind: Kind, table: str | None, tx: int | None, version: int | None, detail: str
    ) -> None:
        self.report.problems.append(Problem(kind, table, tx, version, detail))

    def _next(self, cursor: int) -> int | None:
        t = self.target
        columns = [t.transactions.c.id, t.digests.c.transaction_id, t.entries.c.transaction_id]
        if self.events is not None:
            columns.append(self.events.c.transaction_id)
        starts = [
            self.connection.execute(
                sa.select(sa.func.min(column)).where(
                    column > cursor, *(() if self.high is None else (column <= self.high,))
                )
            ).scalar()
            for column in columns
        ]
        found = [int(s) for s in starts if s is not None]
        return min(found) if found else None

    def run(self) -> None:
        cursor = self.low - 1
        while (low := self._next(cursor)) is not None:
            high = low + self.batch - 1
            if self.high is not None:
                high = min(high, self.high)
            self._window(low, high)
            cursor = high
            if self.progress is not None:
                self.progress(self.report)

    def _window(self, low: int, high: int) -> None:
        t = self.target
        c = self.connection
        tx_columns = [
            t.transactions.c.id,
            issued_at_utc(t.transactions).label("issued_at"),
            t.transactions.c.actor,
            t.transactions.c.source_ip,
            t.transactions.c.request_id,
            t.transactions.c.reason,
            t.transactions.c.extra,
        ]
        # The digest rows first: a transaction committing while this batch is read then shows
        # up in the later reads only, without a digest (see _committed_meanwhile).
        segments: dict[int, list[RowMapping]] = {}
        for row in c.execute(
            sa.select(t.digests)
            .where(t.digests.c.transaction_id.between(low, high))
            .order_by(t.digests.c.transaction_id, t.digests.c.segment)
        ).mappings():
            segments.setdefault(int(row["transaction_id"]), []).append(row)
        txs = {
            int(row["id"]): row
            for row in c.execute(
                sa.select(*tx_columns).where(t.transactions.c.id.between(low, high))
            ).mappings()
        }
        sealed: dict[int, dict[int, tuple[str, int]]] = {}
        for entry in c.execute(
            sa.select(
                t.entries.c.transaction_id,
                t.entries.c.segment,
                t.entries.c.digest,
                t.entries.c.seal_id,
            ).where(t.entries.c.transaction_id.between(low, high))
        ):
            sealed.setdefault(int(entry[0]), {})[int(entry[1])] = (str(entry[2]), int(entry[3]))
        rows: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for name, history in sorted(t.histories.items()):
            column = history.c[TRANSACTION_ID]

            def build(tolerant: bool, history: sa.Table = history, column: Any = column) -> Any:
                return (
                    _select(history, tolerant)
                    .where(column.between(low, high))
                    .order_by(column, history.c[VERSION_ID])
                )

            for record in read_rows(c, build):
                rows.setdefault(record[TRANSACTION_ID], {}).setdefault(name, []).append(record)
        if self.events is not None:
            # Event rows are checked as history rows are, under the event table's name; their
            # id and transaction id read under the history tables' names for the messages.
            events = self.events
            for event in c.execute(
                sa.select(
                    events.c.id.label(VERSION_ID),
                    events.c.transaction_id.label(TRANSACTION_ID),
                    events.c.action,
                    events.c.outcome,
                    events.c.target,
                    events.c.details,
                )
                .where(events.c.transaction_id.between(low, high))
                .order_by(events.c.transaction_id, events.c.id)
            ).mappings():
                record = dict(event)
                rows.setdefault(record[TRANSACTION_ID], {}).setdefault(events.fullname, []).append(
                    record
                )
        ids = sorted(set(txs) | set(segments) | set(rows) | set(sealed))
        late = self._committed_meanwhile([i for i in ids if i not in segments])
        for tx_id in ids:
            if tx_id in late:
                continue
            self._transaction(
                tx_id,
                txs.get(tx_id),
                segments.get(tx_id, []),
                rows.get(tx_id, {}),
                sealed.get(tx_id, {}),
            )

    def _committed_meanwhile(self, ids: list[int]) -> set[int]:
        """Of transactions seen without a digest row, those whose digest row is there now: they
        committed while this batch was read (it is read in several statements)."""
        if not ids:
            return set()
        digests = self.target.digests
        found = self.connection.execute(
            sa.select(digests.c.transaction_id).where(digests.c.transaction_id.in_(ids))
        ).scalars()
        return {int(i) for i in found}

    def _transaction(
        self,
        tx_id: int,
        tx: RowMapping | None,
        segments: list[RowMapping],
        rows: dict[str, list[dict[str, Any]]],
        seal_of: dict[int, tuple[str, int]],
    ) -> None:
        report = self.report
        report.transactions_checked += 1
        self.seen = (tx_id, tx_id) if self.seen is None else (self.seen[0], tx_id)
        report.versions_checked += sum(len(r) for n, r in rows.items() if n != self.event_name)
        report.events_checked += len(rows.get(self.event_name or "", []))
        if not segments:
            self._without_digest(tx_id, tx, rows, seal_of)
            return
        numbers = [int(s["segment"]) for s in segments]
        if any(n not in seal_of for n in numbers):
            report.unsealed += 1
        found_before = len(report.problems)
        # The digests to trust: the seal's copy where there is one.
        truth: list[bytes] = []
        for segment in segments:
            number = int(segment["segment"])
            stored = str(segment["digest"])
            if number in seal_of and seal_of[number][0] != stored:
                self.problem(
                    "altered",
                    self.digest_name,
                    tx_id,
                    None,
                    f"the digest of transaction {tx_id} (segment {number}) differs from the "
                    f"copy in seal {seal_of[number][1]}: the digest row was changed; restore it "
                    f"from a backup",
                )
                stored = seal_of[number][0]
            truth.append(bytes.fromhex(stored))
        for number, (_, seal_id) in sorted(seal_of.items()):
            if number not in numbers:
                self.problem(
                    "missing",
                    self.digest_name,
                    tx_id,
                    None,
                    f"the digest row of transaction {tx_id} (segment {number}), sealed in seal "
                    f"{seal_id}, was deleted; restore it from a backup",
                )
        if tx is None:
            self.problem(
                "missing",
                self.tx_name,
                tx_id,
                None,
                f"the transaction row of transaction {tx_id} was deleted (its digest "
                f"remains); restore it from a backup",
            )
            return
        tx_hash = hashlib.sha256(transaction_bytes(dict(tx))).digest()
        # The rows each segment lists (the transaction row's prefix under its table's name).
        listed: list[dict[str, list[str]]] = []
        for segment in segments:
            document = segment["rows"]
            listed.append(
                {str(name): listed_prefixes(value) for name, value in document.items()}
                if isinstance(document, dict)
                else {}
            )
        tx_listed = listed[0].pop(self.tx_name, None) if int(segments[0]["segment"]) == 1 else None
        if any(n not in seal_of for n in numbers):
            # Rows the triggers wrote, not sealed yet: the next seal digests them.
            named = {n for doc in listed for n in doc}
            rows = {n: r for n, r in rows.items() if n in named or n not in self.captured}
        actual = {
            name: list(zip(table_rows, self._hashes(name, table_rows), strict=True))
            for name, table_rows in rows.items()
        }
        if self._chain_matches(tx_hash, segments, listed, truth, actual):
            if tx_listed != [row_prefix(tx_hash)] or any(
                [row_prefix(h) for _, h in actual.get(name, [])] != self._expected(listed, name)
                for name in set(actual) | {n for doc in listed for n in doc}
            ):
                self.problem(
                    "altered",
                    self.digest_name,
                    tx_id,
                    None,
                    f"the row hashes listed in the digest row of transaction {tx_id} were "
                    f"changed (its rows and digest match); restore the digest row from a backup",
                )
            return
        if tx_listed != [row_prefix(tx_hash)]:
            self.problem(
                "altered",
                self.tx_name,
                tx_id,
                None,
                f"the transaction row of transaction {tx_id} (who, when, why) was changed "
                f"after it was written; compare it with a backup",
            )
        for name in sorted(set(actual) | {n for doc in listed for n in doc}):
            self._locate(tx_id, name, actual.get(name, []), self._expected(listed, name))
        if len(report.problems) == found_before:
            self.problem(
                "altered",
                self.digest_name,
                tx_id,
                None,
                f"the digest row of transaction {tx_id} does not match its rows: the digest row "
                f"(its note or digest) was changed, or history rows were changed together with "
                f"the hashes it lists; compare the transaction with a backup",
            )

    @staticmethod
    def _expected(listed: list[dict[str, list[str]]], name: str) -> list[str]:
        out: list[str] = []
        for document in listed:
            out.extend(document.get(name, []))
        return out

    def _hashes(self, name: str, rows: list[dict[str, Any]]) -> list[bytes]:
        if name == self.event_name:
            return [event_hash(row) for row in rows]
        history = self.target.histories[name]
        return row_hashes(history, [personal.committed_view(history, row) for row in rows])

    def _chain_matches(
        self,
        tx_hash: bytes,
        segments: list[RowMapping],
        listed: list[dict[str, list[str]]],
        truth: list[bytes],
        actual: dict[str, list[tuple[dict[str, Any], bytes]]],
    ) -> bool:
        """Whether the rows read, split into segments by the listed counts, give the digests."""
        if int(segments[0]["segment"]) != 1:
            return False
        cut = {name: 0 for name in actual}
        previous = tx_hash
        for segment, document, expected in zip(segments, listed, truth, strict=True):
            tables = []
            for name in sorted(document):
                count = len(document[name])
                start = cut.get(name, 0)
                hashes = [h for _, h in actual.get(name, [])[start : start + count]]
                if len(hashes) != count:
                    return False
                cut[name] = start + count
                tables.append((name, hashes))
            previous = segment_digest(previous, tables, segment["note"])
            if previous != expected:
                return False
        return all(cut[name] == len(actual[name]) for name in actual)

    def _locate(
        self,
        tx_id: int,
        name: str,
        actual: list[tuple[dict[str, Any], bytes]],
        expected: list[str],
    ) -> None:
        """Name each history row that was changed, deleted or added, by the listed prefixes."""
        if name not in self.target.histories and name != self.event_name:
            self.problem(
                "missing",
                name,
                tx_id,
                None,
                f"transaction {tx_id} wrote {len(expected)} row(s) to {name}, which is not a "
                f"history table of {self.target.source}: import its model (or write the "
                f"registry again), or the table was dropped",
            )
            return
        got = [row_prefix(h) for _, h in actual]
        i = j = 0
        while i < len(got) or j < len(expected):
            if i == len(got):
                self._missing(tx_id, name)
                j += 1
                continue
            if j == len(expected):
                self._added(tx_id, name, actual[i][0])
                i += 1
                continue
            if got[i] == expected[j]:
                i += 1
                j += 1
                continue
            got_later = got[i] in expected[j + 1 :]
            expected_later = expected[j] in got[i + 1 :]
            if expected_later and not got_later:
                self._added(tx_id, name, actual[i][0])  # not listed; the listed one follows
                i += 1
            elif got_later and not expected_later:
                self._missing(tx_id, name)  # the listed row is gone
                j += 1
            else:  # changed in place (or two rows swapped)
                self._altered(tx_id, name, actual[i][0])
                i += 1
                j += 1

    def _kind(self, name: str) -> str:
        return "event row" if name == self.event_name else "history row"

    def _altered(self, tx_id: int, name: str, row: dict[str, Any]) -> None:
        version = int(row[VERSION_ID])
        self.problem(
            "altered",
            name,
            tx_id,
            version,
            f"{self._kind(name)} {version} of {name} (transaction {tx_id}) was changed after it "
            f"was written; compare it with a backup",
        )

    def _added(self, tx_id: int, name: str, row: dict[str, Any]) -> None:
        version = int(row[VERSION_ID])
        self.problem(
            "added",
            name,
            tx_id,
            version,
            f"{self._kind(name)} {version} of {name} was added to transaction {tx_id} after it "
            f"committed (versioning did not write it); find who wrote it in the database's "
            f"logs",
        )

    def _missing(self, tx_id: int, name: str) -> None:
        self.problem(
            "missing",
            name,
            tx_id,
            None,
            f"{'an' if name == self.event_name else 'a'} {self._kind(name)} of {name} written "
            f"by transaction {tx_id} was deleted; restore it from a backup",
        )

    def _without_digest(
        self,
        tx_id: int,
        tx: RowMapping | None,
        rows: dict[str, list[dict[str, Any]]],
        seal_of: Mapping[int, tuple[str, int]],
    ) -> None:
        if seal_of:
            seal_ids = sorted({seal_id for _, seal_id in seal_of.values()})
            if tx is None and not rows:
                self.problem(
                    "missing",
                    self.tx_name,
                    tx_id,
                    None,
                    f"transaction {tx_id}, sealed in seal {seal_ids[0]}, was deleted: its "
                    f"transaction row, digest row and history rows are gone; restore them from a "
                    f"backup",
                )
                return
            self.problem(
                "missing",
                self.digest_name,
                tx_id,
                None,
                f"the digest row of transaction {tx_id}, sealed in seal {seal_ids[0]}, was "
                f"deleted; restore it from a backup",
            )
            return
        if tx is not None and rows and set(rows) <= self.captured:
            # Written by the triggers alone, not sealed yet: the next seal digests it.
            self.report.unsealed += 1
            return
        if tx is not None:
            self.problem(
                "added",
                self.tx_name,
                tx_id,
                None,
                f"transaction {tx_id} has no digest: its row was added outside versioning; "
                f"find who wrote it in the database's logs",
            )
        for name, table_rows in sorted(rows.items()):
            for row in table_rows:
                self._added(tx_id, name, row)


def _check_chain(
    connection: Connection,
    target: _Target,
    report: Report,
    saved: list[Digest],
    pruned: horizon.Horizon | None = None,
) -> None:
    """Recompute each seal's hash from its entries and check the links and saved digests.

    After a prune, the seals up to the horizon's have lost the entries of the pruned
    transactions: their links are checked, and the last one's hash against the horizon's; the
    archives prove the rest (``verify(archives=...)``)."""
    archived_up_to = 0 if pruned is None else pruned.seal_id
    seals, entries = target.seals, target.entries
    name = seals.fullname
    expected_id = 1
    previous: str | None = None
    hashes: dict[int, str] = {}
    last_transaction: dict[int, int] = {}
    for row in _seal_rows(connection, seals):
        seal_id = int(row["id"])
        if seal_id != expected_id:
            report.problems.append(
                Problem(
                    "chain",
                    name,
                    None,
                    None,
                    f"seal(s) {expected_id}..{seal_id - 1} are missing before seal {seal_id}; "
                    f"restore them from a backup",
                )
            )
        elif row["previous_hash"] != previous:
            report.problems.append(
                Problem(
                    "chain",
                    name,
                    None,
                    None,
                    f"seal {seal_id} does not link to seal {seal_id - 1}: its previous hash "
                    f"differs from that seal's hash; restore the seals from a backup",
                )
            )
        if seal_id <= archived_up_to:
            if (
                pruned is not None
                and seal_id == pruned.seal_id
                and row["hash"] != (pruned.seal_hash)
            ):
                report.problems.append(
                    Problem(
                        "chain",
                        name,
                        None,
                        None,
                        f"seal {seal_id}, the last one archived, differs from the hash its "
                        f"prune recorded: the seal was changed; restore it from a backup",
                    )
                )
            hashes[seal_id] = str(row["hash"])
            last_transaction[seal_id] = int(row["last_transaction_id"])
            previous = str(row["hash"])
            expected_id = seal_id + 1
            continue
        if not _links_match(connection, entries, seal_id, row):
            report.problems.append(
                Problem(
                    "chain",
                    name,
                    None,
                    None,
                    f"seal {seal_id} does not match the digests it links: the seal or its "
                    f"entries in {entries.fullname} were changed; restore them from a backup",
                )
            )
        hashes[seal_id] = str(row["hash"])
        last_transaction[seal_id] = int(row["last_transaction_id"])
        previous = str(row["hash"])
        expected_id = seal_id + 1
    found = {k: (h, last_transaction[k]) for k, h in hashes.items()}
    report.problems.extend(_saved_digest_problems(name, saved, found, expected_id - 1))


def _saved_digest_problems(
    name: str,
    saved: Sequence[Digest],
    found: Mapping[int, tuple[str, int]],
    ends_at: int | None,
) -> list[Problem]:
    """Each saved digest against the seal it names (``found``: id -> hash and last transaction
    id; ``ends_at``: the last seal read, when the whole chain was): cut, or rewritten."""
    problems = []
    for item in saved:
        kept = found.get(item.seal_id)
        if kept is None:
            ends = "" if ends_at is None else f" (the chain ends at seal {ends_at})"
            detail = (
                f"seal {item.seal_id} of a saved digest is not in the database{ends}: the chain "
                f"was cut; restore the newest transactions and seals from a backup"
            )
        elif kept != (item.hash, item.last_transaction_id):
            detail = (
                f"seal {item.seal_id} differs from the saved digest: the chain was "
                f"rewritten; compare the history with a backup taken before that seal"
            )
        else:
            continue
        problems.append(Problem("digest", name, None, None, detail))
    return problems


def _seal_rows(connection: Connection, seals: sa.Table) -> Iterator[RowMapping]:
    """Every seal, in id order, a thousand at a time."""
    after = 0
    while True:
        batch = (
            connection.execute(
                sa.select(
                    seals.c.id,
                    seals.c.previous_hash,
                    seals.c.hash,
                    seals.c.count,
                    seals.c.last_transaction_id,
                )
                .where(seals.c.id > after)
                .order_by(seals.c.id)
                .limit(1000)
            )
            .mappings()
            .all()
        )
        if not batch:
            return
        yield from batch
        after = int(batch[-1]["id"])


# --- sealing automatically --------------------------------------------------------------------


class AutoSealer:
    """Seal every ``interval`` seconds in a background thread (off unless started).

    ``factory`` makes sessions (a ``sessionmaker``). Use as a context manager, or call
    :meth:`start` and :meth:`stop`. A failed seal is logged (logger ``"versioning"``) and kept in
    :attr:`error`; the next interval tries again.
    """

    def __init__(
        self,
        factory: Callable[[], Session],
        interval: float = 60.0,
        *,
        metadata: sa.MetaData | None = None,
    ) -> None:
        if not callable(factory):
            raise ArgumentError(f"AutoSealer takes a sessionmaker, got {factory!r}")
        if not isinstance(interval, int | float) or interval <= 0:
            raise ArgumentError(f"AutoSealer interval must be positive seconds, got {interval!r}")
        self.factory = factory
        self.interval = float(interval)
        self.metadata = metadata
        self.error: BaseException | None = None
        self.last: Seal | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def seal_now(self) -> Seal | None:
        """Seal once, in a session of its own, and commit."""
        with self.factory() as session:
            made = seal(session, metadata=self.metadata)
            session.commit()
        if made is not None:
            self.last = made
        return made

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.seal_now()
                self.error = None
            except Exception as exc:  # keep sealing: the next interval retries
                self.error = exc
                _log.exception("versioning: automatic seal failed")

    def start(self) -> AutoSealer:
        if self._thread is not None:
            raise ArgumentError("this AutoSealer is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="versioning-sealer", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, final: bool = True) -> None:
        """Stop the thread; with ``final`` (the default), seal once more."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._thread = None
        if final:
            self.seal_now()

    def __enter__(self) -> AutoSealer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(final=kind is None)
