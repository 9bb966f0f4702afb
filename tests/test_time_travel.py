"""Time travel with relationships: relationships of records read as of a moment, ``all_as_of``.

An object graph — customers, orders and their lines and notes, employees with their managers
(joined and single-table inheritance) — changes over four transactions (children added, changed,
re-parented, deleted) and is reconstructed at each moment, on every backend.
"""

from __future__ import annotations

import datetime as dt
import gc
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    DynamicMapped,
    Mapped,
    Session,
    WriteOnlyMapped,
    mapped_column,
    relationship,
)
from test_asyncio import _async_url, run

import versioning
import versioning.asyncio as vasync
from versioning import RelationshipHistoryError, Versioned, all_as_of, as_of, history, table_at

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]
US = dt.timedelta(microseconds=1)


class Base(DeclarativeBase):
    pass


class Tag(Base):
    """Not versioned: it has no history."""

    __tablename__ = "tt_tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(20))


labels = sa.Table(
    "tt_order_labels",
    Base.metadata,
    sa.Column("order_id", sa.ForeignKey("tt_orders.id"), primary_key=True),
    sa.Column("label_id", sa.ForeignKey("tt_labels.id"), primary_key=True),
)


order_tags = sa.Table(
    "tt_order_tags",
    Base.metadata,
    sa.Column("order_id", sa.ForeignKey("tt_orders.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("tt_tags.id"), primary_key=True),
)


class Label(Versioned, Base):
    __tablename__ = "tt_labels"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))


class Customer(Versioned, Base):
    __tablename__ = "tt_customers"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    orders: Mapped[list[Order]] = relationship(back_populates="customer", order_by="Order.id")
    card: Mapped[Card | None] = relationship(back_populates="customer")
    # A condition on the instance's own side: not translatable onto the related history.
    orders_if_ann: Mapped[list[Order]] = relationship(
        primaryjoin="and_(Customer.id == foreign(Order.customer_id), Customer.name == 'Ann')",
        viewonly=True,
    )


class Card(Versioned, Base):
    """One-to-one with Customer."""

    __tablename__ = "tt_cards"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("tt_customers.id"), unique=True)
    number: Mapped[str] = mapped_column(sa.String(20))
    customer: Mapped[Customer] = relationship(back_populates="card")


class Order(Versioned, Base):
    __tablename__ = "tt_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(sa.String(10))
    total: Mapped[int] = mapped_column(default=0)
    customer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tt_customers.id"))
    tag_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tt_tags.id"))
    customer: Mapped[Customer | None] = relationship(back_populates="orders")
    lines: Mapped[list[Line]] = relationship(back_populates="order", order_by="Line.id")
    # A custom primaryjoin with a condition on the related records' own columns.
    big_lines: Mapped[list[Line]] = relationship(
        primaryjoin="and_(Order.id == foreign(Line.order_id), Line.qty >= 5)",
        viewonly=True,
        order_by="Line.qty.desc()",
    )
    tag: Mapped[Tag | None] = relationship()
    labels: Mapped[list[Label]] = relationship(secondary=labels, order_by="Label.id")
    tags: Mapped[list[Tag]] = relationship(secondary="tt_order_tags", viewonly=True)


class Line(Versioned, Base):
    __tablename__ = "tt_lines"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tt_orders.id"))
    sku: Mapped[str] = mapped_column(sa.String(10))
    qty: Mapped[int]
    order: Mapped[Order | None] = relationship(back_populates="lines")
    notes: Mapped[list[LineNote]] = relationship(order_by="LineNote.id")


class LineNote(Versioned, Base):
    __tablename__ = "tt_line_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    line_id: Mapped[int] = mapped_column(sa.ForeignKey("tt_lines.id"))
    text: Mapped[str] = mapped_column(sa.String(20))


class Employee(Versioned, Base):
    """Self-referential, with a joined (Manager) and a single-table (Contractor) subclass."""

    __tablename__ = "tt_employees"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))
    kind: Mapped[str] = mapped_column(sa.String(20))
    manager_id: Mapped[int | None] = mapped_column(sa.ForeignKey("tt_employees.id"))
    manager: Mapped[Employee | None] = relationship(back_populates="reports", remote_side=[id])
    reports: Mapped[list[Employee]] = relationship(back_populates="manager", order_by=id)
    __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "tt_managers"
    id: Mapped[int] = mapped_column(sa.ForeignKey("tt_employees.id"), primary_key=True)
    level: Mapped[int] = mapped_column(default=1)
    # Declared on the joined subclass: its local column is the subclass table's key.
    team: Mapped[list[Employee]] = relationship(
        primaryjoin="Manager.id == foreign(Employee.manager_id)",
        viewonly=True,
        order_by=Employee.id,
    )
    __mapper_args__ = {"polymorphic_identity": "manager", "inherit_condition": id == Employee.id}


class Contractor(Employee):
    agency: Mapped[str | None] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_identity": "contractor"}


class Shelf(Versioned, Base):
    """A composite key, referenced by a composite foreign key."""

    __tablename__ = "tt_shelves"
    store: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    code: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    books: Mapped[list[Book]] = relationship(back_populates="shelf", order_by="Book.id")


class Book(Versioned, Base):
    __tablename__ = "tt_books"
    __table_args__ = (
        sa.ForeignKeyConstraint(["store", "shelf_code"], ["tt_shelves.store", "tt_shelves.code"]),
    )
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    store: Mapped[str | None] = mapped_column(sa.String(10))
    shelf_code: Mapped[int | None]
    shelf: Mapped[Shelf | None] = relationship(back_populates="books")


def _pause() -> None:
    time.sleep(0.003)  # consecutive transactions' issued_at well apart


def _last_transaction(session: Session) -> int:
    table = versioning.transaction_table(Base.metadata)
    return int(session.execute(sa.select(sa.func.max(table.c.id))).scalar_one())


@pytest.fixture
def moments(create_tables: Tables, sessions: Sessions) -> list[int]:
    """Build and change the graph; the transaction id after each of the four changes."""
    create_tables(Base.metadata)
    done: list[int] = []
    with sessions() as s:
        s.add(Tag(id=1, label="today"))
        s.commit()  # not versioned: no transaction row
        c1, c2 = Customer(id=1, name="Ann"), Customer(id=2, name="Bob")
        o1 = Order(id=1, status="open", customer=c1, tag_id=1)
        o1.lines = [Line(id=1, sku="a", qty=1), Line(id=2, sku="b", qty=6)]
        boss = Manager(id=10, name="Boss", level=3)
        red, blue = Label(id=1, name="red"), Label(id=2, name="blue")
        o1.labels = [red]
        s.add_all([c1, c2, o1, boss, blue, Card(id=1, customer=c1, number="1111")])
        s.add_all([Employee(id=11, name="Eve", manager=boss)])
        s.add(Contractor(id=12, name="Kim", agency="temps", manager=boss))
        s.commit()
        done.append(_last_transaction(s))
        _pause()
        s.get_one(Line, 1).qty = 5
        s.add(Line(id=3, sku="c", qty=0, order_id=1))
        s.add(Order(id=2, status="open", customer_id=2, lines=[Line(id=4, sku="d", qty=9)]))
        s.add(LineNote(id=1, line_id=1, text="fragile"))
        s.commit()
        done.append(_last_transaction(s))
        _pause()
        s.get_one(Line, 2).order_id = 2  # re-parented
        s.get_one(Order, 1).customer_id = 2
        s.get_one(Customer, 1).name = "Anne"
        s.get_one(Order, 1).labels.append(s.get_one(Label, 2))
        s.add(Manager(id=20, name="Sub", level=2, manager_id=10))
        s.flush()
        s.get_one(Employee, 11).manager_id = 20
        s.commit()
        done.append(_last_transaction(s))
        _pause()
        s.delete(s.get_one(LineNote, 1))
        s.flush()
        s.delete(s.get_one(Line, 1))
        s.get_one(Order, 1).status = "closed"
        s.get_one(Order, 1).labels.remove(s.get_one(Label, 1))
        s.get_one(Label, 2).name = "navy"
        s.get_one(Card, 1).number = "2222"
        s.commit()
        done.append(_last_transaction(s))
    return done


@contextmanager
def counting(engine: sa.Engine) -> Iterator[list[str]]:
    """The queries (``SELECT``) run on ``engine`` inside the block."""
    seen: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def _ids(objs: Any) -> list[int]:
    return [o.id for o in objs]


def test_an_order_with_its_lines_customer_and_notes_at_each_moment(
    moments: list[int], sessions: Sessions
) -> None:
    t1, t2, t3, t4 = moments
    with sessions() as s:
        expected = {
            t1: ([1, 2], [1, 6], "Ann", "open", []),
            t2: ([1, 2, 3], [5, 6, 0], "Ann", "open", ["fragile"]),
            t3: ([1, 3], [5, 0], "Bob", "open", ["fragile"]),
            t4: ([3], [0], "Bob", "closed", []),
        }
        for at, (line_ids, qtys, customer, status, notes) in expected.items():
            order = as_of(s, Order, 1, at)
            assert order is not None and order.status == status
            assert _ids(order.lines) == line_ids, at
            assert [line.qty for line in order.lines] == qtys
            assert order.customer.name == customer
            assert [n.text for line in order.lines for n in line.notes] == notes
            assert all(line.order is order for line in order.lines), "identity within a moment"
            assert sa.inspect(order).transient and sa.inspect(order.lines[0]).transient
        # Re-parented at t3: line 2 is under order 2 from then on, with its state then.
        assert _ids(as_of(s, Order, 2, t2).lines) == [4]
        assert _ids(as_of(s, Order, 2, t3).lines) == [2, 4]
        assert as_of(s, Line, 2, t2).order.id == 1 and as_of(s, Line, 2, t3).order.id == 2
        assert as_of(s, Order, 2, t1) is None
        # The customer then (renamed at t3) and the orders it had then.
        bob_then = as_of(s, Customer, 2, t3)
        assert _ids(bob_then.orders) == [1, 2]
        assert _ids(as_of(s, Customer, 1, t2).orders) == [1]
        assert as_of(s, Customer, 1, t3).orders == [] and as_of(s, Customer, 1, t3).name == "Anne"
        # One-to-one both ways, as of each moment.
        assert as_of(s, Customer, 1, t3).card.number == "1111"
        assert as_of(s, Customer, 1, t4).card.number == "2222"
        assert as_of(s, Card, 1, t1).customer.name == "Ann"
        assert as_of(s, Customer, 2, t4).card is None
        # Datetimes work as ids do.
        when = history(s, Order, 1)[-1].transaction
        assert when is not None
        assert _ids(as_of(s, Order, 1, when.issued_at).lines) == [3]
        assert _ids(as_of(s, Order, 1, when.issued_at - US).lines) == [1, 3]


def test_custom_primaryjoin_is_evaluated_on_the_state_then(
    moments: list[int], sessions: Sessions
) -> None:
    t1, t2, t3, t4 = moments
    with sessions() as s:
        assert _ids(as_of(s, Order, 1, t1).big_lines) == [2]
        assert _ids(as_of(s, Order, 1, t2).big_lines) == [2, 1]  # order_by qty desc
        assert _ids(as_of(s, Order, 1, t3).big_lines) == [1]
        assert as_of(s, Order, 1, t4).big_lines == []
        assert _ids(as_of(s, Order, 2, t3).big_lines) == [4, 2]


def test_self_referential_and_inheritance(moments: list[int], sessions: Sessions) -> None:
    _, t2, t3, t4 = moments
    with sessions() as s:
        eve = as_of(s, Employee, 11, t2)
        assert type(eve) is Employee and eve.manager.name == "Boss"
        assert type(eve.manager) is Manager and eve.manager.level == 3
        assert eve.manager.manager is None
        boss = as_of(s, Manager, 10, t2)
        assert [(type(e).__name__, e.id) for e in boss.reports] == [
            ("Employee", 11),
            ("Contractor", 12),
        ]
        assert boss.reports[1].agency == "temps" and boss.reports[1].manager is boss
        eve = as_of(s, Employee, 11, t3)
        assert eve.manager.name == "Sub" and eve.manager.manager.name == "Boss"
        boss = as_of(s, Manager, 10, t3)
        assert [e.id for e in boss.reports] == [12, 20]
        assert [e.id for e in boss.reports[1].reports] == [11]
        assert boss.team == boss.reports and boss.reports[1].team == [boss.reports[1].reports[0]]
        assert [e.id for e in as_of(s, Manager, 10, moments[0]).team] == [11, 12]
        assert as_of(s, Contractor, 12, t4).manager.id == 10


def test_one_query_per_relationship_level(
    moments: list[int], sessions: Sessions, engine: sa.Engine
) -> None:
    t2 = moments[1]
    with sessions() as s:
        orders = list(all_as_of(s, Order, t2))
        assert _ids(orders) == [1, 2]
        with counting(engine) as seen:
            lines = [line for order in orders for line in order.lines]
            assert len(seen) == 1
            notes = [n.text for line in lines for n in line.notes]
            customers = {order.customer.name for order in orders}
            assert [line.order for line in lines] == [orders[0]] * 3 + [orders[1]]
        assert notes == ["fragile"] and customers == {"Ann", "Bob"}
        assert len(seen) == 3, seen  # lines, notes, customers; line.order was known
        assert all("tt_lines " not in q and "FROM tt_lines\n" not in q for q in seen)
        assert all("_history" in q for q in seen), "live rows read"


def test_load_option_loads_paths_now(
    moments: list[int], sessions: Sessions, engine: sa.Engine
) -> None:
    t2 = moments[1]
    with sessions() as s:
        with counting(engine) as seen:
            order = as_of(s, Order, 1, t2, load=["lines", "lines.notes", "customer"])
        # The record and each path, and the horizon of pruned history (read once per database
        # transaction: see docs/auditing.md).
        assert len(seen) == 5
        assert sum("versioning_horizon" in statement for statement in seen) == 1
        with counting(engine) as later:
            assert [n.text for line in order.lines for n in line.notes] == ["fragile"]
            assert order.customer.name == "Ann"
        assert later == []
        with pytest.raises(versioning.ArgumentError, match="Order has no relationship 'lnes'"):
            as_of(s, Order, 1, t2, load=["lnes"])
        with pytest.raises(versioning.ArgumentError, match="Line has no relationship 'x'"):
            as_of(s, Order, 1, t2, load=["lines.x"])
        with pytest.raises(versioning.ArgumentError, match="list of relationship paths"):
            as_of(s, Order, 1, t2, load="lines")
        managed = list(all_as_of(s, Manager, t2, load=["reports.manager"]))
        assert [e.id for e in managed[0].reports] == [11, 12]


def test_refused_relationships_say_why(moments: list[int], sessions: Sessions) -> None:
    t2 = moments[1]
    with sessions() as s:
        order = as_of(s, Order, 1, t2)
        with pytest.raises(RelationshipHistoryError, match=r"Order\.tag points to Tag, which is "):
            _ = order.tag
        with pytest.raises(RelationshipHistoryError, match=r"Order\.tag"):
            as_of(s, Order, 1, t2, load=["tag"])
        customer = as_of(s, Customer, 1, t2)
        with pytest.raises(RelationshipHistoryError, match=r"Customer\.orders_if_ann: its prim"):
            _ = customer.orders_if_ann
        assert [o.id for o in customer.orders] == [1]  # the others still load
        version = history(s, Order, 1)[0]
        detached = version.to_instance()
        assert detached.status == "open"
        with pytest.raises(RelationshipHistoryError, match=r"to_instance\(session\)"):
            _ = detached.lines
        assert _ids(version.to_instance(s).lines) == [1, 2]


def test_all_as_of_at_before_and_after_transactions(moments: list[int], sessions: Sessions) -> None:
    t1, t2, t3, t4 = moments
    with sessions() as s:
        at = {v.transaction_id: v.transaction for v in history(s, Line, 1)}
        assert list(all_as_of(s, Line, t1 - 1)) == []
        assert _ids(all_as_of(s, Line, t1)) == [1, 2]
        assert _ids(all_as_of(s, Line, t4)) == [2, 3, 4]
        issued = at[t4].issued_at  # type: ignore[union-attr]
        assert _ids(all_as_of(s, Line, issued - US)) == [1, 2, 3, 4]
        assert _ids(all_as_of(s, Line, issued)) == [2, 3, 4]
        assert _ids(all_as_of(s, Line, issued + US)) == [2, 3, 4]
        # Criteria on the state then, not on any older version.
        assert _ids(all_as_of(s, Line, t2, Line.order_id == 1)) == [1, 2, 3]
        assert _ids(all_as_of(s, Line, t3, Line.order_id == 1)) == [1, 3]
        assert _ids(all_as_of(s, Line, t3, Line.order_id == 2)) == [2, 4]
        both = sa.and_(Line.qty > 0, sa.or_(Line.sku.in_(["a", "d"]), Line.id == 2))
        assert _ids(all_as_of(s, Line, t2, both)) == [1, 2, 4]
        assert _ids(all_as_of(s, Line, t1, Line.qty >= 5)) == [2]
        assert _ids(all_as_of(s, Line, t2, Line.qty >= 5)) == [1, 2, 4]
        assert _ids(all_as_of(s, Order, t4, Order.status == "open")) == [2]
        assert _ids(all_as_of(s, Order, t3, Order.status == "open")) == [1, 2]
        # Inheritance: a subclass's records only (joined and single-table).
        assert _ids(all_as_of(s, Employee, t3)) == [10, 11, 12, 20]
        assert _ids(all_as_of(s, Manager, t3)) == [10, 20]
        assert _ids(all_as_of(s, Manager, t3, Manager.level > 2)) == [10]
        assert _ids(all_as_of(s, Contractor, t3, Contractor.agency == "temps")) == [12]
        assert [type(e) for e in all_as_of(s, Employee, t1)] == [Manager, Employee, Contractor]


def test_all_as_of_of_a_model_without_relationships(moments: list[int], sessions: Sessions) -> None:
    t1, _, t3, t4 = moments
    with sessions() as s:
        labels = list(all_as_of(s, Label, t4))
        assert [(label.id, label.name) for label in labels] == [(1, "red"), (2, "navy")]
        assert [label.name for label in all_as_of(s, Label, t3)] == ["red", "blue"]
        assert [label.name for label in all_as_of(s, Label, t4, Label.name != "red")] == ["navy"]
        assert all(sa.inspect(label).transient for label in labels)
        assert not sa.inspect(labels[1]).attrs.name.history.has_changes()
        again = list(all_as_of(s, Label, t4))
        assert again[1].name == "navy" and again[1] is not labels[1]  # a call makes its own
        assert [n.text for n in all_as_of(s, LineNote, t3)] == ["fragile"]
        assert list(all_as_of(s, LineNote, t4)) == []  # deleted then
        assert list(all_as_of(s, LineNote, t1)) == []  # not yet


def test_a_record_reached_twice_in_a_moment_is_one_instance(
    moments: list[int], sessions: Sessions, engine: sa.Engine
) -> None:
    t3 = moments[2]
    with sessions() as s:
        staff = {e.id: e for e in all_as_of(s, Employee, t3)}
        with counting(engine) as seen:
            assert staff[11].manager is staff[20] and staff[20].manager is staff[10]
            assert staff[12].manager is staff[10] and staff[10].manager is None
        assert seen == []  # every manager was in the stream already
        assert type(as_of(s, Employee, 10, t3)) is Manager
        boss = as_of(s, Employee, 10, t3)
        assert [e.id for e in boss.reports] == [12, 20]
        assert boss.reports[1].manager is boss


def test_all_as_of_refuses_criteria_it_cannot_evaluate_then(
    moments: list[int], sessions: Sessions
) -> None:
    with sessions() as s:
        for criterion, message in [
            (Order.lines.any(), "may not contain a subquery"),
            (Customer.name == "Ann", "is not a column of Order"),
            (sa.and_(Order.status == "open", Line.qty > 1), "is not a column of Order"),
            (True, "criteria are SQL conditions"),
            (sa.column("status") == "open", "status is not a column of Order"),
        ]:
            with pytest.raises(versioning.ArgumentError, match=message):
                all_as_of(s, Order, moments[0], criterion)


def test_all_as_of_streams(moments: list[int], sessions: Sessions) -> None:
    with sessions() as s:
        found = all_as_of(s, Line, moments[3])
        assert isinstance(found, Iterator)
        first = next(found)
        assert first.id == 2 and first.order.id == 2  # a query while the stream is open
        assert _ids(found) == [3, 4]


def test_a_stream_keeps_only_what_the_caller_keeps(
    moments: list[int], sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_at, "BATCH", 2)
    with sessions() as s:
        found = all_as_of(s, Line, moments[2], load=["order"])  # lines 1 to 4
        first, second = next(found), next(found)
        gone = weakref.ref(first)
        assert (first.order.id, second.order.id) == (1, 2)
        del first, second
        third, fourth = next(found), next(found)  # the second batch
        gc.collect()
        assert gone() is None, "the stream keeps every instance it made"
        assert (third.id, third.order.id, fourth.id, fourth.order.id) == (3, 1, 4, 2)
        assert list(found) == []


@pytest.fixture
def async_engine(engine: sa.Engine) -> AsyncEngine:
    """An async engine on the database of ``engine`` (only reads here); ``run`` disposes of it."""
    return create_async_engine(_async_url(engine))


def test_async_forms_load_what_load_names(moments: list[int], async_engine: AsyncEngine) -> None:
    t2 = moments[1]

    async def main() -> None:
        async with AsyncSession(async_engine) as session:
            order = await vasync.as_of(session, Order, 1, t2, load=["lines.notes"])
            assert [n.text for line in order.lines for n in line.notes] == ["fragile"]
            with pytest.raises(RelationshipHistoryError, match=r"load=\["):
                _ = order.customer
            orders = await vasync.all_as_of(
                session, Order, t2, Order.status == "open", load=["customer"]
            )
            assert [o.customer.name for o in orders] == ["Ann", "Bob"]
            with pytest.raises(RelationshipHistoryError, match=r"cannot load on attribute"):
                _ = orders[0].lines
            assert await vasync.as_of(session, Order, 2, moments[0], load=["lines"]) is None

    run(async_engine, main)


def test_composite_keys(create_tables: Tables, sessions: Sessions, engine: sa.Engine) -> None:
    create_tables(Base.metadata)
    with sessions() as s:
        s.add_all([Shelf(store="n", code=1), Shelf(store="s", code=1)])
        s.add_all([Book(id=1, store="n", shelf_code=1), Book(id=2, store="s", shelf_code=1)])
        s.commit()
        before = _last_transaction(s)
        s.get_one(Book, 1).store = "s"  # moved to the other shelf of the same code
        s.commit()
        books = list(all_as_of(s, Book, before))
        with counting(engine) as seen:
            assert [(b.shelf.store, b.shelf.code) for b in books] == [("n", 1), ("s", 1)]
        assert len(seen) == 1
        assert [b.id for b in as_of(s, Shelf, ("n", 1), before).books] == [1]
        assert as_of(s, Shelf, ("n", 1), _last_transaction(s)).books == []
        assert [b.id for b in as_of(s, Shelf, ("s", 1), _last_transaction(s)).books] == [1, 2]


def test_many_to_many_through_link_history(
    moments: list[int], sessions: Sessions, engine: sa.Engine
) -> None:
    t1, t2, t3, t4 = moments
    with sessions() as s:
        names = {at: [label.name for label in as_of(s, Order, 1, at).labels] for at in moments}
        assert names == {t1: ["red"], t2: ["red"], t3: ["red", "blue"], t4: ["navy"]}
        orders = list(all_as_of(s, Order, t3))
        with counting(engine) as seen:
            assert [[label.id for label in o.labels] for o in orders] == [[1, 2], []]
        assert len(seen) == 2  # the links, then the labels: for both orders at once
        order = as_of(s, Order, 1, t3, load=["labels"])
        with counting(engine) as later:
            assert [label.name for label in order.labels] == ["red", "blue"]
        assert later == []
        with pytest.raises(RelationshipHistoryError, match=r"Order\.tags goes through tt_o"):
            _ = order.tags  # to a model that is not versioned: no link history


def test_children_are_looked_up_in_their_history_by_an_index() -> None:
    """A one-to-many as of a moment reads the child's history by its foreign-key snapshot: that
    column is indexed (with the transaction id), so the read does not scan all history."""
    history = versioning.history_table(Line)
    indexed = {tuple(c.name for c in index.columns) for index in history.indexes}
    assert ("order_id", "versioning_transaction_id") in indexed


class DynBase(DeclarativeBase):
    pass


class DynParent(Versioned, DynBase):
    __tablename__ = "tt_dyn_parents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kids: DynamicMapped[DynKid] = relationship(lazy="dynamic", order_by="DynKid.id")
    written: WriteOnlyMapped[DynKid] = relationship(viewonly=True, order_by="DynKid.id")


class DynKid(Versioned, DynBase):
    __tablename__ = "tt_dyn_kids"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(sa.ForeignKey("tt_dyn_parents.id"))


def test_dynamic_and_write_only_relationships_are_refused_as_of_a_moment(
    create_tables: Tables, sessions: Sessions
) -> None:
    """They query today's rows from the instance: on an instance as of a moment that would be
    today's children presented as then, so reading them raises; live instances are untouched."""
    create_tables(DynBase.metadata)
    with sessions() as session:
        session.add(DynParent(id=1))
        session.commit()
        then = history(session, DynParent, 1)[-1].transaction_id
        session.add(DynKid(id=1, parent_id=1))  # a child added after that moment
        session.commit()
        old = as_of(session, DynParent, 1, then)
        assert old is not None
        for name, kind in (("kids", "dynamic"), ("written", "write_only")):
            with pytest.raises(RelationshipHistoryError, match=rf"DynParent\.{name} is a {kind}"):
                getattr(old, name)
        live = session.get(DynParent, 1)
        assert live is not None
        assert [kid.id for kid in live.kids] == [1]
        assert [kid.id for kid in session.scalars(live.written.select())] == [1]
