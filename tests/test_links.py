"""Many-to-many link history: the rows of an association table between versioned models.

A ``secondary`` table linking two versioned models gets ``<name>_history``; the links the unit of
work inserts and deletes (appending, removing, assigning a list, deleting a parent) are recorded
there in the flush's transaction, with every column of the link as the database stored it.
``links_as_of`` reads them back at any moment, from either side. Core writes to a link table are
flagged by ``guard_writes``. Database tests run on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.exc import StaleDataError

import versioning
from versioning import (
    ArgumentError,
    ConfigurationError,
    Operation,
    UncapturedWriteError,
    Versioned,
    guard_writes,
    link_history_table,
    links_as_of,
)
from versioning.schema import TRANSACTION_TABLE

from helpers import another_schema

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, DELETE = Operation.INSERT, Operation.DELETE


class Base(DeclarativeBase):
    pass


post_tags = sa.Table(
    "lk_post_tags",
    Base.metadata,
    sa.Column("post_id", sa.ForeignKey("lk_posts.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("lk_tags.id"), primary_key=True),
    sa.Column("weight", sa.Integer, default=1),  # a Python-side default: sent
    sa.Column("note", sa.String(20), server_default="auto"),  # the database's: read back
)


class Post(Versioned, Base):
    __tablename__ = "lk_posts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    tags: Mapped[list[Tag]] = relationship(
        secondary=post_tags, back_populates="posts", order_by="Tag.id"
    )


class Tag(Versioned, Base):
    __tablename__ = "lk_tags"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))
    posts: Mapped[list[Post]] = relationship(secondary=post_tags, back_populates="tags")


shelf_books = sa.Table(
    "lk_shelf_books",
    Base.metadata,
    sa.Column("site", sa.String(10), primary_key=True),
    sa.Column("number", sa.Integer, primary_key=True),
    sa.Column("book_id", sa.ForeignKey("lk_books.id"), primary_key=True),
    sa.ForeignKeyConstraint(["site", "number"], ["lk_shelves.site", "lk_shelves.number"]),
)


class Shelf(Versioned, Base):
    """A composite primary key on one side of the link."""

    __tablename__ = "lk_shelves"

    site: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    books: Mapped[list[Book]] = relationship(secondary=shelf_books, order_by="Book.id")


scores = sa.Table(
    "lk_scores",
    Base.metadata,
    sa.Column("book_id", sa.ForeignKey("lk_books.id"), primary_key=True),
    sa.Column("tag_id", sa.ForeignKey("lk_tags.id"), primary_key=True),
    # Sent as these, stored rounded (PostgreSQL, MariaDB) and without microseconds (MariaDB).
    sa.Column("score", sa.Numeric(5, 2), default=Decimal("1.005")),
    sa.Column("at", sa.DateTime(), default=dt.datetime(2024, 1, 2, 3, 4, 5, 678901)),
)


class Book(Versioned, Base):
    __tablename__ = "lk_books"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    tags: Mapped[list[Tag]] = relationship(secondary=scores)


class Reader(Base):
    """Not versioned: its links to books have no history."""

    __tablename__ = "lk_readers"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    books: Mapped[list[Book]] = relationship(
        secondary=sa.Table(
            "lk_reader_books",
            Base.metadata,
            sa.Column("reader_id", sa.ForeignKey("lk_readers.id"), primary_key=True),
            sa.Column("book_id", sa.ForeignKey("lk_books.id"), primary_key=True),
        )
    )


friendships = sa.Table(
    "lk_friendships",
    Base.metadata,
    sa.Column("person_id", sa.ForeignKey("lk_people.id"), primary_key=True),
    sa.Column("friend_id", sa.ForeignKey("lk_people.id"), primary_key=True),
)


class Person(Versioned, Base):
    """Self-referential links; a changed key would update them (passive_updates=False)."""

    __tablename__ = "lk_people"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    friends: Mapped[list[Person]] = relationship(
        secondary=friendships,
        primaryjoin=lambda: Person.id == friendships.c.person_id,
        secondaryjoin=lambda: Person.id == friendships.c.friend_id,
        order_by=lambda: Person.id,
        passive_updates=False,
    )


watching = sa.Table(
    "lk_watching",
    Base.metadata,
    sa.Column("post_id", sa.ForeignKey("lk_posts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("user_id", sa.ForeignKey("lk_users.id", ondelete="CASCADE"), primary_key=True),
)


class User(Versioned, Base):
    """Links the database deletes with their post or user (and not the ORM)."""

    __tablename__ = "lk_users"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    watched: Mapped[list[Post]] = relationship(
        secondary=watching, passive_deletes=True, order_by=lambda: Post.id
    )


def links(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    """The link history rows of ``table``: (transaction id, operation, link columns...)."""
    history = link_history_table_of(table)
    columns = [history.c[c.name] for c in table.columns]
    with engine.connect() as connection:
        query = sa.select(
            history.c.versioning_transaction_id, history.c.versioning_operation, *columns
        ).order_by(history.c.versioning_id)
        return [tuple(row) for row in connection.execute(query)]


def link_history_table_of(table: sa.Table) -> sa.Table:
    name = f"{table.name}_history"
    return table.metadata.tables[name if table.schema is None else f"{table.schema}.{name}"]


def transaction_ids(engine: sa.Engine) -> list[int]:
    with engine.connect() as connection:
        table = Base.metadata.tables[TRANSACTION_TABLE]
        return list(connection.scalars(sa.select(table.c.id).order_by(table.c.id)))


# --- declaration -------------------------------------------------------------------------------


def test_a_link_table_between_versioned_models_gets_a_history_table() -> None:
    history = link_history_table(Post.tags)
    assert history is link_history_table(Tag.posts) is Base.metadata.tables["lk_post_tags_history"]
    assert history.info["versioning"] == "history"  # append-only like every history table
    assert history.c.keys() == [
        "versioning_id",
        "versioning_transaction_id",
        "versioning_operation",
        "post_id",
        "tag_id",
        "weight",
        "note",
        "versioning_changes",
    ]
    assert all(c.nullable and not c.foreign_keys for c in list(history.c)[3:])
    assert {tuple(c.name for c in index.columns) for index in history.indexes} == {
        ("post_id", "tag_id", "versioning_transaction_id"),  # the link, and the post side
        ("tag_id", "versioning_transaction_id"),  # the tag side
        ("versioning_transaction_id",),
    }
    assert "lk_shelf_books_history" in Base.metadata.tables


def test_no_link_history_when_one_side_is_not_versioned() -> None:
    assert "lk_reader_books_history" not in Base.metadata.tables
    with pytest.raises(ArgumentError, match=r"Reader\.books has no link history"):
        link_history_table(Reader.books)
    with pytest.raises(ArgumentError, match="takes a relationship attribute"):
        link_history_table(Post.title)


def test_the_history_exists_before_the_mappers_are_configured() -> None:
    class LocalBase(DeclarativeBase):
        pass

    link = sa.Table(
        "lk_early_links",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey("lk_early_a.id"), primary_key=True),
        sa.Column("b_id", sa.ForeignKey("lk_early_b.id"), primary_key=True),
    )

    try:

        class A(Versioned, LocalBase):
            __tablename__ = "lk_early_a"
            id: Mapped[int] = mapped_column(primary_key=True)
            bs: Mapped[list[B]] = relationship(secondary="lk_early_links")

        assert "lk_early_links_history" not in LocalBase.metadata.tables  # B is not declared yet

        class B(Versioned, LocalBase):
            __tablename__ = "lk_early_b"
            id: Mapped[int] = mapped_column(primary_key=True)

        assert "lk_early_links_history" in LocalBase.metadata.tables  # create_all sees it
        assert link.info["versioning_links"] == "lk_early_links_history"
    finally:
        LocalBase.registry.dispose()


def test_a_secondary_given_as_a_lambda_gets_its_history_when_configured() -> None:
    class LocalBase(DeclarativeBase):
        pass

    try:

        class A(Versioned, LocalBase):
            __tablename__ = "lk_late_a"
            id: Mapped[int] = mapped_column(primary_key=True)
            bs: Mapped[list[B]] = relationship(secondary=lambda: late)

        class B(Versioned, LocalBase):
            __tablename__ = "lk_late_b"
            id: Mapped[int] = mapped_column(primary_key=True)

        late = sa.Table(
            "lk_late_links",
            LocalBase.metadata,
            sa.Column("a_id", sa.ForeignKey("lk_late_a.id"), primary_key=True),
            sa.Column("b_id", sa.ForeignKey("lk_late_b.id"), primary_key=True),
        )
        LocalBase.registry.configure()
        assert link_history_table(A.bs).name == "lk_late_links_history"
    finally:
        LocalBase.registry.dispose()


@pytest.mark.parametrize("action", [{"ondelete": "SET NULL"}, {"onupdate": "CASCADE"}])
def test_a_link_foreign_key_the_database_changes_links_through_is_refused(
    action: dict[str, str],
) -> None:
    class LocalBase(DeclarativeBase):
        pass

    sa.Table(
        "lk_cascading",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey("lk_casc_a.id", **action), primary_key=True),
        sa.Column("b_id", sa.ForeignKey("lk_casc_b.id"), primary_key=True),
    )
    try:

        class A(Versioned, LocalBase):
            __tablename__ = "lk_casc_a"
            id: Mapped[int] = mapped_column(primary_key=True)
            bs: Mapped[list[B]] = relationship(secondary="lk_cascading", passive_deletes=True)

        class B(Versioned, LocalBase):
            __tablename__ = "lk_casc_b"
            id: Mapped[int] = mapped_column(primary_key=True)

        assert "lk_cascading_history" not in LocalBase.metadata.tables
        for _ in range(2):  # refused again at every use
            with pytest.raises(ConfigurationError) as raised:
                LocalBase.registry.configure()
            message = str(raised.value)
            assert message.startswith("A.bs: the foreign key (a_id) of link table 'lk_cascading'")
            which, value = next(iter(action.items()))
            assert f"has {which}={value!r}" in message
            assert "ondelete='CASCADE' is recorded" in message
    finally:
        LocalBase.registry.dispose()


def test_a_link_history_name_taken_is_refused() -> None:
    class LocalBase(DeclarativeBase):
        pass

    sa.Table("lk_taken_history", LocalBase.metadata, sa.Column("x", sa.Integer))
    sa.Table(
        "lk_taken",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey("lk_taken_a.id"), primary_key=True),
        sa.Column("b_id", sa.ForeignKey("lk_taken_a.id"), primary_key=True),
    )
    try:
        with pytest.raises(ConfigurationError, match="'lk_taken_history' of association table"):

            class A(Versioned, LocalBase):
                __tablename__ = "lk_taken_a"
                id: Mapped[int] = mapped_column(primary_key=True)
                others: Mapped[list[A]] = relationship(
                    secondary="lk_taken",
                    primaryjoin="A.id == lk_taken.c.a_id",
                    secondaryjoin="A.id == lk_taken.c.b_id",
                )
    finally:
        LocalBase.registry.dispose()


# --- capture -----------------------------------------------------------------------------------


def test_links_added_and_removed_are_recorded_exactly(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        t10, t11, t12 = Tag(id=10, name="a"), Tag(id=11, name="b"), Tag(id=12, name="c")
        post1, post2 = Post(id=1, title="one", tags=[t10, t11]), Post(id=2, title="two")
        session.add_all([post1, post2, t12])
        session.commit()  # 1: two links with their new posts
        post1.tags.remove(t10)
        post2.tags.append(t10)
        session.commit()  # 2: one removed, one added
        post1.tags = [t11, t12]
        session.commit()  # 3: a list assigned: only the new link
        post1.tags = [t12]
        post1.title = "one!"
        session.commit()  # 4: a link removed with a change of the post
        session.delete(post1)
        session.commit()  # 5: the post deleted: its link with it
        session.delete(t10)
        session.commit()  # 6: the tag deleted: its link (other side) with it
    # One transaction row per commit, shared with the records' own history.
    t1, t2, t3, t4, t5, t6 = transaction_ids(engine)
    assert links(engine, post_tags) == [
        (t1, INSERT, 1, 10, 1, "auto"),
        (t1, INSERT, 1, 11, 1, "auto"),
        (t2, DELETE, 1, 10, 1, "auto"),
        (t2, INSERT, 2, 10, 1, "auto"),
        (t3, INSERT, 1, 12, 1, "auto"),
        (t4, DELETE, 1, 11, 1, "auto"),
        (t5, DELETE, 1, 12, 1, "auto"),
        (t6, DELETE, 2, 10, 1, "auto"),
    ]
    with sessions() as session:
        assert [v.transaction_id for v in versioning.history(session, Post, 1)] == [t1, t4, t5]


def test_links_keep_the_values_the_database_stored(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Post(id=1, title="one"), Tag(id=10, name="a")])
        session.commit()
        session.execute(post_tags.insert().values(post_id=1, tag_id=10, weight=5, note="hand"))
        session.commit()  # a Core INSERT: not captured (guard_writes flags it)
        post = session.get(Post, 1)
        assert post is not None
        post.tags.clear()
        session.commit()
    # The delete holds the row as it was, its extra columns read before the DELETE.
    _, t2 = transaction_ids(engine)  # the Core INSERT's commit has none
    assert links(engine, post_tags) == [(t2, DELETE, 1, 10, 5, "hand")]


def test_links_with_a_composite_key(create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        shelf = Shelf(site="north", number=3, books=[Book(id=1), Book(id=2)])
        session.add(shelf)
        session.commit()
        shelf.books.pop(0)
        session.commit()
        t1, t2 = transaction_ids(engine)
        assert links_as_of(session, Shelf.books, [("north", 3), ("south", 3)], t1) == {
            ("north", 3): [(1,), (2,)],
            ("south", 3): [],
        }
        assert links_as_of(session, Shelf.books, [("north", 3)], t2) == {("north", 3): [(2,)]}
        with pytest.raises(ArgumentError, match=r"a key of 2 value\(s\) was expected, got 7"):
            links_as_of(session, Shelf.books, [7], t2)
    assert links(engine, shelf_books) == [
        (t1, INSERT, "north", 3, 1),
        (t1, INSERT, "north", 3, 2),
        (t2, DELETE, "north", 3, 1),
    ]


def test_links_of_a_rolled_back_savepoint_are_not_recorded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        post, tag = Post(id=1, title="one"), Tag(id=10, name="a")
        session.add_all([post, tag])
        session.flush()
        with session.begin_nested() as savepoint:
            post.tags.append(tag)
            session.flush()
            savepoint.rollback()
        session.commit()
    assert links(engine, post_tags) == []


def test_a_link_removed_meanwhile_is_refused_and_nothing_recorded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Post(id=1, title="one", tags=[Tag(id=10, name="a")]))
        session.commit()
    # Objects kept loaded past their transaction (SQLite lets one writer in at a time).
    with sessions(expire_on_commit=False) as first, sessions() as second:
        post = first.get(Post, 1)
        assert post is not None and [t.id for t in post.tags] == [10]
        first.commit()
        other = second.get(Post, 1)
        assert other is not None
        other.tags.clear()
        second.commit()
        post.tags.clear()
        with pytest.raises(StaleDataError, match="expected to delete 1 row"):
            first.commit()
    t1, t2 = transaction_ids(engine)
    assert [row[:2] for row in links(engine, post_tags)] == [(t1, INSERT), (t2, DELETE)]


def test_a_link_added_twice_is_refused_by_the_database(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Post(id=1, title="one"), Tag(id=10, name="a")])
        session.commit()
    with sessions(expire_on_commit=False) as first, sessions(expire_on_commit=False) as second:
        for session in (first, second):
            post, tag = session.get(Post, 1), session.get(Tag, 10)
            assert post is not None and tag is not None and post.tags == []
            session.commit()
            post.tags.append(tag)
        first.commit()
        with pytest.raises(sa.exc.IntegrityError):
            second.commit()
    _, t2 = transaction_ids(engine)
    assert [row[:2] for row in links(engine, post_tags)] == [(t2, INSERT)]


# --- reading -----------------------------------------------------------------------------------


def test_links_as_of_each_moment_from_either_side(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        t10, t11 = Tag(id=10, name="a"), Tag(id=11, name="b")
        post1, post2 = Post(id=1, title="one", tags=[t10, t11]), Post(id=2, title="two")
        session.add_all([post1, post2])
        session.commit()  # 1
        post1.tags.remove(t10)
        post2.tags.append(t10)
        session.commit()  # 2
        session.delete(post1)
        session.commit()  # 3
        t1, t2, t3 = transaction_ids(engine)
        assert links_as_of(session, Post.tags, [1, 2], t1) == {(1,): [(10,), (11,)], (2,): []}
        assert links_as_of(session, Post.tags, [1, 2], t2) == {(1,): [(11,)], (2,): [(10,)]}
        assert links_as_of(session, Post.tags, [1, 2], t3) == {(1,): [], (2,): [(10,)]}
        assert links_as_of(session, Tag.posts, [10, 11], t1) == {(10,): [(1,)], (11,): [(1,)]}
        assert links_as_of(session, Tag.posts, [10, 11], t2) == {(10,): [(2,)], (11,): [(1,)]}
        assert links_as_of(session, Tag.posts, [(10,), (11,)], t3) == {(10,): [(2,)], (11,): []}
        # Moments as datetimes: after a transaction, and before the first.
        issued = {
            v.transaction_id: v.transaction.issued_at for v in versioning.history(session, Post, 1)
        }
        assert links_as_of(session, Post.tags, [1], issued[t1]) == {(1,): [(10,), (11,)]}
        assert links_as_of(session, Post.tags, [1], issued[t3]) == {(1,): []}
        long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        assert links_as_of(session, Post.tags, [1], long_ago) == {(1,): []}
        assert links_as_of(session, Post.tags, [], t3) == {}


def test_links_as_of_sees_the_links_of_the_open_transaction(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Post(id=1, title="one", tags=[Tag(id=10, name="a")]))
        session.commit()
        post = session.get(Post, 1)
        assert post is not None
        post.tags.append(Tag(id=11, name="b"))
        # Not committed: the pending links are flushed and written with their transaction row.
        found = links_as_of(session, Post.tags, [1], 10**9)
        assert found == {(1,): [(10,), (11,)]}
        session.rollback()
        assert links_as_of(session, Post.tags, [1], 10**9) == {(1,): [(10,)]}


def test_links_as_of_refuses_what_has_no_link_history(sessions: Sessions) -> None:
    with sessions() as session:
        with pytest.raises(ArgumentError, match=r"Reader\.books has no link history"):
            links_as_of(session, Reader.books, [1], 1)
        with pytest.raises(ArgumentError, match="timezone-aware"):
            links_as_of(session, Post.tags, [1], dt.datetime(2020, 1, 1))


# --- the write guard ---------------------------------------------------------------------------


def test_core_writes_to_a_link_table_are_flagged_by_the_guard(
    create_tables: CreateTables, engine: sa.Engine
) -> None:
    create_tables(Base.metadata)
    guarded = sa.create_engine(engine.url)
    try:
        guard_writes(guarded)
        with Session(guarded) as session:
            post, tag = Post(id=1, title="one"), Tag(id=10, name="a")
            post.tags.append(tag)
            session.add(post)
            session.commit()  # the flush's own link writes pass
            post.tags.clear()
            session.commit()
            post.tags.append(tag)
            session.commit()
            session.delete(post)  # a flush that only deletes: its links go first
            session.commit()
            for statement in (
                post_tags.insert().values(post_id=1, tag_id=10),
                post_tags.delete(),
                post_tags.update().values(weight=2),
            ):
                with pytest.raises(UncapturedWriteError, match="link table 'lk_post_tags'"):
                    session.execute(statement)
                session.rollback()
        t1, t2, t3, t4 = transaction_ids(engine)
        assert [row[:2] for row in links(engine, post_tags)] == [
            (t1, INSERT),
            (t2, DELETE),
            (t3, INSERT),
            (t4, DELETE),
        ]
    finally:
        guarded.dispose()


def test_a_core_statement_after_a_flush_with_nothing_to_write_is_not_taken_for_the_flush(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Post(id=1, title="one", tags=[Tag(id=10, name="a")]))
        session.commit()

        @sa.event.listens_for(session, "before_flush")
        def _keep_out(session: Session, context: Any, instances: Any) -> None:
            for new in list(session.new):
                session.expunge(new)

        session.add(Tag(id=11, name="b"))
        session.flush()  # before_flush left nothing to write: the flush ends early, no after_flush
        session.execute(post_tags.delete())  # Core, outside any flush: not recorded
        session.commit()
    (t1,) = transaction_ids(engine)
    assert links(engine, post_tags) == [(t1, INSERT, 1, 10, 1, "auto")]


def test_a_core_statement_on_a_link_table_during_a_flush_is_refused(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)

    statements = iter(
        [
            post_tags.delete().where(post_tags.c.post_id == 1),
            sa.insert(post_tags).values([{"post_id": 1, "tag_id": 10}]),
            sa.insert(post_tags).from_select(["post_id", "tag_id"], sa.select(1, 10)),
        ]
    )

    def unlink(mapper: Any, connection: sa.Connection, target: Post) -> None:
        connection.execute(next(statements))

    sa.event.listen(Post, "after_update", unlink)
    try:
        with sessions() as session:
            session.add(Post(id=1, title="one", tags=[Tag(id=10, name="a")]))
            session.commit()
            post = session.get(Post, 1)
            assert post is not None
            for title in ("b", "c", "d"):
                post.title = title
                with pytest.raises(versioning.VersioningError, match="ran during a flush"):
                    session.commit()
                session.rollback()
    finally:
        sa.event.remove(Post, "after_update", unlink)
    (t1,) = transaction_ids(engine)
    assert [row[:2] for row in links(engine, post_tags)] == [(t1, INSERT)]


def test_autogenerate_renders_the_link_history_and_the_migration_runs(engine: sa.Engine) -> None:
    pytest.importorskip("alembic")
    from alembic.autogenerate import produce_migrations, render_python_code
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    from versioning.migrations import render_item

    class LocalBase(DeclarativeBase):
        pass

    link = sa.Table(
        "lkm_links",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey("lkm_a.id"), primary_key=True),
        sa.Column("b_id", sa.ForeignKey("lkm_b.id"), primary_key=True),
    )

    class A(Versioned, LocalBase):
        __tablename__ = "lkm_a"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        bs: Mapped[list[B]] = relationship(secondary=link)

    class B(Versioned, LocalBase):
        __tablename__ = "lkm_b"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    names = set(LocalBase.metadata.tables)
    assert "lkm_links_history" in names
    try:
        with engine.begin() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "target_metadata": LocalBase.metadata,
                    "render_item": render_item,
                    "include_name": lambda name, type_, parents: type_ != "table" or name in names,
                },
            )
            upgrade = produce_migrations(context, LocalBase.metadata).upgrade_ops
            assert upgrade is not None
            code = render_python_code(upgrade, render_item=render_item, migration_context=context)
            assert "op.create_table('lkm_links_history'" in code
            assert "info={'versioning': 'history'" in code  # append-only triggers with it
            assert "op.create_index('ix_lkm_links_history_side1', 'lkm_links_history'" in code
            namespace: dict[str, Any] = {"sa": sa, "op": Operations(context)}
            exec("from sqlalchemy.dialects import mysql", namespace)
            exec(code.replace("\n    ", "\n"), namespace)
        with Session(engine) as session:
            a = A(id=1, bs=[B(id=2)])
            session.add(a)
            session.commit()
            a.bs.clear()
            session.commit()
            assert links_as_of(session, A.bs, [1], 1) == {(1,): [(2,)]}
            assert links_as_of(session, A.bs, [1], 2) == {(1,): []}
        assert [row[:2] for row in links(engine, link)] == [(1, INSERT), (2, DELETE)]
        with pytest.raises(versioning.AppendOnlyError), engine.begin() as connection:
            connection.execute(link_history_table(A.bs).delete())
    finally:
        LocalBase.metadata.drop_all(engine)
        LocalBase.registry.dispose()


# --- a link table in another schema -------------------------------------------------------------

#: A schema (PostgreSQL) or database (MariaDB) of this test run only.
OTHER = f"versioning_links_{os.getpid()}"


@pytest.fixture
def other_schema(engine: sa.Engine, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on the test database where the schema :data:`OTHER` exists (SQLite: attached)."""
    with another_schema(engine, tmp_path, OTHER) as other:
        yield other


def test_a_link_table_in_another_schema_keeps_its_history_there(other_schema: sa.Engine) -> None:
    class LocalBase(DeclarativeBase):
        pass

    link = sa.Table(
        "lks_links",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey(f"{OTHER}.lks_a.id"), primary_key=True),
        sa.Column("b_id", sa.ForeignKey(f"{OTHER}.lks_b.id"), primary_key=True),
        schema=OTHER,
    )

    class A(Versioned, LocalBase):
        __tablename__ = "lks_a"
        __table_args__ = {"schema": OTHER}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        bs: Mapped[list[B]] = relationship(secondary=link)

    class B(Versioned, LocalBase):
        __tablename__ = "lks_b"
        __table_args__ = {"schema": OTHER}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    history = link_history_table(A.bs)
    assert (history.schema, history.name) == (OTHER, "lks_links_history")
    try:
        LocalBase.metadata.create_all(other_schema)
        with Session(other_schema) as session:
            a = A(id=1, bs=[B(id=2), B(id=3)])
            session.add(a)
            session.commit()
            a.bs.pop()
            session.commit()
            assert links_as_of(session, A.bs, [1], 1) == {(1,): [(2,), (3,)]}
            assert links_as_of(session, A.bs, [1], 2) == {(1,): [(2,)]}
        assert links(other_schema, link) == [
            (1, INSERT, 1, 2),
            (1, INSERT, 1, 3),
            (2, DELETE, 1, 3),
        ]
        guarded = sa.create_engine(other_schema.url)
        try:
            guard_writes(guarded)
            with guarded.connect() as connection, pytest.raises(UncapturedWriteError):
                connection.execute(link.delete())
        finally:
            guarded.dispose()
    finally:
        LocalBase.metadata.drop_all(other_schema)
        LocalBase.registry.dispose()


def test_self_referential_links(create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        ann, bob, cid = Person(id=1), Person(id=2), Person(id=3)
        ann.friends = [bob, cid]
        bob.friends = [ann]
        session.add_all([ann, bob, cid])
        session.commit()
        ann.friends.remove(bob)
        session.commit()
        t1, t2 = transaction_ids(engine)
        assert links_as_of(session, Person.friends, [1, 2, 3], t1) == {
            (1,): [(2,), (3,)],
            (2,): [(1,)],
            (3,): [],
        }
        assert links_as_of(session, Person.friends, [1, 2], t2) == {(1,): [(3,)], (2,): [(1,)]}
    assert sorted(links(engine, friendships)) == [
        (t1, INSERT, 1, 2),
        (t1, INSERT, 1, 3),
        (t1, INSERT, 2, 1),
        (t2, DELETE, 1, 2),
    ]


def test_links_updated_in_place_are_refused(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A changed key with passive_updates=False makes the ORM update the links; with foreign
    keys enforced the database refuses it first, so they are switched off here."""
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Person(id=1, friends=[Person(id=2)]))
        session.commit()
    unchecked = sa.create_engine(engine.url)  # SQLite: no PRAGMA foreign_keys on this one
    try:
        with Session(unchecked) as session:
            if unchecked.dialect.name == "postgresql":
                session.execute(sa.text("SET LOCAL session_replication_role = replica"))
            elif unchecked.dialect.name == "mariadb":
                session.execute(sa.text("SET foreign_key_checks = 0"))
            person = session.get(Person, 1)
            assert person is not None and [p.id for p in person.friends] == [2]
            person.id = 5
            with pytest.raises(versioning.VersioningError, match="would update links of"):
                session.flush()
            session.rollback()
            if unchecked.dialect.name == "mariadb":
                session.execute(sa.text("SET foreign_key_checks = 1"))
                session.commit()
    finally:
        unchecked.dispose()
    (t1,) = transaction_ids(engine)
    assert links(engine, friendships) == [(t1, INSERT, 1, 2)]


def test_restoring_a_record_leaves_its_links_as_they_are(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        tag = Tag(id=10, name="a")
        post = Post(id=1, title="one", tags=[tag])
        session.add(post)
        session.commit()  # 1
        post.tags.clear()
        post.title = "two"
        session.commit()  # 2
        t1, t2 = transaction_ids(engine)
        versioning.restore(session, Post, 1, at=t1)
        session.commit()  # 3: the title only
        assert [t.id for t in session.get(Post, 1).tags] == []  # type: ignore[union-attr]
        session.delete(session.get(Post, 1))
        session.commit()  # 4
        t3, _ = transaction_ids(engine)[2:]
        versioning.restore(session, Post, 1, at=t3)
        session.commit()  # 5: re-created without links
        (t5,) = transaction_ids(engine)[4:]
        assert links_as_of(session, Post.tags, [1], t5) == {(1,): []}
        assert session.get(Post, 1).title == "one"  # type: ignore[union-attr]
    assert [row[:2] for row in links(engine, post_tags)] == [(t1, INSERT), (t2, DELETE)]


def test_a_secondary_without_foreign_keys_gets_its_history_when_configured() -> None:
    class LocalBase(DeclarativeBase):
        pass

    loose = sa.Table(
        "lk_loose",
        LocalBase.metadata,
        sa.Column("a_ref", sa.Integer, primary_key=True),
        sa.Column("b_ref", sa.Integer, primary_key=True),
        sa.Column("since", sa.Integer),
    )
    try:

        class A(Versioned, LocalBase):
            __tablename__ = "lk_loose_a"
            id: Mapped[int] = mapped_column(primary_key=True)
            bs: Mapped[list[B]] = relationship(
                secondary=loose,
                primaryjoin=lambda: A.id == sa.orm.foreign(loose.c.a_ref),
                secondaryjoin=lambda: B.id == sa.orm.foreign(loose.c.b_ref),
            )

        class B(Versioned, LocalBase):
            __tablename__ = "lk_loose_b"
            id: Mapped[int] = mapped_column(primary_key=True)

        assert "lk_loose_history" not in LocalBase.metadata.tables  # not known before
        LocalBase.registry.configure()
        history = link_history_table(A.bs)
        assert [c.name for c in history.c][3:6] == ["a_ref", "b_ref", "since"]
        assert {tuple(c.name for c in index.columns) for index in history.indexes} == {
            ("a_ref", "b_ref", "versioning_transaction_id"),
            ("b_ref", "versioning_transaction_id"),
            ("versioning_transaction_id",),
        }
    finally:
        LocalBase.registry.dispose()


def test_a_cascade_to_a_table_the_database_deletes_from_is_refused() -> None:
    class LocalBase(DeclarativeBase):
        pass

    sa.Table(
        "lk_deep",
        LocalBase.metadata,
        sa.Column("a_id", sa.ForeignKey("lk_deep_a.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("b_id", sa.ForeignKey("lk_deep_b.id"), primary_key=True),
    )
    try:

        class Owner(Versioned, LocalBase):
            __tablename__ = "lk_deep_owner"
            id: Mapped[int] = mapped_column(primary_key=True)

        class A(Versioned, LocalBase):
            __tablename__ = "lk_deep_a"
            id: Mapped[int] = mapped_column(primary_key=True)
            owner_id: Mapped[int] = mapped_column(
                sa.ForeignKey("lk_deep_owner.id", ondelete="CASCADE")
            )
            bs: Mapped[list[B]] = relationship(secondary="lk_deep")

        class B(Versioned, LocalBase):
            __tablename__ = "lk_deep_b"
            id: Mapped[int] = mapped_column(primary_key=True)

        with pytest.raises(ConfigurationError, match="whose rows the database itself may delete"):
            LocalBase.registry.configure()
    finally:
        LocalBase.registry.dispose()


def test_links_the_database_deletes_with_their_record_are_recorded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        first, second, third = Post(id=1, title="a"), Post(id=2, title="b"), Post(id=3, title="c")
        session.add_all([User(id=7, watched=[first, second]), User(id=8, watched=[second, third])])
        session.commit()  # 1
        session.delete(first)  # no relationship from Post: the database deletes its link
        session.commit()  # 2
        session.expire_all()
        session.delete(session.get(User, 7))  # passive_deletes: its links are not even loaded
        session.commit()  # 3
        user = session.get(User, 8)
        assert user is not None and [p.id for p in user.watched] == [2, 3]
        session.delete(user)  # loaded: the ORM deletes the links itself, once
        session.commit()  # 4
        t1, t2, t3, t4 = transaction_ids(engine)
        assert links_as_of(session, User.watched, [7, 8], t1) == {
            (7,): [(1,), (2,)],
            (8,): [(2,), (3,)],
        }
        assert links_as_of(session, User.watched, [7, 8], t3) == {(7,): [], (8,): [(2,), (3,)]}
    assert sorted(links(engine, watching)) == [  # the order within a statement may vary
        (t1, INSERT, 1, 7),
        (t1, INSERT, 2, 7),
        (t1, INSERT, 2, 8),
        (t1, INSERT, 3, 8),
        (t2, DELETE, 1, 7),
        (t3, DELETE, 2, 7),
        (t4, DELETE, 2, 8),
        (t4, DELETE, 3, 8),
    ]


def test_links_a_connection_without_foreign_keys_leaves_are_not_recorded(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(User(id=7, watched=[Post(id=1, title="a")]))
        session.commit()
    unchecked = sa.create_engine(engine.url)  # SQLite: no PRAGMA foreign_keys on this one
    try:
        with Session(unchecked) as session:
            if unchecked.dialect.name == "postgresql":
                session.execute(sa.text("SET LOCAL session_replication_role = replica"))
            elif unchecked.dialect.name == "mariadb":
                session.execute(sa.text("SET foreign_key_checks = 0"))
            session.delete(session.get(Post, 1))
            session.commit()
            if unchecked.dialect.name == "mariadb":
                session.execute(sa.text("SET foreign_key_checks = 1"))
                session.commit()
    finally:
        unchecked.dispose()
    with engine.connect() as connection:  # the link is still there, dangling
        assert connection.execute(sa.select(watching)).all() == [(1, 7)]
    t1, _ = transaction_ids(engine)  # the link's, the post's delete
    assert links(engine, watching) == [(t1, INSERT, 1, 7)]


def test_a_delete_statement_whose_links_the_database_deletes_is_refused(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(User(id=7, watched=[Post(id=1, title="a")]))
        session.commit()
        with pytest.raises(versioning.VersioningError, match=r"session\.delete\(obj\)"):
            session.execute(sa.delete(Post).where(Post.id == 1))
        session.rollback()
        session.execute(sa.delete(Tag))  # no link of Tag cascades: recorded as usual
        session.commit()
    (t1,) = transaction_ids(engine)
    assert links(engine, watching) == [(t1, INSERT, 1, 7)]
    with engine.connect() as connection:
        assert connection.execute(sa.select(Post.id)).scalars().all() == [1]


def test_links_hold_the_values_the_database_stored(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Book(id=1, tags=[Tag(id=10, name="a")]))
        session.commit()
        with engine.connect() as connection:
            stored = tuple(connection.execute(sa.select(scores)).one())
        if engine.dialect.name != "sqlite":
            assert stored[2] == Decimal("1.01")  # not what was sent
        if engine.dialect.name == "mariadb":
            assert stored[3].microsecond == 0  # truncated or rounded
        book = session.get(Book, 1)
        assert book is not None
        book.tags.clear()
        session.commit()
    t1, t2 = transaction_ids(engine)
    assert links(engine, scores) == [(t1, INSERT, *stored), (t2, DELETE, *stored)]


def test_link_history_is_covered_by_digests_and_verify(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Link rows are hashed into their transaction's digest like any history row: a sealed
    history with links verifies, and a link row changed afterwards is named."""
    from helpers import tamper

    engine = create_tables(Base.metadata)
    with sessions() as session:
        post = Post(id=1, title="p")
        post.tags = [Tag(id=1, name="a"), Tag(id=2, name="b")]
        session.add(post)
        session.commit()
        post.tags.pop(0)
        session.commit()
        assert versioning.seal(session, metadata=Base.metadata) is not None
        session.commit()
        report = versioning.verify(session, metadata=Base.metadata)
    assert report.ok, report.problems
    links = link_history_table(Post.tags)
    assert report.versions_checked == 3 + 2 + 1  # a post and two tags; two links; one removed
    with engine.begin() as connection, tamper(connection):
        first = connection.execute(sa.select(sa.func.min(links.c.versioning_id))).scalar_one()
        connection.execute(links.update().where(links.c.versioning_id == first).values(weight=99))
    with sessions() as session:
        report = versioning.verify(session, metadata=Base.metadata)
    assert [(p.kind, p.table, p.version_id) for p in report.problems] == [
        ("altered", links.fullname, first)
    ]
