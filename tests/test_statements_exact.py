"""Bulk ``update()``/``delete()`` record exactly the rows a statement changed, with true old values.

The rows a statement changes are not always the rows its ``WHERE`` clause selects when read
separately: single-table inheritance adds the discriminator, ``with_loader_criteria`` (as a
statement option or from a ``do_orm_execute`` hook) adds its criteria, MariaDB's ``LIMIT`` and
volatile criteria (``random()``) pick a subset, and under READ COMMITTED another transaction may
commit a matching row between the read and the statement. In every case the history must say
exactly what the database did: every changed row once, with its true old values, and no row that
did not change. Also covered: key sets beyond the drivers' bound-parameter limits, keys that need
quoting, composite keys, and ``version_id_col`` counters, which a bulk UPDATE bumps so that
optimistic locking keeps its promise. Every test runs on SQLite, PostgreSQL and MariaDB unless
marked otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, event, insert, select, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    ORMExecuteState,
    Session,
    mapped_column,
    with_loader_criteria,
)
from sqlalchemy.orm.exc import StaleDataError

import versioning
from versioning import Operation, Versioned, history_table

from helpers import count, ops, read

CreateTables = Callable[[sa.MetaData], sa.Engine]
Sessions = Callable[[], Session]

INSERT, UPDATE, DELETE = Operation.INSERT, Operation.UPDATE, Operation.DELETE
SYNC_SETTINGS = ["auto", "fetch", "evaluate", False]


class Base(DeclarativeBase):
    pass


class Staff(Versioned, Base):
    """Single-table inheritance: engineers and managers share one table."""

    __tablename__ = "sx_staff"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(20))
    name: Mapped[str] = mapped_column(sa.String(50))
    level: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "staff"}


class Engineer(Staff):
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Staff):
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Row(Versioned, Base):
    __tablename__ = "sx_rows"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(default=0)
    tag: Mapped[str] = mapped_column(sa.String(20), default="")
    active: Mapped[bool] = mapped_column(default=True)


class Named(Versioned, Base):
    """A string key that needs quoting when written into SQL."""

    __tablename__ = "sx_named"

    code: Mapped[str] = mapped_column(sa.String(30), primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


class Cell(Versioned, Base):
    __tablename__ = "sx_cells"

    x: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    y: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    n: Mapped[int] = mapped_column(default=0)


class Doc(Versioned, Base):
    """Optimistic locking with SQLAlchemy's own integer counter."""

    __tablename__ = "sx_docs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    body: Mapped[str] = mapped_column(sa.String(50), default="")
    ver: Mapped[int] = mapped_column()

    __mapper_args__ = {"version_id_col": ver}


def _next_even(version: int | None) -> int:
    return (version or 0) + 2


class EvenDoc(Versioned, Base):
    """Optimistic locking with a custom Python generator, which a bulk UPDATE cannot call."""

    __tablename__ = "sx_even_docs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    ver: Mapped[int] = mapped_column()

    __mapper_args__ = {"version_id_col": ver, "version_id_generator": _next_even}


class ServerDoc(Versioned, Base):
    """The version column is the database's business (``version_id_generator=False``)."""

    __tablename__ = "sx_server_docs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(sa.String(50))
    ver: Mapped[int] = mapped_column(server_default="1")

    __mapper_args__ = {"version_id_col": ver, "version_id_generator": False}


# --- helpers ---------------------------------------------------------------------------------


def sync(setting: Any) -> dict[str, Any]:
    return {"synchronize_session": setting}


def live_rows(engine: sa.Engine) -> dict[int, tuple[int, str]]:
    """Live ``Row`` records: id -> (n, tag)."""
    with engine.connect() as connection:
        rows = connection.execute(select(Row.id, Row.n, Row.tag).order_by(Row.id))
        return {row.id: (row.n, row.tag) for row in rows}


def history_rows(engine: sa.Engine, model: type[Any]) -> list[dict[str, Any]]:
    """Every history row of ``model``'s table, oldest first, as dicts."""
    table = history_table(model)
    with engine.connect() as connection:
        statement = select(table).order_by(table.c.versioning_id)
        return [dict(row._mapping) for row in connection.execute(statement)]


def seed_rows(sessions: Sessions, n: int, **values: Any) -> None:
    with sessions() as session:
        session.execute(insert(Row), [{"id": i, "n": i, **values} for i in range(1, n + 1)])
        session.commit()


Snapshot = tuple[dict[int, tuple[int, str]], int]


def snapshot(engine: sa.Engine) -> Snapshot:
    """The live ``Row`` records and the id of the last history row so far."""
    table = history_table(Row)
    with engine.connect() as connection:
        last = connection.scalar(select(sa.func.max(table.c.versioning_id))) or 0
    return live_rows(engine), int(last)


def assert_history_matches(engine: sa.Engine, snap: Snapshot, operation: Operation) -> set[int]:
    """Rows that changed since ``snap`` have exactly one new version, the others none.

    The new versions carry the true old and new values. Returns the ids that changed.
    """
    before, last = snap
    after = live_rows(engine)
    changed = {k for k in before if after.get(k) != before[k]}
    new = [row for row in history_rows(engine, Row) if row["versioning_id"] > last]
    assert sorted(row["id"] for row in new) == sorted(changed)
    for row in new:
        key = row["id"]
        assert row["versioning_operation"] is operation
        if operation is DELETE:
            assert key not in after
            assert (row["n"], row["tag"]) == before[key]
            continue
        assert (row["n"], row["tag"]) == after[key]
        (old_n, old_tag), (new_n, new_tag) = before[key], after[key]
        expected: dict[str, list[Any]] = {}
        if old_n != new_n:
            expected["n"] = [old_n, new_n]
        if old_tag != new_tag:
            expected["tag"] = [old_tag, new_tag]
        assert row["versioning_changes"] == expected
    return changed


# --- single-table inheritance ----------------------------------------------------------------


def seed_staff(sessions: Sessions) -> None:
    with sessions() as session:
        session.add_all(
            [
                Engineer(id=1, name="ada", level=3),
                Manager(id=2, name="max", level=3),
                Engineer(id=3, name="eve", level=1),
                Staff(id=4, name="sam", level=3),
            ]
        )
        session.commit()


def staff(engine: sa.Engine) -> dict[int, tuple[str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(select(Staff.id, Staff.name, Staff.level).order_by(Staff.id))
        return {row.id: (row.name, row.level) for row in rows}


@pytest.mark.parametrize("setting", SYNC_SETTINGS)
@pytest.mark.parametrize("where", [True, False])
def test_sti_delete_of_a_subclass_leaves_the_sibling_untouched_and_unrecorded(
    setting: Any, where: bool, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_staff(sessions)
    statement = delete(Engineer)
    if where:
        statement = statement.where(Engineer.level >= 3)
    with sessions() as session:
        result = session.execute(statement, execution_options=sync(setting))
        assert result.rowcount == (1 if where else 2)
        session.commit()
    remaining = {2, 3, 4} if where else {2, 4}
    assert set(staff(engine)) == remaining
    deleted = read(sessions, Staff, 1)
    assert ops(deleted) == [INSERT, DELETE]
    assert deleted[1].model is Engineer
    assert dict(deleted[1].state) == {"id": 1, "kind": "engineer", "name": "ada", "level": 3}
    for sibling in remaining:
        assert ops(read(sessions, Staff, sibling)) == [INSERT]
    assert count(engine, history_table(Staff)) == 4 + (4 - len(remaining))


@pytest.mark.parametrize("setting", SYNC_SETTINGS)
def test_sti_update_of_a_subclass_leaves_the_sibling_untouched_and_unrecorded(
    setting: Any, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_staff(sessions)
    with sessions() as session:
        result = session.execute(
            update(Manager).where(Staff.level >= 3).values(level=Staff.level + 1),
            execution_options=sync(setting),
        )
        assert result.rowcount == 1
        session.commit()
    assert staff(engine) == {1: ("ada", 3), 2: ("max", 4), 3: ("eve", 1), 4: ("sam", 3)}
    updated = read(sessions, Staff, 2)
    assert ops(updated) == [INSERT, UPDATE]
    assert updated[1].model is Manager
    assert dict(updated[1].changes) == {"level": (3, 4)}
    for other in (1, 3, 4):
        assert ops(read(sessions, Staff, other)) == [INSERT]


def test_sti_bulk_update_by_primary_key_records_what_the_database_did(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Keys of a sibling given to ``update(Engineer)``: the history follows the live rows."""
    engine = create_tables(Base.metadata)
    seed_staff(sessions)
    with sessions() as session:
        session.execute(update(Engineer), [{"id": 1, "level": 7}, {"id": 2, "level": 7}])
        session.commit()
    now = staff(engine)
    for key in (1, 2):
        versions = read(sessions, Staff, key)
        if now[key][1] == 7:
            assert ops(versions) == [INSERT, UPDATE]
            assert dict(versions[1].changes) == {"level": (3, 7)}
            assert versions[1].model is (Engineer if key == 1 else Manager)
        else:
            assert ops(versions) == [INSERT]
    assert now[1] == ("ada", 7)


# --- with_loader_criteria --------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_loader_criteria_given_as_a_statement_option(
    setting: Any, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 6)
    with sessions() as session:
        session.execute(update(Row).where(Row.id > 3).values(active=False))
        session.commit()
    before = snapshot(engine)
    only_active = with_loader_criteria(Row, Row.active.is_(True))
    with sessions() as session:
        result = session.execute(
            update(Row).where(Row.id >= 2).values(tag="bulk").options(only_active),
            execution_options=sync(setting),
        )
        assert result.rowcount == 2
        session.commit()
    assert assert_history_matches(engine, before, UPDATE) == {2, 3}
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(
            delete(Row).where(Row.id != 2).options(only_active), execution_options=sync(setting)
        )
        assert result.rowcount == 2
        session.commit()
    assert assert_history_matches(engine, before, DELETE) == {1, 3}
    assert set(live_rows(engine)) == {2, 4, 5, 6}


@pytest.fixture
def hide_inactive() -> Iterator[None]:
    """A ``do_orm_execute`` hook adding ``with_loader_criteria`` to every ORM statement."""

    def hook(orm: ORMExecuteState) -> None:
        if orm.is_select or orm.is_update or orm.is_delete:
            orm.statement = orm.statement.options(with_loader_criteria(Row, Row.active.is_(True)))

    event.listen(Session, "do_orm_execute", hook)
    yield
    event.remove(Session, "do_orm_execute", hook)


@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_loader_criteria_added_by_a_do_orm_execute_hook(
    setting: Any, create_tables: CreateTables, sessions: Sessions, hide_inactive: None
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 6)
    with sessions() as session:
        session.execute(update(Row).where(Row.id > 3).values(active=False))
        session.commit()
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(update(Row).values(n=Row.n * 10), execution_options=sync(setting))
        assert result.rowcount == 3
        session.commit()
    assert assert_history_matches(engine, before, UPDATE) == {1, 2, 3}
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(delete(Row).where(Row.id >= 3), execution_options=sync(setting))
        assert result.rowcount == 1
        session.commit()
    assert assert_history_matches(engine, before, DELETE) == {3}


def test_the_pre_read_is_marked_for_hooks_that_filter_only_reads(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A hook that filters SELECTs only can leave the library's read of the rows alone."""
    create_tables(Base.metadata)
    seed_rows(sessions, 2)
    seen: list[bool] = []

    def hook(orm: ORMExecuteState) -> None:
        if orm.is_select:
            seen.append(bool(orm.execution_options.get("versioning_pre_read")))

    with sessions() as session:
        event.listen(session, "do_orm_execute", hook)
        session.execute(update(Row).values(tag="x"))
        session.scalars(select(Row)).all()
        session.commit()
    assert seen == [True, False]


# --- criteria that pick a subset: volatile expressions, LIMIT --------------------------------


def _random(backend: str) -> Any:
    return sa.func.rand() if backend == "mariadb" else sa.func.random()


def _coin(backend: str) -> sa.ColumnElement[bool]:
    """True for about half of the rows, drawn anew each time the database evaluates it."""
    if backend == "sqlite":
        return _random(backend) < 0  # SQLite's random() is a signed 64-bit integer
    return _random(backend) < 0.5


@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_volatile_criteria_update_records_exactly_the_changed_rows(
    setting: Any, backend: str, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 60)
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(
            update(Row).where(_coin(backend)).values(n=Row.n + 100, tag="hit"),
            execution_options=sync(setting),
        )
        session.commit()
    changed = assert_history_matches(engine, before, UPDATE)
    assert 0 < len(changed) < 60  # 2 ** -59 to fail by chance
    assert result.rowcount == len(changed)


@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_volatile_criteria_delete_records_exactly_the_deleted_rows(
    setting: Any, backend: str, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 60)
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(delete(Row).where(_coin(backend)), execution_options=sync(setting))
        session.commit()
    deleted = assert_history_matches(engine, before, DELETE)
    assert 0 < len(deleted) < 60
    assert result.rowcount == len(deleted)
    assert set(live_rows(engine)) == set(before[0]) - deleted


def test_volatile_value_in_set_records_what_was_stored(
    backend: str, create_tables: CreateTables, sessions: Sessions
) -> None:
    """A random *value* differs per row; the history holds each row's stored value."""
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 20)
    before = snapshot(engine)
    with sessions() as session:
        session.execute(
            update(Row).values(n=sa.cast(_random(backend) * 1000, sa.Integer) % 1000 + 1000)
        )
        session.commit()
    assert assert_history_matches(engine, before, UPDATE) == set(before[0])


def _delete_takes_a_limit() -> bool:
    """Whether this SQLAlchemy's MariaDB dialect accepts ``mariadb_limit`` on a DELETE."""
    from sqlalchemy.dialects.mysql.base import MySQLDialect

    return any(
        isinstance(target, type) and issubclass(target, sa.sql.dml.Delete)
        for target, _ in MySQLDialect.construct_arguments or ()
    )


@pytest.mark.backends("mariadb")
@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_mariadb_limit_records_only_the_rows_it_reached(
    setting: Any, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 10)
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(
            update(Row)
            .where(Row.id > 2)
            .values(tag="first3")
            .with_dialect_options(mariadb_limit=3),
            execution_options=sync(setting),
        )
        assert result.rowcount == 3
        session.commit()
    assert len(assert_history_matches(engine, before, UPDATE)) == 3
    if not _delete_takes_a_limit():
        return  # SQLAlchemy before 2.0.37 has no DELETE ... LIMIT for MariaDB
    before = snapshot(engine)
    with sessions() as session:
        result = session.execute(
            delete(Row).where(Row.tag == "").with_dialect_options(mariadb_limit=2),
            execution_options=sync(setting),
        )
        assert result.rowcount == 2
        session.commit()
    deleted = assert_history_matches(engine, before, DELETE)
    assert len(deleted) == 2 and all(before[0][k][1] == "" for k in deleted)


# --- READ COMMITTED: another transaction commits between the read and the statement ----------


@pytest.fixture
def read_committed(engine: sa.Engine) -> Iterator[sa.Engine]:
    other = sa.create_engine(
        engine.url,
        isolation_level="READ COMMITTED",
        connect_args={"options": "-c lock_timeout=20000"}
        if engine.dialect.name == "postgresql"
        else {"init_command": "SET SESSION innodb_lock_wait_timeout=20"},
    )
    yield other
    other.dispose()


@contextmanager
def between_read_and_statement(engine: sa.Engine, meanwhile: Callable[[], None]) -> Iterator[None]:
    """Run ``meanwhile`` (another transaction) right after the library's locked read of rows."""
    done: list[bool] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not done and statement.lstrip().startswith("SELECT") and "FOR UPDATE" in statement:
            done.append(True)
            meanwhile()

    event.listen(engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(engine, "after_cursor_execute", after)
    assert done, "the locked read never ran"


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_read_committed_update_ignores_rows_committed_meanwhile(
    setting: Any, create_tables: CreateTables, read_committed: sa.Engine
) -> None:
    """Another transaction inserts a matching row and makes a row match, and commits.

    Under READ COMMITTED the statement would see both; it must touch neither (as if it had run
    first), and record exactly what it changed.
    """
    engine = create_tables(Base.metadata)
    with Session(engine) as session:
        session.execute(
            insert(Row), [{"id": i, "n": i, "tag": "go" if i <= 3 else "no"} for i in range(1, 6)]
        )
        session.commit()

    def meanwhile() -> None:
        with Session(engine) as other:
            other.add(Row(id=9, n=9, tag="go"))
            row = other.get(Row, 5)
            assert row is not None
            row.tag = "go"
            other.commit()

    with Session(read_committed) as session:
        with between_read_and_statement(read_committed, meanwhile):
            result = session.execute(
                update(Row).where(Row.tag == "go").values(n=Row.n + 100),
                execution_options=sync(setting),
            )
        assert result.rowcount == 3
        session.commit()
    assert live_rows(engine) == {
        1: (101, "go"),
        2: (102, "go"),
        3: (103, "go"),
        4: (4, "no"),
        5: (5, "go"),
        9: (9, "go"),
    }
    versions = {row["id"]: row for row in history_rows(engine, Row)}  # the last of each
    for key in (1, 2, 3):
        assert versions[key]["versioning_operation"] is UPDATE
        assert versions[key]["versioning_changes"] == {"n": [key, key + 100]}
    assert versions[5]["versioning_changes"] == {"tag": ["no", "go"]}  # the other's, not ours
    assert versions[9]["versioning_operation"] is INSERT
    assert count(engine, history_table(Row)) == 5 + 2 + 3


@pytest.mark.backends("postgresql", "mariadb")
@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_read_committed_delete_ignores_rows_committed_meanwhile(
    setting: Any, create_tables: CreateTables, read_committed: sa.Engine
) -> None:
    engine = create_tables(Base.metadata)
    with Session(engine) as session:
        session.execute(insert(Row), [{"id": i, "n": i, "tag": "go"} for i in range(1, 4)])
        session.commit()

    def meanwhile() -> None:
        with Session(engine) as other:
            other.add(Row(id=9, n=9, tag="go"))
            other.commit()

    with Session(read_committed) as session:
        with between_read_and_statement(read_committed, meanwhile):
            result = session.execute(
                delete(Row).where(Row.tag == "go"), execution_options=sync(setting)
            )
        assert result.rowcount == 3
        session.commit()
    assert live_rows(engine) == {9: (9, "go")}
    for key in (1, 2, 3):
        assert ops(read(lambda: Session(engine), Row, key)) == [INSERT, DELETE]
    assert ops(read(lambda: Session(engine), Row, 9)) == [INSERT]


@pytest.mark.backends("postgresql", "mariadb")
def test_repeatable_read_records_what_the_statement_did_to_rows_committed_meanwhile(
    backend: str, create_tables: CreateTables, engine: sa.Engine
) -> None:
    """After the transaction's snapshot, another transaction commits a new matching row.

    PostgreSQL's REPEATABLE READ does not see it, so the UPDATE leaves it alone; MariaDB's
    writes act on the latest committed rows, so the UPDATE changes it. Either way the history
    says exactly what happened, with the true old values.
    """
    create_tables(Base.metadata)
    with Session(engine) as session:
        session.execute(insert(Row), [{"id": i, "n": i, "tag": "go"} for i in range(1, 4)])
        session.commit()
    repeatable = engine.execution_options(isolation_level="REPEATABLE READ")
    with Session(repeatable) as session:
        assert len(session.scalars(select(Row)).all()) == 3  # the snapshot starts here
        with Session(engine) as other:
            other.add(Row(id=9, n=9, tag="go"))
            other.commit()
        before = {k: (k, "go") for k in (1, 2, 3, 9)}, _last_history_id(engine)
        session.execute(update(Row).where(Row.tag == "go").values(n=Row.n + 100))
        session.commit()
    reached = {1, 2, 3} if backend == "postgresql" else {1, 2, 3, 9}
    assert assert_history_matches(engine, before, UPDATE) == reached


def _last_history_id(engine: sa.Engine) -> int:
    return snapshot(engine)[1]


@pytest.mark.parametrize("setting", ["auto", "fetch", False])
def test_criteria_naming_another_table(
    setting: Any, create_tables: CreateTables, sessions: Sessions
) -> None:
    """UPDATE ... FROM another table and a subquery: the rows reached are the rows recorded."""
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 6)
    seed_staff(sessions)  # staff ids 1-4; engineers 1 and 3
    before = snapshot(engine)
    with sessions() as session:
        session.execute(
            update(Row).where(Row.id == Staff.id, Staff.level >= 3).values(tag="from"),
            execution_options=sync(setting),
        )
        session.commit()
    assert assert_history_matches(engine, before, UPDATE) == {1, 2, 4}
    before = snapshot(engine)
    with sessions() as session:
        session.execute(
            delete(Row).where(Row.id.in_(select(Engineer.id).scalar_subquery())),
            execution_options=sync(setting),
        )
        session.commit()
    assert assert_history_matches(engine, before, DELETE) == {1, 3}


def test_statement_parameters_reach_the_read_of_the_rows(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 3)
    before = snapshot(engine)
    with sessions() as session:
        session.execute(
            update(Row).where(Row.id >= sa.bindparam("low")).values(tag="p"), {"low": 2}
        )
        session.execute(delete(Row).where(Row.id == sa.bindparam("gone")), {"gone": 1})
        session.commit()
    assert live_rows(engine) == {2: (2, "p"), 3: (3, "p")}
    versions = [r for r in history_rows(engine, Row) if r["versioning_id"] > before[1]]
    assert [(r["id"], r["versioning_operation"]) for r in versions] == [
        (2, UPDATE),
        (3, UPDATE),
        (1, DELETE),
    ]


def test_a_parameter_dict_setting_the_primary_key_is_refused(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """A dict given with an UPDATE sets the columns it names, the primary key included."""
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 2)
    with sessions() as session:
        with pytest.raises(versioning.VersioningError, match=r"primary key of Row.*nothing was"):
            session.execute(update(Row).where(Row.id == 1), {"id": 10})
        session.commit()
    assert set(live_rows(engine)) == {1, 2}
    assert count(engine, history_table(Row)) == 2


def test_returning_rows_are_the_rows_recorded(
    backend: str, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 40)
    before = snapshot(engine)
    with sessions() as session:
        returned = session.execute(delete(Row).where(_coin(backend)).returning(Row.id)).all()
        session.commit()
    assert {row.id for row in returned} == assert_history_matches(engine, before, DELETE)
    if backend == "mariadb":
        return  # no UPDATE ... RETURNING
    before = snapshot(engine)
    with sessions() as session:
        returned = session.execute(
            update(Row).where(_coin(backend)).values(n=Row.n + 1).returning(Row.id, Row.n)
        ).all()
        session.commit()
    changed = assert_history_matches(engine, before, UPDATE)
    assert {row.id for row in returned} == changed
    assert all(row.n == row.id + 1 for row in returned)


def test_loader_criteria_from_a_hook_on_one_session(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 4)
    with sessions() as session:
        session.execute(update(Row).where(Row.id > 2).values(active=False))
        session.commit()
    before = snapshot(engine)

    def hook(orm: ORMExecuteState) -> None:
        orm.statement = orm.statement.options(with_loader_criteria(Row, Row.active.is_(True)))

    with sessions() as session:
        event.listen(session, "do_orm_execute", hook)
        session.execute(update(Row).values(tag="seen"))
        session.commit()
    assert assert_history_matches(engine, before, UPDATE) == {1, 2}
    before = snapshot(engine)
    with sessions() as session:
        event.listen(session, "do_orm_execute", hook)
        session.execute(delete(Row).where(Row.id >= 2))
        session.commit()
    assert assert_history_matches(engine, before, DELETE) == {2}


# --- key sets: size, quoting, composite keys -------------------------------------------------


@pytest.mark.backends("sqlite", "postgresql")
def test_more_keys_than_the_bound_parameter_limit_in_one_statement(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Beyond SQLite's 32,766 and psycopg's 65,535 bound parameters: still exact.

    Only where such a limit exists (MariaDB's driver sends no bound parameters), and just above
    it, to keep the test quick.
    """
    engine = create_tables(Base.metadata)
    total = {"sqlite": 33_000, "postgresql": 66_000}[engine.dialect.name]
    # Seeded without history, by the server itself (a recursive count), to keep the test quick.
    numbers = select(sa.literal(1).label("i")).cte("numbers", recursive=True)
    numbers = numbers.union_all(select(numbers.c.i + 1).where(numbers.c.i < total))
    with engine.begin() as connection:
        connection.execute(
            insert(Row.__table__).from_select(
                ["id", "n", "tag", "active"],
                select(numbers.c.i, numbers.c.i, sa.literal(""), sa.true()),
            )
        )
    with sessions() as session:
        result = session.execute(update(Row).where(Row.id > 10).values(n=Row.n + 1))
        assert result.rowcount == total - 10
        session.commit()
    table = history_table(Row)
    with engine.connect() as connection:
        assert connection.scalar(select(sa.func.count()).select_from(table)) == total - 10
        wrong = connection.scalar(
            select(sa.func.count()).select_from(table).where(table.c.n != table.c.id + 1)
        )
        assert wrong == 0
    with sessions() as session:
        result = session.execute(delete(Row).where(Row.id > 5))
        assert result.rowcount == total - 5
        session.commit()
    with engine.connect() as connection:
        deletes = connection.scalar(
            select(sa.func.count()).select_from(table).where(table.c.versioning_operation == DELETE)
        )
        assert deletes == total - 5
    assert set(live_rows(engine)) == {1, 2, 3, 4, 5}


def test_keys_that_need_quoting(create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    codes = ["o'brien", "back\\slash", 'dq"x', "pct%s", "plain", "semi;--"]
    with sessions() as session:
        session.execute(insert(Named), [{"code": c, "n": 0} for c in codes])
        session.commit()
    with sessions() as session:
        session.execute(update(Named).where(Named.code != "plain").values(n=Named.n + 1))
        session.execute(delete(Named).where(Named.code.in_(["o'brien", "back\\slash"])))
        session.commit()
    with engine.connect() as connection:
        rows = dict(connection.execute(select(Named.code, Named.n)).all())  # type: ignore[arg-type]
    assert rows == {'dq"x': 1, "pct%s": 1, "plain": 0, "semi;--": 1}
    for code in codes:
        expected = {
            "plain": [INSERT],
            "o'brien": [INSERT, UPDATE, DELETE],
            "back\\slash": [INSERT, UPDATE, DELETE],
        }.get(code, [INSERT, UPDATE])
        assert ops(read(sessions, Named, code)) == expected, code


@pytest.mark.parametrize("setting", SYNC_SETTINGS)
def test_composite_keys(setting: Any, create_tables: CreateTables, sessions: Sessions) -> None:
    engine = create_tables(Base.metadata)
    with sessions() as session:
        session.execute(
            insert(Cell), [{"x": x, "y": y, "n": 0} for x in (1, 2) for y in ("a", "b")]
        )
        session.commit()
    with sessions() as session:
        session.scalars(select(Cell)).all()  # objects to synchronize
        session.execute(
            update(Cell).where(Cell.y == "b").values(n=Cell.n + 1), execution_options=sync(setting)
        )
        session.execute(delete(Cell).where(Cell.x == 2), execution_options=sync(setting))
        session.commit()
    with engine.connect() as connection:
        assert sorted(connection.execute(select(Cell.x, Cell.y, Cell.n)).all()) == [  # type: ignore[type-var]
            (1, "a", 0),
            (1, "b", 1),
        ]
    assert ops(read(sessions, Cell, (1, "a"))) == [INSERT]
    assert ops(read(sessions, Cell, (1, "b"))) == [INSERT, UPDATE]
    assert ops(read(sessions, Cell, (2, "a"))) == [INSERT, DELETE]
    assert ops(read(sessions, Cell, (2, "b"))) == [INSERT, UPDATE, DELETE]


def test_a_statement_still_reads_writes_and_reads_back_once(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """Exactness costs no extra round trip: read (locked), statement, read back; a DELETE that
    removed every row read needs no read back."""
    engine = create_tables(Base.metadata)
    seed_rows(sessions, 50)
    seen: list[str] = []

    def collect(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with sessions() as session:
        session.connection()
        event.listen(engine, "before_cursor_execute", collect)
        try:
            session.execute(update(Row).where(Row.id > 10).values(n=Row.n + 1))
            assert len(seen) == 3, seen
            session.execute(delete(Row).where(Row.id > 20), execution_options=sync(False))
            assert len(seen) == 5, seen
        finally:
            event.remove(engine, "before_cursor_execute", collect)
        session.commit()
    assert count(engine, history_table(Row)) == 50 + 40 + 30


# --- version_id_col --------------------------------------------------------------------------


def seed_doc(sessions: Sessions, model: type[Any] = Doc) -> None:
    with sessions() as session:
        values: dict[str, Any] = {"id": 1, "title": "t0"}
        if model is ServerDoc:
            values["ver"] = 1
        session.add(model(**values))
        session.commit()


def doc_row(engine: sa.Engine, model: type[Any] = Doc) -> tuple[str, int]:
    with engine.connect() as connection:
        row = connection.execute(select(model.title, model.ver)).one()
        return row.title, row.ver


def test_bulk_update_bumps_the_version_so_a_stale_object_fails(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    """An object loaded before a bulk UPDATE (not synchronized) fails its own UPDATE."""
    engine = create_tables(Base.metadata)
    seed_doc(sessions)
    with Session(engine, expire_on_commit=False) as session:
        doc = session.get(Doc, 1)
        assert doc is not None and doc.ver == 1
        session.execute(
            update(Doc).where(Doc.id == 1).values(title="bulk"), execution_options=sync(False)
        )
        session.commit()
        assert doc.ver == 1 and doc.title == "t0"  # stale, as SQLAlchemy leaves it
        doc.body = "uow"
        with pytest.raises(StaleDataError):
            session.commit()
        session.rollback()
    assert doc_row(engine) == ("bulk", 2)
    versions = read(sessions, Doc, 1)
    assert ops(versions) == [INSERT, UPDATE]
    assert dict(versions[1].changes) == {"title": ("t0", "bulk"), "ver": (1, 2)}
    assert dict(versions[1].state) == {"id": 1, "title": "bulk", "body": "", "ver": 2}


@pytest.mark.parametrize("setting", ["auto", "evaluate", "fetch"])
def test_bulk_update_with_synchronization_lets_the_session_see_the_new_version(
    setting: Any, create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_doc(sessions)
    with sessions() as session:
        doc = session.get(Doc, 1)
        assert doc is not None
        session.execute(
            update(Doc).where(Doc.id == 1).values(title="bulk"), execution_options=sync(setting)
        )
        assert sa.inspect(doc).dict.get("ver", 2) == 2
        doc.body = "uow"
        session.commit()
    assert doc_row(engine) == ("bulk", 3)
    versions = read(sessions, Doc, 1)
    assert ops(versions) == [INSERT, UPDATE, UPDATE]
    assert dict(versions[1].changes) == {"title": ("t0", "bulk"), "ver": (1, 2)}
    assert dict(versions[2].changes) == {"body": ("", "uow"), "ver": (2, 3)}
    assert dict(versions[2].state) == {"id": 1, "title": "bulk", "body": "uow", "ver": 3}


def test_bulk_update_that_sets_the_version_itself_is_left_alone(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_doc(sessions)
    with sessions() as session:
        session.execute(update(Doc).where(Doc.id == 1).values(title="x", ver=Doc.ver + 5))
        session.commit()
    assert doc_row(engine) == ("x", 6)
    assert dict(read(sessions, Doc, 1)[1].changes) == {"title": ("t0", "x"), "ver": (1, 6)}


def test_bulk_update_with_a_custom_version_generator_must_set_the_version(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_doc(sessions, EvenDoc)
    assert doc_row(engine, EvenDoc) == ("t0", 2)
    with sessions() as session:
        with pytest.raises(versioning.VersioningError, match=r"EvenDoc.*'ver'.*nothing was"):
            session.execute(update(EvenDoc).where(EvenDoc.id == 1).values(title="bulk"))
        session.commit()
    assert doc_row(engine, EvenDoc) == ("t0", 2)
    assert count(engine, history_table(EvenDoc)) == 1
    with sessions() as session:
        session.execute(
            update(EvenDoc).where(EvenDoc.id == 1).values(title="bulk", ver=EvenDoc.ver + 2)
        )
        session.commit()
    assert doc_row(engine, EvenDoc) == ("bulk", 4)
    assert dict(read(sessions, EvenDoc, 1)[1].changes) == {"title": ("t0", "bulk"), "ver": (2, 4)}


def test_bulk_update_with_a_server_side_version_is_left_to_the_database(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_doc(sessions, ServerDoc)
    with sessions() as session:
        session.execute(update(ServerDoc).where(ServerDoc.id == 1).values(title="bulk"))
        session.commit()
    assert doc_row(engine, ServerDoc) == ("bulk", 1)  # no trigger here: nothing bumped it
    assert dict(read(sessions, ServerDoc, 1)[1].changes) == {"title": ("t0", "bulk")}


def test_bulk_update_by_primary_key_keeps_sqlalchemys_version_check(
    create_tables: CreateTables, sessions: Sessions
) -> None:
    engine = create_tables(Base.metadata)
    seed_doc(sessions)
    with sessions() as session:
        session.execute(update(Doc), [{"id": 1, "ver": 1, "title": "pk"}])
        session.commit()
    assert doc_row(engine) == ("pk", 2)
    assert dict(read(sessions, Doc, 1)[1].changes) == {"title": ("t0", "pk"), "ver": (1, 2)}


# --- pure logic: the key restriction ---------------------------------------------------------


class _Opaque(sa.types.TypeDecorator[int]):
    """A key type that cannot be written as an SQL literal."""

    impl = sa.Integer
    cache_ok = True

    def literal_processor(self, dialect: Any) -> None:
        return None


def test_keys_are_rendered_as_literals_so_no_parameter_limit_applies() -> None:
    from sqlalchemy.dialects import postgresql

    from versioning.live_rows import keys_in

    dialect = postgresql.dialect()
    where = keys_in([Row.id], [(i,) for i in range(100_000)], dialect, "this UPDATE of Row")
    compiled = select(Row.id).where(where).compile(dialect=dialect)
    assert len(compiled.params) == 1  # one expanding parameter, rendered at execution
    assert "99999" in str(
        select(Row.id)
        .where(where)
        .compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    )


def test_keys_that_cannot_be_literals_are_bound_up_to_a_limit_then_refused() -> None:
    from sqlalchemy.dialects import sqlite

    from versioning.live_rows import keys_in

    column = sa.Column("k", _Opaque())
    dialect = sqlite.dialect()
    small = keys_in([column], [(i,) for i in range(10)], dialect, "this DELETE of Thing")
    assert "?" in str(small.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}))
    with pytest.raises(versioning.VersioningError, match=r"this DELETE of Thing.*30001.*split"):
        keys_in([column], [(i,) for i in range(30_001)], dialect, "this DELETE of Thing")
