"""Never wrong, the follow-ups of issue 8, each on SQLite, PostgreSQL and MariaDB:

1. restoring a value the model's type no longer accepts is refused before anything is written;
2. restore through a ``ConcreteBase`` polymorphic base and through its concrete classes;
3. the reason of an undelete says which version it restores; keys print one way;
4. the reason stays within its column however many restores a transaction holds;
5. ``insert(Model).values([(1, 'a'), ...])`` with positional rows is recorded;
6. a captured statement that fails partway makes the commit refuse (unless its savepoint is
   rolled back);
7. SQLite ``ON CONFLICT REPLACE`` / ``IGNORE`` declared on a versioned table is refused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import insert, update
from sqlalchemy.ext.declarative import ConcreteBase
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import (
    ConfigurationError,
    Operation,
    RestoreError,
    Versioned,
    VersioningError,
    history,
    history_table,
)
from versioning.recording import Recording

from helpers import count, ops, read

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    __tablename__ = "fu_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)


class Pair(Versioned, Base):
    __tablename__ = "fu_pairs"
    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(20))


class LongKey(Versioned, Base):
    __tablename__ = "fu_long_keys"
    # 700 characters: 2,800 bytes in utf8mb4, within MariaDB's 3,072-byte index key.
    code: Mapped[str] = mapped_column(sa.String(700), primary_key=True)
    n: Mapped[int]


class Item(Versioned, ConcreteBase, Base):
    __tablename__ = "fu_items"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    __mapper_args__ = {"polymorphic_identity": "item", "concrete": True}


class Book(Item):
    __tablename__ = "fu_books"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    isbn: Mapped[str | None] = mapped_column(sa.String(20))
    __mapper_args__ = {"polymorphic_identity": "book", "concrete": True}


Base.registry.configure()


def live(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.select(table).order_by(*table.c))]


def reasons(engine: sa.Engine) -> list[str | None]:
    table = versioning.transaction_table(Base.metadata)
    with engine.connect() as connection:
        return list(connection.scalars(sa.select(table.c.reason).order_by(table.c.id)))


# --- 1. a value the model's type no longer accepts --------------------------------------------


class OldColor(enum.Enum):
    RED = "red"
    BLUE = "blue"


class NewColor(enum.Enum):  # BLUE removed since
    RED = "red"


def _paint_models(members: type[enum.Enum]) -> tuple[type[DeclarativeBase], type[Any]]:
    class PaintBase(DeclarativeBase):
        pass

    class Paint(Versioned, PaintBase):
        __tablename__ = "fu_paints"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        color: Mapped[Any] = mapped_column(sa.Enum(members, native_enum=False, length=10))
        note: Mapped[str] = mapped_column(sa.String(20))

    return PaintBase, Paint


@pytest.fixture
def paints(engine: sa.Engine) -> Iterator[tuple[type[Any], type[Any]]]:
    old_base, old = _paint_models(OldColor)
    new_base, new = _paint_models(NewColor)
    old_base.metadata.drop_all(engine)
    old_base.metadata.create_all(engine)
    try:
        yield old, new
    finally:
        old_base.metadata.drop_all(engine)
        old_base.registry.dispose()
        new_base.registry.dispose()


def test_restoring_a_value_the_type_no_longer_accepts_is_refused(
    engine: sa.Engine, paints: tuple[type[Any], type[Any]]
) -> None:
    old, new = paints
    with Session(engine) as session:  # written while BLUE existed
        session.add_all(
            [old(id=1, color=OldColor.BLUE, note="a"), old(id=2, color=OldColor.BLUE, note="a")]
        )
        session.commit()
        for pk in (1, 2):
            paint = session.get(old, pk)
            paint.color = OldColor.RED
            paint.note = "b"
        session.commit()
        session.delete(session.get(old, 2))
        session.commit()
    table = new.__table__
    before = live(engine, table)
    history_rows = count(engine, history_table(new))
    with Session(engine) as session:
        first, second = history(session, new, 1)
        assert first.state["color"] == "BLUE"  # returned as stored: no longer a member
        assert second.state["color"] is NewColor.RED
        # An update back to the old version, by version and by moment; an undelete.
        deleted = history(session, new, 2)[-1]
        assert deleted.operation is DELETE and deleted.state["color"] is NewColor.RED
        blue = history(session, new, 2)[0]
        calls = [
            lambda: versioning.restore(session, first),
            lambda: versioning.restore(session, new, 1, at=first.transaction_id),
            lambda: versioning.restore(session, blue),
        ]
        for call in calls:
            with pytest.raises(RestoreError) as raised:
                call()
            message = str(raised.value)
            assert "Paint" in message and "color='BLUE'" in message, message
            assert "no longer accepts" in message and "Nothing was written" in message
            assert "add the value back to the type" in message
            assert "(1,)" not in message and "(2,)" not in message
        session.commit()
    assert live(engine, table) == before
    assert count(engine, history_table(new)) == history_rows
    with Session(engine) as session:  # a version the type accepts is restored as ever
        versioning.restore(session, deleted)
        session.commit()
        assert session.get(new, 2).color is NewColor.RED
    assert ops(read(lambda: Session(engine), new, 2)) == [INSERT, UPDATE, DELETE, INSERT]


# --- 2. restore through a ConcreteBase polymorphic base and its concrete class -----------------


def _get(session: Session, model: type[Any]) -> Any:
    """Record 1 of ``model`` (session.get() through the base's UNION finds both records 1)."""
    found = [o for o in session.scalars(sa.select(Item).where(Item.id == 1)) if type(o) is model]
    assert len(found) == 1
    return found[0]


def test_restore_through_a_concrete_polymorphic_base_and_its_concrete_class(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Item(id=1, title="i1"), Book(id=1, title="b1", isbn="x")])
        session.commit()
        for model in (Item, Book):
            obj = _get(session, model)
            obj.title = f"{model.__name__} v2"
        session.commit()
        item_first = history(session, Item, 1)[0]
        book_first = history(session, Book, 1)[0]
        restored = versioning.restore(session, item_first)
        assert type(restored) is Item and restored.title == "i1"
        restored_book = versioning.restore(session, book_first)
        assert type(restored_book) is Book and restored_book.title == "b1"
        session.commit()
        # Deleted, then undeleted through either class.
        session.delete(_get(session, Item))
        session.delete(_get(session, Book))
        session.commit()
        for model in (Item, Book):
            versioning.restore(session, history(session, model, 1)[-1])
        session.commit()
    assert live(engine, Item.__table__) == [(1, "i1")]
    assert live(engine, Book.__table__) == [(1, "b1", "x")]
    for model in (Item, Book):
        versions = read(sessions, model, 1)
        assert ops(versions) == [INSERT, UPDATE, UPDATE, DELETE, INSERT], model
        assert {v.model for v in versions} == {model}
        assert dict(versions[2].changes) == {
            "title": (f"{model.__name__} v2", versions[0].state["title"])
        }


# --- 3. the reason of an undelete; keys print one way -----------------------------------------


def test_an_undelete_names_the_version_before_the_deletion(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, name="a"))
        session.commit()
        session.get(Note, 1).name = "b"
        session.commit()
        session.delete(session.get(Note, 1))
        session.commit()
        _, updated, deleted = history(session, Note, 1)
        assert deleted.transaction_id != updated.transaction_id
        versioning.restore(session, deleted)
        session.commit()
        assert reasons(engine)[-1] == (
            f"undelete Note 1 as of transaction {updated.transaction_id}, the version before "
            f"its deletion"
        )
        # The same delete version restored over a live record: a restore, not an undelete.
        session.get(Note, 1).name = "c"
        session.commit()
        versioning.restore(session, deleted)
        session.commit()
        assert reasons(engine)[-1] == (
            f"restore Note 1 as of transaction {updated.transaction_id}, the version before "
            f"its deletion in transaction {deleted.transaction_id}"
        )
        # Any other version keeps the plain text.
        versioning.restore(session, history(session, Note, 1)[0])
        session.commit()
        first = history(session, Note, 1)[0]
        assert reasons(engine)[-1] == f"restore Note 1 to transaction {first.transaction_id}"
    assert live(engine, Note.__table__) == [(1, "a")]


def test_a_composite_key_prints_as_a_tuple_and_a_single_key_alone(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Pair(a=1, b="x", label="one"))
        session.commit()
        session.delete(session.get(Pair, (1, "x")))
        session.commit()
        deleted = history(session, Pair, (1, "x"))[-1]
        versioning.restore(session, deleted)
        session.commit()
        assert reasons(engine)[-1] is not None
        assert reasons(engine)[-1].startswith("undelete Pair (1, 'x') as of transaction ")
        with pytest.raises(RestoreError) as raised:
            versioning.restore(session, Note, 5, at=1)
        assert "Note 5 did not exist at" in str(raised.value)
        assert "(5,)" not in str(raised.value)


def test_a_conflicting_undelete_says_what_it_tried(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, name="a"))
        session.commit()
        session.delete(session.get(Note, 1))
        session.commit()
        session.add(Note(id=2, name="a"))  # takes the unique name
        session.commit()
        deleted = history(session, Note, 1)[-1]
        with pytest.raises(versioning.RestoreConflictError) as raised:
            versioning.restore(session, deleted)
        message = str(raised.value)
        assert "the restore (undelete Note 1 as of transaction " in message
        assert "(1,)" not in message
        session.rollback()
    assert live(engine, Note.__table__) == [(2, "a")]
    assert ops(read(sessions, Note, 1)) == [INSERT, DELETE]


# --- 4. the reason stays within its column ----------------------------------------------------


def test_the_reason_lists_the_first_restores_and_counts_the_others() -> None:
    state = Recording()
    session = Session()
    with session.begin():
        for i in range(250):
            state.note(session, f"restore Note {i} to transaction 1")
    lines = state.notes
    assert lines[0] == "restore Note 0 to transaction 1" and len(lines) == 101
    assert lines[-1] == "and 150 more restores"
    state.noted = state.noted[:3]
    assert len(state.notes) == 3
    # Long lines: bounded by size too, never over MariaDB's 65,535-byte TEXT.
    state.noted = []
    with session.begin():
        for i in range(300):
            state.note(session, f"restore LongKey {'é' * 700}{i} to transaction 1")
    reason = "; ".join(state.notes)
    assert len(reason.encode()) < 20_000 and reason.endswith("more restores")


def test_many_restores_in_one_transaction_fit_the_reason_column(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    total = 100  # 100 notes of over 700 bytes: more than MariaDB's TEXT holds
    codes = [f"{i:03d}" + "k" * 697 for i in range(total)]
    with sessions() as session:
        session.add_all([LongKey(code=c, n=0) for c in codes])
        session.commit()
        for obj in session.scalars(sa.select(LongKey)):
            obj.n = 1
        session.commit()
        firsts = [history(session, LongKey, c)[0] for c in codes]
        for version in firsts:
            versioning.restore(session, version)
        session.commit()
    reason = reasons(engine)[-1]
    assert reason is not None and reason.startswith(f"restore LongKey {codes[0]!r} to transaction")
    assert len(reason.encode()) <= 65_535
    shown = reason.count("restore LongKey ")
    assert shown < total and reason.endswith(f"and {total - shown} more restores")
    with engine.connect() as connection:
        assert set(connection.scalars(sa.select(LongKey.n))) == {0}
    assert ops(read(sessions, LongKey, codes[-1])) == [INSERT, UPDATE, UPDATE]


# --- 5. positional rows in insert().values() --------------------------------------------------


def test_positional_rows_in_values_are_recorded(create_tables: Tables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.execute(insert(Note).values([(1, "a"), (2, "b")]))
        session.execute(insert(Pair).values([(1, "x", "one")]))
        session.commit()
    assert live(engine, Note.__table__) == [(1, "a"), (2, "b")]
    for pk, name in ((1, "a"), (2, "b")):
        (version,) = read(sessions, Note, pk)
        assert version.operation is INSERT and dict(version.state) == {"id": pk, "name": name}
    (pair,) = read(sessions, Pair, (1, "x"))
    assert dict(pair.state) == {"a": 1, "b": "x", "label": "one"}


# --- 6. a captured statement that fails partway -----------------------------------------------


def _fails_in_a_later_batch(session: Session) -> None:
    """A multi-row insert sent 2 rows at a time; its last row repeats a unique name."""
    rows = [{"id": i, "name": f"n{i}"} for i in range(10, 15)] + [{"id": 15, "name": "kept"}]
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(
            insert(Note).execution_options(insertmanyvalues_page_size=2).returning(Note.id),
            rows,
        )


def _bulk_update_fails_on_a_later_row(session: Session) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(update(Note), [{"id": 1, "name": "first"}, {"id": 2, "name": "kept"}])


@pytest.mark.parametrize(
    "fail", [_fails_in_a_later_batch, _bulk_update_fails_on_a_later_row], ids=["insert", "update"]
)
def test_a_statement_failing_partway_makes_the_commit_refuse(
    create_tables: Tables, sessions: Sessions, fail: Callable[[Session], None]
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Note(id=1, name="one"), Note(id=2, name="two"), Note(id=3, name="kept")])
        session.commit()
    before = live(engine, Note.__table__)
    with sessions() as session:
        session.get(Note, 3).name = "kept"  # unchanged
        fail(session)
        with pytest.raises(VersioningError) as raised:
            session.commit()
        message = str(raised.value)
        assert "Note failed partway" in message and "session.rollback()" in message
        session.rollback()
    assert live(engine, Note.__table__) == before
    assert count(engine, history_table(Note)) == 3


@pytest.mark.parametrize(
    "fail", [_fails_in_a_later_batch, _bulk_update_fails_on_a_later_row], ids=["insert", "update"]
)
def test_a_statement_failing_in_a_savepoint_rolled_back_lets_the_commit_through(
    create_tables: Tables, sessions: Sessions, fail: Callable[[Session], None]
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Note(id=1, name="one"), Note(id=2, name="two"), Note(id=3, name="kept")])
        session.commit()
    with sessions() as session:
        session.get(Note, 1).name = "uno"
        session.flush()
        savepoint = session.begin_nested()
        fail(session)
        savepoint.rollback()
        session.commit()
    assert live(engine, Note.__table__) == [(1, "uno"), (2, "two"), (3, "kept")]
    assert ops(read(sessions, Note, 1)) == [INSERT, UPDATE]
    assert count(engine, history_table(Note)) == 4


def test_a_statement_refused_before_it_runs_leaves_the_transaction_committable(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, name="one"))
        session.flush()
        with pytest.raises(VersioningError, match="primary key"):
            session.execute(update(Note).where(Note.id == 1).values(id=9))
        session.commit()
    assert live(engine, Note.__table__) == [(1, "one")]
    assert ops(read(sessions, Note, 1)) == [INSERT]


# --- 7. SQLite ON CONFLICT REPLACE / IGNORE declared on a versioned table ----------------------


def _declare(**column: Any) -> Callable[[type[DeclarativeBase]], None]:
    table_args = column.pop("table_args", None)

    def declare(base: type[DeclarativeBase]) -> None:
        class Tagged(Versioned, base):  # type: ignore[misc, valid-type]
            __tablename__ = "fu_tagged"
            if table_args is not None:
                __table_args__ = table_args
            id: Mapped[int] = mapped_column(
                primary_key=True,
                autoincrement=False,
                **{k: v for k, v in column.items() if "primary" in k},
            )
            code: Mapped[str] = mapped_column(
                sa.String(20),
                unique="on_conflict_unique" in str(column),
                **{k: v for k, v in column.items() if "primary" not in k},
            )

    return declare


@pytest.mark.parametrize(
    ("declare", "said"),
    [
        (
            _declare(sqlite_on_conflict_unique="REPLACE"),
            "column 'code' declares its unique ON CONFLICT REPLACE",
        ),
        (
            _declare(sqlite_on_conflict_primary_key="REPLACE"),
            "column 'id' declares its primary key",
        ),
        (_declare(sqlite_on_conflict_unique="IGNORE"), "unique ON CONFLICT IGNORE"),
        (_declare(sqlite_on_conflict_not_null="replace"), "its NOT NULL ON CONFLICT replace"),
        (
            _declare(table_args=(sa.UniqueConstraint("code", sqlite_on_conflict="REPLACE"),)),
            "the unique constraint (code) declares ON CONFLICT REPLACE",
        ),
    ],
    ids=["unique", "primary-key", "ignore", "not-null", "table-constraint"],
)
def test_sqlite_conflict_resolutions_that_skip_or_delete_rows_are_refused(
    declare: Callable[[type[DeclarativeBase]], None], said: str
) -> None:
    class LocalBase(DeclarativeBase):
        pass

    try:
        with pytest.raises(ConfigurationError) as raised:
            declare(LocalBase)
        message = str(raised.value)
        assert message.startswith("Tagged: ") and said in message, message
        assert "Remove the option" in message and "prefix_with('OR REPLACE')" in message
        assert not any(t.endswith("_history") for t in LocalBase.metadata.tables)
    finally:
        LocalBase.registry.dispose()


@pytest.mark.parametrize("action", ["ABORT", "ROLLBACK"])
def test_sqlite_conflict_resolutions_that_raise_are_accepted(
    create_tables: Tables, sessions: Sessions, action: str
) -> None:
    class LocalBase(DeclarativeBase):
        pass

    try:
        _declare(sqlite_on_conflict_unique=action)(LocalBase)
        (model,) = [m.class_ for m in LocalBase.registry.mappers]
        engine = create_tables(LocalBase.metadata)
        with sessions() as session:
            session.add(model(id=1, code="a"))
            session.commit()
            session.add(model(id=2, code="a"))
            with pytest.raises(sa.exc.IntegrityError):
                session.commit()
        assert count(engine, model.__table__) == 1
        assert ops(read(sessions, model, 1)) == [INSERT]
    finally:
        LocalBase.registry.dispose()
