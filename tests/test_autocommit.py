"""Writes of versioned models need a transaction: in autocommit mode they are refused before
anything is written (a flushed change would otherwise be committed at once and its history at
``session.commit()``, or never), on every backend; everything else still works there."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from versioning import Operation, Versioned, VersioningError, history

Tables = Callable[[sa.MetaData], sa.Engine]


class Base(DeclarativeBase):
    pass


class Thing(Versioned, Base):
    __tablename__ = "autocommit_things"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(20))


class Note(Base):
    """Not versioned: autocommit is its own business."""

    __tablename__ = "autocommit_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(sa.String(20))


THINGS = Thing.__table__
REFUSED = r"Thing: the session's connection is in autocommit mode.*nothing was written"


@pytest.fixture
def tables(create_tables: Tables) -> sa.Engine:
    engine = create_tables(Base.metadata)
    with engine.begin() as connection:
        connection.execute(THINGS.insert(), {"id": 1, "name": "one"})
    return engine


@pytest.fixture(params=["execution option", "engine setting"])
def autocommit(request: pytest.FixtureRequest, tables: sa.Engine) -> Iterator[sa.Engine]:
    """An engine in autocommit mode on the same database: as an execution option, or set on
    the driver's connections by ``create_engine(isolation_level=...)``."""
    if request.param == "execution option":
        yield tables.execution_options(isolation_level="AUTOCOMMIT")
        return
    engine = sa.create_engine(tables.url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def _names(engine: sa.Engine) -> tuple[list[str], int]:
    with engine.connect() as connection:
        names = connection.execute(sa.select(THINGS.c.name).order_by(THINGS.c.id)).scalars()
        count = connection.execute(
            sa.text("SELECT count(*) FROM autocommit_things_history")
        ).scalar_one()
        return list(names), count


def test_a_flush_of_a_versioned_model_is_refused_in_autocommit(
    tables: sa.Engine, autocommit: sa.Engine
) -> None:
    with Session(autocommit) as session:
        session.add(Thing(id=2, name="two"))
        with pytest.raises(VersioningError, match=REFUSED):
            session.flush()
        session.rollback()
        session.get_one(Thing, 1).name = "changed"
        with pytest.raises(VersioningError, match=REFUSED):
            session.flush()
        session.rollback()
        session.delete(session.get_one(Thing, 1))
        with pytest.raises(VersioningError, match=REFUSED):
            session.commit()
    assert _names(tables) == (["one"], 0)


def test_an_orm_statement_on_a_versioned_model_is_refused_in_autocommit(
    tables: sa.Engine, autocommit: sa.Engine
) -> None:
    with Session(autocommit) as session:
        with pytest.raises(VersioningError, match=REFUSED):
            session.execute(sa.update(Thing).values(name="bulk"))
        with pytest.raises(VersioningError, match=REFUSED):
            session.execute(sa.delete(Thing))
        with pytest.raises(VersioningError, match=REFUSED):
            session.execute(sa.insert(Thing).values(id=3, name="three"))
    assert _names(tables) == (["one"], 0)


def test_autocommit_is_left_alone_for_what_is_not_versioned(
    tables: sa.Engine, autocommit: sa.Engine
) -> None:
    with Session(autocommit) as session:
        session.add(Note(id=1, text="kept"))
        session.flush()  # not refused: autocommit, as asked
        assert session.get_one(Thing, 1).name == "one"  # reads are fine
        session.commit()
    with tables.connect() as connection:
        assert connection.execute(sa.text("SELECT text FROM autocommit_notes")).scalar() == "kept"


def test_a_transaction_on_the_same_database_records_as_usual(tables: sa.Engine) -> None:
    with Session(tables) as session:
        session.get_one(Thing, 1).name = "changed"
        session.commit()
        assert [v.operation for v in history(session, Thing, 1)] == [Operation.UPDATE]


@pytest.mark.backends("sqlite")
def test_sqlite_with_its_own_begin_is_a_transaction(tables: sa.Engine) -> None:
    """SQLAlchemy's recipe for SAVEPOINTs on SQLite turns the driver's transactions off and
    sends BEGIN itself: that is a transaction, and writes are recorded."""
    engine = sa.create_engine(tables.url)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: object, record: object) -> None:
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

    @event.listens_for(engine, "begin")
    def _begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    try:
        with Session(engine) as session:
            session.get_one(Thing, 1).name = "changed"
            session.commit()
        assert _names(tables) == (["changed"], 1)
    finally:
        engine.dispose()
