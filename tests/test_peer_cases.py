"""Cases other projects' test suites found (SQLAlchemy's ``versioned_history`` example,
SQLAlchemy-Continuum, django-simple-history), each on SQLite, PostgreSQL and MariaDB:

* concrete-table inheritance: each concrete table keeps a history of its own;
* a model in another schema: the history table's foreign key names the transaction table's schema;
* the readers autoflush like a query, sync and async;
* an unversioned mapper over versioned tables (a ``join()``, a second class) is refused;
* SQLite reuses a deleted record's integer key unless the table has ``sqlite_autoincrement``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.ext.declarative import AbstractConcreteBase, ConcreteBase
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateTable

import versioning
import versioning.asyncio
from versioning import ConfigurationError, Operation, Versioned, as_of, history, history_table
from versioning.reading import version_at

from helpers import another_schema, count, ops, read

Tables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE
#: Far beyond any transaction id of a test: "now" for as_of / version_at.
LATEST = 2**31 - 1


class Base(DeclarativeBase):
    pass


# --- concrete-table inheritance: polymorphic (ConcreteBase) ------------------------------------


class TextItem(Versioned, ConcreteBase, Base):
    __tablename__ = "peer_text_items"
    __versioned__ = {"exclude": ["views"]}
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    views: Mapped[int] = mapped_column(default=0)
    __mapper_args__ = {"polymorphic_identity": "text_item", "concrete": True}


class Article(TextItem):
    __tablename__ = "peer_articles"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    views: Mapped[int] = mapped_column(default=0)
    body: Mapped[str | None] = mapped_column(sa.String(100))
    __mapper_args__ = {"polymorphic_identity": "article", "concrete": True}


class BlogPost(TextItem):
    __tablename__ = "peer_blog_posts"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    views: Mapped[int] = mapped_column(default=0)
    blog: Mapped[str | None] = mapped_column(sa.String(30))
    __mapper_args__ = {"polymorphic_identity": "blog_post", "concrete": True}


# --- concrete-table inheritance: not polymorphic (concrete=True only) --------------------------


class Document(Versioned, Base):
    __tablename__ = "peer_documents"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))


class Memo(Document):
    __tablename__ = "peer_memos"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    recipient: Mapped[str | None] = mapped_column(sa.String(30))
    __mapper_args__ = {"concrete": True}


class UrgentMemo(Memo):  # joined-table inheritance below a concrete class
    __tablename__ = "peer_urgent_memos"
    id: Mapped[int] = mapped_column(sa.ForeignKey("peer_memos.id"), primary_key=True)
    level: Mapped[int] = mapped_column(default=1)


class Unversioned(Base):
    __tablename__ = "peer_unversioned"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))


class Reply(Versioned, Unversioned):  # a versioned concrete class of a base that is not
    __tablename__ = "peer_replies"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    __mapper_args__ = {"concrete": True}


# --- concrete-table inheritance: AbstractConcreteBase ------------------------------------------


class Asset(Versioned, AbstractConcreteBase, Base):
    strict_attrs = True
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(50))


class Laptop(Asset):
    __tablename__ = "peer_laptops"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(50))
    cpu: Mapped[str | None] = mapped_column(sa.String(30))
    __mapper_args__ = {"polymorphic_identity": "laptop", "concrete": True}


class Phone(Asset):
    __tablename__ = "peer_phones"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(50))
    number: Mapped[str | None] = mapped_column(sa.String(30))
    __mapper_args__ = {"polymorphic_identity": "phone", "concrete": True}


# Maps Asset now. An AbstractConcreteBase left unmapped until first use breaks any later
# event.listen(Versioned, ..., propagate=True) in the process (SQLAlchemy raises UnmappedClassError
# for it), such as the one versioning.cascades makes when another registry is configured.
Base.registry.configure()


# --- a plain model: autoflush, keys -------------------------------------------------------------


class Note(Versioned, Base):
    __tablename__ = "peer_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


class Ticket(Versioned, Base):
    __tablename__ = "peer_tickets"
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


# --- concrete-table inheritance ----------------------------------------------------------------


def test_each_concrete_table_has_its_own_history_table() -> None:
    tables = [
        history_table(m) for m in (TextItem, Article, BlogPost, Document, Memo, Laptop, Phone)
    ]
    assert [t.name for t in tables] == [
        "peer_text_items_history",
        "peer_articles_history",
        "peer_blog_posts_history",
        "peer_documents_history",
        "peer_memos_history",
        "peer_laptops_history",
        "peer_phones_history",
    ]
    assert "body" in history_table(Article).c and "body" not in history_table(TextItem).c
    assert "recipient" not in history_table(Document).c
    # A joined subclass of a concrete class shares that class's history, not its base's.
    assert history_table(UrgentMemo) is history_table(Memo)
    assert "level" in history_table(Memo).c and "level" not in history_table(Document).c
    assert history_table(Reply).name == "peer_replies_history"
    # The base's exclude carries over to the concrete classes' own column of that name.
    assert "views" not in history_table(Article).c and "views" not in history_table(BlogPost).c


def test_an_abstract_concrete_base_has_no_history_and_says_where_it_is() -> None:
    with pytest.raises(ConfigurationError) as raised:
        history_table(Asset)
    message = str(raised.value)
    assert "Asset is an abstract concrete base" in message
    assert "Laptop" in message and "Phone" in message


def _write_three_lives(session: Session, models: list[type[Any]]) -> None:
    for model in models:
        session.add(model(id=1, title=f"{model.__name__} v1"))
    session.commit()
    # Through the base: with ConcreteBase, one polymorphic query loads all three records 1.
    loaded = {
        type(obj): obj for obj in session.scalars(sa.select(models[0]).where(models[0].id == 1))
    }
    for model in models:
        obj = loaded.get(model) or session.get(model, 1)
        assert obj is not None and type(obj) is model
        obj.title = f"{model.__name__} v2"
    session.commit()


@pytest.mark.parametrize(
    "models", [[TextItem, Article, BlogPost], [Document, Memo]], ids=["ConcreteBase", "concrete"]
)
def test_concrete_records_with_the_same_key_keep_separate_histories(
    create_tables: Tables, sessions: Sessions, models: list[type[Any]]
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        _write_three_lives(session, models)
        session.delete(session.get(models[-1], 1))
        session.commit()
    for model in models:
        versions = read(sessions, model, 1)
        expected = [INSERT, UPDATE, DELETE] if model is models[-1] else [INSERT, UPDATE]
        assert ops(versions) == expected, model
        assert {v.model for v in versions} == {model}
        assert versions[0].state["title"] == f"{model.__name__} v1"
        assert dict(versions[1].changes) == {
            "title": (f"{model.__name__} v1", f"{model.__name__} v2")
        }
    with sessions() as session:
        first = read(sessions, models[0], 1)[0].transaction_id
        old = as_of(session, models[1], 1, first)
        assert type(old) is models[1] and old.title == f"{models[1].__name__} v1"


def test_statements_and_restore_on_a_concrete_class_touch_its_records_only(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        _write_three_lives(session, [TextItem, Article, BlogPost])
        _write_three_lives(session, [Document, Memo])
        # ORM-enabled statements (SQLAlchemy refuses them on ConcreteBase classes themselves).
        session.execute(sa.update(Memo).where(Memo.id == 1).values(recipient="bo"))
        session.execute(sa.insert(Memo).values(id=2, title="m2"))
        session.execute(sa.delete(Document).where(Document.id == 1))
        session.commit()
        first = read(sessions, Memo, 1)[0]
        versioning.restore(session, first)
        session.commit()
        memo = session.get(Memo, 1)
        assert memo is not None and memo.title == "Memo v1" and memo.recipient is None
    assert ops(read(sessions, TextItem, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, Article, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, BlogPost, 1)) == [INSERT, UPDATE]
    memo_versions = read(sessions, Memo, 1)
    assert ops(memo_versions) == [INSERT, UPDATE, UPDATE, UPDATE]
    assert dict(memo_versions[2].changes) == {"recipient": (None, "bo")}
    assert dict(memo_versions[3].changes) == {
        "title": ("Memo v2", "Memo v1"),
        "recipient": ("bo", None),
    }
    assert ops(read(sessions, Memo, 2)) == [INSERT]
    assert ops(read(sessions, Document, 1)) == [INSERT, UPDATE, DELETE]


def test_a_joined_subclass_of_a_concrete_class_is_recorded_in_its_history(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Document(id=1, title="d"), UrgentMemo(id=1, title="u", level=2)])
        session.commit()
        urgent = session.get(UrgentMemo, 1)
        assert urgent is not None
        urgent.level = 3
        urgent.title = "u2"
        session.commit()
        session.add(Reply(id=1, title="r"))
        session.commit()
    versions = read(sessions, UrgentMemo, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[0].state) == {"id": 1, "title": "u", "recipient": None, "level": 2}
    assert dict(versions[1].changes) == {"title": ("u", "u2"), "level": (2, 3)}
    assert [v.state["title"] for v in read(sessions, Memo, 1)] == ["u", "u2"]
    assert [v.state["title"] for v in read(sessions, Document, 1)] == ["d"]
    assert [v.state["title"] for v in read(sessions, Reply, 1)] == ["r"]


def test_abstract_concrete_base_classes_keep_separate_histories(
    create_tables: Tables, sessions: Sessions
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add_all([Laptop(id=1, label="l1", cpu="arm"), Phone(id=1, label="p1")])
        session.commit()
        phone = session.get(Phone, 1)
        assert phone is not None
        phone.number = "555"
        session.commit()
        # Loading through the abstract base works too; its writes land in the concrete history.
        laptop = session.scalars(sa.select(Asset).where(Asset.label == "l1")).one()
        assert type(laptop) is Laptop
        laptop.label = "l2"
        session.commit()
    laptop_versions = read(sessions, Laptop, 1)
    phone_versions = read(sessions, Phone, 1)
    assert ops(laptop_versions) == [INSERT, UPDATE]
    assert dict(laptop_versions[1].changes) == {"label": ("l1", "l2")}
    assert ops(phone_versions) == [INSERT, UPDATE]
    assert dict(phone_versions[1].changes) == {"number": (None, "555")}
    assert {v.model for v in laptop_versions} == {Laptop}
    with sessions() as session, pytest.raises(ConfigurationError, match="abstract concrete base"):
        history(session, Asset, 1)


# --- a model in another schema -----------------------------------------------------------------

#: A schema (PostgreSQL) or database (MariaDB) of this test run only.
OTHER = f"versioning_peer_{os.getpid()}"


def _other_schema_model() -> tuple[type[DeclarativeBase], type[Any]]:
    class SchemaBase(DeclarativeBase):
        pass

    class Remote(Versioned, SchemaBase):
        __tablename__ = "peer_remote"
        __table_args__ = {"schema": OTHER}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(sa.String(50))

    return SchemaBase, Remote


@pytest.fixture
def other_schema(engine: sa.Engine, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on the test database where the schema :data:`OTHER` exists (SQLite: attached)."""
    with another_schema(engine, tmp_path, OTHER) as other:
        yield other


def test_a_model_in_another_schema_is_created_written_and_read(other_schema: sa.Engine) -> None:
    schema_base, remote = _other_schema_model()
    try:
        schema_base.metadata.create_all(other_schema)
        try:
            with Session(other_schema) as session:
                session.add(remote(id=1, name="a"))
                session.commit()
                session.get(remote, 1).name = "b"
                session.commit()
                versions = history(session, remote, 1)
                assert ops(versions) == [INSERT, UPDATE]
                assert versions[1].transaction is not None
                assert as_of(session, remote, 1, versions[0].transaction_id).name == "a"
            history_name = history_table(remote).name
            assert history_table(remote).schema == OTHER
            inspector = sa.inspect(other_schema)
            assert history_name in inspector.get_table_names(schema=OTHER)
            if other_schema.dialect.name != "sqlite":  # no foreign key across SQLite databases
                (key,) = inspector.get_foreign_keys(history_name, schema=OTHER)
                assert key["referred_table"] == versioning.TRANSACTION_TABLE
                assert key["referred_schema"] in (None, other_schema.dialect.default_schema_name)
                # The key is enforced: a history row of no transaction is refused.
                with pytest.raises(sa.exc.IntegrityError), other_schema.begin() as connection:
                    connection.execute(
                        history_table(remote).insert(),
                        {
                            "versioning_transaction_id": 10**6,
                            "versioning_operation": INSERT,
                            "id": 2,
                        },
                    )
        finally:
            schema_base.metadata.drop_all(other_schema)
    finally:
        schema_base.registry.dispose()


@pytest.mark.parametrize("dialect", [mysql.dialect(), postgresql.dialect()], ids=lambda d: d.name)
def test_the_transaction_key_names_the_default_schema_from_another_schema(dialect: Any) -> None:
    schema_base, remote = _other_schema_model()
    try:
        history = history_table(remote)
        # Not connected: the default schema is unknown, the name is left as declared.
        assert "REFERENCES versioning_transaction (id)" in str(
            CreateTable(history).compile(dialect=dialect)
        )
        dialect.default_schema_name = "main_db"
        assert "REFERENCES main_db.versioning_transaction (id)" in str(
            CreateTable(history).compile(dialect=dialect)
        )
        # The transaction table itself, and a history table in the default schema: unchanged.
        local = sa.Table("t", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
        local_history = versioning.schema.history_table_for(
            "T", "t_history", local, versioning.transaction_table(local.metadata), [], []
        )
        assert "REFERENCES versioning_transaction (id)" in str(
            CreateTable(local_history).compile(dialect=dialect)
        )
    finally:
        schema_base.registry.dispose()


def test_a_table_in_the_default_schema_of_a_metadata_with_a_schema_keeps_its_history_there() -> (
    None
):
    class LocalBase(DeclarativeBase):
        metadata = sa.MetaData(schema="app")

    class Plain(Versioned, LocalBase):
        __tablename__ = "peer_plain"
        __table_args__ = {"schema": sa.BLANK_SCHEMA}
        id: Mapped[int] = mapped_column(primary_key=True)

    class InApp(Versioned, LocalBase):
        __tablename__ = "peer_in_app"
        id: Mapped[int] = mapped_column(primary_key=True)

    try:
        assert Plain.__table__.schema is None and history_table(Plain).schema is None
        assert history_table(InApp).schema == "app"
        assert versioning.transaction_table(LocalBase.metadata).schema == "app"
        ddl = str(CreateTable(history_table(Plain)).compile(dialect=postgresql.dialect()))
        assert "REFERENCES app.versioning_transaction (id)" in ddl
    finally:
        LocalBase.registry.dispose()


# --- readers autoflush like a query ------------------------------------------------------------


def test_history_and_as_of_see_the_sessions_pending_changes(
    create_tables: Tables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, name="a"))
        session.commit()
        note = session.get(Note, 1)
        assert note is not None
        note.name = "b"
        assert session.scalars(sa.select(Note.name)).one() == "b"  # what a query sees
        note.name = "c"
        assert as_of(session, Note, 1, LATEST).name == "c"
        note.name = "d"
        version = version_at(session, Note, 1, LATEST)
        assert version is not None and version.state["name"] == "d"
        note.name = "e"
        versions = history(session, Note, 1)
        assert [v.state["name"] for v in versions] == ["a", "b", "c", "d", "e"]
        # A pending new record is flushed, and found, by instance or by key.
        fresh = Note(id=2, name="new")
        session.add(fresh)
        assert ops(history(session, fresh)) == [INSERT]
        session.commit()
    assert [v.state["name"] for v in read(sessions, Note, 1)] == ["a", "b", "c", "d", "e"]
    assert count(engine, history_table(Note)) == 6


@pytest.mark.parametrize("how", ["no_autoflush", "autoflush=False"])
def test_readers_do_not_flush_when_autoflush_is_off(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine, how: str
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        session.add(Note(id=1, name="a"))
        session.commit()
    session = Session(engine, autoflush=how != "autoflush=False")
    try:
        note = session.get(Note, 1)
        assert note is not None
        note.name = "b"
        if how == "no_autoflush":
            with session.no_autoflush:
                assert [v.state["name"] for v in history(session, Note, 1)] == ["a"]
                assert as_of(session, Note, 1, LATEST).name == "a"
        else:
            assert [v.state["name"] for v in history(session, Note, 1)] == ["a"]
            assert as_of(session, Note, 1, LATEST).name == "a"
        assert note in session.dirty  # still pending: nothing was flushed
        session.commit()
    finally:
        session.close()
    assert [v.state["name"] for v in read(sessions, Note, 1)] == ["a", "b"]


def _async_url(engine: sa.Engine) -> sa.URL:
    driver = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "mariadb": "mariadb+aiomysql",
    }[engine.dialect.name]
    return engine.url.set(drivername=driver)


def test_async_readers_autoflush_too(create_tables: Tables, engine: sa.Engine) -> None:
    create_tables(Base.metadata)

    async def main() -> None:
        async_engine = create_async_engine(_async_url(engine))
        try:
            async with AsyncSession(async_engine) as session:
                session.add(Note(id=1, name="a"))
                await session.commit()
                note = await session.get(Note, 1)
                assert note is not None
                note.name = "b"
                old = await versioning.asyncio.as_of(session, Note, 1, LATEST)
                assert old.name == "b"
                note.name = "c"
                version = await versioning.asyncio.version_at(session, Note, 1, LATEST)
                assert version is not None and version.state["name"] == "c"
                note.name = "d"
                versions = await versioning.asyncio.history(session, Note, 1)
                assert [v.state["name"] for v in versions] == ["a", "b", "c", "d"]
                note.name = "e"
                with session.no_autoflush:
                    versions = await versioning.asyncio.history(session, Note, 1)
                assert versions[-1].state["name"] == "d"
                await session.rollback()
        finally:
            await async_engine.dispose()

    asyncio.run(asyncio.wait_for(main(), 120))
    with Session(engine) as session:
        assert [v.state["name"] for v in history(session, Note, 1)] == ["a"]


# --- an unversioned mapper over versioned tables -----------------------------------------------


def _refused(declare: Callable[[type[DeclarativeBase]], None]) -> str:
    """Declare models on a fresh registry; return the ConfigurationError that refuses them."""

    class LocalBase(DeclarativeBase):
        pass

    try:
        declare(LocalBase)
        with pytest.raises(ConfigurationError) as raised:
            LocalBase.registry.configure()
        # Refused again at every use: nothing can be written through the registry's models.
        with pytest.raises(ConfigurationError):
            LocalBase.registry.configure()
        return str(raised.value)
    finally:
        LocalBase.registry.dispose()


def _two_versioned(base: type[DeclarativeBase]) -> tuple[type[Any], type[Any]]:
    class User(Versioned, base):  # type: ignore[misc, valid-type]
        __tablename__ = "peer_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(50))

    class Profile(Versioned, base):  # type: ignore[misc, valid-type]
        __tablename__ = "peer_profiles"
        id: Mapped[int] = mapped_column(sa.ForeignKey("peer_users.id"), primary_key=True)
        bio: Mapped[str | None] = mapped_column(sa.String(50))

    return User, Profile


def test_a_mapper_over_a_join_of_versioned_tables_is_refused() -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        user, profile = _two_versioned(base)

        class UserWithProfile(base):  # type: ignore[misc, valid-type, unused-ignore]
            __table__ = sa.join(user.__table__, profile.__table__)
            id = sa.orm.column_property(user.__table__.c.id, profile.__table__.c.id)

    message = _refused(declare)
    assert "UserWithProfile is mapped to a join of versioned table(s)" in message
    assert "'peer_users', 'peer_profiles'" in message
    assert "not Versioned" in message and "without recording any history" in message
    assert "Write through the versioned model(s) instead" in message


def test_a_second_unversioned_class_over_a_versioned_table_is_refused() -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        user, _ = _two_versioned(base)

        class UserName(base):  # type: ignore[misc, valid-type, unused-ignore]
            __table__ = user.__table__

    message = _refused(declare)
    assert "UserName is mapped to versioned table(s) 'peer_users' (mapped by User)" in message


def test_an_unversioned_mapper_declared_before_the_versioned_model_is_refused_at_use() -> None:
    def declare(base: type[DeclarativeBase]) -> None:
        users = sa.Table(
            "peer_users",
            base.metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(50)),
        )

        class UserName(base):  # type: ignore[misc, valid-type, unused-ignore]
            __table__ = users

        class User(Versioned, base):  # type: ignore[misc, valid-type, unused-ignore]
            __table__ = users

    assert "UserName is mapped to versioned table(s) 'peer_users'" in _refused(declare)


def test_nothing_is_written_through_a_refused_mapper(engine: sa.Engine) -> None:
    class LocalBase(DeclarativeBase):
        pass

    user, profile = _two_versioned(LocalBase)

    class UserWithProfile(LocalBase):
        __table__ = sa.join(user.__table__, profile.__table__)
        id = sa.orm.column_property(user.__table__.c.id, profile.__table__.c.id)

    try:
        LocalBase.metadata.create_all(engine)
        try:
            # Instances cannot even be made: the mapper is configured first, and refused.
            with pytest.raises(ConfigurationError, match="UserWithProfile is mapped to a join"):
                UserWithProfile(id=1, name="a", bio="b")
            # The whole registry is refused until the mapper is removed: loud at every use.
            with pytest.raises(ConfigurationError, match="UserWithProfile"):
                user(id=2, name="a")
            with Session(engine) as session, pytest.raises(ConfigurationError):
                session.execute(sa.select(user))
            for table in LocalBase.metadata.sorted_tables:
                if table.info.get("versioning") != "catalog":  # it describes the tables
                    assert count(engine, table) == 0, table.name
        finally:
            LocalBase.metadata.drop_all(engine)
    finally:
        LocalBase.registry.dispose()


def _tagging(
    base: type[DeclarativeBase], secondary: str, viewonly: bool = False
) -> tuple[type[Any], type[Any], type[Any]]:
    """Post, Tag and Link: Post.tags through Link's versioned table, given as ``secondary``."""

    class Tag(Versioned, base):  # type: ignore[misc, valid-type]
        __tablename__ = "peer_tags"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    class Post(Versioned, base):  # type: ignore[misc, valid-type]
        __tablename__ = "peer_posts"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    class Link(Versioned, base):  # type: ignore[misc, valid-type]
        __tablename__ = "peer_links"
        post_id: Mapped[int] = mapped_column(sa.ForeignKey("peer_posts.id"), primary_key=True)
        tag_id: Mapped[int] = mapped_column(sa.ForeignKey("peer_tags.id"), primary_key=True)

    argument: Any = {
        "name": "peer_links",
        "table": Link.__table__,
        "lambda": lambda: Link.__table__,
    }[secondary]
    Post.tags = sa.orm.relationship(Tag, secondary=argument, viewonly=viewonly)
    return Post, Tag, Link


@pytest.mark.parametrize("secondary", ["name", "table", "lambda"])
def test_a_relationship_writing_a_versioned_secondary_table_is_refused(secondary: str) -> None:
    message = _refused(lambda base: _tagging(base, secondary))
    assert "Post.tags uses the versioned table 'peer_links' (mapped by Link)" in message
    assert "as its secondary table" in message and "without recording any history" in message
    assert "viewonly=True" in message


def test_nothing_is_written_through_a_refused_secondary(engine: sa.Engine) -> None:
    class LocalBase(DeclarativeBase):
        pass

    post, _, _ = _tagging(LocalBase, "name")
    try:
        LocalBase.metadata.create_all(engine)
        try:
            with pytest.raises(ConfigurationError, match=r"Post\.tags uses the versioned table"):
                post(id=1)
            for table in LocalBase.metadata.sorted_tables:
                if table.info.get("versioning") != "catalog":  # it describes the tables
                    assert count(engine, table) == 0, table.name
        finally:
            LocalBase.metadata.drop_all(engine)
    finally:
        LocalBase.registry.dispose()


def test_a_viewonly_relationship_over_a_versioned_secondary_is_accepted(
    engine: sa.Engine,
) -> None:
    class LocalBase(DeclarativeBase):
        pass

    post, tag, link = _tagging(LocalBase, "name", viewonly=True)
    try:
        LocalBase.metadata.create_all(engine)
        try:
            with Session(engine) as session:
                session.add_all([post(id=1), tag(id=7)])
                session.flush()
                session.add(link(post_id=1, tag_id=7))  # written through its own model
                session.commit()
                assert [t.id for t in session.get(post, 1).tags] == [7]
                assert ops(history(session, link, (1, 7))) == [INSERT]
        finally:
            LocalBase.metadata.drop_all(engine)
    finally:
        LocalBase.registry.dispose()


def test_a_read_only_mapper_over_a_select_is_accepted() -> None:
    class LocalBase(DeclarativeBase):
        pass

    try:
        user, _ = _two_versioned(LocalBase)
        names = sa.select(user.__table__.c.id, user.__table__.c.name).subquery()

        class UserNameView(LocalBase):  # the ORM cannot write through a subquery
            __table__ = names

        LocalBase.registry.configure()
        assert sa.inspect(UserNameView).configured
    finally:
        LocalBase.registry.dispose()


# --- SQLite reuses a deleted record's integer key ----------------------------------------------


@pytest.mark.parametrize("model", [Note, Ticket], ids=["default", "sqlite_autoincrement"])
def test_a_new_record_never_continues_a_deleted_ones_history_with_autoincrement(
    create_tables: Tables, sessions: Sessions, engine: sa.Engine, model: type[Any]
) -> None:
    create_tables(Base.metadata)
    with sessions() as session:
        first = model(name="first")
        session.add_all([model(name="zero"), first])
        session.commit()
        first_id = first.id
        session.delete(first)  # the highest key
        session.commit()
        second = model(name="second")
        session.add(second)
        session.commit()
        second_id = second.id
    reused = engine.dialect.name == "sqlite" and model is Note
    if reused:  # documented: the deleted record's key, and so its history, is taken over
        assert second_id == first_id
        versions = read(sessions, model, first_id)
        assert ops(versions) == [INSERT, DELETE, INSERT]
        assert [v.state["name"] for v in versions] == ["first", "first", "second"]
    else:
        assert second_id > first_id
        assert ops(read(sessions, model, first_id)) == [INSERT, DELETE]
        assert [v.state["name"] for v in read(sessions, model, second_id)] == ["second"]
