"""Append-only history, enforced by the database, on SQLite, PostgreSQL and MariaDB.

``create_all`` installs triggers on the history and transaction tables that refuse UPDATE and
DELETE (and TRUNCATE on PostgreSQL): through SQLAlchemy as :class:`AppendOnlyError` naming the
table, through the bare driver with the database's message naming it. ``maintenance()`` lets one
connection's transaction through, for the block only; nothing leaks to other connections, to a
later transaction or to the next user of a pooled connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import versioning
from versioning import AppendOnlyError, Versioned, history, history_table, restore
from versioning.append_only import _message, is_append_only, maintenance
from versioning.schema import TRANSACTION_TABLE

from helpers import another_schema, count, ops

Tables = Callable[[sa.MetaData], sa.Engine]


class Base(DeclarativeBase):
    pass


class Note(Versioned, Base):
    __tablename__ = "ao_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(50))


NOTES = history_table(Note)
TRANSACTIONS = versioning.transaction_table(Base.metadata)


def _two_notes(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add_all([Note(id=1, text="one"), Note(id=2, text="two")])
        session.commit()


def _changes(engine: sa.Engine, table: sa.Table) -> list[tuple[str, sa.Executable]]:
    """An UPDATE and a DELETE of the table's first row (ids carry on from earlier tests)."""
    key = table.c.versioning_id if table is NOTES else table.c.id
    with engine.connect() as connection:
        first = connection.scalar(sa.select(sa.func.min(key)))
    assert first is not None
    return [
        ("UPDATE", sa.update(table).where(key == first).values({key: first + 1000})),
        ("DELETE", sa.delete(table).where(key == first)),
    ]


@pytest.mark.parametrize("table", [NOTES, TRANSACTIONS], ids=["history", "transaction"])
def test_update_and_delete_are_refused_through_the_orm_and_core(
    create_tables: Tables, table: sa.Table
) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    for operation, statement in _changes(engine, table):
        with Session(engine) as session, pytest.raises(AppendOnlyError) as raised:
            session.execute(statement)
        assert (raised.value.table, raised.value.operation) == (table.name, operation)
        message = str(raised.value)
        assert f"cannot {operation} rows of {table.name!r}" in message
        assert "append-only" in message and "maintenance(connection)" in message
        with pytest.raises(AppendOnlyError, match=table.name), engine.begin() as connection:
            connection.execute(statement)
    assert count(engine, NOTES) == 2 and count(engine, TRANSACTIONS) == 1


def test_the_bare_driver_gets_the_databases_message_naming_the_table(
    create_tables: Tables,
) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    for sql in (f"UPDATE {NOTES.name} SET text = 'x'", f"DELETE FROM {TRANSACTION_TABLE}"):
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            with pytest.raises(Exception) as raised:  # noqa: PT011 - each driver has its own
                cursor.execute(sql)
            assert not isinstance(raised.value, versioning.VersioningError)
            table = sql.split()[1 if sql.startswith("UPDATE") else 2]
            assert f"versioning append-only: table {table} refuses" in str(raised.value)
            raw.rollback()
        finally:
            raw.close()


@pytest.mark.backends("postgresql")
def test_truncate_is_refused_on_postgresql(create_tables: Tables) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    for table in (NOTES, TRANSACTIONS):
        name = table.name
        refused = pytest.raises(AppendOnlyError, match=f"TRUNCATE rows of '{name}'")
        with refused, engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {name} CASCADE")
    assert count(engine, NOTES) == 2


def test_maintenance_lets_its_transaction_through_for_the_block_only(
    create_tables: Tables,
) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    with engine.begin() as connection:
        with maintenance(connection):
            connection.execute(sa.update(NOTES).where(NOTES.c.id == 1).values(text="changed"))
            with maintenance(connection):  # blocks nest
                pass
            connection.execute(sa.delete(NOTES).where(NOTES.c.id == 1))
        with pytest.raises(AppendOnlyError), connection.begin_nested():
            connection.execute(sa.delete(NOTES))
    assert count(engine, NOTES) == 1


@pytest.mark.backends("postgresql", "mariadb")
def test_maintenance_is_never_on_for_another_connection(create_tables: Tables) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    with engine.begin() as connection, maintenance(connection):
        connection.execute(sa.update(NOTES).where(NOTES.c.id == 1).values(text="changed"))
        with pytest.raises(AppendOnlyError), engine.begin() as other:
            other.execute(sa.update(NOTES).where(NOTES.c.id == 2).values(text="changed"))


def test_a_rollback_or_a_commit_inside_the_block_turns_it_off(create_tables: Tables) -> None:
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    change = sa.update(NOTES).where(NOTES.c.id == 1).values(text="changed")
    with engine.connect() as connection:
        for end in (connection.rollback, connection.commit):
            with maintenance(connection):
                connection.execute(change)
                end()
                with pytest.raises(AppendOnlyError):
                    connection.execute(change)
                connection.rollback()
    with engine.connect() as connection:  # the change before the commit, only
        texts = connection.scalars(sa.select(NOTES.c.text).order_by(NOTES.c.id)).all()
        assert texts == ["changed", "two"]


def test_an_error_inside_the_block_leaves_nothing_on(create_tables: Tables) -> None:
    """Caught outside the block, the transaction goes on without the switch."""
    engine = create_tables(Base.metadata)
    _two_notes(engine)
    change = sa.update(NOTES).where(NOTES.c.id == 1).values(text="changed")
    with engine.connect() as connection:
        with pytest.raises(RuntimeError), maintenance(connection):  # noqa: PT012
            connection.execute(change)
            raise RuntimeError("a bug in the maintenance code")
        with pytest.raises(AppendOnlyError):
            connection.execute(change)
        connection.rollback()


@pytest.mark.backends("mariadb")
def test_a_pooled_connection_is_never_handed_on_with_the_switch_on(engine: sa.Engine) -> None:
    """MariaDB's switch is a session variable: reset at the block's end, and at check-in if that
    reset could not run."""
    pooled = sa.create_engine(engine.url, pool_size=1, max_overflow=0)
    try:
        with pooled.connect() as connection:
            with pytest.raises(RuntimeError), maintenance(connection):
                raise RuntimeError("a bug in the maintenance code")
            first = connection.connection.dbapi_connection
        # As if the block's own reset had failed: the variable is still set when checked in.
        with pooled.connect() as connection:
            assert connection.connection.dbapi_connection is first
            assert connection.exec_driver_sql("SELECT @versioning_maintenance").scalar() is None
            connection.info["versioning_maintenance_set"] = True
            connection.exec_driver_sql("SET @versioning_maintenance = 1")
        with pooled.connect() as connection:
            assert connection.connection.dbapi_connection is first
            assert connection.exec_driver_sql("SELECT @versioning_maintenance").scalar() is None
    finally:
        pooled.dispose()


def test_create_all_and_drop_all_repeat(engine: sa.Engine) -> None:
    class Own(DeclarativeBase):
        pass

    class Page(Versioned, Own):
        __tablename__ = "ao_pages"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)

    try:
        for _ in range(2):
            Own.metadata.create_all(engine)
            with Session(engine) as session:
                session.add(Page(id=1))
                session.commit()
            refused = pytest.raises(AppendOnlyError, match="ao_pages_history")
            with refused, engine.begin() as connection:
                connection.execute(sa.delete(history_table(Page)))
            Own.metadata.drop_all(engine)
            assert not {"ao_pages", "ao_pages_history"} & set(sa.inspect(engine).get_table_names())
        if engine.dialect.name == "postgresql":  # the shared function went with the last table
            with engine.connect() as connection:
                function = "SELECT to_regprocedure('versioning_append_only()')"
                assert connection.exec_driver_sql(function).scalar() is None
    finally:
        Own.metadata.drop_all(engine)
        Own.registry.dispose()


@pytest.mark.backends("sqlite")
def test_sqlite_triggers_are_only_ever_missing_inside_the_blocks_transaction(
    tmp_path: Path,
) -> None:
    """SQLite's maintenance drops the triggers in its transaction: another connection sees them
    throughout, and the block's end, a commit or a rollback puts them back — also with pysqlite's
    default transaction handling (no BEGIN before DDL)."""
    path = tmp_path / "plain.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    _two_notes(engine)

    def triggers() -> int:
        import sqlite3

        with contextlib.closing(sqlite3.connect(path)) as other:
            query = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
            return int(other.execute(query).fetchone()[0])

    # UPDATE and DELETE on each append-only table: history, transaction and integrity tables.
    expected = 2 * sum(1 for t in Base.metadata.tables.values() if is_append_only(t))
    assert expected >= 10 and triggers() == expected
    change = sa.update(NOTES).where(NOTES.c.id == 1).values(text="changed")
    try:
        for end in ("block", "commit", "rollback"):
            with engine.connect() as connection:
                with maintenance(connection):
                    connection.execute(change)
                    assert triggers() == expected
                    if end != "block":
                        getattr(connection, end)()
                        assert triggers() == expected
                if end == "block":
                    with pytest.raises(AppendOnlyError):
                        connection.execute(change)
                connection.rollback()
            assert triggers() == expected
    finally:
        engine.dispose()


class LongBase(DeclarativeBase):
    pass


class Long(Versioned, LongBase):
    """A history table name near the databases' limits (PostgreSQL 63, MariaDB 64 characters):
    its trigger names are shortened, and its refusal still names it."""

    __tablename__ = "ao_" + "x" * 47
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


def test_a_table_with_a_long_name_is_append_only_too(create_tables: Tables) -> None:
    engine = create_tables(LongBase.metadata)
    with Session(engine) as session:
        session.add(Long(id=1))
        session.commit()
        name = history_table(Long).name
        with pytest.raises(AppendOnlyError) as raised:
            session.execute(sa.delete(history_table(Long)))
        assert raised.value.table == name and len(name) == 58


def test_messages_fit_mariadb_signal_limit() -> None:
    assert len(_message("t" * 64, "UPDATE", 128)) <= 128
    assert _message("t" * 64, "UPDATE", 128).startswith("versioning append-only: table ttt")
    assert _message("notes_history", "DELETE") == (
        "versioning append-only: table notes_history refuses DELETE (history is append-only; "
        "only versioning.append_only.maintenance() may change it)"
    )
    assert _message("notes_history", "DELETE", 128) == (
        "versioning append-only: table notes_history refuses DELETE "
        "(see versioning.append_only.maintenance)"
    )


# --- a model in another schema ------------------------------------------------------------------

OTHER = f"versioning_ao_{os.getpid()}"


@pytest.fixture
def other_schema(engine: sa.Engine, tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on the test database where the schema :data:`OTHER` exists (SQLite: attached)."""
    with another_schema(engine, tmp_path, OTHER) as other:
        yield other


def test_tables_in_another_schema_are_append_only_too(other_schema: sa.Engine) -> None:
    class Own(DeclarativeBase):
        pass

    class Remote(Versioned, Own):
        __tablename__ = "ao_remote"
        __table_args__ = {"schema": OTHER}
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        text: Mapped[str] = mapped_column(sa.String(20))

    remote_history = history_table(Remote)
    try:
        Own.metadata.create_all(other_schema)
        with Session(other_schema) as session:
            session.add(Remote(id=1, text="a"))
            session.commit()
        refused = pytest.raises(AppendOnlyError, match="ao_remote_history")
        with refused, other_schema.begin() as connection:
            connection.execute(sa.update(remote_history).values(text="b"))
        with other_schema.begin() as connection, maintenance(connection):
            connection.execute(sa.update(remote_history).values(text="b"))
        with Session(other_schema) as session:
            assert history(session, Remote, 1)[0].state["text"] == "b"
    finally:
        Own.metadata.drop_all(other_schema)
        with other_schema.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {TRANSACTION_TABLE}"))
        Own.registry.dispose()


# --- least privilege ----------------------------------------------------------------------------


@pytest.fixture
def restricted(create_tables: Tables) -> Iterator[sa.Engine]:
    """An engine whose role may only INSERT and SELECT the append-only tables (history,
    transaction, integrity) and use the live table as an application does."""
    engine = create_tables(Base.metadata)
    role = f"versioning_ro_{os.getpid()}"
    tables = Base.metadata.sorted_tables
    if engine.dialect.name == "postgresql":
        user, qualify = role, ""
        setup = [f"CREATE ROLE {role} LOGIN"]
        teardown = [f"DROP OWNED BY {role}", f"DROP ROLE {role}"]
    else:
        user = f"'{role}'@'%%'"  # pymysql formats even a statement without parameters
        qualify = f"{engine.url.database}."
        setup = [f"CREATE USER {user}"]
        teardown = [f"DROP USER {user}"]
    for table in tables:
        rights = "SELECT, INSERT" if is_append_only(table) else "SELECT, INSERT, UPDATE, DELETE"
        setup.append(f"GRANT {rights} ON {qualify}{table.name} TO {user}")
    if engine.dialect.name == "postgresql":
        setup.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}")
    url = engine.url.set(username=role)
    with engine.begin() as connection:
        for statement in setup:
            connection.exec_driver_sql(statement)
    limited = sa.create_engine(url)
    try:
        yield limited
    finally:
        limited.dispose()
        with engine.begin() as connection:
            for statement in teardown:
                connection.exec_driver_sql(statement)


@pytest.mark.backends("postgresql", "mariadb")
def test_the_write_path_needs_only_insert_and_select_on_history(restricted: sa.Engine) -> None:
    with Session(restricted) as session:
        session.add_all([Note(id=1, text="one"), Note(id=2, text="two")])
        session.commit()
        session.get(Note, 1).text = "changed"
        session.commit()
        session.execute(sa.update(Note).values(text="bulk"))
        session.commit()
        first = history(session, Note, 1)[0]
        session.rollback()
        restore(session, first)
        session.commit()
        session.delete(session.get(Note, 2))
        session.commit()
        assert [v.value for v in ops(history(session, Note, 1))] == [
            "insert",
            "update",
            "update",
            "update",
        ]
        assert [v.value for v in ops(history(session, Note, 2))] == ["insert", "update", "delete"]
        # A restore after a history read in the same transaction (the transaction row is
        # written early, and the restore's reason goes to its digest row: no UPDATE).
        session.get(Note, 1).text = "again"
        versions = history(session, Note, 1)
        restore(session, versions[0])
        session.commit()
        assert history(session, Note, 1)[-1].transaction.reason.startswith("restore Note 1")
        # Sealing and verifying need no more than that either.
        assert versioning.seal(session, metadata=Base.metadata) is not None
        session.commit()
        report = versioning.verify(session, metadata=Base.metadata)
        assert report.ok and report.unsealed == 0, report.problems
    # The role cannot change history at all: the database refuses before any trigger runs.
    with pytest.raises(sa.exc.DBAPIError), restricted.begin() as connection:
        connection.execute(sa.delete(NOTES))


def test_maintenance_takes_a_connection() -> None:
    refused = pytest.raises(versioning.ArgumentError, match=r"session\.connection\(\)")
    with refused, maintenance(Session()):  # type: ignore[arg-type]
        pass
