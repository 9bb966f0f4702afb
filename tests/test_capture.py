"""The write side: what every insert, update and delete of a versioned model records.

Covers snapshots with client and server defaults, the transaction row and the audit context,
per-field changes (also with expired, deferred and in-place mutated attributes), deletes and
cascades, flushes, savepoints, rollbacks and failed flushes, delete + re-insert, composite keys,
classic ``declarative_base()`` models, ``exclude`` and ``mask``, append-only history, one history
``INSERT`` per flush and ``onupdate`` columns. Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    declarative_base,
    mapped_column,
    relationship,
)
from sqlalchemy.orm.attributes import flag_modified

import versioning
from versioning import Operation, Versioned, audit_context, history, history_table

from helpers import count, ops, read

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Item(Versioned, Base):
    __tablename__ = "cap_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    qty: Mapped[int] = mapped_column(default=7)
    status: Mapped[str] = mapped_column(sa.String(20), server_default="new")
    priority: Mapped[int] = mapped_column(server_default=sa.text("5"))
    code: Mapped[str | None] = mapped_column(sa.String(20), unique=True)
    note: Mapped[str | None] = mapped_column(sa.String(100))
    data: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    body: Mapped[str | None] = mapped_column(sa.Text, deferred=True)


_revisions = itertools.count(1000)


def _next_revision() -> int:
    return next(_revisions)


class Stamped(Versioned, Base):
    __tablename__ = "cap_stamped"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(sa.String(50))
    revision: Mapped[int] = mapped_column(default=1, onupdate=_next_revision)


class Child(Versioned, Base):
    __tablename__ = "cap_children"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # An explicit type: a foreign key to a table declared later is covered by
    # test_foreign_key_to_a_table_declared_later.
    parent_id: Mapped[int] = mapped_column(sa.Integer, sa.ForeignKey("cap_parents.id"))
    label: Mapped[str] = mapped_column(sa.String(50))


# Declared after Child on purpose: a relationship to a class declared later is covered by
# test_relationship_to_a_class_declared_later.
class Parent(Versioned, Base):
    __tablename__ = "cap_parents"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    children: Mapped[list[Child]] = relationship(cascade="all, delete-orphan", order_by=Child.id)


class Pair(Versioned, Base):
    __tablename__ = "cap_pairs"

    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(50))


class Account(Versioned, Base):
    __tablename__ = "cap_accounts"
    __versioned__ = {
        "exclude": ["view_count"],
        "mask": {"card_number": versioning.masks.last4, "secret": versioning.masks.redact},
    }

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(sa.String(50))
    view_count: Mapped[int] = mapped_column(default=0)
    card_number: Mapped[str | None] = mapped_column(sa.String(32))
    secret: Mapped[str | None] = mapped_column(sa.String(50))


class Plain(Base):
    """Not versioned: changing it must never write history or a transaction row."""

    __tablename__ = "cap_plain"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


ClassicBase: Any = declarative_base()


class Doc(Versioned, ClassicBase):
    __tablename__ = "cap_docs"

    id = sa.Column(sa.Integer, primary_key=True, autoincrement=False)
    title = sa.Column(sa.String(50), nullable=False)
    pages = sa.Column(sa.Integer, nullable=False, default=1)
    state = sa.Column(sa.String(20), nullable=False, server_default="draft")


TX = Base.metadata.tables[versioning.TRANSACTION_TABLE]


# --- helpers ---------------------------------------------------------------------------------


def raw_rows(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    """Every row of ``table`` as the driver returns it, in write order."""
    order = table.primary_key.columns.keys()[0]
    with engine.connect() as connection:
        result = connection.exec_driver_sql(f"SELECT * FROM {table.name} ORDER BY {order}")
        return [tuple(row) for row in result]


def item_state(**values: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "id": 1,
        "name": "a",
        "qty": 7,
        "status": "new",
        "priority": 5,
        "code": None,
        "note": None,
        "data": None,
        "body": None,
    }
    state.update(values)
    return state


def add_item(sessions: Sessions, **values: Any) -> None:
    with sessions() as session:
        session.add(Item(**{"id": 1, "name": "a", **values}))
        session.commit()


# --- inserts and the transaction row ---------------------------------------------------------


def test_insert_records_full_snapshot_with_client_and_server_defaults(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Item(id=1, name="a", body="long text"))
        session.commit()
    with sessions() as session:
        live = session.get(Item, 1)
        assert live is not None
        stored = {key: getattr(live, key) for key in item_state()}
    [version] = read(sessions, Item, 1)
    assert version.operation is INSERT
    assert version.model is Item
    assert dict(version.state) == stored == item_state(body="long text")
    assert dict(version.changes) == {
        "id": (None, 1),
        "name": (None, "a"),
        "qty": (None, 7),
        "status": (None, "new"),
        "priority": (None, 5),
        "body": (None, "long text"),
    }
    assert version.primary_key == (1,)


def test_insert_records_explicit_values_over_defaults(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, qty=3, status="open", priority=9, code="C1", data={"k": [1, 2]})
    [version] = read(sessions, Item, 1)
    assert dict(version.state) == item_state(
        qty=3, status="open", priority=9, code="C1", data={"k": [1, 2]}
    )


def test_transaction_row_fields(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    before = dt.datetime.now(dt.UTC)
    with audit_context(
        actor="alice", source_ip="203.0.113.7", request_id="req-1", reason="import", ticket=42
    ):
        add_item(sessions)
    after = dt.datetime.now(dt.UTC)
    [version] = read(sessions, Item, 1)
    tx = version.transaction
    assert tx is not None
    assert tx.id == version.transaction_id
    assert (tx.actor, tx.source_ip, tx.request_id, tx.reason) == (
        "alice",
        "203.0.113.7",
        "req-1",
        "import",
    )
    assert dict(tx.extra) == {"ticket": 42}
    assert tx.issued_at.tzinfo is not None
    assert tx.issued_at.utcoffset() == dt.timedelta(0)
    slack = dt.timedelta(seconds=2)
    assert before - slack <= tx.issued_at <= after + slack


def test_transaction_row_without_context_has_empty_fields(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions)
    [version] = read(sessions, Item, 1)
    tx = version.transaction
    assert tx is not None
    assert (tx.actor, tx.source_ip, tx.request_id, tx.reason) == (None, None, None, None)
    assert dict(tx.extra) == {}


def test_context_of_first_versioned_flush_wins(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        with audit_context(actor="alice", source_ip="10.0.0.1", request_id="r1", reason="one", a=1):
            session.add(Item(id=1, name="a"))
            session.flush()
        with audit_context(actor="bob", source_ip="10.0.0.2", request_id="r2", reason="two", b=2):
            session.add(Item(id=2, name="b"))
            item = session.get(Item, 1)
            assert item is not None
            item.name = "a2"
            session.flush()
        session.commit()
    first, second = read(sessions, Item, 1)
    [other] = read(sessions, Item, 2)
    assert first.transaction_id == second.transaction_id == other.transaction_id
    tx = second.transaction
    assert tx is not None
    assert (tx.actor, tx.source_ip, tx.request_id, tx.reason, dict(tx.extra)) == (
        "alice",
        "10.0.0.1",
        "r1",
        "one",
        {"a": 1},
    )
    assert count(engine, TX) == 1


def test_context_of_a_flush_without_versioned_changes_does_not_count(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        with audit_context(actor="early"):
            session.add(Plain(id=1, name="x"))
            session.flush()
        with audit_context(actor="late"):
            session.add(Item(id=1, name="a"))
            session.commit()
    [version] = read(sessions, Item, 1)
    assert version.transaction is not None
    assert version.transaction.actor == "late"


def test_each_database_transaction_gets_its_own_row(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        with audit_context(actor="alice"):
            session.add(Item(id=1, name="a"))
            session.commit()
        with audit_context(actor="bob"):
            item = session.get(Item, 1)
            assert item is not None
            item.name = "b"
            session.commit()
    first, second = read(sessions, Item, 1)
    assert first.transaction_id < second.transaction_id
    assert first.transaction is not None and second.transaction is not None
    assert (first.transaction.actor, second.transaction.actor) == ("alice", "bob")
    assert count(engine, TX) == 2


# --- updates ---------------------------------------------------------------------------------


def test_update_records_only_changed_columns(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, note="n1", code="C1")
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        item.note = None
        item.qty = 7  # the value it already has
        session.commit()
    _, update = read(sessions, Item, 1)
    assert update.operation is UPDATE
    assert dict(update.changes) == {"name": ("a", "b"), "note": ("n1", None)}
    assert dict(update.state) == item_state(name="b", code="C1")


def test_setting_current_values_records_nothing(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    add_item(sessions, data={"x": 1})
    history_before = count(engine, history_table(Item))
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "a"
        item.qty = 7
        item.data = {"x": 1}
        session.commit()
    with sessions() as session:  # and on an expired instance
        item = session.get(Item, 1)
        assert item is not None
        session.expire(item)
        item.name = "a"
        item.status = "new"
        session.commit()
    with sessions() as session:  # changed and changed back before the flush
        item = session.get(Item, 1)
        assert item is not None
        item.name = "zzz"
        item.name = "a"
        session.commit()
    assert count(engine, history_table(Item)) == history_before == 1
    assert count(engine, TX) == 1


def test_successive_updates_show_correct_old_values(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions)
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.flush()
        item.qty = 8
        session.flush()
        item.name = "c"
        item.note = "x"
        session.commit()
        item.qty = 9
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, UPDATE, UPDATE, UPDATE, UPDATE]
    assert [dict(v.changes) for v in versions[1:]] == [
        {"name": ("a", "b")},
        {"qty": (7, 8)},
        {"name": ("b", "c"), "note": (None, "x")},
        {"qty": (8, 9)},
    ]
    assert dict(versions[-1].state) == item_state(name="c", qty=9, note="x")


def test_update_with_sql_expression_records_the_stored_value(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, qty=3)
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.qty = Item.qty + 1
        session.commit()
    _, update = read(sessions, Item, 1)
    assert dict(update.changes) == {"qty": (3, 4)}
    assert update.state["qty"] == 4


def test_onupdate_column_is_recorded_with_its_new_value(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Stamped(id=1, value="a"))
        session.commit()
        stamped = session.get(Stamped, 1)
        assert stamped is not None
        stamped.value = "b"
        session.commit()
        first_revision = stamped.revision
        stamped.value = "c"  # expired by the commit
        session.commit()
        second_revision = stamped.revision
    assert 1 != first_revision != second_revision
    insert, update1, update2 = read(sessions, Stamped, 1)
    assert insert.state == {"id": 1, "value": "a", "revision": 1}
    assert dict(update1.changes) == {"value": ("a", "b"), "revision": (1, first_revision)}
    assert dict(update1.state) == {"id": 1, "value": "b", "revision": first_revision}
    assert dict(update2.changes) == {
        "value": ("b", "c"),
        "revision": (first_revision, second_revision),
    }
    assert update2.state["revision"] == second_revision


# --- expired, deferred and mutated attributes -------------------------------------------------


def test_set_right_after_commit_records_correct_old_value(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        item = Item(id=1, name="a", note="n", body="text")
        session.add(item)
        session.commit()  # expire_on_commit: every attribute is now unloaded
        item.name = "b"
        session.commit()
        item.note = "m"
        item.qty = 1
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, UPDATE, UPDATE]
    assert dict(versions[1].changes) == {"name": ("a", "b")}
    assert dict(versions[1].state) == item_state(name="b", note="n", body="text")
    assert dict(versions[2].changes) == {"note": ("n", "m"), "qty": (7, 1)}
    assert dict(versions[2].state) == item_state(name="b", note="m", qty=1, body="text")


def test_set_after_commit_sees_changes_made_by_another_session(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        item = Item(id=1, name="a")
        session.add(item)
        session.commit()
        with sessions() as other:
            other_item = other.get(Item, 1)
            assert other_item is not None
            other_item.name = "by-other"
            other.commit()
        item.name = "b"  # expired: the old value is what the database holds now
        session.commit()
    versions = read(sessions, Item, 1)
    assert [dict(v.changes) for v in versions[1:]] == [
        {"name": ("a", "by-other")},
        {"name": ("by-other", "b")},
    ]


def test_set_after_session_expire_records_correct_old_value(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, note="n")
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        session.expire(item)
        item.name = "b"
        session.flush()
        session.expire(item, ["note"])
        item.note = "m"
        session.commit()
    _, first, second = read(sessions, Item, 1)
    assert dict(first.changes) == {"name": ("a", "b")}
    assert dict(first.state) == item_state(name="b", note="n")
    assert dict(second.changes) == {"note": ("n", "m")}
    assert dict(second.state) == item_state(name="b", note="m")


def test_deferred_column_is_in_the_snapshot_when_unloaded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, body="long text")
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        assert "body" not in sa.inspect(item).dict
        item.name = "b"
        session.commit()
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.body = "new text"  # the deferred column itself, never loaded
        session.commit()
    versions = read(sessions, Item, 1)
    assert dict(versions[1].changes) == {"name": ("a", "b")}
    assert dict(versions[1].state) == item_state(name="b", body="long text")
    assert dict(versions[2].changes) == {"body": ("long text", "new text")}
    assert dict(versions[2].state) == item_state(name="b", body="new text")


def test_json_mutated_in_place_with_flag_modified(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, data={"a": 1, "tags": ["x"]})
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None and item.data is not None
        item.data["a"] = 2
        item.data["tags"].append("y")
        flag_modified(item, "data")
        session.commit()
        assert item.data is not None
        item.data["b"] = True  # after a commit: the dict was reloaded
        flag_modified(item, "data")
        session.commit()
    versions = read(sessions, Item, 1)
    assert dict(versions[1].changes) == {
        "data": ({"a": 1, "tags": ["x"]}, {"a": 2, "tags": ["x", "y"]})
    }
    assert dict(versions[2].changes) == {
        "data": ({"a": 2, "tags": ["x", "y"]}, {"a": 2, "tags": ["x", "y"], "b": True})
    }
    assert versions[2].state["data"] == {"a": 2, "tags": ["x", "y"], "b": True}


# --- deletes ---------------------------------------------------------------------------------


def test_delete_records_state_before_deletion(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, note="n", body="text", data={"k": 1})
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.commit()
        loaded = session.get(Item, 1)
        assert loaded is not None and loaded.name == "b"
        session.delete(loaded)
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, UPDATE, DELETE]
    expected = item_state(name="b", note="n", body="text", data={"k": 1})
    assert dict(versions[-1].state) == expected
    assert dict(versions[-1].changes) == {
        k: (v, None) for k, v in expected.items() if v is not None
    }


def test_delete_of_expired_instance(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        item = Item(id=1, name="a", note="n", body="text")
        session.add(item)
        session.commit()  # item is expired
        session.delete(item)
        session.commit()
    with sessions() as session:
        session.add(Item(id=2, name="b"))
        session.commit()
        item = session.get(Item, 2)
        assert item is not None
        session.expire(item)
        session.delete(item)
        session.commit()
    assert dict(read(sessions, Item, 1)[-1].state) == item_state(note="n", body="text")
    deleted = read(sessions, Item, 2)[-1]
    assert deleted.operation is DELETE
    assert dict(deleted.state) == item_state(id=2, name="b")


def test_delete_of_modified_instance_records_the_stored_state(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions)
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "never stored"
        session.delete(item)
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, DELETE]
    assert versions[-1].state["name"] == "a"


def test_relationship_to_a_class_declared_later(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Declaring a versioned model must not need the classes it refers to yet: a relationship
    may name a class declared further down, the usual order of a models module."""

    class LocalBase(DeclarativeBase):
        pass

    class Author(Versioned, LocalBase):
        __tablename__ = "cap_fwd_authors"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))
        books: Mapped[list[Book]] = relationship(
            back_populates="author", cascade="all, delete-orphan"
        )

    class Book(Versioned, LocalBase):
        __tablename__ = "cap_fwd_books"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        author_id: Mapped[int] = mapped_column(sa.ForeignKey("cap_fwd_authors.id"))
        title: Mapped[str] = mapped_column(sa.String(50))
        author: Mapped[Author] = relationship(back_populates="books")

    create_tables(LocalBase.metadata)
    with sessions() as session:
        session.add(Author(id=1, name="a", books=[Book(id=1, title="t")]))
        session.commit()
        author = session.get(Author, 1)
        session.delete(author)
        session.commit()
    versions = read(sessions, Book, 1)
    assert ops(versions) == [INSERT, DELETE]
    assert dict(versions[-1].state) == {"id": 1, "author_id": 1, "title": "t"}


def test_foreign_key_to_a_table_declared_later(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A foreign key column typed by its target (SQLAlchemy resolves the type once the target
    table exists) gets the same type in history, whatever the declaration order."""

    class LocalBase(DeclarativeBase):
        pass

    class Line(Versioned, LocalBase):
        __tablename__ = "cap_fk_lines"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        order_id: Mapped[int] = mapped_column(sa.ForeignKey("cap_fk_orders.id"))

    class Order(Versioned, LocalBase):
        __tablename__ = "cap_fk_orders"

        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    assert isinstance(history_table(Line).c.order_id.type, sa.Integer)
    create_tables(LocalBase.metadata)
    with sessions() as session:
        session.add(Order(id=1))
        session.flush()
        session.add(Line(id=1, order_id=1))
        session.commit()
        line = session.get(Line, 1)
        session.delete(line)
        session.commit()
    versions = read(sessions, Line, 1)
    assert ops(versions) == [INSERT, DELETE]
    assert dict(versions[-1].state) == {"id": 1, "order_id": 1}


def test_cascade_delete_of_children_is_recorded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(
            Parent(id=1, name="p", children=[Child(id=10, label="x"), Child(id=11, label="y")])
        )
        session.commit()
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        session.delete(parent)
        session.commit()
    assert ops(read(sessions, Parent, 1)) == [INSERT, DELETE]
    for child_id, label in ((10, "x"), (11, "y")):
        versions = read(sessions, Child, child_id)
        assert ops(versions) == [INSERT, DELETE]
        assert dict(versions[-1].state) == {"id": child_id, "parent_id": 1, "label": label}
        assert versions[-1].transaction_id == read(sessions, Parent, 1)[-1].transaction_id


def test_cascade_delete_of_expired_parent_and_children(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        parent = Parent(id=1, name="p", children=[Child(id=10, label="x")])
        session.add(parent)
        session.commit()
        child = parent.children[0]
        session.commit()  # parent and child are expired
        assert "label" not in sa.inspect(child).dict
        session.delete(parent)
        session.commit()
    versions = read(sessions, Child, 10)
    assert ops(versions) == [INSERT, DELETE]
    assert dict(versions[-1].state) == {"id": 10, "parent_id": 1, "label": "x"}


def test_orphan_removal_is_recorded_as_delete(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(
            Parent(id=1, name="p", children=[Child(id=10, label="x"), Child(id=11, label="y")])
        )
        session.commit()
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        parent.children.remove(parent.children[0])
        session.commit()
        parent.children = []  # after the commit: collection and child expired
        session.commit()
    for child_id, label in ((10, "x"), (11, "y")):
        versions = read(sessions, Child, child_id)
        assert ops(versions) == [INSERT, DELETE]
        assert dict(versions[-1].state) == {"id": child_id, "parent_id": 1, "label": label}
    assert ops(read(sessions, Parent, 1)) == [INSERT]


# --- flushes, savepoints, rollbacks ----------------------------------------------------------


def test_several_flushes_share_one_transaction_row(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Item(id=1, name="a"))
        session.flush()
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.flush()
        session.add(Item(id=2, name="c"))
        session.flush()
        session.delete(item)
        session.commit()
    versions = read(sessions, Item, 1) + read(sessions, Item, 2)
    assert ops(versions) == [INSERT, UPDATE, DELETE, INSERT]
    assert len({v.transaction_id for v in versions}) == 1
    assert count(engine, TX) == 1
    assert count(engine, history_table(Item)) == 4


def test_transaction_without_versioned_changes_writes_no_transaction_row(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Plain(id=1, name="x"))
        session.commit()
        plain = session.get(Plain, 1)
        assert plain is not None
        plain.name = "y"
        session.commit()
        session.delete(plain)
        session.commit()
    with sessions() as session:
        session.add(Item(id=1, name="a"))
        session.commit()
        session.flush()  # nothing pending
        session.commit()
        item = session.get(Item, 1)
        assert item is not None
        item.name = "a"
        session.commit()
    assert count(engine, TX) == 1
    assert count(engine, history_table(Item)) == 1


def test_rolled_back_savepoint_discards_its_versions(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Item(id=1, name="a"))
        session.flush()
        savepoint = session.begin_nested()
        item = session.get(Item, 1)
        assert item is not None
        item.name = "in savepoint"
        session.add(Item(id=2, name="discarded"))
        session.flush()
        savepoint.rollback()
        item.note = "after"
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[1].changes) == {"note": (None, "after")}
    assert versions[1].state["name"] == "a"
    assert read(sessions, Item, 2) == []
    assert count(engine, TX) == 1
    assert len({v.transaction_id for v in versions}) == 1


def test_committed_savepoint_keeps_its_versions(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        with session.begin_nested():
            session.add(Item(id=1, name="a"))
        with session.begin_nested():
            session.add(Item(id=2, name="b"))
        session.commit()
    versions = read(sessions, Item, 1) + read(sessions, Item, 2)
    assert ops(versions) == [INSERT, INSERT]
    assert versions[0].transaction_id == versions[1].transaction_id
    assert count(engine, TX) == 1


def test_transaction_row_first_written_in_rolled_back_savepoint_is_written_again(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session, audit_context(actor="alice"):
        savepoint = session.begin_nested()
        session.add(Item(id=1, name="discarded"))
        session.flush()
        savepoint.rollback()
        session.add(Item(id=2, name="kept"))
        session.flush()
        session.add(Item(id=3, name="kept too"))
        session.commit()
    assert read(sessions, Item, 1) == []
    [kept] = read(sessions, Item, 2)
    [kept_too] = read(sessions, Item, 3)
    assert kept.transaction_id == kept_too.transaction_id
    assert kept.transaction is not None and kept.transaction.actor == "alice"
    assert count(engine, TX) == 1
    assert count(engine, history_table(Item)) == 2


def test_nested_savepoints_rolled_back_inner_only(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        outer = session.begin_nested()
        session.add(Item(id=1, name="outer"))
        session.flush()
        inner = session.begin_nested()
        session.add(Item(id=2, name="inner"))
        session.flush()
        inner.rollback()
        outer.commit()
        session.add(Item(id=3, name="top"))
        session.commit()
    assert ops(read(sessions, Item, 1)) == [INSERT]
    assert read(sessions, Item, 2) == []
    assert ops(read(sessions, Item, 3)) == [INSERT]
    assert read(sessions, Item, 1)[0].transaction_id == read(sessions, Item, 3)[0].transaction_id
    assert count(engine, TX) == 1


def test_rolled_back_transaction_leaves_no_history(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Item(id=1, name="a"))
        session.flush()
        session.rollback()
    assert count(engine, TX) == 0
    assert count(engine, history_table(Item)) == 0
    add_item(sessions)
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.flush()
        session.delete(item)
        session.flush()
        session.rollback()
        # The session is reusable and the next transaction gets a fresh row.
        again = session.get(Item, 1)
        assert again is not None and again.name == "a"
        again.name = "c"
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[1].changes) == {"name": ("a", "c")}
    assert count(engine, TX) == 2
    assert versions[0].transaction_id != versions[1].transaction_id


def test_failed_flush_leaves_no_history(create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    add_item(sessions, code="X")
    with sessions() as session:
        session.add(Item(id=2, name="ok", code="Y"))
        session.add(Item(id=3, name="dup", code="X"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        session.add(Item(id=4, name="other", code="Z"))
        session.flush()
        item.name = "renamed"
        session.add(Item(id=5, name="dup", code="Z"))
        with pytest.raises(IntegrityError):
            session.flush()
        session.rollback()
    assert count(engine, TX) == 1
    assert count(engine, history_table(Item)) == 1
    assert read(sessions, Item, 2) == []
    assert read(sessions, Item, 4) == []


def test_failed_flush_in_savepoint_leaves_no_history_for_it(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    add_item(sessions, code="X")
    with sessions() as session:
        session.add(Item(id=2, name="kept", code="Y"))
        session.flush()
        savepoint = session.begin_nested()
        item = session.get(Item, 2)
        assert item is not None
        item.name = "lost"
        session.add(Item(id=3, name="dup", code="X"))
        with pytest.raises(IntegrityError):
            session.flush()
        savepoint.rollback()
        assert item.name == "kept"
        session.add(Item(id=4, name="after", code="Z"))
        session.commit()
    assert read(sessions, Item, 3) == []
    kept = read(sessions, Item, 2)
    after = read(sessions, Item, 4)
    assert ops(kept) == [INSERT] and ops(after) == [INSERT]
    assert kept[0].state["name"] == "kept"
    assert kept[0].transaction_id == after[0].transaction_id
    assert count(engine, TX) == 2
    assert count(engine, history_table(Item)) == 3


# --- delete and re-insert --------------------------------------------------------------------


def test_delete_and_reinsert_in_one_flush(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    add_item(sessions, note="old", code="C1")
    with sessions() as session:
        old = session.get(Item, 1)
        assert old is not None
        session.delete(old)
        session.add(Item(id=1, name="reborn", qty=1))
        session.commit()
    with sessions() as session:
        live = session.get(Item, 1)
        assert live is not None
        stored = {key: getattr(live, key) for key in item_state()}
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, DELETE, INSERT]
    assert dict(versions[1].state) == item_state(note="old", code="C1")
    # SQLAlchemy turns this into one UPDATE of the row (a "row switch"), which leaves columns
    # the new object does not set as they were: the INSERT must hold what is actually stored.
    assert dict(versions[2].state) == stored
    assert (stored["name"], stored["qty"]) == ("reborn", 1)
    assert versions[1].transaction_id == versions[2].transaction_id
    assert versions[1].version_id < versions[2].version_id


def test_delete_and_reinsert_in_two_flushes(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    add_item(sessions, note="old", code="C1")
    with sessions() as session:
        old = session.get(Item, 1)
        assert old is not None
        session.delete(old)
        session.flush()
        session.add(Item(id=1, name="reborn", code="C1"))
        session.commit()
    versions = read(sessions, Item, 1)
    assert ops(versions) == [INSERT, DELETE, INSERT]
    assert dict(versions[1].state) == item_state(note="old", code="C1")
    assert dict(versions[2].state) == item_state(name="reborn", code="C1")
    assert versions[1].transaction_id == versions[2].transaction_id


# --- composite primary keys ------------------------------------------------------------------


def test_composite_primary_key(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Pair(a=1, b="x", value="v1"), Pair(a=1, b="y", value="w1")])
        session.commit()
    with sessions() as session:
        pairs = session.scalars(sa.select(Pair).order_by(Pair.b)).all()
        for pair in pairs:
            pair.value = pair.value.replace("1", "2")
        session.commit()
        first = pairs[0]
        first.value = "v3"  # expired: pre-image found by the composite key
        session.commit()
        session.delete(first)
        session.commit()
    versions = read(sessions, Pair, (1, "x"))
    assert ops(versions) == [INSERT, UPDATE, UPDATE, DELETE]
    assert [dict(v.changes) for v in versions[1:3]] == [
        {"value": ("v1", "v2")},
        {"value": ("v2", "v3")},
    ]
    assert dict(versions[-1].state) == {"a": 1, "b": "x", "value": "v3"}
    assert all(v.primary_key == (1, "x") for v in versions)
    other = read(sessions, Pair, (1, "y"))
    assert ops(other) == [INSERT, UPDATE]
    assert dict(other[-1].changes) == {"value": ("w1", "w2")}
    with sessions() as session:
        live = session.get(Pair, (1, "y"))
        assert live is not None
        assert ops(history(session, live)) == [INSERT, UPDATE]
    assert read(sessions, Pair, (2, "x")) == []


# --- classic declarative_base() ---------------------------------------------------------------


def test_classic_declarative_base_models(create_tables: CreateTables, sessions: Sessions) -> None:
    create_tables(ClassicBase.metadata)
    with sessions() as session:
        with audit_context(actor="carol"):
            doc = Doc(id=1, title="t1")
            session.add(doc)
            session.commit()
        doc.title = "t2"  # expired after the commit
        session.commit()
        session.delete(doc)
        session.commit()
    versions = read(sessions, Doc, 1)
    assert ops(versions) == [INSERT, UPDATE, DELETE]
    assert versions[0].model is Doc
    assert dict(versions[0].state) == {"id": 1, "title": "t1", "pages": 1, "state": "draft"}
    assert versions[0].transaction is not None and versions[0].transaction.actor == "carol"
    assert dict(versions[1].changes) == {"title": ("t1", "t2")}
    assert dict(versions[2].state) == {"id": 1, "title": "t2", "pages": 1, "state": "draft"}
    assert history_table(Doc).name == "cap_docs_history"


# --- exclude and mask ------------------------------------------------------------------------


def test_excluded_columns_are_not_tracked(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    table = history_table(Account)
    assert "view_count" not in table.c
    assert "view_count" not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    with sessions() as session:
        session.add(Account(id=1, owner="o", view_count=5))
        session.commit()
    with sessions() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.view_count = 6
        session.commit()
        account.view_count = 7  # expired, still only an excluded column
        session.commit()
    assert count(engine, TX) == 1
    assert count(engine, table) == 1
    with sessions() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.view_count = 8
        account.owner = "p"
        session.commit()
    insert, update = read(sessions, Account, 1)
    assert "view_count" not in insert.state and "view_count" not in insert.changes
    assert dict(update.changes) == {"owner": ("o", "p")}
    assert "view_count" not in update.state
    assert set(update.state) == {"id", "owner", "card_number", "secret"}


def test_masked_columns_record_mask_output(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Account(id=1, owner="o", card_number="4111111111111111", secret="hunter2"))
        session.commit()
    with sessions() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.card_number = "5500000000000004"
        account.secret = "swordfish"  # masks to the same text: still a recorded change
        session.commit()
        account.card_number = None  # expired
        session.commit()
        account.card_number = "4000000000000002"
        account.secret = None
        session.commit()
    insert, update1, update2, update3 = read(sessions, Account, 1)
    assert dict(insert.state) == {
        "id": 1,
        "owner": "o",
        "card_number": "************1111",
        "secret": "[REDACTED]",
    }
    assert insert.changes["card_number"] == (None, "************1111")
    assert dict(update1.changes) == {
        "card_number": ("************1111", "************0004"),
        "secret": ("[REDACTED]", "[REDACTED]"),
    }
    assert update1.state["card_number"] == "************0004"
    assert dict(update2.changes) == {"card_number": ("************0004", None)}
    assert update2.state["card_number"] is None
    assert dict(update3.changes) == {
        "card_number": (None, "************0002"),
        "secret": ("[REDACTED]", None),
    }
    assert update3.state["secret"] is None
    raw = repr(raw_rows(engine, history_table(Account)))
    for secret in ("4111111111111111", "5500000000000004", "4000000000000002", "hunter2"):
        assert secret not in raw
    assert "swordfish" not in raw


def test_masked_column_set_to_same_value_records_nothing(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Account(id=1, owner="o", card_number="4111111111111111", secret="s"))
        session.commit()
        account = session.get(Account, 1)
        assert account is not None
        account.card_number = "4111111111111111"
        account.secret = "s"
        session.commit()
    assert count(engine, history_table(Account)) == 1
    assert count(engine, TX) == 1


# --- append-only and statement count ---------------------------------------------------------


def test_history_rows_are_never_changed(create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    table = history_table(Item)
    with sessions() as session:
        session.add_all([Item(id=1, name="a", data={"k": 1}), Item(id=2, name="b")])
        session.commit()
        item = session.get(Item, 1)
        assert item is not None
        item.name = "a2"
        session.commit()
    rows_before = raw_rows(engine, table)
    tx_before = raw_rows(engine, TX)
    assert len(rows_before) == 3
    with sessions() as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "a3"
        assert item.data is not None
        item.data["k"] = 2
        flag_modified(item, "data")
        session.delete(session.get(Item, 2))
        session.commit()
        session.add(Item(id=2, name="b again"))
        session.commit()
        versioning.restore(session, Item, 1, at=read(sessions, Item, 1)[0].transaction_id)
        session.commit()
    rows_after = raw_rows(engine, table)
    assert len(rows_after) == 7
    assert rows_after[: len(rows_before)] == rows_before
    assert raw_rows(engine, TX)[: len(tx_before)] == tx_before


class _StatementCounter:
    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self.engine = engine
        self.name = table.name.lower()
        self.statements: list[tuple[str, bool]] = []

    def __call__(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if self.name in statement.lower():
            self.statements.append((statement, executemany))

    def __enter__(self) -> _StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "before_cursor_execute", self)


def test_one_history_insert_per_transaction(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    # History rows wait for the commit, which writes them in one statement per history table,
    # however many flushes the transaction had.
    engine = create_tables(Base.metadata)
    table = history_table(Item)
    with sessions() as session, _StatementCounter(engine, table) as counter:
        session.add_all([Item(id=i, name=f"n{i}") for i in range(1, 26)])
        session.flush()
        assert counter.statements == [], "nothing is written before the commit"
        session.add_all([Item(id=i, name=f"n{i}") for i in range(26, 51)])
        session.flush()
        session.commit()
    assert len(counter.statements) == 1, counter.statements
    assert counter.statements[0][0].lstrip().upper().startswith("INSERT")
    assert count(engine, table) == 50
    with sessions() as session:
        items = session.scalars(sa.select(Item).order_by(Item.id)).all()
        for item in items[:30]:
            item.qty += 1
        for item in items[30:40]:
            session.delete(item)
        session.add_all([Item(id=i, name=f"n{i}") for i in range(51, 61)])
        session.commit()  # every item is expired now
        for item in items[:20]:
            item.name = item.name.upper()
        with _StatementCounter(engine, table) as counter2:
            session.flush()
            session.commit()
    assert len(counter2.statements) == 1, counter2.statements
    assert count(engine, table) == 50 + 30 + 10 + 10 + 20
    versions = read(sessions, Item, 5)
    assert [dict(v.changes) for v in versions[1:]] == [{"qty": (7, 8)}, {"name": ("n5", "N5")}]


def test_history_write_is_one_statement_per_history_table(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    item_history = history_table(Item)
    pair_history = history_table(Pair)
    with sessions() as session:
        session.add_all([Item(id=i, name="x") for i in range(1, 21)])
        session.add_all([Pair(a=i, b="k", value="v") for i in range(1, 21)])
        with (
            _StatementCounter(engine, item_history) as items,
            _StatementCounter(engine, pair_history) as pairs,
        ):
            session.commit()
    assert len(items.statements) == 1
    assert len(pairs.statements) == 1
    assert count(engine, TX) == 1


class Optimistic(Versioned, Base):
    """Optimistic locking: a stale session row fails its UPDATE, so its values can be trusted."""

    __tablename__ = "cap_optimistic"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    version: Mapped[int] = mapped_column(nullable=False)

    __mapper_args__ = {"version_id_col": version}


def _selects_of(counter: _StatementCounter) -> list[str]:
    return [s for s, _ in counter.statements if s.lstrip().upper().startswith("SELECT")]


def test_updates_read_the_current_row_first(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    # Values loaded earlier may be stale: the row being updated is read (locked) before the flush.
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Item(id=1, name="a"))
        session.commit()
        item = session.get(Item, 1)
        assert item is not None
        assert item.name == "a"  # loaded
        with _StatementCounter(engine, Item.__table__) as counter:
            item.name = "b"
            session.flush()
        session.commit()
    assert len(_selects_of(counter)) == 1, counter.statements


def test_a_version_id_col_lets_updates_trust_the_session(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Optimistic(id=1, name="a"))
        session.commit()
        optimistic = session.get(Optimistic, 1)
        assert optimistic is not None
        assert optimistic.name == "a"
        with _StatementCounter(engine, Optimistic.__table__) as counter:
            optimistic.name = "b"
            session.flush()
        session.commit()
        assert _selects_of(counter) == [], counter.statements
        optimistic.name = "c"  # expired by the commit: the old value is unknown, so it is read
        with _StatementCounter(engine, Optimistic.__table__) as counter:
            session.flush()
        session.commit()
        assert len(_selects_of(counter)) >= 1
    versions = read(sessions, Optimistic, 1)
    assert [dict(v.changes) for v in versions[1:]] == [
        {"name": ("a", "b"), "version": (1, 2)},
        {"name": ("b", "c"), "version": (2, 3)},
    ]
