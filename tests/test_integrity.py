"""Tamper evidence: digests written at commit, seals, ``verify`` naming what changed, saved digests.

Every database test runs on SQLite, PostgreSQL and MariaDB. Tampering is raw SQL run by
:func:`_tamper`, as someone with rights on the tables would run it.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy_utils as su  # type: ignore[import-untyped]
from sqlalchemy import event
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy_utils.types.choice import Choice  # type: ignore[import-untyped]

import versioning
from versioning import Digest, Problem, Versioned, audit_context, history, masks, restore
from versioning.canonical import PREFIX_CHARS, canonical_value, row_hash
from versioning.schema import DIGEST_TABLE, SEAL_ENTRY_TABLE, SEAL_TABLE, TRANSACTION_TABLE

from helpers import tamper

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]


class Base(DeclarativeBase):
    pass


class Order(Versioned, Base):
    __tablename__ = "integ_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(20))
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)


class Line(Versioned, Base):
    __tablename__ = "integ_lines"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    note: Mapped[str | None] = mapped_column(sa.String(50))


ORDERS = "integ_orders_history"
LINES = "integ_lines_history"


def _tamper(engine: sa.Engine, *statements: str) -> None:
    """Run raw SQL as someone with rights on the tables would, bypassing the library (inside
    the append-only triggers' maintenance switch, as someone who can also drop them would)."""
    with engine.begin() as connection, tamper(connection):
        for statement in statements:
            connection.exec_driver_sql(statement)


def _found(report: versioning.Report) -> set[tuple[str, str | None, int | None, int | None]]:
    return {(p.kind, p.table, p.transaction_id, p.version_id) for p in report.problems}


def _verify(sessions: Sessions, digests: list[Digest] | None = None) -> versioning.Report:
    with sessions() as session:
        return versioning.verify(session, digests or [], metadata=Base.metadata)


def _seal(sessions: Sessions) -> versioning.Seal | None:
    with sessions() as session:
        made = versioning.seal(session, metadata=Base.metadata)
        session.commit()
    return made


def _digest(sessions: Sessions) -> Digest:
    with sessions() as session:
        saved = versioning.digest(session, metadata=Base.metadata)
    assert saved is not None
    return saved


def _transaction_ids(engine: sa.Engine) -> list[int]:
    """The ids of the test's transactions, in order (id counters go on from earlier tests)."""
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(f"SELECT id FROM {TRANSACTION_TABLE} ORDER BY id").scalars()
        )


def _version_id(engine: sa.Engine, table: str, tx_id: int, pk: int) -> int:
    with engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                f"SELECT versioning_id FROM {table} "
                f"WHERE versioning_transaction_id = {tx_id} AND id = {pk}"
            ).scalar_one()
        )


@pytest.fixture
def seeded(create_tables: Tables, sessions: Sessions) -> sa.Engine:
    """Three transactions: the first inserts orders 1, 2 and line 1; the second updates both
    orders; the third deletes order 2 (six history versions). Their ids are read back with
    :func:`_transaction_ids`."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        with audit_context(actor="alice", reason="new orders", extra={"ticket": 7}):
            session.add_all(
                [
                    Order(id=1, status="new", amount=Decimal("10.50"), doc={"b": 1, "a": [1.5]}),
                    Order(id=2, status="new", amount=Decimal("3.00")),
                    Line(id=1, note="Grüße"),
                ]
            )
            session.commit()
        with audit_context(actor="bob"):
            for order in session.scalars(sa.select(Order)):
                order.status = "paid"
            session.get_one(Order, 1).amount = Decimal("11")
            session.commit()
        session.delete(session.get_one(Order, 2))
        session.commit()
    return engine


# --- a clean history -----------------------------------------------------------------------------


def test_a_clean_history_verifies_sealed_or_not(seeded: sa.Engine, sessions: Sessions) -> None:
    third = _transaction_ids(seeded)[2]
    report = _verify(sessions)
    assert report.ok, report.problems
    assert (report.transactions_checked, report.versions_checked, report.unsealed) == (3, 6, 3)

    made = _seal(sessions)
    assert made is not None and (made.id, made.count, made.last_transaction_id) == (1, 3, third)
    assert made.previous_hash is None and len(made.hash) == 64
    assert _seal(sessions) is None  # nothing left to seal: idempotent
    report = _verify(sessions)
    assert report.ok and report.unsealed == 0, report.problems

    with sessions() as session:
        session.add(Order(id=3, status="new"))
        session.commit()
    report = _verify(sessions)
    assert report.ok and (report.transactions_checked, report.unsealed) == (4, 1), report.problems
    second = _seal(sessions)
    assert second is not None and second.previous_hash == made.hash and second.count == 1
    assert _verify(sessions, [_digest(sessions)]).ok


def test_sealing_and_verifying_write_nothing_else(seeded: sa.Engine, sessions: Sessions) -> None:
    with sessions() as session:
        versioning.verify(session, metadata=Base.metadata)
        assert not session.new and not session.dirty
        assert versioning.digest(session, metadata=Base.metadata) is None
        session.rollback()
    with seeded.connect() as connection:
        assert connection.exec_driver_sql(f"SELECT count(*) FROM {SEAL_TABLE}").scalar() == 0


# --- each tampering, named -----------------------------------------------------------------------


#: In an expected problem: the version id of the row that "history row added" forges, which the
#: history table's id counter gives it (read back after the tampering).
FORGED = object()


def _cases(engine: sa.Engine) -> dict[str, tuple[list[str], set[Any]]]:
    t1, t2, t3 = _transaction_ids(engine)
    paid = _version_id(engine, ORDERS, t2, 1)
    first, second = _version_id(engine, ORDERS, t1, 1), _version_id(engine, ORDERS, t1, 2)
    deleted = _version_id(engine, ORDERS, t3, 2)
    return {
        "history row changed": (
            [f"UPDATE {ORDERS} SET status = 'refunded' WHERE versioning_id = {paid}"],
            {("altered", ORDERS, t2, paid)},
        ),
        "history row deleted": (
            [f"DELETE FROM {ORDERS} WHERE versioning_id = {paid}"],
            {("missing", ORDERS, t2, None)},
        ),
        "history row added": (
            [
                f"INSERT INTO {ORDERS} (versioning_transaction_id, versioning_operation, id, "
                f"status) VALUES ({t2}, 'update', 1, 'forged')"
            ],
            {("added", ORDERS, t2, FORGED)},
        ),
        "two rows swapped": (
            [f"UPDATE {ORDERS} SET id = 3 - id WHERE versioning_transaction_id = {t1}"],
            {("altered", ORDERS, t1, first), ("altered", ORDERS, t1, second)},
        ),
        "transaction row changed": (
            [f"UPDATE {TRANSACTION_TABLE} SET actor = 'mallory' WHERE id = {t2}"],
            {("altered", TRANSACTION_TABLE, t2, None)},
        ),
        "digest note changed": (
            [f"UPDATE {DIGEST_TABLE} SET note = 'nothing to see' WHERE transaction_id = {t3}"],
            {("altered", DIGEST_TABLE, t3, None)},
        ),
        "digest value changed": (
            [f"UPDATE {DIGEST_TABLE} SET digest = '{'0' * 64}' WHERE transaction_id = {t1}"],
            {("altered", DIGEST_TABLE, t1, None)},
        ),
        "listed row hashes changed": (
            [_zeroed(engine, t1)],
            {("altered", DIGEST_TABLE, t1, None)},
        ),
        "sealed transaction deleted": (
            [
                f"DELETE FROM {ORDERS} WHERE versioning_id = {deleted}",
                f"DELETE FROM {DIGEST_TABLE} WHERE transaction_id = {t3}",
                f"DELETE FROM {TRANSACTION_TABLE} WHERE id = {t3}",
            ],
            {("missing", TRANSACTION_TABLE, t3, None)},
        ),
        "seal changed": (
            [f"UPDATE {SEAL_TABLE} SET hash = '{'a' * 64}' WHERE id = 1"],
            {("chain", SEAL_TABLE, None, None)},
        ),
        "seal entry changed": (
            [f"UPDATE {SEAL_ENTRY_TABLE} SET position = 5 WHERE transaction_id = {t1}"],
            {("chain", SEAL_TABLE, None, None)},
        ),
        "sealed digest row deleted": (
            [f"DELETE FROM {DIGEST_TABLE} WHERE transaction_id = {t1}"],
            {("missing", DIGEST_TABLE, t1, None)},
        ),
        "transaction added": (
            [
                f"INSERT INTO {TRANSACTION_TABLE} (id, issued_at, actor) "
                f"VALUES ({t3 + 7}, '2020-01-01 00:00:00', 'mallory')"
            ],
            {("added", TRANSACTION_TABLE, t3 + 7, None)},
        ),
    }


def _zeroed(engine: sa.Engine, tx_id: int) -> str:
    """The UPDATE that zeroes what the digest row lists of its history rows' hashes (the first 6
    bytes of each, in base64): the digest still matches the rows, the list does not."""
    digests = Base.metadata.tables[DIGEST_TABLE]
    with engine.connect() as connection:
        listed = connection.execute(
            sa.select(digests.c.rows).where(digests.c.transaction_id == tx_id)
        ).scalar_one()
    assert len(listed[ORDERS]) == 2 * PREFIX_CHARS  # its two rows
    text = json.dumps(listed | {ORDERS: "A" * 2 * PREFIX_CHARS})
    rows = engine.dialect.identifier_preparer.quote("rows")
    return f"UPDATE {DIGEST_TABLE} SET {rows} = '{text}' WHERE transaction_id = {tx_id}"


def _forged(engine: sa.Engine, expected: set[Any]) -> set[Any]:
    """``expected`` with :data:`FORGED` replaced by the forged history row's version id."""
    if not any(FORGED in problem for problem in expected):
        return expected
    with engine.connect() as connection:
        forged = connection.exec_driver_sql(
            f"SELECT versioning_id FROM {ORDERS} WHERE status = 'forged'"
        ).scalar_one()
    return {tuple(forged if v is FORGED else v for v in problem) for problem in expected}


TAMPERINGS = [
    "history row changed",
    "history row deleted",
    "history row added",
    "two rows swapped",
    "transaction row changed",
    "digest note changed",
    "digest value changed",
    "listed row hashes changed",
    "sealed transaction deleted",
    "seal changed",
    "seal entry changed",
    "sealed digest row deleted",
    "transaction added",
]


@pytest.mark.parametrize("case", TAMPERINGS)
def test_each_tampering_is_named_and_nothing_else(
    seeded: sa.Engine, sessions: Sessions, case: str
) -> None:
    assert _seal(sessions) is not None
    statements, expected = _cases(seeded)[case]
    _tamper(seeded, *statements)
    expected = _forged(seeded, expected)
    report = _verify(sessions)
    assert not report.ok
    assert _found(report) == expected, report.problems
    for problem in report.problems:  # the sentence names what the fields say, and what to do
        assert f"transaction {problem.transaction_id}" in problem.detail or (
            problem.transaction_id is None and "seal" in problem.detail
        ), problem
        assert problem.version_id is None or f"row {problem.version_id} " in problem.detail
        assert "backup" in problem.detail or "logs" in problem.detail, problem


@pytest.mark.parametrize("case", ["history row changed", "history row deleted", "two rows swapped"])
def test_unsealed_rows_are_checked_against_their_own_digest(
    seeded: sa.Engine, sessions: Sessions, case: str
) -> None:
    statements, expected = _cases(seeded)[case]
    _tamper(seeded, *statements)
    expected = _forged(seeded, expected)
    report = _verify(sessions)
    assert _found(report) == expected, report.problems
    assert report.unsealed == 3


def test_saved_digests_catch_a_cut_tail_and_a_consistent_rewrite(
    seeded: sa.Engine, sessions: Sessions
) -> None:
    _seal(sessions)
    first = _digest(sessions)
    with sessions() as session:
        session.add(Order(id=3, status="new"))
        session.commit()
    _seal(sessions)
    second = _digest(sessions)
    third, fourth = _transaction_ids(seeded)[2:]
    assert (second.seal_id, second.last_transaction_id) == (2, fourth)
    assert Digest.from_json(second.to_json()) == second

    # The tail cut: the chain alone still verifies (the fourth transaction is merely unsealed) ...
    _tamper(
        seeded,
        f"DELETE FROM {SEAL_ENTRY_TABLE} WHERE seal_id = 2",
        f"DELETE FROM {SEAL_TABLE} WHERE id = 2",
    )
    report = _verify(sessions)
    assert report.ok and report.unsealed == 1, report.problems
    # ... a saved digest does not.
    report = _verify(sessions, [first, second])
    assert _found(report) == {("digest", SEAL_TABLE, None, None)}, report.problems
    assert "cut" in report.problems[0].detail

    # A consistent rewrite: the third transaction gone, every seal made again.
    deleted = _version_id(seeded, ORDERS, third, 2)
    _tamper(
        seeded,
        f"DELETE FROM {SEAL_ENTRY_TABLE}",
        f"DELETE FROM {SEAL_TABLE}",
        f"DELETE FROM {ORDERS} WHERE versioning_id = {deleted}",
        f"DELETE FROM {DIGEST_TABLE} WHERE transaction_id = {third}",
        f"DELETE FROM {TRANSACTION_TABLE} WHERE id = {third}",
    )
    _seal(sessions)
    assert _verify(sessions).ok
    report = _verify(sessions, [first])
    assert _found(report) == {("digest", SEAL_TABLE, None, None)}, report.problems
    assert "rewritten" in report.problems[0].detail


def test_seals_missing_or_unlinked_break_the_chain(seeded: sa.Engine, sessions: Sessions) -> None:
    first = _seal(sessions)
    with sessions() as session:
        session.add(Order(id=3, status="new"))
        session.commit()
    _seal(sessions)
    assert first is not None
    _tamper(seeded, f"UPDATE {SEAL_TABLE} SET previous_hash = '{'f' * 64}' WHERE id = 2")
    report = _verify(sessions)
    assert _found(report) == {("chain", SEAL_TABLE, None, None)}, report.problems
    assert any("does not link to seal 1" in p.detail for p in report.problems)
    _tamper(
        seeded,
        f"UPDATE {SEAL_TABLE} SET previous_hash = '{first.hash}' WHERE id = 2",
        f"DELETE FROM {SEAL_ENTRY_TABLE} WHERE seal_id = 1",
        f"DELETE FROM {SEAL_TABLE} WHERE id = 1",
    )
    report = _verify(sessions)
    assert _found(report) == {("chain", SEAL_TABLE, None, None)}, report.problems
    assert "seal(s) 1..1 are missing before seal 2" in report.problems[0].detail
    assert report.unsealed == 3  # the digests seal 1 linked are unsealed now


def test_wrong_arguments_are_refused(seeded: sa.Engine, sessions: Sessions) -> None:
    with sessions() as session:
        with pytest.raises(versioning.ArgumentError, match=r"Digest\.from_json"):
            versioning.verify(session, ["not a digest"])  # type: ignore[list-item]
        with pytest.raises(versioning.ArgumentError, match="batch"):
            versioning.verify(session, batch=0)
        with pytest.raises(versioning.ArgumentError, match="metadata"):
            versioning.seal(session, metadata="orders")  # type: ignore[arg-type]
    with pytest.raises(versioning.ArgumentError, match="Session"):
        versioning.verify(seeded)  # type: ignore[arg-type]
    assert _verify(sessions, []).ok  # and a small batch reads the same
    with sessions() as session:
        assert versioning.verify(session, metadata=Base.metadata, batch=1).versions_checked == 6


def test_the_auto_sealer_keeps_going_after_a_failure() -> None:
    failed = threading.Event()

    def broken() -> Session:
        failed.set()
        raise RuntimeError("no database today")

    sealer = versioning.AutoSealer(broken, interval=0.01).start()
    with pytest.raises(versioning.ArgumentError, match="already started"):
        sealer.start()
    assert failed.wait(10)
    sealer.stop(final=False)
    assert isinstance(sealer.error, RuntimeError) and sealer.last is None
    sealer.stop()  # stopped already: nothing to do


# --- what is written, and in which order ----------------------------------------------------------


def _segments(engine: sa.Engine, tx_id: int) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.exec_driver_sql(
                f"SELECT segment FROM {DIGEST_TABLE} WHERE transaction_id = {tx_id} "
                f"ORDER BY segment"
            ).scalars()
        )


def test_rows_of_one_transaction_verify_in_write_order(
    create_tables: Tables, sessions: Sessions
) -> None:
    """Several flushes, an early write (a history read), ORM executemany batches and a Core
    statement in one transaction: version ids follow the order the rows were hashed in."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Order(id=i, status="new") for i in (1, 2, 3)])
        session.flush()
        assert len(history(session, Order, 1)) == 1  # the transaction row is written now
        session.execute(sa.insert(Order), [{"id": i, "status": f"bulk {i}"} for i in range(4, 40)])
        session.execute(sa.update(Order), [{"id": i, "status": f"upd {i}"} for i in range(3, 30)])
        session.execute(sa.update(Order).where(Order.id > 35).values(status="core"))
        session.add(Line(id=1, note="x"))
        session.get_one(Order, 1).status = "last"
        session.commit()
    report = _verify(sessions)
    assert report.ok and report.versions_checked == 3 + 36 + 27 + 4 + 1 + 1, report.problems
    [transaction] = _transaction_ids(engine)
    assert _segments(engine, transaction) == [1]


def test_a_flush_after_the_digest_gets_a_segment_of_its_own(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Order(id=1, status="new"))

    @event.listens_for(session, "before_commit")
    def _late(session: Session) -> None:  # runs after versioning's own before_commit
        order = session.get_one(Order, 1)
        if order.status == "new":
            order.status = "stamped"
            session.flush()

    session.commit()
    versions = history(session, Order, 1)
    assert [v.state["status"] for v in versions] == ["new", "stamped"]
    session.rollback()
    [transaction] = {v.transaction_id for v in versions}
    assert _segments(engine, transaction) == [1, 2]
    assert _verify(sessions).ok
    _tamper(engine, f"DELETE FROM {DIGEST_TABLE} WHERE segment = 2")
    stamped = versions[1].version_id
    assert _found(_verify(sessions)) == {("added", ORDERS, transaction, stamped)}


def test_a_late_segment_rolled_back_with_its_savepoint_is_taken_back(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    session = sessions()
    session.add(Order(id=1, status="new"))

    @event.listens_for(session, "before_commit")
    def _late(session: Session) -> None:
        order = session.get_one(Order, 1)
        if order.status != "new":
            return
        savepoint = session.begin_nested()
        order.status = "undone"
        session.flush()  # segment 2, in the savepoint ...
        savepoint.rollback()  # ... taken back with it
        session.get_one(Order, 1).status = "stamped"
        session.flush()  # segment 2 again

    session.commit()
    session.close()
    [transaction] = _transaction_ids(engine)
    assert _segments(engine, transaction) == [1, 2]
    assert _verify(sessions).ok


def test_rolled_back_savepoint_rows_leave_the_digest(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Order(id=1, status="new"))
        session.flush()
        history(session, Order, 1)  # written early: later rows go in at once
        savepoint = session.begin_nested()
        session.get_one(Order, 1).status = "gone"
        session.flush()
        savepoint.rollback()
        session.get_one(Order, 1).status = "kept"
        session.commit()
    assert _verify(sessions).ok


def test_a_rolled_back_transaction_never_blocks_sealing(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as doomed:
        doomed.add(Order(id=1, status="new"))
        doomed.flush()
        history(doomed, Order, 1)  # takes a transaction id, then rolls back
        doomed.rollback()
    with sessions() as session:
        session.add(Order(id=2, status="new"))
        session.commit()
    made = _seal(sessions)
    assert made is not None and made.count == 1
    report = _verify(sessions)
    assert report.ok and report.unsealed == 0 and report.transactions_checked == 1


def test_a_restore_after_an_early_write_keeps_its_reason_without_updating(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Order(id=1, status="new"), Order(id=2, status="new")])
        session.commit()
        session.get_one(Order, 1).status = "paid"
        session.commit()
        first = history(session, Order, 1)[0]
        session.get_one(Order, 2).status = "other"
        history(session, Order, 2)  # writes the transaction row early, without a reason
        restore(session, first)
        session.commit()
        last = history(session, Order, 1)[-1]
        session.rollback()
    assert last.transaction is not None
    assert last.transaction.reason == f"restore Order 1 to transaction {first.transaction_id}"
    with engine.connect() as connection:
        assert (
            connection.exec_driver_sql(
                f"SELECT reason FROM {TRANSACTION_TABLE} WHERE id = {last.transaction_id}"
            ).scalar_one()
            is None
        )
    assert _verify(sessions).ok


# --- every column type --------------------------------------------------------------------------


class EveryBase(DeclarativeBase):
    pass


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


FINE_DATETIME = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb")
FINE_TIME = sa.Time().with_variant(mysql.TIME(fsp=6), "mariadb")


class Every(Versioned, EveryBase):
    __tablename__ = "integ_every"
    __versioned__ = {"mask": {"card": masks.last4}}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    big: Mapped[int | None] = mapped_column(sa.BigInteger)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(10, 2))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    double: Mapped[float | None] = mapped_column(sa.Double)
    flag: Mapped[bool | None] = mapped_column(sa.Boolean)
    title: Mapped[str | None] = mapped_column(sa.String(100))
    code: Mapped[str | None] = mapped_column(sa.CHAR(5))
    body: Mapped[str | None] = mapped_column(sa.Text)
    created: Mapped[dt.datetime | None] = mapped_column(FINE_DATETIME)
    coarse: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    happened: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    at: Mapped[dt.time | None] = mapped_column(FINE_TIME)
    span: Mapped[dt.timedelta | None] = mapped_column(sa.Interval)
    uid: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    color: Mapped[Color | None] = mapped_column(sa.Enum(Color, name="integ_color"))
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    doc: Mapped[Any] = mapped_column(sa.JSON, nullable=True)
    ext_uid: Mapped[Any] = mapped_column(su.UUIDType(), nullable=True)
    kind: Mapped[Any] = mapped_column(
        su.ChoiceType([("std", "Standard"), ("xpr", "Express")], impl=sa.String(10)),
        nullable=True,
    )
    email: Mapped[Any] = mapped_column(su.EmailType(100), nullable=True)
    card: Mapped[str | None] = mapped_column(sa.String(30))


EVERY_FIRST: dict[str, Any] = {
    "big": 2**40 + 1,
    "amount": Decimal("12.30"),
    "ratio": 2.5,
    "double": 0.1,
    "flag": True,
    "title": "Grüße aus Köln, 東京 ✓",
    "code": "ab",
    "body": "Ünïcødé\nline — 😀",
    "created": dt.datetime(2024, 2, 29, 13, 45, 30, 123456),
    "coarse": dt.datetime(2024, 2, 29, 13, 45, 30, 654321),
    "happened": dt.datetime(2024, 2, 29, 13, 45, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "day": dt.date(2024, 2, 29),
    "at": dt.time(13, 45, 30, 250000),
    "span": dt.timedelta(days=2, seconds=5, microseconds=7),
    "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "color": Color.RED,
    "blob": b"\x00\x01\xffbinary\x80",
    "doc": {"z": [1, 2, {"b": None, "a": 1.25}], "ü": "ö", "n": 10**20},
    "ext_uid": uuid.UUID("87654321-4321-8765-4321-876543218765"),
    "kind": Choice("std", "Standard"),
    "email": "Alice@Example.com",
    "card": "4111111111111111",
}

EVERY_SECOND: dict[str, Any] = {
    "big": -(2**40),
    "amount": Decimal("1.005"),  # stored rounded
    "ratio": -0.25,
    "double": 1e-300,
    "flag": False,
    "title": "",
    "code": "xyz  ",
    "body": "",
    "created": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
    "coarse": dt.datetime(1999, 12, 31, 23, 59, 59),
    "happened": dt.datetime(1999, 12, 31, 23, 0, tzinfo=dt.UTC),
    "day": dt.date(1999, 12, 31),
    "at": dt.time(0, 0, 1, 5),
    "span": dt.timedelta(0),
    "uid": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    "color": Color.GREEN,
    "blob": b"",
    "doc": [],
    "ext_uid": uuid.UUID("00000000-0000-4000-8000-0000000000ff"),
    "kind": "xpr",
    "email": "bob@example.org",
    "card": "5500000000000004",
}


def test_every_column_type_verifies(create_tables: Tables, sessions: Sessions) -> None:
    """Written, changed every way (values, falsy values, NULLs, lossy values), deleted,
    re-created: the digests recomputed from what each backend reads back match."""
    create_tables(EveryBase.metadata)
    with sessions() as session:
        session.add(Every(id=1, **EVERY_FIRST))
        session.commit()
        every = session.get_one(Every, 1)
        for key, value in EVERY_SECOND.items():
            setattr(every, key, value)
        session.commit()
        for key in EVERY_FIRST:
            setattr(every, key, None)
        session.commit()
        session.delete(every)
        session.commit()
        session.add(Every(id=1, **EVERY_SECOND))
        session.add(Every(id=2, **{key: None for key in EVERY_FIRST}))
        session.commit()
        session.execute(sa.update(Every).where(Every.id == 2).values(**EVERY_FIRST))
        session.commit()
    with sessions() as session:
        report = versioning.verify(session, metadata=EveryBase.metadata)
        assert report.ok, report.problems
        assert report.versions_checked == 7
        assert versioning.seal(session, metadata=EveryBase.metadata) is not None
        session.commit()
        assert versioning.verify(session, metadata=EveryBase.metadata).ok


def test_the_changes_document_is_stored_in_its_own_order(
    create_tables: Tables, sessions: Sessions
) -> None:
    """Each update's ``changes`` column holds the document as compact JSON text, fields in the
    table's column order and a JSON value's keys in its own order (not the sorted form the row's
    hash covers), which history() reads back in that order and verify accepts."""
    create_tables(EveryBase.metadata)
    with sessions() as session:
        session.add(Every(id=1, **EVERY_FIRST))
        session.commit()
        every = session.get_one(Every, 1)
        for key, value in EVERY_SECOND.items():
            setattr(every, key, value)
        session.commit()
        table = versioning.history_table(Every)
        text = session.execute(
            sa.select(sa.cast(table.c.versioning_changes, sa.Text)).where(
                table.c.versioning_operation == versioning.Operation.UPDATE
            )
        ).scalar_one()
        document = json.loads(text)
        assert text == json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        columns = [c.key for c in Every.__table__.columns]
        assert list(document) == [key for key in columns if key in document]
        assert document["title"] == [EVERY_FIRST["title"], EVERY_SECOND["title"]]
        assert list(document["doc"][0]) == list(EVERY_FIRST["doc"])  # {"z", "ü", "n"}: as written
        [update] = [
            v for v in history(session, Every, 1) if v.operation == versioning.Operation.UPDATE
        ]
        assert update.changes["title"] == (EVERY_FIRST["title"], EVERY_SECOND["title"])
        assert list(update.changes) == list(document)
        assert list(update.changes["doc"][0]) == list(EVERY_FIRST["doc"])
        assert versioning.verify(session, metadata=EveryBase.metadata).ok


def test_a_changes_document_that_is_not_plain_json_goes_to_the_driver() -> None:
    from versioning.canonical import stored_text

    assert (
        stored_text({"b": [1, {"y": 1, "x": "é"}], "a": None})
        == '{"b":[1,{"y":1,"x":"é"}],"a":null}'
    )
    assert stored_text({"a": [float("nan"), 1.0]}) is None
    assert stored_text({"a": {1, 2}}) is None


class ArrayBase(DeclarativeBase):
    pass


class Arrays(Versioned, ArrayBase):
    __tablename__ = "integ_arrays"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    days: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Date), nullable=True)
    amounts: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Numeric(10, 2)), nullable=True)
    grid: Mapped[Any] = mapped_column(postgresql.ARRAY(sa.Integer, dimensions=2), nullable=True)
    colors: Mapped[Any] = mapped_column(
        postgresql.ARRAY(sa.Enum(Color, name="integ_array_color")), nullable=True
    )


@pytest.mark.backends("postgresql")
def test_arrays_verify(create_tables: Tables, sessions: Sessions) -> None:
    create_tables(ArrayBase.metadata)
    with sessions() as session:
        session.add(
            Arrays(
                id=1,
                days=[dt.date(2024, 1, 2), None],
                amounts=[Decimal("1.50"), Decimal("2")],
                grid=[[1, 2], [3, 4]],
                colors=[Color.RED],
            )
        )
        session.commit()
        arrays = session.get_one(Arrays, 1)
        arrays.amounts = [Decimal("3.1")]
        arrays.colors = [Color.GREEN, Color.RED]
        session.commit()
    with sessions() as session:
        assert versioning.verify(session, metadata=ArrayBase.metadata).ok


# --- sealing while writers write ----------------------------------------------------------------


@pytest.mark.backends("postgresql", "mariadb")
def test_sealing_while_many_threads_commit(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    factory = sessionmaker(engine)
    writers_done = threading.Event()
    errors: list[BaseException] = []
    seals: list[int] = []

    def write(worker: int) -> None:
        try:
            for i in range(12):
                with factory() as session:
                    session.add(Order(id=worker * 100 + i, status="new"))
                    session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def seal_repeatedly() -> None:
        try:
            while not writers_done.is_set():
                with factory() as session:
                    try:
                        made = versioning.seal(session, metadata=Base.metadata)
                        session.commit()
                    except versioning.SealConflictError:
                        session.rollback()  # the other sealer won: seal again
                        continue
                if made is not None:
                    seals.append(made.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def verify_repeatedly() -> None:
        try:
            while not writers_done.is_set():
                with factory() as session:
                    report = versioning.verify(session, metadata=Base.metadata, batch=7)
                assert report.ok, report.problems  # nothing half-committed is reported
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # Two sealers at once, besides the writers: the chain must not fork. A verifier too.
    sealers = [threading.Thread(target=seal_repeatedly) for _ in range(2)]
    sealers.append(threading.Thread(target=verify_repeatedly))
    for sealer in sealers:
        sealer.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    for sealer in sealers:
        sealer.join()
    assert not errors, errors
    _seal(sessions)
    report = _verify(sessions)
    assert report.ok and report.unsealed == 0 and report.transactions_checked == 72, report
    with engine.connect() as connection:
        digests = connection.exec_driver_sql(f"SELECT count(*) FROM {DIGEST_TABLE}").scalar()
        entries = connection.exec_driver_sql(f"SELECT count(*) FROM {SEAL_ENTRY_TABLE}").scalar()
    assert digests == entries == 72
    assert len(seals) == len(set(seals))  # no seal id made twice


def test_two_sealers_do_not_fork_the_chain(create_tables: Tables, sessions: Sessions) -> None:
    """The second sealer's seal id is taken: it seals again on top of the first's seal."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Order(id=1, status="new"))
        session.commit()
    first = sessions()
    made = versioning.seal(first, metadata=Base.metadata)
    first.commit()
    with sessions() as session:
        session.add(Order(id=2, status="new"))
        session.commit()
    again = versioning.seal(sessions(), metadata=Base.metadata)
    assert made is not None and again is not None and again.id == 2
    assert _verify(sessions).ok
    assert engine.dialect.name in ("sqlite", "postgresql", "mariadb")


# --- sealing automatically ----------------------------------------------------------------------


def test_the_auto_sealer_seals_in_the_background(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    sealer = versioning.AutoSealer(sessionmaker(engine), interval=0.02, metadata=Base.metadata)
    with sealer, sessions() as session:
        session.add(Order(id=1, status="new"))
        session.commit()
    report = _verify(sessions)
    assert report.ok and report.unsealed == 0
    with pytest.raises(versioning.ArgumentError, match="interval"):
        versioning.AutoSealer(sessionmaker(engine), interval=0)


# --- pure -----------------------------------------------------------------------------------------


def test_digest_json_round_trip_and_refusals() -> None:
    saved = Digest(3, 41, "ab" * 32, dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    assert Digest.from_json(saved.to_json()) == saved
    with pytest.raises(versioning.ArgumentError, match=r"Digest\.to_json"):
        Digest.from_json('{"seal_id": 1}')
    forged = saved.to_json().replace("ab" * 32, "not hex")
    with pytest.raises(versioning.ArgumentError, match="not a versioning digest"):
        Digest.from_json(forged)
    problem = Problem("altered", ORDERS, 2, 5, "changed")
    assert (problem.kind, problem.table, problem.transaction_id, problem.version_id) == (
        "altered",
        ORDERS,
        2,
        5,
    )


def test_canonical_values_are_the_same_as_written_and_as_read_back() -> None:
    history = versioning.history_table(Every)
    c = history.c
    assert canonical_value(c.amount, Decimal("12.30")) == canonical_value(c.amount, Decimal("12.3"))
    assert canonical_value(c.amount, 5) == canonical_value(c.amount, Decimal("5.00")) == "5"
    aware = dt.datetime(2024, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert canonical_value(c.happened, aware) == "2024-01-01T00:00:00+00:00"
    assert canonical_value(c.ratio, 0.1) == "0.1"
    assert canonical_value(c.color, Color.RED) == canonical_value(c.color, "RED") == "RED"
    assert canonical_value(c.kind, Choice("std", "Standard")) == canonical_value(c.kind, "std")
    assert canonical_value(c.doc, {1: "a", "b": (1, 2)}) == {"1": "a", "b": [1, 2]}
    assert canonical_value(c.blob, memoryview(b"\x00")) == canonical_value(c.blob, b"\x00")
    assert canonical_value(c.title, None) is None
    row: dict[str, Any] = dict.fromkeys(history.c.keys())
    row |= {"versioning_operation": "insert", "id": 1, "title": "a"}
    swapped = row | {"versioning_id": 99, "versioning_transaction_id": 7}
    assert row_hash(history, row) == row_hash(history, swapped)  # ids are not covered
    assert row_hash(history, row) != row_hash(history, row | {"title": "b"})


def test_a_history_column_added_later_keeps_older_rows_verifying() -> None:
    """A migration adding a column leaves it NULL in older rows: their hashes do not change."""

    def table(*extra: sa.Column[Any]) -> sa.Table:
        return sa.Table(
            "h",
            sa.MetaData(),
            sa.Column("versioning_id", sa.Integer, primary_key=True),
            sa.Column("versioning_transaction_id", sa.Integer),
            sa.Column("versioning_operation", sa.String(6)),
            sa.Column("id", sa.Integer),
            *extra,
            sa.Column("versioning_changes", sa.JSON),
        )

    row = {"versioning_operation": "insert", "id": 1, "versioning_changes": None}
    before, after = table(), table(sa.Column("added", sa.Numeric(10, 2)))
    assert row_hash(before, row) == row_hash(after, row | {"added": None})
    assert row_hash(before, row) != row_hash(after, row | {"added": Decimal("0")})


def test_row_bytes_are_the_documented_json_array_whatever_the_values() -> None:
    """The fast encoding gives the documented bytes (digests already stored keep verifying)."""
    from versioning.canonical import dumps, row_bytes

    history = sa.Table(
        "h",
        sa.MetaData(),
        sa.Column("versioning_operation", sa.String(6)),
        sa.Column("id", sa.Integer),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("at", sa.DateTime),
        sa.Column("doc", sa.JSON),
        sa.Column("versioning_changes", sa.JSON),
    )
    at = dt.datetime(2024, 1, 1, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    row = {"versioning_operation": versioning.Operation.UPDATE, "id": 1, "amount": Decimal("1.50")}
    row |= {"at": at, "doc": {"b": 1.5, "a": [None]}}
    expected = ["update", "id", 1, "amount", "1.5", "at", "2024-01-01T00:00:00+00:00"]
    expected += ["doc", {"a": [None], "b": 1.5}]
    for changes, as_json in [
        (None, None),
        ({"b": ["x", None], "a": [True, 1]}, {"a": [True, 1], "b": ["x", None]}),
        ({"amount": [1.5, Decimal("2.50")]}, {"amount": [1.5, "2.5"]}),  # not plain: _json
        ({"doc": [{"y": 1, "x": 2}, None]}, {"doc": [{"x": 2, "y": 1}, None]}),
        ({"ratio": [1.0, float("nan")]}, {"ratio": [1.0, "nan"]}),  # not JSON: _json
    ]:
        written = row_bytes(history, row | {"versioning_changes": changes})
        assert written == dumps([*expected, as_json])
        assert written == row_bytes(history, row | {"versioning_changes": as_json})


def test_rows_encoded_in_a_batch_give_each_row_its_documented_bytes() -> None:
    """The column-by-column encoding of a batch (the write path's and verify's) gives each row
    the bytes of the definition — ``dumps`` of the canonical values — for every type of the
    type matrix, with the values their direct paths take and those they must leave alone."""
    from versioning.canonical import dumps, row_bytes, row_hashes, rows_bytes

    history = versioning.history_table(Every)
    meta = {"versioning_id", "versioning_transaction_id", "versioning_operation"}
    hashed = [c for c in history.columns if c.name not in {*meta, "versioning_changes"}]

    def documented(row: dict[str, Any]) -> bytes:
        operation = row.get("versioning_operation")
        parts: list[Any] = [operation.value if isinstance(operation, enum.Enum) else operation]
        for column in hashed:
            if row.get(column.name) is not None:
                parts += [column.name, canonical_value(column, row[column.name])]
        changes = row.get("versioning_changes")
        parts.append(canonical_value(history.c.versioning_changes, changes))
        return dumps(parts)

    class Flag(enum.IntEnum):
        ON = 1

    class Text(str):
        pass

    aware = dt.datetime(2024, 3, 1, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    decimals = ["12.30", "12.3", "100", "1E+2", "0", "-0", "0.00", "-0.5", "1E-7", "0.000001"]
    decimals += ["NaN", "-Infinity", "123456789012345678901234567.891", "9" * 40, "-12.345"]
    odd: list[dict[str, Any]] = [{"amount": Decimal(text)} for text in decimals]
    odd += [{"amount": 5}, {"amount": 2.5}, {"big": True}, {"big": Flag.ON}, {"big": Decimal(3)}]
    odd += [{"title": Text("sub")}, {"title": 'q"\\\u2028\x00é'}, {"title": ""}, {"code": 7}]
    odd += [{"created": aware}, {"created": dt.datetime(2024, 1, 1)}, {"coarse": dt.date.today()}]
    odd += [{"ratio": float("inf")}, {"ratio": Decimal("0.1")}, {"flag": 1}, {"doc": [1.5, {}]}]
    rows = [{"versioning_operation": versioning.Operation.INSERT, "id": 1, **EVERY_FIRST}]
    rows += [{"versioning_operation": "update", "id": 2, **values} for values in odd]
    rows += [
        {"versioning_operation": versioning.Operation.DELETE, "id": None, "title": None},
        {"versioning_operation": None, "versioning_changes": {"b": [1, 2], "a": [None, "x"]}},
        {"versioning_changes": {"amount": [Decimal("1.50"), 2]}},  # not plain JSON
    ]
    assert rows_bytes(history, rows) == [documented(row) for row in rows]
    assert [row_bytes(history, row) for row in rows] == rows_bytes(history, rows)
    assert row_hashes(history, rows) == [row_hash(history, row) for row in rows]
    assert rows_bytes(history, []) == []


def test_hashing_a_table_does_not_keep_it_alive() -> None:
    """The per-table caches of hashing go with the table (a process that makes and drops
    metadata, as tests and migrations do, does not grow)."""
    import gc
    import weakref

    from versioning import personal
    from versioning.canonical import row_hashes

    table = sa.Table(
        "kept_history",
        sa.MetaData(),
        sa.Column("versioning_id", sa.Integer, primary_key=True),
        sa.Column("versioning_operation", sa.String(10)),
        sa.Column("name", sa.String(10)),
        sa.Column("versioning_changes", sa.JSON),
    )
    row = {"versioning_operation": "insert", "name": "a", "versioning_changes": None}
    assert len(row_hashes(table, [row])[0]) == 32
    assert not personal.has_personal(table)
    gone = weakref.ref(table)
    del table
    gc.collect()
    assert gone() is None


@pytest.mark.parametrize(
    "document",
    [
        {"amount": ["10.5", "11"], "status": ["new", "paid"]},  # sorted: one encoding serves both
        {"status": ["new", "paid"], "amount": ["10.5", "11"]},  # not sorted
        {"doc": [{"b": 1, "a": 2}, None]},  # a nested object: its keys are sorted in the hash
        {"name": ["{not an object}", "x"]},  # a brace in a string: the slow way, same result
        {"n": [1.5, None], "t": [True, 'Grüße\n"q"']},
        {},
    ],
)
def test_a_changes_document_hashes_the_same_whether_sent_as_text_or_not(
    document: dict[str, Any],
) -> None:
    """The history INSERT sends a ``changes`` document as its stored text and, where that text
    is also the canonical one (keys sorted, nothing nested), the row's hash takes it as it is:
    the hash must be the one of the document itself, and the text the document's own order."""
    from versioning.canonical import SortedJSONText, stored_text
    from versioning.recording import _hash_rows

    table = sa.Table(
        "integ_doc_history",
        sa.MetaData(),
        sa.Column("versioning_id", sa.Integer, primary_key=True),
        sa.Column("versioning_operation", sa.String(8)),
        sa.Column("id", sa.Integer),
        sa.Column("versioning_changes", sa.JSON),
    )
    row = {"versioning_id": None, "versioning_operation": "update", "id": 1}
    expected = row_hash(table, {**row, "versioning_changes": document})
    batch = [{**row, "versioning_changes": dict(document)}]
    assert _hash_rows(table, batch) == [expected]
    text = batch[0]["versioning_changes"]
    assert json.loads(text) == document and list(json.loads(text)) == list(document)
    sorted_text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    simple = text == sorted_text and "{" not in text[1:]
    assert (type(stored_text(document)) is SortedJSONText) == simple
