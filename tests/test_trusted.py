"""A flush reads a record's row again only where the database does not guarantee the session's
values are current (see ``versioning.trusted``), and history stays right either way.

Each case checks both sides: the read is skipped where the database guarantees the values (rows
this transaction wrote or locked; PostgreSQL snapshot isolation) — counted in the statements the
commit sends — and history is exact, including under concurrency where a stale value must fail
loudly or be read again, never be recorded. Writes the session did not flush (ORM and Core
statements, text, ``exec_driver_sql``) and a savepoint's end void the guarantee.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from versioning import Operation, Versioned, history

from helpers import backend_id, waited_for_lock

Tables = Callable[[sa.MetaData], sa.Engine]


class Base(DeclarativeBase):
    pass


class Stock(Versioned, Base):
    __tablename__ = "trust_stock"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    qty: Mapped[int]


@contextmanager
def reads_of_the_row(engine: sa.Engine) -> Iterator[list[str]]:
    """The reads of ``trust_stock``'s current rows a flush sends (not SQLAlchemy's own loads of
    expired attributes, nor the history table's)."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if text.startswith("select") and "from trust_stock where trust_stock.id in (" in text:
            seen.append(text)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _changes(engine: sa.Engine, pk: int = 1) -> list[tuple[Operation, dict[str, Any]]]:
    with Session(engine) as session:
        return [
            (
                v.operation,
                {k: tuple(p) for k, p in (v.changes or {}).items()}
                if v.operation is Operation.UPDATE
                else {},
            )
            for v in history(session, Stock, pk)
        ]


@pytest.fixture
def stock(create_tables: Tables) -> sa.Engine:
    engine = create_tables(Base.metadata)
    with Session(engine) as session:
        session.add(Stock(id=1, name="bolt", qty=1))
        session.commit()
    return engine


def test_a_row_this_transaction_wrote_is_not_read_again(create_tables: Tables) -> None:
    engine = create_tables(Base.metadata)
    with Session(engine) as session:
        item = Stock(id=1, name="bolt", qty=1)
        session.add(item)
        session.flush()
        item.qty = 2
        session.flush()  # an UPDATE of a row the INSERT locked: its values are the row's
        with reads_of_the_row(engine) as reads:
            item.qty = 3
            session.commit()
    assert reads == []
    assert _changes(engine) == [
        (Operation.INSERT, {}),
        (Operation.UPDATE, {"qty": (1, 2)}),
        (Operation.UPDATE, {"qty": (2, 3)}),
    ]


@pytest.mark.parametrize(
    "foreign",
    ["orm_update", "core_update", "text", "driver_sql"],
)
def test_a_write_the_session_did_not_flush_makes_it_read_the_row_again(
    stock: sa.Engine, foreign: str
) -> None:
    """The session's values of a row it wrote are stale once another statement of the same
    transaction changed the row: the next flush reads it, and history has what was stored."""
    engine = stock
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        item.qty = 2
        session.flush()
        table = Stock.__table__
        if foreign == "orm_update":
            session.execute(
                sa.update(Stock).where(Stock.id == 1).values(name="nut"),
                execution_options={"synchronize_session": False},
            )
        elif foreign == "core_update":
            session.connection().execute(sa.update(table).where(table.c.id == 1).values(name="nut"))
        elif foreign == "text":
            session.execute(sa.text("UPDATE trust_stock SET name = 'nut' WHERE id = 1"))
        else:
            session.connection().exec_driver_sql("UPDATE trust_stock SET name = 'nut' WHERE id = 1")
        with reads_of_the_row(engine) as reads:
            item.qty = 3
            session.commit()
    assert len(reads) == 1
    last = _changes(engine)[-1]
    assert last == (Operation.UPDATE, {"qty": (2, 3)})
    with Session(engine) as session:
        assert history(session, Stock, 1)[-1].state["name"] == "nut"


def test_a_savepoint_that_rolled_back_makes_it_read_the_row_again(stock: sa.Engine) -> None:
    engine = stock
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        item.qty = 2
        session.flush()
        with session.begin_nested() as savepoint:
            item.qty = 5
            session.flush()
            savepoint.rollback()
        with reads_of_the_row(engine) as reads:
            item.qty = 3
            session.commit()
    assert len(reads) == 1
    assert _changes(engine)[1:] == [
        (Operation.UPDATE, {"qty": (1, 2)}),
        (Operation.UPDATE, {"qty": (2, 3)}),
    ]


def test_a_row_loaded_in_an_earlier_transaction_is_read_again(stock: sa.Engine) -> None:
    engine = stock
    with Session(engine, expire_on_commit=False) as session:
        item = session.get_one(Stock, 1)
        item.qty = 2
        session.commit()  # values kept: loaded and written in a transaction now over
        with engine.begin() as other:
            other.exec_driver_sql("UPDATE trust_stock SET name = 'nut' WHERE id = 1")
        with reads_of_the_row(engine) as reads:
            item.qty = 3
            session.commit()
    assert len(reads) == 1
    with Session(engine) as session:
        assert history(session, Stock, 1)[-1].state["name"] == "nut"


@pytest.mark.backends("postgresql", "mariadb")
def test_a_row_loaded_for_update_is_not_read_again_and_a_writer_waits(
    stock: sa.Engine,
) -> None:
    """A row loaded ``FOR UPDATE`` is locked until commit: another writer waits for it, and
    its history starts from the values this transaction stored."""
    engine = stock
    done: list[BaseException | None] = []

    def other_writer() -> None:
        try:
            with Session(engine) as other:
                backends.append(backend_id(other))
                started.set()
                other.get_one(Stock, 1, with_for_update=True).qty += 10
                other.commit()
            done.append(None)
        except BaseException as error:  # pragma: no cover - reported below
            done.append(error)

    backends: list[int] = []
    started = threading.Event()
    with Session(engine) as session:
        item = session.get_one(Stock, 1, with_for_update=True)
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert started.wait(30)
        assert waited_for_lock(engine, backends[0], thread)
        with reads_of_the_row(engine) as reads:
            item.qty = 2
            session.commit()
    thread.join(30)
    assert done == [None]
    assert reads == []
    assert _changes(engine)[1:] == [
        (Operation.UPDATE, {"qty": (1, 2)}),
        (Operation.UPDATE, {"qty": (2, 12)}),
    ]


def _isolated(engine: sa.Engine, level: str) -> sa.Engine:
    return engine.execution_options(isolation_level=level)


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_snapshot_isolation_trusts_what_the_transaction_loaded(
    stock: sa.Engine, level: str
) -> None:
    engine = _isolated(stock, level)
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        with reads_of_the_row(stock) as reads:
            item.qty = 2
            session.commit()
        assert reads == []
        item = session.get_one(Stock, 1)  # expired at commit: loaded again, in the new one
        with reads_of_the_row(stock) as reads:
            session.delete(item)
            session.commit()
        assert reads == []
    assert _changes(stock) == [
        (Operation.INSERT, {}),
        (Operation.UPDATE, {"qty": (1, 2)}),
        (Operation.DELETE, {}),
    ]


@pytest.mark.backends("postgresql")
@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("deleting", [False, True])
def test_snapshot_isolation_refuses_a_row_changed_since_it_was_loaded(
    stock: sa.Engine, level: str, deleting: bool
) -> None:
    """Another transaction changes the row after this one loaded it: this one's write fails
    (loudly), nothing of it is recorded, and the other's change is recorded right."""
    engine = _isolated(stock, level)
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        with Session(stock) as other:
            other.get_one(Stock, 1).name = "nut"
            other.commit()
        if deleting:
            session.delete(item)
        else:
            item.qty = 2
        with pytest.raises(DBAPIError, match="could not serialize"):
            session.commit()
    assert _changes(stock) == [
        (Operation.INSERT, {}),
        (Operation.UPDATE, {"name": ("bolt", "nut")}),
    ]


@pytest.mark.backends("mariadb")
def test_repeatable_read_elsewhere_still_reads_the_row(stock: sa.Engine) -> None:
    """MariaDB's REPEATABLE READ lets an UPDATE act on a row changed since the snapshot; the
    row is read (locked) first, and history has the other transaction's value as the old one."""
    engine = _isolated(stock, "REPEATABLE READ")
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        with Session(stock) as other:
            other.get_one(Stock, 1).qty = 7
            other.commit()
        with reads_of_the_row(stock) as reads:
            item.name = "nut"
            session.commit()
    assert len(reads) == 1
    with Session(stock) as session:
        last = history(session, Stock, 1)[-1]
    assert last.state == {"id": 1, "name": "nut", "qty": 7}


class Shelf(Versioned, Base):
    __tablename__ = "trust_shelf"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(50))
    boxes: Mapped[list[Box]] = relationship(passive_deletes=True)


class Box(Versioned, Base):
    __tablename__ = "trust_box"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    shelf_id: Mapped[int] = mapped_column(sa.ForeignKey("trust_shelf.id", ondelete="CASCADE"))


def test_a_record_with_cascading_children_keeps_its_locked_read(create_tables: Tables) -> None:
    """The read of a record whose children the database deletes with it also locks it, so that
    no child is added under it meanwhile (see versioning.cascades): it is kept even for a row
    this transaction wrote, and the children's deletions are recorded."""
    engine = create_tables(Base.metadata)
    reads: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        text = " ".join(statement.split()).lower()
        if "from trust_shelf where trust_shelf.id in (" in text:
            reads.append(text)

    with Session(engine) as session:
        session.add(Shelf(id=1, label="top", boxes=[Box(id=1), Box(id=2)]))
        session.commit()
    with Session(engine) as session:
        shelf = session.get_one(Shelf, 1)  # its boxes not loaded: the database deletes them
        shelf.label = "upper"
        session.flush()
        event.listen(engine, "before_cursor_execute", before)
        try:
            session.delete(shelf)
            session.commit()
        finally:
            event.remove(engine, "before_cursor_execute", before)
    assert len(reads) == 1
    with Session(engine) as session:
        for box in (1, 2):
            assert [v.operation for v in history(session, Box, box)] == [
                Operation.INSERT,
                Operation.DELETE,
            ]


def test_a_flush_with_nothing_to_write_does_not_hide_a_later_write(stock: sa.Engine) -> None:
    """A flush that writes nothing (a value set to what it was) leaves the session counting
    the statements after it as other writes."""
    engine = stock
    with Session(engine) as session:
        item = session.get_one(Stock, 1)
        item.qty = 2
        session.flush()
        item.qty = 2  # modified, yet nothing to write
        session.flush()
        session.execute(sa.text("UPDATE trust_stock SET name = 'nut' WHERE id = 1"))
        with reads_of_the_row(engine) as reads:
            item.qty = 3
            session.commit()
    assert len(reads) == 1
    with Session(engine) as session:
        assert history(session, Stock, 1)[-1].state["name"] == "nut"
