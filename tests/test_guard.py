"""``guard_writes``: finding Core writes to versioned tables, which history cannot see.

With ``action="raise"`` a Core INSERT/UPDATE/DELETE on a versioned table executed on a guarded
engine's connection (``engine.connect()``, or a session's ``session.connection()``) is refused
before it runs; with ``"warn"`` it runs and an ``UncapturedWriteWarning`` is emitted. Writes the
library records (the unit of work, ORM-enabled statements), reads and tables that are not
versioned are never flagged. ``guard_writes`` registers its listener for good, so every test
guards an engine of its own. Every test runs on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import (
    AppendOnlyError,
    Operation,
    UncapturedWriteError,
    UncapturedWriteWarning,
    Versioned,
    as_of,
    guard_writes,
    history,
    history_table,
    restore,
)

from helpers import count

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]
Guarded = Callable[..., sa.Engine]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Item(Versioned, Base):
    __tablename__ = "gd_items"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    uses: Mapped[int] = mapped_column(default=0)


class Use(Base):
    """Not versioned; its mapper event below bumps ``Item.uses`` with a Core UPDATE."""

    __tablename__ = "gd_uses"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    item_id: Mapped[int] = mapped_column(sa.ForeignKey("gd_items.id"))


class Plain(Base):
    __tablename__ = "gd_plain"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


ITEMS = Item.__table__
TX = Base.metadata.tables[versioning.TRANSACTION_TABLE]


@pytest.fixture
def guarded(engine: sa.Engine) -> Iterator[Guarded]:
    """``guarded(action)``: a new engine on the test database, guarded with ``action``."""
    made: list[sa.Engine] = []

    def make(action: Any = "raise") -> sa.Engine:
        other = sa.create_engine(engine.url)
        made.append(other)
        guard_writes(other, action=action)
        return other

    yield make
    for other in made:
        other.dispose()


def seed(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add(Item(id=1, name="a"))
        session.commit()


def names(engine: sa.Engine) -> list[tuple[int, str]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(ITEMS.c.id, ITEMS.c.name))]  # type: ignore[misc]


def core_writes() -> dict[str, Any]:
    """One Core statement of each kind on the versioned table (as Table and as ORM entity)."""
    return {
        "insert": insert(ITEMS).values(id=2, name="b"),
        "update": update(ITEMS).where(ITEMS.c.id == 1).values(name="changed"),
        "delete": delete(ITEMS).where(ITEMS.c.id == 1),
        "insert-entity": insert(Item).values(id=2, name="b"),
        "update-entity": update(Item).where(Item.id == 1).values(name="changed"),
        "delete-entity": delete(Item).where(Item.id == 1),
    }


WRITES = list(core_writes())


# --- action="raise" --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITES)
def test_raise_refuses_a_core_write_on_a_connection(
    kind: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")
    with strict.connect() as connection:
        with pytest.raises(UncapturedWriteError, match="gd_items"):
            connection.execute(core_writes()[kind])
        connection.rollback()
    assert names(engine) == [(1, "a")]
    assert count(engine, history_table(Item)) == 1
    assert issubclass(UncapturedWriteError, versioning.VersioningError)


@pytest.mark.parametrize("kind", WRITES)
def test_raise_refuses_a_core_write_through_the_sessions_connection(
    kind: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")
    with Session(strict) as session:
        session.get(Item, 1)
        with pytest.raises(UncapturedWriteError):
            session.connection().execute(core_writes()[kind])
        session.commit()  # the refused statement never ran: nothing to roll back
    assert names(engine) == [(1, "a")]
    assert count(engine, history_table(Item)) == 1


def test_raise_refuses_a_core_table_statement_given_to_session_execute(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    """A statement on the ``Table`` (no mapper) is not ORM-enabled: it cannot be recorded."""
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")
    with Session(strict) as session:
        with pytest.raises(UncapturedWriteError):
            session.execute(update(ITEMS).values(name="changed"))
        with pytest.raises(UncapturedWriteError):
            session.execute(insert(ITEMS), [{"id": 2, "name": "b"}])
        session.rollback()
    assert names(engine) == [(1, "a")]


def test_raise_refuses_a_core_write_made_by_a_mapper_event_during_a_flush(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    """A Core UPDATE run from a flush event is not recorded either: it must be flagged."""
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")

    def bump(mapper: Any, connection: sa.Connection, target: Use) -> None:
        connection.execute(
            update(ITEMS).where(ITEMS.c.id == target.item_id).values(uses=ITEMS.c.uses + 1)
        )

    event.listen(Use, "after_insert", bump)
    try:
        with Session(strict) as session:
            session.add(Use(id=1, item_id=1))
            with pytest.raises(UncapturedWriteError):
                session.commit()
            session.rollback()
    finally:
        event.remove(Use, "after_insert", bump)
    with engine.connect() as connection:
        assert connection.scalar(select(ITEMS.c.uses)) == 0
        assert connection.scalar(select(sa.func.count()).select_from(Use.__table__)) == 0


def test_raise_still_works_after_a_flush_that_failed_in_before_flush(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")

    def scenario() -> None:
        with Session(strict) as session:

            def refuse(session: Session, context: Any, instances: Any) -> None:
                raise ValueError("validation failed")

            event.listen(session, "before_flush", refuse)
            session.add(Item(id=5, name="invalid"))
            with pytest.raises(ValueError, match="validation failed"):
                session.flush()
            session.rollback()
        with strict.connect() as connection:
            with pytest.raises(UncapturedWriteError):
                connection.execute(update(ITEMS).values(name="sneaky"))
            connection.rollback()

    # In a copy of the context, so that a leak cannot disable the guard for later tests.
    contextvars.copy_context().run(scenario)
    assert names(engine) == [(1, "a")]


def test_raise_still_works_after_a_flush_that_had_nothing_to_do(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    strict = guarded("raise")

    def scenario() -> None:
        with Session(strict) as session:

            def discard_drafts(session: Session, context: Any, instances: Any) -> None:
                for obj in list(session.new):
                    if isinstance(obj, Item) and obj.name == "draft":
                        session.expunge(obj)

            event.listen(session, "before_flush", discard_drafts)
            session.add(Item(id=5, name="draft"))
            session.commit()  # the flush finds nothing left to do
        with strict.connect() as connection:
            with pytest.raises(UncapturedWriteError):
                connection.execute(update(ITEMS).values(name="sneaky"))
            connection.rollback()

    contextvars.copy_context().run(scenario)
    assert names(engine) == [(1, "a")]


# --- action="warn" ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", WRITES)
def test_warn_lets_the_core_write_happen(
    kind: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    lenient = guarded("warn")
    with lenient.connect() as connection:
        with pytest.warns(UncapturedWriteWarning, match="gd_items"):
            connection.execute(core_writes()[kind])
        connection.commit()
    expected = {
        "insert": [(1, "a"), (2, "b")],
        "update": [(1, "changed")],
        "delete": [],
    }[kind.split("-")[0]]
    assert sorted(names(engine)) == expected
    assert count(engine, history_table(Item)) == 1  # not recorded: that is what was warned


def test_warn_through_the_sessions_connection(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    lenient = guarded("warn")
    with Session(lenient) as session:
        with pytest.warns(UncapturedWriteWarning):
            session.connection().execute(update(ITEMS).values(name="changed"))
        session.commit()
    assert names(engine) == [(1, "changed")]


# --- what is not flagged ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["raise", "warn"])
def test_captured_writes_reads_and_plain_tables_are_not_flagged(
    action: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    """Warnings are errors in this suite, so ``warn`` is as strict a check as ``raise``."""
    engine = create_tables(Base.metadata)
    checked = guarded(action)
    with Session(checked) as session:
        session.add(Item(id=1, name="a"))  # unit of work
        session.commit()
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.commit()
        session.execute(insert(Item), [{"id": 2, "name": "x"}, {"id": 3, "name": "y"}])
        session.execute(insert(Item).values(id=4, name="z"))
        session.execute(update(Item).where(Item.id == 2).values(name="x2"))
        session.execute(update(Item), [{"id": 3, "name": "y2"}])
        session.execute(delete(Item).where(Item.id == 4))
        session.commit()
        session.delete(session.get(Item, 3))
        session.commit()
        versions = history(session, Item, 1)  # reads
        assert as_of(session, Item, 1, versions[0].transaction_id) is not None
        restore(session, versions[0])  # restore writes through the unit of work
        session.commit()
        session.execute(insert(Plain), [{"id": 1, "name": "p"}])  # not versioned
        session.connection().execute(update(Plain.__table__).values(name="q"))
        session.commit()
    with checked.connect() as connection:
        connection.execute(insert(Plain.__table__).values(id=2, name="r"))
        connection.execute(delete(Plain.__table__).where(Plain.__table__.c.id == 1))
        connection.execute(select(ITEMS)).all()
        connection.commit()
    assert sorted(names(engine)) == [(1, "a"), (2, "x2")]
    with Session(engine) as session:
        assert [v.operation for v in history(session, Item, 1)] == [INSERT, UPDATE, UPDATE]
        assert [v.operation for v in history(session, Item, 3)] == [INSERT, UPDATE, DELETE]
        assert [v.operation for v in history(session, Item, 4)] == [INSERT, DELETE]


def test_other_engines_are_not_guarded(guarded: Guarded, create_tables: CreateTables) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    guarded("raise")
    with engine.connect() as connection:  # the test's own engine: never guarded
        connection.execute(update(ITEMS).values(name="unguarded"))
        connection.commit()
    assert names(engine) == [(1, "unguarded")]


def test_guarding_one_connection(engine: sa.Engine, create_tables: CreateTables) -> None:
    create_tables(Base.metadata)
    seed(engine)
    other = sa.create_engine(engine.url)
    try:
        with other.connect() as guarded_connection:
            guard_writes(guarded_connection, action="raise")
            with pytest.raises(UncapturedWriteError):
                guarded_connection.execute(update(ITEMS).values(name="x"))
            guarded_connection.rollback()
        with other.connect() as connection:
            connection.execute(update(ITEMS).values(name="free"))
            connection.commit()
    finally:
        other.dispose()
    assert names(engine) == [(1, "free")]


def test_invalid_action_is_an_argument_error(engine: sa.Engine) -> None:
    other = sa.create_engine(engine.url)
    try:
        with pytest.raises(versioning.ArgumentError, match="raise"):
            guard_writes(other, action="ignore")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="RAISE"):
            guard_writes(other, action="RAISE")  # type: ignore[arg-type]
    finally:
        other.dispose()


# --- tables recognised by schema and name, not by object --------------------------------------


def default_schema(engine: sa.Engine) -> str:
    with engine.connect() as connection:
        schema = connection.dialect.default_schema_name
    assert schema
    return schema


def items_as(form: str, engine: sa.Engine) -> Any:
    """The versioned table ``gd_items`` as another object than the mapped one."""
    if form == "reflected":
        return sa.Table("gd_items", sa.MetaData(), autoload_with=engine)
    columns = [sa.column("id"), sa.column("name"), sa.column("uses")]
    if form == "lightweight":
        return sa.table("gd_items", *columns)
    assert form == "default-schema"
    return sa.table("gd_items", *columns, schema=default_schema(engine))


FORMS = ["reflected", "lightweight", "default-schema"]


def writes_to(table: Any) -> dict[str, Any]:
    return {
        "insert": insert(table).values(id=2, name="b", uses=0),
        "update": update(table).where(table.c.id == 1).values(name="changed"),
        "delete": delete(table).where(table.c.id == 1),
    }


@pytest.mark.parametrize("verb", ["insert", "update", "delete"])
@pytest.mark.parametrize("form", FORMS)
def test_raise_recognises_the_table_by_name_whatever_the_object(
    form: str, verb: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    statement = writes_to(items_as(form, engine))[verb]
    strict = guarded("raise")
    with strict.connect() as connection:
        with pytest.raises(UncapturedWriteError, match=r"versioned table .*gd_items.*no history"):
            connection.execute(statement)
        connection.rollback()
    with Session(strict) as session:
        with pytest.raises(UncapturedWriteError, match="gd_items"):
            session.connection().execute(statement)
        session.rollback()
    assert names(engine) == [(1, "a")]
    assert count(engine, history_table(Item)) == 1


@pytest.mark.parametrize("verb", ["insert", "update", "delete"])
@pytest.mark.parametrize("form", FORMS)
def test_warn_recognises_the_table_by_name_whatever_the_object(
    form: str, verb: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    statement = writes_to(items_as(form, engine))[verb]
    lenient = guarded("warn")
    with lenient.connect() as connection:
        with pytest.warns(UncapturedWriteWarning, match="gd_items"):
            connection.execute(statement)
        connection.commit()
    expected = {"insert": [(1, "a"), (2, "b")], "update": [(1, "changed")], "delete": []}[verb]
    assert sorted(names(engine)) == expected
    assert count(engine, history_table(Item)) == 1


def history_as(form: str, engine: sa.Engine, name: str) -> Any:
    if form == "mapped":
        return Base.metadata.tables[name]
    if form == "reflected":
        return sa.Table(name, sa.MetaData(), autoload_with=engine)
    return sa.table(name, sa.column("id"), sa.column("reason"), sa.column("name"))


@pytest.mark.parametrize("verb", ["update", "delete"])
@pytest.mark.parametrize("form", ["mapped", "reflected", "lightweight"])
@pytest.mark.parametrize("which", ["history", "transaction"])
def test_history_and_transaction_tables_are_append_only(
    which: str, form: str, verb: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    seed(engine)
    name = history_table(Item).name if which == "history" else versioning.TRANSACTION_TABLE
    table = history_as(form, engine, name)
    column = "name" if which == "history" else "reason"
    statement = update(table).values({column: "forged"}) if verb == "update" else delete(table)
    strict = guarded("raise")
    with strict.connect() as connection:
        with pytest.raises(UncapturedWriteError, match=rf"{which} table .*{name}.*append-only"):
            connection.execute(statement)
        connection.rollback()
    lenient = guarded("warn")
    with lenient.connect() as connection:
        # PostgreSQL's statement-level triggers refuse even a statement matching no row.
        refused: Any = (
            pytest.raises(AppendOnlyError)
            if engine.dialect.name == "postgresql"
            else contextlib.nullcontext()
        )
        with pytest.warns(UncapturedWriteWarning, match="append-only"), refused:
            # Matching no row: a DELETE of transaction rows would fail on their foreign keys.
            connection.execute(statement.where(sa.false()))
        connection.rollback()
    assert count(engine, history_table(Item)) == 1
    assert count(engine, TX) == 1
    with Session(engine) as session:
        (version,) = history(session, Item, 1)
        assert version.state["name"] == "a"
        assert version.transaction is not None and version.transaction.reason is None


@pytest.mark.parametrize("action", ["raise", "warn"])
def test_the_librarys_own_writes_to_its_tables_are_not_flagged(
    action: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    """A restore after history was read in the same transaction updates the transaction row's
    reason: the library's own write, never flagged."""
    engine = create_tables(Base.metadata)
    seed(engine)
    checked = guarded(action)
    with Session(checked) as session:
        item = session.get(Item, 1)
        assert item is not None
        item.name = "b"
        session.flush()
        versions = history(session, Item, 1)  # writes this transaction's row now
        restore(session, versions[0])  # then notes a reason on it
        session.commit()
    assert names(engine) == [(1, "a")]
    with Session(engine) as session:
        versions = history(session, Item, 1)
    assert [v.operation for v in versions] == [INSERT, UPDATE, UPDATE]
    last = versions[-1].transaction
    assert last is not None and last.reason is not None and "restore" in last.reason


def test_a_plain_table_of_another_name_is_not_flagged(
    guarded: Guarded, create_tables: CreateTables
) -> None:
    engine = create_tables(Base.metadata)
    strict = guarded("raise")
    plain = sa.table("gd_plain", sa.column("id"), sa.column("name"))
    with strict.connect() as connection:
        connection.execute(insert(plain).values(id=1, name="p"))
        connection.execute(update(plain).values(name="q"))
        connection.commit()
    with engine.connect() as connection:
        assert connection.execute(select(Plain.name)).scalar_one() == "q"


@pytest.mark.backends("mariadb")
@pytest.mark.parametrize("action", ["raise", "warn"])
def test_mariadb_multi_table_update_of_a_versioned_table_is_flagged(
    action: str, guarded: Guarded, create_tables: CreateTables
) -> None:
    """``UPDATE gd_plain, gd_items SET gd_items.name = ...``: the target is not versioned, a
    table it writes is."""
    engine = create_tables(Base.metadata)
    seed(engine)
    plain = Plain.__table__
    with engine.begin() as connection:
        connection.execute(insert(plain).values(id=1, name="p"))
    statements = [
        update(plain).where(plain.c.id == ITEMS.c.id).values({ITEMS.c.name: "sneaky"}),
        update(plain.join(ITEMS, plain.c.id == ITEMS.c.id)).values({ITEMS.c.name: "sneaky"}),
    ]
    checked = guarded(action)
    for statement in statements:
        with checked.connect() as connection:
            if action == "raise":
                with pytest.raises(UncapturedWriteError, match="gd_items"):
                    connection.execute(statement)
            else:
                with pytest.warns(UncapturedWriteWarning, match="gd_items"):
                    connection.execute(statement)
            connection.rollback()
    assert names(engine) == [(1, "a")]
