"""Inserts and upserts are recorded exactly as the database did them, or refused before they run.

Keys computed by SQL (a subquery, ``Sequence.next_value()``) are learnt through ``RETURNING`` and
never evaluated twice; upserts whose update changes a unique column are followed by primary key;
upserts that could move a record to another key are refused; SQLite ``INSERT OR REPLACE`` records
the rows it deleted; prefixes and values versioning cannot account for are refused; a row another
transaction commits between versioning's read and the statement is recorded exactly (PostgreSQL:
``RETURNING xmax = 0``, with a SAVEPOINT rolled back when an upsert updated such a row; MariaDB at
REPEATABLE READ: the read's gap locks make the other transaction wait) or refused (MariaDB at READ
COMMITTED). Every refusal is checked for its message and for leaving no data and no history.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, func, insert, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import Operation, Versioned, audit_context, history_table
from versioning.inserts import ConcurrentInsertError

from helpers import count, ops, read

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    """Client keys (no autoincrement), a unique column."""

    __tablename__ = "ix_notes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(sa.String(50))
    code: Mapped[str | None] = mapped_column(sa.String(20), unique=True)


class Plain(Versioned, Base):
    """An integer primary key and no other unique key."""

    __tablename__ = "ix_plain"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(sa.String(50))


NOTE_SEQ = sa.Sequence("ix_seq_notes_id")


class SeqNote(Versioned, Base):
    """A key from a named sequence (PostgreSQL, MariaDB)."""

    __tablename__ = "ix_seq_notes"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(sa.String(50))


TX = Base.metadata.tables[versioning.TRANSACTION_TABLE]


# --- helpers ---------------------------------------------------------------------------------


def tables(create_tables: CreateTables, backend: str) -> sa.Engine:
    engine = create_tables(Base.metadata)
    if backend != "sqlite":
        with engine.begin() as connection:
            NOTE_SEQ.drop(connection, checkfirst=True)
            NOTE_SEQ.create(connection)
    return engine


def live(engine: sa.Engine, model: type[Any], *columns: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        statement = select(*[getattr(model, c) for c in columns]).order_by(model.id)
        return [tuple(row) for row in connection.execute(statement)]


def dialect_insert(backend: str, model: type[Any]) -> Any:
    if backend == "postgresql":
        return postgresql.insert(model)
    if backend == "sqlite":
        return sqlite.insert(model)
    return mysql.insert(model)


def upsert(backend: str, model: type[Any], target: list[str], values: dict[str, Any]) -> Any:
    """``ON CONFLICT (target) DO UPDATE SET`` (MariaDB ``ON DUPLICATE KEY UPDATE``) ``values``.

    A value that is a column name means "the value the row brought" (``excluded``/``inserted``).
    """
    statement = dialect_insert(backend, model)
    new = statement.inserted if backend == "mariadb" else statement.excluded
    sets = {k: getattr(new, v[1:]) if str(v).startswith("@") else v for k, v in values.items()}
    if backend == "mariadb":
        return statement.on_duplicate_key_update(sets)
    return statement.on_conflict_do_update(index_elements=target, set_=sets)


def seed(sessions: Sessions) -> None:
    """Notes 1 (a, code A) and 2 (b, code B), by actor 'seed'."""
    with sessions() as session, audit_context(actor="seed"):
        session.add_all([Note(id=1, body="a", code="A"), Note(id=2, body="b", code="B")])
        session.commit()


def nothing_written(engine: sa.Engine, rows: list[tuple[Any, ...]], versions: int) -> None:
    assert live(engine, Note, "id", "body", "code") == rows
    assert count(engine, history_table(Note)) == versions


# --- keys computed by SQL --------------------------------------------------------------------


def test_key_computed_by_a_subquery_is_recorded_once(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    engine = tables(create_tables, backend)
    seed(sessions)
    next_id = select(func.max(Note.id) + 1).scalar_subquery()
    with sessions() as session, audit_context(actor="sub"):
        session.execute(insert(Note).values(id=next_id, body="c"))
        session.commit()
    assert live(engine, Note, "id", "body") == [(1, "a"), (2, "b"), (3, "c")]
    [version] = read(sessions, Note, 3)
    assert version.operation is INSERT
    assert dict(version.state) == {"id": 3, "body": "c", "code": None}
    assert version.transaction is not None and version.transaction.actor == "sub"
    assert count(engine, history_table(Note)) == 3


@pytest.mark.backends("postgresql", "mariadb")
def test_key_from_a_sequence_is_recorded_and_the_sequence_advances_once(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    engine = tables(create_tables, backend)
    with sessions() as session:
        session.execute(insert(SeqNote).values(id=NOTE_SEQ.next_value(), body="first"))
        session.execute(insert(SeqNote).values(id=NOTE_SEQ.next_value(), body="second"))
        session.commit()
    assert live(engine, SeqNote, "id", "body") == [(1, "first"), (2, "second")]
    assert [dict(v.state) for v in read(sessions, SeqNote, 1)] == [{"id": 1, "body": "first"}]
    assert [dict(v.state) for v in read(sessions, SeqNote, 2)] == [{"id": 2, "body": "second"}]
    with engine.begin() as connection:  # nextval ran exactly once per row
        assert connection.scalar(NOTE_SEQ.next_value()) == 3


def test_plain_insert_with_client_keys_reads_nothing_before(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    """A plain INSERT cannot meet an existing row: no locking read, one read back."""
    engine = tables(create_tables, backend)
    seen: list[str] = []

    def collect(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.upper())

    with sessions() as session:
        session.connection()
        event.listen(engine, "before_cursor_execute", collect)
        try:
            session.execute(insert(Note), [{"id": i, "body": "n"} for i in range(1, 6)])
        finally:
            event.remove(engine, "before_cursor_execute", collect)
        session.commit()
    selects = [s for s in seen if s.lstrip().startswith("SELECT")]
    assert len(selects) == 1 and "FOR UPDATE" not in selects[0]
    assert count(engine, history_table(Note)) == 5


# --- upserts that change keys ----------------------------------------------------------------


def test_upsert_changing_the_conflict_column_is_recorded_as_an_update(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    """``ON CONFLICT (code) DO UPDATE SET code = 'Z'``: the row is followed by its key."""
    engine = tables(create_tables, backend)
    seed(sessions)
    statement = upsert(backend, Note, ["code"], {"code": "Z", "body": "@body"})
    with sessions() as session, audit_context(actor="mover"):
        session.execute(statement, [{"id": 9, "code": "A", "body": "moved"}])
        session.commit()
    assert live(engine, Note, "id", "body", "code") == [(1, "moved", "Z"), (2, "b", "B")]
    versions = read(sessions, Note, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[1].changes) == {"body": ("a", "moved"), "code": ("A", "Z")}
    assert read(sessions, Note, 9) == []


@pytest.mark.parametrize("key", ["@id", 7])
def test_upsert_that_may_move_a_record_to_another_key_is_refused(
    key: Any, create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    engine = tables(create_tables, backend)
    seed(sessions)
    statement = upsert(backend, Note, ["code"], {"id": key, "body": "@body"})
    with sessions() as session:
        with pytest.raises(versioning.VersioningError) as caught:
            session.execute(statement, [{"id": 9, "code": "A", "body": "moved"}])
        session.commit()
    message = str(caught.value)
    assert "Note" in message and "primary key" in message and "unit of work" in message
    assert "Nothing was written" in message
    nothing_written(engine, [(1, "a", "A"), (2, "b", "B")], 2)


def test_upsert_assigning_every_column_on_a_numeric_key_is_recorded(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    """``SET id = excluded.id, ...`` when the row can only conflict on its integer key."""
    engine = tables(create_tables, backend)
    with sessions() as session:
        session.add(Plain(id=1, body="a"))
        session.commit()
    statement = upsert(backend, Plain, ["id"], {"id": "@id", "body": "@body"})
    with sessions() as session:
        session.execute(statement, [{"id": 1, "body": "a2"}, {"id": 2, "body": "b"}])
        session.commit()
    assert live(engine, Plain, "id", "body") == [(1, "a2"), (2, "b")]
    one = read(sessions, Plain, 1)
    assert ops(one) == [INSERT, UPDATE] and dict(one[1].changes) == {"body": ("a", "a2")}
    assert ops(read(sessions, Plain, 2)) == [INSERT]


def test_upsert_returning_gives_the_caller_only_its_columns(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    tables(create_tables, backend)
    seed(sessions)
    statement = upsert(backend, Note, ["id"], {"body": "@body"}).returning(Note.body)
    with sessions() as session:
        rows = session.execute(statement, [{"id": 1, "body": "a2"}, {"id": 3, "body": "c"}])
        assert sorted(tuple(r) for r in rows) == [("a2",), ("c",)]
        session.commit()
    assert ops(read(sessions, Note, 1)) == [INSERT, UPDATE]
    assert ops(read(sessions, Note, 3)) == [INSERT]


# --- prefixes: IGNORE, REPLACE and the rest --------------------------------------------------


@pytest.mark.backends("sqlite")
def test_insert_or_replace_records_the_rows_it_deleted(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Row 1 (code B) replaces note 1 (same key) and note 2 (same code): two deletes, one insert."""
    engine = tables(create_tables, "sqlite")
    seed(sessions)
    with sessions() as session, audit_context(actor="replacer"):
        session.execute(
            insert(Note).prefix_with("OR REPLACE"), [{"id": 1, "body": "new", "code": "B"}]
        )
        session.commit()
    assert live(engine, Note, "id", "body", "code") == [(1, "new", "B")]
    one, two = read(sessions, Note, 1), read(sessions, Note, 2)
    assert ops(one) == [INSERT, DELETE, INSERT]
    assert dict(one[1].state) == {"id": 1, "body": "a", "code": "A"}
    assert dict(one[2].state) == {"id": 1, "body": "new", "code": "B"}
    assert ops(two) == [INSERT, DELETE]
    assert dict(two[1].state) == {"id": 2, "body": "b", "code": "B"}
    assert one[2].transaction_id == two[1].transaction_id


@pytest.mark.backends("sqlite")
def test_insert_or_replace_of_a_new_row_records_only_the_insert(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = tables(create_tables, "sqlite")
    seed(sessions)
    with sessions() as session:
        session.execute(insert(Note).prefix_with("OR REPLACE").values(id=3, body="c", code="C"))
        session.commit()
    assert ops(read(sessions, Note, 3)) == [INSERT]
    assert count(engine, history_table(Note)) == 3


@pytest.mark.backends("sqlite")
def test_insert_or_replace_with_rows_sharing_a_key_is_refused(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = tables(create_tables, "sqlite")
    seed(sessions)
    with sessions() as session:
        with pytest.raises(versioning.VersioningError, match="share a unique key"):
            session.execute(
                insert(Note).prefix_with("OR REPLACE"),
                [{"id": 5, "body": "x", "code": "Q"}, {"id": 6, "body": "y", "code": "Q"}],
            )
        session.commit()
    nothing_written(engine, [(1, "a", "A"), (2, "b", "B")], 2)


@pytest.mark.backends("sqlite")
def test_insert_or_fail_is_refused(create_tables: CreateTables, sessions: Sessions) -> None:
    """OR FAIL keeps the rows before a failing one: they would have no history."""
    engine = tables(create_tables, "sqlite")
    seed(sessions)
    with sessions() as session:
        with pytest.raises(versioning.VersioningError, match="OR FAIL") as caught:
            session.execute(insert(Note).prefix_with("OR FAIL"), [{"id": 5, "body": "x"}])
        assert "Nothing was written" in str(caught.value)
        session.commit()
    nothing_written(engine, [(1, "a", "A"), (2, "b", "B")], 2)


def ignore(backend: str) -> Any:
    if backend == "sqlite":
        return insert(Note).prefix_with("OR IGNORE")
    if backend == "mariadb":
        return insert(Note).prefix_with("IGNORE")
    return postgresql.insert(Note).on_conflict_do_nothing()


def test_ignore_with_a_unique_value_only_the_database_knows_is_refused(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    """``code = upper('a')`` may meet note 1: the row it would skip cannot be read before."""
    engine = tables(create_tables, backend)
    seed(sessions)
    with sessions() as session:
        with pytest.raises(versioning.VersioningError) as caught:
            session.execute(ignore(backend).values(id=5, body="x", code=func.upper("a")))
        session.commit()
    message = str(caught.value)
    assert "Note" in message and "'code'" in message and "plain values" in message
    nothing_written(engine, [(1, "a", "A"), (2, "b", "B")], 2)


def test_ignore_records_rows_skipped_on_another_unique_key_as_nothing(
    create_tables: CreateTables, sessions: Sessions, backend: str
) -> None:
    """A new key whose ``code`` an existing row has is skipped: nothing recorded for it."""
    engine = tables(create_tables, backend)
    seed(sessions)
    with sessions() as session:
        session.execute(
            ignore(backend),
            [{"id": 5, "body": "dup", "code": "A"}, {"id": 6, "body": "new", "code": "F"}],
        )
        session.commit()
    assert live(engine, Note, "id", "code") == [(1, "A"), (2, "B"), (6, "F")]
    assert read(sessions, Note, 5) == []
    assert ops(read(sessions, Note, 1)) == [INSERT]
    assert ops(read(sessions, Note, 6)) == [INSERT]


# --- a row another transaction commits between the read and the statement -------------------


@contextmanager
def other_writer_commits_first(
    engine: sa.Engine, marker: str, write: Callable[[], None]
) -> Iterator[list[BaseException]]:
    """Run ``write`` (another transaction) just before the first statement containing ``marker``."""
    errors: list[BaseException] = []
    done = False

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal done
        if not done and marker in statement.upper():
            done = True
            try:
                write()
            except BaseException as error:
                errors.append(error)

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield errors
    finally:
        event.remove(engine, "before_cursor_execute", hook)


@pytest.fixture
def other_engine(engine: sa.Engine) -> Iterator[sa.Engine]:
    """A second engine on the test database, for the other transaction."""
    other = sa.create_engine(engine.url)
    yield other
    other.dispose()


def _other_inserts(other: sa.Engine, body: str, lock_timeout: int | None = None) -> None:
    with Session(other) as session, audit_context(actor="other"):
        if lock_timeout is not None:
            session.execute(sa.text(f"SET SESSION innodb_lock_wait_timeout = {lock_timeout}"))
        session.add(Note(id=3, body=body, code="C"))
        session.commit()


@pytest.mark.backends("postgresql")
def test_upsert_updating_a_row_committed_meanwhile_is_rolled_back_and_refused(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    """READ COMMITTED: the read saw no row 3; another transaction commits it; DO UPDATE meets it.

    Its old values are unknown, so the statement is undone (SAVEPOINT) and refused: the row keeps
    the other transaction's values and its history only the other transaction's INSERT. The
    session's transaction goes on: what it wrote before still commits.
    """
    tables(create_tables, "postgresql")
    seed(sessions)
    statement = upsert("postgresql", Note, ["id"], {"body": "@body"})
    with sessions() as session, audit_context(actor="a"):
        session.add(Note(id=4, body="earlier", code="D"))
        session.flush()
        with other_writer_commits_first(
            engine, "ON CONFLICT", lambda: _other_inserts(other_engine, "theirs")
        ) as errors:
            with pytest.raises(ConcurrentInsertError) as caught:
                session.execute(statement, [{"id": 3, "body": "mine"}, {"id": 5, "body": "e"}])
            assert not errors
        message = str(caught.value)
        assert "Note" in message and "(3,)" in message and "retry" in message
        session.commit()
    assert live(engine, Note, "id", "body") == [
        (1, "a"),
        (2, "b"),
        (3, "theirs"),
        (4, "earlier"),
    ]
    three = read(sessions, Note, 3)
    assert ops(three) == [INSERT]
    assert three[0].transaction is not None and three[0].transaction.actor == "other"
    assert read(sessions, Note, 5) == []
    assert ops(read(sessions, Note, 4)) == [INSERT]


@pytest.mark.backends("postgresql")
def test_do_nothing_skipping_a_row_committed_meanwhile_records_nothing_for_it(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    tables(create_tables, "postgresql")
    seed(sessions)
    statement = postgresql.insert(Note).on_conflict_do_nothing()
    with sessions() as session, audit_context(actor="a"):
        with other_writer_commits_first(
            engine, "ON CONFLICT", lambda: _other_inserts(other_engine, "theirs")
        ) as errors:
            result = session.execute(statement, [{"id": 3, "body": "mine"}, {"id": 5, "body": "e"}])
            assert not errors
        assert [tuple(r) for r in result] == [(5,)]  # the key of the row it inserted
        session.commit()
    three = read(sessions, Note, 3)
    assert ops(three) == [INSERT] and dict(three[0].state)["body"] == "theirs"
    assert three[0].transaction is not None and three[0].transaction.actor == "other"
    five = read(sessions, Note, 5)
    assert ops(five) == [INSERT]
    assert five[0].transaction is not None and five[0].transaction.actor == "a"


@pytest.mark.backends("mariadb")
def test_mariadb_repeatable_read_makes_the_other_transaction_wait(
    create_tables: CreateTables, sessions: Sessions, engine: sa.Engine, other_engine: sa.Engine
) -> None:
    """The locking read locks the missing key's gap: the other insert times out, ours is new."""
    tables(create_tables, "mariadb")
    seed(sessions)
    statement = upsert("mariadb", Note, ["id"], {"body": "@body"})
    with sessions() as session, audit_context(actor="a"):
        with other_writer_commits_first(
            engine, "ON DUPLICATE", lambda: _other_inserts(other_engine, "theirs", 1)
        ) as errors:
            session.execute(statement, [{"id": 3, "body": "mine", "code": "C"}])
        [error] = errors
        assert isinstance(error, OperationalError) and "1205" in str(error)
        session.commit()
    three = read(sessions, Note, 3)
    assert ops(three) == [INSERT] and dict(three[0].state)["body"] == "mine"
    assert three[0].transaction is not None and three[0].transaction.actor == "a"


@pytest.mark.backends("mariadb")
@pytest.mark.parametrize("shape", ["upsert", "ignore"])
def test_mariadb_read_committed_refuses_a_statement_that_may_insert(
    shape: str, create_tables: CreateTables, engine: sa.Engine
) -> None:
    """READ COMMITTED takes no gap locks: a row committed meanwhile could not be told apart."""
    tables(create_tables, "mariadb")
    committed = engine.execution_options(isolation_level="READ COMMITTED")
    with Session(engine) as session:
        session.add(Note(id=1, body="a", code="A"))
        session.commit()
    if shape == "upsert":
        statement = upsert("mariadb", Note, ["id"], {"body": "@body"})
    else:
        statement = insert(Note).prefix_with("IGNORE")
    with Session(committed) as session:
        with pytest.raises(versioning.VersioningError) as caught:
            session.execute(statement, [{"id": 1, "body": "a2"}, {"id": 3, "body": "c"}])
        message = str(caught.value)
        assert "READ COMMITTED" in message and "REPEATABLE READ" in message
        assert "Nothing was written" in message
        # Rows that all exist are locked by the read: such a statement is recorded exactly.
        session.execute(statement, [{"id": 1, "body": "a3"}])
        session.commit()
    assert live(engine, Note, "id", "body") == [(1, "a3" if shape == "upsert" else "a")]
    expected = [INSERT, UPDATE] if shape == "upsert" else [INSERT]
    with Session(engine) as session:
        assert ops(versioning.history(session, Note, 1)) == expected
    assert count(engine, history_table(Note)) == len(expected)
