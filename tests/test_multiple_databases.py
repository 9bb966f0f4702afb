"""Several databases in one process: each history goes to the database of its table.

Two engines: a SQLite file of this module's own, and the ``engine`` fixture's database (so this
runs with PostgreSQL, MariaDB and a second SQLite file as the other database). Versioned models
live on two ``DeclarativeBase``/``MetaData`` pairs, or on one ``MetaData`` whose models are bound
to different engines, and sessions route them with ``binds=``. Every check of where rows landed
queries each engine directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from versioning import (
    TRANSACTION_TABLE,
    Operation,
    Versioned,
    as_of,
    audit_context,
    history,
    history_table,
    restore,
)
from versioning.schema import OPERATION, TRANSACTION_ID, VERSION_ID

Tables = Callable[[sa.MetaData], sa.Engine]


class BaseA(DeclarativeBase):
    """Tables in the SQLite file."""


class BaseB(DeclarativeBase):
    """Tables in the ``engine`` fixture's database."""


class Book(Versioned, BaseA):
    __tablename__ = "mdb_books"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))


class Author(Versioned, BaseB):
    __tablename__ = "mdb_authors"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(50))


class Shared(DeclarativeBase):
    """One MetaData whose models are bound to different engines, model by model."""


class Note(Versioned, Shared):
    __tablename__ = "mdb_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))


class Tag(Versioned, Shared):
    __tablename__ = "mdb_tags"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A second database: a SQLite file with working SAVEPOINTs and foreign keys (as conftest)."""
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")

    @event.listens_for(other, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA foreign_keys=ON")

    @event.listens_for(other, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    yield other
    other.dispose()


def transactions_of(metadata: sa.MetaData) -> sa.Table:
    return metadata.tables[TRANSACTION_TABLE]


def tx_rows(bind: sa.Engine, metadata: sa.MetaData) -> list[tuple[int, str | None]]:
    """(id, actor) of every transaction row in ``bind``'s copy of ``metadata``'s table."""
    table = transactions_of(metadata)
    with bind.connect() as connection:
        rows = connection.execute(select(table.c.id, table.c.actor).order_by(table.c.id))
        return [(row.id, row.actor) for row in rows]


def history_rows(bind: sa.Engine, model: type[Any], column: str) -> list[tuple[Any, ...]]:
    """(operation, transaction id, value of ``column``) of the history rows in ``bind``."""
    table = history_table(model)
    with bind.connect() as connection:
        rows = connection.execute(
            select(table.c[OPERATION], table.c[TRANSACTION_ID], table.c[column]).order_by(
                table.c[VERSION_ID]
            )
        )
        return [tuple(row) for row in rows]


def live_value(bind: sa.Engine, model: type[Any], column: str) -> list[Any]:
    table = model.__table__
    with bind.connect() as connection:
        return list(connection.execute(select(table.c[column]).order_by(table.c.id)).scalars())


def table_names(bind: sa.Engine) -> set[str]:
    return set(sa.inspect(bind).get_table_names())


BINDS = {
    "by model": lambda first, second: {Book: first, Author: second},
    "by base": lambda first, second: {BaseA: first, BaseB: second},
}


def two_databases(create_tables: Tables, sqlite_engine: sa.Engine) -> tuple[sa.Engine, sa.Engine]:
    """Book's tables in the SQLite file, Author's in the ``engine`` fixture's database."""
    BaseA.metadata.create_all(sqlite_engine)
    return sqlite_engine, create_tables(BaseB.metadata)


def seed(first: sa.Engine, second: sa.Engine, binds: str) -> None:
    with Session(binds=BINDS[binds](first, second)) as session, audit_context(actor="alice"):
        session.add_all([Book(id=1, title="Dune"), Author(id=1, name="Herbert")])
        session.commit()


@pytest.mark.parametrize("binds", list(BINDS))
def test_each_history_goes_to_the_database_of_its_table(
    create_tables: Tables, sqlite_engine: sa.Engine, binds: str
) -> None:
    books, authors = two_databases(create_tables, sqlite_engine)
    seed(books, authors, binds)
    with Session(binds=BINDS[binds](books, authors)) as session, audit_context(actor="bob"):
        book, author = session.get(Book, 1), session.get(Author, 1)
        assert book is not None and author is not None
        book.title = "Dune Messiah"
        author.name = "Frank Herbert"
        session.commit()

    # Each database holds its own history and transaction rows, and nothing of the other's.
    assert {"mdb_books_history", TRANSACTION_TABLE} <= table_names(books)
    assert not {"mdb_authors", "mdb_authors_history"} & table_names(books)
    assert {"mdb_authors_history", TRANSACTION_TABLE} <= table_names(authors)
    assert not {"mdb_books", "mdb_books_history"} & table_names(authors)
    book_tx = tx_rows(books, BaseA.metadata)
    author_tx = tx_rows(authors, BaseB.metadata)
    # One transaction row per database and database transaction: the seed's, then bob's.
    assert [actor for _, actor in book_tx] == ["alice", "bob"]
    assert [actor for _, actor in author_tx] == ["alice", "bob"]
    book_ids, author_ids = [i for i, _ in book_tx], [i for i, _ in author_tx]
    assert history_rows(books, Book, "title") == [
        ("insert", book_ids[0], "Dune"),
        ("update", book_ids[1], "Dune Messiah"),
    ]
    assert history_rows(authors, Author, "name") == [
        ("insert", author_ids[0], "Herbert"),
        ("update", author_ids[1], "Frank Herbert"),
    ]


@pytest.mark.parametrize("binds", list(BINDS))
def test_reading_and_restoring_through_the_binds_session(
    create_tables: Tables, sqlite_engine: sa.Engine, binds: str
) -> None:
    books, authors = two_databases(create_tables, sqlite_engine)
    seed(books, authors, binds)
    with Session(binds=BINDS[binds](books, authors)) as session:
        with audit_context(actor="bob"):
            book, author = session.get(Book, 1), session.get(Author, 1)
            assert book is not None and author is not None
            book.title = "Children of Dune"
            author.name = "F. Herbert"
            session.commit()

        book_versions = history(session, Book, 1)
        author_versions = history(session, Author, 1)
        assert [v.operation for v in book_versions] == [Operation.INSERT, Operation.UPDATE]
        assert [v.state["title"] for v in book_versions] == ["Dune", "Children of Dune"]
        assert [v.transaction.actor for v in book_versions if v.transaction] == ["alice", "bob"]
        assert author_versions[1].changes == {"name": ("Herbert", "F. Herbert")}
        assert [v.transaction.actor for v in author_versions if v.transaction] == [
            "alice",
            "bob",
        ]
        old_author = as_of(session, Author, 1, author_versions[0].transaction_id)
        assert old_author is not None and old_author.name == "Herbert"
        old_book = as_of(session, Book, 1, book_versions[0].transaction_id)
        assert old_book is not None and old_book.title == "Dune"
        session.commit()

        with audit_context(actor="carol"):
            restore(session, book_versions[0])
            session.commit()
        assert [v.transaction.actor for v in history(session, Book, 1) if v.transaction] == [
            "alice",
            "bob",
            "carol",
        ]
        session.commit()

    # The restore wrote to the books' database only.
    assert live_value(books, Book, "title") == ["Dune"]
    assert [actor for _, actor in tx_rows(books, BaseA.metadata)] == ["alice", "bob", "carol"]
    assert [actor for _, actor in tx_rows(authors, BaseB.metadata)] == ["alice", "bob"]
    assert len(history_rows(authors, Author, "name")) == 2


@pytest.mark.parametrize("binds", list(BINDS))
def test_orm_bulk_statements_go_to_the_database_of_their_table(
    create_tables: Tables, sqlite_engine: sa.Engine, binds: str
) -> None:
    books, authors = two_databases(create_tables, sqlite_engine)
    seed(books, authors, binds)
    with Session(binds=BINDS[binds](books, authors)) as session, audit_context(actor="bob"):
        session.execute(update(Book).where(Book.id == 1).values(title="Dune (bulk)"))
        session.execute(insert(Author), [{"id": 2, "name": "Le Guin"}, {"id": 3, "name": "Banks"}])
        session.execute(delete(Author).where(Author.id == 1))
        session.commit()
    book_tx, author_tx = tx_rows(books, BaseA.metadata), tx_rows(authors, BaseB.metadata)
    assert [actor for _, actor in book_tx] == ["alice", "bob"]
    assert [actor for _, actor in author_tx] == ["alice", "bob"]
    assert history_rows(books, Book, "title") == [
        ("insert", book_tx[0][0], "Dune"),
        ("update", book_tx[1][0], "Dune (bulk)"),
    ]
    assert sorted(history_rows(authors, Author, "name")) == sorted(
        [
            ("insert", author_tx[0][0], "Herbert"),
            ("delete", author_tx[1][0], "Herbert"),
            ("insert", author_tx[1][0], "Le Guin"),
            ("insert", author_tx[1][0], "Banks"),
        ]
    )


@pytest.mark.parametrize("binds", list(BINDS))
def test_rollback_leaves_history_in_neither_database(
    create_tables: Tables, sqlite_engine: sa.Engine, binds: str
) -> None:
    books, authors = two_databases(create_tables, sqlite_engine)
    seed(books, authors, binds)
    before = (
        tx_rows(books, BaseA.metadata),
        tx_rows(authors, BaseB.metadata),
        history_rows(books, Book, "title"),
        history_rows(authors, Author, "name"),
    )
    with Session(binds=BINDS[binds](books, authors)) as session, audit_context(actor="bob"):
        book, author = session.get(Book, 1), session.get(Author, 1)
        assert book is not None and author is not None
        book.title = "gone"
        author.name = "gone"
        session.add_all([Book(id=2, title="gone"), Author(id=2, name="gone")])
        session.flush()
        # Reading inside the transaction writes what is pending (see write_pending): still
        # rolled back with the rest.
        assert len(history(session, Book, 1)) == 2
        assert len(history(session, Author, 1)) == 2
        session.rollback()
    after = (
        tx_rows(books, BaseA.metadata),
        tx_rows(authors, BaseB.metadata),
        history_rows(books, Book, "title"),
        history_rows(authors, Author, "name"),
    )
    assert after == before
    assert live_value(books, Book, "title") == ["Dune"]
    assert live_value(authors, Author, "name") == ["Herbert"]


@pytest.mark.parametrize("binds", list(BINDS))
def test_savepoint_rolled_back_in_both_databases_leaves_no_history(
    create_tables: Tables, sqlite_engine: sa.Engine, binds: str
) -> None:
    books, authors = two_databases(create_tables, sqlite_engine)
    seed(books, authors, binds)
    with Session(binds=BINDS[binds](books, authors)) as session, audit_context(actor="bob"):
        book, author = session.get(Book, 1), session.get(Author, 1)
        assert book is not None and author is not None
        book.title = "kept"
        session.flush()
        savepoint = session.begin_nested()
        book.title = "dropped"
        author.name = "dropped"
        session.flush()
        savepoint.rollback()
        author.name = "kept"
        session.commit()
    assert [row[2] for row in history_rows(books, Book, "title")] == ["Dune", "kept"]
    assert [row[2] for row in history_rows(authors, Author, "name")] == ["Herbert", "kept"]
    assert [actor for _, actor in tx_rows(books, BaseA.metadata)] == ["alice", "bob"]
    assert [actor for _, actor in tx_rows(authors, BaseB.metadata)] == ["alice", "bob"]


def test_same_models_in_two_databases_with_a_session_for_each(
    create_tables: Tables, sqlite_engine: sa.Engine
) -> None:
    """Book's tables exist in both databases; each session is bound to one by the Base."""
    first = sqlite_engine
    BaseA.metadata.create_all(first)
    second = create_tables(BaseA.metadata)
    with Session(binds={BaseA: first}) as one, Session(binds={BaseA: second}) as two:
        with audit_context(actor="one"):
            one.add(Book(id=1, title="first"))
            one.flush()
        with audit_context(actor="two"):
            two.add(Book(id=1, title="second"))
            two.flush()
            two.commit()
        one.commit()
        with audit_context(actor="two"):
            book = two.get(Book, 1)
            assert book is not None
            book.title = "second, revised"
            two.commit()

        assert [v.state["title"] for v in history(one, Book, 1)] == ["first"]
        assert [v.state["title"] for v in history(two, Book, 1)] == ["second", "second, revised"]
        assert [v.transaction.actor for v in history(two, Book, 1) if v.transaction] == [
            "two",
            "two",
        ]
        one.commit()
        two.commit()

    assert [r[2] for r in history_rows(first, Book, "title")] == ["first"]
    assert [actor for _, actor in tx_rows(first, BaseA.metadata)] == ["one"]
    assert [r[2] for r in history_rows(second, Book, "title")] == ["second", "second, revised"]
    assert [actor for _, actor in tx_rows(second, BaseA.metadata)] == ["two", "two"]


def test_models_of_one_metadata_bound_to_two_databases(
    create_tables: Tables, sqlite_engine: sa.Engine
) -> None:
    """One MetaData, hence one transaction table definition, present in both databases: each
    database gets its own transaction row for the part of the transaction it holds."""
    notes = sqlite_engine
    Shared.metadata.create_all(notes)
    tags = create_tables(Shared.metadata)
    with Session(binds={Note: notes, Tag: tags}) as session:
        with audit_context(actor="alice"):
            session.add_all([Note(id=1, text="hello"), Tag(id=1, label="greeting")])
            session.commit()
        with audit_context(actor="bob"):
            note, tag = session.get(Note, 1), session.get(Tag, 1)
            assert note is not None and tag is not None
            note.text = "hello again"
            tag.label = "salutation"
            session.commit()
        assert [v.state["text"] for v in history(session, Note, 1)] == ["hello", "hello again"]
        assert [v.transaction.actor for v in history(session, Tag, 1) if v.transaction] == [
            "alice",
            "bob",
        ]
        session.commit()

    note_tx, tag_tx = tx_rows(notes, Shared.metadata), tx_rows(tags, Shared.metadata)
    assert [actor for _, actor in note_tx] == ["alice", "bob"]
    assert [actor for _, actor in tag_tx] == ["alice", "bob"]
    assert history_rows(notes, Note, "text") == [
        ("insert", note_tx[0][0], "hello"),
        ("update", note_tx[1][0], "hello again"),
    ]
    assert history_rows(tags, Tag, "label") == [
        ("insert", tag_tx[0][0], "greeting"),
        ("update", tag_tx[1][0], "salutation"),
    ]
    # Neither database holds the other model's rows or history.
    assert history_rows(notes, Tag, "label") == []
    assert history_rows(tags, Note, "text") == []
    assert live_value(notes, Tag, "label") == []
    assert live_value(tags, Note, "text") == []
