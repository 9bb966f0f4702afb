"""Foreign-key actions: what the database deletes or changes on its own is recorded exactly.

``ondelete="CASCADE"`` (with ``passive_deletes=True``, so the ORM does not load the children),
``ondelete="SET NULL"``, ``ondelete="SET DEFAULT"`` and ``onupdate="CASCADE"`` between versioned
tables record the children's DELETE/UPDATE versions, with their true old values and in the parent's
transaction, through the unit of work and through ORM ``delete()``/``update()`` statements,
grandchildren and self-referencing trees included. A foreign key with an action from a table that
is not versioned is refused at mapper configuration. SQLite with ``PRAGMA foreign_keys`` off does
nothing, and nothing is recorded. Every test runs on SQLite (foreign keys on), PostgreSQL and
MariaDB.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, event, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from versioning import ConfigurationError, Operation, Versioned, history

from helpers import ops, read

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Parent(Versioned, Base):
    __tablename__ = "cas_parents"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    code: Mapped[str | None] = mapped_column(sa.String(20), unique=True)
    # The database deletes the children: the ORM neither loads nor deletes them.
    children: Mapped[list[Child]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", passive_deletes=True
    )


class Child(Versioned, Base):
    __tablename__ = "cas_children"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(
        sa.ForeignKey("cas_parents.id", ondelete="CASCADE", onupdate="CASCADE")
    )
    label: Mapped[str] = mapped_column(sa.String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Toy(Versioned, Base):
    """A grandchild of Parent through Child."""

    __tablename__ = "cas_toys"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    child_id: Mapped[int] = mapped_column(sa.ForeignKey("cas_children.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(50))


class Pet(Versioned, Base):
    __tablename__ = "cas_pets"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("cas_parents.id", ondelete="SET NULL", onupdate="CASCADE")
    )
    name: Mapped[str] = mapped_column(sa.String(50))


class Badge(Versioned, Base):
    """References a unique column that is not the primary key."""

    __tablename__ = "cas_badges"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_code: Mapped[str | None] = mapped_column(
        sa.ForeignKey("cas_parents.code", ondelete="CASCADE", onupdate="CASCADE")
    )
    level: Mapped[int] = mapped_column(default=1)


class Node(Versioned, Base):
    """A tree: deleting a node deletes its whole subtree."""

    __tablename__ = "cas_nodes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("cas_nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(50))


class Branch(Versioned, Base):
    """A tree the ORM knows: a self-referencing relationship makes the flush go row by row."""

    __tablename__ = "cas_branches"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("cas_branches.id", ondelete="CASCADE")
    )
    children: Mapped[list[Branch]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Branch.id"
    )


class Lone(Versioned, Base):
    """No foreign key reaches it, none leaves it: the common path."""

    __tablename__ = "cas_lone"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


# --- helpers ---------------------------------------------------------------------------------


def _family(session: Session) -> None:
    """Parent 1 (children 10 and 11, toy 100 of child 10, pet 20, badge 30) and parent 2 (child 12,
    pet 21): parent 2's rows must never be touched by what happens to parent 1."""
    session.add_all(
        [
            Parent(id=1, name="p1", code="c1"),
            Parent(id=2, name="p2", code="c2"),
        ]
    )
    session.flush()
    session.add_all(
        [
            Child(id=10, parent_id=1, label="x"),
            Child(id=11, parent_id=1, label="y"),
            Child(id=12, parent_id=2, label="z"),
        ]
    )
    session.flush()
    session.add_all(
        [
            Toy(id=100, child_id=10, name="ball"),
            Pet(id=20, parent_id=1, name="rex"),
            Pet(id=21, parent_id=2, name="tom"),
            Badge(id=30, parent_code="c1", level=3),
        ]
    )
    session.commit()


def _live(engine: sa.Engine, model: type[Any]) -> list[tuple[Any, ...]]:
    table = model.__table__
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(table).order_by(*table.c[:1]))]


@contextmanager
def _statements(engine: sa.Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


def _assert_parent_1_deleted(engine: sa.Engine, sessions: Sessions) -> None:
    """Everything the database did when parent 1 was deleted is in the parent's transaction."""
    assert _live(engine, Child) == [(12, 2, "z")]
    assert _live(engine, Toy) == []
    assert _live(engine, Pet) == [(20, None, "rex"), (21, 2, "tom")]
    assert _live(engine, Badge) == []
    parent = read(sessions, Parent, 1)
    assert ops(parent) == [INSERT, DELETE]
    tx = parent[-1].transaction_id
    for model, pk, state in (
        (Child, 10, {"id": 10, "parent_id": 1, "label": "x"}),
        (Child, 11, {"id": 11, "parent_id": 1, "label": "y"}),
        (Toy, 100, {"id": 100, "child_id": 10, "name": "ball"}),
        (Badge, 30, {"id": 30, "parent_code": "c1", "level": 3}),
    ):
        versions = read(sessions, model, pk)
        assert ops(versions) == [INSERT, DELETE], (model, pk)
        assert dict(versions[-1].state) == state
        assert versions[-1].transaction_id == tx
    pet = read(sessions, Pet, 20)
    assert ops(pet) == [INSERT, UPDATE]
    assert dict(pet[-1].changes) == {"parent_id": (1, None)}
    assert dict(pet[-1].state) == {"id": 20, "parent_id": None, "name": "rex"}
    assert pet[-1].transaction_id == tx
    # Parent 2's rows were not reached.
    for model, pk in ((Parent, 2), (Child, 12), (Pet, 21)):
        assert ops(read(sessions, model, pk)) == [INSERT]


# --- the unit of work ------------------------------------------------------------------------


def test_delete_with_passive_deletes_records_children_grandchildren_and_set_null(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        session.delete(parent)
        with _statements(engine) as seen:
            session.commit()
    _assert_parent_1_deleted(engine, sessions)
    # Batched: one read per child table, none per row.
    reads = [s for s in seen if s.startswith("SELECT")]
    for table in ("cas_children", "cas_toys", "cas_pets", "cas_badges"):
        assert len([s for s in reads if f"FROM {table}" in s]) == 1, (table, reads)


def test_one_read_per_child_table_for_several_parents(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        for pk in (1, 2):
            obj = session.get(Parent, pk)
            session.delete(obj)
        with _statements(engine) as seen:
            session.commit()
    assert _live(engine, Child) == []
    assert _live(engine, Pet) == [(20, None, "rex"), (21, None, "tom")]
    for pk in (10, 11, 12):
        assert ops(read(sessions, Child, pk)) == [INSERT, DELETE]
    assert [dict(read(sessions, Pet, pk)[-1].changes) for pk in (20, 21)] == [
        {"parent_id": (1, None)},
        {"parent_id": (2, None)},
    ]
    children_reads = [s for s in seen if s.startswith("SELECT") and "FROM cas_children" in s]
    assert len(children_reads) == 1


def test_children_the_orm_deletes_itself_are_recorded_once(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A loaded collection is deleted by the ORM (before the parent): the database has nothing
    left to cascade, and each child has exactly one DELETE."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        assert len(parent.children) == 2  # loaded: the ORM deletes them
        session.delete(parent)
        session.commit()
    _assert_parent_1_deleted(engine, sessions)


def test_child_object_in_the_session_is_recorded_once(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A child the session holds (not through the parent's collection) is deleted by the
    database; the session treats it as SQLAlchemy does with passive_deletes."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        child = session.get(Child, 10)
        pet = session.get(Pet, 20)
        assert child is not None and pet is not None
        session.delete(session.get(Parent, 1))
        session.commit()
        assert sa.inspect(child).expired
        with pytest.raises(sa.orm.exc.ObjectDeletedError):
            _ = child.label
        assert pet.parent_id is None  # expired at commit, read again
    _assert_parent_1_deleted(engine, sessions)


def test_cascade_rolled_back_with_its_savepoint_leaves_no_history(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        savepoint = session.begin_nested()
        session.delete(session.get(Parent, 1))
        session.flush()
        savepoint.rollback()
        session.get(Parent, 2).name = "p2!"  # type: ignore[union-attr]
        session.commit()
    assert len(_live(engine, Child)) == 3
    for model, pk in ((Child, 10), (Toy, 100), (Pet, 20), (Badge, 30), (Parent, 1)):
        assert ops(read(sessions, model, pk)) == [INSERT]
    assert ops(read(sessions, Parent, 2)) == [INSERT, UPDATE]


def test_primary_key_change_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        parent.id = 5
        session.commit()
    assert [(r[0], r[1]) for r in _live(engine, Child)] == [(10, 5), (11, 5), (12, 2)]
    tx = read(sessions, Parent, 5)[-1].transaction_id
    for model, pk in ((Child, 10), (Child, 11), (Pet, 20)):
        versions = read(sessions, model, pk)
        assert ops(versions) == [INSERT, UPDATE], (model, pk)
        assert dict(versions[-1].changes) == {"parent_id": (1, 5)}
        assert versions[-1].state["parent_id"] == 5
        assert versions[-1].transaction_id == tx
    assert ops(read(sessions, Child, 12)) == [INSERT]
    assert ops(read(sessions, Toy, 100)) == [INSERT]  # its parent row kept its key
    assert ops(read(sessions, Badge, 30)) == [INSERT]  # references code, which did not change


def test_unique_key_change_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A foreign key to a unique column other than the primary key: the old value is read from
    the parent row before its UPDATE."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        session.expire(parent)  # the old code is not in the session: it is read from the row
        parent.code = "c9"
        session.commit()
    assert _live(engine, Badge) == [(30, "c9", 3)]
    versions = read(sessions, Badge, 30)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"parent_code": ("c1", "c9")}
    assert versions[-1].transaction_id == read(sessions, Parent, 1)[-1].transaction_id
    for model, pk in ((Child, 10), (Pet, 20)):
        assert ops(read(sessions, model, pk)) == [INSERT]


def test_row_switch_that_changes_a_referenced_key_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Deleting a record and adding one with the same key in one flush is an UPDATE of the row:
    no ON DELETE action, but the referenced code changes, and ON UPDATE CASCADE follows it."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.delete(session.get(Parent, 1))
        session.add(Parent(id=1, name="new", code="c5"))
        session.commit()
    assert _live(engine, Badge) == [(30, "c5", 3)]
    assert [r[0] for r in _live(engine, Child)] == [10, 11, 12]
    versions = read(sessions, Badge, 30)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"parent_code": ("c1", "c5")}
    for model, pk in ((Child, 10), (Toy, 100), (Pet, 20)):
        assert ops(read(sessions, model, pk)) == [INSERT], (model, pk)


def test_deleting_a_tree_node_records_the_whole_subtree(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        for pk, parent in ((1, None), (2, 1), (3, 2), (4, 3), (5, None), (6, 1)):
            session.add(Node(id=pk, parent_id=parent, name=f"n{pk}"))
            session.flush()
        session.commit()
    with sessions() as session:
        session.delete(session.get(Node, 2))
        session.delete(session.get(Node, 6))
        session.commit()
    assert [r[0] for r in _live(engine, Node)] == [1, 5]
    for pk, parent in ((2, 1), (3, 2), (4, 3), (6, 1)):
        versions = read(sessions, Node, pk)
        assert ops(versions) == [INSERT, DELETE]
        assert dict(versions[-1].state) == {"id": pk, "parent_id": parent, "name": f"n{pk}"}
    for pk in (1, 5):
        assert ops(read(sessions, Node, pk)) == [INSERT]


@pytest.mark.parametrize("how", ["unit of work", "statement"])
def test_deleting_a_node_and_its_child_together_records_each_once(
    create_tables: CreateTables, sessions: Sessions, how: str
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        for pk, parent in ((1, None), (2, 1), (3, 2), (4, 3)):
            session.add(Node(id=pk, parent_id=parent, name=f"n{pk}"))
            session.flush()
        session.commit()
    with sessions() as session:
        if how == "statement":
            session.execute(delete(Node).where(Node.id.in_([2, 3])))
        else:
            for pk in (3, 2):
                session.delete(session.get(Node, pk))
        session.commit()
    assert [r[0] for r in _live(engine, Node)] == [1]
    for pk in (2, 3, 4):
        versions = read(sessions, Node, pk)
        assert ops(versions) == [INSERT, DELETE], pk
    assert ops(read(sessions, Node, 1)) == [INSERT]


def test_tree_with_a_relationship_partly_loaded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """The ORM deletes the loaded branches itself (row by row: the mapper depends on itself),
    the database the rest: every branch has one DELETE."""
    engine = create_tables(Base.metadata)
    tree = ((1, None), (2, 1), (3, 1), (4, 2), (5, 4), (6, 3), (7, None))
    with sessions() as session:
        for pk, parent in tree:
            session.add(Branch(id=pk, parent_id=parent))
            session.flush()
        session.commit()
    with sessions() as session:
        root = session.get(Branch, 1)
        assert root is not None
        assert [b.id for b in root.children] == [2, 3]
        assert [b.id for b in root.children[0].children] == [4]  # 5 and 6 are not loaded
        session.delete(root)
        session.commit()
    assert [r[0] for r in _live(engine, Branch)] == [7]
    for pk, parent in tree[:-1]:
        versions = read(sessions, Branch, pk)
        assert ops(versions) == [INSERT, DELETE], pk
        assert dict(versions[-1].state) == {"id": pk, "parent_id": parent}


def test_common_path_reads_nothing_more(create_tables: CreateTables, sessions: Sessions) -> None:
    """A model no foreign-key action reaches costs no query: deleting a Lone or a Toy (nothing
    references either) runs only its own pre-read and DELETE."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
        session.add(Lone(id=1, name="l"))
        session.commit()
    for model, pk, table in ((Lone, 1, "cas_lone"), (Toy, 100, "cas_toys")):
        with sessions() as session:
            session.delete(session.get(model, pk))
            with _statements(engine) as seen:
                session.flush()
            session.commit()
        assert all(table in s for s in seen), seen
        assert not any("PRAGMA" in s for s in seen), seen


def test_child_changed_in_the_same_flush_is_deleted_with_its_new_values(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        child = session.get(Child, 10)
        assert child is not None
        child.label = "x2"
        session.delete(session.get(Parent, 1))
        session.commit()
    versions = read(sessions, Child, 10)
    assert ops(versions) == [INSERT, UPDATE, DELETE]
    assert dict(versions[1].changes) == {"label": ("x", "x2")}
    assert dict(versions[2].state) == {"id": 10, "parent_id": 1, "label": "x2"}


def test_loaded_children_on_a_primary_key_change_are_recorded_once(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """With passive_updates (the default) the ORM leaves the children's UPDATE to the database
    and only refreshes the loaded objects: one UPDATE version each, none from the ORM."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        parent = session.get(Parent, 1)
        assert parent is not None
        assert [c.parent_id for c in parent.children] == [1, 1]
        parent.id = 5
        session.commit()
        assert [c.parent_id for c in parent.children] == [5, 5]
    assert [(r[0], r[1]) for r in _live(engine, Child)] == [(10, 5), (11, 5), (12, 2)]
    for pk in (10, 11):
        versions = read(sessions, Child, pk)
        assert ops(versions) == [INSERT, UPDATE]
        assert dict(versions[-1].changes) == {"parent_id": (1, 5)}


# --- ORM-enabled statements ------------------------------------------------------------------


@pytest.mark.parametrize("sync", ["auto", "fetch", False])
def test_bulk_delete_records_cascaded_children(
    create_tables: CreateTables, sessions: Sessions, sync: Any
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.execute(
            delete(Parent).where(Parent.name == "p1"),
            execution_options={"synchronize_session": sync},
        )
        session.commit()
    _assert_parent_1_deleted(engine, sessions)


def test_bulk_update_of_a_referenced_unique_key_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.execute(update(Parent).where(Parent.id == 1).values(code="c7", name="n"))
        session.execute(update(Parent).where(Parent.id == 2).values(name="only the name"))
        session.commit()
    assert _live(engine, Badge) == [(30, "c7", 3)]
    versions = read(sessions, Badge, 30)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"parent_code": ("c1", "c7")}
    assert versions[-1].transaction_id == read(sessions, Parent, 1)[-1].transaction_id
    for model, pk in ((Child, 10), (Child, 12), (Pet, 20), (Pet, 21)):
        assert ops(read(sessions, model, pk)) == [INSERT]


def test_bulk_update_by_primary_key_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.execute(update(Parent), [{"id": 1, "code": "c8"}, {"id": 2, "name": "p2!"}])
        session.commit()
    assert _live(engine, Badge) == [(30, "c8", 3)]
    versions = read(sessions, Badge, 30)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"parent_code": ("c1", "c8")}


# --- inheritance and composite keys ---------------------------------------------------------


class ShapeBase(DeclarativeBase):
    pass


class Person(Versioned, ShapeBase):
    __tablename__ = "cas_persons"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Member(Person):
    __tablename__ = "cas_members"

    id: Mapped[int] = mapped_column(
        sa.ForeignKey("cas_persons.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"polymorphic_identity": "member"}


class Card(Versioned, ShapeBase):
    """References the joined subclass's own table."""

    __tablename__ = "cas_cards"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("cas_members.id", ondelete="CASCADE"))


class Vehicle(Versioned, ShapeBase):
    __tablename__ = "cas_vehicles"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    """Single-table inheritance: the foreign key is the subclass's column of the base table."""

    driver_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("cas_persons.id", ondelete="SET NULL"), nullable=True
    )
    __mapper_args__ = {"polymorphic_identity": "car"}


class Shelf(Versioned, ShapeBase):
    __tablename__ = "cas_shelves"

    room: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Book(Versioned, ShapeBase):
    __tablename__ = "cas_books"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["room", "n"], ["cas_shelves.room", "cas_shelves.n"], ondelete="CASCADE"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    room: Mapped[int | None]
    n: Mapped[int | None]


@pytest.mark.parametrize("how", ["unit of work", "statement"])
def test_inheritance_and_composite_foreign_keys(
    create_tables: CreateTables, sessions: Sessions, how: str
) -> None:
    create_tables(ShapeBase.metadata)
    with sessions() as session:
        session.add_all([Member(id=1), Member(id=2), Shelf(room=1, n=1), Shelf(room=1, n=2)])
        session.flush()
        session.add_all(
            [
                Card(id=1, member_id=1),
                Card(id=2, member_id=2),
                Car(id=1, driver_id=1),
                Car(id=2, driver_id=2),
                Book(id=1, room=1, n=1),
                Book(id=2, room=1, n=2),
                Book(id=3),
            ]
        )
        session.commit()
    with sessions() as session:
        if how == "statement":
            session.execute(delete(Person).where(Person.id == 1))
            session.execute(delete(Shelf).where(Shelf.n == 1))
        else:
            session.delete(session.get(Person, 1))
            session.delete(session.get(Shelf, (1, 1)))
        session.commit()
    card = read(sessions, Card, 1)
    assert ops(card) == [INSERT, DELETE]
    assert dict(card[-1].state) == {"id": 1, "member_id": 1}
    assert card[-1].transaction_id == read(sessions, Person, 1)[-1].transaction_id
    car = read(sessions, Vehicle, 1)
    assert ops(car) == [INSERT, UPDATE]
    assert car[-1].model is Car
    assert dict(car[-1].changes) == {"driver_id": (1, None)}
    book = read(sessions, Book, 1)
    assert ops(book) == [INSERT, DELETE]
    assert dict(book[-1].state) == {"id": 1, "room": 1, "n": 1}
    for model, pk in ((Card, 2), (Vehicle, 2), (Book, 2), (Book, 3), (Person, 2)):
        assert ops(read(sessions, model, pk)) == [INSERT], (model, pk)


def test_asyncio_session_records_cascades(create_tables: CreateTables, sessions: Sessions) -> None:
    """An AsyncSession runs the same hooks (asyncpg, aiomysql, aiosqlite)."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    driver = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mariadb": "aiomysql"}
    name = engine.dialect.name
    url = engine.url.set(drivername=f"{name}+{driver[name]}")

    async def main() -> None:
        async_engine = create_async_engine(url)
        if name == "sqlite":

            @event.listens_for(async_engine.sync_engine, "connect")
            def _connect(dbapi_connection: Any, record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        try:
            async with AsyncSession(async_engine) as session:
                await session.delete(await session.get(Parent, 1))
                await session.commit()
        finally:
            await async_engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 60))
    _assert_parent_1_deleted(engine, sessions)


def _upsert(backend: str, **values: Any) -> Any:
    if backend == "mariadb":
        return mysql.insert(Parent).values(**values).on_duplicate_key_update(code=values["code"])
    dialect = postgresql if backend == "postgresql" else sqlite
    statement = dialect.insert(Parent).values(**values)
    return statement.on_conflict_do_update(
        index_elements=[Parent.id], set_={"code": values["code"]}
    )


def test_upsert_that_changes_a_referenced_key_records_on_update_cascade(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.execute(_upsert(backend, id=1, name="p1", code="c6"))
        session.execute(_upsert(backend, id=3, name="p3", code="c3"))  # a plain insert
        session.commit()
    assert _live(engine, Badge) == [(30, "c6", 3)]
    versions = read(sessions, Badge, 30)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"parent_code": ("c1", "c6")}
    assert versions[-1].transaction_id == read(sessions, Parent, 1)[-1].transaction_id
    for model, pk in ((Child, 10), (Pet, 20), (Toy, 100)):
        assert ops(read(sessions, model, pk)) == [INSERT]


@pytest.mark.backends("sqlite")
def test_sqlite_insert_or_replace_records_what_its_delete_cascaded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """REPLACE deletes the conflicting row, and SQLite performs its ON DELETE actions."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        _family(session)
    with sessions() as session:
        session.execute(
            sa.insert(Parent).prefix_with("OR REPLACE").values(id=1, name="again", code="c1")
        )
        session.commit()
    assert [r[0] for r in _live(engine, Child)] == [12]
    assert _live(engine, Pet) == [(20, None, "rex"), (21, 2, "tom")]
    for model, pk in ((Child, 10), (Child, 11), (Toy, 100), (Badge, 30)):
        assert ops(read(sessions, model, pk)) == [INSERT, DELETE], (model, pk)
    assert dict(read(sessions, Pet, 20)[-1].changes) == {"parent_id": (1, None)}


# --- SET DEFAULT -----------------------------------------------------------------------------


class DefaultBase(DeclarativeBase):
    pass


class Owner(Versioned, DefaultBase):
    __tablename__ = "cas_owners"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Asset(Versioned, DefaultBase):
    __tablename__ = "cas_assets"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner_id: Mapped[int] = mapped_column(
        sa.ForeignKey("cas_owners.id", ondelete="SET DEFAULT"), server_default=sa.text("0")
    )


def test_set_default_records_the_value_the_database_stored(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    engine = create_tables(DefaultBase.metadata)
    with sessions() as session:
        session.add_all([Owner(id=0), Owner(id=1)])
        session.flush()
        session.add(Asset(id=1, owner_id=1))
        session.commit()
    with sessions() as session:
        session.delete(session.get(Owner, 1))
        if backend == "mariadb":
            # InnoDB accepts the clause but refuses the DELETE: nothing happens, nothing recorded.
            with pytest.raises(sa.exc.IntegrityError):
                session.commit()
            session.rollback()
            assert _live(engine, Asset) == [(1, 1)]
            assert ops(read(sessions, Asset, 1)) == [INSERT]
            assert ops(read(sessions, Owner, 1)) == [INSERT]
            return
        session.commit()
    assert _live(engine, Asset) == [(1, 0)]
    versions = read(sessions, Asset, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[-1].changes) == {"owner_id": (1, 0)}


# --- concurrency -----------------------------------------------------------------------------


class LockBase(DeclarativeBase):
    pass


class Folder(Versioned, LockBase):
    """With a version counter the capture trusts the session and does not read the row."""

    __tablename__ = "cas_lock_folders"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"version_id_col": version}


class Document(Versioned, LockBase):
    __tablename__ = "cas_lock_documents"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    folder_id: Mapped[int] = mapped_column(sa.ForeignKey("cas_lock_folders.id", ondelete="CASCADE"))


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("how", ["unit of work", "statement"])
def test_child_added_by_another_transaction_meanwhile_cannot_escape(
    create_tables: CreateTables, sessions: Sessions, how: str
) -> None:
    """Another transaction adds a child after the children were read and before the parent's
    DELETE runs: the parent row is locked first, so it waits and then fails; it never commits a
    child the DELETE would remove with no history."""
    engine = create_tables(LockBase.metadata)
    with sessions() as session:
        session.add(Folder(id=1))
        session.flush()
        session.add(Document(id=1, folder_id=1))
        session.commit()
    outcome: list[str] = []
    fast = sa.create_engine(
        engine.url,
        connect_args=(
            {"options": "-c lock_timeout=300"}
            if engine.dialect.name == "postgresql"
            else {"init_command": "SET SESSION innodb_lock_wait_timeout=1"}
        ),
    )

    def other() -> None:
        try:
            with Session(fast) as session:
                session.add(Document(id=2, folder_id=1))
                session.commit()
            outcome.append("committed")
        except sa.exc.DBAPIError as error:
            outcome.append(type(error).__name__)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE FROM cas_lock_folders") and not outcome:
            worker = threading.Thread(target=other)
            worker.start()
            worker.join(timeout=10)
            assert not worker.is_alive()

    event.listen(engine, "before_cursor_execute", before)
    try:
        with sessions() as session:
            if how == "statement":
                session.execute(delete(Folder).where(Folder.id == 1))
            else:
                session.delete(session.get(Folder, 1))
            session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", before)
        fast.dispose()
    assert outcome and outcome != ["committed"]
    assert _live(engine, Document) == []
    assert ops(read(sessions, Document, 1)) == [INSERT, DELETE]
    assert read(sessions, Document, 2) == []


# --- SQLite without foreign keys -------------------------------------------------------------


@pytest.mark.backends("sqlite")
def test_sqlite_without_foreign_keys_records_nothing_more(backend: str, tmp_path: Path) -> None:
    """Without PRAGMA foreign_keys=ON SQLite performs no action: the children stay, unrecorded."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'nofk.sqlite'}")
    try:
        Base.metadata.create_all(engine)
        with Session(engine) as session:
            _family(session)
        with Session(engine) as session:
            session.delete(session.get(Parent, 1))
            session.commit()
        assert len(_live(engine, Child)) == 3
        assert _live(engine, Pet) == [(20, 1, "rex"), (21, 2, "tom")]
        with Session(engine) as session:
            assert ops(history(session, Parent, 1)) == [INSERT, DELETE]
            for model, pk in ((Child, 10), (Toy, 100), (Pet, 20), (Badge, 30)):
                assert ops(history(session, model, pk)) == [INSERT]
    finally:
        engine.dispose()


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("how", ["unit of work", "statement"])
def test_foreign_key_actions_switched_off_on_the_connection_record_nothing_more(
    create_tables: CreateTables, how: str
) -> None:
    """MariaDB ``foreign_key_checks=0`` and PostgreSQL ``session_replication_role=replica``
    (bulk loads, replication) stop the actions: the children stay, and nothing is recorded."""
    engine = create_tables(Base.metadata)
    own = sa.create_engine(engine.url)  # the setting must not outlive the test on a pooled conn
    switch_off = (
        "SET session_replication_role = replica"
        if engine.dialect.name == "postgresql"
        else "SET foreign_key_checks = 0"
    )
    try:
        with Session(own) as session:
            _family(session)
        with Session(own) as session:
            session.connection().exec_driver_sql(switch_off)
            if how == "statement":
                session.execute(delete(Parent).where(Parent.id == 1))
            else:
                session.delete(session.get(Parent, 1))
            session.commit()
        with Session(own) as session:
            assert ops(history(session, Parent, 1)) == [INSERT, DELETE]
            for model, pk in ((Child, 10), (Toy, 100), (Pet, 20), (Badge, 30)):
                assert ops(history(session, model, pk)) == [INSERT], (model, pk)
    finally:
        own.dispose()
    assert len(_live(engine, Child)) == 3
    assert _live(engine, Pet) == [(20, 1, "rex"), (21, 2, "tom")]


# --- refused configurations ------------------------------------------------------------------


def _configure_error(declare: Callable[[type[DeclarativeBase]], None]) -> str:
    class LocalBase(DeclarativeBase):
        pass

    try:
        declare(LocalBase)
        with pytest.raises(ConfigurationError) as raised:
            LocalBase.registry.configure()
        # Refused again at every use: nothing can be written through these models.
        with pytest.raises(ConfigurationError):
            LocalBase.registry.configure()
        for mapper in LocalBase.registry.mappers:
            with pytest.raises(ConfigurationError):
                mapper.class_()
        return str(raised.value)
    finally:
        LocalBase.registry.dispose()


@pytest.mark.parametrize(
    "action", [{"ondelete": "CASCADE"}, {"ondelete": "set null"}, {"onupdate": "CASCADE"}]
)
def test_action_from_a_table_that_is_not_versioned_is_refused(action: dict[str, str]) -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        class Account(base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_plain_accounts"

            id: Mapped[int] = mapped_column(primary_key=True)

        class Entry(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_entries"

            id: Mapped[int] = mapped_column(primary_key=True)
            account_id: Mapped[int | None] = mapped_column(
                sa.ForeignKey("cas_plain_accounts.id", **action)
            )

    message = _configure_error(declare)
    assert "Entry.account_id" in message
    assert "'cas_plain_accounts' is not versioned" in message
    assert "Versioned" in message and "remove" in message


def test_action_on_an_excluded_column_from_a_table_that_is_not_versioned_is_allowed() -> None:
    """SET NULL / ON UPDATE of a column history does not keep changes nothing recorded."""

    class LocalBase(DeclarativeBase):
        pass

    class Account(LocalBase):
        __tablename__ = "cas_plain_accounts2"

        id: Mapped[int] = mapped_column(primary_key=True)

    class Entry(Versioned, LocalBase):
        __tablename__ = "cas_entries2"
        __versioned__ = {"exclude": ["account_id"]}

        id: Mapped[int] = mapped_column(primary_key=True)
        account_id: Mapped[int | None] = mapped_column(
            sa.ForeignKey("cas_plain_accounts2.id", ondelete="SET NULL", onupdate="CASCADE")
        )

    try:
        LocalBase.registry.configure()
    finally:
        LocalBase.registry.dispose()


def test_cascade_delete_on_a_joined_subclass_table_is_refused() -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        class Team(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_teams"

            id: Mapped[int] = mapped_column(primary_key=True)

        class Person(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_people"

            id: Mapped[int] = mapped_column(primary_key=True)
            kind: Mapped[str] = mapped_column(sa.String(20))
            __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

        class Member(Person):
            __tablename__ = "cas_members"

            id: Mapped[int] = mapped_column(
                sa.ForeignKey("cas_people.id", ondelete="CASCADE"), primary_key=True
            )
            team_id: Mapped[int] = mapped_column(sa.ForeignKey("cas_teams.id", ondelete="CASCADE"))
            __mapper_args__ = {"polymorphic_identity": "member"}

    message = _configure_error(declare)
    assert "Member.team_id" in message and "joined-inheritance" in message
    assert "'cas_people'" in message


def test_on_update_of_a_primary_key_column_is_refused() -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        class Folder(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_folders"

            id: Mapped[int] = mapped_column(primary_key=True)

        class Slot(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_slots"

            folder_id: Mapped[int] = mapped_column(
                sa.ForeignKey("cas_folders.id", onupdate="CASCADE"), primary_key=True
            )
            n: Mapped[int] = mapped_column(primary_key=True)

    message = _configure_error(declare)
    assert "Slot.folder_id" in message and "primary key" in message and "onupdate" in message


def test_unknown_action_and_undeclared_table_are_refused() -> None:
    def unknown(base: type[DeclarativeBase]) -> None:
        class Box(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_boxes"

            id: Mapped[int] = mapped_column(primary_key=True)
            box_id: Mapped[int | None] = mapped_column(
                sa.ForeignKey("cas_boxes.id", ondelete="SET NULL (box_id)")
            )

    def undeclared(base: type[DeclarativeBase]) -> None:
        class Crate(Versioned, base):  # type: ignore[valid-type,misc]
            __tablename__ = "cas_crates"

            id: Mapped[int] = mapped_column(primary_key=True)
            shelf_id: Mapped[int | None] = mapped_column(
                sa.Integer, sa.ForeignKey("cas_nowhere.id", ondelete="CASCADE")
            )

    message = _configure_error(unknown)
    assert "Box" in message and "SET NULL (box_id)" in message
    message = _configure_error(undeclared)
    assert "Crate.shelf_id" in message and "not declared" in message


def test_joined_inheritance_foreign_key_with_cascade_is_not_a_cascade() -> None:
    """The subclass row's foreign key to its base row (the usual ondelete=CASCADE) is the same
    record: nothing is refused and no cascade is recorded for it."""

    class LocalBase(DeclarativeBase):
        pass

    class Person(Versioned, LocalBase):
        __tablename__ = "cas_persons2"

        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(sa.String(20))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}

    class Member(Person):
        __tablename__ = "cas_members2"

        id: Mapped[int] = mapped_column(
            sa.ForeignKey("cas_persons2.id", ondelete="CASCADE", onupdate="CASCADE"),
            primary_key=True,
        )
        __mapper_args__ = {"polymorphic_identity": "member"}

    try:
        LocalBase.registry.configure()
        from versioning.declaration import cascade_edges

        assert cascade_edges(Person.__table__) == []
    finally:
        LocalBase.registry.dispose()
